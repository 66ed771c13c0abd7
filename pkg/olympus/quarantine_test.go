package olympus

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"

	"github.com/tartarus-sandbox/tartarus/pkg/cerberus"
	"github.com/tartarus-sandbox/tartarus/pkg/clock"
	"github.com/tartarus-sandbox/tartarus/pkg/erebus"
	"github.com/tartarus-sandbox/tartarus/pkg/hecatoncheir"
	"github.com/tartarus-sandbox/tartarus/pkg/runtimes/fake"
	"github.com/tartarus-sandbox/tartarus/pkg/store"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus/api"
	"github.com/tartarus-sandbox/tartarus/pkg/typhon"
	"github.com/tartarus-sandbox/tartarus/pkg/typhon/typhonnode"
)

// newQuarantineAPI is the test API with Typhon over the fake runtime. The
// test guard lets a caller reach only its own tenant and denies the actions
// in X-Test-Deny: denying "execute" makes the caller a plain owner, not an
// examiner.
func newQuarantineAPI(t testing.TB) *testAPI {
	t.Helper()
	dir := t.TempDir()
	st, err := store.OpenSQLite(context.Background(), filepath.Join(dir, "t.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	rt, err := fake.New(fake.Config{StateDir: filepath.Join(dir, "vms"), MaxCPUs: 2, MaxMemoryMB: 1024,
		Capabilities: &tartarus.Capabilities{Pause: true, Snapshot: true, Files: true, Signal: true, Recover: true}})
	if err != nil {
		t.Fatal(err)
	}
	cat := catalog{"base": {Name: "base"}}
	snaps, err := erebus.NewLocal(filepath.Join(dir, "snapshots"))
	if err != nil {
		t.Fatal(err)
	}
	agent, err := hecatoncheir.New(hecatoncheir.Config{Node: "node-1", Store: st, Runtimes: []tartarus.Runtime{rt}, Images: cat,
		Snapshots: snaps, SnapshotTempDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	blobs, err := erebus.NewLocal(filepath.Join(dir, "evidence"))
	if err != nil {
		t.Fatal(err)
	}
	q, err := typhon.New(context.Background(), typhon.Config{Host: typhonnode.New(agent, clock.System{}), Blobs: typhon.ErebusBlobs{Store: blobs},
		Journal: st.Quarantines(), Clock: clock.System{}})
	if err != nil {
		t.Fatal(err)
	}
	s, err := New(Config{Backend: agent, Guard: quarantineGuard{}, Quarantine: q})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(s)
	t.Cleanup(srv.Close)
	return &testAPI{srv: srv, st: st, agent: agent, cat: cat}
}

// quarantineGuard is testGuard, but X-Test-Deny denies its actions on
// quarantine records only, so a caller without them is a plain owner.
type quarantineGuard struct{ testGuard }

func (g quarantineGuard) Authorize(ctx context.Context, action cerberus.Action, res cerberus.Resource) error {
	if res.Type != ResourceTypeQuarantine {
		id := *cerberus.IdentityFrom(ctx)
		id.Attributes = nil
		ctx = cerberus.WithIdentity(ctx, &id)
	}
	if id := cerberus.IdentityFrom(ctx); id != nil && res.TenantID == "*" {
		res.TenantID = id.TenantID // this guard's callers administer every tenant
	}
	return g.testGuard.Authorize(ctx, action, res)
}

var owner = map[string]string{"X-Test-Deny": "execute,admin"}

func TestQuarantineRoutes(t *testing.T) {
	ta := newQuarantineAPI(t)
	sb := ta.create(t, "acme")
	if a := ta.do(t, call{method: "POST", path: "/v1/sandboxes/" + sb.ID + "/exec", tenant: "acme", header: owner, body: `{"cmd":["true"]}`}); a.status != 200 {
		t.Fatalf("exec before: %d %s", a.status, a.body)
	}
	for _, tc := range []struct {
		body string
		want int
	}{
		{`{"reason":"whim"}`, 400},
		{`{"reason":"manual_flag","evidence":[{"type":"bogus"}]}`, 400},
		{`{"reason":"manual_flag","extra":1}`, 400},
		{`{"reason":"suspicious_behavior","evidence":[{"type":"note","description":"saw \u001b[31mthis\u0000","data":"AAEC"}]}`, 201},
	} {
		a := ta.do(t, call{method: "POST", path: "/v1/sandboxes/" + sb.ID + "/quarantine", tenant: "acme", body: tc.body})
		if a.status != tc.want {
			t.Fatalf("%s: %d %s", tc.body, a.status, a.body)
		}
	}
	// Another tenant does not see it.
	if a := ta.do(t, call{method: "GET", path: "/v1/quarantine/" + sb.ID, tenant: "other"}); a.status != 404 {
		t.Fatalf("other tenant: %d %s", a.status, a.body)
	}
	// The owner is refused exec, files and lifetime calls; an examiner
	// (this guard: execute allowed) gets through.
	for _, c := range []call{
		{method: "POST", path: "/v1/sandboxes/" + sb.ID + "/exec", body: `{"cmd":["true"]}`},
		{method: "GET", path: "/v1/sandboxes/" + sb.ID + "/files?path=/etc/hostname"},
		{method: "PUT", path: "/v1/sandboxes/" + sb.ID + "/files?path=/tmp/x", body: "x"},
		{method: "POST", path: "/v1/sandboxes/" + sb.ID + "/pause"},
		{method: "POST", path: "/v1/sandboxes/" + sb.ID + "/fork", body: `{}`},
	} {
		c.tenant, c.header = "acme", owner
		if a := ta.do(t, c); a.status != 403 || !strings.Contains(string(a.body), "quarantined") {
			t.Errorf("owner %s %s: %d %s", c.method, c.path, a.status, a.body)
		}
	}
	if a := ta.do(t, call{method: "DELETE", path: "/v1/sandboxes/" + sb.ID, tenant: "acme"}); a.status != 409 {
		t.Errorf("delete of a held sandbox: %d %s", a.status, a.body)
	}
	if a := ta.do(t, call{method: "POST", path: "/v1/sandboxes/" + sb.ID + "/exec", tenant: "acme", body: `{"cmd":["true"]}`}); a.status != 200 {
		t.Errorf("examiner exec: %d %s", a.status, a.body)
	}

	a := ta.do(t, call{method: "GET", path: "/v1/quarantine?status=active", tenant: "acme"})
	var list api.QuarantineList
	if err := json.Unmarshal(a.body, &list); err != nil || a.status != 200 || len(list.Quarantines) != 1 {
		t.Fatalf("list: %d %s", a.status, a.body)
	}
	if a := ta.do(t, call{method: "GET", path: "/v1/quarantine?status=gone", tenant: "acme"}); a.status != 400 {
		t.Fatalf("bad status filter: %d", a.status)
	}
	a = ta.do(t, call{method: "POST", path: "/v1/quarantine/" + sb.ID + "/examine", tenant: "acme"})
	var rep tartarus.ExaminationReport
	if err := json.Unmarshal(a.body, &rep); err != nil || a.status != 200 || rep.RiskScore < 0 || rep.RiskScore > 1 {
		t.Fatalf("examine: %d %s", a.status, a.body)
	}
	a = ta.do(t, call{method: "GET", path: "/v1/quarantine/" + sb.ID, tenant: "acme"})
	var d api.QuarantineDetail
	if err := json.Unmarshal(a.body, &d); err != nil || d.Record.Status != tartarus.QuarantineExamining || len(d.Reports) != 1 {
		t.Fatalf("show: %d %s", a.status, a.body)
	}
	for _, ev := range d.Record.Evidence {
		if ev.Key == "" {
			continue
		}
		a := ta.do(t, call{method: "GET", path: "/v1/quarantine/" + sb.ID + "/evidence/" + ev.ID, tenant: "acme"})
		if a.status != 200 || a.header.Get("X-Checksum") != ev.Checksum || int64(len(a.body)) != ev.Size {
			t.Errorf("evidence %s: %d %q", ev.ID, a.status, a.header.Get("X-Checksum"))
		}
	}
	if a := ta.do(t, call{method: "GET", path: "/v1/quarantine/" + sb.ID + "/evidence/nope", tenant: "acme"}); a.status != 404 {
		t.Errorf("missing evidence: %d", a.status)
	}
	// A held sandbox sleeps and wakes through the quarantine routes only,
	// and stays held throughout.
	if a := ta.do(t, call{method: "POST", path: "/v1/sandboxes/" + sb.ID + "/hibernate", tenant: "acme"}); a.status < 400 {
		t.Errorf("hibernate of a held sandbox by the sandbox route: %d %s", a.status, a.body)
	}
	if a := ta.do(t, call{method: "POST", path: "/v1/quarantine/" + sb.ID + "/hibernate", tenant: "acme", header: owner}); a.status != 403 {
		t.Errorf("owner's hibernate of a held sandbox: %d %s", a.status, a.body)
	}
	if a := ta.do(t, call{method: "POST", path: "/v1/quarantine/" + sb.ID + "/hibernate", tenant: "acme"}); a.status != 200 {
		t.Fatalf("examiner's hibernate: %d %s", a.status, a.body)
	}
	if got, _ := ta.agent.Get(context.Background(), sb.ID); got.State != tartarus.StateHibernated {
		t.Fatalf("after hibernate: %s", got.State)
	}
	for _, c := range []call{
		{method: "POST", path: "/v1/sandboxes/" + sb.ID + "/exec", body: `{"cmd":["true"]}`},
		{method: "POST", path: "/v1/sandboxes/" + sb.ID + "/wake"},
		{method: "POST", path: "/v1/quarantine/" + sb.ID + "/wake"},
	} {
		c.tenant, c.header = "acme", owner
		if a := ta.do(t, c); a.status != 403 {
			t.Errorf("owner %s %s on a held, sleeping sandbox: %d %s", c.method, c.path, a.status, a.body)
		}
	}
	if a := ta.do(t, call{method: "POST", path: "/v1/quarantine/" + sb.ID + "/wake", tenant: "acme"}); a.status != 200 {
		t.Fatalf("examiner's wake: %d %s", a.status, a.body)
	}
	if got, _ := ta.agent.Get(context.Background(), sb.ID); got.State != tartarus.StateQuarantined {
		t.Fatalf("after wake: %s", got.State)
	}
	if a := ta.do(t, call{method: "POST", path: "/v1/sandboxes/" + sb.ID + "/exec", tenant: "acme", header: owner, body: `{"cmd":["true"]}`}); a.status != 403 {
		t.Errorf("owner exec after wake: %d %s", a.status, a.body)
	}
	if a := ta.do(t, call{method: "POST", path: "/v1/sandboxes/" + sb.ID + "/exec", tenant: "acme", body: `{"cmd":["true"]}`}); a.status != 200 {
		t.Errorf("examiner exec after wake: %d %s", a.status, a.body)
	}
	// The caller who quarantined it may not approve; without admin, no one
	// may.
	if a := ta.do(t, call{method: "POST", path: "/v1/quarantine/" + sb.ID + "/release", tenant: "acme", body: `{"reason":"mine"}`}); a.status != 403 || !strings.Contains(string(a.body), "second person") {
		t.Fatalf("self-approval: %d %s", a.status, a.body)
	}
	if a := ta.do(t, call{method: "POST", path: "/v1/quarantine/" + sb.ID + "/release", tenant: "acme", header: owner, body: `{}`}); a.status != 403 {
		t.Fatalf("release without the approver's action: %d %s", a.status, a.body)
	}
	// An invalid policy is refused with its position; a valid one is
	// versioned.
	a = ta.do(t, call{method: "PUT", path: "/v1/quarantine/policy", tenant: "acme", body: `{"auto_triggers":[{"condition":"processes >","reason":"resource_abuse","enabled":true}]}`})
	if a.status != 400 || !strings.Contains(string(a.body), "line 1, column") {
		t.Fatalf("invalid policy: %d %s", a.status, a.body)
	}
	a = ta.do(t, call{method: "PUT", path: "/v1/quarantine/policy", tenant: "acme", body: `{"auto_triggers":[{"condition":"processes > 500","reason":"resource_abuse","enabled":true}]}`})
	if a.status != 200 || !strings.Contains(string(a.body), `"version":1`) {
		t.Fatalf("policy: %d %s", a.status, a.body)
	}
	if a := ta.do(t, call{method: "POST", path: "/v1/quarantine/" + sb.ID + "/destroy", tenant: "acme"}); a.status != 200 {
		t.Fatalf("destroy: %d %s", a.status, a.body)
	}
}

// FuzzQuarantineBody sends any body to the quarantine route: the answer is
// a 2xx or 4xx JSON, and the record and report of an accepted one decode.
func FuzzQuarantineBody(f *testing.F) {
	for _, s := range []string{`{}`, `{"reason":"manual_flag"}`, `{"reason":"x"}`, `{"evidence":[{"type":"note","description":"\u0000\u202e","data":"////"}]}`,
		`{"evidence":[{"data":"not base64"}]}`, `[]`, `{"reason":"network_anomaly","evidence":[{"type":"process_tree","description":"` + strings.Repeat("A", 2000) + `"}]}`} {
		f.Add(s)
	}
	ta := newQuarantineAPI(f)
	f.Fuzz(func(t *testing.T, body string) {
		sb := ta.create(t, "acme")
		a := ta.do(t, call{method: "POST", path: "/v1/sandboxes/" + sb.ID + "/quarantine", tenant: "acme", body: body})
		if a.status >= 500 || !json.Valid(a.body) {
			t.Fatalf("%q: %d %s", body, a.status, a.body)
		}
		if a.status != http.StatusCreated {
			return
		}
		for _, p := range []string{"/examine"} {
			if a := ta.do(t, call{method: "POST", path: "/v1/quarantine/" + sb.ID + p, tenant: "acme"}); a.status != 200 || !json.Valid(a.body) {
				t.Fatalf("%s after %q: %d %s", p, body, a.status, a.body)
			}
		}
		a = ta.do(t, call{method: "GET", path: "/v1/quarantine/" + sb.ID, tenant: "acme"})
		var d api.QuarantineDetail
		if err := json.Unmarshal(a.body, &d); err != nil || a.status != 200 {
			t.Fatalf("show after %q: %d %s", body, a.status, a.body)
		}
		ta.do(t, call{method: "POST", path: "/v1/quarantine/" + sb.ID + "/destroy", tenant: "acme"})
	})
}
