package cluster

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/tartarus-sandbox/tartarus/pkg/client"
	"github.com/tartarus-sandbox/tartarus/pkg/hecatoncheir/wire"
	"github.com/tartarus-sandbox/tartarus/pkg/store"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus/api"
)

// agent returns a client of the node API holding sandbox id, acting for
// the sandbox's tenant, and a context for the call that ends (with the
// reason as its cause) when the node goes down or the sandbox ends, so a
// forwarded stream does not hang on a dead node. A hibernated sandbox
// whose node went down is woken elsewhere first. Call done when the call
// is over.
func (c *Cluster) agent(ctx context.Context, id string) (*client.Client, context.Context, func(), error) {
	sb, err := c.st.Get(ctx, id)
	if err != nil {
		return nil, nil, nil, dbErr(err)
	}
	if sb.Node == "" && sb.State == tartarus.StateHibernated {
		if sb, err = c.adopt(ctx, sb); err != nil {
			return nil, nil, nil, err
		}
	}
	if sb.State.Final() {
		return nil, nil, nil, tartarus.Errorf(tartarus.ErrFailedPrecondition, "sandbox %s is %s", id, sb.State)
	}
	n, err := c.st.Node(ctx, sb.Node)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("sandbox %s: %w", id, err)
	}
	if n.State != store.NodeUp {
		return nil, nil, nil, tartarus.Errorf(tartarus.ErrUnavailable, "sandbox %s: node %s is %s", id, n.Name, n.State)
	}
	cl, err := client.New(n.Address, "", client.WithHTTPClient(c.cfg.AgentClient), client.WithHeader(wire.TenantHeader, sb.Tenant))
	if err != nil {
		return nil, nil, nil, err
	}
	sctx, done := c.track(ctx, sb.Node, sb.ID)
	return cl, sctx, done, nil
}

// stream is a call forwarded to a node, cancelled by kill broadcasts.
type stream struct {
	node, sandbox string
	cancel        context.CancelCauseFunc
}

// track registers a forwarded call to node about sandbox.
func (c *Cluster) track(ctx context.Context, node, sandbox string) (context.Context, func()) {
	sctx, cancel := context.WithCancelCause(ctx)
	st := &stream{node: node, sandbox: sandbox, cancel: cancel}
	c.mu.Lock()
	c.streams[st] = struct{}{}
	c.mu.Unlock()
	return sctx, func() {
		c.mu.Lock()
		delete(c.streams, st)
		c.mu.Unlock()
		cancel(nil)
	}
}

// kill ends the forwarded calls that match, with cause (c.mu held).
func (c *Cluster) kill(match func(*stream) bool, cause error) {
	for st := range c.streams {
		if match(st) {
			st.cancel(cause)
		}
	}
}

// settle turns the error of a forwarded call cut by a kill broadcast into
// its cause.
func settle(ctx context.Context, err error) error {
	if err != nil && ctx.Err() != nil {
		if cause := context.Cause(ctx); cause != nil && !errors.Is(cause, context.Canceled) {
			return cause
		}
	}
	return err
}

// Exec implements olympus.Backend by running the command through the
// sandbox's node.
func (c *Cluster) Exec(ctx context.Context, id string, req *tartarus.ExecRequest) (*tartarus.ExecResult, error) {
	cl, sctx, done, err := c.agent(ctx, id)
	if err != nil {
		return nil, err
	}
	defer done()
	in := &api.ExecRequest{Cmd: req.Cmd, Env: req.Env, Cwd: req.Cwd, User: req.User}
	if req.Timeout > 0 {
		in.TimeoutS = int((req.Timeout + time.Second - 1) / time.Second)
	}
	if req.Stdin != nil {
		data, err := io.ReadAll(io.LimitReader(req.Stdin, 64<<20))
		if err != nil {
			return nil, fmt.Errorf("exec %s: stdin: %w", id, err)
		}
		in.Stdin = string(data)
	}
	res, err := cl.ExecStream(sctx, id, in, req.Stdout, req.Stderr)
	if err != nil {
		return nil, settle(sctx, err)
	}
	return &tartarus.ExecResult{ExitCode: res.ExitCode, Signal: res.Signal, TimedOut: res.TimedOut,
		Duration: time.Duration(res.DurationMS) * time.Millisecond}, nil
}

// ReadFile implements olympus.Backend.
func (c *Cluster) ReadFile(ctx context.Context, id, path string) (io.ReadCloser, error) {
	cl, sctx, done, err := c.agent(ctx, id)
	if err != nil {
		return nil, err
	}
	rc, err := cl.ReadFile(sctx, id, path)
	if err != nil {
		done()
		return nil, settle(sctx, err)
	}
	return &trackedBody{ReadCloser: rc, ctx: sctx, done: done}, nil
}

// trackedBody is a forwarded download: it stays tracked until closed.
type trackedBody struct {
	io.ReadCloser
	ctx  context.Context
	done func()
}

func (b *trackedBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if err != nil && err != io.EOF {
		err = settle(b.ctx, err)
	}
	return n, err
}

func (b *trackedBody) Close() error {
	err := b.ReadCloser.Close()
	b.done()
	return err
}

// WriteFile implements olympus.Backend.
func (c *Cluster) WriteFile(ctx context.Context, id, path string, mode os.FileMode, r io.Reader) error {
	cl, sctx, done, err := c.agent(ctx, id)
	if err != nil {
		return err
	}
	defer done()
	return settle(sctx, cl.WriteFile(sctx, id, path, mode, r))
}

// ListFiles implements olympus.Backend.
func (c *Cluster) ListFiles(ctx context.Context, id, path string) ([]tartarus.FileInfo, error) {
	cl, sctx, done, err := c.agent(ctx, id)
	if err != nil {
		return nil, err
	}
	defer done()
	files, err := cl.ListFiles(sctx, id, path)
	return files, settle(sctx, err)
}
