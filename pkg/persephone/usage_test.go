package persephone

import (
	"bytes"
	"context"
	"database/sql"
	"errors"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	_ "modernc.org/sqlite"

	"github.com/tartarus-sandbox/tartarus/pkg/store/pgtest"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

// testUsageStore is the conformance suite every UsageStore passes.
func testUsageStore(t *testing.T, s UsageStore) {
	ctx := context.Background()
	t0 := time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC)
	// Several replicas record the same minute: one row wins.
	var wg sync.WaitGroup
	var mu sync.Mutex
	wins := 0
	for i := 0; i < 4; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			ok, err := s.Record(ctx, &UsageRecord{Timestamp: t0.Add(time.Duration(i) * time.Second), ActiveVMs: 10 + i, LaunchesByTemplate: map[string]int{"python": 1}})
			if err != nil {
				t.Error(err)
			}
			if ok {
				mu.Lock()
				wins++
				mu.Unlock()
			}
		}(i)
	}
	wg.Wait()
	if wins != 1 {
		t.Fatalf("%d replicas recorded minute %s, want 1", wins, t0)
	}
	if _, err := s.Record(ctx, &UsageRecord{Timestamp: t0, ActiveVMs: -1}); !errors.Is(err, tartarus.ErrInvalid) {
		t.Fatalf("negative record: %v", err)
	}
	// 40 days of minutes, then compaction at day 40.
	for m := 1; m < 40*24*60; m += 29 {
		if _, err := s.Record(ctx, &UsageRecord{Timestamp: t0.Add(time.Duration(m) * time.Minute), ActiveVMs: m % 100, LaunchCount: 1, CPUUtil: 0.5,
			WarmLaunches: 1, ColdLaunches: m % 2, LaunchesByTemplate: map[string]int{"python": 2}}); err != nil {
			t.Fatal(err)
		}
	}
	got, err := s.Range(ctx, t0, t0.Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 4 || got[0].LaunchesByTemplate["python"] != 1 || !got[0].Timestamp.Equal(t0) || got[0].Resolution != time.Minute {
		t.Fatalf("first hour: %d rows, first %+v", len(got), got[0])
	}
	if got[1].WarmLaunches != 1 || got[1].ColdLaunches != 1 || got[2].ColdLaunches != 0 {
		t.Fatalf("warm and cold launches: %+v, %+v", got[1], got[2])
	}
	now := t0.Add(40 * 24 * time.Hour)
	if err := s.Compact(ctx, now, Retention{Minutes: 35 * 24 * time.Hour, Hours: 38 * 24 * time.Hour}); err != nil {
		t.Fatal(err)
	}
	all, err := s.Range(ctx, t0, now)
	if err != nil {
		t.Fatal(err)
	}
	cut := now.Add(-35 * 24 * time.Hour)
	hourCut := now.Add(-38 * 24 * time.Hour)
	hours := 0
	for _, r := range all {
		if r.Timestamp.Before(hourCut) {
			t.Fatalf("row %s survived the hourly retention", r.Timestamp)
		}
		if r.Resolution == time.Minute && r.Timestamp.Before(cut) {
			t.Fatalf("minute row %s survived downsampling", r.Timestamp)
		}
		if r.Resolution == time.Hour {
			hours++
			if r.LaunchesByTemplate["python"] < 4 || r.LaunchCount < 2 || r.CPUUtil != 0.5 || r.WarmLaunches != r.LaunchCount {
				t.Fatalf("hourly row %+v", r)
			}
		}
	}
	if hours != 3*24 {
		t.Fatalf("%d hourly rows, want 72", hours)
	}
}

func TestMemoryUsageStore(t *testing.T) { testUsageStore(t, NewMemoryStore()) }

func TestSQLiteUsageStore(t *testing.T) {
	db, err := sql.Open("sqlite", "file:"+filepath.Join(t.TempDir(), "u.db")+"?_pragma=busy_timeout(5000)&_pragma=journal_mode(wal)")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	db.SetMaxOpenConns(1)
	ctx := context.Background()
	for i := 0; i < 2; i++ { // Migrate is idempotent
		if err := Migrate(ctx, db, SQLite); err != nil {
			t.Fatal(err)
		}
	}
	s := NewSQLStore(db, SQLite)
	testUsageStore(t, s)
	testSeasonStore(t, s)
}

func TestPostgresUsageStore(t *testing.T) {
	dsn := pgtest.StartPostgres(t)
	db, err := sql.Open("pgx", dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	ctx := context.Background()
	for i := 0; i < 2; i++ {
		if err := Migrate(ctx, db, Postgres); err != nil {
			t.Fatal(err)
		}
	}
	s := NewSQLStore(db, Postgres)
	testUsageStore(t, s)
	testSeasonStore(t, s)
}

func testSeasonStore(t *testing.T, s SeasonStore) {
	ctx := context.Background()
	for _, season := range ExampleSeasons() {
		if err := s.SaveSeason(ctx, season); err != nil {
			t.Fatal(err)
		}
	}
	spring := ExampleSeasons()[1]
	spring.MinNodes = 7
	if err := s.SaveSeason(ctx, spring); err != nil {
		t.Fatal(err)
	}
	if err := s.SavePin(ctx, "winter"); err != nil {
		t.Fatal(err)
	}
	got, pinned, err := s.LoadSeasons(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 4 || pinned != "winter" {
		t.Fatalf("%d seasons, pinned %q", len(got), pinned)
	}
	for _, g := range got {
		if g.ID == "spring" && (g.MinNodes != 7 || g.Prewarming.LeadTime != 30*time.Minute) {
			t.Fatalf("spring %+v", g)
		}
	}
	if err := s.SaveSeason(ctx, &Season{ID: "BAD"}); !errors.Is(err, tartarus.ErrInvalid) {
		t.Fatalf("bad season saved: %v", err)
	}
}

func TestReadUsageCSV(t *testing.T) {
	good := "timestamp,active_vms,launches,launches:python,cpu_util,warm_launches,cold_launches\n" +
		"# a comment\n" +
		"2026-03-02T09:00:00Z,42,7,5,0.5,6,1\n" +
		"2026-03-02T09:01:00+01:00,40,3,1,0.25,0,3\n" // 08:01Z is before 09:00Z
	if _, err := ReadUsageCSV(strings.NewReader(good)); err == nil || !strings.Contains(err.Error(), "line 4") {
		t.Fatalf("out of order: %v", err)
	}
	good = strings.Replace(good, "+01:00", "Z", 1)
	recs, err := ReadUsageCSV(strings.NewReader(good))
	if err != nil {
		t.Fatal(err)
	}
	if len(recs) != 2 || recs[0].ActiveVMs != 42 || recs[0].LaunchesByTemplate["python"] != 5 || recs[1].CPUUtil != 0.25 {
		t.Fatalf("%+v", recs)
	}
	var buf bytes.Buffer
	if err := WriteUsageCSV(&buf, recs); err != nil {
		t.Fatal(err)
	}
	again, err := ReadUsageCSV(&buf)
	if err != nil || len(again) != 2 || again[1].LaunchesByTemplate["python"] != 1 || again[0].WarmLaunches != 6 || again[1].ColdLaunches != 3 {
		t.Fatalf("round trip: %v %+v", err, again)
	}
	hourly, err := ReadUsageCSV(strings.NewReader("# resolution: 1h\ntimestamp,active_vms\n2026-03-02T09:00:00Z,4\n"))
	if err != nil || hourly[0].Resolution != time.Hour {
		t.Fatalf("hourly: %v %+v", err, hourly)
	}
	hostile := []struct {
		name, in, want string
	}{
		{"empty", "", "empty file"},
		{"no rows", "timestamp,active_vms\n", "no rows"},
		{"unknown column", "timestamp,active_vms,rm -rf\n", "line 1: column 3: unknown column"},
		{"missing required", "timestamp,launches\n", "must name timestamp and active_vms"},
		{"duplicate column", "timestamp,active_vms,active_vms\n", "twice"},
		{"bad template", "timestamp,active_vms,launches:../x\n", "unknown column"},
		{"negative", "timestamp,active_vms\n2026-03-02T09:00:00Z,1\n2026-03-02T09:01:00Z,-4\n", "line 3: active_vms \"-4\""},
		{"nan util", "timestamp,active_vms,cpu_util\n2026-03-02T09:00:00Z,1,NaN\n", "line 2: cpu_util"},
		{"util above one", "timestamp,active_vms,cpu_util\n2026-03-02T09:00:00Z,1,1.5\n", "line 2: cpu_util"},
		{"bad time", "timestamp,active_vms\nyesterday,1\n", "line 2: timestamp"},
		{"seconds", "timestamp,active_vms\n2026-03-02T09:00:30Z,1\n", "not on the minute"},
		{"not on hour", "# resolution: 1h\ntimestamp,active_vms\n2026-03-02T09:30:00Z,1\n", "not on the hour"},
		{"duplicate minute", "timestamp,active_vms\n2026-03-02T09:00:00Z,1\n2026-03-02T09:00:00Z,2\n", "line 3"},
		{"short row", "timestamp,active_vms\n2026-03-02T09:00:00Z\n", "line 2"},
		{"quote", "timestamp,active_vms\n2026-03-02T09:00:00Z,\"1\n", "line 2"},
		{"huge", "timestamp,active_vms\n2026-03-02T09:00:00Z," + strings.Repeat("9", 100) + "\n", "longer than"},
		{"overflow", "timestamp,active_vms\n2026-03-02T09:00:00Z,99999999999\n", "non-negative integer"},
		{"year", "timestamp,active_vms\n1970-01-01T00:00:00Z,1\n", "out of range"},
	}
	for _, tc := range hostile {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ReadUsageCSV(strings.NewReader(tc.in))
			if err == nil || !errors.Is(err, tartarus.ErrInvalid) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err %v, want invalid with %q", err, tc.want)
			}
		})
	}
}

func FuzzReadUsageCSV(f *testing.F) {
	f.Add("timestamp,active_vms,launches:python\n2026-03-02T09:00:00Z,42,5\n")
	f.Add("# resolution: 1h\ntimestamp,active_vms\n2026-03-02T09:00:00Z,4\n")
	f.Fuzz(func(t *testing.T, in string) {
		recs, err := ReadUsageCSV(strings.NewReader(in))
		if err != nil {
			return
		}
		for _, r := range recs {
			if err := validateRecord(r); err != nil {
				t.Fatalf("accepted invalid record: %v", err)
			}
		}
	})
}

func TestBuildSeries(t *testing.T) {
	t0 := time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC)
	recs := []*UsageRecord{
		{Timestamp: t0.Add(1 * time.Minute), ActiveVMs: 3, LaunchesByTemplate: map[string]int{"py": 1}},
		{Timestamp: t0.Add(2 * time.Minute), ActiveVMs: 5, LaunchesByTemplate: map[string]int{"py": 2}},
		{Timestamp: t0.Add(7 * time.Minute), ActiveVMs: 1},
		{Timestamp: t0.Add(60 * time.Minute), Resolution: time.Hour, ActiveVMs: 9, LaunchesByTemplate: map[string]int{"py": 12}},
	}
	s, err := BuildSeries(recs, "launches:py", t0, t0.Add(2*time.Hour), 5*time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if s.Values[0] != 3 || s.Values[1] != 0 || s.Values[2] != 0 || s.Values[12] != 1 || len(s.Values) != 24 {
		t.Fatalf("launches %v", s.Values)
	}
	s, _ = BuildSeries(recs, MetricActiveVMs, t0, t0.Add(2*time.Hour), 5*time.Minute)
	if s.Values[0] != 5 || s.Values[1] != 1 || s.Values[5] != 1 || s.Values[12] != 9 {
		t.Fatalf("active %v (gap steps take the previous value)", s.Values)
	}
	if _, err := BuildSeries(recs, "launches:../x", t0, t0.Add(time.Hour), time.Minute); !errors.Is(err, tartarus.ErrInvalid) {
		t.Fatal(err)
	}
}
