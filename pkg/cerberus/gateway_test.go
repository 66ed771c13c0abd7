package cerberus

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/tartarus-sandbox/tartarus/pkg/clock"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

func counterValue(c prometheus.Counter) float64 {
	var m dto.Metric
	c.Write(&m)
	return m.GetCounter().GetValue()
}

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// testEnv is a Cerberus in front of a small sandbox API like Olympus's:
// sandboxes belong to tenants, another tenant's sandbox answers 404.
type testEnv struct {
	t       *testing.T
	clock   *clock.Fake
	dir     string
	cb      *Cerberus
	keys    *KeyStore
	metrics *Metrics
	logs    *lockedBuffer
	srv     *httptest.Server
	issuer  *testIssuer
	ca      *CertKey
	client  *http.Client
}

func newTestEnv(t *testing.T, tlsOn bool) *testEnv {
	t.Helper()
	e := &testEnv{t: t, clock: newFakeClock(), dir: t.TempDir(), logs: &lockedBuffer{}}
	log := slog.New(slog.NewJSONHandler(e.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	var err error
	e.keys, err = OpenKeyStore(filepath.Join(e.dir, "apikeys.json"), e.clock)
	if err != nil {
		t.Fatal(err)
	}
	audit, err := OpenAuditLog(AuditLogConfig{Dir: filepath.Join(e.dir, "audit"), Clock: e.clock})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { audit.Close() })
	e.metrics, _ = NewMetrics(prometheus.NewRegistry())
	e.issuer = newTestIssuer(t)
	pol, err := ParsePolicy([]byte(strings.Replace(DefaultPolicyYAML, "bindings: []", "bindings:", 1) + `
  - identity: "service:deployer"
    roles: [sandbox-user]
  - identity: "group:ops"
    roles: [tenant-admin]
`))
	if err != nil {
		t.Fatal(err)
	}
	cfg := Config{
		Keys: e.keys, OIDC: e.issuer.verifier(t, e.clock, nil), Policy: StaticPolicy(pol), Audit: audit,
		Metrics: e.metrics, Clock: e.clock, Log: log,
	}
	if tlsOn {
		e.ca, err = NewDevCA("test CA", time.Now(), time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		pool := x509.NewCertPool()
		pool.AddCert(e.ca.Cert)
		cfg.MTLS = &MTLSConfig{ClientCAs: pool, Clock: e.clock}
	}
	e.cb, err = New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	g := e.cb.Guard()
	mux.Handle("GET /v1/sandboxes/{id}", g.Wrap(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		tenants := map[string]string{"sb-acme": "acme", "sb-globex": "globex", "sb-default": DefaultTenant}
		id := r.PathValue("id")
		owner, ok := tenants[id]
		caller := IdentityFrom(r.Context())
		if ok {
			err = g.Authorize(r.Context(), ActionRead, Resource{Type: ResourceTypeSandbox, ID: id, TenantID: owner})
		}
		switch {
		case !ok || (err != nil && owner != caller.TenantID):
			writeError(w, http.StatusNotFound, "not_found", "sandbox "+id+" not found", "")
		case err != nil:
			writeError(w, http.StatusForbidden, "permission_denied", err.Error(), "")
		default:
			writeJSON(w, http.StatusOK, map[string]string{"id": id, "tenant": owner})
		}
	})))
	mux.Handle("GET /v1/whoami", g.Wrap(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, IdentityFrom(r.Context()))
	})))
	for pattern, h := range e.cb.Routes() {
		mux.Handle(pattern, g.Wrap(h))
	}
	if tlsOn {
		srvCert, err := e.ca.IssueServer([]string{"127.0.0.1"}, time.Now(), time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		e.srv = httptest.NewUnstartedServer(mux)
		pair, _ := tls.X509KeyPair(srvCert.CertPEM, srvCert.KeyPEM)
		e.srv.TLS = &tls.Config{Certificates: []tls.Certificate{pair}, ClientAuth: tls.RequestClientCert, ClientCAs: cfg.MTLS.ClientCAs}
		e.srv.StartTLS()
		e.client = e.tlsClient(nil)
	} else {
		e.srv = httptest.NewServer(mux)
		e.client = e.srv.Client()
	}
	t.Cleanup(e.srv.Close)
	return e
}

func (e *testEnv) tlsClient(cert *CertKey) *http.Client {
	roots := x509.NewCertPool()
	roots.AddCert(e.ca.Cert)
	cfg := &tls.Config{RootCAs: roots}
	if cert != nil {
		pair, err := tls.X509KeyPair(cert.CertPEM, cert.KeyPEM)
		if err != nil {
			e.t.Fatal(err)
		}
		// Send the certificate even when the server's list of acceptable
		// CAs does not name its issuer (Go's client would otherwise hold
		// it back; curl and others do send it).
		cfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &pair, nil }
	}
	return &http.Client{Transport: &http.Transport{TLSClientConfig: cfg}}
}

func (e *testEnv) key(tenant string, roles ...string) Secret {
	e.t.Helper()
	_, s, err := e.keys.Create(context.Background(), KeySpec{TenantID: tenant, Roles: roles, CreatedBy: "test"})
	if err != nil {
		e.t.Fatal(err)
	}
	return s
}

type answer struct {
	status int
	body   map[string]any
	raw    string
}

func (e *testEnv) do(client *http.Client, method, path, auth string, body any) answer {
	e.t.Helper()
	var rd io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = bytes.NewReader(b)
	}
	req, _ := http.NewRequest(method, e.srv.URL+path, rd)
	if auth != "" {
		req.Header.Set("Authorization", auth)
	}
	if client == nil {
		client = e.client
	}
	resp, err := client.Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	a := answer{status: resp.StatusCode, raw: string(raw)}
	json.Unmarshal(raw, &a.body)
	return a
}

func (a answer) errField(name string) string {
	m, _ := a.body["error"].(map[string]any)
	s, _ := m[name].(string)
	return s
}

func (e *testEnv) auditRecords() []AuditRecord {
	e.t.Helper()
	recs, err := e.cb.AuditLog().Query(context.Background(), AuditFilter{Limit: 10000})
	if err != nil {
		e.t.Fatal(err)
	}
	return recs
}

func TestGatewayAuthentication(t *testing.T) {
	e := newTestEnv(t, false)
	ctx := context.Background()
	good := e.key("acme", "sandbox-user")
	revokedKey, revokedSecret, _ := e.keys.Create(ctx, KeySpec{TenantID: "acme", Roles: []string{"sandbox-user"}})
	e.keys.Revoke(ctx, revokedKey.ID)
	_, expiredSecret, _ := e.keys.Create(ctx, KeySpec{TenantID: "acme", Roles: []string{"sandbox-user"}, ExpiresAt: e.clock.Now().Add(time.Minute)})
	e.clock.Advance(2 * time.Minute)
	now := e.clock.Now()
	jwt := e.issuer.sign("rsa-1", e.issuer.claims(now))
	wrongAud := e.issuer.sign("rsa-1", with(e.issuer.claims(now), "aud", "other"))
	expiredJWT := e.issuer.sign("ec-1", with(e.issuer.claims(now), "exp", now.Add(-time.Second).Unix()))
	cred, _ := ParseAPIKey(string(good))
	badSecret := KeyPrefix + cred.KeyID + "_" + strings.Repeat("0", 64)

	tests := []struct {
		name   string
		auth   string
		status int
		reason string
		who    string
	}{
		{"api key", "Bearer " + string(good), 200, "", "service:" + KeyPrefix + cred.KeyID},
		{"oidc token", "Bearer " + jwt, 200, "", "user:alice@example.com"},
		{"missing", "", 401, ReasonMissing, ""},
		{"not bearer", "Basic dXNlcjpwYXNz", 401, ReasonMalformed, ""},
		{"malformed key", "Bearer tk_nothex", 401, ReasonMalformed, ""},
		{"garbage token", "Bearer hello", 401, ReasonMalformed, ""},
		{"wrong key secret", "Bearer " + badSecret, 401, ReasonInvalidKey, ""},
		{"revoked key", "Bearer " + string(revokedSecret), 401, ReasonRevoked, ""},
		{"expired key", "Bearer " + string(expiredSecret), 401, ReasonExpired, ""},
		{"expired token", "Bearer " + expiredJWT, 401, ReasonExpired, ""},
		{"wrong audience", "Bearer " + wrongAud, 401, ReasonWrongAudience, ""},
		{"wrong signature", "Bearer " + jwt[:len(jwt)-4] + "AAAA", 401, ReasonBadSignature, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a := e.do(nil, "GET", "/v1/whoami", tt.auth, nil)
			if a.status != tt.status {
				t.Fatalf("status %d, want %d: %s", a.status, tt.status, a.raw)
			}
			if tt.status == 401 {
				if a.errField("code") != "unauthenticated" || a.errField("reason") != tt.reason || a.errField("message") == "" {
					t.Fatalf("body %s, want reason %s", a.raw, tt.reason)
				}
				return
			}
			if got := string(IdentityType(a.body["Type"].(string))) + ":" + a.body["ID"].(string); got != tt.who {
				t.Fatalf("caller %s, want %s", got, tt.who)
			}
		})
	}

	// Every request, refused or not, is in the audit log with its reason.
	recs := e.auditRecords()
	if len(recs) != len(tests) {
		t.Fatalf("%d audit entries for %d requests", len(recs), len(tests))
	}
	for i, tt := range tests {
		r := recs[i]
		if tt.status == 401 && (r.Result != AuditResultDenied || !strings.Contains(r.Reason, tt.reason) || r.Status != 401) {
			t.Errorf("%s: audit %+v", tt.name, r)
		}
		if tt.status == 200 && (r.Result != AuditResultSuccess || r.Identity == nil) {
			t.Errorf("%s: audit %+v", tt.name, r)
		}
	}
	if n := counterValue(e.metrics.authFailures.WithLabelValues(ReasonRevoked)); n != 1 {
		t.Errorf("revoked failures counted %v", n)
	}
	e.assertNoSecrets(string(good), string(revokedSecret), jwt)
}

func (e *testEnv) assertNoSecrets(secrets ...string) {
	e.t.Helper()
	var files []string
	filepath.Walk(e.dir, func(p string, info os.FileInfo, err error) error {
		if err == nil && !info.IsDir() {
			files = append(files, p)
		}
		return nil
	})
	for _, s := range secrets {
		hidden := s
		if c, err := ParseAPIKey(s); err == nil {
			hidden = c.Secret
		} else if parts := strings.Split(s, "."); len(parts) == 3 {
			hidden = parts[2] // a JWT's signature
		}
		if strings.Contains(e.logs.String(), hidden) {
			e.t.Errorf("a secret is in the server log")
		}
		for _, f := range files {
			b, _ := os.ReadFile(f)
			if strings.Contains(string(b), hidden) {
				e.t.Errorf("a secret is in %s", f)
			}
		}
	}
}

func TestGatewayAuthorization(t *testing.T) {
	e := newTestEnv(t, false)
	user := "Bearer " + string(e.key("acme", "sandbox-user"))
	viewer := "Bearer " + string(e.key("acme", "nonexistent-role"))
	admin := "Bearer " + string(e.key(DefaultTenant, AdminRole))
	tests := []struct {
		name, auth, path string
		status           int
		result           AuditResult
	}{
		{"own tenant", user, "/v1/sandboxes/sb-acme", 200, AuditResultSuccess},
		{"other tenant is hidden", user, "/v1/sandboxes/sb-globex", 404, AuditResultDenied},
		{"no such sandbox", user, "/v1/sandboxes/sb-none", 404, AuditResultError},
		{"own tenant without permission", viewer, "/v1/sandboxes/sb-acme", 403, AuditResultDenied},
		{"admin sees every tenant", admin, "/v1/sandboxes/sb-globex", 200, AuditResultSuccess},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a := e.do(nil, "GET", tt.path, tt.auth, nil)
			if a.status != tt.status {
				t.Fatalf("status %d, want %d: %s", a.status, tt.status, a.raw)
			}
			recs := e.auditRecords()
			r := recs[len(recs)-1]
			if r.Result != tt.result || r.Status != tt.status {
				t.Fatalf("audit %+v", r)
			}
			if tt.status != 404 || tt.result == AuditResultDenied {
				if r.Action != ActionRead || r.Resource.Type != ResourceTypeSandbox || r.Reason == "" {
					t.Fatalf("audit lacks the decision: %+v", r)
				}
			}
		})
	}
	if n := counterValue(e.metrics.requests.WithLabelValues("denied", "read", "sandbox")); n != 2 {
		t.Errorf("denied reads counted %v, want 2", n)
	}
}

func TestGatewayMTLS(t *testing.T) {
	e := newTestEnv(t, true)
	now := time.Now()
	deployer, _ := e.ca.IssueClient("service:deployer", "acme", "", now, time.Hour)
	agent, _ := e.ca.IssueClient("agent:node-1", "", "", now, time.Hour)
	otherCA, _ := NewDevCA("someone else's CA", now, time.Hour)
	stranger, _ := otherCA.IssueClient("service:deployer", "acme", "", now, time.Hour)
	expired, _ := e.ca.IssueClient("service:deployer", "acme", "", now.Add(-2*time.Hour), time.Hour)
	noName, err := issue(&x509.Certificate{
		NotBefore: now.Add(-time.Minute), NotAfter: now.Add(time.Hour), KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}, e.ca)
	if err != nil {
		t.Fatal(err)
	}
	custom := func(cn string, ous ...string) *CertKey {
		c, err := issue(&x509.Certificate{Subject: pkix.Name{CommonName: cn, OrganizationalUnit: ous},
			NotBefore: now.Add(-time.Minute), NotAfter: now.Add(time.Hour), KeyUsage: x509.KeyUsageDigitalSignature,
			ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		}, e.ca)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	if _, err := e.ca.IssueClient("service:tk_0123456789ab", "acme", "", now, time.Hour); err == nil {
		t.Error("the dev CA issued a certificate named like an API key")
	}

	tests := []struct {
		name   string
		cert   *CertKey
		path   string
		status int
		reason string
		who    string
	}{
		{"cert named like an API key", custom("service:tk_0123456789ab", "tenant:acme"), "/v1/whoami", 401, ReasonCertAmbiguous, ""},
		{"cert with two tenants", custom("service:deployer", "tenant:globex", "tenant:acme"), "/v1/whoami", 401, ReasonCertAmbiguous, ""},
		{"cert with an empty tenant", custom("service:deployer", "tenant:"), "/v1/whoami", 401, ReasonCertAmbiguous, ""},
		{"cert with one tenant OU among others", custom("service:deployer", "engineering", "tenant:acme"), "/v1/whoami", 200, "", "service:deployer@acme"},
		{"service cert", deployer, "/v1/whoami", 200, "", "service:deployer@acme"},
		{"agent cert, default tenant", agent, "/v1/whoami", 200, "", "agent:node-1@" + DefaultTenant},
		{"bound role allows own tenant", deployer, "/v1/sandboxes/sb-acme", 200, "", ""},
		{"agent has no role", agent, "/v1/sandboxes/sb-default", 403, "", ""},
		{"unknown CA", stranger, "/v1/whoami", 401, ReasonUnknownCert, ""},
		{"expired cert", expired, "/v1/whoami", 401, ReasonExpired, ""},
		{"cert names nobody", noName, "/v1/whoami", 401, ReasonCertNoName, ""},
		{"no cert, no header", nil, "/v1/whoami", 401, ReasonMissing, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a := e.do(e.tlsClient(tt.cert), "GET", tt.path, "", nil)
			if a.status != tt.status {
				t.Fatalf("status %d, want %d: %s", a.status, tt.status, a.raw)
			}
			if tt.reason != "" && a.errField("reason") != tt.reason {
				t.Fatalf("reason %q, want %q", a.errField("reason"), tt.reason)
			}
			if tt.who != "" {
				if got := fmt.Sprintf("%s:%s@%s", a.body["Type"], a.body["ID"], a.body["TenantID"]); got != tt.who {
					t.Fatalf("caller %s, want %s", got, tt.who)
				}
			}
		})
	}
}

func TestAuthorizeWithoutIdentity(t *testing.T) {
	e := newTestEnv(t, false)
	err := e.cb.Guard().Authorize(context.Background(), ActionRead, Resource{Type: ResourceTypeSandbox})
	if !errors.Is(err, tartarus.ErrUnauthenticated) {
		t.Fatalf("got %v", err)
	}
}

func TestGatewayHandlerPanicIsAudited(t *testing.T) {
	e := newTestEnv(t, false)
	h := e.cb.Guard().Wrap(http.HandlerFunc(func(http.ResponseWriter, *http.Request) { panic("boom") }))
	req := httptest.NewRequest("GET", "/v1/x", nil)
	req.Header.Set("Authorization", "Bearer "+string(e.key("acme", "viewer")))
	func() {
		defer func() { recover() }()
		h.ServeHTTP(httptest.NewRecorder(), req)
	}()
	recs := e.auditRecords()
	if len(recs) != 1 || recs[0].Status != 500 || recs[0].Result != AuditResultError {
		t.Fatalf("audit %+v", recs)
	}
}
