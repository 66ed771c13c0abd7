package typhonnode

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// The file-access evidence of a microVM is read on the host: the blocks
// the guest changed are those of its qcow2 overlay that differ from the
// template beneath it (QEMU keeps that record, not the guest), and the
// files they belong to are looked up with debugfs in the disk as it is now.
// Which blocks changed cannot be hidden by the guest; which file owns a
// block is read from file-system metadata the guest wrote, so a guest with
// root could disguise it (the evidence says so).

// Bounds of one disk diff.
const (
	diskDiffTimeout = 90 * time.Second
	fsBlock         = 4096
	// maxDiffBlocks bounds the changed blocks looked up (a guest that
	// rewrites its whole disk still gets a bounded, truncated answer).
	maxDiffBlocks = 1 << 16
	maxDiffFiles  = 2000
	// maxOverlayBytes bounds the overlay a diff copies into scratch space
	// (the copy holds what the guest wrote plus the template's data).
	maxOverlayBytes = 4 << 30
	maxMapJSON      = 32 << 20
	maxToolOutput   = 64 << 20
	// nobody runs debugfs: it parses a file system the guest wrote.
	nobodyID = 65534
)

// DiskDiff is a file_access evidence's bytes.
type DiskDiff struct {
	Method        string        `json:"method"`
	ChangedBlocks int           `json:"changed_blocks"`
	Truncated     bool          `json:"truncated,omitempty"`
	Files         []ChangedFile `json:"files"`
	// Unowned counts changed blocks no inode holds now (freed, or file
	// system metadata: inode tables, bitmaps); Unnamed those held by an
	// inode without a name (the journal, a deleted file still open).
	Unowned int `json:"unowned_blocks"`
	Unnamed int `json:"unnamed_blocks"`
}

// ChangedFile is one file whose blocks the guest wrote.
type ChangedFile struct {
	Path   string `json:"path"`
	Inode  int    `json:"inode"`
	Blocks int    `json:"changed_blocks"`
	// InTemplate says the template has the same inode at the same path
	// (so the guest changed a file it was given, rather than making one).
	InTemplate bool `json:"in_template"`
}

// diffDisk compares a sandbox's overlay with its template, block by block,
// and names the files of the changed blocks. scratch holds a raw copy of
// the disk for the time of the diff.
func diffDisk(ctx context.Context, overlay, base, scratch string) (*DiskDiff, error) {
	ctx, cancel := context.WithTimeout(ctx, diskDiffTimeout)
	defer cancel()
	// QEMU (under the guest's influence) writes the overlay: never follow
	// a link there, and name the backing file ourselves rather than trust
	// the one the overlay's header names.
	ov, err := os.OpenFile(overlay, os.O_RDONLY|syscall.O_NOFOLLOW, 0)
	if err != nil {
		return nil, fmt.Errorf("open overlay: %w", err)
	}
	defer ov.Close()
	fi, err := ov.Stat()
	if err != nil || !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("overlay %s is not a regular file", overlay)
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok && st.Blocks*512 > maxOverlayBytes {
		return nil, fmt.Errorf("overlay holds %d MiB, over the diff's bound of %d MiB: not copied", st.Blocks*512>>20, maxOverlayBytes>>20)
	}
	spec, err := json.Marshal(map[string]any{"driver": "qcow2",
		"file":    map[string]any{"driver": "file", "filename": "/dev/fd/3"},
		"backing": map[string]any{"driver": "raw", "file": map[string]any{"driver": "file", "filename": base, "read-only": true}}})
	if err != nil {
		return nil, err
	}
	img := "json:" + string(spec)

	// The overlay's own clusters (depth 0): the only places the guest wrote.
	mapOut, err := runTool(ctx, nil, []*os.File{ov}, maxMapJSON, "qemu-img", "map", "-U", "--output=json", img)
	if err != nil {
		return nil, fmt.Errorf("qemu-img map: %w", err)
	}
	var extents []extent
	if err := json.Unmarshal(mapOut, &extents); err != nil {
		return nil, fmt.Errorf("qemu-img map: %w", err)
	}

	dir, err := os.MkdirTemp(scratch, "diskdiff-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	if err := os.Chmod(dir, 0o711); err != nil {
		return nil, err
	}
	raw := filepath.Join(dir, "disk.raw")
	if _, err := runTool(ctx, nil, []*os.File{ov}, 1<<20, "qemu-img", "convert", "-U", "-O", "raw", "-S", "4k", img, raw); err != nil {
		return nil, fmt.Errorf("qemu-img convert: %w", err)
	}
	if err := os.Chown(raw, nobodyID, nobodyID); err != nil {
		return nil, err
	}

	// The guest's last writes may sit only in its journal (ext4 moves
	// them home later): note the blocks the journal will write, then
	// replay it in the copy, so that the lookups see the disk as the
	// guest would after a clean mount.
	logged, err := journalBlocks(ctx, raw)
	if err != nil {
		return nil, err
	}
	if err := replayJournal(ctx, raw); err != nil {
		return nil, err
	}
	for _, b := range logged {
		extents = append(extents, extent{Start: b * fsBlock, Length: fsBlock})
	}

	d := &DiskDiff{Method: "qcow2 overlay compared with the template block by block (host); file names from debugfs on the disk as it is now (the guest wrote that metadata)",
		Files: []ChangedFile{}}
	blocks, err := changedBlocks(ctx, raw, base, extents, d)
	if err != nil {
		return nil, err
	}
	if len(blocks) == 0 {
		return d, nil
	}

	owners, err := icheck(ctx, raw, blocks)
	if err != nil {
		return nil, err
	}
	perInode := map[int]int{}
	for _, b := range blocks {
		if ino, ok := owners[b]; ok {
			perInode[ino]++
		} else {
			d.Unowned++
		}
	}
	inodes := make([]int, 0, len(perInode))
	for ino := range perInode {
		inodes = append(inodes, ino)
	}
	slices.SortFunc(inodes, func(a, b int) int { return perInode[b] - perInode[a] })
	if len(inodes) > maxDiffFiles {
		inodes, d.Truncated = inodes[:maxDiffFiles], true
	}
	now, err := ncheck(ctx, raw, inodes)
	if err != nil {
		return nil, err
	}
	tmpl, err := ncheck(ctx, base, inodes)
	if err != nil {
		return nil, err
	}
	for _, ino := range inodes {
		if len(now[ino]) == 0 {
			d.Unnamed += perInode[ino]
		}
		for _, p := range now[ino] {
			d.Files = append(d.Files, ChangedFile{Path: p, Inode: ino, Blocks: perInode[ino], InTemplate: slices.Contains(tmpl[ino], p)})
		}
	}
	return d, nil
}

// extent is one range of qemu-img map's answer; depth 0 is the overlay's own.
type extent struct {
	Start  int64 `json:"start"`
	Length int64 `json:"length"`
	Depth  int   `json:"depth"`
}

// changedBlocks returns the file-system blocks inside the overlay's own
// extents whose bytes differ from the template's.
func changedBlocks(ctx context.Context, raw, base string, extents []extent, d *DiskDiff) ([]int64, error) {
	rf, err := os.Open(raw)
	if err != nil {
		return nil, err
	}
	defer rf.Close()
	bf, err := os.Open(base)
	if err != nil {
		return nil, err
	}
	defer bf.Close()
	var out []int64
	seen := map[int64]bool{}
	a, b := make([]byte, fsBlock), make([]byte, fsBlock)
	for _, e := range extents {
		if e.Depth != 0 || e.Start < 0 || e.Length <= 0 {
			continue
		}
		for off := e.Start / fsBlock * fsBlock; off < e.Start+e.Length; off += fsBlock {
			if off%(64<<20) == 0 && ctx.Err() != nil {
				return nil, ctx.Err()
			}
			if seen[off] {
				continue // a journal block inside the overlay's own
			}
			seen[off] = true
			na, _ := rf.ReadAt(a, off)
			nb, _ := bf.ReadAt(b, off)
			clear(a[na:])
			clear(b[nb:])
			if bytes.Equal(a, b) {
				continue
			}
			d.ChangedBlocks++
			if len(out) < maxDiffBlocks {
				out = append(out, off/fsBlock)
			} else {
				d.Truncated = true
			}
		}
	}
	return out, nil
}

// icheck maps blocks to the inodes that hold them (blocks no inode holds
// are left out).
func icheck(ctx context.Context, img string, blocks []int64) (map[int64]int, error) {
	out := map[int64]int{}
	for len(blocks) > 0 {
		n := min(len(blocks), 4096)
		var cmd strings.Builder
		cmd.WriteString("icheck")
		for _, b := range blocks[:n] {
			cmd.WriteString(" " + strconv.FormatInt(b, 10))
		}
		res, err := debugfs(ctx, img, cmd.String())
		if err != nil {
			return nil, err
		}
		for _, l := range strings.Split(string(res), "\n") {
			f := strings.Fields(l)
			if len(f) != 2 {
				continue
			}
			b, err1 := strconv.ParseInt(f[0], 10, 64)
			ino, err2 := strconv.Atoi(f[1])
			if err1 == nil && err2 == nil && ino > 0 {
				out[b] = ino
			}
		}
		blocks = blocks[n:]
	}
	return out, nil
}

// ncheck names the paths of inodes. A file name is the guest's and may hold
// any byte but NUL and '/', newlines included: a line that does not start
// with an inode asked for is dropped, so that a name cannot add an inode
// of its own, though it may still be cut at a newline.
func ncheck(ctx context.Context, img string, inodes []int) (map[int][]string, error) {
	out := map[int][]string{}
	want := map[int]bool{}
	for _, ino := range inodes {
		want[ino] = true
	}
	for len(inodes) > 0 {
		n := min(len(inodes), 1024)
		var cmd strings.Builder
		cmd.WriteString("ncheck")
		for _, ino := range inodes[:n] {
			cmd.WriteString(" " + strconv.Itoa(ino))
		}
		res, err := debugfs(ctx, img, cmd.String())
		if err != nil {
			return nil, err
		}
		for _, l := range strings.Split(string(res), "\n") {
			num, name, ok := strings.Cut(l, "\t")
			ino, err := strconv.Atoi(num)
			if !ok || err != nil || !want[ino] || !strings.HasPrefix(name, "/") || len(out[ino]) >= 8 {
				continue
			}
			// debugfs prints a root entry as "//name"; a name holds no
			// '/', so cleaning only merges that.
			out[ino] = append(out[ino], path.Clean(name))
		}
		inodes = inodes[n:]
	}
	return out, nil
}

// journalBlocks lists the file-system blocks the journal holds new
// contents for (debugfs logdump: "FS block N logged at journal block M").
func journalBlocks(ctx context.Context, img string) ([]int64, error) {
	out, err := debugfs(ctx, img, "logdump")
	if err != nil {
		return nil, err
	}
	seen := map[int64]bool{}
	var blocks []int64
	for _, l := range strings.Split(string(out), "\n") {
		rest, ok := strings.CutPrefix(strings.TrimSpace(l), "FS block ")
		if !ok {
			continue
		}
		num, _, _ := strings.Cut(rest, " ")
		b, err := strconv.ParseInt(num, 10, 64)
		if err != nil || b < 0 || seen[b] || len(blocks) >= maxDiffBlocks {
			continue
		}
		seen[b] = true
		blocks = append(blocks, b)
	}
	return blocks, nil
}

// replayJournal replays the file system's journal into the scratch copy
// (e2fsck -E journal_only, as nobody, like debugfs). e2fsck's exit codes
// below 4 mean nothing is left wrong that a lookup would trip on.
func replayJournal(ctx context.Context, img string) error {
	f, err := os.OpenFile(img, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	cred := &syscall.Credential{Uid: nobodyID, Gid: nobodyID}
	if os.Geteuid() != 0 {
		cred = nil
	}
	_, err = runTool(ctx, cred, []*os.File{f}, 1<<20, "e2fsck", "-y", "-E", "journal_only", "/dev/fd/3")
	var ee *exec.ExitError
	if errors.As(err, &ee) && ee.ExitCode() > 0 && ee.ExitCode() < 4 {
		return nil
	}
	return err
}

// debugfs runs one read-only debugfs request on img as nobody (debugfs
// parses a file system the guest wrote: it gets no privilege to lose).
func debugfs(ctx context.Context, img, request string) ([]byte, error) {
	f, err := os.Open(img)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	cred := &syscall.Credential{Uid: nobodyID, Gid: nobodyID}
	if os.Geteuid() != 0 {
		cred = nil
	}
	// -c: catastrophic mode (read-only, bitmaps not read); the image is
	// handed over as descriptor 3 so nobody needs no path to it.
	return runTool(ctx, cred, []*os.File{f}, maxToolOutput, "debugfs", "-c", "-R", request, "/dev/fd/3")
}

// runTool runs a program with extra descriptors (3, 4, …), its stdout
// bounded at limit bytes.
func runTool(ctx context.Context, cred *syscall.Credential, files []*os.File, limit int64, name string, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.ExtraFiles = files
	cmd.Env = []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL=C"}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Credential: cred}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	stderr := &capped{limit: 4096}
	cmd.Stderr = stderr
	pipe, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	out, rerr := io.ReadAll(io.LimitReader(bufio.NewReader(pipe), limit))
	_, _ = io.Copy(io.Discard, pipe)
	werr := cmd.Wait()
	if err := errors.Join(rerr, werr); err != nil {
		return nil, fmt.Errorf("%s: %w: %s", name, err, bytes.TrimSpace(stderr.Bytes()))
	}
	return out, nil
}
