package olympus

import (
	"context"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strconv"
	"strings"

	"github.com/tartarus-sandbox/tartarus/pkg/cerberus"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

// NetworkController is the optional side interface of a Backend whose
// sandboxes can have a network (the single-node agent).
type NetworkController interface {
	UpdateNetwork(ctx context.Context, id string, n *tartarus.NetworkSpec) (*tartarus.Sandbox, error)
	NetworkLog(ctx context.Context, id string) (*tartarus.NetworkLog, error)
}

// PortDialer is the optional side interface of a Backend that reaches a
// guest port (waking a hibernated sandbox first): the exposed-port routes
// proxy over it.
type PortDialer interface {
	DialPort(ctx context.Context, id string, port uint16) (net.Conn, error)
}

func (s *Server) networkRoutes(v1 func(string, http.HandlerFunc), mux *http.ServeMux) {
	v1("PUT /v1/sandboxes/{id}/network", s.putNetwork)
	v1("GET /v1/sandboxes/{id}/network/log", s.networkLog)
	// Port routes check credentials themselves: a sandbox whose creator
	// made its ports public needs none.
	mux.HandleFunc("/v1/sandboxes/{id}/ports/{port}/{path...}", s.portRoute)
	mux.HandleFunc("/v1/sandboxes/{id}/ports/{port}", s.portRoute)
	v1("GET /v1/sandboxes/{id}/ports/token", s.getPortToken)
}

func (s *Server) putNetwork(w http.ResponseWriter, r *http.Request) {
	sb, err := s.sandboxFor(r, cerberus.ActionUpdate)
	if err == nil {
		err = s.admit(r, sb) // a held sandbox's network is the quarantine's
	}
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	nc, err := backendAs[NetworkController](s, "sandbox networking")
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	var spec tartarus.NetworkSpec
	if err := decodeJSON(http.MaxBytesReader(w, r.Body, MaxJSONBody), MaxJSONBody, &spec); err != nil {
		s.writeError(w, r, err)
		return
	}
	if err := spec.Check(); err != nil {
		s.writeError(w, r, err)
		return
	}
	out, err := nc.UpdateNetwork(r.Context(), sb.ID, &spec)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, out)
}

func (s *Server) networkLog(w http.ResponseWriter, r *http.Request) {
	sb, err := s.sandboxFor(r, cerberus.ActionRead)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	nc, err := backendAs[NetworkController](s, "sandbox networking")
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	log, err := nc.NetworkLog(r.Context(), sb.ID)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, log)
}

// portRoute serves /v1/sandboxes/{id}/ports/{port}/{path...}: the rest of
// the path goes to the guest port as is.
func (s *Server) portRoute(w http.ResponseWriter, r *http.Request) {
	port, err := parsePort(r.PathValue("port"))
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	s.proxyPort(w, r, r.PathValue("id"), port, "/"+r.PathValue("path"))
}

// hostPorts routes requests for PORT-SANDBOXID.DOMAIN (the E2B convention)
// to the sandbox's port, the whole path included; other hosts go to next.
func (s *Server) hostPorts(next http.Handler) http.Handler {
	domain := strings.ToLower(strings.TrimPrefix(s.cfg.SandboxDomain, "."))
	if domain == "" {
		return next
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		host := strings.ToLower(r.Host)
		if h, _, err := net.SplitHostPort(host); err == nil {
			host = h
		}
		// Exactly one label before the domain: no suffix tricks. Only Host
		// decides (never X-Forwarded-Host, which any client can send).
		label, ok := strings.CutSuffix(host, "."+domain)
		if !ok || strings.Contains(label, ".") {
			next.ServeHTTP(w, r)
			return
		}
		// Over TLS the name the client asked for must be the same host,
		// so a connection opened for one name cannot reach another's ports.
		if r.TLS != nil && r.TLS.ServerName != "" && !strings.EqualFold(r.TLS.ServerName, host) {
			s.writeError(w, r, tartarus.Errorf(tartarus.ErrInvalid, "host %s: the connection is for %s", host, r.TLS.ServerName))
			return
		}
		p, id, ok := strings.Cut(label, "-")
		port, err := parsePort(p)
		if !ok || err != nil {
			s.writeError(w, r, tartarus.Errorf(tartarus.ErrNotFound, "host %s: want PORT-SANDBOXID.%s", host, domain))
			return
		}
		s.proxyPort(w, r, id, port, r.URL.Path)
	})
}

func parsePort(s string) (uint16, error) {
	n, err := strconv.ParseUint(s, 10, 16)
	if err != nil || n == 0 {
		return 0, tartarus.Errorf(tartarus.ErrInvalid, "port %q: want 1-65535", s)
	}
	return uint16(n), nil
}

// proxyPort passes r to port of sandbox id: HTTP, streamed responses and
// WebSocket upgrades (httputil.ReverseProxy handles them), over a
// connection the backend dials into the guest. Without public ports the
// caller needs the sandbox's port access token or the sandbox tenant's
// credentials (update rights: reaching a guest port can change the
// sandbox). The guest sees neither.
func (s *Server) proxyPort(w http.ResponseWriter, r *http.Request, id string, port uint16, path string) {
	pd, err := backendAs[PortDialer](s, "exposed ports")
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	notFound := tartarus.Errorf(tartarus.ErrNotFound, "sandbox %s", id)
	if !tartarus.ValidName(id) {
		s.writeError(w, r, notFound)
		return
	}
	sb, err := s.be.Get(r.Context(), id)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	tok, from, tokenOK := s.tokens.portTokenFor(r, id)
	serve := func(w http.ResponseWriter, r *http.Request) {
		stripPortToken(r)
		s.reverseProxy(pd, sb.ID, port, path).ServeHTTP(w, r)
	}
	// A quarantined sandbox's ports answer only examiners: public, token or not.
	if sb.Network != nil && sb.Network.PublicPorts && !s.held(sb) {
		serve(w, r)
		return
	}
	if tokenOK && !s.held(sb) {
		if from == tokenQuery && acceptQueryToken(w, r, sb.ID, tok) {
			return
		}
		serve(w, r)
		return
	}
	s.guard.Wrap(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		r.SetPathValue("id", id)
		sb, err := s.sandboxFor(r, cerberus.ActionUpdate)
		if err == nil {
			err = s.admit(r, sb)
		}
		if err != nil {
			s.writeError(w, r, err)
			return
		}
		// The guest must not see the caller's credentials.
		r.Header.Del("Authorization")
		r.Header.Del("X-API-Key")
		serve(w, r)
	})).ServeHTTP(w, r)
}

func (s *Server) reverseProxy(pd PortDialer, id string, port uint16, path string) *httputil.ReverseProxy {
	target := &url.URL{Scheme: "http", Host: net.JoinHostPort("sandbox", strconv.Itoa(int(port)))}
	return &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.SetURL(target)
			pr.Out.URL.Path = path
			pr.Out.URL.RawPath = ""
			pr.Out.Host = pr.In.Host
			pr.SetXForwarded()
		},
		Transport: &http.Transport{
			DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
				return pd.DialPort(ctx, id, port)
			},
			DisableKeepAlives: true,
		},
		FlushInterval: -1, // stream responses as the guest writes them
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
			if tartarus.ClassOf(err).Err == nil {
				err = tartarus.Errorf(tartarus.ErrUnavailable, "sandbox %s port %d: %v", id, port, err)
			}
			s.writeError(w, r, err)
		},
	}
}
