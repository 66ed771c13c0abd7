package thanatos

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"time"

	"github.com/tartarus-sandbox/tartarus/pkg/sqldialect"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

// Dialect is the SQL database a SQLJournal speaks.
type Dialect = sqldialect.Dialect

// The dialects.
const (
	SQLite   = sqldialect.SQLite
	Postgres = sqldialect.Postgres
)

// Schema creates the journal's tables, one statement each. The SQL is the
// same on both dialects: TEXT, BIGINT (unix nanoseconds) and INTEGER (0/1)
// only. The store runs it among its own migrations (pkg/store), under its
// lock; Migrate runs it on a database of the journal's own.
var Schema = []string{
	`CREATE TABLE IF NOT EXISTS terminations (
		sandbox_id   TEXT PRIMARY KEY,
		tenant       TEXT NOT NULL,
		phase        TEXT NOT NULL,
		final        INTEGER NOT NULL,
		initiated_at BIGINT NOT NULL,
		status       TEXT NOT NULL
	)`,
	`CREATE INDEX IF NOT EXISTS terminations_pending ON terminations (final, initiated_at)`,
	`CREATE TABLE IF NOT EXISTS checkpoints (
		id           TEXT PRIMARY KEY,
		sandbox_id   TEXT NOT NULL,
		tenant       TEXT NOT NULL,
		created_at   BIGINT NOT NULL,
		expires_at   BIGINT NOT NULL,
		checkpoint   TEXT NOT NULL
	)`,
	`CREATE INDEX IF NOT EXISTS checkpoints_tenant ON checkpoints (tenant, created_at)`,
	`CREATE INDEX IF NOT EXISTS checkpoints_expiry ON checkpoints (expires_at)`,
}

// Migrate creates the terminations and checkpoints tables if they are
// missing. It is idempotent.
func Migrate(ctx context.Context, db *sql.DB) error {
	return sqldialect.Migrate(ctx, db, "thanatos", Schema)
}

// SQLJournal is a Journal in a SQL database (SQLite or Postgres). Each
// row keeps the whole record as JSON beside the columns it is queried by.
type SQLJournal struct {
	db      *sql.DB
	dialect Dialect
}

var _ Journal = (*SQLJournal)(nil)

// NewSQLJournal returns a journal over db; call Migrate first.
func NewSQLJournal(db *sql.DB, dialect Dialect) (*SQLJournal, error) {
	if err := dialect.Validate(); err != nil {
		return nil, fmt.Errorf("sql journal: %w", err)
	}
	return &SQLJournal{db: db, dialect: dialect}, nil
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}

// q writes query's ? placeholders in the journal's dialect.
func (j *SQLJournal) q(query string) string { return j.dialect.Q(query) }

// Put implements Journal.
func (j *SQLJournal) Put(ctx context.Context, s *tartarus.TerminationStatus) error {
	data, err := json.Marshal(s)
	if err != nil {
		return fmt.Errorf("encode termination %s: %w", s.SandboxID, err)
	}
	_, err = j.db.ExecContext(ctx, j.q(`INSERT INTO terminations (sandbox_id, tenant, phase, final, initiated_at, status)
		VALUES (?, ?, ?, ?, ?, ?)
		ON CONFLICT (sandbox_id) DO UPDATE SET tenant = excluded.tenant, phase = excluded.phase,
			final = excluded.final, initiated_at = excluded.initiated_at, status = excluded.status`),
		s.SandboxID, s.Tenant, string(s.Phase), boolInt(s.Phase.Final()), s.InitiatedAt.UnixNano(), string(data))
	if err != nil {
		return fmt.Errorf("put termination %s: %w", s.SandboxID, err)
	}
	return nil
}

// Get implements Journal.
func (j *SQLJournal) Get(ctx context.Context, id string) (*tartarus.TerminationStatus, error) {
	return sqldialect.GetJSON[tartarus.TerminationStatus](ctx, j.db, "termination of sandbox", id,
		j.q(`SELECT status FROM terminations WHERE sandbox_id = ?`), id)
}

// ListPending implements Journal.
func (j *SQLJournal) ListPending(ctx context.Context) ([]*tartarus.TerminationStatus, error) {
	rows, err := j.db.QueryContext(ctx, j.q(`SELECT status FROM terminations WHERE final = 0 ORDER BY initiated_at, sandbox_id`))
	if err != nil {
		return nil, fmt.Errorf("list pending terminations: %w", err)
	}
	return sqldialect.ScanJSON[*tartarus.TerminationStatus](rows, "termination")
}

// PutCheckpoint implements Journal.
func (j *SQLJournal) PutCheckpoint(ctx context.Context, c *tartarus.Checkpoint) error {
	data, err := json.Marshal(c)
	if err != nil {
		return fmt.Errorf("encode checkpoint %s: %w", c.ID, err)
	}
	_, err = j.db.ExecContext(ctx, j.q(`INSERT INTO checkpoints (id, sandbox_id, tenant, created_at, expires_at, checkpoint)
		VALUES (?, ?, ?, ?, ?, ?)
		ON CONFLICT (id) DO UPDATE SET sandbox_id = excluded.sandbox_id, tenant = excluded.tenant,
			created_at = excluded.created_at, expires_at = excluded.expires_at, checkpoint = excluded.checkpoint`),
		c.ID, c.SandboxID, c.Tenant, c.CreatedAt.UnixNano(), c.ExpiresAt.UnixNano(), string(data))
	if err != nil {
		return fmt.Errorf("put checkpoint %s: %w", c.ID, err)
	}
	return nil
}

// GetCheckpoint implements Journal.
func (j *SQLJournal) GetCheckpoint(ctx context.Context, id string) (*tartarus.Checkpoint, error) {
	return sqldialect.GetJSON[tartarus.Checkpoint](ctx, j.db, "checkpoint", id, j.q(`SELECT checkpoint FROM checkpoints WHERE id = ?`), id)
}

// ListCheckpoints implements Journal.
func (j *SQLJournal) ListCheckpoints(ctx context.Context, tenant string) ([]*tartarus.Checkpoint, error) {
	query, args := `SELECT checkpoint FROM checkpoints ORDER BY created_at, id`, []any(nil)
	if tenant != "" {
		query, args = `SELECT checkpoint FROM checkpoints WHERE tenant = ? ORDER BY created_at, id`, []any{tenant}
	}
	rows, err := j.db.QueryContext(ctx, j.q(query), args...)
	if err != nil {
		return nil, fmt.Errorf("list checkpoints: %w", err)
	}
	return sqldialect.ScanJSON[*tartarus.Checkpoint](rows, "checkpoint")
}

// ExpiredCheckpoints implements Journal.
func (j *SQLJournal) ExpiredCheckpoints(ctx context.Context, now time.Time) ([]*tartarus.Checkpoint, error) {
	rows, err := j.db.QueryContext(ctx, j.q(`SELECT checkpoint FROM checkpoints WHERE expires_at <= ? ORDER BY created_at, id`), now.UnixNano())
	if err != nil {
		return nil, fmt.Errorf("list expired checkpoints: %w", err)
	}
	return sqldialect.ScanJSON[*tartarus.Checkpoint](rows, "checkpoint")
}

// DeleteCheckpoint implements Journal.
func (j *SQLJournal) DeleteCheckpoint(ctx context.Context, id string) error {
	if _, err := j.db.ExecContext(ctx, j.q(`DELETE FROM checkpoints WHERE id = ?`), id); err != nil {
		return fmt.Errorf("delete checkpoint %s: %w", id, err)
	}
	return nil
}
