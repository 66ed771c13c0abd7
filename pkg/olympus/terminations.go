package olympus

import (
	"context"
	"net/http"
	"net/url"
	"strconv"
	"time"

	"github.com/tartarus-sandbox/tartarus/pkg/cerberus"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus/api"
)

// Terminator is the optional side interface of a Backend whose sandboxes
// end through phased terminations (pkg/thanatos): a grace period, a signal,
// a checkpoint, and a status to follow. The single node's agent has it; a
// backend without it answers those routes 501 and ends sandboxes with
// Destroy.
type Terminator interface {
	Terminate(ctx context.Context, id string, opts *tartarus.ShutdownOptions) (*tartarus.TerminationStatus, error)
	Termination(ctx context.Context, id string) (*tartarus.TerminationStatus, error)
	PendingTerminations(ctx context.Context) ([]*tartarus.TerminationStatus, error)
	Checkpoint(ctx context.Context, id string) (*tartarus.Checkpoint, error)
	Checkpoints(ctx context.Context, tenant string) ([]*tartarus.Checkpoint, error)
}

// maxGraceS bounds grace_s on DELETE.
const maxGraceS = 3600

// shutdownOptions reads DELETE's query: grace_s, signal, checkpoint,
// reason, callback_url. ok is false when none is given (today's immediate
// DELETE).
func shutdownOptions(q url.Values) (opts *tartarus.ShutdownOptions, ok bool, err error) {
	o := &tartarus.ShutdownOptions{}
	for key := range q {
		switch key {
		case "grace_s", "signal", "checkpoint", "reason", "callback_url":
		default:
			return nil, false, tartarus.Errorf(tartarus.ErrInvalid, "query parameter %q: DELETE takes grace_s, signal, checkpoint, reason and callback_url", key)
		}
		ok = true
	}
	if v := q.Get("grace_s"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 || n > maxGraceS {
			return nil, false, tartarus.Errorf(tartarus.ErrInvalid, "grace_s %q: want 0 to %d seconds", v, maxGraceS)
		}
		o.GracePeriod = time.Duration(n) * time.Second
	}
	if v := q.Get("checkpoint"); v != "" {
		b, err := strconv.ParseBool(v)
		if err != nil {
			return nil, false, tartarus.Errorf(tartarus.ErrInvalid, "checkpoint %q: want true or false", v)
		}
		o.CreateCheckpoint = b
	}
	o.Signal = tartarus.Signal(q.Get("signal"))
	if o.Signal != "" {
		if _, err := o.Signal.Syscall(); err != nil {
			return nil, false, err
		}
	}
	// A caller may say its sandbox completed or that it asks for the end;
	// the other reasons are the system's own.
	switch r := tartarus.TerminationReason(q.Get("reason")); r {
	case "", tartarus.ReasonUserRequest, tartarus.ReasonCompleted:
		o.Reason = r
	default:
		return nil, false, tartarus.Errorf(tartarus.ErrInvalid, "reason %q: a caller may give user_request or completed", string(r))
	}
	o.CallbackURL = q.Get("callback_url")
	return o, ok, nil
}

// terminate answers a DELETE with termination options: 202 and the
// termination as it starts; GET …/termination follows it.
func (s *Server) terminate(w http.ResponseWriter, r *http.Request, sb *tartarus.Sandbox, opts *tartarus.ShutdownOptions) {
	t, err := terminator(s)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	st, err := t.Terminate(r.Context(), sb.ID, opts)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	w.Header().Set("Location", "/v1/sandboxes/"+sb.ID+"/termination")
	writeJSON(w, http.StatusAccepted, st)
}

func (s *Server) getTermination(w http.ResponseWriter, r *http.Request) {
	serve(s, w, r, s.sandboxFor, cerberus.ActionRead, terminator, func(ctx context.Context, t Terminator, sb *tartarus.Sandbox) (int, any, error) {
		st, err := t.Termination(ctx, sb.ID)
		return http.StatusOK, st, err
	})
}

func (s *Server) listTerminations(w http.ResponseWriter, r *http.Request) {
	serve(s, w, r, s.tenantFor(cerberus.ResourceTypeSandbox), cerberus.ActionRead, terminator, func(ctx context.Context, t Terminator, who *cerberus.Identity) (int, any, error) {
		all, err := t.PendingTerminations(ctx)
		mine := []*tartarus.TerminationStatus{}
		for _, st := range all {
			if st.Tenant == who.TenantID {
				mine = append(mine, st)
			}
		}
		return http.StatusOK, api.TerminationList{Terminations: mine}, err
	})
}

func (s *Server) checkpoint(w http.ResponseWriter, r *http.Request) {
	serve(s, w, r, s.reach, cerberus.ActionSnapshot, terminator, func(ctx context.Context, t Terminator, sb *tartarus.Sandbox) (int, any, error) {
		if err := s.checkSnapshotQuota(ctx, sb); err != nil {
			return 0, nil, err
		}
		ck, err := t.Checkpoint(ctx, sb.ID)
		return http.StatusCreated, ck, err
	})
}

func (s *Server) listCheckpoints(w http.ResponseWriter, r *http.Request) {
	serve(s, w, r, s.tenantFor(cerberus.ResourceTypeSandbox), cerberus.ActionRead, terminator, func(ctx context.Context, t Terminator, who *cerberus.Identity) (int, any, error) {
		list, err := t.Checkpoints(ctx, who.TenantID)
		if list == nil {
			list = []*tartarus.Checkpoint{}
		}
		return http.StatusOK, api.CheckpointList{Checkpoints: list}, err
	})
}

// Drainer is the optional side interface of a Backend that drains nodes:
// no new sandboxes go to the node, and its sandboxes end (reason
// node_drain) or hibernate and move.
type Drainer interface {
	DrainNode(ctx context.Context, name string, opts tartarus.DrainOptions) (*tartarus.DrainReport, error)
}

// Undrainer lets a drained node of a cluster take sandboxes again.
type Undrainer interface {
	UndrainNode(ctx context.Context, name string) error
}

func (s *Server) drainNode(w http.ResponseWriter, r *http.Request) {
	serve(s, w, r, s.nodeFor, cerberus.ActionUpdate, drainer, func(ctx context.Context, d Drainer, name string) (int, any, error) {
		var opts tartarus.DrainOptions
		if r.ContentLength != 0 {
			if err := decodeJSON(http.MaxBytesReader(w, r.Body, MaxJSONBody), MaxJSONBody, &opts); err != nil {
				return 0, nil, err
			}
		}
		if opts.GraceS < 0 || opts.GraceS > maxGraceS {
			return 0, nil, tartarus.Errorf(tartarus.ErrInvalid, "grace_s %d: want 0 to %d seconds", opts.GraceS, maxGraceS)
		}
		rep, err := d.DrainNode(ctx, name, opts)
		return http.StatusOK, rep, err
	})
}

func (s *Server) undrainNode(w http.ResponseWriter, r *http.Request) {
	serve(s, w, r, s.nodeFor, cerberus.ActionUpdate, undrainer, func(ctx context.Context, u Undrainer, name string) (int, any, error) {
		return http.StatusNoContent, nil, u.UndrainNode(ctx, name)
	})
}

// nodeFor checks that the caller may do action on the node named in the
// path, and returns its name.
func (s *Server) nodeFor(r *http.Request, action cerberus.Action) (string, error) {
	who, err := caller(r)
	if err != nil {
		return "", err
	}
	name := r.PathValue("name")
	res := cerberus.Resource{Type: cerberus.ResourceTypeNode, ID: name, TenantID: who.TenantID}
	if err := s.guard.Authorize(r.Context(), action, res); err != nil {
		return "", err
	}
	if !tartarus.ValidName(name) {
		return "", tartarus.Errorf(tartarus.ErrNotFound, "node %q", name)
	}
	return name, nil
}
