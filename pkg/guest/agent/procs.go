package agent

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"
)

// starter starts a command and returns how to wait for its exit status.
// Exactly one of its implementations collects statuses in a process, so a
// PID 1 that reaps orphans never steals an exec's status.
type starter interface {
	start(cmd *exec.Cmd) (wait func() unix.WaitStatus, err error)
}

// pidWaiter waits for each child by its pid: for an agent that is not PID 1.
type pidWaiter struct{}

func (pidWaiter) start(cmd *exec.Cmd) (func() unix.WaitStatus, error) {
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	return func() unix.WaitStatus {
		st, err := cmd.Process.Wait()
		if err != nil {
			// Only possible if someone else reaped it; report a kill.
			return unix.WaitStatus(unix.SIGKILL)
		}
		return unix.WaitStatus(st.Sys().(syscall.WaitStatus))
	}, nil
}

// Reaper collects the exit status of every child of the process, as PID 1
// (or a child subreaper) must, and hands each exec's status to its waiter.
// Statuses of processes nobody waits for (orphans re-parented to us) are
// dropped. Nothing else in the process may call wait.
type Reaper struct {
	log     *slog.Logger
	mu      sync.Mutex
	waiters map[int]chan unix.WaitStatus
	sig     chan os.Signal
	stopped chan struct{}
}

// NewReaper starts reaping children on SIGCHLD. Stop ends it.
func NewReaper(log *slog.Logger) *Reaper {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	r := &Reaper{
		log:     log,
		waiters: map[int]chan unix.WaitStatus{},
		sig:     make(chan os.Signal, 1),
		stopped: make(chan struct{}),
	}
	signal.Notify(r.sig, unix.SIGCHLD)
	go r.loop()
	r.sig <- unix.SIGCHLD // reap what exited before Notify
	return r
}

// Stop stops reaping.
func (r *Reaper) Stop() {
	signal.Stop(r.sig)
	close(r.sig)
	<-r.stopped
}

func (r *Reaper) loop() {
	defer close(r.stopped)
	for range r.sig {
		r.reap()
	}
}

func (r *Reaper) reap() {
	for {
		var ws unix.WaitStatus
		pid, err := unix.Wait4(-1, &ws, unix.WNOHANG, nil)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil || pid <= 0 {
			return
		}
		// start holds mu from fork until the waiter is registered, so a
		// child that exits at once is still delivered.
		r.mu.Lock()
		ch := r.waiters[pid]
		delete(r.waiters, pid)
		r.mu.Unlock()
		if ch != nil {
			ch <- ws
		} else {
			r.log.Debug("reaped orphan", "pid", pid, "status", fmt.Sprint(ws))
		}
	}
}

func (r *Reaper) start(cmd *exec.Cmd) (func() unix.WaitStatus, error) {
	r.mu.Lock()
	if err := cmd.Start(); err != nil {
		r.mu.Unlock()
		return nil, err
	}
	ch := make(chan unix.WaitStatus, 1)
	r.waiters[cmd.Process.Pid] = ch
	r.mu.Unlock()
	return func() unix.WaitStatus {
		ws := <-ch
		_ = cmd.Process.Release()
		return ws
	}, nil
}

// groupSet is the process groups started by exec, for OpSignal. A group
// stays until no process is left in it.
type groupSet struct {
	mu     sync.Mutex
	groups map[int]struct{}
}

func newGroupSet() *groupSet { return &groupSet{groups: map[int]struct{}{}} }

func (g *groupSet) add(pgid int) {
	g.mu.Lock()
	g.groups[pgid] = struct{}{}
	g.mu.Unlock()
}

// signal sends sig to every live group and returns how many it reached.
func (g *groupSet) signal(sig unix.Signal) int {
	g.mu.Lock()
	defer g.mu.Unlock()
	n := 0
	for pg := range g.groups {
		if err := unix.Kill(-pg, sig); err == nil {
			n++
		} else if errors.Is(err, unix.ESRCH) {
			delete(g.groups, pg)
		}
	}
	return n
}

// prune forgets groups with no process left.
func (g *groupSet) prune() { g.signal(0) }

func signalOf(n int) unix.Signal { return unix.Signal(n) }
