package erebusopen_test

import (
	"errors"
	"log/slog"
	"path/filepath"
	"strings"
	"testing"

	"github.com/tartarus-sandbox/tartarus/pkg/erebus"
	"github.com/tartarus-sandbox/tartarus/pkg/erebus/erebusopen"
	"github.com/tartarus-sandbox/tartarus/pkg/erebus/erebustest"
	"github.com/tartarus-sandbox/tartarus/pkg/erebus/s3"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

func testLog(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelWarn}))
}

func TestParseS3(t *testing.T) {
	env := map[string]string{"AWS_ACCESS_KEY_ID": "envkey", "AWS_SECRET_ACCESS_KEY": "envsecret", "AWS_SESSION_TOKEN": "envtok"}
	noEnv := map[string]string{}
	for _, tc := range []struct {
		name    string
		spec    string
		env     map[string]string
		want    s3.Config
		fromURL bool
		err     string // part of the error; "" means success
	}{
		{name: "bucket only", spec: "s3://snaps", env: env, want: s3.Config{
			Endpoint: "s3.amazonaws.com", TLS: true, Bucket: "snaps", AccessKey: "envkey", SecretKey: "envsecret", SessionToken: "envtok"}},
		{name: "everything", spec: "s3://snaps/prod/eu-1/?endpoint=127.0.0.1:8333&region=eu-west-1&tls=false", env: env, want: s3.Config{
			Endpoint: "127.0.0.1:8333", Bucket: "snaps", Prefix: "prod/eu-1", Region: "eu-west-1",
			AccessKey: "envkey", SecretKey: "envsecret", SessionToken: "envtok"}},
		{name: "keys in URL win", spec: "s3://snaps?endpoint=h:1&access_key=ak&secret_key=sk", env: env, fromURL: true, want: s3.Config{
			Endpoint: "h:1", TLS: true, Bucket: "snaps", AccessKey: "ak", SecretKey: "sk"}},
		{name: "no credentials", spec: "s3://snaps", env: noEnv, err: "no credentials: set AWS_ACCESS_KEY_ID"},
		{name: "half credentials", spec: "s3://snaps?access_key=ak", env: env, err: "must be given together"},
		{name: "userinfo", spec: "s3://ak:sk@snaps", env: env, err: "credentials before the bucket"},
		{name: "no bucket", spec: "s3:///prefix", env: env, err: "no bucket"},
		{name: "port on bucket", spec: "s3://localhost:8333/b", env: env, err: "?endpoint=HOST:PORT"},
		{name: "unknown param", spec: "s3://snaps?endpiont=h:1", env: env, err: "unknown parameter endpiont"},
		{name: "repeated param", spec: "s3://snaps?tls=true&tls=false", env: env, err: "tls given 2 times"},
		{name: "bad tls", spec: "s3://snaps?tls=maybe", env: env, err: `tls="maybe"`},
		{name: "bad bucket", spec: "s3://Snaps_1", env: env, err: "bucket"},
		{name: "bad prefix", spec: "s3://snaps/a//b", env: env, err: "prefix"},
		{name: "endpoint with scheme", spec: "s3://snaps?endpoint=http://h:1", env: env, err: "without a scheme"},
		{name: "fragment", spec: "s3://snaps#x", env: env, err: "fragment"},
		{name: "secret not echoed", spec: "s3://snaps?access_key=ak&secret_key=hunter2&bogus=1", env: env, err: "unknown parameter bogus"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg, fromURL, err := erebusopen.ParseS3(tc.spec, func(k string) string { return tc.env[k] })
			if tc.err != "" {
				if !errors.Is(err, tartarus.ErrInvalid) || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("ParseS3(%q) = %v, want ErrInvalid mentioning %q", tc.spec, err, tc.err)
				}
				if strings.Contains(err.Error(), "hunter2") {
					t.Fatalf("error repeats the secret: %v", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("ParseS3(%q): %v", tc.spec, err)
			}
			if cfg != tc.want || fromURL != tc.fromURL {
				t.Fatalf("ParseS3(%q) = %+v, %v; want %+v, %v", tc.spec, cfg, fromURL, tc.want, tc.fromURL)
			}
		})
	}
}

func TestOpenLocalAndBadSpecs(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "snapshots")
	st, err := erebusopen.Open(t.Context(), dir, testLog(t))
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := st.(*erebus.Local); !ok {
		t.Fatalf("Open(%q) = %T, want *erebus.Local", dir, st)
	}
	if _, err := st.Put(t.Context(), "k", strings.NewReader("v")); err != nil {
		t.Fatal(err)
	}
	for _, spec := range []string{"", "gs://bucket", "S3://bucket", "s3://"} {
		if _, err := erebusopen.Open(t.Context(), spec, testLog(t)); !errors.Is(err, tartarus.ErrInvalid) {
			t.Errorf("Open(%q) = %v, want ErrInvalid", spec, err)
		}
	}
}

// TestOpenS3 opens a real SeaweedFS through a spec with the credentials in
// the environment, as an operator would.
func TestOpenS3(t *testing.T) {
	srv := erebustest.StartSeaweedFS(t)
	t.Setenv("AWS_ACCESS_KEY_ID", srv.AccessKey)
	t.Setenv("AWS_SECRET_ACCESS_KEY", srv.SecretKey)
	t.Setenv("AWS_SESSION_TOKEN", "")
	st, err := erebusopen.Open(t.Context(), "s3://tartarus/node-pool-1?endpoint="+srv.Endpoint+"&tls=false", testLog(t))
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := st.(*s3.Store); !ok {
		t.Fatalf("Open = %T, want *s3.Store", st)
	}
	obj, err := st.Put(t.Context(), "sleep/sb-1/data", strings.NewReader("memory image"))
	if err != nil {
		t.Fatal(err)
	}
	if got, err := st.Stat(t.Context(), "sleep/sb-1/data"); err != nil || got.Checksum != obj.Checksum {
		t.Fatalf("Stat = %+v, %v; want %+v", got, err, obj)
	}
}
