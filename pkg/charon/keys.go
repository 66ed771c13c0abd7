package charon

import (
	"crypto/sha256"
	"encoding/hex"
	"net"
	"net/http"
	"net/netip"
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
	if c := credential(r); c != "" {
		sum := sha256.Sum256([]byte(c))
		return "cred:" + hex.EncodeToString(sum[:12])
	}
	return "ip:" + clientIP(r)
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
