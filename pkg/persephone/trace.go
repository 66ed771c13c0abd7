package persephone

import (
	"math"
	"math/rand/v2"
	"time"
)

// DayShape is a day-shaped launch rate: a night base, a morning and an
// evening peak (Gaussian bumps), used to make synthetic history for tests,
// benchmarks and the documented backtest.
type DayShape struct {
	Base        float64       // launches per minute at night
	MorningPeak float64       // extra launches per minute at the morning peak
	MorningAt   time.Duration // time of day of the morning peak
	EveningPeak float64
	EveningAt   time.Duration
	Width       time.Duration // standard deviation of each peak
	Weekend     float64       // factor on weekend peaks (1 = like weekdays)
}

// DefaultDayShape peaks at 09:00 (8/min) and 20:00 (5/min) over a base of
// 0.3/min, with quieter weekends.
func DefaultDayShape() DayShape {
	return DayShape{Base: 0.3, MorningPeak: 8, MorningAt: 9 * time.Hour, EveningPeak: 5, EveningAt: 20 * time.Hour,
		Width: 75 * time.Minute, Weekend: 0.5}
}

// Rate is the launch rate per minute at t (UTC wall clock).
func (d DayShape) Rate(t time.Time) float64 {
	tod := t.Sub(t.Truncate(24 * time.Hour)).Hours()
	bump := func(at time.Duration) float64 {
		x := (tod - at.Hours()) / d.Width.Hours()
		return math.Exp(-x * x / 2)
	}
	f := 1.0
	if wd := t.Weekday(); wd == time.Saturday || wd == time.Sunday {
		f = d.Weekend
	}
	return d.Base + f*(d.MorningPeak*bump(d.MorningAt)+d.EveningPeak*bump(d.EveningAt))
}

// LaunchTrace draws Poisson launch counts, one per minute from start, for
// the given number of minutes, reproducibly from seed.
func LaunchTrace(d DayShape, start time.Time, minutes int, seed uint64) []int {
	rng := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	out := make([]int, minutes)
	for i := range out {
		out[i] = poisson(rng, d.Rate(start.Add(time.Duration(i)*time.Minute)))
	}
	return out
}

func poisson(rng *rand.Rand, lambda float64) int {
	l, k, p := math.Exp(-lambda), 0, 1.0
	for {
		p *= rng.Float64()
		if p <= l {
			return k
		}
		k++
	}
}

// TraceRecords turns per-minute launch counts of one template into usage
// records (active VMs approximated as the launches of the last 20 minutes).
func TraceRecords(template string, start time.Time, launches []int) []*UsageRecord {
	out := make([]*UsageRecord, len(launches))
	active := 0
	for i, n := range launches {
		active += n
		if i >= 20 {
			active -= launches[i-20]
		}
		out[i] = &UsageRecord{Timestamp: start.Add(time.Duration(i) * time.Minute), Resolution: time.Minute,
			ActiveVMs: active, LaunchCount: n, LaunchesByTemplate: map[string]int{template: n}}
	}
	return out
}
