package hecatoncheir

import (
	"bytes"
	"context"
	"errors"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/tartarus-sandbox/tartarus/pkg/clock"

	"github.com/tartarus-sandbox/tartarus/pkg/runtimes/fake"
	"github.com/tartarus-sandbox/tartarus/pkg/store"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

// catalog is an in-memory template catalog.
type catalog map[string]*tartarus.Image

func (c catalog) List(context.Context) ([]*tartarus.Image, error) {
	var out []*tartarus.Image
	for _, img := range c {
		out = append(out, img)
	}
	return out, nil
}

func (c catalog) Get(_ context.Context, name string) (*tartarus.Image, error) {
	if img, ok := c[name]; ok {
		return img, nil
	}
	return nil, tartarus.Errorf(tartarus.ErrNotFound, "template %s", name)
}

var epoch = time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)

type env struct {
	agent *Agent
	rt    *fake.Runtime
	store *store.SQLite
	clock *clock.Fake
	dir   string
}

func newEnv(t *testing.T, fcfg fake.Config) *env {
	t.Helper()
	dir := t.TempDir()
	st, err := store.OpenSQLite(context.Background(), filepath.Join(dir, "t.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	e := &env{store: st, clock: clock.NewFake(epoch), dir: dir}
	e.start(t, fcfg)
	return e
}

// start makes a new runtime value and agent over the env's state, as a
// restarted server would.
func (e *env) start(t *testing.T, fcfg fake.Config) {
	t.Helper()
	fcfg.StateDir = filepath.Join(e.dir, "vms")
	rt, err := fake.New(fcfg)
	if err != nil {
		t.Fatal(err)
	}
	a, err := New(Config{Node: "node-1", Store: e.store, Runtimes: []tartarus.Runtime{rt},
		Images: catalog{"base": {Name: "base"}}, Clock: e.clock, ExpiryInterval: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	e.agent, e.rt = a, rt
}

func (e *env) instances(t *testing.T) []string {
	t.Helper()
	list, err := e.rt.List(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, in := range list {
		ids = append(ids, in.ID)
	}
	return ids
}

func TestCreate(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t, fake.Config{MaxCPUs: 2, MaxMemoryMB: 1024})
	sb, err := e.agent.Create(ctx, "acme", &tartarus.CreateRequest{TimeoutS: 60, Env: map[string]string{"A": "b"},
		Metadata: map[string]string{"k": "v"}})
	if err != nil {
		t.Fatal(err)
	}
	if sb.State != tartarus.StateRunning || sb.Tenant != "acme" || sb.Template != "base" || sb.Runtime != "fake" ||
		sb.Node != "node-1" || sb.CPUs != 1 || sb.MemoryMB != 256 || !sb.ExpiresAt.Equal(epoch.Add(time.Minute)) ||
		sb.Metadata["k"] != "v" || sb.Env["A"] != "b" {
		t.Errorf("sandbox %+v", sb)
	}
	if got := e.instances(t); !slices.Equal(got, []string{sb.ID}) {
		t.Errorf("runtime instances %v", got)
	}
	var out bytes.Buffer
	res, err := e.agent.Exec(ctx, sb.ID, &tartarus.ExecRequest{Cmd: []string{"sh", "-c", "echo $A"}, Stdout: &out})
	if err != nil || res.ExitCode != 0 || out.String() != "b\n" {
		t.Errorf("exec: %v %+v %q", err, res, out.String())
	}
}

func TestCreateRejects(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t, fake.Config{MaxCPUs: 2, MaxMemoryMB: 1024})
	tests := []struct {
		name    string
		req     tartarus.CreateRequest
		want    error
		wantMsg string
	}{
		{"unknown template", tartarus.CreateRequest{Template: "nope"}, tartarus.ErrNotFound, "nope"},
		{"too much memory", tartarus.CreateRequest{MemoryMB: 4096}, tartarus.ErrResourceExhausted, "max_memory_mb"},
		{"too many cpus", tartarus.CreateRequest{CPUs: 3}, tartarus.ErrResourceExhausted, "max_cpus"},
		{"too little memory", tartarus.CreateRequest{MemoryMB: 10}, tartarus.ErrInvalid, "memory_mb"},
		{"unknown runtime", tartarus.CreateRequest{Runtime: "docker"}, tartarus.ErrInvalid, "not enabled"},
		{"bad env", tartarus.CreateRequest{Env: map[string]string{"A=B": "x"}}, tartarus.ErrInvalid, "env"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := e.agent.Create(ctx, "acme", &tt.req)
			if !errors.Is(err, tt.want) || !strings.Contains(err.Error(), tt.wantMsg) {
				t.Errorf("Create: %v, want %v mentioning %q", err, tt.want, tt.wantMsg)
			}
		})
	}
	// Bad input changes nothing.
	if list, _ := e.store.List(ctx, tartarus.SandboxFilter{}); len(list) != 0 {
		t.Errorf("store has %d sandboxes after rejected creates", len(list))
	}
	if got := e.instances(t); len(got) != 0 {
		t.Errorf("runtime has %v", got)
	}
}

func TestCreateFailureCleansUp(t *testing.T) {
	tests := []struct {
		name   string
		hook   func(ctx context.Context, id string) error
		cancel bool
	}{
		{"start fails", func(context.Context, string) error { return errors.New("guest did not answer") }, false},
		{"caller cancels during start", func(ctx context.Context, _ string) error { <-ctx.Done(); return ctx.Err() }, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t, fake.Config{StartHook: tt.hook})
			ctx, cancel := context.WithCancel(context.Background())
			if tt.cancel {
				go func() { time.Sleep(10 * time.Millisecond); cancel() }()
			}
			defer cancel()
			_, err := e.agent.Create(ctx, "acme", &tartarus.CreateRequest{})
			if err == nil {
				t.Fatal("Create succeeded")
			}
			list, _ := e.store.List(context.Background(), tartarus.SandboxFilter{})
			if len(list) != 1 || list[0].State != tartarus.StateFailed || list[0].Error == "" {
				t.Fatalf("records %v", list)
			}
			if got := e.instances(t); len(got) != 0 {
				t.Errorf("VM leaked: %v", got)
			}
		})
	}
}

func TestLifecycle(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t, fake.Config{})
	sb, err := e.agent.Create(ctx, "acme", &tartarus.CreateRequest{})
	if err != nil {
		t.Fatal(err)
	}
	e.clock.Advance(time.Second)
	if _, err := e.agent.Exec(ctx, sb.ID, &tartarus.ExecRequest{Cmd: []string{"true"}}); err != nil {
		t.Fatal(err)
	}
	got, _ := e.agent.Get(ctx, sb.ID)
	if !got.LastActivityAt.Equal(epoch.Add(time.Second)) {
		t.Errorf("last activity %v after exec, want %v", got.LastActivityAt, epoch.Add(time.Second))
	}

	steps := []struct {
		name string
		do   func() (*tartarus.Sandbox, error)
		want tartarus.State
		err  error
	}{
		{"pause", func() (*tartarus.Sandbox, error) { return e.agent.Pause(ctx, sb.ID) }, tartarus.StatePaused, nil},
		{"pause again", func() (*tartarus.Sandbox, error) { return e.agent.Pause(ctx, sb.ID) }, tartarus.StatePaused, nil},
		{"exec while paused", func() (*tartarus.Sandbox, error) {
			_, err := e.agent.Exec(ctx, sb.ID, &tartarus.ExecRequest{Cmd: []string{"true"}})
			return nil, err
		}, tartarus.StatePaused, tartarus.ErrFailedPrecondition},
		{"files while paused", func() (*tartarus.Sandbox, error) {
			_, err := e.agent.ListFiles(ctx, sb.ID, "/")
			return nil, err
		}, tartarus.StatePaused, tartarus.ErrFailedPrecondition},
		{"resume", func() (*tartarus.Sandbox, error) { return e.agent.Resume(ctx, sb.ID) }, tartarus.StateRunning, nil},
		{"resume again", func() (*tartarus.Sandbox, error) { return e.agent.Resume(ctx, sb.ID) }, tartarus.StateRunning, nil},
		{"destroy", func() (*tartarus.Sandbox, error) { return e.agent.Destroy(ctx, sb.ID) }, tartarus.StateTerminated, nil},
		{"destroy again", func() (*tartarus.Sandbox, error) { return e.agent.Destroy(ctx, sb.ID) }, tartarus.StateTerminated, nil},
		{"resume terminated", func() (*tartarus.Sandbox, error) { return e.agent.Resume(ctx, sb.ID) }, tartarus.StateTerminated, tartarus.ErrFailedPrecondition},
	}
	for _, s := range steps {
		got, err := s.do()
		if s.err != nil && !errors.Is(err, s.err) || s.err == nil && err != nil {
			t.Fatalf("%s: %v, want %v", s.name, err, s.err)
		}
		if got != nil && got.State != s.want {
			t.Errorf("%s: returned state %s, want %s", s.name, got.State, s.want)
		}
		stored, _ := e.agent.Get(ctx, sb.ID)
		if stored.State != s.want {
			t.Errorf("%s: stored state %s, want %s", s.name, stored.State, s.want)
		}
	}
	if got := e.instances(t); len(got) != 0 {
		t.Errorf("runtime still has %v", got)
	}
	if _, err := e.agent.Destroy(ctx, "sb-unknown"); !errors.Is(err, tartarus.ErrNotFound) {
		t.Errorf("destroy unknown: %v", err)
	}
}

func TestRecover(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t, fake.Config{})
	mk := func() string {
		sb, err := e.agent.Create(ctx, "acme", &tartarus.CreateRequest{})
		if err != nil {
			t.Fatal(err)
		}
		return sb.ID
	}
	kept, paused, lost := mk(), mk(), mk()
	if _, err := e.agent.Pause(ctx, paused); err != nil {
		t.Fatal(err)
	}
	if err := e.rt.Lose(lost); err != nil {
		t.Fatal(err)
	}
	// Records caught mid-create and mid-destroy, each with a VM.
	vm := func(id string) {
		if _, err := e.rt.Create(ctx, &tartarus.VMConfig{ID: id, Template: "base", Image: &tartarus.Image{Name: "base"}, CPUs: 1, MemoryMB: 256}); err != nil {
			t.Fatal(err)
		}
		if err := e.rt.Start(ctx, id); err != nil {
			t.Fatal(err)
		}
	}
	recordOn := func(node, id string, st tartarus.State) {
		err := e.store.Create(ctx, &tartarus.Sandbox{ID: id, Tenant: "acme", Template: "base", Runtime: "fake",
			State: st, Node: node, CPUs: 1, MemoryMB: 256, CreatedAt: epoch, UpdatedAt: epoch})
		if err != nil {
			t.Fatal(err)
		}
	}
	record := func(id string, st tartarus.State) { recordOn("node-1", id, st) }
	record("sb-creating", tartarus.StateCreating)
	vm("sb-creating")
	record("sb-terminating", tartarus.StateTerminating)
	vm("sb-terminating")
	record("sb-ended", tartarus.StateTerminated)
	vm("sb-ended")
	vm("sb-unknown")
	recordOn("node-2", "sb-other-node", tartarus.StateRunning) // another node's business

	// Restart: a new runtime value and agent over the same state.
	e.start(t, fake.Config{})
	rep, err := e.agent.Recover(ctx)
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(rep.Adopted)
	slices.Sort(rep.Finished)
	slices.Sort(rep.Orphans)
	want := []struct {
		name      string
		got, want []string
	}{
		{"adopted", rep.Adopted, sorted(kept, paused)},
		{"lost", rep.Lost, []string{lost}},
		{"finished", rep.Finished, []string{"sb-creating", "sb-terminating"}},
		{"orphans", rep.Orphans, []string{"sb-ended", "sb-unknown"}},
		{"instances", e.instances(t), sorted(kept, paused)},
	}
	for _, w := range want {
		if !slices.Equal(w.got, w.want) {
			t.Errorf("%s: %v, want %v", w.name, w.got, w.want)
		}
	}
	states := map[string]struct {
		state tartarus.State
		msg   string
	}{
		kept: {tartarus.StateRunning, ""}, paused: {tartarus.StatePaused, ""}, lost: {tartarus.StateFailed, msgLost},
		"sb-creating": {tartarus.StateFailed, msgInterrupted}, "sb-terminating": {tartarus.StateTerminated, ""},
		"sb-ended": {tartarus.StateTerminated, ""}, "sb-other-node": {tartarus.StateRunning, ""},
	}
	for id, w := range states {
		sb, _ := e.store.Get(ctx, id)
		if sb.State != w.state || sb.Error != w.msg {
			t.Errorf("%s: %s %q, want %s %q", id, sb.State, sb.Error, w.state, w.msg)
		}
	}
	// The adopted sandboxes work as before.
	var out bytes.Buffer
	if _, err := e.agent.Exec(ctx, kept, &tartarus.ExecRequest{Cmd: []string{"echo", "ok"}, Stdout: &out}); err != nil || out.String() != "ok\n" {
		t.Errorf("exec after recover: %v %q", err, out.String())
	}
	if _, err := e.agent.Resume(ctx, paused); err != nil {
		t.Errorf("resume after recover: %v", err)
	}
}

func sorted(s ...string) []string {
	slices.Sort(s)
	return s
}

func TestExpire(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t, fake.Config{})
	short, err := e.agent.Create(ctx, "acme", &tartarus.CreateRequest{TimeoutS: 60})
	if err != nil {
		t.Fatal(err)
	}
	long, err := e.agent.Create(ctx, "acme", &tartarus.CreateRequest{TimeoutS: 3600})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.agent.Pause(ctx, long.ID); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		advance time.Duration
		want    []string
	}{
		{59 * time.Second, nil},
		{time.Second, []string{short.ID}},
		{time.Hour, []string{long.ID}}, // paused sandboxes expire too
		{time.Hour, nil},
	}
	for i, tt := range tests {
		e.clock.Advance(tt.advance)
		got, err := e.agent.Expire(ctx)
		if err != nil || !slices.Equal(got, tt.want) {
			t.Errorf("step %d: Expire = %v, %v; want %v", i, got, err, tt.want)
		}
	}
	for _, id := range []string{short.ID, long.ID} {
		if sb, _ := e.store.Get(ctx, id); sb.State != tartarus.StateTerminated {
			t.Errorf("%s is %s", id, sb.State)
		}
	}
	if got := e.instances(t); len(got) != 0 {
		t.Errorf("runtime still has %v", got)
	}
}

// TestRunExpires checks that the loop, driven by the fake clock's ticker,
// destroys an expired sandbox.
func TestRunExpires(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	e := newEnv(t, fake.Config{})
	sb, err := e.agent.Create(ctx, "acme", &tartarus.CreateRequest{TimeoutS: 10})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- e.agent.Run(ctx) }()
	deadline := time.Now().Add(10 * time.Second)
	for {
		// Advance on every round: the loop may not have made its ticker yet.
		e.clock.Advance(5 * time.Second)
		got, _ := e.store.Get(ctx, sb.ID)
		if got.State == tartarus.StateTerminated {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("sandbox still %s", got.State)
		}
		time.Sleep(5 * time.Millisecond)
	}
	cancel()
	if err := <-done; err != nil {
		t.Errorf("Run: %v", err)
	}
}

func TestReady(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t, fake.Config{})
	if err := e.agent.Ready(ctx); err != nil {
		t.Errorf("Ready: %v", err)
	}
	e.agent.cfg.Images = catalog{}
	if err := e.agent.Ready(ctx); !errors.Is(err, tartarus.ErrUnavailable) {
		t.Errorf("Ready without templates: %v", err)
	}
	info, err := e.agent.Info(ctx)
	if err != nil || info.Name != "node-1" || len(info.Runtimes) != 1 || info.Runtimes[0].MaxCPUs != 4 || info.DefaultRuntime != "fake" {
		t.Errorf("Info: %+v %v", info, err)
	}
}

func TestConfigValidate(t *testing.T) {
	_, err := New(Config{Node: "Bad Name", CPUOvercommit: -1})
	for _, want := range []string{"node name", "no store", "no runtime", "no template catalog", "cpu overcommit"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("New: %v, want it to mention %q", err, want)
		}
	}
}

// TestCPUOvercommit checks how many one-CPU sandboxes a 2-CPU node takes
// before it refuses for CPUs, by default and with CPUOvercommit set.
func TestCPUOvercommit(t *testing.T) {
	tests := []struct {
		name       string
		overcommit int
		fit        int
	}{
		{"default", 0, 2 * DefaultCPUOvercommit},
		{"lower", 3, 6},
		{"higher", 12, 24},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := context.Background()
			e := newEnv(t, fake.Config{MaxCPUs: 2, MaxMemoryMB: 1 << 20})
			a, err := New(Config{Node: "node-1", Store: e.store, Runtimes: []tartarus.Runtime{e.rt},
				Images: catalog{"base": {Name: "base"}}, Clock: e.clock, CPUOvercommit: tt.overcommit})
			if err != nil {
				t.Fatal(err)
			}
			for i := range tt.fit {
				if _, err := a.Create(ctx, "acme", &tartarus.CreateRequest{}); err != nil {
					t.Fatalf("create %d of %d: %v", i+1, tt.fit, err)
				}
			}
			_, err = a.Create(ctx, "acme", &tartarus.CreateRequest{})
			if !errors.Is(err, tartarus.ErrResourceExhausted) || !strings.Contains(err.Error(), "cpus") {
				t.Errorf("create %d: %v, want ErrResourceExhausted for cpus", tt.fit+1, err)
			}
		})
	}
}

// TestLocksDoNotLeak checks that per-sandbox locks go away once released.
func TestLocksDoNotLeak(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t, fake.Config{})
	for range 5 {
		sb, err := e.agent.Create(ctx, "acme", &tartarus.CreateRequest{})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := e.agent.Destroy(ctx, sb.ID); err != nil {
			t.Fatal(err)
		}
	}
	e.agent.mu.Lock()
	n := len(e.agent.locks)
	e.agent.mu.Unlock()
	if n != 0 {
		t.Errorf("%d locks left", n)
	}
}
