package e2b

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/tartarus-sandbox/tartarus/pkg/clock"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus/api"
)

// These tests put the handler in front of a fake native API: they check
// the translation (routing, shapes, errors, the Connect framing). The
// real SDK against a real server is cmd/tartarus's TestE2BSDKEndToEnd.

const testKey = "tk_0123456789ab_0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"

// fakeNative answers like the native API for one sandbox, sb-1, owned by
// testKey; any other key is unauthenticated and any other id not found.
func fakeNative(testing.TB) http.Handler {
	mux := http.NewServeMux()
	errJSON := func(w http.ResponseWriter, status int, code, msg string) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		_ = json.NewEncoder(w).Encode(api.ErrorBody{Error: api.ErrorDetail{Code: code, Message: msg}})
	}
	sb := func(id string) *tartarus.Sandbox {
		return &tartarus.Sandbox{ID: id, Template: "python", State: tartarus.StateRunning, CPUs: 1, MemoryMB: 256,
			Metadata: map[string]string{"k": "v"}, CreatedAt: time.Unix(1000, 0).UTC(), ExpiresAt: time.Unix(2000, 0).UTC()}
	}
	mux.HandleFunc("POST /v1/sandboxes", func(w http.ResponseWriter, r *http.Request) {
		var in tartarus.CreateRequest
		_ = json.NewDecoder(r.Body).Decode(&in)
		if in.Template != "python" {
			errJSON(w, 404, "not_found", "template "+in.Template+": not found")
			return
		}
		w.WriteHeader(201)
		_ = json.NewEncoder(w).Encode(sb("sb-new"))
	})
	mux.HandleFunc("GET /v1/sandboxes", func(w http.ResponseWriter, r *http.Request) {
		if got := r.URL.Query().Get("metadata"); got != "" && got != "k=v" {
			_ = json.NewEncoder(w).Encode(api.SandboxList{Sandboxes: []*tartarus.Sandbox{}})
			return
		}
		_ = json.NewEncoder(w).Encode(api.SandboxList{Sandboxes: []*tartarus.Sandbox{sb("sb-1")}})
	})
	mux.HandleFunc("POST /v1/sandboxes/sb-1/fork", func(w http.ResponseWriter, r *http.Request) {
		var in api.ForkRequest
		_ = json.NewDecoder(r.Body).Decode(&in)
		var out api.SandboxList
		for i := range in.Count {
			out.Sandboxes = append(out.Sandboxes, sb("sb-fork-"+strconv.Itoa(i)))
		}
		w.WriteHeader(201)
		_ = json.NewEncoder(w).Encode(out)
	})
	mux.HandleFunc("GET /v1/sandboxes/sb-1", func(w http.ResponseWriter, _ *http.Request) { _ = json.NewEncoder(w).Encode(sb("sb-1")) })
	mux.HandleFunc("GET /v1/sandboxes/sb-1/files/stat", func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Query().Get("path") != "/root/a.txt" {
			errJSON(w, 404, "not_found", "no such file")
			return
		}
		_ = json.NewEncoder(w).Encode(tartarus.FileInfo{Name: "a.txt", Size: 5, Mode: 0o644, Path: "/root/a.txt", ModTime: time.Unix(1000, 0)})
	})
	mux.HandleFunc("GET /v1/sandboxes/sb-1/files/watch", func(w http.ResponseWriter, _ *http.Request) {
		for _, l := range []api.WatchLine{{Type: api.WatchWatching, Name: "/tmp"}, {Type: "create", Name: "new.txt"}} {
			_ = json.NewEncoder(w).Encode(l)
		}
	})
	mux.HandleFunc("/v1/sandboxes/sb-1/ports/{port}/{path...}", func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, "port "+r.PathValue("port")+" path /"+r.PathValue("path")+" "+r.Method)
	})
	mux.HandleFunc("POST /v1/sandboxes/{id}/processes", func(w http.ResponseWriter, r *http.Request) {
		errJSON(w, 404, "not_found", "sandbox "+r.PathValue("id")+": not found")
	})
	auth := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "Bearer "+testKey {
			errJSON(w, 401, "unauthenticated", "bad key")
			return
		}
		if strings.HasPrefix(r.URL.Path, "/v1/sandboxes/") && !strings.HasPrefix(r.URL.Path, "/v1/sandboxes/sb-1") {
			errJSON(w, 404, "not_found", "sandbox: not found")
			return
		}
		mux.ServeHTTP(w, r)
	})
	return auth
}

func newTestHandler(t *testing.T) *Handler {
	t.Helper()
	h, err := New(Config{Native: fakeNative(t), Domain: "sbx.example.com"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close() })
	return h
}

func TestSandboxTarget(t *testing.T) {
	h := &Handler{cfg: Config{Domain: "sbx.example.com"}}
	for _, tc := range []struct {
		name    string
		host    string
		headers map[string]string
		id      string
		port    int
		ok      bool
	}{
		{"envd host", "49983-sb-1.sbx.example.com", nil, "sb-1", 49983, true},
		{"envd host with port", "49983-sb-1.sbx.example.com:443", nil, "sb-1", 49983, true},
		{"other port", "8080-sb-1.SBX.example.com", nil, "sb-1", 8080, true},
		{"control plane host", "api.sbx.example.com", nil, "", 0, false},
		{"another domain", "49983-sb-1.example.org", nil, "", 0, false},
		{"deeper name", "49983-sb-1.x.sbx.example.com", nil, "", 0, false},
		{"port out of range", "70000-sb-1.sbx.example.com", nil, "", 0, false},
		{"headers", "127.0.0.1:3000", map[string]string{"E2b-Sandbox-Id": "sb-2", "E2b-Sandbox-Port": "49983"}, "sb-2", 49983, true},
		{"header id only", "127.0.0.1:3000", map[string]string{"E2b-Sandbox-Id": "sb-2"}, "sb-2", 49983, true},
		{"bad header port", "127.0.0.1:3000", map[string]string{"E2b-Sandbox-Id": "sb-2", "E2b-Sandbox-Port": "x"}, "sb-2", 0, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := httptest.NewRequest("GET", "/health", nil)
			r.Host = tc.host
			for k, v := range tc.headers {
				r.Header.Set(k, v)
			}
			id, port, ok := h.sandboxTarget(r)
			if id != tc.id || port != tc.port || ok != tc.ok {
				t.Errorf("got %q %d %v, want %q %d %v", id, port, ok, tc.id, tc.port, tc.ok)
			}
		})
	}
}

func TestKeyForms(t *testing.T) {
	e := E2BKey(testKey)
	if !strings.HasPrefix(e, "e2b_") || strings.Contains(e[4:], "_") {
		t.Fatalf("E2BKey = %q", e)
	}
	if got := NativeKey(e); got != testKey {
		t.Errorf("NativeKey(E2BKey(k)) = %q, want %q", got, testKey)
	}
	for _, k := range []string{"", "tk_short_key", "e2b_abc", "e2b_" + strings.Repeat("g", 76), testKey} {
		if got := NativeKey(k); got != k {
			t.Errorf("NativeKey(%q) = %q: should pass through", k, got)
		}
	}
	if E2BKey("tk_0123456789ab_XYZ") != "" {
		t.Error("E2BKey of a malformed key should be empty")
	}
}

func TestConfigValidate(t *testing.T) {
	err := (&Config{Domain: "/x", Home: "rel"}).Validate()
	if err == nil {
		t.Fatal("want errors")
	}
	for _, want := range []string{"no native API handler", "domain", "home"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("%v: does not mention %q", err, want)
		}
	}
}

func do(t testing.TB, h http.Handler, method, path string, body io.Reader, headers map[string]string) *httptest.ResponseRecorder {
	t.Helper()
	r := httptest.NewRequest(method, path, body)
	for k, v := range headers {
		r.Header.Set(k, v)
	}
	w := httptest.NewRecorder()
	h.ServeHTTP(w, r)
	return w
}

func TestControlPlane(t *testing.T) {
	h := newTestHandler(t)
	key := map[string]string{"X-API-Key": E2BKey(testKey)}
	for _, tc := range []struct {
		name, method, path, body string
		headers                  map[string]string
		status                   int
		want                     string // a fragment of the answer
	}{
		{"no key", "GET", "/v2/sandboxes", "", nil, 401, `{"code":401,"message":"no API key`},
		{"bad key", "GET", "/v2/sandboxes", "", map[string]string{"X-API-Key": "e2b_nope"}, 401, `"code":401`},
		{"create", "POST", "/v2/sandboxes", `{"templateID":"base","timeout":60,"metadata":{"k":"v"}}`, key, 201,
			`"templateID":"base","sandboxID":"sb-new","clientID":"tartarus","envdVersion":"` + EnvdVersion + `","envdAccessToken":"e2b_`},
		{"create unknown template", "POST", "/v2/sandboxes", `{"templateID":"nope"}`, key, 404, `{"code":404,"message":"template nope: not found"}`},
		{"create without template", "POST", "/v2/sandboxes", `{}`, key, 400, `"code":400`},
		{"create bad json", "POST", "/v2/sandboxes", `{`, key, 400, `"code":400`},
		{"create bad timeout", "POST", "/v2/sandboxes", `{"templateID":"base","timeout":-1}`, key, 400, `"code":400`},
		{"list by metadata", "GET", "/v2/sandboxes?metadata=k%3Dv", "", key, 200, `"sandboxID":"sb-1"`},
		{"list by other metadata", "GET", "/v2/sandboxes?metadata=k%3Dw", "", key, 200, `[]`},
		{"list bad state", "GET", "/v2/sandboxes?state=gone", "", key, 400, `"code":400`},
		{"list v1", "GET", "/sandboxes", "", key, 200, `"state":"running"`},
		{"get", "GET", "/sandboxes/sb-1", "", key, 200, `"endAt":"1970-01-01T00:33:20Z"`},
		{"another tenant's sandbox", "GET", "/sandboxes/sb-2", "", key, 404, `{"code":404,`},
		{"timeout without seconds", "POST", "/sandboxes/sb-1/timeout", `{}`, key, 400, `"code":400`},
		{"fork", "POST", "/sandboxes/sb-1/fork", `{"count":2}`, key, 201, `[{"sandbox":{"templateID":"base","sandboxID":"sb-fork-0"`},
		{"fork too many", "POST", "/sandboxes/sb-1/fork", `{"count":17}`, key, 400, `"code":400`},
		{"unknown route", "GET", "/nope", "", key, 404, `is not part of the E2B API`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := do(t, h, tc.method, tc.path, strings.NewReader(tc.body), tc.headers)
			if w.Code != tc.status || !strings.Contains(w.Body.String(), tc.want) {
				t.Errorf("%s %s: %d %s, want %d with %s", tc.method, tc.path, w.Code, w.Body, tc.status, tc.want)
			}
		})
	}
}

func TestOtherPortsGoToThePortProxy(t *testing.T) {
	h := newTestHandler(t)
	for _, tc := range []struct {
		name    string
		host    string
		headers map[string]string
		status  int
		want    string
	}{
		{"by host", "8080-sb-1.sbx.example.com", map[string]string{"X-Access-Token": E2BKey(testKey)}, 200, "port 8080 path /a/b POST"},
		{"by headers", "127.0.0.1", map[string]string{"E2b-Sandbox-Id": "sb-1", "E2b-Sandbox-Port": "3000", "X-API-Key": testKey}, 200, "port 3000 path /a/b POST"},
		{"no credentials", "8080-sb-1.sbx.example.com", nil, 401, "unauthenticated"},
		{"bad port header", "127.0.0.1", map[string]string{"E2b-Sandbox-Id": "sb-1", "E2b-Sandbox-Port": "0"}, 400, `"code":400`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := httptest.NewRequest("POST", "/a/b", nil)
			r.Host = tc.host
			for k, v := range tc.headers {
				r.Header.Set(k, v)
			}
			w := httptest.NewRecorder()
			h.ServeHTTP(w, r)
			if w.Code != tc.status || !strings.Contains(w.Body.String(), tc.want) {
				t.Errorf("%d %s, want %d with %s", w.Code, w.Body, tc.status, tc.want)
			}
		})
	}
}

func envdHeaders(extra map[string]string) map[string]string {
	h := map[string]string{"E2b-Sandbox-Id": "sb-1", "E2b-Sandbox-Port": "49983", "X-Access-Token": E2BKey(testKey)}
	for k, v := range extra {
		h[k] = v
	}
	return h
}

func TestConnectUnary(t *testing.T) {
	h := newTestHandler(t)
	jsonCT := map[string]string{"Content-Type": "application/json"}
	for _, tc := range []struct {
		name, path, body string
		headers          map[string]string
		status           int
		want             string
	}{
		{"stat", "/filesystem.Filesystem/Stat", `{"path":"a.txt"}`, envdHeaders(jsonCT), 200,
			`{"entry":{"name":"a.txt","type":"FILE_TYPE_FILE","path":"/root/a.txt","size":"5","mode":420,"permissions":"-rw-r--r--","owner":"root","group":"root","modifiedTime":"1970-01-01T00:16:40Z"}}`},
		{"stat missing", "/filesystem.Filesystem/Stat", `{"path":"/nope"}`, envdHeaders(jsonCT), 404, `{"code":"not_found","message":"no such file"}`},
		{"bad json", "/filesystem.Filesystem/Stat", `{"path":`, envdHeaders(jsonCT), 400, `"code":"invalid_argument"`},
		{"binary codec", "/filesystem.Filesystem/Stat", ``, envdHeaders(map[string]string{"Content-Type": "application/proto"}), 400, `JSON only`},
		{"no token", "/filesystem.Filesystem/Stat", `{}`, map[string]string{"E2b-Sandbox-Id": "sb-1", "Content-Type": "application/json"}, 401, `"code":"unauthenticated"`},
		{"another tenant's sandbox", "/filesystem.Filesystem/Stat", `{"path":"/a"}`, envdHeaders(map[string]string{"E2b-Sandbox-Id": "sb-2", "Content-Type": "application/json"}), 404, `"code":"not_found"`},
		{"unknown method", "/filesystem.Filesystem/Nope", `{}`, envdHeaders(jsonCT), 404, `"code":"unimplemented"`},
		{"bad signal", "/process.Process/SendSignal", `{"process":{"pid":3},"signal":"SIGNAL_SIGHUP"}`, envdHeaders(jsonCT), 400, `"code":"invalid_argument"`},
		{"no selector", "/process.Process/CloseStdin", `{}`, envdHeaders(jsonCT), 400, `process selector`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := do(t, h, "POST", tc.path, strings.NewReader(tc.body), tc.headers)
			if w.Code != tc.status || !strings.Contains(w.Body.String(), tc.want) {
				t.Errorf("%s: %d %s, want %d with %s", tc.path, w.Code, w.Body, tc.status, tc.want)
			}
		})
	}
}

func TestWatcherCalls(t *testing.T) {
	h := newTestHandler(t)
	hdr := envdHeaders(map[string]string{"Content-Type": "application/json"})
	w := do(t, h, "POST", "/filesystem.Filesystem/CreateWatcher", strings.NewReader(`{"path":"/tmp"}`), hdr)
	var created struct {
		WatcherID string `json:"watcherId"`
	}
	if err := json.Unmarshal(w.Body.Bytes(), &created); w.Code != 200 || err != nil || created.WatcherID == "" {
		t.Fatalf("CreateWatcher: %d %s", w.Code, w.Body)
	}
	id := `{"watcherId":"` + created.WatcherID + `"}`
	// The fake's stream sends one event and ends: the events come first,
	// then the end.
	deadline := time.Now().Add(5 * time.Second)
	for {
		w = do(t, h, "POST", "/filesystem.Filesystem/GetWatcherEvents", strings.NewReader(id), hdr)
		if strings.Contains(w.Body.String(), "new.txt") || time.Now().After(deadline) {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if w.Code != 200 || w.Body.String() != `{"events":[{"name":"new.txt","type":"EVENT_TYPE_CREATE"}]}`+"\n" {
		t.Fatalf("GetWatcherEvents: %d %s", w.Code, w.Body)
	}
	for w.Code == 200 && time.Now().Before(deadline) {
		w = do(t, h, "POST", "/filesystem.Filesystem/GetWatcherEvents", strings.NewReader(id), hdr)
	}
	if !strings.Contains(w.Body.String(), `"code":"failed_precondition"`) {
		t.Fatalf("GetWatcherEvents after the end: %d %s", w.Code, w.Body)
	}
	w = do(t, h, "POST", "/filesystem.Filesystem/RemoveWatcher", strings.NewReader(id), hdr)
	if w.Code != 404 {
		t.Fatalf("RemoveWatcher of an ended watcher: %d %s", w.Code, w.Body)
	}
}

func envelope(flags byte, msg string) []byte {
	b := make([]byte, 5, 5+len(msg))
	b[0] = flags
	binary.BigEndian.PutUint32(b[1:], uint32(len(msg)))
	return append(b, msg...)
}

// readEnvelopes splits a stream answer into its messages.
func readEnvelopes(t *testing.T, body []byte) (msgs []string, end string) {
	t.Helper()
	for len(body) > 0 {
		if len(body) < 5 {
			t.Fatalf("short envelope %q", body)
		}
		n := binary.BigEndian.Uint32(body[1:5])
		msg := string(body[5 : 5+n])
		if body[0]&flagEndStream != 0 {
			return msgs, msg
		}
		msgs = append(msgs, msg)
		body = body[5+n:]
	}
	t.Fatal("no end-of-stream envelope")
	return nil, ""
}

func TestConnectStreams(t *testing.T) {
	h := newTestHandler(t)
	streamCT := envdHeaders(map[string]string{"Content-Type": "application/connect+json"})
	for _, tc := range []struct {
		name, path string
		body       []byte
		msgs       []string
		end        string
	}{
		{"watch", "/filesystem.Filesystem/WatchDir", envelope(0, `{"path":"/tmp","recursive":true,"unknownField":1}`),
			[]string{`{"start":{}}`, `{"filesystem":{"name":"new.txt","type":"EVENT_TYPE_CREATE"}}`}, `{}`},
		{"start in a missing sandbox", "/process.Process/Start", envelope(0, `{"process":{"cmd":"/bin/bash","args":["-c","true"]}}`),
			nil, `{"error":{"code":"not_found","message":"sandbox sb-1: not found"}}`},
		{"start without cmd", "/process.Process/Start", envelope(0, `{"process":{}}`), nil, `"code":"invalid_argument"`},
		{"compressed", "/process.Process/Start", envelope(flagCompressed, `x`), nil, `"code":"unimplemented"`},
		{"short body", "/process.Process/Start", []byte{0, 0}, nil, `"code":"invalid_argument"`},
		{"huge length", "/process.Process/Start", []byte{0, 0xff, 0xff, 0xff, 0xff}, nil, `over 8 MiB`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := do(t, h, "POST", tc.path, bytes.NewReader(tc.body), streamCT)
			if w.Code != 200 || w.Header().Get("Content-Type") != "application/connect+json" {
				t.Fatalf("%d %q", w.Code, w.Header().Get("Content-Type"))
			}
			msgs, end := readEnvelopes(t, w.Body.Bytes())
			if strings.Join(msgs, "\n") != strings.Join(tc.msgs, "\n") || !strings.Contains(end, tc.end) {
				t.Errorf("messages %q end %s, want %q end with %s", msgs, end, tc.msgs, tc.end)
			}
		})
	}
}

func FuzzReadEnvelope(f *testing.F) {
	for _, seed := range [][]byte{envelope(0, `{"path":"/x"}`), envelope(1, `x`), {0, 0}, {0, 0xff, 0xff, 0xff, 0xff}, envelope(0, `{"process":{"pid":"12"}}`)} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		var in startRequest
		_ = readEnvelope(bytes.NewReader(b), &in)
		var sel connectRequest
		_ = readEnvelope(bytes.NewReader(b), &sel)
	})
}

func TestNativeSeesTheCallersAddress(t *testing.T) {
	var seen []string
	native := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		seen = append(seen, r.RemoteAddr+" "+r.Header.Get(remoteHeader))
		w.WriteHeader(404)
		_, _ = io.WriteString(w, `{"error":{"code":"not_found","message":"x"}}`)
	})
	h, err := New(Config{Native: native})
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	r := httptest.NewRequest("GET", "/sandboxes/sb-1", nil)
	r.RemoteAddr = "192.0.2.7:5555"
	r.Header.Set("X-API-Key", testKey)
	h.ServeHTTP(httptest.NewRecorder(), r)
	// A port request that forges the header gets its own address instead.
	r = httptest.NewRequest("GET", "/", nil)
	r.RemoteAddr = "192.0.2.8:6666"
	r.Header.Set("E2b-Sandbox-Id", "sb-1")
	r.Header.Set("E2b-Sandbox-Port", "8080")
	r.Header.Set(remoteHeader, "10.0.0.1:1")
	h.ServeHTTP(httptest.NewRecorder(), r)
	want := []string{"192.0.2.7:5555 ", "192.0.2.8:6666 "}
	if strings.Join(seen, "|") != strings.Join(want, "|") {
		t.Errorf("native saw %q, want %q", seen, want)
	}
}

func TestKeepaliveOnTheInjectedClock(t *testing.T) {
	fake := clock.NewFake(time.Unix(0, 0))
	h := &Handler{cfg: Config{Clock: fake}}
	rec := httptest.NewRecorder()
	s := &stream{w: rec, rc: http.NewResponseController(rec)}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		h.keepalive(ctx, cancel, s)
		close(done)
	}()
	for fake.Tickers() == 0 {
		time.Sleep(time.Millisecond)
	}
	fake.Advance(keepaliveEvery)
	for {
		s.mu.Lock()
		n := rec.Body.Len()
		s.mu.Unlock()
		if n > 0 {
			break
		}
		time.Sleep(time.Millisecond)
	}
	cancel()
	<-done
	if msgs, _ := readEnvelopes(t, append(rec.Body.Bytes(), envelope(flagEndStream, "{}")...)); len(msgs) != 1 || msgs[0] != `{"event":{"keepalive":{}}}` {
		t.Errorf("keepalive messages %q", msgs)
	}
}
