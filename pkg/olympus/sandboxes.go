package olympus

import (
	"context"

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
	who, err := caller(r)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	res := cerberus.Resource{Type: cerberus.ResourceTypeSandbox, TenantID: who.TenantID}
	if err := s.guard.Authorize(r.Context(), cerberus.ActionCreate, res); err != nil {
		s.writeError(w, r, err)
		return
	}
	req, err := decodeCreate(http.MaxBytesReader(w, r.Body, MaxJSONBody))
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	req.IdempotencyKey = r.Header.Get("Idempotency-Key")
	sb, err := s.be.Create(r.Context(), who.TenantID, req)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	w.Header().Set("Location", "/v1/sandboxes/"+sb.ID)
	if sb.State == tartarus.StateQueued {
		// It waits for room in its heat's admission queue: GET follows it.
		writeJSON(w, http.StatusAccepted, sb)
		return
	}
	writeJSON(w, http.StatusCreated, sb)
}

func (s *Server) listSandboxes(w http.ResponseWriter, r *http.Request) {
	who, err := caller(r)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	res := cerberus.Resource{Type: cerberus.ResourceTypeSandbox, TenantID: who.TenantID}
	if err := s.guard.Authorize(r.Context(), cerberus.ActionRead, res); err != nil {
		s.writeError(w, r, err)
		return
	}
	f := tartarus.SandboxFilter{Tenant: who.TenantID}
	if st := r.URL.Query().Get("state"); st != "" {
		f.States = []tartarus.State{tartarus.State(st)}
	}
	match, err := matchMetadata(r)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	all, err := s.be.List(r.Context(), f)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	list := []*tartarus.Sandbox{}
	for _, sb := range all {
		if match(sb) {
			list = append(list, sb)
		}
	}
	writeJSON(w, http.StatusOK, api.SandboxList{Sandboxes: list})
}

func (s *Server) getSandbox(w http.ResponseWriter, r *http.Request) {
	sb, err := s.sandboxFor(r, cerberus.ActionRead)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, sb)
}

func (s *Server) deleteSandbox(w http.ResponseWriter, r *http.Request) {
	sb, err := s.sandboxFor(r, cerberus.ActionDelete)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	if sb.State == tartarus.StateQuarantined {
		s.writeError(w, r, tartarus.Errorf(tartarus.ErrFailedPrecondition,
			"sandbox %s is quarantined: an examiner ends it with POST /v1/quarantine/%s/destroy", sb.ID, sb.ID))
		return
	}
	if opts, ok, err := shutdownOptions(r.URL.Query()); err != nil {
		s.writeError(w, r, err)
		return
	} else if ok {
		s.terminate(w, r, sb, opts)
		return
	}
	sb, err = s.be.Destroy(r.Context(), sb.ID)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusAccepted, sb)
}

func (s *Server) pause(w http.ResponseWriter, r *http.Request) {
	s.change(w, r, s.be.Pause)
}

func (s *Server) resume(w http.ResponseWriter, r *http.Request) {
	s.change(w, r, s.be.Resume)
}

func (s *Server) change(w http.ResponseWriter, r *http.Request, do func(ctx context.Context, id string) (*tartarus.Sandbox, error)) {
	sb, err := s.sandboxFor(r, cerberus.ActionUpdate)
	if err == nil {
		err = s.admit(r, sb)
	}
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	sb, err = do(r.Context(), sb.ID)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, sb)
}

func (s *Server) hibernate(w http.ResponseWriter, r *http.Request) {
	s.change(w, r, s.be.Hibernate)
}

func (s *Server) wake(w http.ResponseWriter, r *http.Request) {
	s.change(w, r, s.be.Wake)
}

// fork makes copies of a sandbox. Creating sandboxes is authorized like a
// create in the caller's tenant, besides reading the original.
func (s *Server) fork(w http.ResponseWriter, r *http.Request) {
	sb, err := s.sandboxFor(r, cerberus.ActionRead)
	if err == nil {
		err = s.admit(r, sb)
	}
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	res := cerberus.Resource{Type: cerberus.ResourceTypeSandbox, TenantID: sb.Tenant}
	if err := s.guard.Authorize(r.Context(), cerberus.ActionCreate, res); err != nil {
		s.writeError(w, r, err)
		return
	}
	var req api.ForkRequest
	if err := decodeJSON(http.MaxBytesReader(w, r.Body, MaxJSONBody), MaxJSONBody, &req); err != nil {
		s.writeError(w, r, err)
		return
	}
	if req.Count == 0 {
		req.Count = 1
	}
	if req.Count < 1 || req.Count > api.MaxForkCount {
		s.writeError(w, r, tartarus.Errorf(tartarus.ErrInvalid, "count %d: must be between 1 and %d", req.Count, api.MaxForkCount))
		return
	}
	list, err := s.be.Fork(r.Context(), sb.ID, req.Count)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusCreated, api.SandboxList{Sandboxes: list})
}

func (s *Server) listTemplates(w http.ResponseWriter, r *http.Request) {
	who, err := caller(r)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	res := cerberus.Resource{Type: cerberus.ResourceTypeTemplate, TenantID: who.TenantID}
	if err := s.guard.Authorize(r.Context(), cerberus.ActionRead, res); err != nil {
		s.writeError(w, r, err)
		return
	}
	list, err := s.be.Templates(r.Context())
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	if list == nil {
		list = []*tartarus.Image{}
	}
	writeJSON(w, http.StatusOK, api.TemplateList{Templates: list})
}

func (s *Server) forgetNode(w http.ResponseWriter, r *http.Request) {
	who, err := caller(r)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	name := r.PathValue("name")
	res := cerberus.Resource{Type: cerberus.ResourceTypeNode, ID: name, TenantID: who.TenantID}
	if err := s.guard.Authorize(r.Context(), cerberus.ActionDelete, res); err != nil {
		s.writeError(w, r, err)
		return
	}
	if !tartarus.ValidName(name) {
		s.writeError(w, r, tartarus.Errorf(tartarus.ErrNotFound, "node %q", name))
		return
	}
	if err := s.be.ForgetNode(r.Context(), name); err != nil {
		s.writeError(w, r, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (s *Server) listNodes(w http.ResponseWriter, r *http.Request) {
	who, err := caller(r)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	res := cerberus.Resource{Type: cerberus.ResourceTypeNode, TenantID: who.TenantID}
	if err := s.guard.Authorize(r.Context(), cerberus.ActionRead, res); err != nil {
		s.writeError(w, r, err)
		return
	}
	nodes, err := s.be.Nodes(r.Context())
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, api.NodeList{Nodes: nodes})
}
