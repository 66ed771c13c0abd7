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

	"github.com/tartarus-sandbox/tartarus/pkg/erebus"
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

type policy struct {
	threshold time.Duration
	disabled  bool
}

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

// Start loads the durable sleep records and reconciles them with what the
// runtime holds (after Runtime.Recover), finishing or undoing whatever a
// crash interrupted:
//   - a record whose sandbox still exists, paused: the crash came between
//     storing the snapshot and destroying the VM; the VM is destroyed.
//   - a record whose sandbox still exists, running: a Sleep was rolled back,
//     or a Wake restored it, before the record was deleted; the record and
//     its snapshot go.
//   - a snapshot under Hypnos's Nyx prefix that no record refers to: a
//     crash came between writing one and the other; the snapshot goes.
//
// It returns the sandboxes that are hibernated.
func (m *HypnosManager) Start(ctx context.Context) ([]*SleepRecord, error) {
	recs, err := m.records.ListRecords(ctx)
	if err != nil {
		return nil, fmt.Errorf("hypnos start: %w", err)
	}
	insts, err := m.rt.List(ctx)
	if err != nil {
		return nil, fmt.Errorf("hypnos start: %w", err)
	}
	live := map[string]*tartarus.Instance{}
	for _, in := range insts {
		live[in.ID] = in
	}
	var sleeping []*SleepRecord
	for _, rec := range recs {
		if rec.Status != StatusSleeping {
			continue
		}
		if in, ok := live[rec.SandboxID]; ok {
			if in.State == tartarus.InstanceRunning {
				m.log.Info("sandbox runs although a sleep record exists; dropping the record", "sandbox", rec.SandboxID)
				if err := m.forgetSleep(ctx, rec); err != nil {
					return nil, fmt.Errorf("hypnos start: %w", err)
				}
				continue
			}
			m.log.Info("finishing an interrupted sleep", "sandbox", rec.SandboxID, "state", in.State)
			if err := m.rt.Destroy(context.WithoutCancel(ctx), rec.SandboxID); err != nil {
				return nil, fmt.Errorf("hypnos start: destroy %s: %w", rec.SandboxID, err)
			}
		}
		sleeping = append(sleeping, rec.clone())
	}
	m.collectGarbage(ctx, recs)
	m.mu.Lock()
	for _, rec := range sleeping {
		m.sleeping[rec.SandboxID] = rec
	}
	m.mu.Unlock()
	for _, rec := range sleeping {
		m.notify(rec.SandboxID, tartarus.StateHibernated, rec, "hibernated (recovered)")
	}
	return sleeping, nil
}

// collectGarbage deletes the snapshots that no record refers to: a sleep
// interrupted between storing its snapshot and writing its record, or a
// wake or rollback interrupted between deleting the record and the
// snapshot. Only Start calls it, before any Sleep can run; that is why
// Hypnos needs a Nyx prefix of its own. Failures are logged: garbage costs
// disk, not correctness.
func (m *HypnosManager) collectGarbage(ctx context.Context, recs []*SleepRecord) {
	used := map[string]bool{}
	for _, r := range recs {
		used[r.SnapshotID] = true
	}
	var unused []string
	snaps, err := m.snaps.List(ctx)
	if err != nil {
		m.log.Warn("cannot list snapshots to collect garbage", "err", err)
		return
	}
	for _, s := range snaps {
		if s.Labels["purpose"] == "hibernate" && !used[s.ID] {
			unused = append(unused, s.ID)
		}
	}
	incomplete, err := m.snaps.Incomplete(ctx)
	if err != nil {
		m.log.Warn("cannot list incomplete snapshots", "err", err)
		return
	}
	for _, id := range incomplete {
		if !used[id] {
			unused = append(unused, id)
		}
	}
	for _, id := range unused {
		if err := m.snaps.Delete(ctx, id); err != nil {
			m.log.Warn("cannot delete an unused snapshot", "snapshot", id, "err", err)
			continue
		}
		m.log.Info("deleted a snapshot no sleep record refers to", "snapshot", id)
	}
}

// Sleep implements SleepManager: pause, snapshot, compress and store, record,
// destroy. If a step fails, the sandbox is put back as it was (running, or
// paused if its user had paused it), nothing stored is left behind, and the
// error says which step failed. Cancelling ctx aborts the sleep the same way.
func (m *HypnosManager) Sleep(ctx context.Context, sandboxID string, opts *SleepOptions) (*SleepRecord, error) {
	for {
		m.mu.Lock()
		if rec, ok := m.sleeping[sandboxID]; ok {
			m.mu.Unlock()
			return rec.clone(), nil
		}
		f, busy := m.flights[sandboxID]
		if !busy {
			f = &flight{kind: flightSleep, done: make(chan struct{})}
			m.flights[sandboxID] = f
			m.mu.Unlock()
			break
		}
		m.mu.Unlock()
		select {
		case <-f.done:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		if f.kind == flightSleep {
			if f.err != nil {
				return nil, f.err
			}
			return f.rec.clone(), nil
		}
		// A wake (or expiry) just ended: look again.
	}

	rec, err := m.sleep(ctx, sandboxID, opts)
	m.mu.Lock()
	f := m.flights[sandboxID]
	delete(m.flights, sandboxID)
	if err == nil {
		m.sleeping[sandboxID] = rec
	}
	m.mu.Unlock()
	if err == nil {
		m.notify(sandboxID, tartarus.StateHibernated, rec, "hibernated")
	}
	f.rec, f.err = rec, err
	close(f.done)
	if err != nil {
		return nil, err
	}
	return rec.clone(), nil
}

func (m *HypnosManager) sleep(ctx context.Context, id string, opts *SleepOptions) (*SleepRecord, error) {
	start := m.clock.Now()
	o := SleepOptions{CompressMemory: m.cfg.CompressionAlgorithm != "none"}
	if opts != nil {
		o = *opts
	}
	inst, err := m.instance(ctx, id)
	if err != nil {
		return nil, fmt.Errorf("sleep %s: %w", id, err)
	}
	if inst.State != tartarus.InstanceRunning && inst.State != tartarus.InstancePaused {
		return nil, tartarus.Errorf(tartarus.ErrFailedPrecondition, "sleep %s: sandbox is %s", id, inst.State)
	}
	wasPaused := inst.State == tartarus.InstancePaused
	cfg, tenant, err := m.sandboxInfo(ctx, inst)
	if err != nil {
		return nil, fmt.Errorf("sleep %s: %w", id, err)
	}
	if o.TenantID != "" {
		tenant = o.TenantID
	}

	// From here on, a failure undoes what was done, under a context that
	// the caller's cancellation does not end.
	undoCtx := context.WithoutCancel(ctx)
	compression := nyx.CompressionNone
	if o.CompressMemory && m.cfg.CompressionAlgorithm == "zstd" {
		compression = nyx.CompressionZstd
	}
	snap, err := m.snaps.CreateFromRunning(ctx, id, &nyx.CreateOptions{
		Compression: compression,
		Labels:      map[string]string{"purpose": "hibernate", "sandbox": id},
	})
	if err != nil {
		return nil, m.undoSleep(undoCtx, id, wasPaused, nil, fmt.Errorf("sleep %s: snapshot: %w", id, err))
	}

	now := m.clock.Now()
	rec := &SleepRecord{
		SandboxID:       id,
		TenantID:        tenant,
		Template:        snap.Template,
		SleepTime:       now,
		MemorySize:      snap.MemoryBytes,
		CompressedSize:  snap.CompressedSize,
		SnapshotID:      snap.ID,
		SnapshotPath:    snap.DataKey,
		WakePriority:    o.WakePriority,
		PreserveNetwork: o.PreserveNetwork,
		WasPaused:       wasPaused,
		Config:          cfg,
		Status:          StatusSleeping,
	}
	if o.MaxSleepDuration > 0 {
		t := now.Add(o.MaxSleepDuration)
		rec.ExpiresAt = &t
	}
	if o.WakeAfter > 0 {
		t := now.Add(o.WakeAfter)
		rec.ScheduledWake = &t
	}
	if err := m.records.PutRecord(ctx, rec); err != nil {
		return nil, m.undoSleep(undoCtx, id, wasPaused, rec, fmt.Errorf("sleep %s: record: %w", id, err))
	}
	// The snapshot and its record are durable: from here a crash leaves a
	// hibernated sandbox (Start destroys the VM if it is still there).
	if err := m.rt.Destroy(ctx, id); err != nil {
		return nil, m.undoSleep(undoCtx, id, wasPaused, rec, fmt.Errorf("sleep %s: free resources: %w", id, err))
	}
	rec.SleepDuration = m.clock.Now().Sub(start)
	m.log.Info("sandbox hibernated", "sandbox", id, "memory_size", rec.MemorySize,
		"compressed_size", rec.CompressedSize, "took", rec.SleepDuration)
	return rec, nil
}

// undoSleep puts a sandbox whose Sleep failed back as it was and removes
// what the sleep stored. If the sandbox cannot be resumed but its snapshot
// and record are stored, it stays hibernated rather than lost: the record
// is kept, the VM's remains destroyed, and the error says so.
func (m *HypnosManager) undoSleep(ctx context.Context, id string, wasPaused bool, rec *SleepRecord, cause error) error {
	var resumeErr error
	if !wasPaused {
		resumeErr = m.rt.Resume(ctx, id)
	}
	if resumeErr != nil && rec != nil && rec.Status == StatusSleeping && m.recordExists(ctx, id) {
		if err := m.rt.Destroy(ctx, id); err != nil {
			m.log.Error("cannot destroy the remains of a sandbox that failed to resume", "sandbox", id, "err", err)
		}
		m.mu.Lock()
		m.sleeping[id] = rec
		m.mu.Unlock()
		m.notify(id, tartarus.StateHibernated, rec, "could not resume after a failed sleep")
		return fmt.Errorf("%w; resume also failed (%v), so the sandbox stays hibernated from its snapshot", cause, resumeErr)
	}
	if rec != nil {
		if err := m.forgetSleep(ctx, rec); err != nil {
			m.log.Error("cannot remove the snapshot of a failed sleep", "sandbox", id, "err", err)
		}
	}
	if resumeErr != nil {
		return fmt.Errorf("%w; resume also failed: %v", cause, resumeErr)
	}
	m.log.Warn("sleep failed; sandbox put back", "sandbox", id, "err", cause)
	return cause
}

func (m *HypnosManager) recordExists(ctx context.Context, id string) bool {
	_, err := m.records.GetRecord(ctx, id)
	return err == nil
}

// forgetSleep deletes a sleep's record, then its snapshot (in that order, so
// a crash between leaves an orphan snapshot, never a record without data).
func (m *HypnosManager) forgetSleep(ctx context.Context, rec *SleepRecord) error {
	if err := m.records.DeleteRecord(ctx, rec.SandboxID); err != nil {
		return err
	}
	return m.snaps.Delete(ctx, rec.SnapshotID)
}

// Wake implements SleepManager: fetch, verify, restore; the sandbox runs
// afterwards (or is paused again, if it was paused when put to sleep). The
// restore runs to its end even if ctx ends, since other callers may share
// it; ctx only bounds this caller's wait.
func (m *HypnosManager) Wake(ctx context.Context, sandboxID string) (*WakeResult, error) {
	for {
		m.mu.Lock()
		if f, busy := m.flights[sandboxID]; busy {
			m.mu.Unlock()
			select {
			case <-f.done:
			case <-ctx.Done():
				return nil, ctx.Err()
			}
			if f.kind == flightWake {
				return f.res, f.err
			}
			continue // a Sleep (or expiry) ended: look again
		}
		// The flight makes this wake the only operation on the sandbox
		// until it ends, so what it reads below cannot change under it.
		rec := m.sleeping[sandboxID]
		f := &flight{kind: flightWake, done: make(chan struct{})}
		m.flights[sandboxID] = f
		m.mu.Unlock()

		go m.runWake(context.WithoutCancel(ctx), sandboxID, rec, f)
		select {
		case <-f.done:
			return f.res, f.err
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// runWake performs one wake flight. rec is nil when the sandbox is not
// known to be sleeping in memory (after a restart without Start); the
// durable record decides then.
func (m *HypnosManager) runWake(ctx context.Context, id string, rec *SleepRecord, f *flight) {
	var res *WakeResult
	var err error
	if rec == nil {
		rec, err = m.durableSleeper(ctx, id)
	}
	if err == nil {
		res, err = m.wake(ctx, rec)
	}
	m.mu.Lock()
	delete(m.flights, id)
	if err == nil {
		delete(m.sleeping, id)
		m.touched[id] = res.WakeTime
	}
	m.mu.Unlock()
	if err == nil {
		// Status is paused for a sandbox its user had paused before sleep.
		m.notify(id, res.Status, nil, "woken")
	}
	f.res, f.err = res, err
	close(f.done)
}

func (m *HypnosManager) durableSleeper(ctx context.Context, id string) (*SleepRecord, error) {
	r, err := m.records.GetRecord(ctx, id)
	if errors.Is(err, tartarus.ErrNotFound) {
		return nil, fmt.Errorf("wake %s: %w", id, ErrNotSleeping)
	}
	if err != nil {
		return nil, fmt.Errorf("wake %s: %w", id, err)
	}
	if r.Status == StatusFailed {
		return nil, tartarus.Errorf(tartarus.ErrFailedPrecondition, "wake %s: the sandbox failed: %s", id, r.Error)
	}
	return r, nil
}

func (m *HypnosManager) wake(ctx context.Context, rec *SleepRecord) (*WakeResult, error) {
	id := rec.SandboxID
	if rec.ExpiresAt != nil && !m.clock.Now().Before(*rec.ExpiresAt) {
		if err := m.terminate(ctx, rec, "slept longer than its limit"); err != nil {
			return nil, fmt.Errorf("wake %s: %w", id, err)
		}
		return nil, tartarus.Errorf(tartarus.ErrNotFound, "wake %s: the sandbox ended after sleeping until %s", id, rec.ExpiresAt.Format(time.RFC3339))
	}
	queued := m.clock.Now()
	if err := m.wakes.acquire(ctx, rec.WakePriority); err != nil {
		return nil, fmt.Errorf("wake %s: %w", id, err)
	}
	defer m.wakes.release()
	start := m.clock.Now()

	// Remains of a VM from an interrupted sleep would clash with the restore.
	if err := m.rt.Destroy(ctx, id); err != nil {
		return nil, fmt.Errorf("wake %s: clear remains: %w", id, err)
	}
	cfg := rec.Config
	if cfg == nil {
		cfg = &tartarus.VMConfig{ID: id, Template: rec.Template}
	}
	if _, err := m.snaps.Restore(ctx, rec.SnapshotID, cfg); err != nil {
		err = fmt.Errorf("wake %s: %w", id, err)
		if m.unusable(ctx, rec, err) {
			m.fail(ctx, rec, err)
		}
		return nil, err
	}
	if rec.WasPaused {
		if err := m.rt.Pause(ctx, id); err != nil {
			m.log.Warn("woken sandbox was paused before sleep but cannot be paused again", "sandbox", id, "err", err)
		}
	}
	// The sandbox runs: the record and snapshot are no longer needed. If
	// deleting fails, Start drops them later (the sandbox exists, running).
	if err := m.forgetSleep(ctx, rec); err != nil {
		m.log.Warn("woken sandbox: cannot remove its sleep record or snapshot", "sandbox", id, "err", err)
	}
	now := m.clock.Now()
	state := tartarus.StateRunning
	if rec.WasPaused {
		state = tartarus.StatePaused
	}
	m.log.Info("sandbox woken", "sandbox", id, "restore", now.Sub(start), "queued", start.Sub(queued))
	return &WakeResult{
		SandboxID:     id,
		WakeTime:      now,
		SleepDuration: now.Sub(rec.SleepTime),
		RestoreTime:   now.Sub(start),
		QueueTime:     start.Sub(queued),
		Status:        state,
	}, nil
}

// unusable reports whether a failed restore can never succeed: the
// snapshot is damaged or gone. Other errors (the runtime, a missing
// template image, a timeout) leave the sandbox asleep for another try.
func (m *HypnosManager) unusable(ctx context.Context, rec *SleepRecord, err error) bool {
	if errors.Is(err, erebus.ErrCorrupt) {
		return true
	}
	_, gerr := m.snaps.Get(ctx, rec.SnapshotID)
	return errors.Is(gerr, tartarus.ErrNotFound) || errors.Is(gerr, erebus.ErrCorrupt)
}

// fail marks a sleeping sandbox failed: its snapshot cannot be used. The
// snapshot stays for inspection until Forget.
func (m *HypnosManager) fail(ctx context.Context, rec *SleepRecord, cause error) {
	failed := rec.clone()
	failed.Status = StatusFailed
	failed.Error = cause.Error()
	if err := m.records.PutRecord(ctx, failed); err != nil {
		m.log.Error("cannot record a failed wake", "sandbox", rec.SandboxID, "err", err)
	}
	m.mu.Lock()
	delete(m.sleeping, rec.SandboxID)
	m.mu.Unlock()
	m.log.Error("sandbox cannot be woken; marked failed", "sandbox", rec.SandboxID, "err", cause)
	m.notify(rec.SandboxID, tartarus.StateFailed, failed, cause.Error())
}

// terminate ends a sleeping sandbox: its snapshot and record go.
func (m *HypnosManager) terminate(ctx context.Context, rec *SleepRecord, reason string) error {
	if err := m.forgetSleep(ctx, rec); err != nil {
		return err
	}
	m.mu.Lock()
	delete(m.sleeping, rec.SandboxID)
	m.mu.Unlock()
	m.log.Info("hibernated sandbox ended", "sandbox", rec.SandboxID, "reason", reason)
	m.notify(rec.SandboxID, tartarus.StateTerminated, rec, reason)
	return nil
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

// EnsureAwake wakes the sandbox if it is hibernated or on its way to sleep,
// and does nothing otherwise: the call the agent makes before exec or file
// access, so that callers only see a slower answer.
func (m *HypnosManager) EnsureAwake(ctx context.Context, sandboxID string) error {
	m.mu.Lock()
	_, sleeping := m.sleeping[sandboxID]
	_, busy := m.flights[sandboxID]
	m.touched[sandboxID] = m.clock.Now()
	m.mu.Unlock()
	if !sleeping && !busy {
		return nil
	}
	_, err := m.Wake(ctx, sandboxID)
	if errors.Is(err, ErrNotSleeping) {
		return nil
	}
	return err
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

// ScheduleSleep implements SleepManager.
func (m *HypnosManager) ScheduleSleep(sandboxID string, idleThreshold time.Duration) error {
	if sandboxID == "" || idleThreshold <= 0 {
		return tartarus.Errorf(tartarus.ErrInvalid, "schedule sleep of %q after %v: want a sandbox id and a positive threshold", sandboxID, idleThreshold)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.policies[sandboxID] = policy{threshold: idleThreshold}
	return nil
}

// CancelScheduledSleep implements SleepManager.
func (m *HypnosManager) CancelScheduledSleep(sandboxID string) error {
	if sandboxID == "" {
		return tartarus.Errorf(tartarus.ErrInvalid, "cancel scheduled sleep: empty sandbox id")
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.policies[sandboxID] = policy{disabled: true}
	return nil
}

// Touch records API activity on a sandbox (exec, files); idle time counts
// from the later of this and the guest's own last activity.
func (m *HypnosManager) Touch(sandboxID string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.touched[sandboxID] = m.clock.Now()
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

// Run watches for idle, expired and scheduled-to-wake sandboxes every
// CheckInterval until ctx ends.
func (m *HypnosManager) Run(ctx context.Context) error {
	t := m.clock.NewTicker(m.cfg.CheckInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C():
			m.Check(ctx)
		}
	}
}

// Check does one round of Run: ends sandboxes that slept past their limit,
// wakes those whose scheduled wake has come, and puts idle ones to sleep.
// Failures are logged; a sandbox that failed to sleep is retried next round.
func (m *HypnosManager) Check(ctx context.Context) {
	m.ReapExpired(ctx)
	m.wakeScheduled(ctx)
	if _, err := m.SleepIdle(ctx); err != nil {
		m.log.Warn("idle check", "err", err)
	}
}

// ReapExpired ends every sleeping sandbox whose MaxSleepDuration has passed
// and returns their ids.
func (m *HypnosManager) ReapExpired(ctx context.Context) []string {
	now := m.clock.Now()
	var ended []string
	for _, rec := range m.snapshotSleeping() {
		if rec.ExpiresAt == nil || now.Before(*rec.ExpiresAt) {
			continue
		}
		f := m.tryFlight(rec.SandboxID)
		if f == nil {
			continue // a wake or sleep is under way; it decides
		}
		err := m.terminate(ctx, rec, "slept longer than its limit")
		m.endFlight(rec.SandboxID, f, err)
		if err != nil {
			m.log.Warn("cannot end an expired sleeping sandbox", "sandbox", rec.SandboxID, "err", err)
			continue
		}
		ended = append(ended, rec.SandboxID)
	}
	return ended
}

func (m *HypnosManager) wakeScheduled(ctx context.Context) {
	now := m.clock.Now()
	for _, rec := range m.snapshotSleeping() {
		if rec.ScheduledWake == nil || now.Before(*rec.ScheduledWake) {
			continue
		}
		if _, err := m.Wake(ctx, rec.SandboxID); err != nil {
			m.log.Warn("scheduled wake failed", "sandbox", rec.SandboxID, "err", err)
		}
	}
}

// SleepIdle puts to sleep every running sandbox idle for at least its
// threshold, and returns their ids. Idle time counts from the later of the
// guest's last activity (Instance.IdleSince; nil means busy) and the last
// Touch.
func (m *HypnosManager) SleepIdle(ctx context.Context) ([]string, error) {
	insts, err := m.rt.List(ctx)
	if err != nil {
		return nil, fmt.Errorf("list sandboxes: %w", err)
	}
	now := m.clock.Now()
	var slept []string
	for _, in := range insts {
		if in.State != tartarus.InstanceRunning || in.IdleSince == nil {
			continue
		}
		m.mu.Lock()
		p, custom := m.policies[in.ID]
		last := *in.IdleSince
		if t, ok := m.touched[in.ID]; ok && t.After(last) {
			last = t
		}
		_, busy := m.flights[in.ID]
		m.mu.Unlock()
		threshold := m.cfg.DefaultIdleThreshold
		if custom {
			threshold = p.threshold
		}
		if busy || p.disabled || threshold <= 0 || now.Sub(last) < threshold {
			continue
		}
		release := func() {}
		if m.guard != nil {
			r, ok := m.guard(in.ID)
			if !ok {
				continue
			}
			release = r
		}
		_, err := m.Sleep(ctx, in.ID, nil)
		release()
		if err != nil {
			m.log.Warn("cannot put an idle sandbox to sleep", "sandbox", in.ID, "err", err)
			continue
		}
		slept = append(slept, in.ID)
	}
	return slept, nil
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
