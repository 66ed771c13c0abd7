package tartarus

import (
	"errors"
	"fmt"
)

// Error classes. Every layer wraps one of these (with %w); the table below
// turns a class into its wire code and HTTP status in exactly one place, for
// the server, the ferry, the SDK, the agent protocol and the guest protocol.
var (
	ErrNotFound           = errors.New("not found")
	ErrAlreadyExists      = errors.New("already exists")
	ErrInvalid            = errors.New("invalid argument")
	ErrFailedPrecondition = errors.New("failed precondition") // e.g. exec in a paused sandbox
	ErrResourceExhausted  = errors.New("resource exhausted")  // more memory or CPUs than the host can give
	ErrUnavailable        = errors.New("unavailable")
	ErrNotImplemented     = errors.New("not implemented") // a capability the backend truly lacks
	ErrUnauthenticated    = errors.New("unauthenticated")
	ErrPermissionDenied   = errors.New("permission denied")
	ErrTimeout            = errors.New("timeout")
	ErrTooLarge           = errors.New("too large")      // a request body or upload beyond its limit
	ErrQuotaExceeded      = errors.New("quota exceeded") // a tenant's quota (the message names it, its limit and use)
)

// Errorf wraps class with a formatted message: Errorf(ErrNotFound, "sandbox %s", id)
// reads "sandbox sb-1: not found" and matches errors.Is(err, ErrNotFound).
func Errorf(class error, format string, args ...any) error {
	return fmt.Errorf("%s: %w", fmt.Sprintf(format, args...), class)
}

// ErrorClass is one row of the error table: a class, the code that names it
// on every wire (HTTP bodies, the agent protocol, the guest protocol) and
// the HTTP status it answers with.
type ErrorClass struct {
	Err    error
	Code   string
	Status int
}

// CodeInternal is the code of an error that belongs to no class; its detail
// stays in the server's log.
const CodeInternal = "internal"

// errorTable is the one mapping of classes to codes and statuses. Statuses
// are written as numbers so that the guest agent, which links this package,
// need not link net/http. Settled disagreements (docs/api.md, "Errors"):
// resource_exhausted is 422 everywhere (the request asks for more than can be
// given; 429 belongs to the ferry's and the gateway's rate limits, which
// answer with their own code rate_limited), and invalid_argument and
// not_implemented are the codes on every wire.
var errorTable = [...]ErrorClass{
	{ErrNotFound, "not_found", 404},
	{ErrAlreadyExists, "already_exists", 409},
	{ErrInvalid, "invalid_argument", 400},
	{ErrFailedPrecondition, "failed_precondition", 409},
	{ErrResourceExhausted, "resource_exhausted", 422},
	{ErrUnavailable, "unavailable", 503},
	{ErrNotImplemented, "not_implemented", 501},
	{ErrUnauthenticated, "unauthenticated", 401},
	{ErrPermissionDenied, "permission_denied", 403},
	{ErrTimeout, "timeout", 504},
	{ErrTooLarge, "too_large", 413},
	{ErrQuotaExceeded, "quota_exceeded", 429},
}

// ClassOf returns the class err belongs to, or the internal class (code
// "internal", status 500, Err nil) when it belongs to none.
func ClassOf(err error) ErrorClass {
	for _, c := range errorTable {
		if errors.Is(err, c.Err) {
			return c
		}
	}
	return ErrorClass{Code: CodeInternal, Status: 500}
}

// CodeOf returns the wire code of err's class ("internal" for none).
func CodeOf(err error) string { return ClassOf(err).Code }

// ClassForCode returns the class a wire code names, and false for an
// unknown code (including "internal").
func ClassForCode(code string) (ErrorClass, bool) {
	for _, c := range errorTable {
		if c.Code == code {
			return c, true
		}
	}
	return ErrorClass{}, false
}

// ErrorClasses returns a copy of the table, for documentation and tests.
func ErrorClasses() []ErrorClass { return append([]ErrorClass(nil), errorTable[:]...) }
