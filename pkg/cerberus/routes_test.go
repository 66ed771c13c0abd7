package cerberus

import (
	"fmt"
	"net/url"
	"strings"
	"testing"
	"time"
)

func TestAPIKeyRoutes(t *testing.T) {
	e := newTestEnv(t, false)
	admin := "Bearer " + string(e.key(DefaultTenant, AdminRole))
	acmeAdmin := "Bearer " + string(e.key("acme", "tenant-admin"))
	acmeUser := "Bearer " + string(e.key("acme", "sandbox-user"))

	// An admin makes a key for acme; the secret is in the answer once.
	a := e.do(nil, "POST", "/v1/apikeys", admin, map[string]any{"tenant": "acme", "roles": []string{"sandbox-user"}, "expires_in": "30d", "name": "ci"})
	if a.status != 201 {
		t.Fatalf("create: %d %s", a.status, a.raw)
	}
	secret := a.body["secret"].(string)
	key := a.body["api_key"].(map[string]any)
	keyID := key["id"].(string)
	if !strings.HasPrefix(secret, KeyPrefix+keyID+"_") || key["created_by"] != "service:"+KeyPrefix+strings.Split(strings.TrimPrefix(admin, "Bearer "+KeyPrefix), "_")[0] {
		t.Fatalf("create answer %s", a.raw)
	}
	exp, _ := time.Parse(time.RFC3339, key["expires_at"].(string))
	if d := exp.Sub(e.clock.Now()); d != 30*24*time.Hour {
		t.Fatalf("expires in %v", d)
	}
	if a := e.do(nil, "GET", "/v1/sandboxes/sb-acme", "Bearer "+secret, nil); a.status != 200 {
		t.Fatalf("new key does not work: %d %s", a.status, a.raw)
	}

	tests := []struct {
		name, auth, method, path string
		body                     any
		status                   int
		contains                 string
	}{
		{"tenant admin lists own keys", acmeAdmin, "GET", "/v1/apikeys", nil, 200, keyID},
		{"listing holds no secret", acmeAdmin, "GET", "/v1/apikeys", nil, 200, ""},
		{"tenant admin may not list all tenants", acmeAdmin, "GET", "/v1/apikeys?tenant=*", nil, 403, ""},
		{"admin lists all tenants", admin, "GET", "/v1/apikeys?tenant=*", nil, 200, `"tenant_id":"default"`},
		{"user may not list keys", acmeUser, "GET", "/v1/apikeys", nil, 403, "permission"},
		{"user may not create keys", acmeUser, "POST", "/v1/apikeys", map[string]any{"roles": []string{"sandbox-user"}}, 403, ""},
		{"tenant admin grants a role it holds", acmeAdmin, "POST", "/v1/apikeys", map[string]any{"roles": []string{"sandbox-user"}}, 201, `"tenant_id":"acme"`},
		{"tenant admin may not grant platform-admin", acmeAdmin, "POST", "/v1/apikeys", map[string]any{"roles": []string{AdminRole}}, 403, "does not hold"},
		{"tenant admin may not mint for another tenant", acmeAdmin, "POST", "/v1/apikeys", map[string]any{"tenant": "globex", "roles": []string{"viewer"}}, 403, ""},
		{"unknown role", admin, "POST", "/v1/apikeys", map[string]any{"tenant": "acme", "roles": []string{"wizard"}}, 400, "not in the policy"},
		{"bad lifetime", admin, "POST", "/v1/apikeys", map[string]any{"tenant": "acme", "roles": []string{"viewer"}, "expires_in": "soon"}, 400, "lifetime"},
		{"unknown field", admin, "POST", "/v1/apikeys", map[string]any{"tenant": "acme", "roles": []string{"viewer"}, "secret": "x"}, 400, "unknown field"},
		{"bad tenant name", admin, "POST", "/v1/apikeys", map[string]any{"tenant": "../etc", "roles": []string{"viewer"}}, 400, "not a valid name"},
		{"revoke another tenant's key is 404", "Bearer " + string(e.key("globex", "tenant-admin")), "DELETE", "/v1/apikeys/" + keyID, nil, 404, ""},
		{"revoke unknown key", admin, "DELETE", "/v1/apikeys/ffffffffffff", nil, 404, ""},
		{"tenant admin revokes own tenant's key", acmeAdmin, "DELETE", "/v1/apikeys/" + keyID, nil, 200, `"revoked":true`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a := e.do(nil, tt.method, tt.path, tt.auth, tt.body)
			if a.status != tt.status || !strings.Contains(a.raw, tt.contains) {
				t.Fatalf("%d %s; want %d containing %q", a.status, a.raw, tt.status, tt.contains)
			}
			if strings.Contains(a.raw, "secret_sha256") || (tt.method == "GET" && strings.Contains(a.raw, `"secret"`)) {
				t.Fatalf("answer shows secret material: %s", a.raw)
			}
		})
	}
	a = e.do(nil, "GET", "/v1/sandboxes/sb-acme", "Bearer "+secret, nil)
	if a.status != 401 || a.errField("reason") != ReasonRevoked {
		t.Fatalf("revoked key: %d %s", a.status, a.raw)
	}
	e.assertNoSecrets(secret)
}

func TestKeyMadeByExpiringKeyExpiresWithIt(t *testing.T) {
	e := newTestEnv(t, false)
	_, parent, _ := e.keys.Create(t.Context(), KeySpec{TenantID: "acme", Roles: []string{"tenant-admin"}, ExpiresAt: e.clock.Now().Add(time.Hour)})
	for _, body := range []map[string]any{
		{"roles": []string{"viewer"}},
		{"roles": []string{"viewer"}, "expires_in": "30d"},
	} {
		a := e.do(nil, "POST", "/v1/apikeys", "Bearer "+string(parent), body)
		if a.status != 201 {
			t.Fatalf("%d %s", a.status, a.raw)
		}
		exp, _ := time.Parse(time.RFC3339, a.body["api_key"].(map[string]any)["expires_at"].(string))
		if !exp.Equal(e.clock.Now().Add(time.Hour)) {
			t.Fatalf("child expires %v, parent at %v", exp, e.clock.Now().Add(time.Hour))
		}
	}
	a := e.do(nil, "POST", "/v1/apikeys", "Bearer "+string(parent), map[string]any{"roles": []string{"viewer"}, "expires_in": "10m"})
	exp, _ := time.Parse(time.RFC3339, a.body["api_key"].(map[string]any)["expires_at"].(string))
	if !exp.Equal(e.clock.Now().Add(10 * time.Minute)) {
		t.Fatalf("shorter lifetime not kept: %v", exp)
	}
}

func TestAuditRoute(t *testing.T) {
	e := newTestEnv(t, false)
	admin := "Bearer " + string(e.key(DefaultTenant, AdminRole))
	acmeAdmin := "Bearer " + string(e.key("acme", "tenant-admin"))
	acmeUser := "Bearer " + string(e.key("acme", "sandbox-user"))
	globexUser := "Bearer " + string(e.key("globex", "sandbox-user"))
	e.do(nil, "GET", "/v1/sandboxes/sb-acme", acmeUser, nil)
	e.clock.Advance(time.Second)
	mark := e.clock.Now()
	e.clock.Advance(time.Second)
	e.do(nil, "GET", "/v1/sandboxes/sb-globex", acmeUser, nil) // denied, hidden as 404
	e.do(nil, "GET", "/v1/sandboxes/sb-globex", globexUser, nil)
	e.do(nil, "GET", "/v1/whoami", "Bearer tk_bad", nil)

	query := func(auth string, q url.Values) []any {
		t.Helper()
		a := e.do(nil, "GET", "/v1/audit?"+q.Encode(), auth, nil)
		if a.status != 200 {
			t.Fatalf("audit %v: %d %s", q, a.status, a.raw)
		}
		return a.body["entries"].([]any)
	}
	if n := len(query(acmeAdmin, url.Values{})); n != 2 {
		t.Errorf("acme admin sees %d entries, want 2 (acme's two requests)", n)
	}
	denied := query(admin, url.Values{"tenant": {"*"}, "result": {"denied"}})
	if len(denied) != 2 {
		t.Fatalf("denied entries: %v", denied)
	}
	first := denied[0].(map[string]any)
	if !strings.Contains(fmt.Sprint(first["reason"]), `only where tenant is "acme"`) || first["action"] != "read" {
		t.Errorf("denied entry %v", first)
	}
	if n := len(query(admin, url.Values{"tenant": {"*"}, "since": {mark.Format(time.RFC3339Nano)}, "limit": {"1"}})); n != 1 {
		t.Errorf("limit 1 gave %d", n)
	}
	if n := len(query(admin, url.Values{"tenant": {"globex"}})); n != 2 {
		t.Errorf("globex entries %d, want 2 (acme's denied try on a globex sandbox and globex's own)", n)
	}
	if a := e.do(nil, "GET", "/v1/audit?tenant=globex", acmeAdmin, nil); a.status != 403 {
		t.Errorf("acme admin reads globex audit: %d", a.status)
	}
	if a := e.do(nil, "GET", "/v1/audit", acmeUser, nil); a.status != 403 {
		t.Errorf("sandbox-user reads audit: %d", a.status)
	}
	if a := e.do(nil, "GET", "/v1/audit?limit=0", admin, nil); a.status != 400 {
		t.Errorf("limit=0: %d", a.status)
	}
}

func TestParseTTL(t *testing.T) {
	tests := []struct {
		in   string
		want time.Duration
	}{
		{"30d", 30 * 24 * time.Hour}, {"2w", 14 * 24 * time.Hour}, {"12h", 12 * time.Hour}, {"90m", 90 * time.Minute},
		{"0d", 0}, {"-1h", 0}, {"d", 0}, {"", 0}, {"99999999d", 0},
	}
	for _, tt := range tests {
		got, err := ParseTTL(tt.in)
		if (err != nil) != (tt.want == 0) || got != tt.want {
			t.Errorf("%q: %v %v", tt.in, got, err)
		}
	}
}
