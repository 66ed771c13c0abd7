package olympus

import (
	"context"
	"net/http"

	"github.com/tartarus-sandbox/tartarus/pkg/cerberus"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus/api"
)

// Templates users make:
//
//	POST /v1/sandboxes/{id}/template {"name":"N"}  → 201 template (the sandbox's disk and memory)

// TemplateSaver is the optional side interface of a Backend that saves a
// sandbox as a template of its tenant (hecatoncheir.Agent).
type TemplateSaver interface {
	SaveTemplate(ctx context.Context, id, name string) (*tartarus.Image, error)
}

func templateSaver(s *Server) (TemplateSaver, error) {
	return backendAs[TemplateSaver](s, "way to save a sandbox as a template")
}

// saveTemplate makes a template of a sandbox. It copies the sandbox's
// memory and files (a snapshot), and creates a template in its tenant.
func (s *Server) saveTemplate(w http.ResponseWriter, r *http.Request) {
	serve(s, w, r, s.reach, cerberus.ActionSnapshot, templateSaver, func(ctx context.Context, ts TemplateSaver, sb *tartarus.Sandbox) (int, any, error) {
		res := cerberus.Resource{Type: cerberus.ResourceTypeTemplate, TenantID: sb.Tenant}
		if err := s.guard.Authorize(ctx, cerberus.ActionCreate, res); err != nil {
			return 0, nil, err
		}
		var req api.SaveTemplateRequest
		if err := decodeJSON(http.MaxBytesReader(w, r.Body, MaxJSONBody), MaxJSONBody, &req); err != nil {
			return 0, nil, err
		}
		if !tartarus.ValidName(req.Name) || req.Name[0] == '.' {
			return 0, nil, tartarus.Errorf(tartarus.ErrInvalid, "name %q: a template name is lowercase letters, digits, '-', '_' and '.', not starting with '.'", req.Name)
		}
		img, err := ts.SaveTemplate(ctx, sb.ID, req.Name)
		return http.StatusCreated, img, err
	})
}
