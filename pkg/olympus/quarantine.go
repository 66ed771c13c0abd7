package olympus

import (
	"context"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"time"

	"github.com/tartarus-sandbox/tartarus/pkg/cerberus"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus/api"
)

// Quarantiner serves the quarantine routes (pkg/typhon's Manager has it).
// Without one, those routes answer 501 and quarantined sandboxes refuse
// exec and files to everyone.
//
// Authorization is Cerberus's, on the resource type "quarantine" of the
// sandbox's tenant: read lists and shows records and downloads evidence;
// update examines; delete destroys; admin approves a release (the
// approver role); execute keeps exec and files on a held sandbox and
// hibernates and wakes it (the examiner role). Setting the policy is update on the resource "policy".
type Quarantiner interface {
	Quarantine(ctx context.Context, req *tartarus.QuarantineRequest) (*tartarus.QuarantineRecord, error)
	ListQuarantined(ctx context.Context, f *tartarus.QuarantineFilter) ([]*tartarus.QuarantineRecord, error)
	Get(ctx context.Context, id string) (*tartarus.QuarantineRecord, error)
	Reports(ctx context.Context, sandboxID string) ([]*tartarus.ExaminationReport, error)
	ExamineAs(ctx context.Context, sandboxID, examiner string) (*tartarus.ExaminationReport, error)
	Release(ctx context.Context, sandboxID string, a *tartarus.ReleaseApproval) error
	Destroy(ctx context.Context, sandboxID, by string) (*tartarus.QuarantineRecord, error)
	// Hibernate and Wake put a held sandbox to sleep and back, the hold
	// kept throughout.
	Hibernate(ctx context.Context, sandboxID, by string) (*tartarus.QuarantineRecord, error)
	Wake(ctx context.Context, sandboxID, by string) (*tartarus.QuarantineRecord, error)
	Evidence(ctx context.Context, sandboxID, evidenceID string) (io.ReadCloser, *tartarus.Evidence, error)
	Policy() *tartarus.QuarantinePolicy
	SetPolicy(ctx context.Context, p *tartarus.QuarantinePolicy) error
	// Admit is the containment check: nil when who may reach the sandbox
	// (it is not held, or who is an examiner).
	Admit(id, who string, examiner bool) error
}

// ResourceTypeQuarantine is the Cerberus resource of quarantine records.
const ResourceTypeQuarantine cerberus.ResourceType = "quarantine"

// maxConditionsS bounds how long release conditions may hold.
const maxConditionsS = 30 * 24 * 3600

func (s *Server) quarantineRoutes(v1 func(string, http.HandlerFunc)) {
	v1("POST /v1/sandboxes/{id}/quarantine", s.quarantine)
	v1("GET /v1/quarantine", s.listQuarantine)
	v1("GET /v1/quarantine/policy", s.getQuarantinePolicy)
	v1("PUT /v1/quarantine/policy", s.putQuarantinePolicy)
	v1("GET /v1/quarantine/{id}", s.getQuarantine)
	v1("POST /v1/quarantine/{id}/examine", s.examine)
	v1("POST /v1/quarantine/{id}/release", s.release)
	v1("POST /v1/quarantine/{id}/destroy", s.destroyQuarantined)
	v1("POST /v1/quarantine/{id}/hibernate", s.hibernateQuarantined)
	v1("POST /v1/quarantine/{id}/wake", s.wakeQuarantined)
	v1("GET /v1/quarantine/{id}/evidence/{evidence}", s.evidence)
}

// quarantiner is serve's side argument of the quarantine routes.
func quarantiner(s *Server) (Quarantiner, error) {
	if s.cfg.Quarantine == nil {
		return nil, tartarus.Errorf(tartarus.ErrNotImplemented, "quarantine is not available on this server")
	}
	return s.cfg.Quarantine, nil
}

// mayQuarantine reports whether the caller may do action on the
// quarantine records of tenant.
func (s *Server) mayQuarantine(r *http.Request, action cerberus.Action, id, tenant string) error {
	return s.guard.Authorize(r.Context(), action, cerberus.Resource{Type: ResourceTypeQuarantine, ID: id, TenantID: tenant})
}

// admit is the containment check of every call that reaches into a
// sandbox (exec, files, processes, PTY, its lifetime): a held sandbox
// answers only examiners. It also notes the caller as one who acted in the
// sandbox, who may then not approve its release.
func (s *Server) admit(r *http.Request, sb *tartarus.Sandbox) error {
	q := s.cfg.Quarantine
	if q == nil {
		if sb.State == tartarus.StateQuarantined {
			return tartarus.Errorf(tartarus.ErrPermissionDenied, "sandbox %s is quarantined", sb.ID)
		}
		return nil
	}
	who, err := caller(r)
	if err != nil {
		return err
	}
	examiner := s.mayQuarantine(r, cerberus.ActionExecute, sb.ID, sb.Tenant) == nil
	if sb.State == tartarus.StateQuarantined && !examiner {
		return tartarus.Errorf(tartarus.ErrPermissionDenied, "sandbox %s is quarantined: only examiners may reach it", sb.ID)
	}
	return q.Admit(sb.ID, who.ID, examiner)
}

// held reports whether the sandbox is quarantined, by its state or by the
// quarantine's own record.
func (s *Server) held(sb *tartarus.Sandbox) bool {
	if sb.State == tartarus.StateQuarantined {
		return true
	}
	return s.cfg.Quarantine != nil && s.cfg.Quarantine.Admit(sb.ID, "", false) != nil
}

// reach is sandboxFor plus the containment check: the finder of the
// calls that change a sandbox's life (pause, hibernate, fork, checkpoint,
// timeout), which a held sandbox's owner may not make.
func (s *Server) reach(r *http.Request, action cerberus.Action) (*tartarus.Sandbox, error) {
	sb, err := s.sandboxFor(r, action)
	if err != nil {
		return nil, err
	}
	if err := s.admit(r, sb); err != nil {
		return nil, err
	}
	return sb, nil
}

// usable checks that the sandbox can run commands or serve files, and
// that the caller may reach it.
func (s *Server) usable(r *http.Request, sb *tartarus.Sandbox) error {
	if err := s.admit(r, sb); err != nil {
		return err
	}
	if sb.State == tartarus.StateQuarantined {
		return nil // an examiner's call
	}
	return usable(sb)
}

func (s *Server) quarantine(w http.ResponseWriter, r *http.Request) {
	serve(s, w, r, s.sandboxFor, cerberus.ActionUpdate, quarantiner, func(ctx context.Context, q Quarantiner, sb *tartarus.Sandbox) (int, any, error) {
		var body api.QuarantineBody
		// Evidence may carry up to 16 pieces of 1 MiB, base64 in JSON.
		const limit = 24 << 20
		if err := decodeJSON(http.MaxBytesReader(w, r.Body, limit), limit, &body); err != nil {
			return 0, nil, err
		}
		who, _ := caller(r)
		req := &tartarus.QuarantineRequest{SandboxID: sb.ID, Reason: body.Reason, RequestedBy: who.ID}
		for _, e := range body.Evidence {
			req.Evidence = append(req.Evidence, tartarus.Evidence{Type: e.Type, Description: e.Description, Data: e.Data})
		}
		rec, err := q.Quarantine(ctx, req)
		if err == nil {
			w.Header().Set("Location", "/v1/quarantine/"+sb.ID)
		}
		return http.StatusCreated, rec, err
	})
}

// quarantineFilter reads GET /v1/quarantine's query: held records of the
// caller's tenant by default.
func quarantineFilter(q url.Values, tenant string) (*tartarus.QuarantineFilter, error) {
	f := &tartarus.QuarantineFilter{Tenant: tenant}
	for key := range q {
		switch key {
		case "status", "reason", "sandbox", "tenant", "all":
		default:
			return nil, tartarus.Errorf(tartarus.ErrInvalid, "query parameter %.64q: GET /v1/quarantine takes status, reason, sandbox, tenant and all", key)
		}
	}
	for _, st := range q["status"] {
		switch v := tartarus.QuarantineStatus(st); v {
		case tartarus.QuarantineActive, tartarus.QuarantineExamining, tartarus.QuarantineReleased, tartarus.QuarantineDestroyed:
			f.Statuses = append(f.Statuses, v)
		default:
			return nil, tartarus.Errorf(tartarus.ErrInvalid, "status %.64q: want active, examining, released or destroyed", st)
		}
	}
	if all, _ := strconv.ParseBool(q.Get("all")); !all && len(f.Statuses) == 0 {
		f.Statuses = []tartarus.QuarantineStatus{tartarus.QuarantineActive, tartarus.QuarantineExamining}
	}
	if v := q.Get("reason"); v != "" {
		if !tartarus.QuarantineReason(v).Valid() {
			return nil, tartarus.Errorf(tartarus.ErrInvalid, "reason %.64q: want one of %v", v, tartarus.QuarantineReasons)
		}
		f.Reason = tartarus.QuarantineReason(v)
	}
	f.SandboxID = q.Get("sandbox")
	if t := q.Get("tenant"); t != "" {
		f.Tenant = t
	}
	if f.Tenant == "*" {
		f.Tenant = "" // every tenant's
	}
	return f, nil
}

func (s *Server) listQuarantine(w http.ResponseWriter, r *http.Request) {
	serve(s, w, r, s.callerOnly, cerberus.ActionRead, quarantiner, func(ctx context.Context, q Quarantiner, who *cerberus.Identity) (int, any, error) {
		f, err := quarantineFilter(r.URL.Query(), who.TenantID)
		if err != nil {
			return 0, nil, err
		}
		// Another tenant's records need read on that tenant's quarantine
		// (an examiner's role).
		scope := f.Tenant
		if scope == "" {
			scope = "*"
		}
		if err := s.mayQuarantine(r, cerberus.ActionRead, "", scope); err != nil {
			return 0, nil, err
		}
		recs, err := q.ListQuarantined(ctx, f)
		return http.StatusOK, api.QuarantineList{Quarantines: recs}, err
	})
}

// callerOnly is the finder of routes that check their own resource: it
// only needs an authenticated caller.
func (s *Server) callerOnly(r *http.Request, _ cerberus.Action) (*cerberus.Identity, error) {
	return caller(r)
}

// heldTarget is what the quarantine routes work on: the sandbox's latest
// record and the caller.
type heldTarget struct {
	rec *tartarus.QuarantineRecord
	who *cerberus.Identity
}

// recordFor loads the latest quarantine record of the sandbox in the path
// and checks that the caller may do action on it; another tenant's record
// is not found unless the caller's role reaches that tenant.
func (s *Server) recordFor(r *http.Request, action cerberus.Action) (heldTarget, error) {
	who, err := caller(r)
	if err != nil {
		return heldTarget{}, err
	}
	q, err := quarantiner(s)
	if err != nil {
		return heldTarget{}, err
	}
	id := r.PathValue("id")
	notFound := tartarus.Errorf(tartarus.ErrNotFound, "quarantine of %.80q", id)
	if !tartarus.ValidName(id) {
		return heldTarget{}, notFound
	}
	rec, err := q.Get(r.Context(), id)
	if err != nil {
		return heldTarget{}, err
	}
	if err := s.mayQuarantine(r, action, rec.SandboxID, rec.Tenant); err != nil {
		if rec.Tenant != who.TenantID && s.mayQuarantine(r, cerberus.ActionRead, rec.SandboxID, rec.Tenant) != nil {
			return heldTarget{}, notFound
		}
		return heldTarget{}, err
	}
	return heldTarget{rec: rec, who: who}, nil
}

func (s *Server) getQuarantine(w http.ResponseWriter, r *http.Request) {
	serve(s, w, r, s.recordFor, cerberus.ActionRead, quarantiner, func(ctx context.Context, q Quarantiner, h heldTarget) (int, any, error) {
		reps, err := q.Reports(ctx, h.rec.SandboxID)
		return http.StatusOK, api.QuarantineDetail{Record: h.rec, Reports: reps}, err
	})
}

func (s *Server) examine(w http.ResponseWriter, r *http.Request) {
	serve(s, w, r, s.recordFor, cerberus.ActionUpdate, quarantiner, func(ctx context.Context, q Quarantiner, h heldTarget) (int, any, error) {
		rep, err := q.ExamineAs(ctx, h.rec.SandboxID, h.who.ID)
		return http.StatusOK, rep, err
	})
}

// release approves a release: the caller is the approver (admin on the
// quarantine); the two-person rule is the Quarantiner's.
func (s *Server) release(w http.ResponseWriter, r *http.Request) {
	serve(s, w, r, s.recordFor, cerberus.ActionAdmin, quarantiner, func(ctx context.Context, q Quarantiner, h heldTarget) (int, any, error) {
		var body api.ApproveBody
		if err := decodeJSON(http.MaxBytesReader(w, r.Body, MaxJSONBody), MaxJSONBody, &body); err != nil {
			return 0, nil, err
		}
		if body.ExpiresInS < 0 || body.ExpiresInS > maxConditionsS {
			return 0, nil, tartarus.Errorf(tartarus.ErrInvalid, "expires_in_s %d: want 0 (default) to %d", body.ExpiresInS, maxConditionsS)
		}
		a := &tartarus.ReleaseApproval{ApprovedBy: h.who.ID, Reason: body.Reason, Conditions: body.Conditions,
			ConditionsFor: time.Duration(body.ExpiresInS) * time.Second}
		if err := q.Release(ctx, h.rec.SandboxID, a); err != nil {
			return 0, nil, err
		}
		out, err := q.Get(ctx, h.rec.SandboxID)
		return http.StatusOK, out, err
	})
}

func (s *Server) destroyQuarantined(w http.ResponseWriter, r *http.Request) {
	serve(s, w, r, s.recordFor, cerberus.ActionDelete, quarantiner, func(ctx context.Context, q Quarantiner, h heldTarget) (int, any, error) {
		out, err := q.Destroy(ctx, h.rec.SandboxID, h.who.ID)
		return http.StatusOK, out, err
	})
}

// hibernateQuarantined puts a held sandbox to sleep, still held (the
// sandbox routes' hibernate refuses a quarantined sandbox).
func (s *Server) hibernateQuarantined(w http.ResponseWriter, r *http.Request) {
	serve(s, w, r, s.recordFor, cerberus.ActionExecute, quarantiner, func(ctx context.Context, q Quarantiner, h heldTarget) (int, any, error) {
		out, err := q.Hibernate(ctx, h.rec.SandboxID, h.who.ID)
		return http.StatusOK, out, err
	})
}

// wakeQuarantined wakes a held sandbox and contains it again.
func (s *Server) wakeQuarantined(w http.ResponseWriter, r *http.Request) {
	serve(s, w, r, s.recordFor, cerberus.ActionExecute, quarantiner, func(ctx context.Context, q Quarantiner, h heldTarget) (int, any, error) {
		out, err := q.Wake(ctx, h.rec.SandboxID, h.who.ID)
		return http.StatusOK, out, err
	})
}

// evidence streams one piece of evidence; its checksum goes in the
// X-Checksum header, and the stream breaks off if the stored bytes do not
// match it.
func (s *Server) evidence(w http.ResponseWriter, r *http.Request) {
	serve(s, w, r, s.recordFor, cerberus.ActionRead, quarantiner, func(ctx context.Context, q Quarantiner, h heldTarget) (int, any, error) {
		rc, ev, err := q.Evidence(ctx, h.rec.SandboxID, r.PathValue("evidence"))
		if err != nil {
			return 0, nil, err
		}
		defer rc.Close()
		w.Header().Set("Content-Type", "application/octet-stream")
		w.Header().Set("X-Checksum", ev.Checksum)
		w.Header().Set("X-Evidence-Type", string(ev.Type))
		w.Header().Set("X-Evidence-Source", string(ev.Source))
		w.Header().Set("Content-Length", strconv.FormatInt(ev.Size, 10))
		w.WriteHeader(http.StatusOK)
		if _, err := io.Copy(w, rc); err != nil {
			// Headers are gone: cut the connection so the client sees a
			// short body.
			s.log.Error("evidence download broken off", "sandbox", h.rec.SandboxID, "evidence", ev.ID, "err", err)
			panic(http.ErrAbortHandler)
		}
		return 0, nil, nil
	})
}

// policyFor checks the caller's right to action on the quarantine policy,
// which holds for every tenant's sandboxes.
func (s *Server) policyFor(r *http.Request, action cerberus.Action) (*cerberus.Identity, error) {
	who, err := caller(r)
	if err != nil {
		return nil, err
	}
	tenant := who.TenantID
	if action != cerberus.ActionRead {
		tenant = "*"
	}
	res := cerberus.Resource{Type: cerberus.ResourceTypePolicy, ID: "quarantine", TenantID: tenant}
	if err := s.guard.Authorize(r.Context(), action, res); err != nil {
		return nil, err
	}
	return who, nil
}

func (s *Server) getQuarantinePolicy(w http.ResponseWriter, r *http.Request) {
	serve(s, w, r, s.policyFor, cerberus.ActionRead, quarantiner, func(_ context.Context, q Quarantiner, _ *cerberus.Identity) (int, any, error) {
		return http.StatusOK, q.Policy(), nil
	})
}

func (s *Server) putQuarantinePolicy(w http.ResponseWriter, r *http.Request) {
	serve(s, w, r, s.policyFor, cerberus.ActionUpdate, quarantiner, func(ctx context.Context, q Quarantiner, who *cerberus.Identity) (int, any, error) {
		var p tartarus.QuarantinePolicy
		if err := decodeJSON(http.MaxBytesReader(w, r.Body, MaxJSONBody), MaxJSONBody, &p); err != nil {
			return 0, nil, err
		}
		p.UpdatedBy = who.ID
		if err := q.SetPolicy(ctx, &p); err != nil {
			return 0, nil, err
		}
		return http.StatusOK, q.Policy(), nil
	})
}
