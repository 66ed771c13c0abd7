package typhon

import (
	"context"
	"database/sql"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	_ "github.com/jackc/pgx/v5/stdlib"
	_ "modernc.org/sqlite"

	"github.com/tartarus-sandbox/tartarus/pkg/store/pgtest"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

// testJournal is the conformance suite every Journal passes.
func testJournal(t *testing.T, j Journal) {
	t.Helper()
	ctx := context.Background()
	if p, err := j.Policy(ctx); err != nil || p != nil {
		t.Fatalf("empty policy: %+v %v", p, err)
	}
	at := time.Date(2026, 12, 6, 1, 2, 3, 0, time.UTC)
	rec := &QuarantineRecord{ID: "qr-1", SandboxID: "sb-1", Tenant: "t", Reason: ReasonResourceAbuse, QuarantinedAt: at,
		Status: StatusActive, Evidence: []Evidence{{ID: "ev-1", Type: EvidenceTypeScreenshot, Data: []byte("dropped"), Checksum: "sha256:00"}},
		Trigger: "cpu_percent > 90.0 \x00\xff"}
	if err := j.PutRecord(ctx, rec); err != nil {
		t.Fatal(err)
	}
	rec.Status = StatusExamining
	rec.ExaminationCount = 1
	if err := j.PutRecord(ctx, rec); err != nil {
		t.Fatal(err)
	}
	if err := j.PutRecord(ctx, &QuarantineRecord{ID: "qr-2", SandboxID: "sb-2", QuarantinedAt: at.Add(time.Second), Status: StatusActive}); err != nil {
		t.Fatal(err)
	}
	recs, err := j.Records(ctx)
	if err != nil || len(recs) != 2 {
		t.Fatalf("records %d %v", len(recs), err)
	}
	got := recs[0]
	if got.ID != "qr-1" || got.Status != StatusExamining || got.ExaminationCount != 1 || !got.QuarantinedAt.Equal(at) ||
		len(got.Evidence) != 1 || got.Evidence[0].Data != nil || got.Evidence[0].Checksum != "sha256:00" {
		t.Fatalf("record %+v", got)
	}
	if hj, ok := j.(heldJournal); ok {
		if err := j.PutRecord(ctx, &QuarantineRecord{ID: "qr-3", SandboxID: "sb-3", QuarantinedAt: at.Add(2 * time.Second), Status: StatusReleased}); err != nil {
			t.Fatal(err)
		}
		held, err := hj.Held(ctx)
		if err != nil || len(held) != 2 || held[0].ID != "qr-1" || held[1].ID != "qr-2" {
			t.Fatalf("held %+v %v; want qr-1 and qr-2, not the released qr-3", held, err)
		}
	}
	if aj, ok := j.(ActorJournal); ok {
		for i, a := range []string{"alice", "bob", "alice", "carol"} {
			if err := aj.AddActor(ctx, "sb-1", a, at.Add(time.Duration(i)*time.Second)); err != nil {
				t.Fatal(err)
			}
		}
		_ = aj.AddActor(ctx, "sb-2", "dave", at)
		if got, err := aj.Actors(ctx, "sb-1", 2); err != nil || !slices.Equal(got, []string{"alice", "carol"}) {
			t.Fatalf("latest 2 actors of sb-1: %q %v", got, err)
		}
		// Only what was noted before the cut goes, of the sandboxes refused.
		if err := aj.ForgetActors(ctx, at.Add(2*time.Second), func(id string) bool { return id != "sb-1" }); err != nil {
			t.Fatal(err)
		}
		if got, _ := aj.Actors(ctx, "sb-1", 8); !slices.Equal(got, []string{"alice", "carol"}) {
			t.Fatalf("sb-1 after forgetting before the cut: %q", got)
		}
		if got, _ := aj.Actors(ctx, "sb-2", 8); !slices.Equal(got, []string{"dave"}) {
			t.Fatalf("sb-2 (kept): %q", got)
		}
	}
	for i, risk := range []float64{0.3, 0.6} {
		if err := j.PutReport(ctx, &ExaminationReport{ID: "rep-" + string(rune('a'+i)), SandboxID: "sb-1", ExaminedAt: at.Add(time.Duration(i) * time.Minute),
			RiskScore: risk, Findings: []Finding{{Severity: tartarus.SeverityHigh, Description: "x"}}}); err != nil {
			t.Fatal(err)
		}
	}
	reps, err := j.Reports(ctx, "sb-1")
	if err != nil || len(reps) != 2 || reps[1].RiskScore != 0.6 || len(reps[0].Findings) != 1 {
		t.Fatalf("reports %+v %v", reps, err)
	}
	if reps, _ := j.Reports(ctx, "sb-2"); len(reps) != 0 {
		t.Fatalf("reports of another sandbox: %+v", reps)
	}
	for v := 1; v <= 2; v++ {
		if err := j.PutPolicy(ctx, &QuarantinePolicy{Version: v, MaxQuarantineDuration: time.Hour,
			AutoTriggers: []AutoQuarantineTrigger{{Condition: "true", Reason: ReasonManualFlag, Enabled: true}}}); err != nil {
			t.Fatal(err)
		}
	}
	p, err := j.Policy(ctx)
	if err != nil || p.Version != 2 || p.MaxQuarantineDuration != time.Hour || len(p.AutoTriggers) != 1 {
		t.Fatalf("policy %+v %v", p, err)
	}
}

func TestMemJournal(t *testing.T) { testJournal(t, NewMemJournal()) }

func TestSQLiteJournal(t *testing.T) {
	db, err := sql.Open("sqlite", filepath.Join(t.TempDir(), "q.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	for range 2 { // idempotent
		if err := Migrate(context.Background(), db); err != nil {
			t.Fatal(err)
		}
	}
	j, err := NewSQLJournal(db, SQLite)
	if err != nil {
		t.Fatal(err)
	}
	testJournal(t, j)
}

func TestPostgresJournal(t *testing.T) {
	if os.Getenv("TARTARUS_E2E") != "1" {
		t.Skip("TARTARUS_E2E=1 starts a real Postgres")
	}
	db, err := sql.Open("pgx", pgtest.StartPostgres(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	if err := Migrate(context.Background(), db); err != nil {
		t.Fatal(err)
	}
	j, err := NewSQLJournal(db, Postgres)
	if err != nil {
		t.Fatal(err)
	}
	testJournal(t, j)
}
