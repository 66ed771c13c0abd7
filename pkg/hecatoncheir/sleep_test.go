package hecatoncheir

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/tartarus-sandbox/tartarus/pkg/clock"

	"github.com/tartarus-sandbox/tartarus/pkg/erebus"
	"github.com/tartarus-sandbox/tartarus/pkg/hypnos"
	"github.com/tartarus-sandbox/tartarus/pkg/runtimes/fake"
	"github.com/tartarus-sandbox/tartarus/pkg/store"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

// failingStore is an Erebus store whose writes fail while failPut is set,
// as a full disk or a broken backend does.
type failingStore struct {
	erebus.Store
	failPut atomic.Bool
}

func (f *failingStore) Put(ctx context.Context, key string, r io.Reader) (erebus.Object, error) {
	if f.failPut.Load() {
		return erebus.Object{}, tartarus.Errorf(tartarus.ErrResourceExhausted, "put %s: no space left on device", key)
	}
	return f.Store.Put(ctx, key, r)
}

// snapEnv is an agent over the fake runtime with snapshots, a real local
// Erebus store and the SQLite store, all in one directory that outlives a
// restart.
type snapEnv struct {
	agent  *Agent
	rt     *fake.Runtime
	store  *store.SQLite
	blobs  *failingStore
	clock  *clock.Fake
	dir    string
	starts atomic.Int32 // boots (Start calls) in the runtime
	opts   snapOpts
	cat    catalog
}

type snapOpts struct {
	createFromSnapshot bool
	pool               int
	noSnapshotCap      bool
	clockStart         time.Time
	digest             string
	templateCache      bool
}

func newSnapEnv(t testing.TB, o snapOpts) *snapEnv {
	t.Helper()
	dir := t.TempDir()
	st, err := store.OpenSQLite(context.Background(), filepath.Join(dir, "t.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	if o.clockStart.IsZero() {
		o.clockStart = epoch
	}
	if o.digest == "" {
		o.digest = "sha256:1111aaaa2222bbbb"
	}
	e := &snapEnv{store: st, clock: clock.NewFake(o.clockStart), dir: dir, opts: o}
	e.start(t)
	return e
}

// start makes a new runtime, blob store and agent over the env's state and
// recovers, as a restarted server does.
func (e *snapEnv) start(t testing.TB) *RecoverReport {
	t.Helper()
	caps := &tartarus.Capabilities{Pause: true, Snapshot: !e.opts.noSnapshotCap, Signal: true, Files: true, Recover: true}
	rt, err := fake.New(fake.Config{StateDir: filepath.Join(e.dir, "vms"), Capabilities: caps,
		StartHook: func(context.Context, string) error { e.starts.Add(1); return nil }})
	if err != nil {
		t.Fatal(err)
	}
	local, err := erebus.NewLocal(filepath.Join(e.dir, "snapshots"))
	if err != nil {
		t.Fatal(err)
	}
	tmp := filepath.Join(e.dir, "tmp")
	if err := os.MkdirAll(tmp, 0o700); err != nil {
		t.Fatal(err)
	}
	e.blobs = &failingStore{Store: local}
	cache := ""
	if e.opts.templateCache {
		cache = filepath.Join(e.dir, "template-cache")
	}
	e.cat = catalog{"base": {Name: "base", Digest: e.opts.digest}}
	a, err := New(Config{TemplateCacheDir: cache, Node: "node-1", Store: e.store, Runtimes: []tartarus.Runtime{rt},
		Images: e.cat, Clock: e.clock,
		Snapshots: e.blobs, SnapshotTempDir: tmp, CreateFromSnapshot: e.opts.createFromSnapshot,
		Hypnos: hypnos.HypnosConfig{PrewarmPoolSize: e.opts.pool}})
	if err != nil {
		t.Fatal(err)
	}
	e.agent, e.rt = a, rt
	rep, err := a.Recover(context.Background())
	if err != nil {
		t.Fatalf("Recover: %v", err)
	}
	return rep
}

func (e *snapEnv) instances(t testing.TB) []string {
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

func (e *snapEnv) create(t testing.TB, req tartarus.CreateRequest) *tartarus.Sandbox {
	t.Helper()
	sb, err := e.agent.Create(context.Background(), "acme", &req)
	if err != nil {
		t.Fatalf("Create: %v", err)
	}
	return sb
}

func (e *snapEnv) state(t *testing.T, id string) *tartarus.Sandbox {
	t.Helper()
	sb, err := e.store.Get(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	return sb
}

func writeFile(t *testing.T, a *Agent, id, path, content string) {
	t.Helper()
	if err := a.WriteFile(context.Background(), id, path, 0o644, strings.NewReader(content)); err != nil {
		t.Fatalf("WriteFile %s: %v", path, err)
	}
}

func readFile(t *testing.T, a *Agent, id, path string) string {
	t.Helper()
	rc, err := a.ReadFile(context.Background(), id, path)
	if err != nil {
		t.Fatalf("ReadFile %s in %s: %v", path, id, err)
	}
	defer rc.Close()
	b, err := io.ReadAll(rc)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func execOut(t *testing.T, a *Agent, id, script string) string {
	t.Helper()
	var out bytes.Buffer
	res, err := a.Exec(context.Background(), id, &tartarus.ExecRequest{Cmd: []string{"sh", "-c", script}, Stdout: &out})
	if err != nil {
		t.Fatalf("Exec in %s: %v", id, err)
	}
	if res.ExitCode != 0 {
		t.Fatalf("Exec in %s: exit %d", id, res.ExitCode)
	}
	return out.String()
}

func TestHibernateAndTransparentWake(t *testing.T) {
	ctx := context.Background()
	e := newSnapEnv(t, snapOpts{})
	sb := e.create(t, tartarus.CreateRequest{Env: map[string]string{"A": "from-create"}})
	writeFile(t, e.agent, sb.ID, "/root/note", "before sleep")

	got, err := e.agent.Hibernate(ctx, sb.ID)
	if err != nil {
		t.Fatalf("Hibernate: %v", err)
	}
	if got.State != tartarus.StateHibernated || got.SnapshotBytes <= 0 {
		t.Fatalf("after hibernate: state %s, snapshot_bytes %d", got.State, got.SnapshotBytes)
	}
	if ids := e.instances(t); len(ids) != 0 {
		t.Errorf("the runtime still holds %v while the sandbox sleeps", ids)
	}
	list, _ := e.agent.List(ctx, tartarus.SandboxFilter{Tenant: "acme"})
	if len(list) != 1 || list[0].State != tartarus.StateHibernated || list[0].SnapshotBytes != got.SnapshotBytes {
		t.Errorf("list shows %+v", list[0])
	}
	if again, err := e.agent.Hibernate(ctx, sb.ID); err != nil || again.State != tartarus.StateHibernated {
		t.Errorf("second hibernate: %v %v", again, err)
	}

	// Exec wakes it: same answer, with the sandbox's environment.
	if out := execOut(t, e.agent, sb.ID, "echo $A"); out != "from-create\n" {
		t.Errorf("exec after sleep: %q", out)
	}
	if now := e.state(t, sb.ID); now.State != tartarus.StateRunning || now.SnapshotBytes != 0 {
		t.Errorf("after a transparent wake: state %s, snapshot_bytes %d", now.State, now.SnapshotBytes)
	}
	if s := readFile(t, e.agent, sb.ID, "/root/note"); s != "before sleep" {
		t.Errorf("file after wake: %q", s)
	}

	// Files wake it too; an explicit wake of a running sandbox is a no-op.
	if _, err := e.agent.Hibernate(ctx, sb.ID); err != nil {
		t.Fatal(err)
	}
	if s := readFile(t, e.agent, sb.ID, "/root/note"); s != "before sleep" {
		t.Errorf("file read that woke the sandbox: %q", s)
	}
	if w, err := e.agent.Wake(ctx, sb.ID); err != nil || w.State != tartarus.StateRunning {
		t.Errorf("wake of a running sandbox: %v %v", w, err)
	}

	// A paused sandbox hibernates and comes back paused.
	if _, err := e.agent.Pause(ctx, sb.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := e.agent.Hibernate(ctx, sb.ID); err != nil {
		t.Fatalf("hibernate paused: %v", err)
	}
	if w, err := e.agent.Wake(ctx, sb.ID); err != nil || w.State != tartarus.StatePaused {
		t.Errorf("wake of a sandbox paused before sleep: %+v %v", w, err)
	}

	// Destroying a sleeping sandbox removes its snapshot.
	if _, err := e.agent.Hibernate(ctx, sb.ID); err != nil {
		t.Fatal(err)
	}
	if d, err := e.agent.Destroy(ctx, sb.ID); err != nil || d.State != tartarus.StateTerminated {
		t.Fatalf("destroy sleeping: %v %v", d, err)
	}
	if objs, _ := e.blobs.List(ctx, "sleep-fake/"); len(objs) != 0 {
		t.Errorf("snapshot objects left after destroy: %v", objs)
	}
}

func TestWakeAfterAgentRestart(t *testing.T) {
	ctx := context.Background()
	e := newSnapEnv(t, snapOpts{})
	sb := e.create(t, tartarus.CreateRequest{})
	writeFile(t, e.agent, sb.ID, "/data", "kept")
	if _, err := e.agent.Hibernate(ctx, sb.ID); err != nil {
		t.Fatal(err)
	}
	rep := e.start(t) // a new agent, runtime and store handle over the same state
	if !slices.Contains(rep.Hibernated, sb.ID) || len(rep.Lost) != 0 {
		t.Errorf("recover report %+v", rep)
	}
	if st := e.state(t, sb.ID); st.State != tartarus.StateHibernated {
		t.Fatalf("after restart: %s", st.State)
	}
	if s := readFile(t, e.agent, sb.ID, "/data"); s != "kept" {
		t.Errorf("file after restart and wake: %q", s)
	}
	if st := e.state(t, sb.ID); st.State != tartarus.StateRunning {
		t.Errorf("after wake: %s", st.State)
	}
}

func TestDamagedSnapshotFailsTheSandbox(t *testing.T) {
	ctx := context.Background()
	e := newSnapEnv(t, snapOpts{})
	sb := e.create(t, tartarus.CreateRequest{})
	if _, err := e.agent.Hibernate(ctx, sb.ID); err != nil {
		t.Fatal(err)
	}
	// Flip a byte in the stored snapshot data.
	var data string
	filepath.WalkDir(filepath.Join(e.dir, "snapshots", "objects", "sleep-fake"), func(p string, d fs.DirEntry, err error) error {
		if err == nil && d.Name() == "data" {
			data = p
		}
		return nil
	})
	b, err := os.ReadFile(data)
	if err != nil {
		t.Fatalf("stored snapshot data: %v", err)
	}
	b[len(b)-10] ^= 0x55
	if err := os.WriteFile(data, b, 0o600); err != nil {
		t.Fatal(err)
	}

	_, err = e.agent.Exec(ctx, sb.ID, &tartarus.ExecRequest{Cmd: []string{"true"}})
	if !errors.Is(err, tartarus.ErrFailedPrecondition) || !strings.Contains(err.Error(), "checksum") {
		t.Errorf("exec on a sandbox with a damaged snapshot: %v; want a failed precondition naming the checksum", err)
	}
	st := e.state(t, sb.ID)
	if st.State != tartarus.StateFailed || !strings.Contains(st.Error, "checksum") {
		t.Errorf("sandbox %s, error %q; want failed with the checksum named", st.State, st.Error)
	}
	if ids := e.instances(t); len(ids) != 0 {
		t.Errorf("a sandbox was restored from garbage: %v", ids)
	}
}

func TestStoreErrorDuringSleepKeepsRunning(t *testing.T) {
	ctx := context.Background()
	e := newSnapEnv(t, snapOpts{})
	sb := e.create(t, tartarus.CreateRequest{})
	writeFile(t, e.agent, sb.ID, "/data", "still here")
	e.blobs.failPut.Store(true)
	_, err := e.agent.Hibernate(ctx, sb.ID)
	if !errors.Is(err, tartarus.ErrResourceExhausted) || !strings.Contains(err.Error(), "no space") {
		t.Errorf("Hibernate with a failing store: %v", err)
	}
	if st := e.state(t, sb.ID); st.State != tartarus.StateRunning {
		t.Errorf("state %s after a failed sleep, want running", st.State)
	}
	if s := readFile(t, e.agent, sb.ID, "/data"); s != "still here" {
		t.Errorf("file after a failed sleep: %q", s)
	}
	if out := execOut(t, e.agent, sb.ID, "echo ok"); out != "ok\n" {
		t.Errorf("exec after a failed sleep: %q", out)
	}
	e.blobs.failPut.Store(false)
	if _, err := e.agent.Hibernate(ctx, sb.ID); err != nil {
		t.Errorf("hibernate once the store works again: %v", err)
	}
}

func TestAutoHibernate(t *testing.T) {
	ctx := context.Background()
	// The fake runtime's guest activity is real time; start the clock there.
	e := newSnapEnv(t, snapOpts{clockStart: time.Now()})
	if _, err := e.agent.Create(ctx, "acme", &tartarus.CreateRequest{AutoHibernateS: -1}); !errors.Is(err, tartarus.ErrInvalid) {
		t.Errorf("negative auto_hibernate_s: %v, want ErrInvalid", err)
	}
	quick := e.create(t, tartarus.CreateRequest{AutoHibernateS: 60})
	other := e.create(t, tartarus.CreateRequest{}) // server default: off
	if quick.AutoHibernateS != 60 {
		t.Errorf("auto_hibernate_s recorded as %d", quick.AutoHibernateS)
	}
	hyp := e.agent.snaps["fake"].hyp
	e.clock.Advance(30 * time.Second)
	hyp.Check(ctx)
	if st := e.state(t, quick.ID); st.State != tartarus.StateRunning {
		t.Fatalf("asleep after 30s idle: %s", st.State)
	}
	// API activity counts: an exec at 30s pushes the sleep to 90s.
	execOut(t, e.agent, quick.ID, "true")
	e.clock.Advance(45 * time.Second)
	hyp.Check(ctx)
	if st := e.state(t, quick.ID); st.State != tartarus.StateRunning {
		t.Fatalf("asleep 45s after an exec: %s", st.State)
	}
	e.clock.Advance(20 * time.Second)
	hyp.Check(ctx)
	if st := e.state(t, quick.ID); st.State != tartarus.StateHibernated || st.SnapshotBytes == 0 {
		t.Errorf("after 65s idle: %s (%d bytes), want hibernated", st.State, st.SnapshotBytes)
	}
	if st := e.state(t, other.ID); st.State != tartarus.StateRunning {
		t.Errorf("sandbox without a threshold: %s", st.State)
	}
	// The threshold survives a restart.
	e.start(t)
	if _, err := e.agent.Wake(ctx, quick.ID); err != nil {
		t.Fatal(err)
	}
	e.clock.Advance(61 * time.Second)
	e.agent.snaps["fake"].hyp.Check(ctx)
	if st := e.state(t, quick.ID); st.State != tartarus.StateHibernated {
		t.Errorf("after restart and 61s idle: %s", st.State)
	}
}

func TestFork(t *testing.T) {
	ctx := context.Background()
	e := newSnapEnv(t, snapOpts{})
	parent := e.create(t, tartarus.CreateRequest{Env: map[string]string{"A": "parent"}, Metadata: map[string]string{"k": "v"}})
	writeFile(t, e.agent, parent.ID, "/work/state", "forked")

	kids, err := e.agent.Fork(ctx, parent.ID, 3)
	if err != nil {
		t.Fatalf("Fork: %v", err)
	}
	if len(kids) != 3 {
		t.Fatalf("%d copies, want 3", len(kids))
	}
	for _, k := range kids {
		if k.State != tartarus.StateRunning || k.ID == parent.ID || k.Metadata["forked_from"] != parent.ID || k.Tenant != "acme" {
			t.Errorf("copy %+v", k)
		}
		if s := readFile(t, e.agent, k.ID, "/work/state"); s != "forked" {
			t.Errorf("%s: file %q", k.ID, s)
		}
		if out := execOut(t, e.agent, k.ID, "echo $A"); out != "parent\n" {
			t.Errorf("%s: env %q", k.ID, out)
		}
	}
	// Independent: a write in one copy shows nowhere else.
	writeFile(t, e.agent, kids[0].ID, "/work/only-0", "x")
	for _, id := range []string{parent.ID, kids[1].ID} {
		if _, err := e.agent.ReadFile(ctx, id, "/work/only-0"); !errors.Is(err, tartarus.ErrNotFound) {
			t.Errorf("%s sees a file written in %s: %v", id, kids[0].ID, err)
		}
	}
	if st := e.state(t, parent.ID); st.State != tartarus.StateRunning {
		t.Errorf("parent is %s after fork", st.State)
	}
	if objs, _ := e.blobs.List(ctx, "fork-fake/"); len(objs) != 0 {
		t.Errorf("fork snapshot left behind: %v", objs)
	}

	// 4 sandboxes of 256 MiB run on a 2048 MiB node: 5 more do not fit.
	if _, err := e.agent.Fork(ctx, parent.ID, 5); !errors.Is(err, tartarus.ErrResourceExhausted) {
		t.Errorf("fork beyond capacity: %v, want ErrResourceExhausted", err)
	}
	for _, n := range []int{0, MaxFork + 1} {
		if _, err := e.agent.Fork(ctx, parent.ID, n); !errors.Is(err, tartarus.ErrInvalid) {
			t.Errorf("fork %d: %v, want ErrInvalid", n, err)
		}
	}
	if list, _ := e.store.List(ctx, tartarus.SandboxFilter{}); len(list) != 4 {
		t.Errorf("%d sandboxes recorded after refused forks, want 4", len(list))
	}
}

func TestNoSnapshotterIsNotImplemented(t *testing.T) {
	ctx := context.Background()
	e := newSnapEnv(t, snapOpts{noSnapshotCap: true, createFromSnapshot: true})
	sb := e.create(t, tartarus.CreateRequest{})
	for name, do := range map[string]func() error{
		"hibernate": func() error { _, err := e.agent.Hibernate(ctx, sb.ID); return err },
		"wake":      func() error { _, err := e.agent.Wake(ctx, sb.ID); return err },
		"fork":      func() error { _, err := e.agent.Fork(ctx, sb.ID, 1); return err },
	} {
		if err := do(); !errors.Is(err, tartarus.ErrNotImplemented) || !strings.Contains(err.Error(), "snapshot capability") {
			t.Errorf("%s: %v, want ErrNotImplemented with the reason", name, err)
		}
	}
	if st := e.state(t, sb.ID); st.State != tartarus.StateRunning {
		t.Errorf("state %s", st.State)
	}
}

func TestCreateByRestore(t *testing.T) {
	for _, cache := range []bool{false, true} {
		t.Run(fmt.Sprintf("template cache %v", cache), func(t *testing.T) { testCreateByRestore(t, cache) })
	}
}

func testCreateByRestore(t *testing.T, cache bool) {
	ctx := context.Background()
	e := newSnapEnv(t, snapOpts{createFromSnapshot: true, templateCache: cache})
	var ids []string
	for i := range 3 {
		sb := e.create(t, tartarus.CreateRequest{Env: map[string]string{"N": string(rune('a' + i))}})
		ids = append(ids, sb.ID)
		if out := execOut(t, e.agent, sb.ID, "echo $N"); out != string(rune('a'+i))+"\n" {
			t.Errorf("%s: env from the create request: %q", sb.ID, out)
		}
	}
	// One boot (the template's), then restores.
	if n := e.starts.Load(); n != 1 {
		t.Errorf("%d boots for 3 creates, want 1 (the template snapshot's)", n)
	}
	writeFile(t, e.agent, ids[0], "/mine", "0")
	if _, err := e.agent.ReadFile(ctx, ids[1], "/mine"); !errors.Is(err, tartarus.ErrNotFound) {
		t.Errorf("restored sandboxes share a disk: %v", err)
	}
	snaps, _ := e.agent.snaps["fake"].templates.List(ctx)
	if len(snaps) != 1 {
		t.Fatalf("%d template snapshots, want 1", len(snaps))
	}
	first := snaps[0].ID

	// Another shape gets its own snapshot.
	e.create(t, tartarus.CreateRequest{MemoryMB: 512})
	if n := e.starts.Load(); n != 2 {
		t.Errorf("%d boots after a new shape, want 2", n)
	}

	// A rebuilt template (new digest) gets a new snapshot; the old ones go.
	e.opts.digest = "sha256:3333cccc4444dddd"
	e.start(t)
	e.create(t, tartarus.CreateRequest{})
	if n := e.starts.Load(); n != 3 {
		t.Errorf("%d boots after the template changed, want 3", n)
	}
	snaps, _ = e.agent.snaps["fake"].templates.List(ctx)
	if len(snaps) != 1 || snaps[0].ID == first || snaps[0].Labels["digest"] != "sha256:3333cccc4444dddd" {
		t.Errorf("template snapshots after a rebuild: %+v", snaps)
	}
	if cache {
		dirs, _ := filepath.Glob(filepath.Join(e.dir, "template-cache", "fake", "*"))
		if len(dirs) != 1 || filepath.Base(dirs[0]) != snaps[0].ID {
			t.Errorf("template cache holds %v; want only %s", dirs, snaps[0].ID)
		}
	}
}

func TestWarmPool(t *testing.T) {
	ctx := context.Background()
	e := newSnapEnv(t, snapOpts{createFromSnapshot: true, pool: 2})
	first := e.create(t, tartarus.CreateRequest{}) // restores, and asks for a pool
	e.agent.FillWarmPools(ctx)
	if got := e.agent.PoolSizes()["fake/base/256/1"]; got != 2 {
		t.Fatalf("pool holds %d, want 2", got)
	}
	pooled := e.instances(t)
	sb := e.create(t, tartarus.CreateRequest{Env: map[string]string{"A": "claimed"}})
	if !slices.Contains(pooled, sb.ID) {
		t.Errorf("create did not claim a pooled sandbox: %s not in %v", sb.ID, pooled)
	}
	if got := e.agent.PoolSizes()["fake/base/256/1"]; got != 1 {
		t.Errorf("pool holds %d after a claim, want 1", got)
	}
	if out := execOut(t, e.agent, sb.ID, "echo $A"); out != "claimed\n" {
		t.Errorf("env of a claimed sandbox: %q", out)
	}
	e.agent.FillWarmPools(ctx)
	if got := e.agent.PoolSizes()["fake/base/256/1"]; got != 2 {
		t.Errorf("pool holds %d after refill, want 2", got)
	}
	// A pooled sandbox that vanished is dropped and replaced.
	var gone string
	for _, id := range e.instances(t) {
		if _, err := e.store.Get(ctx, id); errors.Is(err, tartarus.ErrNotFound) {
			gone = id
		}
	}
	if err := e.rt.Lose(gone); err != nil {
		t.Fatal(err)
	}
	e.agent.FillWarmPools(ctx)
	if got := e.agent.PoolSizes()["fake/base/256/1"]; got != 2 {
		t.Errorf("pool holds %d after losing one and a refill, want 2", got)
	}
	for range 2 {
		if sb := e.create(t, tartarus.CreateRequest{}); sb.ID == gone {
			t.Errorf("create claimed the vanished sandbox %s", gone)
		}
	}
	// Pooled sandboxes are never recorded; a restart destroys them.
	e.agent.FillWarmPools(ctx)
	if n := e.starts.Load(); n != 1 {
		t.Errorf("%d boots, want 1", n)
	}
	rep := e.start(t)
	if len(rep.Orphans) != 2 || len(rep.Adopted) != 4 || !slices.Contains(rep.Adopted, first.ID) || !slices.Contains(rep.Adopted, sb.ID) {
		t.Errorf("recover after restart: %+v", rep)
	}
}

// A crash can lose the store's write of a sleep that Hypnos finished, or
// leave the sleep of a sandbox destroyed meanwhile: Recover sets both right.
func TestRecoverReconcilesSleepRecords(t *testing.T) {
	ctx := context.Background()
	e := newSnapEnv(t, snapOpts{})
	unrecorded := e.create(t, tartarus.CreateRequest{})
	ended := e.create(t, tartarus.CreateRequest{})
	writeFile(t, e.agent, unrecorded.ID, "/f", "x")
	hyp := e.agent.snaps["fake"].hyp
	for _, id := range []string{unrecorded.ID, ended.ID} {
		if _, err := hyp.Sleep(ctx, id, nil); err != nil {
			t.Fatal(err)
		}
	}
	// The store missed the first sleep; the second sandbox was destroyed.
	if _, err := e.store.Move(ctx, unrecorded.ID, tartarus.StateHibernated, tartarus.StateRunning, store.Change{At: epoch}); err != nil {
		t.Fatal(err)
	}
	for _, to := range []tartarus.State{tartarus.StateTerminating, tartarus.StateTerminated} {
		if _, err := e.store.Move(ctx, ended.ID, e.state(t, ended.ID).State, to, store.Change{At: epoch}); err != nil {
			t.Fatal(err)
		}
	}
	rep := e.start(t)
	if !slices.Contains(rep.Hibernated, unrecorded.ID) || len(rep.Lost) != 0 {
		t.Errorf("recover report %+v", rep)
	}
	if st := e.state(t, unrecorded.ID); st.State != tartarus.StateHibernated || st.SnapshotBytes == 0 {
		t.Errorf("sandbox whose sleep the store missed: %s (%d bytes)", st.State, st.SnapshotBytes)
	}
	if s := readFile(t, e.agent, unrecorded.ID, "/f"); s != "x" {
		t.Errorf("file after wake: %q", s)
	}
	if recs, _ := e.agent.snaps["fake"].hyp.ListSleeping(ctx, nil); len(recs) != 0 {
		t.Errorf("sleep records left: %+v", recs)
	}
	if objs, _ := e.blobs.List(ctx, "sleep-fake/"); len(objs) != 0 {
		t.Errorf("snapshots left: %v", objs)
	}
}

func TestCopySparse(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "src")
	f, err := os.Create(src)
	if err != nil {
		t.Fatal(err)
	}
	// data, 8 MiB hole, data, trailing 4 MiB hole
	f.WriteAt(bytes.Repeat([]byte("a"), 1<<20), 0)
	f.WriteAt(bytes.Repeat([]byte("b"), 4096), 9<<20)
	f.Truncate(14 << 20)
	f.Close()
	dst := filepath.Join(dir, "dst")
	if err := copySparse(src, dst); err != nil {
		t.Fatal(err)
	}
	a, _ := os.ReadFile(src)
	b, _ := os.ReadFile(dst)
	if !bytes.Equal(a, b) {
		t.Fatalf("copy differs: %d vs %d bytes", len(a), len(b))
	}
	var st syscall.Stat_t
	if err := syscall.Stat(dst, &st); err != nil {
		t.Fatal(err)
	}
	if used := st.Blocks * 512; used > 2<<20 {
		t.Errorf("copy uses %d bytes on disk; the holes were written", used)
	}
}

// Concurrent calls on a hibernated sandbox share one wake and all succeed.
func TestConcurrentCallsWakeOnce(t *testing.T) {
	ctx := context.Background()
	e := newSnapEnv(t, snapOpts{})
	sb := e.create(t, tartarus.CreateRequest{})
	writeFile(t, e.agent, sb.ID, "/f", "x")
	if _, err := e.agent.Hibernate(ctx, sb.ID); err != nil {
		t.Fatal(err)
	}
	errs := make(chan error, 8)
	for range 8 {
		go func() {
			rc, err := e.agent.ReadFile(ctx, sb.ID, "/f")
			if err == nil {
				b, _ := io.ReadAll(rc)
				rc.Close()
				if string(b) != "x" {
					err = fmt.Errorf("read %q", b)
				}
			}
			errs <- err
		}()
	}
	for range 8 {
		if err := <-errs; err != nil {
			t.Error(err)
		}
	}
	if ids := e.instances(t); len(ids) != 1 {
		t.Errorf("instances after concurrent wakes: %v", ids)
	}
}

// The idle watcher leaves a sandbox alone while a lifecycle change holds
// it, and never touches sandboxes the store does not have running.
func TestIdleSleepRespectsLifecycleLock(t *testing.T) {
	ctx := context.Background()
	e := newSnapEnv(t, snapOpts{clockStart: time.Now()})
	sb := e.create(t, tartarus.CreateRequest{AutoHibernateS: 10})
	hyp := e.agent.snaps["fake"].hyp
	unlock := e.agent.lock(sb.ID)
	e.clock.Advance(time.Minute)
	hyp.Check(ctx)
	if st := e.state(t, sb.ID); st.State != tartarus.StateRunning {
		t.Errorf("slept while the agent held the sandbox: %s", st.State)
	}
	unlock()
	hyp.Check(ctx)
	if st := e.state(t, sb.ID); st.State != tartarus.StateHibernated {
		t.Errorf("after the lock was released: %s, want hibernated", st.State)
	}
	// A paused sandbox is not idle-slept either (the user paused it).
	other := e.create(t, tartarus.CreateRequest{AutoHibernateS: 10})
	if _, err := e.agent.Pause(ctx, other.ID); err != nil {
		t.Fatal(err)
	}
	e.clock.Advance(time.Minute)
	hyp.Check(ctx)
	if st := e.state(t, other.ID); st.State != tartarus.StatePaused {
		t.Errorf("paused sandbox after idle check: %s", st.State)
	}
}

// A rebuilt template never hands out warm sandboxes of its old build.
func TestWarmPoolFollowsTemplateRebuild(t *testing.T) {
	ctx := context.Background()
	e := newSnapEnv(t, snapOpts{createFromSnapshot: true, pool: 2})
	e.create(t, tartarus.CreateRequest{})
	e.agent.FillWarmPools(ctx)
	old := e.instances(t)
	e.cat["base"] = &tartarus.Image{Name: "base", Digest: "sha256:9999eeee"}
	sb := e.create(t, tartarus.CreateRequest{})
	if slices.Contains(old, sb.ID) {
		t.Errorf("create after a rebuild claimed %s from the old build's pool", sb.ID)
	}
	e.agent.FillWarmPools(ctx)
	for _, id := range old {
		if _, err := e.store.Get(ctx, id); err == nil {
			continue // a recorded sandbox, not a pooled one
		}
		if slices.Contains(e.instances(t), id) {
			t.Errorf("pooled sandbox %s of the old build still runs", id)
		}
	}
	if got := e.agent.PoolSizes()["fake/base/256/1"]; got != 2 {
		t.Errorf("pool holds %d after the rebuild and a refill, want 2", got)
	}
}
