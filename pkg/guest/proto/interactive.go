package proto

import (
	"fmt"
	"strings"
	"time"
	"unicode/utf8"
)

// The interactive RPCs: terminals, processes that outlive their stream,
// file management and directory watches.
const (
	// OpPTY runs Request.Exec on a new pseudo-terminal of Request.PTY's
	// size: FrameStdin carries keystrokes in, FrameControl resizes,
	// FrameStdout carries the terminal's output, ExecResult last. Closing
	// the stream hangs the terminal up.
	OpPTY Op = "pty"
	// OpProcStart starts Request.Exec in the background under
	// Request.Proc's tag and answers ProcInfo at once. Its output is kept
	// in a bounded ring and offered to OpProcAttach streams.
	OpProcStart Op = "proc_start"
	// OpProcList answers ProcList: the background processes, running or
	// exited but not yet collected.
	OpProcList Op = "proc_list"
	// OpProcAttach streams a background process's output from now on
	// (after the ring's recent output when Proc.Replay is set) and ends
	// with its ExecResult when it exits. Closing the stream detaches and
	// leaves the process running.
	OpProcAttach Op = "proc_attach"
	// OpProcInput writes Proc.Data to a background process's stdin, then
	// closes it when Proc.CloseStdin is set.
	OpProcInput Op = "proc_input"
	// OpProcSignal sends Request.Signal to a background process's group.
	OpProcSignal Op = "proc_signal"
	// OpStat answers FileInfo for Request.Path (not following a final
	// symlink).
	OpStat Op = "stat"
	// OpMkdir makes Request.Path (and its parents when File.Parents) and
	// answers MkdirResult.
	OpMkdir Op = "mkdir"
	// OpMove renames Request.Path to File.Dest and answers the FileInfo
	// of the destination.
	OpMove Op = "move"
	// OpRemove removes Request.Path, and everything below it when
	// File.Recursive.
	OpRemove Op = "remove"
	// OpWatch watches the directory Request.Path (and below it when
	// Watch.Recursive): FrameData frames carry JSON arrays of WatchEvent
	// until the host closes the stream. The first frame, an empty array,
	// says the watch is in place.
	OpWatch Op = "watch"
)

// Bounds of the interactive RPCs.
const (
	MaxTagLen      = 128
	MaxProcInput   = 512 << 10
	MaxListDepth   = 16
	MaxTermSize    = 4096
	MaxWatchEvents = 256 // per frame
)

// PTYRequest is a terminal's first size.
type PTYRequest struct {
	Cols int `json:"cols"`
	Rows int `json:"rows"`
}

// Control is a FrameControl's payload.
type Control struct {
	Resize *PTYRequest `json:"resize,omitempty"`
}

// ProcRequest names a background process and what to do with it.
type ProcRequest struct {
	// Tag names a process at start; the other ops take Pid or Tag.
	Tag string `json:"tag,omitempty"`
	Pid int    `json:"pid,omitempty"`
	// Stdin keeps the process's stdin open for OpProcInput (proc_start);
	// otherwise it reads /dev/null.
	Stdin bool `json:"stdin,omitempty"`
	// Replay sends the ring's recent output before live output
	// (proc_attach).
	Replay bool `json:"replay,omitempty"`
	// Data and CloseStdin are OpProcInput's.
	Data       []byte `json:"data,omitempty"`
	CloseStdin bool   `json:"close_stdin,omitempty"`
}

// ProcInfo describes a background process.
type ProcInfo struct {
	Pid       int       `json:"pid"`
	Tag       string    `json:"tag,omitempty"`
	Cmd       []string  `json:"cmd"`
	Cwd       string    `json:"cwd,omitempty"`
	StartedAt time.Time `json:"started_at"`
	// Exited is set once the process has ended; ExitCode is then valid.
	Exited   bool `json:"exited,omitempty"`
	ExitCode int  `json:"exit_code,omitempty"`
}

// ProcList is OpProcList's answer.
type ProcList struct {
	Processes []ProcInfo `json:"processes"`
}

// FileRequest carries the options of file ops.
type FileRequest struct {
	Dest      string `json:"dest,omitempty"`      // OpMove
	Parents   bool   `json:"parents,omitempty"`   // OpMkdir
	Recursive bool   `json:"recursive,omitempty"` // OpRemove
	// Depth is how many levels OpListFiles descends; 0 and 1 both mean
	// the directory's own entries.
	Depth int `json:"depth,omitempty"`
}

// MkdirResult says whether OpMkdir made the directory (false: it existed).
type MkdirResult struct {
	Created bool `json:"created"`
}

// WatchRequest configures OpWatch.
type WatchRequest struct {
	Recursive bool `json:"recursive,omitempty"`
}

// The kinds of WatchEvent.
const (
	WatchCreate   = "create"
	WatchWrite    = "write"
	WatchRemove   = "remove"
	WatchRename   = "rename"
	WatchChmod    = "chmod"
	WatchOverflow = "overflow" // events were dropped; Name is empty
)

// WatchEvent is one change below a watched directory.
type WatchEvent struct {
	Type string `json:"type"`
	// Name is the path relative to the watched directory.
	Name  string `json:"name,omitempty"`
	IsDir bool   `json:"is_dir,omitempty"`
}

// validateInteractive checks the interactive ops' requests.
func (r *Request) validateInteractive(bad func(string, ...any) error) error {
	switch r.Op {
	case OpPTY:
		if r.Exec == nil {
			return bad("missing exec")
		}
		if r.PTY == nil {
			return bad("missing pty")
		}
		if err := r.PTY.Validate(); err != nil {
			return bad("%v", err)
		}
		return r.Exec.validate(bad)
	case OpProcStart:
		if r.Exec == nil {
			return bad("missing exec")
		}
		if r.Proc != nil {
			if err := ValidTag(r.Proc.Tag); err != nil {
				return bad("%v", err)
			}
		}
		return r.Exec.validate(bad)
	case OpProcList:
		return nil
	case OpProcAttach, OpProcInput, OpProcSignal:
		if r.Proc == nil || (r.Proc.Pid <= 0 && r.Proc.Tag == "") {
			return bad("name a process by pid or tag")
		}
		if err := ValidTag(r.Proc.Tag); err != nil {
			return bad("%v", err)
		}
		if len(r.Proc.Data) > MaxProcInput {
			return bad("data: at most %d bytes", MaxProcInput)
		}
		if r.Op == OpProcSignal && (r.Signal < 1 || r.Signal > maxSignal) {
			return bad("signal %d out of range", r.Signal)
		}
		return nil
	}
	p, err := CleanPath(r.Path)
	if err != nil {
		return bad("%v", err)
	}
	r.Path = p
	switch r.Op {
	case OpMove:
		if r.File == nil {
			return bad("missing destination")
		}
		d, err := CleanPath(r.File.Dest)
		if err != nil {
			return bad("dest: %v", err)
		}
		r.File.Dest = d
		if p == "/" || d == "/" {
			return bad("cannot move /")
		}
	case OpRemove:
		if p == "/" {
			return bad("cannot remove /")
		}
	}
	return nil
}

// Validate checks a terminal size.
func (p *PTYRequest) Validate() error {
	if p.Cols < 1 || p.Rows < 1 || p.Cols > MaxTermSize || p.Rows > MaxTermSize {
		return fmt.Errorf("terminal size %dx%d: want 1-%d columns and rows", p.Cols, p.Rows, MaxTermSize)
	}
	return nil
}

// ValidTag checks a process tag: printable UTF-8 of at most MaxTagLen bytes.
func ValidTag(tag string) error {
	if len(tag) > MaxTagLen || !utf8.ValidString(tag) || strings.ContainsFunc(tag, func(r rune) bool { return r < 0x20 || r == 0x7f }) {
		return fmt.Errorf("tag: at most %d bytes of printable UTF-8", MaxTagLen)
	}
	return nil
}
