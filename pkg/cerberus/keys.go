package cerberus

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

// KeyPrefix starts every API key, so leaked keys can be found by scanners
// (a key reads tk_<12 hex id>_<64 hex secret>).
const KeyPrefix = "tk_"

const (
	keyIDBytes     = 6
	keySecretBytes = 32
)

// APIKey is a stored API key as the API shows it. The secret is never
// stored: only its SHA-256, which is enough because the secret is 256 random
// bits (no dictionary to attack, so no slow hash is needed).
type APIKey struct {
	ID        string    `json:"id"`
	Name      string    `json:"name,omitempty"`
	TenantID  string    `json:"tenant_id"`
	Roles     []string  `json:"roles"`
	CreatedAt time.Time `json:"created_at"`
	CreatedBy string    `json:"created_by"`
	ExpiresAt time.Time `json:"expires_at,omitzero"`
	Revoked   bool      `json:"revoked"`
	RevokedAt time.Time `json:"revoked_at,omitzero"`
}

// Expired reports whether the key has expired at now.
func (k *APIKey) Expired(now time.Time) bool {
	return !k.ExpiresAt.IsZero() && !now.Before(k.ExpiresAt)
}

// KeySpec describes a key to create.
type KeySpec struct {
	Name      string
	TenantID  string
	Roles     []string
	ExpiresAt time.Time // zero: never
	CreatedBy string
}

// Secret is a whole API key as handed to its owner once. Its LogValue and
// String hide everything but the key id.
type Secret string

// LogValue implements slog.LogValuer.
func (s Secret) LogValue() slog.Value { return slog.StringValue(s.String()) }

// String shows only the key's id.
func (s Secret) String() string {
	if c, err := ParseAPIKey(string(s)); err == nil {
		return KeyPrefix + c.KeyID + "_<redacted>"
	}
	return "<redacted>"
}

// storedKey is one key as written to disk.
type storedKey struct {
	APIKey
	SecretSHA256 string `json:"secret_sha256"`
}

type keyFile struct {
	Version int         `json:"version"`
	Keys    []storedKey `json:"keys"`
}

// KeyStore keeps API keys in one JSON file (mode 0600) in the data dir,
// rewritten atomically (temp file, fsync, rename) on every change. It is
// meant for one server process; several replicas would need a shared store.
type KeyStore struct {
	path  string
	clock Clock

	mu   sync.RWMutex
	keys map[string]*storedKey
}

// OpenKeyStore loads the store at path, or starts an empty one if the file
// does not exist yet.
func OpenKeyStore(path string, clock Clock) (*KeyStore, error) {
	s := &KeyStore{path: path, clock: clock, keys: map[string]*storedKey{}}
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return s, nil
	}
	if err != nil {
		return nil, fmt.Errorf("open key store: %w", err)
	}
	var f keyFile
	if err := json.Unmarshal(b, &f); err != nil {
		return nil, fmt.Errorf("open key store %s: %w", path, err)
	}
	for i := range f.Keys {
		k := f.Keys[i]
		s.keys[k.ID] = &k
	}
	return s, nil
}

// ParseAPIKey splits a presented key into id and secret. It checks the shape
// only; Verify checks the secret.
func ParseAPIKey(key string) (*APIKeyCredential, error) {
	rest, ok := strings.CutPrefix(key, KeyPrefix)
	if !ok {
		return nil, authErr(ReasonMalformed, "api key does not start with "+KeyPrefix, "")
	}
	id, secret, ok := strings.Cut(rest, "_")
	if !ok || len(id) != 2*keyIDBytes || len(secret) != 2*keySecretBytes || !isLowerHex(id) || !isLowerHex(secret) {
		return nil, authErr(ReasonMalformed, "api key is malformed", "")
	}
	return &APIKeyCredential{KeyID: id, Secret: secret}, nil
}

func isLowerHex(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}

// Create makes a new key and returns it with its secret, which is not kept.
func (s *KeyStore) Create(ctx context.Context, spec KeySpec) (APIKey, Secret, error) {
	if spec.TenantID == "" {
		return APIKey{}, "", tartarus.Errorf(tartarus.ErrInvalid, "api key needs a tenant")
	}
	if len(spec.Roles) == 0 {
		return APIKey{}, "", tartarus.Errorf(tartarus.ErrInvalid, "api key needs at least one role")
	}
	now := s.clock.Now().UTC()
	if !spec.ExpiresAt.IsZero() && !spec.ExpiresAt.After(now) {
		return APIKey{}, "", tartarus.Errorf(tartarus.ErrInvalid, "api key expiry %s is in the past", spec.ExpiresAt.Format(time.RFC3339))
	}
	idb := make([]byte, keyIDBytes)
	secb := make([]byte, keySecretBytes)
	rand.Read(idb)
	rand.Read(secb)
	id, secret := hex.EncodeToString(idb), hex.EncodeToString(secb)
	sum := sha256.Sum256([]byte(secret))
	k := &storedKey{
		APIKey: APIKey{
			ID: id, Name: spec.Name, TenantID: spec.TenantID, Roles: slices.Clone(spec.Roles),
			CreatedAt: now, CreatedBy: spec.CreatedBy, ExpiresAt: spec.ExpiresAt.UTC(),
		},
		SecretSHA256: hex.EncodeToString(sum[:]),
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, dup := s.keys[id]; dup {
		return APIKey{}, "", tartarus.Errorf(tartarus.ErrAlreadyExists, "api key %s", id)
	}
	s.keys[id] = k
	if err := s.saveLocked(); err != nil {
		delete(s.keys, id)
		return APIKey{}, "", err
	}
	return cloneKey(k.APIKey), Secret(KeyPrefix + id + "_" + secret), nil
}

// Verify checks a presented key and returns the stored key it names.
func (s *KeyStore) Verify(ctx context.Context, c *APIKeyCredential) (APIKey, error) {
	s.mu.RLock()
	k, ok := s.keys[c.KeyID]
	var stored APIKey
	var want string
	if ok {
		stored, want = cloneKey(k.APIKey), k.SecretSHA256
	}
	s.mu.RUnlock()
	// Hash and compare even for an unknown id so timing tells nothing.
	got := sha256.Sum256([]byte(c.Secret))
	wantb, _ := hex.DecodeString(want)
	if len(wantb) != len(got) {
		wantb = make([]byte, len(got))
	}
	match := subtle.ConstantTimeCompare(got[:], wantb) == 1
	switch {
	case !ok:
		return APIKey{}, authErr(ReasonInvalidKey, "api key is not valid", "unknown key id "+c.KeyID)
	case !match:
		return APIKey{}, authErr(ReasonInvalidKey, "api key is not valid", "wrong secret for key "+c.KeyID)
	case stored.Revoked:
		return APIKey{}, authErr(ReasonRevoked, "api key has been revoked", "key "+c.KeyID)
	case stored.Expired(s.clock.Now()):
		return APIKey{}, authErr(ReasonExpired, "api key has expired", "key "+c.KeyID)
	}
	return stored, nil
}

// Get returns one key.
func (s *KeyStore) Get(ctx context.Context, id string) (APIKey, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	k, ok := s.keys[id]
	if !ok {
		return APIKey{}, tartarus.Errorf(tartarus.ErrNotFound, "api key %s", id)
	}
	return cloneKey(k.APIKey), nil
}

// List returns the keys of tenant ("" or "*": every tenant), oldest first.
func (s *KeyStore) List(ctx context.Context, tenant string) []APIKey {
	s.mu.RLock()
	defer s.mu.RUnlock()
	var out []APIKey
	for _, k := range s.keys {
		if tenant == "" || tenant == "*" || k.TenantID == tenant {
			out = append(out, cloneKey(k.APIKey))
		}
	}
	slices.SortFunc(out, func(a, b APIKey) int {
		if c := a.CreatedAt.Compare(b.CreatedAt); c != 0 {
			return c
		}
		return strings.Compare(a.ID, b.ID)
	})
	return out
}

// Revoke marks a key revoked; it stays listed. Revoking twice is not an error.
func (s *KeyStore) Revoke(ctx context.Context, id string) (APIKey, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	k, ok := s.keys[id]
	if !ok {
		return APIKey{}, tartarus.Errorf(tartarus.ErrNotFound, "api key %s", id)
	}
	if k.Revoked {
		return cloneKey(k.APIKey), nil
	}
	k.Revoked, k.RevokedAt = true, s.clock.Now().UTC()
	if err := s.saveLocked(); err != nil {
		k.Revoked, k.RevokedAt = false, time.Time{}
		return APIKey{}, err
	}
	return cloneKey(k.APIKey), nil
}

func (s *KeyStore) saveLocked() error {
	f := keyFile{Version: 1}
	for _, k := range s.keys {
		f.Keys = append(f.Keys, *k)
	}
	slices.SortFunc(f.Keys, func(a, b storedKey) int { return strings.Compare(a.ID, b.ID) })
	b, err := json.MarshalIndent(f, "", "  ")
	if err != nil {
		return fmt.Errorf("save key store: %w", err)
	}
	if err := writeFileAtomic(s.path, b, 0o600); err != nil {
		return fmt.Errorf("save key store: %w", err)
	}
	return nil
}

func cloneKey(k APIKey) APIKey {
	k.Roles = slices.Clone(k.Roles)
	return k
}

// writeFileAtomic replaces path with data so that a crash leaves either the
// old or the new file, never a torn one.
func writeFileAtomic(path string, data []byte, perm os.FileMode) error {
	dir := filepath.Dir(path)
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if err := tmp.Chmod(perm); err != nil {
		tmp.Close()
		return err
	}
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return err
	}
	return syncDir(dir)
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
