package charon

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tartarus-sandbox/tartarus/pkg/clock"
)

// newFakeClock returns a clock the test moves by hand.
func newFakeClock() *clock.Fake { return clock.NewFake(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)) }

// backend is a real HTTP server on loopback that can be killed and brought
// back on the same port.
type backend struct {
	t       *testing.T
	name    string
	addr    string
	hits    atomic.Int64 // requests other than health checks
	handler http.Handler

	mu  sync.Mutex
	srv *http.Server
}

// newBackend starts a backend; h nil answers {"shore":name}.
func newBackend(t *testing.T, name string, h http.HandlerFunc) *backend {
	t.Helper()
	b := &backend{t: t, name: name}
	if h == nil {
		h = func(w http.ResponseWriter, r *http.Request) {
			_, _ = io.Copy(io.Discard, r.Body)
			w.Header().Set("Content-Type", "application/json")
			fmt.Fprintf(w, `{"shore":%q}`, name)
		}
	}
	b.handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Shore", name)
		if r.URL.Path == "/healthz" {
			w.WriteHeader(http.StatusOK)
			return
		}
		b.hits.Add(1)
		h(w, r)
	})
	b.start()
	t.Cleanup(b.kill)
	return b
}

func (b *backend) start() {
	b.t.Helper()
	addr := b.addr
	if addr == "" {
		addr = "127.0.0.1:0"
	}
	var ln net.Listener
	var err error
	for range 50 { // the old socket may linger a moment after kill
		if ln, err = net.Listen("tcp", addr); err == nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		b.t.Fatalf("backend %s: listen %s: %v", b.name, addr, err)
	}
	b.addr = ln.Addr().String()
	srv := &http.Server{Handler: b.handler}
	b.mu.Lock()
	b.srv = srv
	b.mu.Unlock()
	go func() { _ = srv.Serve(ln) }()
}

func (b *backend) kill() {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.srv != nil {
		_ = b.srv.Close()
		b.srv = nil
	}
}

func (b *backend) url() string { return "http://" + b.addr }

func (b *backend) shore() *Shore { return &Shore{ID: b.name, Address: b.url()} }

// newTestFerry builds a ferry over shores and serves it on loopback.
func newTestFerry(t *testing.T, opts Options, shores ...*Shore) (*BoatFerry, *httptest.Server) {
	t.Helper()
	f, err := New(opts)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	for _, s := range shores {
		if err := f.RegisterShore(s); err != nil {
			t.Fatalf("RegisterShore %s: %v", s.ID, err)
		}
	}
	srv := httptest.NewServer(f)
	t.Cleanup(func() {
		srv.Close()
		_ = f.Close()
	})
	return f, srv
}

// quietConfig turns off what a test does not look at: active checks,
// outlier ejection, breakers, retries.
func quietConfig() FerryConfig {
	return FerryConfig{
		HealthCheck: HealthCheck{Interval: -1},
		Outlier:     OutlierConfig{Consecutive: -1},
		Retry:       RetryConfig{MaxRetries: -1},
	}
}

func testClient() *http.Client {
	return &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64}, Timeout: 20 * time.Second}
}

// get sends one request and returns status, the X-Shore header and body.
func do(t *testing.T, c *http.Client, method, url string, hdr map[string]string) (int, string, http.Header) {
	t.Helper()
	req, err := http.NewRequest(method, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), resp.Header
}

func errorCode(t *testing.T, body string) string {
	t.Helper()
	var e struct {
		Error struct{ Code, Message string } `json:"error"`
	}
	if err := json.Unmarshal([]byte(body), &e); err != nil {
		t.Fatalf("error body %q: %v", body, err)
	}
	return e.Error.Code
}

// waitFor polls cond every 10ms until it holds or timeout passes.
func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// startRedis runs a real redis-server on a free loopback port for the test.
func startRedis(t *testing.T) *redis.Client {
	t.Helper()
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		if os.Getenv("TARTARUS_E2E") != "" {
			t.Fatalf("redis-server not installed (apt-get install redis-server; scripts/deps.sh does it)")
		}
		t.Skip("redis-server not installed (apt-get install redis-server); set TARTARUS_E2E=1 to make this a failure")
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	cmd := exec.Command(bin, "--port", strconv.Itoa(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", t.TempDir())
	cmd.Stdout, cmd.Stderr = io.Discard, io.Discard
	if err := cmd.Start(); err != nil {
		t.Fatalf("start redis-server: %v", err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	rdb := redis.NewClient(&redis.Options{Addr: fmt.Sprintf("127.0.0.1:%d", port)})
	t.Cleanup(func() { rdb.Close() })
	waitFor(t, 10*time.Second, "redis-server to answer PING", func() bool {
		return rdb.Ping(context.Background()).Err() == nil
	})
	return rdb
}
