package olympus

import (
	"context"
	"errors"
	"net/http"

	"github.com/tartarus-sandbox/tartarus/pkg/cerberus"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus/api"
)

// caller returns the request's authenticated identity.
func caller(r *http.Request) (*cerberus.Identity, error) {
	id := cerberus.IdentityFrom(r.Context())
	if id == nil || id.TenantID == "" {
		return nil, tartarus.Errorf(tartarus.ErrUnauthenticated, "no authenticated caller")
	}
	setTenant(r.Context(), id.TenantID)
	return id, nil
}

// sandboxFor loads the sandbox named in the path and checks that the caller
// may do action on it. Another tenant's sandbox is not found, never
// forbidden, so ids do not leak.
func (s *Server) sandboxFor(r *http.Request, action cerberus.Action) (*tartarus.Sandbox, error) {
	who, err := caller(r)
	if err != nil {
		return nil, err
	}
	id := r.PathValue("id")
	notFound := tartarus.Errorf(tartarus.ErrNotFound, "sandbox %s", id)
	if !tartarus.ValidName(id) {
		return nil, notFound
	}
	sb, err := s.be.Get(r.Context(), id)
	if err != nil {
		return nil, err
	}
	// Authorize against the sandbox's real tenant so the audit log records
	// a cross-tenant probe as denied; the caller still sees 404, so ids of
	// other tenants do not leak. A policy may let an operator through.
	res := cerberus.Resource{Type: cerberus.ResourceTypeSandbox, ID: sb.ID, TenantID: sb.Tenant}
	if err := s.guard.Authorize(r.Context(), action, res); err != nil {
		if sb.Tenant != who.TenantID {
			return nil, notFound
		}
		return nil, err
	}
	return sb, nil
}

func (s *Server) createSandbox(w http.ResponseWriter, r *http.Request) {
	serve(s, w, r, s.tenantFor(cerberus.ResourceTypeSandbox), cerberus.ActionCreate, backend, func(ctx context.Context, be Backend, who *cerberus.Identity) (int, any, error) {
		req, err := decodeCreate(http.MaxBytesReader(w, r.Body, MaxJSONBody))
		if err != nil {
			return 0, nil, err
		}
		if req.Runtime != "" {
			res := cerberus.Resource{Type: cerberus.ResourceTypeSandbox, TenantID: who.TenantID, Runtime: req.Runtime}
			if err := s.guard.Authorize(ctx, cerberus.ActionChooseRuntime, res); err != nil {
				if errors.Is(err, tartarus.ErrPermissionDenied) {
					return 0, nil, tartarus.Errorf(tartarus.ErrPermissionDenied,
						"%s may not create sandboxes in the %s runtime: that needs the choose_runtime permission for runtime %s "+
							"(the built-in policy grants it for microvm and gvisor; an operator grants the others, for example with the any-runtime role)",
						cerberus.Principal(who), req.Runtime, req.Runtime)
				}
				return 0, nil, err
			}
		}
		release, err := s.checkCreateQuota(ctx, who.TenantID, req)
		if err != nil {
			return 0, nil, err
		}
		defer release()
		req.IdempotencyKey = r.Header.Get("Idempotency-Key")
		sb, err := be.Create(ctx, who.TenantID, req)
		if err != nil {
			return 0, nil, err
		}
		w.Header().Set("Location", "/v1/sandboxes/"+sb.ID)
		if s.tokens != nil && sb.Network != nil {
			// The creator's link to the sandbox's ports (docs/network.md).
			w.Header().Set(PortTokenHeader, s.tokens.token(sb.ID))
		}
		if sb.State == tartarus.StateQueued {
			// It waits for room in its heat's admission queue: GET follows it.
			return http.StatusAccepted, sb, nil
		}
		return http.StatusCreated, sb, nil
	})
}

func (s *Server) listSandboxes(w http.ResponseWriter, r *http.Request) {
	serve(s, w, r, s.tenantFor(cerberus.ResourceTypeSandbox), cerberus.ActionRead, backend, func(ctx context.Context, be Backend, who *cerberus.Identity) (int, any, error) {
		f := tartarus.SandboxFilter{Tenant: who.TenantID}
		if st := r.URL.Query().Get("state"); st != "" {
			f.States = []tartarus.State{tartarus.State(st)}
		}
		match, err := matchMetadata(r)
		if err != nil {
			return 0, nil, err
		}
		all, err := be.List(ctx, f)
		list := []*tartarus.Sandbox{}
		for _, sb := range all {
			if match(sb) {
				list = append(list, sb)
			}
		}
		return http.StatusOK, api.SandboxList{Sandboxes: list}, err
	})
}

func (s *Server) getSandbox(w http.ResponseWriter, r *http.Request) {
	serve(s, w, r, s.sandboxFor, cerberus.ActionRead, backend, func(_ context.Context, _ Backend, sb *tartarus.Sandbox) (int, any, error) {
		return http.StatusOK, sb, nil
	})
}

func (s *Server) deleteSandbox(w http.ResponseWriter, r *http.Request) {
	serve(s, w, r, s.sandboxFor, cerberus.ActionDelete, backend, func(ctx context.Context, be Backend, sb *tartarus.Sandbox) (int, any, error) {
		if sb.State == tartarus.StateQuarantined {
			return 0, nil, tartarus.Errorf(tartarus.ErrFailedPrecondition,
				"sandbox %s is quarantined: an examiner ends it with POST /v1/quarantine/%s/destroy", sb.ID, sb.ID)
		}
		if opts, ok, err := shutdownOptions(r.URL.Query()); err != nil {
			return 0, nil, err
		} else if ok {
			if opts.CreateCheckpoint {
				res := cerberus.Resource{Type: cerberus.ResourceTypeSandbox, ID: sb.ID, TenantID: sb.Tenant}
				if err := s.guard.Authorize(ctx, cerberus.ActionSnapshot, res); err != nil {
					return 0, nil, err
				}
			}
			s.terminate(w, r, sb, opts)
			return 0, nil, nil
		}
		sb, err := be.Destroy(ctx, sb.ID)
		return http.StatusAccepted, sb, err
	})
}

func (s *Server) pause(w http.ResponseWriter, r *http.Request) {
	s.change(w, r, s.be.Pause)
}

func (s *Server) resume(w http.ResponseWriter, r *http.Request) {
	s.change(w, r, s.be.Resume)
}

func (s *Server) change(w http.ResponseWriter, r *http.Request, do func(ctx context.Context, id string) (*tartarus.Sandbox, error)) {
	serve(s, w, r, s.reach, cerberus.ActionUpdate, backend, func(ctx context.Context, _ Backend, sb *tartarus.Sandbox) (int, any, error) {
		sb, err := do(ctx, sb.ID)
		return http.StatusOK, sb, err
	})
}

func (s *Server) hibernate(w http.ResponseWriter, r *http.Request) {
	s.change(w, r, func(ctx context.Context, id string) (*tartarus.Sandbox, error) {
		sb, err := s.be.Get(ctx, id)
		if err != nil {
			return nil, err
		}
		if err := s.checkSnapshotQuota(ctx, sb); err != nil {
			return nil, err
		}
		return s.be.Hibernate(ctx, id)
	})
}

func (s *Server) wake(w http.ResponseWriter, r *http.Request) {
	s.change(w, r, s.be.Wake)
}

// fork makes copies of a sandbox. Creating sandboxes is authorized like a
// create in the caller's tenant, besides forking the original (a copy of
// its memory and files: more than reading it).
func (s *Server) fork(w http.ResponseWriter, r *http.Request) {
	serve(s, w, r, s.reach, cerberus.ActionFork, backend, func(ctx context.Context, be Backend, sb *tartarus.Sandbox) (int, any, error) {
		res := cerberus.Resource{Type: cerberus.ResourceTypeSandbox, TenantID: sb.Tenant}
		if err := s.guard.Authorize(ctx, cerberus.ActionCreate, res); err != nil {
			return 0, nil, err
		}
		var req api.ForkRequest
		if err := decodeJSON(http.MaxBytesReader(w, r.Body, MaxJSONBody), MaxJSONBody, &req); err != nil {
			return 0, nil, err
		}
		if req.Count == 0 {
			req.Count = 1
		}
		if req.Count < 1 || req.Count > api.MaxForkCount {
			return 0, nil, tartarus.Errorf(tartarus.ErrInvalid, "count %d: must be between 1 and %d", req.Count, api.MaxForkCount)
		}
		release, err := s.checkForkQuota(ctx, sb, req.Count)
		if err != nil {
			return 0, nil, err
		}
		defer release()
		list, err := be.Fork(ctx, sb.ID, req.Count)
		return http.StatusCreated, api.SandboxList{Sandboxes: list}, err
	})
}

func (s *Server) listTemplates(w http.ResponseWriter, r *http.Request) {
	serve(s, w, r, s.tenantFor(cerberus.ResourceTypeTemplate), cerberus.ActionRead, backend, func(ctx context.Context, be Backend, who *cerberus.Identity) (int, any, error) {
		all, err := be.Templates(ctx)
		// Another tenant's template is not listed, as its sandboxes are not.
		list := []*tartarus.Image{}
		for _, img := range all {
			if img.VisibleTo(who.TenantID) {
				list = append(list, img)
			}
		}
		return http.StatusOK, api.TemplateList{Templates: list}, err
	})
}

func (s *Server) forgetNode(w http.ResponseWriter, r *http.Request) {
	serve(s, w, r, s.nodeFor, cerberus.ActionDelete, backend, func(ctx context.Context, be Backend, name string) (int, any, error) {
		return http.StatusNoContent, nil, be.ForgetNode(ctx, name)
	})
}

func (s *Server) listNodes(w http.ResponseWriter, r *http.Request) {
	serve(s, w, r, s.tenantFor(cerberus.ResourceTypeNode), cerberus.ActionRead, backend, func(ctx context.Context, be Backend, _ *cerberus.Identity) (int, any, error) {
		nodes, err := be.Nodes(ctx)
		return http.StatusOK, api.NodeList{Nodes: nodes}, err
	})
}
