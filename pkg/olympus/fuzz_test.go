package olympus

import (
	"path"
	"strings"
	"testing"

	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

var createSeeds = []string{
	`{}`, `{"template":"base","memory_mb":512,"cpus":2,"timeout_s":60,"env":{"A":"1"},"metadata":{"k":"v"}}`,
	`{"template":`, `{"templat":"base"}`, `{} {}`, `{"cpus":"two"}`, `{"env":{"A=B":"x"}}`, `{"cpus":-1}`,
	`null`, `[]`, `{"memory_mb":1e400}`, `{"template":"../etc"}`,
}

func FuzzDecodeCreate(f *testing.F) {
	for _, s := range createSeeds {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, body string) {
		req, err := decodeCreate(strings.NewReader(body))
		if err != nil {
			return
		}
		if !tartarus.ValidName(req.Template) || req.MemoryMB < tartarus.MinMemoryMB || req.CPUs < 1 ||
			req.TimeoutS < 1 || req.TimeoutS > tartarus.MaxTimeoutS || tartarus.ValidEnv(req.Env) != nil {
			t.Fatalf("accepted an invalid request %+v from %q", req, body)
		}
	})
}

func FuzzDecodeExec(f *testing.F) {
	for _, s := range []string{`{"cmd":["echo","hi"]}`, `{"cmd":[]}`, `{"cmd":["true"],"cwd":"/tmp/../x"}`,
		`{"cmd":["sh"],"stdin":"abc","env":{"A":"b"},"timeout_s":5}`, `{"cmd":["a\u0000"]}`, `{"cmd":["x"],"cwd":"rel"}`,
		`{"cmd":["id"],"user":"app"}`, `{"cmd":["id"],"user":"1000:50"}`, `{"cmd":["id"],"user":"a b"}`} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, body string) {
		req, err := decodeExec(strings.NewReader(body))
		if err != nil {
			return
		}
		if len(req.Cmd) == 0 || req.Cmd[0] == "" || req.Timeout < 0 || tartarus.ValidEnv(req.Env) != nil || tartarus.ValidUser(req.User) != nil {
			t.Fatalf("accepted %+v from %q", req, body)
		}
		if req.Cwd != "" {
			checkPath(t, req.Cwd)
		}
	})
}

func FuzzSandboxPath(f *testing.F) {
	for _, s := range []string{"/", "/a/b", "a", "/a/../b", "/a/./b//c/", "", "/..", "/a\x00", "/...", "/a/.."} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, p string) {
		got, err := sandboxPath(p)
		if err != nil {
			return
		}
		checkPath(t, got)
		if strings.Contains(p, "..") && strings.Contains("/"+p+"/", "/../") {
			t.Fatalf("accepted %q with a '..' segment", p)
		}
	})
}

func checkPath(t *testing.T, p string) {
	t.Helper()
	if !strings.HasPrefix(p, "/") || path.Clean(p) != p || strings.Contains(p, "\x00") {
		t.Fatalf("bad path %q", p)
	}
	for _, seg := range strings.Split(p, "/") {
		if seg == ".." {
			t.Fatalf("path %q has '..'", p)
		}
	}
}
