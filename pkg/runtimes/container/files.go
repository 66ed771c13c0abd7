package container

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/tartarus-sandbox/tartarus/pkg/guest"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

// ExecFunc runs one command in a sandbox; Files uses it to move files. It
// is the driver's own exec, below state checks and activity tracking.
type ExecFunc func(ctx context.Context, req *tartarus.ExecRequest) (*tartarus.ExecResult, error)

// Files moves files in and out of a sandbox by running small POSIX shell
// scripts in it (sh, cat, mkdir, chmod, mv, stat: busybox or coreutils).
// Paths are passed as arguments, never spliced into the script, and are
// resolved by the sandbox's own kernel (or gVisor's), so a symbolic link in
// the sandbox cannot reach the host.
//
// Limits: the sandbox's root filesystem must have those tools (every
// Tartarus template has), and ListFiles cannot represent a name holding a
// newline (such entries are skipped).
type Files struct {
	Exec ExecFunc
}

// Exit codes the scripts use to say what went wrong.
const (
	exitNotFound = 44
	exitIsDir    = 45
	exitNotDir   = 46
)

// readScript writes a status byte first — N (no such file), D (a directory)
// or O (here it comes) — then the file.
const readScript = `if [ ! -e "$1" ]; then printf N; exit 0; fi
if [ -d "$1" ]; then printf D; exit 0; fi
printf O
exec cat -- "$1"`

const writeScript = `p="$1"
d="${p%/*}"
[ -n "$d" ] || d=/
if [ -d "$p" ]; then echo "$p is a directory" >&2; exit 45; fi
mkdir -p -- "$d" || exit 1
t="$d/.tartarus-upload.$$"
trap 'rm -f -- "$t"' EXIT
cat > "$t" && chmod "$2" "$t" && mv -f -- "$t" "$p" || exit 1
trap - EXIT`

const listScript = `[ -e "$1" ] || exit 44
[ -d "$1" ] || exit 46
cd -- "$1" || exit 1
for f in .* *; do
	case "$f" in .|..) continue;; esac
	[ -e "$f" ] || [ -L "$f" ] || continue
	stat -c '%s %f %Y %n' -- "$f" || exit 1
done`

// CleanPath checks that p is an absolute path without NUL and returns it
// cleaned. Errors wrap tartarus.ErrInvalid.
func CleanPath(p string) (string, error) {
	if !strings.HasPrefix(p, "/") || strings.IndexByte(p, 0) >= 0 {
		return "", tartarus.Errorf(tartarus.ErrInvalid, "path %q: want an absolute path", p)
	}
	return path.Clean(p), nil
}

// ReadFile streams the file at p out of the sandbox. Cancelling ctx or
// closing the reader stops the transfer.
func (f Files) ReadFile(ctx context.Context, p string) (io.ReadCloser, error) {
	p, err := CleanPath(p)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(ctx)
	pr, pw := io.Pipe()
	stderr := &capped{max: maxStderr}
	go func() {
		res, err := f.Exec(ctx, &tartarus.ExecRequest{Cmd: []string{"sh", "-c", readScript, "sh", p}, Stdout: pw, Stderr: stderr})
		if err == nil && res.ExitCode != 0 {
			err = fmt.Errorf("read %s: exit code %d: %s", p, res.ExitCode, strings.TrimSpace(stderr.String()))
		}
		pw.CloseWithError(err)
	}()
	var status [1]byte
	if _, err := io.ReadFull(pr, status[:]); err != nil {
		cancel()
		pr.Close()
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			err = fmt.Errorf("read %s: no answer from the sandbox", p)
		}
		return nil, err
	}
	switch status[0] {
	case 'O':
		return &cancelReader{PipeReader: pr, cancel: cancel}, nil
	case 'N':
		cancel()
		pr.Close()
		return nil, tartarus.Errorf(tartarus.ErrNotFound, "file %s", p)
	case 'D':
		cancel()
		pr.Close()
		return nil, tartarus.Errorf(tartarus.ErrInvalid, "%s is a directory", p)
	}
	cancel()
	pr.Close()
	return nil, fmt.Errorf("read %s: unexpected answer %q", p, status[0])
}

type cancelReader struct {
	*io.PipeReader
	cancel context.CancelFunc
}

func (r *cancelReader) Close() error {
	r.cancel()
	return r.PipeReader.Close()
}

// WriteFile streams r into the file at p, creating parent directories, and
// replaces the file atomically (a temporary file in the same directory,
// then rename).
func (f Files) WriteFile(ctx context.Context, p string, mode os.FileMode, r io.Reader) error {
	p, err := CleanPath(p)
	if err != nil {
		return err
	}
	if p == "/" {
		return tartarus.Errorf(tartarus.ErrInvalid, "path /: is a directory")
	}
	stderr := &capped{max: maxStderr}
	res, err := f.Exec(ctx, &tartarus.ExecRequest{
		Cmd:   []string{"sh", "-c", writeScript, "sh", p, strconv.FormatUint(uint64(mode.Perm()), 8)},
		Stdin: r, Stderr: stderr,
	})
	if err != nil {
		return fmt.Errorf("write %s: %w", p, err)
	}
	switch res.ExitCode {
	case 0:
		return nil
	case exitIsDir:
		return tartarus.Errorf(tartarus.ErrInvalid, "%s is a directory", p)
	}
	return fmt.Errorf("write %s: exit code %d: %s", p, res.ExitCode, strings.TrimSpace(stderr.String()))
}

// ListFiles lists the directory at p.
func (f Files) ListFiles(ctx context.Context, p string) ([]tartarus.FileInfo, error) {
	p, err := CleanPath(p)
	if err != nil {
		return nil, err
	}
	// The sandbox is the attacker: a listing is held only up to
	// guest.MaxListBytes of names (and their stat fields).
	stdout := &capped{max: guest.MaxListBytes + guest.MaxListEntries*64}
	stderr := &capped{max: maxStderr}
	res, err := f.Exec(ctx, &tartarus.ExecRequest{Cmd: []string{"sh", "-c", listScript, "sh", p}, Stdout: stdout, Stderr: stderr})
	if err != nil {
		return nil, fmt.Errorf("list %s: %w", p, err)
	}
	if stdout.over {
		return nil, tartarus.Errorf(tartarus.ErrResourceExhausted, "list %s: more than %d bytes of listing", p, stdout.max)
	}
	switch res.ExitCode {
	case 0:
	case exitNotFound:
		return nil, tartarus.Errorf(tartarus.ErrNotFound, "directory %s", p)
	case exitNotDir:
		return nil, tartarus.Errorf(tartarus.ErrInvalid, "%s is not a directory", p)
	default:
		return nil, fmt.Errorf("list %s: exit code %d: %s", p, res.ExitCode, strings.TrimSpace(stderr.String()))
	}
	return ParseStatLines(&stdout.b)
}

// maxStderr is how much of a file command's stderr is kept for its error.
const maxStderr = 4 << 10

// capped keeps the first max bytes written to it and drops the rest,
// noting that it did: what a sandbox prints never grows the host's memory
// past max.
type capped struct {
	max  int
	b    bytes.Buffer
	over bool
}

func (c *capped) Write(p []byte) (int, error) {
	if room := c.max - c.b.Len(); len(p) > room {
		c.over = true
		c.b.Write(p[:max(room, 0)])
		return len(p), nil
	}
	return c.b.Write(p)
}

func (c *capped) String() string { return c.b.String() }

// ParseStatLines parses the output of `stat -c '%s %f %Y %n'`, one entry a
// line: size, raw mode in hex, modification time in seconds, name. It
// holds the guest's bounds: at most guest.MaxListEntries entries, names of
// at most guest.MaxNameLen bytes (ErrResourceExhausted past either).
func ParseStatLines(r io.Reader) ([]tartarus.FileInfo, error) {
	out := []tartarus.FileInfo{}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64*1024), guest.MaxNameLen+128)
	for sc.Scan() {
		line := sc.Text()
		fields := strings.SplitN(line, " ", 4)
		if len(fields) != 4 || fields[3] == "" {
			return nil, fmt.Errorf("stat output: bad line %q", clip(line))
		}
		if len(fields[3]) > guest.MaxNameLen {
			return nil, tartarus.Errorf(tartarus.ErrResourceExhausted, "listing: a name of %d bytes (at most %d)", len(fields[3]), guest.MaxNameLen)
		}
		if len(out) == guest.MaxListEntries {
			return nil, tartarus.Errorf(tartarus.ErrResourceExhausted, "listing: more than %d entries", guest.MaxListEntries)
		}
		size, err1 := strconv.ParseInt(fields[0], 10, 64)
		raw, err2 := strconv.ParseUint(fields[1], 16, 32)
		mtime, err3 := strconv.ParseInt(fields[2], 10, 64)
		if err := errors.Join(err1, err2, err3); err != nil {
			return nil, fmt.Errorf("stat output: bad line %q: %w", clip(line), err)
		}
		mode := UnixMode(uint32(raw))
		out = append(out, tartarus.FileInfo{Name: fields[3], Size: size, Mode: mode,
			ModTime: time.Unix(mtime, 0).UTC(), IsDir: mode.IsDir()})
	}
	if errors.Is(sc.Err(), bufio.ErrTooLong) {
		return nil, tartarus.Errorf(tartarus.ErrResourceExhausted, "listing: a line past %d bytes (names are at most %d)", guest.MaxNameLen+128, guest.MaxNameLen)
	}
	return out, sc.Err()
}

// clip shortens a line from the sandbox for an error message.
func clip(s string) string {
	if len(s) > 200 {
		return s[:200] + "…"
	}
	return s
}

// UnixMode converts a raw st_mode into an os.FileMode.
func UnixMode(m uint32) os.FileMode {
	fm := os.FileMode(m & 0o777)
	switch m & syscall.S_IFMT {
	case syscall.S_IFDIR:
		fm |= os.ModeDir
	case syscall.S_IFLNK:
		fm |= os.ModeSymlink
	case syscall.S_IFIFO:
		fm |= os.ModeNamedPipe
	case syscall.S_IFSOCK:
		fm |= os.ModeSocket
	case syscall.S_IFCHR:
		fm |= os.ModeDevice | os.ModeCharDevice
	case syscall.S_IFBLK:
		fm |= os.ModeDevice
	}
	if m&syscall.S_ISUID != 0 {
		fm |= os.ModeSetuid
	}
	if m&syscall.S_ISGID != 0 {
		fm |= os.ModeSetgid
	}
	if m&syscall.S_ISVTX != 0 {
		fm |= os.ModeSticky
	}
	return fm
}
