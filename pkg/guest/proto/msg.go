package proto

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"path"
	"strings"
	"syscall"
	"time"

	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

// Op names an RPC.
type Op string

// The RPCs. Each runs on its own stream.
const (
	// OpPing answers an empty Result.
	OpPing Op = "ping"
	// OpSync sets the guest clock, reseeds its RNG and answers Info.
	OpSync Op = "sync"
	// OpExec runs a command: stdin frames in, stdout/stderr frames out,
	// ExecResult last.
	OpExec Op = "exec"
	// OpCancel kills the process group of a running exec, named by the
	// ExecRequest.ID the host gave it. It exists beside FrameCancel because
	// an exec stream can be stalled behind stdin the child does not read.
	OpCancel Op = "cancel"
	// OpSignal sends a signal to every process group started by exec.
	OpSignal Op = "signal"
	// OpSignalProcesses sends a signal to every process descended from the
	// agent but the agent itself: in a VM, where the agent is PID 1, every
	// process of the guest (kernel threads descend from kthreadd, not from
	// PID 1). It reaches what OpSignal misses: daemons that left their
	// exec's process group (setsid, setpgid).
	OpSignalProcesses Op = "signal_processes"
	// OpReadFile streams a file out as data frames, then FileResult.
	OpReadFile Op = "read_file"
	// OpWriteFile takes data frames and FrameEOF, writes the file
	// atomically, then answers FileResult.
	OpWriteFile Op = "write_file"
	// OpListFiles answers data frames holding JSON arrays of
	// tartarus.FileInfo, then ListResult.
	OpListFiles Op = "list_files"
	// OpStats answers tartarus.Stats.
	OpStats Op = "stats"
)

// Limits on a request. They bound what the guest accepts, not what is useful.
const (
	MaxArgs       = 4096
	MaxEnv        = 4096
	MaxEntropy    = 512
	MaxExecIDLen  = 64
	MaxPathLen    = 4096
	maxSignal     = 64
	permBits      = 0o7777
	DefaultMode   = 0o644
	DefaultSignal = syscall.SIGTERM
)

// Request is the JSON payload of a stream's first frame.
type Request struct {
	Op     Op           `json:"op"`
	Sync   *SyncRequest `json:"sync,omitempty"`
	Exec   *ExecRequest `json:"exec,omitempty"`
	ExecID string       `json:"exec_id,omitempty"` // OpCancel
	Signal int          `json:"signal,omitempty"`  // OpSignal, OpSignalProcesses
	Path   string       `json:"path,omitempty"`    // file ops
	Mode   uint32       `json:"mode,omitempty"`    // OpWriteFile; 0 means DefaultMode
	// The ops of interactive.go: PTYs, background processes, file
	// management and watches.
	PTY   *PTYRequest   `json:"pty,omitempty"`
	Proc  *ProcRequest  `json:"proc,omitempty"`
	File  *FileRequest  `json:"file,omitempty"`
	Watch *WatchRequest `json:"watch,omitempty"`
}

// SyncRequest carries the host's wall clock and fresh entropy.
type SyncRequest struct {
	UnixNano int64  `json:"unix_nano"`
	Entropy  []byte `json:"entropy,omitempty"`
	// Hostname, when set, becomes the guest's hostname (a restored
	// snapshot still carries the snapshotted sandbox's).
	Hostname string `json:"hostname,omitempty"`
}

// MaxHostname is the longest hostname a sync may set (Linux HOST_NAME_MAX).
const MaxHostname = 64

// Info is the guest's answer to OpSync.
type Info struct {
	AgentVersion string    `json:"agent_version"`
	Kernel       string    `json:"kernel"`
	Hostname     string    `json:"hostname"`
	BootedAt     time.Time `json:"booted_at"`
	// BootError is why the guest's boot did not complete, if it did not.
	BootError string `json:"boot_error,omitempty"`
}

// ExecRequest describes one command.
type ExecRequest struct {
	// ID names the exec within its session for OpCancel.
	ID  string            `json:"id,omitempty"`
	Cmd []string          `json:"cmd"`
	Env map[string]string `json:"env,omitempty"`
	Cwd string            `json:"cwd,omitempty"`
	// User runs the command as this user of the guest's /etc/passwd
	// (tartarus.ValidUser's forms); empty means root.
	User string `json:"user,omitempty"`
	// Stdin says the host will send stdin frames; otherwise the command's
	// stdin is /dev/null.
	Stdin     bool  `json:"stdin,omitempty"`
	TimeoutMS int64 `json:"timeout_ms,omitempty"`
}

// ExecResult is how a command ended.
type ExecResult struct {
	ExitCode   int    `json:"exit_code"`
	Signal     string `json:"signal,omitempty"`
	TimedOut   bool   `json:"timed_out,omitempty"`
	DurationNS int64  `json:"duration_ns"`
}

// SignalResult says how many process groups (OpSignal) or processes
// (OpSignalProcesses) a signal reached.
type SignalResult struct {
	Groups    int `json:"groups"`
	Processes int `json:"processes,omitempty"`
}

// FileResult ends a file transfer.
type FileResult struct {
	Size int64 `json:"size"`
}

// ListResult ends a directory listing.
type ListResult struct {
	Count int `json:"count"`
}

// DecodeRequest parses and validates a FrameRequest payload. It cleans
// Request.Path. Every error is an *Error with CodeInvalid.
func DecodeRequest(p []byte) (*Request, error) {
	var req Request
	if err := json.Unmarshal(p, &req); err != nil {
		return nil, &Error{Code: CodeInvalid, Message: "decode request: " + err.Error()}
	}
	if err := req.Validate(); err != nil {
		return nil, err
	}
	return &req, nil
}

// Validate checks a request's shape and cleans its path. Errors are *Error
// with CodeInvalid.
func (r *Request) Validate() error {
	bad := func(format string, args ...any) error {
		return &Error{Code: CodeInvalid, Message: fmt.Sprintf(string(r.Op)+": "+format, args...)}
	}
	switch r.Op {
	case OpPing, OpStats:
		return nil
	case OpSync:
		if r.Sync == nil {
			return bad("missing sync")
		}
		if len(r.Sync.Entropy) > MaxEntropy {
			return bad("entropy: at most %d bytes", MaxEntropy)
		}
		if len(r.Sync.Hostname) > MaxHostname || strings.ContainsRune(r.Sync.Hostname, 0) {
			return bad("hostname: at most %d bytes, no NUL", MaxHostname)
		}
		return nil
	case OpExec:
		if r.Exec == nil {
			return bad("missing exec")
		}
		return r.Exec.validate(bad)
	case OpCancel:
		if r.ExecID == "" || len(r.ExecID) > MaxExecIDLen {
			return bad("exec_id must be 1-%d bytes", MaxExecIDLen)
		}
		return nil
	case OpSignal, OpSignalProcesses:
		if r.Signal < 1 || r.Signal > maxSignal {
			return bad("signal %d out of range", r.Signal)
		}
		return nil
	case OpReadFile, OpWriteFile, OpListFiles:
		p, err := CleanPath(r.Path)
		if err != nil {
			return bad("%v", err)
		}
		r.Path = p
		if r.Op == OpListFiles && r.File != nil && (r.File.Depth < 0 || r.File.Depth > MaxListDepth) {
			return bad("depth %d: want 0-%d", r.File.Depth, MaxListDepth)
		}
		if r.Mode&^permBits != 0 {
			return bad("mode %#o: only permission bits are allowed", r.Mode)
		}
		return nil
	case OpPTY, OpProcStart, OpProcList, OpProcAttach, OpProcInput, OpProcSignal,
		OpStat, OpMkdir, OpMove, OpRemove, OpWatch:
		return r.validateInteractive(bad)
	case "":
		return bad("missing op")
	default:
		return &Error{Code: CodeNotImplemented, Message: fmt.Sprintf("unknown op %q", r.Op)}
	}
}

func (e *ExecRequest) validate(bad func(string, ...any) error) error {
	switch {
	case len(e.Cmd) == 0 || e.Cmd[0] == "":
		return bad("cmd is empty")
	case len(e.Cmd) > MaxArgs:
		return bad("cmd: at most %d arguments", MaxArgs)
	case len(e.Env) > MaxEnv:
		return bad("env: at most %d entries", MaxEnv)
	case len(e.ID) > MaxExecIDLen:
		return bad("id: at most %d bytes", MaxExecIDLen)
	case e.TimeoutMS < 0:
		return bad("timeout_ms %d is negative", e.TimeoutMS)
	}
	for i, a := range e.Cmd {
		if strings.IndexByte(a, 0) >= 0 {
			return bad("cmd[%d] contains NUL", i)
		}
	}
	if err := tartarus.ValidEnv(e.Env); err != nil {
		return bad("%v", err)
	}
	if err := tartarus.ValidUser(e.User); err != nil {
		return bad("%v", err)
	}
	if e.Cwd != "" {
		p, err := CleanPath(e.Cwd)
		if err != nil {
			return bad("cwd: %v", err)
		}
		e.Cwd = p
	}
	return nil
}

// CleanPath checks that p is an absolute path without NUL and returns it
// cleaned.
func CleanPath(p string) (string, error) {
	switch {
	case p == "":
		return "", errors.New("path is empty")
	case len(p) > MaxPathLen:
		return "", fmt.Errorf("path longer than %d bytes", MaxPathLen)
	case strings.IndexByte(p, 0) >= 0:
		return "", errors.New("path contains NUL")
	case !path.IsAbs(p):
		return "", fmt.Errorf("path %q is not absolute", p)
	}
	return path.Clean(p), nil
}

// Code classifies an Error. Its values are the wire codes of the one error
// table (tartarus.ClassOf), so the guest speaks the same codes as every
// other side.
type Code string

// The error codes the guest sends.
const (
	CodeNotFound       Code = "not_found"
	CodeExists         Code = "already_exists"
	CodeInvalid        Code = "invalid_argument"
	CodePermission     Code = "permission_denied"
	CodeUnavailable    Code = "unavailable"
	CodeTimeout        Code = "timeout"
	CodeNotImplemented Code = "not_implemented"
	CodeInternal       Code = tartarus.CodeInternal
)

// legacyCodes are the codes guests built before the one error table sent;
// a hibernated sandbox from then may still answer with them.
var legacyCodes = map[Code]error{
	"exists":     tartarus.ErrAlreadyExists,
	"invalid":    tartarus.ErrInvalid,
	"permission": tartarus.ErrPermissionDenied,
}

// Error is the JSON payload of a FrameError.
type Error struct {
	Code    Code   `json:"code"`
	Message string `json:"message"`
}

func (e *Error) Error() string { return e.Message + " (" + string(e.Code) + ")" }

// Class returns the tartarus error class for the code; unknown codes are
// treated as internal failures of the guest, which tartarus has no class
// for, so nil.
func (e *Error) Class() error {
	if c, ok := tartarus.ClassForCode(string(e.Code)); ok {
		return c.Err
	}
	return legacyCodes[e.Code]
}

// ErrorFrom turns a guest-side error into the Error sent to the host: file
// system errors become their tartarus class first, then the one table names
// the code.
func ErrorFrom(err error) *Error {
	var pe *Error
	if errors.As(err, &pe) {
		return pe
	}
	class := err
	switch {
	case errors.Is(err, fs.ErrNotExist):
		class = tartarus.ErrNotFound
	case errors.Is(err, fs.ErrExist):
		class = tartarus.ErrAlreadyExists
	case errors.Is(err, fs.ErrPermission):
		class = tartarus.ErrPermissionDenied
	case errors.Is(err, syscall.EISDIR), errors.Is(err, syscall.ENOTDIR),
		errors.Is(err, syscall.EINVAL), errors.Is(err, syscall.ENAMETOOLONG):
		class = tartarus.ErrInvalid
	}
	return &Error{Code: Code(tartarus.CodeOf(class)), Message: err.Error()}
}

// ModeToWire encodes a file mode's permission, setuid, setgid and sticky
// bits as Unix mode bits.
func ModeToWire(m fs.FileMode) uint32 {
	w := uint32(m.Perm())
	if m&fs.ModeSetuid != 0 {
		w |= 0o4000
	}
	if m&fs.ModeSetgid != 0 {
		w |= 0o2000
	}
	if m&fs.ModeSticky != 0 {
		w |= 0o1000
	}
	return w
}

// ModeFromWire is the inverse of ModeToWire.
func ModeFromWire(w uint32) fs.FileMode {
	m := fs.FileMode(w & 0o777)
	if w&0o4000 != 0 {
		m |= fs.ModeSetuid
	}
	if w&0o2000 != 0 {
		m |= fs.ModeSetgid
	}
	if w&0o1000 != 0 {
		m |= fs.ModeSticky
	}
	return m
}
