// Package nyx (night, mother of Hypnos and Thanatos) makes and restores
// sandbox snapshots: it asks a runtime's tartarus.Snapshotter for the files
// of a consistent snapshot, packs them into one tar stream compressed with
// zstd, stores that in Erebus beside a JSON metadata object, and on restore
// fetches, verifies, unpacks and hands the files back to the runtime.
//
// The seed's Nyx returned a snapshot path; here a snapshot lives in the blob
// store under <prefix>/<id>/data (the packed files) and <prefix>/<id>/meta.json
// (Snapshot), so it survives the node and can move between nodes once Erebus
// is distributed. Nothing is restored from data whose sha256 does not match
// the checksum recorded at creation: Restore unpacks into a temporary
// directory, checks the whole stream, and only then calls the runtime.
package nyx

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/klauspost/compress/zstd"

	"github.com/tartarus-sandbox/tartarus/pkg/clock"
	"github.com/tartarus-sandbox/tartarus/pkg/erebus"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

// Compression names how a snapshot's packed files are stored.
const (
	CompressionZstd = "zstd"
	CompressionNone = "none"
)

// Snapshot is the metadata of one stored snapshot (its meta.json).
type Snapshot struct {
	ID          string `json:"id"`
	SandboxID   string `json:"sandbox_id"`
	Template    string `json:"template"`
	ImageDigest string `json:"image_digest,omitempty"`
	// MemoryBytes is the guest's memory size.
	MemoryBytes int64 `json:"memory_bytes"`
	CPUs        int   `json:"cpus,omitempty"`
	// Files are the runtime's snapshot files, relative names, sorted.
	Files []string `json:"files"`
	// Stream names the file of Files that the data holds as consecutive
	// parts (stream.part-000000, …) rather than as one entry: a runtime's
	// memory stream, packed while it was produced. Empty in snapshots
	// packed from files only.
	Stream string `json:"stream,omitempty"`
	// Size is the length of the packed (tar) stream before compression;
	// CompressedSize is what the store holds.
	Size           int64  `json:"size"`
	CompressedSize int64  `json:"compressed_size"`
	Compression    string `json:"compression"`
	// Checksum is "sha256:<hex>" of the stored data object.
	Checksum string `json:"checksum"`
	// DataKey is the Erebus key of the packed files.
	DataKey string    `json:"data_key"`
	Created time.Time `json:"created"`
	// Labels are the caller's (e.g. "purpose": "hibernate").
	Labels map[string]string `json:"labels,omitempty"`
}

// Options configure a Manager. The zero value works except for Store.
type Options struct {
	// Prefix is the Erebus key prefix of snapshots; default "snapshots".
	Prefix string
	// TempDir holds snapshot files while they are packed or unpacked;
	// default os.TempDir(). It must hold one uncompressed snapshot per
	// concurrent call, and is best on the runtime's file system, so that
	// Restore can rename the files into place instead of copying them.
	TempDir string
	// Level is the zstd level; default zstd.SpeedFastest (see
	// docs/BENCHMARKS.md for why).
	Level zstd.EncoderLevel
	// Clock stamps snapshots when the runtime gives no time; default
	// clock.System.
	Clock  clock.Clock
	Logger *slog.Logger
}

// Manager creates and restores snapshots through a Snapshotter and a Store.
// It is safe for concurrent use.
type Manager struct {
	snap  tartarus.Snapshotter
	store erebus.Store
	opts  Options
	log   *slog.Logger
}

// New returns a Manager.
func New(snap tartarus.Snapshotter, store erebus.Store, opts Options) *Manager {
	if opts.Prefix == "" {
		opts.Prefix = "snapshots"
	}
	if opts.Level == 0 {
		opts.Level = zstd.SpeedFastest
	}
	if opts.Clock == nil {
		opts.Clock = clock.System{}
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Manager{snap: snap, store: store, opts: opts, log: log.With("component", "nyx")}
}

// CreateOptions tune one CreateFromRunning call; nil means defaults.
type CreateOptions struct {
	// ID names the snapshot; default a random one. It must be one Erebus
	// key segment.
	ID string
	// Compression is CompressionZstd (default) or CompressionNone.
	Compression string
	Labels      map[string]string
}

// withDefaults returns a copy of o (which may be nil) with its defaults
// filled in, or an error for an invalid one.
func (o *CreateOptions) withDefaults() (CreateOptions, error) {
	var c CreateOptions
	if o != nil {
		c = *o
	}
	if c.ID == "" {
		c.ID = tartarus.NewID("snap-")
	}
	if c.Compression == "" {
		c.Compression = CompressionZstd
	}
	if err := validID(c.ID); err != nil {
		return c, err
	}
	if c.Compression != CompressionZstd && c.Compression != CompressionNone {
		return c, tartarus.Errorf(tartarus.ErrInvalid, "compression %q: want %q or %q", c.Compression, CompressionZstd, CompressionNone)
	}
	return c, nil
}

// CreateFromRunning snapshots sandbox sandboxID and stores it. The sandbox is
// left paused (as the Snapshotter leaves it): the caller resumes it (a
// template snapshot, a fork) or destroys it (hibernation). On error nothing
// is stored. A runtime that is a tartarus.StreamSnapshotter has its memory
// stream packed, compressed and stored while it saves it; any other writes
// its files first.
func (m *Manager) CreateFromRunning(ctx context.Context, sandboxID string, opts *CreateOptions) (*Snapshot, error) {
	o, err := opts.withDefaults()
	if err != nil {
		return nil, err
	}

	dir, err := os.MkdirTemp(m.opts.TempDir, "nyx-create-")
	if err != nil {
		return nil, fmt.Errorf("snapshot %s: %w", sandboxID, err)
	}
	defer os.RemoveAll(dir)

	if ss, ok := m.snap.(tartarus.StreamSnapshotter); ok {
		return m.putStream(ctx, ss, sandboxID, dir, o)
	}
	info, err := m.snap.Snapshot(ctx, sandboxID, dir)
	if err != nil {
		return nil, fmt.Errorf("snapshot %s: %w", sandboxID, err)
	}
	return m.put(ctx, sandboxID, dir, info, o)
}

// CreateFromFiles stores the snapshot files in dir, which a Snapshotter
// wrote (and a caller may have changed, as saving a sandbox as a template
// does), described by info. sandboxID is recorded as the snapshot's source.
func (m *Manager) CreateFromFiles(ctx context.Context, sandboxID, dir string, info *tartarus.SnapshotInfo, opts *CreateOptions) (*Snapshot, error) {
	o, err := opts.withDefaults()
	if err != nil {
		return nil, err
	}
	return m.put(ctx, sandboxID, dir, info, o)
}

// newSnapshot returns the metadata of a snapshot of sandboxID described by
// info, before its data is stored.
func (m *Manager) newSnapshot(sandboxID string, info *tartarus.SnapshotInfo, o CreateOptions) *Snapshot {
	s := &Snapshot{
		ID:          o.ID,
		SandboxID:   sandboxID,
		Template:    info.Template,
		ImageDigest: info.ImageDigest,
		MemoryBytes: info.MemoryBytes,
		CPUs:        info.CPUs,
		Compression: o.Compression,
		DataKey:     m.key(o.ID, "data"),
		Created:     info.Created,
		Labels:      o.Labels,
	}
	if s.Created.IsZero() {
		s.Created = m.opts.Clock.Now()
	}
	return s
}

// put packs the snapshot files in dir and stores them with their metadata.
func (m *Manager) put(ctx context.Context, sandboxID, dir string, info *tartarus.SnapshotInfo, o CreateOptions) (*Snapshot, error) {
	files, err := listFiles(dir)
	if err == nil && len(files) == 0 {
		err = errors.New("runtime wrote no snapshot files")
	}
	if err != nil {
		return nil, fmt.Errorf("snapshot %s: %w", sandboxID, err)
	}
	s := m.newSnapshot(sandboxID, info, o)
	s.Files = files
	obj, size, err := m.storeData(ctx, s.DataKey, o.Compression, func(tw *tar.Writer) error { return addFiles(tw, dir, files) })
	if err != nil {
		return nil, fmt.Errorf("snapshot %s: %w", sandboxID, err)
	}
	s.Size = size
	return m.putMeta(ctx, s, obj)
}

// putStream snapshots sandboxID through ss and stores it in one pass: the
// memory stream goes into the tar as parts while the runtime saves it, and
// the files the runtime wrote to dir, which are complete only once it has
// finished (the disk is copied after the memory), follow. If the store
// fails, writes to the stream fail and the runtime ends the snapshot.
func (m *Manager) putStream(ctx context.Context, ss tartarus.StreamSnapshotter, sandboxID, dir string, o CreateOptions) (*Snapshot, error) {
	var s *Snapshot // set by the packing goroutine, read after it ended
	start := time.Now()
	var saved time.Duration
	var streamed int64
	obj, size, err := m.storeData(ctx, m.key(o.ID, "data"), o.Compression, func(tw *tar.Writer) error {
		parts := newPartWriter(tw)
		info, err := ss.SnapshotStream(ctx, sandboxID, dir, parts)
		if err != nil {
			return err
		}
		saved = time.Since(start)
		if info.Stream == "" || !filepath.IsLocal(info.Stream) || strings.HasPrefix(info.Stream, partPrefix) {
			return fmt.Errorf("runtime streamed a file named %q", info.Stream)
		}
		if err := parts.Close(); err != nil {
			return fmt.Errorf("pack %s: %w", info.Stream, err)
		}
		streamed = parts.size
		files, err := listFiles(dir)
		if err != nil {
			return err
		}
		if slices.Contains(files, info.Stream) {
			return fmt.Errorf("runtime wrote %s both to the stream and into the directory", info.Stream)
		}
		if err := addFiles(tw, dir, files); err != nil {
			return err
		}
		s = m.newSnapshot(sandboxID, info, o)
		s.Stream = info.Stream
		s.Files = append(files, info.Stream)
		slices.Sort(s.Files)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("snapshot %s: %w", sandboxID, err)
	}
	s.Size = size
	m.log.Debug("snapshot streamed", "snapshot", s.ID, "sandbox", sandboxID, "stream_bytes", streamed,
		"saved_ms", saved.Milliseconds(), "stored_ms", time.Since(start).Milliseconds())
	return m.putMeta(ctx, s, obj)
}

// storeData stores what write puts into a tar, compressed as asked, as
// key, and returns the stored object and the tar's length. Packing and
// compressing run in one goroutine while the store reads the other end of
// a pipe: the snapshot crosses memory once, in buffer-sized pieces. On
// error nothing is stored.
func (m *Manager) storeData(ctx context.Context, key, compression string, write func(tw *tar.Writer) error) (erebus.Object, int64, error) {
	pr, pw := io.Pipe()
	type result struct {
		n   int64
		err error
	}
	packed := make(chan result, 1)
	go func() {
		n, err := m.pack(compression, pw, write)
		pw.CloseWithError(err) // nil err closes with EOF: the store commits
		packed <- result{n, err}
	}()
	obj, err := m.store.Put(ctx, key, pr)
	pr.CloseWithError(errStoreStopped) // unblocks pack if Put failed early
	p := <-packed
	switch {
	case err != nil && (p.err == nil || errors.Is(p.err, errStoreStopped)):
		return obj, p.n, fmt.Errorf("store: %w", err)
	case p.err != nil:
		return obj, p.n, p.err
	case err != nil:
		return obj, p.n, fmt.Errorf("store: %w", err)
	}
	return obj, p.n, nil
}

// errStoreStopped is what packing sees when the store stopped reading.
var errStoreStopped = errors.New("the store stopped reading")

// putMeta completes s with its stored data obj and stores its metadata,
// which makes the snapshot exist.
func (m *Manager) putMeta(ctx context.Context, s *Snapshot, obj erebus.Object) (*Snapshot, error) {
	s.CompressedSize, s.Checksum = obj.Size, obj.Checksum
	meta, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		m.deleteQuietly(s.DataKey)
		return nil, fmt.Errorf("snapshot %s: %w", s.SandboxID, err)
	}
	if _, err := m.store.Put(ctx, m.key(s.ID, "meta.json"), bytes.NewReader(meta)); err != nil {
		m.deleteQuietly(s.DataKey)
		return nil, fmt.Errorf("snapshot %s: store metadata: %w", s.SandboxID, err)
	}
	m.log.Info("snapshot stored", "snapshot", s.ID, "sandbox", s.SandboxID,
		"memory_bytes", s.MemoryBytes, "size", s.Size, "compressed_size", s.CompressedSize)
	return s, nil
}

// Restore creates sandbox cfg.ID from snapshot id and leaves it running. It
// refuses (with an error wrapping erebus.ErrCorrupt) a snapshot whose stored
// bytes do not match the checksum in its metadata, before the runtime sees
// any of it, and (with ErrFailedPrecondition) one taken from another
// template or image than cfg's.
func (m *Manager) Restore(ctx context.Context, id string, cfg *tartarus.VMConfig) (*Snapshot, error) {
	s, err := m.Get(ctx, id)
	if err != nil {
		return nil, fmt.Errorf("restore %s: %w", cfg.ID, err)
	}
	if err := compatible(s, cfg); err != nil {
		return nil, fmt.Errorf("restore %s from snapshot %s: %w", cfg.ID, id, err)
	}
	dir, err := os.MkdirTemp(m.opts.TempDir, "nyx-restore-")
	if err != nil {
		return nil, fmt.Errorf("restore %s: %w", cfg.ID, err)
	}
	defer os.RemoveAll(dir)
	start := m.opts.Clock.Now()
	if err := m.fetch(ctx, s, dir); err != nil {
		return nil, fmt.Errorf("restore %s from snapshot %s: %w", cfg.ID, id, err)
	}
	fetched := m.opts.Clock.Now()
	if err := m.snap.Restore(ctx, cfg, dir); err != nil {
		return nil, fmt.Errorf("restore %s from snapshot %s: %w", cfg.ID, id, err)
	}
	m.log.Info("snapshot restored", "snapshot", id, "sandbox", cfg.ID,
		"fetch_ms", fetched.Sub(start).Milliseconds(), "runtime_ms", m.opts.Clock.Now().Sub(fetched).Milliseconds())
	return s, nil
}

// Fetch checks snapshot id against its checksum and unpacks its files into
// dir (which exists and is empty), restoring nothing: for a caller that
// keeps the files, such as a node's cache of template snapshots. On error
// dir holds nothing usable.
func (m *Manager) Fetch(ctx context.Context, id, dir string) (*Snapshot, error) {
	s, err := m.Get(ctx, id)
	if err != nil {
		return nil, err
	}
	if err := m.fetch(ctx, s, dir); err != nil {
		return nil, fmt.Errorf("fetch snapshot %s: %w", id, err)
	}
	return s, nil
}

func compatible(s *Snapshot, cfg *tartarus.VMConfig) error {
	if cfg.Template != "" && s.Template != "" && cfg.Template != s.Template {
		return tartarus.Errorf(tartarus.ErrFailedPrecondition, "snapshot is of template %s, not %s", s.Template, cfg.Template)
	}
	if cfg.Image != nil && cfg.Image.Digest != "" && s.ImageDigest != "" && cfg.Image.Digest != s.ImageDigest {
		return tartarus.Errorf(tartarus.ErrFailedPrecondition, "snapshot was taken on image %s, template %s is now image %s; rebuild the snapshot",
			s.ImageDigest, s.Template, cfg.Image.Digest)
	}
	return nil
}

// fetch streams s's data from the store into dir, checking it against s's
// checksum. Only after the whole stream checked out are the files usable.
func (m *Manager) fetch(ctx context.Context, s *Snapshot, dir string) error {
	rc, obj, err := m.store.Get(ctx, s.DataKey)
	if errors.Is(err, tartarus.ErrNotFound) {
		// The metadata promises data that is gone: as unusable as damage.
		return fmt.Errorf("fetch: data object %s is missing: %w", s.DataKey, erebus.ErrCorrupt)
	}
	if err != nil {
		return fmt.Errorf("fetch: %w", err)
	}
	defer rc.Close()
	if obj.Checksum != s.Checksum || obj.Size != s.CompressedSize {
		return fmt.Errorf("stored data is %s (%d bytes), metadata recorded %s (%d bytes): %w",
			obj.Checksum, obj.Size, s.Checksum, s.CompressedSize, erebus.ErrCorrupt)
	}
	// One goroutine is the only reader of the stored bytes: it hashes all
	// of them, feeds the decoder for as long as it reads, and then reads
	// on to the end whatever happened, so the store verifies the whole
	// object and a damaged stream is reported as damage (ErrCorrupt, or a
	// checksum mismatch) rather than as the tar or zstd error it caused.
	h := sha256.New()
	pr, pw := io.Pipe()
	pumped := make(chan error, 1)
	go func() {
		raw := io.TeeReader(rc, h)
		_, err := io.Copy(pw, raw)
		pw.CloseWithError(err) // nil err: EOF
		if errors.Is(err, errStopped) {
			_, err = io.Copy(io.Discard, raw)
		}
		pumped <- err
	}()

	var in io.Reader = pr
	var dec *zstd.Decoder
	if s.Compression == CompressionZstd {
		dec, err = zstd.NewReader(pr)
		if err != nil {
			pr.CloseWithError(errStopped)
			<-pumped
			return fmt.Errorf("fetch: %w", err)
		}
		in = dec
	}
	unpackErr := unpack(in, dir, s.Files, s.Stream)
	if unpackErr == nil {
		_, unpackErr = io.Copy(io.Discard, in) // the end of the zstd frame
	}
	pr.CloseWithError(errStopped)
	if dec != nil {
		dec.Close()
	}
	if err := <-pumped; err != nil {
		return fmt.Errorf("fetch: %w", err)
	}
	if got := sumOf(h); got != s.Checksum {
		return fmt.Errorf("fetch: data hashes to %s, metadata recorded %s: %w", got, s.Checksum, erebus.ErrCorrupt)
	}
	if unpackErr != nil {
		return fmt.Errorf("fetch: unpack: %w", unpackErr)
	}
	return nil
}

// errStopped tells fetch's reading goroutine that the decoder needs no more.
var errStopped = errors.New("nyx: consumer stopped reading")

// Get returns the metadata of snapshot id (ErrNotFound if there is none).
func (m *Manager) Get(ctx context.Context, id string) (*Snapshot, error) {
	if err := validID(id); err != nil {
		return nil, err
	}
	rc, _, err := m.store.Get(ctx, m.key(id, "meta.json"))
	if err != nil {
		if errors.Is(err, tartarus.ErrNotFound) {
			return nil, tartarus.Errorf(tartarus.ErrNotFound, "snapshot %s", id)
		}
		return nil, fmt.Errorf("snapshot %s: %w", id, err)
	}
	defer rc.Close()
	var s Snapshot
	if err := json.NewDecoder(io.LimitReader(rc, 1<<20)).Decode(&s); err != nil {
		return nil, fmt.Errorf("snapshot %s: metadata: %w", id, err)
	}
	// Read to EOF so the store verifies the checksum of what we parsed.
	if _, err := io.Copy(io.Discard, rc); err != nil {
		return nil, fmt.Errorf("snapshot %s: metadata: %w", id, err)
	}
	if s.ID != id || s.DataKey != m.key(id, "data") {
		return nil, fmt.Errorf("snapshot %s: metadata names %s at %s: %w", id, s.ID, s.DataKey, erebus.ErrCorrupt)
	}
	return &s, nil
}

// List returns every complete snapshot (one whose metadata is stored).
func (m *Manager) List(ctx context.Context) ([]*Snapshot, error) {
	objs, err := m.store.List(ctx, m.opts.Prefix+"/")
	if err != nil {
		return nil, fmt.Errorf("list snapshots: %w", err)
	}
	var out []*Snapshot
	for _, o := range objs {
		rest := strings.TrimPrefix(o.Key, m.opts.Prefix+"/")
		id, file, ok := strings.Cut(rest, "/")
		if !ok || file != "meta.json" {
			continue
		}
		s, err := m.Get(ctx, id)
		if err != nil {
			if errors.Is(err, tartarus.ErrNotFound) {
				continue // deleted meanwhile
			}
			return nil, err
		}
		out = append(out, s)
	}
	return out, nil
}

// Incomplete returns the ids of snapshots whose data is stored without
// metadata: creates that a crash interrupted, or that are running now.
// Only a caller that knows no create runs under this prefix may delete them.
func (m *Manager) Incomplete(ctx context.Context) ([]string, error) {
	objs, err := m.store.List(ctx, m.opts.Prefix+"/")
	if err != nil {
		return nil, fmt.Errorf("list snapshots: %w", err)
	}
	files := map[string][]string{}
	for _, o := range objs {
		id, file, ok := strings.Cut(strings.TrimPrefix(o.Key, m.opts.Prefix+"/"), "/")
		if ok {
			files[id] = append(files[id], file)
		}
	}
	var out []string
	for id, fs := range files {
		if !slices.Contains(fs, "meta.json") && validID(id) == nil {
			out = append(out, id)
		}
	}
	slices.Sort(out)
	return out, nil
}

// Delete removes snapshot id; a missing one is not an error. The metadata
// goes first, so a half-deleted snapshot never looks complete.
func (m *Manager) Delete(ctx context.Context, id string) error {
	if err := validID(id); err != nil {
		return err
	}
	for _, name := range []string{"meta.json", "data"} {
		if err := m.store.Delete(ctx, m.key(id, name)); err != nil {
			return fmt.Errorf("delete snapshot %s: %w", id, err)
		}
	}
	return nil
}

func (m *Manager) deleteQuietly(key string) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := m.store.Delete(ctx, key); err != nil {
		m.log.Warn("cannot remove partial snapshot", "key", key, "err", err)
	}
}

func (m *Manager) key(id, name string) string { return m.opts.Prefix + "/" + id + "/" + name }

func validID(id string) error {
	if strings.Contains(id, "/") || erebus.ValidKey(id) != nil {
		return tartarus.Errorf(tartarus.ErrInvalid, "snapshot id %.64q: want one key segment of letters, digits and ._-:=+@,~", id)
	}
	return nil
}

func sumOf(h hash.Hash) string { return "sha256:" + hex.EncodeToString(h.Sum(nil)) }
