//go:build linux

// Command tartarus-guest is the agent inside every Tartarus microVM. As PID 1
// (the initramfs's /init) it boots the guest — mounts, kernel modules, root
// file system, switch root — and then serves the host over the virtio-serial
// port named "tartarus", one session after another, for as long as the VM
// lives. Outside a VM it serves on a unix socket (--listen) or a given
// character device (--port), for tests and debugging.
//
// Build it static: CGO_ENABLED=0 go build -trimpath -ldflags='-s -w'.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/tartarus-sandbox/tartarus/pkg/guest/agent"
)

func main() {
	if os.Getpid() == 1 {
		runInit() // never returns: PID 1 exiting panics the kernel
	}
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "tartarus-guest:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	fs := flag.NewFlagSet("tartarus-guest", flag.ContinueOnError)
	listen := fs.String("listen", "", "serve sessions on `unix:PATH` (one per connection)")
	port := fs.String("port", "", "serve sessions on this character `device` in a loop, as PID 1 does with the virtio port")
	reaper := fs.Bool("reaper", false, "become a child subreaper and collect every child's exit status, as PID 1 does")
	setClock := fs.Bool("set-clock", false, "let the host set CLOCK_REALTIME")
	seedRNG := fs.Bool("seed-rng", false, "credit the host's entropy to the kernel RNG")
	debug := fs.Bool("debug", false, "log at debug level")
	version := fs.Bool("version", false, "print the version and exit")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *version {
		fmt.Println(agent.Version)
		return nil
	}
	level := slog.LevelInfo
	if *debug {
		level = slog.LevelDebug
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	opts := agent.Options{Logger: log, SetClock: *setClock, SeedRNG: *seedRNG}
	if *reaper {
		if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
			return fmt.Errorf("become subreaper: %w", err)
		}
		opts.Reaper = agent.NewReaper(log)
	}
	a := agent.New(opts)
	defer a.Close()

	switch {
	case *listen != "" && *port != "":
		return errors.New("--listen and --port exclude each other")
	case *port != "":
		servePort(ctx, a, log, func() (string, error) { return *port, nil })
		return nil
	case *listen != "":
		path, ok := strings.CutPrefix(*listen, "unix:")
		if !ok {
			return fmt.Errorf("--listen %q: want unix:PATH", *listen)
		}
		return serveUnix(ctx, a, log, path)
	}
	return errors.New("not PID 1: give --listen unix:PATH or --port DEVICE")
}

// serveUnix serves a session on every connection to a unix socket.
func serveUnix(ctx context.Context, a *agent.Agent, log *slog.Logger, path string) error {
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	ln, err := net.Listen("unix", path)
	if err != nil {
		return err
	}
	defer os.Remove(path)
	context.AfterFunc(ctx, func() { ln.Close() })
	log.Info("serving", "socket", path, "version", agent.Version)
	for {
		conn, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		go func() {
			if err := a.Serve(ctx, conn); err != nil && !errors.Is(err, io.EOF) {
				log.Warn("session failed", "err", err)
			}
		}()
	}
}
