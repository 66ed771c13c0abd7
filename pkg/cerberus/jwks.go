package cerberus

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"sync"
	"time"

	jose "github.com/go-jose/go-jose/v4"

	"github.com/tartarus-sandbox/tartarus/pkg/clock"
)

// jwksCache is the issuer's signing keys (its JWKS), fetched on first use,
// again when older than maxAge (so withdrawn keys stop being trusted), and
// when a token names a key id not in the cache (rotation) — but then at most
// once per minRefetch, so tokens with made-up key ids cannot make the server
// hammer the issuer.
type jwksCache struct {
	url        string
	client     *http.Client
	clock      clock.Clock
	algs       []jose.SignatureAlgorithm
	maxAge     time.Duration
	minRefetch time.Duration

	fetchMu sync.Mutex // one fetch at a time

	mu        sync.Mutex
	keys      []jose.JSONWebKey
	fetchedAt time.Time
	fetches   int
}

// errKeysUnavailable is wrapped when the JWKS cannot be fetched.
var errKeysUnavailable = errors.New("fetching keys")

// VerifySignature implements go-oidc's KeySet.
func (c *jwksCache) VerifySignature(ctx context.Context, raw string) ([]byte, error) {
	jws, err := jose.ParseSignedCompact(raw, c.algs)
	if err != nil {
		return nil, fmt.Errorf("malformed jwt: %w", err)
	}
	if len(jws.Signatures) != 1 {
		return nil, errors.New("malformed jwt: want exactly one signature")
	}
	kid := jws.Signatures[0].Header.KeyID
	keys, err := c.keysFor(ctx, kid)
	if err != nil {
		return nil, err
	}
	for i := range keys {
		if kid != "" && keys[i].KeyID != kid {
			continue
		}
		if payload, err := jws.Verify(&keys[i]); err == nil {
			return payload, nil
		}
	}
	if !slices.ContainsFunc(keys, func(k jose.JSONWebKey) bool { return k.KeyID == kid }) {
		return nil, fmt.Errorf("signature: no key with id %q in the issuer's key set", kid)
	}
	return nil, errors.New("signature does not verify")
}

func (c *jwksCache) keysFor(ctx context.Context, kid string) ([]jose.JSONWebKey, error) {
	c.mu.Lock()
	now := c.clock.Now()
	stale := c.fetchedAt.IsZero() || now.Sub(c.fetchedAt) >= c.maxAge
	known := kid == "" || slices.ContainsFunc(c.keys, func(k jose.JSONWebKey) bool { return k.KeyID == kid })
	mayRefetch := now.Sub(c.fetchedAt) >= c.minRefetch
	keys := c.keys
	c.mu.Unlock()
	if !stale && (known || !mayRefetch) {
		return keys, nil
	}
	return c.fetch(ctx, kid)
}

func (c *jwksCache) fetch(ctx context.Context, kid string) ([]jose.JSONWebKey, error) {
	c.fetchMu.Lock()
	defer c.fetchMu.Unlock()
	// Another request may have fetched while this one waited.
	c.mu.Lock()
	now := c.clock.Now()
	if !c.fetchedAt.IsZero() && now.Sub(c.fetchedAt) < c.minRefetch && now.Sub(c.fetchedAt) < c.maxAge {
		keys := c.keys
		c.mu.Unlock()
		return keys, nil
	}
	old, oldAt := c.keys, c.fetchedAt
	c.mu.Unlock()

	keys, err := c.get(ctx)
	if err != nil {
		if old != nil && now.Sub(oldAt) < c.maxAge {
			return old, nil // keep what we have until it is too old
		}
		return nil, err
	}
	c.mu.Lock()
	c.keys, c.fetchedAt = keys, now
	c.fetches++
	c.mu.Unlock()
	return keys, nil
}

func (c *jwksCache) get(ctx context.Context) ([]jose.JSONWebKey, error) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, "GET", c.url, nil)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", errKeysUnavailable, err)
	}
	req.Header.Set("Cache-Control", "no-cache")
	resp, err := c.client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", errKeysUnavailable, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return nil, fmt.Errorf("%w: %v", errKeysUnavailable, err)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("%w: %s answered %s", errKeysUnavailable, c.url, resp.Status)
	}
	var set jose.JSONWebKeySet
	if err := json.Unmarshal(body, &set); err != nil {
		return nil, fmt.Errorf("%w: %s: %v", errKeysUnavailable, c.url, err)
	}
	var keys []jose.JSONWebKey
	for _, k := range set.Keys {
		if k.Use == "" || k.Use == "sig" {
			if k.IsPublic() {
				keys = append(keys, k)
			}
		}
	}
	return keys, nil
}

// Fetches is how many times the JWKS was fetched.
func (c *jwksCache) Fetches() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.fetches
}
