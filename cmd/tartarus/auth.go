package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spf13/cobra"

	"github.com/tartarus-sandbox/tartarus/pkg/cerberus"
	"github.com/tartarus-sandbox/tartarus/pkg/clock"
)

// authOptions are the server's authentication flags. Owned by the Cerberus
// work; server.go only calls addAuthFlags and setup.
type authOptions struct {
	mode       string
	policyFile string
	policyPoll time.Duration

	oidcIssuer, oidcAudience                     string
	oidcUserClaim, oidcTenantClaim               string
	oidcEmailVerifiedClaim                       string
	oidcRolesClaim, oidcGroupsClaim, oidcDefault string
	oidcAlgs                                     []string

	tlsCert, tlsKey, tlsClientCA    string
	mtlsDefaultTenant, mtlsTrustDom string

	auditMaxMiB int64
	auditKeep   int

	// database is the server's --database (set by server.go before setup):
	// with a postgres:// URL, API keys live in its api_keys table, shared
	// by every replica; otherwise in <data dir>/apikeys.json.
	database string
	// clock is the server's clock (set by server.go before setup); nil
	// means clock.System.
	clock clock.Clock
}

// authSetup is what the server needs from Cerberus.
type authSetup struct {
	Guard cerberus.Guard
	// Routes are extra API routes ("GET /v1/apikeys" → handler) that the
	// server mounts behind Guard.
	Routes map[string]http.Handler
	// TLS, when not nil, makes the server listen with TLS (and, with client
	// CAs set, verify client certificates).
	TLS   *tls.Config
	Close func() error

	// Audit writes an entry to the audit log (nil when auth is off).
	Audit func(ctx context.Context, e *cerberus.AuditEntry) error

	// Metrics are Cerberus's counters, for the server's /metrics registry
	// (nil when auth is off).
	Metrics prometheus.Collector
	// AdminKeyFile is the data dir's admin.key (empty when auth is off).
	AdminKeyFile string
}

func addAuthFlags(cmd *cobra.Command) *authOptions {
	o := &authOptions{}
	f := cmd.Flags()
	f.StringVar(&o.mode, "auth", "on", `"on", or "off" to let every caller in as an admin (logs a warning at every start)`)
	f.StringVar(&o.policyFile, "auth-policy", "", "RBAC policy YAML; reloaded when it changes (default: the built-in policy)")
	f.DurationVar(&o.policyPoll, "auth-policy-poll", 2*time.Second, "how often the policy file is checked for changes")
	f.StringVar(&o.oidcIssuer, "oidc-issuer", "", "accept bearer JWTs from this OIDC issuer URL")
	f.StringVar(&o.oidcAudience, "oidc-audience", "", "audience (aud) the OIDC tokens must carry")
	f.StringVar(&o.oidcUserClaim, "oidc-user-claim", "email", "claim naming the user (falls back to sub)")
	f.StringVar(&o.oidcEmailVerifiedClaim, "oidc-email-verified-claim", "email_verified", `claim that must be true when the user id is an email ("-": the issuer only issues verified addresses)`)
	f.StringVar(&o.oidcTenantClaim, "oidc-tenant-claim", "tenant", "claim naming the tenant (dotted paths walk into objects)")
	f.StringVar(&o.oidcRolesClaim, "oidc-roles-claim", "roles", "claim listing policy roles")
	f.StringVar(&o.oidcGroupsClaim, "oidc-groups-claim", "groups", "claim listing groups (bound to roles by the policy)")
	f.StringVar(&o.oidcDefault, "oidc-default-tenant", "", "tenant for tokens without the tenant claim (default: refuse them)")
	f.StringSliceVar(&o.oidcAlgs, "oidc-algs", []string{"RS256", "ES256"}, "accepted token signing algorithms (never none or HMAC)")
	f.StringVar(&o.tlsCert, "tls-cert", "", "serve HTTPS with this certificate (PEM)")
	f.StringVar(&o.tlsKey, "tls-key", "", "private key of --tls-cert (PEM)")
	f.StringVar(&o.tlsClientCA, "tls-client-ca", "", "accept client certificates issued by this CA (PEM) as identities (mTLS)")
	f.StringVar(&o.mtlsDefaultTenant, "mtls-default-tenant", cerberus.DefaultTenant, "tenant of client certificates without an OU tenant:T")
	f.StringVar(&o.mtlsTrustDom, "mtls-trust-domain", "", "when set, SPIFFE URIs in client certificates must use this trust domain")
	f.Int64Var(&o.auditMaxMiB, "audit-max-size", 64, "rotate the audit log past this many MiB")
	f.IntVar(&o.auditKeep, "audit-keep", 10, "rotated audit files to keep")
	return o
}

// validate returns every flag problem at once.
func (o *authOptions) validate() error {
	var errs []error
	if o.mode != "on" && o.mode != "off" {
		errs = append(errs, fmt.Errorf("--auth must be on or off, not %q", o.mode))
	}
	if (o.oidcIssuer == "") != (o.oidcAudience == "") {
		errs = append(errs, errors.New("--oidc-issuer and --oidc-audience go together"))
	}
	if (o.tlsCert == "") != (o.tlsKey == "") {
		errs = append(errs, errors.New("--tls-cert and --tls-key go together"))
	}
	if o.tlsClientCA != "" && o.tlsCert == "" {
		errs = append(errs, errors.New("--tls-client-ca needs --tls-cert and --tls-key (client certificates need TLS)"))
	}
	if o.policyPoll <= 0 {
		errs = append(errs, errors.New("--auth-policy-poll must be positive"))
	}
	return errors.Join(errs...)
}

func (o *authOptions) setup(ctx context.Context, dataDir string, log *slog.Logger) (*authSetup, error) {
	if err := o.validate(); err != nil {
		return nil, err
	}
	log = log.With("component", "cerberus")
	tlsConf, clientCAs, err := o.tlsConfig()
	if err != nil {
		return nil, err
	}
	if o.mode == "off" {
		log.Warn("AUTHENTICATION IS OFF (--auth=off): every caller is an admin of tenant " + cerberus.DefaultTenant + "; nothing is audited. Use this only on a machine nobody else can reach.")
		return &authSetup{Guard: cerberus.Open(), TLS: tlsConf, Close: func() error { return nil }}, nil
	}
	if err := os.MkdirAll(dataDir, 0o700); err != nil {
		return nil, fmt.Errorf("auth: %w", err)
	}
	clk := o.clock
	if clk == nil {
		clk = clock.System{}
	}

	keys, err := o.openKeys(ctx, dataDir, clk, log)
	if err != nil {
		return nil, fmt.Errorf("auth: %w", err)
	}
	closeKeys := true
	defer func() {
		if closeKeys {
			keys.Close()
		}
	}()
	var policy *cerberus.PolicySource
	if o.policyFile != "" {
		policy, err = cerberus.LoadPolicyFile(o.policyFile, clk, log)
		if err != nil {
			return nil, fmt.Errorf("auth: %w", err)
		}
		log.Info("auth policy loaded", "path", o.policyFile, "roles", len(policy.Policy().Roles()), "rules", policy.Policy().Rules())
	} else {
		policy = cerberus.StaticPolicy(cerberus.DefaultPolicy())
		log.Info("auth policy: built-in (platform-admin, tenant-admin, sandbox-user, viewer); set --auth-policy FILE to use your own")
	}
	if !policy.Policy().HasRole(cerberus.AdminRole) {
		log.Warn("the policy defines no " + cerberus.AdminRole + " role: the admin key made on first start can do nothing")
	}
	audit, err := cerberus.OpenAuditLog(cerberus.AuditLogConfig{
		Dir: filepath.Join(dataDir, "audit"), MaxSize: o.auditMaxMiB << 20, Keep: o.auditKeep, Clock: clk,
	})
	if err != nil {
		return nil, fmt.Errorf("auth: %w", err)
	}
	metrics, _ := cerberus.NewMetrics(nil)
	cfg := cerberus.Config{Keys: keys, Policy: policy, Audit: audit, Metrics: metrics, Clock: clk, Log: log}
	if o.oidcIssuer != "" {
		cfg.OIDC, err = cerberus.NewOIDCVerifier(cerberus.OIDCConfig{
			Issuer: o.oidcIssuer, Audience: o.oidcAudience, Algorithms: o.oidcAlgs,
			UserClaim: o.oidcUserClaim, EmailVerifiedClaim: o.oidcEmailVerifiedClaim, TenantClaim: o.oidcTenantClaim, RolesClaim: o.oidcRolesClaim,
			GroupsClaim: o.oidcGroupsClaim, DefaultTenant: o.oidcDefault,
		}, clk, log)
		if err != nil {
			audit.Close()
			return nil, fmt.Errorf("auth: %w", err)
		}
		log.Info("oidc bearer tokens accepted", "issuer", o.oidcIssuer, "audience", o.oidcAudience)
	}
	if clientCAs != nil {
		cfg.MTLS = &cerberus.MTLSConfig{ClientCAs: clientCAs, DefaultTenant: o.mtlsDefaultTenant, TrustDomain: o.mtlsTrustDom, Clock: clk}
		log.Info("client certificates accepted", "ca", o.tlsClientCA)
	}
	cb, err := cerberus.New(cfg)
	if err != nil {
		audit.Close()
		return nil, err
	}

	adminFile := filepath.Join(dataDir, "admin.key")
	made, err := cerberus.EnsureAdminKey(ctx, keys, adminFile)
	if err != nil {
		audit.Close()
		return nil, err
	}
	_, statErr := os.Stat(adminFile)
	switch {
	case made:
		log.Info("first start: made an admin API key", "file", adminFile)
	case statErr != nil && cerberus.IsPostgresDSN(o.database):
		log.Info("an admin key already exists in the database (made by another replica or an earlier start); this machine has no " + adminFile +
			": use the admin.key of the replica that made it, or make a key with `tartarus apikey create --database …`")
	}
	if statErr == nil {
		log.Info("the CLI on this machine uses " + adminFile + " when TARTARUS_API_KEY is not set; elsewhere: export TARTARUS_API_KEY=$(cat " + adminFile + ")")
	}

	closeKeys = false
	pollCtx, stop := context.WithCancel(context.WithoutCancel(ctx))
	done := make(chan struct{})
	go func() { policy.Run(pollCtx, o.policyPoll); close(done) }()
	return &authSetup{
		Guard: cb.Guard(), Routes: cb.Routes(), TLS: tlsConf, Metrics: metrics, AdminKeyFile: adminFile, Audit: cb.RecordAccess,
		Close: func() error { stop(); <-done; return errors.Join(audit.Close(), keys.Close()) },
	}, nil
}

// openKeys opens the API key store: the Postgres table when --database is a
// postgres:// URL (replicas share it), else the data dir's JSON file.
func (o *authOptions) openKeys(ctx context.Context, dataDir string, clk clock.Clock, log *slog.Logger) (*cerberus.KeyStore, error) {
	if !cerberus.IsPostgresDSN(o.database) {
		return cerberus.OpenKeyStore(filepath.Join(dataDir, "apikeys.json"), clk)
	}
	keys, err := cerberus.OpenPostgresKeyStore(ctx, cerberus.PostgresKeysConfig{DSN: o.database, Clock: clk})
	if err != nil {
		return nil, err
	}
	log.Info("api keys are kept in Postgres (table api_keys), shared by every replica", "revocation_delay_max", keys.CacheTTL())
	return keys, nil
}

// tlsConfig loads the server certificate and the client CA. Client
// certificates are requested but verified by Cerberus, not by the handshake,
// so that an unknown certificate gets a 401 that says why.
func (o *authOptions) tlsConfig() (*tls.Config, *x509.CertPool, error) {
	if o.tlsCert == "" {
		return nil, nil, nil
	}
	pair, err := tls.LoadX509KeyPair(o.tlsCert, o.tlsKey)
	if err != nil {
		return nil, nil, fmt.Errorf("auth: load --tls-cert/--tls-key: %w", err)
	}
	conf := &tls.Config{Certificates: []tls.Certificate{pair}, MinVersion: tls.VersionTLS12}
	if o.tlsClientCA == "" {
		return conf, nil, nil
	}
	pem, err := os.ReadFile(o.tlsClientCA)
	if err != nil {
		return nil, nil, fmt.Errorf("auth: --tls-client-ca: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, nil, fmt.Errorf("auth: --tls-client-ca %s holds no PEM certificate", o.tlsClientCA)
	}
	conf.ClientAuth = tls.RequestClientCert
	conf.ClientCAs = pool // advertised to clients as the acceptable issuers
	return conf, pool, nil
}

// authDefaultDataDir is the server's default --data-dir (see API.md); the
// apikey and audit verbs look for admin.key there.
func authDefaultDataDir() string {
	if os.Geteuid() == 0 {
		return "/var/lib/tartarus"
	}
	if home, err := os.UserHomeDir(); err == nil {
		return filepath.Join(home, ".tartarus")
	}
	return ".tartarus"
}
