package guest_test

import (
	"bytes"
	"context"
	"io"
	"net"
	"path/filepath"
	"testing"

	"github.com/tartarus-sandbox/tartarus/pkg/guest"
	"github.com/tartarus-sandbox/tartarus/pkg/guest/agent"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

// unixSession serves an in-process agent on a unix socket and dials it, as
// the host does through QEMU's chardev (minus the VM).
func unixSession(b *testing.B) *guest.Client {
	b.Helper()
	sock := filepath.Join(b.TempDir(), "agent.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		b.Fatal(err)
	}
	a := agent.New(agent.Options{})
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			go a.Serve(context.Background(), conn)
		}
	}()
	conn, err := net.Dial("unix", sock)
	if err != nil {
		b.Fatal(err)
	}
	c, err := guest.Dial(context.Background(), conn, nil)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		c.Close()
		ln.Close()
		a.Close()
	})
	return c
}

// BenchmarkExecTrue is one exec of `true`, request to result.
func BenchmarkExecTrue(b *testing.B) {
	c := unixSession(b)
	ctx := context.Background()
	for b.Loop() {
		res, err := c.Exec(ctx, &tartarus.ExecRequest{Cmd: []string{"true"}})
		if err != nil || res.ExitCode != 0 {
			b.Fatal(res, err)
		}
	}
}

// BenchmarkPing is the protocol's round trip: a stream, a request, a result.
func BenchmarkPing(b *testing.B) {
	c := unixSession(b)
	ctx := context.Background()
	for b.Loop() {
		if err := c.Ping(ctx); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkFileRoundTrip writes 8 MiB into the guest and reads it back.
func BenchmarkFileRoundTrip(b *testing.B) {
	c := unixSession(b)
	ctx := context.Background()
	data := make([]byte, 8<<20)
	path := filepath.Join(b.TempDir(), "f")
	b.SetBytes(2 * int64(len(data)))
	for b.Loop() {
		if err := c.WriteFile(ctx, path, 0o644, bytes.NewReader(data)); err != nil {
			b.Fatal(err)
		}
		rc, err := c.ReadFile(ctx, path)
		if err != nil {
			b.Fatal(err)
		}
		n, err := io.Copy(io.Discard, rc)
		rc.Close()
		if err != nil || n != int64(len(data)) {
			b.Fatal(n, err)
		}
	}
}
