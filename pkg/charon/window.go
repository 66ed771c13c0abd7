package charon

import (
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tartarus-sandbox/tartarus/pkg/clock"
)

// window counts two quantities over the last len(slots) seconds, in
// one-second slots, without a lock on the hot path.
type window struct {
	mu    sync.Mutex // only to reset a stale slot
	slots [10]windowSlot
}

type windowSlot struct {
	sec  atomic.Int64
	a, b atomic.Int64
}

func (w *window) add(now time.Time, da, db int64) {
	sec := now.Unix()
	s := &w.slots[uint64(sec)%uint64(len(w.slots))]
	if s.sec.Load() != sec {
		w.mu.Lock()
		if s.sec.Load() != sec {
			s.a.Store(0)
			s.b.Store(0)
			s.sec.Store(sec)
		}
		w.mu.Unlock()
	}
	if da != 0 {
		s.a.Add(da)
	}
	if db != 0 {
		s.b.Add(db)
	}
}

// sum returns the totals over the last span (at most len(slots) seconds).
func (w *window) sum(now time.Time, span time.Duration) (a, b int64) {
	n := int64(span / time.Second)
	n = max(1, min(n, int64(len(w.slots))))
	sec := now.Unix()
	for i := range w.slots {
		s := &w.slots[i]
		if d := sec - s.sec.Load(); d >= 0 && d < n {
			a += s.a.Load()
			b += s.b.Load()
		}
	}
	return a, b
}

// retryBudget lets retries be at most ratio of requests (plus a small floor)
// over its window, so that when every shore fails the ferry does not
// multiply the load by the retry count. a = requests, b = retries.
type retryBudget struct {
	ratio     float64
	minPerSec int
	span      time.Duration
	clock     clock.Clock
	w         window
}

func newRetryBudget(cfg RetryConfig, clk clock.Clock) *retryBudget {
	return &retryBudget{ratio: cfg.BudgetRatio, minPerSec: cfg.MinRetriesPerSecond, span: min(cfg.BudgetWindow, 10*time.Second), clock: clk}
}

func (rb *retryBudget) request() { rb.w.add(rb.clock.Now(), 1, 0) }

// allowRetry reports whether one more retry fits, and counts it if so.
func (rb *retryBudget) allowRetry() bool {
	now := rb.clock.Now()
	reqs, retries := rb.w.sum(now, rb.span)
	limit := rb.ratio*float64(reqs) + float64(rb.minPerSec)*rb.span.Seconds()
	if float64(retries+1) > limit {
		return false
	}
	rb.w.add(now, 0, 1)
	return true
}

// backoff is exponential backoff with full jitter: a uniform wait in
// [0, min(max, initial·2^attempt)).
func backoff(cfg RetryConfig, attempt int) time.Duration {
	ceil := cfg.InitialDelay << min(attempt, 20)
	if ceil <= 0 || ceil > cfg.MaxDelay {
		ceil = cfg.MaxDelay
	}
	if ceil <= 0 {
		return 0
	}
	return rand.N(ceil)
}
