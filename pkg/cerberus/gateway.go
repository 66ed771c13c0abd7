// Package cerberus (the three-headed guard) authenticates every API caller,
// authorizes each action against an RBAC policy, and records an audit entry
// for every request, allowed or denied.
//
// The Gateway interface and its types are the seed's. Guard extends them with
// what an HTTP server needs: a middleware that authenticates and audits each
// request, and an Authorize that reads the caller from the request context.
// Added to the seed: ResourceTypeAPIKey and ResourceTypeAudit, and the
// AuditEntry fields Reason, Method, Path and Status.
//
// Where things are: Cerberus (cerberus.go) implements Gateway and, through
// Guard(), the middleware; credentials are checked by KeyStore (keys.go),
// OIDCVerifier (oidc.go, jwks.go) and MTLSConfig (mtls.go); the policy is
// parsed and compiled in policy.go, decided in decide.go and reloaded by
// PolicySource; AuditLog (audit.go) is the durable JSON-lines log; Routes
// (routes.go) serve /v1/apikeys and /v1/audit. docs/auth.md is the
// operator's guide.
package cerberus

import (
	"context"
	"crypto/x509"
	"log/slog"
	"net/http"
	"time"
)

// Gateway is the seed's three heads.
type Gateway interface {
	// Authenticate verifies who presents creds.
	Authenticate(ctx context.Context, creds Credentials) (*Identity, error)
	// Authorize checks that identity may perform action on resource.
	Authorize(ctx context.Context, identity *Identity, action Action, resource Resource) error
	// RecordAccess writes one audit entry.
	RecordAccess(ctx context.Context, entry *AuditEntry) error
}

// Guard is what the Olympus API uses: Wrap authenticates and audits every
// request (storing the Identity in its context); Authorize checks one action
// of the request's caller on one resource.
type Guard interface {
	Wrap(next http.Handler) http.Handler
	Authorize(ctx context.Context, action Action, resource Resource) error
}

// Credentials can be presented in multiple forms.
type Credentials interface {
	Type() CredentialType
}

// CredentialType names a kind of credentials.
type CredentialType string

// The credential kinds.
const (
	CredentialTypeAPIKey   CredentialType = "api_key"
	CredentialTypeOAuth2   CredentialType = "oauth2"
	CredentialTypeMTLS     CredentialType = "mtls"
	CredentialTypeInternal CredentialType = "internal"
)

// APIKeyCredential is an API key as presented.
type APIKeyCredential struct {
	KeyID  string
	Secret string
}

// Type implements Credentials.
func (c *APIKeyCredential) Type() CredentialType { return CredentialTypeAPIKey }

// LogValue keeps the secret out of logs: only the key id is shown.
func (c *APIKeyCredential) LogValue() slog.Value {
	return slog.GroupValue(slog.String("type", string(CredentialTypeAPIKey)), slog.String("key_id", c.KeyID))
}

// String keeps the secret out of fmt output.
func (c *APIKeyCredential) String() string { return "api_key " + c.KeyID + " (secret redacted)" }

// OAuth2Credential is a bearer access token.
type OAuth2Credential struct {
	AccessToken string
	TokenType   string
}

// Type implements Credentials.
func (c *OAuth2Credential) Type() CredentialType { return CredentialTypeOAuth2 }

// LogValue keeps the token out of logs.
func (c *OAuth2Credential) LogValue() slog.Value {
	return slog.GroupValue(slog.String("type", string(CredentialTypeOAuth2)), slog.String("token", "redacted"))
}

// String keeps the token out of fmt output.
func (c *OAuth2Credential) String() string { return "oauth2 bearer token (redacted)" }

// MTLSCredential is a verified client certificate.
type MTLSCredential struct {
	Certificate *x509.Certificate
	Chain       []*x509.Certificate
}

// Type implements Credentials.
func (c *MTLSCredential) Type() CredentialType { return CredentialTypeMTLS }

// Identity is an authenticated caller.
type Identity struct {
	ID          string
	Type        IdentityType
	TenantID    string
	DisplayName string
	Roles       []string
	Groups      []string
	Attributes  map[string]string
	AuthTime    time.Time
	ExpiresAt   time.Time
}

// IdentityType says what kind of caller an identity is.
type IdentityType string

// The identity types.
const (
	IdentityTypeUser    IdentityType = "user"
	IdentityTypeService IdentityType = "service"
	IdentityTypeAgent   IdentityType = "agent"
	IdentityTypeSystem  IdentityType = "system"
)

// Action is an operation on a resource.
type Action string

// The actions.
const (
	ActionCreate  Action = "create"
	ActionRead    Action = "read"
	ActionUpdate  Action = "update"
	ActionDelete  Action = "delete"
	ActionExecute Action = "execute"
	ActionAdmin   Action = "admin"

	// Added to the seed's actions, so that seeing a sandbox is not taking
	// its content: reading (listing, downloading) and writing its files,
	// forking it (a copy of its memory and disk), snapshotting it
	// (checkpoints), and choosing the runtime it runs in.
	ActionReadFiles     Action = "read_files"
	ActionWriteFiles    Action = "write_files"
	ActionFork          Action = "fork"
	ActionSnapshot      Action = "snapshot"
	ActionChooseRuntime Action = "choose_runtime"
)

// Resource is what is being accessed.
type Resource struct {
	Type      ResourceType
	ID        string
	TenantID  string
	Namespace string
	// Runtime is the runtime a create names (choose_runtime checks only),
	// so a policy can allow some runtimes and not others.
	Runtime string
}

// ResourceType names a kind of resource.
type ResourceType string

// The resource types.
const (
	ResourceTypeSandbox  ResourceType = "sandbox"
	ResourceTypeTemplate ResourceType = "template"
	ResourceTypeSnapshot ResourceType = "snapshot"
	ResourceTypePolicy   ResourceType = "policy"
	ResourceTypeNode     ResourceType = "node"
	// Added for Cerberus's own routes.
	ResourceTypeAPIKey ResourceType = "apikey"
	ResourceTypeAudit  ResourceType = "audit"
)

// AuditEntry records one access.
type AuditEntry struct {
	Timestamp    time.Time
	RequestID    string
	Identity     *Identity
	Action       Action
	Resource     Resource
	Result       AuditResult
	Latency      time.Duration
	SourceIP     string
	UserAgent    string
	ErrorMessage string

	// Added to the seed's fields: why the request was allowed or denied,
	// and the HTTP request and status it belongs to.
	Reason string
	Method string
	Path   string
	Status int
}

// AuditResult is how an access ended.
type AuditResult string

// The audit results.
const (
	AuditResultSuccess AuditResult = "success"
	AuditResultDenied  AuditResult = "denied"
	AuditResultError   AuditResult = "error"
)
