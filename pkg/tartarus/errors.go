package tartarus

import (
	"errors"
	"fmt"
)

// Error classes. Every layer wraps one of these (with %w) so that the API maps
// an error to an HTTP status in exactly one place (olympus.statusFor).
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
)

// Errorf wraps class with a formatted message: Errorf(ErrNotFound, "sandbox %s", id)
// reads "sandbox sb-1: not found" and matches errors.Is(err, ErrNotFound).
func Errorf(class error, format string, args ...any) error {
	return fmt.Errorf("%s: %w", fmt.Sprintf(format, args...), class)
}
