package olympus

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tartarus-sandbox/tartarus/pkg/cerberus"
	"github.com/tartarus-sandbox/tartarus/pkg/hecatoncheir"
	"github.com/tartarus-sandbox/tartarus/pkg/runtimes/fake"
	"github.com/tartarus-sandbox/tartarus/pkg/store"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus/api"
)

// testGuard takes the caller's tenant from X-Test-Tenant (no header: no
// identity) and denies the actions listed in X-Test-Deny.
type testGuard struct{}

func (testGuard) Wrap(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if t := r.Header.Get("X-Test-Tenant"); t != "" {
			id := &cerberus.Identity{ID: "user:" + t, Type: cerberus.IdentityTypeUser, TenantID: t,
				Attributes: map[string]string{"deny": r.Header.Get("X-Test-Deny")}}
			r = r.WithContext(cerberus.WithIdentity(r.Context(), id))
		}
		next.ServeHTTP(w, r)
	})
}

func (testGuard) Authorize(ctx context.Context, action cerberus.Action, res cerberus.Resource) error {
	id := cerberus.IdentityFrom(ctx)
	if id == nil {
		return tartarus.Errorf(tartarus.ErrUnauthenticated, "no identity")
	}
	if res.TenantID != id.TenantID {
		return tartarus.Errorf(tartarus.ErrPermissionDenied, "tenant %s may not touch tenant %s", id.TenantID, res.TenantID)
	}
	for _, a := range strings.Split(id.Attributes["deny"], ",") {
		if a == string(action) {
			return tartarus.Errorf(tartarus.ErrPermissionDenied, "%s on %s denied", action, res.Type)
		}
	}
	return nil
}

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

type testAPI struct {
	srv   *httptest.Server
	st    *store.SQLite
	agent *hecatoncheir.Agent
	cat   catalog
}

func newTestAPI(t testing.TB) *testAPI {
	t.Helper()
	dir := t.TempDir()
	st, err := store.OpenSQLite(context.Background(), filepath.Join(dir, "t.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	rt, err := fake.New(fake.Config{StateDir: filepath.Join(dir, "vms"), MaxCPUs: 2, MaxMemoryMB: 1024})
	if err != nil {
		t.Fatal(err)
	}
	cat := catalog{"base": {Name: "base", Description: "busybox"}}
	agent, err := hecatoncheir.New(hecatoncheir.Config{Node: "node-1", Store: st, Runtimes: []tartarus.Runtime{rt}, Images: cat})
	if err != nil {
		t.Fatal(err)
	}
	s, err := New(Config{Backend: agent, Guard: testGuard{}, MaxUploadBytes: 2 << 20,
		Routes: map[string]http.Handler{"GET /v1/extra": http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			writeJSON(w, 200, map[string]string{"tenant": cerberus.IdentityFrom(r.Context()).TenantID})
		})}})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(s)
	t.Cleanup(srv.Close)
	return &testAPI{srv: srv, st: st, agent: agent, cat: cat}
}

type call struct {
	method, path, tenant string
	body                 string
	header               map[string]string
}

type answer struct {
	status int
	header http.Header
	body   []byte
}

func (a answer) errCode() string {
	var eb api.ErrorBody
	_ = json.Unmarshal(a.body, &eb)
	return eb.Error.Code
}

func (a answer) sandbox(t testing.TB) *tartarus.Sandbox {
	t.Helper()
	var sb tartarus.Sandbox
	if err := json.Unmarshal(a.body, &sb); err != nil {
		t.Fatalf("decode sandbox %s: %v", a.body, err)
	}
	return &sb
}

func (ta *testAPI) do(t testing.TB, c call) answer {
	t.Helper()
	req, err := http.NewRequest(c.method, ta.srv.URL+c.path, strings.NewReader(c.body))
	if err != nil {
		t.Fatal(err)
	}
	if c.tenant != "" {
		req.Header.Set("X-Test-Tenant", c.tenant)
	}
	for k, v := range c.header {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return answer{status: resp.StatusCode, header: resp.Header, body: body}
}

func (ta *testAPI) create(t testing.TB, tenant string) *tartarus.Sandbox {
	t.Helper()
	a := ta.do(t, call{method: "POST", path: "/v1/sandboxes", tenant: tenant, body: `{"template":"base"}`})
	if a.status != http.StatusCreated {
		t.Fatalf("create: %d %s", a.status, a.body)
	}
	return a.sandbox(t)
}

func TestCreateStatuses(t *testing.T) {
	ta := newTestAPI(t)
	tests := []struct {
		name   string
		body   string
		status int
		code   string
		msg    string
	}{
		{"defaults", `{}`, 201, "", ""},
		{"full", `{"template":"base","memory_mb":512,"cpus":2,"timeout_s":60,"env":{"A":"1"},"metadata":{"k":"v"},"runtime":"fake"}`, 201, "", ""},
		{"unknown template", `{"template":"nope"}`, 404, "not_found", "nope"},
		{"memory beyond node", `{"memory_mb":4096}`, 422, "resource_exhausted", "max_memory_mb"},
		{"cpus beyond node", `{"cpus":3}`, 422, "resource_exhausted", "max_cpus"},
		{"memory too small", `{"memory_mb":1}`, 400, "invalid_argument", "memory_mb"},
		{"negative cpus", `{"cpus":-1}`, 400, "invalid_argument", ""},
		{"negative auto_hibernate_s", `{"auto_hibernate_s":-5}`, 400, "invalid_argument", "auto_hibernate_s"},
		{"auto_hibernate_s", `{"auto_hibernate_s":600}`, 201, "", `"auto_hibernate_s":600`},
		{"malformed JSON", `{"template":`, 400, "invalid_argument", "malformed"},
		{"unknown field", `{"templat":"base"}`, 400, "invalid_argument", "unknown field"},
		{"trailing data", `{} {}`, 400, "invalid_argument", "after"},
		{"wrong type", `{"cpus":"two"}`, 400, "invalid_argument", ""},
		{"bad env name", `{"env":{"A=B":"x"}}`, 400, "invalid_argument", "env"},
		{"unknown runtime", `{"runtime":"docker"}`, 400, "invalid_argument", "not enabled"},
		{"bad template name", `{"template":"../etc"}`, 400, "invalid_argument", "template"},
		{"oversize body", `{"metadata":{"k":"` + strings.Repeat("x", 2<<20) + `"}}`, 413, "too_large", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a := ta.do(t, call{method: "POST", path: "/v1/sandboxes", tenant: "acme", body: tt.body})
			if a.status != tt.status || a.errCode() != tt.code || !strings.Contains(string(a.body), tt.msg) {
				t.Errorf("status %d code %q body %.200s; want %d %q containing %q", a.status, a.errCode(), a.body, tt.status, tt.code, tt.msg)
			}
			if a.status == 201 && a.header.Get("Location") != "/v1/sandboxes/"+a.sandbox(t).ID {
				t.Errorf("Location %q", a.header.Get("Location"))
			}
		})
	}
	// Bad input changed nothing: only the three good creates exist.
	list, err := ta.st.List(context.Background(), tartarus.SandboxFilter{})
	if err != nil || len(list) != 3 {
		t.Errorf("store has %d sandboxes (%v), want 3", len(list), err)
	}
}

func TestTenantIsolation(t *testing.T) {
	ta := newTestAPI(t)
	mine := ta.create(t, "acme")
	theirs := ta.create(t, "globex")
	a := ta.do(t, call{method: "GET", path: "/v1/sandboxes", tenant: "acme"})
	var list api.SandboxList
	if err := json.Unmarshal(a.body, &list); err != nil || len(list.Sandboxes) != 1 || list.Sandboxes[0].ID != mine.ID {
		t.Fatalf("acme's list: %s", a.body)
	}
	tests := []struct {
		name   string
		c      call
		status int
	}{
		{"get other tenant", call{method: "GET", path: "/v1/sandboxes/" + theirs.ID}, 404},
		{"delete other tenant", call{method: "DELETE", path: "/v1/sandboxes/" + theirs.ID}, 404},
		{"exec other tenant", call{method: "POST", path: "/v1/sandboxes/" + theirs.ID + "/exec", body: `{"cmd":["true"]}`}, 404},
		{"read file other tenant", call{method: "GET", path: "/v1/sandboxes/" + theirs.ID + "/files?path=/x"}, 404},
		{"pause other tenant", call{method: "POST", path: "/v1/sandboxes/" + theirs.ID + "/pause"}, 404},
		{"unknown id", call{method: "GET", path: "/v1/sandboxes/sb-0000000000000000"}, 404},
		{"invalid id", call{method: "GET", path: "/v1/sandboxes/NOT%20AN%20ID"}, 404},
		{"own sandbox", call{method: "GET", path: "/v1/sandboxes/" + mine.ID}, 200},
		{"denied action", call{method: "DELETE", path: "/v1/sandboxes/" + mine.ID, header: map[string]string{"X-Test-Deny": "delete"}}, 403},
		{"denied create", call{method: "POST", path: "/v1/sandboxes", body: `{}`, header: map[string]string{"X-Test-Deny": "create"}}, 403},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.c.tenant = "acme"
			if a := ta.do(t, tt.c); a.status != tt.status {
				t.Errorf("status %d (%s), want %d", a.status, a.body, tt.status)
			}
		})
	}
	if a := ta.do(t, call{method: "GET", path: "/v1/sandboxes"}); a.status != 401 || a.errCode() != "unauthenticated" {
		t.Errorf("no identity: %d %s", a.status, a.body)
	}
	// The other tenant's sandbox is untouched.
	if sb, _ := ta.st.Get(context.Background(), theirs.ID); sb.State != tartarus.StateRunning {
		t.Errorf("globex's sandbox is %s", sb.State)
	}
	if a := ta.do(t, call{method: "GET", path: "/v1/extra", tenant: "acme"}); a.status != 200 || !strings.Contains(string(a.body), "acme") {
		t.Errorf("extra route behind the guard: %d %s", a.status, a.body)
	}
}

func TestExecPlain(t *testing.T) {
	ta := newTestAPI(t)
	sb := ta.create(t, "acme")
	path := "/v1/sandboxes/" + sb.ID + "/exec"
	tests := []struct {
		name   string
		body   string
		status int
		want   api.ExecResponse
	}{
		{"output and exit", `{"cmd":["sh","-c","echo hi; echo oops >&2; exit 3"]}`, 200, api.ExecResponse{ExitCode: 3, Stdout: "hi\n", Stderr: "oops\n"}},
		{"stdin env cwd", `{"cmd":["sh","-c","cat; echo $X; pwd"],"stdin":"in\n","env":{"X":"y"},"cwd":"/tmp"}`, 200, api.ExecResponse{Stdout: "in\ny\n/tmp\n"}},
		{"timeout", `{"cmd":["sleep","10"],"timeout_s":1}`, 200, api.ExecResponse{ExitCode: 137, TimedOut: true, Signal: "SIGKILL"}},
		{"empty cmd", `{"cmd":[]}`, 400, api.ExecResponse{}},
		{"relative cwd", `{"cmd":["true"],"cwd":"tmp"}`, 400, api.ExecResponse{}},
		{"dotdot cwd", `{"cmd":["true"],"cwd":"/tmp/../etc"}`, 400, api.ExecResponse{}},
		{"unknown field", `{"cmd":["true"],"tty":true}`, 400, api.ExecResponse{}},
		{"negative timeout", `{"cmd":["true"],"timeout_s":-1}`, 400, api.ExecResponse{}},
		{"NUL in arg", `{"cmd":["echo","a\u0000b"]}`, 400, api.ExecResponse{}},
		{"stdin too large", `{"cmd":["cat"],"stdin":"` + strings.Repeat("x", MaxExecStdin+1) + `"}`, 413, api.ExecResponse{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a := ta.do(t, call{method: "POST", path: path, tenant: "acme", body: tt.body})
			if a.status != tt.status {
				t.Fatalf("status %d %.300s, want %d", a.status, a.body, tt.status)
			}
			if a.status != 200 {
				return
			}
			var got api.ExecResponse
			if err := json.Unmarshal(a.body, &got); err != nil {
				t.Fatal(err)
			}
			got.DurationMS = 0
			if got != tt.want {
				t.Errorf("got %+v, want %+v", got, tt.want)
			}
		})
	}
}

// TestExecStream reads the NDJSON answer line by line. The command waits for
// a file the test creates only after it has read the first line, so the test
// hangs (and fails at its deadline) unless each chunk is flushed at once.
func TestExecStream(t *testing.T) {
	ta := newTestAPI(t)
	sb := ta.create(t, "acme")
	flag := filepath.Join(t.TempDir(), "go-on")
	body, _ := json.Marshal(api.ExecRequest{Cmd: []string{"sh", "-c",
		"echo one; while [ ! -e " + flag + " ]; do sleep 0.02; done; echo two >&2; printf '\\377'; exit 4"}})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "POST", ta.srv.URL+"/v1/sandboxes/"+sb.ID+"/exec", bytes.NewReader(body))
	req.Header.Set("X-Test-Tenant", "acme")
	req.Header.Set("Accept", api.NDJSON)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != api.NDJSON {
		t.Fatalf("status %d content type %q", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	lines := bufio.NewScanner(resp.Body)
	next := func() api.ExecEvent {
		t.Helper()
		if !lines.Scan() {
			t.Fatalf("stream ended early: %v", lines.Err())
		}
		var ev api.ExecEvent
		if err := json.Unmarshal(lines.Bytes(), &ev); err != nil {
			t.Fatalf("line %q: %v", lines.Text(), err)
		}
		return ev
	}
	if ev := next(); ev.Type != "stdout" || ev.Data != "one\n" {
		t.Fatalf("first event %+v", ev)
	}
	if err := os.WriteFile(flag, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	var stdout []byte
	var stderr string
	for {
		ev := next()
		switch ev.Type {
		case "stdout":
			stdout = append(append(stdout, ev.Data...), ev.DataB64...)
		case "stderr":
			stderr += ev.Data
		case "exit":
			if ev.ExitCode == nil || *ev.ExitCode != 4 || stderr != "two\n" || !bytes.Equal(stdout, []byte{0xff}) {
				t.Errorf("exit %+v stderr %q stdout %q", ev, stderr, stdout)
			}
			if lines.Scan() {
				t.Errorf("line after exit: %q", lines.Text())
			}
			return
		default:
			t.Fatalf("unexpected event %+v", ev)
		}
	}
}

func TestIncompleteTail(t *testing.T) {
	tests := []struct {
		in   string
		want int
	}{
		{"abc", 0}, {"", 0}, {"é", 0}, {"a\xc3", 1}, {"a\xe2\x82", 2}, {"\xe2\x82\xac", 0},
		{"\xf0\x9f\x98", 3}, {"\xf0\x9f\x98\x80", 0}, {"\x80\x80\x80\x80", 0},
	}
	for _, tt := range tests {
		if got := incompleteTail([]byte(tt.in)); got != tt.want {
			t.Errorf("incompleteTail(%q) = %d, want %d", tt.in, got, tt.want)
		}
	}
}

func TestFiles(t *testing.T) {
	ta := newTestAPI(t)
	sb := ta.create(t, "acme")
	base := "/v1/sandboxes/" + sb.ID + "/files"
	data := make([]byte, 1<<20)
	_, _ = rand.Read(data)
	if a := ta.do(t, call{method: "PUT", path: base + "?path=/work/data.bin&mode=0600", tenant: "acme", body: string(data)}); a.status != 204 {
		t.Fatalf("put: %d %s", a.status, a.body)
	}
	if a := ta.do(t, call{method: "GET", path: base + "?path=/work/data.bin", tenant: "acme"}); a.status != 200 || !bytes.Equal(a.body, data) {
		t.Errorf("get: %d, %d bytes, equal %v", a.status, len(a.body), bytes.Equal(a.body, data))
	}
	a := ta.do(t, call{method: "GET", path: base + "?path=/work&list=1", tenant: "acme"})
	var fl api.FileList
	if err := json.Unmarshal(a.body, &fl); err != nil || a.status != 200 || len(fl.Files) != 1 ||
		fl.Files[0].Name != "data.bin" || fl.Files[0].Size != 1<<20 || fl.Files[0].Mode.Perm() != 0o600 {
		t.Errorf("list: %d %s", a.status, a.body)
	}
	tests := []struct {
		name   string
		c      call
		status int
	}{
		{"missing file", call{method: "GET", path: base + "?path=/work/nope"}, 404},
		{"missing dir", call{method: "GET", path: base + "?path=/nope&list=1"}, 404},
		{"no path", call{method: "GET", path: base}, 400},
		{"relative path", call{method: "GET", path: base + "?path=work/data.bin"}, 400},
		{"dotdot path", call{method: "PUT", path: base + "?path=/work/../../etc/passwd", body: "x"}, 400},
		{"bad mode", call{method: "PUT", path: base + "?path=/work/x&mode=rwx", body: "x"}, 400},
		{"too large", call{method: "PUT", path: base + "?path=/work/big", body: strings.Repeat("x", 3<<20)}, 413},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.c.tenant = "acme"
			if a := ta.do(t, tt.c); a.status != tt.status {
				t.Errorf("status %d %s, want %d", a.status, a.body, tt.status)
			}
		})
	}
	// The oversize upload left nothing behind.
	if a := ta.do(t, call{method: "GET", path: base + "?path=/work/big", tenant: "acme"}); a.status != 404 {
		t.Errorf("oversize upload left a file: %d", a.status)
	}
}

// TestUploadStreamed sends an upload whose length is unknown up front
// (chunked), so the limit must be enforced while streaming.
func TestUploadStreamed(t *testing.T) {
	ta := newTestAPI(t)
	sb := ta.create(t, "acme")
	pr, pw := io.Pipe()
	go func() {
		chunk := bytes.Repeat([]byte("y"), 64<<10)
		for range 64 { // 4 MiB, beyond the 2 MiB limit
			if _, err := pw.Write(chunk); err != nil {
				return
			}
		}
		pw.Close()
	}()
	req, _ := http.NewRequest("PUT", ta.srv.URL+"/v1/sandboxes/"+sb.ID+"/files?path=/s/big", pr)
	req.Header.Set("X-Test-Tenant", "acme")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 413 {
		t.Errorf("status %d, want 413", resp.StatusCode)
	}
}

func TestLifecycleStatuses(t *testing.T) {
	ta := newTestAPI(t)
	sb := ta.create(t, "acme")
	p := "/v1/sandboxes/" + sb.ID
	steps := []struct {
		name   string
		c      call
		status int
		state  tartarus.State
	}{
		{"pause", call{method: "POST", path: p + "/pause"}, 200, tartarus.StatePaused},
		{"exec while paused", call{method: "POST", path: p + "/exec", body: `{"cmd":["true"]}`}, 409, tartarus.StatePaused},
		{"stream exec while paused", call{method: "POST", path: p + "/exec", body: `{"cmd":["true"]}`, header: map[string]string{"Accept": api.NDJSON}}, 409, tartarus.StatePaused},
		{"files while paused", call{method: "GET", path: p + "/files?path=/x"}, 409, tartarus.StatePaused},
		{"upload while paused", call{method: "PUT", path: p + "/files?path=/x", body: "x"}, 409, tartarus.StatePaused},
		{"pause again", call{method: "POST", path: p + "/pause"}, 200, tartarus.StatePaused},
		{"resume", call{method: "POST", path: p + "/resume"}, 200, tartarus.StateRunning},
		{"hibernate", call{method: "POST", path: p + "/hibernate"}, 501, tartarus.StateRunning},
		{"wake", call{method: "POST", path: p + "/wake"}, 501, tartarus.StateRunning},
		{"delete", call{method: "DELETE", path: p}, 202, tartarus.StateTerminated},
		{"delete again", call{method: "DELETE", path: p}, 202, tartarus.StateTerminated},
		{"exec after delete", call{method: "POST", path: p + "/exec", body: `{"cmd":["true"]}`}, 409, tartarus.StateTerminated},
		{"resume after delete", call{method: "POST", path: p + "/resume"}, 409, tartarus.StateTerminated},
	}
	for _, s := range steps {
		s.c.tenant = "acme"
		a := ta.do(t, s.c)
		if a.status != s.status {
			t.Errorf("%s: status %d %s, want %d", s.name, a.status, a.body, s.status)
		}
		if got, _ := ta.st.Get(context.Background(), sb.ID); got.State != s.state {
			t.Errorf("%s: state %s, want %s", s.name, got.State, s.state)
		}
	}
}

func TestInfoRoutes(t *testing.T) {
	ta := newTestAPI(t)
	ta.create(t, "acme")
	a := ta.do(t, call{method: "GET", path: "/v1/templates", tenant: "acme"})
	if a.status != 200 || !strings.Contains(string(a.body), `"name":"base"`) {
		t.Errorf("templates: %d %s", a.status, a.body)
	}
	a = ta.do(t, call{method: "GET", path: "/v1/nodes", tenant: "acme"})
	var nl api.NodeList
	if err := json.Unmarshal(a.body, &nl); err != nil || len(nl.Nodes) != 1 || nl.Nodes[0].Runtimes[0].MaxMemoryMB != 1024 {
		t.Errorf("nodes: %d %s", a.status, a.body)
	}
	if a := ta.do(t, call{method: "GET", path: "/healthz"}); a.status != 200 {
		t.Errorf("healthz: %d %s", a.status, a.body)
	}
	if a := ta.do(t, call{method: "GET", path: "/v1/nope", tenant: "acme"}); a.status != 404 || a.errCode() != "not_found" {
		t.Errorf("unknown route: %d %s", a.status, a.body)
	}
	if a := ta.do(t, call{method: "PATCH", path: "/v1/sandboxes", tenant: "acme"}); a.status != 405 {
		t.Errorf("wrong method: %d %s", a.status, a.body)
	}
	a = ta.do(t, call{method: "GET", path: "/metrics"})
	for _, want := range []string{
		`tartarus_http_requests_total{route="POST /v1/sandboxes",status="201"} 1`,
		`tartarus_http_requests_total{route="GET /v1/nope",status="404"}`, // must not appear: raw paths never become labels
		`tartarus_sandboxes{state="running"} 1`,
		`tartarus_http_request_duration_seconds_bucket{route="GET /v1/templates"`,
	} {
		has := strings.Contains(string(a.body), want)
		if strings.Contains(want, "/v1/nope") == has {
			t.Errorf("metrics: %q present=%v", want, has)
		}
	}
	// Without templates the node cannot create sandboxes: not healthy.
	delete(ta.cat, "base")
	if a := ta.do(t, call{method: "GET", path: "/healthz"}); a.status != 503 {
		t.Errorf("healthz without templates: %d %s", a.status, a.body)
	}
}

func TestRequestID(t *testing.T) {
	ta := newTestAPI(t)
	tests := []struct {
		sent     string
		want     string
		generate bool
	}{
		{"abc-123", "abc-123", false},
		{"", "", true},
		{"bad id with spaces", "", true},
		{strings.Repeat("a", 200), "", true},
	}
	for _, tt := range tests {
		a := ta.do(t, call{method: "GET", path: "/healthz", header: map[string]string{RequestIDHeader: tt.sent}})
		got := a.header.Get(RequestIDHeader)
		if tt.generate && (len(got) != 16 || got == tt.sent) || !tt.generate && got != tt.want {
			t.Errorf("sent %q: echoed %q", tt.sent, got)
		}
	}
}

func TestStatusFor(t *testing.T) {
	tests := []struct {
		err    error
		status int
	}{
		{tartarus.Errorf(tartarus.ErrNotFound, "x"), 404},
		{tartarus.Errorf(tartarus.ErrInvalid, "x"), 400},
		{tartarus.Errorf(tartarus.ErrAlreadyExists, "x"), 409},
		{tartarus.Errorf(tartarus.ErrFailedPrecondition, "x"), 409},
		{tartarus.Errorf(tartarus.ErrResourceExhausted, "x"), 422},
		{tartarus.Errorf(tartarus.ErrUnauthenticated, "x"), 401},
		{tartarus.Errorf(tartarus.ErrPermissionDenied, "x"), 403},
		{tartarus.Errorf(tartarus.ErrNotImplemented, "x"), 501},
		{tartarus.Errorf(tartarus.ErrUnavailable, "x"), 503},
		{tartarus.Errorf(tartarus.ErrTimeout, "x"), 504},
		{&http.MaxBytesError{Limit: 1}, 413},
		{errors.New("disk on fire"), 500},
	}
	for _, tt := range tests {
		if got, _ := errorBody(tt.err, ""); got != tt.status {
			t.Errorf("errorBody(%v) status = %d, want %d", tt.err, got, tt.status)
		}
	}
	if _, body := errorBody(errors.New("secret detail"), "r1"); strings.Contains(body.Error.Message, "secret") {
		t.Errorf("internal detail leaked: %q", body.Error.Message)
	}
}
