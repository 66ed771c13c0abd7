package olympus

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"

	"github.com/tartarus-sandbox/tartarus/pkg/erebus"
	"github.com/tartarus-sandbox/tartarus/pkg/hecatoncheir"
	"github.com/tartarus-sandbox/tartarus/pkg/runtimes/fake"
	"github.com/tartarus-sandbox/tartarus/pkg/store"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus/api"
)

// newSnapAPI is newTestAPI over a fake runtime that can snapshot, with a
// snapshot store.
func newSnapAPI(t *testing.T) *testAPI {
	t.Helper()
	dir := t.TempDir()
	st, err := store.OpenSQLite(context.Background(), filepath.Join(dir, "t.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	rt, err := fake.New(fake.Config{StateDir: filepath.Join(dir, "vms"), MaxCPUs: 2, MaxMemoryMB: 2048,
		Capabilities: &tartarus.Capabilities{Pause: true, Snapshot: true, Files: true, Signal: true, Recover: true}})
	if err != nil {
		t.Fatal(err)
	}
	blobs, err := erebus.NewLocal(filepath.Join(dir, "snapshots"))
	if err != nil {
		t.Fatal(err)
	}
	cat := catalog{"base": {Name: "base", Digest: "sha256:abcd"}}
	agent, err := hecatoncheir.New(hecatoncheir.Config{Node: "node-1", Store: st, Runtimes: []tartarus.Runtime{rt},
		Images: cat, Snapshots: blobs, SnapshotTempDir: t.TempDir(), CreateFromSnapshot: true})
	if err != nil {
		t.Fatal(err)
	}
	s, err := New(Config{Backend: agent, Guard: testGuard{}})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(s)
	t.Cleanup(srv.Close)
	return &testAPI{srv: srv, st: st, agent: agent, cat: cat}
}

func TestHibernateWakeForkRoutes(t *testing.T) {
	ta := newSnapAPI(t)
	a := ta.do(t, call{method: "POST", path: "/v1/sandboxes", tenant: "acme", body: `{"env":{"A":"x"}}`})
	if a.status != 201 {
		t.Fatalf("create: %d %s", a.status, a.body)
	}
	sb := a.sandbox(t)
	p := "/v1/sandboxes/" + sb.ID
	if a := ta.do(t, call{method: "PUT", path: p + "/files?path=/f", tenant: "acme", body: "hello"}); a.status != 204 {
		t.Fatalf("upload: %d %s", a.status, a.body)
	}

	a = ta.do(t, call{method: "POST", path: p + "/hibernate", tenant: "acme"})
	if a.status != 200 || a.sandbox(t).State != tartarus.StateHibernated || a.sandbox(t).SnapshotBytes <= 0 {
		t.Fatalf("hibernate: %d %s", a.status, a.body)
	}
	a = ta.do(t, call{method: "GET", path: "/v1/sandboxes", tenant: "acme"})
	var list api.SandboxList
	if err := json.Unmarshal(a.body, &list); err != nil || len(list.Sandboxes) != 1 ||
		list.Sandboxes[0].State != tartarus.StateHibernated || !strings.Contains(string(a.body), `"snapshot_bytes":`) {
		t.Errorf("list: %s", a.body)
	}
	// Another tenant sees nothing.
	if a := ta.do(t, call{method: "POST", path: p + "/wake", tenant: "other"}); a.status != 404 {
		t.Errorf("wake by another tenant: %d", a.status)
	}

	// Exec wakes it transparently.
	a = ta.do(t, call{method: "POST", path: p + "/exec", tenant: "acme", body: `{"cmd":["sh","-c","echo $A"]}`})
	var res api.ExecResponse
	if err := json.Unmarshal(a.body, &res); a.status != 200 || err != nil || res.Stdout != "x\n" {
		t.Errorf("exec on a hibernated sandbox: %d %s", a.status, a.body)
	}
	// So does a download.
	ta.do(t, call{method: "POST", path: p + "/hibernate", tenant: "acme"})
	if a := ta.do(t, call{method: "GET", path: p + "/files?path=/f", tenant: "acme"}); a.status != 200 || string(a.body) != "hello" {
		t.Errorf("download from a hibernated sandbox: %d %s", a.status, a.body)
	}
	ta.do(t, call{method: "POST", path: p + "/hibernate", tenant: "acme"})
	if a := ta.do(t, call{method: "POST", path: p + "/wake", tenant: "acme"}); a.status != 200 || a.sandbox(t).State != tartarus.StateRunning {
		t.Errorf("wake: %d %s", a.status, a.body)
	}

	tests := []struct {
		body   string
		status int
		n      int
	}{
		{`{"count":2}`, 201, 2},
		{`{}`, 201, 1},
		{`{"count":0}`, 201, 1},
		{`{"count":17}`, 400, 0},
		{`{"count":-1}`, 400, 0},
		{`{"count":"two"}`, 400, 0},
		{`{"count":4}`, 422, 0}, // 5 of 256 MiB run on a 2048 MiB node
	}
	for _, tt := range tests {
		a := ta.do(t, call{method: "POST", path: p + "/fork", tenant: "acme", body: tt.body})
		var got api.SandboxList
		_ = json.Unmarshal(a.body, &got)
		if a.status != tt.status || len(got.Sandboxes) != tt.n {
			t.Errorf("fork %s: %d %s; want %d with %d sandboxes", tt.body, a.status, a.body, tt.status, tt.n)
		}
		for _, k := range got.Sandboxes {
			if k.State != tartarus.StateRunning || k.Tenant != "acme" {
				t.Errorf("fork copy %+v", k)
			}
			if a := ta.do(t, call{method: "GET", path: "/v1/sandboxes/" + k.ID + "/files?path=/f", tenant: "acme"}); string(a.body) != "hello" {
				t.Errorf("copy %s: file %q", k.ID, a.body)
			}
		}
	}
	if a := ta.do(t, call{method: "POST", path: p + "/fork", tenant: "acme", body: `{}`,
		header: map[string]string{"X-Test-Deny": "create"}}); a.status != http.StatusForbidden {
		t.Errorf("fork without the right to create: %d", a.status)
	}
}

func TestHibernateWithoutSnapshotterIs501(t *testing.T) {
	ta := newTestAPI(t)
	sb := ta.create(t, "acme")
	for _, verb := range []string{"hibernate", "wake", "fork"} {
		a := ta.do(t, call{method: "POST", path: fmt.Sprintf("/v1/sandboxes/%s/%s", sb.ID, verb), tenant: "acme", body: `{}`})
		if a.status != 501 || a.errCode() != "not_implemented" || !strings.Contains(string(a.body), "snapshot store") {
			t.Errorf("%s: %d %s", verb, a.status, a.body)
		}
	}
}
