package client

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"

	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus/api"
)

// Endpoint returns the URL of API path p and the headers that
// authenticate a request to it: for protocols the Client does not speak
// itself (the terminal WebSocket of package terminal).
func (c *Client) Endpoint(p string) (string, http.Header) {
	h := http.Header{}
	for k, v := range c.header {
		h[k] = v
	}
	if c.key != "" {
		h.Set("Authorization", "Bearer "+c.key)
	}
	return c.url(p, nil), h
}

// HTTPClient is the HTTP client the Client sends with.
func (c *Client) HTTPClient() *http.Client { return c.hc }

// SandboxPath is the API path of sandbox id followed by rest.
func SandboxPath(id, rest string) string { return sandboxPath(id, rest) }

// StartProcess starts a background process in a sandbox.
func (c *Client) StartProcess(ctx context.Context, id string, req *api.ProcessStart) (*tartarus.Process, error) {
	var out tartarus.Process
	return &out, c.call(ctx, "POST", sandboxPath(id, "/processes"), req, &out)
}

// ListProcesses lists a sandbox's background processes.
func (c *Client) ListProcesses(ctx context.Context, id string) ([]tartarus.Process, error) {
	var out api.ProcessList
	return out.Processes, c.call(ctx, "GET", sandboxPath(id, "/processes"), nil, &out)
}

// ProcessRef names a process in a URL: its pid, or its tag.
func ProcessRef(sel tartarus.ProcessSelector) string {
	if sel.Pid > 0 {
		return strconv.Itoa(sel.Pid)
	}
	return sel.Tag
}

// AttachProcess writes a background process's output (its recent output
// first when replay is set) to stdout and stderr until it exits.
// attached, when not nil, is called once the server follows the output.
func (c *Client) AttachProcess(ctx context.Context, id string, sel tartarus.ProcessSelector, replay bool, stdout, stderr io.Writer, attached func()) (*ExecResult, error) {
	q := url.Values{}
	if replay {
		q.Set("replay", "1")
	}
	req, err := c.request(ctx, "GET", sandboxPath(id, "/processes/"+url.PathEscape(ProcessRef(sel))+"/output"), q, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Accept", api.NDJSON)
	resp, err := c.do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	return readEvents(resp.Body, "output stream", stdout, stderr, attached)
}

// readEvents reads NDJSON exec events to the exit event, writing output
// to stdout and stderr (either may be nil); stream names it in errors.
// attached, when not nil, is called on the "attached" event.
func readEvents(body io.Reader, stream string, stdout, stderr io.Writer, attached func()) (*ExecResult, error) {
	sc := bufio.NewScanner(body)
	sc.Buffer(make([]byte, 64<<10), 64<<20)
	for sc.Scan() {
		var ev api.ExecEvent
		if err := json.Unmarshal(sc.Bytes(), &ev); err != nil {
			return nil, fmt.Errorf("%s: bad line %.100q: %w", stream, sc.Text(), err)
		}
		var w io.Writer
		switch ev.Type {
		case "attached":
			if attached != nil {
				attached()
			}
			continue
		case api.EventStdout:
			w = stdout
		case api.EventStderr:
			w = stderr
		case api.EventExit:
			res := &ExecResult{DurationMS: ev.DurationMS, TimedOut: ev.TimedOut, Signal: ev.Signal}
			if ev.ExitCode != nil {
				res.ExitCode = *ev.ExitCode
			}
			return res, nil
		case api.EventError:
			if ev.Error == nil {
				return nil, fmt.Errorf("%s: error event without detail", stream)
			}
			return nil, &Error{Status: http.StatusOK, Code: ev.Error.Code, Message: ev.Error.Message, RequestID: ev.Error.RequestID}
		default:
			continue // newer servers may add event types
		}
		if w == nil {
			continue
		}
		if _, err := io.WriteString(w, ev.Data); err != nil {
			return nil, err
		}
		if _, err := w.Write(ev.DataB64); err != nil {
			return nil, err
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("%s: %w", stream, err)
	}
	return nil, fmt.Errorf("%s: ended without an exit event (connection cut?)", stream)
}

// ProcessInput writes data to a background process's stdin, closing it
// after when closeStdin is set.
func (c *Client) ProcessInput(ctx context.Context, id string, sel tartarus.ProcessSelector, data []byte, closeStdin bool) error {
	q := url.Values{}
	if closeStdin {
		q.Set("close", "1")
	}
	req, err := c.request(ctx, "POST", sandboxPath(id, "/processes/"+url.PathEscape(ProcessRef(sel))+"/stdin"), q, bytes.NewReader(data))
	if err != nil {
		return err
	}
	resp, err := c.do(req)
	if err != nil {
		return err
	}
	return resp.Body.Close()
}

// SignalProcess sends a signal ("SIGTERM", "KILL", …) to a background
// process's process group.
func (c *Client) SignalProcess(ctx context.Context, id string, sel tartarus.ProcessSelector, signal string) error {
	return c.call(ctx, "POST", sandboxPath(id, "/processes/"+url.PathEscape(ProcessRef(sel))+"/signal"), &api.SignalRequest{Signal: signal}, nil)
}

// StatFile describes a path in a sandbox.
func (c *Client) StatFile(ctx context.Context, id, path string) (*tartarus.FileInfo, error) {
	var out tartarus.FileInfo
	req, err := c.request(ctx, "GET", sandboxPath(id, "/files/stat"), url.Values{"path": {path}}, nil)
	if err != nil {
		return nil, err
	}
	return &out, c.decode(req, &out)
}

func (c *Client) decode(req *http.Request, out any) error {
	resp, err := c.do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	return json.NewDecoder(io.LimitReader(resp.Body, 256<<20)).Decode(out)
}

// MakeDir makes a directory (and its parents when parents is set) and
// says whether it made it.
func (c *Client) MakeDir(ctx context.Context, id, path string, parents bool) (bool, error) {
	var out api.MkdirResponse
	err := c.call(ctx, "POST", sandboxPath(id, "/files/mkdir"), &api.MkdirRequest{Path: path, Parents: parents}, &out)
	return out.Created, err
}

// MoveFile renames a path in a sandbox.
func (c *Client) MoveFile(ctx context.Context, id, from, to string) (*tartarus.FileInfo, error) {
	var out tartarus.FileInfo
	return &out, c.call(ctx, "POST", sandboxPath(id, "/files/move"), &api.MoveRequest{From: from, To: to}, &out)
}

// RemoveFile removes a path in a sandbox (a non-empty directory only when
// recursive).
func (c *Client) RemoveFile(ctx context.Context, id, path string, recursive bool) error {
	q := url.Values{"path": {path}}
	if recursive {
		q.Set("recursive", "1")
	}
	return c.callQuery(ctx, "DELETE", sandboxPath(id, "/files"), q, nil, nil)
}

// ListFilesDepth lists a directory down to depth levels.
func (c *Client) ListFilesDepth(ctx context.Context, id, path string, depth int) ([]tartarus.FileInfo, error) {
	var out api.FileList
	req, err := c.request(ctx, "GET", sandboxPath(id, "/files"), url.Values{"path": {path}, "list": {"1"}, "depth": {strconv.Itoa(depth)}}, nil)
	if err != nil {
		return nil, err
	}
	return out.Files, c.decode(req, &out)
}

// Watch streams the changes below a directory to fn until ctx ends or fn
// returns an error. fn first sees a "watching" line: the watch is in place.
func (c *Client) Watch(ctx context.Context, id, path string, recursive bool, fn func(api.WatchLine) error) error {
	q := url.Values{"path": {path}}
	if recursive {
		q.Set("recursive", "1")
	}
	req, err := c.request(ctx, "GET", sandboxPath(id, "/files/watch"), q, nil)
	if err != nil {
		return err
	}
	req.Header.Set("Accept", api.NDJSON)
	resp, err := c.do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		var l api.WatchLine
		if err := json.Unmarshal(sc.Bytes(), &l); err != nil {
			return fmt.Errorf("watch stream: bad line %.100q: %w", sc.Text(), err)
		}
		if l.Type == api.EventError && l.Error != nil {
			return &Error{Status: http.StatusOK, Code: l.Error.Code, Message: l.Error.Message, RequestID: l.Error.RequestID}
		}
		if err := fn(l); err != nil {
			return err
		}
	}
	if err := sc.Err(); err != nil && ctx.Err() == nil {
		return fmt.Errorf("watch stream: %w", err)
	}
	return ctx.Err()
}

// SetTimeout makes a sandbox expire timeoutS seconds from now (0: never).
func (c *Client) SetTimeout(ctx context.Context, id string, timeoutS int) (*tartarus.Sandbox, error) {
	var out tartarus.Sandbox
	return &out, c.call(ctx, "POST", sandboxPath(id, "/timeout"), &api.TimeoutRequest{TimeoutS: timeoutS}, &out)
}

// Metrics returns a sandbox's recorded resource use, oldest first.
func (c *Client) Metrics(ctx context.Context, id string) ([]tartarus.MetricSample, error) {
	var out api.MetricsResponse
	return out.Metrics, c.call(ctx, "GET", sandboxPath(id, "/metrics"), nil, &out)
}

// ListSandboxesWithMetadata lists the caller's sandboxes whose metadata
// holds every pair of match.
func (c *Client) ListSandboxesWithMetadata(ctx context.Context, match map[string]string) ([]*tartarus.Sandbox, error) {
	q := url.Values{}
	for k, v := range match {
		q.Add("metadata", k+"="+v)
	}
	var out api.SandboxList
	req, err := c.request(ctx, "GET", "/v1/sandboxes", q, nil)
	if err != nil {
		return nil, err
	}
	return out.Sandboxes, c.decode(req, &out)
}
