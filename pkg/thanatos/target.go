package thanatos

import (
	"context"
	"syscall"
)

// Target is what a termination needs from the node that runs the sandbox.
// Every method may be called again for the same sandbox after a crash, so
// each must be idempotent; Kill and Release of a sandbox that is already
// gone return nil.
type Target interface {
	// SignalAll sends sig to every process in the sandbox (in a microVM,
	// every guest process but the agent).
	SignalAll(ctx context.Context, sandboxID string, sig syscall.Signal) error
	// ActiveWork counts what the termination should wait for: running
	// exec streams, file transfers, connections through exposed ports and
	// (at the wiring's choice) processes still alive after the signal.
	// A sandbox that is gone answers ErrNotFound.
	ActiveWork(ctx context.Context, sandboxID string) (int, error)
	// Checkpoint takes a restorable snapshot named ref (the checkpoint's
	// ID, so a repeated call overwrites) of a running sandbox and leaves
	// it running; it returns the snapshot's reference and size.
	Checkpoint(ctx context.Context, sandboxID, id string) (SnapshotInfo, error)
	// Kill stops the sandbox at once (SIGKILL).
	Kill(ctx context.Context, sandboxID string) error
	// Release frees what the sandbox held: disk, network, records.
	Release(ctx context.Context, sandboxID string) error
}

// SnapshotInfo is what Target.Checkpoint made.
type SnapshotInfo struct {
	Ref  string
	Size int64
}

// CheckpointRemover is a Target that can delete a checkpoint's snapshot,
// so expired checkpoints are garbage-collected.
type CheckpointRemover interface {
	RemoveCheckpoint(ctx context.Context, ref string) error
}
