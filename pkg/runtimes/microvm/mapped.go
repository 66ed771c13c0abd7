package microvm

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"strconv"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

// Mapped memory (the driver's default; Config.CopyMemory turns it off).
//
// A booted sandbox's RAM is a memory file the host creates (a memfd) and
// QEMU maps shared. A snapshot of such a sandbox (a template snapshot)
// saves only device state in its stream (QEMU's x-ignore-shared) and the
// RAM as one more snapshot file, memory.ram, whose SHA-256 vm.json records.
// Restoring such a snapshot copies memory.ram once into a memfd sealed
// against writes, verified against that digest, kept per digest and shared
// by every sandbox restored from it; each QEMU maps it copy-on-write
// (share=off), so the restore reads a few kilobytes instead of the whole
// memory, and the pages no sandbox wrote stay shared between them.
// A sandbox restored this way saves its memory in full in its own
// snapshots (hibernate, fork): they do not depend on the template's file.

// snapRAM is the snapshot file that holds a template's RAM.
const snapRAM = "memory.ram"

// ramBackend is the RAM block's name. microvm names its plain -m RAM the
// same, so a stream saved from a mapped sandbox restores into a plain QEMU.
const ramBackend = "microvm.ram"

// maxCachedRAM bounds how many sealed template memories the driver keeps
// for later restores; sandboxes already mapping an evicted one keep it.
const maxCachedRAM = 8

// ramArgs are QEMU's arguments that map the RAM from the descriptor fd.
func ramArgs(fd, memoryMB int, shared bool) []string {
	share := "off"
	if shared {
		share = "on"
	}
	return []string{
		"-object", fmt.Sprintf("memory-backend-file,id=%s,mem-path=/proc/self/fd/%d,share=%s,size=%dM", ramBackend, fd, share, memoryMB),
		"-machine", "memory-backend=" + ramBackend,
	}
}

// newRAMFile returns an empty memory file of size bytes for a booted
// sandbox's RAM.
func newRAMFile(id string, size int64) (*os.File, error) {
	fd, err := unix.MemfdCreate("tartarus-ram-"+id, unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING)
	if err != nil {
		return nil, fmt.Errorf("memfd: %w", err)
	}
	f := os.NewFile(uintptr(fd), "tartarus-ram-"+id)
	if err := f.Truncate(size); err != nil {
		f.Close()
		return nil, fmt.Errorf("memfd: %w", err)
	}
	return f, nil
}

// pageSize is the unit in which zero pages are skipped.
const pageSize = 4096

// copyRAM copies size bytes of src to dst (both at offset 0), writing
// only the pages that are not zero, so dst (a fresh file or memfd of that
// size) keeps holes where the guest never wrote. It returns the SHA-256
// of all size bytes, holes read as zeros.
func copyRAM(ctx context.Context, dst io.WriterAt, src io.ReaderAt, size int64) (string, error) {
	h := sha256.New()
	buf := make([]byte, 1<<20)
	zero := make([]byte, pageSize)
	for off := int64(0); off < size; off += int64(len(buf)) {
		if err := ctx.Err(); err != nil {
			return "", err
		}
		n := int(min(int64(len(buf)), size-off))
		chunk := buf[:n]
		if _, err := src.ReadAt(chunk, off); err != nil && !(err == io.EOF && off+int64(n) == size) {
			return "", err
		}
		h.Write(chunk)
		// Write runs of non-zero pages.
		for p := 0; p < n; {
			if bytes.Equal(chunk[p:min(p+pageSize, n)], zero[:min(pageSize, n-p)]) {
				p += pageSize
				continue
			}
			end := p + pageSize
			for end < n && !bytes.Equal(chunk[end:min(end+pageSize, n)], zero[:min(pageSize, n-end)]) {
				end += pageSize
			}
			end = min(end, n)
			if _, err := dst.WriteAt(chunk[p:end], off+int64(p)); err != nil {
				return "", err
			}
			p = end
		}
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// saveRAM writes the booted sandbox's RAM file to path and returns its
// digest. QEMU is stopped, so the memory does not change under the copy.
func saveRAM(ctx context.Context, ram *os.File, path string, size int64) (string, error) {
	out, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC|syscall.O_NOFOLLOW, 0o600)
	if err != nil {
		return "", err
	}
	digest, err := copyRAM(ctx, out, ram, size)
	if err == nil {
		err = out.Truncate(size)
	}
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return "", fmt.Errorf("save memory: %w", err)
	}
	return digest, nil
}

// ramCache holds the sealed memories of template snapshots by digest.
type ramCache struct {
	mu sync.Mutex
	// entries by digest; order is least recently used first.
	entries map[string]*ramEntry
	order   []string
}

type ramEntry struct {
	once sync.Once
	f    *os.File
	err  error
}

func newRAMCache() *ramCache { return &ramCache{entries: map[string]*ramEntry{}} }

// get returns the sealed memory of digest, filling it from the file at
// path (size bytes) the first time. The file is checked against digest
// before anything maps it. The caller closes the returned file (its own
// descriptor: an eviction meanwhile does not close it).
func (c *ramCache) get(ctx context.Context, digest, path string, size int64) (*os.File, error) {
	c.mu.Lock()
	e := c.entries[digest]
	if e == nil {
		e = &ramEntry{}
		c.entries[digest] = e
	}
	c.touch(digest)
	c.mu.Unlock()
	e.once.Do(func() { e.f, e.err = sealedRAM(ctx, digest, path, size) })
	if e.err != nil {
		c.mu.Lock()
		if c.entries[digest] == e {
			c.drop(digest)
		}
		c.mu.Unlock()
		return nil, e.err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.entries[digest] != e {
		return nil, fmt.Errorf("template memory %s: evicted while it was read", digest)
	}
	fd, err := unix.FcntlInt(e.f.Fd(), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("template memory: %w", err)
	}
	return os.NewFile(uintptr(fd), e.f.Name()), nil
}

// touch moves digest to the end of the order and evicts the least
// recently used entries beyond maxCachedRAM; c.mu is held.
func (c *ramCache) touch(digest string) {
	for i, d := range c.order {
		if d == digest {
			c.order = append(c.order[:i], c.order[i+1:]...)
			break
		}
	}
	c.order = append(c.order, digest)
	for len(c.order) > maxCachedRAM {
		c.drop(c.order[0])
	}
}

// drop forgets digest and closes its file (QEMUs that map it keep their
// own reference); c.mu is held.
func (c *ramCache) drop(digest string) {
	if e := c.entries[digest]; e != nil && e.f != nil {
		e.f.Close()
	}
	delete(c.entries, digest)
	for i, d := range c.order {
		if d == digest {
			c.order = append(c.order[:i], c.order[i+1:]...)
			break
		}
	}
}

// sealedRAM copies the file at path into a memfd, checks its digest and
// seals the memfd against every change: a jailed QEMU maps it privately
// (copy-on-write) and cannot alter what other sandboxes map.
func sealedRAM(ctx context.Context, digest, path string, size int64) (*os.File, error) {
	in, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NOFOLLOW, 0)
	if err != nil {
		return nil, fmt.Errorf("template memory: %w", err)
	}
	defer in.Close()
	fi, err := in.Stat()
	if err != nil {
		return nil, fmt.Errorf("template memory: %w", err)
	}
	if !fi.Mode().IsRegular() || fi.Size() != size {
		return nil, tartarus.Errorf(tartarus.ErrInvalid, "template memory %s: %d bytes, want a regular file of %d", snapRAM, fi.Size(), size)
	}
	f, err := newRAMFile("template-"+digest[:min(12, len(digest))], size)
	if err != nil {
		return nil, err
	}
	// No holes: a sandbox reading a page the template never wrote would
	// otherwise allocate it in the shared file (charged to its own
	// cgroup), one page per fault, where present pages map 16 at a time.
	if err := unix.Fallocate(int(f.Fd()), 0, 0, size); err != nil {
		f.Close()
		return nil, fmt.Errorf("template memory: %w", err)
	}
	got, err := copyRAM(ctx, f, in, size)
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("template memory: %w", err)
	}
	if got != digest {
		f.Close()
		return nil, tartarus.Errorf(tartarus.ErrInvalid, "template memory %s: checksum %s, snapshot records %s", snapRAM, got, digest)
	}
	seals := unix.F_SEAL_WRITE | unix.F_SEAL_GROW | unix.F_SEAL_SHRINK | unix.F_SEAL_SEAL
	if _, err := unix.FcntlInt(f.Fd(), unix.F_ADD_SEALS, seals); err != nil {
		f.Close()
		return nil, fmt.Errorf("template memory: seal: %w", err)
	}
	return f, nil
}

// validDigest keeps a recorded digest to a SHA-256 in hex.
func validDigest(d string) bool {
	if len(d) != 2*sha256.Size {
		return false
	}
	_, err := hex.DecodeString(d)
	return err == nil
}

// fdArg is QEMU's number of the i-th passed file.
func fdArg(i int) string { return strconv.Itoa(3 + i) }
