package cerberus

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tartarus-sandbox/tartarus/pkg/clock"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

// keyStoreCase is one KeyStore backend for the shared suite: place makes a
// new, empty place for keys (a file path, a database) and returns a function
// that opens a store on it. Opening twice is a restart, or a second replica.
type keyStoreCase struct {
	name  string
	place func(t *testing.T) (open func(t *testing.T, clk clock.Clock) *KeyStore)
}

func fileKeyStoreCase() keyStoreCase {
	return keyStoreCase{name: "file", place: func(t *testing.T) func(*testing.T, clock.Clock) *KeyStore {
		path := filepath.Join(t.TempDir(), "apikeys.json")
		return func(t *testing.T, clk clock.Clock) *KeyStore {
			t.Helper()
			s, err := OpenKeyStore(path, clk)
			if err != nil {
				t.Fatal(err)
			}
			return s
		}
	}}
}

func TestKeyStoreFile(t *testing.T) {
	testKeyStore(t, fileKeyStoreCase())
}

// testKeyStore is the conformance suite every KeyStore backend passes.
func testKeyStore(t *testing.T, c keyStoreCase) {
	tests := []struct {
		name string
		run  func(t *testing.T, open func(*testing.T, clock.Clock) *KeyStore)
	}{
		{"Lifecycle", testKeyLifecycle},
		{"Rejects", testKeyRejects},
		{"List", testKeyList},
		{"RevokeTwice", testKeyRevokeTwice},
		{"EnsureAdminKey", testEnsureAdminKey},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) { tt.run(t, c.place(t)) })
	}
}

func testKeyLifecycle(t *testing.T, open func(*testing.T, clock.Clock) *KeyStore) {
	ctx := context.Background()
	clock := newFakeClock()
	s := open(t, clock)
	k, secret, err := s.Create(ctx, KeySpec{Name: "ci", TenantID: "acme", Roles: []string{"sandbox-user"}, ExpiresAt: clock.Now().Add(time.Hour), CreatedBy: "user:alice"})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(string(secret), KeyPrefix+k.ID+"_") {
		t.Fatalf("secret %q does not read tk_<id>_…", secret.String())
	}
	cred, err := ParseAPIKey(string(secret))
	if err != nil {
		t.Fatal(err)
	}
	got, err := s.Verify(ctx, cred)
	if err != nil || got.TenantID != "acme" || got.Roles[0] != "sandbox-user" || got.CreatedBy != "user:alice" {
		t.Fatalf("verify: %+v, %v", got, err)
	}

	// A reopened store knows the key, exactly as it was created.
	s2 := open(t, clock)
	if _, err := s2.Verify(ctx, cred); err != nil {
		t.Fatalf("after reopen: %v", err)
	}
	if g, err := s2.Get(ctx, k.ID); err != nil || !sameKey(g, k) {
		t.Fatalf("get after reopen:\n got %+v, %v\nwant %+v", g, err, k)
	}

	wrong := *cred
	wrong.Secret = strings.Repeat("0", 64)
	unknown := *cred
	unknown.KeyID = "000000000000"
	tests := []struct {
		name   string
		cred   *APIKeyCredential
		before func()
		reason string
	}{
		{"wrong secret", &wrong, nil, ReasonInvalidKey},
		{"unknown id", &unknown, nil, ReasonInvalidKey},
		{"expired", cred, func() { clock.Advance(2 * time.Hour) }, ReasonExpired},
		{"revoked", cred, func() {
			if _, err := s.Revoke(ctx, k.ID); err != nil {
				t.Fatal(err)
			}
		}, ReasonRevoked},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.before != nil {
				tt.before()
			}
			_, err := s.Verify(ctx, tt.cred)
			if reasonOf(err) != tt.reason || !errors.Is(err, tartarus.ErrUnauthenticated) {
				t.Fatalf("got %v (reason %s), want %s", err, reasonOf(err), tt.reason)
			}
		})
	}

	s3 := open(t, clock)
	if k3, _ := s3.Get(ctx, k.ID); !k3.Revoked || !k3.RevokedAt.Equal(clock.Now()) {
		t.Fatalf("revocation not persisted: %+v", k3)
	}
}

// sameKey compares keys field by field, times with Equal.
func sameKey(a, b APIKey) bool {
	return a.ID == b.ID && a.Name == b.Name && a.TenantID == b.TenantID && slices.Equal(a.Roles, b.Roles) &&
		a.CreatedAt.Equal(b.CreatedAt) && a.CreatedBy == b.CreatedBy && a.ExpiresAt.Equal(b.ExpiresAt) &&
		a.Revoked == b.Revoked && a.RevokedAt.Equal(b.RevokedAt)
}

func testKeyRejects(t *testing.T, open func(*testing.T, clock.Clock) *KeyStore) {
	ctx := context.Background()
	clock := newFakeClock()
	s := open(t, clock)
	for _, spec := range []KeySpec{
		{Roles: []string{"x"}},
		{TenantID: "t"},
		{TenantID: "t", Roles: []string{"x"}, ExpiresAt: clock.Now().Add(-time.Second)},
	} {
		if _, _, err := s.Create(ctx, spec); !errors.Is(err, tartarus.ErrInvalid) {
			t.Errorf("%+v: got %v", spec, err)
		}
	}
	if _, err := s.Revoke(ctx, "nope"); !errors.Is(err, tartarus.ErrNotFound) {
		t.Errorf("revoke unknown: %v", err)
	}
	if _, err := s.Get(ctx, "nope"); !errors.Is(err, tartarus.ErrNotFound) {
		t.Errorf("get unknown: %v", err)
	}
	if ks, err := s.List(ctx, ""); err != nil || len(ks) != 0 {
		t.Errorf("rejected specs left keys: %v %v", ks, err)
	}
}

func testKeyList(t *testing.T, open func(*testing.T, clock.Clock) *KeyStore) {
	ctx := context.Background()
	clock := newFakeClock()
	s := open(t, clock)
	var ids []string
	for _, tenant := range []string{"acme", "globex", "acme"} {
		k, _, err := s.Create(ctx, KeySpec{TenantID: tenant, Roles: []string{"viewer"}})
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, k.ID)
		clock.Advance(time.Second)
	}
	tests := []struct {
		tenant string
		want   []string
	}{
		{"", ids},
		{"*", ids},
		{"acme", []string{ids[0], ids[2]}},
		{"globex", ids[1:2]},
		{"initech", nil},
	}
	for _, tt := range tests {
		ks, err := s.List(ctx, tt.tenant)
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, k := range ks {
			got = append(got, k.ID)
		}
		if !slices.Equal(got, tt.want) {
			t.Errorf("list %q: %v, want %v (oldest first)", tt.tenant, got, tt.want)
		}
	}
}

func testKeyRevokeTwice(t *testing.T, open func(*testing.T, clock.Clock) *KeyStore) {
	ctx := context.Background()
	clock := newFakeClock()
	s := open(t, clock)
	k, _, err := s.Create(ctx, KeySpec{TenantID: "acme", Roles: []string{"viewer"}})
	if err != nil {
		t.Fatal(err)
	}
	first, err := s.Revoke(ctx, k.ID)
	if err != nil || !first.Revoked {
		t.Fatalf("revoke: %+v %v", first, err)
	}
	clock.Advance(time.Minute)
	again, err := s.Revoke(ctx, k.ID)
	if err != nil || !again.RevokedAt.Equal(first.RevokedAt) {
		t.Fatalf("second revoke: %+v %v; want the first time %v kept", again, err, first.RevokedAt)
	}
}

func testEnsureAdminKey(t *testing.T, open func(*testing.T, clock.Clock) *KeyStore) {
	ctx := context.Background()
	dir := t.TempDir()
	s := open(t, newFakeClock())
	path := filepath.Join(dir, "admin.key")
	made, err := EnsureAdminKey(ctx, s, path)
	if err != nil || !made {
		t.Fatalf("first start: %v %v", made, err)
	}
	st, _ := os.Stat(path)
	if st.Mode().Perm() != 0o600 {
		t.Errorf("admin.key mode %v", st.Mode().Perm())
	}
	key, _ := ReadKeyFile(path)
	cred, err := ParseAPIKey(key)
	if err != nil {
		t.Fatal(err)
	}
	k, err := s.Verify(ctx, cred)
	if err != nil || k.Roles[0] != AdminRole || k.TenantID != DefaultTenant {
		t.Fatalf("admin key: %+v %v", k, err)
	}
	if made, _ := EnsureAdminKey(ctx, s, path); made {
		t.Error("second start made another key")
	}
	os.Remove(path)
	if made, _ := EnsureAdminKey(ctx, s, path); made {
		t.Error("made a key although keys exist")
	}
	if ks, _ := s.List(ctx, ""); len(ks) != 1 {
		t.Errorf("%d keys, want the one admin key", len(ks))
	}
}

// TestKeyFileOnDisk checks what only the JSON file backend promises: the
// file is 0600 and holds no secret in clear.
func TestKeyFileOnDisk(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "apikeys.json")
	s, err := OpenKeyStore(path, newFakeClock())
	if err != nil {
		t.Fatal(err)
	}
	_, secret, err := s.Create(ctx, KeySpec{TenantID: "acme", Roles: []string{"viewer"}})
	if err != nil {
		t.Fatal(err)
	}
	cred, _ := ParseAPIKey(string(secret))
	st, _ := os.Stat(path)
	if st.Mode().Perm() != 0o600 {
		t.Errorf("key file mode %v, want 0600", st.Mode().Perm())
	}
	raw, _ := os.ReadFile(path)
	if strings.Contains(string(raw), cred.Secret) {
		t.Fatal("key file holds the secret in clear")
	}
	if s.CacheTTL() != 0 {
		t.Errorf("file store caches (%v): it has every key in memory", s.CacheTTL())
	}
}

func TestParseAPIKey(t *testing.T) {
	id, sec := "0123456789ab", strings.Repeat("cd", 32)
	tests := []struct {
		key string
		ok  bool
	}{
		{KeyPrefix + id + "_" + sec, true},
		{"xx_" + id + "_" + sec, false},
		{KeyPrefix + id + sec, false},
		{KeyPrefix + id + "_" + sec[:63], false},
		{KeyPrefix + "0123456789AB_" + sec, false},
		{KeyPrefix + id + "_" + sec + "_", false},
		{KeyPrefix, false},
	}
	for _, tt := range tests {
		c, err := ParseAPIKey(tt.key)
		if (err == nil) != tt.ok {
			t.Errorf("%q: err %v", tt.key, err)
		}
		if err == nil && (c.KeyID != id || c.Secret != sec) {
			t.Errorf("%q: parsed %+v", tt.key, c)
		}
	}
}

func TestSecretsStayOutOfText(t *testing.T) {
	sec := strings.Repeat("ab", 32)
	key := Secret(KeyPrefix + "0123456789ab_" + sec)
	cred := &APIKeyCredential{KeyID: "0123456789ab", Secret: sec}
	tok := &OAuth2Credential{AccessToken: "eyJhbGciOi.secretpayload.sig"}
	for _, s := range []string{key.String(), key.LogValue().String(), cred.String(), cred.LogValue().String(), tok.String(), tok.LogValue().String()} {
		if strings.Contains(s, sec) || strings.Contains(s, "secretpayload") {
			t.Errorf("secret shown in %q", s)
		}
	}
}

// pausedGets is a backend whose next get, once armed, stops after reading
// until released, so a test can slip a revocation between a lookup's read
// and its cache write.
type pausedGets struct {
	keyBackend
	on      atomic.Bool   // the next get pauses
	armed   chan struct{} // receives when that get has read and waits
	release chan struct{}
}

func (p *pausedGets) get(ctx context.Context, id string) (storedKey, error) {
	k, err := p.keyBackend.get(ctx, id)
	if p.on.CompareAndSwap(true, false) {
		p.armed <- struct{}{}
		<-p.release
	}
	return k, err
}

// TestKeyCacheRevokeDuringLookup: a lookup that read a key before this
// store revoked it must not put the stale copy in the cache, or the key
// would keep working here for a whole TTL after Revoke returned.
func TestKeyCacheRevokeDuringLookup(t *testing.T) {
	ctx := context.Background()
	clock := newFakeClock()
	inner, err := openFileKeys(filepath.Join(t.TempDir(), "apikeys.json"))
	if err != nil {
		t.Fatal(err)
	}
	b := &pausedGets{keyBackend: inner, armed: make(chan struct{}), release: make(chan struct{})}
	s := newKeyStore(b, clock, time.Minute)
	k, secret, err := s.Create(ctx, KeySpec{TenantID: "acme", Roles: []string{"viewer"}})
	if err != nil {
		t.Fatal(err)
	}
	cred, _ := ParseAPIKey(string(secret))

	done := make(chan error, 1)
	b.on.Store(true)
	go func() { _, err := s.Verify(ctx, cred); done <- err }()
	<-b.armed // the lookup has read the key, not yet revoked
	if _, err := s.Revoke(ctx, k.ID); err != nil {
		t.Fatal(err)
	}
	close(b.release)
	if err := <-done; err != nil {
		t.Fatalf("lookup that read before the revoke: %v", err)
	}
	if _, err := s.Verify(ctx, cred); reasonOf(err) != ReasonRevoked {
		t.Fatalf("after Revoke returned: %v, want %s (stale copy cached)", err, ReasonRevoked)
	}
}
