package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/tartarus-sandbox/tartarus/pkg/cerberus"
	"github.com/tartarus-sandbox/tartarus/pkg/e2b"
)

// newAPIKeyCmd is `tartarus apikey create|ls|revoke`, through the API, or
// with --database straight on the Postgres database the replicas share.
func newAPIKeyCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "apikey",
		Short: "Create, list and revoke API keys",
		Long: `Create, list and revoke API keys through the server's API.

The server is $TARTARUS_URL (default http://127.0.0.1:7700); the caller's key
is $TARTARUS_API_KEY, or else the admin key the server wrote to
<data dir>/admin.key on first start.

With --database postgres://… the verbs work on the api_keys table that server
replicas started with the same --database share, without a server or a key:
for an operator who holds the database's credentials (say, to make a key on a
machine that has no admin.key). Such keys are not checked against the
server's policy, and --tenant must be given.`,
	}
	var database string
	cmd.PersistentFlags().StringVar(&database, "database", "", "postgres://… of the servers' shared database: change the keys there instead of through the API")
	admin := func(ctx context.Context) (keyAdmin, error) {
		if database == "" {
			return apiKeys{}, nil
		}
		if !cerberus.IsPostgresDSN(database) {
			return nil, fmt.Errorf("--database takes the servers' postgres:// URL; a single server's key file is changed through its API (leave --database out)")
		}
		s, err := cerberus.OpenPostgresKeyStore(ctx, cerberus.PostgresKeysConfig{DSN: database})
		if err != nil {
			return nil, err
		}
		return dbKeys{s}, nil
	}

	var tenant, name, expires, format string
	var roles []string
	create := &cobra.Command{
		Use:   "create --tenant T --role R [--expires 30d]",
		Short: "Make a key; prints its secret once",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if format != "tartarus" && format != "e2b" {
				return fmt.Errorf("--format %q: want tartarus or e2b", format)
			}
			a, err := admin(cmd.Context())
			if err != nil {
				return err
			}
			defer a.close()
			k, secret, err := a.create(cmd.Context(), keyRequest{Tenant: tenant, Roles: roles, Name: name, ExpiresIn: expires})
			if err != nil {
				return err
			}
			exp := "never"
			if !k.ExpiresAt.IsZero() {
				exp = k.ExpiresAt.Format(time.RFC3339)
			}
			fmt.Fprintf(cmd.ErrOrStderr(), "key %s for tenant %s, roles %s, expires %s. Its secret is shown only now:\n",
				k.ID, k.TenantID, strings.Join(k.Roles, ","), exp)
			if format == "e2b" {
				// The same key in the form E2B's SDKs check (docs/e2b.md).
				fmt.Fprintln(cmd.OutOrStdout(), e2b.E2BKey(string(secret)))
				return nil
			}
			fmt.Fprintln(cmd.OutOrStdout(), secret)
			return nil
		},
	}
	create.Flags().StringVar(&tenant, "tenant", "", "tenant of the key (default: your own; required with --database)")
	create.Flags().StringSliceVar(&roles, "role", nil, "policy role of the key (repeat or comma-separate)")
	create.Flags().StringVar(&expires, "expires", "", "lifetime such as 30d, 2w or 12h (default: never)")
	create.Flags().StringVar(&name, "name", "", "a note saying what the key is for")
	create.Flags().StringVar(&format, "format", "tartarus", "how to print the secret: tartarus (tk_…) or e2b (e2b_…, for E2B's SDKs; the same key)")
	create.MarkFlagRequired("role")

	var lsTenant string
	ls := &cobra.Command{
		Use:   "ls",
		Short: "List keys (never their secrets)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			a, err := admin(cmd.Context())
			if err != nil {
				return err
			}
			defer a.close()
			keys, err := a.list(cmd.Context(), lsTenant)
			if err != nil {
				return err
			}
			tw := newTable(cmd.OutOrStdout())
			fmt.Fprintln(tw, "ID\tTENANT\tROLES\tCREATED\tEXPIRES\tSTATE\tCREATED BY\tNAME")
			now := time.Now()
			for _, k := range keys {
				state, exp := "active", "never"
				if !k.ExpiresAt.IsZero() {
					exp = k.ExpiresAt.Local().Format("2006-01-02 15:04")
				}
				if k.Expired(now) {
					state = "expired"
				}
				if k.Revoked {
					state = "revoked"
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", k.ID, k.TenantID, strings.Join(k.Roles, ","),
					k.CreatedAt.Local().Format("2006-01-02 15:04"), exp, state, k.CreatedBy, k.Name)
			}
			return tw.Flush()
		},
	}
	ls.Flags().StringVar(&lsTenant, "tenant", "", `tenant to list (default: your own, or all with --database; "*" for all)`)

	revoke := &cobra.Command{
		Use:   "revoke ID",
		Short: "Revoke a key at once",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			a, err := admin(cmd.Context())
			if err != nil {
				return err
			}
			defer a.close()
			k, err := a.revoke(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "revoked %s\n", k.ID)
			return nil
		},
	}
	cmd.AddCommand(create, ls, revoke)
	return cmd
}

// keyRequest is a key to create, as the API's POST /v1/apikeys takes it.
type keyRequest struct {
	Tenant    string   `json:"tenant"`
	Roles     []string `json:"roles"`
	Name      string   `json:"name"`
	ExpiresIn string   `json:"expires_in,omitempty"`
}

// keyAdmin is what the apikey verbs do: through the API (apiKeys) or on
// the shared database (dbKeys).
type keyAdmin interface {
	create(ctx context.Context, req keyRequest) (cerberus.APIKey, string, error)
	list(ctx context.Context, tenant string) ([]cerberus.APIKey, error)
	revoke(ctx context.Context, id string) (cerberus.APIKey, error)
	close() error
}

var (
	_ keyAdmin = apiKeys{}
	_ keyAdmin = dbKeys{}
)

// apiKeys manages keys through the server's /v1/apikeys, as the caller.
type apiKeys struct{}

func (apiKeys) create(ctx context.Context, req keyRequest) (cerberus.APIKey, string, error) {
	var out struct {
		APIKey cerberus.APIKey `json:"api_key"`
		Secret string          `json:"secret"`
	}
	err := cerbCall(ctx, "POST", "/v1/apikeys", req, &out)
	return out.APIKey, out.Secret, err
}

func (apiKeys) list(ctx context.Context, tenant string) ([]cerberus.APIKey, error) {
	q := url.Values{}
	if tenant != "" {
		q.Set("tenant", tenant)
	}
	var out struct {
		Keys []cerberus.APIKey `json:"api_keys"`
	}
	err := cerbCall(ctx, "GET", "/v1/apikeys?"+q.Encode(), nil, &out)
	return out.Keys, err
}

func (apiKeys) revoke(ctx context.Context, id string) (cerberus.APIKey, error) {
	var k cerberus.APIKey
	err := cerbCall(ctx, "DELETE", "/v1/apikeys/"+url.PathEscape(id), nil, &k)
	return k, err
}

func (apiKeys) close() error { return nil }

// dbKeys manages keys in the api_keys table directly. The servers see a new
// key at once and a revocation within their key cache TTL.
type dbKeys struct{ s *cerberus.KeyStore }

func (d dbKeys) create(ctx context.Context, req keyRequest) (cerberus.APIKey, string, error) {
	if req.Tenant == "" {
		return cerberus.APIKey{}, "", fmt.Errorf("--tenant is required with --database")
	}
	spec := cerberus.KeySpec{Name: req.Name, TenantID: req.Tenant, Roles: req.Roles, CreatedBy: "system:cli-database"}
	if req.ExpiresIn != "" {
		ttl, err := cerberus.ParseTTL(req.ExpiresIn)
		if err != nil {
			return cerberus.APIKey{}, "", err
		}
		spec.ExpiresAt = time.Now().Add(ttl)
	}
	k, secret, err := d.s.Create(ctx, spec)
	return k, string(secret), err
}

func (d dbKeys) list(ctx context.Context, tenant string) ([]cerberus.APIKey, error) {
	return d.s.List(ctx, tenant)
}

func (d dbKeys) revoke(ctx context.Context, id string) (cerberus.APIKey, error) {
	return d.s.Revoke(ctx, strings.TrimPrefix(id, cerberus.KeyPrefix))
}

func (d dbKeys) close() error { return d.s.Close() }

// newAuditCmd is `tartarus audit tail [-f]`.
func newAuditCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "audit", Short: "Read the audit log"}
	var follow, asJSON bool
	var n int
	var tenant, identity, result string
	var every time.Duration
	tail := &cobra.Command{
		Use:   "tail [-f]",
		Short: "Print the newest audit entries; -f keeps printing new ones",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			q := url.Values{"limit": {fmt.Sprint(n)}}
			for k, v := range map[string]string{"tenant": tenant, "identity": identity, "result": result} {
				if v != "" {
					q.Set(k, v)
				}
			}
			var since time.Time
			seen := map[string]bool{} // printed entries at since
			for {
				if !since.IsZero() {
					q.Set("since", since.Format(time.RFC3339Nano))
					q.Set("limit", "1000")
				}
				var out struct {
					Entries []cerberus.AuditRecord `json:"entries"`
				}
				if err := cerbCall(ctx, "GET", "/v1/audit?"+q.Encode(), nil, &out); err != nil {
					if follow && ctx.Err() != nil {
						return nil // interrupted while following
					}
					return err
				}
				for _, e := range out.Entries {
					// The next page starts at the last timestamp seen (entries
					// may share it): skip what was already printed.
					k := fmt.Sprint(e.Seq, "/", e.RequestID, "/", e.Timestamp.UnixNano())
					if seen[k] || (!since.IsZero() && e.Timestamp.Before(since)) {
						continue
					}
					if e.Timestamp.After(since) {
						seen = map[string]bool{}
					}
					seen[k] = true
					printAudit(cmd.OutOrStdout(), e, asJSON)
					since = e.Timestamp
				}
				if !follow {
					return nil
				}
				if since.IsZero() {
					since = time.Now().Add(-time.Second)
				}
				select {
				case <-ctx.Done():
					return nil
				case <-time.After(every):
				}
			}
		},
	}
	f := tail.Flags()
	f.BoolVarP(&follow, "follow", "f", false, "keep printing new entries")
	f.IntVarP(&n, "lines", "n", 20, "how many of the newest entries to print first")
	f.StringVar(&tenant, "tenant", "", `tenant (default: your own; "*" for all)`)
	f.StringVar(&identity, "identity", "", "only this caller (id or type:id)")
	f.StringVar(&result, "result", "", "only success, denied or error")
	f.BoolVar(&asJSON, "json", false, "print the JSON lines as stored")
	f.DurationVar(&every, "interval", time.Second, "poll interval with -f")
	cmd.AddCommand(tail, newAuditVerifyCmd())
	return cmd
}

// newAuditVerifyCmd is `tartarus audit verify`: it walks the audit log's
// hash chain on this host's disk (no server needed) and reports the first
// broken link; the exit status is 1 when there is one.
func newAuditVerifyCmd() *cobra.Command {
	var dir string
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "verify",
		Short: "Check the audit log's hash chain and report the first broken link",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			rep, err := cerberus.VerifyAuditDir(cmd.Context(), dir)
			if err != nil {
				return err
			}
			w := cmd.OutOrStdout()
			if asJSON {
				b, _ := json.MarshalIndent(rep, "", "  ")
				fmt.Fprintln(w, string(b))
			} else {
				fmt.Fprintf(w, "files:     %d (%s)\n", len(rep.Files), strings.Join(rep.Files, ", "))
				fmt.Fprintf(w, "entries:   %d chained, seq %d..%d", rep.Entries, rep.FirstSeq, rep.LastSeq)
				if rep.FirstSeq > 1 {
					fmt.Fprintf(w, " (entries before %d were rotated away or removed)", rep.FirstSeq)
				}
				fmt.Fprintln(w)
				if rep.Torn > 0 || rep.Unchained > 0 {
					fmt.Fprintf(w, "also:      %d torn line(s) from crashes, %d line(s) from before the chain\n", rep.Torn, rep.Unchained)
				}
				fmt.Fprintf(w, "head:      %s (keep it elsewhere: a later verify must reach it)\n", rep.Head)
			}
			if rep.Broken != nil {
				return fmt.Errorf("audit chain broken at %s", rep.Broken)
			}
			if !asJSON {
				fmt.Fprintln(w, "chain:     intact")
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&dir, "dir", filepath.Join(envOr("TARTARUS_DATA_DIR", serverDataDir()), "audit"), "the audit log's directory (the server's --data-dir/audit)")
	f.BoolVar(&asJSON, "json", false, "print the report as JSON")
	return cmd
}

func printAudit(w io.Writer, e cerberus.AuditRecord, asJSON bool) {
	if asJSON {
		b, _ := json.Marshal(e)
		fmt.Fprintln(w, string(b))
		return
	}
	who := "-"
	if e.Identity != nil {
		who = fmt.Sprintf("%s:%s@%s", e.Identity.Type, e.Identity.ID, e.Identity.TenantID)
	}
	what := string(e.Action)
	if e.Resource.Type != "" {
		what += " " + string(e.Resource.Type)
		if e.Resource.ID != "" {
			what += "/" + e.Resource.ID
		}
	}
	if what == "" {
		what = "-"
	}
	fmt.Fprintf(w, "%s %-7s %3d %s %s %s %q\n", e.Timestamp.Local().Format("2006-01-02T15:04:05.000"), e.Result, e.Status,
		who, what, e.Method+" "+e.Path, e.Reason)
}

// cerbCall does one API call for the apikey and audit verbs with plain
// net/http (the Go SDK is separate work) and decodes the answer into out.
func cerbCall(ctx context.Context, method, path string, body, out any) error {
	base := strings.TrimRight(os.Getenv("TARTARUS_URL"), "/")
	if base == "" {
		base = "http://127.0.0.1:7700"
	}
	client, err := cerbHTTPClient()
	if err != nil {
		return err
	}
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, base+path, rd)
	if err != nil {
		return err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if key := cerbAPIKey(); key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	resp, err := client.Do(req)
	if err != nil {
		return fmt.Errorf("%s %s: %w", method, base, err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return fmt.Errorf("%s %s: %w", method, path, err)
	}
	if resp.StatusCode >= 300 {
		var e struct {
			Error struct{ Code, Message, Reason string } `json:"error"`
		}
		if json.Unmarshal(raw, &e) == nil && e.Error.Message != "" {
			return fmt.Errorf("%s (%d %s)", e.Error.Message, resp.StatusCode, e.Error.Code)
		}
		return fmt.Errorf("%s %s: %s", method, path, resp.Status)
	}
	if out == nil {
		return nil
	}
	if err := json.Unmarshal(raw, out); err != nil {
		return fmt.Errorf("%s %s: bad answer: %w", method, path, err)
	}
	return nil
}

// cerbAPIKey is $TARTARUS_API_KEY, or the server's admin.key on this machine.
func cerbAPIKey() string {
	if k := os.Getenv("TARTARUS_API_KEY"); k != "" {
		return k
	}
	for _, dir := range []string{os.Getenv("TARTARUS_DATA_DIR"), authDefaultDataDir()} {
		if dir == "" {
			continue
		}
		if k, err := cerberus.ReadKeyFile(filepath.Join(dir, "admin.key")); err == nil {
			return k
		}
	}
	return ""
}

// cerbHTTPClient trusts $TARTARUS_CA_CERT for an https server and presents
// $TARTARUS_CLIENT_CERT / $TARTARUS_CLIENT_KEY when they are set (mTLS).
func cerbHTTPClient() (*http.Client, error) {
	ca, cert, key := os.Getenv("TARTARUS_CA_CERT"), os.Getenv("TARTARUS_CLIENT_CERT"), os.Getenv("TARTARUS_CLIENT_KEY")
	if ca == "" && cert == "" {
		return http.DefaultClient, nil
	}
	conf := &tls.Config{MinVersion: tls.VersionTLS12}
	if ca != "" {
		pem, err := os.ReadFile(ca)
		if err != nil {
			return nil, fmt.Errorf("TARTARUS_CA_CERT: %w", err)
		}
		conf.RootCAs = x509.NewCertPool()
		if !conf.RootCAs.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("TARTARUS_CA_CERT %s holds no PEM certificate", ca)
		}
	}
	if cert != "" {
		pair, err := tls.LoadX509KeyPair(cert, key)
		if err != nil {
			return nil, fmt.Errorf("TARTARUS_CLIENT_CERT/KEY: %w", err)
		}
		conf.Certificates = []tls.Certificate{pair}
	}
	return &http.Client{Transport: &http.Transport{TLSClientConfig: conf}}, nil
}
