package hecatoncheir

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/tartarus-sandbox/tartarus/pkg/hypnos"
	"github.com/tartarus-sandbox/tartarus/pkg/runtimes/fake"
	"github.com/tartarus-sandbox/tartarus/pkg/store"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

func TestCreateAsIsIdempotent(t *testing.T) {
	ctx := context.Background()
	e := newSnapEnv(t, snapOpts{})
	created := epoch.Add(-time.Minute)
	want := &tartarus.Sandbox{ID: "sb-chosen", Tenant: "acme", CreatedAt: created, ExpiresAt: created.Add(time.Hour),
		Metadata: map[string]string{"k": "v"}}
	var got []*tartarus.Sandbox
	for range 2 {
		sb, err := e.agent.CreateAs(ctx, want, &tartarus.CreateRequest{Template: "base"})
		if err != nil {
			t.Fatalf("CreateAs: %v", err)
		}
		got = append(got, sb)
	}
	for _, sb := range got {
		if sb.ID != "sb-chosen" || sb.Tenant != "acme" || sb.State != tartarus.StateRunning || sb.Node != "node-1" ||
			!sb.CreatedAt.Equal(created) || !sb.ExpiresAt.Equal(created.Add(time.Hour)) || sb.Metadata["k"] != "v" {
			t.Errorf("CreateAs gave %+v", sb)
		}
	}
	if ids := e.instances(t); !slices.Equal(ids, []string{"sb-chosen"}) {
		t.Errorf("instances = %v, want one", ids)
	}
	if e.starts.Load() != 1 {
		t.Errorf("booted %d times, want 1", e.starts.Load())
	}
	// Counted once, as a cold create (the cluster reads these counts).
	if n := e.agent.CreateCounts()["base"]; len(n) != 1 || n["booted"] != 1 {
		t.Errorf("create counts %v, want one booted", n)
	}
	if _, err := e.agent.CreateAs(ctx, &tartarus.Sandbox{}, &tartarus.CreateRequest{}); !errors.Is(err, tartarus.ErrInvalid) {
		t.Errorf("CreateAs without id: %v, want invalid", err)
	}
}

func TestForkAsMakesOnlyMissingCopies(t *testing.T) {
	ctx := context.Background()
	e := newSnapEnv(t, snapOpts{})
	parent := e.create(t, tartarus.CreateRequest{})
	writeFile(t, e.agent, parent.ID, "/f", "forked")

	first, err := e.agent.ForkAs(ctx, parent.ID, []string{"sb-c1"})
	if err != nil {
		t.Fatalf("ForkAs: %v", err)
	}
	both, err := e.agent.ForkAs(ctx, parent.ID, []string{"sb-c1", "sb-c2"})
	if err != nil {
		t.Fatalf("ForkAs again: %v", err)
	}
	if len(first) != 1 || len(both) != 2 || both[0].ID != "sb-c1" || both[1].ID != "sb-c2" {
		t.Fatalf("ForkAs gave %v then %v", first, both)
	}
	if !both[0].CreatedAt.Equal(first[0].CreatedAt) {
		t.Errorf("sb-c1 was made again")
	}
	if got := readFile(t, e.agent, "sb-c2", "/f"); got != "forked" {
		t.Errorf("copy reads %q", got)
	}
	if n := len(e.instances(t)); n != 3 {
		t.Errorf("%d instances, want parent and two copies", n)
	}
	for _, ids := range [][]string{nil, {"sb-x", "sb-x"}, {parent.ID}} {
		if _, err := e.agent.ForkAs(ctx, parent.ID, ids); !errors.Is(err, tartarus.ErrInvalid) {
			t.Errorf("ForkAs %v: %v, want invalid", ids, err)
		}
	}
}

// secondNode is another agent over its own store and runtime that shares
// e's snapshot store under a key prefix of its own, as agents sharing S3 do.
func secondNode(t *testing.T, e *snapEnv) *Agent {
	t.Helper()
	dir := t.TempDir()
	st, err := store.OpenSQLite(context.Background(), filepath.Join(dir, "b.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	rt, err := fake.New(fake.Config{StateDir: filepath.Join(dir, "vms"),
		Capabilities: &tartarus.Capabilities{Pause: true, Snapshot: true, Signal: true, Files: true, Recover: true}})
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(dir, "tmp"), 0o700); err != nil {
		t.Fatal(err)
	}
	b, err := New(Config{Node: "node-2", Store: st, Runtimes: []tartarus.Runtime{rt}, Images: e.cat, Clock: e.clock,
		Snapshots: e.blobs, SnapshotPrefix: "nodes/node-2/", SnapshotTempDir: filepath.Join(dir, "tmp")})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.Recover(context.Background()); err != nil {
		t.Fatal(err)
	}
	return b
}

func TestAdoptWakesAnotherNodesSandbox(t *testing.T) {
	ctx := context.Background()
	for _, paused := range []bool{false, true} {
		e := newSnapEnv(t, snapOpts{})
		sb := e.create(t, tartarus.CreateRequest{})
		writeFile(t, e.agent, sb.ID, "/state", "kept")
		if paused {
			if _, err := e.agent.Pause(ctx, sb.ID); err != nil {
				t.Fatal(err)
			}
		}
		slept, err := e.agent.Hibernate(ctx, sb.ID)
		if err != nil {
			t.Fatal(err)
		}
		rec, err := e.agent.SleepRecord(ctx, sb.ID)
		if err != nil {
			t.Fatalf("SleepRecord: %v", err)
		}
		b := secondNode(t, e)
		got, err := b.Adopt(ctx, slept, rec)
		if err != nil {
			t.Fatalf("Adopt: %v", err)
		}
		want := tartarus.StateRunning
		if paused {
			want = tartarus.StatePaused
		}
		if got.Node != "node-2" || got.Tenant != "acme" || got.State != want {
			t.Errorf("adopted sandbox = %+v, want %s on node-2", got, want)
		}
		if paused {
			if _, err := b.Resume(ctx, sb.ID); err != nil {
				t.Fatal(err)
			}
		}
		if s := readFile(t, b, sb.ID, "/state"); s != "kept" {
			t.Errorf("adopted sandbox reads %q", s)
		}
		// Delivered again: nothing new happens.
		if again, err := b.Adopt(ctx, slept, rec); err != nil || again.Node != "node-2" {
			t.Errorf("Adopt again: %v, %v", again, err)
		}
		if woken, err := b.Wake(ctx, sb.ID); err != nil || woken.State != tartarus.StateRunning {
			t.Errorf("Wake after adopt: %v, %v", woken, err)
		}
		// The first node comes back and is told to let go.
		if err := e.agent.Drop(ctx, sb.ID, true); err != nil {
			t.Fatalf("Drop: %v", err)
		}
		old := e.state(t, sb.ID)
		if old.State != tartarus.StateTerminated || !Dropped(old) {
			t.Errorf("dropped sandbox on the first node = %+v", old)
		}
		if r, err := e.agent.SleepRecord(ctx, sb.ID); err != nil || r.Status != hypnos.StatusFailed {
			t.Errorf("sleep record after drop: %+v, %v; want a failed one (a tombstone)", r, err)
		}
		if s := readFile(t, b, sb.ID, "/state"); s != "kept" {
			t.Errorf("sandbox on the second node reads %q after the drop", s)
		}
	}
}

// TestDropKeepsSnapshotAcrossRestart: a node told to let go of a
// hibernated sandbox another node may still wake never deletes its
// snapshot, not even in the clean-up of its next start.
func TestDropKeepsSnapshotAcrossRestart(t *testing.T) {
	ctx := context.Background()
	e := newSnapEnv(t, snapOpts{})
	sb := e.create(t, tartarus.CreateRequest{})
	writeFile(t, e.agent, sb.ID, "/state", "kept")
	slept, err := e.agent.Hibernate(ctx, sb.ID)
	if err != nil {
		t.Fatal(err)
	}
	rec, err := e.agent.SleepRecord(ctx, sb.ID)
	if err != nil {
		t.Fatal(err)
	}
	if err := e.agent.Drop(ctx, sb.ID, true); err != nil {
		t.Fatalf("Drop: %v", err)
	}
	rep := e.start(t) // restart: Recover, Hypnos's clean-up
	if slices.Contains(rep.Hibernated, sb.ID) {
		t.Errorf("the dropped sandbox is counted hibernated after the restart")
	}
	if _, err := e.agent.Wake(ctx, sb.ID); err == nil {
		t.Errorf("the dropped sandbox woke on the node that let it go")
	}
	b := secondNode(t, e)
	got, err := b.Adopt(ctx, slept, rec)
	if err != nil {
		t.Fatalf("Adopt after the first node restarted: %v", err)
	}
	if s := readFile(t, b, got.ID, "/state"); s != "kept" {
		t.Errorf("adopted sandbox reads %q", s)
	}
}

func TestAdoptRefusesBadRecords(t *testing.T) {
	ctx := context.Background()
	e := newSnapEnv(t, snapOpts{})
	sb := &tartarus.Sandbox{ID: "sb-1", Template: "base", Runtime: "fake", CPUs: 1, MemoryMB: 256}
	for _, rec := range []*hypnos.SleepRecord{
		{SandboxID: "sb-2", SnapshotID: "s", SnapshotPath: "sleep-fake/s/data"},
		{SandboxID: "sb-1", SnapshotID: "s", SnapshotPath: "elsewhere"},
	} {
		if _, err := e.agent.Adopt(ctx, sb, rec); !errors.Is(err, tartarus.ErrInvalid) {
			t.Errorf("Adopt %+v: %v, want invalid", rec, err)
		}
	}
	// A snapshot taken over another build of the template.
	other := &hypnos.SleepRecord{SandboxID: "sb-1", SnapshotID: "s", SnapshotPath: "sleep-fake/s/data",
		Config: &tartarus.VMConfig{Image: &tartarus.Image{Name: "base", Digest: "another-build"}}}
	if _, err := e.agent.Adopt(ctx, sb, other); !errors.Is(err, tartarus.ErrFailedPrecondition) || !strings.Contains(err.Error(), "another build") {
		t.Errorf("Adopt over another template build: %v, want failed precondition", err)
	}
	// A snapshot that is not there: nothing is recorded, no VM is left.
	_, err := e.agent.Adopt(ctx, sb, &hypnos.SleepRecord{SandboxID: "sb-1", SnapshotID: "s", SnapshotPath: "sleep-fake/s/data"})
	if err == nil {
		t.Fatal("Adopt of a missing snapshot worked")
	}
	if _, gerr := e.store.Get(ctx, "sb-1"); !errors.Is(gerr, tartarus.ErrNotFound) {
		t.Errorf("failed adopt left a record: %v", gerr)
	}
	if ids := e.instances(t); len(ids) != 0 {
		t.Errorf("failed adopt left instances %v", ids)
	}
}

func TestDrop(t *testing.T) {
	ctx := context.Background()
	e := newSnapEnv(t, snapOpts{})
	running := e.create(t, tartarus.CreateRequest{})
	asleep := e.create(t, tartarus.CreateRequest{})
	if _, err := e.agent.Hibernate(ctx, asleep.ID); err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{running.ID, asleep.ID, running.ID, "sb-unknown"} {
		if err := e.agent.Drop(ctx, id, false); err != nil {
			t.Errorf("Drop %s: %v", id, err)
		}
	}
	for _, id := range []string{running.ID, asleep.ID} {
		if sb := e.state(t, id); sb.State != tartarus.StateTerminated || !Dropped(sb) {
			t.Errorf("%s after drop: %+v", id, sb)
		}
	}
	if ids := e.instances(t); len(ids) != 0 {
		t.Errorf("instances after drop: %v", ids)
	}
	// Without keepSnapshot the snapshot of the hibernated one is gone.
	objs, err := e.blobs.List(ctx, "sleep-")
	if err != nil {
		t.Fatal(err)
	}
	if len(objs) != 0 {
		t.Errorf("snapshot objects left after drop: %v", objs)
	}
}

func TestLifecycleCallsAreIdempotent(t *testing.T) {
	ctx := context.Background()
	e := newSnapEnv(t, snapOpts{})
	sb := e.create(t, tartarus.CreateRequest{})
	steps := []struct {
		name string
		do   func(context.Context, string) (*tartarus.Sandbox, error)
		want tartarus.State
	}{
		{"pause", e.agent.Pause, tartarus.StatePaused},
		{"resume", e.agent.Resume, tartarus.StateRunning},
		{"hibernate", e.agent.Hibernate, tartarus.StateHibernated},
		{"wake", e.agent.Wake, tartarus.StateRunning},
		{"destroy", e.agent.Destroy, tartarus.StateTerminated},
	}
	for _, s := range steps {
		for i := range 2 {
			got, err := s.do(ctx, sb.ID)
			if err != nil || got.State != s.want {
				t.Errorf("%s #%d: %v, %v; want %s", s.name, i+1, got, err, s.want)
			}
		}
	}
	if _, err := e.agent.Destroy(ctx, "sb-unknown"); !errors.Is(err, tartarus.ErrNotFound) {
		t.Errorf("Destroy of an unknown id: %v, want not found", err)
	}
}

// TestDiscardDeletesAnotherNodesSnapshot: a second node sharing the
// snapshot store deletes a sleeping sandbox's snapshot, after which nobody
// can adopt it; discarding again is no error.
func TestDiscardDeletesAnotherNodesSnapshot(t *testing.T) {
	ctx := context.Background()
	e := newSnapEnv(t, snapOpts{})
	sb := e.create(t, tartarus.CreateRequest{})
	slept, err := e.agent.Hibernate(ctx, sb.ID)
	if err != nil {
		t.Fatal(err)
	}
	rec, err := e.agent.SleepRecord(ctx, sb.ID)
	if err != nil {
		t.Fatal(err)
	}
	b := secondNode(t, e)
	if err := b.Discard(ctx, slept, rec); err != nil {
		t.Fatalf("Discard: %v", err)
	}
	if err := b.Discard(ctx, slept, rec); err != nil {
		t.Fatalf("Discard again: %v", err)
	}
	if _, err := b.Adopt(ctx, slept, rec); err == nil {
		t.Fatal("adopted a sandbox whose snapshot was discarded")
	}
	if err := b.Discard(ctx, slept, &hypnos.SleepRecord{SandboxID: sb.ID, SnapshotID: "x", SnapshotPath: "elsewhere"}); !errors.Is(err, tartarus.ErrInvalid) {
		t.Fatalf("Discard of a bad record: %v", err)
	}
}

// TestCreateAsClaimsTheWarmSandboxNamed: a server that creates under the
// id of a pooled sandbox gets that sandbox, without a restore; an id not
// in the pool is restored as usual.
func TestCreateAsClaimsTheWarmSandboxNamed(t *testing.T) {
	ctx := context.Background()
	e := newSnapEnv(t, snapOpts{createFromSnapshot: true, pool: 2})
	e.create(t, tartarus.CreateRequest{}) // asks for a pool
	e.agent.FillWarmPools(ctx)
	warm := e.agent.WarmIDs()[PoolKey("fake", "base", 256, 1)]
	if len(warm) != 2 {
		t.Fatalf("warm ids %v, want 2", warm)
	}
	before := len(e.instances(t))
	req := &tartarus.CreateRequest{Template: "base", Env: map[string]string{"A": "named"}}
	sb, err := e.agent.CreateAs(ctx, &tartarus.Sandbox{ID: warm[1], Tenant: "t1"}, req)
	if err != nil || sb.ID != warm[1] || sb.State != tartarus.StateRunning {
		t.Fatalf("CreateAs(%s) = %+v, %v", warm[1], sb, err)
	}
	if n := len(e.instances(t)); n != before {
		t.Errorf("claiming a warm sandbox made %d instances", n-before)
	}
	if got := e.agent.WarmIDs()[PoolKey("fake", "base", 256, 1)]; !slices.Equal(got, warm[:1]) {
		t.Errorf("warm ids after the claim %v, want %v", got, warm[:1])
	}
	if out := execOut(t, e.agent, sb.ID, "echo $A"); out != "named\n" {
		t.Errorf("env of the claimed sandbox: %q", out)
	}
	fresh, err := e.agent.CreateAs(ctx, &tartarus.Sandbox{ID: "sb-not-pooled", Tenant: "t1"}, &tartarus.CreateRequest{Template: "base"})
	if err != nil || fresh.ID != "sb-not-pooled" {
		t.Fatalf("CreateAs of an id not in the pool: %+v, %v", fresh, err)
	}
	if n := len(e.instances(t)); n != before+1 {
		t.Errorf("an id not in the pool: %d new instances, want 1", n-before)
	}
}

// TestCreateAsKeepsTheClassLimits: a replica sizes a create by its heat
// class and sends the class's limits with the sandbox; the node records
// them (its disk throttle and its default network's bandwidth come from
// them) rather than dropping them.
func TestCreateAsKeepsTheClassLimits(t *testing.T) {
	ctx := context.Background()
	e := newSnapEnv(t, snapOpts{})
	heat := &tartarus.SandboxHeat{Heat: "hot", Class: "hot", Rule: "hint", Enforced: true, DiskIOPS: 500, NetworkMbps: 10}
	if _, err := e.agent.CreateAs(ctx, &tartarus.Sandbox{ID: "sb-classed", Tenant: "acme", Heat: heat},
		&tartarus.CreateRequest{Template: "base"}); err != nil {
		t.Fatalf("CreateAs: %v", err)
	}
	sb, err := e.store.Get(ctx, "sb-classed")
	if err != nil {
		t.Fatal(err)
	}
	if sb.Heat == nil || *sb.Heat != *heat {
		t.Errorf("recorded heat %+v, want %+v", sb.Heat, heat)
	}
}
