package charon

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"sync"
	"sync/atomic"
	"time"
)

// shoreState is a registered shore and everything the ferry knows about it.
type shoreState struct {
	Shore
	target  *url.URL
	hc      HealthCheck
	weight  int64
	breaker *breaker
	m       shoreMetrics

	active       atomic.Int64 // attempts in flight, including streaming bodies
	checked      atomic.Bool  // the active health check passes (or checks are off)
	consecFail   atomic.Int32 // passive: consecutive failed attempts
	ejectedUntil atomic.Int64 // passive: unix nanoseconds; 0 when never ejected
	latency      atomic.Int64 // moving average of time to headers, nanoseconds
	stats        window       // a = attempts, b = failed attempts

	ejMu      sync.Mutex
	ejections int       // consecutive ejections, for the growing ejection time
	lastEject time.Time // end of the last ejection

	wrrCurrent int64 // smooth weighted round robin; guarded by BoatFerry.wrrMu

	stop context.CancelFunc // ends the health check on deregistration
	done chan struct{}      // closed when the health checker has returned
}

func (s *shoreState) ejected(now time.Time) bool {
	return s.ejectedUntil.Load() > now.UnixNano()
}

// usable says whether the shore may take a request now under normal rules.
func (s *shoreState) usable(now time.Time) bool {
	return s.checked.Load() && !s.ejected(now) && s.breaker.Ready()
}

// outcome is how one attempt at one shore ended.
type outcome uint8

const (
	outcomeOK outcome = iota // any answer below 500
	outcome5xx
	outcomeConnect // could not connect: nothing was sent
	outcomeTimeout
	outcomeError    // the connection failed after it was made
	outcomeCanceled // the client went away; says nothing about the shore
	numOutcomes
)

var outcomeNames = [numOutcomes]string{"ok", "http_5xx", "connect_error", "timeout", "error", "canceled"}

func (o outcome) String() string { return outcomeNames[o] }

func (o outcome) failure() bool { return o != outcomeOK && o != outcomeCanceled }

// record feeds one attempt's outcome to the breaker, the outlier detector,
// the error-rate window and the metrics.
func (f *BoatFerry) record(s *shoreState, o outcome, took time.Duration, now time.Time) {
	s.m.attempts[o].Inc()
	if o == outcomeCanceled {
		return
	}
	s.m.duration.Observe(took.Seconds())
	old := s.latency.Load()
	s.latency.Store(old + (int64(took)-old)/8)
	fail := o.failure()
	var f64 int64
	if fail {
		f64 = 1
	}
	s.stats.add(now, 1, f64)
	s.breaker.Done(!fail)
	if f.cfg.Outlier.Consecutive < 0 {
		return
	}
	if !fail {
		if s.consecFail.Load() != 0 {
			s.consecFail.Store(0)
		}
		return
	}
	if int(s.consecFail.Add(1)) >= f.cfg.Outlier.Consecutive {
		s.consecFail.Store(0)
		f.eject(s, now)
	}
}

// eject takes s out of rotation for a time that doubles with each ejection
// in a row, up to MaxEjection.
func (f *BoatFerry) eject(s *shoreState, now time.Time) {
	s.ejMu.Lock()
	defer s.ejMu.Unlock()
	if s.ejected(now) {
		return
	}
	o := f.cfg.Outlier
	if !s.lastEject.IsZero() && now.Sub(s.lastEject) > o.MaxEjection {
		s.ejections = 0
	}
	s.ejections++
	d := o.BaseEjection << min(s.ejections-1, 20)
	if d <= 0 || d > o.MaxEjection {
		d = o.MaxEjection
	}
	until := now.Add(d)
	s.ejectedUntil.Store(until.UnixNano())
	s.lastEject = until
	s.m.ejections.Inc()
	f.log.Warn("shore ejected", "shore", s.ID, "for", d, "ejections_in_a_row", s.ejections)
}

// checkHealth runs the active health check of s until it is deregistered or
// the ferry closes. A shore starts out trusted; a failed first probe marks it
// unhealthy at once, later it takes hc.Unhealthy failures in a row, and
// hc.Healthy successes in a row bring it back.
func (f *BoatFerry) checkHealth(ctx context.Context, s *shoreState) {
	defer close(s.done)
	hc := s.hc
	if hc.Interval < 0 {
		return
	}
	tick := time.NewTicker(hc.Interval)
	defer tick.Stop()
	verified := false
	succ, fail := 0, 0
	for {
		ok := f.probe(ctx, s)
		if ctx.Err() != nil {
			return
		}
		switch {
		case ok:
			succ, fail = succ+1, 0
			verified = true
			if !s.checked.Load() && succ >= hc.Healthy {
				s.checked.Store(true)
				f.log.Info("shore healthy", "shore", s.ID)
			}
		default:
			succ, fail = 0, fail+1
			if s.checked.Load() && (!verified || fail >= hc.Unhealthy) {
				s.checked.Store(false)
				f.log.Warn("shore unhealthy", "shore", s.ID, "failed_checks", fail)
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

func (f *BoatFerry) probe(ctx context.Context, s *shoreState) bool {
	ctx, cancel := context.WithTimeout(ctx, s.hc.Timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, s.target.String()+s.hc.Path, nil)
	if err != nil {
		return false
	}
	req.Header.Set("User-Agent", "tartarus-ferry-health")
	resp, err := f.healthClient.Do(req)
	if err != nil {
		f.log.Debug("health check failed", "shore", s.ID, slog.Any("err", err))
		return false
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	resp.Body.Close()
	return resp.StatusCode >= 200 && resp.StatusCode < 300
}

// health is the shore's ShoreHealth now.
func (f *BoatFerry) shoreHealth(s *shoreState, now time.Time) ShoreHealth {
	attempts, fails := s.stats.sum(now, 10*time.Second)
	h := ShoreHealth{
		ShoreID:     s.ID,
		Address:     s.Address,
		Latency:     time.Duration(s.latency.Load()),
		ActiveConns: int(s.active.Load()),
		Checked:     s.checked.Load(),
		Breaker:     string(s.breaker.State()),
	}
	if attempts > 0 {
		h.ErrorRate = float64(fails) / float64(attempts)
	}
	if s.ejected(now) {
		h.EjectedUntil = time.Unix(0, s.ejectedUntil.Load()).UTC()
	}
	switch {
	case !h.Checked || s.ejected(now) || h.Breaker == string(BreakerOpen):
		h.Status = HealthStatusUnhealthy
	case h.Breaker == string(BreakerHalfOpen) || h.ErrorRate > 0.1:
		h.Status = HealthStatusDegraded
	default:
		h.Status = HealthStatusHealthy
	}
	return h
}
