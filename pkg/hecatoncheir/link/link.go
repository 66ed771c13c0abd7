// Package link is a node agent's link to the API servers of a multi-node
// Tartarus (`tartarus agent`): it heartbeats the node's status and
// sandboxes, takes the servers' commands and posts their results, reports
// the state changes the agent makes on its own, and serves the node API
// the servers forward exec and file streams to. The protocol is
// pkg/hecatoncheir/wire.
//
// Every call goes to one of Config.Servers, round robin: a server that
// fails (no answer, 5xx) is left for the next one. Commands are done at
// most once at a time each (a command delivered again while it runs is
// skipped), in delivery order for one sandbox and concurrently for
// different ones; the hecatoncheir calls they use are idempotent, so a
// command delivered again after it finished does nothing new.
package link

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/tartarus-sandbox/tartarus/pkg/clock"
	"github.com/tartarus-sandbox/tartarus/pkg/hecatoncheir"
	"github.com/tartarus-sandbox/tartarus/pkg/hecatoncheir/wire"
	"github.com/tartarus-sandbox/tartarus/pkg/olympus"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

// Config wires a Link.
type Config struct {
	// Agent is the node agent, opened over a store made by Watch.
	Agent *hecatoncheir.Agent
	// Builds, when set, runs the template builds and image imports the
	// servers forward to the node API (pkg/templates' Builder).
	Builds olympus.TemplateBuilds
	// Changes are the sandbox changes noted by the store Watch made; the
	// link reports them. Nil sends no reports (heartbeats still do).
	Changes *Changes
	// Servers are the base URLs (https://HOST:PORT) of the servers'
	// agent listeners.
	Servers []string
	// TLS is the client side of mutual TLS: the agent's certificate and
	// the CA that signed the servers'.
	TLS *tls.Config
	// ClientCAs verify the servers' certificates when they call the node
	// API (Handler).
	ClientCAs *x509.CertPool
	// ServerNames are the service names the servers' certificates carry
	// ("service:NAME"); only they may call the node API. Default
	// DefaultServerName. A tenant's own service certificate from the same
	// CA must not reach the node API, where the tenant is the caller's to
	// name.
	ServerNames []string

	// Address is the node API as the servers reach it, https://HOST:PORT.
	Address string
	Labels  map[string]string
	// SharedSnapshots: snapshots live in storage other nodes share.
	SharedSnapshots bool
	// CapacityMemoryMB caps the memory the node offers placement (the
	// agent's --capacity-memory-mb); 0: the host's.
	CapacityMemoryMB int
	Version          string

	Clock clock.Clock
	Log   *slog.Logger
	// HeartbeatInterval until the server says otherwise (default
	// wire.DefaultHeartbeatInterval); PollWait is the commands long poll's
	// wait (default wire.DefaultPollWait).
	HeartbeatInterval time.Duration
	PollWait          time.Duration
	// MaxBackoff bounds the wait between retries of a failed call
	// (default 5s).
	MaxBackoff time.Duration
}

// Validate reports every problem of c at once.
func (c *Config) Validate() error {
	var errs []error
	if c.Agent == nil {
		errs = append(errs, errors.New("no node agent"))
	}
	if c.ClientCAs == nil {
		errs = append(errs, errors.New("no client CAs to verify the servers calling the node API"))
	}
	if len(c.Servers) == 0 {
		errs = append(errs, errors.New("no server URL"))
	}
	for _, s := range c.Servers {
		if err := checkURL(s); err != nil {
			errs = append(errs, fmt.Errorf("server %w", err))
		}
	}
	if c.Address != "" {
		if err := checkURL(c.Address); err != nil {
			errs = append(errs, fmt.Errorf("advertised address %w", err))
		}
	}
	for k, v := range c.Labels {
		// The same rule as a create's node_labels, so every label can be asked for.
		if !tartarus.ValidLabel(k) || !tartarus.ValidLabel(v) {
			errs = append(errs, fmt.Errorf("label %q=%q: want 1-63 characters of a-z, A-Z, 0-9, '-', '_', '.', '/' on each side", k, v))
		}
	}
	return errors.Join(errs...)
}

// checkURL accepts http(s)://HOST:PORT with no path beyond "/".
func checkURL(s string) error {
	u, err := url.Parse(s)
	if err != nil {
		return fmt.Errorf("URL %q: %w", s, err)
	}
	if (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" || strings.Trim(u.Path, "/") != "" || u.RawQuery != "" {
		return fmt.Errorf("URL %q: want https://HOST:PORT", s)
	}
	return nil
}

// Link is a running agent's connection to the servers.
type Link struct {
	cfg     Config
	agent   *hecatoncheir.Agent
	log     *slog.Logger
	client  *http.Client
	api     http.Handler
	started time.Time

	mu       sync.Mutex
	next     int                       // the server to call first
	inflight map[string]bool           // command ids queued or running
	queues   map[string][]wire.Command // by sandbox, while a worker runs
	dropOf   map[string]wire.Drop      // the Drop of each queued drop
	// done holds the last maxDone commands whose result a server took: a
	// poll answered just before a result landed delivers its command once
	// more, and doing it again after later commands of the sandbox (a
	// pause after the resume that followed it) would undo them.
	done      map[string]bool
	doneOrder []string
	settled   chan struct{} // a token when a command finished
	workers   sync.WaitGroup
}

// New checks cfg and returns a Link; Run starts it.
func New(cfg Config) (*Link, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("agent link: %w", err)
	}
	if cfg.Clock == nil {
		cfg.Clock = clock.System{}
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.HeartbeatInterval <= 0 {
		cfg.HeartbeatInterval = wire.DefaultHeartbeatInterval
	}
	if cfg.PollWait <= 0 {
		cfg.PollWait = wire.DefaultPollWait
	}
	if cfg.MaxBackoff <= 0 {
		cfg.MaxBackoff = 5 * time.Second
	}
	servers := make([]string, len(cfg.Servers))
	for i, s := range cfg.Servers {
		servers[i] = strings.TrimRight(s, "/")
	}
	cfg.Servers = servers
	tr := http.DefaultTransport.(*http.Transport).Clone()
	if cfg.TLS != nil {
		tr.TLSClientConfig = cfg.TLS.Clone()
	}
	if len(cfg.ServerNames) == 0 {
		cfg.ServerNames = []string{DefaultServerName}
	}
	api, err := newNodeAPI(&cfg)
	if err != nil {
		return nil, err
	}
	return &Link{cfg: cfg, agent: cfg.Agent, log: cfg.Log.With("component", "link"),
		client: &http.Client{Transport: tr}, api: api, started: cfg.Clock.Now().UTC(),
		inflight: map[string]bool{}, queues: map[string][]wire.Command{}, dropOf: map[string]wire.Drop{},
		done: map[string]bool{}, settled: make(chan struct{}, 1)}, nil
}

// Run heartbeats, takes commands and sends reports until ctx ends, then
// waits for the commands already running to finish.
func (l *Link) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	wg.Go(func() { l.heartbeats(ctx) })
	wg.Go(func() { l.poll(ctx) })
	if l.cfg.Changes != nil {
		wg.Go(func() { l.reports(ctx) })
	}
	wg.Wait()
	l.workers.Wait()
	return nil
}

// heartbeats sends a heartbeat every interval: a Full one first and
// whenever the server asks for one (Resync) or the last Full one failed.
func (l *Link) heartbeats(ctx context.Context) {
	full := true
	interval := l.cfg.HeartbeatInterval
	failures := 0
	for ctx.Err() == nil {
		hb, err := l.heartbeat(ctx, full)
		if err == nil {
			var reply wire.HeartbeatReply
			if err = l.call(ctx, http.MethodPost, wire.PathHeartbeat, hb, &reply); err == nil {
				if failures > 0 {
					l.log.Info("heartbeats answered again", "after_failures", failures)
				}
				failures = 0
				full = reply.Resync
				if reply.Interval > 0 {
					interval = reply.Interval
				}
				for _, d := range reply.Drop {
					l.enqueue(ctx, wire.Command{ID: "drop/" + d.SandboxID, Kind: kindDrop, SandboxID: d.SandboxID},
						&d)
				}
			}
		}
		if err != nil && ctx.Err() == nil {
			failures++
			if failures == 1 || failures%30 == 0 {
				l.log.Warn("heartbeat failed", "full", full, "failures", failures, "err", err)
			}
		}
		l.sleep(ctx, interval)
	}
}

// heartbeat describes this node, and when full every sandbox it holds.
func (l *Link) heartbeat(ctx context.Context, full bool) (*wire.Heartbeat, error) {
	info, err := l.agent.Info(ctx)
	if err != nil {
		return nil, fmt.Errorf("heartbeat: %w", err)
	}
	st := wire.NodeStatus{Name: info.Name, Address: l.cfg.Address, Labels: l.cfg.Labels, Sandboxes: info.Sandboxes,
		SharedSnapshots: l.cfg.SharedSnapshots, StartedAt: l.started, Version: l.cfg.Version}
	for _, fp := range info.Runtimes {
		st.Runtimes = append(st.Runtimes, *fp)
		// The runtimes share one host: its size is the largest any reports.
		if fp.Available {
			st.CPUs = max(st.CPUs, fp.HostCPUs)
			st.MemoryMB = max(st.MemoryMB, fp.HostMemoryMB)
		}
	}
	if c := l.cfg.CapacityMemoryMB; c > 0 && (st.MemoryMB == 0 || c < st.MemoryMB) {
		st.MemoryMB = c
	}
	// Pooled sandboxes hold memory no placement counted.
	st.MemoryMB = max(st.MemoryMB-l.agent.PoolUsage(), 0)
	st.Warm = l.agent.WarmIDs()
	st.PoolTargets = l.agent.PoolTargets()
	st.Creates = l.agent.CreateCounts()
	st.RefillTime, st.RefillParallel = l.agent.RefillRate()
	imgs, err := l.agent.Templates(ctx)
	if err != nil {
		return nil, fmt.Errorf("heartbeat: templates: %w", err)
	}
	for _, img := range imgs {
		st.Templates = append(st.Templates, img.Name)
		// A tag names the template too (a bare name is NAME:latest), so
		// that placement finds the nodes that have it.
		for _, tag := range img.Tags {
			st.Templates = append(st.Templates, tag)
			if name, ok := strings.CutSuffix(tag, ":latest"); ok {
				st.Templates = append(st.Templates, name)
			}
		}
	}
	slices.Sort(st.Templates)
	hb := &wire.Heartbeat{Node: st, Full: full}
	if !full {
		return hb, nil
	}
	all, err := l.agent.List(ctx, tartarus.SandboxFilter{Node: info.Name})
	if err != nil {
		return nil, fmt.Errorf("heartbeat: %w", err)
	}
	since := l.cfg.Clock.Now().Add(-endedNews)
	for _, sb := range all {
		if sb.State.Final() && (hecatoncheir.Dropped(sb) || sb.UpdatedAt.Before(since)) {
			continue
		}
		hb.Sandboxes = append(hb.Sandboxes, l.report(ctx, sb))
	}
	return hb, nil
}

// endedNews is how long a sandbox that ended stays in Full heartbeats, so
// that an expiry whose report was lost (the agent restarted before sending
// it) reaches the server as what it was, not as a sandbox gone missing.
const endedNews = time.Hour

// report is one sandbox as this node has it, with the sleep record of a
// hibernated one.
func (l *Link) report(ctx context.Context, sb *tartarus.Sandbox) wire.Report {
	r := wire.Report{Sandbox: *sb}
	if sb.State == tartarus.StateHibernated {
		rec, err := l.agent.SleepRecord(ctx, sb.ID)
		if err == nil {
			r.Sleep = rec
		} else {
			l.log.Warn("no sleep record for a hibernated sandbox", "sandbox", sb.ID, "err", err)
		}
	}
	return r
}

// httpError is a server's answer other than 2xx.
type httpError struct {
	server string
	status int
	body   string
}

func (e *httpError) Error() string {
	return fmt.Sprintf("server %s: %d %s: %s", e.server, e.status, http.StatusText(e.status), e.body)
}

// final reports whether err is an answer that asking again (here or at
// another server) cannot change: a 4xx other than 408 and 429.
func final(err error) bool {
	var he *httpError
	return errors.As(err, &he) && he.status >= 400 && he.status < 500 &&
		he.status != http.StatusRequestTimeout && he.status != http.StatusTooManyRequests
}

// callTimeout bounds one call other than the long poll.
const callTimeout = 30 * time.Second

// call sends in (JSON, if not nil) to path and decodes the answer into out
// (if not nil), trying each server once, from the one that answered last:
// a server that does not answer or answers 5xx is left for the next.
func (l *Link) call(ctx context.Context, method, path string, in, out any) error {
	var body []byte
	if in != nil {
		var err error
		if body, err = json.Marshal(in); err != nil {
			return fmt.Errorf("%s %s: %w", method, path, err)
		}
	}
	timeout := callTimeout
	if strings.HasPrefix(path, wire.PathCommands+"?") {
		timeout += l.cfg.PollWait
	}
	var errs []error
	for range l.cfg.Servers {
		l.mu.Lock()
		server := l.cfg.Servers[l.next]
		l.mu.Unlock()
		err := l.callOne(ctx, server, method, path, body, out, timeout)
		if err == nil || final(err) || ctx.Err() != nil {
			return err
		}
		errs = append(errs, err)
		l.mu.Lock()
		if l.cfg.Servers[l.next] == server {
			l.next = (l.next + 1) % len(l.cfg.Servers)
		}
		l.mu.Unlock()
	}
	return errors.Join(errs...)
}

func (l *Link) callOne(ctx context.Context, server, method, path string, body []byte, out any, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, server+path, rd)
	if err != nil {
		return err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := l.client.Do(req)
	if err != nil {
		return fmt.Errorf("server %s: %w", server, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 4<<10))
		return &httpError{server: server, status: resp.StatusCode, body: strings.TrimSpace(string(msg))}
	}
	if out == nil || resp.StatusCode == http.StatusNoContent {
		return nil
	}
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		return fmt.Errorf("server %s: %s %s: answer: %w", server, method, path, err)
	}
	return nil
}

// sleep waits d on the link's clock; false if ctx ended first.
func (l *Link) sleep(ctx context.Context, d time.Duration) bool {
	t := l.cfg.Clock.NewTicker(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C():
		return true
	}
}

// backoff is the wait before retry number n (1, 2, …): 100ms doubling up
// to MaxBackoff.
func (l *Link) backoff(n int) time.Duration {
	d := 100 * time.Millisecond
	for i := 1; i < n && d < l.cfg.MaxBackoff; i++ {
		d *= 2
	}
	return min(d, l.cfg.MaxBackoff)
}
