// Package store keeps the control plane's durable state: every sandbox with
// its state, owner, placement and times, and the sleep records of
// hibernated sandboxes (SleepRecordKeeper, a hypnos.RecordStore per runtime).
//
// Store is deliberately small and SQL-shaped: SQLite serves a single
// control-plane process, Postgres several replicas sharing one database
// (Open picks by the DSN). Both are the one SQL store, whose statements are
// written once; a dialect value holds what the databases spell differently
// (placeholders, the schema, the migration lock, a duplicate key's error).
// State changes are compare-and-set on the old state, so two writers racing
// on one sandbox cannot both win.
package store

import (
	"context"
	"time"

	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

// Store holds sandboxes durably.
type Store interface {
	// Create records a new sandbox. An existing id is ErrAlreadyExists.
	Create(ctx context.Context, sb *tartarus.Sandbox) error
	// Get returns one sandbox or an error wrapping ErrNotFound.
	Get(ctx context.Context, id string) (*tartarus.Sandbox, error)
	// List returns the sandboxes matching f, oldest first.
	List(ctx context.Context, f tartarus.SandboxFilter) ([]*tartarus.Sandbox, error)
	// Move changes a sandbox's state from `from` to `to` if, and only if, it
	// is still in `from` (compare-and-set) and tartarus.CheckMove allows it.
	// A sandbox no longer in `from` is ErrFailedPrecondition.
	Move(ctx context.Context, id string, from, to tartarus.State, m Change) (*tartarus.Sandbox, error)
	// Touch records API activity on a sandbox.
	Touch(ctx context.Context, id string, at time.Time) error
	// CountByState counts the sandboxes in each state (for metrics).
	CountByState(ctx context.Context) (map[tartarus.State]int, error)
	Close() error
}

// SleepRecordKeeper is the optional side interface of a Store that also
// keeps Hypnos's sleep records in its database (SQLite and Postgres do).
// The node agent keeps a runtime's records there when its Store has it,
// and in the snapshot store otherwise; so a wrapper around a Store must
// implement it too, forwarding to the wrapped Store, or hibernation
// silently moves its records (and no longer finds the sandboxes that slept
// before).
type SleepRecordKeeper interface {
	// SleepRecords returns the sleep records of runtime's sandboxes.
	SleepRecords(runtime string) *SleepRecords
}

// Change carries what a Move records besides the new state.
type Change struct {
	At time.Time
	// Error is stored as the sandbox's error message when not empty.
	Error string
	// SnapshotBytes is recorded as the sandbox's snapshot size (a move to
	// hibernated sets it; every other move leaves 0, clearing it).
	SnapshotBytes int64
}

// ExpirySetter is the optional side interface of a Store that can change
// a live sandbox's expiry time (SQLite and Postgres can). The node agent's
// expiry loop reads expires_at on every pass, so the change takes effect
// at its next tick.
type ExpirySetter interface {
	// SetExpiry sets the expiry of sandbox id, which must not be in a
	// final state (ErrFailedPrecondition), to at; a zero at means never.
	SetExpiry(ctx context.Context, id string, at time.Time) (*tartarus.Sandbox, error)
}
