// Package runtimes opens a node's runtimes by name — "microvm", "gvisor",
// "docker", "containerd" and, for tests only, "fake" — for the --runtimes
// flag of `tartarus server` and `tartarus agent`. The drivers live in the
// sub-packages of the same names; what the container drivers share is in
// package container.
//
// A known runtime this host cannot run still opens, as an Unavailable
// runtime whose fingerprint says why, so the node can show what it lacks.
package runtimes

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/tartarus-sandbox/tartarus/pkg/clock"
	"github.com/tartarus-sandbox/tartarus/pkg/jail"
	rtcontainer "github.com/tartarus-sandbox/tartarus/pkg/runtimes/container"
	"github.com/tartarus-sandbox/tartarus/pkg/runtimes/containerd"
	"github.com/tartarus-sandbox/tartarus/pkg/runtimes/docker"
	"github.com/tartarus-sandbox/tartarus/pkg/runtimes/fake"
	"github.com/tartarus-sandbox/tartarus/pkg/runtimes/gvisor"
	"github.com/tartarus-sandbox/tartarus/pkg/runtimes/microvm"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

// Fake is the name of the fake runtime, which Open gives only when
// Config.AllowUnsafeFake is set.
const Fake = "fake"

// Names are the runtimes a node offers (the fake, for tests only, aside).
var Names = []string{microvm.Name, gvisor.Name, docker.Name, containerd.Name}

// Config is what the runtimes need from the node.
type Config struct {
	// DataDir is the node's data directory: the microVMs keep their state
	// in DataDir/vms, the fake in DataDir/fake-vms, every other runtime in
	// DataDir/<name>.
	DataDir string
	Log     *slog.Logger
	// Clock is the runtimes' time source; nil means clock.System{}.
	Clock clock.Clock

	// Accel, BootTimeout and BootRetries are microvm's (see microvm.Config;
	// zero values mean its defaults).
	Accel       string
	BootTimeout time.Duration
	BootRetries int
	// ProbeImage is what microvm's KVM probe boots; without it "auto" uses
	// TCG unprobed.
	ProbeImage *tartarus.Image
	// Jail confines each microVM's QEMU (nil: unconfined);
	// ConsoleMaxBytes caps its console log (zero: microvm's default).
	Jail            *jail.Jail
	ConsoleMaxBytes int64
	// CopyMemory turns microvm's mapped template memory off (see
	// microvm.Config).
	CopyMemory bool
	// Networks gives microVMs their networks (a *netns.Manager), and
	// gVisor and containerd sandboxes too; nil: sandboxes have only
	// loopback.
	Networks microvm.Networks

	// Runsc is the runsc binary (default: on PATH, else scripts/runsc.sh's).
	Runsc string
	// DockerHost is the Docker daemon (default: $DOCKER_HOST or its socket).
	DockerHost string
	// ContainerdAddress is containerd's socket (default /run/containerd/containerd.sock).
	ContainerdAddress string

	// AllowUnsafeFake lets Open give the fake runtime, which runs commands
	// as host processes without any isolation (tests only).
	AllowUnsafeFake bool
}

// Known reports whether name is a runtime Open offers (the fake aside).
func Known(name string) bool {
	return slices.Contains(Names, name)
}

// Open returns the runtime called name. An unknown name is ErrInvalid; a
// known one the host cannot run is an Unavailable runtime, not an error.
func Open(ctx context.Context, name string, cfg Config) (tartarus.Runtime, error) {
	if cfg.DataDir == "" {
		return nil, tartarus.Errorf(tartarus.ErrInvalid, "runtimes: no data directory")
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	dir := filepath.Join(cfg.DataDir, name)
	// The network manager, when there is one, serves the container
	// runtimes too (a guest namespace each, pkg/netns).
	nets, _ := cfg.Networks.(rtcontainer.Networks)
	switch name {
	case microvm.Name:
		return microvm.New(ctx, microvm.Config{StateDir: filepath.Join(cfg.DataDir, "vms"), Log: cfg.Log, Clock: cfg.Clock,
			Accel: cfg.Accel, BootTimeout: cfg.BootTimeout, BootRetries: cfg.BootRetries, ProbeImage: cfg.ProbeImage,
			Jail: cfg.Jail, ConsoleMaxBytes: cfg.ConsoleMaxBytes, CopyMemory: cfg.CopyMemory,
			Networks: cfg.Networks})
	case gvisor.Name:
		rt, err := gvisor.New(gvisor.Options{StateDir: dir, Runsc: cfg.Runsc, Log: cfg.Log, Clock: cfg.Clock, Networks: nets})
		if err != nil {
			return &Unavailable{RuntimeName: name, Reason: err.Error()}, nil
		}
		return rt, nil
	case docker.Name:
		rt, err := docker.New(docker.Options{Host: cfg.DockerHost, CacheDir: dir, Log: cfg.Log, Clock: cfg.Clock, Networks: nets})
		if err != nil {
			return &Unavailable{RuntimeName: name, Reason: err.Error()}, nil
		}
		return rt, nil
	case containerd.Name:
		rt, err := containerd.New(containerd.Options{Address: cfg.ContainerdAddress, CacheDir: dir, Log: cfg.Log, Clock: cfg.Clock,
			Networks: nets})
		if err != nil {
			return &Unavailable{RuntimeName: name, Reason: err.Error()}, nil
		}
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return nil, err
		}
		return rt, nil
	case Fake:
		if !cfg.AllowUnsafeFake {
			return nil, tartarus.Errorf(tartarus.ErrInvalid, "runtime fake runs commands on the host without isolation; it needs --unsafe-fake-runtime and is for tests only")
		}
		cfg.Log.Warn("UNSAFE: the fake runtime runs sandbox commands as host processes with no isolation (tests only)")
		// The fake can snapshot (files only), so the hibernation paths of
		// the server can be driven end to end without a VM.
		return fake.New(fake.Config{StateDir: filepath.Join(cfg.DataDir, "fake-vms"), Log: cfg.Log, Clock: cfg.Clock,
			Capabilities: &tartarus.Capabilities{Pause: true, Snapshot: true, Signal: true, Files: true, Recover: true}})
	}
	return nil, tartarus.Errorf(tartarus.ErrInvalid, "runtime %q is not one this build offers (%s)", name, strings.Join(Names, ", "))
}
