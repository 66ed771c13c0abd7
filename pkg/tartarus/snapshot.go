package tartarus

import (
	"context"
	"io"
	"time"
)

// Snapshotter is the optional side interface of a Runtime whose sandboxes can
// be saved to files and brought back: memory and device state together with
// the disk overlay, taken at one instant so that they agree with each other.
// Nyx (snapshots) and Hypnos (hibernation) use it; a runtime that implements
// it declares Capabilities.Snapshot in its Fingerprint.
//
// The files belong to the runtime: callers move them as opaque bytes (pack,
// compress, store, unpack) and hand the same set back to Restore, on the same
// host or another one with the same template image.
type Snapshotter interface {
	// Snapshot pauses id (if running) and writes its memory+device state and
	// its disk overlay, consistent with each other, as files into dir (which
	// exists and is empty); the sandbox stays paused. Resuming it or
	// destroying it afterwards is the caller's choice.
	Snapshot(ctx context.Context, id string, dir string) (*SnapshotInfo, error)

	// Restore creates sandbox cfg.ID from the files in dir and leaves it
	// running. It fails with ErrAlreadyExists if cfg.ID exists. cfg.ID may
	// differ from the snapshotted sandbox's (fork, create from a template
	// snapshot): each restored sandbox gets its own copy of the disk. Before
	// returning, the guest's wall clock is set and its entropy reseeded, so
	// sandboxes restored from one snapshot do not share random numbers.
	// The files in dir may be moved or removed by Restore; the caller
	// deletes dir after.
	Restore(ctx context.Context, cfg *VMConfig, dir string) error
}

// StreamSnapshotter is the optional side interface of a Snapshotter that can
// hand over the largest file of a snapshot, the memory and device state, as
// a stream while the runtime produces it, so that a caller packs and stores
// it in one pass instead of reading back a file. Nyx uses it when a runtime
// has it and Snapshot otherwise.
type StreamSnapshotter interface {
	// SnapshotStream is Snapshot, except that the file the returned
	// SnapshotInfo.Stream names (it is in Files too) is written to stream,
	// in order, as it is produced, and not into dir; the other files go to
	// dir as Snapshot writes them. On error the sandbox is left paused, as
	// Snapshot leaves it, and what went to stream is incomplete. An error
	// from stream's Write ends the snapshot with that error.
	SnapshotStream(ctx context.Context, id, dir string, stream io.Writer) (*SnapshotInfo, error)
}

// SnapshotInfo describes the files one Snapshot call wrote.
type SnapshotInfo struct {
	// Template is the template the sandbox was created from; a snapshot only
	// restores against the same image (ImageDigest, when known).
	Template    string `json:"template"`
	ImageDigest string `json:"image_digest,omitempty"`
	// MemoryBytes is the guest's memory size (not the size of the files).
	MemoryBytes int64 `json:"memory_bytes"`
	CPUs        int   `json:"cpus,omitempty"`
	// Files are the names, relative to dir, of everything written.
	Files []string `json:"files"`
	// Stream, set by SnapshotStream only, is the name of the file of Files
	// that went to the stream instead of dir; Restore wants it in dir.
	Stream string `json:"stream,omitempty"`
	// Created is when the sandbox was stopped for the snapshot.
	Created time.Time `json:"created"`
}

// TemplateSaver is the optional side interface of a Snapshotter whose
// snapshots can become templates of their own (saving a sandbox as a
// template): the disk is flattened into a new root filesystem, and the
// snapshot is pointed at it, so that sandboxes restored from it start
// where the saved one was.
type TemplateSaver interface {
	// FlattenDisk writes the disk of the snapshot files in dir (the
	// template's root filesystem with the sandbox's changes on top) as
	// one raw root filesystem image to out.
	FlattenDisk(ctx context.Context, dir, out string) error
	// RetargetSnapshot rewrites the snapshot files in dir to restore
	// against img, whose RootFS is the FlattenDisk output: the disk starts
	// empty over it. It returns the rewritten snapshot's description.
	RetargetSnapshot(ctx context.Context, dir string, img *Image) (*SnapshotInfo, error)
}
