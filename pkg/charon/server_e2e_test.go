package charon

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestRealServerReplicas puts the ferry in front of two real `tartarus
// server` processes (auth off, the fake runtime, so no VM is needed) and
// checks that both serve, that request ids survive the round trip, and
// that killing one replica fails no request.
func TestRealServerReplicas(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the tartarus binary; not in -short")
	}
	bin := filepath.Join(t.TempDir(), "tartarus")
	build := exec.Command("go", "build", "-o", bin, "./cmd/tartarus")
	build.Dir = "../.."
	if out, err := build.CombinedOutput(); err != nil {
		if os.Getenv("TARTARUS_E2E") != "" {
			t.Fatalf("go build ./cmd/tartarus: %v\n%s", err, out)
		}
		t.Skipf("go build ./cmd/tartarus failed (set TARTARUS_E2E=1 to make this a failure): %v\n%s", err, out)
	}
	startReplica := func(name string) (addr string, stop func()) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr = ln.Addr().String()
		ln.Close()
		cmd := exec.Command(bin, "server", "--listen", addr, "--data-dir", filepath.Join(t.TempDir(), name),
			"--auth", "off", "--runtimes", "fake", "--unsafe-fake-runtime", "--log-level", "warn")
		cmd.Stdout, cmd.Stderr = io.Discard, io.Discard
		if err := cmd.Start(); err != nil {
			t.Fatalf("start replica %s: %v", name, err)
		}
		stopped := false
		stop = func() {
			if !stopped {
				stopped = true
				_ = cmd.Process.Kill()
				_ = cmd.Wait()
			}
		}
		t.Cleanup(stop)
		c := testClient()
		waitFor(t, 30*time.Second, "replica "+name+" to answer", func() bool {
			resp, err := c.Get("http://" + addr + "/v1/templates")
			if err != nil {
				return false
			}
			resp.Body.Close()
			return resp.StatusCode == 200
		})
		return addr, stop
	}
	addrA, stopA := startReplica("a")
	addrB, _ := startReplica("b")

	cfg := FerryConfig{
		// /healthz answers 503 until templates are built; /v1/templates
		// shows the API is up, which is what this test needs.
		HealthCheck: HealthCheck{Path: "/v1/templates", Interval: 100 * time.Millisecond},
		Retry:       RetryConfig{InitialDelay: time.Millisecond, MaxDelay: 5 * time.Millisecond},
	}
	f, srv := newTestFerry(t, Options{Config: cfg},
		&Shore{ID: "olympus-a", Address: "http://" + addrA}, &Shore{ID: "olympus-b", Address: "http://" + addrB})

	c := testClient()
	for i := range 20 {
		id := fmt.Sprintf("replica-test-%d", i)
		code, body, hdr := do(t, c, "GET", srv.URL+"/v1/templates", map[string]string{RequestIDHeader: id})
		if code != 200 || !strings.Contains(body, `"templates"`) || hdr.Get(RequestIDHeader) != id {
			t.Fatalf("GET /v1/templates: %d %s (request id %q)", code, body, hdr.Get(RequestIDHeader))
		}
	}
	// A bad request is the server's answer, passed through unchanged.
	if code, body, _ := do(t, c, "GET", srv.URL+"/v1/sandboxes/does-not-exist", nil); code != 404 || errorCode(t, body) == "" {
		t.Fatalf("unknown sandbox: %d %s, want the server's 404", code, body)
	}
	okA, okB := shoreAttempts(t, f, "olympus-a"), shoreAttempts(t, f, "olympus-b")
	if okA < 5 || okB < 5 {
		t.Fatalf("replica a served %d, b %d: want both in rotation", okA, okB)
	}

	l := startLoad(c, srv.URL+"/v1/templates", 3)
	waitFor(t, 10*time.Second, "load", func() bool { return l.ok.Load() > 50 })
	stopA()
	n := l.ok.Load()
	waitFor(t, 20*time.Second, "200 more requests after replica a died", func() bool { return l.ok.Load() > n+200 })
	l.finish()
	if l.failed.Load() != 0 {
		t.Fatalf("%d requests failed after a replica died; first: %s", l.failed.Load(), l.firstErr)
	}
	if s := shoreStatus(t, f, "olympus-a"); s.Status != HealthStatusUnhealthy {
		t.Fatalf("dead replica reports %s", s.Status)
	}
}

// shoreAttempts reads tartarus_ferry_shore_attempts_total{outcome="ok"} of
// one shore from the metrics endpoint.
func shoreAttempts(t *testing.T, f *BoatFerry, shore string) int {
	t.Helper()
	rec := httptest.NewRecorder()
	f.MetricsHandler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil).WithContext(context.Background()))
	re := regexp.MustCompile(`tartarus_ferry_shore_attempts_total\{outcome="ok",shore="` + regexp.QuoteMeta(shore) + `"\} (\d+)`)
	m := re.FindStringSubmatch(rec.Body.String())
	if m == nil {
		t.Fatalf("no ok attempts for %s in metrics", shore)
	}
	n, _ := strconv.Atoi(m[1])
	return n
}
