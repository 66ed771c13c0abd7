package typhonnode

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"testing"
	"time"

	"github.com/tartarus-sandbox/tartarus/pkg/cerberus"
	"github.com/tartarus-sandbox/tartarus/pkg/clock"
	"github.com/tartarus-sandbox/tartarus/pkg/hecatoncheir"
	"github.com/tartarus-sandbox/tartarus/pkg/runtimes/fake"
	"github.com/tartarus-sandbox/tartarus/pkg/store"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

type catalog map[string]*tartarus.Image

func (c catalog) List(context.Context) ([]*tartarus.Image, error) {
	var out []*tartarus.Image
	for _, img := range c {
		out = append(out, img)
	}
	return out, nil
}

func (c catalog) Get(_ context.Context, name string) (*tartarus.Image, error) {
	if img, ok := c[name]; ok {
		return img, nil
	}
	return nil, tartarus.Errorf(tartarus.ErrNotFound, "template %s", name)
}

// TestNodeAPI drives the node API's quarantine routes over an agent with
// the fake runtime, as the node API's guard would hand them a request: the
// state moves both ways, signals come back, and another tenant's request
// finds nothing.
func TestNodeAPI(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	st, err := store.OpenSQLite(ctx, filepath.Join(dir, "t.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	rt, err := fake.New(fake.Config{StateDir: filepath.Join(dir, "vms")})
	if err != nil {
		t.Fatal(err)
	}
	clk := clock.NewFake(time.Date(2026, 12, 6, 0, 0, 0, 0, time.UTC))
	agent, err := hecatoncheir.New(hecatoncheir.Config{Node: "node-1", Store: st, Runtimes: []tartarus.Runtime{rt},
		Images: catalog{"base": {Name: "base"}}, Clock: clk})
	if err != nil {
		t.Fatal(err)
	}
	sb, err := agent.Create(ctx, "acme", &tartarus.CreateRequest{TimeoutS: 600})
	if err != nil {
		t.Fatal(err)
	}
	n := NewNodeAPI(New(agent, clk))
	mux := http.NewServeMux()
	for p, h := range n.Routes() {
		mux.Handle(p, h)
	}
	call := func(tenant, method, path string, in, out any) int {
		t.Helper()
		var body bytes.Buffer
		if in != nil {
			_ = json.NewEncoder(&body).Encode(in)
		}
		req := httptest.NewRequest(method, fmt.Sprintf(path, sb.ID), &body)
		req = req.WithContext(cerberus.WithIdentity(req.Context(), &cerberus.Identity{Type: cerberus.IdentityTypeService, ID: "tartarus-server", TenantID: tenant}))
		w := httptest.NewRecorder()
		mux.ServeHTTP(w, req)
		if out != nil && w.Code == http.StatusOK {
			if err := json.Unmarshal(w.Body.Bytes(), out); err != nil {
				t.Fatal(err)
			}
		}
		return w.Code
	}
	var got tartarus.Sandbox
	if code := call("acme", "POST", PathState, StateRequest{On: true}, &got); code != 200 || got.State != tartarus.StateQuarantined {
		t.Fatalf("quarantine state: %d %+v", code, got.State)
	}
	if code := call("other", "POST", PathState, StateRequest{On: false}, nil); code != http.StatusNotFound {
		t.Fatalf("another tenant's state change: %d, want 404", code)
	}
	if code := call("acme", "POST", PathState, StateRequest{On: false}, &got); code != 200 || got.State != tartarus.StateRunning {
		t.Fatalf("release state: %d %+v", code, got.State)
	}
	if code := call("acme", "POST", PathState, "not an object", nil); code != http.StatusBadRequest {
		t.Fatalf("a bad body: %d, want 400", code)
	}
	var sig map[string]any
	if code := call("acme", "GET", PathSignals, nil, &sig); code != 200 || sig["SandboxID"] != sb.ID {
		t.Fatalf("signals: %d %v", code, sig)
	}
	if err := n.Admit(sb.ID, "anyone", false); err != nil {
		t.Fatalf("the node API refused a forwarded call: %v", err)
	}
}
