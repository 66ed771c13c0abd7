package phlegethon

import (
	"context"
	"database/sql"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/tartarus-sandbox/tartarus/pkg/store/pgtest"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

// testJournal is the conformance suite every Journal and PoolStore passes.
func testJournal(t *testing.T, j interface {
	Journal
	PoolStore
	ObservationStore
}) {
	ctx := context.Background()
	recs := []*Record{
		{Entry: Entry{ID: "sb-b", Tenant: "acme", Heat: HeatHot, Payload: []byte(`{"cpus":2}`), EnqueuedAt: t0, Deadline: t0.Add(time.Minute), Seq: 2}, Status: StatusQueued},
		{Entry: Entry{ID: "sb-a", Heat: HeatCold, EnqueuedAt: t0, Deadline: t0.Add(time.Minute), Seq: 1}, Status: StatusQueued},
		{Entry: Entry{ID: "sb-c", Heat: HeatCold, EnqueuedAt: t0, Seq: 3}, Status: StatusAdmitted, FinishedAt: t0.Add(time.Second)},
	}
	for _, r := range recs {
		if err := j.Put(ctx, r); err != nil {
			t.Fatal(err)
		}
	}
	got, err := j.Get(ctx, "sb-b")
	if err != nil || got.Tenant != "acme" || string(got.Payload) != `{"cpus":2}` || !got.Deadline.Equal(t0.Add(time.Minute)) || got.Status != StatusQueued {
		t.Errorf("get %+v, %v", got, err)
	}
	if _, err := j.Get(ctx, "sb-x"); !errors.Is(err, tartarus.ErrNotFound) {
		t.Errorf("missing %v", err)
	}
	q, err := j.Queued(ctx)
	if err != nil || len(q) != 2 || q[0].ID != "sb-a" || q[1].ID != "sb-b" {
		t.Fatalf("queued %v, %v", q, err)
	}
	recs[0].Status, recs[0].Reason, recs[0].FinishedAt = StatusTimedOut, "no room", t0.Add(time.Minute)
	if err := j.Put(ctx, recs[0]); err != nil {
		t.Fatal(err)
	}
	if q, _ := j.Queued(ctx); len(q) != 1 {
		t.Errorf("queued after finish %v", q)
	}
	if got, _ := j.Get(ctx, "sb-b"); got.Reason != "no room" || got.Status != StatusTimedOut {
		t.Errorf("after replace %+v", got)
	}
	if n, err := j.Prune(ctx, t0.Add(30*time.Second)); err != nil || n != 1 {
		t.Errorf("prune %d, %v (only sb-c finished before)", n, err)
	}
	if _, err := j.Get(ctx, "sb-c"); !errors.Is(err, tartarus.ErrNotFound) {
		t.Errorf("pruned still there: %v", err)
	}
	if _, err := j.Get(ctx, "sb-a"); err != nil {
		t.Errorf("a queued record was pruned: %v", err)
	}

	p := &Pool{Name: "big", Heats: []HeatLevel{HeatHot, HeatInferno}, NodeSelector: map[string]string{"tier": "big"}, MinNodes: 1, MaxNodes: 3}
	if err := j.PutPool(ctx, p); err != nil {
		t.Fatal(err)
	}
	if err := j.PutPool(ctx, &Pool{Name: "a-small", Heats: []HeatLevel{HeatCold}, NodeSelector: map[string]string{"tier": "s"}}); err != nil {
		t.Fatal(err)
	}
	pools, err := j.ListPools(ctx)
	if err != nil || len(pools) != 2 || pools[0].Name != "a-small" || pools[1].MaxNodes != 3 || len(pools[1].Heats) != 2 || pools[1].NodeSelector["tier"] != "big" {
		t.Errorf("pools %+v, %v", pools, err)
	}
	if err := j.DeletePool(ctx, "big"); err != nil {
		t.Fatal(err)
	}
	if pools, _ := j.ListPools(ctx); len(pools) != 1 {
		t.Errorf("after delete %+v", pools)
	}

	for i := range 5 {
		for _, tmpl := range []string{"web", "etl"} {
			o := &HeatObservation{TemplateID: tmpl, ActualDuration: time.Duration(i) * time.Second, PeakCPU: 0.5, PeakMemory: 1 << 20, Timestamp: t0.Add(time.Duration(i) * time.Minute)}
			if err := j.PutObservation(ctx, o); err != nil {
				t.Fatal(err)
			}
		}
	}
	obs, err := j.RecentObservations(ctx, 3)
	if err != nil || len(obs) != 6 {
		t.Fatalf("recent %+v, %v", obs, err)
	}
	for _, o := range obs {
		if o.ActualDuration < 2*time.Second || o.PeakMemory != 1<<20 || o.PeakCPU != 0.5 {
			t.Errorf("not among the newest 3: %+v", o)
		}
	}
	if !obs[0].Timestamp.Before(obs[len(obs)-1].Timestamp) {
		t.Errorf("not oldest first: %+v", obs)
	}
	if n, err := j.PruneObservations(ctx, t0.Add(2*time.Minute)); err != nil || n != 4 {
		t.Errorf("prune %d, %v", n, err)
	}
	if obs, _ := j.RecentObservations(ctx, 10); len(obs) != 6 {
		t.Errorf("after prune %d", len(obs))
	}
}

func TestMemJournal(t *testing.T) { testJournal(t, &MemJournal{}) }

func TestSQLiteJournal(t *testing.T) {
	path := filepath.Join(t.TempDir(), "j.db")
	testJournal(t, openSQLite(t, path))
	// Migrate is idempotent and the rows are still there after reopening.
	if got, err := openSQLite(t, path).Get(context.Background(), "sb-a"); err != nil || got.Status != StatusQueued {
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
	for range 2 {
		if err := Migrate(context.Background(), db); err != nil {
			t.Fatal(err)
		}
	}
	j, err := NewSQLJournal(db, Postgres)
	if err != nil {
		t.Fatal(err)
	}
	testJournal(t, j)
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
