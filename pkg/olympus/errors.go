package olympus

import (
	"encoding/json"
	"net/http"

	"github.com/tartarus-sandbox/tartarus/pkg/tartarus/api"
)

// errorBody makes the client's view of err through the one error table.
func errorBody(err error, reqID string) (int, api.ErrorBody) { return api.ErrorFor(err, reqID) }

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
