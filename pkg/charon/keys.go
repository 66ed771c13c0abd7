package charon

import (
	"crypto/sha256"
	"encoding/hex"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"time"

	"github.com/tartarus-sandbox/tartarus/pkg/clock"
)

// TenantHeader carries the caller's tenant when a trusted upstream (an
// authenticating gateway in front of the ferry) sets it. The ferry reads it
// only with RateLimitConfig.TrustTenantHeader and never forwards a client's
// copy otherwise: it is stripped from requests before they cross.
const TenantHeader = "X-Tartarus-Tenant"

// limitKey names the bucket a request is charged to.
//
// The ferry does not verify credentials (Olympus does), so it never trusts
// what a credential claims about itself: an API key's id or a JWT's tenant
// claim can be copied into a forged credential to drain someone else's
// bucket. It keys by a SHA-256 fingerprint of the whole credential instead,
// so a forged credential only drains its own bucket (and is then refused by
// Olympus). One tenant with several keys therefore gets one bucket per key.
// A request with no credential is keyed by its client IP.
//
//   - "ip": the peer's address (an IPv6 peer by its /64).
//   - "identity": the credential fingerprint, else the IP.
//   - "tenant": X-Tartarus-Tenant when trusted, else as identity.
//
// A fingerprint alone would give every random bogus token a fresh bucket;
// ipKey (see BoatFerry.take) closes that.
func limitKey(r *http.Request, mode string, trustTenant bool) string {
	switch mode {
	case "ip":
		return "ip:" + clientIP(r)
	case "tenant":
		if trustTenant {
			if t := r.Header.Get(TenantHeader); t != "" && len(t) <= 128 {
				return "tenant:" + t
			}
		}
	}
	if fp := credFingerprint(r); fp != "" {
		return "cred:" + fp
	}
	return "ip:" + clientIP(r)
}

// ipKey is the bucket an unauthenticated request is charged to besides
// limitKey's: its client's address, unless its credential is one a shore
// has accepted lately (proven). Random bogus credentials from one address
// therefore share that address's bucket, while a real key's traffic,
// once proven, is charged to its own bucket only. "" when limitKey is the
// address already or the credential is proven.
func ipKey(r *http.Request, key string, proven *provenCreds) string {
	if !strings.HasPrefix(key, "cred:") && !strings.HasPrefix(key, "tenant:") {
		return ""
	}
	if fp := credFingerprint(r); fp != "" && proven.has(fp) {
		return ""
	}
	return "ip:" + clientIP(r)
}

func credFingerprint(r *http.Request) string {
	c := credential(r)
	if c == "" {
		return ""
	}
	sum := sha256.Sum256([]byte(c))
	return hex.EncodeToString(sum[:12])
}

// provenCreds remembers, by fingerprint, the credentials a shore accepted
// (answered other than 401) in the last TTL, up to a bound; a 401 forgets
// one (a revoked key).
type provenCreds struct {
	clock clock.Clock
	ttl   time.Duration
	max   int

	mu sync.Mutex
	m  map[string]time.Time // fingerprint → last accepted
}

func newProvenCreds(clk clock.Clock) *provenCreds {
	return &provenCreds{clock: clk, ttl: 10 * time.Minute, max: 100_000, m: map[string]time.Time{}}
}

func (p *provenCreds) has(fp string) bool {
	if p == nil {
		return false
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	t, ok := p.m[fp]
	return ok && p.clock.Now().Sub(t) < p.ttl
}

// learn records a shore's answer status to a request that carried r's
// credential.
func (p *provenCreds) learn(r *http.Request, status int) {
	fp := credFingerprint(r)
	if p == nil || fp == "" {
		return
	}
	now := p.clock.Now()
	p.mu.Lock()
	defer p.mu.Unlock()
	if status == http.StatusUnauthorized {
		delete(p.m, fp)
		return
	}
	if status >= 500 {
		return // the shore said nothing about the credential
	}
	if _, ok := p.m[fp]; !ok && len(p.m) >= p.max {
		for k, t := range p.m {
			if now.Sub(t) >= p.ttl {
				delete(p.m, k)
			}
		}
		if len(p.m) >= p.max {
			return // full of live keys: the newcomer stays on its address's bucket
		}
	}
	p.m[fp] = now
}

func credential(r *http.Request) string {
	if v := r.Header.Get("Authorization"); v != "" {
		return v
	}
	return r.Header.Get("X-API-Key")
}

// clientIP is the peer address of the connection. Forwarded headers are not
// trusted: a client could set them to pick its bucket.
func clientIP(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		host = r.RemoteAddr
	}
	ip, err := netip.ParseAddr(host)
	if err != nil {
		return host
	}
	if ip.Is6() && !ip.Is4In6() {
		p, _ := ip.Prefix(64)
		return p.String()
	}
	return ip.Unmap().String()
}
