package tartarus

import (
	"context"
	"io"
	"syscall"
	"time"
)

// PTYStarter is the optional side interface of a Runtime (and of a node
// agent) that runs commands on a pseudo-terminal inside a sandbox.
type PTYStarter interface {
	// StartPTY starts req.Cmd as a session leader with a new terminal of
	// req's size as its controlling terminal. The caller closes the PTY.
	StartPTY(ctx context.Context, id string, req *PTYRequest) (PTY, error)
}

// PTYRequest is a command to run on a terminal.
type PTYRequest struct {
	Cmd []string
	Env map[string]string
	Cwd string
	// User is as ExecRequest.User.
	User string
	Cols int
	Rows int
}

// PTY is a running terminal session. Read returns the terminal's output
// and io.EOF once the command has exited; Wait then says how it ended.
// Close hangs the terminal up (the command gets SIGHUP, then SIGKILL).
type PTY interface {
	io.Reader
	// Write sends keystrokes.
	io.Writer
	Resize(cols, rows int) error
	// Wait returns the command's result after Read has returned io.EOF,
	// or the error that ended the session.
	Wait() (*ExecResult, error)
	Close() error
}

// ProcessManager is the optional side interface of a Runtime (and of a
// node agent) whose sandboxes keep processes running in the background,
// beyond the call that started them: listed, reattached to, fed input and
// signalled later by pid or tag.
type ProcessManager interface {
	StartProcess(ctx context.Context, id string, req *ProcessRequest) (*Process, error)
	ListProcesses(ctx context.Context, id string) ([]Process, error)
	// AttachProcess copies what the process prints from now on (after its
	// recent output when replay is set) to stdout and stderr until it
	// exits, and returns how it ended. Cancelling ctx detaches and leaves
	// the process running.
	AttachProcess(ctx context.Context, id string, sel ProcessSelector, replay bool, stdout, stderr io.Writer) (*ExecResult, error)
	// ProcessInput writes data to the process's stdin, then closes it when
	// closeStdin is set.
	ProcessInput(ctx context.Context, id string, sel ProcessSelector, data []byte, closeStdin bool) error
	SignalProcess(ctx context.Context, id string, sel ProcessSelector, sig syscall.Signal) error
}

// ProcessRequest starts a background process.
type ProcessRequest struct {
	Cmd []string
	Env map[string]string
	Cwd string
	// User is as ExecRequest.User.
	User string
	// Tag names the process for later calls.
	Tag string
	// Stdin keeps the process's stdin open for ProcessInput; otherwise it
	// reads nothing.
	Stdin bool
}

// ProcessSelector names a background process by pid, or by tag (the
// newest running process with it).
type ProcessSelector struct {
	Pid int    `json:"pid,omitempty"`
	Tag string `json:"tag,omitempty"`
}

// Process describes a background process.
type Process struct {
	Pid       int       `json:"pid"`
	Tag       string    `json:"tag,omitempty"`
	Cmd       []string  `json:"cmd"`
	Cwd       string    `json:"cwd,omitempty"`
	StartedAt time.Time `json:"started_at"`
	Exited    bool      `json:"exited,omitempty"`
	ExitCode  int       `json:"exit_code,omitempty"`
}

// FileManager is the optional side interface of a Runtime (and of a node
// agent) that manages a sandbox's files beyond reading and writing them.
type FileManager interface {
	// StatFile describes path without following a final symbolic link.
	StatFile(ctx context.Context, id, path string) (*FileInfo, error)
	// MakeDir makes a directory (with its parents when parents is set) and
	// says whether it made it; an existing directory is not an error.
	MakeDir(ctx context.Context, id, path string, parents bool) (bool, error)
	// MoveFile renames from to to, making to's parents, and describes to.
	MoveFile(ctx context.Context, id, from, to string) (*FileInfo, error)
	// RemoveFile removes path; a directory with entries only when recursive.
	RemoveFile(ctx context.Context, id, path string, recursive bool) error
	// ListFilesDepth lists a directory and its subdirectories down to
	// depth levels (1: the directory's own entries), each with its Path.
	ListFilesDepth(ctx context.Context, id, path string, depth int) ([]FileInfo, error)
	// WatchDir watches a directory (and below it when recursive); it
	// returns once the watch is in place. The caller closes the watch.
	WatchDir(ctx context.Context, id, path string, recursive bool) (FileWatch, error)
}

// FileWatch is a running watch of a directory.
type FileWatch interface {
	// Next blocks for the next events; it fails once the watch ended.
	Next() ([]WatchEvent, error)
	Close() error
}

// WatchEvent is one change below a watched directory. Type is create,
// write, remove, rename, chmod, or overflow (events were dropped).
type WatchEvent struct {
	Type string `json:"type"`
	// Name is the changed entry's path relative to the watched directory.
	Name  string `json:"name,omitempty"`
	IsDir bool   `json:"is_dir,omitempty"`
}

// StatsSampler is the optional side interface of a Runtime whose Stats
// counts as activity (it keeps a sandbox from idling): SampleStats reports
// the same without touching the sandbox's idle time, for periodic metrics.
type StatsSampler interface {
	SampleStats(ctx context.Context, id string) (*Stats, error)
}

// MetricSample is a sandbox's resource use at one moment.
type MetricSample struct {
	At            time.Time `json:"timestamp"`
	CPUCount      int       `json:"cpu_count"`
	CPUPercent    float64   `json:"cpu_used_pct"`
	MemoryUsedMB  int       `json:"mem_used_mb"`
	MemoryTotalMB int       `json:"mem_total_mb"`
	DiskUsedMB    int       `json:"disk_used_mb"`
	DiskTotalMB   int       `json:"disk_total_mb"`
}

// ConsoleReader is the optional side interface of a Runtime that keeps
// each sandbox's console (the microvm's serial port): Console returns its
// last max bytes, as the host recorded them.
type ConsoleReader interface {
	Console(ctx context.Context, id string, max int) ([]byte, error)
}
