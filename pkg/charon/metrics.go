package charon

import "github.com/prometheus/client_golang/prometheus"

// metrics are the ferry's Prometheus metrics, in a registry of its own.
// Labels stay low in cardinality: shore ids (as many as shores), a fixed
// set of outcomes and retry reasons; never paths, tenants or clients.
type metrics struct {
	reg             *prometheus.Registry
	requests        *prometheus.CounterVec // outcome
	attempts        *prometheus.CounterVec // shore, outcome
	duration        *prometheus.HistogramVec
	retries         *prometheus.CounterVec // reason
	budgetExhausted prometheus.Counter
	ejections       *prometheus.CounterVec // shore
	limiterErrors   prometheus.Counter

	byOutcome map[string]prometheus.Counter
}

// Request outcomes, as the client saw them.
var requestOutcomes = []string{"1xx", "2xx", "3xx", "4xx", "5xx", "rate_limited", "no_shore", "timeout", "bad_gateway", "canceled"}

type shoreMetrics struct {
	attempts  [numOutcomes]prometheus.Counter
	duration  prometheus.Observer
	ejections prometheus.Counter
}

func newMetrics(f *BoatFerry) *metrics {
	m := &metrics{
		reg: prometheus.NewRegistry(),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tartarus_ferry_requests_total", Help: "Requests answered by the ferry, by outcome (status class or the ferry's own refusal).",
		}, []string{"outcome"}),
		attempts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tartarus_ferry_shore_attempts_total", Help: "Attempts sent to each shore, by outcome.",
		}, []string{"shore", "outcome"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "tartarus_ferry_shore_response_seconds", Help: "Time from sending an attempt to the shore's answer headers.",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10},
		}, []string{"shore"}),
		retries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tartarus_ferry_retries_total", Help: "Retries, by the outcome of the attempt that was retried.",
		}, []string{"reason"}),
		budgetExhausted: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "tartarus_ferry_retry_budget_exhausted_total", Help: "Retries not made because the retry budget was spent.",
		}),
		ejections: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tartarus_ferry_shore_ejections_total", Help: "Passive outlier ejections of each shore.",
		}, []string{"shore"}),
		limiterErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "tartarus_ferry_rate_limiter_errors_total", Help: "Rate-limit decisions made locally because the shared store (Redis) failed.",
		}),
		byOutcome: map[string]prometheus.Counter{},
	}
	for _, o := range requestOutcomes {
		m.byOutcome[o] = m.requests.WithLabelValues(o)
	}
	for _, o := range outcomeNames {
		m.retries.WithLabelValues(o)
	}
	m.reg.MustRegister(m.requests, m.attempts, m.duration, m.retries, m.budgetExhausted, m.ejections, m.limiterErrors, stateCollector{f})
	return m
}

func (m *metrics) forShore(id string) shoreMetrics {
	var sm shoreMetrics
	for o := range numOutcomes {
		sm.attempts[o] = m.attempts.WithLabelValues(id, o.String())
	}
	sm.duration = m.duration.WithLabelValues(id)
	sm.ejections = m.ejections.WithLabelValues(id)
	return sm
}

func (m *metrics) dropShore(id string) {
	for o := range numOutcomes {
		m.attempts.DeleteLabelValues(id, o.String())
	}
	m.duration.DeleteLabelValues(id)
	m.ejections.DeleteLabelValues(id)
}

func statusClass(code int) string {
	switch {
	case code < 200:
		return "1xx"
	case code < 300:
		return "2xx"
	case code < 400:
		return "3xx"
	case code < 500:
		return "4xx"
	}
	return "5xx"
}

// stateCollector reports gauges read from the shores at scrape time, so the
// request path never updates a gauge.
type stateCollector struct{ f *BoatFerry }

var (
	descUp       = prometheus.NewDesc("tartarus_ferry_shore_up", "1 if the shore takes requests (health check passing, not ejected, breaker not open).", []string{"shore"}, nil)
	descChecked  = prometheus.NewDesc("tartarus_ferry_shore_health_check_passing", "1 if the shore's active health check passes.", []string{"shore"}, nil)
	descBreaker  = prometheus.NewDesc("tartarus_ferry_shore_breaker_state", "Circuit breaker state: 0 closed, 1 half-open, 2 open.", []string{"shore"}, nil)
	descActive   = prometheus.NewDesc("tartarus_ferry_shore_active_requests", "Attempts in flight at the shore, streams included.", []string{"shore"}, nil)
	descInflight = prometheus.NewDesc("tartarus_ferry_waiting_requests", "Crossings waiting for a shore's answer headers.", nil, nil)
)

func (c stateCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- descUp
	ch <- descChecked
	ch <- descBreaker
	ch <- descActive
	ch <- descInflight
}

func (c stateCollector) Collect(ch chan<- prometheus.Metric) {
	now := c.f.clock.Now()
	b01 := func(b bool) float64 {
		if b {
			return 1
		}
		return 0
	}
	for _, s := range *c.f.shores.Load() {
		var st float64
		switch s.breaker.State() {
		case BreakerHalfOpen:
			st = 1
		case BreakerOpen:
			st = 2
		}
		ch <- prometheus.MustNewConstMetric(descUp, prometheus.GaugeValue, b01(s.usable(now)), s.ID)
		ch <- prometheus.MustNewConstMetric(descChecked, prometheus.GaugeValue, b01(s.checked.Load()), s.ID)
		ch <- prometheus.MustNewConstMetric(descBreaker, prometheus.GaugeValue, st, s.ID)
		ch <- prometheus.MustNewConstMetric(descActive, prometheus.GaugeValue, float64(s.active.Load()), s.ID)
	}
	ch <- prometheus.MustNewConstMetric(descInflight, prometheus.GaugeValue, float64(c.f.waiting.Load()))
}

var _ prometheus.Collector = stateCollector{}
