package olympus

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/tartarus-sandbox/tartarus/pkg/cerberus"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

// policyGuard is testGuard deciding with a real policy, the caller's roles
// taken from X-Test-Roles.
type policyGuard struct{ p *cerberus.Policy }

func (policyGuard) Wrap(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		t := r.Header.Get("X-Test-Tenant")
		id := &cerberus.Identity{ID: "tk_" + t, Type: cerberus.IdentityTypeService, TenantID: t,
			Roles: strings.Split(r.Header.Get("X-Test-Roles"), ",")}
		next.ServeHTTP(w, r.WithContext(cerberus.WithIdentity(r.Context(), id)))
	})
}

func (g policyGuard) Authorize(ctx context.Context, action cerberus.Action, res cerberus.Resource) error {
	id := cerberus.IdentityFrom(ctx)
	if d := g.p.Decide(id, action, res); !d.Allowed {
		return tartarus.Errorf(tartarus.ErrPermissionDenied, "%s", d.Reason)
	}
	return nil
}

// TestCreateRuntimeIsPolicy: under the built-in policy a sandbox-user may
// name microvm or gvisor but gets 403 naming the runtime and the permission
// for docker or containerd; the any-runtime role lets it through to the
// node (which here has neither, so 400). Naming no runtime needs no grant.
func TestCreateRuntimeIsPolicy(t *testing.T) {
	ta := newTestAPI(t)
	s, err := New(Config{Backend: ta.agent, Guard: policyGuard{cerberus.DefaultPolicy()}})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(s)
	t.Cleanup(srv.Close)
	ta.srv = srv
	tests := []struct {
		roles, runtime string
		status         int
		code, want     string
	}{
		{"sandbox-user", "", 201, "", ""},
		{"sandbox-user", "docker", 403, "permission_denied", "may not create sandboxes in the docker runtime: that needs the choose_runtime permission for runtime docker"},
		{"tenant-admin", "containerd", 403, "permission_denied", "containerd runtime"},
		{"sandbox-user", "microvm", 400, "invalid_argument", "not enabled"},
		{"sandbox-user", "gvisor", 400, "invalid_argument", "not enabled"},
		{"sandbox-user,any-runtime", "docker", 400, "invalid_argument", "not enabled"},
		{"sandbox-user,any-runtime", "fake", 201, "", ""},
		{"sandbox-user", "fake", 403, "permission_denied", "fake runtime"},
	}
	for _, tt := range tests {
		t.Run(tt.roles+"/"+tt.runtime, func(t *testing.T) {
			body := `{"template":"base","memory_mb":128}`
			if tt.runtime != "" {
				body = `{"template":"base","memory_mb":128,"runtime":"` + tt.runtime + `"}`
			}
			a := ta.do(t, call{method: "POST", path: "/v1/sandboxes", tenant: "acme", body: body,
				header: map[string]string{"X-Test-Roles": tt.roles}})
			if a.status != tt.status || a.errCode() != tt.code || !strings.Contains(string(a.body), tt.want) {
				t.Fatalf("%d %s, want %d %s containing %q", a.status, a.body, tt.status, tt.code, tt.want)
			}
		})
	}
}
