package nyx

import (
	"archive/tar"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"slices"

	"github.com/klauspost/compress/zstd"
)

// pack writes files (relative to dir) as a tar stream, compressed as asked,
// to w, and returns the tar stream's length.
func (m *Manager) pack(dir string, files []string, compression string, w io.Writer) (int64, error) {
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
	for _, name := range files {
		if err := addFile(tw, dir, name); err != nil {
			if enc != nil {
				enc.Close()
			}
			return cw.n, fmt.Errorf("pack %s: %w", name, err)
		}
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
	if err == nil && len(files) == 0 {
		err = errors.New("runtime wrote no snapshot files")
	}
	return files, err
}

// unpack writes the tar stream's regular files into dir. Names must be
// local paths and exactly the files the metadata lists; the writes go
// through an os.Root so that nothing lands outside dir.
func unpack(r io.Reader, dir string, want []string) error {
	root, err := os.OpenRoot(dir)
	if err != nil {
		return err
	}
	defer root.Close()
	tr := tar.NewReader(r)
	var got []string
	buf := make([]byte, 1<<20)
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
		if d := path.Dir(name); d != "." {
			if err := root.MkdirAll(d, 0o700); err != nil {
				return err
			}
		}
		f, err := root.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
		if err != nil {
			return err
		}
		err = writeSparse(f, tr, hdr.Size, buf)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return fmt.Errorf("write %s: %w", name, err)
		}
		got = append(got, name)
	}
	slices.Sort(got)
	if !slices.Equal(got, want) {
		return fmt.Errorf("archive holds %q, metadata lists %q", got, want)
	}
	return nil
}

// writeSparse copies size bytes from r to f, seeking over all-zero blocks
// instead of writing them: guest memory is mostly zero pages, and a hole
// costs no disk.
func writeSparse(f *os.File, r io.Reader, size int64, buf []byte) error {
	const block = 64 << 10
	var off int64
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
