package cerberus

import (
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tartarus-sandbox/tartarus/pkg/clock"
)

// PolicySource holds the policy in force. One made by LoadPolicyFile reloads
// its file when the content changes (Run polls it); a file that does not
// parse is rejected with its line and reason and the old policy stays.
type PolicySource struct {
	path  string
	clock clock.Clock
	log   *slog.Logger
	cur   atomic.Pointer[Policy]

	onReload func(ok bool) // metrics hook; may be nil

	mu       sync.Mutex
	lastSum  [32]byte
	lastErr  error
	loadedAt time.Time
}

// StaticPolicy returns a source that always answers p.
func StaticPolicy(p *Policy) *PolicySource {
	s := &PolicySource{}
	s.cur.Store(p)
	return s
}

// LoadPolicyFile reads and compiles path. The server refuses to start on an
// invalid file rather than start with a policy the operator did not write.
func LoadPolicyFile(path string, clk clock.Clock, log *slog.Logger) (*PolicySource, error) {
	if clk == nil {
		clk = clock.System{}
	}
	s := &PolicySource{path: path, clock: clk, log: log}
	data, sum, err := readPolicyFile(path)
	if err != nil {
		return nil, err
	}
	p, err := ParsePolicy(data)
	if err != nil {
		return nil, fmt.Errorf("policy %s: %w", path, err)
	}
	s.cur.Store(p)
	s.lastSum, s.loadedAt = sum, clk.Now()
	return s, nil
}

func readPolicyFile(path string) ([]byte, [32]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, [32]byte{}, fmt.Errorf("read policy: %w", err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, MaxPolicySize+1))
	if err != nil {
		return nil, [32]byte{}, fmt.Errorf("read policy %s: %w", path, err)
	}
	return data, sha256.Sum256(data), nil
}

// Policy returns the policy in force.
func (s *PolicySource) Policy() *Policy { return s.cur.Load() }

// Path is the file the policy came from ("" for a static policy).
func (s *PolicySource) Path() string { return s.path }

// Check reloads the file if its content changed since the last check. It
// returns whether a new policy is now in force, and the error that kept a
// changed file from being used (the same bad content is reported once).
func (s *PolicySource) Check() (bool, error) {
	if s.path == "" {
		return false, nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	data, sum, err := readPolicyFile(s.path)
	if err != nil {
		if s.lastErr == nil || s.lastErr.Error() != err.Error() {
			s.lastErr = err
			s.log.Error("policy file unreadable; keeping the policy in force", "path", s.path, "err", err)
			s.reloaded(false)
		}
		return false, err
	}
	if sum == s.lastSum {
		return false, nil
	}
	s.lastSum = sum
	p, err := ParsePolicy(data)
	if err != nil {
		err = fmt.Errorf("policy %s: %w", s.path, err)
		s.lastErr = err
		s.log.Error("policy file rejected; keeping the policy in force", "path", s.path, "err", err)
		s.reloaded(false)
		return false, err
	}
	s.cur.Store(p)
	s.lastErr, s.loadedAt = nil, s.clock.Now()
	s.log.Info("policy reloaded", "path", s.path, "roles", len(p.roleNames), "rules", p.Rules())
	s.reloaded(true)
	return true, nil
}

func (s *PolicySource) reloaded(ok bool) {
	if s.onReload != nil {
		s.onReload(ok)
	}
}

// LastError is the error of the last rejected change, or nil once a good
// file is in force again.
func (s *PolicySource) LastError() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.lastErr
}

// Run polls the file every interval until ctx ends.
func (s *PolicySource) Run(ctx context.Context, interval time.Duration) {
	if s.path == "" {
		return
	}
	for {
		select {
		case <-ctx.Done():
			return
		case <-s.clock.After(interval):
			s.Check()
		}
	}
}
