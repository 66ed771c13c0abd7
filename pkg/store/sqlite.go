package store

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"time"

	"modernc.org/sqlite"
	sqlite3 "modernc.org/sqlite/lib"

	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

// SQLite is the single-node Store: one file, WAL journal, pure Go (no cgo).
type SQLite struct {
	db *sql.DB
}

var _ Store = (*SQLite)(nil)

// migrations are applied in order; the index+1 is the schema version. Never
// edit a released migration: append a new one.
var migrations = []string{
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
	s := &SQLite{db: db}
	if err := s.migrate(ctx); err != nil {
		db.Close()
		return nil, fmt.Errorf("migrate %s: %w", path, err)
	}
	return s, nil
}

func (s *SQLite) migrate(ctx context.Context) error {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
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
	if v > len(migrations) {
		return fmt.Errorf("database schema version %d is newer than this binary's %d", v, len(migrations))
	}
	for i := v; i < len(migrations); i++ {
		if _, err := tx.ExecContext(ctx, migrations[i]); err != nil {
			return fmt.Errorf("migration %d: %w", i+1, err)
		}
	}
	if _, err := tx.ExecContext(ctx, `UPDATE schema_version SET version = ?`, len(migrations)); err != nil {
		return err
	}
	return tx.Commit()
}

// Close closes the database.
func (s *SQLite) Close() error { return s.db.Close() }

const columns = `id, tenant, template, runtime, state, node, cpus, memory_mb, env, metadata,
	created_at, updated_at, expires_at, last_activity_at, error, auto_hibernate_s, snapshot_bytes`

// Create implements Store.
func (s *SQLite) Create(ctx context.Context, sb *tartarus.Sandbox) error {
	env, err := json.Marshal(orEmpty(sb.Env))
	if err != nil {
		return err
	}
	md, err := json.Marshal(orEmpty(sb.Metadata))
	if err != nil {
		return err
	}
	_, err = s.db.ExecContext(ctx, `INSERT INTO sandboxes (`+columns+`) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)`,
		sb.ID, sb.Tenant, sb.Template, sb.Runtime, string(sb.State), sb.Node, sb.CPUs, sb.MemoryMB,
		string(env), string(md), nanos(sb.CreatedAt), nanos(sb.UpdatedAt), nanos(sb.ExpiresAt),
		nanos(sb.LastActivityAt), sb.Error, sb.AutoHibernateS, sb.SnapshotBytes)
	if err != nil {
		var se *sqlite.Error
		if errors.As(err, &se) && (se.Code() == sqlite3.SQLITE_CONSTRAINT_PRIMARYKEY || se.Code() == sqlite3.SQLITE_CONSTRAINT_UNIQUE) {
			return tartarus.Errorf(tartarus.ErrAlreadyExists, "sandbox %s", sb.ID)
		}
		return fmt.Errorf("insert sandbox %s: %w", sb.ID, err)
	}
	return nil
}

// Get implements Store.
func (s *SQLite) Get(ctx context.Context, id string) (*tartarus.Sandbox, error) {
	sb, err := scan(s.db.QueryRowContext(ctx, `SELECT `+columns+` FROM sandboxes WHERE id = ?`, id))
	if errors.Is(err, sql.ErrNoRows) {
		return nil, tartarus.Errorf(tartarus.ErrNotFound, "sandbox %s", id)
	}
	if err != nil {
		return nil, fmt.Errorf("get sandbox %s: %w", id, err)
	}
	return sb, nil
}

// List implements Store.
func (s *SQLite) List(ctx context.Context, f tartarus.SandboxFilter) ([]*tartarus.Sandbox, error) {
	var where []string
	var args []any
	if f.Tenant != "" {
		where = append(where, "tenant = ?")
		args = append(args, f.Tenant)
	}
	if f.Node != "" {
		where = append(where, "node = ?")
		args = append(args, f.Node)
	}
	if len(f.States) > 0 {
		where = append(where, "state IN (?"+strings.Repeat(",?", len(f.States)-1)+")")
		for _, st := range f.States {
			args = append(args, string(st))
		}
	}
	q := `SELECT ` + columns + ` FROM sandboxes`
	if len(where) > 0 {
		q += " WHERE " + strings.Join(where, " AND ")
	}
	q += " ORDER BY created_at, id"
	return querySandboxes(ctx, s.db, q, args)
}

// Move implements Store.
func (s *SQLite) Move(ctx context.Context, id string, from, to tartarus.State, c Change) (*tartarus.Sandbox, error) {
	if err := tartarus.CheckMove(from, to); err != nil {
		return nil, fmt.Errorf("sandbox %s: %w", id, err)
	}
	res, err := s.db.ExecContext(ctx,
		`UPDATE sandboxes SET state = ?, updated_at = ?, error = CASE WHEN ? = '' THEN error ELSE ? END,
		 snapshot_bytes = ? WHERE id = ? AND state = ?`,
		string(to), nanos(c.At), c.Error, c.Error, c.SnapshotBytes, id, string(from))
	if err != nil {
		return nil, fmt.Errorf("move sandbox %s %s→%s: %w", id, from, to, err)
	}
	n, err := res.RowsAffected()
	if err != nil {
		return nil, fmt.Errorf("move sandbox %s: %w", id, err)
	}
	sb, err := s.Get(ctx, id)
	if err != nil {
		return nil, err
	}
	if n == 0 {
		return nil, tartarus.Errorf(tartarus.ErrFailedPrecondition, "sandbox %s is %s, not %s", id, sb.State, from)
	}
	return sb, nil
}

// Touch implements Store.
func (s *SQLite) Touch(ctx context.Context, id string, at time.Time) error {
	res, err := s.db.ExecContext(ctx, `UPDATE sandboxes SET last_activity_at = MAX(last_activity_at, ?) WHERE id = ?`, nanos(at), id)
	if err != nil {
		return fmt.Errorf("touch sandbox %s: %w", id, err)
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return tartarus.Errorf(tartarus.ErrNotFound, "sandbox %s", id)
	}
	return nil
}

// CountByState implements Store.
func (s *SQLite) CountByState(ctx context.Context) (map[tartarus.State]int, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT state, COUNT(*) FROM sandboxes GROUP BY state`)
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

type scanner interface{ Scan(dest ...any) error }

func scan(r scanner) (*tartarus.Sandbox, error) {
	var sb tartarus.Sandbox
	var state, env, md string
	var created, updated, expires, active int64
	err := r.Scan(&sb.ID, &sb.Tenant, &sb.Template, &sb.Runtime, &state, &sb.Node, &sb.CPUs, &sb.MemoryMB,
		&env, &md, &created, &updated, &expires, &active, &sb.Error, &sb.AutoHibernateS, &sb.SnapshotBytes)
	if err != nil {
		return nil, err
	}
	sb.State = tartarus.State(state)
	if err := json.Unmarshal([]byte(env), &sb.Env); err != nil {
		return nil, fmt.Errorf("sandbox %s env: %w", sb.ID, err)
	}
	if err := json.Unmarshal([]byte(md), &sb.Metadata); err != nil {
		return nil, fmt.Errorf("sandbox %s metadata: %w", sb.ID, err)
	}
	if len(sb.Env) == 0 {
		sb.Env = nil
	}
	sb.CreatedAt, sb.UpdatedAt = fromNanos(created), fromNanos(updated)
	sb.ExpiresAt, sb.LastActivityAt = fromNanos(expires), fromNanos(active)
	return &sb, nil
}

func orEmpty(m map[string]string) map[string]string {
	if m == nil {
		return map[string]string{}
	}
	return m
}

// Times are stored as Unix nanoseconds in UTC; zero time is 0.
func nanos(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixNano()
}

func fromNanos(n int64) time.Time {
	if n == 0 {
		return time.Time{}
	}
	return time.Unix(0, n).UTC()
}
