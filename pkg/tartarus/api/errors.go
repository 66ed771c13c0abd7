package api

import (
	"encoding/json"
	"errors"
	"net/http"

	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

// InternalMessage is what a client sees of an error that belongs to no
// class; the detail goes only to the server's log, under the request id.
const InternalMessage = "internal error; the server log has the details under this request id"

// ErrorFor makes the client's view of err through the one error table
// (tartarus.ClassOf): its status and body. A classified error shows its own
// text; an internal one shows InternalMessage. A body cut by
// http.MaxBytesReader is too_large.
func ErrorFor(err error, requestID string) (int, ErrorBody) {
	var mbe *http.MaxBytesError
	if errors.As(err, &mbe) {
		err = tartarus.Errorf(tartarus.ErrTooLarge, "request body over %d bytes", mbe.Limit)
	}
	c := tartarus.ClassOf(err)
	msg := err.Error()
	if c.Err == nil {
		msg = InternalMessage
	}
	return c.Status, ErrorBody{Error: ErrorDetail{Code: c.Code, Message: msg, RequestID: requestID}}
}

// WriteError answers err as ErrorFor makes it.
func WriteError(w http.ResponseWriter, err error, requestID string) {
	status, body := ErrorFor(err, requestID)
	WriteErrorBody(w, status, body)
}

// WriteErrorBody writes an error body with its status.
func WriteErrorBody(w http.ResponseWriter, status int, body ErrorBody) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Del("Content-Length")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(body)
}
