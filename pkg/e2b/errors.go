package e2b

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"

	"github.com/tartarus-sandbox/tartarus/pkg/client"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

// apiError is E2B's error body: {"code": HTTP status, "message": "…"}.
type apiError struct {
	Code    int    `json:"code"`
	Message string `json:"message"`
}

// classify returns the HTTP status and the message a caller may see for
// err: a native API answer keeps its status and message; any other error
// goes through the one error table, and an unclassed one says only
// "internal error" (its detail is logged).
func (h *Handler) classify(r *http.Request, err error) (int, string) {
	var ce *client.Error
	if errors.As(err, &ce) {
		return ce.Status, ce.Message
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return http.StatusGatewayTimeout, "request ended: " + err.Error()
	}
	c := tartarus.ClassOf(err)
	if c.Err == nil {
		h.log.Error("e2b request failed", "method", r.Method, "path", r.URL.Path, "err", err)
		return c.Status, "internal error"
	}
	return c.Status, err.Error()
}

// fail answers err in E2B's shape.
func (h *Handler) fail(w http.ResponseWriter, r *http.Request, err error) {
	status, msg := h.classify(r, err)
	writeJSON(w, status, apiError{Code: status, Message: msg})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

// connectCode is the Connect RPC code of an HTTP status from the one error
// table (Connect's own mapping, read backwards).
func connectCode(status int) string {
	switch status {
	case 400:
		return "invalid_argument"
	case 401:
		return "unauthenticated"
	case 403:
		return "permission_denied"
	case 404:
		return "not_found"
	case 409:
		return "failed_precondition"
	case 413, 422, 429:
		return "resource_exhausted"
	case 501:
		return "unimplemented"
	case 503:
		return "unavailable"
	case 504:
		return "deadline_exceeded"
	}
	return "internal"
}

// connectStatus is the HTTP status of a unary Connect error with code.
func connectStatus(code string) int {
	switch code {
	case "invalid_argument", "failed_precondition", "out_of_range":
		return 400
	case "unauthenticated":
		return 401
	case "permission_denied":
		return 403
	case "not_found", "unimplemented":
		return 404
	case "already_exists", "aborted":
		return 409
	case "resource_exhausted":
		return 429
	case "canceled":
		return 499
	case "unavailable":
		return 503
	case "deadline_exceeded":
		return 504
	}
	return 500
}

// rpcError is a Connect error: its code and message.
type rpcError struct {
	Code    string `json:"code"`
	Message string `json:"message,omitempty"`
}

func (e *rpcError) Error() string { return e.Code + ": " + e.Message }

// toRPC turns err into a Connect error.
func (h *Handler) toRPC(r *http.Request, err error) *rpcError {
	var re *rpcError
	if errors.As(err, &re) {
		return re
	}
	var ce *client.Error
	if errors.As(err, &ce) && ce.Code == "already_exists" {
		return &rpcError{Code: "already_exists", Message: ce.Message}
	}
	if errors.Is(err, context.DeadlineExceeded) {
		return &rpcError{Code: "deadline_exceeded", Message: err.Error()}
	}
	if errors.Is(err, context.Canceled) {
		return &rpcError{Code: "canceled", Message: err.Error()}
	}
	status, msg := h.classify(r, err)
	return &rpcError{Code: connectCode(status), Message: msg}
}

func invalidf(msg string) error { return &rpcError{Code: "invalid_argument", Message: msg} }
