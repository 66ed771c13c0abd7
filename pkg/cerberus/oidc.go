package cerberus

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/coreos/go-oidc/v3/oidc"
	jose "github.com/go-jose/go-jose/v4"

	"github.com/tartarus-sandbox/tartarus/pkg/clock"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

// OIDCConfig says which issuer's bearer JWTs are accepted and how their
// claims become an Identity.
type OIDCConfig struct {
	Issuer   string // discovery at Issuer/.well-known/openid-configuration
	Audience string // the token's aud must contain it
	// Algorithms are the accepted signing algorithms. Default RS256 and
	// ES256. "none" and the HMAC algorithms are refused: a public key must
	// never be usable as an HMAC secret.
	Algorithms []string

	// Claim names; a dotted name walks into objects ("realm_access.roles").
	UserClaim string // default "email", falling back to "sub"
	// EmailVerifiedClaim names the claim that must be true when the user
	// id is an email (UserClaim's last part is "email"): an issuer that
	// lets anyone set an unverified address would otherwise let anyone
	// become anyone. Default "email_verified"; "-" turns the check off,
	// for an issuer that only ever issues verified addresses.
	EmailVerifiedClaim string
	TenantClaim        string // default "tenant"
	RolesClaim         string // default "roles"
	GroupsClaim        string // default "groups"
	// DefaultTenant is used for tokens without the tenant claim; empty means
	// such tokens are refused.
	DefaultTenant string

	// KeyMaxAge bounds how long fetched signing keys are trusted before the
	// JWKS is fetched again, so a key the issuer dropped stops working.
	// Default 1h.
	KeyMaxAge time.Duration
	// MinKeyRefetch is the least time between two fetches caused by tokens
	// naming an unknown key id (rotation). Default 10s.
	MinKeyRefetch time.Duration
	// RetryDiscovery is how long after a failed discovery it is tried again.
	// Default 10s.
	RetryDiscovery time.Duration
	// TokenCacheTTL is how long a verified token is remembered (never past
	// its exp), so a client that sends the same token with every request pays
	// for the signature check once. Default 1m; negative turns it off.
	TokenCacheTTL time.Duration

	HTTPClient *http.Client // default http.DefaultClient
}

var refusedAlgs = []string{"none", "HS256", "HS384", "HS512"}

// Validate returns every problem of the configuration at once.
func (c *OIDCConfig) Validate() error {
	var errs []error
	if c.Issuer == "" {
		errs = append(errs, errors.New("oidc: issuer is required"))
	}
	if c.Audience == "" {
		errs = append(errs, errors.New("oidc: audience is required"))
	}
	for _, a := range c.Algorithms {
		if slices.Contains(refusedAlgs, a) {
			errs = append(errs, fmt.Errorf("oidc: algorithm %s is not allowed", a))
		} else if !slices.Contains([]string{oidc.RS256, oidc.RS384, oidc.RS512, oidc.ES256, oidc.ES384, oidc.ES512, oidc.PS256, oidc.PS384, oidc.PS512, oidc.EdDSA}, a) {
			errs = append(errs, fmt.Errorf("oidc: unknown algorithm %s", a))
		}
	}
	return errors.Join(errs...)
}

// OIDCVerifier checks bearer JWTs from one OIDC issuer. Discovery happens on
// first use (and is retried), so the server starts even if the issuer is
// briefly down; JWKS keys are cached and refetched on an unknown key id.
type OIDCVerifier struct {
	cfg   OIDCConfig
	clock clock.Clock
	log   *slog.Logger
	base  context.Context // for the JWKS fetches, which outlive any request

	mu       sync.Mutex
	verifier *oidc.IDTokenVerifier
	keys     *jwksCache
	failedAt time.Time
	lastErr  error

	cacheMu sync.Mutex
	cache   map[[32]byte]cachedToken
}

type cachedToken struct {
	id    *Identity
	until time.Time
}

// maxCachedTokens bounds the token cache; when full it is emptied.
const maxCachedTokens = 10000

func (v *OIDCVerifier) cached(sum [32]byte, now time.Time) *Identity {
	v.cacheMu.Lock()
	defer v.cacheMu.Unlock()
	c, ok := v.cache[sum]
	if !ok || !now.Before(c.until) {
		return nil
	}
	return cloneIdentity(c.id, now)
}

func (v *OIDCVerifier) remember(sum [32]byte, id *Identity, now time.Time) {
	if v.cfg.TokenCacheTTL < 0 {
		return
	}
	until := now.Add(v.cfg.TokenCacheTTL)
	if id.ExpiresAt.Before(until) {
		until = id.ExpiresAt
	}
	v.cacheMu.Lock()
	defer v.cacheMu.Unlock()
	if v.cache == nil || len(v.cache) >= maxCachedTokens {
		v.cache = map[[32]byte]cachedToken{}
	}
	v.cache[sum] = cachedToken{id: cloneIdentity(id, now), until: until}
}

func cloneIdentity(id *Identity, authTime time.Time) *Identity {
	c := *id
	c.Roles = slices.Clone(id.Roles)
	c.Groups = slices.Clone(id.Groups)
	c.Attributes = maps.Clone(id.Attributes)
	c.AuthTime = authTime
	return &c
}

// NewOIDCVerifier checks cfg and returns a verifier.
func NewOIDCVerifier(cfg OIDCConfig, clk clock.Clock, log *slog.Logger) (*OIDCVerifier, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if len(cfg.Algorithms) == 0 {
		cfg.Algorithms = []string{oidc.RS256, oidc.ES256}
	}
	if cfg.UserClaim == "" {
		cfg.UserClaim = "email"
	}
	if cfg.EmailVerifiedClaim == "" {
		cfg.EmailVerifiedClaim = "email_verified"
	}
	if cfg.TenantClaim == "" {
		cfg.TenantClaim = "tenant"
	}
	if cfg.RolesClaim == "" {
		cfg.RolesClaim = "roles"
	}
	if cfg.GroupsClaim == "" {
		cfg.GroupsClaim = "groups"
	}
	if cfg.KeyMaxAge <= 0 {
		cfg.KeyMaxAge = time.Hour
	}
	if cfg.MinKeyRefetch <= 0 {
		cfg.MinKeyRefetch = 10 * time.Second
	}
	if cfg.RetryDiscovery <= 0 {
		cfg.RetryDiscovery = 10 * time.Second
	}
	if cfg.TokenCacheTTL == 0 {
		cfg.TokenCacheTTL = time.Minute
	}
	if clk == nil {
		clk = clock.System{}
	}
	base := context.Background()
	if cfg.HTTPClient != nil {
		base = oidc.ClientContext(base, cfg.HTTPClient)
	}
	return &OIDCVerifier{cfg: cfg, clock: clk, log: log, base: base}, nil
}

func (v *OIDCVerifier) idTokenVerifier(ctx context.Context) (*oidc.IDTokenVerifier, error) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.verifier != nil {
		return v.verifier, nil
	}
	now := v.clock.Now()
	if !v.failedAt.IsZero() && now.Sub(v.failedAt) < v.cfg.RetryDiscovery {
		return nil, tartarus.Errorf(tartarus.ErrUnavailable, "oidc issuer %s: %v", v.cfg.Issuer, v.lastErr)
	}
	dctx, cancel := context.WithTimeout(v.base, 10*time.Second)
	defer cancel()
	provider, err := oidc.NewProvider(dctx, v.cfg.Issuer)
	if err != nil {
		v.failedAt, v.lastErr = now, err
		v.log.Error("oidc discovery failed", "issuer", v.cfg.Issuer, "err", err)
		return nil, tartarus.Errorf(tartarus.ErrUnavailable, "oidc issuer %s: %v", v.cfg.Issuer, err)
	}
	var meta struct {
		JWKSURL string `json:"jwks_uri"`
	}
	if err := provider.Claims(&meta); err != nil || meta.JWKSURL == "" {
		v.failedAt, v.lastErr = now, fmt.Errorf("discovery document has no jwks_uri")
		return nil, tartarus.Errorf(tartarus.ErrUnavailable, "oidc issuer %s: no jwks_uri", v.cfg.Issuer)
	}
	client := v.cfg.HTTPClient
	if client == nil {
		client = http.DefaultClient
	}
	var algs []jose.SignatureAlgorithm
	for _, a := range v.cfg.Algorithms {
		algs = append(algs, jose.SignatureAlgorithm(a))
	}
	ks := &jwksCache{url: meta.JWKSURL, client: client, clock: v.clock, algs: algs, maxAge: v.cfg.KeyMaxAge, minRefetch: v.cfg.MinKeyRefetch}
	v.keys = ks
	v.verifier = oidc.NewVerifier(v.cfg.Issuer, ks, &oidc.Config{
		ClientID:             v.cfg.Audience,
		SupportedSigningAlgs: v.cfg.Algorithms,
		Now:                  v.clock.Now,
	})
	v.log.Info("oidc issuer discovered", "issuer", v.cfg.Issuer, "jwks", meta.JWKSURL)
	return v.verifier, nil
}

// looksLikeJWT reports whether a bearer token has the three dot-separated
// parts of a JWS compact serialization.
func looksLikeJWT(tok string) bool { return strings.Count(tok, ".") == 2 }

// Verify checks a bearer token and maps its claims to an Identity.
func (v *OIDCVerifier) Verify(ctx context.Context, token string) (*Identity, error) {
	now := v.clock.Now()
	sum := sha256.Sum256([]byte(token))
	if id := v.cached(sum, now); id != nil {
		return id, nil
	}
	id, err := v.verify(ctx, token)
	if err != nil {
		return nil, err
	}
	v.remember(sum, id, now)
	return id, nil
}

func (v *OIDCVerifier) verify(ctx context.Context, token string) (*Identity, error) {
	alg, err := jwtAlg(token)
	if err != nil {
		return nil, err
	}
	if !slices.Contains(v.cfg.Algorithms, alg) {
		return nil, authErr(ReasonBadAlgorithm, fmt.Sprintf("token signing algorithm %q is not accepted", alg), "")
	}
	verifier, err := v.idTokenVerifier(ctx)
	if err != nil {
		return nil, err
	}
	tok, err := verifier.Verify(ctx, token)
	if err != nil {
		return nil, classifyOIDCError(err)
	}
	var claims map[string]any
	if err := tok.Claims(&claims); err != nil {
		return nil, authErr(ReasonInvalidToken, "token claims are not a JSON object", err.Error())
	}
	user := claimString(claims, v.cfg.UserClaim)
	if user != "" && v.userIsEmail() && v.cfg.EmailVerifiedClaim != "-" && !claimTrue(claims, v.cfg.EmailVerifiedClaim) {
		return nil, authErr(ReasonEmailUnverified, fmt.Sprintf("the token's %s is not verified (%q is not true)", v.cfg.UserClaim, v.cfg.EmailVerifiedClaim), "user "+user)
	}
	if user == "" {
		user = tok.Subject
	}
	if user == "" {
		return nil, authErr(ReasonInvalidToken, "token names no subject", "")
	}
	tenant := claimString(claims, v.cfg.TenantClaim)
	if tenant == "" {
		tenant = v.cfg.DefaultTenant
	}
	if tenant == "" {
		return nil, authErr(ReasonNoTenant, fmt.Sprintf("token has no %q claim naming a tenant", v.cfg.TenantClaim), "")
	}
	return &Identity{
		ID:          user,
		Type:        IdentityTypeUser,
		TenantID:    tenant,
		DisplayName: claimString(claims, "name"),
		Roles:       claimStrings(claims, v.cfg.RolesClaim),
		Groups:      claimStrings(claims, v.cfg.GroupsClaim),
		Attributes:  map[string]string{"auth_method": "oidc", "issuer": tok.Issuer, "subject": tok.Subject},
		AuthTime:    v.clock.Now(),
		ExpiresAt:   tok.Expiry,
	}, nil
}

// userIsEmail reports whether the user id claim is an email address.
func (v *OIDCVerifier) userIsEmail() bool {
	c := v.cfg.UserClaim
	if i := strings.LastIndexByte(c, '.'); i >= 0 {
		c = c[i+1:]
	}
	return strings.EqualFold(c, "email")
}

// claimTrue reports whether claim is the boolean true (or the string
// "true", which some issuers send).
func claimTrue(claims map[string]any, name string) bool {
	switch b := claimValue(claims, name).(type) {
	case bool:
		return b
	case string:
		return b == "true"
	}
	return false
}

// jwtAlg reads the alg of a JWS header without trusting anything else in it.
func jwtAlg(token string) (string, error) {
	head, _, ok := strings.Cut(token, ".")
	if !ok || head == "" {
		return "", authErr(ReasonMalformed, "bearer token is not a JWT", "")
	}
	raw, err := base64.RawURLEncoding.DecodeString(head)
	if err != nil {
		return "", authErr(ReasonMalformed, "bearer token header is not base64url", "")
	}
	var h struct {
		Alg string `json:"alg"`
	}
	if err := json.Unmarshal(raw, &h); err != nil || h.Alg == "" {
		return "", authErr(ReasonMalformed, "bearer token header has no alg", "")
	}
	return h.Alg, nil
}

// classifyOIDCError turns go-oidc's errors (plain strings, except expiry)
// into a reason the client can act on.
func classifyOIDCError(err error) error {
	msg := err.Error()
	var exp *oidc.TokenExpiredError
	switch {
	case errors.As(err, &exp):
		return authErr(ReasonExpired, "token has expired", msg)
	case strings.Contains(msg, "expected audience"):
		return authErr(ReasonWrongAudience, "token is not meant for this server (wrong audience)", msg)
	case strings.Contains(msg, "issued by a different provider"):
		return authErr(ReasonWrongIssuer, "token comes from an issuer this server does not trust", msg)
	case strings.Contains(msg, "nbf"):
		return authErr(ReasonNotYetValid, "token is not valid yet (nbf)", msg)
	case strings.Contains(msg, "unsupported algorithm"):
		return authErr(ReasonBadAlgorithm, "token signing algorithm is not accepted", msg)
	case strings.Contains(msg, errKeysUnavailable.Error()):
		return tartarus.Errorf(tartarus.ErrUnavailable, "oidc: %s", msg)
	case strings.Contains(msg, "signature"):
		return authErr(ReasonBadSignature, "token signature does not verify", msg)
	case strings.Contains(msg, "malformed"):
		return authErr(ReasonMalformed, "bearer token is malformed", msg)
	}
	return authErr(ReasonInvalidToken, "bearer token is not valid", msg)
}

func claimValue(claims map[string]any, name string) any {
	if v, ok := claims[name]; ok {
		return v
	}
	var cur any = claims
	for part := range strings.SplitSeq(name, ".") {
		m, ok := cur.(map[string]any)
		if !ok {
			return nil
		}
		cur = m[part]
	}
	return cur
}

func claimString(claims map[string]any, name string) string {
	s, _ := claimValue(claims, name).(string)
	return s
}

// claimStrings accepts a JSON array of strings or one string of names
// separated by spaces or commas.
func claimStrings(claims map[string]any, name string) []string {
	switch v := claimValue(claims, name).(type) {
	case []any:
		var out []string
		for _, e := range v {
			if s, ok := e.(string); ok && s != "" {
				out = append(out, s)
			}
		}
		return out
	case string:
		return strings.FieldsFunc(v, func(r rune) bool { return r == ' ' || r == ',' })
	}
	return nil
}
