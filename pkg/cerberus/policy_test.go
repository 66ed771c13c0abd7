package cerberus

import (
	"errors"
	"os"
	"strings"
	"testing"
)

func seedPolicy(t testing.TB) *Policy {
	t.Helper()
	b, err := os.ReadFile("../../policies/cerberus-rbac.yaml")
	if err != nil {
		t.Fatal(err)
	}
	p, err := ParsePolicy(b)
	if err != nil {
		t.Fatalf("seed policy: %v", err)
	}
	return p
}

func TestDecideSeedPolicy(t *testing.T) {
	p := seedPolicy(t)
	alice := &Identity{ID: "alice@example.com", Type: IdentityTypeUser, TenantID: "acme"}
	dev := &Identity{ID: "dan@example.com", Type: IdentityTypeUser, TenantID: "acme", Groups: []string{"developers"}}
	stranger := &Identity{ID: "eve@example.com", Type: IdentityTypeUser, TenantID: "acme", Groups: []string{"visitors"}}
	olympus := &Identity{ID: "olympus-api", Type: IdentityTypeService, TenantID: "system"}
	keyUser := &Identity{ID: "tk_0123456789ab", Type: IdentityTypeService, TenantID: "acme", Roles: []string{"sandbox-user"}}
	sb := func(tenant string) Resource { return Resource{Type: ResourceTypeSandbox, ID: "sb-1", TenantID: tenant} }

	tests := []struct {
		name   string
		id     *Identity
		action Action
		res    Resource
		allow  bool
		reason string // substring of the decision's reason
	}{
		{"group member reads own tenant's sandbox", dev, ActionRead, sb("acme"), true, "role sandbox-user"},
		{"group member reads other tenant's sandbox", dev, ActionRead, sb("globex"), false, `only where tenant is "acme"`},
		{"group member may not update", dev, ActionUpdate, sb("acme"), false, "no role"},
		{"group member reads templates of any tenant", dev, ActionRead, Resource{Type: ResourceTypeTemplate, ID: "base"}, true, ""},
		{"inherited create", alice, ActionCreate, sb("acme"), true, "role sandbox-admin"},
		{"sandbox-admin's own rule has no tenant condition", alice, ActionAdmin, sb("globex"), true, "policy line"},
		{"inherited permission on template", alice, ActionRead, Resource{Type: ResourceTypeTemplate}, true, ""},
		{"sandbox-admin may not touch nodes", alice, ActionRead, Resource{Type: ResourceTypeNode}, false, "no role of user:alice@example.com"},
		{"no binding at all", stranger, ActionRead, sb("acme"), false, "has no role"},
		{"wildcard role on anything", olympus, ActionAdmin, Resource{Type: ResourceTypeNode, ID: "n1"}, true, "role platform-admin"},
		{"wildcard role on unknown resource type", olympus, ActionDelete, Resource{Type: "quarantine"}, true, ""},
		{"api key role", keyUser, ActionDelete, sb("acme"), true, "role sandbox-user"},
		{"api key role other tenant", keyUser, ActionDelete, sb("globex"), false, ""},
		{"empty resource tenant never matches a tenant condition", keyUser, ActionRead, sb(""), false, ""},
		{"nil identity", nil, ActionRead, sb("acme"), false, "no identity"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := p.Decide(tt.id, tt.action, tt.res)
			if d.Allowed != tt.allow {
				t.Fatalf("allowed = %v, want %v (reason %q)", d.Allowed, tt.allow, d.Reason)
			}
			if !strings.Contains(d.Reason, tt.reason) {
				t.Errorf("reason %q does not contain %q", d.Reason, tt.reason)
			}
		})
	}
}

func TestDecideConditionsAndWildcards(t *testing.T) {
	p, err := ParsePolicy([]byte(`
roles:
  - name: own-only
    permissions:
      - resource: sandbox
        actions: ["*"]
        conditions:
          tenant: "{{identity.tenant_id}}"
          namespace: "{{ identity.attributes.team }}"
  - name: fixed
    permissions:
      - resource: "*"
        actions: read
        conditions:
          tenant: public
  - name: self
    permissions:
      - resource: apikey
        actions: [delete]
        conditions:
          id: "{{identity.id}}"
bindings:
  - identity: "group:eng-*"
    roles: [own-only]
  - identity: "service:*"
    roles: [fixed]
  - identity: "user:*"
    roles: [self]
`))
	if err != nil {
		t.Fatal(err)
	}
	eng := &Identity{ID: "bob", Type: IdentityTypeUser, TenantID: "acme", Groups: []string{"eng-core"}, Attributes: map[string]string{"team": "core"}}
	noTeam := &Identity{ID: "carol", Type: IdentityTypeUser, TenantID: "acme", Groups: []string{"eng-web"}}
	svc := &Identity{ID: "ci", Type: IdentityTypeService, TenantID: "acme"}
	tests := []struct {
		name   string
		id     *Identity
		action Action
		res    Resource
		allow  bool
	}{
		{"all conditions hold", eng, ActionExecute, Resource{Type: ResourceTypeSandbox, TenantID: "acme", Namespace: "core"}, true},
		{"namespace differs", eng, ActionExecute, Resource{Type: ResourceTypeSandbox, TenantID: "acme", Namespace: "web"}, false},
		{"missing attribute never matches", noTeam, ActionRead, Resource{Type: ResourceTypeSandbox, TenantID: "acme"}, false},
		{"literal condition", svc, ActionRead, Resource{Type: ResourceTypeTemplate, TenantID: "public"}, true},
		{"literal condition other value", svc, ActionRead, Resource{Type: ResourceTypeTemplate, TenantID: "acme"}, false},
		{"single action string", svc, ActionCreate, Resource{Type: ResourceTypeTemplate, TenantID: "public"}, false},
		{"identity id condition", eng, ActionDelete, Resource{Type: ResourceTypeAPIKey, ID: "bob"}, true},
		{"identity id condition other", eng, ActionDelete, Resource{Type: ResourceTypeAPIKey, ID: "carol"}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if d := p.Decide(tt.id, tt.action, tt.res); d.Allowed != tt.allow {
				t.Fatalf("allowed = %v, want %v (%s)", d.Allowed, tt.allow, d.Reason)
			}
		})
	}
}

func TestRoleInheritanceChain(t *testing.T) {
	p, err := ParsePolicy([]byte(`
roles:
  - name: a
    permissions: [{resource: sandbox, actions: [read]}]
  - name: b
    inherits: [a]
    permissions: [{resource: sandbox, actions: [create]}]
  - name: c
    inherits: [b]
  - name: d
    inherits: [a, b]
`))
	if err != nil {
		t.Fatal(err)
	}
	c := &Identity{ID: "x", Type: IdentityTypeUser, Roles: []string{"c"}}
	if d := p.Decide(c, ActionRead, Resource{Type: ResourceTypeSandbox}); !d.Allowed || !strings.Contains(d.Reason, "inherited from role a") {
		t.Fatalf("c read: %+v", d)
	}
	if d := p.Decide(c, ActionDelete, Resource{Type: ResourceTypeSandbox}); d.Allowed {
		t.Fatalf("c delete allowed: %+v", d)
	}
	got := strings.Join(p.RolesOf(c), ",")
	if got != "c,b,a" {
		t.Fatalf("RolesOf(c) = %s", got)
	}
	dd := &Identity{ID: "y", Type: IdentityTypeUser, Roles: []string{"d", "unknown"}}
	if got := strings.Join(p.RolesOf(dd), ","); got != "d,a,b" {
		t.Fatalf("RolesOf(d) = %s", got)
	}
}

func TestParsePolicyErrors(t *testing.T) {
	tests := []struct {
		name string
		yaml string
		line int
		want string
	}{
		{"not yaml", "roles:\n  - name: a\n    x: \"unterminated\n", 3, "not valid YAML"},
		{"empty", "", 0, "file is empty"},
		{"no roles", "bindings: []\n", 1, "no roles"},
		{"unknown top key", "roles: []\nrules: []\n", 2, `unknown key "rules"`},
		{"unknown action", "roles:\n  - name: a\n    permissions:\n      - resource: sandbox\n        actions: [read, rm]\n", 5, `unknown action "rm"`},
		{"bad resource", "roles:\n  - name: a\n    permissions:\n      - resource: Sand Box\n        actions: [read]\n", 4, "not a resource type"},
		{"no actions", "roles:\n  - name: a\n    permissions:\n      - resource: sandbox\n", 4, "no actions"},
		{"role without name", "roles:\n  - permissions: []\n", 2, "no name"},
		{"duplicate role", "roles:\n  - name: a\n  - name: a\n", 3, "defined twice (first at line 2)"},
		{"unknown inherit", "roles:\n  - name: a\n    inherits: [ghost]\n", 3, `inherits unknown role "ghost"`},
		{"cycle", "roles:\n  - name: a\n    inherits: [b]\n  - name: b\n    inherits: [c]\n  - name: c\n    inherits: [a]\n", 2, "cycle: a → b → c → a"},
		{"self cycle", "roles:\n  - name: a\n    inherits: [a]\n", 2, "cycle: a → a"},
		{"bad template", "roles:\n  - name: a\n    permissions:\n      - resource: sandbox\n        actions: [read]\n        conditions:\n          tenant: \"{{identity.password}}\"\n", 7, "not a known template"},
		{"unknown condition", "roles:\n  - name: a\n    permissions:\n      - resource: sandbox\n        actions: [read]\n        conditions:\n          owner: x\n", 7, `unknown key "owner"`},
		{"binding unknown role", "roles:\n  - name: a\nbindings:\n  - identity: user:x\n    roles: [b]\n", 5, `unknown role "b"`},
		{"binding bad principal", "roles:\n  - name: a\nbindings:\n  - identity: alice\n    roles: [a]\n", 4, "must start with one of"},
		{"binding inner wildcard", "roles:\n  - name: a\nbindings:\n  - identity: user:*@x.com\n    roles: [a]\n", 4, "only end"},
		{"roles not a list", "roles: {a: 1}\n", 1, "must be a list"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ParsePolicy([]byte(tt.yaml))
			if err == nil {
				t.Fatal("parsed without error")
			}
			var pe *PolicyError
			if !errors.As(err, &pe) {
				t.Fatalf("error %v is not a PolicyError", err)
			}
			if pe.Line != tt.line || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("got %q (line %d), want line %d containing %q", err, pe.Line, tt.line, tt.want)
			}
		})
	}
}

func TestParsePolicyReportsEveryProblem(t *testing.T) {
	_, err := ParsePolicy([]byte("roles:\n  - name: a\n    permissions:\n      - resource: sandbox\n        actions: [rm]\n      - resource: node\n        actions: [zap]\n"))
	if err == nil || !strings.Contains(err.Error(), "line 5") || !strings.Contains(err.Error(), "line 7") {
		t.Fatalf("want both line 5 and 7, got %v", err)
	}
}

func TestDefaultPolicy(t *testing.T) {
	p := DefaultPolicy()
	for _, r := range []string{AdminRole, "sandbox-user", "tenant-admin", "viewer"} {
		if !p.HasRole(r) {
			t.Errorf("default policy lacks %s", r)
		}
	}
	user := &Identity{ID: "tk_1", Type: IdentityTypeService, TenantID: "acme", Roles: []string{"sandbox-user"}}
	if !p.Decide(user, ActionExecute, Resource{Type: ResourceTypeSandbox, TenantID: "acme"}).Allowed {
		t.Error("sandbox-user cannot exec in own tenant")
	}
	if p.Decide(user, ActionExecute, Resource{Type: ResourceTypeSandbox, TenantID: "other"}).Allowed {
		t.Error("sandbox-user can exec in another tenant")
	}
	if p.Decide(user, ActionCreate, Resource{Type: ResourceTypeAPIKey, TenantID: "acme"}).Allowed {
		t.Error("sandbox-user can create api keys")
	}
}

func FuzzParsePolicy(f *testing.F) {
	seed, _ := os.ReadFile("../../policies/cerberus-rbac.yaml")
	f.Add(string(seed))
	f.Add(DefaultPolicyYAML)
	f.Add("roles:\n  - name: a\n    inherits: [a]\n")
	f.Add("roles: [{name: a, permissions: [{resource: '*', actions: ['*'], conditions: {tenant: '{{identity.tenant_id}}'}}]}]\nbindings: [{identity: 'group:x*', roles: [a]}]")
	f.Add("a: &a [*a, *a]\n")
	f.Add(DefaultPolicyYAML + "quotas:\n  default: {running_sandboxes: 5}\n  tenants:\n    acme: {memory_mb: 1024, max_lifetime_s: 60}\n")
	f.Add("roles: [{name: a}]\nquotas: {tenants: {x: {vcpus: 99999999999}}}\n")
	f.Fuzz(func(t *testing.T, s string) {
		p, err := ParsePolicy([]byte(s))
		if err != nil {
			var pe *PolicyError
			if !errors.As(err, &pe) {
				t.Fatalf("error is not a PolicyError: %v", err)
			}
			return
		}
		id := &Identity{ID: "x", Type: IdentityTypeUser, TenantID: "t", Groups: []string{"g"}, Roles: p.Roles()}
		for _, a := range append(knownActions, "*") {
			p.Decide(id, a, Resource{Type: ResourceTypeSandbox, TenantID: "t"})
		}
		p.RolesOf(id)
		p.Quotas().For("t")
	})
}

// TestDefaultPolicyFinerActions: the built-in viewer sees its tenant's
// sandboxes but cannot take or change their content; sandbox-user can do
// everything it could before the finer actions, and each action is its own.
func TestDefaultPolicyFinerActions(t *testing.T) {
	p := DefaultPolicy()
	own := Resource{Type: ResourceTypeSandbox, ID: "sb-1", TenantID: "acme", Runtime: "microvm"}
	other := Resource{Type: ResourceTypeSandbox, ID: "sb-2", TenantID: "globex", Runtime: "microvm"}
	viewer := &Identity{ID: "tk_v", Type: IdentityTypeService, TenantID: "acme", Roles: []string{"viewer"}}
	user := &Identity{ID: "tk_u", Type: IdentityTypeService, TenantID: "acme", Roles: []string{"sandbox-user"}}
	tests := []struct {
		action       Action
		viewer, user bool
	}{
		{ActionRead, true, true},
		{ActionReadFiles, false, true},
		{ActionWriteFiles, false, true},
		{ActionExecute, false, true},
		{ActionFork, false, true},
		{ActionSnapshot, false, true},
		{ActionChooseRuntime, false, true},
		{ActionCreate, false, true},
		{ActionUpdate, false, true},
		{ActionDelete, false, true},
		{ActionAdmin, false, false},
	}
	for _, tt := range tests {
		t.Run(string(tt.action), func(t *testing.T) {
			if d := p.Decide(viewer, tt.action, own); d.Allowed != tt.viewer {
				t.Errorf("viewer %s: %+v, want allowed=%v", tt.action, d, tt.viewer)
			}
			if d := p.Decide(user, tt.action, own); d.Allowed != tt.user {
				t.Errorf("sandbox-user %s: %+v, want allowed=%v", tt.action, d, tt.user)
			}
			if d := p.Decide(user, tt.action, other); d.Allowed {
				t.Errorf("sandbox-user %s on another tenant's sandbox: %+v", tt.action, d)
			}
		})
	}
	if _, err := ParsePolicy([]byte("roles:\n  - name: r\n    permissions:\n      - resource: sandbox\n        actions: [download]\n")); err == nil ||
		!strings.Contains(err.Error(), "read_files") {
		t.Errorf("an unknown action's error does not list the known ones: %v", err)
	}
}

func TestPolicyQuotas(t *testing.T) {
	p, err := ParsePolicy([]byte(DefaultPolicyYAML + `
quotas:
  default: {running_sandboxes: 5, memory_mb: 4096, max_lifetime_s: 3600}
  tenants:
    acme: {running_sandboxes: 50, snapshot_bytes: 1073741824}
    tiny: {vcpus: 1}
`))
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		tenant string
		want   Quota
	}{
		{"acme", Quota{RunningSandboxes: 50, MemoryMB: 4096, SnapshotBytes: 1 << 30, MaxLifetimeS: 3600}},
		{"tiny", Quota{RunningSandboxes: 5, MemoryMB: 4096, VCPUs: 1, MaxLifetimeS: 3600}},
		{"other", Quota{RunningSandboxes: 5, MemoryMB: 4096, MaxLifetimeS: 3600}},
	}
	for _, tt := range tests {
		if got := p.Quotas().For(tt.tenant); got != tt.want {
			t.Errorf("%s: %+v, want %+v", tt.tenant, got, tt.want)
		}
	}
	if got := DefaultPolicy().Quotas().For("acme"); got != (Quota{}) {
		t.Errorf("the built-in policy has quotas: %+v", got)
	}
	for _, bad := range []string{
		"quotas:\n  default: {running_sandboxes: -1}\n",
		"quotas:\n  default: {sandboxes: 1}\n",
		"quotas:\n  tenants: [acme]\n",
		"quotas:\n  default: {memory_mb: lots}\n",
	} {
		if _, err := ParsePolicy([]byte(DefaultPolicyYAML + bad)); err == nil || !strings.Contains(err.Error(), "line") {
			t.Errorf("%q: %v, want an error with its line", bad, err)
		}
	}
}

// TestDefaultPolicyRuntimes: ordinary tenants may name the runtimes with a
// kernel of their own (microvm, gvisor); docker and containerd take the
// any-runtime role, and only for the caller's own tenant.
func TestDefaultPolicyRuntimes(t *testing.T) {
	p := DefaultPolicy()
	tests := []struct {
		role, runtime, tenant string
		want                  bool
	}{
		{"sandbox-user", "microvm", "acme", true},
		{"sandbox-user", "gvisor", "acme", true},
		{"sandbox-user", "docker", "acme", false},
		{"sandbox-user", "containerd", "acme", false},
		{"sandbox-user", "microvm", "globex", false},
		{"tenant-admin", "gvisor", "acme", true},
		{"tenant-admin", "docker", "acme", false},
		{"viewer", "microvm", "acme", false},
		{"any-runtime", "docker", "acme", true},
		{"any-runtime", "containerd", "acme", true},
		{"any-runtime", "docker", "globex", false},
		{"platform-admin", "docker", "globex", true},
	}
	for _, tt := range tests {
		t.Run(tt.role+"/"+tt.runtime+"/"+tt.tenant, func(t *testing.T) {
			id := &Identity{ID: "tk", Type: IdentityTypeService, TenantID: "acme", Roles: []string{tt.role}}
			d := p.Decide(id, ActionChooseRuntime, Resource{Type: ResourceTypeSandbox, TenantID: tt.tenant, Runtime: tt.runtime})
			if d.Allowed != tt.want {
				t.Errorf("%+v, want allowed=%v", d, tt.want)
			}
		})
	}
	// A runtime condition holds only for choose_runtime: a create (which
	// carries no runtime) is not allowed by it.
	pol, err := ParsePolicy([]byte("roles:\n  - name: r\n    permissions:\n      - resource: sandbox\n        actions: [create, choose_runtime]\n        conditions:\n          runtime: docker\n"))
	if err != nil {
		t.Fatal(err)
	}
	id := &Identity{ID: "tk", Type: IdentityTypeService, TenantID: "acme", Roles: []string{"r"}}
	if d := pol.Decide(id, ActionCreate, Resource{Type: ResourceTypeSandbox, TenantID: "acme"}); d.Allowed {
		t.Errorf("create allowed by a runtime-conditioned rule: %+v", d)
	}
	if d := pol.Decide(id, ActionChooseRuntime, Resource{Type: ResourceTypeSandbox, TenantID: "acme", Runtime: "docker"}); !d.Allowed {
		t.Errorf("choose_runtime docker: %+v", d)
	}
}
