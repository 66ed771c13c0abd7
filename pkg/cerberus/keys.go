package cerberus

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/tartarus-sandbox/tartarus/pkg/clock"
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

// storedKey is one key as a backend keeps it.
type storedKey struct {
	APIKey
	SecretSHA256 string `json:"secret_sha256"`
}

// keyBackend is where a KeyStore keeps its keys: a JSON file for one server
// (fileKeys, keys_file.go) or a Postgres table that several replicas share
// (pgKeys, keys_pg.go). Backends store and fetch; the KeyStore makes the
// secrets, checks them, and validates specs.
type keyBackend interface {
	// insert adds k; ErrAlreadyExists when its id is taken.
	insert(ctx context.Context, k storedKey) error
	// insertFirst adds k only if the backend holds no key at all (revoked
	// and expired ones count), atomically for every process sharing the
	// backend. It reports whether it added k.
	insertFirst(ctx context.Context, k storedKey) (bool, error)
	// get returns one key; ErrNotFound when there is none.
	get(ctx context.Context, id string) (storedKey, error)
	// list returns the keys of tenant ("" or "*": all), in any order.
	list(ctx context.Context, tenant string) ([]storedKey, error)
	// revoke marks the key revoked at at, unless it already is, and returns
	// it; ErrNotFound when there is none.
	revoke(ctx context.Context, id string, at time.Time) (storedKey, error)
	close() error
}

// KeyStore creates, checks, lists and revokes API keys. Where the keys live
// is its backend: OpenKeyStore keeps them in a JSON file for one server,
// OpenPostgresKeyStore in a table that several server replicas share.
//
// With a shared backend, Verify remembers a key it has read for CacheTTL on
// the store's clock, so the authentication path does not query the database
// on every request. A key created on another replica authenticates at once
// (an unknown id is never remembered); a key revoked on another replica is
// refused at most CacheTTL later (on this replica, at once).
type KeyStore struct {
	backend  keyBackend
	clock    clock.Clock
	cacheTTL time.Duration // <= 0: every Verify asks the backend

	mu    sync.RWMutex
	cache map[string]cachedKey
	// gen counts local revocations, so a lookup that read a key before a
	// revocation here does not put the stale copy back in the cache.
	gen       uint64
	nextSweep int
}

// cachedKey is a key as read from the backend at at.
type cachedKey struct {
	key storedKey
	at  time.Time
}

// minSweep is the cache size below which stale entries are left alone.
const minSweep = 1024

func newKeyStore(b keyBackend, clk clock.Clock, cacheTTL time.Duration) *KeyStore {
	if clk == nil {
		clk = clock.System{}
	}
	return &KeyStore{backend: b, clock: clk, cacheTTL: cacheTTL, cache: map[string]cachedKey{}, nextSweep: minSweep}
}

// OpenKeyStore loads the JSON key file at path (mode 0600, rewritten
// atomically on every change), or starts an empty one if the file does not
// exist yet. The file is for one server process: replicas sharing a
// database use OpenPostgresKeyStore.
func OpenKeyStore(path string, clk clock.Clock) (*KeyStore, error) {
	b, err := openFileKeys(path)
	if err != nil {
		return nil, err
	}
	// The file's keys are in memory already: nothing to cache.
	return newKeyStore(b, clk, 0), nil
}

// Close releases the backend (the Postgres connection pool).
func (s *KeyStore) Close() error { return s.backend.close() }

// CacheTTL is how long Verify may trust a key it read from a shared backend:
// the bound on how late a revocation made on another replica takes effect
// here. Zero when every Verify reads the backend.
func (s *KeyStore) CacheTTL() time.Duration { return max(s.cacheTTL, 0) }

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
	k, secret, err := s.newKey(spec)
	if err != nil {
		return APIKey{}, "", err
	}
	if err := s.backend.insert(ctx, k); err != nil {
		return APIKey{}, "", err
	}
	return cloneKey(k.APIKey), secret, nil
}

// CreateFirst makes a key like Create, but only when the store holds no key
// at all; every server sharing the store agrees, so of several replicas
// starting at once exactly one makes it. It reports whether it made one.
func (s *KeyStore) CreateFirst(ctx context.Context, spec KeySpec) (APIKey, Secret, bool, error) {
	k, secret, err := s.newKey(spec)
	if err != nil {
		return APIKey{}, "", false, err
	}
	made, err := s.backend.insertFirst(ctx, k)
	if err != nil {
		return APIKey{}, "", false, err
	}
	if !made {
		return APIKey{}, "", false, nil
	}
	return cloneKey(k.APIKey), secret, true, nil
}

// newKey checks spec and makes a key with a fresh id and secret. Times are
// cut to microseconds, what Postgres keeps, so every backend returns the
// key it was given.
func (s *KeyStore) newKey(spec KeySpec) (storedKey, Secret, error) {
	if spec.TenantID == "" {
		return storedKey{}, "", tartarus.Errorf(tartarus.ErrInvalid, "api key needs a tenant")
	}
	if len(spec.Roles) == 0 {
		return storedKey{}, "", tartarus.Errorf(tartarus.ErrInvalid, "api key needs at least one role")
	}
	now := s.now()
	if !spec.ExpiresAt.IsZero() && !spec.ExpiresAt.After(now) {
		return storedKey{}, "", tartarus.Errorf(tartarus.ErrInvalid, "api key expiry %s is in the past", spec.ExpiresAt.Format(time.RFC3339))
	}
	idb := make([]byte, keyIDBytes)
	secb := make([]byte, keySecretBytes)
	rand.Read(idb)
	rand.Read(secb)
	id, secret := hex.EncodeToString(idb), hex.EncodeToString(secb)
	sum := sha256.Sum256([]byte(secret))
	k := storedKey{
		APIKey: APIKey{
			ID: id, Name: spec.Name, TenantID: spec.TenantID, Roles: slices.Clone(spec.Roles),
			CreatedAt: now, CreatedBy: spec.CreatedBy, ExpiresAt: spec.ExpiresAt.UTC().Truncate(time.Microsecond),
		},
		SecretSHA256: hex.EncodeToString(sum[:]),
	}
	return k, Secret(KeyPrefix + id + "_" + secret), nil
}

func (s *KeyStore) now() time.Time { return s.clock.Now().UTC().Truncate(time.Microsecond) }

// Verify checks a presented key and returns the stored key it names. When
// the backend cannot be reached it fails with ReasonUnavailable (a 503), not
// as an invalid key.
func (s *KeyStore) Verify(ctx context.Context, c *APIKeyCredential) (APIKey, error) {
	k, err := s.lookup(ctx, c.KeyID)
	found := err == nil
	if err != nil && !errors.Is(err, tartarus.ErrNotFound) {
		return APIKey{}, authErr(ReasonUnavailable, "the api key store cannot be reached; try again", fmt.Sprintf("key %s: %v", c.KeyID, err))
	}
	// Hash and compare even for an unknown id so timing tells nothing.
	got := sha256.Sum256([]byte(c.Secret))
	wantb, _ := hex.DecodeString(k.SecretSHA256)
	if len(wantb) != len(got) {
		wantb = make([]byte, len(got))
	}
	match := subtle.ConstantTimeCompare(got[:], wantb) == 1
	switch {
	case !found:
		return APIKey{}, authErr(ReasonInvalidKey, "api key is not valid", "unknown key id "+c.KeyID)
	case !match:
		return APIKey{}, authErr(ReasonInvalidKey, "api key is not valid", "wrong secret for key "+c.KeyID)
	case k.Revoked:
		return APIKey{}, authErr(ReasonRevoked, "api key has been revoked", "key "+c.KeyID)
	case k.Expired(s.clock.Now()):
		return APIKey{}, authErr(ReasonExpired, "api key has expired", "key "+c.KeyID)
	}
	return cloneKey(k.APIKey), nil
}

// lookup returns the key id names, from the cache while it is fresh.
func (s *KeyStore) lookup(ctx context.Context, id string) (storedKey, error) {
	if s.cacheTTL <= 0 {
		return s.backend.get(ctx, id)
	}
	now := s.clock.Now()
	s.mu.RLock()
	c, ok := s.cache[id]
	gen := s.gen
	s.mu.RUnlock()
	if ok && fresh(c.at, now, s.cacheTTL) {
		return c.key, nil
	}
	k, err := s.backend.get(ctx, id)
	if err != nil {
		return storedKey{}, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.gen == gen {
		s.cache[id] = cachedKey{key: k, at: now}
		s.sweepLocked(now)
	}
	return k, nil
}

// fresh reports whether an entry read at at may still be used at now. A
// clock that went back makes it stale too.
func fresh(at, now time.Time, ttl time.Duration) bool {
	age := now.Sub(at)
	return age >= 0 && age < ttl
}

// sweepLocked drops stale entries once the cache has doubled since the last
// sweep, so keys nobody uses any more do not pile up.
func (s *KeyStore) sweepLocked(now time.Time) {
	if len(s.cache) < s.nextSweep {
		return
	}
	for id, c := range s.cache {
		if !fresh(c.at, now, s.cacheTTL) {
			delete(s.cache, id)
		}
	}
	s.nextSweep = max(minSweep, 2*len(s.cache))
}

// Get returns one key.
func (s *KeyStore) Get(ctx context.Context, id string) (APIKey, error) {
	k, err := s.backend.get(ctx, id)
	if err != nil {
		return APIKey{}, err
	}
	return cloneKey(k.APIKey), nil
}

// List returns the keys of tenant ("" or "*": every tenant), oldest first.
func (s *KeyStore) List(ctx context.Context, tenant string) ([]APIKey, error) {
	ks, err := s.backend.list(ctx, tenant)
	if err != nil {
		return nil, err
	}
	out := make([]APIKey, 0, len(ks))
	for _, k := range ks {
		out = append(out, cloneKey(k.APIKey))
	}
	slices.SortFunc(out, func(a, b APIKey) int {
		if c := a.CreatedAt.Compare(b.CreatedAt); c != 0 {
			return c
		}
		return strings.Compare(a.ID, b.ID)
	})
	return out, nil
}

// Revoke marks a key revoked; it stays listed. Revoking twice is not an
// error (the first time is kept). This store refuses the key at once; other
// stores sharing the backend within their CacheTTL.
func (s *KeyStore) Revoke(ctx context.Context, id string) (APIKey, error) {
	k, err := s.backend.revoke(ctx, id, s.now())
	if err != nil {
		return APIKey{}, err
	}
	s.mu.Lock()
	delete(s.cache, id)
	s.gen++
	s.mu.Unlock()
	return cloneKey(k.APIKey), nil
}

func cloneKey(k APIKey) APIKey {
	k.Roles = slices.Clone(k.Roles)
	return k
}
