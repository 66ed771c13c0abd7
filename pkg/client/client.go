// Package client is the Go SDK of the Tartarus HTTP API: one method per
// endpoint, with exec output streamed to writers and files streamed both
// ways. The tartarus CLI is built on it.
package client

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus/api"
)

// DefaultURL is where a local server listens by default.
const DefaultURL = "http://127.0.0.1:7700"

// Client talks to one Tartarus API endpoint.
type Client struct {
	base   *url.URL
	key    string
	hc     *http.Client
	header http.Header
}

// Option changes a Client.
type Option func(*Client)

// WithHTTPClient sets the HTTP client (for TLS settings or timeouts). The
// default has no overall timeout, since exec streams may run long; bound
// calls with their context.
func WithHTTPClient(hc *http.Client) Option { return func(c *Client) { c.hc = hc } }

// WithHeader sends header k: v with every request (a cluster's servers
// use it to tell a node agent the tenant they act for).
func WithHeader(k, v string) Option {
	return func(c *Client) {
		if c.header == nil {
			c.header = http.Header{}
		}
		c.header.Set(k, v)
	}
}

// New returns a client for baseURL (for example "http://127.0.0.1:7700")
// that authenticates with apiKey when it is not empty.
func New(baseURL, apiKey string, opts ...Option) (*Client, error) {
	if baseURL == "" {
		baseURL = DefaultURL
	}
	u, err := url.Parse(strings.TrimRight(baseURL, "/"))
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("client: base URL %q: want http(s)://host:port", baseURL)
	}
	c := &Client{base: u, key: apiKey, hc: &http.Client{}}
	for _, o := range opts {
		o(c)
	}
	return c, nil
}

// Error is an error answer of the API. errors.Is matches it against the
// tartarus error classes (ErrNotFound for a 404, and so on).
type Error struct {
	Status    int
	Code      string
	Message   string
	RequestID string
}

func (e *Error) Error() string {
	s := fmt.Sprintf("%s (%d %s)", e.Message, e.Status, e.Code)
	if e.Status >= 500 && e.RequestID != "" {
		s += " request id " + e.RequestID
	}
	return s
}

// Is reports whether the answer's code is target's class (through the one
// error table, tartarus.ClassForCode).
func (e *Error) Is(target error) bool {
	c, ok := tartarus.ClassForCode(e.Code)
	return ok && c.Err == target
}

func (c *Client) url(p string, q url.Values) string {
	u := *c.base
	u.Path = c.base.Path + p
	u.RawQuery = q.Encode()
	return u.String()
}

func (c *Client) request(ctx context.Context, method, p string, q url.Values, body io.Reader) (*http.Request, error) {
	req, err := http.NewRequestWithContext(ctx, method, c.url(p, q), body)
	if err != nil {
		return nil, err
	}
	for k, v := range c.header {
		req.Header[k] = v
	}
	if c.key != "" {
		req.Header.Set("Authorization", "Bearer "+c.key)
	}
	if rs, ok := body.(io.ReadSeeker); ok && body != nil {
		if n, err := rs.Seek(0, io.SeekEnd); err == nil {
			_, _ = rs.Seek(0, io.SeekStart)
			req.ContentLength = n
		}
	}
	return req, nil
}

// do sends a request and turns non-2xx answers into *Error.
func (c *Client) do(req *http.Request) (*http.Response, error) {
	resp, err := c.hc.Do(req)
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", req.Method, req.URL.Path, err)
	}
	if resp.StatusCode/100 == 2 {
		return resp, nil
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	var eb api.ErrorBody
	if json.Unmarshal(data, &eb) != nil || eb.Error.Code == "" {
		eb.Error = api.ErrorDetail{Code: "http_" + strconv.Itoa(resp.StatusCode), Message: strings.TrimSpace(string(data))}
	}
	if eb.Error.Message == "" {
		eb.Error.Message = resp.Status
	}
	return nil, &Error{Status: resp.StatusCode, Code: eb.Error.Code, Message: eb.Error.Message, RequestID: eb.Error.RequestID}
}

// call sends in (JSON, if not nil) and decodes the answer into out (if not nil).
func (c *Client) call(ctx context.Context, method, p string, in, out any) error {
	return c.callQuery(ctx, method, p, nil, in, out)
}

// callQuery is call with a query string.
func (c *Client) callQuery(ctx context.Context, method, p string, q url.Values, in, out any) error {
	var body io.Reader
	if in != nil {
		data, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = bytes.NewReader(data)
	}
	req, err := c.request(ctx, method, p, q, body)
	if err != nil {
		return err
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if out == nil {
		_, _ = io.Copy(io.Discard, resp.Body)
		return nil
	}
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		return fmt.Errorf("%s %s: decode answer: %w", method, p, err)
	}
	return nil
}

func sandboxPath(id string, rest string) string { return "/v1/sandboxes/" + url.PathEscape(id) + rest }

// CreateSandbox creates a sandbox and returns it running.
func (c *Client) CreateSandbox(ctx context.Context, req *tartarus.CreateRequest) (*tartarus.Sandbox, error) {
	var sb tartarus.Sandbox
	return &sb, c.call(ctx, "POST", "/v1/sandboxes", req, &sb)
}

// ListSandboxes lists the caller's sandboxes.
func (c *Client) ListSandboxes(ctx context.Context) ([]*tartarus.Sandbox, error) {
	var out api.SandboxList
	return out.Sandboxes, c.call(ctx, "GET", "/v1/sandboxes", nil, &out)
}

// GetSandbox returns one sandbox.
func (c *Client) GetSandbox(ctx context.Context, id string) (*tartarus.Sandbox, error) {
	var sb tartarus.Sandbox
	return &sb, c.call(ctx, "GET", sandboxPath(id, ""), nil, &sb)
}

// DeleteSandbox destroys a sandbox and returns its final record.
func (c *Client) DeleteSandbox(ctx context.Context, id string) (*tartarus.Sandbox, error) {
	var sb tartarus.Sandbox
	return &sb, c.call(ctx, "DELETE", sandboxPath(id, ""), nil, &sb)
}

// TerminateSandbox ends a sandbox as opts say (grace period, signal,
// checkpoint, reason, callback) and returns the termination as it starts;
// Termination follows it.
func (c *Client) TerminateSandbox(ctx context.Context, id string, opts *tartarus.ShutdownOptions) (*tartarus.TerminationStatus, error) {
	q := url.Values{"grace_s": {strconv.Itoa(int(opts.GracePeriod / time.Second))}}
	if opts.Signal != "" {
		q.Set("signal", string(opts.Signal))
	}
	if opts.CreateCheckpoint {
		q.Set("checkpoint", "true")
	}
	if opts.Reason != "" {
		q.Set("reason", string(opts.Reason))
	}
	if opts.CallbackURL != "" {
		q.Set("callback_url", opts.CallbackURL)
	}
	var st tartarus.TerminationStatus
	return &st, c.callQuery(ctx, "DELETE", sandboxPath(id, ""), q, nil, &st)
}

// Termination reports a sandbox's termination.
func (c *Client) Termination(ctx context.Context, id string) (*tartarus.TerminationStatus, error) {
	var st tartarus.TerminationStatus
	return &st, c.call(ctx, "GET", sandboxPath(id, "/termination"), nil, &st)
}

// DrainNode drains a node: no new sandboxes go to it, and its sandboxes end
// or (opts.Hibernate) hibernate and move.
func (c *Client) DrainNode(ctx context.Context, name string, opts tartarus.DrainOptions) (*tartarus.DrainReport, error) {
	var rep tartarus.DrainReport
	return &rep, c.call(ctx, "POST", "/v1/nodes/"+url.PathEscape(name)+"/drain", opts, &rep)
}

// UndrainNode lets a drained cluster node take sandboxes again.
func (c *Client) UndrainNode(ctx context.Context, name string) error {
	return c.call(ctx, "POST", "/v1/nodes/"+url.PathEscape(name)+"/undrain", nil, nil)
}

// Checkpoint takes a restorable checkpoint of a running sandbox.
func (c *Client) Checkpoint(ctx context.Context, id string) (*tartarus.Checkpoint, error) {
	var ck tartarus.Checkpoint
	return &ck, c.call(ctx, "POST", sandboxPath(id, "/checkpoint"), nil, &ck)
}

// Checkpoints lists the caller's checkpoints.
func (c *Client) Checkpoints(ctx context.Context) ([]*tartarus.Checkpoint, error) {
	var l api.CheckpointList
	return l.Checkpoints, c.call(ctx, "GET", "/v1/checkpoints", nil, &l)
}

func (c *Client) action(ctx context.Context, id, verb string) (*tartarus.Sandbox, error) {
	var sb tartarus.Sandbox
	return &sb, c.call(ctx, "POST", sandboxPath(id, "/"+verb), nil, &sb)
}

// Pause freezes a sandbox.
func (c *Client) Pause(ctx context.Context, id string) (*tartarus.Sandbox, error) {
	return c.action(ctx, id, "pause")
}

// Resume continues a paused sandbox.
func (c *Client) Resume(ctx context.Context, id string) (*tartarus.Sandbox, error) {
	return c.action(ctx, id, "resume")
}

// Hibernate puts a sandbox to sleep (snapshot to disk, memory freed); its
// answer shows the stored snapshot's size in SnapshotBytes.
func (c *Client) Hibernate(ctx context.Context, id string) (*tartarus.Sandbox, error) {
	return c.action(ctx, id, "hibernate")
}

// Wake brings a hibernated sandbox back. Exec and file calls wake a
// hibernated sandbox by themselves.
func (c *Client) Wake(ctx context.Context, id string) (*tartarus.Sandbox, error) {
	return c.action(ctx, id, "wake")
}

// Fork makes count independent copies of a running sandbox (files and
// processes included) and returns them running.
func (c *Client) Fork(ctx context.Context, id string, count int) ([]*tartarus.Sandbox, error) {
	var out api.SandboxList
	return out.Sandboxes, c.call(ctx, "POST", sandboxPath(id, "/fork"), api.ForkRequest{Count: count}, &out)
}

// SaveTemplate makes template name, of the caller's tenant, from a running
// sandbox's disk and memory: sandboxes created from it start where this
// one was.
func (c *Client) SaveTemplate(ctx context.Context, id, name string) (*tartarus.Image, error) {
	var out tartarus.Image
	if err := c.call(ctx, "POST", sandboxPath(id, "/template"), api.SaveTemplateRequest{Name: name}, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// Exec runs a command and returns its buffered output.
func (c *Client) Exec(ctx context.Context, id string, req *api.ExecRequest) (*api.ExecResponse, error) {
	var out api.ExecResponse
	return &out, c.call(ctx, "POST", sandboxPath(id, "/exec"), req, &out)
}

// ExecResult is how a streamed command ended.
type ExecResult struct {
	ExitCode   int
	DurationMS int64
	TimedOut   bool
	Signal     string
}

// ExecStream runs a command and writes its output to stdout and stderr
// (either may be nil) as it arrives.
func (c *Client) ExecStream(ctx context.Context, id string, in *api.ExecRequest, stdout, stderr io.Writer) (*ExecResult, error) {
	data, err := json.Marshal(in)
	if err != nil {
		return nil, err
	}
	req, err := c.request(ctx, "POST", sandboxPath(id, "/exec"), nil, bytes.NewReader(data))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Accept", api.NDJSON)
	resp, err := c.do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	return readEvents(resp.Body, "exec stream", stdout, stderr, nil)
}

// WriteFile streams r into path in the sandbox. When r is an *os.File or
// another io.ReadSeeker its size is sent up front.
func (c *Client) WriteFile(ctx context.Context, id, path string, mode os.FileMode, r io.Reader) error {
	q := url.Values{"path": {path}, "mode": {fmt.Sprintf("%04o", mode.Perm())}}
	req, err := c.request(ctx, "PUT", sandboxPath(id, "/files"), q, r)
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/octet-stream")
	resp, err := c.do(req)
	if err != nil {
		return err
	}
	resp.Body.Close()
	return nil
}

// ReadFile streams a file out of the sandbox. The caller closes it; a read
// error before EOF means the transfer was cut.
func (c *Client) ReadFile(ctx context.Context, id, path string) (io.ReadCloser, error) {
	req, err := c.request(ctx, "GET", sandboxPath(id, "/files"), url.Values{"path": {path}}, nil)
	if err != nil {
		return nil, err
	}
	resp, err := c.do(req)
	if err != nil {
		return nil, err
	}
	return resp.Body, nil
}

// ListFiles lists a directory in the sandbox.
func (c *Client) ListFiles(ctx context.Context, id, path string) ([]tartarus.FileInfo, error) {
	req, err := c.request(ctx, "GET", sandboxPath(id, "/files"), url.Values{"path": {path}, "list": {"1"}}, nil)
	if err != nil {
		return nil, err
	}
	resp, err := c.do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var fl api.FileList
	if err := json.NewDecoder(resp.Body).Decode(&fl); err != nil {
		return nil, fmt.Errorf("list files: %w", err)
	}
	return fl.Files, nil
}

// Templates lists the built templates.
func (c *Client) Templates(ctx context.Context) ([]*tartarus.Image, error) {
	var out api.TemplateList
	return out.Templates, c.call(ctx, "GET", "/v1/templates", nil, &out)
}

// Nodes lists the nodes and their runtimes.
func (c *Client) Nodes(ctx context.Context) (*api.NodeList, error) {
	var out api.NodeList
	return &out, c.call(ctx, "GET", "/v1/nodes", nil, &out)
}

// ForgetNode removes a cluster's node that went down for good.
func (c *Client) ForgetNode(ctx context.Context, name string) error {
	return c.call(ctx, "DELETE", "/v1/nodes/"+url.PathEscape(name), nil, nil)
}

// Health returns nil when the server can create sandboxes.
func (c *Client) Health(ctx context.Context) error {
	return c.call(ctx, "GET", "/healthz", nil, nil)
}
