package nyx

import (
	"archive/tar"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/klauspost/compress/zstd"
)

// pack writes a tar stream, compressed as asked, to w: what write puts
// into the tar writer. It returns the tar stream's length.
func (m *Manager) pack(compression string, w io.Writer, write func(tw *tar.Writer) error) (int64, error) {
	var enc *zstd.Encoder
	out := w
	if compression == CompressionZstd {
		var err error
		enc, err = zstd.NewWriter(w, zstd.WithEncoderLevel(m.opts.Level))
		if err != nil {
			return 0, err
		}
		out = enc
	}
	cw := &countingWriter{w: out}
	tw := tar.NewWriter(cw)
	if err := write(tw); err != nil {
		if enc != nil {
			enc.Close()
		}
		return cw.n, err
	}
	if err := tw.Close(); err != nil {
		return cw.n, fmt.Errorf("pack: %w", err)
	}
	if enc != nil {
		if err := enc.Close(); err != nil {
			return cw.n, fmt.Errorf("pack: %w", err)
		}
	}
	return cw.n, nil
}

// addFiles writes files (relative to dir) as tar entries.
func addFiles(tw *tar.Writer, dir string, files []string) error {
	for _, name := range files {
		if err := addFile(tw, dir, name); err != nil {
			return fmt.Errorf("pack %s: %w", name, err)
		}
	}
	return nil
}

func addFile(tw *tar.Writer, dir, name string) error {
	f, err := os.Open(filepath.Join(dir, filepath.FromSlash(name)))
	if err != nil {
		return err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	hdr := &tar.Header{Typeflag: tar.TypeReg, Name: name, Size: fi.Size(), Mode: 0o600, Format: tar.FormatPAX}
	if err := tw.WriteHeader(hdr); err != nil {
		return err
	}
	_, err = io.Copy(tw, f)
	return err
}

// A streamed snapshot file (tartarus.StreamSnapshotter) is packed while it
// is produced, so its length is unknown when its tar entry would need it:
// it is stored as consecutive entries of partSize bytes, the last one
// shorter, named partPrefix plus a six-digit index from 000000, and unpack
// appends them into the file the metadata's Stream names. One stored
// object, one checksum, as for every other snapshot.
const (
	partPrefix = "stream.part-"
	partSize   = 4 << 20
	// maxParts bounds a stream at 256 GiB, above any guest's memory.
	maxParts = 1 << 16
)

func partName(i int) string { return fmt.Sprintf("%s%06d", partPrefix, i) }

// partIndex returns the index of a part entry's name, or -1 if name is not
// one (exactly partPrefix and six digits).
func partIndex(name string) int {
	digits, ok := strings.CutPrefix(name, partPrefix)
	if !ok || len(digits) != 6 {
		return -1
	}
	i, err := strconv.Atoi(digits)
	if err != nil || i < 0 {
		return -1
	}
	return i
}

// partWriter writes what it is given into tw as part entries, through one
// reusable buffer of partSize bytes. Close writes the last part (an empty
// one if the stream was empty, so the file still exists).
type partWriter struct {
	tw    *tar.Writer
	buf   []byte
	parts int
	size  int64
}

func newPartWriter(tw *tar.Writer) *partWriter {
	return &partWriter{tw: tw, buf: make([]byte, 0, partSize)}
}

func (p *partWriter) Write(b []byte) (int, error) {
	n := 0
	for len(b) > 0 {
		k := copy(p.buf[len(p.buf):cap(p.buf)], b)
		p.buf = p.buf[:len(p.buf)+k]
		b = b[k:]
		n += k
		if len(p.buf) == cap(p.buf) {
			if err := p.flush(); err != nil {
				return n, err
			}
		}
	}
	return n, nil
}

// ReadFrom reads r to its end straight into the part buffer, saving a copy
// for a caller that copies a stream into the writer (io.Copy).
func (p *partWriter) ReadFrom(r io.Reader) (int64, error) {
	var n int64
	for {
		k, err := r.Read(p.buf[len(p.buf):cap(p.buf)])
		p.buf = p.buf[:len(p.buf)+k]
		n += int64(k)
		if len(p.buf) == cap(p.buf) {
			if err := p.flush(); err != nil {
				return n, err
			}
		}
		if err == io.EOF {
			return n, nil
		}
		if err != nil {
			return n, err
		}
	}
}

func (p *partWriter) flush() error {
	if p.parts >= maxParts {
		return fmt.Errorf("stream longer than %d parts of %d bytes", maxParts, partSize)
	}
	hdr := &tar.Header{Typeflag: tar.TypeReg, Name: partName(p.parts), Size: int64(len(p.buf)), Mode: 0o600, Format: tar.FormatPAX}
	if err := p.tw.WriteHeader(hdr); err != nil {
		return err
	}
	if _, err := p.tw.Write(p.buf); err != nil {
		return err
	}
	p.parts++
	p.size += int64(len(p.buf))
	p.buf = p.buf[:0]
	return nil
}

// Close writes the last part.
func (p *partWriter) Close() error {
	if len(p.buf) == 0 && p.parts > 0 {
		return nil
	}
	return p.flush()
}

// listFiles returns the regular files under dir as sorted slash paths. A
// runtime that wrote anything else (a symlink, a socket) is refused: a
// snapshot must be plain bytes.
func listFiles(dir string) ([]string, error) {
	var files []string
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || p == dir || d.IsDir() {
			return err
		}
		rel, err := filepath.Rel(dir, p)
		if err != nil {
			return err
		}
		if !d.Type().IsRegular() {
			return fmt.Errorf("snapshot file %s is not a regular file", rel)
		}
		files = append(files, filepath.ToSlash(rel))
		return nil
	})
	slices.Sort(files)
	return files, err
}

// unpack writes the tar stream's regular files into dir. Names must be
// local paths and exactly the files the metadata lists; the writes go
// through an os.Root so that nothing lands outside dir. If stream is set
// (the metadata's Stream), the file of that name comes as part entries,
// which must run in order from 000000, each of at most partSize bytes and
// only the last one shorter; without stream a part entry is refused.
func unpack(r io.Reader, dir string, want []string, stream string) error {
	return unpackLimited(r, dir, want, stream, maxParts)
}

// unpackLimited is unpack with a stream of at most limit parts.
func unpackLimited(r io.Reader, dir string, want []string, stream string, limit int) error {
	root, err := os.OpenRoot(dir)
	if err != nil {
		return err
	}
	defer root.Close()
	tr := tar.NewReader(r)
	var got []string
	buf := make([]byte, 1<<20)
	var (
		sf       *os.File // the stream's file, open while its parts come
		parts    int
		partsEnd bool // a short part, or another entry after the parts, came
		off      int64
	)
	defer func() {
		if sf != nil {
			sf.Close()
		}
	}()
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return err
		}
		name := hdr.Name
		if hdr.Typeflag != tar.TypeReg || !filepath.IsLocal(name) || path.Clean(name) != name {
			return fmt.Errorf("unexpected entry %q (type %c)", name, hdr.Typeflag)
		}
		if i := partIndex(name); i >= 0 || strings.HasPrefix(name, partPrefix) {
			switch {
			case stream == "":
				return fmt.Errorf("unexpected entry %q: the metadata names no stream", name)
			case i != parts || partsEnd:
				return fmt.Errorf("stream part %q out of order: want %s", name, partName(parts))
			case parts >= limit:
				return fmt.Errorf("stream of more than %d parts", limit)
			case hdr.Size < 0 || hdr.Size > partSize:
				return fmt.Errorf("stream part %q of %d bytes: at most %d", name, hdr.Size, partSize)
			}
			if sf == nil {
				if sf, err = root.OpenFile(stream, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600); err != nil {
					return err
				}
				got = append(got, stream)
			}
			if err := writeSparse(sf, tr, off, hdr.Size, buf); err != nil {
				return fmt.Errorf("write %s: %w", stream, err)
			}
			off += hdr.Size
			parts++
			partsEnd = hdr.Size < partSize
			continue
		}
		partsEnd = partsEnd || parts > 0
		if d := path.Dir(name); d != "." {
			if err := root.MkdirAll(d, 0o700); err != nil {
				return err
			}
		}
		f, err := root.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
		if err != nil {
			return err
		}
		err = writeSparse(f, tr, 0, hdr.Size, buf)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return fmt.Errorf("write %s: %w", name, err)
		}
		got = append(got, name)
	}
	if sf != nil {
		err := sf.Close()
		sf = nil
		if err != nil {
			return fmt.Errorf("write %s: %w", stream, err)
		}
	}
	slices.Sort(got)
	if !slices.Equal(got, want) {
		return fmt.Errorf("archive holds %q, metadata lists %q", got, want)
	}
	return nil
}

// writeSparse copies size bytes from r to f at offset start, seeking over
// all-zero blocks instead of writing them: guest memory is mostly zero
// pages, and a hole costs no disk.
func writeSparse(f *os.File, r io.Reader, start, size int64, buf []byte) error {
	const block = 64 << 10
	off := start
	size += start
	for off < size {
		n, err := io.ReadFull(r, buf[:min(int64(len(buf)), size-off)])
		if err != nil {
			return err
		}
		for i := 0; i < n; i += block {
			chunk := buf[i:min(i+block, n)]
			if !allZero(chunk) {
				if _, err := f.WriteAt(chunk, off+int64(i)); err != nil {
					return err
				}
			}
		}
		off += int64(n)
	}
	return f.Truncate(size)
}

func allZero(b []byte) bool {
	for len(b) >= 8 {
		if b[0]|b[1]|b[2]|b[3]|b[4]|b[5]|b[6]|b[7] != 0 {
			return false
		}
		b = b[8:]
	}
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

type countingWriter struct {
	w io.Writer
	n int64
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}
