package cerberus

import (
	"context"
	"net/http"
	"sync"
)

type identityKey struct{}

// WithIdentity returns a context carrying id.
func WithIdentity(ctx context.Context, id *Identity) context.Context {
	return context.WithValue(ctx, identityKey{}, id)
}

// IdentityFrom returns the identity stored by WithIdentity, or nil.
func IdentityFrom(ctx context.Context) *Identity {
	id, _ := ctx.Value(identityKey{}).(*Identity)
	return id
}

// DefaultTenant is the tenant of every caller when auth is off.
const DefaultTenant = "default"

// Open returns a Guard that lets every request through as a system identity
// of DefaultTenant. It is what `tartarus server --auth=off` uses.
func Open() Guard { return openGuard{} }

type openGuard struct{}

func (openGuard) Wrap(next http.Handler) http.Handler {
	id := &Identity{ID: "anonymous", Type: IdentityTypeSystem, TenantID: DefaultTenant, Roles: []string{"platform-admin"}}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		next.ServeHTTP(w, r.WithContext(WithIdentity(r.Context(), id)))
	})
}

func (openGuard) Authorize(context.Context, Action, Resource) error { return nil }

type noteKey struct{}

// requestNote collects, for one request, what its handler authorized, so
// that Wrap can write the audit entry after the handler returns.
type requestNote struct {
	mu       sync.Mutex
	set      bool
	denied   bool
	action   Action
	resource Resource
	reason   string
}

func withNote(ctx context.Context, n *requestNote) context.Context {
	return context.WithValue(ctx, noteKey{}, n)
}

func noteFrom(ctx context.Context) *requestNote {
	n, _ := ctx.Value(noteKey{}).(*requestNote)
	return n
}

// record keeps the first denial, or else the last allowed decision.
func (n *requestNote) record(action Action, res Resource, d Decision) {
	if n == nil {
		return
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.denied {
		return
	}
	n.set, n.denied = true, !d.Allowed
	n.action, n.resource, n.reason = action, res, d.Reason
}

func (n *requestNote) get() (action Action, res Resource, reason string, denied, set bool) {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.action, n.resource, n.reason, n.denied, n.set
}

// Annotate labels the request's audit entry with action and resource
// without an authorization check, for handlers whose access is decided
// otherwise (for example a list filtered to the caller's tenant). A later
// Authorize call on the same request replaces it.
func Annotate(ctx context.Context, action Action, res Resource) {
	if n := noteFrom(ctx); n != nil {
		n.mu.Lock()
		if !n.set {
			n.action, n.resource = action, res
		}
		n.mu.Unlock()
	}
}
