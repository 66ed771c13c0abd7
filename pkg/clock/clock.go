// Package clock is the time source of everything whose behaviour time decides
// (expiry, idle thresholds, sleep limits, breakers, timeouts), with a fake
// that tests move by hand.
package clock

import (
	"slices"
	"sync"
	"time"
)

// Clock is a time source that hands out tickers and timers; tests use Fake.
type Clock interface {
	Now() time.Time
	NewTicker(d time.Duration) Ticker
	// After is time.After on this clock: the channel receives once d has
	// passed.
	After(d time.Duration) <-chan time.Time
	// AfterFunc is time.AfterFunc on this clock: f runs in its own goroutine
	// once d has passed, unless the Timer is stopped first.
	AfterFunc(d time.Duration, f func()) Timer
}

// Ticker is the part of time.Ticker a Clock hands out.
type Ticker interface {
	C() <-chan time.Time
	Stop()
}

// Timer is the part of time.Timer that AfterFunc hands out.
type Timer interface {
	// Stop keeps f from running; it reports false if f already ran (or is
	// running) or the timer was stopped before.
	Stop() bool
}

// System is the real clock.
type System struct{}

var _ Clock = System{}

// Now implements Clock.
func (System) Now() time.Time { return time.Now() }

// NewTicker implements Clock.
func (System) NewTicker(d time.Duration) Ticker { return realTicker{time.NewTicker(d)} }

// After implements Clock.
func (System) After(d time.Duration) <-chan time.Time { return time.After(d) }

// AfterFunc implements Clock.
func (System) AfterFunc(d time.Duration, f func()) Timer { return time.AfterFunc(d, f) }

type realTicker struct{ t *time.Ticker }

func (r realTicker) C() <-chan time.Time { return r.t.C }
func (r realTicker) Stop()               { r.t.Stop() }

// Fake is a Clock that moves only when Advance is called. Its tickers fire
// (at most one pending tick each, like time.Ticker) and its timers fire (in
// deadline order) when Advance reaches their deadline; a timer of zero or
// negative duration fires at once, as time.After and time.AfterFunc do.
type Fake struct {
	mu      sync.Mutex
	now     time.Time
	tickers []*fakeTicker
	timers  []*fakeTimer // pending only
}

var _ Clock = (*Fake)(nil)

// NewFake returns a fake clock set to start.
func NewFake(start time.Time) *Fake { return &Fake{now: start} }

// Now implements Clock.
func (c *Fake) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

// NewTicker implements Clock.
func (c *Fake) NewTicker(d time.Duration) Ticker {
	c.mu.Lock()
	defer c.mu.Unlock()
	t := &fakeTicker{c: make(chan time.Time, 1), every: d, next: c.now.Add(d), clock: c}
	c.tickers = append(c.tickers, t)
	return t
}

// After implements Clock.
func (c *Fake) After(d time.Duration) <-chan time.Time {
	ch := make(chan time.Time, 1)
	c.addTimer(d, &fakeTimer{ch: ch})
	return ch
}

// AfterFunc implements Clock.
func (c *Fake) AfterFunc(d time.Duration, f func()) Timer {
	return c.addTimer(d, &fakeTimer{f: f})
}

func (c *Fake) addTimer(d time.Duration, t *fakeTimer) *fakeTimer {
	c.mu.Lock()
	defer c.mu.Unlock()
	t.clock, t.at = c, c.now.Add(d)
	if d <= 0 {
		t.fire(c.now)
		return t
	}
	c.timers = append(c.timers, t)
	return t
}

// Tickers reports how many live tickers the clock has handed out, so a test
// can wait until a loop is ready before advancing time.
func (c *Fake) Tickers() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := 0
	for _, t := range c.tickers {
		if !t.stopped {
			n++
		}
	}
	return n
}

// Timers reports how many timers (After and AfterFunc) are waiting to fire,
// so a test can wait until a loop has armed its next one before advancing
// time.
func (c *Fake) Timers() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.timers)
}

// Advance moves the clock forward by d and fires the tickers and timers that
// are due.
func (c *Fake) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
	for _, t := range c.tickers {
		if t.stopped || t.next.After(c.now) {
			continue
		}
		for !t.next.After(c.now) {
			t.next = t.next.Add(t.every)
		}
		select {
		case t.c <- c.now:
		default:
		}
	}
	var due []*fakeTimer
	kept := c.timers[:0]
	for _, t := range c.timers {
		if t.at.After(c.now) {
			kept = append(kept, t)
		} else {
			due = append(due, t)
		}
	}
	clear(c.timers[len(kept):])
	c.timers = kept
	slices.SortStableFunc(due, func(a, b *fakeTimer) int { return a.at.Compare(b.at) })
	for _, t := range due {
		t.fire(c.now)
	}
}

type fakeTicker struct {
	c       chan time.Time
	every   time.Duration
	next    time.Time
	stopped bool
	clock   *Fake
}

func (t *fakeTicker) C() <-chan time.Time { return t.c }

func (t *fakeTicker) Stop() {
	t.clock.mu.Lock()
	t.stopped = true
	t.clock.mu.Unlock()
}

// fakeTimer is one After (ch) or AfterFunc (f) timer; the clock's lock
// guards done.
type fakeTimer struct {
	at    time.Time
	ch    chan time.Time
	f     func()
	done  bool // fired or stopped
	clock *Fake
}

// fire runs with the clock locked. The channel has room for its one value
// and f runs in its own goroutine, so neither can block the clock.
func (t *fakeTimer) fire(now time.Time) {
	t.done = true
	if t.ch != nil {
		t.ch <- now
	}
	if t.f != nil {
		go t.f()
	}
}

// Stop implements Timer.
func (t *fakeTimer) Stop() bool {
	c := t.clock
	c.mu.Lock()
	defer c.mu.Unlock()
	if t.done {
		return false
	}
	t.done = true
	c.timers = slices.DeleteFunc(c.timers, func(o *fakeTimer) bool { return o == t })
	return true
}
