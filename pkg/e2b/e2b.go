// Package e2b serves E2B's public API on top of Tartarus, so that code
// written against E2B's SDKs runs unchanged on Tartarus sandboxes.
//
// One http.Handler answers both halves of E2B's contract:
//
//   - the control plane (POST /v2/sandboxes, GET /v2/sandboxes, GET and
//     DELETE /sandboxes/{id}, pause, connect, timeout, refreshes, metrics),
//     authenticated by the X-API-Key header;
//   - the in-sandbox daemon "envd": the Connect RPC services
//     process.Process and filesystem.Filesystem (JSON codec), GET and POST
//     /files and /health, authenticated by the X-Access-Token header. A
//     request is for envd when its Host is 49983-SANDBOXID.DOMAIN or it
//     carries the E2b-Sandbox-Id header (what the SDKs send when
//     E2B_SANDBOX_URL is set). Other ports of those host names and headers
//     go to the sandbox's exposed-port proxy.
//
// Every call is translated onto Tartarus's own HTTP API and sent, with the
// caller's key, to the native handler through an in-process connection:
// authentication, tenancy, quotas and the audit log are exactly the native
// API's, and the guest agent keeps its one protocol. The envd access token
// a create or connect answers with is the caller's own API key.
package e2b

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/tartarus-sandbox/tartarus/pkg/client"
	"github.com/tartarus-sandbox/tartarus/pkg/clock"
)

// EnvdPort is the port E2B's SDKs address the in-sandbox daemon on.
const EnvdPort = 49983

// EnvdVersion is the envd version the answers claim. The SDKs gate
// features on it: 0.5.2 and later close stdin, 0.4.0 and later send no
// default user.
const EnvdVersion = "0.5.7"

// Config wires a Handler.
type Config struct {
	// Native is Tartarus's own API handler (olympus.Server, behind its
	// guard); every translated call goes through it.
	Native http.Handler
	// Domain is the sandbox domain: envd answers for
	// 49983-SANDBOXID.Domain, and creates report it to the SDK. Empty:
	// routing by the E2b-Sandbox-Id header only.
	Domain string
	// Templates maps E2B template names onto Tartarus templates; a name
	// not in it is passed through unchanged. Nil: DefaultTemplates.
	Templates map[string]string
	// Home resolves relative paths in file calls; empty: "/root".
	Home string
	Log  *slog.Logger
	// Clock paces the keepalives of quiet streams; nil: clock.System.
	Clock clock.Clock
}

// DefaultTemplates maps E2B's default template ("base", a Debian with
// bash and Python, which the SDKs' commands need: they run /bin/bash -l -c)
// onto Tartarus's Debian template with Python. Tartarus's own "base" is
// busybox without bash.
var DefaultTemplates = map[string]string{"base": "python"}

// Validate reports every problem of the configuration.
func (c *Config) Validate() error {
	var errs []error
	if c.Native == nil {
		errs = append(errs, errors.New("e2b: no native API handler"))
	}
	if strings.Contains(c.Domain, "/") || strings.HasPrefix(c.Domain, ".") {
		errs = append(errs, fmt.Errorf("e2b: domain %q: want a host name such as sandbox.example.com", c.Domain))
	}
	if c.Home != "" && !strings.HasPrefix(c.Home, "/") {
		errs = append(errs, fmt.Errorf("e2b: home %q: want an absolute path", c.Home))
	}
	return errors.Join(errs...)
}

// Handler is the E2B-compatible API.
type Handler struct {
	cfg      Config
	log      *slog.Logger
	local    *localServer
	mux      *http.ServeMux
	ptys     ptyTable
	watchers watcherTable
}

var _ http.Handler = (*Handler)(nil)

// New builds the handler. Close releases its in-process connection to the
// native API.
func New(cfg Config) (*Handler, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.Templates == nil {
		cfg.Templates = DefaultTemplates
	}
	if cfg.Home == "" {
		cfg.Home = "/root"
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.Clock == nil {
		cfg.Clock = clock.System{}
	}
	h := &Handler{cfg: cfg, log: cfg.Log.With("component", "e2b"), local: newLocalServer(cfg.Native)}
	h.ptys.byID = map[string]map[uint32]*ptySession{}
	h.watchers.byID = map[string]*watcher{}
	h.mux = http.NewServeMux()
	h.controlRoutes(h.mux)
	return h, nil
}

// Close stops the in-process server and hangs up open terminals.
func (h *Handler) Close() error {
	h.ptys.closeAll()
	h.watchers.mu.Lock()
	for _, w := range h.watchers.byID {
		w.cancel()
	}
	h.watchers.mu.Unlock()
	return h.local.Close()
}

// ServeHTTP routes a request to envd (by host name or headers) or to the
// control plane.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if id, port, ok := h.sandboxTarget(r); ok {
		if port != EnvdPort {
			h.proxyPort(w, r, id, port)
			return
		}
		h.serveEnvd(w, r, id)
		return
	}
	h.mux.ServeHTTP(w, r)
}

// sandboxTarget says which sandbox and port a request is for, from the
// E2b-Sandbox-Id and E2b-Sandbox-Port headers or a PORT-ID.DOMAIN host.
func (h *Handler) sandboxTarget(r *http.Request) (id string, port int, ok bool) {
	if id = r.Header.Get("E2b-Sandbox-Id"); id != "" {
		port = EnvdPort
		if p := r.Header.Get("E2b-Sandbox-Port"); p != "" {
			n, err := strconv.Atoi(p)
			if err != nil || n < 1 || n > 65535 {
				return id, 0, true
			}
			port = n
		}
		return id, port, true
	}
	if h.cfg.Domain == "" {
		return "", 0, false
	}
	host := r.Host
	if hh, _, err := net.SplitHostPort(host); err == nil {
		host = hh
	}
	label, ok := strings.CutSuffix(strings.ToLower(host), "."+strings.ToLower(h.cfg.Domain))
	if !ok || strings.Contains(label, ".") {
		return "", 0, false
	}
	p, id, ok := strings.Cut(label, "-")
	if !ok || id == "" {
		return "", 0, false
	}
	n, err := strconv.Atoi(p)
	if err != nil || n < 1 || n > 65535 {
		return "", 0, false
	}
	return id, n, true
}

// nativeClient is a Tartarus API client that acts with key for the
// caller of r (whose address the native API's audit log records).
func (h *Handler) nativeClient(r *http.Request, key string) *client.Client {
	c, err := client.New(localURL, NativeKey(key), client.WithHTTPClient(h.local.client), client.WithHeader(remoteHeader, r.RemoteAddr))
	if err != nil {
		panic(err) // localURL is a constant that parses
	}
	return c
}

// apiKey is the control plane's credential: X-API-Key, or a bearer token.
func apiKey(r *http.Request) string {
	if k := r.Header.Get("X-API-Key"); k != "" {
		return k
	}
	if b, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer "); ok {
		return b
	}
	return ""
}

// accessToken is envd's credential: X-Access-Token (the key a create
// answered with), else the control plane's.
func accessToken(r *http.Request) string {
	if k := r.Header.Get("X-Access-Token"); k != "" {
		return k
	}
	return r.Header.Get("X-API-Key")
}

// localURL is the base URL of the in-process connection; its host is
// never resolved.
const localURL = "http://tartarus.local"

// localServer serves the native handler over in-memory connections, so
// that streamed answers and WebSocket upgrades work as over TCP without
// opening a port.
type localServer struct {
	srv    *http.Server
	ln     *pipeListener
	client *http.Client
}

// remoteHeader carries the E2B caller's address to the native API over the
// in-process connection, which only this package's clients reach: it
// becomes the request's RemoteAddr, so that the audit log and the request
// log name the real caller.
const remoteHeader = "X-Tartarus-E2b-Remote"

func newLocalServer(native http.Handler) *localServer {
	ln := &pipeListener{conns: make(chan net.Conn), done: make(chan struct{})}
	withRemote := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if a := r.Header.Get(remoteHeader); a != "" {
			r.RemoteAddr = a
			r.Header.Del(remoteHeader)
		}
		native.ServeHTTP(w, r)
	})
	s := &localServer{ln: ln, srv: &http.Server{Handler: withRemote, ReadHeaderTimeout: 10 * time.Second}}
	go func() { _ = s.srv.Serve(ln) }()
	s.client = &http.Client{Transport: &http.Transport{
		DialContext:         func(ctx context.Context, _, _ string) (net.Conn, error) { return ln.dial(ctx) },
		MaxIdleConnsPerHost: 64,
		IdleConnTimeout:     time.Minute,
	}}
	return s
}

func (s *localServer) Close() error {
	s.client.CloseIdleConnections()
	return s.srv.Close()
}

// pipeListener is a net.Listener whose connections are net.Pipe ends.
type pipeListener struct {
	conns chan net.Conn
	done  chan struct{}
	once  sync.Once
}

func (l *pipeListener) dial(ctx context.Context) (net.Conn, error) {
	c, s := net.Pipe()
	select {
	case l.conns <- s:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

func (l *pipeListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

func (l *pipeListener) Close() error {
	l.once.Do(func() { close(l.done) })
	return nil
}

func (l *pipeListener) Addr() net.Addr { return pipeAddr{} }

type pipeAddr struct{}

func (pipeAddr) Network() string { return "pipe" }
func (pipeAddr) String() string  { return "e2b" }
