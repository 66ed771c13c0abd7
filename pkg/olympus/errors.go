package olympus

import (
	"encoding/json"
	"errors"
	"net/http"

	"github.com/tartarus-sandbox/tartarus/pkg/olympus/api"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

// errTooLarge marks a request body beyond its limit.
var errTooLarge = errors.New("request body too large")

// statusFor maps an error to its HTTP status and error code. It is the one
// place where error classes become statuses.
func statusFor(err error) (int, string) {
	var mbe *http.MaxBytesError
	switch {
	case errors.Is(err, errTooLarge), errors.As(err, &mbe):
		return http.StatusRequestEntityTooLarge, "too_large"
	case errors.Is(err, tartarus.ErrNotFound):
		return http.StatusNotFound, "not_found"
	case errors.Is(err, tartarus.ErrInvalid):
		return http.StatusBadRequest, "invalid_argument"
	case errors.Is(err, tartarus.ErrAlreadyExists):
		return http.StatusConflict, "already_exists"
	case errors.Is(err, tartarus.ErrFailedPrecondition):
		return http.StatusConflict, "failed_precondition"
	case errors.Is(err, tartarus.ErrResourceExhausted):
		return http.StatusUnprocessableEntity, "resource_exhausted"
	case errors.Is(err, tartarus.ErrUnauthenticated):
		return http.StatusUnauthorized, "unauthenticated"
	case errors.Is(err, tartarus.ErrPermissionDenied):
		return http.StatusForbidden, "permission_denied"
	case errors.Is(err, tartarus.ErrNotImplemented):
		return http.StatusNotImplemented, "not_implemented"
	case errors.Is(err, tartarus.ErrUnavailable):
		return http.StatusServiceUnavailable, "unavailable"
	case errors.Is(err, tartarus.ErrTimeout):
		return http.StatusGatewayTimeout, "timeout"
	}
	return http.StatusInternalServerError, "internal"
}

// errorBody makes the client's view of err: the error's own text for
// classified errors, a generic line for internal ones (whose detail goes
// only to the log).
func errorBody(err error, reqID string) (int, api.ErrorBody) {
	status, code := statusFor(err)
	msg := err.Error()
	if status == http.StatusInternalServerError {
		msg = "internal error; the server log has the details under this request id"
	}
	return status, api.ErrorBody{Error: api.ErrorDetail{Code: code, Message: msg, RequestID: reqID}}
}

func (s *Server) writeError(w http.ResponseWriter, r *http.Request, err error) {
	id := requestID(r.Context())
	status, body := errorBody(err, id)
	if status >= 500 {
		s.log.Error("request failed", "request_id", id, "route", r.Pattern, "status", status, "err", err)
	} else {
		s.log.Debug("request rejected", "request_id", id, "status", status, "err", err)
	}
	writeJSON(w, status, body)
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}
