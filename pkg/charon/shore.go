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

	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
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

// RegisterShore implements Ferry. The shore's health check (its own, else
// the ferry's default) starts at once; the shore takes requests from now
// on unless its first check fails.
func (f *BoatFerry) RegisterShore(shore *Shore) error {
	target, err := validateShore(shore)
	if err != nil {
		return err
	}
	hc := f.cfg.HealthCheck
	if shore.HealthCheck != nil {
		hc = shore.HealthCheck.defaults()
	}
	s := &shoreState{Shore: *shore, target: target, hc: hc, weight: int64(max(shore.Weight, 1)),
		breaker: newBreaker(f.cfg.CircuitBreaker, f.clock)}
	s.Shore.Address = target.Scheme + "://" + target.Host
	s.Shore.Weight = int(s.weight)
	s.Shore.Metadata = cloneMap(shore.Metadata)
	s.checked.Store(true)
	s.done = make(chan struct{})

	f.mu.Lock()
	defer f.mu.Unlock()
	if f.ctx.Err() != nil {
		return tartarus.Errorf(tartarus.ErrFailedPrecondition, "register shore %s: ferry closed", shore.ID)
	}
	old := *f.shores.Load()
	if len(old) >= maxShores {
		return tartarus.Errorf(tartarus.ErrResourceExhausted, "register shore %s: at most %d shores", shore.ID, maxShores)
	}
	for _, o := range old {
		if o.ID == shore.ID {
			return tartarus.Errorf(tartarus.ErrAlreadyExists, "shore %s", shore.ID)
		}
	}
	s.m = f.m.forShore(s.ID)
	var ctx context.Context
	ctx, s.stop = context.WithCancel(f.ctx)
	next := append(append(make([]*shoreState, 0, len(old)+1), old...), s)
	f.shores.Store(&next)
	f.wg.Go(func() { f.checkHealth(ctx, s) })
	f.log.Info("shore registered", "shore", s.ID, "address", s.Address, "zone", s.Zone, "weight", s.weight, "priority", s.Priority)
	return nil
}

// DeregisterShore implements Ferry. Crossings already at the shore finish.
func (f *BoatFerry) DeregisterShore(shoreID string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	old := *f.shores.Load()
	next := make([]*shoreState, 0, len(old))
	var gone *shoreState
	for _, s := range old {
		if s.ID == shoreID {
			gone = s
			continue
		}
		next = append(next, s)
	}
	if gone == nil {
		return tartarus.Errorf(tartarus.ErrNotFound, "shore %s", shoreID)
	}
	f.shores.Store(&next)
	gone.stop()
	f.m.dropShore(shoreID)
	f.log.Info("shore deregistered", "shore", shoreID)
	return nil
}

// Shores returns the registered shores.
func (f *BoatFerry) Shores() []Shore {
	cur := *f.shores.Load()
	out := make([]Shore, len(cur))
	for i, s := range cur {
		out[i] = s.Shore
		out[i].Metadata = cloneMap(s.Metadata)
		hc := s.hc
		out[i].HealthCheck = &hc
	}
	return out
}

// Health implements Ferry.
func (f *BoatFerry) Health(context.Context) (*FerryHealth, error) {
	now := f.clock.Now()
	cur := *f.shores.Load()
	h := &FerryHealth{Shores: make([]ShoreHealth, 0, len(cur)), QueueDepth: int(f.waiting.Load())}
	usable := 0
	for _, s := range cur {
		sh := f.shoreHealth(s, now)
		if sh.Breaker == string(BreakerOpen) {
			h.OpenBreakers++
		}
		if s.usable(now) {
			usable++
		}
		h.Shores = append(h.Shores, sh)
	}
	switch {
	case usable == 0:
		h.Status = HealthStatusUnhealthy
	case usable == len(cur):
		h.Status = HealthStatusHealthy
		for _, sh := range h.Shores {
			if sh.Status != HealthStatusHealthy {
				h.Status = HealthStatusDegraded
			}
		}
	default:
		h.Status = HealthStatusDegraded
	}
	return h, nil
}

// serveHealth answers GET /ferry/health: 200 unless no shore can take a
// request (503), so a load balancer in front can probe the ferry.
func (f *BoatFerry) serveHealth(w http.ResponseWriter, r *http.Request) {
	h, _ := f.Health(r.Context())
	code := http.StatusOK
	if h.Status == HealthStatusUnhealthy {
		code = http.StatusServiceUnavailable
	}
	writeJSON(w, code, h)
}
