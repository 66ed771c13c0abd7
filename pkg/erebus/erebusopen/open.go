// Package erebusopen opens the Erebus blob store a configuration string
// names: a directory on this node (the default) or a bucket of an
// S3-compatible object store shared by every node.
//
// It is a package of its own, not erebus.Open, because the S3 backend
// (pkg/erebus/s3) imports pkg/erebus for the Store interface; erebus
// importing it back would be a cycle.
package erebusopen

import (
	"context"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"slices"
	"strconv"
	"strings"

	"github.com/tartarus-sandbox/tartarus/pkg/erebus"
	"github.com/tartarus-sandbox/tartarus/pkg/erebus/s3"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

// DefaultS3Endpoint is used when an s3:// spec names no endpoint.
const DefaultS3Endpoint = "s3.amazonaws.com"

// Open opens the store spec names:
//
//   - a directory path ("/var/lib/tartarus/snapshots"): the local store
//     there (erebus.NewLocal), created if missing;
//   - s3://BUCKET[/PREFIX][?endpoint=HOST:PORT&region=R&tls=false]: an S3
//     store (s3.New) in BUCKET, its objects under PREFIX/ when given. The
//     endpoint defaults to DefaultS3Endpoint and TLS to on. Credentials come
//     from AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and AWS_SESSION_TOKEN;
//     access_key= and secret_key= in the query are accepted but discouraged
//     (they end up in process listings and shell history), and override
//     the environment. The bucket is created if missing.
//
// An empty spec or a malformed one is an error wrapping tartarus.ErrInvalid
// that says what is wrong; callers substitute their default directory
// (DATA/snapshots) for an unset option before calling Open.
func Open(ctx context.Context, spec string, log *slog.Logger) (erebus.Store, error) {
	switch {
	case spec == "":
		return nil, tartarus.Errorf(tartarus.ErrInvalid, "erebus store: empty spec (want a directory or s3://BUCKET[/PREFIX]?endpoint=HOST:PORT)")
	case strings.HasPrefix(spec, "s3://"):
		cfg, fromURL, err := ParseS3(spec, os.Getenv)
		if err != nil {
			return nil, err
		}
		if fromURL {
			log.Warn("erebus store: credentials taken from the s3:// URL; prefer AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY")
		}
		st, err := s3.New(ctx, cfg, log)
		if err != nil {
			return nil, fmt.Errorf("open erebus store: %w", err)
		}
		log.Info("erebus store on S3", "s3", cfg)
		return st, nil
	case strings.Contains(spec, "://"):
		scheme, _, _ := strings.Cut(spec, "://")
		return nil, tartarus.Errorf(tartarus.ErrInvalid, "erebus store: unknown scheme %q (want a directory path or s3://)", scheme)
	}
	st, err := erebus.NewLocal(spec)
	if err != nil {
		return nil, fmt.Errorf("open erebus store: %w", err)
	}
	return st, nil
}

// s3Params lists the query parameters an s3:// spec may carry.
const s3Params = "endpoint, region, tls, access_key, secret_key"

// ParseS3 turns an s3:// spec into an s3.Config, reading credentials the
// query does not give through getenv. fromURL reports that the URL carried
// credentials. The errors wrap tartarus.ErrInvalid, name what is wrong and
// never repeat a secret.
func ParseS3(spec string, getenv func(string) string) (cfg s3.Config, fromURL bool, err error) {
	bad := func(format string, args ...any) (s3.Config, bool, error) {
		return s3.Config{}, false, tartarus.Errorf(tartarus.ErrInvalid, "erebus store: s3 spec: "+format, args...)
	}
	u, err := url.Parse(spec)
	if err != nil {
		return bad("not a URL (want s3://BUCKET[/PREFIX]?endpoint=HOST:PORT)")
	}
	if u.Scheme != "s3" {
		return bad("scheme %q, want s3", u.Scheme)
	}
	if u.User != nil {
		return bad("credentials before the bucket name are not read; use AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY")
	}
	if u.Host == "" {
		return bad("no bucket (want s3://BUCKET[/PREFIX])")
	}
	if u.Port() != "" {
		return bad("bucket %q has a port; the server goes in ?endpoint=HOST:PORT", u.Host)
	}
	if u.Fragment != "" {
		return bad("unexpected #fragment")
	}
	q, err := url.ParseQuery(u.RawQuery)
	if err != nil {
		return bad("bad query: %v", err)
	}
	var unknown []string
	for k, v := range q {
		if !slices.Contains(strings.Split(s3Params, ", "), k) {
			unknown = append(unknown, k)
		} else if len(v) > 1 {
			return bad("%s given %d times", k, len(v))
		}
	}
	if len(unknown) > 0 {
		slices.Sort(unknown)
		return bad("unknown parameter %s (known: %s)", strings.Join(unknown, ", "), s3Params)
	}

	cfg = s3.Config{
		Bucket:   u.Host,
		Prefix:   strings.Trim(u.Path, "/"),
		Endpoint: q.Get("endpoint"),
		Region:   q.Get("region"),
		TLS:      true,
	}
	if cfg.Endpoint == "" {
		cfg.Endpoint = DefaultS3Endpoint
	}
	if v := q.Get("tls"); v != "" {
		if cfg.TLS, err = strconv.ParseBool(v); err != nil {
			return bad("tls=%q: want true or false", v)
		}
	}
	cfg.AccessKey, cfg.SecretKey = q.Get("access_key"), q.Get("secret_key")
	switch {
	case cfg.AccessKey != "" && cfg.SecretKey != "":
		fromURL = true
	case cfg.AccessKey != "" || cfg.SecretKey != "":
		return bad("access_key and secret_key must be given together")
	default:
		cfg.AccessKey = getenv("AWS_ACCESS_KEY_ID")
		cfg.SecretKey = getenv("AWS_SECRET_ACCESS_KEY")
		cfg.SessionToken = getenv("AWS_SESSION_TOKEN")
		if cfg.AccessKey == "" || cfg.SecretKey == "" {
			return bad("no credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY")
		}
	}
	if err := cfg.Validate(); err != nil {
		return s3.Config{}, false, fmt.Errorf("erebus store: s3 spec: %w", err)
	}
	return cfg, fromURL, nil
}
