package charon

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"
)

func TestStrategyDistribution(t *testing.T) {
	tests := []struct {
		name     string
		strategy LoadBalanceStrategy
		zone     string
		shores   []Shore // Address filled in from the backends
		requests int
		want     map[string]int // exact hits
	}{
		{"round robin spreads evenly", StrategyRoundRobin, "",
			[]Shore{{ID: "a"}, {ID: "b"}, {ID: "c"}}, 300, map[string]int{"a": 100, "b": 100, "c": 100}},
		{"weighted follows weights", StrategyWeighted, "",
			[]Shore{{ID: "a", Weight: 1}, {ID: "b", Weight: 2}, {ID: "c", Weight: 3}}, 600, map[string]int{"a": 100, "b": 200, "c": 300}},
		{"zone aware keeps to the ferry's zone", StrategyZoneAware, "eu",
			[]Shore{{ID: "a", Zone: "eu"}, {ID: "b", Zone: "us"}, {ID: "c", Zone: "eu"}}, 200, map[string]int{"a": 100, "b": 0, "c": 100}},
		{"priority tier 0 takes everything while it is up", StrategyRoundRobin, "",
			[]Shore{{ID: "a", Priority: 1}, {ID: "b"}, {ID: "c"}}, 200, map[string]int{"a": 0, "b": 100, "c": 100}},
		{"least_conn with idle shores shares sequential requests", StrategyLeastConn, "",
			[]Shore{{ID: "a"}, {ID: "b"}}, 200, map[string]int{"a": 100, "b": 100}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := quietConfig()
			cfg.Strategy, cfg.Zone = tt.strategy, tt.zone
			backends := map[string]*backend{}
			var shores []*Shore
			for _, s := range tt.shores {
				b := newBackend(t, s.ID, nil)
				backends[s.ID] = b
				s.Address = b.url()
				shores = append(shores, &s)
			}
			_, srv := newTestFerry(t, Options{Config: cfg}, shores...)
			c := testClient()
			for range tt.requests {
				if code, body, _ := do(t, c, "GET", srv.URL+"/v1/templates", nil); code != 200 {
					t.Fatalf("status %d: %s", code, body)
				}
			}
			for id, want := range tt.want {
				if got := backends[id].hits.Load(); int(got) != want {
					t.Errorf("shore %s: %d requests, want %d", id, got, want)
				}
			}
		})
	}
}

func TestLeastConnAvoidsBusyShore(t *testing.T) {
	slow := newBackend(t, "slow", func(w http.ResponseWriter, r *http.Request) {
		time.Sleep(30 * time.Millisecond)
	})
	fast := newBackend(t, "fast", nil)
	cfg := quietConfig()
	cfg.Strategy = StrategyLeastConn
	_, srv := newTestFerry(t, Options{Config: cfg}, slow.shore(), fast.shore())
	c := testClient()
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for range 25 {
				resp, err := c.Get(srv.URL + "/x")
				if err == nil {
					io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
				}
			}
		})
	}
	wg.Wait()
	s, f := slow.hits.Load(), fast.hits.Load()
	if s+f != 200 || f < 3*s {
		t.Fatalf("slow %d, fast %d: want the fast shore to take far more (least in-flight)", s, f)
	}
}

func TestIPHashIsStickyAndSpread(t *testing.T) {
	cfg := quietConfig()
	cfg.Strategy = StrategyIPHash
	var shores []*Shore
	for _, id := range []string{"a", "b", "c"} {
		shores = append(shores, newBackend(t, id, nil).shore())
	}
	f, _ := newTestFerry(t, Options{Config: cfg}, shores...)
	count := map[string]int{}
	for i := range 300 {
		ip := fmt.Sprintf("10.%d.%d.7:5555", i/250, i%250)
		first := ""
		for range 3 {
			req, _ := http.NewRequest("GET", "http://ferry/v1/templates", nil)
			req.RemoteAddr = ip
			resp, err := f.Cross(context.Background(), req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			got := resp.Header.Get("X-Shore")
			if first == "" {
				first = got
				count[got]++
			} else if got != first {
				t.Fatalf("client %s went to %s then %s", ip, first, got)
			}
		}
	}
	for id, n := range count {
		if n < 60 || n > 140 {
			t.Errorf("shore %s has %d of 300 clients, want roughly a third", id, n)
		}
	}
	// Removing a shore moves only its own clients.
	if err := f.DeregisterShore("c"); err != nil {
		t.Fatal(err)
	}
	for i := range 300 {
		req, _ := http.NewRequest("GET", "http://ferry/", nil)
		req.RemoteAddr = fmt.Sprintf("10.%d.%d.7:5555", i/250, i%250)
		resp, err := f.Cross(context.Background(), req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.Header.Get("X-Shore") == "c" {
			t.Fatal("request went to a deregistered shore")
		}
	}
}

// load runs GET workers against url until stop is closed and counts
// requests and failures (anything but 200).
type load struct {
	ok, failed atomic.Int64
	mu         sync.Mutex
	firstErr   string
	wg         sync.WaitGroup
	stop       chan struct{}
	once       sync.Once
}

func startLoad(c *http.Client, url string, workers int, methods ...string) *load {
	l := &load{stop: make(chan struct{})}
	if len(methods) == 0 {
		methods = []string{"GET"}
	}
	for w := range workers {
		l.wg.Go(func() {
			for i := 0; ; i++ {
				select {
				case <-l.stop:
					return
				default:
				}
				m := methods[(w+i)%len(methods)]
				var body io.Reader
				if m == "PUT" {
					body = strings.NewReader("some bytes")
				}
				req, _ := http.NewRequest(m, url, body)
				resp, err := c.Do(req)
				if err == nil {
					io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
				}
				if err != nil || resp.StatusCode != 200 {
					l.failed.Add(1)
					l.mu.Lock()
					if l.firstErr == "" {
						if err != nil {
							l.firstErr = m + ": " + err.Error()
						} else {
							l.firstErr = fmt.Sprintf("%s: status %d", m, resp.StatusCode)
						}
					}
					l.mu.Unlock()
				} else {
					l.ok.Add(1)
				}
			}
		})
	}
	return l
}

func (l *load) finish() { l.once.Do(func() { close(l.stop) }); l.wg.Wait() }

func shoreStatus(t *testing.T, f *BoatFerry, id string) ShoreHealth {
	t.Helper()
	h, _ := f.Health(context.Background())
	for _, s := range h.Shores {
		if s.ShoreID == id {
			return s
		}
	}
	t.Fatalf("shore %s not in health", id)
	return ShoreHealth{}
}

func TestShoreKilledUnderLoadIsEjectedAndReadmitted(t *testing.T) {
	a, b, c := newBackend(t, "a", nil), newBackend(t, "b", nil), newBackend(t, "c", nil)
	cfg := FerryConfig{
		HealthCheck:    HealthCheck{Interval: 50 * time.Millisecond, Timeout: 200 * time.Millisecond, Healthy: 2, Unhealthy: 2},
		Outlier:        OutlierConfig{Consecutive: 2, BaseEjection: 300 * time.Millisecond, MaxEjection: 2 * time.Second},
		CircuitBreaker: CircuitBreakerConfig{Enabled: true, Threshold: 5, Timeout: 300 * time.Millisecond, HalfOpenRequests: 2},
		Retry:          RetryConfig{MaxRetries: 2, InitialDelay: time.Millisecond, MaxDelay: 5 * time.Millisecond},
	}
	f, srv := newTestFerry(t, Options{Config: cfg}, a.shore(), b.shore(), c.shore())
	l := startLoad(testClient(), srv.URL+"/v1/sandboxes", 4)
	defer l.finish()

	waitFor(t, 5*time.Second, "traffic on b", func() bool { return b.hits.Load() > 20 })
	b.kill()
	waitFor(t, 5*time.Second, "b marked unhealthy", func() bool { return shoreStatus(t, f, "b").Status == HealthStatusUnhealthy })
	stuck := b.hits.Load()
	before := a.hits.Load() + c.hits.Load()
	waitFor(t, 5*time.Second, "traffic to go on through a and c", func() bool { return a.hits.Load()+c.hits.Load() > before+100 })
	if b.hits.Load() != stuck {
		t.Fatal("a dead shore got requests")
	}

	b.start() // same port
	waitFor(t, 10*time.Second, "b readmitted and taking traffic", func() bool { return b.hits.Load() > stuck+20 })
	if s := shoreStatus(t, f, "b"); s.Status == HealthStatusUnhealthy {
		t.Fatalf("b takes traffic but reports %+v", s)
	}
	l.finish()
	if n := l.failed.Load(); n != 0 {
		t.Fatalf("%d of %d requests failed while two shores were healthy; first: %s", n, n+l.ok.Load(), l.firstErr)
	}
	t.Logf("%d requests, none failed", l.ok.Load())
}

func TestNoIdempotentRequestFailsWhileOneShoreIsHealthy(t *testing.T) {
	a, b, c := newBackend(t, "a", nil), newBackend(t, "b", nil), newBackend(t, "c", nil)
	// Default health and outlier settings: the dead shores are found by
	// retries and passive ejection long before the 2s health checks.
	cfg := FerryConfig{Retry: RetryConfig{InitialDelay: time.Millisecond, MaxDelay: 5 * time.Millisecond}}
	_, srv := newTestFerry(t, Options{Config: cfg}, a.shore(), b.shore(), c.shore())
	l := startLoad(testClient(), srv.URL+"/v1/sandboxes/sb-1/files?path=/x", 6, "GET", "PUT", "DELETE", "HEAD", "OPTIONS")
	waitFor(t, 5*time.Second, "traffic on every shore", func() bool { return a.hits.Load() > 20 && b.hits.Load() > 20 && c.hits.Load() > 20 })
	a.kill()
	c.kill()
	n := l.ok.Load()
	waitFor(t, 10*time.Second, "300 more requests", func() bool { return l.ok.Load()+l.failed.Load() > n+300 })
	l.finish()
	if l.failed.Load() != 0 {
		t.Fatalf("%d idempotent requests failed with one shore healthy; first: %s", l.failed.Load(), l.firstErr)
	}
}

func TestRetryPolicy(t *testing.T) {
	tests := []struct {
		name     string
		method   string
		header   map[string]string
		wantCode int
		wantHits int64 // at the failing shore
	}{
		{"GET is retried after a 503", "GET", nil, 200, 1},
		{"PUT is retried", "PUT", nil, 200, 1},
		{"POST is not retried", "POST", nil, 503, 1},
		{"POST with Idempotency-Key is retried", "POST", map[string]string{"Idempotency-Key": "k1"}, 200, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			bad := newBackend(t, "bad", func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(503) })
			good := newBackend(t, "good", nil)
			cfg := quietConfig()
			cfg.Retry = RetryConfig{MaxRetries: 2, InitialDelay: time.Millisecond}
			bs, gs := bad.shore(), good.shore()
			gs.Priority = 1 // the bad shore is always tried first
			_, srv := newTestFerry(t, Options{Config: cfg}, bs, gs)
			code, body, _ := do(t, testClient(), tt.method, srv.URL+"/v1/sandboxes", tt.header)
			if code != tt.wantCode {
				t.Fatalf("status %d (%s), want %d", code, body, tt.wantCode)
			}
			if bad.hits.Load() != tt.wantHits {
				t.Fatalf("failing shore hit %d times, want %d", bad.hits.Load(), tt.wantHits)
			}
		})
	}
}

func TestConnectFailureRetriesEvenPOST(t *testing.T) {
	dead := newBackend(t, "dead", nil)
	dead.kill()
	good := newBackend(t, "good", nil)
	cfg := quietConfig()
	cfg.Retry = RetryConfig{MaxRetries: 1, InitialDelay: time.Millisecond}
	ds, gs := dead.shore(), good.shore()
	gs.Priority = 1
	_, srv := newTestFerry(t, Options{Config: cfg}, ds, gs)
	req, _ := http.NewRequest("POST", srv.URL+"/v1/sandboxes", strings.NewReader(`{"template":"base"}`))
	resp, err := testClient().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 || good.hits.Load() != 1 {
		t.Fatalf("status %d, good shore %d hits: a refused connection sent nothing, so the POST should go to the next shore", resp.StatusCode, good.hits.Load())
	}
}

func TestRetryBudgetStopsRetryStorm(t *testing.T) {
	var hits atomic.Int64
	bad := newBackend(t, "bad", func(w http.ResponseWriter, r *http.Request) { hits.Add(1); w.WriteHeader(503) })
	cfg := quietConfig()
	cfg.Retry = RetryConfig{MaxRetries: 3, InitialDelay: time.Microsecond, MaxDelay: time.Microsecond,
		BudgetRatio: 0.2, BudgetWindow: 10 * time.Second, MinRetriesPerSecond: -1}
	clock := newFakeClock()
	f, srv := newTestFerry(t, Options{Config: cfg, Clock: clock}, bad.shore())
	_ = f
	c := testClient()
	for range 100 {
		do(t, c, "GET", srv.URL+"/x", nil)
	}
	// 100 requests; without a budget 400 attempts, with it at most 100 + 20%.
	if n := hits.Load(); n > 121 {
		t.Fatalf("%d attempts for 100 requests, want ≤ 120 (20%% retry budget)", n)
	}
}

func TestBreakerOpensAndRecovers(t *testing.T) {
	var failing atomic.Bool
	failing.Store(true)
	bad := newBackend(t, "bad", func(w http.ResponseWriter, r *http.Request) {
		if failing.Load() {
			w.WriteHeader(500)
		}
	})
	good := newBackend(t, "good", nil)
	clock := newFakeClock()
	cfg := quietConfig()
	cfg.CircuitBreaker = CircuitBreakerConfig{Enabled: true, Threshold: 3, Timeout: 10 * time.Second, HalfOpenRequests: 2}
	f, srv := newTestFerry(t, Options{Config: cfg, Clock: clock}, bad.shore(), good.shore())
	c := testClient()
	for range 20 {
		do(t, c, "GET", srv.URL+"/x", nil)
	}
	if n := bad.hits.Load(); n != 3 {
		t.Fatalf("bad shore got %d requests, want 3 (then the breaker opens)", n)
	}
	h, _ := f.Health(context.Background())
	if h.OpenBreakers != 1 || shoreStatus(t, f, "bad").Breaker != "open" {
		t.Fatalf("health %+v, want bad's breaker open", h)
	}
	clock.Advance(9 * time.Second)
	do(t, c, "GET", srv.URL+"/x", nil)
	if bad.hits.Load() != 3 {
		t.Fatal("open breaker let a request through before its timeout")
	}
	failing.Store(false)
	clock.Advance(time.Second)
	if s := shoreStatus(t, f, "bad").Breaker; s != "half_open" {
		t.Fatalf("breaker %s after the timeout, want half_open", s)
	}
	for range 20 {
		if code, body, _ := do(t, c, "GET", srv.URL+"/x", nil); code != 200 {
			t.Fatalf("status %d: %s", code, body)
		}
	}
	if s := shoreStatus(t, f, "bad").Breaker; s != "closed" {
		t.Fatalf("breaker %s after good trials, want closed", s)
	}
	if n := bad.hits.Load(); n < 3+8 {
		t.Fatalf("recovered shore got %d requests in total, want it back in rotation", n)
	}
}

func TestAllBreakersOpenAnswers503(t *testing.T) {
	bad := newBackend(t, "bad", func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(500) })
	cfg := quietConfig()
	cfg.CircuitBreaker = CircuitBreakerConfig{Enabled: true, Threshold: 2, Timeout: time.Minute, HalfOpenRequests: 1}
	_, srv := newTestFerry(t, Options{Config: cfg, Clock: newFakeClock()}, bad.shore())
	c := testClient()
	do(t, c, "GET", srv.URL+"/x", nil)
	do(t, c, "GET", srv.URL+"/x", nil)
	code, body, hdr := do(t, c, "GET", srv.URL+"/x", nil)
	if code != 503 || errorCode(t, body) != "no_shore_available" || hdr.Get("Retry-After") == "" {
		t.Fatalf("got %d %s (Retry-After %q), want 503 no_shore_available with Retry-After", code, body, hdr.Get("Retry-After"))
	}
}

func TestWhenAllUnhealthy(t *testing.T) {
	for _, tt := range []struct {
		policy AllUnhealthyPolicy
		want   int
	}{{AllUnhealthyTryAll, 200}, {AllUnhealthyReject, 503}} {
		t.Run(string(tt.policy), func(t *testing.T) {
			// The backend answers requests but its health check fails.
			b := newBackend(t, "a", func(w http.ResponseWriter, r *http.Request) {
				if r.URL.Path == "/ready" {
					w.WriteHeader(http.StatusServiceUnavailable)
				}
			})
			cfg := quietConfig()
			cfg.WhenAllUnhealthy = tt.policy
			s := b.shore()
			s.HealthCheck = &HealthCheck{Path: "/ready", Interval: 20 * time.Millisecond}
			f, srv := newTestFerry(t, Options{Config: cfg}, s)
			waitFor(t, 5*time.Second, "shore unhealthy", func() bool { return shoreStatus(t, f, "a").Status == HealthStatusUnhealthy })
			code, _, _ := do(t, testClient(), "GET", srv.URL+"/x", nil)
			if code != tt.want {
				t.Fatalf("status %d, want %d", code, tt.want)
			}
			code, _, _ = do(t, testClient(), "GET", srv.URL+"/ferry/health", nil)
			if code != 503 {
				t.Fatalf("/ferry/health answered %d with every shore unhealthy, want 503", code)
			}
		})
	}
}

func TestRateLimitPerTenant(t *testing.T) {
	b := newBackend(t, "a", nil)
	clock := newFakeClock()
	cfg := quietConfig()
	cfg.RateLimiting = RateLimitConfig{Enabled: true, RequestsPerSecond: 1, Burst: 3}
	_, srv := newTestFerry(t, Options{Config: cfg, Clock: clock}, b.shore())
	c := testClient()
	alice := map[string]string{"Authorization": "Bearer tk_aaaaaaaaaaaa_" + strings.Repeat("1", 64)}
	bob := map[string]string{"Authorization": "Bearer tk_bbbbbbbbbbbb_" + strings.Repeat("2", 64)}
	for i := range 3 {
		code, _, hdr := do(t, c, "GET", srv.URL+"/x", alice)
		if code != 200 || hdr.Get("RateLimit-Remaining") != fmt.Sprint(2-i) || hdr.Get("X-RateLimit-Limit") != "3" {
			t.Fatalf("request %d: %d, headers %v", i, code, hdr)
		}
	}
	code, body, hdr := do(t, c, "GET", srv.URL+"/x", alice)
	if code != 429 || errorCode(t, body) != "rate_limited" || hdr.Get("Retry-After") != "1" || hdr.Get("RateLimit-Remaining") != "0" {
		t.Fatalf("over the limit: %d %s %v; want 429 rate_limited with Retry-After: 1", code, body, hdr)
	}
	if code, _, _ := do(t, c, "GET", srv.URL+"/x", bob); code != 200 {
		t.Fatalf("another tenant got %d while the first was limited", code)
	}
	if b.hits.Load() != 4 {
		t.Fatalf("shore saw %d requests, want 4 (the refused one never crosses)", b.hits.Load())
	}
	clock.Advance(time.Second)
	if code, _, _ := do(t, c, "GET", srv.URL+"/x", alice); code != 200 {
		t.Fatalf("after a second: %d, want 200", code)
	}
}

func TestRateLimitKeys(t *testing.T) {
	tests := []struct {
		name    string
		mode    string
		trust   bool
		remote  string
		headers map[string]string
		want    string
	}{
		{"ip mode keys by peer", "ip", false, "10.0.0.1:555", map[string]string{"Authorization": "Bearer x"}, "ip:10.0.0.1"},
		{"ipv6 by /64", "ip", false, "[2001:db8::1]:555", nil, "ip:2001:db8::/64"},
		{"forwarded headers are ignored", "ip", false, "10.0.0.1:555", map[string]string{"X-Forwarded-For": "1.2.3.4"}, "ip:10.0.0.1"},
		{"tenant header only when trusted", "tenant", true, "10.0.0.1:1", map[string]string{TenantHeader: "acme"}, "tenant:acme"},
		{"untrusted tenant header falls back to ip", "tenant", false, "10.0.0.1:1", map[string]string{TenantHeader: "acme"}, "ip:10.0.0.1"},
		{"no credential falls back to ip", "identity", false, "10.0.0.1:1", nil, "ip:10.0.0.1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, _ := http.NewRequest("GET", "/", nil)
			r.RemoteAddr = tt.remote
			for k, v := range tt.headers {
				r.Header.Set(k, v)
			}
			if got := limitKey(r, tt.mode, tt.trust); got != tt.want {
				t.Fatalf("key %q, want %q", got, tt.want)
			}
		})
	}
	r1, _ := http.NewRequest("GET", "/", nil)
	r1.Header.Set("Authorization", "Bearer tk_aaaaaaaaaaaa_secret1")
	r2, _ := http.NewRequest("GET", "/", nil)
	r2.Header.Set("Authorization", "Bearer tk_aaaaaaaaaaaa_forged")
	k1, k2 := limitKey(r1, "tenant", false), limitKey(r2, "tenant", false)
	if k1 == k2 || !strings.HasPrefix(k1, "cred:") || strings.Contains(k1, "secret1") {
		t.Fatalf("keys %q and %q: a forged key with the same id must get its own bucket, and no secret may show", k1, k2)
	}
}

// TestRateLimitBogusCredentialsShareTheirAddress: random bogus tokens from
// one client each have a fresh credential bucket, but until a shore has
// accepted a credential its requests are charged to the client's address
// too, so the flood is cut after one burst; a real key, once accepted,
// keeps its own bucket.
func TestRateLimitBogusCredentialsShareTheirAddress(t *testing.T) {
	b := newBackend(t, "a", func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "Bearer tk_aaaaaaaaaaaa_good" {
			w.WriteHeader(http.StatusUnauthorized)
		}
	})
	clock := newFakeClock()
	cfg := quietConfig()
	cfg.RateLimiting = RateLimitConfig{Enabled: true, RequestsPerSecond: 1, Burst: 5}
	_, srv := newTestFerry(t, Options{Config: cfg, Clock: clock}, b.shore())
	c := testClient()
	good := map[string]string{"Authorization": "Bearer tk_aaaaaaaaaaaa_good"}
	if code, _, _ := do(t, c, "GET", srv.URL+"/x", good); code != 200 {
		t.Fatalf("the real key: %d", code)
	}
	crossed := 0
	for i := range 50 {
		bogus := map[string]string{"Authorization": fmt.Sprintf("Bearer tk_%012d_bogus", i)}
		switch code, _, _ := do(t, c, "GET", srv.URL+"/x", bogus); code {
		case 401:
			crossed++
		case 429:
		default:
			t.Fatalf("bogus token %d: %d", i, code)
		}
	}
	if crossed != 4 { // the address's burst, less the real key's first request
		t.Errorf("%d bogus tokens crossed, want 4", crossed)
	}
	for i := range 4 {
		if code, _, _ := do(t, c, "GET", srv.URL+"/x", good); code != 200 {
			t.Fatalf("the proven key, request %d, while its address is limited: %d", i, code)
		}
	}
}

func TestRateLimitSharedThroughRedis(t *testing.T) {
	rdb := startRedis(t)
	b := newBackend(t, "a", nil)
	cfg := quietConfig()
	cfg.RateLimiting = RateLimitConfig{Enabled: true, RequestsPerSecond: 1, Burst: 4}
	_, srv1 := newTestFerry(t, Options{Config: cfg, Limiter: NewRedisLimiter(rdb, 1, 4, nil, nil)}, b.shore())
	_, srv2 := newTestFerry(t, Options{Config: cfg, Limiter: NewRedisLimiter(rdb, 1, 4, nil, nil)}, b.shore())
	c := testClient()
	alice := map[string]string{"Authorization": "Bearer alice-token"}
	bob := map[string]string{"Authorization": "Bearer bob-token"}
	allowed := 0
	for i := range 10 {
		u := srv1.URL
		if i%2 == 1 {
			u = srv2.URL
		}
		code, _, hdr := do(t, c, "GET", u+"/x", alice)
		switch code {
		case 200:
			allowed++
		case 429:
			if hdr.Get("Retry-After") == "" {
				t.Fatal("429 without Retry-After")
			}
		default:
			t.Fatalf("status %d", code)
		}
	}
	if allowed < 4 || allowed > 5 {
		t.Fatalf("%d of 10 allowed through two ferries sharing a 4-token bucket", allowed)
	}
	for _, u := range []string{srv1.URL, srv2.URL} {
		if code, _, _ := do(t, c, "GET", u+"/x", bob); code != 200 {
			t.Fatalf("another tenant got %d", code)
		}
	}
}

func TestCrossingTimeout(t *testing.T) {
	release := make(chan struct{})
	slow := newBackend(t, "slow", func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-release:
		case <-r.Context().Done():
		}
	})
	defer close(release)
	cfg := quietConfig()
	cfg.CrossingTimeout = 200 * time.Millisecond
	_, srv := newTestFerry(t, Options{Config: cfg}, slow.shore())
	code, body, _ := do(t, testClient(), "GET", srv.URL+"/x", nil)
	if code != 504 || errorCode(t, body) != "gateway_timeout" {
		t.Fatalf("got %d %s, want 504 gateway_timeout", code, body)
	}
}

func TestNDJSONStreamsLineByLine(t *testing.T) {
	next := make(chan struct{})
	b := newBackend(t, "a", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/x-ndjson")
		for i := range 3 {
			fmt.Fprintf(w, `{"type":"stdout","data":"line %d"}`+"\n", i)
			w.(http.Flusher).Flush()
			<-next // the client must have read this line before the next is written
		}
		fmt.Fprintln(w, `{"type":"exit","exit_code":0}`)
	})
	cfg := quietConfig()
	cfg.CrossingTimeout = 100 * time.Millisecond // must not cut a stream whose headers came in time
	_, srv := newTestFerry(t, Options{Config: cfg}, b.shore())
	req, _ := http.NewRequest("POST", srv.URL+"/v1/sandboxes/sb-1/exec", strings.NewReader(`{"cmd":["sh"]}`))
	req.Header.Set("Accept", "application/x-ndjson")
	resp, err := testClient().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for i := range 3 {
		if !sc.Scan() {
			t.Fatalf("stream ended before line %d: %v", i, sc.Err())
		}
		if want := fmt.Sprintf(`{"type":"stdout","data":"line %d"}`, i); sc.Text() != want {
			t.Fatalf("line %d = %q, want %q", i, sc.Text(), want)
		}
		time.Sleep(150 * time.Millisecond) // longer than the crossing timeout
		next <- struct{}{}
	}
	if !sc.Scan() || !strings.Contains(sc.Text(), "exit") {
		t.Fatalf("missing exit line: %q %v", sc.Text(), sc.Err())
	}
}

func TestWebSocketUpgradePassesThrough(t *testing.T) {
	b := newBackend(t, "a", func(w http.ResponseWriter, r *http.Request) {
		conn, err := websocket.Accept(w, r, nil)
		if err != nil {
			return
		}
		defer conn.CloseNow()
		for {
			typ, msg, err := conn.Read(r.Context())
			if err != nil {
				return
			}
			if err := conn.Write(r.Context(), typ, append([]byte("echo: "), msg...)); err != nil {
				return
			}
		}
	})
	cfg := quietConfig()
	cfg.CrossingTimeout = time.Second
	f, srv := newTestFerry(t, Options{Config: cfg}, b.shore())
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, _, err := websocket.Dial(ctx, "ws"+strings.TrimPrefix(srv.URL, "http")+"/v1/sandboxes/sb-1/pty", nil)
	if err != nil {
		t.Fatalf("dial through the ferry: %v", err)
	}
	for _, m := range []string{"hello", "again"} {
		if err := conn.Write(ctx, websocket.MessageText, []byte(m)); err != nil {
			t.Fatal(err)
		}
		_, got, err := conn.Read(ctx)
		if err != nil || string(got) != "echo: "+m {
			t.Fatalf("read %q, %v", got, err)
		}
	}
	if n := shoreStatus(t, f, "a").ActiveConns; n != 1 {
		t.Fatalf("open websocket counts %d active at the shore, want 1", n)
	}
	conn.Close(websocket.StatusNormalClosure, "")
	waitFor(t, 5*time.Second, "the upgraded connection to be released", func() bool { return shoreStatus(t, f, "a").ActiveConns == 0 })
}

func TestRequestID(t *testing.T) {
	var seen atomic.Value
	b := newBackend(t, "a", func(w http.ResponseWriter, r *http.Request) {
		seen.Store(r.Header.Get(RequestIDHeader))
		w.Header().Set(RequestIDHeader, "shore-made-its-own")
	})
	_, srv := newTestFerry(t, Options{Config: quietConfig()}, b.shore())
	c := testClient()
	_, _, hdr := do(t, c, "GET", srv.URL+"/x", map[string]string{RequestIDHeader: "req-123"})
	if seen.Load() != "req-123" || hdr.Values(RequestIDHeader)[0] != "req-123" || len(hdr.Values(RequestIDHeader)) != 1 {
		t.Fatalf("shore saw %v, client got %v; want req-123 both ways", seen.Load(), hdr.Values(RequestIDHeader))
	}
	_, _, hdr = do(t, c, "GET", srv.URL+"/x", nil)
	id := hdr.Get(RequestIDHeader)
	if len(id) != 32 || seen.Load() != id {
		t.Fatalf("generated id %q, shore saw %v", id, seen.Load())
	}
	_, _, hdr = do(t, c, "GET", srv.URL+"/x", map[string]string{RequestIDHeader: strings.Repeat("x", 500)})
	if len(hdr.Get(RequestIDHeader)) != 32 {
		t.Fatal("an oversized request id was kept")
	}
}
