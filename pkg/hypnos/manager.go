package hypnos

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/tartarus-sandbox/tartarus/pkg/clock"

	"github.com/tartarus-sandbox/tartarus/pkg/nyx"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

// SandboxSource tells Hypnos what the runtime does not: how to recreate a
// sandbox on wake (its VMConfig, with the template image) and whose it is.
// The node agent implements it from its store.
type SandboxSource interface {
	SleepInfo(ctx context.Context, sandboxID string) (cfg *tartarus.VMConfig, tenantID string, err error)
}

// Deps are what a HypnosManager works with.
type Deps struct {
	// Runtime holds the sandboxes; its snapshots go through Snapshots
	// (a nyx.Manager over the same runtime's Snapshotter).
	Runtime   tartarus.Runtime
	Snapshots *nyx.Manager
	Records   RecordStore
	// Sandboxes supplies each sandbox's VMConfig and tenant; without it the
	// config is rebuilt from the runtime's Instance (no image, no env).
	Sandboxes SandboxSource
	// Clock defaults to clock.System.
	Clock  clock.Clock
	Logger *slog.Logger
	// Observer, if set, hears about every state change Hypnos makes. It is
	// called without locks held, before the Sleep or Wake that caused it
	// returns; it must not block for long nor call Sleep or Wake itself.
	Observer func(Event)
	// Guard, if set, is asked before the idle watcher puts a sandbox to
	// sleep: ok false skips the sandbox this round (its owner is changing
	// it); otherwise release is called once the Sleep returns. The node
	// agent uses it to hold its own lock of the sandbox, so that an idle
	// sleep never races a pause or a destroy.
	Guard func(sandboxID string) (release func(), ok bool)
}

// HypnosManager implements SleepManager. It is safe for concurrent use.
type HypnosManager struct {
	rt      tartarus.Runtime
	snaps   *nyx.Manager
	records RecordStore
	source  SandboxSource
	clock   clock.Clock
	log     *slog.Logger
	observe func(Event)
	guard   func(string) (func(), bool)
	cfg     HypnosConfig
	wakes   *wakeQueue

	mu       sync.Mutex
	sleeping map[string]*SleepRecord // hibernated, StatusSleeping
	flights  map[string]*flight      // a Sleep or Wake in progress
	policies map[string]policy       // per-sandbox idle threshold
	touched  map[string]time.Time    // last API activity
}

var _ SleepManager = (*HypnosManager)(nil)

// flight is one Sleep or Wake in progress; later callers for the same
// sandbox wait on done and share its result.
type flight struct {
	kind flightKind
	done chan struct{}
	rec  *SleepRecord
	res  *WakeResult
	err  error
}

type flightKind int

const (
	flightSleep flightKind = iota
	flightWake
	flightOther // expiry: joiners look again once it ends
)

// NewHypnosManager checks deps and cfg and returns a manager. Call Start
// before use after a restart, and Run to watch for idle sandboxes.
func NewHypnosManager(deps Deps, cfg HypnosConfig) (*HypnosManager, error) {
	var errs []error
	if deps.Runtime == nil {
		errs = append(errs, errors.New("no runtime"))
	}
	if deps.Snapshots == nil {
		errs = append(errs, errors.New("no snapshot manager"))
	}
	if deps.Records == nil {
		errs = append(errs, errors.New("no record store"))
	}
	if err := cfg.Validate(); err != nil {
		errs = append(errs, err)
	}
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("new hypnos manager: %w", err)
	}
	if deps.Clock == nil {
		deps.Clock = clock.System{}
	}
	log := deps.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &HypnosManager{
		rt:       deps.Runtime,
		snaps:    deps.Snapshots,
		records:  deps.Records,
		source:   deps.Sandboxes,
		clock:    deps.Clock,
		log:      log.With("component", "hypnos"),
		observe:  deps.Observer,
		guard:    deps.Guard,
		cfg:      cfg,
		wakes:    newWakeQueue(cfg.MaxConcurrentWakes),
		sleeping: map[string]*SleepRecord{},
		flights:  map[string]*flight{},
		policies: map[string]policy{},
		touched:  map[string]time.Time{},
	}, nil
}

// Forget drops everything Hypnos holds about a sandbox the agent destroyed:
// its idle policy, activity, and, if it sleeps or failed, its record and
// snapshot.
func (m *HypnosManager) Forget(ctx context.Context, sandboxID string) error {
	m.mu.Lock()
	delete(m.policies, sandboxID)
	delete(m.touched, sandboxID)
	delete(m.sleeping, sandboxID)
	m.mu.Unlock()
	rec, err := m.records.GetRecord(ctx, sandboxID)
	if errors.Is(err, tartarus.ErrNotFound) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("forget %s: %w", sandboxID, err)
	}
	if err := m.forgetSleep(ctx, rec); err != nil {
		return fmt.Errorf("forget %s: %w", sandboxID, err)
	}
	return nil
}

// IsSleeping implements SleepManager.
func (m *HypnosManager) IsSleeping(sandboxID string) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	_, ok := m.sleeping[sandboxID]
	return ok
}

// Record returns the durable record of a sleeping or failed sandbox.
func (m *HypnosManager) Record(ctx context.Context, sandboxID string) (*SleepRecord, error) {
	return m.records.GetRecord(ctx, sandboxID)
}

// ListSleeping implements SleepManager.
func (m *HypnosManager) ListSleeping(ctx context.Context, filter *SleepFilter) ([]*SleepRecord, error) {
	recs, err := m.records.ListRecords(ctx)
	if err != nil {
		return nil, fmt.Errorf("list sleeping: %w", err)
	}
	var out []*SleepRecord
	for _, r := range recs {
		if r.Status == StatusSleeping && filter.match(r) {
			out = append(out, r)
		}
	}
	slices.SortFunc(out, func(a, b *SleepRecord) int {
		if c := a.SleepTime.Compare(b.SleepTime); c != 0 {
			return c
		}
		return compareStrings(a.SandboxID, b.SandboxID)
	})
	return out, nil
}

func compareStrings(a, b string) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

func (m *HypnosManager) snapshotSleeping() []*SleepRecord {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([]*SleepRecord, 0, len(m.sleeping))
	for _, r := range m.sleeping {
		out = append(out, r.clone())
	}
	slices.SortFunc(out, func(a, b *SleepRecord) int { return compareStrings(a.SandboxID, b.SandboxID) })
	return out
}

// tryFlight claims the sandbox for an operation that is neither a Sleep nor
// a Wake (those wait for it and then look again), or returns nil if busy.
func (m *HypnosManager) tryFlight(id string) *flight {
	m.mu.Lock()
	defer m.mu.Unlock()
	if _, busy := m.flights[id]; busy {
		return nil
	}
	f := &flight{kind: flightOther, done: make(chan struct{})}
	m.flights[id] = f
	return f
}

func (m *HypnosManager) endFlight(id string, f *flight, err error) {
	m.mu.Lock()
	delete(m.flights, id)
	m.mu.Unlock()
	f.err = err
	close(f.done)
}

func (m *HypnosManager) instance(ctx context.Context, id string) (*tartarus.Instance, error) {
	insts, err := m.rt.List(ctx)
	if err != nil {
		return nil, err
	}
	for _, in := range insts {
		if in.ID == id {
			return in, nil
		}
	}
	return nil, tartarus.Errorf(tartarus.ErrNotFound, "sandbox %s", id)
}

func (m *HypnosManager) sandboxInfo(ctx context.Context, in *tartarus.Instance) (*tartarus.VMConfig, string, error) {
	if m.source != nil {
		cfg, tenant, err := m.source.SleepInfo(ctx, in.ID)
		if err != nil {
			return nil, "", err
		}
		if cfg != nil {
			c := *cfg
			c.ID = in.ID
			return &c, tenant, nil
		}
	}
	return &tartarus.VMConfig{ID: in.ID, Template: in.Template, CPUs: in.CPUs, MemoryMB: in.MemoryMB}, "", nil
}

func (m *HypnosManager) notify(id string, state tartarus.State, rec *SleepRecord, reason string) {
	if m.observe == nil {
		return
	}
	var r *SleepRecord
	if rec != nil {
		r = rec.clone()
	}
	m.observe(Event{SandboxID: id, State: state, Record: r, Reason: reason})
}
