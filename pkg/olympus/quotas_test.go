package olympus

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tartarus-sandbox/tartarus/pkg/cerberus"
	"github.com/tartarus-sandbox/tartarus/pkg/clock"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

// quotaGuard is testGuard with the quotas of a policy file.
type quotaGuard struct {
	testGuard
	set cerberus.QuotaSet
}

func (g quotaGuard) Quota(tenant string) cerberus.Quota { return g.set.For(tenant) }

func newQuotaAPI(t *testing.T, set cerberus.QuotaSet, clk clock.Clock) *testAPI {
	t.Helper()
	ta := newTestAPI(t)
	s, err := New(Config{Backend: ta.agent, Guard: quotaGuard{set: set}, Clock: clk})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(s)
	t.Cleanup(srv.Close)
	ta.srv = srv
	return ta
}

// TestQuotas: a tenant at a quota gets 429 quota_exceeded naming the
// quota, its limit and its use; another tenant is unaffected; the counts
// come from the store, so a new server over it sees the same; GET
// /v1/quotas shows limits and use.
func TestQuotas(t *testing.T) {
	set := cerberus.QuotaSet{
		Default: cerberus.Quota{RunningSandboxes: 10},
		Tenants: map[string]cerberus.Quota{
			"acme":  {RunningSandboxes: 2, MemoryMB: 1024},
			"small": {MemoryMB: 300, MaxLifetimeS: 120},
			"slow":  {CreatesPerMinute: 1},
		},
	}
	ta := newQuotaAPI(t, set, nil)
	create := func(tenant, body string) answer {
		return ta.do(t, call{method: "POST", path: "/v1/sandboxes", tenant: tenant, body: body})
	}
	for range 2 {
		if a := create("acme", `{"template":"base"}`); a.status != http.StatusCreated {
			t.Fatalf("acme create: %d %s", a.status, a.body)
		}
	}
	tests := []struct {
		name, tenant, body string
		status             int
		want               []string
	}{
		{"acme at running_sandboxes", "acme", `{"template":"base"}`, 429, []string{"running_sandboxes", "limit 2", "in use 2"}},
		{"another tenant unaffected", "globex", `{"template":"base","memory_mb":128}`, 201, nil},
		{"memory_mb", "small", `{"template":"base","memory_mb":512,"timeout_s":60}`, 429, []string{"memory_mb", "limit 300 MiB", "asked 512 MiB"}},
		{"max_lifetime_s", "small", `{"template":"base","timeout_s":600}`, 429, []string{"max_lifetime_s", "limit 120 s", "asked 600 s"}},
		{"within small's quotas", "small", `{"template":"base","timeout_s":60,"memory_mb":128}`, 201, nil},
		{"first create of the minute", "slow", `{"template":"base","memory_mb":128}`, 201, nil},
		{"creates_per_minute", "slow", `{"template":"base","memory_mb":128}`, 429, []string{"creates_per_minute", "limit 1"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a := create(tt.tenant, tt.body)
			if a.status != tt.status {
				t.Fatalf("status %d, want %d: %s", a.status, tt.status, a.body)
			}
			if tt.status == 429 && a.errCode() != "quota_exceeded" {
				t.Errorf("code %q, want quota_exceeded", a.errCode())
			}
			for _, w := range tt.want {
				if !strings.Contains(string(a.body), w) {
					t.Errorf("answer %s does not name %q", a.body, w)
				}
			}
		})
	}

	// A new server over the same store (a restart, or another replica)
	// counts the same.
	s2, err := New(Config{Backend: ta.agent, Guard: quotaGuard{set: set}})
	if err != nil {
		t.Fatal(err)
	}
	srv2 := httptest.NewServer(s2)
	defer srv2.Close()
	again := &testAPI{srv: srv2}
	if a := again.do(t, call{method: "POST", path: "/v1/sandboxes", tenant: "acme", body: `{"template":"base"}`}); a.status != 429 {
		t.Errorf("a second server let acme past its quota: %d %s", a.status, a.body)
	}
	a := again.do(t, call{method: "GET", path: "/v1/quotas", tenant: "acme"})
	var rep QuotaReport
	if err := json.Unmarshal(a.body, &rep); err != nil || a.status != 200 {
		t.Fatalf("GET /v1/quotas: %d %s", a.status, a.body)
	}
	if rep.Tenant != "acme" || rep.Limits.RunningSandboxes != 2 || rep.Usage.RunningSandboxes != 2 || rep.Usage.MemoryMB != 512 {
		t.Errorf("quota report %+v", rep)
	}

	// Destroying one makes room.
	list := ta.do(t, call{method: "GET", path: "/v1/sandboxes", tenant: "acme"})
	var sl struct{ Sandboxes []tartarus.Sandbox }
	_ = json.Unmarshal(list.body, &sl)
	if a := ta.do(t, call{method: "DELETE", path: "/v1/sandboxes/" + sl.Sandboxes[0].ID, tenant: "acme"}); a.status != 202 {
		t.Fatalf("delete: %d %s", a.status, a.body)
	}
	if a := create("acme", `{"template":"base"}`); a.status != http.StatusCreated {
		t.Errorf("create after a delete: %d %s", a.status, a.body)
	}
}

// TestForkLifetimeQuota: forks count from the first sandbox of their line,
// so forking cannot keep a sandbox alive past max_lifetime_s.
func TestForkLifetimeQuota(t *testing.T) {
	clk := clock.NewFake(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	set := cerberus.QuotaSet{Tenants: map[string]cerberus.Quota{"acme": {MaxLifetimeS: 100}}}
	s, err := New(Config{Backend: newTestAPI(t).agent, Guard: quotaGuard{set: set}, Clock: clk})
	if err != nil {
		t.Fatal(err)
	}
	req := &tartarus.CreateRequest{Template: "base", TimeoutS: 60}
	if _, err := s.checkCreateQuota(context.Background(), "acme", req); err != nil {
		t.Fatal(err)
	}
	origin := clk.Now()
	parent := tartarus.NewSandbox("sb-1", "acme", req, origin)
	clk.Advance(30 * time.Second)
	if _, err := s.checkForkQuota(context.Background(), parent, 1); err != nil {
		t.Fatalf("fork at 30 s (would live to 90 s): %v", err)
	}
	// The fork carries the line's start; forking it later is refused.
	child := tartarus.NewSandbox("sb-2", "acme", req, clk.Now())
	child.Metadata = parent.Metadata
	clk.Advance(15 * time.Second)
	_, err = s.checkForkQuota(context.Background(), child, 1)
	if !errors.Is(err, tartarus.ErrQuotaExceeded) || !strings.Contains(err.Error(), "max_lifetime_s") || !strings.Contains(err.Error(), "105 s") {
		t.Fatalf("fork of the fork at 45 s (would live to 105 s): %v", err)
	}
	// A caller cannot set the line's start itself.
	forged := &tartarus.CreateRequest{Template: "base", TimeoutS: 60, Metadata: map[string]string{lineageKey: "2030-01-01T00:00:00Z"}}
	if _, err := s.checkCreateQuota(context.Background(), "acme", forged); err != nil || forged.Metadata[lineageKey] != clk.Now().Format(time.RFC3339) {
		t.Errorf("forged lineage kept: %v %v", err, forged.Metadata)
	}
}

// TestConcurrentExecQuota: the exec slots of a tenant are counted and
// freed.
func TestConcurrentExecQuota(t *testing.T) {
	var e execSlots
	r1, err := e.acquire("acme", 2)
	if err != nil {
		t.Fatal(err)
	}
	r2, _ := e.acquire("acme", 2)
	if _, err := e.acquire("acme", 2); !errors.Is(err, tartarus.ErrQuotaExceeded) || !strings.Contains(err.Error(), "concurrent_execs") {
		t.Fatalf("third exec: %v", err)
	}
	if _, err := e.acquire("globex", 2); err != nil {
		t.Fatalf("another tenant: %v", err)
	}
	r1()
	r2()
	if n := e.count("acme"); n != 0 {
		t.Fatalf("%d slots held after release", n)
	}
}

// TestQuotaConcurrentCreates: creates sent at once to one server cannot
// together pass a quota: each reserves its sandbox from the check until
// its create returns (so some may be refused early); once they returned,
// the tenant can fill its quota exactly.
func TestQuotaConcurrentCreates(t *testing.T) {
	set := cerberus.QuotaSet{Tenants: map[string]cerberus.Quota{"acme": {RunningSandboxes: 2}}}
	ta := newQuotaAPI(t, set, nil)
	const n = 8
	codes := make(chan int, n)
	bodies := make(chan string, n)
	var wg sync.WaitGroup
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			a := ta.do(t, call{method: "POST", path: "/v1/sandboxes", tenant: "acme", body: `{"template":"base","memory_mb":128}`})
			codes <- a.status
			bodies <- string(a.body)
		}()
	}
	wg.Wait()
	close(codes)
	got := map[int]int{}
	for c := range codes {
		got[c]++
	}
	if got[http.StatusCreated] < 1 || got[http.StatusCreated] > 2 || got[http.StatusCreated]+got[http.StatusTooManyRequests] != n {
		close(bodies)
		for b := range bodies {
			t.Log(b)
		}
		t.Fatalf("statuses %v: want 1 or 2 created, the rest refused with 429", got)
	}
	for range 2 - got[http.StatusCreated] {
		if a := ta.do(t, call{method: "POST", path: "/v1/sandboxes", tenant: "acme", body: `{"template":"base","memory_mb":128}`}); a.status != 201 {
			t.Fatalf("filling the quota after the burst: %d %s", a.status, a.body)
		}
	}
	if a := ta.do(t, call{method: "POST", path: "/v1/sandboxes", tenant: "acme", body: `{"template":"base","memory_mb":128}`}); a.status != 429 {
		t.Fatalf("past the quota: %d %s", a.status, a.body)
	}
}
