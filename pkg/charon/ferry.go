// Package charon (the ferryman) is the reverse proxy in front of several
// Olympus replicas: it spreads requests over healthy replicas ("shores"),
// stops sending to sick ones, sheds tenants over their rate limit and retries
// what is safe to retry. `tartarus ferry` runs it.
//
// The Ferry interface and the Shore, HealthCheck, FerryHealth, ShoreHealth,
// FerryConfig and strategy types are the seed's. They are extended, never
// renamed:
//
//   - FerryConfig gains Zone (for zone_aware), HealthCheck (the default for
//     shores that bring none), Outlier (passive ejection), WhenAllUnhealthy,
//     and RateLimitConfig gains TrustTenantHeader; RetryConfig gains a retry
//     budget and an AttemptTimeout.
//   - BoatFerry is also an http.Handler: ServeHTTP is Cross for a live
//     client connection, streaming the answer back without buffering.
//
// Order of a crossing: request id, rate limit, then per attempt: choose a
// shore (health, ejection, breaker, priority, strategy), forward, record the
// outcome (breaker, outlier detector, metrics), and retry if allowed.
package charon

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"time"
)

// Ferry transports requests across the infrastructure.
type Ferry interface {
	// Cross ferries a request to the appropriate backend.
	Cross(ctx context.Context, req *http.Request) (*http.Response, error)
	// RegisterShore adds a backend destination.
	RegisterShore(shore *Shore) error
	// DeregisterShore removes a backend.
	DeregisterShore(shoreID string) error
	// Health returns ferry and shore health status.
	Health(ctx context.Context) (*FerryHealth, error)
}

// Shore is a backend destination (an Olympus replica).
type Shore struct {
	ID          string            `json:"id" yaml:"id"`
	Address     string            `json:"address" yaml:"address"`   // base URL: http://10.0.0.1:7700
	Weight      int               `json:"weight" yaml:"weight"`     // for the weighted strategy (and weighted least_conn/ip_hash); 0 means 1
	Zone        string            `json:"zone" yaml:"zone"`         // for zone_aware
	Priority    int               `json:"priority" yaml:"priority"` // failover tier: lower is preferred; a tier is used only when no better tier has a usable shore
	HealthCheck *HealthCheck      `json:"health_check,omitempty" yaml:"health_check"`
	Metadata    map[string]string `json:"metadata,omitempty" yaml:"metadata"`
}

// HealthCheck configures the active health check of a shore.
type HealthCheck struct {
	Path      string        `json:"path" yaml:"path"`           // GET path; 2xx is healthy. Default /healthz.
	Interval  time.Duration `json:"interval" yaml:"interval"`   // default 2s; a negative interval disables active checks
	Timeout   time.Duration `json:"timeout" yaml:"timeout"`     // default 1s
	Healthy   int           `json:"healthy" yaml:"healthy"`     // consecutive successes to mark healthy; default 2
	Unhealthy int           `json:"unhealthy" yaml:"unhealthy"` // consecutive failures to mark unhealthy; default 3
}

// UnmarshalJSON accepts durations as Go duration strings ("2s") or nanoseconds.
func (h *HealthCheck) UnmarshalJSON(b []byte) error {
	var raw struct {
		Path      string       `json:"path"`
		Interval  jsonDuration `json:"interval"`
		Timeout   jsonDuration `json:"timeout"`
		Healthy   int          `json:"healthy"`
		Unhealthy int          `json:"unhealthy"`
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&raw); err != nil {
		return err
	}
	*h = HealthCheck{Path: raw.Path, Interval: time.Duration(raw.Interval), Timeout: time.Duration(raw.Timeout), Healthy: raw.Healthy, Unhealthy: raw.Unhealthy}
	return nil
}

// HealthStatus is healthy, degraded or unhealthy.
type HealthStatus string

// The health statuses.
const (
	HealthStatusHealthy   HealthStatus = "healthy"
	HealthStatusDegraded  HealthStatus = "degraded"
	HealthStatusUnhealthy HealthStatus = "unhealthy"
)

// FerryHealth reports overall system health. Status is healthy when every
// shore is healthy, degraded when at least one shore can take requests,
// unhealthy when none can. QueueDepth is the number of crossings waiting for
// a shore's answer headers right now (the ferry has no queue of its own).
type FerryHealth struct {
	Status       HealthStatus  `json:"status"`
	Shores       []ShoreHealth `json:"shores"`
	OpenBreakers int           `json:"open_breakers"`
	QueueDepth   int           `json:"queue_depth"`
}

// ShoreHealth is one shore's health. Latency is a moving average of the time
// to answer headers; ErrorRate is the share of failed attempts (connect
// errors, timeouts, 5xx) over the last ten seconds.
type ShoreHealth struct {
	ShoreID     string        `json:"shore_id"`
	Status      HealthStatus  `json:"status"`
	Latency     time.Duration `json:"-"`
	ActiveConns int           `json:"active_conns"`
	ErrorRate   float64       `json:"error_rate"`

	// Added: why a shore is not healthy, in plain words.
	Address      string    `json:"address"`
	Checked      bool      `json:"checked"`       // active health check passing (true when checks are off)
	Breaker      string    `json:"breaker"`       // closed, open or half_open
	EjectedUntil time.Time `json:"ejected_until"` // zero when not ejected
}

// MarshalJSON adds latency_ms next to the other fields.
func (s ShoreHealth) MarshalJSON() ([]byte, error) {
	type plain ShoreHealth
	var ej *time.Time
	if !s.EjectedUntil.IsZero() {
		ej = &s.EjectedUntil
	}
	return json.Marshal(struct {
		plain
		LatencyMS    float64    `json:"latency_ms"`
		EjectedUntil *time.Time `json:"ejected_until,omitempty"`
	}{plain(s), float64(s.Latency) / float64(time.Millisecond), ej})
}

// LoadBalanceStrategy names how a shore is chosen.
type LoadBalanceStrategy string

// The strategies.
const (
	StrategyRoundRobin LoadBalanceStrategy = "round_robin"
	StrategyLeastConn  LoadBalanceStrategy = "least_conn"
	StrategyWeighted   LoadBalanceStrategy = "weighted"
	StrategyIPHash     LoadBalanceStrategy = "ip_hash"
	StrategyZoneAware  LoadBalanceStrategy = "zone_aware"
)

// AllUnhealthyPolicy says what the ferry does when no shore passes its
// health checks and outlier detection.
type AllUnhealthyPolicy string

// The policies.
const (
	// AllUnhealthyTryAll ("panic routing") spreads requests over every shore
	// whose breaker admits them, ignoring health checks and ejections. Health
	// checks can all fail at once for a reason that does not stop every
	// request (a shared dependency behind /healthz); a 503 from the ferry is
	// a certain failure while a try is a chance, and breakers still bound
	// the load on shores that really are down. The default.
	AllUnhealthyTryAll AllUnhealthyPolicy = "try_all"
	// AllUnhealthyReject answers 503 with Retry-After at once.
	AllUnhealthyReject AllUnhealthyPolicy = "reject"
)

// FerryConfig configures the ferry behavior.
type FerryConfig struct {
	Strategy        LoadBalanceStrategy  `yaml:"strategy"`
	CircuitBreaker  CircuitBreakerConfig `yaml:"circuit_breaker"`
	RateLimiting    RateLimitConfig      `yaml:"rate_limiting"`
	Retry           RetryConfig          `yaml:"retry"`
	CrossingTimeout time.Duration        `yaml:"crossing_timeout"` // deadline for a shore's answer headers over all attempts; 0 means none. Streams after the headers are not cut.

	// Added.
	Zone             string             `yaml:"zone"`               // the ferry's own zone, for zone_aware
	HealthCheck      HealthCheck        `yaml:"health_check"`       // default for shores without their own
	Outlier          OutlierConfig      `yaml:"outlier"`            // passive ejection
	WhenAllUnhealthy AllUnhealthyPolicy `yaml:"when_all_unhealthy"` // default try_all
}

// CircuitBreakerConfig configures the per-shore breaker.
type CircuitBreakerConfig struct {
	Enabled          bool          `yaml:"enabled"`
	Threshold        int           `yaml:"threshold"`          // consecutive failures before opening; default 5
	Timeout          time.Duration `yaml:"timeout"`            // time open before half-open; default 10s
	HalfOpenRequests int           `yaml:"half_open_requests"` // trial requests in half-open; all must succeed to close; default 3
}

// RateLimitConfig configures the token buckets.
type RateLimitConfig struct {
	Enabled           bool   `yaml:"enabled"`
	RequestsPerSecond int    `yaml:"requests_per_second"`
	Burst             int    `yaml:"burst"`
	KeyFunc           string `yaml:"key"` // "tenant", "ip", "identity"; default tenant

	// Added: take the tenant from X-Tartarus-Tenant. Only for a ferry behind
	// a trusted upstream that sets (and strips from clients) that header.
	TrustTenantHeader bool `yaml:"trust_tenant_header"`
}

// RetryConfig configures retries.
type RetryConfig struct {
	MaxRetries   int           `yaml:"max_retries"`   // default 2; -1 disables
	InitialDelay time.Duration `yaml:"initial_delay"` // default 10ms
	MaxDelay     time.Duration `yaml:"max_delay"`     // default 250ms
	RetryOn      []int         `yaml:"retry_on"`      // statuses that are retried; default 502, 503, 504

	// Added: the budget. Retries in the last BudgetWindow may not exceed
	// BudgetRatio of the requests in it plus MinRetriesPerSecond, so an
	// outage is not multiplied by the retry factor.
	BudgetRatio         float64       `yaml:"budget_ratio"`           // default 0.2
	BudgetWindow        time.Duration `yaml:"budget_window"`          // default 10s
	MinRetriesPerSecond int           `yaml:"min_retries_per_second"` // default 3
	// AttemptTimeout bounds the wait for one shore's answer headers; the
	// next attempt goes elsewhere. 0 means only CrossingTimeout applies.
	AttemptTimeout time.Duration `yaml:"attempt_timeout"`
}

// OutlierConfig configures passive outlier detection: a shore whose answers
// fail Consecutive times in a row (connect errors, timeouts, 502/503/504) is
// ejected for BaseEjection × 2^(n-1), capped at MaxEjection, where n counts
// its ejections; n falls back to zero once it has gone MaxEjection without one.
type OutlierConfig struct {
	Consecutive  int           `yaml:"consecutive"`   // default 5; -1 disables
	BaseEjection time.Duration `yaml:"base_ejection"` // default 5s
	MaxEjection  time.Duration `yaml:"max_ejection"`  // default 2m
}

type jsonDuration time.Duration

func (d *jsonDuration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err == nil {
		v, err := time.ParseDuration(s)
		if err != nil {
			return err
		}
		*d = jsonDuration(v)
		return nil
	}
	var n int64
	if err := json.Unmarshal(b, &n); err != nil {
		return err
	}
	*d = jsonDuration(n)
	return nil
}
