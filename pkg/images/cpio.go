package images

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"strings"
)

// cpioWriter writes an archive in the "newc" cpio format, the one the Linux
// kernel unpacks as an initramfs. It is deliberately small: directories,
// regular files and character devices, owned by root, with a fixed mtime so
// that the same inputs give the same bytes.
type cpioWriter struct {
	w   *bufio.Writer
	n   int64 // bytes written so far, for padding
	ino uint32
	err error
}

func newCPIOWriter(w io.Writer) *cpioWriter {
	return &cpioWriter{w: bufio.NewWriter(w), ino: 1}
}

// Mode bits of the file types cpio records.
const (
	cpioDir  = 0o040000
	cpioFile = 0o100000
	cpioChar = 0o020000
)

// Dir adds a directory.
func (c *cpioWriter) Dir(name string, perm os.FileMode) error {
	return c.entry(name, cpioDir|uint32(perm.Perm()), 2, 0, 0, nil, 0)
}

// File adds a regular file of size bytes read from r.
func (c *cpioWriter) File(name string, perm os.FileMode, size int64, r io.Reader) error {
	return c.entry(name, cpioFile|uint32(perm.Perm()), 1, 0, 0, r, size)
}

// CharDev adds a character device node (e.g. dev/console, 5:1).
func (c *cpioWriter) CharDev(name string, perm os.FileMode, major, minor uint32) error {
	return c.entry(name, cpioChar|uint32(perm.Perm()), 1, major, minor, nil, 0)
}

// Close writes the trailer and flushes. It does not close the underlying writer.
func (c *cpioWriter) Close() error {
	if err := c.entry("TRAILER!!!", 0, 1, 0, 0, nil, 0); err != nil {
		return err
	}
	return c.w.Flush()
}

func (c *cpioWriter) entry(name string, mode, nlink, rmajor, rminor uint32, r io.Reader, size int64) error {
	if c.err != nil {
		return c.err
	}
	name = strings.TrimPrefix(name, "/")
	if name == "" || strings.ContainsRune(name, 0) {
		return fmt.Errorf("cpio: bad name %q", name)
	}
	if size < 0 || size > 0xffffffff {
		return fmt.Errorf("cpio: %s: size %d out of range", name, size)
	}
	ino := c.ino
	c.ino++
	if name == "TRAILER!!!" {
		ino = 0
	}
	hdr := fmt.Sprintf("070701%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x",
		ino, mode, 0, 0, nlink, 0, size, 0, 0, rmajor, rminor, len(name)+1, 0)
	c.write([]byte(hdr))
	c.write([]byte(name))
	c.write([]byte{0})
	c.pad()
	if r != nil {
		n, err := io.CopyN(c.w, r, size)
		c.n += n
		if err != nil && c.err == nil {
			c.err = fmt.Errorf("cpio: %s: %w", name, err)
		}
		c.pad()
	}
	return c.err
}

func (c *cpioWriter) write(b []byte) {
	if c.err != nil {
		return
	}
	n, err := c.w.Write(b)
	c.n += int64(n)
	if err != nil {
		c.err = fmt.Errorf("cpio: %w", err)
	}
}

func (c *cpioWriter) pad() {
	if rem := c.n % 4; rem != 0 {
		c.write(make([]byte, 4-rem))
	}
}
