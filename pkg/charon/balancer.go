package charon

import (
	"hash/fnv"
	"math"
	"slices"
	"time"
)

// pick chooses the shore for the next attempt and admits it through the
// shore's breaker. It looks, in order, at: usable shores not yet tried by
// this crossing; usable shores already tried; and, with the try_all policy,
// every shore whose breaker admits requests (tried or not). Within the first
// group that has any, it keeps the best (lowest) priority and applies the
// strategy.
func (f *BoatFerry) pick(clientKey string, tried []*shoreState, now time.Time) *shoreState {
	shores := *f.shores.Load()
	var buf [16]*shoreState
	passes := 2
	if f.cfg.WhenAllUnhealthy == AllUnhealthyTryAll {
		passes = 4
	}
	for pass := 0; pass < passes; pass++ {
		ignoreHealth := pass >= 2
		allowTried := pass%2 == 1
		if allowTried && len(tried) == 0 {
			continue
		}
		// A half-open breaker may refuse between Ready and Allow; try the
		// group again without that shore.
		var refused []*shoreState
		for range 4 {
			cand := buf[:0]
			best := math.MaxInt
			for _, s := range shores {
				if slices.Contains(refused, s) || (!allowTried && slices.Contains(tried, s)) {
					continue
				}
				if ignoreHealth {
					if !s.breaker.Ready() {
						continue
					}
				} else if !s.usable(now) {
					continue
				}
				if s.Priority < best {
					cand, best = cand[:0], s.Priority
				}
				if s.Priority == best {
					cand = append(cand, s)
				}
			}
			if len(cand) == 0 {
				break
			}
			s := f.choose(cand, clientKey)
			if s.breaker.Allow() {
				return s
			}
			refused = append(refused, s)
		}
	}
	return nil
}

// choose applies the strategy to candidates of one priority.
func (f *BoatFerry) choose(cand []*shoreState, clientKey string) *shoreState {
	if len(cand) == 1 {
		return cand[0]
	}
	switch f.cfg.Strategy {
	case StrategyLeastConn:
		// Fewest attempts in flight per unit of weight; ties are broken by
		// a rotating start so idle shores share sequential requests.
		start := int(f.rr.Add(1) % uint64(len(cand)))
		best := cand[start]
		for i := 1; i < len(cand); i++ {
			s := cand[(start+i)%len(cand)]
			if s.active.Load()*best.weight < best.active.Load()*s.weight {
				best = s
			}
		}
		return best
	case StrategyWeighted:
		// Smooth weighted round robin (as in nginx): exact proportions,
		// spread out rather than in runs.
		f.wrrMu.Lock()
		defer f.wrrMu.Unlock()
		var total int64
		var best *shoreState
		for _, s := range cand {
			s.wrrCurrent += s.weight
			total += s.weight
			if best == nil || s.wrrCurrent > best.wrrCurrent {
				best = s
			}
		}
		best.wrrCurrent -= total
		return best
	case StrategyIPHash:
		// Weighted rendezvous hashing on the client address: a client keeps
		// its shore, and only clients of a shore that leaves move.
		var best *shoreState
		bestScore := math.Inf(-1)
		for _, s := range cand {
			h := fnv.New64a()
			h.Write([]byte(clientKey))
			h.Write([]byte{0})
			h.Write([]byte(s.ID))
			u := (float64(mix64(h.Sum64())>>11) + 0.5) / (1 << 53) // (0,1)
			score := float64(s.weight) / -math.Log(u)
			if score > bestScore {
				best, bestScore = s, score
			}
		}
		return best
	case StrategyZoneAware:
		// Round robin over the shores of the ferry's zone; over all of them
		// when none of the ferry's zone is usable.
		var buf [16]*shoreState
		local := buf[:0]
		for _, s := range cand {
			if s.Zone == f.cfg.Zone {
				local = append(local, s)
			}
		}
		if len(local) > 0 {
			cand = local
		}
	}
	return cand[f.rr.Add(1)%uint64(len(cand))]
}

// mix64 is MurmurHash3's finaliser: FNV alone leaves the high bits of keys
// that differ only at the end nearly equal.
func mix64(h uint64) uint64 {
	h ^= h >> 33
	h *= 0xff51afd7ed558ccd
	h ^= h >> 33
	h *= 0xc4ceb9fe1a85ec53
	h ^= h >> 33
	return h
}
