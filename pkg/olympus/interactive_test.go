package olympus

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/tartarus-sandbox/tartarus/pkg/hecatoncheir"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus/api"
)

func TestListMetadataFilter(t *testing.T) {
	ta := newTestAPI(t)
	for _, md := range []string{`{"team":"a","env":"prod"}`, `{"team":"a","env":"dev"}`, `{"team":"b"}`} {
		a := ta.do(t, call{method: "POST", path: "/v1/sandboxes", tenant: "acme", body: `{"template":"base","metadata":` + md + `}`})
		if a.status != http.StatusCreated {
			t.Fatalf("create: %d %s", a.status, a.body)
		}
	}
	ta.create(t, "other") // another tenant's sandbox never shows
	tests := []struct {
		query  string
		status int
		count  int
	}{
		{"", 200, 3},
		{"?metadata=team=a", 200, 2},
		{"?metadata=team=a&metadata=env=prod", 200, 1},
		{"?metadata=team%3Da%26env%3Ddev", 200, 1}, // E2B's SDKs join pairs in one value
		{"?metadata=team=c", 200, 0},
		{"?metadata=team=", 200, 0},
		{"?metadata=novalue", 400, 0},
		{"?metadata==x", 400, 0},
	}
	for _, tt := range tests {
		t.Run(tt.query, func(t *testing.T) {
			a := ta.do(t, call{method: "GET", path: "/v1/sandboxes" + tt.query, tenant: "acme"})
			if a.status != tt.status {
				t.Fatalf("status %d, want %d: %s", a.status, tt.status, a.body)
			}
			if a.status != 200 {
				if a.errCode() != "invalid_argument" {
					t.Errorf("code %q", a.errCode())
				}
				return
			}
			var list api.SandboxList
			if err := json.Unmarshal(a.body, &list); err != nil || len(list.Sandboxes) != tt.count {
				t.Errorf("got %d sandboxes (%v), want %d: %s", len(list.Sandboxes), err, tt.count, a.body)
			}
		})
	}
}

func TestSetTimeout(t *testing.T) {
	ta := newTestAPI(t)
	sb := ta.create(t, "acme")
	path := "/v1/sandboxes/" + sb.ID + "/timeout"
	a := ta.do(t, call{method: "POST", path: path, tenant: "acme", body: `{"timeout_s":120}`})
	if a.status != 200 {
		t.Fatalf("set: %d %s", a.status, a.body)
	}
	got := a.sandbox(t)
	if d := time.Until(got.ExpiresAt); d < 100*time.Second || d > 121*time.Second {
		t.Errorf("expires in %v, want about 120s", d)
	}
	stored, _ := ta.st.Get(context.Background(), sb.ID)
	if !stored.ExpiresAt.Equal(got.ExpiresAt) {
		t.Errorf("stored expiry %v, answered %v", stored.ExpiresAt, got.ExpiresAt)
	}
	if a := ta.do(t, call{method: "POST", path: path, tenant: "acme", body: `{"timeout_s":0}`}); a.status != 200 || !a.sandbox(t).ExpiresAt.IsZero() {
		t.Errorf("timeout 0 (never): %d %s", a.status, a.body)
	}
	tests := []struct {
		name, tenant, body, code string
		status                   int
	}{
		{"negative", "acme", `{"timeout_s":-1}`, "invalid_argument", 400},
		{"too long", "acme", `{"timeout_s":99999999}`, "invalid_argument", 400},
		{"unknown field", "acme", `{"timeout":5}`, "invalid_argument", 400},
		{"another tenant", "other", `{"timeout_s":5}`, "not_found", 404},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a := ta.do(t, call{method: "POST", path: path, tenant: tt.tenant, body: tt.body})
			if a.status != tt.status || a.errCode() != tt.code {
				t.Errorf("%d %s, want %d %s", a.status, a.body, tt.status, tt.code)
			}
		})
	}
	if stored, _ := ta.st.Get(context.Background(), sb.ID); !stored.ExpiresAt.IsZero() {
		t.Errorf("a refused call changed the expiry to %v", stored.ExpiresAt)
	}
	// A terminated sandbox keeps its expiry.
	ta.do(t, call{method: "DELETE", path: "/v1/sandboxes/" + sb.ID, tenant: "acme"})
	if a := ta.do(t, call{method: "POST", path: path, tenant: "acme", body: `{"timeout_s":5}`}); a.status != 409 {
		t.Errorf("timeout of a terminated sandbox: %d %s", a.status, a.body)
	}
}

// TestInteractiveRoutesInput: bad input is refused before the runtime is
// asked; the fake runtime has no terminals, processes or file management,
// so well-formed calls answer 501 with the reason.
func TestInteractiveRoutesInput(t *testing.T) {
	ta := newTestAPI(t)
	sb := ta.create(t, "acme")
	p := "/v1/sandboxes/" + sb.ID
	tests := []struct {
		name, method, path, body string
		status                   int
		code                     string
	}{
		{"start ok", "POST", p + "/processes", `{"cmd":["sleep","1"],"tag":"t"}`, 501, "not_implemented"},
		{"start no cmd", "POST", p + "/processes", `{"cmd":[]}`, 400, "invalid_argument"},
		{"start numeric tag", "POST", p + "/processes", `{"cmd":["true"],"tag":"12"}`, 400, "invalid_argument"},
		{"start control tag", "POST", p + "/processes", `{"cmd":["true"],"tag":"a\nb"}`, 400, "invalid_argument"},
		{"start relative cwd", "POST", p + "/processes", `{"cmd":["true"],"cwd":"tmp"}`, 400, "invalid_argument"},
		{"start bad env", "POST", p + "/processes", `{"cmd":["true"],"env":{"A=B":"c"}}`, 400, "invalid_argument"},
		{"start bad user", "POST", p + "/processes", `{"cmd":["true"],"user":"a b"}`, 400, "invalid_argument"},
		{"list", "GET", p + "/processes", ``, 501, "not_implemented"},
		{"signal bad name", "POST", p + "/processes/t/signal", `{"signal":"SIGNOPE"}`, 400, "invalid_argument"},
		{"signal bad number", "POST", p + "/processes/t/signal", `{"signal":99}`, 400, "invalid_argument"},
		{"signal pid 0", "POST", p + "/processes/0/signal", `{"signal":"TERM"}`, 400, "invalid_argument"},
		{"signal ok", "POST", p + "/processes/t/signal", `{"signal":"TERM"}`, 501, "not_implemented"},
		{"stdin", "POST", p + "/processes/12/stdin", `hello`, 501, "not_implemented"},
		{"output", "GET", p + "/processes/12/output", ``, 200, ""}, // a stream: its error is a line
		{"stat no path", "GET", p + "/files/stat", ``, 400, "invalid_argument"},
		{"stat dotdot", "GET", p + "/files/stat?path=/a/../b", ``, 400, "invalid_argument"},
		{"stat ok", "GET", p + "/files/stat?path=/etc", ``, 501, "not_implemented"},
		{"mkdir relative", "POST", p + "/files/mkdir", `{"path":"a"}`, 400, "invalid_argument"},
		{"mkdir ok", "POST", p + "/files/mkdir", `{"path":"/a","parents":true}`, 501, "not_implemented"},
		{"move no dest", "POST", p + "/files/move", `{"from":"/a"}`, 400, "invalid_argument"},
		{"move ok", "POST", p + "/files/move", `{"from":"/a","to":"/b"}`, 501, "not_implemented"},
		{"remove no path", "DELETE", p + "/files", ``, 400, "invalid_argument"},
		{"remove ok", "DELETE", p + "/files?path=/a&recursive=1", ``, 501, "not_implemented"},
		{"list bad depth", "GET", p + "/files?path=/&list=1&depth=99", ``, 400, "invalid_argument"},
		{"list depth", "GET", p + "/files?path=/&list=1&depth=3", ``, 501, "not_implemented"},
		{"watch relative", "GET", p + "/files/watch?path=tmp", ``, 400, "invalid_argument"},
		{"watch ok", "GET", p + "/files/watch?path=/tmp", ``, 501, "not_implemented"},
		{"pty without upgrade", "GET", p + "/pty", ``, 426, ""},
		{"metrics without source", "GET", p + "/metrics", ``, 501, "not_implemented"},
		{"another tenant", "GET", "/v1/sandboxes/sb-nope/processes", ``, 404, "not_found"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a := ta.do(t, call{method: tt.method, path: tt.path, tenant: "acme", body: tt.body})
			if a.status != tt.status || (tt.code != "" && a.errCode() != tt.code) {
				t.Errorf("%d %s, want %d %s", a.status, a.body, tt.status, tt.code)
			}
		})
	}
}

func TestSandboxMetrics(t *testing.T) {
	ta := newTestAPI(t)
	sampler := hecatoncheir.NewSampler(ta.agent, hecatoncheir.SamplerConfig{Keep: 2})
	s, err := New(Config{Backend: ta.agent, Guard: testGuard{}, Metrics: sampler})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(s)
	defer srv.Close()
	tb := &testAPI{srv: srv, st: ta.st, agent: ta.agent}
	sb := tb.create(t, "acme")
	for range 3 {
		sampler.SampleOnce(context.Background())
	}
	a := tb.do(t, call{method: "GET", path: "/v1/sandboxes/" + sb.ID + "/metrics", tenant: "acme"})
	var mr api.MetricsResponse
	if a.status != 200 || json.Unmarshal(a.body, &mr) != nil {
		t.Fatalf("%d %s", a.status, a.body)
	}
	if len(mr.Metrics) != 2 {
		t.Errorf("%d samples, want the ring's 2", len(mr.Metrics))
	}
	for _, m := range mr.Metrics {
		if m.At.IsZero() || m.CPUCount != sb.CPUs {
			t.Errorf("sample %+v", m)
		}
	}
	if a := tb.do(t, call{method: "GET", path: "/v1/sandboxes/" + sb.ID + "/metrics?since=yesterday", tenant: "acme"}); a.status != 400 {
		t.Errorf("bad since: %d", a.status)
	}
	if a := tb.do(t, call{method: "GET", path: "/v1/sandboxes/" + sb.ID + "/metrics", tenant: "other"}); a.status != 404 {
		t.Errorf("another tenant: %d", a.status)
	}
}
