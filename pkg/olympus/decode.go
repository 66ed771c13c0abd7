package olympus

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"path"
	"strings"
	"time"

	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus/api"
)

// Bounds of an exec request.
const (
	maxExecTimeoutS = 24 * 3600
	maxArgs         = 4096
	maxPathLen      = 4096
)

// decodeJSON reads one JSON value of at most limit bytes into v, rejecting
// unknown fields and trailing data.
func decodeJSON(r io.Reader, limit int64, v any) error {
	data, err := io.ReadAll(io.LimitReader(r, limit+1))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return tartarus.Errorf(tartarus.ErrTooLarge, "request body over its limit of %d bytes", limit)
		}
		return tartarus.Errorf(tartarus.ErrInvalid, "read body: %v", err)
	}
	if int64(len(data)) > limit {
		return tartarus.Errorf(tartarus.ErrTooLarge, "request body over its limit of %d bytes", limit)
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return tartarus.Errorf(tartarus.ErrInvalid, "malformed JSON body: %v", err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return tartarus.Errorf(tartarus.ErrInvalid, "malformed JSON body: data after the JSON value")
	}
	return nil
}

// decodeCreate parses and checks a create body. Host limits (memory, CPUs)
// are the node agent's to check.
func decodeCreate(r io.Reader) (*tartarus.CreateRequest, error) {
	var req tartarus.CreateRequest
	if err := decodeJSON(r, MaxJSONBody, &req); err != nil {
		return nil, err
	}
	if req.MemoryMB < 0 || req.CPUs < 0 || req.TimeoutS < 0 {
		return nil, tartarus.Errorf(tartarus.ErrInvalid, "memory_mb, cpus and timeout_s must not be negative")
	}
	if req.Runtime != "" && !tartarus.ValidName(req.Runtime) {
		return nil, tartarus.Errorf(tartarus.ErrInvalid, "runtime %q is not a valid name", req.Runtime)
	}
	for k, v := range req.Metadata {
		if len(k) == 0 || len(k) > 256 || len(v) > 4096 {
			return nil, tartarus.Errorf(tartarus.ErrInvalid, "metadata: keys 1-256 bytes, values at most 4096")
		}
	}
	if err := req.Normalize(); err != nil {
		return nil, err
	}
	return &req, nil
}

// decodeExec parses and checks an exec body into a runtime request (without
// its writers).
func decodeExec(r io.Reader) (*tartarus.ExecRequest, error) {
	var req api.ExecRequest
	if err := decodeJSON(r, maxExecBody, &req); err != nil {
		return nil, err
	}
	switch {
	case len(req.Cmd) == 0 || req.Cmd[0] == "":
		return nil, tartarus.Errorf(tartarus.ErrInvalid, "cmd: must name a command")
	case len(req.Cmd) > maxArgs:
		return nil, tartarus.Errorf(tartarus.ErrInvalid, "cmd: at most %d arguments", maxArgs)
	case len(req.Stdin) > MaxExecStdin:
		return nil, tartarus.Errorf(tartarus.ErrTooLarge, "stdin is limited to %d bytes", MaxExecStdin)
	case req.TimeoutS < 0 || req.TimeoutS > maxExecTimeoutS:
		return nil, tartarus.Errorf(tartarus.ErrInvalid, "timeout_s %d: must be between 0 and %d", req.TimeoutS, maxExecTimeoutS)
	case len(req.Env) > tartarus.MaxEnvEntries:
		return nil, tartarus.Errorf(tartarus.ErrInvalid, "env: at most %d entries", tartarus.MaxEnvEntries)
	}
	for _, a := range req.Cmd {
		if strings.IndexByte(a, 0) >= 0 {
			return nil, tartarus.Errorf(tartarus.ErrInvalid, "cmd: arguments must not contain NUL")
		}
	}
	if err := tartarus.ValidEnv(req.Env); err != nil {
		return nil, err
	}
	if err := tartarus.ValidUser(req.User); err != nil {
		return nil, err
	}
	out := &tartarus.ExecRequest{Cmd: req.Cmd, Env: req.Env, User: req.User, Timeout: time.Duration(req.TimeoutS) * time.Second}
	if req.Cwd != "" {
		cwd, err := sandboxPath(req.Cwd)
		if err != nil {
			return nil, fmt.Errorf("cwd: %w", err)
		}
		out.Cwd = cwd
	}
	if req.Stdin != "" {
		out.Stdin = strings.NewReader(req.Stdin)
	}
	return out, nil
}

// sandboxPath checks a path inside a sandbox: absolute, no "..", no NUL,
// bounded; it returns the cleaned path.
func sandboxPath(p string) (string, error) {
	switch {
	case p == "":
		return "", tartarus.Errorf(tartarus.ErrInvalid, "path is required")
	case len(p) > maxPathLen:
		return "", tartarus.Errorf(tartarus.ErrInvalid, "path is longer than %d bytes", maxPathLen)
	case !strings.HasPrefix(p, "/"):
		return "", tartarus.Errorf(tartarus.ErrInvalid, "path %q must be absolute", p)
	case strings.IndexByte(p, 0) >= 0:
		return "", tartarus.Errorf(tartarus.ErrInvalid, "path must not contain NUL")
	}
	for _, seg := range strings.Split(p, "/") {
		if seg == ".." {
			return "", tartarus.Errorf(tartarus.ErrInvalid, "path %q must not contain '..'", p)
		}
	}
	return path.Clean(p), nil
}
