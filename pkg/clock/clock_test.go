package clock

import (
	"sync"
	"testing"
	"time"
)

var epoch = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

// received reports whether ch holds a value, without waiting.
func received(ch <-chan time.Time) (time.Time, bool) {
	select {
	case v := <-ch:
		return v, true
	default:
		return time.Time{}, false
	}
}

func TestFakeTicker(t *testing.T) {
	c := NewFake(epoch)
	tk := c.NewTicker(time.Second)
	if c.Tickers() != 1 {
		t.Fatalf("Tickers = %d", c.Tickers())
	}
	c.Advance(999 * time.Millisecond)
	if _, ok := received(tk.C()); ok {
		t.Fatal("ticked early")
	}
	c.Advance(time.Millisecond)
	if v, ok := received(tk.C()); !ok || !v.Equal(epoch.Add(time.Second)) {
		t.Fatalf("tick = %v %v", v, ok)
	}
	// Three periods at once leave one tick pending, like time.Ticker.
	c.Advance(3 * time.Second)
	if _, ok := received(tk.C()); !ok {
		t.Fatal("no tick")
	}
	if _, ok := received(tk.C()); ok {
		t.Fatal("more than one pending tick")
	}
	tk.Stop()
	if c.Tickers() != 0 {
		t.Fatalf("Tickers after Stop = %d", c.Tickers())
	}
	c.Advance(time.Hour)
	if _, ok := received(tk.C()); ok {
		t.Fatal("stopped ticker ticked")
	}
}

func TestFakeAfter(t *testing.T) {
	tests := []struct {
		name    string
		d       time.Duration
		advance []time.Duration
		fires   bool
		pending int // Timers() after the advances
	}{
		{"due exactly", time.Second, []time.Duration{time.Second}, true, 0},
		{"past due", time.Second, []time.Duration{time.Hour}, true, 0},
		{"in steps", time.Second, []time.Duration{500 * time.Millisecond, 500 * time.Millisecond}, true, 0},
		{"not yet", time.Second, []time.Duration{999 * time.Millisecond}, false, 1},
		{"zero fires at once", 0, nil, true, 0},
		{"negative fires at once", -time.Second, nil, true, 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := NewFake(epoch)
			ch := c.After(tc.d)
			for _, d := range tc.advance {
				c.Advance(d)
			}
			v, ok := received(ch)
			if ok != tc.fires {
				t.Fatalf("fired = %v, want %v", ok, tc.fires)
			}
			if ok && !v.Equal(c.Now()) {
				t.Fatalf("value %v, want the clock's time %v", v, c.Now())
			}
			if n := c.Timers(); n != tc.pending {
				t.Fatalf("Timers = %d, want %d", n, tc.pending)
			}
		})
	}
}

func TestFakeAfterFunc(t *testing.T) {
	c := NewFake(epoch)
	var mu sync.Mutex
	var order []string
	done := make(chan struct{}, 3)
	at := func(d time.Duration, name string) Timer {
		return c.AfterFunc(d, func() {
			mu.Lock()
			order = append(order, name)
			mu.Unlock()
			done <- struct{}{}
		})
	}
	at(2*time.Second, "b")
	at(time.Second, "a")
	stopped := at(1500*time.Millisecond, "stopped")
	if c.Timers() != 3 {
		t.Fatalf("Timers = %d", c.Timers())
	}
	if !stopped.Stop() {
		t.Fatal("Stop of a pending timer = false")
	}
	if stopped.Stop() {
		t.Fatal("second Stop = true")
	}
	if c.Timers() != 2 {
		t.Fatalf("Timers after Stop = %d", c.Timers())
	}
	c.Advance(time.Second)
	<-done
	c.Advance(time.Hour)
	<-done
	mu.Lock()
	got := append([]string(nil), order...)
	mu.Unlock()
	if len(got) != 2 || got[0] != "a" || got[1] != "b" {
		t.Fatalf("ran %v, want [a b]", got)
	}
	if c.Timers() != 0 {
		t.Fatalf("Timers = %d", c.Timers())
	}

	// A fired timer cannot be stopped; a zero one runs at once.
	ran := make(chan struct{})
	tm := c.AfterFunc(0, func() { close(ran) })
	<-ran
	if tm.Stop() {
		t.Fatal("Stop after firing = true")
	}
}

// TestSystem checks the real clock keeps the same contract (no timing is
// asserted: only that things fire, or are stopped).
func TestSystem(t *testing.T) {
	var c Clock = System{}
	<-c.After(0)
	ran := make(chan struct{})
	c.AfterFunc(time.Millisecond, func() { close(ran) })
	<-ran
	tm := c.AfterFunc(time.Hour, func() { t.Error("stopped timer ran") })
	if !tm.Stop() {
		t.Fatal("Stop of a pending timer = false")
	}
	tk := c.NewTicker(time.Millisecond)
	<-tk.C()
	tk.Stop()
	if c.Now().IsZero() {
		t.Fatal("zero Now")
	}
}
