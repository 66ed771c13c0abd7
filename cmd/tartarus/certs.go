package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/tartarus-sandbox/tartarus/pkg/cerberus"
)

// newCertsCmd is `tartarus certs dev|client`: a development CA with server
// and client certificates for TLS and mTLS. Production brings its own CA.
func newCertsCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "certs", Short: "Make development TLS certificates (CA, server, mTLS clients, node agents)",
		Long: `Make development TLS certificates.

The server certificate (server.pem) also works as a client certificate
naming "service:tartarus-server": server replicas present it when they call
node agents. An agent certificate (--client agent:NODE) is both the agent's
client certificate towards the servers and the server certificate of its
node API, for the names and addresses given with --host.`}
	var dir string
	var hosts, clients []string
	var validity time.Duration
	dev := &cobra.Command{
		Use:   "dev --dir DIR [--host H]... [--client service:NAME[@TENANT]]...",
		Short: "Make a new CA, a server certificate and client certificates in DIR",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := os.MkdirAll(dir, 0o700); err != nil {
				return err
			}
			if _, err := os.Stat(filepath.Join(dir, "ca.pem")); err == nil {
				return fmt.Errorf("%s already holds a CA (ca.pem); use `tartarus certs client` to add clients", dir)
			}
			now := time.Now()
			ca, err := cerberus.NewDevCA("Tartarus development CA", now, validity)
			if err != nil {
				return err
			}
			srv, err := ca.IssueServer(hosts, now, validity)
			if err != nil {
				return err
			}
			if err := writePair(dir, "ca", ca); err != nil {
				return err
			}
			if err := writePair(dir, "server", srv); err != nil {
				return err
			}
			for _, c := range clients {
				if err := issueClient(cmd, dir, ca, c, hosts, now, validity); err != nil {
					return err
				}
			}
			fmt.Fprintf(cmd.OutOrStdout(), "Serve with:\n  tartarus server --tls-cert %[1]s/server.pem --tls-key %[1]s/server-key.pem --tls-client-ca %[1]s/ca.pem\nClients: TARTARUS_URL=https://%[2]s:7700 TARTARUS_CA_CERT=%[1]s/ca.pem\n", dir, hosts[0])
			return nil
		},
	}
	dev.Flags().StringVar(&dir, "dir", "certs", "directory to write into")
	dev.Flags().StringSliceVar(&hosts, "host", []string{"127.0.0.1", "localhost"}, "names and addresses of the server (and of agents made here)")
	dev.Flags().StringSliceVar(&clients, "client", nil, "client certificate to make: service:NAME or agent:NAME, optionally @TENANT")
	dev.Flags().DurationVar(&validity, "valid", 365*24*time.Hour, "how long the certificates are valid")

	var caDir string
	var agentHosts []string
	client := &cobra.Command{
		Use:   "client service:NAME[@TENANT]|agent:NODE... --dir DIR [--host H]...",
		Short: "Make more client certificates from the CA in DIR",
		Args:  cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			certPEM, err := os.ReadFile(filepath.Join(caDir, "ca.pem"))
			if err != nil {
				return err
			}
			keyPEM, err := os.ReadFile(filepath.Join(caDir, "ca-key.pem"))
			if err != nil {
				return err
			}
			ca, err := cerberus.LoadCertKey(certPEM, keyPEM)
			if err != nil {
				return err
			}
			for _, c := range args {
				if err := issueClient(cmd, caDir, ca, c, agentHosts, time.Now(), validity); err != nil {
					return err
				}
			}
			return nil
		},
	}
	client.Flags().StringVar(&caDir, "dir", "certs", "directory holding ca.pem and ca-key.pem")
	client.Flags().DurationVar(&validity, "valid", 365*24*time.Hour, "how long the certificates are valid")
	client.Flags().StringSliceVar(&agentHosts, "host", []string{"127.0.0.1", "localhost"}, "names and addresses an agent's node API is reached at (agent:NODE only)")
	cmd.AddCommand(dev, client)
	return cmd
}

// issueClient writes a client certificate; an agent's also serves its node
// API at hosts.
func issueClient(cmd *cobra.Command, dir string, ca *cerberus.CertKey, spec string, hosts []string, now time.Time, validity time.Duration) error {
	principal, tenant, _ := strings.Cut(spec, "@")
	if !strings.HasPrefix(principal, "agent:") {
		hosts = nil
	}
	c, err := ca.IssueNode(principal, tenant, "", hosts, now, validity)
	if err != nil {
		return err
	}
	base := "client-" + strings.ReplaceAll(principal, ":", "-")
	if err := writePair(dir, base, c); err != nil {
		return err
	}
	fmt.Fprintf(cmd.ErrOrStderr(), "client %s: %s/%s.pem and %s-key.pem\n", spec, dir, base, base)
	return nil
}

func writePair(dir, base string, ck *cerberus.CertKey) error {
	if err := os.WriteFile(filepath.Join(dir, base+".pem"), ck.CertPEM, 0o644); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, base+"-key.pem"), ck.KeyPEM, 0o600)
}
