package cerberus

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coreos/go-oidc/v3/oidc"
	"github.com/coreos/go-oidc/v3/oidc/oidctest"
	jose "github.com/go-jose/go-jose/v4"

	"github.com/tartarus-sandbox/tartarus/pkg/clock"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

// testIssuer is an OIDC issuer on loopback: go-oidc's oidctest provider
// (discovery document and JWKS) with real generated RSA and EC keys that the
// test can rotate.
type testIssuer struct {
	t          testing.TB
	srv        *httptest.Server
	keyFetches atomic.Int32

	mu    sync.Mutex
	cur   *oidctest.Server
	privs map[string]crypto.Signer
}

func newTestIssuer(t testing.TB) *testIssuer {
	i := &testIssuer{t: t, privs: map[string]crypto.Signer{}}
	i.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/keys" {
			i.keyFetches.Add(1)
		}
		i.mu.Lock()
		s := i.cur
		i.mu.Unlock()
		s.ServeHTTP(w, r)
	}))
	t.Cleanup(i.srv.Close)
	i.addKey("rsa-1", "rsa")
	i.addKey("ec-1", "ec")
	i.publish("rsa-1", "ec-1")
	return i
}

func (i *testIssuer) addKey(kid, kind string) {
	var k crypto.Signer
	var err error
	if kind == "rsa" {
		k, err = rsa.GenerateKey(rand.Reader, 2048)
	} else {
		k, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	}
	if err != nil {
		i.t.Fatal(err)
	}
	i.mu.Lock()
	i.privs[kid] = k
	i.mu.Unlock()
}

// publish makes the JWKS hold exactly the keys kids.
func (i *testIssuer) publish(kids ...string) {
	s := &oidctest.Server{Algorithms: []string{oidc.RS256, oidc.ES256}}
	i.mu.Lock()
	for _, kid := range kids {
		s.PublicKeys = append(s.PublicKeys, oidctest.PublicKey{PublicKey: i.privs[kid].Public(), KeyID: kid, Algorithm: algOf(i.privs[kid])})
	}
	s.SetIssuer(i.srv.URL)
	i.cur = s
	i.mu.Unlock()
}

func algOf(k crypto.Signer) string {
	if _, ok := k.(*rsa.PrivateKey); ok {
		return oidc.RS256
	}
	return oidc.ES256
}

func (i *testIssuer) claims(now time.Time) map[string]any {
	return map[string]any{
		"iss": i.srv.URL, "aud": "tartarus", "sub": "u-123", "email": "alice@example.com", "email_verified": true, "name": "Alice",
		"tenant": "acme", "roles": []string{"sandbox-user"}, "groups": []string{"developers"},
		"iat": now.Unix(), "nbf": now.Add(-time.Minute).Unix(), "exp": now.Add(time.Hour).Unix(),
	}
}

func (i *testIssuer) sign(kid string, claims map[string]any) string {
	i.mu.Lock()
	k := i.privs[kid]
	i.mu.Unlock()
	b, _ := json.Marshal(claims)
	return oidctest.SignIDToken(k, kid, algOf(k), string(b))
}

func (i *testIssuer) verifier(t testing.TB, clk clock.Clock, mod func(*OIDCConfig)) *OIDCVerifier {
	cfg := OIDCConfig{Issuer: i.srv.URL, Audience: "tartarus", KeyMaxAge: 10 * time.Minute}
	if mod != nil {
		mod(&cfg)
	}
	v, err := NewOIDCVerifier(cfg, clk, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func with(m map[string]any, kv ...any) map[string]any {
	out := map[string]any{}
	for k, v := range m {
		out[k] = v
	}
	for j := 0; j+1 < len(kv); j += 2 {
		if kv[j+1] == nil {
			delete(out, kv[j].(string))
		} else {
			out[kv[j].(string)] = kv[j+1]
		}
	}
	return out
}

func TestOIDCVerify(t *testing.T) {
	ctx := context.Background()
	clock := newFakeClock()
	iss := newTestIssuer(t)
	v := iss.verifier(t, clock, nil)
	now := clock.Now()
	base := iss.claims(now)

	// A key the issuer never published, presented under a published kid.
	impostor, _ := rsa.GenerateKey(rand.Reader, 2048)
	b, _ := json.Marshal(base)
	forged := oidctest.SignIDToken(impostor, "rsa-1", oidc.RS256, string(b))

	// HMAC "signed" with the issuer's public key: the classic alg confusion.
	pubDER, _ := x509.MarshalPKIXPublicKey(iss.privs["rsa-1"].Public())
	pubPEM := pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pubDER})
	hs, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.HS256, Key: pubPEM}, (&jose.SignerOptions{}).WithHeader("kid", "rsa-1"))
	if err != nil {
		t.Fatal(err)
	}
	hsObj, _ := hs.Sign(b)
	hsTok, _ := hsObj.CompactSerialize()

	enc := base64.RawURLEncoding.EncodeToString
	noneTok := enc([]byte(`{"alg":"none","typ":"JWT"}`)) + "." + enc(b) + "."

	tests := []struct {
		name   string
		token  string
		reason string
	}{
		{"valid RS256", iss.sign("rsa-1", base), ""},
		{"valid ES256", iss.sign("ec-1", base), ""},
		{"expired", iss.sign("rsa-1", with(base, "exp", now.Add(-time.Minute).Unix())), ReasonExpired},
		{"no exp", iss.sign("rsa-1", with(base, "exp", nil)), ReasonExpired},
		{"not yet valid", iss.sign("rsa-1", with(base, "nbf", now.Add(time.Hour).Unix())), ReasonNotYetValid},
		{"wrong audience", iss.sign("rsa-1", with(base, "aud", "someone-else")), ReasonWrongAudience},
		{"wrong issuer", iss.sign("rsa-1", with(base, "iss", "https://evil.example")), ReasonWrongIssuer},
		{"wrong signature", forged, ReasonBadSignature},
		{"unknown key id", oidctest.SignIDToken(impostor, "nobody", oidc.RS256, string(b)), ReasonBadSignature},
		{"alg none", noneTok, ReasonBadAlgorithm},
		{"HS256 with the public key", hsTok, ReasonBadAlgorithm},
		{"no tenant", iss.sign("rsa-1", with(base, "tenant", nil)), ReasonNoTenant},
		{"malformed header", "bm90IGpzb24.e30.sig", ReasonMalformed},
		{"malformed payload", enc([]byte(`{"alg":"RS256","kid":"rsa-1"}`)) + ".!!!.sig", ReasonMalformed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			id, err := v.Verify(ctx, tt.token)
			if tt.reason == "" {
				if err != nil {
					t.Fatal(err)
				}
				if id.ID != "alice@example.com" || id.Type != IdentityTypeUser || id.TenantID != "acme" ||
					!slices.Equal(id.Roles, []string{"sandbox-user"}) || !slices.Equal(id.Groups, []string{"developers"}) || id.DisplayName != "Alice" {
					t.Fatalf("identity %+v", id)
				}
				return
			}
			if err == nil {
				t.Fatalf("accepted; want %s", tt.reason)
			}
			if got := reasonOf(err); got != tt.reason || !errors.Is(err, tartarus.ErrUnauthenticated) {
				t.Fatalf("reason %s (%v), want %s", got, err, tt.reason)
			}
		})
	}
}

func TestOIDCTokenCacheKeepsExpiry(t *testing.T) {
	ctx := context.Background()
	clock := newFakeClock()
	iss := newTestIssuer(t)
	v := iss.verifier(t, clock, nil)
	tok := iss.sign("rsa-1", with(iss.claims(clock.Now()), "exp", clock.Now().Add(30*time.Second).Unix()))
	for range 3 {
		id, err := v.Verify(ctx, tok)
		if err != nil {
			t.Fatal(err)
		}
		id.Roles[0] = "platform-admin" // a caller changing its copy changes nothing cached
	}
	id, _ := v.Verify(ctx, tok)
	if id.Roles[0] != "sandbox-user" {
		t.Fatalf("cached identity was changed: %v", id.Roles)
	}
	clock.Advance(31 * time.Second)
	if _, err := v.Verify(ctx, tok); reasonOf(err) != ReasonExpired {
		t.Fatalf("cached token past exp: %v", err)
	}
}

func TestOIDCClaimMapping(t *testing.T) {
	ctx := context.Background()
	clock := newFakeClock()
	iss := newTestIssuer(t)
	v := iss.verifier(t, clock, func(c *OIDCConfig) {
		c.UserClaim, c.TenantClaim, c.RolesClaim, c.GroupsClaim, c.DefaultTenant = "preferred_username", "org.id", "realm_access.roles", "grp", "fallback"
	})
	claims := with(iss.claims(clock.Now()), "preferred_username", "bob", "org", map[string]any{"id": "globex"},
		"realm_access", map[string]any{"roles": []string{"tenant-admin", "viewer"}}, "grp", "a, b")
	id, err := v.Verify(ctx, iss.sign("ec-1", claims))
	if err != nil {
		t.Fatal(err)
	}
	if id.ID != "bob" || id.TenantID != "globex" || !slices.Equal(id.Roles, []string{"tenant-admin", "viewer"}) || !slices.Equal(id.Groups, []string{"a", "b"}) {
		t.Fatalf("identity %+v", id)
	}
	id, err = v.Verify(ctx, iss.sign("ec-1", with(claims, "org", nil, "preferred_username", nil, "email", nil)))
	if err != nil || id.TenantID != "fallback" || id.ID != "u-123" {
		t.Fatalf("defaults: %+v %v", id, err)
	}
}

func TestOIDCKeyRotation(t *testing.T) {
	ctx := context.Background()
	clock := newFakeClock()
	iss := newTestIssuer(t)
	v := iss.verifier(t, clock, nil)
	long := func() map[string]any {
		return with(iss.claims(clock.Now()), "exp", clock.Now().Add(24*time.Hour).Unix())
	}

	old := iss.sign("rsa-1", long())
	if _, err := v.Verify(ctx, old); err != nil {
		t.Fatal(err)
	}
	if n := iss.keyFetches.Load(); n != 1 {
		t.Fatalf("JWKS fetched %d times, want 1", n)
	}
	for range 5 {
		if _, err := v.Verify(ctx, old); err != nil {
			t.Fatal(err)
		}
	}
	if n := iss.keyFetches.Load(); n != 1 {
		t.Fatalf("keys not cached: %d fetches", n)
	}

	// The issuer rotates: a new key is published beside the old one and
	// starts signing.
	iss.addKey("rsa-2", "rsa")
	iss.publish("rsa-1", "rsa-2", "ec-1")
	clock.Advance(11 * time.Second) // past MinKeyRefetch since the first fetch
	fresh := iss.sign("rsa-2", long())
	if _, err := v.Verify(ctx, fresh); err != nil {
		t.Fatalf("token from the new key: %v", err)
	}
	if n := iss.keyFetches.Load(); n != 2 {
		t.Fatalf("unknown kid should refetch the JWKS once; fetches = %d", n)
	}
	if _, err := v.Verify(ctx, old); err != nil {
		t.Fatalf("old key during overlap: %v", err)
	}
	// Then the old key is withdrawn. Within KeyMaxAge it is still trusted
	// from cache (no unknown kid forces a fetch)...
	iss.publish("rsa-2", "ec-1")
	if _, err := v.Verify(ctx, old); err != nil {
		t.Fatalf("old key within max age: %v", err)
	}
	// ...and after it, the withdrawn key no longer verifies.
	clock.Advance(11 * time.Minute)
	if _, err := v.Verify(ctx, old); reasonOf(err) != ReasonBadSignature {
		t.Fatalf("withdrawn key after max age: %v", err)
	}
	if _, err := v.Verify(ctx, iss.sign("rsa-2", long())); err != nil {
		t.Fatalf("new key after max age: %v", err)
	}
}

func TestOIDCUnknownKeyIDsDoNotFloodTheIssuer(t *testing.T) {
	ctx := context.Background()
	clock := newFakeClock()
	iss := newTestIssuer(t)
	v := iss.verifier(t, clock, nil)
	if _, err := v.Verify(ctx, iss.sign("rsa-1", iss.claims(clock.Now()))); err != nil {
		t.Fatal(err)
	}
	impostor, _ := rsa.GenerateKey(rand.Reader, 2048)
	b, _ := json.Marshal(iss.claims(clock.Now()))
	for i := range 50 {
		tok := oidctest.SignIDToken(impostor, fmt.Sprintf("made-up-%d", i), oidc.RS256, string(b))
		if _, err := v.Verify(ctx, tok); reasonOf(err) != ReasonBadSignature {
			t.Fatalf("made-up kid: %v", err)
		}
	}
	if n := iss.keyFetches.Load(); n != 1 {
		t.Fatalf("50 made-up key ids caused %d JWKS fetches, want 1 (the first use)", n)
	}
	// After MinKeyRefetch one more fetch is allowed, and a real new key works.
	iss.addKey("rsa-9", "rsa")
	iss.publish("rsa-1", "rsa-9")
	clock.Advance(11 * time.Second)
	if _, err := v.Verify(ctx, iss.sign("rsa-9", iss.claims(clock.Now()))); err != nil {
		t.Fatalf("new key after the refetch delay: %v", err)
	}
	if n := iss.keyFetches.Load(); n != 2 {
		t.Fatalf("fetches %d, want 2", n)
	}
}

func TestOIDCKeysUnavailable(t *testing.T) {
	ctx := context.Background()
	clock := newFakeClock()
	iss := newTestIssuer(t)
	v := iss.verifier(t, clock, func(c *OIDCConfig) { c.TokenCacheTTL = -1 })
	tok := iss.sign("rsa-1", with(iss.claims(clock.Now()), "exp", clock.Now().Add(48*time.Hour).Unix()))
	if _, err := v.Verify(ctx, tok); err != nil {
		t.Fatal(err)
	}
	// The issuer's JWKS breaks: cached keys serve until they are too old.
	iss.mu.Lock()
	iss.cur.PublicKeys = nil
	iss.mu.Unlock()
	iss.srv.Config.Handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { http.Error(w, "down", http.StatusServiceUnavailable) })
	clock.Advance(5 * time.Minute)
	if _, err := v.Verify(ctx, tok); err != nil {
		t.Fatalf("cached keys while the issuer is down: %v", err)
	}
	clock.Advance(time.Hour)
	_, err := v.Verify(ctx, tok)
	if !errors.Is(err, tartarus.ErrUnavailable) || reasonOf(err) != ReasonUnavailable {
		t.Fatalf("keys too old and issuer down: %v", err)
	}
}

func TestOIDCIssuerUnavailable(t *testing.T) {
	ctx := context.Background()
	clock := newFakeClock()
	iss := newTestIssuer(t)
	tok := iss.sign("rsa-1", iss.claims(clock.Now()))
	good := iss.srv.URL
	dead := httptest.NewServer(http.NotFoundHandler())
	dead.Close()
	v, err := NewOIDCVerifier(OIDCConfig{Issuer: dead.URL, Audience: "tartarus"}, clock, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := v.Verify(ctx, tok); !errors.Is(err, tartarus.ErrUnavailable) {
		t.Fatalf("dead issuer: %v", err)
	}
	// The verifier keeps its configured issuer; point the same URL at a
	// live one by rebuilding with the good URL after the retry delay.
	v.cfg.Issuer = good
	if _, err := v.Verify(ctx, tok); !errors.Is(err, tartarus.ErrUnavailable) {
		t.Fatalf("within retry delay: %v", err)
	}
	clock.Advance(11 * time.Second)
	if _, err := v.Verify(ctx, tok); err != nil {
		t.Fatalf("after retry delay: %v", err)
	}
}

func TestOIDCConfigValidate(t *testing.T) {
	for _, c := range []OIDCConfig{
		{Audience: "a"},
		{Issuer: "https://i"},
		{Issuer: "https://i", Audience: "a", Algorithms: []string{"HS256"}},
		{Issuer: "https://i", Audience: "a", Algorithms: []string{"none"}},
		{Issuer: "https://i", Audience: "a", Algorithms: []string{"XX1"}},
	} {
		if c.Validate() == nil {
			t.Errorf("%+v accepted", c)
		}
	}
}

func FuzzParseToken(f *testing.F) {
	f.Add("Bearer tk_0123456789ab_" + string(make([]byte, 0)) + "cdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcd")
	f.Add("Bearer eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln")
	f.Add("Bearer eyJhbGciOiJub25lIn0.e30.")
	f.Add("Basic dXNlcjpwYXNz")
	f.Add("bearer    ")
	f.Add("Bearer a.b.c")
	f.Fuzz(func(t *testing.T, h string) {
		cred, err := ParseAuthorization(h)
		if err != nil {
			if !errors.Is(err, tartarus.ErrUnauthenticated) {
				t.Fatalf("error %v is not unauthenticated", err)
			}
			return
		}
		switch c := cred.(type) {
		case *APIKeyCredential:
			if len(c.Secret) != 64 || len(c.KeyID) != 12 {
				t.Fatalf("accepted key of odd shape %q", h)
			}
		case *OAuth2Credential:
			jwtAlg(c.AccessToken)
			classifyOIDCError(errors.New(c.AccessToken))
		}
	})
}

// FuzzOIDCVerify sends arbitrary bearer tokens through the whole verifier,
// against a live issuer on loopback. Only tokens the issuer signed may pass.
func FuzzOIDCVerify(f *testing.F) {
	clock := newFakeClock()
	iss := newTestIssuer(f)
	v := iss.verifier(f, clock, func(c *OIDCConfig) { c.TokenCacheTTL = -1 })
	good := iss.sign("rsa-1", iss.claims(clock.Now()))
	f.Add(good)
	f.Add(iss.sign("ec-1", iss.claims(clock.Now())))
	f.Add("eyJhbGciOiJub25lIn0.e30.")
	f.Add("a.b.c")
	f.Add(good[:len(good)/2])
	f.Fuzz(func(t *testing.T, tok string) {
		id, err := v.Verify(context.Background(), tok)
		if err != nil {
			if !errors.Is(err, tartarus.ErrUnauthenticated) && !errors.Is(err, tartarus.ErrUnavailable) {
				t.Fatalf("unclassified error %v", err)
			}
			return
		}
		if id.TenantID != "acme" {
			t.Fatalf("accepted a token the issuer did not sign: %+v", id)
		}
	})
}

// TestOIDCEmailMustBeVerified: with the email as user id, a token whose
// email_verified is not true is refused (anyone can claim an address at
// some issuers); the claim's name is configurable and the check can be
// turned off; a user id that is not an email needs no such claim.
func TestOIDCEmailMustBeVerified(t *testing.T) {
	ctx := context.Background()
	clk := newFakeClock()
	iss := newTestIssuer(t)
	iss.addKey("ec-1", "ec")
	iss.publish("ec-1")
	claims := iss.claims(clk.Now())
	tests := []struct {
		name   string
		mod    func(*OIDCConfig)
		claims map[string]any
		want   string // user id, or "" for refused
	}{
		{"verified", nil, claims, "alice@example.com"},
		{"not verified", nil, with(claims, "email_verified", false), ""},
		{"claim missing", nil, with(claims, "email_verified", nil), ""},
		{"string true", nil, with(claims, "email_verified", "true"), "alice@example.com"},
		{"string yes is not true", nil, with(claims, "email_verified", "yes"), ""},
		{"own claim name", func(c *OIDCConfig) { c.EmailVerifiedClaim = "ext.mail_ok" },
			with(claims, "email_verified", nil, "ext", map[string]any{"mail_ok": true}), "alice@example.com"},
		{"own claim name, false", func(c *OIDCConfig) { c.EmailVerifiedClaim = "ext.mail_ok" },
			with(claims, "ext", map[string]any{"mail_ok": false}), ""},
		{"check off", func(c *OIDCConfig) { c.EmailVerifiedClaim = "-" }, with(claims, "email_verified", false), "alice@example.com"},
		{"user id not an email", func(c *OIDCConfig) { c.UserClaim = "preferred_username" },
			with(claims, "email_verified", false, "preferred_username", "alice"), "alice"},
		{"no email: falls back to sub", nil, with(claims, "email", nil, "email_verified", nil), "u-123"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			v := iss.verifier(t, clk, tt.mod)
			id, err := v.Verify(ctx, iss.sign("ec-1", tt.claims))
			if tt.want == "" {
				if reasonOf(err) != ReasonEmailUnverified {
					t.Fatalf("identity %+v, err %v: want refused with %s", id, err, ReasonEmailUnverified)
				}
				return
			}
			if err != nil || id.ID != tt.want {
				t.Fatalf("identity %+v, err %v: want %s", id, err, tt.want)
			}
		})
	}
}
