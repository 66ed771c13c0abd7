package cerberus

import (
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"

	"github.com/tartarus-sandbox/tartarus/pkg/clock"
)

// MTLSConfig maps verified client certificates to identities.
//
// A certificate names its holder in a URI SAN spiffe://<domain>/service/NAME
// or spiffe://<domain>/agent/NAME, or else in its Common Name written
// "service:NAME" or "agent:NAME". Its tenant is an Organizational Unit
// "tenant:T"; without one it is DefaultTenant.
//
// The server asks for a client certificate without making the TLS handshake
// verify it (tls.RequestClientCert); Cerberus verifies it here against
// ClientCAs, so an unknown certificate gets a 401 with a reason instead of an
// opaque handshake failure.
type MTLSConfig struct {
	ClientCAs     *x509.CertPool
	TrustDomain   string      // when set, SPIFFE URIs must use this domain
	DefaultTenant string      // default DefaultTenant
	Clock         clock.Clock // nil: clock.System
}

// Verify checks the certificate chain and maps it to an Identity.
func (m *MTLSConfig) Verify(c *MTLSCredential) (*Identity, error) {
	if c == nil || c.Certificate == nil {
		return nil, authErr(ReasonMissing, "no client certificate", "")
	}
	inter := x509.NewCertPool()
	for _, ic := range c.Chain {
		inter.AddCert(ic)
	}
	clk := m.Clock
	if clk == nil {
		clk = clock.System{}
	}
	now := clk.Now()
	_, err := c.Certificate.Verify(x509.VerifyOptions{
		Roots: m.ClientCAs, Intermediates: inter, CurrentTime: now,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	})
	if err != nil {
		var inv x509.CertificateInvalidError
		if errors.As(err, &inv) && inv.Reason == x509.Expired {
			return nil, authErr(ReasonExpired, "client certificate has expired or is not valid yet", err.Error())
		}
		return nil, authErr(ReasonUnknownCert, "client certificate is not issued by a CA this server trusts", err.Error())
	}
	typ, name := m.certName(c.Certificate)
	if name == "" {
		return nil, authErr(ReasonCertNoName, "client certificate names no service or agent (want URI spiffe://…/service/NAME or CN service:NAME)", "subject "+c.Certificate.Subject.String())
	}
	// API keys are the principals service:tk_<id>; a certificate must not
	// be able to pass for one.
	if strings.HasPrefix(name, KeyPrefix) {
		return nil, authErr(ReasonCertAmbiguous, fmt.Sprintf("client certificate names %s:%s; names beginning %q belong to API keys", typ, name, KeyPrefix), "subject "+c.Certificate.Subject.String())
	}
	tenant := m.DefaultTenant
	if tenant == "" {
		tenant = DefaultTenant
	}
	var tenants []string
	for _, ou := range c.Certificate.Subject.OrganizationalUnit {
		if t, ok := strings.CutPrefix(ou, "tenant:"); ok {
			tenants = append(tenants, t)
		}
	}
	switch {
	case len(tenants) > 1:
		return nil, authErr(ReasonCertAmbiguous, fmt.Sprintf("client certificate names %d tenants (OU=tenant:…); it must name at most one", len(tenants)), "subject "+c.Certificate.Subject.String())
	case len(tenants) == 1 && tenants[0] == "":
		return nil, authErr(ReasonCertAmbiguous, "client certificate's OU=tenant: names no tenant", "subject "+c.Certificate.Subject.String())
	case len(tenants) == 1:
		tenant = tenants[0]
	}
	fp := sha256.Sum256(c.Certificate.Raw)
	return &Identity{
		ID:       name,
		Type:     typ,
		TenantID: tenant,
		Attributes: map[string]string{
			"auth_method":      "mtls",
			"cert_serial":      c.Certificate.SerialNumber.String(),
			"cert_fingerprint": hex.EncodeToString(fp[:]),
		},
		AuthTime:  now,
		ExpiresAt: c.Certificate.NotAfter,
	}, nil
}

func (m *MTLSConfig) certName(cert *x509.Certificate) (IdentityType, string) {
	for _, u := range cert.URIs {
		if u.Scheme != "spiffe" || (m.TrustDomain != "" && u.Host != m.TrustDomain) {
			continue
		}
		if typ, name, ok := splitPrincipal(strings.TrimPrefix(u.Path, "/"), "/"); ok {
			return typ, name
		}
	}
	if typ, name, ok := splitPrincipal(cert.Subject.CommonName, ":"); ok {
		return typ, name
	}
	return "", ""
}

func splitPrincipal(s, sep string) (IdentityType, string, bool) {
	kind, name, ok := strings.Cut(s, sep)
	if !ok || name == "" || strings.ContainsAny(name, "/: ") {
		return "", "", false
	}
	switch IdentityType(kind) {
	case IdentityTypeService, IdentityTypeAgent:
		return IdentityType(kind), name, true
	}
	return "", "", false
}

// String describes the configuration for logs.
func (m *MTLSConfig) String() string {
	return fmt.Sprintf("mtls(trust domain %q, default tenant %q)", m.TrustDomain, m.DefaultTenant)
}
