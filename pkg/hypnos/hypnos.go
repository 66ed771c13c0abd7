// Package hypnos (the god of sleep) hibernates idle sandboxes and wakes them
// on demand: Sleep snapshots a sandbox through Nyx, stores it compressed in
// Erebus and frees every host resource it held; Wake restores it where it
// left off. An idle watcher puts sandboxes to sleep after a per-sandbox or
// default idle threshold, and ends those that sleep longer than allowed.
//
// The SleepManager interface and its types are the seed's. Differences, and
// why:
//   - Sleep never leaves a sandbox half-asleep: if any step fails (snapshot,
//     store, record, destroy), the sandbox goes back to the state it was in
//     and the error is returned. The seed logged a failed destroy and went on.
//   - Sleep records are durable through a RecordStore, so that after the
//     agent restarts, ListSleeping and Wake work from them, and Start
//     reconciles records with what the runtime still holds.
//   - Wakes of one sandbox share one restore (single flight); concurrent
//     wakes are bounded by MaxConcurrentWakes and served by WakePriority.
//   - A snapshot whose checksum does not match is never restored: the wake
//     fails with an error wrapping erebus.ErrCorrupt and the record is marked
//     failed.
//   - Time comes from an injected Clock, and Touch records API activity,
//     which idle detection combines with the guest's own (Instance.IdleSince).
//
// Wiring in the node agent, for a runtime rt that implements
// tartarus.Snapshotter:
//
//	store, _ := erebus.NewLocal(filepath.Join(dataDir, "erebus"))
//	snaps := nyx.New(rt.(tartarus.Snapshotter), store, nyx.Options{Prefix: "sleep", TempDir: filepath.Join(dataDir, "tmp")})
//	hyp, _ := hypnos.NewHypnosManager(hypnos.Deps{Runtime: rt, Snapshots: snaps,
//		Records: recordsFromTheSQLStore, Sandboxes: agent, Clock: clock, Logger: log,
//		Observer: agent.recordState}, cfg)
//	rt.Recover(ctx); hyp.Start(ctx); go hyp.Run(ctx)
//
// Then: ScheduleSleep(id, auto_hibernate_s) on create; Touch(id) on every
// API call that acts on a sandbox; EnsureAwake(ctx, id) before exec and
// file calls (a hibernated sandbox wakes transparently); Forget(ctx, id)
// when the sandbox is destroyed, including while it sleeps. Observer events
// carry the states Hypnos causes by itself (idle sleep, expiry, a refused
// snapshot) for the agent to record.
package hypnos

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

// SleepManager handles VM hibernation and wake-up.
type SleepManager interface {
	// Sleep puts a running (or paused) sandbox into hibernation. Sleeping
	// an already hibernated sandbox returns its record.
	Sleep(ctx context.Context, sandboxID string, opts *SleepOptions) (*SleepRecord, error)

	// Wake restores a sleeping sandbox and leaves it running. Concurrent
	// calls for one sandbox share one restore. A sandbox that is not
	// hibernated gives an error matching ErrNotSleeping.
	Wake(ctx context.Context, sandboxID string) (*WakeResult, error)

	// IsSleeping reports whether a sandbox is hibernated (and not failed).
	IsSleeping(sandboxID string) bool

	// ScheduleSleep sets the sandbox's own idle threshold: it is put to
	// sleep once idle this long.
	ScheduleSleep(sandboxID string, idleThreshold time.Duration) error

	// CancelScheduledSleep stops the idle watcher from putting this sandbox
	// to sleep (neither its own nor the default threshold applies). A later
	// ScheduleSleep turns it back on.
	CancelScheduledSleep(sandboxID string) error

	// ListSleeping returns the hibernated sandboxes that match filter (nil
	// matches all), oldest sleep first, read from the durable records.
	ListSleeping(ctx context.Context, filter *SleepFilter) ([]*SleepRecord, error)
}

// SleepOptions tune one Sleep. A nil *SleepOptions means: compress as
// HypnosConfig.CompressionAlgorithm says, no time limit, priority 0.
type SleepOptions struct {
	// CompressMemory stores the snapshot compressed with the configured
	// algorithm (none if HypnosConfig.CompressionAlgorithm is "none");
	// false stores it as is (faster, about 4x larger).
	CompressMemory bool

	// MaxSleepDuration ends the sandbox (state terminated, snapshot
	// deleted) once it has slept this long; zero means no limit.
	MaxSleepDuration time.Duration

	// WakePriority orders waiting wakes when MaxConcurrentWakes are
	// running: higher first, then first come first served.
	WakePriority int

	// PreserveNetwork is recorded for the runtime; sandboxes have no
	// network unless asked, and no runtime acts on it yet.
	PreserveNetwork bool

	// WakeAfter wakes the sandbox by itself once it has slept this long
	// (the record's ScheduledWake); zero means only on demand.
	WakeAfter time.Duration

	// TenantID is recorded for ListSleeping's filter; when empty, the
	// SandboxSource (if any) supplies it.
	TenantID string
}

// RecordStatus says whether a record is a sleeping sandbox or a failed wake.
type RecordStatus string

// The record statuses.
const (
	StatusSleeping RecordStatus = "sleeping"
	// StatusFailed: the snapshot was refused (checksum mismatch) or is
	// gone; the sandbox cannot be woken and its record says why.
	StatusFailed RecordStatus = "failed"
)

// SleepRecord is one hibernated sandbox, as stored durably.
type SleepRecord struct {
	SandboxID     string     `json:"sandbox_id"`
	TenantID      string     `json:"tenant_id,omitempty"`
	Template      string     `json:"template,omitempty"`
	SleepTime     time.Time  `json:"sleep_time"`
	ScheduledWake *time.Time `json:"scheduled_wake,omitempty"`
	// ExpiresAt is SleepTime + MaxSleepDuration; nil means no limit.
	ExpiresAt *time.Time `json:"expires_at,omitempty"`
	// MemorySize is the guest's memory; CompressedSize what the stored
	// snapshot takes.
	MemorySize     int64 `json:"memory_size"`
	CompressedSize int64 `json:"compressed_size"`
	// SnapshotID names the Nyx snapshot; SnapshotPath is its Erebus key.
	SnapshotID      string `json:"snapshot_id"`
	SnapshotPath    string `json:"snapshot_path"`
	WakePriority    int    `json:"wake_priority,omitempty"`
	PreserveNetwork bool   `json:"preserve_network,omitempty"`
	// WasPaused: the sandbox was paused (by its user) when put to sleep.
	WasPaused bool `json:"was_paused,omitempty"`
	// Config recreates the sandbox on wake.
	Config *tartarus.VMConfig `json:"config"`
	Status RecordStatus       `json:"status"`
	// Error says why the record failed.
	Error string `json:"error,omitempty"`
	// SleepDuration is how long Sleep took (pause to resources freed).
	SleepDuration time.Duration `json:"sleep_duration_ns"`
}

func (r *SleepRecord) clone() *SleepRecord {
	c := *r
	return &c
}

// WakeResult reports one wake.
type WakeResult struct {
	SandboxID     string
	WakeTime      time.Time
	SleepDuration time.Duration
	// RestoreTime is the wake's own duration, queueing excluded.
	RestoreTime time.Duration
	// QueueTime is how long the wake waited for a MaxConcurrentWakes slot.
	QueueTime time.Duration
	Status    tartarus.State
}

// SleepFilter selects sleep records; zero fields match everything.
type SleepFilter struct {
	TenantID       string
	SleepingBefore time.Time
	SleepingAfter  time.Time
	MinMemorySize  int64
	MaxMemorySize  int64
}

func (f *SleepFilter) match(r *SleepRecord) bool {
	if f == nil {
		return true
	}
	switch {
	case f.TenantID != "" && r.TenantID != f.TenantID,
		!f.SleepingBefore.IsZero() && !r.SleepTime.Before(f.SleepingBefore),
		!f.SleepingAfter.IsZero() && !r.SleepTime.After(f.SleepingAfter),
		f.MinMemorySize > 0 && r.MemorySize < f.MinMemorySize,
		f.MaxMemorySize > 0 && r.MemorySize > f.MaxMemorySize:
		return false
	}
	return true
}

// HypnosConfig is the server's hibernation policy.
type HypnosConfig struct {
	// DefaultIdleThreshold puts a sandbox without its own threshold to
	// sleep once idle this long; zero means only sandboxes with their own
	// threshold (ScheduleSleep) sleep by themselves.
	DefaultIdleThreshold time.Duration

	// CompressionAlgorithm is "zstd" (default) or "none". The seed also
	// named "lz4"; it is not implemented and refused by Validate.
	CompressionAlgorithm string

	// MaxConcurrentWakes bounds restores running at once (default 2).
	MaxConcurrentWakes int

	// PrewarmPoolSize is the number of restored-but-unclaimed sandboxes a
	// node keeps per template. The Manager does not act on it: the node
	// agent's warm pool reads it.
	PrewarmPoolSize int

	// CheckInterval is how often Run looks for idle, expired and
	// scheduled-to-wake sandboxes (default 10s).
	CheckInterval time.Duration
}

// The defaults Validate fills in.
const (
	DefaultMaxConcurrentWakes = 2
	DefaultCheckInterval      = 10 * time.Second
)

// Validate fills defaults and reports every problem at once.
func (c *HypnosConfig) Validate() error {
	if c.CompressionAlgorithm == "" {
		c.CompressionAlgorithm = "zstd"
	}
	if c.MaxConcurrentWakes == 0 {
		c.MaxConcurrentWakes = DefaultMaxConcurrentWakes
	}
	if c.CheckInterval == 0 {
		c.CheckInterval = DefaultCheckInterval
	}
	var errs []error
	if c.DefaultIdleThreshold < 0 {
		errs = append(errs, fmt.Errorf("default idle threshold %v is negative", c.DefaultIdleThreshold))
	}
	if c.CompressionAlgorithm != "zstd" && c.CompressionAlgorithm != "none" {
		errs = append(errs, fmt.Errorf("compression %q: want \"zstd\" or \"none\"", c.CompressionAlgorithm))
	}
	if c.MaxConcurrentWakes < 0 {
		errs = append(errs, fmt.Errorf("max concurrent wakes %d is negative", c.MaxConcurrentWakes))
	}
	if c.PrewarmPoolSize < 0 {
		errs = append(errs, fmt.Errorf("prewarm pool size %d is negative", c.PrewarmPoolSize))
	}
	if c.CheckInterval < 0 {
		errs = append(errs, fmt.Errorf("check interval %v is negative", c.CheckInterval))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("hypnos config: %w: %w", tartarus.ErrInvalid, err)
	}
	return nil
}

// Event tells the node agent about a change Hypnos made by itself (the idle
// watcher, expiry, a failed wake) or on request, so it can record the
// sandbox's state.
type Event struct {
	SandboxID string
	// State is hibernated, running, terminated or failed.
	State  tartarus.State
	Record *SleepRecord
	// Reason says why, in a few words ("idle for 10m0s", "checksum mismatch").
	Reason string
}

// ErrNotSleeping is returned (wrapped) by Wake for a sandbox that is not
// hibernated. It matches tartarus.ErrFailedPrecondition.
var ErrNotSleeping = fmt.Errorf("hypnos: sandbox is not hibernated: %w", tartarus.ErrFailedPrecondition)
