//go:build linux

package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/tartarus-sandbox/tartarus/pkg/guest/agent"
)

// portName is the name the host gives the agent's virtio-serial port.
const portName = "tartarus"

// reopenDelay is the pause between sessions, and between checks for a host
// while none is connected.
const reopenDelay = 20 * time.Millisecond

// findVirtioPort returns the device of the virtio-serial port called name.
func findVirtioPort(name string) (string, error) {
	dirs, err := filepath.Glob("/sys/class/virtio-ports/*/name")
	if err != nil {
		return "", err
	}
	for _, p := range dirs {
		b, err := os.ReadFile(p)
		if err == nil && strings.TrimSpace(string(b)) == name {
			return "/dev/" + filepath.Base(filepath.Dir(p)), nil
		}
	}
	return "", fmt.Errorf("no virtio-serial port named %q: %w", name, os.ErrNotExist)
}

// servePort serves one session after another on the device find returns,
// until ctx ends. A session ends when the host disconnects (reads see EOF);
// the port is then reopened, so a host that reconnects after an agent
// restart or a snapshot restore finds a fresh session.
func servePort(ctx context.Context, a *agent.Agent, log *slog.Logger, find func() (string, error)) {
	var lastErr string
	report := func(err error) {
		// Say each distinct problem once, not fifty times a second.
		if s := err.Error(); s != lastErr {
			log.Warn("virtio port", "err", err)
			lastErr = s
		}
	}
	for ctx.Err() == nil {
		dev, err := find()
		if err != nil {
			report(err)
			sleep(ctx, reopenDelay)
			continue
		}
		f, err := openPort(ctx, dev)
		if err != nil {
			report(err)
			sleep(ctx, reopenDelay)
			continue
		}
		lastErr = ""
		err = a.Serve(ctx, f)
		switch {
		case errors.Is(err, agent.ErrStaleSession):
			continue // a host is there and waiting: no pause
		case err != nil:
			log.Warn("session failed", "port", dev, "err", err)
		}
		sleep(ctx, reopenDelay)
	}
}

// openPort opens dev and returns once a host is connected to it. While none
// is, a virtio-serial port polls as hung up and reads return EOF at once.
func openPort(ctx context.Context, dev string) (*os.File, error) {
	fd, err := unix.Open(dev, unix.O_RDWR|unix.O_NONBLOCK|unix.O_CLOEXEC|unix.O_NOCTTY, 0)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", dev, err)
	}
	for {
		pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
		_, err := unix.Poll(pfd, 0)
		if err != nil && !errors.Is(err, unix.EINTR) {
			unix.Close(fd)
			return nil, fmt.Errorf("poll %s: %w", dev, err)
		}
		if err == nil && pfd[0].Revents&unix.POLLHUP == 0 {
			break
		}
		if !sleep(ctx, reopenDelay) {
			unix.Close(fd)
			return nil, ctx.Err()
		}
	}
	// Non-blocking, so the Go runtime polls it and Close interrupts reads.
	return os.NewFile(uintptr(fd), dev), nil
}

// sleep waits for d or ctx's end; it reports whether ctx is still live.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
