package charon

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"testing"
)

// BenchmarkServeHTTP measures one request through the ferry's handler to a
// real loopback shore (the client side is in-process, so this is the
// ferry's own work plus one loopback round trip). net_http_client is the
// same request made directly with net/http's Client, for scale.
func BenchmarkServeHTTP(b *testing.B) {
	shore := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, `{"templates":[{"name":"base"}]}`)
	}))
	defer shore.Close()
	for _, tc := range []struct {
		name string
		cfg  FerryConfig
	}{
		{"net_http_client", FerryConfig{}},
		{"ferry_defaults", FerryConfig{}},
		{"ferry_breaker_ratelimit", FerryConfig{
			CircuitBreaker: CircuitBreakerConfig{Enabled: true},
			RateLimiting:   RateLimitConfig{Enabled: true, RequestsPerSecond: 1 << 30},
		}},
	} {
		b.Run(tc.name, func(b *testing.B) {
			f, err := New(Options{Config: tc.cfg})
			if err != nil {
				b.Fatal(err)
			}
			defer f.Close()
			if err := f.RegisterShore(&Shore{ID: "s", Address: shore.URL}); err != nil {
				b.Fatal(err)
			}
			var h http.Handler = f
			if tc.name == "net_http_client" {
				h = directHandler(shore.URL)
			}
			b.ReportAllocs()
			for b.Loop() {
				rec := httptest.NewRecorder()
				req := httptest.NewRequest("GET", "/v1/templates", nil)
				req.Header.Set("Authorization", "Bearer tk_aaaaaaaaaaaa_x")
				h.ServeHTTP(rec, req)
				if rec.Code != 200 {
					b.Fatalf("status %d: %s", rec.Code, rec.Body)
				}
			}
		})
	}
}

func directHandler(url string) http.Handler {
	c := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64}}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		req, _ := http.NewRequestWithContext(context.Background(), r.Method, url+r.URL.Path, nil)
		resp, err := c.Do(req)
		if err != nil {
			w.WriteHeader(502)
			return
		}
		defer resp.Body.Close()
		w.WriteHeader(resp.StatusCode)
		io.Copy(w, resp.Body)
	})
}

// BenchmarkPick is the choice of a shore among eight, per strategy.
func BenchmarkPick(b *testing.B) {
	for _, st := range []LoadBalanceStrategy{StrategyRoundRobin, StrategyLeastConn, StrategyWeighted, StrategyIPHash, StrategyZoneAware} {
		b.Run(string(st), func(b *testing.B) {
			cfg := quietConfig()
			cfg.Strategy, cfg.Zone = st, "z1"
			cfg.CircuitBreaker.Enabled = true
			f, err := New(Options{Config: cfg})
			if err != nil {
				b.Fatal(err)
			}
			defer f.Close()
			for i := range 8 {
				f.RegisterShore(&Shore{ID: string(rune('a' + i)), Address: "http://127.0.0.1:1", Weight: i + 1, Zone: []string{"z1", "z2"}[i%2]})
			}
			now := f.clock.Now()
			for b.Loop() {
				s := f.pick("10.1.2.3", nil, now)
				s.breaker.Done(true)
			}
		})
	}
}

func BenchmarkLocalLimiter(b *testing.B) {
	l := NewLocalLimiter(1<<30, 1<<30, nil)
	ctx := context.Background()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			l.Take(ctx, "cred:0123456789abcdef01234567")
		}
	})
}
