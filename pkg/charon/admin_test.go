package charon

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

func TestAdminRefusesBadInput(t *testing.T) {
	b := newBackend(t, "a", nil)
	f, _ := newTestFerry(t, Options{Config: quietConfig()}, b.shore())
	admin := httptest.NewServer(f.AdminHandler(""))
	defer admin.Close()
	tests := []struct {
		name, method, path, ctype, body string
		want                            int
		wantIn                          string // in the error message
	}{
		{"not JSON", "POST", "/ferry/shores", "application/json", `{"id":`, 400, "shore JSON"},
		{"unknown field", "POST", "/ferry/shores", "application/json", `{"id":"x","address":"http://127.0.0.1:1","wieght":3}`, 400, "wieght"},
		{"trailing data", "POST", "/ferry/shores", "application/json", `{"id":"x","address":"http://127.0.0.1:1"} {}`, 400, "trailing"},
		{"missing id and address", "POST", "/ferry/shores", "application/json", `{}`, 400, "id: required"},
		{"bad scheme", "POST", "/ferry/shores", "application/json", `{"id":"x","address":"ftp://h:1"}`, 400, "scheme"},
		{"path in address", "POST", "/ferry/shores", "application/json", `{"id":"x","address":"http://h:1/api"}`, 400, "no path"},
		{"negative weight and bad id, both reported", "POST", "/ferry/shores", "application/json", `{"id":"a b","address":"http://h:1","weight":-1}`, 400, "weight -1"},
		{"bad health check", "POST", "/ferry/shores", "application/json", `{"id":"x","address":"http://h:1","health_check":{"path":"healthz","interval":"1ms"}}`, 400, "must start with /"},
		{"bad duration", "POST", "/ferry/shores", "application/json", `{"id":"x","address":"http://h:1","health_check":{"interval":"soon"}}`, 400, "soon"},
		{"duplicate id", "POST", "/ferry/shores", "application/json", `{"id":"a","address":"http://127.0.0.1:1"}`, 409, "already exists"},
		{"wrong content type", "POST", "/ferry/shores", "text/plain", `id=x`, 415, "application/json"},
		{"delete unknown", "DELETE", "/ferry/shores/nope", "", ``, 404, "not found"},
		{"huge body", "POST", "/ferry/shores", "application/json", `{"id":"` + strings.Repeat("x", 100<<10) + `"}`, 400, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req, _ := http.NewRequest(tt.method, admin.URL+tt.path, strings.NewReader(tt.body))
			if tt.ctype != "" {
				req.Header.Set("Content-Type", tt.ctype)
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != tt.want {
				t.Fatalf("status %d (%s), want %d", resp.StatusCode, body, tt.want)
			}
			code := errorCode(t, string(body))
			if code == "" || !strings.Contains(string(body), tt.wantIn) {
				t.Fatalf("error %s does not mention %q", body, tt.wantIn)
			}
			if s := f.Shores(); len(s) != 1 || s[0].ID != "a" {
				t.Fatalf("shores changed to %+v", s)
			}
		})
	}
}

func TestAdminAddAndRemoveShore(t *testing.T) {
	a, b := newBackend(t, "a", nil), newBackend(t, "b", nil)
	f, srv := newTestFerry(t, Options{Config: quietConfig()}, a.shore())
	admin := httptest.NewServer(f.AdminHandler("s3cret"))
	defer admin.Close()
	post := func(token string) *http.Response {
		req, _ := http.NewRequest("POST", admin.URL+"/ferry/shores", strings.NewReader(`{"id":"b","address":"`+b.url()+`","weight":2,"zone":"eu","health_check":{"path":"/healthz","interval":"1s"}}`))
		req.Header.Set("Content-Type", "application/json")
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		return resp
	}
	if resp := post("wrong"); resp.StatusCode != 401 {
		t.Fatalf("wrong token: %d, want 401", resp.StatusCode)
	}
	resp := post("s3cret")
	var got Shore
	json.NewDecoder(resp.Body).Decode(&got)
	resp.Body.Close()
	if resp.StatusCode != 201 || got.ID != "b" || got.Weight != 2 || got.HealthCheck == nil || got.HealthCheck.Interval != time.Second {
		t.Fatalf("add: %d %+v", resp.StatusCode, got)
	}
	c := testClient()
	for range 10 {
		do(t, c, "GET", srv.URL+"/x", nil)
	}
	if b.hits.Load() != 5 {
		t.Fatalf("new shore got %d of 10 requests, want 5", b.hits.Load())
	}
	req, _ := http.NewRequest("DELETE", admin.URL+"/ferry/shores/b", nil)
	req.Header.Set("Authorization", "Bearer s3cret")
	if resp, err := http.DefaultClient.Do(req); err != nil || resp.StatusCode != 204 {
		t.Fatalf("delete: %v %v", resp, err)
	}
	for range 10 {
		do(t, c, "GET", srv.URL+"/x", nil)
	}
	if b.hits.Load() != 5 {
		t.Fatal("removed shore still gets requests")
	}
}

func TestMetricsAndHealthEndpoints(t *testing.T) {
	a := newBackend(t, "a", nil)
	dead := newBackend(t, "dead", nil)
	dead.kill()
	cfg := quietConfig()
	cfg.Retry = RetryConfig{MaxRetries: 1, InitialDelay: time.Millisecond}
	f, srv := newTestFerry(t, Options{Config: cfg}, a.shore(), dead.shore())
	admin := httptest.NewServer(f.AdminHandler(""))
	defer admin.Close()
	c := testClient()
	for range 10 {
		if code, _, _ := do(t, c, "GET", srv.URL+"/x", nil); code != 200 {
			t.Fatalf("status %d", code)
		}
	}
	_, text, _ := do(t, c, "GET", admin.URL+"/metrics", nil)
	for _, want := range []string{
		`tartarus_ferry_shore_attempts_total{outcome="ok",shore="a"} 10`,
		`tartarus_ferry_shore_attempts_total{outcome="connect_error",shore="dead"} 5`,
		`tartarus_ferry_retries_total{reason="connect_error"} 5`,
		`tartarus_ferry_requests_total{outcome="2xx"} 10`,
		`tartarus_ferry_shore_up{shore="a"} 1`,
	} {
		if !strings.Contains(text, want) {
			t.Errorf("metrics lack %s", want)
		}
	}
	code, body, _ := do(t, c, "GET", srv.URL+"/ferry/health", nil)
	var h struct {
		Status string
		Shores []map[string]any
	}
	if err := json.Unmarshal([]byte(body), &h); err != nil || code != 200 || h.Status == "" || len(h.Shores) != 2 {
		t.Fatalf("/ferry/health: %d %s", code, body)
	}
	for _, k := range []string{"shore_id", "status", "latency_ms", "active_conns", "error_rate", "breaker"} {
		if _, ok := h.Shores[0][k]; !ok {
			t.Errorf("shore health lacks %q: %v", k, h.Shores[0])
		}
	}
}

func TestConfigValidate(t *testing.T) {
	tests := []struct {
		name    string
		cfg     FerryConfig
		wantErr []string
	}{
		{"zero value is valid", FerryConfig{}, nil},
		{"every problem at once", FerryConfig{
			Strategy:         "random",
			WhenAllUnhealthy: "pray",
			RateLimiting:     RateLimitConfig{Enabled: true, KeyFunc: "cookie"},
			Retry:            RetryConfig{RetryOn: []int{404}, BudgetRatio: 2},
		}, []string{"strategy", "when_all_unhealthy", "requests_per_second", "rate_limiting.key", "404", "budget_ratio"}},
		{"health interval too short", FerryConfig{HealthCheck: HealthCheck{Interval: time.Millisecond}}, []string{"at least 10ms"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.cfg.Validate()
			if len(tt.wantErr) == 0 {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil {
				t.Fatal("no error")
			}
			for _, w := range tt.wantErr {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q lacks %q", err, w)
				}
			}
		})
	}
}

func TestParseShoreFlag(t *testing.T) {
	tests := []struct {
		in      string
		want    Shore
		wantErr string
	}{
		{in: "http://127.0.0.1:7700", want: Shore{ID: "127.0.0.1:7700", Address: "http://127.0.0.1:7700"}},
		{in: "http://10.0.0.1:7700/,id=o1,weight=3,zone=eu,priority=1", want: Shore{ID: "o1", Address: "http://10.0.0.1:7700", Weight: 3, Zone: "eu", Priority: 1}},
		{in: "http://h:1,weight=x", wantErr: "not a number"},
		{in: "http://h:1,color=red", wantErr: "unknown key"},
		{in: "h:1", wantErr: "scheme"},
		{in: "http://h:1,zone", wantErr: "key=value"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := ParseShoreFlag(tt.in)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil || got.ID != tt.want.ID || got.Address != tt.want.Address || got.Weight != tt.want.Weight || got.Zone != tt.want.Zone || got.Priority != tt.want.Priority {
				t.Fatalf("got %+v, %v; want %+v", got, err, tt.want)
			}
		})
	}
}

func TestLoadFileConfig(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "good.yaml")
	os.WriteFile(good, []byte(`
listen: 127.0.0.1:7710
strategy: weighted
crossing_timeout: 5s
rate_limiting: {enabled: true, requests_per_second: 50, burst: 100, key: tenant}
retry: {max_retries: 3, initial_delay: 20ms}
outlier: {consecutive: 3, base_ejection: 10s}
shores:
  - {id: o1, address: "http://10.0.0.1:7700", weight: 3, health_check: {path: /healthz, interval: 1s}}
  - {id: o2, address: "http://10.0.0.2:7700"}
`), 0o600)
	fc, err := LoadFileConfig(good)
	if err != nil {
		t.Fatal(err)
	}
	if fc.Ferry.Strategy != StrategyWeighted || fc.Ferry.CrossingTimeout != 5*time.Second || fc.Ferry.RateLimiting.Burst != 100 ||
		fc.Ferry.Retry.InitialDelay != 20*time.Millisecond || len(fc.Shores) != 2 || fc.Shores[0].HealthCheck.Interval != time.Second {
		t.Fatalf("parsed %+v", fc)
	}
	bad := filepath.Join(dir, "bad.yaml")
	os.WriteFile(bad, []byte("strategy: weighted\nretries: 3\n"), 0o600)
	if _, err := LoadFileConfig(bad); err == nil || !strings.Contains(err.Error(), "retries") {
		t.Fatalf("misspelt key: %v, want an error naming it", err)
	}
}

func TestCrossForGoCallers(t *testing.T) {
	b := newBackend(t, "a", nil)
	clock := newFakeClock()
	cfg := quietConfig()
	cfg.RateLimiting = RateLimitConfig{Enabled: true, RequestsPerSecond: 1, Burst: 1, KeyFunc: "ip"}
	f, _ := newTestFerry(t, Options{Config: cfg, Clock: clock}, b.shore())
	req, _ := http.NewRequest("GET", "http://ferry.example/v1/templates?x=1", nil)
	req.RemoteAddr = "10.0.0.1:1"
	resp, err := f.Cross(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !strings.Contains(string(body), `"shore":"a"`) {
		t.Fatalf("Cross: %d %s", resp.StatusCode, body)
	}
	_, err = f.Cross(context.Background(), req)
	var ce *CrossingError
	if !errors.As(err, &ce) || ce.Code != 429 || ce.RetryAfter <= 0 || !errors.Is(err, tartarus.ErrResourceExhausted) {
		t.Fatalf("second Cross: %v, want a 429 CrossingError of class resource exhausted", err)
	}
	if req.Header.Get(RequestIDHeader) != "" {
		t.Fatal("Cross changed the caller's request")
	}
}
