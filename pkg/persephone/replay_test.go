package persephone

import (
	"context"
	"math"
	"testing"
	"time"

	"github.com/tartarus-sandbox/tartarus/pkg/clock"
)

// replayDay is the replayed day: a Wednesday after 14 days of history.
var (
	historyStart = time.Date(2026, 2, 18, 0, 0, 0, 0, time.UTC)
	replayStart  = historyStart.Add(14 * 24 * time.Hour)
)

func newTraceScaler(t testing.TB, shape DayShape) (*Scaler, *clock.Fake) {
	t.Helper()
	ctx := context.Background()
	fc := clock.NewFake(replayStart)
	s, err := New(ctx, Config{Usage: NewMemoryStore(), Clock: fc, Refit: 6 * time.Hour,
		Pool: PoolConfig{RefillTime: 3 * time.Minute, LeadTime: 15 * time.Minute, MaxPerTemplate: 100}})
	if err != nil {
		t.Fatal(err)
	}
	hist := LaunchTrace(shape, historyStart, 14*24*60, 1)
	if err := s.Learn(ctx, TraceRecords("python", historyStart, hist)); err != nil {
		t.Fatal(err)
	}
	return s, fc
}

// replayAgainstFixed replays the day after 14 recorded days of shape
// against a simulated pool (refills of refill, parallel at once) twice:
// sized every 5 minutes by the scaler told assumed, and the smallest fixed
// pool holding at least as many ready sandboxes on average.
func replayAgainstFixed(t *testing.T, shape DayShape, refill time.Duration, parallel int, assumed Refill) (forecast, fixed ReplayResult, size int) {
	t.Helper()
	ctx := context.Background()
	s, fc := newTraceScaler(t, shape)
	day := LaunchTrace(shape, replayStart, 24*60, 2)
	byTemplate := TraceRecords("python", replayStart, day)
	policy := func(now time.Time, current int) int {
		fc.Advance(now.Sub(fc.Now()))
		ts, err := s.PoolTargets(ctx, map[string]int{"python": current}, assumed)
		if err != nil {
			t.Fatal(err)
		}
		for _, pt := range ts {
			if pt.Template == "python" {
				return pt.Size
			}
		}
		return 0
	}
	record := func(minute time.Time, _ int) {
		i := int(minute.Sub(replayStart) / time.Minute)
		if _, err := s.cfg.Usage.Record(ctx, byTemplate[i]); err != nil {
			t.Fatal(err)
		}
	}
	forecast = SimulatePool(replayStart, day, refill, parallel, 5*time.Minute, policy, record)
	for size = 1; size <= 100; size++ {
		fixed = SimulatePool(replayStart, day, refill, parallel, 5*time.Minute, func(time.Time, int) int { return size }, nil)
		if fixed.MeanReady >= forecast.MeanReady {
			break
		}
	}
	t.Logf("forecast-sized pools: %d creates, %d cold (%.1f%%), %.1f ready on average", forecast.Creates, forecast.Cold, 100*float64(forecast.Cold)/float64(forecast.Creates), forecast.MeanReady)
	t.Logf("fixed pool of %d:      %d creates, %d cold (%.1f%%), %.1f ready on average", size, fixed.Creates, fixed.Cold, 100*float64(fixed.Cold)/float64(fixed.Creates), fixed.MeanReady)
	if fixed.MeanReady < forecast.MeanReady {
		t.Fatalf("no fixed pool up to 100 holds %.1f on average", forecast.MeanReady)
	}
	return forecast, fixed, size
}

// TestReplayForecastBeatsFixedPool replays a synthetic day (morning and
// evening peaks, Poisson launches; the day after 14 recorded days) against
// a simulated pool (3-minute refills, as many at once as needed) twice in
// the same run: pools sized every 5 minutes by the scaler from the
// forecast, and a fixed pool holding at least as many ready sandboxes on
// average. The forecast-sized pools must give fewer cold creates.
func TestReplayForecastBeatsFixedPool(t *testing.T) {
	if testing.Short() {
		t.Skip("replays a day")
	}
	forecast, fixed, _ := replayAgainstFixed(t, DefaultDayShape(), 3*time.Minute, 0, Refill{Time: 3 * time.Minute, Parallel: maxParallel})
	if forecast.Cold >= fixed.Cold {
		t.Fatalf("forecast-sized pools: %d cold creates, fixed pool: %d; want fewer", forecast.Cold, fixed.Cold)
	}
}

// TestReplaySlowRefills is the real-VM replay's situation: refills are
// slow and few run at once (8 minutes each, 2 at once: 1.25 per 5-minute
// step), below the morning peak's launches. Sized with the measured refill
// rate, the pool is stocked ahead of the peak and beats a fixed pool of the
// same mean; sized as if refills kept up (the sizing before the deficit
// term), it does not get ahead of the peak and gives more cold creates.
func TestReplaySlowRefills(t *testing.T) {
	if testing.Short() {
		t.Skip("replays a day")
	}
	shape := DayShape{Base: 0.05, MorningPeak: 1.5, MorningAt: 9 * time.Hour, EveningPeak: 1,
		EveningAt: 20 * time.Hour, Width: 40 * time.Minute, Weekend: 0.5}
	refill := 8 * time.Minute
	measured, fixed, _ := replayAgainstFixed(t, shape, refill, 2, Refill{Time: refill, Parallel: 2})
	if measured.Cold >= fixed.Cold {
		t.Errorf("sized with the measured refill rate: %d cold creates, fixed pool: %d; want fewer", measured.Cold, fixed.Cold)
	}
	unaware, _, _ := replayAgainstFixed(t, shape, refill, 2, Refill{Time: refill, Parallel: maxParallel})
	if measured.Cold >= unaware.Cold {
		t.Errorf("sized with the measured refill rate: %d cold creates; as if refills kept up: %d; want fewer", measured.Cold, unaware.Cold)
	}
}

func TestDeficit(t *testing.T) {
	for _, c := range []struct {
		mean, upper []float64
		throughput  float64
		want        int
	}{
		{nil, nil, 1, 0},
		{[]float64{1, 1, 1}, nil, 1, 0},                // refills keep up
		{[]float64{0, 0, 4, 4, 0}, nil, 1, 4},          // 2 quiet steps build 2 of the peak's 6
		{[]float64{4, 4, 0, 0}, nil, 1, 6},             // the peak is now
		{[]float64{0, 0, 0, 0, 0, 0, 4, 4}, nil, 1, 0}, // far enough ahead to build in time
		{[]float64{3, 0, 0, 0, 3, 3, 3}, nil, 1, 5},    // the sum runs on: refills never catch up
		{[]float64{5, 5}, nil, 0, 0},                   // unmeasured
		{[]float64{-3, 2.5}, nil, 1, 1},                // negative means count as none
		{[]float64{4, 4}, []float64{7, 8}, 1, 6 + 5},   // spreads 3 and 4 add as sqrt(9+16)
		{[]float64{0, 0, 0}, []float64{2, 2, 2}, 1, 1}, // sqrt(4)-1 = 1 after one step
		{[]float64{math.Inf(1)}, nil, 1, maxDeficit},   // held within an int
		{[]float64{math.NaN()}, nil, 1, 0},
	} {
		if got := Deficit(c.mean, c.upper, c.throughput); got != c.want {
			t.Errorf("Deficit(%v, %v, %v) = %d, want %d", c.mean, c.upper, c.throughput, got, c.want)
		}
	}
}

func TestSimulatePool(t *testing.T) {
	start := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	// Nothing ready at first: the first minute's 2 creates are cold, then
	// the pool of 5 (refill 1m) serves 2 a minute warm.
	r := SimulatePool(start, []int{2, 2, 2, 0}, time.Minute, 0, time.Minute, func(time.Time, int) int { return 5 }, nil)
	if r.Creates != 6 || r.Cold != 2 {
		t.Fatalf("%+v", r)
	}
	// A pool of 1 with 3-minute refills serves one create per 3 minutes.
	r = SimulatePool(start, []int{0, 0, 0, 0, 1, 1, 1, 1, 0}, 3*time.Minute, 0, time.Minute, func(time.Time, int) int { return 1 }, nil)
	if r.Creates != 4 || r.Cold != 2 {
		t.Fatalf("%+v", r)
	}
}
