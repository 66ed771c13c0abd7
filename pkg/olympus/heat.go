package olympus

import (
	"context"
	"net/http"

	"github.com/tartarus-sandbox/tartarus/pkg/cerberus"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus/api"
)

// HeatManager is the optional side interface of a Backend that classifies
// creates by heat (pkg/phlegethon): heat metrics, explanations, pools and
// resource classes. The single node's agent has it; a backend without it
// answers those routes 501.
type HeatManager interface {
	HeatMetrics(ctx context.Context) (*api.HeatMetrics, error)
	ExplainHeat(ctx context.Context, template string) (*tartarus.SandboxHeat, error)
	HeatPools(ctx context.Context) ([]api.Pool, error)
	DefineHeatPool(ctx context.Context, p *api.Pool) (*api.Pool, error)
	RemoveHeatPool(ctx context.Context, name string) error
	HeatClasses(ctx context.Context) ([]api.ResourceClass, error)
}

func (s *Server) heatManager() (HeatManager, error) {
	h, ok := s.be.(HeatManager)
	if !ok {
		return nil, tartarus.Errorf(tartarus.ErrNotImplemented, "heat classes, pools and queues are not available on this server")
	}
	return h, nil
}

// heatCall authorizes action on resource type rt in the caller's tenant
// and returns the heat manager.
func (s *Server) heatCall(r *http.Request, rt cerberus.ResourceType, action cerberus.Action) (HeatManager, error) {
	who, err := caller(r)
	if err != nil {
		return nil, err
	}
	if err := s.guard.Authorize(r.Context(), action, cerberus.Resource{Type: rt, TenantID: who.TenantID}); err != nil {
		return nil, err
	}
	return s.heatManager()
}

func (s *Server) getHeat(w http.ResponseWriter, r *http.Request) {
	h, err := s.heatCall(r, cerberus.ResourceTypeSandbox, cerberus.ActionRead)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	m, err := h.HeatMetrics(r.Context())
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, m)
}

func (s *Server) explainHeat(w http.ResponseWriter, r *http.Request) {
	h, err := s.heatCall(r, cerberus.ResourceTypeTemplate, cerberus.ActionRead)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	t := r.URL.Query().Get("template")
	if t == "" {
		s.writeError(w, r, tartarus.Errorf(tartarus.ErrInvalid, "template: a query parameter is required (?template=NAME)"))
		return
	}
	e, err := h.ExplainHeat(r.Context(), t)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, e)
}

// Pools and classes shape the whole node, so they are node resources
// (an operator's, by the default policy).
func (s *Server) listPools(w http.ResponseWriter, r *http.Request) {
	h, err := s.heatCall(r, cerberus.ResourceTypeNode, cerberus.ActionRead)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	pools, err := h.HeatPools(r.Context())
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, api.PoolList{Pools: pools})
}

func (s *Server) createPool(w http.ResponseWriter, r *http.Request) {
	h, err := s.heatCall(r, cerberus.ResourceTypeNode, cerberus.ActionCreate)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	var p api.Pool
	if err := decodeJSON(http.MaxBytesReader(w, r.Body, MaxJSONBody), MaxJSONBody, &p); err != nil {
		s.writeError(w, r, err)
		return
	}
	out, err := h.DefineHeatPool(r.Context(), &p)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	w.Header().Set("Location", "/v1/pools/"+out.Name)
	writeJSON(w, http.StatusCreated, out)
}

func (s *Server) deletePool(w http.ResponseWriter, r *http.Request) {
	h, err := s.heatCall(r, cerberus.ResourceTypeNode, cerberus.ActionDelete)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	name := r.PathValue("name")
	if !tartarus.ValidName(name) {
		s.writeError(w, r, tartarus.Errorf(tartarus.ErrNotFound, "pool %q", name))
		return
	}
	if err := h.RemoveHeatPool(r.Context(), name); err != nil {
		s.writeError(w, r, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (s *Server) listClasses(w http.ResponseWriter, r *http.Request) {
	h, err := s.heatCall(r, cerberus.ResourceTypeTemplate, cerberus.ActionRead)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	cs, err := h.HeatClasses(r.Context())
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, api.ClassList{Classes: cs})
}
