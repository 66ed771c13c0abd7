package erebus

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"

	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

// Local is a Store in a directory of this node. Each object is one file
// under DIR/objects/<key>, holding a fixed 128-byte text header (checksum and
// size) followed by the content. Keeping the checksum in the same file as the
// content means one rename commits both: a separate checksum file would need
// two renames, and a crash between them would leave an object that reads as
// corrupt. Writes go to DIR/tmp first and are fsynced before the rename;
// the directory is fsynced after it.
//
// One Local owns its directory: NewLocal removes leftovers of writes that a
// crash interrupted, so two processes must not share one directory.
type Local struct {
	objects string
	tmp     string
}

var _ Store = (*Local)(nil)

const (
	headerSize  = 128
	headerMagic = "erebus-object v1\n"
	copyBufSize = 1 << 20
)

// NewLocal opens (creating if needed) a store in dir.
func NewLocal(dir string) (*Local, error) {
	s := &Local{objects: filepath.Join(dir, "objects"), tmp: filepath.Join(dir, "tmp")}
	for _, d := range []string{s.objects, s.tmp} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, fmt.Errorf("open store %s: %w", dir, err)
		}
	}
	leftovers, err := os.ReadDir(s.tmp)
	if err != nil {
		return nil, fmt.Errorf("open store %s: %w", dir, err)
	}
	for _, e := range leftovers {
		if err := os.Remove(filepath.Join(s.tmp, e.Name())); err != nil {
			return nil, fmt.Errorf("open store %s: remove leftover: %w", dir, err)
		}
	}
	return s, nil
}

// path maps a valid key to its file; ValidKey guarantees it stays under objects.
func (s *Local) path(key string) string {
	return filepath.Join(s.objects, filepath.FromSlash(key))
}

// Put implements Store.
func (s *Local) Put(ctx context.Context, key string, r io.Reader) (Object, error) {
	if err := ValidKey(key); err != nil {
		return Object{}, err
	}
	f, err := os.CreateTemp(s.tmp, "put-*")
	if err != nil {
		return Object{}, storageErr("put "+key, err)
	}
	committed := false
	defer func() {
		if !committed {
			f.Close()
			os.Remove(f.Name())
		}
	}()

	if _, err := f.Write(make([]byte, headerSize)); err != nil {
		return Object{}, storageErr("put "+key, err)
	}
	src := &ctxReader{ctx: ctx, r: r}
	h := sha256.New()
	n, err := io.CopyBuffer(io.MultiWriter(f, h), src, make([]byte, copyBufSize))
	if err != nil {
		if src.err != nil {
			return Object{}, fmt.Errorf("put %s: read source: %w", key, src.err)
		}
		return Object{}, storageErr("put "+key, err)
	}
	sum := "sha256:" + hex.EncodeToString(h.Sum(nil))
	if _, err := f.WriteAt(FormatChecksum(headerMagic, sum, n, headerSize), 0); err != nil {
		return Object{}, storageErr("put "+key, err)
	}
	if err := f.Sync(); err != nil {
		return Object{}, storageErr("put "+key, err)
	}
	if err := f.Close(); err != nil {
		return Object{}, storageErr("put "+key, err)
	}
	if err := ctx.Err(); err != nil {
		return Object{}, fmt.Errorf("put %s: %w", key, err)
	}
	dst := s.path(key)
	if err := s.rename(f.Name(), dst); err != nil {
		return Object{}, s.keyErr("put", key, err)
	}
	committed = true
	fi, err := os.Stat(dst)
	if err != nil {
		return Object{}, storageErr("put "+key, err)
	}
	return Object{Key: key, Size: n, Checksum: sum, ModTime: fi.ModTime()}, nil
}

// rename moves a finished temp file to dst, creating parent directories and
// fsyncing every directory it changed. A concurrent Delete may remove an
// empty parent between MkdirAll and Rename, so a missing parent is retried.
func (s *Local) rename(tmp, dst string) error {
	dir := filepath.Dir(dst)
	for attempt := 0; ; attempt++ {
		if err := s.mkdirAll(dir); err != nil {
			return err
		}
		err := os.Rename(tmp, dst)
		if err == nil {
			break
		}
		if !errors.Is(err, fs.ErrNotExist) || attempt == 3 {
			return err
		}
	}
	return syncDir(dir)
}

// mkdirAll creates dir and its missing parents under s.objects, fsyncing the
// parent of each directory it creates so the new entry survives a crash.
func (s *Local) mkdirAll(dir string) error {
	if dir == s.objects {
		return nil
	}
	fi, err := os.Stat(dir)
	if err == nil {
		if !fi.IsDir() {
			return syscall.ENOTDIR
		}
		return nil
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	parent := filepath.Dir(dir)
	if err := s.mkdirAll(parent); err != nil {
		return err
	}
	if err := os.Mkdir(dir, 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
		return err
	}
	return syncDir(parent)
}

// Get implements Store.
func (s *Local) Get(ctx context.Context, key string) (io.ReadCloser, Object, error) {
	if err := ValidKey(key); err != nil {
		return nil, Object{}, err
	}
	f, obj, err := s.open(key)
	if err != nil {
		return nil, Object{}, err
	}
	vr := NewVerifyingReader(ctx, f, key, obj)
	return vr, obj, nil
}

// Stat implements Store.
func (s *Local) Stat(ctx context.Context, key string) (Object, error) {
	if err := ValidKey(key); err != nil {
		return Object{}, err
	}
	f, obj, err := s.open(key)
	if err != nil {
		return Object{}, err
	}
	f.Close()
	return obj, nil
}

// open opens key's file positioned after the header and checks the header
// against the file's length.
func (s *Local) open(key string) (*os.File, Object, error) {
	f, err := os.Open(s.path(key))
	if err != nil {
		return nil, Object{}, s.keyErr("open", key, err)
	}
	obj, err := readHeader(f, key)
	if err != nil {
		f.Close()
		return nil, Object{}, err
	}
	return f, obj, nil
}

func readHeader(f *os.File, key string) (Object, error) {
	fi, err := f.Stat()
	if err != nil {
		return Object{}, fmt.Errorf("open %s: %w", key, err)
	}
	if fi.IsDir() {
		return Object{}, tartarus.Errorf(tartarus.ErrNotFound, "object %s", key)
	}
	hdr := make([]byte, headerSize)
	if _, err := io.ReadFull(f, hdr); err != nil {
		return Object{}, fmt.Errorf("object %s: short header: %w", key, ErrCorrupt)
	}
	sum, size, err := ParseChecksum(hdr, headerMagic)
	if err != nil {
		return Object{}, fmt.Errorf("object %s: %v: %w", key, err, ErrCorrupt)
	}
	if fi.Size()-headerSize != size {
		return Object{}, fmt.Errorf("object %s: header says %d bytes, file holds %d: %w",
			key, size, fi.Size()-headerSize, ErrCorrupt)
	}
	return Object{Key: key, Size: size, Checksum: sum, ModTime: fi.ModTime()}, nil
}

// FormatChecksum writes the block both stores keep with an object: the
// magic line, "sha256:<hex>\n", "size <n>\n", padded with spaces to n-1
// bytes and a final newline, so `head -c`/`tail -c` shows it readably.
func FormatChecksum(magic, sum string, size int64, n int) []byte {
	var b bytes.Buffer
	b.WriteString(magic)
	b.WriteString(sum + "\n")
	b.WriteString("size " + strconv.FormatInt(size, 10) + "\n")
	for b.Len() < n-1 {
		b.WriteByte(' ')
	}
	b.WriteByte('\n')
	return b.Bytes()
}

// ParseChecksum reads a block FormatChecksum wrote with magic.
func ParseChecksum(block []byte, magic string) (sum string, size int64, err error) {
	rest, ok := bytes.CutPrefix(block, []byte(magic))
	if !ok {
		return "", 0, errors.New("bad magic line")
	}
	lines := strings.SplitN(string(rest), "\n", 3)
	if len(lines) < 3 || !strings.HasPrefix(lines[0], "sha256:") || len(lines[0]) != len("sha256:")+64 {
		return "", 0, errors.New("bad checksum line")
	}
	if _, err := hex.DecodeString(lines[0][len("sha256:"):]); err != nil {
		return "", 0, errors.New("bad checksum line")
	}
	sizeStr, ok := strings.CutPrefix(lines[1], "size ")
	if !ok {
		return "", 0, errors.New("bad size line")
	}
	size, err = strconv.ParseInt(sizeStr, 10, 64)
	if err != nil || size < 0 {
		return "", 0, errors.New("bad size line")
	}
	return lines[0], size, nil
}

// Delete implements Store.
func (s *Local) Delete(ctx context.Context, key string) error {
	if err := ValidKey(key); err != nil {
		return err
	}
	p := s.path(key)
	fi, err := os.Lstat(p)
	if errors.Is(err, fs.ErrNotExist) || err == nil && fi.IsDir() {
		return nil
	}
	if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return storageErr("delete "+key, err)
	}
	// Drop parents left empty, so a later key may use the name as an object.
	// Remove fails on a non-empty directory, which ends the climb.
	dir := filepath.Dir(p)
	for dir != s.objects {
		if os.Remove(dir) != nil {
			break
		}
		dir = filepath.Dir(dir)
	}
	if err := syncDir(dir); err != nil {
		return storageErr("delete "+key, err)
	}
	return nil
}

// List implements Store.
func (s *Local) List(ctx context.Context, prefix string) ([]Object, error) {
	start := s.objects
	if i := strings.LastIndexByte(prefix, '/'); i > 0 {
		dirKey := prefix[:i]
		if err := ValidKey(dirKey); err != nil {
			return nil, fmt.Errorf("list %q: %w", prefix, err)
		}
		start = s.path(dirKey)
	}
	var out []Object
	err := filepath.WalkDir(start, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil // a prefix nobody used, or a parent deleted meanwhile
			}
			return err
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		if !d.Type().IsRegular() {
			return nil
		}
		rel, err := filepath.Rel(s.objects, p)
		if err != nil {
			return err
		}
		key := filepath.ToSlash(rel)
		if !strings.HasPrefix(key, prefix) {
			return nil
		}
		f, err := os.Open(p)
		if errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		if err != nil {
			return err
		}
		defer f.Close()
		obj, err := readHeader(f, key)
		if errors.Is(err, ErrCorrupt) {
			// Listed so that operators see it and can delete it; a Get
			// of it fails with ErrCorrupt.
			fi, _ := d.Info()
			obj = Object{Key: key}
			if fi != nil {
				obj.Size, obj.ModTime = max(fi.Size()-headerSize, 0), fi.ModTime()
			}
		} else if err != nil {
			return err
		}
		out = append(out, obj)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list %q: %w", prefix, err)
	}
	slices.SortFunc(out, func(a, b Object) int { return strings.Compare(a.Key, b.Key) })
	return out, nil
}

// keyErr classifies an error from opening or placing key's file.
func (s *Local) keyErr(op, key string, err error) error {
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return tartarus.Errorf(tartarus.ErrNotFound, "%s object %s", op, key)
	case errors.Is(err, syscall.ENOTDIR):
		if op == "open" {
			return tartarus.Errorf(tartarus.ErrNotFound, "%s object %s", op, key)
		}
		return tartarus.Errorf(tartarus.ErrFailedPrecondition,
			"%s object %s: a shorter key is an object, so this key cannot be stored beside it", op, key)
	case errors.Is(err, syscall.EISDIR), errors.Is(err, syscall.EEXIST), errors.Is(err, syscall.ENOTEMPTY):
		return tartarus.Errorf(tartarus.ErrFailedPrecondition,
			"%s object %s: other objects have keys under %s/", op, key, key)
	}
	return storageErr(op+" "+key, err)
}

// storageErr wraps an I/O error; a full disk or quota also matches
// tartarus.ErrResourceExhausted (and still matches syscall.ENOSPC).
func storageErr(what string, err error) error {
	if errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT) {
		return fmt.Errorf("%s: %w: %w", what, tartarus.ErrResourceExhausted, err)
	}
	return fmt.Errorf("%s: %w", what, err)
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// ctxReader stops reading once ctx is done and remembers its source's error,
// so Put can tell a failing source from a failing disk.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
	err error
}

func (c *ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		c.err = err
		return 0, err
	}
	n, err := c.r.Read(p)
	if err != nil && err != io.EOF {
		c.err = err
	}
	return n, err
}

// NewVerifyingReader streams an object's content from body and turns
// io.EOF into an ErrCorrupt error when the bytes read are not obj's size or
// do not hash to its checksum. Errors name key; a cancelled ctx ends the
// read with ctx's error.
func NewVerifyingReader(ctx context.Context, body io.ReadCloser, key string, obj Object) io.ReadCloser {
	return &verifyingReader{ctx: ctx, body: body, key: key, want: obj.Checksum, size: obj.Size, h: sha256.New()}
}

type verifyingReader struct {
	ctx  context.Context
	body io.ReadCloser
	key  string
	want string
	size int64
	n    int64
	h    hash.Hash
	err  error // sticky final result
}

func (v *verifyingReader) Read(p []byte) (int, error) {
	if v.err != nil {
		return 0, v.err
	}
	if err := v.ctx.Err(); err != nil {
		return 0, fmt.Errorf("read %s: %w", v.key, err)
	}
	n, err := v.body.Read(p)
	v.h.Write(p[:n])
	v.n += int64(n)
	if v.n > v.size {
		v.err = fmt.Errorf("object %s: longer than its recorded %d bytes: %w", v.key, v.size, ErrCorrupt)
		return n, v.err
	}
	if err == io.EOF {
		got := "sha256:" + hex.EncodeToString(v.h.Sum(nil))
		switch {
		case v.n != v.size:
			v.err = fmt.Errorf("object %s: read %d bytes, recorded %d: %w", v.key, v.n, v.size, ErrCorrupt)
		case got != v.want:
			v.err = fmt.Errorf("object %s: content hashes to %s, recorded %s: %w", v.key, got, v.want, ErrCorrupt)
		default:
			v.err = io.EOF
		}
		return n, v.err
	}
	if err != nil {
		if ctxErr := v.ctx.Err(); ctxErr != nil {
			err = ctxErr
		}
		return n, fmt.Errorf("read %s: %w", v.key, err)
	}
	return n, nil
}

func (v *verifyingReader) Close() error { return v.body.Close() }
