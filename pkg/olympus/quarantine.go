package olympus

import (
	"context"
	"io"
	"net/http"
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
// approver role); execute keeps exec and files on a held sandbox (the
// examiner role). Setting the policy is update on the resource "policy".
type Quarantiner interface {
	Quarantine(ctx context.Context, req *tartarus.QuarantineRequest) (*tartarus.QuarantineRecord, error)
	ListQuarantined(ctx context.Context, f *tartarus.QuarantineFilter) ([]*tartarus.QuarantineRecord, error)
	Get(ctx context.Context, id string) (*tartarus.QuarantineRecord, error)
	Reports(ctx context.Context, sandboxID string) ([]*tartarus.ExaminationReport, error)
	ExamineAs(ctx context.Context, sandboxID, examiner string) (*tartarus.ExaminationReport, error)
	Release(ctx context.Context, sandboxID string, a *tartarus.ReleaseApproval) error
	Destroy(ctx context.Context, sandboxID, by string) (*tartarus.QuarantineRecord, error)
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
	v1("GET /v1/quarantine/{id}/evidence/{evidence}", s.evidence)
}

func (s *Server) quarantiner() (Quarantiner, error) {
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
	sb, err := s.sandboxFor(r, cerberus.ActionUpdate)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	q, err := s.quarantiner()
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	var body api.QuarantineBody
	// Evidence may carry up to 16 pieces of 1 MiB, base64 in JSON.
	const limit = 24 << 20
	if err := decodeJSON(http.MaxBytesReader(w, r.Body, limit), limit, &body); err != nil {
		s.writeError(w, r, err)
		return
	}
	who, _ := caller(r)
	req := &tartarus.QuarantineRequest{SandboxID: sb.ID, Reason: body.Reason, RequestedBy: who.ID}
	for _, e := range body.Evidence {
		req.Evidence = append(req.Evidence, tartarus.Evidence{Type: e.Type, Description: e.Description, Data: e.Data})
	}
	rec, err := q.Quarantine(r.Context(), req)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	w.Header().Set("Location", "/v1/quarantine/"+sb.ID)
	writeJSON(w, http.StatusCreated, rec)
}

func (s *Server) listQuarantine(w http.ResponseWriter, r *http.Request) {
	who, err := caller(r)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	q, err := s.quarantiner()
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	f := &tartarus.QuarantineFilter{}
	qs := r.URL.Query()
	for key := range qs {
		switch key {
		case "status", "reason", "sandbox", "tenant", "all":
		default:
			s.writeError(w, r, tartarus.Errorf(tartarus.ErrInvalid, "query parameter %.64q: GET /v1/quarantine takes status, reason, sandbox, tenant and all", key))
			return
		}
	}
	for _, st := range qs["status"] {
		switch v := tartarus.QuarantineStatus(st); v {
		case tartarus.QuarantineActive, tartarus.QuarantineExamining, tartarus.QuarantineReleased, tartarus.QuarantineDestroyed:
			f.Statuses = append(f.Statuses, v)
		default:
			s.writeError(w, r, tartarus.Errorf(tartarus.ErrInvalid, "status %.64q: want active, examining, released or destroyed", st))
			return
		}
	}
	if all, _ := strconv.ParseBool(qs.Get("all")); !all && len(f.Statuses) == 0 {
		f.Statuses = []tartarus.QuarantineStatus{tartarus.QuarantineActive, tartarus.QuarantineExamining}
	}
	if v := qs.Get("reason"); v != "" {
		if !tartarus.QuarantineReason(v).Valid() {
			s.writeError(w, r, tartarus.Errorf(tartarus.ErrInvalid, "reason %.64q: want one of %v", v, tartarus.QuarantineReasons))
			return
		}
		f.Reason = tartarus.QuarantineReason(v)
	}
	f.SandboxID = qs.Get("sandbox")
	// Another tenant's records need read on that tenant's quarantine (an
	// examiner's role); the default is the caller's own tenant.
	f.Tenant = who.TenantID
	if t := qs.Get("tenant"); t != "" {
		f.Tenant = t
	}
	if f.Tenant == "*" {
		f.Tenant = "" // every tenant's
	}
	scope := f.Tenant
	if scope == "" {
		scope = "*"
	}
	if err := s.mayQuarantine(r, cerberus.ActionRead, "", scope); err != nil {
		s.writeError(w, r, err)
		return
	}
	recs, err := q.ListQuarantined(r.Context(), f)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, api.QuarantineList{Quarantines: recs})
}

// recordFor loads the latest quarantine record of the sandbox in the path
// and checks that the caller may do action on it; another tenant's record
// is not found unless the caller's role reaches that tenant.
func (s *Server) recordFor(r *http.Request, action cerberus.Action) (Quarantiner, *tartarus.QuarantineRecord, *cerberus.Identity, error) {
	who, err := caller(r)
	if err != nil {
		return nil, nil, nil, err
	}
	q, err := s.quarantiner()
	if err != nil {
		return nil, nil, nil, err
	}
	id := r.PathValue("id")
	notFound := tartarus.Errorf(tartarus.ErrNotFound, "quarantine of %.80q", id)
	if !tartarus.ValidName(id) {
		return nil, nil, nil, notFound
	}
	rec, err := q.Get(r.Context(), id)
	if err != nil {
		return nil, nil, nil, err
	}
	if err := s.mayQuarantine(r, action, rec.SandboxID, rec.Tenant); err != nil {
		if rec.Tenant != who.TenantID && s.mayQuarantine(r, cerberus.ActionRead, rec.SandboxID, rec.Tenant) != nil {
			return nil, nil, nil, notFound
		}
		return nil, nil, nil, err
	}
	return q, rec, who, nil
}

func (s *Server) getQuarantine(w http.ResponseWriter, r *http.Request) {
	q, rec, _, err := s.recordFor(r, cerberus.ActionRead)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	reps, err := q.Reports(r.Context(), rec.SandboxID)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, api.QuarantineDetail{Record: rec, Reports: reps})
}

func (s *Server) examine(w http.ResponseWriter, r *http.Request) {
	q, rec, who, err := s.recordFor(r, cerberus.ActionUpdate)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	rep, err := q.ExamineAs(r.Context(), rec.SandboxID, who.ID)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, rep)
}

func (s *Server) release(w http.ResponseWriter, r *http.Request) {
	q, rec, who, err := s.recordFor(r, cerberus.ActionAdmin)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	var body api.ApproveBody
	if err := decodeJSON(http.MaxBytesReader(w, r.Body, MaxJSONBody), MaxJSONBody, &body); err != nil {
		s.writeError(w, r, err)
		return
	}
	if body.ExpiresInS < 0 || body.ExpiresInS > maxConditionsS {
		s.writeError(w, r, tartarus.Errorf(tartarus.ErrInvalid, "expires_in_s %d: want 0 (default) to %d", body.ExpiresInS, maxConditionsS))
		return
	}
	a := &tartarus.ReleaseApproval{ApprovedBy: who.ID, Reason: body.Reason, Conditions: body.Conditions,
		ConditionsFor: time.Duration(body.ExpiresInS) * time.Second}
	if err := q.Release(r.Context(), rec.SandboxID, a); err != nil {
		s.writeError(w, r, err)
		return
	}
	out, err := q.Get(r.Context(), rec.SandboxID)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, out)
}

func (s *Server) destroyQuarantined(w http.ResponseWriter, r *http.Request) {
	q, rec, who, err := s.recordFor(r, cerberus.ActionDelete)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	out, err := q.Destroy(r.Context(), rec.SandboxID, who.ID)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, out)
}

// evidence streams one piece of evidence; its checksum goes in the
// X-Checksum header, and the stream breaks off if the stored bytes do not
// match it.
func (s *Server) evidence(w http.ResponseWriter, r *http.Request) {
	q, rec, _, err := s.recordFor(r, cerberus.ActionRead)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	rc, ev, err := q.Evidence(r.Context(), rec.SandboxID, r.PathValue("evidence"))
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	defer rc.Close()
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("X-Checksum", ev.Checksum)
	w.Header().Set("X-Evidence-Type", string(ev.Type))
	w.Header().Set("X-Evidence-Source", string(ev.Source))
	w.Header().Set("Content-Length", strconv.FormatInt(ev.Size, 10))
	w.WriteHeader(http.StatusOK)
	if _, err := io.Copy(w, rc); err != nil {
		// Headers are gone: cut the connection so the client sees a short body.
		s.log.Error("evidence download broken off", "sandbox", rec.SandboxID, "evidence", ev.ID, "err", err)
		panic(http.ErrAbortHandler)
	}
}

func (s *Server) getQuarantinePolicy(w http.ResponseWriter, r *http.Request) {
	who, err := caller(r)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	q, err := s.quarantiner()
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	if err := s.guard.Authorize(r.Context(), cerberus.ActionRead, cerberus.Resource{Type: cerberus.ResourceTypePolicy, ID: "quarantine", TenantID: who.TenantID}); err != nil {
		s.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, q.Policy())
}

func (s *Server) putQuarantinePolicy(w http.ResponseWriter, r *http.Request) {
	who, err := caller(r)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	q, err := s.quarantiner()
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	// The policy holds for every tenant's sandboxes.
	if err := s.guard.Authorize(r.Context(), cerberus.ActionUpdate, cerberus.Resource{Type: cerberus.ResourceTypePolicy, ID: "quarantine", TenantID: "*"}); err != nil {
		s.writeError(w, r, err)
		return
	}
	var p tartarus.QuarantinePolicy
	if err := decodeJSON(http.MaxBytesReader(w, r.Body, MaxJSONBody), MaxJSONBody, &p); err != nil {
		s.writeError(w, r, err)
		return
	}
	p.UpdatedBy = who.ID
	if err := q.SetPolicy(r.Context(), &p); err != nil {
		s.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, q.Policy())
}
