package cerberus

import (
	"errors"
	"slices"

	"github.com/prometheus/client_golang/prometheus"
)

// Metrics are Cerberus's Prometheus counters. Every label comes from a small
// fixed set (results, actions, resource types, failure reasons), never from
// ids or tenants, so the series count stays bounded.
type Metrics struct {
	requests      *prometheus.CounterVec
	authFailures  *prometheus.CounterVec
	auditErrors   prometheus.Counter
	policyReloads *prometheus.CounterVec
	suppressed    prometheus.Counter
}

// NewMetrics registers the counters with reg (nil: not registered, for tests).
func NewMetrics(reg prometheus.Registerer) (*Metrics, error) {
	m := &Metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tartarus_auth_requests_total",
			Help: "API requests seen by the auth gateway, by audit result, action and resource type.",
		}, []string{"result", "action", "resource_type"}),
		authFailures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tartarus_auth_failures_total",
			Help: "Requests whose authentication failed, by reason.",
		}, []string{"reason"}),
		auditErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "tartarus_audit_write_errors_total",
			Help: "Audit entries that could not be written.",
		}),
		suppressed: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "tartarus_audit_failures_suppressed_total",
			Help: "Failed authentications counted but not written to the audit log (over the per-source or global limit).",
		}),
		policyReloads: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tartarus_auth_policy_reloads_total",
			Help: "Policy file reloads, by result (ok, rejected).",
		}, []string{"result"}),
	}
	if reg != nil {
		for _, c := range []prometheus.Collector{m.requests, m.authFailures, m.auditErrors, m.policyReloads, m.suppressed} {
			if err := reg.Register(c); err != nil {
				var are prometheus.AlreadyRegisteredError
				if !errors.As(err, &are) {
					return nil, err
				}
			}
		}
	}
	return m, nil
}

var knownResourceTypes = []ResourceType{
	ResourceTypeSandbox, ResourceTypeTemplate, ResourceTypeSnapshot, ResourceTypePolicy,
	ResourceTypeNode, ResourceTypeAPIKey, ResourceTypeAudit,
}

func (m *Metrics) request(result AuditResult, action Action, rt ResourceType) {
	if m == nil {
		return
	}
	a := string(action)
	if a != "" && !slices.Contains(knownActions, action) {
		a = "other"
	}
	t := string(rt)
	if t != "" && !slices.Contains(knownResourceTypes, rt) {
		t = "other"
	}
	m.requests.WithLabelValues(string(result), a, t).Inc()
}

func (m *Metrics) authFailure(reason string) {
	if m != nil {
		m.authFailures.WithLabelValues(reason).Inc()
	}
}

func (m *Metrics) auditError() {
	if m != nil {
		m.auditErrors.Inc()
	}
}

func (m *Metrics) failureSuppressed() {
	if m != nil {
		m.suppressed.Inc()
	}
}

func (m *Metrics) policyReload(ok bool) {
	if m == nil {
		return
	}
	if ok {
		m.policyReloads.WithLabelValues("ok").Inc()
	} else {
		m.policyReloads.WithLabelValues("rejected").Inc()
	}
}

// Describe implements prometheus.Collector, so a server with its own
// registry can register Metrics as one collector.
func (m *Metrics) Describe(ch chan<- *prometheus.Desc) {
	m.requests.Describe(ch)
	m.authFailures.Describe(ch)
	m.auditErrors.Describe(ch)
	m.policyReloads.Describe(ch)
	m.suppressed.Describe(ch)
}

// Collect implements prometheus.Collector.
func (m *Metrics) Collect(ch chan<- prometheus.Metric) {
	m.requests.Collect(ch)
	m.authFailures.Collect(ch)
	m.auditErrors.Collect(ch)
	m.policyReloads.Collect(ch)
	m.suppressed.Collect(ch)
}

var _ prometheus.Collector = (*Metrics)(nil)
