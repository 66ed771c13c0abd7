package qmp

import (
	"bytes"
	"context"
	"encoding/json"
	"net"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

// TestSendFile: getfd carries the descriptor with SCM_RIGHTS, in the same
// message as the command, as QEMU requires.
func TestSendFile(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "qmp.sock")
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: sock, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	got := make(chan string, 1)
	go func() {
		conn, err := ln.AcceptUnix()
		if err != nil {
			return
		}
		defer conn.Close()
		conn.Write([]byte(`{"QMP": {"version": {"qemu": {"micro": 22, "minor": 2, "major": 7}}, "capabilities": []}}` + "\r\n"))
		for {
			buf, oob := make([]byte, 4096), make([]byte, 64)
			n, oobn, _, _, err := conn.ReadMsgUnix(buf, oob)
			if err != nil {
				return
			}
			var req struct{ Execute, ID string }
			_ = json.Unmarshal(bytes.TrimSpace(buf[:n]), &req)
			if req.Execute == "getfd" {
				msgs, _ := syscall.ParseSocketControlMessage(oob[:oobn])
				var fds []int
				if len(msgs) == 1 {
					fds, _ = syscall.ParseUnixRights(&msgs[0])
				}
				if len(fds) != 1 {
					got <- "no descriptor"
				} else {
					f := os.NewFile(uintptr(fds[0]), "passed")
					b := make([]byte, 5)
					f.ReadAt(b, 0)
					f.Close()
					got <- string(b)
				}
			}
			id, _ := json.Marshal(req.ID)
			conn.Write([]byte(`{"return": {}, "id": ` + string(id) + "}\r\n"))
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := Dial(ctx, sock)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	f, err := os.CreateTemp(t.TempDir(), "mem")
	if err != nil {
		t.Fatal(err)
	}
	f.WriteString("hello")
	if err := c.SendFile(ctx, "snapshot-memory", f); err != nil {
		t.Fatal(err)
	}
	if s := <-got; s != "hello" {
		t.Fatalf("QEMU's side read %q through the passed descriptor, want hello", s)
	}
}
