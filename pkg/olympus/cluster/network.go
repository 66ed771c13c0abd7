package cluster

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/tartarus-sandbox/tartarus/pkg/client"
	"github.com/tartarus-sandbox/tartarus/pkg/hecatoncheir/wire"
	"github.com/tartarus-sandbox/tartarus/pkg/olympus"
	"github.com/tartarus-sandbox/tartarus/pkg/store"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus/api"
)

var (
	_ olympus.NetworkController = (*Cluster)(nil)
	_ olympus.PortDialer        = (*Cluster)(nil)
)

// UpdateNetwork implements olympus.NetworkController: the sandbox's node
// applies the policy, and the cluster's record takes it at once (a wake on
// another node starts from that record).
func (c *Cluster) UpdateNetwork(ctx context.Context, id string, n *tartarus.NetworkSpec) (*tartarus.Sandbox, error) {
	cl, sctx, done, err := c.agent(ctx, id)
	if err != nil {
		return nil, err
	}
	defer done()
	sb, err := cl.SetNetwork(sctx, id, n)
	if err != nil {
		return nil, settle(sctx, err)
	}
	if _, err := c.st.Report(ctx, sb.Node, sb); err != nil {
		// The node reports the change too; this only makes it visible sooner.
		c.log.Warn("record a sandbox's new network", "sandbox", id, "err", err)
	}
	return c.st.Get(ctx, id)
}

// NetworkLog implements olympus.NetworkController with the log the
// sandbox's node keeps (a sandbox woken on another node starts a new one).
func (c *Cluster) NetworkLog(ctx context.Context, id string) (*tartarus.NetworkLog, error) {
	cl, sctx, done, err := c.agent(ctx, id)
	if err != nil {
		return nil, err
	}
	defer done()
	l, err := cl.NetworkLog(sctx, id)
	return l, settle(sctx, err)
}

// DialPort implements olympus.PortDialer: a hibernated sandbox is woken
// first (by a wake command, on another node if its own went down), then the
// connection is opened through its node's node API (wire.PathDial) and
// carries the guest port's bytes. It is cut when the node goes down or the
// sandbox ends.
func (c *Cluster) DialPort(ctx context.Context, id string, port uint16) (net.Conn, error) {
	sb, err := c.st.Get(ctx, id)
	if err != nil {
		return nil, dbErr(err)
	}
	if sb.State == tartarus.StateHibernated {
		if _, err := c.Wake(ctx, id); err != nil {
			return nil, fmt.Errorf("wake sandbox %s for a request to port %d: %w", id, port, err)
		}
	}
	if sb, err = c.st.Get(ctx, id); err != nil {
		return nil, dbErr(err)
	}
	if sb.State.Final() {
		return nil, tartarus.Errorf(tartarus.ErrFailedPrecondition, "sandbox %s is %s", id, sb.State)
	}
	n, err := c.st.Node(ctx, sb.Node)
	if err != nil {
		return nil, fmt.Errorf("sandbox %s: %w", id, err)
	}
	if n.State != store.NodeUp {
		return nil, tartarus.Errorf(tartarus.ErrUnavailable, "sandbox %s: node %s is %s", id, n.Name, n.State)
	}
	sctx, done := c.track(context.WithoutCancel(ctx), sb.Node, sb.ID)
	req, err := http.NewRequestWithContext(sctx, http.MethodGet, strings.TrimRight(n.Address, "/")+fmt.Sprintf(wire.PathDial, id, port), nil)
	if err != nil {
		done()
		return nil, err
	}
	req.Header.Set("Connection", "Upgrade")
	req.Header.Set("Upgrade", wire.PortUpgrade)
	req.Header.Set(wire.TenantHeader, sb.Tenant)
	// The dial itself is bounded by the caller's context; the connection,
	// once up, lives until closed (or cut by track).
	stop := context.AfterFunc(ctx, func() { done() })
	resp, err := c.cfg.AgentClient.Do(req)
	if !stop() {
		if err == nil {
			resp.Body.Close()
		}
		return nil, settle(sctx, ctx.Err())
	}
	if err != nil {
		done()
		return nil, settle(sctx, fmt.Errorf("sandbox %s port %d on node %s: %w", id, port, sb.Node, err))
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		defer done()
		defer resp.Body.Close()
		return nil, nodeError(resp)
	}
	rwc, ok := resp.Body.(io.ReadWriteCloser)
	if !ok {
		resp.Body.Close()
		done()
		return nil, fmt.Errorf("sandbox %s port %d: node %s switched protocols without a writable connection", id, port, sb.Node)
	}
	// A switched connection no longer follows its request's context: close
	// it when the node goes down or the sandbox ends (track cancels sctx).
	context.AfterFunc(sctx, func() { rwc.Close() })
	return &portConn{rwc: rwc, done: done, node: sb.Node}, nil
}

// nodeError is the error a node API answered with, in its class.
func nodeError(resp *http.Response) error {
	data, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	var eb api.ErrorBody
	if json.Unmarshal(data, &eb) != nil || eb.Error.Code == "" {
		eb.Error = api.ErrorDetail{Code: "http_" + fmt.Sprint(resp.StatusCode), Message: strings.TrimSpace(string(data))}
	}
	return &client.Error{Status: resp.StatusCode, Code: eb.Error.Code, Message: eb.Error.Message}
}

// portConn is a connection to a guest port through its node: a net.Conn
// over the switched connection, untracked when closed.
type portConn struct {
	rwc  io.ReadWriteCloser
	done func()
	node string
}

func (p *portConn) Read(b []byte) (int, error)  { return p.rwc.Read(b) }
func (p *portConn) Write(b []byte) (int, error) { return p.rwc.Write(b) }
func (p *portConn) Close() error {
	err := p.rwc.Close()
	p.done()
	return err
}
func (p *portConn) LocalAddr() net.Addr  { return portAddr("replica") }
func (p *portConn) RemoteAddr() net.Addr { return portAddr(p.node) }

// Deadlines are not passed through the switched connection; the proxy
// over it ends with the request.
func (p *portConn) SetDeadline(time.Time) error      { return nil }
func (p *portConn) SetReadDeadline(time.Time) error  { return nil }
func (p *portConn) SetWriteDeadline(time.Time) error { return nil }

type portAddr string

func (a portAddr) Network() string { return "tartarus-port" }
func (a portAddr) String() string  { return string(a) }
