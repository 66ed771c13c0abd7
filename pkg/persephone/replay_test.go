package persephone

import (
	"context"
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

// TestReplayForecastBeatsFixedPool replays a synthetic day (morning and
// evening peaks, Poisson launches; the day after 14 recorded days) against
// a simulated pool (3-minute refills) twice in the same run: pools sized
// every 5 minutes by the scaler from the forecast, and a fixed pool holding
// at least as many ready sandboxes on average. The forecast-sized pools
// must give fewer cold creates.
func TestReplayForecastBeatsFixedPool(t *testing.T) {
	if testing.Short() {
		t.Skip("replays a day")
	}
	ctx := context.Background()
	shape := DefaultDayShape()
	s, fc := newTraceScaler(t, shape)
	day := LaunchTrace(shape, replayStart, 24*60, 2)
	byTemplate := TraceRecords("python", replayStart, day)
	policy := func(now time.Time, current int) int {
		fc.Advance(now.Sub(fc.Now()))
		ts, err := s.PoolTargets(ctx, map[string]int{"python": current})
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
	forecast := SimulatePool(replayStart, day, 3*time.Minute, 5*time.Minute, policy, record)
	var fixed ReplayResult
	n := 0
	for n = 1; n <= 100; n++ {
		fixed = SimulatePool(replayStart, day, 3*time.Minute, 5*time.Minute, func(time.Time, int) int { return n }, nil)
		if fixed.MeanReady >= forecast.MeanReady {
			break
		}
	}
	t.Logf("forecast-sized pools: %d creates, %d cold (%.1f%%), %.1f ready on average", forecast.Creates, forecast.Cold, 100*float64(forecast.Cold)/float64(forecast.Creates), forecast.MeanReady)
	t.Logf("fixed pool of %d:      %d creates, %d cold (%.1f%%), %.1f ready on average", n, fixed.Creates, fixed.Cold, 100*float64(fixed.Cold)/float64(fixed.Creates), fixed.MeanReady)
	if fixed.MeanReady < forecast.MeanReady {
		t.Fatalf("no fixed pool up to 100 holds %.1f on average", forecast.MeanReady)
	}
	if forecast.Cold >= fixed.Cold {
		t.Fatalf("forecast-sized pools: %d cold creates, fixed pool: %d; want fewer", forecast.Cold, fixed.Cold)
	}
}

func TestSimulatePool(t *testing.T) {
	start := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	// Nothing ready at first: the first minute's 2 creates are cold, then
	// the pool of 5 (refill 1m) serves 2 a minute warm.
	r := SimulatePool(start, []int{2, 2, 2, 0}, time.Minute, time.Minute, func(time.Time, int) int { return 5 }, nil)
	if r.Creates != 6 || r.Cold != 2 {
		t.Fatalf("%+v", r)
	}
	// A pool of 1 with 3-minute refills serves one create per 3 minutes.
	r = SimulatePool(start, []int{0, 0, 0, 0, 1, 1, 1, 1, 0}, 3*time.Minute, time.Minute, func(time.Time, int) int { return 1 }, nil)
	if r.Creates != 4 || r.Cold != 2 {
		t.Fatalf("%+v", r)
	}
}
