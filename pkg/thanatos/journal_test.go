package thanatos

import (
	"context"
	"database/sql"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	_ "modernc.org/sqlite"

	"github.com/tartarus-sandbox/tartarus/pkg/store/pgtest"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

// testJournal is the conformance suite every Journal passes.
func testJournal(t *testing.T, j Journal) {
	ctx := ctxT(t)
	code := 137
	a := &tartarus.TerminationStatus{
		SandboxID: "sb-a", Tenant: "acme", Phase: tartarus.PhaseDraining, Reason: tartarus.ReasonTimeout, Signal: tartarus.SignalTerm,
		GracePeriod: 30 * time.Second, CreateCheckpoint: true, CheckpointID: "ck-1", CallbackURL: "https://example.com/cb",
		InitiatedAt: t0, GraceDeadline: t0.Add(30 * time.Second),
		Phases: []tartarus.PhaseRecord{{Phase: tartarus.PhaseInitiated, StartedAt: t0}, {Phase: tartarus.PhaseSignaled, StartedAt: t0.Add(time.Second)}, {Phase: tartarus.PhaseDraining, StartedAt: t0.Add(2 * time.Second)}},
	}
	b := &tartarus.TerminationStatus{SandboxID: "sb-b", Phase: tartarus.PhaseInitiated, Reason: tartarus.ReasonUserRequest, InitiatedAt: t0.Add(-time.Minute), Phases: []tartarus.PhaseRecord{{Phase: tartarus.PhaseInitiated, StartedAt: t0.Add(-time.Minute)}}}
	c := &tartarus.TerminationStatus{SandboxID: "sb-c", Phase: tartarus.PhaseCompleted, Reason: tartarus.ReasonCompleted, InitiatedAt: t0, ExitCode: &code, FinishedAt: t0.Add(time.Second)}
	for _, s := range []*tartarus.TerminationStatus{a, b, c} {
		if err := j.Put(ctx, s); err != nil {
			t.Fatal(err)
		}
	}
	got, err := j.Get(ctx, "sb-a")
	if err != nil {
		t.Fatal(err)
	}
	if got.Tenant != "acme" || got.Phase != tartarus.PhaseDraining || !got.GraceDeadline.Equal(a.GraceDeadline) || len(got.Phases) != 3 ||
		!got.Started(tartarus.PhaseSignaled).Equal(t0.Add(time.Second)) || got.CheckpointID != "ck-1" || got.GracePeriod != 30*time.Second {
		t.Errorf("got %+v", got)
	}
	if got, _ := j.Get(ctx, "sb-c"); got.ExitCode == nil || *got.ExitCode != 137 {
		t.Errorf("exit code lost: %+v", got)
	}
	if _, err := j.Get(ctx, "sb-x"); !errors.Is(err, tartarus.ErrNotFound) {
		t.Errorf("missing: %v", err)
	}
	pending, err := j.ListPending(ctx)
	if err != nil || len(pending) != 2 || pending[0].SandboxID != "sb-b" || pending[1].SandboxID != "sb-a" {
		t.Fatalf("pending %v, %v", pending, err)
	}
	// Replacing moves a record out of pending.
	a.Phase = tartarus.PhaseFailed
	a.ErrorMessage = "kill: boom"
	if err := j.Put(ctx, a); err != nil {
		t.Fatal(err)
	}
	if pending, _ := j.ListPending(ctx); len(pending) != 1 {
		t.Errorf("pending after final %v", pending)
	}
	if got, _ := j.Get(ctx, "sb-a"); got.ErrorMessage != "kill: boom" {
		t.Errorf("after replace %+v", got)
	}

	cks := []*tartarus.Checkpoint{
		{ID: "ck-1", SandboxID: "sb-a", Tenant: "acme", CreatedAt: t0, ExpiresAt: t0.Add(time.Hour), Size: 10, SnapshotRef: "r1", Restorable: true, Reason: tartarus.ReasonTimeout},
		{ID: "ck-2", SandboxID: "sb-b", Tenant: "other", CreatedAt: t0.Add(time.Second), ExpiresAt: t0.Add(2 * time.Hour), SnapshotRef: "r2"},
		{ID: "ck-3", SandboxID: "sb-c", Tenant: "acme", CreatedAt: t0.Add(2 * time.Second), ExpiresAt: t0.Add(3 * time.Hour), SnapshotRef: "r3"},
	}
	for _, ck := range cks {
		if err := j.PutCheckpoint(ctx, ck); err != nil {
			t.Fatal(err)
		}
	}
	if got, err := j.GetCheckpoint(ctx, "ck-1"); err != nil || *got != *cks[0] {
		t.Errorf("checkpoint %+v, %v", got, err)
	}
	if _, err := j.GetCheckpoint(ctx, "ck-x"); !errors.Is(err, tartarus.ErrNotFound) {
		t.Errorf("missing checkpoint: %v", err)
	}
	if l, _ := j.ListCheckpoints(ctx, "acme"); len(l) != 2 || l[0].ID != "ck-1" || l[1].ID != "ck-3" {
		t.Errorf("acme's %v", l)
	}
	if l, _ := j.ListCheckpoints(ctx, ""); len(l) != 3 {
		t.Errorf("all %v", l)
	}
	if l, _ := j.ExpiredCheckpoints(ctx, t0.Add(2*time.Hour)); len(l) != 2 || l[0].ID != "ck-1" || l[1].ID != "ck-2" {
		t.Errorf("expired %v", l)
	}
	if err := j.DeleteCheckpoint(ctx, "ck-1"); err != nil {
		t.Fatal(err)
	}
	if err := j.DeleteCheckpoint(ctx, "ck-1"); err != nil {
		t.Errorf("deleting twice: %v", err)
	}
	if l, _ := j.ListCheckpoints(ctx, "acme"); len(l) != 1 {
		t.Errorf("after delete %v", l)
	}
}

func TestMemJournal(t *testing.T) { testJournal(t, &MemJournal{}) }

func openSQLite(t *testing.T, path string) *SQLJournal {
	t.Helper()
	db, err := sql.Open("sqlite", path+"?_pragma=busy_timeout(5000)&_pragma=journal_mode(WAL)")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	if err := Migrate(context.Background(), db); err != nil {
		t.Fatal(err)
	}
	j, err := NewSQLJournal(db, SQLite)
	if err != nil {
		t.Fatal(err)
	}
	return j
}

func TestSQLiteJournal(t *testing.T) {
	path := filepath.Join(t.TempDir(), "t.db")
	testJournal(t, openSQLite(t, path))
	// Migrate is idempotent and the data is still there after reopening.
	j := openSQLite(t, path)
	if got, err := j.Get(ctxT(t), "sb-a"); err != nil || got.Phase != tartarus.PhaseFailed {
		t.Errorf("after reopen %+v, %v", got, err)
	}
}

func TestPostgresJournal(t *testing.T) {
	if os.Getenv("TARTARUS_E2E") != "1" {
		t.Skip("TARTARUS_E2E=1 starts a real Postgres")
	}
	dsn := pgtest.StartPostgres(t)
	db, err := sql.Open("pgx", dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	// Migrate twice: it is idempotent. (Two at once race on Postgres's
	// catalog; the store runs Migrate under its advisory lock.)
	for range 2 {
		if err := Migrate(ctxT(t), db); err != nil {
			t.Fatal(err)
		}
	}
	j, err := NewSQLJournal(db, Postgres)
	if err != nil {
		t.Fatal(err)
	}
	testJournal(t, j)
}

// The crash-and-resume path over a real database file: a manager stops
// mid-drain, a new one on a fresh connection finishes the work.
func TestResumeOverSQLite(t *testing.T) {
	path := filepath.Join(t.TempDir(), "t.db")
	h1 := newHarness(t, openSQLite(t, path), nil)
	h1.target.setActive(1)
	if _, err := h1.m.InitiateShutdown(ctxT(t), "sb-1", &tartarus.ShutdownOptions{GracePeriod: time.Minute, Reason: tartarus.ReasonSystemShutdown}); err != nil {
		t.Fatal(err)
	}
	waitPhase(t, h1.m, "sb-1", tartarus.PhaseDraining)
	h1.m.Close()
	h2 := newHarness(t, openSQLite(t, path), nil)
	h2.target.setActive(1)
	if n, err := h2.m.Resume(ctxT(t)); err != nil || n != 1 {
		t.Fatalf("resume %d, %v", n, err)
	}
	waitTickers(t, h2.clk, 2)
	h2.clk.Advance(time.Minute)
	st := wait(t, h2.m, "sb-1")
	if at, _ := h2.target.callAt("kill"); st.Phase != tartarus.PhaseCompleted || !at.Equal(t0.Add(time.Minute)) {
		t.Errorf("final %+v, killed at %v (the deadline recorded by the first manager is kept)", st, at)
	}
}

func TestSQLJournalDialect(t *testing.T) {
	if _, err := NewSQLJournal(nil, "mysql"); !errors.Is(err, tartarus.ErrInvalid) {
		t.Errorf("mysql: %v", err)
	}
	j := &SQLJournal{dialect: Postgres}
	if got := j.q("a = ? AND b = ?"); got != "a = $1 AND b = $2" {
		t.Errorf("rewrite %q", got)
	}
}
