package persephone

import "time"

// ReplayResult is what a replay of launches against a warm pool measured.
type ReplayResult struct {
	Creates int
	// Cold counts creates that found no warm sandbox ready.
	Cold int
	// MeanReady is the time-averaged number of ready warm sandboxes: what
	// the pool cost.
	MeanReady float64
}

// SimulatePool replays per-minute launch counts (the launches of a minute
// spread evenly over it) against a simulated warm pool: a create takes a
// ready sandbox if there is one and is cold otherwise; the pool refills
// towards its target, each refill taking refill, at most parallel at once
// (0: any number); excess ready sandboxes are
// dropped when the target falls. target is asked for the pool's size every
// `every`, before that minute's launches; recorded, when not nil, is told
// each minute's launches once the minute is over (as the usage recorder
// would record them).
func SimulatePool(start time.Time, launches []int, refill time.Duration, parallel int, every time.Duration, target func(now time.Time, current int) int, recorded func(minute time.Time, launches int)) ReplayResult {
	var res ReplayResult
	ready, tgt := 0, 0
	var inflight []time.Time // completion times, in order
	last := start
	var area float64
	var fill func(t time.Time)
	advance := func(t time.Time) {
		for len(inflight) > 0 && !inflight[0].After(t) {
			done := inflight[0]
			area += float64(ready) * done.Sub(last).Seconds()
			last = done
			inflight = inflight[1:]
			if ready < tgt {
				ready++
			}
			fill(done) // a freed refill slot starts the next
		}
		area += float64(ready) * t.Sub(last).Seconds()
		last = t
	}
	fill = func(t time.Time) {
		for ready+len(inflight) < tgt && (parallel <= 0 || len(inflight) < parallel) {
			// Completion times stay in order: every refill takes as long.
			inflight = append(inflight, t.Add(refill))
		}
	}
	everyMin := max(1, int(every/time.Minute))
	for i, n := range launches {
		t0 := start.Add(time.Duration(i) * time.Minute)
		advance(t0)
		if i%everyMin == 0 {
			tgt = max(0, target(t0, tgt))
			if ready > tgt {
				ready = tgt
			}
			fill(t0)
		}
		for k := 0; k < n; k++ {
			a := t0.Add(time.Duration((float64(k) + 0.5) / float64(n) * float64(time.Minute)))
			advance(a)
			res.Creates++
			if ready > 0 {
				ready--
			} else {
				res.Cold++
			}
			fill(a)
		}
		end := t0.Add(time.Minute)
		advance(end)
		if recorded != nil {
			recorded(t0, n)
		}
	}
	if d := last.Sub(start).Seconds(); d > 0 {
		res.MeanReady = area / d
	}
	return res
}
