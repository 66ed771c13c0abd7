package charon

import (
	"sync"
	"sync/atomic"
	"time"

	"github.com/tartarus-sandbox/tartarus/pkg/clock"
)

// BreakerState is closed, open or half_open.
type BreakerState string

// The breaker states.
const (
	BreakerClosed   BreakerState = "closed"
	BreakerOpen     BreakerState = "open"
	BreakerHalfOpen BreakerState = "half_open"
)

// breaker is one shore's circuit breaker. Closed, it counts consecutive
// failures and opens at the threshold. Open, it admits nothing until its
// timeout has passed on the clock; then it is half-open and admits up to
// HalfOpenRequests trial requests at a time. A trial that fails reopens it;
// HalfOpenRequests trials that succeed close it.
//
// A nil *breaker (breakers disabled) admits everything.
type breaker struct {
	cfg   CircuitBreakerConfig
	clock clock.Clock

	// closed mirrors state == BreakerClosed and failures counts consecutive
	// failures while closed, so the common case takes no lock.
	closed   atomic.Bool
	failures atomic.Int32

	mu        sync.Mutex
	state     BreakerState
	openedAt  time.Time // while open
	trials    int       // admitted and not yet finished, while half-open
	successes int       // successful trials, while half-open
}

func newBreaker(cfg CircuitBreakerConfig, clk clock.Clock) *breaker {
	if !cfg.Enabled {
		return nil
	}
	b := &breaker{cfg: cfg, clock: clk, state: BreakerClosed}
	b.closed.Store(true)
	return b
}

// State returns the current state, moving open to half-open when due.
func (b *breaker) State() BreakerState {
	if b == nil {
		return BreakerClosed
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	b.advance()
	return b.state
}

func (b *breaker) advance() {
	if b.state == BreakerOpen && !b.clock.Now().Before(b.openedAt.Add(b.cfg.Timeout)) {
		b.state = BreakerHalfOpen
		b.trials, b.successes = 0, 0
	}
}

// Ready says whether Allow would admit a request now, without admitting one.
func (b *breaker) Ready() bool {
	if b == nil || b.closed.Load() {
		return true
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	b.advance()
	switch b.state {
	case BreakerClosed:
		return true
	case BreakerHalfOpen:
		return b.trials+b.successes < b.cfg.HalfOpenRequests
	}
	return false
}

// Allow admits a request or refuses it. Every admitted request must be
// followed by exactly one Done.
func (b *breaker) Allow() bool {
	if b == nil || b.closed.Load() {
		return true
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	b.advance()
	switch b.state {
	case BreakerClosed:
		return true
	case BreakerHalfOpen:
		if b.trials+b.successes < b.cfg.HalfOpenRequests {
			b.trials++
			return true
		}
	}
	return false
}

// Done records the outcome of an admitted request.
func (b *breaker) Done(success bool) {
	if b == nil {
		return
	}
	if success && b.closed.Load() {
		if b.failures.Load() != 0 {
			b.failures.Store(0)
		}
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	switch b.state {
	case BreakerClosed:
		if success {
			b.failures.Store(0)
			return
		}
		if int(b.failures.Add(1)) >= b.cfg.Threshold {
			b.open()
		}
	case BreakerHalfOpen:
		if b.trials == 0 {
			return // admitted while closed, not a trial
		}
		b.trials--
		if !success {
			b.open()
			return
		}
		b.successes++
		if b.successes >= b.cfg.HalfOpenRequests {
			b.state = BreakerClosed
			b.failures.Store(0)
			b.closed.Store(true)
		}
	case BreakerOpen:
		// A request admitted before the breaker opened; it changes nothing.
	}
}

func (b *breaker) open() {
	b.state = BreakerOpen
	b.closed.Store(false)
	b.openedAt = b.clock.Now()
	b.failures.Store(0)
	b.trials, b.successes = 0, 0
}
