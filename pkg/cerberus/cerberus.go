package cerberus

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/tartarus-sandbox/tartarus/pkg/clock"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

// Config wires the parts of a Cerberus. Keys, OIDC and MTLS are the enabled
// credential kinds (nil: that kind is refused); Policy and Audit are required.
type Config struct {
	Keys    *KeyStore
	OIDC    *OIDCVerifier
	MTLS    *MTLSConfig
	Policy  *PolicySource
	Audit   *AuditLog
	Metrics *Metrics // may be nil
	// Clock decides key expiry and audit latency; nil: clock.System. Give
	// the same one to the key store, verifiers and audit log.
	Clock clock.Clock
	Log   *slog.Logger
	// FailureAudit bounds the audit entries of failed authentications.
	FailureAudit FailureAuditConfig
}

// Cerberus is the gateway: it implements the seed's Gateway and, through
// Guard, the HTTP middleware the API server uses.
type Cerberus struct {
	cfg   Config
	log   *slog.Logger
	fails *failureGate
}

var (
	_ Gateway = (*Cerberus)(nil)
	_ Guard   = guard{}
)

// New checks cfg and returns a gateway.
func New(cfg Config) (*Cerberus, error) {
	var errs []error
	if cfg.Policy == nil || cfg.Policy.Policy() == nil {
		errs = append(errs, errors.New("cerberus: a policy is required"))
	}
	if cfg.Audit == nil {
		errs = append(errs, errors.New("cerberus: an audit log is required"))
	}
	if cfg.Keys == nil && cfg.OIDC == nil && cfg.MTLS == nil {
		errs = append(errs, errors.New("cerberus: no credential kind is enabled"))
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	if cfg.Clock == nil {
		cfg.Clock = clock.System{}
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.Policy.onReload == nil && cfg.Metrics != nil {
		cfg.Policy.onReload = cfg.Metrics.policyReload
	}
	return &Cerberus{cfg: cfg, log: cfg.Log, fails: newFailureGate(cfg.FailureAudit, cfg.Clock)}, nil
}

// Policy is the policy in force.
func (c *Cerberus) Policy() *Policy { return c.cfg.Policy.Policy() }

// Keys is the API key store (nil when API keys are off).
func (c *Cerberus) Keys() *KeyStore { return c.cfg.Keys }

// AuditLog is the audit log.
func (c *Cerberus) AuditLog() *AuditLog { return c.cfg.Audit }

// Authenticate implements Gateway.
func (c *Cerberus) Authenticate(ctx context.Context, creds Credentials) (*Identity, error) {
	switch cr := creds.(type) {
	case *APIKeyCredential:
		if c.cfg.Keys == nil {
			return nil, authErr(ReasonNotConfigured, "api keys are not enabled on this server", "")
		}
		k, err := c.cfg.Keys.Verify(ctx, cr)
		if err != nil {
			return nil, err
		}
		return keyIdentity(k, c.cfg.Clock.Now()), nil
	case *OAuth2Credential:
		if c.cfg.OIDC == nil {
			return nil, authErr(ReasonNotConfigured, "bearer tokens (OIDC) are not enabled on this server", "")
		}
		return c.cfg.OIDC.Verify(ctx, cr.AccessToken)
	case *MTLSCredential:
		if c.cfg.MTLS == nil {
			return nil, authErr(ReasonNotConfigured, "client certificates are not enabled on this server", "")
		}
		return c.cfg.MTLS.Verify(cr)
	case nil:
		return nil, authErr(ReasonMissing, "no credentials", "")
	}
	return nil, authErr(ReasonNotConfigured, fmt.Sprintf("credential kind %s is not supported", creds.Type()), "")
}

// keyIdentity is the identity an API key stands for. Its id is "tk_<key id>"
// (never the secret), so bindings can name it as service:tk_<key id>.
func keyIdentity(k APIKey, now time.Time) *Identity {
	return &Identity{
		ID:          KeyPrefix + k.ID,
		Type:        IdentityTypeService,
		TenantID:    k.TenantID,
		DisplayName: k.Name,
		Roles:       k.Roles,
		Attributes:  map[string]string{"auth_method": "api_key", "key_id": k.ID},
		AuthTime:    now,
		ExpiresAt:   k.ExpiresAt,
	}
}

// Authorize implements Gateway.
func (c *Cerberus) Authorize(ctx context.Context, id *Identity, action Action, res Resource) error {
	d := c.decide(ctx, id, action, res)
	if d.Allowed {
		return nil
	}
	return denied(id, action, res)
}

func (c *Cerberus) decide(ctx context.Context, id *Identity, action Action, res Resource) Decision {
	d := c.cfg.Policy.Policy().Decide(id, action, res)
	noteFrom(ctx).record(action, res, d)
	return d
}

func denied(id *Identity, action Action, res Resource) error {
	who := "anonymous"
	if id != nil {
		who = Principal(id)
	}
	what := string(res.Type)
	if res.ID != "" {
		what += " " + res.ID
	}
	return tartarus.Errorf(tartarus.ErrPermissionDenied, "%s may not %s %s", who, action, what)
}

// RecordAccess implements Gateway: it writes entry to the audit log (durably)
// and counts it.
func (c *Cerberus) RecordAccess(ctx context.Context, e *AuditEntry) error {
	c.cfg.Metrics.request(e.Result, e.Action, e.Resource.Type)
	if err := c.cfg.Audit.Append(ctx, e.Record()); err != nil {
		c.cfg.Metrics.auditError()
		c.log.Error("audit entry not written", "request_id", e.RequestID, "err", err)
		return err
	}
	return nil
}

// Guard returns the HTTP face of the gateway.
func (c *Cerberus) Guard() Guard { return guard{c} }

type guard struct{ c *Cerberus }

// Authorize checks the request's caller (from ctx) and records the decision
// for the request's audit entry.
func (g guard) Authorize(ctx context.Context, action Action, res Resource) error {
	id := IdentityFrom(ctx)
	if id == nil {
		return tartarus.Errorf(tartarus.ErrUnauthenticated, "no caller in request context")
	}
	return g.c.Authorize(ctx, id, action, res)
}

// Wrap authenticates the request, hands it to next with the Identity in its
// context, and writes its audit entry before the response is complete.
func (g guard) Wrap(next http.Handler) http.Handler {
	c := g.c
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := c.cfg.Clock.Now()
		reqID := requestID(r)
		if w.Header().Get("X-Request-ID") == "" {
			w.Header().Set("X-Request-ID", reqID)
		}
		ua := r.UserAgent()
		if len(ua) > 256 {
			ua = ua[:256]
		}
		entry := &AuditEntry{
			Timestamp: start, RequestID: reqID, SourceIP: sourceIP(r), UserAgent: ua,
			Method: r.Method, Path: r.URL.Path,
		}
		id, err := c.authenticateRequest(r)
		if err != nil {
			c.refuse(w, r, entry, err)
			return
		}
		entry.Identity = id
		note := &requestNote{}
		ctx := WithIdentity(withNote(r.Context(), note), id)
		rec := &statusRecorder{ResponseWriter: w}
		defer func() {
			p := recover()
			if p != nil && rec.status == 0 {
				rec.status = http.StatusInternalServerError
			}
			c.finish(ctx, entry, note, rec.status)
			if p != nil {
				panic(p)
			}
		}()
		next.ServeHTTP(rec, r.WithContext(ctx))
	})
}

func (c *Cerberus) finish(ctx context.Context, e *AuditEntry, note *requestNote, status int) {
	if status == 0 {
		status = http.StatusOK
	}
	action, res, reason, deniedByPolicy, _ := note.get()
	e.Action, e.Resource, e.Reason, e.Status = action, res, reason, status
	e.Latency = c.cfg.Clock.Now().Sub(e.Timestamp)
	switch {
	case deniedByPolicy || status == http.StatusUnauthorized || status == http.StatusForbidden:
		e.Result = AuditResultDenied
	case status >= 400:
		e.Result = AuditResultError
		e.ErrorMessage = http.StatusText(status)
	default:
		e.Result = AuditResultSuccess
	}
	c.RecordAccess(context.WithoutCancel(ctx), e)
}

func (c *Cerberus) refuse(w http.ResponseWriter, r *http.Request, e *AuditEntry, err error) {
	reason := reasonOf(err)
	// Failures are the attacker's to multiply: a bounded number per source
	// is logged and written to the audit (without waiting for its own
	// fsync: the next durable entry covers it); the rest only counted.
	admitted, note := c.fails.admit(e.SourceIP)
	msg := "authentication failed"
	var ae *AuthError
	if errors.As(err, &ae) {
		msg = ae.Message
		if admitted {
			c.log.Info("authentication failed", "reason", reason, "detail", ae.Detail, "source_ip", e.SourceIP, "path", e.Path, "request_id", e.RequestID)
		}
	} else if admitted {
		c.log.Warn("authentication failed", "reason", reason, "err", err, "source_ip", e.SourceIP, "path", e.Path, "request_id", e.RequestID)
	}
	status, code := http.StatusUnauthorized, "unauthenticated"
	if reason == ReasonUnavailable {
		status, code = http.StatusServiceUnavailable, "unavailable"
		msg = "the identity provider cannot be reached; try again"
	}
	c.cfg.Metrics.authFailure(reason)
	c.cfg.Metrics.request(AuditResultDenied, e.Action, e.Resource.Type)
	e.Result, e.Reason, e.ErrorMessage, e.Status = AuditResultDenied, "authentication failed: "+reason+note, msg, status
	e.Latency = c.cfg.Clock.Now().Sub(e.Timestamp)
	if admitted {
		if err := c.cfg.Audit.AppendLazy(e.Record()); err != nil {
			c.cfg.Metrics.auditError()
			c.log.Error("audit entry not written", "request_id", e.RequestID, "err", err)
		}
	} else {
		c.cfg.Metrics.failureSuppressed()
	}
	if status == http.StatusUnauthorized {
		w.Header().Set("WWW-Authenticate", `Bearer realm="tartarus", error="invalid_token"`)
	}
	writeError(w, status, code, msg, reason)
}

// authenticateRequest finds the request's credentials: an Authorization
// header (an API key or an OIDC JWT), else a TLS client certificate.
func (c *Cerberus) authenticateRequest(r *http.Request) (*Identity, error) {
	ctx := r.Context()
	if h := r.Header.Get("Authorization"); h != "" {
		cred, err := ParseAuthorization(h)
		if err != nil {
			return nil, err
		}
		return c.Authenticate(ctx, cred)
	}
	if r.TLS != nil && len(r.TLS.PeerCertificates) > 0 {
		return c.Authenticate(ctx, &MTLSCredential{Certificate: r.TLS.PeerCertificates[0], Chain: r.TLS.PeerCertificates[1:]})
	}
	return nil, authErr(ReasonMissing, "no credentials: send Authorization: Bearer <api key or token>, or a client certificate", "")
}

// ParseAuthorization reads an Authorization header: "Bearer tk_…" is an API
// key, "Bearer <JWT>" an OIDC token.
func ParseAuthorization(h string) (Credentials, error) {
	scheme, tok, ok := strings.Cut(strings.TrimSpace(h), " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return nil, authErr(ReasonMalformed, "Authorization header must be \"Bearer <api key or token>\"", "")
	}
	tok = strings.TrimSpace(tok)
	switch {
	case tok == "":
		return nil, authErr(ReasonMalformed, "bearer token is empty", "")
	case len(tok) > 16<<10:
		return nil, authErr(ReasonMalformed, "bearer token is too long", "")
	case strings.HasPrefix(tok, KeyPrefix):
		return ParseAPIKey(tok)
	case looksLikeJWT(tok):
		return &OAuth2Credential{AccessToken: tok, TokenType: "Bearer"}, nil
	}
	return nil, authErr(ReasonMalformed, "bearer token is neither a Tartarus API key ("+KeyPrefix+"…) nor a JWT", "")
}

func requestID(r *http.Request) string {
	if id := r.Header.Get("X-Request-ID"); id != "" && len(id) <= 128 && isToken(id) {
		return id
	}
	b := make([]byte, 8)
	rand.Read(b)
	return hex.EncodeToString(b)
}

func isToken(s string) bool {
	for _, c := range s {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.') {
			return false
		}
	}
	return true
}

func sourceIP(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return host
}

// writeError writes the API's error body {"error":{"code","message"}}, with
// the authentication failure's reason when there is one.
func writeError(w http.ResponseWriter, status int, code, msg, reason string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	body := map[string]any{"error": map[string]string{"code": code, "message": msg}}
	if reason != "" {
		body["error"].(map[string]string)["reason"] = reason
	}
	json.NewEncoder(w).Encode(body)
}

// statusRecorder remembers the status a handler wrote. Unwrap lets
// http.ResponseController reach Flush and the rest on the real writer.
type statusRecorder struct {
	http.ResponseWriter
	status int
}

func (s *statusRecorder) WriteHeader(code int) {
	if s.status == 0 {
		s.status = code
	}
	s.ResponseWriter.WriteHeader(code)
}

func (s *statusRecorder) Write(b []byte) (int, error) {
	if s.status == 0 {
		s.status = http.StatusOK
	}
	return s.ResponseWriter.Write(b)
}

// Flush lets streaming handlers (exec output) flush through the recorder.
func (s *statusRecorder) Flush() {
	if s.status == 0 {
		s.status = http.StatusOK
	}
	http.NewResponseController(s.ResponseWriter).Flush()
}

func (s *statusRecorder) Unwrap() http.ResponseWriter { return s.ResponseWriter }
