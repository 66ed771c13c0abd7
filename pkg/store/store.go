// Package store keeps the control plane's durable state: every sandbox with
// its state, owner, placement and times, and the sleep records of
// hibernated sandboxes (SQLite.SleepRecords, a hypnos.RecordStore).
//
// Store is deliberately small and SQL-shaped: SQLite serves a single
// control-plane process, Postgres several replicas sharing one database
// (Open picks by the DSN).
// State changes are compare-and-set on the old state, so two writers racing
// on one sandbox cannot both win.
package store

import (
	"context"
	"database/sql"
	"fmt"
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

// Change carries what a Move records besides the new state.
type Change struct {
	At time.Time
	// Error is stored as the sandbox's error message when not empty.
	Error string
	// SnapshotBytes is recorded as the sandbox's snapshot size (a move to
	// hibernated sets it; every other move leaves 0, clearing it).
	SnapshotBytes int64
}

// querySandboxes runs a SELECT of columns and scans every row; both SQL
// stores list through it.
func querySandboxes(ctx context.Context, db *sql.DB, q string, args []any) ([]*tartarus.Sandbox, error) {
	rows, err := db.QueryContext(ctx, q, args...)
	if err != nil {
		return nil, fmt.Errorf("list sandboxes: %w", err)
	}
	defer rows.Close()
	var out []*tartarus.Sandbox
	for rows.Next() {
		sb, err := scan(rows)
		if err != nil {
			return nil, fmt.Errorf("list sandboxes: %w", err)
		}
		out = append(out, sb)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list sandboxes: %w", err)
	}
	return out, nil
}
