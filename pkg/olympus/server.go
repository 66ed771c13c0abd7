// Package olympus is the Tartarus HTTP API: sandboxes, exec, files,
// templates, nodes, health and metrics, served with Go's ServeMux.
//
// Every /v1 route runs behind a cerberus.Guard, which authenticates the
// caller; each handler then authorizes its action. A sandbox belongs to its
// creator's tenant: listing shows only the caller's tenant, and another
// tenant's sandbox answers 404 so that ids do not leak.
//
// Routes beyond the table in docs (API.md):
//
//	GET  /v1/sandboxes/{id}/files?path=/dir&list=1  → {"path":"/dir","files":[FileInfo…]}
//	PUT  /v1/sandboxes/{id}/files?path=/f&mode=0755 → 204 (mode is octal, default 0644)
//	GET  /v1/nodes                                  → {"nodes":[{name, runtimes: [fingerprint…], …}]}
//	DELETE /v1/nodes/{name}                         → 204 (a cluster's down node without live sandboxes)
//	POST /v1/sandboxes/{id}/fork {"count":N}        → 201 {"sandboxes":[sandbox…]} (N copies, 1-16)
//
// Hibernate, wake and fork answer 501 with the reason on runtimes that
// cannot snapshot. Exec and file calls on a hibernated sandbox wake it
// first: the answer is slower, not different. A hibernated sandbox shows
// its stored snapshot's size as "snapshot_bytes".
package olympus

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/tartarus-sandbox/tartarus/pkg/cerberus"
	"github.com/tartarus-sandbox/tartarus/pkg/clock"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

// Backend is what the API drives: the node agent on a single node
// (hecatoncheir.Agent), or the nodes of a cluster (cluster.Cluster).
type Backend interface {
	Create(ctx context.Context, tenant string, req *tartarus.CreateRequest) (*tartarus.Sandbox, error)
	Get(ctx context.Context, id string) (*tartarus.Sandbox, error)
	List(ctx context.Context, f tartarus.SandboxFilter) ([]*tartarus.Sandbox, error)
	Destroy(ctx context.Context, id string) (*tartarus.Sandbox, error)
	Exec(ctx context.Context, id string, req *tartarus.ExecRequest) (*tartarus.ExecResult, error)
	ReadFile(ctx context.Context, id, path string) (io.ReadCloser, error)
	WriteFile(ctx context.Context, id, path string, mode os.FileMode, r io.Reader) error
	ListFiles(ctx context.Context, id, path string) ([]tartarus.FileInfo, error)
	Pause(ctx context.Context, id string) (*tartarus.Sandbox, error)
	Resume(ctx context.Context, id string) (*tartarus.Sandbox, error)
	Hibernate(ctx context.Context, id string) (*tartarus.Sandbox, error)
	Wake(ctx context.Context, id string) (*tartarus.Sandbox, error)
	Fork(ctx context.Context, id string, count int) ([]*tartarus.Sandbox, error)
	Templates(ctx context.Context) ([]*tartarus.Image, error)
	Nodes(ctx context.Context) ([]*tartarus.NodeInfo, error)
	// ForgetNode removes a node that went down for good.
	ForgetNode(ctx context.Context, name string) error
	Ready(ctx context.Context) error
	Counts(ctx context.Context) (map[tartarus.State]int, error)
}

// Size limits of request bodies.
const (
	MaxJSONBody       = 1 << 20
	MaxExecStdin      = 8 << 20
	DefaultMaxUpload  = 1 << 30
	maxExecBody       = MaxExecStdin*2 + MaxJSONBody // stdin is a JSON string: escapes can double it
	maxBufferedOutput = 16 << 20
)

// Config wires a Server.
type Config struct {
	Backend Backend
	// Guard authenticates and authorizes; nil means cerberus.Open().
	Guard cerberus.Guard
	// Routes are extra routes ("GET /v1/apikeys" → handler) mounted behind
	// Guard.
	Routes map[string]http.Handler
	// MaxUploadBytes bounds a file upload; 0 means DefaultMaxUpload.
	MaxUploadBytes int64
	// Collectors are extra Prometheus collectors (for example Cerberus's
	// counters) served on /metrics.
	Collectors []prometheus.Collector
	// Metrics serves GET /v1/sandboxes/{id}/metrics; nil answers 501.
	Metrics MetricsSource
	// SandboxDomain, when set, routes requests for PORT-SANDBOXID.DOMAIN
	// to that port of that sandbox (--sandbox-domain).
	SandboxDomain string
	// PortTokenKey, when set (at least MinPortTokenKey bytes), signs each
	// sandbox's port access token; nil: no tokens (the route answers 501).
	PortTokenKey []byte
	// Quarantine serves the quarantine routes and holds quarantined
	// sandboxes; nil answers them 501.
	Quarantine Quarantiner
	// Builds runs Dockerfile template builds; nil answers them 501.
	Builds TemplateBuilds
	Log    *slog.Logger
	// Clock decides the quotas' minute and lifetimes; nil: clock.System.
	Clock clock.Clock
}

// Server is the HTTP API.
type Server struct {
	cfg     Config
	log     *slog.Logger
	be      Backend
	guard   cerberus.Guard
	handler http.Handler
	metrics *metrics
	clock   clock.Clock
	execs   execSlots // per tenant, for the concurrent_execs quota
	pending pending   // creates in flight per tenant, for the quotas
	tokens  *portTokens
}

// New builds the API's handler.
func New(cfg Config) (*Server, error) {
	if cfg.Backend == nil {
		return nil, errors.New("olympus: no backend")
	}
	if cfg.Guard == nil {
		cfg.Guard = cerberus.Open()
	}
	if cfg.MaxUploadBytes <= 0 {
		cfg.MaxUploadBytes = DefaultMaxUpload
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.Clock == nil {
		cfg.Clock = clock.System{}
	}
	s := &Server{cfg: cfg, log: cfg.Log.With("component", "olympus"), be: cfg.Backend, guard: cfg.Guard, clock: cfg.Clock}
	if cfg.PortTokenKey != nil {
		if len(cfg.PortTokenKey) < MinPortTokenKey {
			return nil, fmt.Errorf("olympus: port token key is %d bytes, want at least %d", len(cfg.PortTokenKey), MinPortTokenKey)
		}
		s.tokens = &portTokens{key: cfg.PortTokenKey}
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	s.metrics = newMetrics(reg, cfg.Backend, s.log)
	for _, c := range cfg.Collectors {
		if c == nil {
			continue
		}
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("olympus: register metrics: %w", err)
		}
	}

	mux := http.NewServeMux()
	v1 := func(pattern string, h http.HandlerFunc) { mux.Handle(pattern, cfg.Guard.Wrap(h)) }
	v1("POST /v1/sandboxes", s.createSandbox)
	v1("GET /v1/sandboxes", s.listSandboxes)
	v1("GET /v1/sandboxes/{id}", s.getSandbox)
	v1("DELETE /v1/sandboxes/{id}", s.deleteSandbox)
	v1("POST /v1/sandboxes/{id}/exec", s.exec)
	v1("PUT /v1/sandboxes/{id}/files", s.putFile)
	v1("GET /v1/sandboxes/{id}/files", s.getFile)
	v1("POST /v1/sandboxes/{id}/pause", s.pause)
	v1("POST /v1/sandboxes/{id}/resume", s.resume)
	v1("POST /v1/sandboxes/{id}/hibernate", s.hibernate)
	v1("POST /v1/sandboxes/{id}/wake", s.wake)
	v1("POST /v1/sandboxes/{id}/fork", s.fork)
	v1("POST /v1/sandboxes/{id}/template", s.saveTemplate)
	v1("POST /v1/templates", s.buildTemplate)
	v1("GET /v1/templates/{name}/builds/{id}", s.buildLog)
	v1("DELETE /v1/templates/{name}", s.deleteTemplate)
	v1("POST /v1/templates/import", s.importImage)
	v1("GET /v1/sandboxes/{id}/termination", s.getTermination)
	v1("POST /v1/sandboxes/{id}/checkpoint", s.checkpoint)
	v1("GET /v1/terminations", s.listTerminations)
	v1("GET /v1/checkpoints", s.listCheckpoints)
	v1("GET /v1/templates", s.listTemplates)
	v1("GET /v1/nodes", s.listNodes)
	v1("GET /v1/quotas", s.getQuotas)
	v1("DELETE /v1/nodes/{name}", s.forgetNode)
	v1("POST /v1/nodes/{name}/drain", s.drainNode)
	v1("POST /v1/nodes/{name}/undrain", s.undrainNode)
	s.interactiveRoutes(v1)
	v1("GET /v1/heat", s.getHeat)
	v1("GET /v1/heat/explain", s.explainHeat)
	v1("GET /v1/pools", s.listPools)
	v1("POST /v1/pools", s.createPool)
	v1("DELETE /v1/pools/{name}", s.deletePool)
	v1("GET /v1/classes", s.listClasses)
	s.networkRoutes(v1, mux)
	s.quarantineRoutes(v1)
	for pattern, h := range cfg.Routes {
		if err := safeHandle(mux, pattern, cfg.Guard.Wrap(h)); err != nil {
			return nil, err
		}
	}
	mux.HandleFunc("GET /healthz", s.healthz)
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	s.handler = s.middleware(s.hostPorts(s.jsonMuxErrors(mux)))
	return s, nil
}

// safeHandle registers an extra route, turning ServeMux's panic on a bad or
// conflicting pattern into an error.
func safeHandle(mux *http.ServeMux, pattern string, h http.Handler) (err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("olympus: route %q: %v", pattern, p)
		}
	}()
	mux.Handle(pattern, h)
	return nil
}

// ServeHTTP implements http.Handler.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) { s.handler.ServeHTTP(w, r) }

func (s *Server) healthz(w http.ResponseWriter, r *http.Request) {
	if err := s.be.Ready(r.Context()); err != nil {
		s.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
}

// jsonMuxErrors turns the mux's own plain-text 404 and 405 answers (for
// requests that matched no pattern) into the API's JSON errors.
func (s *Server) jsonMuxErrors(mux *http.ServeMux) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if _, pattern := mux.Handler(r); pattern != "" {
			mux.ServeHTTP(w, r)
			return
		}
		mux.ServeHTTP(&muxErrorWriter{ResponseWriter: w, s: s, r: r}, r)
	})
}

type muxErrorWriter struct {
	http.ResponseWriter
	s       *Server
	r       *http.Request
	swallow bool
}

func (m *muxErrorWriter) WriteHeader(code int) {
	var err error
	switch code {
	case http.StatusNotFound:
		err = tartarus.Errorf(tartarus.ErrNotFound, "no route %s %s", m.r.Method, m.r.URL.Path)
	case http.StatusMethodNotAllowed:
		err = fmt.Errorf("method %s not allowed on %s", m.r.Method, m.r.URL.Path)
	default:
		m.ResponseWriter.WriteHeader(code)
		return
	}
	m.swallow = true
	m.ResponseWriter.Header().Del("X-Content-Type-Options")
	_, body := errorBody(err, requestID(m.r.Context()))
	if code == http.StatusMethodNotAllowed {
		body.Error.Code, body.Error.Message = "method_not_allowed", err.Error()
	}
	writeJSON(m.ResponseWriter, code, body)
}

func (m *muxErrorWriter) Write(p []byte) (int, error) {
	if m.swallow {
		return len(p), nil
	}
	return m.ResponseWriter.Write(p)
}
