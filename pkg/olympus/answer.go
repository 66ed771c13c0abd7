package olympus

import (
	"context"
	"net/http"

	"github.com/tartarus-sandbox/tartarus/pkg/cerberus"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

// work is what a route does once the caller is checked: it reads the rest
// of the request, calls the backend, and says how to answer. The status
// goes with v as JSON; a nil v answers the bare status (204 and the like);
// status 0 says work wrote its answer itself (a stream).
type work[T, W any] func(ctx context.Context, t T, on W) (status int, v any, err error)

// finder checks the caller's right to action and returns what the route
// works on: a sandbox (s.sandboxFor, or s.ready for one that must run), a
// tenant or a node.
type finder[W any] func(r *http.Request, action cerberus.Action) (W, error)

// serve runs a route: find checks the caller and what it names, side finds
// the backend's side interface T (501 when the backend lacks it), do works
// and its answer or error is written. The order of the checks is the
// order of the errors a caller sees.
func serve[T, W any](s *Server, w http.ResponseWriter, r *http.Request, find finder[W], action cerberus.Action, side func(*Server) (T, error), do work[T, W]) {
	on, err := find(r, action)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	t, err := side(s)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	status, v, err := do(r.Context(), t, on)
	switch {
	case err != nil:
		s.writeError(w, r, err)
	case status == 0:
	case v == nil:
		w.WriteHeader(status)
	default:
		writeJSON(w, status, v)
	}
}

// backendAs returns the backend as side interface T, or 501.
func backendAs[T any](s *Server, what string) (T, error) {
	t, ok := s.be.(T)
	if !ok {
		return t, tartarus.Errorf(tartarus.ErrNotImplemented, "this server has no %s", what)
	}
	return t, nil
}

// The side interfaces the routes use, as serve's side argument.

func backend(s *Server) (Backend, error) { return s.be, nil }

func processManager(s *Server) (tartarus.ProcessManager, error) {
	return backendAs[tartarus.ProcessManager](s, "background processes")
}

func fileManager(s *Server) (tartarus.FileManager, error) {
	return backendAs[tartarus.FileManager](s, "file management")
}

func timeoutSetter(s *Server) (TimeoutSetter, error) {
	return backendAs[TimeoutSetter](s, "way to change a running sandbox's timeout")
}

func terminator(s *Server) (Terminator, error) {
	t, ok := s.be.(Terminator)
	if !ok {
		return nil, tartarus.Errorf(tartarus.ErrNotImplemented, "graceful termination and checkpoints are not available on this server")
	}
	return t, nil
}

func metricsSource(s *Server) (MetricsSource, error) {
	if s.cfg.Metrics == nil {
		return nil, tartarus.Errorf(tartarus.ErrNotImplemented, "this server keeps no per-sandbox metrics")
	}
	return s.cfg.Metrics, nil
}

func drainer(s *Server) (Drainer, error) {
	d, ok := s.be.(Drainer)
	if !ok {
		return nil, tartarus.Errorf(tartarus.ErrNotImplemented, "this server cannot drain nodes")
	}
	return d, nil
}

func undrainer(s *Server) (Undrainer, error) {
	u, ok := s.be.(Undrainer)
	if !ok {
		return nil, tartarus.Errorf(tartarus.ErrNotImplemented, "this server has no drained node to take back (a single node drains its sandboxes, not itself)")
	}
	return u, nil
}

// tenantFor checks that the caller may do action on its tenant's resources
// of type typ as a whole (a listing, a create).
func (s *Server) tenantFor(typ cerberus.ResourceType) finder[*cerberus.Identity] {
	return func(r *http.Request, action cerberus.Action) (*cerberus.Identity, error) {
		who, err := caller(r)
		if err != nil {
			return nil, err
		}
		res := cerberus.Resource{Type: typ, TenantID: who.TenantID}
		if err := s.guard.Authorize(r.Context(), action, res); err != nil {
			return nil, err
		}
		return who, nil
	}
}
