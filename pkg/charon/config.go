package charon

import (
	"errors"
	"fmt"
	"net/url"
	"os"
	"slices"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

// FileConfig is what `tartarus ferry --config FILE` reads (YAML). Flags
// given on the command line override it.
type FileConfig struct {
	Listen      string      `yaml:"listen"`
	AdminListen string      `yaml:"admin_listen"`
	AdminToken  string      `yaml:"admin_token"`
	Redis       string      `yaml:"redis"`
	Shores      []Shore     `yaml:"shores"`
	Ferry       FerryConfig `yaml:",inline"`
}

// LoadFileConfig reads and validates a YAML config file. Unknown keys are
// errors, so a misspelt setting is not silently ignored.
func LoadFileConfig(path string) (*FileConfig, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("read ferry config: %w", err)
	}
	defer f.Close()
	dec := yaml.NewDecoder(f)
	dec.KnownFields(true)
	var fc FileConfig
	if err := dec.Decode(&fc); err != nil {
		return nil, tartarus.Errorf(tartarus.ErrInvalid, "parse ferry config %s: %v", path, err)
	}
	if err := fc.Ferry.Validate(); err != nil {
		return nil, fmt.Errorf("ferry config %s: %w", path, err)
	}
	return &fc, nil
}

// Defaults returns c with every unset field given its documented default.
func (c FerryConfig) Defaults() FerryConfig {
	if c.Strategy == "" {
		c.Strategy = StrategyRoundRobin
	}
	if c.WhenAllUnhealthy == "" {
		c.WhenAllUnhealthy = AllUnhealthyTryAll
	}
	c.HealthCheck = c.HealthCheck.defaults()
	cb := &c.CircuitBreaker
	if cb.Threshold == 0 {
		cb.Threshold = 5
	}
	if cb.Timeout == 0 {
		cb.Timeout = 10 * time.Second
	}
	if cb.HalfOpenRequests == 0 {
		cb.HalfOpenRequests = 3
	}
	rl := &c.RateLimiting
	if rl.KeyFunc == "" {
		rl.KeyFunc = "tenant"
	}
	if rl.Burst == 0 {
		rl.Burst = rl.RequestsPerSecond
	}
	r := &c.Retry
	if r.MaxRetries == 0 {
		r.MaxRetries = 2
	}
	if r.InitialDelay == 0 {
		r.InitialDelay = 10 * time.Millisecond
	}
	if r.MaxDelay == 0 {
		r.MaxDelay = 250 * time.Millisecond
	}
	if r.RetryOn == nil {
		r.RetryOn = []int{502, 503, 504}
	}
	if r.BudgetRatio == 0 {
		r.BudgetRatio = 0.2
	}
	if r.BudgetWindow == 0 {
		r.BudgetWindow = 10 * time.Second
	}
	if r.MinRetriesPerSecond == 0 {
		r.MinRetriesPerSecond = 3
	}
	o := &c.Outlier
	if o.Consecutive == 0 {
		o.Consecutive = 5
	}
	if o.BaseEjection == 0 {
		o.BaseEjection = 5 * time.Second
	}
	if o.MaxEjection == 0 {
		o.MaxEjection = 2 * time.Minute
	}
	return c
}

func (h HealthCheck) defaults() HealthCheck {
	if h.Path == "" {
		h.Path = "/healthz"
	}
	if h.Interval == 0 {
		h.Interval = 2 * time.Second
	}
	if h.Timeout == 0 {
		h.Timeout = time.Second
	}
	if h.Healthy == 0 {
		h.Healthy = 2
	}
	if h.Unhealthy == 0 {
		h.Unhealthy = 3
	}
	return h
}

// Validate reports every problem in c at once.
func (c FerryConfig) Validate() error {
	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	switch c.Strategy {
	case "", StrategyRoundRobin, StrategyLeastConn, StrategyWeighted, StrategyIPHash, StrategyZoneAware:
	default:
		bad("strategy %q: want round_robin, least_conn, weighted, ip_hash or zone_aware", c.Strategy)
	}
	switch c.WhenAllUnhealthy {
	case "", AllUnhealthyTryAll, AllUnhealthyReject:
	default:
		bad("when_all_unhealthy %q: want try_all or reject", c.WhenAllUnhealthy)
	}
	if c.CrossingTimeout < 0 {
		bad("crossing_timeout %v: must not be negative", c.CrossingTimeout)
	}
	if err := c.HealthCheck.validate(); err != nil {
		errs = append(errs, err)
	}
	cb := c.CircuitBreaker
	if cb.Threshold < 0 || cb.Timeout < 0 || cb.HalfOpenRequests < 0 {
		bad("circuit_breaker: threshold, timeout and half_open_requests must not be negative")
	}
	rl := c.RateLimiting
	if rl.Enabled && rl.RequestsPerSecond <= 0 {
		bad("rate_limiting: requests_per_second must be positive when enabled")
	}
	if rl.Burst < 0 {
		bad("rate_limiting: burst must not be negative")
	}
	switch rl.KeyFunc {
	case "", "tenant", "ip", "identity":
	default:
		bad("rate_limiting.key %q: want tenant, ip or identity", rl.KeyFunc)
	}
	r := c.Retry
	if r.MaxRetries < -1 || r.MaxRetries > 10 {
		bad("retry.max_retries %d: want -1 (off) to 10", r.MaxRetries)
	}
	if r.InitialDelay < 0 || r.MaxDelay < 0 || r.BudgetWindow < 0 || r.AttemptTimeout < 0 {
		bad("retry: delays, budget_window and attempt_timeout must not be negative")
	}
	if r.BudgetRatio < 0 || r.BudgetRatio > 1 {
		bad("retry.budget_ratio %v: want 0 to 1", r.BudgetRatio)
	}
	for _, s := range r.RetryOn {
		if s < 500 || s > 599 {
			bad("retry.retry_on %d: only 5xx statuses can be retried", s)
		}
	}
	o := c.Outlier
	if o.Consecutive < -1 || o.BaseEjection < 0 || o.MaxEjection < 0 {
		bad("outlier: consecutive must be -1 (off) or more, ejection times not negative")
	}
	if err := errors.Join(errs...); err != nil {
		return tartarus.Errorf(tartarus.ErrInvalid, "%v", err)
	}
	return nil
}

func (h HealthCheck) validate() error {
	var errs []error
	if h.Path != "" && !strings.HasPrefix(h.Path, "/") {
		errs = append(errs, fmt.Errorf("health_check.path %q: must start with /", h.Path))
	}
	if h.Timeout < 0 || h.Healthy < 0 || h.Unhealthy < 0 {
		errs = append(errs, errors.New("health_check: timeout, healthy and unhealthy must not be negative"))
	}
	if h.Interval > 0 && h.Interval < 10*time.Millisecond {
		errs = append(errs, fmt.Errorf("health_check.interval %v: at least 10ms", h.Interval))
	}
	return errors.Join(errs...)
}

// validateShore reports every problem with s, as an ErrInvalid error.
func validateShore(s *Shore) (*url.URL, error) {
	if s == nil {
		return nil, tartarus.Errorf(tartarus.ErrInvalid, "shore: missing")
	}
	var errs []error
	if s.ID == "" {
		errs = append(errs, errors.New("id: required"))
	} else if len(s.ID) > 64 || strings.IndexFunc(s.ID, func(r rune) bool {
		return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("-_.:", r))
	}) >= 0 {
		errs = append(errs, fmt.Errorf("id %q: want up to 64 characters of A-Z a-z 0-9 and - _ . : (colon)", s.ID))
	}
	var u *url.URL
	if s.Address == "" {
		errs = append(errs, errors.New("address: required (a base URL such as http://127.0.0.1:7700)"))
	} else {
		var err error
		u, err = url.Parse(s.Address)
		switch {
		case err != nil:
			errs = append(errs, fmt.Errorf("address %q: %v", s.Address, err))
		case u.Scheme != "http" && u.Scheme != "https":
			errs = append(errs, fmt.Errorf("address %q: scheme must be http or https", s.Address))
		case u.Host == "" || u.Hostname() == "":
			errs = append(errs, fmt.Errorf("address %q: host required", s.Address))
		case u.Path != "" && u.Path != "/" || u.RawQuery != "" || u.Fragment != "" || u.User != nil:
			errs = append(errs, fmt.Errorf("address %q: only scheme://host:port, no path, query or user", s.Address))
		}
	}
	if s.Weight < 0 || s.Weight > 1000 {
		errs = append(errs, fmt.Errorf("weight %d: want 0 to 1000", s.Weight))
	}
	if s.Priority < 0 || s.Priority > 100 {
		errs = append(errs, fmt.Errorf("priority %d: want 0 to 100", s.Priority))
	}
	if s.HealthCheck != nil {
		if err := s.HealthCheck.validate(); err != nil {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return nil, tartarus.Errorf(tartarus.ErrInvalid, "shore %q: %v", s.ID, strings.ReplaceAll(err.Error(), "\n", "; "))
	}
	return u, nil
}

// ParseShoreFlag parses the --shore flag: a base URL optionally followed by
// comma-separated key=value settings, e.g.
// "http://10.0.0.1:7700,id=olympus-1,weight=3,zone=eu-1,priority=0".
// The id defaults to host:port.
func ParseShoreFlag(v string) (*Shore, error) {
	parts := strings.Split(v, ",")
	s := &Shore{Address: strings.TrimSuffix(parts[0], "/")}
	if u, err := url.Parse(s.Address); err == nil {
		s.ID = u.Host
	}
	for _, kv := range parts[1:] {
		k, val, ok := strings.Cut(kv, "=")
		if !ok {
			return nil, tartarus.Errorf(tartarus.ErrInvalid, "--shore %q: %q is not key=value", v, kv)
		}
		var err error
		switch k {
		case "id":
			s.ID = val
		case "zone":
			s.Zone = val
		case "weight":
			_, err = fmt.Sscan(val, &s.Weight)
		case "priority":
			_, err = fmt.Sscan(val, &s.Priority)
		default:
			return nil, tartarus.Errorf(tartarus.ErrInvalid, "--shore %q: unknown key %q (want id, zone, weight, priority)", v, k)
		}
		if err != nil {
			return nil, tartarus.Errorf(tartarus.ErrInvalid, "--shore %q: %s=%q is not a number", v, k, val)
		}
	}
	if _, err := validateShore(s); err != nil {
		return nil, err
	}
	return s, nil
}

func (c *RetryConfig) retriesStatus(code int) bool { return slices.Contains(c.RetryOn, code) }
