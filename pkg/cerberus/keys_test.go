package cerberus

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

func TestKeyStoreLifecycle(t *testing.T) {
	ctx := context.Background()
	clock := newFakeClock()
	path := filepath.Join(t.TempDir(), "apikeys.json")
	s, err := OpenKeyStore(path, clock)
	if err != nil {
		t.Fatal(err)
	}
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

	st, _ := os.Stat(path)
	if st.Mode().Perm() != 0o600 {
		t.Errorf("key file mode %v, want 0600", st.Mode().Perm())
	}
	raw, _ := os.ReadFile(path)
	if strings.Contains(string(raw), cred.Secret) {
		t.Fatal("key file holds the secret in clear")
	}

	got, err := s.Verify(ctx, cred)
	if err != nil || got.TenantID != "acme" || got.Roles[0] != "sandbox-user" || got.CreatedBy != "user:alice" {
		t.Fatalf("verify: %+v, %v", got, err)
	}

	// A reopened store knows the key.
	s2, err := OpenKeyStore(path, clock)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s2.Verify(ctx, cred); err != nil {
		t.Fatalf("after reopen: %v", err)
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

	s3, _ := OpenKeyStore(path, clock)
	if k3, _ := s3.Get(ctx, k.ID); !k3.Revoked {
		t.Fatal("revocation not persisted")
	}
}

func TestKeyStoreRejects(t *testing.T) {
	ctx := context.Background()
	clock := newFakeClock()
	s, _ := OpenKeyStore(filepath.Join(t.TempDir(), "k.json"), clock)
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

func TestEnsureAdminKey(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	clock := newFakeClock()
	s, _ := OpenKeyStore(filepath.Join(dir, "apikeys.json"), clock)
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
}
