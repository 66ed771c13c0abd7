package api

import "github.com/tartarus-sandbox/tartarus/pkg/tartarus"

// PTYMessage is a JSON text message of a PTY WebSocket, either way. The
// client's first message is "start"; then "resize" any time. The server
// sends "started", then "exit" or "error" last. Terminal bytes travel as
// binary messages both ways.
type PTYMessage struct {
	Type string `json:"type"` // start, resize, started, exit, error
	// start
	Cmd []string          `json:"cmd,omitempty"`
	Env map[string]string `json:"env,omitempty"`
	Cwd string            `json:"cwd,omitempty"`
	// User is as ExecRequest's.
	User string `json:"user,omitempty"`
	// start and resize
	Cols int `json:"cols,omitempty"`
	Rows int `json:"rows,omitempty"`
	// exit
	ExitCode *int   `json:"exit_code,omitempty"`
	Signal   string `json:"signal,omitempty"`
	// error
	Error *ErrorDetail `json:"error,omitempty"`
}

// The PTY message types.
const (
	PTYStart   = "start"
	PTYResize  = "resize"
	PTYStarted = "started"
	PTYExit    = "exit"
	PTYError   = "error"
)

// ProcessStart is the body of POST /v1/sandboxes/{id}/processes.
type ProcessStart struct {
	Cmd []string          `json:"cmd"`
	Env map[string]string `json:"env,omitempty"`
	Cwd string            `json:"cwd,omitempty"`
	// User is as ExecRequest's.
	User string `json:"user,omitempty"`
	Tag  string `json:"tag,omitempty"`
	// Stdin keeps the process's stdin open for .../stdin calls.
	Stdin bool `json:"stdin,omitempty"`
}

// ProcessList answers GET /v1/sandboxes/{id}/processes.
type ProcessList struct {
	Processes []tartarus.Process `json:"processes"`
}

// SignalRequest is the body of POST .../processes/{ref}/signal: a name
// ("SIGTERM", "TERM") or a number.
type SignalRequest struct {
	Signal any `json:"signal"`
}

// MkdirRequest is the body of POST /v1/sandboxes/{id}/files/mkdir.
type MkdirRequest struct {
	Path    string `json:"path"`
	Parents bool   `json:"parents,omitempty"`
}

// MkdirResponse says whether the directory was made (false: it existed).
type MkdirResponse struct {
	Created bool `json:"created"`
}

// MoveRequest is the body of POST /v1/sandboxes/{id}/files/move.
type MoveRequest struct {
	From string `json:"from"`
	To   string `json:"to"`
}

// WatchLine is one line of a watch stream: "watching" first (the watch is
// in place), then one change a line.
type WatchLine struct {
	Type  string       `json:"type"`
	Name  string       `json:"name,omitempty"`
	IsDir bool         `json:"is_dir,omitempty"`
	Error *ErrorDetail `json:"error,omitempty"`
}

// WatchWatching is the first line of a watch stream.
const WatchWatching = "watching"

// TimeoutRequest is the body of POST /v1/sandboxes/{id}/timeout: the
// sandbox expires timeout_s from now (0: never).
type TimeoutRequest struct {
	TimeoutS int `json:"timeout_s"`
}

// MetricsResponse answers GET /v1/sandboxes/{id}/metrics.
type MetricsResponse struct {
	Metrics []tartarus.MetricSample `json:"metrics"`
}
