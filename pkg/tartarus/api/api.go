// Package api holds the JSON shapes of the Tartarus HTTP API that are not
// domain types. With package tartarus it is the public contract: the server
// (pkg/olympus) and the Go SDK (pkg/client) both speak it, and the SDK links
// nothing else of Tartarus.
package api

import (
	"time"

	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

// ExecRequest is the body of POST /v1/sandboxes/{id}/exec.
type ExecRequest struct {
	Cmd      []string          `json:"cmd"`
	Env      map[string]string `json:"env,omitempty"`
	Cwd      string            `json:"cwd,omitempty"`
	Stdin    string            `json:"stdin,omitempty"`
	TimeoutS int               `json:"timeout_s,omitempty"`
	// User runs the command as a user of the sandbox: "NAME", "UID",
	// "NAME:GROUP" or "UID:GID". Empty means the template's user (root
	// unless its image set USER); cwd empty means the template's
	// working directory ("/" unless its image set WORKDIR).
	User string `json:"user,omitempty"`
}

// ExecResponse is the plain (non-streaming) answer to an exec.
type ExecResponse struct {
	ExitCode   int    `json:"exit_code"`
	Stdout     string `json:"stdout"`
	Stderr     string `json:"stderr"`
	DurationMS int64  `json:"duration_ms"`
	TimedOut   bool   `json:"timed_out,omitempty"`
	Signal     string `json:"signal,omitempty"`
	// Truncated is set when an output stream exceeded what the server
	// buffers (16 MiB); stream with NDJSON to get all of it.
	Truncated bool `json:"truncated,omitempty"`
}

// Exec event types of the NDJSON stream.
const (
	EventStdout = "stdout"
	EventStderr = "stderr"
	EventExit   = "exit"
	EventError  = "error"
)

// NDJSON is the media type of the streaming exec answer.
const NDJSON = "application/x-ndjson"

// ExecEvent is one line of the NDJSON exec stream. Output is in Data when
// it is valid UTF-8, otherwise base64 in DataB64.
type ExecEvent struct {
	Type       string       `json:"type"`
	Data       string       `json:"data,omitempty"`
	DataB64    []byte       `json:"data_b64,omitempty"`
	ExitCode   *int         `json:"exit_code,omitempty"`
	DurationMS int64        `json:"duration_ms,omitempty"`
	TimedOut   bool         `json:"timed_out,omitempty"`
	Signal     string       `json:"signal,omitempty"`
	Error      *ErrorDetail `json:"error,omitempty"`
}

// ErrorBody is the JSON shape of every error answer.
type ErrorBody struct {
	Error ErrorDetail `json:"error"`
}

// ErrorDetail is the inside of ErrorBody.
type ErrorDetail struct {
	Code    string `json:"code"`
	Message string `json:"message"`
	// RequestID helps find the logged detail of a 500.
	RequestID string `json:"request_id,omitempty"`
}

// SandboxList is the answer of GET /v1/sandboxes.
type SandboxList struct {
	Sandboxes []*tartarus.Sandbox `json:"sandboxes"`
}

// ForkRequest is the body of POST /v1/sandboxes/{id}/fork; the answer is a
// SandboxList of the copies. Count defaults to 1.
type ForkRequest struct {
	Count int `json:"count,omitempty"`
}

// MaxForkCount bounds ForkRequest.Count.
const MaxForkCount = 16

// TemplateList is the answer of GET /v1/templates.
type TemplateList struct {
	Templates []*tartarus.Image `json:"templates"`
}

// NodeList is the answer of GET /v1/nodes.
type NodeList struct {
	Nodes []*tartarus.NodeInfo `json:"nodes"`
}

// FileList is the answer of GET /v1/sandboxes/{id}/files?path=DIR&list=1.
type FileList struct {
	Path  string              `json:"path"`
	Files []tartarus.FileInfo `json:"files"`
}

// TerminationList is the answer of GET /v1/terminations.
type TerminationList struct {
	Terminations []*tartarus.TerminationStatus `json:"terminations"`
}

// CheckpointList is the answer of GET /v1/checkpoints.
type CheckpointList struct {
	Checkpoints []*tartarus.Checkpoint `json:"checkpoints"`
}

// SaveTemplateRequest is the body of POST /v1/sandboxes/{id}/template; the
// answer (201) is the new template.
type SaveTemplateRequest struct {
	Name string `json:"name"`
}

// TemplateBuildRequest is a Dockerfile build's parameters, from the query
// of POST /v1/templates (whose body is the build context as a tar stream).
type TemplateBuildRequest struct {
	Name string
	// Dockerfile is its path in the context ("" means Dockerfile).
	Dockerfile string
	Args       map[string]string
	MemoryMB   int
	CPUs       int
	TimeoutS   int
	// ReadyTimeoutS bounds the wait for READY.
	ReadyTimeoutS int
	// Network is the build sandboxes' network (nil: none).
	Network *tartarus.NetworkSpec
}

// TemplateBuild is a build's state: the answer of POST /v1/templates.
type TemplateBuild struct {
	ID     string `json:"id"`
	Name   string `json:"name"`
	Status string `json:"status"` // running, succeeded, failed
	Error  string `json:"error,omitempty"`
}

// The states of a TemplateBuild.
const (
	TemplateBuildRunning   = "running"
	TemplateBuildSucceeded = "succeeded"
	TemplateBuildFailed    = "failed"
)

// TemplateBuildEvent is one line of GET /v1/templates/{name}/builds/{id}
// (NDJSON).
type TemplateBuildEvent struct {
	Time time.Time `json:"time"`
	// Type is "step" (a step starts; Cached when it was found in the
	// cache), "output" (Stream and Data), "error" or "done".
	Type   string `json:"type"`
	Step   int    `json:"step,omitempty"`
	Total  int    `json:"total,omitempty"`
	Text   string `json:"text,omitempty"`
	Cached bool   `json:"cached,omitempty"`
	Stream string `json:"stream,omitempty"`
	Data   string `json:"data,omitempty"`
	// ExitCode is a failed step's exit code.
	ExitCode *int `json:"exit_code,omitempty"`
	// Status ends the log: succeeded or failed.
	Status     string `json:"status,omitempty"`
	Template   string `json:"template,omitempty"`
	DurationMS int64  `json:"duration_ms,omitempty"`
}

// TemplateBuildLog is a build's log as it grows.
type TemplateBuildLog interface {
	// Events returns the events from index from on, whether the build is
	// over, and a channel closed at the next event.
	Events(from int) (events []TemplateBuildEvent, over bool, changed <-chan struct{})
}

// Size limits of template uploads: a build context, an image tarball.
const (
	MaxTemplateContextBytes = 1 << 30
	MaxTemplateImageBytes   = 8 << 30
)

// PortToken is a sandbox's port access token (GET
// /v1/sandboxes/{id}/ports/token): sent in Header, or once in the query as
// QueryParam (then a cookie), it reaches the sandbox's exposed ports
// without other credentials.
type PortToken struct {
	SandboxID  string `json:"sandbox_id"`
	Token      string `json:"token"`
	Header     string `json:"header"`
	QueryParam string `json:"query_param"`
}
