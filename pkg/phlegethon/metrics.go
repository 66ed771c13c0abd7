package phlegethon

import (
	"github.com/prometheus/client_golang/prometheus"
)

// Collector exports the heat metrics to Prometheus; it is a
// prometheus.Collector (Router.Collector returns it).
type Collector struct {
	snapshot        func() *HeatMetrics
	sandboxes       *prometheus.Desc
	depth           *prometheus.Desc
	waits           *prometheus.HistogramVec
	outcomes        *prometheus.CounterVec
	classifications *prometheus.CounterVec
}

var _ prometheus.Collector = (*Collector)(nil)

func newCollector(snapshot func() *HeatMetrics) *Collector {
	return &Collector{
		snapshot:  snapshot,
		sandboxes: prometheus.NewDesc("tartarus_heat_sandboxes", "Sandboxes running now, by heat.", []string{"heat"}, nil),
		depth:     prometheus.NewDesc("tartarus_heat_queue_depth", "Creates waiting for room now, by heat.", []string{"heat"}, nil),
		waits: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "tartarus_heat_queue_wait_seconds",
			Help:    "Time admitted creates waited in their heat's queue.",
			Buckets: []float64{0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900, 3600},
		}, []string{"heat"}),
		outcomes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tartarus_heat_queue_outcomes_total",
			Help: "Creates that left a heat queue, by heat and status (admitted, timed_out, failed, cancelled).",
		}, []string{"heat", "status"}),
		classifications: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tartarus_heat_classifications_total",
			Help: "Creates classified, by heat and the rule that chose it.",
		}, []string{"heat", "rule"}),
	}
}

// Describe implements prometheus.Collector.
func (c *Collector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.sandboxes
	ch <- c.depth
	c.waits.Describe(ch)
	c.outcomes.Describe(ch)
	c.classifications.Describe(ch)
}

// Collect implements prometheus.Collector.
func (c *Collector) Collect(ch chan<- prometheus.Metric) {
	m := c.snapshot()
	for _, h := range Levels {
		ch <- prometheus.MustNewConstMetric(c.sandboxes, prometheus.GaugeValue, float64(m.ByHeat[h]), string(h))
		ch <- prometheus.MustNewConstMetric(c.depth, prometheus.GaugeValue, float64(m.QueueDepthByHeat[h]), string(h))
	}
	c.waits.Collect(ch)
	c.outcomes.Collect(ch)
	c.classifications.Collect(ch)
}

func (c *Collector) queued(h HeatLevel, o Outcome) {
	c.outcomes.WithLabelValues(string(h), string(o.Status)).Inc()
	if o.Status == StatusAdmitted {
		c.waits.WithLabelValues(string(h)).Observe(o.Wait.Seconds())
	}
}

func (c *Collector) classified(e Explanation) {
	c.classifications.WithLabelValues(string(e.Heat), string(e.Rule)).Inc()
}
