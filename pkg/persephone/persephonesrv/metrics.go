package persephonesrv

import (
	"strings"

	"github.com/prometheus/client_golang/prometheus"
)

// CreateCounter is the node agent's count of creates by template and how
// each was served (hecatoncheir.Agent.CreateCounts), with its pools.
type CreateCounter interface {
	CreateCounts() map[string]map[string]int
	TemplatePoolSizes() map[string]int
	PoolTargets() map[string]int
}

var (
	createsDesc = prometheus.NewDesc("tartarus_creates_total",
		"Sandbox creates on this node by template and how they were served: warm_pool (no cold start), restored, booted, failed.",
		[]string{"template", "how"}, nil)
	poolReadyDesc = prometheus.NewDesc("tartarus_warm_pool_ready",
		"Ready sandboxes in the warm pools of a template on this node.", []string{"template"}, nil)
	poolTargetDesc = prometheus.NewDesc("tartarus_warm_pool_target",
		"Warm-pool target of a template on this node, set by the forecast (absent while the pool has a fixed size).", []string{"template"}, nil)
)

// Collector reports the agent's creates and warm pools on /metrics: a cold
// create is any create not served from the warm pool.
type Collector struct{ Agent CreateCounter }

// Describe implements prometheus.Collector.
func (c Collector) Describe(ch chan<- *prometheus.Desc) {
	ch <- createsDesc
	ch <- poolReadyDesc
	ch <- poolTargetDesc
}

// Collect implements prometheus.Collector.
func (c Collector) Collect(ch chan<- prometheus.Metric) {
	for tpl, m := range c.Agent.CreateCounts() {
		for how, n := range m {
			ch <- prometheus.MustNewConstMetric(createsDesc, prometheus.CounterValue, float64(n), tpl, strings.ReplaceAll(how, " ", "_"))
		}
	}
	for tpl, n := range c.Agent.TemplatePoolSizes() {
		ch <- prometheus.MustNewConstMetric(poolReadyDesc, prometheus.GaugeValue, float64(n), tpl)
	}
	for tpl, n := range c.Agent.PoolTargets() {
		ch <- prometheus.MustNewConstMetric(poolTargetDesc, prometheus.GaugeValue, float64(n), tpl)
	}
}
