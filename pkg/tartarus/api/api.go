// Package api holds the JSON shapes of the Tartarus HTTP API that are not
// domain types. With package tartarus it is the public contract: the server
// (pkg/olympus) and the Go SDK (pkg/client) both speak it, and the SDK links
// nothing else of Tartarus.
package api

import (
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

// ExecRequest is the body of POST /v1/sandboxes/{id}/exec.
type ExecRequest struct {
	Cmd      []string          `json:"cmd"`
	Env      map[string]string `json:"env,omitempty"`
	Cwd      string            `json:"cwd,omitempty"`
	Stdin    string            `json:"stdin,omitempty"`
	TimeoutS int               `json:"timeout_s,omitempty"`
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
