package cerberus

import (
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/tartarus-sandbox/tartarus/pkg/clock"
)

// benchPolicy writes a policy of n rules: n/10 roles of 10 rules each over
// 50 resource types, half of them tenant-scoped, and n/10 user bindings.
func benchPolicy(n int) string {
	r := rand.New(rand.NewPCG(1, 2))
	actions := []string{"create", "read", "update", "delete", "execute", "admin"}
	var b strings.Builder
	b.WriteString("roles:\n")
	for i := 0; i < n/10; i++ {
		fmt.Fprintf(&b, "  - name: role-%d\n    permissions:\n", i)
		for j := 0; j < 10; j++ {
			fmt.Fprintf(&b, "      - resource: type-%d\n        actions: [%s, %s]\n", r.IntN(50), actions[r.IntN(6)], actions[r.IntN(6)])
			if j%2 == 0 {
				b.WriteString("        conditions:\n          tenant: \"{{identity.tenant_id}}\"\n")
			}
		}
	}
	b.WriteString("bindings:\n")
	for i := 0; i < n/10; i++ {
		fmt.Fprintf(&b, "  - identity: \"user:u%d\"\n    roles: [role-%d]\n  - identity: \"group:g%d\"\n    roles: [role-%d]\n", i, i, i, (i+1)%(n/10))
	}
	return b.String()
}

// benchDecisions runs decide over a fixed mix of callers and requests and
// reports the median and 99th percentile of one decision.
func benchDecisions(b *testing.B, p *Policy, roles int) {
	r := rand.New(rand.NewPCG(3, 4))
	type q struct {
		id     *Identity
		action Action
		res    Resource
	}
	var qs []q
	actions := []Action{ActionCreate, ActionRead, ActionUpdate, ActionDelete, ActionExecute, ActionAdmin}
	for range 1024 {
		u := r.IntN(roles)
		id := &Identity{ID: fmt.Sprintf("u%d", u), Type: IdentityTypeUser, TenantID: "acme",
			Groups: []string{fmt.Sprintf("g%d", r.IntN(roles)), fmt.Sprintf("g%d", r.IntN(roles))},
			Roles:  []string{fmt.Sprintf("role-%d", r.IntN(roles))}}
		tenant := "acme"
		if r.IntN(4) == 0 {
			tenant = "globex"
		}
		qs = append(qs, q{id, actions[r.IntN(6)], Resource{Type: ResourceType(fmt.Sprintf("type-%d", r.IntN(50))), ID: "x", TenantID: tenant}})
	}
	lat := make([]time.Duration, 0, b.N)
	allowed := 0
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		c := qs[i%len(qs)]
		t0 := time.Now()
		d := p.Decide(c.id, c.action, c.res)
		lat = append(lat, time.Since(t0))
		if d.Allowed {
			allowed++
		}
	}
	b.StopTimer()
	reportPercentiles(b, lat)
	b.ReportMetric(float64(allowed)/float64(len(lat))*100, "%allowed")
}

func reportPercentiles(b *testing.B, lat []time.Duration) {
	if len(lat) == 0 {
		return
	}
	slices.Sort(lat)
	b.ReportMetric(float64(lat[len(lat)/2].Nanoseconds()), "p50-ns")
	b.ReportMetric(float64(lat[len(lat)*99/100].Nanoseconds()), "p99-ns")
}

func BenchmarkAuthorize(b *testing.B) {
	for _, n := range []int{100, 1000, 10000} {
		p, err := ParsePolicy([]byte(benchPolicy(n)))
		if err != nil {
			b.Fatal(err)
		}
		if p.Rules() != n {
			b.Fatalf("%d rules, want %d", p.Rules(), n)
		}
		b.Run(fmt.Sprintf("rules=%d", n), func(b *testing.B) { benchDecisions(b, p, n/10) })
	}
}

// BenchmarkAuthorizeOneRole is the index's worst case: every rule in one
// role, on one resource type and action, each with a condition that fails
// but the last, so a decision walks all of them.
func BenchmarkAuthorizeOneRole(b *testing.B) {
	for _, n := range []int{100, 1000, 10000} {
		var sb strings.Builder
		sb.WriteString("roles:\n  - name: big\n    permissions:\n")
		for i := range n {
			fmt.Fprintf(&sb, "      - resource: sandbox\n        actions: [read]\n        conditions:\n          id: sb-%d\n", i)
		}
		p, err := ParsePolicy([]byte(sb.String()))
		if err != nil {
			b.Fatal(err)
		}
		id := &Identity{ID: "x", Type: IdentityTypeUser, TenantID: "t", Roles: []string{"big"}}
		res := Resource{Type: ResourceTypeSandbox, ID: fmt.Sprintf("sb-%d", n-1)}
		b.Run(fmt.Sprintf("rules=%d", n), func(b *testing.B) {
			lat := make([]time.Duration, 0, b.N)
			for b.Loop() {
				t0 := time.Now()
				if !p.Decide(id, ActionRead, res).Allowed {
					b.Fatal("denied")
				}
				lat = append(lat, time.Since(t0))
			}
			reportPercentiles(b, lat)
		})
	}
}

func BenchmarkParsePolicy10000(b *testing.B) {
	src := []byte(benchPolicy(10000))
	b.SetBytes(int64(len(src)))
	for b.Loop() {
		if _, err := ParsePolicy(src); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkGateway measures one request through Wrap (authenticate,
// authorize, durable audit append) against the same handler behind the
// open guard, in one run. Requests are served in-process (no sockets), so
// the difference is the gateway's own cost; the audit log is on the test's
// temporary directory and each entry is fsync'd.
func BenchmarkGateway(b *testing.B) {
	clk := clock.System{}
	dir := b.TempDir()
	keys, _ := OpenKeyStore(filepath.Join(dir, "apikeys.json"), clk)
	audit, err := OpenAuditLog(AuditLogConfig{Dir: filepath.Join(dir, "audit"), Clock: clk, MaxSize: 1 << 30})
	if err != nil {
		b.Fatal(err)
	}
	defer audit.Close()
	iss := newTestIssuer(b)
	oidcV, _ := NewOIDCVerifier(OIDCConfig{Issuer: iss.srv.URL, Audience: "tartarus"}, clk, slog.New(slog.DiscardHandler))
	cb, err := New(Config{Keys: keys, OIDC: oidcV, Policy: StaticPolicy(DefaultPolicy()), Audit: audit, Clock: clk})
	if err != nil {
		b.Fatal(err)
	}
	_, secret, _ := keys.Create(b.Context(), KeySpec{TenantID: "acme", Roles: []string{"sandbox-user"}})
	jwt := iss.sign("rsa-1", with(iss.claims(time.Now()), "exp", time.Now().Add(24*time.Hour).Unix()))
	jwtES := iss.sign("ec-1", with(iss.claims(time.Now()), "exp", time.Now().Add(24*time.Hour).Unix()))

	handler := func(g Guard) http.Handler {
		return g.Wrap(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if err := g.Authorize(r.Context(), ActionRead, Resource{Type: ResourceTypeSandbox, ID: "sb-1", TenantID: IdentityFrom(r.Context()).TenantID}); err != nil {
				w.WriteHeader(403)
				return
			}
			w.Write([]byte(`{"id":"sb-1"}`))
		}))
	}
	cases := []struct {
		name string
		h    http.Handler
		auth string
	}{
		{"auth=off", handler(Open()), ""},
		{"apikey", handler(cb.Guard()), "Bearer " + string(secret)},
		{"jwt-RS256", handler(cb.Guard()), "Bearer " + jwt},
		{"jwt-ES256", handler(cb.Guard()), "Bearer " + jwtES},
	}
	// The same gateway with its audit log on tmpfs, where fsync costs
	// nothing: the difference to the cases above is the fsync.
	if shm, err := os.MkdirTemp("/dev/shm", "cerberus-bench"); err == nil {
		defer os.RemoveAll(shm)
		shmAudit, err := OpenAuditLog(AuditLogConfig{Dir: shm, Clock: clk, MaxSize: 1 << 30})
		if err != nil {
			b.Fatal(err)
		}
		defer shmAudit.Close()
		cbShm, _ := New(Config{Keys: keys, OIDC: oidcV, Policy: StaticPolicy(DefaultPolicy()), Audit: shmAudit, Clock: clk})
		noCache, _ := NewOIDCVerifier(OIDCConfig{Issuer: iss.srv.URL, Audience: "tartarus", TokenCacheTTL: -1}, clk, slog.New(slog.DiscardHandler))
		cbNoCache, _ := New(Config{Keys: keys, OIDC: noCache, Policy: StaticPolicy(DefaultPolicy()), Audit: shmAudit, Clock: clk})
		cases = append(cases,
			struct {
				name string
				h    http.Handler
				auth string
			}{"apikey-audit-on-tmpfs", handler(cbShm.Guard()), "Bearer " + string(secret)},
			struct {
				name string
				h    http.Handler
				auth string
			}{"jwt-RS256-audit-on-tmpfs", handler(cbShm.Guard()), "Bearer " + jwt},
			struct {
				name string
				h    http.Handler
				auth string
			}{"jwt-RS256-uncached-audit-on-tmpfs", handler(cbNoCache.Guard()), "Bearer " + jwt},
			struct {
				name string
				h    http.Handler
				auth string
			}{"jwt-ES256-uncached-audit-on-tmpfs", handler(cbNoCache.Guard()), "Bearer " + jwtES})
	}
	for _, c := range cases {
		b.Run(c.name, func(b *testing.B) {
			req := httptest.NewRequest("GET", "/v1/sandboxes/sb-1", nil)
			if c.auth != "" {
				req.Header.Set("Authorization", c.auth)
			}
			lat := make([]time.Duration, 0, b.N)
			for b.Loop() {
				w := httptest.NewRecorder()
				t0 := time.Now()
				c.h.ServeHTTP(w, req)
				lat = append(lat, time.Since(t0))
				if w.Code != 200 {
					b.Fatalf("status %d: %s", w.Code, w.Body)
				}
			}
			reportPercentiles(b, lat)
		})
	}
}

// BenchmarkAuditAppend is one durable (fsync'd) audit append, from one
// goroutine and from 16 at once: with group commit the parallel case shares
// fsyncs, so its time per entry is far below one fsync.
func BenchmarkAuditAppend(b *testing.B) {
	rec := AuditRecord{Timestamp: time.Now(), RequestID: "0123456789abcdef", Result: AuditResultSuccess,
		Identity: &AuditIdentity{ID: "tk_0123456789ab", Type: IdentityTypeService, TenantID: "acme", Roles: []string{"sandbox-user"}},
		Action:   ActionRead, Resource: AuditResource{Type: ResourceTypeSandbox, ID: "sb-1", TenantID: "acme"}, Method: "GET", Path: "/v1/sandboxes/sb-1", Status: 200}
	for _, par := range []int{1, 16} {
		b.Run(fmt.Sprintf("goroutines=%d", par), func(b *testing.B) {
			l, err := OpenAuditLog(AuditLogConfig{Dir: b.TempDir(), MaxSize: 1 << 30})
			if err != nil {
				b.Fatal(err)
			}
			defer l.Close()
			b.SetParallelism(par) // × GOMAXPROCS goroutines
			if par == 1 {
				for b.Loop() {
					if err := l.Append(b.Context(), rec); err != nil {
						b.Fatal(err)
					}
				}
				return
			}
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if err := l.Append(b.Context(), rec); err != nil {
						b.Error(err)
						return
					}
				}
			})
		})
	}
}

// BenchmarkAuditChain is the cost of the hash chain: an audit write with
// and without it, durable (Append, one fsync each from one goroutine) and
// lazy (AppendLazy, the write alone, where the chain's share shows).
func BenchmarkAuditChain(b *testing.B) {
	rec := AuditRecord{Timestamp: time.Now(), RequestID: "0123456789abcdef", Result: AuditResultSuccess,
		Identity: &AuditIdentity{ID: "tk_0123456789ab", Type: IdentityTypeService, TenantID: "acme", Roles: []string{"sandbox-user"}},
		Action:   ActionRead, Resource: AuditResource{Type: ResourceTypeSandbox, ID: "sb-1", TenantID: "acme"}, Method: "GET", Path: "/v1/sandboxes/sb-1", Status: 200}
	for _, durable := range []bool{true, false} {
		for _, chain := range []bool{true, false} {
			b.Run(fmt.Sprintf("durable=%v/chain=%v", durable, chain), func(b *testing.B) {
				l, err := OpenAuditLog(AuditLogConfig{Dir: b.TempDir(), MaxSize: 1 << 30})
				if err != nil {
					b.Fatal(err)
				}
				defer l.Close()
				l.noChain = !chain
				for b.Loop() {
					if durable {
						err = l.Append(b.Context(), rec)
					} else {
						err = l.AppendLazy(rec)
					}
					if err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
}
