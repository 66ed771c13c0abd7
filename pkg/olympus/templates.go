package olympus

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strconv"
	"strings"

	"github.com/tartarus-sandbox/tartarus/pkg/cerberus"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus/api"
)

// Templates users make:
//
//	POST   /v1/sandboxes/{id}/template {"name":"N"}  → 201 template (the sandbox's disk and memory)
//	POST   /v1/templates?name=N[&dockerfile=F][&build_arg=K=V…][&memory_mb=][&cpus=][&timeout_s=][&network=open]
//	       body: the build context as a tar stream        → 202 {"id","name","status"}, Location: the build's log
//	GET    /v1/templates/{name}/builds/{id}              → NDJSON build events (templates.Event), until it ends
//	DELETE /v1/templates/{name}                          → 204 (refused, 409, while sandboxes use it); name is NAME[:TAG] or a version
//
// NAME is NAME:latest; save, build and import make a new version and then
// move the tag to it.
//	POST   /v1/templates/import?name=N[&source=S]        body: `docker save` or OCI layout tarball → 201 template
//	POST   /v1/templates/import?name=N&ref=REF[&insecure=true]  no body: the server pulls REF from its registry → 201 template

// TemplateBuilds runs Dockerfile builds and image imports
// (templates.Builder).
type TemplateBuilds interface {
	// StartFromContext starts a build from the tar stream of its context,
	// unpacked under tmpDir.
	StartFromContext(tenant string, p *api.TemplateBuildRequest, context io.Reader, tmpDir string) (api.TemplateBuild, error)
	BuildLog(tenant, name, id string) (api.TemplateBuildLog, error)
	Import(ctx context.Context, tenant, name, source string, r io.Reader) (*tartarus.Image, error)
}

// RegistryImporter is the optional side interface of TemplateBuilds that
// pulls an image from a registry itself (templates.Builder).
type RegistryImporter interface {
	ImportFromRegistry(ctx context.Context, tenant, name, ref string, insecure bool) (*tartarus.Image, error)
}

// TemplateDeleter is the optional side interface of a Backend that deletes
// tenant templates (hecatoncheir.Agent).
type TemplateDeleter interface {
	DeleteTemplate(ctx context.Context, name string) error
}

func templateBuilds(s *Server) (TemplateBuilds, error) {
	if s.cfg.Builds == nil {
		return nil, tartarus.Errorf(tartarus.ErrNotImplemented, "this server builds no templates")
	}
	return s.cfg.Builds, nil
}

func templateDeleter(s *Server) (TemplateDeleter, error) {
	return backendAs[TemplateDeleter](s, "way to delete templates")
}

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
		if err := s.checkTemplateRoom(ctx, sb.Tenant); err != nil {
			return 0, nil, err
		}
		var req api.SaveTemplateRequest
		if err := decodeJSON(http.MaxBytesReader(w, r.Body, MaxJSONBody), MaxJSONBody, &req); err != nil {
			return 0, nil, err
		}
		if n, t, _ := strings.Cut(req.Name, ":"); !tartarus.ValidName(n) || n[0] == '.' || (t != "" && !tartarus.ValidName(t)) {
			return 0, nil, tartarus.Errorf(tartarus.ErrInvalid, "name %q: a template name is lowercase letters, digits, '-', '_' and '.', not starting with '.', and an optional :TAG", req.Name)
		}
		img, err := ts.SaveTemplate(ctx, sb.ID, req.Name)
		return http.StatusCreated, img, err
	})
}

// buildTemplate starts a Dockerfile build from the tar stream of its
// context.
func (s *Server) buildTemplate(w http.ResponseWriter, r *http.Request) {
	serve(s, w, r, s.tenantFor(cerberus.ResourceTypeTemplate), cerberus.ActionCreate, templateBuilds, func(ctx context.Context, tb TemplateBuilds, who *cerberus.Identity) (int, any, error) {
		p, err := buildRequest(r)
		if err != nil {
			return 0, nil, err
		}
		if err := s.checkTemplateRoom(ctx, who.TenantID); err != nil {
			return 0, nil, err
		}
		body := http.MaxBytesReader(w, r.Body, api.MaxTemplateContextBytes+(64<<20))
		b, err := tb.StartFromContext(who.TenantID, p, body, "")
		if err != nil {
			return 0, nil, err
		}
		w.Header().Set("Location", "/v1/templates/"+b.Name+"/builds/"+b.ID)
		return http.StatusAccepted, b, nil
	})
}

// buildRequest reads a build's parameters from the query.
func buildRequest(r *http.Request) (*api.TemplateBuildRequest, error) {
	q := r.URL.Query()
	p := &api.TemplateBuildRequest{Name: q.Get("name"), Dockerfile: q.Get("dockerfile"), Args: map[string]string{}}
	var errs []error
	num := func(key string) int {
		v := q.Get(key)
		if v == "" {
			return 0
		}
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 {
			errs = append(errs, fmt.Errorf("%s %q: a non-negative integer", key, v))
		}
		return n
	}
	p.MemoryMB, p.CPUs, p.TimeoutS, p.ReadyTimeoutS = num("memory_mb"), num("cpus"), num("timeout_s"), num("ready_timeout_s")
	for _, kv := range q["build_arg"] {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || k == "" {
			errs = append(errs, fmt.Errorf("build_arg %q: want NAME=value", kv))
			continue
		}
		p.Args[k] = v
	}
	if mode := q.Get("network"); mode != "" {
		p.Network = &tartarus.NetworkSpec{Mode: mode, Allow: q["allow"]}
	}
	if err := errors.Join(errs...); err != nil {
		return nil, tartarus.Errorf(tartarus.ErrInvalid, "build: %v", err)
	}
	return p, nil
}

// buildLog streams a build's events as NDJSON until the build ends.
func (s *Server) buildLog(w http.ResponseWriter, r *http.Request) {
	serve(s, w, r, s.tenantFor(cerberus.ResourceTypeTemplate), cerberus.ActionRead, templateBuilds, func(ctx context.Context, tb TemplateBuilds, who *cerberus.Identity) (int, any, error) {
		b, err := tb.BuildLog(who.TenantID, r.PathValue("name"), r.PathValue("id"))
		if err != nil {
			return 0, nil, err
		}
		w.Header().Set("Content-Type", "application/x-ndjson")
		w.WriteHeader(http.StatusOK)
		rc := http.NewResponseController(w)
		enc := json.NewEncoder(w)
		next := 0
		for {
			evs, over, changed := b.Events(next)
			for _, e := range evs {
				if err := enc.Encode(e); err != nil {
					return 0, nil, nil
				}
			}
			next += len(evs)
			_ = rc.Flush()
			if over && len(evs) == 0 {
				return 0, nil, nil
			}
			if over {
				continue // read what came with the end
			}
			select {
			case <-ctx.Done():
				return 0, nil, nil
			case <-changed:
			}
		}
	})
}

// deleteTemplate removes one of the caller's tenant's templates.
func (s *Server) deleteTemplate(w http.ResponseWriter, r *http.Request) {
	serve(s, w, r, s.tenantFor(cerberus.ResourceTypeTemplate), cerberus.ActionDelete, templateDeleter, func(ctx context.Context, td TemplateDeleter, who *cerberus.Identity) (int, any, error) {
		name := r.PathValue("name")
		all, err := s.be.Templates(ctx)
		if err != nil {
			return 0, nil, err
		}
		// A tag (NAME:TAG, a bare NAME is NAME:latest) or a version's name.
		tag := name
		if !strings.Contains(tag, ":") {
			tag += ":latest"
		}
		for _, img := range all {
			if img.Name != name && !slices.Contains(img.Tags, tag) {
				continue
			}
			if img.Tenant == "" {
				return 0, nil, tartarus.Errorf(tartarus.ErrFailedPrecondition, "template %s is built in", name)
			}
			if img.Tenant != who.TenantID {
				break // another tenant's: not found, as its sandboxes are
			}
			return http.StatusNoContent, nil, td.DeleteTemplate(ctx, name)
		}
		return 0, nil, tartarus.Errorf(tartarus.ErrNotFound, "template %s", name)
	})
}

// importImage makes a template of an image tarball in the request body,
// or of the image ref names, which the server pulls from its registry.
func (s *Server) importImage(w http.ResponseWriter, r *http.Request) {
	serve(s, w, r, s.tenantFor(cerberus.ResourceTypeTemplate), cerberus.ActionCreate, templateBuilds, func(ctx context.Context, tb TemplateBuilds, who *cerberus.Identity) (int, any, error) {
		if err := s.checkTemplateRoom(ctx, who.TenantID); err != nil {
			return 0, nil, err
		}
		q := r.URL.Query()
		if ref := q.Get("ref"); ref != "" {
			ri, ok := tb.(RegistryImporter)
			if !ok {
				return 0, nil, tartarus.Errorf(tartarus.ErrNotImplemented, "this server pulls no images from registries")
			}
			insecure, err := strconv.ParseBool(cmp.Or(q.Get("insecure"), "false"))
			if err != nil {
				return 0, nil, tartarus.Errorf(tartarus.ErrInvalid, "insecure %q: true or false", q.Get("insecure"))
			}
			img, err := ri.ImportFromRegistry(ctx, who.TenantID, q.Get("name"), ref, insecure)
			return http.StatusCreated, img, err
		}
		source := q.Get("source")
		if source == "" {
			source = "tarball"
		}
		if len(source) > 256 {
			return 0, nil, tartarus.Errorf(tartarus.ErrInvalid, "source: at most 256 bytes")
		}
		body := http.MaxBytesReader(w, r.Body, api.MaxTemplateImageBytes+(64<<20))
		img, err := tb.Import(ctx, who.TenantID, q.Get("name"), source, body)
		return http.StatusCreated, img, err
	})
}

// templateBytes is the disk tenant's templates take on this node: every
// version and the build cache's step templates (cache-…), each its root
// filesystem, kernel and initramfs as the catalog counts them (blocks in
// use). Their memory snapshots are not counted.
func (s *Server) templateBytes(ctx context.Context, tenant string) (int64, error) {
	all, err := s.be.Templates(ctx)
	if err != nil {
		return 0, fmt.Errorf("template storage of %s: %w", tenant, err)
	}
	var n int64
	for _, img := range all {
		if img.Tenant == tenant {
			n += img.SizeBytes
		}
	}
	return n, nil
}

// checkTemplateRoom refuses a save, build or import while tenant's
// templates take its template_bytes quota or more. The size of what is
// made is not known before it is made, so the one that crosses the limit
// is kept and the next is refused.
func (s *Server) checkTemplateRoom(ctx context.Context, tenant string) error {
	q, ok := s.quotaOf(tenant)
	if !ok || q.TemplateBytes == 0 {
		return nil
	}
	used, err := s.templateBytes(ctx, tenant)
	if err != nil {
		return err
	}
	if used >= q.TemplateBytes {
		return tartarus.Errorf(tartarus.ErrQuotaExceeded, "tenant %s is at its template_bytes quota: limit %d bytes, its templates take %d bytes (build cache included); delete templates or cache-… steps (tartarus template rm) to make room",
			tenant, q.TemplateBytes, used)
	}
	return nil
}
