package olympus

import (
	"context"
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

// metrics are the API's Prometheus series. Labels stay low-cardinality:
// route patterns (never raw paths), status codes, states, runtime names.
type metrics struct {
	requests *prometheus.CounterVec
	latency  *prometheus.HistogramVec
	exec     *prometheus.HistogramVec
}

func newMetrics(reg *prometheus.Registry, be Backend, log *slog.Logger) *metrics {
	m := &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tartarus_http_requests_total", Help: "API requests by route pattern and status code.",
		}, []string{"route", "status"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "tartarus_http_request_duration_seconds", Help: "API request latency by route pattern.",
			Buckets: prometheus.ExponentialBuckets(0.001, 4, 10),
		}, []string{"route"}),
		exec: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "tartarus_exec_duration_seconds", Help: "Duration of commands run in sandboxes, by runtime.",
			Buckets: prometheus.ExponentialBuckets(0.001, 4, 10),
		}, []string{"runtime"}),
	}
	reg.MustRegister(m.requests, m.latency, m.exec, &stateCollector{be: be, log: log})
	return m
}

var sandboxesDesc = prometheus.NewDesc("tartarus_sandboxes", "Sandboxes by state.", []string{"state"}, nil)

// stateCollector reads the sandbox counts from the store at scrape time.
type stateCollector struct {
	be  Backend
	log *slog.Logger
}

func (c *stateCollector) Describe(ch chan<- *prometheus.Desc) { ch <- sandboxesDesc }

func (c *stateCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	counts, err := c.be.Counts(ctx)
	if err != nil {
		c.log.Error("count sandboxes for metrics", "err", err)
		return
	}
	for _, st := range tartarus.States {
		ch <- prometheus.MustNewConstMetric(sandboxesDesc, prometheus.GaugeValue, float64(counts[st]), string(st))
	}
}
