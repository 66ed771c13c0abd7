package microvm

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/tartarus-sandbox/tartarus/pkg/runtimes/microvm/qmp"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

var (
	_ tartarus.Snapshotter       = (*Driver)(nil)
	_ tartarus.StreamSnapshotter = (*Driver)(nil)
)

// Files of a snapshot directory.
const (
	snapMemory = "memory"     // QEMU's migration stream: RAM and device state
	snapDisk   = "disk.qcow2" // the sandbox's overlay, backed by the template's root filesystem
	snapConfig = "vm.json"    // the sandbox's vmConfig
)

// ReadOnlySnapshotFiles names the snapshot files Restore only reads (it
// opens them read-only and never moves them): a template cache may link
// them instead of copying them for each restore.
func (d *Driver) ReadOnlySnapshotFiles() []string {
	return []string{snapMemory, snapConfig, snapRAM}
}

// migrateBandwidth lifts QEMU's default migration cap (32 MiB/s), which
// would make saving a 256 MiB guest take seconds.
const migrateBandwidth = 16 << 30

// Snapshot stops the sandbox and writes its memory and device state (QEMU
// migration to a file), its disk overlay and its config into dir. The
// sandbox stays paused.
func (d *Driver) Snapshot(ctx context.Context, id string, dir string) (*tartarus.SnapshotInfo, error) {
	return d.snapshot(ctx, id, dir, nil)
}

// SnapshotStream is Snapshot with QEMU's migration stream (the file
// "memory") written to stream while QEMU produces it, through a pipe,
// instead of to a file in dir. If stream fails, QEMU's migration fails
// with it and the sandbox stays paused.
func (d *Driver) SnapshotStream(ctx context.Context, id, dir string, stream io.Writer) (*tartarus.SnapshotInfo, error) {
	if stream == nil {
		return nil, tartarus.Errorf(tartarus.ErrInvalid, "snapshot sandbox %s: no stream", id)
	}
	return d.snapshot(ctx, id, dir, stream)
}

// snapshot is Snapshot, with the migration stream going to stream if it is
// not nil.
func (d *Driver) snapshot(ctx context.Context, id, dir string, stream io.Writer) (*tartarus.SnapshotInfo, error) {
	v, err := d.get(id)
	if err != nil {
		return nil, err
	}
	if strings.ContainsAny(dir, "'\n") {
		return nil, tartarus.Errorf(tartarus.ErrInvalid, "snapshot directory %q: no quotes or newlines", dir)
	}
	v.op.Lock()
	defer v.op.Unlock()
	switch st := v.getState(); st {
	case tartarus.InstanceRunning, tartarus.InstancePaused:
	default:
		return nil, tartarus.Errorf(tartarus.ErrFailedPrecondition, "snapshot sandbox %s: it is %s", id, st)
	}
	t0 := time.Now()
	var phases []any
	mark := func(name string) { phases = append(phases, name+"_ms", time.Since(t0).Milliseconds()) }
	q := v.qmp
	if _, err := q.Execute(ctx, "stop", nil); err != nil {
		return nil, fmt.Errorf("snapshot sandbox %s: %w", id, err)
	}
	v.setState(tartarus.InstancePaused)
	created := d.clock.Now().UTC()
	if _, err := q.Execute(ctx, "migrate-set-parameters", map[string]any{"max-bandwidth": migrateBandwidth}); err != nil {
		return nil, fmt.Errorf("snapshot sandbox %s: %w", id, err)
	}
	// A sandbox booted with mapped memory saves its RAM as a file of its
	// own and only device state in the stream. Every other sandbox,
	// including one restored from such a snapshot (its capability still
	// on), saves it all in the stream, so the snapshot stands alone.
	v.mu.Lock()
	ram := v.ram
	v.mu.Unlock()
	caps := []map[string]any{{"capability": "x-ignore-shared", "state": ram != nil}}
	if _, err := q.Execute(ctx, "migrate-set-capabilities", map[string]any{"capabilities": caps}); err != nil {
		return nil, fmt.Errorf("snapshot sandbox %s: %w", id, err)
	}
	mark("stop")
	if stream == nil {
		err = saveMemoryFile(ctx, q, filepath.Join(dir, snapMemory))
	} else {
		err = saveMemoryStream(ctx, q, stream, maxStream(int64(v.conf.MemoryMB)<<20))
	}
	if err != nil {
		return nil, fmt.Errorf("snapshot sandbox %s: save memory: %w", id, err)
	}
	mark("memory")
	// After migration QEMU has flushed and let go of the disk; copy it now.
	if err := copyFileSparse(ctx, v.path("overlay.qcow2"), filepath.Join(dir, snapDisk)); err != nil {
		return nil, fmt.Errorf("snapshot sandbox %s: copy disk: %w", id, err)
	}
	mark("disk")
	conf := v.conf
	files := []string{snapMemory, snapDisk, snapConfig}
	if ram != nil {
		conf.MemoryDigest, err = saveRAM(ctx, ram, filepath.Join(dir, snapRAM), int64(conf.MemoryMB)<<20)
		if err != nil {
			return nil, fmt.Errorf("snapshot sandbox %s: %w", id, err)
		}
		files = append(files, snapRAM)
		mark("ram")
	}
	b, err := json.MarshalIndent(conf, "", "  ")
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(dir, snapConfig), b, 0o600); err != nil {
		return nil, fmt.Errorf("snapshot sandbox %s: %w", id, err)
	}
	v.touch(d.clock.Now())
	v.log.Info("snapshotted", append(phases, "streamed", stream != nil)...)
	info := &tartarus.SnapshotInfo{
		Template:    v.conf.Template,
		ImageDigest: v.conf.Image.Digest,
		MemoryBytes: int64(v.conf.MemoryMB) << 20,
		CPUs:        v.conf.CPUs,
		Files:       files,
		Created:     created,
	}
	if stream != nil {
		info.Stream = snapMemory
	}
	return info, nil
}

// saveMemoryFile migrates QEMU's memory and device state into the file
// path and waits until it is complete.
func saveMemoryFile(ctx context.Context, q *qmp.Client, path string) error {
	// QEMU writes the memory to a descriptor the host opened and passed
	// over QMP: a jailed QEMU can neither open the snapshot directory nor
	// spawn a process (-sandbox spawn=deny), so no "exec:" migration.
	mem, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC|syscall.O_NOFOLLOW, 0o600)
	if err != nil {
		return err
	}
	err = q.SendFile(ctx, "snapshot-memory", mem)
	mem.Close() // QEMU holds its own copy now
	if err != nil {
		return fmt.Errorf("pass memory file: %w", err)
	}
	if _, err := q.Execute(ctx, "migrate", map[string]any{"uri": "fd:snapshot-memory"}); err != nil {
		return err
	}
	return waitMigration(ctx, q)
}

// maxStream bounds the migration stream of a guest of memory bytes: every
// page with its header, and room for the device state. QEMU is not
// trusted to stop.
func maxStream(memory int64) int64 { return memory + memory/64 + 64<<20 }

// saveMemoryStream migrates QEMU's memory and device state into w while
// QEMU produces it: QEMU writes to a pipe (passed over QMP, as the file
// is), and the driver copies at most limit bytes of the pipe into w. A
// failing w (or a longer stream) closes the pipe, so QEMU's next write
// fails and so does the migration; a failed migration or ctx closes it
// too, so the copy ends. Either way both have ended when it returns.
func saveMemoryStream(ctx context.Context, q *qmp.Client, w io.Writer, limit int64) error {
	r, pw, err := migrationPipe()
	if err != nil {
		return err
	}
	err = q.SendFile(ctx, "snapshot-memory", pw)
	pw.Close() // QEMU holds its own copy now: the copy ends when QEMU closes it
	if err != nil {
		r.Close()
		return fmt.Errorf("pass memory pipe: %w", err)
	}
	copied := make(chan error, 1)
	go func() {
		// The LimitedReader also hides os.File's WriteTo, whose
		// fallback copies in 32 KiB pieces.
		n, err := io.CopyBuffer(w, &io.LimitedReader{R: r, N: limit + 1}, make([]byte, 1<<20))
		if err == nil && n > limit {
			err = fmt.Errorf("QEMU's stream is longer than %d bytes", limit)
		}
		r.Close() // on an error: QEMU's next write fails (EPIPE)
		copied <- err
	}()
	if _, err := q.Execute(ctx, "migrate", map[string]any{"uri": "fd:snapshot-memory"}); err != nil {
		r.Close()
		<-copied
		return err
	}
	migErr := waitMigration(ctx, q)
	if migErr != nil {
		// QEMU may still hold the pipe (ctx ended): end the copy, and
		// with it the migration, before returning.
		r.Close()
		endMigration(context.WithoutCancel(ctx), q)
	}
	var copyErr error
	select {
	case copyErr = <-copied:
	case <-ctx.Done():
		r.Close()
		copyErr = <-copied
	}
	switch {
	case copyErr != nil && !errors.Is(copyErr, os.ErrClosed):
		// The cause: its closing the pipe failed the migration.
		return fmt.Errorf("write stream: %w", copyErr)
	case migErr != nil:
		return migErr
	case copyErr != nil:
		return fmt.Errorf("write stream: %w", copyErr)
	}
	return nil
}

// migrationPipe returns a pipe for QEMU's migration stream: the write end
// blocking, as QEMU's file migration expects, the read end non-blocking so
// that closing it ends a read in progress.
func migrationPipe() (r, w *os.File, err error) {
	var p [2]int
	if err := unix.Pipe2(p[:], unix.O_CLOEXEC); err != nil {
		return nil, nil, fmt.Errorf("pipe: %w", err)
	}
	// A larger pipe means fewer wake-ups of both sides; best effort.
	_, _ = unix.FcntlInt(uintptr(p[0]), unix.F_SETPIPE_SZ, 1<<20)
	if err := unix.SetNonblock(p[0], true); err != nil {
		unix.Close(p[0])
		unix.Close(p[1])
		return nil, nil, fmt.Errorf("pipe: %w", err)
	}
	return os.NewFile(uintptr(p[0]), "migration-read"), os.NewFile(uintptr(p[1]), "migration-write"), nil
}

// endMigration cancels a migration that may still run and waits (briefly)
// until QEMU says it ended, so that the caller can resume the sandbox.
func endMigration(ctx context.Context, q *qmp.Client) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	_, _ = q.Execute(ctx, "migrate_cancel", nil)
	_ = waitMigration(ctx, q)
}

// waitMigration polls query-migrate until the migration completes or fails.
func waitMigration(ctx context.Context, q *qmp.Client) error {
	for {
		ret, err := q.Execute(ctx, "query-migrate", nil)
		if err != nil {
			return err
		}
		var st struct {
			Status    string `json:"status"`
			ErrorDesc string `json:"error-desc"`
		}
		if err := json.Unmarshal(ret, &st); err != nil {
			return fmt.Errorf("query-migrate: %w", err)
		}
		switch st.Status {
		case "completed":
			return nil
		case "failed", "cancelled":
			return fmt.Errorf("migration %s: %s", st.Status, st.ErrorDesc)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// copyFileSparse copies a disk file keeping its holes. src may sit in a
// jailed QEMU's directory, so it is opened without following a symlink
// and must be a regular file.
func copyFileSparse(ctx context.Context, src, dst string) error {
	f, err := os.OpenFile(src, os.O_RDONLY|syscall.O_NOFOLLOW, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	if fi, err := f.Stat(); err != nil || !fi.Mode().IsRegular() {
		return fmt.Errorf("%s: not a regular file", src)
	}
	cmd := exec.CommandContext(ctx, "cp", "--sparse=always", "/dev/fd/3", dst)
	cmd.ExtraFiles = []*os.File{f}
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("cp: %w: %s", err, strings.TrimSpace(string(out)))
	}
	return nil
}

// Restore creates sandbox cfg.ID from a snapshot directory and leaves it
// running with its clock set and its entropy reseeded. The snapshot's CPU
// count and memory size win over cfg's: QEMU can only load state into the
// same machine.
func (d *Driver) Restore(ctx context.Context, cfg *tartarus.VMConfig, dir string) error {
	if !d.fp.Available {
		return tartarus.Errorf(tartarus.ErrUnavailable, "microvm: %s", d.fp.Reason)
	}
	if strings.ContainsAny(dir, "'\n") {
		return tartarus.Errorf(tartarus.ErrInvalid, "snapshot directory %q: no quotes or newlines", dir)
	}
	b, err := os.ReadFile(filepath.Join(dir, snapConfig))
	if err != nil {
		return tartarus.Errorf(tartarus.ErrInvalid, "restore %s: not a microvm snapshot: %v", cfg.ID, err)
	}
	var snap vmConfig
	if err := json.Unmarshal(b, &snap); err != nil {
		return tartarus.Errorf(tartarus.ErrInvalid, "restore %s: %s: %v", cfg.ID, snapConfig, err)
	}
	c := *cfg
	if c.Image == nil {
		c.Image = &snap.Image
	}
	if c.Image.Digest != "" && snap.Image.Digest != "" && c.Image.Digest != snap.Image.Digest {
		return tartarus.Errorf(tartarus.ErrFailedPrecondition, "restore %s: snapshot of image %s, template is now %s", cfg.ID, snap.Image.Digest, c.Image.Digest)
	}
	if err := checkSnapshotNIC(cfg.ID, snap.Network, c.Network); err != nil {
		return err
	}
	c.CPUs, c.MemoryMB = snap.CPUs, snap.MemoryMB
	if c.Template == "" {
		c.Template = snap.Template
	}
	if c.Env == nil {
		c.Env = snap.Env
	}
	if snap.MemoryDigest != "" && !validDigest(snap.MemoryDigest) {
		return tartarus.Errorf(tartarus.ErrInvalid, "restore %s: %s: memory digest %q is not a SHA-256", cfg.ID, snapConfig, snap.MemoryDigest)
	}
	if _, err := d.create(ctx, &c, false); err != nil {
		return fmt.Errorf("restore: %w", err)
	}
	v, err := d.get(c.ID)
	if err != nil {
		return err
	}
	v.op.Lock()
	defer v.op.Unlock()
	if err := d.restore(ctx, v, dir, snap.Image.RootFS, snap.MemoryDigest); err != nil {
		v.stop(context.WithoutCancel(ctx))
		d.forget(v)
		_ = d.destroyNetwork(context.WithoutCancel(ctx), v.id)
		_ = os.RemoveAll(v.dir)
		d.releaseJail(c.ID)
		return fmt.Errorf("restore sandbox %s: %w\nconsole:\n%s", c.ID, err, v.consoleTail(10))
	}
	return nil
}

func (d *Driver) restore(ctx context.Context, v *vm, dir, snapRootFS, memoryDigest string) error {
	// The snapshot's disk becomes the sandbox's overlay, pointed at this
	// node's copy of the template's root filesystem.
	t0 := time.Now()
	var phases []any
	mark := func(name string) { phases = append(phases, name+"_ms", time.Since(t0).Milliseconds()) }
	overlay := v.path("overlay.qcow2")
	if err := os.Rename(filepath.Join(dir, snapDisk), overlay); err != nil {
		if err := copyFileSparse(ctx, filepath.Join(dir, snapDisk), overlay); err != nil {
			return err
		}
	}
	if snapRootFS != v.conf.Image.RootFS {
		out, err := exec.CommandContext(ctx, d.cfg.QEMUImg, "rebase", "-u", "-f", "qcow2", "-F", "raw", "-b", v.conf.Image.RootFS, overlay).CombinedOutput()
		if err != nil {
			return fmt.Errorf("qemu-img rebase: %w: %s", err, strings.TrimSpace(string(out)))
		}
	}
	mark("disk")
	// QEMU reads the memory file straight from an inherited descriptor.
	mem, err := os.Open(filepath.Join(dir, snapMemory))
	if err != nil {
		return err
	}
	defer mem.Close()
	if memoryDigest == "" {
		if err := d.launch(ctx, v, v.conf.Accel, []*os.File{mem}, "-S", "-incoming", "fd:3"); err != nil {
			return err
		}
		mark("qemu")
	} else {
		// Mapped: the template's sealed memory, copy-on-write, and
		// only the device state from the stream. The capability must
		// be set before the stream is read, hence "defer".
		ram, err := d.ram.get(ctx, memoryDigest, filepath.Join(dir, snapRAM), int64(v.conf.MemoryMB)<<20)
		if err != nil {
			return err
		}
		defer ram.Close() // QEMU has its own
		mark("ram")
		args := append(ramArgs(3, v.conf.MemoryMB, false), "-S", "-incoming", "defer")
		if err := d.launch(ctx, v, v.conf.Accel, []*os.File{ram, mem}, args...); err != nil {
			return err
		}
		mark("qemu")
		caps := []map[string]any{{"capability": "x-ignore-shared", "state": true}}
		if _, err := v.qmp.Execute(ctx, "migrate-set-capabilities", map[string]any{"capabilities": caps}); err != nil {
			return err
		}
		if _, err := v.qmp.Execute(ctx, "migrate-incoming", map[string]any{"uri": "fd:" + fdArg(1)}); err != nil {
			return err
		}
	}
	q := v.qmp
	if err := waitIncoming(ctx, q); err != nil {
		return err
	}
	mark("memory")
	if _, err := q.Execute(ctx, "cont", nil); err != nil {
		return err
	}
	// The session's first sync sets the clock, reseeds the guest's RNG
	// with fresh host entropy and renames the guest, which still carries
	// the snapshotted sandbox's hostname: one round trip.
	if err := d.connectGuestSync(ctx, v, d.cfg.BootTimeout, guestSync{now: d.clock.Now(), hostname: v.id}); err != nil {
		return err
	}
	mark("guest")
	if v.guest.Info().Hostname != v.id {
		// An older agent ignores the sync's hostname.
		res, err := v.guest.Exec(ctx, &tartarus.ExecRequest{Cmd: []string{"hostname", v.id}})
		if err != nil || res.ExitCode != 0 {
			v.log.Warn("cannot set the restored guest's hostname", "err", err, "result", res)
		}
		mark("hostname")
	}
	v.log.Info("restored", phases...)
	return d.markRunning(v, v.conf.Accel)
}

// waitIncoming waits until QEMU has loaded the incoming migration.
func waitIncoming(ctx context.Context, q *qmp.Client) error {
	delay := time.Millisecond // a mapped restore loads in a few
	for {
		ret, err := q.Execute(ctx, "query-status", nil)
		if err != nil {
			return err
		}
		var st struct {
			Status string `json:"status"`
		}
		if err := json.Unmarshal(ret, &st); err != nil {
			return fmt.Errorf("query-status: %w", err)
		}
		switch st.Status {
		case "prelaunch", "paused", "postmigrate":
			return nil
		case "inmigrate":
		default:
			return errors.New("after loading the snapshot QEMU is " + st.Status)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(delay):
		}
		delay = min(2*delay, 5*time.Millisecond)
	}
}
