package persephone

import (
	"bytes"
	"context"
	"errors"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/tartarus-sandbox/tartarus/pkg/clock"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

func TestForecastSyntheticKnownAnswers(t *testing.T) {
	const f = 24
	n := 20 * f
	pure := make([]float64, n)
	trend := make([]float64, n)
	mult := make([]float64, n)
	for i := range pure {
		s := math.Sin(2 * math.Pi * float64(i) / f)
		pure[i] = 10 + 5*s
		trend[i] = 10 + 0.2*float64(i) + 5*s
		mult[i] = (50 + 0.5*float64(i)) * (1 + 0.3*s)
	}
	want := func(kind string, i int) float64 {
		s := math.Sin(2 * math.Pi * float64(i) / f)
		switch kind {
		case "pure":
			return 10 + 5*s
		case "trend":
			return 10 + 0.2*float64(i) + 5*s
		}
		return (50 + 0.5*float64(i)) * (1 + 0.3*s)
	}
	tests := []struct {
		name  string
		kind  string
		y     []float64
		model Model
		tol   float64 // relative
	}{
		{"naive repeats a pure season", "pure", pure, SeasonalNaive{Period: f, Label: "day"}, 1e-12},
		{"additive HW on a pure season", "pure", pure, HoltWinters{Period: f, Label: "day"}, 1e-3},
		{"additive HW on trend plus season", "trend", trend, HoltWinters{Period: f, Label: "day"}, 1e-3},
		{"multiplicative HW on a growing season", "mult", mult, HoltWinters{Period: f, Multiplicative: true, Label: "day"}, 1e-2},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			fit, err := tc.model.Fit(tc.y)
			if err != nil {
				t.Fatal(err)
			}
			mean, lower, upper := fit.Predict(2*f, 0.95)
			for h := range mean {
				w := want(tc.kind, n+h)
				if relErr(mean[h], w) > tc.tol {
					t.Fatalf("step %d: %.6f, want %.6f", h+1, mean[h], w)
				}
				if lower[h] > mean[h]+1e-9 || upper[h] < mean[h]-1e-9 {
					t.Fatalf("step %d: interval [%v,%v] misses the mean %v", h+1, lower[h], upper[h], mean[h])
				}
			}
		})
	}
	// Known interval: white noise around a season, naive interval width
	// grows with whole periods ahead.
	nf, _ := SeasonalNaive{Period: 4, Label: "x"}.Fit([]float64{1, 2, 3, 4, 2, 3, 4, 5})
	_, lo, up := nf.Predict(8, 0.95)
	z := 1.959963984540054
	if math.Abs(up[0]-lo[0]-2*z) > 1e-9 || math.Abs(up[4]-lo[4]-2*z*math.Sqrt2) > 1e-9 {
		t.Fatalf("naive widths %v %v", up[0]-lo[0], up[4]-lo[4])
	}
	if _, err := (HoltWinters{Period: 4, Multiplicative: true}).Fit([]float64{1, 0, 1, 1, 1, 1, 1, 1, 1}); err == nil {
		t.Fatal("multiplicative accepted a zero")
	}
	if _, err := (HoltWinters{Period: 24}).Fit(pure[:48]); !errors.Is(err, ErrTooShort) {
		t.Fatalf("short: %v", err)
	}
}

func TestBacktestPicksAndPrints(t *testing.T) {
	shape := DefaultDayShape()
	recs := TraceRecords("python", historyStart, LaunchTrace(shape, historyStart, 14*24*60, 3))
	s, err := BuildSeries(recs, "launches:python", historyStart, historyStart.Add(14*24*time.Hour), 15*time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	res := Backtest(s.Values, Candidates(15*time.Minute), BacktestConfig{Horizon: 96, Origins: 5, ScalePeriod: 96})
	win, ok := Pick(res)
	if !ok {
		t.Fatal("no winner")
	}
	var naive BacktestResult
	for _, r := range res {
		if r.Model == "seasonal-naive/day" {
			naive = r
		}
		if strings.HasPrefix(r.Model, "holt-winters") && strings.HasSuffix(r.Model, "/week") && !errors.Is(r.Err, ErrTooShort) {
			t.Errorf("%s on 14 days: err %v, want too short", r.Model, r.Err)
		}
	}
	if win.MASE > naive.MASE {
		t.Fatalf("winner %s MASE %.3f worse than the naive's %.3f", win.Model, win.MASE, naive.MASE)
	}
	// The trace's weekends are quieter: only a weekly model sees that.
	if win.Model != "seasonal-naive/week" {
		t.Errorf("winner %s, want seasonal-naive/week", win.Model)
	}
	var hw BacktestResult
	for _, r := range res {
		if r.Model == "holt-winters-additive/day" {
			hw = r
		}
	}
	if hw.Err != nil || hw.MASE >= naive.MASE {
		t.Errorf("additive Holt-Winters/day (MASE %.3f, %v) should beat naive/day (%.3f)", hw.MASE, hw.Err, naive.MASE)
	}
	var buf bytes.Buffer
	if err := WriteBacktestTable(&buf, res); err != nil {
		t.Fatal(err)
	}
	t.Logf("\n%s", buf.String())
	if !strings.Contains(buf.String(), "*"+win.Model) || !strings.Contains(buf.String(), "too little history") {
		t.Fatalf("table:\n%s", buf.String())
	}
}

func TestScalerSeasonsOnFakeClock(t *testing.T) {
	ctx := context.Background()
	berlin := mustZone(t, "Europe/Berlin")
	fc := clock.NewFake(time.Date(2026, 3, 28, 21, 0, 0, 0, berlin))
	s, err := New(ctx, Config{Usage: NewMemoryStore(), Clock: fc})
	if err != nil {
		t.Fatal(err)
	}
	night := cronSeason("night", "0 22 * * *", "0 6 * * *", "Europe/Berlin", 0)
	night.Prewarming = PrewarmConfig{Templates: []string{"python"}, PoolSize: 4, LeadTime: 30 * time.Minute}
	for _, season := range append(ExampleSeasons(), night) {
		if err := s.DefineSeason(ctx, season); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.DefineSeason(ctx, &Season{ID: "Nope"}); !errors.Is(err, tartarus.ErrInvalid) {
		t.Fatalf("invalid season defined: %v", err)
	}
	// Walk the clock minute by minute over the spring-forward night and
	// check the season and the python pool floor at each step.
	type seen struct {
		season string
		floor  int
	}
	var got []seen
	for i := 0; i < 11*60; i++ {
		cur, _ := s.CurrentSeason(ctx)
		id := ""
		if cur != nil {
			id = cur.ID
		}
		ts, err := s.PoolTargets(ctx, nil, Refill{})
		if err != nil {
			t.Fatal(err)
		}
		floor := 0
		for _, pt := range ts {
			if pt.Template == "python" {
				floor = pt.Floor
			}
		}
		if len(got) == 0 || got[len(got)-1] != (seen{id, floor}) {
			t.Logf("%s: season %q, python floor %d", fc.Now().In(berlin).Format("15:04 MST"), id, floor)
			got = append(got, seen{id, floor})
		}
		fc.Advance(time.Minute)
	}
	want := []seen{{"", 0}, {"", 4}, {"night", 4}, {"", 0}, {"spring", 0}}
	if len(got) != len(want) {
		t.Fatalf("transitions %v, want %v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("transitions %v, want %v", got, want)
		}
	}
	// Pin and unpin.
	if err := s.ApplySeason(ctx, "winter"); err != nil {
		t.Fatal(err)
	}
	if cur, _ := s.CurrentSeason(ctx); cur == nil || cur.ID != "winter" {
		t.Fatalf("pinned: %v", cur)
	}
	if err := s.ApplySeason(ctx, "nonesuch"); !errors.Is(err, tartarus.ErrNotFound) {
		t.Fatalf("unknown season applied: %v", err)
	}
	if err := s.ApplySeason(ctx, ""); err != nil {
		t.Fatal(err)
	}
	if cur, _ := s.CurrentSeason(ctx); cur == nil || cur.ID != "spring" {
		t.Fatalf("unpinned at %s: %v", fc.Now(), cur)
	}
}

func TestSizePool(t *testing.T) {
	tests := []struct {
		name string
		in   PoolInput
		want int
	}{
		{"grows to the forecast", PoolInput{Current: 2, Upper: []float64{3, 7.2, 5}, Factor: 1, Cap: 50}, 8},
		{"season floor", PoolInput{Current: 0, Upper: []float64{1}, Floor: 10, Cap: 50}, 10},
		{"capped", PoolInput{Current: 0, Upper: []float64{80}, Cap: 50}, 50},
		{"refill longer than a step", PoolInput{Upper: []float64{4}, Factor: 2.5, Cap: 50}, 10},
		{"no scale in on forecast alone", PoolInput{Current: 10, Upper: []float64{2}, RecentPeak: 9, Cap: 50}, 9},
		{"scale in when both agree", PoolInput{Current: 10, Upper: []float64{2}, RecentPeak: 1, Cap: 50}, 2},
		{"recent peak never grows the pool by itself", PoolInput{Current: 3, Upper: []float64{2}, RecentPeak: 20, Cap: 50}, 3},
		{"no forecast keeps the pool", PoolInput{Current: 6, RecentPeak: 6, Cap: 50}, 6},
		{"no forecast, idle: scale in to the floor", PoolInput{Current: 6, Floor: 2, Cap: 50}, 2},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got, _, _ := SizePool(tc.in); got != tc.want {
				t.Fatalf("size %d, want %d", got, tc.want)
			}
		})
	}
}

type fixedNodes int

func (n fixedNodes) NodeCount(context.Context) (int, error) { return int(n), nil }

func TestRecommendCapacity(t *testing.T) {
	ctx := context.Background()
	s, fc := newTraceScaler(t, DefaultDayShape())
	s.cfg.Nodes = fixedNodes(3)
	s.cfg.VMsPerNode = 10
	s.cfg.NodeCostPerHour = 0.5
	fc.Advance(8*time.Hour + 30*time.Minute) // 08:30, heading for the 09:00 peak
	// The usage of the replayed morning so far.
	day := TraceRecords("python", replayStart, LaunchTrace(DefaultDayShape(), replayStart, 8*60+30, 2))
	if err := s.Learn(ctx, day); err != nil {
		t.Fatal(err)
	}
	rec, err := s.RecommendCapacity(ctx, 0.5)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%+v", rec)
	// Around the 09:00 peak about 8.3 launches a minute each live 20
	// minutes: ~166 active VMs, upper bound above that.
	if rec.PeakUpper < 150 || rec.PeakUpper > 260 {
		t.Fatalf("peak upper %d", rec.PeakUpper)
	}
	wantNodes := int(math.Ceil(float64(rec.PeakUpper) / 5))
	if rec.RecommendedNodes != wantNodes || rec.CurrentNodes != 3 || rec.CostDelta != float64(wantNodes-3)*0.5 || rec.ConfidenceLevel != 0.95 {
		t.Fatalf("%+v, want %d nodes", rec, wantNodes)
	}
	if !strings.Contains(rec.Reason, "peak demand upper bound") {
		t.Fatalf("reason %q", rec.Reason)
	}
	// A season's max holds the recommendation.
	if err := s.DefineSeason(ctx, &Season{ID: "small", MinNodes: 1, MaxNodes: 4}); err != nil {
		t.Fatal(err)
	}
	if err := s.ApplySeason(ctx, "small"); err != nil {
		t.Fatal(err)
	}
	rec, err = s.RecommendCapacity(ctx, 0.5)
	if err != nil || rec.RecommendedNodes != 4 || rec.Season != "small" || !strings.Contains(rec.Reason, "max 4") {
		t.Fatalf("%v %+v", err, rec)
	}
	if _, err := s.RecommendCapacity(ctx, 1.5); !errors.Is(err, tartarus.ErrInvalid) {
		t.Fatalf("util 1.5: %v", err)
	}
	// Forecast API edges.
	if _, err := s.ForecastMetric(ctx, "launches:python", 0); !errors.Is(err, tartarus.ErrInvalid) {
		t.Fatalf("zero window: %v", err)
	}
	fcst, err := s.ForecastMetric(ctx, "launches:python", 48*time.Hour)
	if err != nil || len(fcst.Predictions) != 48*12 || fcst.Step != 5*time.Minute {
		t.Fatalf("%v %d", err, len(fcst.Predictions))
	}
	for _, p := range fcst.Predictions {
		if p.LowerBound > p.PredictedDemand || p.PredictedDemand > p.UpperBound || p.LowerBound < 0 {
			t.Fatalf("prediction %+v", p)
		}
	}
	empty, _ := New(ctx, Config{Usage: NewMemoryStore(), Clock: fc})
	if _, err := empty.Forecast(ctx, time.Hour); !errors.Is(err, tartarus.ErrFailedPrecondition) {
		t.Fatalf("no history: %v", err)
	}
	if rec, err := empty.RecommendCapacity(ctx, 0.7); err != nil || rec.ConfidenceLevel != 0 || rec.RecommendedNodes != 1 {
		t.Fatalf("no history: %v %+v", err, rec)
	}
}

func TestConfigValidate(t *testing.T) {
	err := Config{Step: 7 * time.Minute, History: time.Hour, Level: 2, Pool: PoolConfig{RefillTime: -1, MaxTotal: -1}}.Validate()
	for _, w := range []string{"usage store", "clock", "step", "history", "level", "refill", "caps"} {
		if err == nil || !strings.Contains(err.Error(), w) {
			t.Errorf("error lacks %q: %v", w, err)
		}
	}
}
