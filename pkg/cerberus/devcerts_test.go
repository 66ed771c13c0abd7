package cerberus

import (
	"crypto/x509"
	"testing"
	"time"

	"github.com/tartarus-sandbox/tartarus/pkg/clock"
)

// TestDevCertUsages checks what each development certificate can be used
// for: the server's also identifies the servers as a service when they
// call agents, and an agent's serves its node API as well as identifying
// the agent.
func TestDevCertUsages(t *testing.T) {
	now := time.Now()
	ca, err := NewDevCA("test CA", now, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	srv, err := ca.IssueServer([]string{"127.0.0.1", "localhost"}, now, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	agent, err := ca.IssueNode("agent:node-1", "", "", []string{"10.0.0.7", "node-1.internal"}, now, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	client, err := ca.IssueClient("service:deployer", "acme", "", now, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(ca.Cert)
	m := &MTLSConfig{ClientCAs: roots, Clock: clock.System{}}
	tests := []struct {
		name       string
		cert       *CertKey
		host       string // "" : must not serve TLS
		wantID     string
		wantType   IdentityType
		wantTenant string
	}{
		{"server", srv, "localhost", "tartarus-server", IdentityTypeService, DefaultTenant},
		{"agent", agent, "node-1.internal", "node-1", IdentityTypeAgent, DefaultTenant},
		{"client", client, "", "deployer", IdentityTypeService, "acme"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			id, err := m.Verify(&MTLSCredential{Certificate: tt.cert.Cert})
			if err != nil {
				t.Fatalf("as a client: %v", err)
			}
			if id.ID != tt.wantID || id.Type != tt.wantType || id.TenantID != tt.wantTenant {
				t.Errorf("as a client: %s %s@%s, want %s %s@%s", id.Type, id.ID, id.TenantID, tt.wantType, tt.wantID, tt.wantTenant)
			}
			_, err = tt.cert.Cert.Verify(x509.VerifyOptions{Roots: roots, DNSName: tt.host,
				KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}})
			if tt.host != "" && err != nil {
				t.Errorf("as a server for %s: %v", tt.host, err)
			}
			if tt.host == "" && err == nil {
				t.Errorf("a client-only certificate is usable as a server certificate")
			}
		})
	}
}
