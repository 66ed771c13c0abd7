package link

import (
	"context"
	"fmt"
	"net/http"

	"github.com/tartarus-sandbox/tartarus/pkg/cerberus"
	"github.com/tartarus-sandbox/tartarus/pkg/clock"
	"github.com/tartarus-sandbox/tartarus/pkg/hecatoncheir/wire"
	"github.com/tartarus-sandbox/tartarus/pkg/olympus"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus/api"
	"github.com/tartarus-sandbox/tartarus/pkg/typhon/typhonnode"
)

// DefaultServerName is the service name in the servers' certificates that
// `tartarus certs dev` makes (cerberus.ServerPrincipal).
const DefaultServerName = "tartarus-server"

// Handler is the node API: the public API's routes served by this node's
// agent, for the requests the servers forward to it (exec, files). Only a
// server may call it: a client certificate of Config.ClientCAs naming one
// of Config.ServerNames ("service:NAME"), never an agent's or another
// service's; the sandbox's tenant comes
// in wire.TenantHeader and confines the request to that tenant's
// sandboxes. The servers have authorized the caller already.
func (l *Link) Handler() http.Handler { return l.api }

func newNodeAPI(cfg *Config) (http.Handler, error) {
	// Certificates are valid in real time, as the TLS handshake that
	// verified them first has it.
	g := &nodeGuard{mtls: &cerberus.MTLSConfig{ClientCAs: cfg.ClientCAs, Clock: clock.System{}},
		servers: map[string]bool{}}
	for _, n := range cfg.ServerNames {
		g.servers[n] = true
	}
	// The quarantine's node side: the replicas' Typhon reads signals and
	// evidence here and moves the sandbox's state; forwarded calls to a
	// held sandbox are the replica's to refuse (only examiners' get here).
	q := typhonnode.NewNodeAPI(typhonnode.New(cfg.Agent, cfg.Clock))
	routes := q.Routes()
	routes[dialPattern] = dialHandler(cfg.Agent)
	routes[sharePattern] = shareHandler(cfg.Agent)
	routes[unsharePattern] = unshareHandler(cfg.Agent)
	routes[fetchPattern] = fetchHandler(cfg.Agent)
	api, err := olympus.New(olympus.Config{Backend: cfg.Agent, Guard: g, Log: cfg.Log, Builds: cfg.Builds, Routes: routes, Quarantine: q})
	if err != nil {
		return nil, fmt.Errorf("node API: %w", err)
	}
	return api, nil
}

// nodeGuard lets in servers only, acting for the tenant they name.
type nodeGuard struct {
	mtls    *cerberus.MTLSConfig
	servers map[string]bool // service names of the servers
}

var _ cerberus.Guard = (*nodeGuard)(nil)

// Wrap implements cerberus.Guard.
func (g *nodeGuard) Wrap(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.TLS == nil || len(r.TLS.PeerCertificates) == 0 {
			api.WriteError(w, tartarus.Errorf(tartarus.ErrUnauthenticated, "the node API needs a server's client certificate"), "")
			return
		}
		certs := r.TLS.PeerCertificates
		id, err := g.mtls.Verify(&cerberus.MTLSCredential{Certificate: certs[0], Chain: certs[1:]})
		if err != nil {
			api.WriteError(w, tartarus.Errorf(tartarus.ErrUnauthenticated, "%v", err), "")
			return
		}
		if id.Type != cerberus.IdentityTypeService || !g.servers[id.ID] {
			api.WriteError(w, tartarus.Errorf(tartarus.ErrPermissionDenied, "%s:%s may not call a node API; only servers may (the agent's --server-name)", id.Type, id.ID), "")
			return
		}
		tenant := r.Header.Get(wire.TenantHeader)
		if tenant == "" {
			api.WriteError(w, tartarus.Errorf(tartarus.ErrInvalid, "missing %s header", wire.TenantHeader), "")
			return
		}
		acting := *id
		acting.TenantID = tenant
		next.ServeHTTP(w, r.WithContext(cerberus.WithIdentity(r.Context(), &acting)))
	})
}

// Authorize implements cerberus.Guard. The server authorized the caller
// already; the one check left is that the request acts within the tenant
// the server named, as the server always forwards with the sandbox's own.
func (g *nodeGuard) Authorize(ctx context.Context, _ cerberus.Action, res cerberus.Resource) error {
	id := cerberus.IdentityFrom(ctx)
	if id == nil || (res.TenantID != "" && res.TenantID != id.TenantID) {
		return tartarus.Errorf(tartarus.ErrPermissionDenied, "the request's tenant is not the resource's")
	}
	return nil
}
