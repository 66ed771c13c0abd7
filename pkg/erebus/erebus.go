// Package erebus (the primordial darkness under the world) stores blobs:
// snapshots, sleep images and template artifacts, as named objects streamed
// in and out and checked against a sha256 checksum on every read.
//
// Store is the interface; Local keeps objects in a directory on this node.
// A distributed backend (S3-compatible) comes with multi-node support; every
// backend must pass the conformance suite in pkg/erebus/erebustest.
//
// The seed's Store took a file path (Put(path, file)); this one streams from
// an io.Reader and to an io.ReadCloser instead, so that a multi-GiB memory
// image never sits whole in memory or needs a second copy on disk, and it
// takes ctx first like every I/O call in Tartarus.
package erebus

import (
	"context"
	"errors"
	"io"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

// Store keeps named blobs. Keys are slash-separated paths ("sleep/sb-1/data");
// see ValidKey. Errors wrap the classes of pkg/tartarus: ErrInvalid for a bad
// key, ErrNotFound for a missing object, ErrResourceExhausted when the backend
// is full; ErrCorrupt when stored bytes no longer match their checksum.
type Store interface {
	// Put streams r into the object key, replacing any object with that key.
	// The object appears whole or not at all: if r fails, ctx ends or the
	// backend fails, readers still see the previous object (or none).
	Put(ctx context.Context, key string, r io.Reader) (Object, error)

	// Get opens the object key. The reader checks the bytes against the
	// object's checksum as they stream; if they do not match, its final Read
	// returns an error wrapping ErrCorrupt instead of io.EOF, and the caller
	// must discard everything it read. Reads also fail once ctx is done.
	Get(ctx context.Context, key string) (io.ReadCloser, Object, error)

	// Stat describes the object key without reading it.
	Stat(ctx context.Context, key string) (Object, error)

	// Delete removes the object key. Deleting a missing object is not an
	// error, so a retried Delete is harmless.
	Delete(ctx context.Context, key string) error

	// List returns the objects whose keys start with prefix (a plain string
	// prefix, as in S3), sorted by key. An empty prefix lists everything.
	List(ctx context.Context, prefix string) ([]Object, error)
}

// Object describes one stored blob.
type Object struct {
	Key  string `json:"key"`
	Size int64  `json:"size"`
	// Checksum is "sha256:" followed by the hex digest of the content.
	Checksum string    `json:"checksum"`
	ModTime  time.Time `json:"mod_time"`
}

// ErrCorrupt means stored bytes do not match their recorded checksum or size
// (bit rot, a truncated file, a replaced object). The data must not be used.
var ErrCorrupt = errors.New("erebus: stored data does not match its checksum")

// MaxKeyLen bounds a key's length in bytes; MaxSegmentLen bounds each
// slash-separated part (file systems limit a name to 255 bytes).
const (
	MaxKeyLen     = 1024
	MaxSegmentLen = 200
)

// ValidKey checks that key is usable by every backend and can never name
// anything outside a store: 1 to MaxKeyLen bytes of slash-separated segments,
// none empty, "." or "..", each of letters, digits and "._-:=+@,~".
// Errors wrap tartarus.ErrInvalid.
func ValidKey(key string) error {
	if key == "" || len(key) > MaxKeyLen {
		return tartarus.Errorf(tartarus.ErrInvalid, "key %.64q: want 1-%d bytes", key, MaxKeyLen)
	}
	if !utf8.ValidString(key) {
		return tartarus.Errorf(tartarus.ErrInvalid, "key %.64q: not UTF-8", key)
	}
	for seg := range strings.SplitSeq(key, "/") {
		if err := validSegment(seg); err != nil {
			return tartarus.Errorf(tartarus.ErrInvalid, "key %.64q: %v", key, err)
		}
	}
	return nil
}

func validSegment(seg string) error {
	switch {
	case seg == "":
		return errors.New("empty segment (leading, trailing or double slash)")
	case seg == "." || seg == "..":
		return errors.New(`"." and ".." are not allowed`)
	case len(seg) > MaxSegmentLen:
		return errors.New("segment longer than 200 bytes")
	}
	for i := 0; i < len(seg); i++ {
		c := seg[i]
		ok := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' ||
			strings.IndexByte("._-:=+@,~", c) >= 0
		if !ok {
			return errors.New("only letters, digits and ._-:=+@,~ are allowed")
		}
	}
	return nil
}
