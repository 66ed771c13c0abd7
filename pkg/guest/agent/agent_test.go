package agent_test

import (
	"encoding/json"
	"io"
	"net"
	"os"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/yamux"

	"github.com/tartarus-sandbox/tartarus/pkg/guest/agent"
	"github.com/tartarus-sandbox/tartarus/pkg/guest/proto"
)

// rawHost speaks the protocol directly, to send what the Go client never
// does.
func rawHost(t *testing.T) *yamux.Session {
	t.Helper()
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	conn := func(fd int) net.Conn {
		f := os.NewFile(uintptr(fd), "socketpair")
		defer f.Close()
		c, err := net.FileConn(f)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	host, guest := conn(fds[0]), conn(fds[1])
	a := agent.New(agent.Options{})
	go a.Serve(t.Context(), guest)
	t.Cleanup(func() { host.Close(); a.Close() })
	r, err := proto.ClientHandshake(host)
	if err != nil {
		t.Fatal(err)
	}
	sess, err := yamux.Client(struct {
		io.Reader
		io.WriteCloser
	}{r, host}, proto.YamuxConfig(nil, proto.HostWindow))
	if err != nil {
		t.Fatal(err)
	}
	return sess
}

func final(t *testing.T, fr *proto.FrameReader) (proto.FrameType, []byte) {
	t.Helper()
	for {
		ft, p, err := fr.Next()
		if err != nil {
			t.Fatal(err)
		}
		if ft == proto.FrameResult || ft == proto.FrameError {
			return ft, append([]byte(nil), p...)
		}
	}
}

// TestInBandCancel: a FrameCancel on the exec's own stream kills it.
func TestInBandCancel(t *testing.T) {
	sess := rawHost(t)
	st, err := sess.OpenStream()
	if err != nil {
		t.Fatal(err)
	}
	fw, fr := proto.NewFrameWriter(st), proto.NewFrameReader(st)
	fw.WriteJSON(proto.FrameRequest, &proto.Request{Op: proto.OpExec, Exec: &proto.ExecRequest{Cmd: []string{"sleep", "30"}}})
	time.Sleep(100 * time.Millisecond)
	start := time.Now()
	fw.Write(proto.FrameCancel, nil)
	ft, p := final(t, fr)
	var res proto.ExecResult
	if ft != proto.FrameResult || json.Unmarshal(p, &res) != nil || res.ExitCode != 137 || res.Signal != "SIGKILL" {
		t.Fatalf("%v %s", ft, p)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Fatalf("cancel took %v", d)
	}
}

// TestProtocolErrors: malformed streams get an error frame, and the
// session lives on.
func TestProtocolErrors(t *testing.T) {
	sess := rawHost(t)
	tests := []struct {
		name string
		send func(fw *proto.FrameWriter)
		code proto.Code
	}{
		{"data first", func(fw *proto.FrameWriter) { fw.Write(proto.FrameData, []byte("x")) }, proto.CodeInvalid},
		{"bad json", func(fw *proto.FrameWriter) { fw.Write(proto.FrameRequest, []byte("{")) }, proto.CodeInvalid},
		{"unknown op", func(fw *proto.FrameWriter) { fw.Write(proto.FrameRequest, []byte(`{"op":"reboot"}`)) }, proto.CodeNotImplemented},
		{"write with wrong frame", func(fw *proto.FrameWriter) {
			fw.WriteJSON(proto.FrameRequest, &proto.Request{Op: proto.OpWriteFile, Path: t.TempDir() + "/f"})
			fw.Write(proto.FrameStdout, []byte("x"))
		}, proto.CodeInvalid},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			st, err := sess.OpenStream()
			if err != nil {
				t.Fatal(err)
			}
			defer st.Close()
			tc.send(proto.NewFrameWriter(st))
			ft, p := final(t, proto.NewFrameReader(st))
			var e proto.Error
			if ft != proto.FrameError || json.Unmarshal(p, &e) != nil || e.Code != tc.code {
				t.Fatalf("%v %s", ft, p)
			}
		})
	}
	// A write abandoned without FrameEOF leaves no file.
	dir := t.TempDir()
	st, _ := sess.OpenStream()
	fw := proto.NewFrameWriter(st)
	fw.WriteJSON(proto.FrameRequest, &proto.Request{Op: proto.OpWriteFile, Path: dir + "/f"})
	fw.Write(proto.FrameData, []byte("partial"))
	st.Close()
	time.Sleep(100 * time.Millisecond)
	if ents, _ := os.ReadDir(dir); len(ents) != 0 {
		t.Fatalf("abandoned write left %v", ents[0].Name())
	}
	st, _ = sess.OpenStream()
	proto.NewFrameWriter(st).WriteJSON(proto.FrameRequest, &proto.Request{Op: proto.OpPing})
	if ft, _ := final(t, proto.NewFrameReader(st)); ft != proto.FrameResult {
		t.Fatal("session broken")
	}
}
