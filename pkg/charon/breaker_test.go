package charon

import (
	"testing"
	"time"
)

func TestBreaker(t *testing.T) {
	cfg := CircuitBreakerConfig{Enabled: true, Threshold: 3, Timeout: 10 * time.Second, HalfOpenRequests: 2}
	type step struct {
		advance time.Duration
		allow   bool // expected Allow()
		result  *bool
		state   BreakerState // after the step
	}
	ok, bad := true, false
	tests := []struct {
		name  string
		steps []step
	}{
		{"successes keep it closed", []step{
			{allow: true, result: &ok, state: BreakerClosed},
			{allow: true, result: &ok, state: BreakerClosed},
		}},
		{"threshold failures in a row open it", []step{
			{allow: true, result: &bad, state: BreakerClosed},
			{allow: true, result: &bad, state: BreakerClosed},
			{allow: true, result: &bad, state: BreakerOpen},
			{allow: false, state: BreakerOpen},
		}},
		{"a success resets the count", []step{
			{allow: true, result: &bad, state: BreakerClosed},
			{allow: true, result: &bad, state: BreakerClosed},
			{allow: true, result: &ok, state: BreakerClosed},
			{allow: true, result: &bad, state: BreakerClosed},
			{allow: true, result: &bad, state: BreakerClosed},
		}},
		{"open, then half-open after the timeout, then closed after the trials", []step{
			{allow: true, result: &bad}, {allow: true, result: &bad}, {allow: true, result: &bad, state: BreakerOpen},
			{advance: 9 * time.Second, allow: false, state: BreakerOpen},
			{advance: time.Second, allow: true, result: &ok, state: BreakerHalfOpen},
			{allow: true, result: &ok, state: BreakerClosed},
			{allow: true, result: &ok, state: BreakerClosed},
		}},
		{"a failed trial reopens it", []step{
			{allow: true, result: &bad}, {allow: true, result: &bad}, {allow: true, result: &bad, state: BreakerOpen},
			{advance: 10 * time.Second, allow: true, result: &bad, state: BreakerOpen},
			{advance: 5 * time.Second, allow: false, state: BreakerOpen},
			{advance: 5 * time.Second, allow: true, result: &ok, state: BreakerHalfOpen},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clock := newFakeClock()
			b := newBreaker(cfg, clock)
			for i, s := range tt.steps {
				clock.Advance(s.advance)
				if got := b.Allow(); got != s.allow {
					t.Fatalf("step %d: Allow() = %v, want %v", i, got, s.allow)
				}
				if s.result != nil {
					b.Done(*s.result)
				}
				if s.state != "" {
					if got := b.State(); got != s.state {
						t.Fatalf("step %d: state %s, want %s", i, got, s.state)
					}
				}
			}
		})
	}
}

func TestBreakerHalfOpenAdmitsOnlyTrials(t *testing.T) {
	clock := newFakeClock()
	b := newBreaker(CircuitBreakerConfig{Enabled: true, Threshold: 1, Timeout: time.Second, HalfOpenRequests: 2}, clock)
	b.Allow()
	b.Done(false)
	clock.Advance(time.Second)
	first, second := b.Allow(), b.Allow()
	if !first || !second {
		t.Fatal("half-open breaker refused its trials")
	}
	if b.Allow() || b.Ready() {
		t.Fatal("half-open breaker admitted more than HalfOpenRequests at once")
	}
	b.Done(true)
	b.Done(true)
	if b.State() != BreakerClosed {
		t.Fatalf("state %s after two good trials, want closed", b.State())
	}
}

func TestNilBreakerAdmitsAll(t *testing.T) {
	b := newBreaker(CircuitBreakerConfig{Enabled: false}, newFakeClock())
	for range 100 {
		if !b.Allow() {
			t.Fatal("disabled breaker refused")
		}
		b.Done(false)
	}
}

func TestEjectionTimeGrowsAndResets(t *testing.T) {
	clock := newFakeClock()
	cfg := quietConfig()
	cfg.Outlier = OutlierConfig{Consecutive: 2, BaseEjection: time.Second, MaxEjection: 4 * time.Second}
	f, err := New(Options{Config: cfg, Clock: clock})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.RegisterShore(&Shore{ID: "s", Address: "http://127.0.0.1:1"}); err != nil {
		t.Fatal(err)
	}
	s := (*f.shores.Load())[0]
	fail := func() {
		for range 2 {
			f.record(s, outcomeConnect, time.Millisecond, clock.Now())
		}
	}
	for i, want := range []time.Duration{time.Second, 2 * time.Second, 4 * time.Second, 4 * time.Second} {
		fail()
		if !s.ejected(clock.Now()) {
			t.Fatalf("ejection %d: not ejected after 2 failures", i+1)
		}
		clock.Advance(want - time.Millisecond)
		if !s.ejected(clock.Now()) {
			t.Fatalf("ejection %d: back before %v", i+1, want)
		}
		clock.Advance(time.Millisecond)
		if s.ejected(clock.Now()) {
			t.Fatalf("ejection %d: still out after %v", i+1, want)
		}
	}
	// A success in between resets the count of failures in a row.
	f.record(s, outcomeConnect, 0, clock.Now())
	f.record(s, outcomeOK, 0, clock.Now())
	f.record(s, outcomeConnect, 0, clock.Now())
	if s.ejected(clock.Now()) {
		t.Fatal("ejected without 2 failures in a row")
	}
	// After MaxEjection without an ejection, the time starts again at the base.
	clock.Advance(5 * time.Second)
	fail()
	clock.Advance(time.Second)
	if s.ejected(clock.Now()) {
		t.Fatal("ejection time did not fall back to the base after a quiet spell")
	}
}
