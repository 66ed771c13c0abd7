package cerberus

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	_ "github.com/jackc/pgx/v5/stdlib" // registers the "pgx" database/sql driver

	"github.com/tartarus-sandbox/tartarus/pkg/clock"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

// DefaultKeyCacheTTL is how long a server trusts an API key it read from
// Postgres before reading it again, and so the longest a key revoked through
// one replica keeps working on another. A cached check costs what the JSON
// file's does (about a microsecond); a query costs a loopback round trip
// (see BenchmarkKeyStoreVerify and docs/auth.md).
const DefaultKeyCacheTTL = time.Second

// PostgresKeysConfig configures OpenPostgresKeyStore.
type PostgresKeysConfig struct {
	// DSN is the database's postgres:// URL; the store keeps its keys in
	// the table api_keys, made on first use.
	DSN   string
	Clock clock.Clock // nil: clock.System
	// CacheTTL bounds how long Verify trusts a key it has read (0:
	// DefaultKeyCacheTTL; negative: read the database on every Verify).
	CacheTTL time.Duration
}

// keysLock is the pg_advisory_xact_lock key under which servers starting at
// once create the api_keys table and make the first admin key, one after the
// other. It differs from pkg/store's migration lock ("tartarus").
const keysLock = 0x6365726265727573 // "cerberus"

// pgKeysSchema is the api_keys table. Later changes append statements that
// are safe to run again (ADD COLUMN IF NOT EXISTS …); they run under keysLock.
const pgKeysSchema = `CREATE TABLE IF NOT EXISTS api_keys (
	id            TEXT PRIMARY KEY,
	name          TEXT NOT NULL DEFAULT '',
	tenant        TEXT NOT NULL,
	roles         TEXT NOT NULL,
	created_at    TIMESTAMPTZ NOT NULL,
	created_by    TEXT NOT NULL DEFAULT '',
	expires_at    TIMESTAMPTZ,
	revoked_at    TIMESTAMPTZ,
	secret_sha256 TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS api_keys_tenant ON api_keys (tenant, created_at)`

// pgKeysMaxConns bounds the key store's connection pool.
const pgKeysMaxConns = 8

const pgKeyColumns = `id, name, tenant, roles, created_at, created_by, expires_at, revoked_at, secret_sha256`

// pgKeys keeps keys in the api_keys table of a database that several
// server replicas share; every change is one statement or transaction, so
// replicas never overwrite each other.
type pgKeys struct {
	db *sql.DB
}

var _ keyBackend = (*pgKeys)(nil)

// OpenPostgresKeyStore connects to cfg.DSN, creates the api_keys table if it
// is missing, and returns a KeyStore that replicas sharing the database see
// alike.
func OpenPostgresKeyStore(ctx context.Context, cfg PostgresKeysConfig) (*KeyStore, error) {
	if !IsPostgresDSN(cfg.DSN) {
		return nil, tartarus.Errorf(tartarus.ErrInvalid, "api key store: %q is not a postgres:// URL", redactDSN(cfg.DSN))
	}
	db, err := sql.Open("pgx", cfg.DSN)
	if err != nil {
		return nil, fmt.Errorf("api key store: open postgres: %w", err)
	}
	// A handful of connections: lookups are single-row reads by primary
	// key, and a burst of requests with stale cache entries then waits for
	// a connection instead of taking a slice of max_connections per replica.
	db.SetMaxOpenConns(pgKeysMaxConns)
	db.SetMaxIdleConns(pgKeysMaxConns / 2)
	p := &pgKeys{db: db}
	if err := p.createSchema(ctx); err != nil {
		db.Close()
		return nil, fmt.Errorf("api key store: create table api_keys in %s: %w", redactDSN(cfg.DSN), err)
	}
	ttl := cfg.CacheTTL
	if ttl == 0 {
		ttl = DefaultKeyCacheTTL
	}
	return newKeyStore(p, cfg.Clock, ttl), nil
}

// IsPostgresDSN reports whether dsn names a Postgres database (postgres://
// or postgresql://), as the server's --database flag does.
func IsPostgresDSN(dsn string) bool {
	return strings.HasPrefix(dsn, "postgres://") || strings.HasPrefix(dsn, "postgresql://")
}

// redactDSN hides a password in a DSN for error messages and logs.
func redactDSN(dsn string) string {
	scheme, rest, ok := strings.Cut(dsn, "://")
	if !ok {
		return dsn
	}
	userinfo, host, ok := strings.Cut(rest, "@")
	if !ok {
		return dsn
	}
	if user, _, hasPass := strings.Cut(userinfo, ":"); hasPass {
		return scheme + "://" + user + ":xxxxx@" + host
	}
	return dsn
}

func (p *pgKeys) createSchema(ctx context.Context) error {
	tx, err := p.db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	if _, err := tx.ExecContext(ctx, `SELECT pg_advisory_xact_lock($1)`, int64(keysLock)); err != nil {
		return fmt.Errorf("lock: %w", err)
	}
	if _, err := tx.ExecContext(ctx, pgKeysSchema); err != nil {
		return err
	}
	return tx.Commit()
}

// execer is what insert needs of a *sql.DB or *sql.Tx.
type execer interface {
	ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error)
}

func (p *pgKeys) insert(ctx context.Context, k storedKey) error {
	return insertKey(ctx, p.db, k)
}

func insertKey(ctx context.Context, db execer, k storedKey) error {
	roles, err := json.Marshal(k.Roles)
	if err != nil {
		return fmt.Errorf("api key %s: %w", k.ID, err)
	}
	_, err = db.ExecContext(ctx, `INSERT INTO api_keys (`+pgKeyColumns+`) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)`,
		k.ID, k.Name, k.TenantID, string(roles), k.CreatedAt, k.CreatedBy, nullTime(k.ExpiresAt), nullTime(k.RevokedAt), k.SecretSHA256)
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && pgErr.Code == "23505" { // unique_violation
		return tartarus.Errorf(tartarus.ErrAlreadyExists, "api key %s", k.ID)
	}
	if err != nil {
		return fmt.Errorf("api key store: insert %s: %w", k.ID, err)
	}
	return nil
}

// insertFirst holds keysLock while it looks and inserts: without it, two
// replicas could both see an empty table (READ COMMITTED) and both insert.
func (p *pgKeys) insertFirst(ctx context.Context, k storedKey) (bool, error) {
	tx, err := p.db.BeginTx(ctx, nil)
	if err != nil {
		return false, fmt.Errorf("api key store: %w", err)
	}
	defer tx.Rollback()
	if _, err := tx.ExecContext(ctx, `SELECT pg_advisory_xact_lock($1)`, int64(keysLock)); err != nil {
		return false, fmt.Errorf("api key store: lock: %w", err)
	}
	var exists bool
	if err := tx.QueryRowContext(ctx, `SELECT EXISTS (SELECT 1 FROM api_keys)`).Scan(&exists); err != nil {
		return false, fmt.Errorf("api key store: %w", err)
	}
	if exists {
		return false, nil
	}
	if err := insertKey(ctx, tx, k); err != nil {
		return false, err
	}
	if err := tx.Commit(); err != nil {
		return false, fmt.Errorf("api key store: commit: %w", err)
	}
	return true, nil
}

func (p *pgKeys) get(ctx context.Context, id string) (storedKey, error) {
	k, err := scanKey(p.db.QueryRowContext(ctx, `SELECT `+pgKeyColumns+` FROM api_keys WHERE id = $1`, id))
	if errors.Is(err, sql.ErrNoRows) {
		return storedKey{}, tartarus.Errorf(tartarus.ErrNotFound, "api key %s", id)
	}
	if err != nil {
		return storedKey{}, fmt.Errorf("api key store: get %s: %w", id, err)
	}
	return k, nil
}

func (p *pgKeys) list(ctx context.Context, tenant string) ([]storedKey, error) {
	var rows *sql.Rows
	var err error
	if tenant == "" || tenant == "*" {
		rows, err = p.db.QueryContext(ctx, `SELECT `+pgKeyColumns+` FROM api_keys`)
	} else {
		rows, err = p.db.QueryContext(ctx, `SELECT `+pgKeyColumns+` FROM api_keys WHERE tenant = $1`, tenant)
	}
	if err != nil {
		return nil, fmt.Errorf("api key store: list: %w", err)
	}
	defer rows.Close()
	var out []storedKey
	for rows.Next() {
		k, err := scanKey(rows)
		if err != nil {
			return nil, fmt.Errorf("api key store: list: %w", err)
		}
		out = append(out, k)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("api key store: list: %w", err)
	}
	return out, nil
}

// revoke keeps the first revocation time: COALESCE makes a second revoke,
// from this replica or another, change nothing.
func (p *pgKeys) revoke(ctx context.Context, id string, at time.Time) (storedKey, error) {
	k, err := scanKey(p.db.QueryRowContext(ctx,
		`UPDATE api_keys SET revoked_at = COALESCE(revoked_at, $2) WHERE id = $1 RETURNING `+pgKeyColumns, id, at))
	if errors.Is(err, sql.ErrNoRows) {
		return storedKey{}, tartarus.Errorf(tartarus.ErrNotFound, "api key %s", id)
	}
	if err != nil {
		return storedKey{}, fmt.Errorf("api key store: revoke %s: %w", id, err)
	}
	return k, nil
}

func (p *pgKeys) close() error { return p.db.Close() }

// scanner is a *sql.Row or *sql.Rows.
type scanner interface{ Scan(dest ...any) error }

func scanKey(s scanner) (storedKey, error) {
	var k storedKey
	var roles string
	var expires, revoked sql.NullTime
	if err := s.Scan(&k.ID, &k.Name, &k.TenantID, &roles, &k.CreatedAt, &k.CreatedBy, &expires, &revoked, &k.SecretSHA256); err != nil {
		return storedKey{}, err
	}
	if err := json.Unmarshal([]byte(roles), &k.Roles); err != nil {
		return storedKey{}, fmt.Errorf("api key %s: roles: %w", k.ID, err)
	}
	k.CreatedAt = k.CreatedAt.UTC()
	if expires.Valid {
		k.ExpiresAt = expires.Time.UTC()
	}
	if revoked.Valid {
		k.Revoked, k.RevokedAt = true, revoked.Time.UTC()
	}
	return k, nil
}

func nullTime(t time.Time) sql.NullTime { return sql.NullTime{Time: t, Valid: !t.IsZero()} }
