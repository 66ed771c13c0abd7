package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5/pgconn"
	_ "github.com/jackc/pgx/v5/stdlib" // registers the "pgx" database/sql driver
)

// Postgres is the Store for several control-plane replicas sharing one
// PostgreSQL database. It has the same schema and behaviour as SQLite, and
// also keeps the cluster's tables (cluster.go).
type Postgres struct {
	*SQL
}

var (
	_ Store             = (*Postgres)(nil)
	_ SleepRecordKeeper = (*Postgres)(nil)
)

// migrationLock is the pg_advisory_xact_lock key that serialises schema
// migrations of servers starting at the same time.
const migrationLock = 0x7461727461727573 // "tartarus"

var postgresDialect = &dialect{
	migrations:     slices.Concat(pgMigrations, componentSchema(), laterMigrations),
	lockMigrations: "SELECT pg_advisory_xact_lock(" + strconv.FormatInt(migrationLock, 10) + ")",
	numbered:       true,
	greatest:       "GREATEST",
	isDuplicate:    postgresDuplicate,
}

func postgresDuplicate(err error) bool {
	var pe *pgconn.PgError
	return errors.As(err, &pe) && pe.Code == "23505" // unique_violation
}

// pgMigrations are PostgreSQL's schema; see dialect.migrations.
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
	// 4: nodes being drained take no new sandboxes (cluster.go).
	`ALTER TABLE nodes ADD COLUMN draining BOOLEAN NOT NULL DEFAULT FALSE;`,
	// 5: tenant template versions kept in the shared store, and their tags
	// (templates.go).
	templateSchema,
}

// OpenPostgres connects to the database at dsn (postgres://…) and brings
// its schema up to date.
func OpenPostgres(ctx context.Context, dsn string) (*Postgres, error) {
	db, err := sql.Open("pgx", dsn)
	if err != nil {
		return nil, fmt.Errorf("open postgres: %w", err)
	}
	s, err := openSQL(ctx, db, postgresDialect)
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("migrate postgres: %w", err)
	}
	return &Postgres{SQL: s}, nil
}

// Open opens the Store named by dsn: PostgreSQL for a postgres:// or
// postgresql:// URL, otherwise the SQLite file at that path.
func Open(ctx context.Context, dsn string) (Store, error) {
	if strings.HasPrefix(dsn, "postgres://") || strings.HasPrefix(dsn, "postgresql://") {
		return OpenPostgres(ctx, dsn)
	}
	return OpenSQLite(ctx, dsn)
}
