package proto

import (
	"encoding/json"
	"errors"
	"io"
	"io/fs"
	"os"
	"strings"
	"syscall"
	"testing"

	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

// requestTests are the decoding cases; they also seed FuzzDecodeRequest.
var requestTests = []struct {
	name string
	in   string
	code Code   // "" means valid
	path string // cleaned path, for valid file ops
}{
	{"ping", `{"op":"ping"}`, "", ""},
	{"stats", `{"op":"stats"}`, "", ""},
	{"unknown fields are ignored", `{"op":"ping","future":1}`, "", ""},
	{"sync", `{"op":"sync","sync":{"unix_nano":1700000000000000000,"entropy":"AAECAw=="}}`, "", ""},
	{"sync without body", `{"op":"sync"}`, CodeInvalid, ""},
	{"sync too much entropy", `{"op":"sync","sync":{"entropy":"` + strings.Repeat("A", 4*(MaxEntropy+3)/3) + `"}}`, CodeInvalid, ""},
	{"sync with hostname", `{"op":"sync","sync":{"hostname":"sbx-1"}}`, "", ""},
	{"sync hostname too long", `{"op":"sync","sync":{"hostname":"` + strings.Repeat("h", MaxHostname+1) + `"}}`, CodeInvalid, ""},
	{"sync hostname with NUL", `{"op":"sync","sync":{"hostname":"a\u0000b"}}`, CodeInvalid, ""},
	{"exec", `{"op":"exec","exec":{"id":"1","cmd":["echo","hi"],"env":{"A":"b"},"cwd":"/tmp/../root","timeout_ms":5}}`, "", ""},
	{"exec without body", `{"op":"exec"}`, CodeInvalid, ""},
	{"exec empty cmd", `{"op":"exec","exec":{"cmd":[]}}`, CodeInvalid, ""},
	{"exec empty program", `{"op":"exec","exec":{"cmd":[""]}}`, CodeInvalid, ""},
	{"exec NUL in arg", `{"op":"exec","exec":{"cmd":["echo","a\u0000b"]}}`, CodeInvalid, ""},
	{"exec bad env name", `{"op":"exec","exec":{"cmd":["env"],"env":{"A=B":"c"}}}`, CodeInvalid, ""},
	{"exec relative cwd", `{"op":"exec","exec":{"cmd":["pwd"],"cwd":"tmp"}}`, CodeInvalid, ""},
	{"exec negative timeout", `{"op":"exec","exec":{"cmd":["true"],"timeout_ms":-1}}`, CodeInvalid, ""},
	{"exec long id", `{"op":"exec","exec":{"cmd":["true"],"id":"` + strings.Repeat("x", 65) + `"}}`, CodeInvalid, ""},
	{"cancel", `{"op":"cancel","exec_id":"7"}`, "", ""},
	{"cancel without id", `{"op":"cancel"}`, CodeInvalid, ""},
	{"signal", `{"op":"signal","signal":15}`, "", ""},
	{"signal zero", `{"op":"signal","signal":0}`, CodeInvalid, ""},
	{"signal too big", `{"op":"signal","signal":65}`, CodeInvalid, ""},
	{"signal processes", `{"op":"signal_processes","signal":15}`, "", ""},
	{"signal processes zero", `{"op":"signal_processes","signal":0}`, CodeInvalid, ""},
	{"signal processes too big", `{"op":"signal_processes","signal":99}`, CodeInvalid, ""},
	{"read", `{"op":"read_file","path":"/etc//passwd"}`, "", "/etc/passwd"},
	{"read dot-dot is cleaned", `{"op":"read_file","path":"/a/../../etc/./x/"}`, "", "/etc/x"},
	{"read relative", `{"op":"read_file","path":"etc/passwd"}`, CodeInvalid, ""},
	{"read empty path", `{"op":"read_file"}`, CodeInvalid, ""},
	{"read NUL path", `{"op":"read_file","path":"/etc/\u0000"}`, CodeInvalid, ""},
	{"read long path", `{"op":"read_file","path":"/` + strings.Repeat("a", MaxPathLen) + `"}`, CodeInvalid, ""},
	{"write", `{"op":"write_file","path":"/tmp/x","mode":420}`, "", "/tmp/x"},
	{"write setuid", `{"op":"write_file","path":"/tmp/x","mode":2541}`, "", "/tmp/x"},
	{"write bad mode", `{"op":"write_file","path":"/tmp/x","mode":65536}`, CodeInvalid, ""},
	{"list", `{"op":"list_files","path":"/"}`, "", "/"},
	{"list depth", `{"op":"list_files","path":"/","file":{"depth":3}}`, "", "/"},
	{"list negative depth", `{"op":"list_files","path":"/","file":{"depth":-1}}`, CodeInvalid, ""},
	{"list deep", `{"op":"list_files","path":"/","file":{"depth":17}}`, CodeInvalid, ""},
	{"pty", `{"op":"pty","exec":{"cmd":["sh"]},"pty":{"cols":80,"rows":24}}`, "", ""},
	{"pty without size", `{"op":"pty","exec":{"cmd":["sh"]}}`, CodeInvalid, ""},
	{"pty zero size", `{"op":"pty","exec":{"cmd":["sh"]},"pty":{"cols":0,"rows":24}}`, CodeInvalid, ""},
	{"pty huge size", `{"op":"pty","exec":{"cmd":["sh"]},"pty":{"cols":80,"rows":70000}}`, CodeInvalid, ""},
	{"pty without exec", `{"op":"pty","pty":{"cols":80,"rows":24}}`, CodeInvalid, ""},
	{"proc start", `{"op":"proc_start","exec":{"cmd":["sleep","9"]},"proc":{"tag":"web","stdin":true}}`, "", ""},
	{"proc start control tag", `{"op":"proc_start","exec":{"cmd":["sleep","9"]},"proc":{"tag":"a\u0007"}}`, CodeInvalid, ""},
	{"proc start long tag", `{"op":"proc_start","exec":{"cmd":["true"]},"proc":{"tag":"` + strings.Repeat("t", MaxTagLen+1) + `"}}`, CodeInvalid, ""},
	{"proc list", `{"op":"proc_list"}`, "", ""},
	{"proc attach by tag", `{"op":"proc_attach","proc":{"tag":"web","replay":true}}`, "", ""},
	{"proc attach nothing", `{"op":"proc_attach","proc":{}}`, CodeInvalid, ""},
	{"proc attach no body", `{"op":"proc_attach"}`, CodeInvalid, ""},
	{"proc input", `{"op":"proc_input","proc":{"pid":7,"data":"aGk=","close_stdin":true}}`, "", ""},
	{"proc signal", `{"op":"proc_signal","proc":{"pid":7},"signal":9}`, "", ""},
	{"proc signal zero", `{"op":"proc_signal","proc":{"pid":7}}`, CodeInvalid, ""},
	{"stat", `{"op":"stat","path":"/etc/"}`, "", "/etc"},
	{"stat relative", `{"op":"stat","path":"etc"}`, CodeInvalid, ""},
	{"mkdir", `{"op":"mkdir","path":"/a/b","file":{"parents":true}}`, "", "/a/b"},
	{"move", `{"op":"move","path":"/a","file":{"dest":"/b/../c"}}`, "", "/a"},
	{"move without dest", `{"op":"move","path":"/a"}`, CodeInvalid, ""},
	{"move relative dest", `{"op":"move","path":"/a","file":{"dest":"c"}}`, CodeInvalid, ""},
	{"move root", `{"op":"move","path":"/","file":{"dest":"/x"}}`, CodeInvalid, ""},
	{"remove", `{"op":"remove","path":"/tmp/x","file":{"recursive":true}}`, "", "/tmp/x"},
	{"remove root", `{"op":"remove","path":"/.."}`, CodeInvalid, ""},
	{"watch", `{"op":"watch","path":"/tmp","watch":{"recursive":true}}`, "", "/tmp"},
	{"watch no path", `{"op":"watch"}`, CodeInvalid, ""},
	{"unknown op", `{"op":"format_disk"}`, CodeNotImplemented, ""},
	{"no op", `{}`, CodeInvalid, ""},
	{"not json", `op=ping`, CodeInvalid, ""},
	{"trailing garbage", `{"op":"ping"} x`, CodeInvalid, ""},
	{"wrong types", `{"op":"exec","exec":{"cmd":"echo"}}`, CodeInvalid, ""},
	{"null", `null`, CodeInvalid, ""},
	{"empty", ``, CodeInvalid, ""},
}

func TestDecodeRequest(t *testing.T) {
	for _, tc := range requestTests {
		t.Run(tc.name, func(t *testing.T) {
			req, err := DecodeRequest([]byte(tc.in))
			if tc.code == "" {
				if err != nil {
					t.Fatalf("error %v", err)
				}
				if tc.path != "" && req.Path != tc.path {
					t.Fatalf("path = %q, want %q", req.Path, tc.path)
				}
				return
			}
			var pe *Error
			if !errors.As(err, &pe) || pe.Code != tc.code {
				t.Fatalf("error = %v, want code %s", err, tc.code)
			}
		})
	}
}

func TestExecCwdCleaned(t *testing.T) {
	req, err := DecodeRequest([]byte(`{"op":"exec","exec":{"cmd":["pwd"],"cwd":"/tmp/../root/"}}`))
	if err != nil || req.Exec.Cwd != "/root" {
		t.Fatalf("%+v %v", req, err)
	}
}

func FuzzDecodeRequest(f *testing.F) {
	for _, tc := range requestTests {
		f.Add([]byte(tc.in))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		req, err := DecodeRequest(b)
		if err != nil {
			var pe *Error
			if !errors.As(err, &pe) || pe.Code == "" {
				t.Fatalf("error %v is not a coded *Error", err)
			}
			return
		}
		// A valid request survives a round trip and stays valid.
		again, err := json.Marshal(req)
		if err != nil {
			t.Fatal(err)
		}
		req2, err := DecodeRequest(again)
		if err != nil {
			t.Fatalf("re-decoding %s: %v", again, err)
		}
		switch req.Op {
		case OpReadFile, OpWriteFile, OpListFiles:
			if !strings.HasPrefix(req.Path, "/") || req2.Path != req.Path {
				t.Fatalf("path %q then %q", req.Path, req2.Path)
			}
		case OpExec:
			if len(req.Exec.Cmd) == 0 || req.Exec.Cmd[0] == "" {
				t.Fatalf("empty command accepted: %s", b)
			}
		}
	})
}

func TestErrorClasses(t *testing.T) {
	tests := []struct {
		err   error
		code  Code
		class error
	}{
		{fs.ErrNotExist, CodeNotFound, tartarus.ErrNotFound},
		{&fs.PathError{Op: "open", Path: "/x", Err: syscall.ENOENT}, CodeNotFound, tartarus.ErrNotFound},
		{&fs.PathError{Op: "open", Path: "/x", Err: syscall.EACCES}, CodePermission, tartarus.ErrPermissionDenied},
		{&fs.PathError{Op: "mkdir", Path: "/x", Err: syscall.EEXIST}, CodeExists, tartarus.ErrAlreadyExists},
		{&fs.PathError{Op: "open", Path: "/x", Err: syscall.EISDIR}, CodeInvalid, tartarus.ErrInvalid},
		{&fs.PathError{Op: "open", Path: "/x/y", Err: syscall.ENOTDIR}, CodeInvalid, tartarus.ErrInvalid},
		{tartarus.Errorf(tartarus.ErrInvalid, "bad"), CodeInvalid, tartarus.ErrInvalid},
		{&Error{Code: CodeTimeout, Message: "slow"}, CodeTimeout, tartarus.ErrTimeout},
		{errors.New("boom"), CodeInternal, nil},
		{io.ErrUnexpectedEOF, CodeInternal, nil},
	}
	for _, tc := range tests {
		e := ErrorFrom(tc.err)
		if e.Code != tc.code {
			t.Errorf("ErrorFrom(%v).Code = %s, want %s", tc.err, e.Code, tc.code)
		}
		if got := e.Class(); got != tc.class {
			t.Errorf("class of %v = %v, want %v", tc.err, got, tc.class)
		}
	}
}

func TestModeWire(t *testing.T) {
	for _, m := range []os.FileMode{0, 0o644, 0o755, 0o600 | os.ModeSetuid, 0o750 | os.ModeSetgid, 0o777 | os.ModeSticky} {
		if got := ModeFromWire(ModeToWire(m)); got != m {
			t.Errorf("mode %v came back as %v", m, got)
		}
	}
	if ModeToWire(0o4755|os.ModeSetuid) != 0o4755 {
		t.Error("setuid is not 04000 on the wire")
	}
	if ModeToWire(os.ModeDir|0o755) != 0o755 {
		t.Error("type bits leak onto the wire")
	}
}
