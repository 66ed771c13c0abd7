package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net/url"
	"slices"

	"modernc.org/sqlite"
	sqlite3 "modernc.org/sqlite/lib"
)

// SQLite is the single-node Store: one file, WAL journal, pure Go (no cgo).
type SQLite struct {
	*SQL
}

var (
	_ Store             = (*SQLite)(nil)
	_ SleepRecordKeeper = (*SQLite)(nil)
)

// sqliteDialect needs no migration lock: its transactions begin
// immediate (_txlock), holding the database's write lock from BEGIN.
var sqliteDialect = &dialect{
	migrations:  slices.Concat(sqliteMigrations, componentSchema(), laterMigrations),
	greatest:    "MAX",
	isDuplicate: sqliteDuplicate,
}

func sqliteDuplicate(err error) bool {
	var se *sqlite.Error
	return errors.As(err, &se) && (se.Code() == sqlite3.SQLITE_CONSTRAINT_PRIMARYKEY || se.Code() == sqlite3.SQLITE_CONSTRAINT_UNIQUE)
}

// sqliteMigrations are SQLite's schema; see dialect.migrations.
var sqliteMigrations = []string{
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
		created_at  INTEGER NOT NULL,
		updated_at  INTEGER NOT NULL,
		expires_at  INTEGER NOT NULL DEFAULT 0,
		last_activity_at INTEGER NOT NULL DEFAULT 0,
		error       TEXT NOT NULL DEFAULT ''
	);
	CREATE INDEX sandboxes_tenant ON sandboxes(tenant, created_at);
	CREATE INDEX sandboxes_state ON sandboxes(state);`,
	`ALTER TABLE sandboxes ADD COLUMN auto_hibernate_s INTEGER NOT NULL DEFAULT 0;
	ALTER TABLE sandboxes ADD COLUMN snapshot_bytes INTEGER NOT NULL DEFAULT 0;
	CREATE TABLE sleep_records (
		sandbox_id  TEXT PRIMARY KEY,
		runtime     TEXT NOT NULL,
		status      TEXT NOT NULL,
		record      TEXT NOT NULL
	);
	CREATE INDEX sleep_records_runtime ON sleep_records(runtime);`,
}

// OpenSQLite opens (creating if needed) the database at path and brings its
// schema up to date.
func OpenSQLite(ctx context.Context, path string) (*SQLite, error) {
	q := url.Values{}
	q.Add("_pragma", "busy_timeout(10000)")
	q.Add("_pragma", "journal_mode(WAL)")
	q.Add("_pragma", "synchronous(NORMAL)")
	q.Add("_pragma", "foreign_keys(1)")
	q.Set("_txlock", "immediate")
	db, err := sql.Open("sqlite", "file:"+path+"?"+q.Encode())
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	s, err := openSQL(ctx, db, sqliteDialect)
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("migrate %s: %w", path, err)
	}
	return &SQLite{SQL: s}, nil
}
