// Package clustertest starts the real engines a cluster test needs that
// pkg/store/storetest does not: a throwaway Redis that the test can
// restart.
package clustertest

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"
)

// Redis is a redis-server on a loopback port.
type Redis struct {
	// URL is redis://127.0.0.1:PORT/0.
	URL  string
	bin  string
	dir  string
	port int
	cmd  *exec.Cmd
	done chan error
}

// StartRedis starts redis-server for t and stops it when t ends. Without
// the binary the test is skipped, or fails when TARTARUS_E2E=1.
func StartRedis(t testing.TB) *Redis {
	t.Helper()
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		if os.Getenv("TARTARUS_E2E") == "1" {
			t.Fatal("redis-server is not installed (scripts/deps.sh --test installs it)")
		}
		t.Skip("redis-server is not installed; set TARTARUS_E2E=1 to make this a failure")
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	r := &Redis{URL: fmt.Sprintf("redis://127.0.0.1:%d/0", port), bin: bin, dir: t.TempDir(), port: port}
	t.Cleanup(r.Stop)
	r.Start(t)
	return r
}

// Start starts the server (again) and waits until it accepts connections.
func (r *Redis) Start(t testing.TB) {
	t.Helper()
	r.cmd = exec.Command(r.bin, "--port", strconv.Itoa(r.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
		"--dir", r.dir, "--logfile", filepath.Join(r.dir, "redis.log"))
	r.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := r.cmd.Start(); err != nil {
		t.Fatalf("start redis-server: %v", err)
	}
	r.done = make(chan error, 1)
	go func(cmd *exec.Cmd, done chan error) { done <- cmd.Wait() }(r.cmd, r.done)
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", "127.0.0.1:"+strconv.Itoa(r.port), time.Second)
		if err == nil {
			c.Close()
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("redis-server did not come up on port %d: %v", r.port, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Stop stops the server.
func (r *Redis) Stop() {
	if r.cmd == nil {
		return
	}
	_ = r.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-r.done:
	case <-time.After(10 * time.Second):
		_ = r.cmd.Process.Kill()
		<-r.done
	}
	r.cmd = nil
}
