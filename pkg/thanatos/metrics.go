package thanatos

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

// Collector holds the termination metrics; it is a prometheus.Collector.
type Collector struct {
	terminations *prometheus.CounterVec
	duration     *prometheus.HistogramVec
	phases       *prometheus.HistogramVec
	hookFailures *prometheus.CounterVec
	callbacks    *prometheus.CounterVec
	pending      prometheus.Gauge
}

var _ prometheus.Collector = (*Collector)(nil)

func newCollector() *Collector {
	buckets := []float64{0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300}
	return &Collector{
		terminations: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tartarus_terminations_total",
			Help: "Terminations that reached a final phase, by reason and outcome (completed or failed).",
		}, []string{"reason", "outcome"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "tartarus_termination_duration_seconds",
			Help:    "Time from a termination's initiation to its final phase, by reason.",
			Buckets: buckets,
		}, []string{"reason"}),
		phases: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "tartarus_termination_phase_duration_seconds",
			Help:    "Time spent in each termination phase, by reason and phase.",
			Buckets: buckets,
		}, []string{"reason", "phase"}),
		hookFailures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tartarus_termination_hook_failures_total",
			Help: "Hooks and webhooks that failed or were cut at their budget.",
		}, []string{"kind", "hook"}),
		callbacks: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tartarus_termination_callbacks_total",
			Help: "Termination callbacks by result (delivered, failed after every attempt, dropped).",
		}, []string{"result"}),
		pending: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "tartarus_terminations_running",
			Help: "Terminations this manager is driving now.",
		}),
	}
}

func (c *Collector) all() []prometheus.Collector {
	return []prometheus.Collector{c.terminations, c.duration, c.phases, c.hookFailures, c.callbacks, c.pending}
}

// Describe implements prometheus.Collector.
func (c *Collector) Describe(ch chan<- *prometheus.Desc) {
	for _, m := range c.all() {
		m.Describe(ch)
	}
}

// Collect implements prometheus.Collector.
func (c *Collector) Collect(ch chan<- prometheus.Metric) {
	for _, m := range c.all() {
		m.Collect(ch)
	}
}

func (c *Collector) phase(reason tartarus.TerminationReason, phase tartarus.TerminationPhase, d time.Duration) {
	c.phases.WithLabelValues(string(reason), string(phase)).Observe(d.Seconds())
}

func (c *Collector) final(st *tartarus.TerminationStatus) {
	c.terminations.WithLabelValues(string(st.Reason), string(st.Phase)).Inc()
	c.duration.WithLabelValues(string(st.Reason)).Observe(st.FinishedAt.Sub(st.InitiatedAt).Seconds())
}
