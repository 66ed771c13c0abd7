package cerberus

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"net/url"
	"strings"
	"time"
)

// CertKey is a certificate with its private key, both also in PEM.
type CertKey struct {
	Cert    *x509.Certificate
	Key     crypto.Signer
	CertPEM []byte
	KeyPEM  []byte
}

// NewDevCA makes a self-signed ECDSA P-256 CA for development and tests
// (`tartarus certs`). Production deployments bring their own CA.
func NewDevCA(name string, now time.Time, validity time.Duration) (*CertKey, error) {
	tmpl := &x509.Certificate{
		Subject:               pkix.Name{CommonName: name, Organization: []string{"Tartarus development"}},
		NotBefore:             now.Add(-time.Minute),
		NotAfter:              now.Add(validity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	return issue(tmpl, nil)
}

// ServerPrincipal is the service principal the server certificate names
// (URI SAN spiffe://tartarus/service/tartarus-server): API server replicas
// present that certificate as a client when they call node agents.
const ServerPrincipal = "service:tartarus-server"

// IssueServer makes a server certificate for hosts (DNS names or IPs). It
// is also a client certificate naming ServerPrincipal, so that server
// replicas can present it to the node agents they call.
func (ca *CertKey) IssueServer(hosts []string, now time.Time, validity time.Duration) (*CertKey, error) {
	if len(hosts) == 0 {
		return nil, fmt.Errorf("server certificate: no host names")
	}
	tmpl := &x509.Certificate{
		Subject:     pkix.Name{CommonName: hosts[0]},
		NotBefore:   now.Add(-time.Minute),
		NotAfter:    now.Add(validity),
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		URIs:        []*url.URL{spiffe("tartarus", IdentityTypeService, "tartarus-server")},
	}
	addHosts(tmpl, hosts)
	return issue(tmpl, ca)
}

func addHosts(tmpl *x509.Certificate, hosts []string) {
	for _, h := range hosts {
		if ip := net.ParseIP(h); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, h)
		}
	}
}

func spiffe(trustDomain string, typ IdentityType, name string) *url.URL {
	return &url.URL{Scheme: "spiffe", Host: trustDomain, Path: "/" + string(typ) + "/" + name}
}

// IssueClient makes a client certificate for principal ("service:NAME" or
// "agent:NAME") of tenant ("" for the server's default), in the form
// MTLSConfig reads: CN = principal, URI SAN spiffe://trustDomain/KIND/NAME,
// OU = tenant:T.
func (ca *CertKey) IssueClient(principal, tenant, trustDomain string, now time.Time, validity time.Duration) (*CertKey, error) {
	return ca.IssueNode(principal, tenant, trustDomain, nil, now, validity)
}

// IssueNode is IssueClient for a holder that also serves TLS: with hosts
// (DNS names or IPs) the certificate is a server certificate for them as
// well. A node agent ("agent:NAME") serves its node API with the same
// certificate it presents to the servers, so an agent certificate is
// always usable for both.
func (ca *CertKey) IssueNode(principal, tenant, trustDomain string, hosts []string, now time.Time, validity time.Duration) (*CertKey, error) {
	typ, name, ok := splitPrincipal(principal, ":")
	if !ok {
		return nil, fmt.Errorf("client certificate: %q is not service:NAME or agent:NAME", principal)
	}
	if strings.HasPrefix(name, KeyPrefix) {
		return nil, fmt.Errorf("client certificate: names beginning %q belong to API keys", KeyPrefix)
	}
	if trustDomain == "" {
		trustDomain = "tartarus"
	}
	tmpl := &x509.Certificate{
		Subject:     pkix.Name{CommonName: principal},
		NotBefore:   now.Add(-time.Minute),
		NotAfter:    now.Add(validity),
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		URIs:        []*url.URL{spiffe(trustDomain, typ, name)},
	}
	if typ == IdentityTypeAgent || len(hosts) > 0 {
		tmpl.ExtKeyUsage = append(tmpl.ExtKeyUsage, x509.ExtKeyUsageServerAuth)
	}
	addHosts(tmpl, hosts)
	if tenant != "" {
		tmpl.Subject.OrganizationalUnit = []string{"tenant:" + tenant}
	}
	return issue(tmpl, ca)
}

func issue(tmpl *x509.Certificate, parent *CertKey) (*CertKey, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generate key: %w", err)
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, fmt.Errorf("serial: %w", err)
	}
	tmpl.SerialNumber = serial
	signerCert, signerKey := tmpl, crypto.Signer(key)
	if parent != nil {
		signerCert, signerKey = parent.Cert, parent.Key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, signerCert, key.Public(), signerKey)
	if err != nil {
		return nil, fmt.Errorf("sign %s: %w", strings.TrimSpace(tmpl.Subject.CommonName), err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	kder, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, err
	}
	return &CertKey{
		Cert: cert, Key: key,
		CertPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		KeyPEM:  pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder}),
	}, nil
}

// LoadCertKey reads a certificate and its PKCS#8 private key from PEM, for
// issuing more certificates from a CA made earlier.
func LoadCertKey(certPEM, keyPEM []byte) (*CertKey, error) {
	cb, _ := pem.Decode(certPEM)
	kb, _ := pem.Decode(keyPEM)
	if cb == nil || kb == nil {
		return nil, fmt.Errorf("load certificate: not PEM")
	}
	cert, err := x509.ParseCertificate(cb.Bytes)
	if err != nil {
		return nil, fmt.Errorf("load certificate: %w", err)
	}
	k, err := x509.ParsePKCS8PrivateKey(kb.Bytes)
	if err != nil {
		return nil, fmt.Errorf("load key: %w", err)
	}
	signer, ok := k.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("load key: not a signing key")
	}
	return &CertKey{Cert: cert, Key: signer, CertPEM: certPEM, KeyPEM: keyPEM}, nil
}
