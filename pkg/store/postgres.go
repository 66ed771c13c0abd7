package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	_ "github.com/jackc/pgx/v5/stdlib" // registers the "pgx" database/sql driver

	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

// Postgres is the Store for several control-plane replicas sharing one
// PostgreSQL database. It has the same schema and behaviour as SQLite.
type Postgres struct {
	db *sql.DB
}

var _ Store = (*Postgres)(nil)

// pgMigrations are applied in order; the index+1 is the schema version.
// Never edit a released migration: append a new one.
var pgMigrations = []string{
	`CREATE TABLE sandboxes (
		id          TEXT PRIMARY KEY,
		tenant      TEXT NOT NULL,
		template    TEXT NOT NULL,
		runtime     TEXT NOT NULL,
		state       TEXT NOT NULL,
		node        TEXT NOT NULL,
		cpus        INTEGER NOT NULL,
		memory_mb   INTEGER NOT NULL,
		env         TEXT NOT NULL DEFAULT '{}',
		metadata    TEXT NOT NULL DEFAULT '{}',
		created_at  BIGINT NOT NULL,
		updated_at  BIGINT NOT NULL,
		expires_at  BIGINT NOT NULL DEFAULT 0,
		last_activity_at BIGINT NOT NULL DEFAULT 0,
		error       TEXT NOT NULL DEFAULT '',
		auto_hibernate_s INTEGER NOT NULL DEFAULT 0,
		snapshot_bytes BIGINT NOT NULL DEFAULT 0
	);
	CREATE INDEX sandboxes_tenant ON sandboxes(tenant, created_at);
	CREATE INDEX sandboxes_state ON sandboxes(state);
	CREATE TABLE sleep_records (
		sandbox_id  TEXT PRIMARY KEY,
		runtime     TEXT NOT NULL,
		status      TEXT NOT NULL,
		record      TEXT NOT NULL
	);
	CREATE INDEX sleep_records_runtime ON sleep_records(runtime);`,
	// 2: nodes, durable commands and the shared sleep records of a cluster
	// (cluster.go).
	`CREATE TABLE nodes (
		name          TEXT PRIMARY KEY,
		address       TEXT NOT NULL,
		status        TEXT NOT NULL,
		state         TEXT NOT NULL,
		last_seen     BIGINT NOT NULL,
		registered_at BIGINT NOT NULL,
		down_reason   TEXT NOT NULL DEFAULT ''
	);
	CREATE TABLE commands (
		seq        BIGSERIAL PRIMARY KEY,
		id         TEXT NOT NULL UNIQUE,
		node       TEXT NOT NULL,
		sandbox_id TEXT NOT NULL,
		kind       TEXT NOT NULL,
		body       TEXT NOT NULL,
		done       BOOLEAN NOT NULL DEFAULT FALSE,
		result     TEXT NOT NULL DEFAULT '',
		created_at BIGINT NOT NULL,
		done_at    BIGINT NOT NULL DEFAULT 0
	);
	CREATE INDEX commands_pending ON commands(node, seq) WHERE NOT done;
	CREATE INDEX sandboxes_node ON sandboxes(node, state);
	CREATE TABLE cluster_sleep (
		sandbox_id TEXT PRIMARY KEY,
		record     TEXT NOT NULL
	);`,
	// 3: creates made with an Idempotency-Key (cluster.go).
	`CREATE TABLE idempotency (
		tenant     TEXT NOT NULL,
		key        TEXT NOT NULL,
		sandbox_id TEXT NOT NULL,
		created_at BIGINT NOT NULL,
		PRIMARY KEY (tenant, key)
	);`,
}

// migrationLock is the pg_advisory_xact_lock key that serialises schema
// migrations of servers starting at the same time.
const migrationLock = 0x7461727461727573 // "tartarus"

// OpenPostgres connects to the database at dsn (postgres://…) and brings
// its schema up to date.
func OpenPostgres(ctx context.Context, dsn string) (*Postgres, error) {
	db, err := sql.Open("pgx", dsn)
	if err != nil {
		return nil, fmt.Errorf("open postgres: %w", err)
	}
	p := &Postgres{db: db}
	if err := p.migrate(ctx); err != nil {
		db.Close()
		return nil, fmt.Errorf("migrate postgres: %w", err)
	}
	return p, nil
}

// Open opens the Store named by dsn: PostgreSQL for a postgres:// or
// postgresql:// URL, otherwise the SQLite file at that path.
func Open(ctx context.Context, dsn string) (Store, error) {
	if strings.HasPrefix(dsn, "postgres://") || strings.HasPrefix(dsn, "postgresql://") {
		return OpenPostgres(ctx, dsn)
	}
	return OpenSQLite(ctx, dsn)
}

// migrate runs every missing migration in one transaction holding an
// advisory lock, so two servers starting at once migrate one after the
// other and the second finds nothing left to do.
func (p *Postgres) migrate(ctx context.Context) error {
	tx, err := p.db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	if _, err := tx.ExecContext(ctx, `SELECT pg_advisory_xact_lock($1)`, int64(migrationLock)); err != nil {
		return fmt.Errorf("migration lock: %w", err)
	}
	if _, err := tx.ExecContext(ctx, `CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)`); err != nil {
		return err
	}
	var v int
	err = tx.QueryRowContext(ctx, `SELECT version FROM schema_version`).Scan(&v)
	switch {
	case errors.Is(err, sql.ErrNoRows):
		if _, err := tx.ExecContext(ctx, `INSERT INTO schema_version (version) VALUES (0)`); err != nil {
			return err
		}
	case err != nil:
		return err
	}
	if v > len(pgMigrations) {
		return fmt.Errorf("database schema version %d is newer than this binary's %d", v, len(pgMigrations))
	}
	for i := v; i < len(pgMigrations); i++ {
		if _, err := tx.ExecContext(ctx, pgMigrations[i]); err != nil {
			return fmt.Errorf("migration %d: %w", i+1, err)
		}
	}
	if _, err := tx.ExecContext(ctx, `UPDATE schema_version SET version = $1`, len(pgMigrations)); err != nil {
		return err
	}
	return tx.Commit()
}

// Close closes the connection pool.
func (p *Postgres) Close() error { return p.db.Close() }

// Create implements Store.
func (p *Postgres) Create(ctx context.Context, sb *tartarus.Sandbox) error {
	err := insertSandbox(ctx, p.db, sb)
	var pe *pgconn.PgError
	if errors.As(err, &pe) && pe.Code == "23505" { // unique_violation
		return tartarus.Errorf(tartarus.ErrAlreadyExists, "sandbox %s", sb.ID)
	}
	return err
}

// Get implements Store.
func (p *Postgres) Get(ctx context.Context, id string) (*tartarus.Sandbox, error) {
	sb, err := scan(p.db.QueryRowContext(ctx, `SELECT `+columns+` FROM sandboxes WHERE id = $1`, id))
	if errors.Is(err, sql.ErrNoRows) {
		return nil, tartarus.Errorf(tartarus.ErrNotFound, "sandbox %s", id)
	}
	if err != nil {
		return nil, fmt.Errorf("get sandbox %s: %w", id, err)
	}
	return sb, nil
}

// List implements Store.
func (p *Postgres) List(ctx context.Context, f tartarus.SandboxFilter) ([]*tartarus.Sandbox, error) {
	var where []string
	var args []any
	arg := func(v any) string {
		args = append(args, v)
		return "$" + strconv.Itoa(len(args))
	}
	if f.Tenant != "" {
		where = append(where, "tenant = "+arg(f.Tenant))
	}
	if f.Node != "" {
		where = append(where, "node = "+arg(f.Node))
	}
	if len(f.States) > 0 {
		var in []string
		for _, st := range f.States {
			in = append(in, arg(string(st)))
		}
		where = append(where, "state IN ("+strings.Join(in, ",")+")")
	}
	q := `SELECT ` + columns + ` FROM sandboxes`
	if len(where) > 0 {
		q += " WHERE " + strings.Join(where, " AND ")
	}
	q += " ORDER BY created_at, id"
	return querySandboxes(ctx, p.db, q, args)
}

// Move implements Store.
func (p *Postgres) Move(ctx context.Context, id string, from, to tartarus.State, c Change) (*tartarus.Sandbox, error) {
	if err := tartarus.CheckMove(from, to); err != nil {
		return nil, fmt.Errorf("sandbox %s: %w", id, err)
	}
	sb, err := scan(p.db.QueryRowContext(ctx,
		`UPDATE sandboxes SET state = $1, updated_at = $2, error = CASE WHEN $3 = '' THEN error ELSE $3 END,
		 snapshot_bytes = $4 WHERE id = $5 AND state = $6 RETURNING `+columns,
		string(to), nanos(c.At), c.Error, c.SnapshotBytes, id, string(from)))
	if errors.Is(err, sql.ErrNoRows) {
		cur, err := p.Get(ctx, id)
		if err != nil {
			return nil, err
		}
		return nil, tartarus.Errorf(tartarus.ErrFailedPrecondition, "sandbox %s is %s, not %s", id, cur.State, from)
	}
	if err != nil {
		return nil, fmt.Errorf("move sandbox %s %s→%s: %w", id, from, to, err)
	}
	return sb, nil
}

// Touch implements Store.
func (p *Postgres) Touch(ctx context.Context, id string, at time.Time) error {
	res, err := p.db.ExecContext(ctx, `UPDATE sandboxes SET last_activity_at = GREATEST(last_activity_at, $1) WHERE id = $2`, nanos(at), id)
	if err != nil {
		return fmt.Errorf("touch sandbox %s: %w", id, err)
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return tartarus.Errorf(tartarus.ErrNotFound, "sandbox %s", id)
	}
	return nil
}

// CountByState implements Store.
func (p *Postgres) CountByState(ctx context.Context) (map[tartarus.State]int, error) {
	rows, err := p.db.QueryContext(ctx, `SELECT state, COUNT(*) FROM sandboxes GROUP BY state`)
	if err != nil {
		return nil, fmt.Errorf("count sandboxes: %w", err)
	}
	defer rows.Close()
	out := map[tartarus.State]int{}
	for rows.Next() {
		var st string
		var n int
		if err := rows.Scan(&st, &n); err != nil {
			return nil, fmt.Errorf("count sandboxes: %w", err)
		}
		out[tartarus.State(st)] = n
	}
	return out, rows.Err()
}

// SleepRecords returns the sleep records of runtime's sandboxes.
func (p *Postgres) SleepRecords(runtime string) *SleepRecords {
	return &SleepRecords{db: p.db, runtime: runtime, numbered: true}
}

// numbered rewrites the ? placeholders of q as PostgreSQL's $1, $2, …
// (the queries it is used on have no ? inside literals).
func numbered(q string) string {
	var b strings.Builder
	n := 0
	for _, r := range q {
		if r == '?' {
			n++
			b.WriteString("$" + strconv.Itoa(n))
			continue
		}
		b.WriteRune(r)
	}
	return b.String()
}
