package typhon

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
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

// Schema creates the journal's tables, one statement each, the same SQL on
// both dialects (TEXT and BIGINT only). pkg/store runs it among its
// migrations; Migrate runs it on a database of the journal's own. Closed:
// pkg/store numbers its migrations by position and later ones follow this
// list, so a change to these tables goes in a list of its own after them.
var Schema = []string{
	`CREATE TABLE IF NOT EXISTS quarantines (
		id          TEXT PRIMARY KEY,
		sandbox_id  TEXT NOT NULL,
		status      TEXT NOT NULL,
		created_at  BIGINT NOT NULL,
		record      TEXT NOT NULL
	)`,
	`CREATE INDEX IF NOT EXISTS quarantines_sandbox ON quarantines (sandbox_id, created_at)`,
	`CREATE TABLE IF NOT EXISTS quarantine_reports (
		id          TEXT PRIMARY KEY,
		sandbox_id  TEXT NOT NULL,
		examined_at BIGINT NOT NULL,
		report      TEXT NOT NULL
	)`,
	`CREATE INDEX IF NOT EXISTS quarantine_reports_sandbox ON quarantine_reports (sandbox_id, examined_at)`,
	`CREATE TABLE IF NOT EXISTS quarantine_policy (
		id      TEXT PRIMARY KEY,
		policy  TEXT NOT NULL
	)`,
	// Who acted in each sandbox before any quarantine (ActorJournal).
	`CREATE TABLE IF NOT EXISTS quarantine_actors (
		sandbox_id  TEXT NOT NULL,
		actor       TEXT NOT NULL,
		at          BIGINT NOT NULL,
		PRIMARY KEY (sandbox_id, actor)
	)`,
}

// Migrate creates the journal's tables if missing. Idempotent.
func Migrate(ctx context.Context, db *sql.DB) error {
	return sqldialect.Migrate(ctx, db, "typhon", Schema)
}

// SQLJournal is a Journal over SQLite or Postgres.
type SQLJournal struct {
	db *sql.DB
	d  Dialect
}

var _ Journal = (*SQLJournal)(nil)

// NewSQLJournal returns a journal over db, whose tables Schema made.
func NewSQLJournal(db *sql.DB, d Dialect) (*SQLJournal, error) {
	if err := d.Validate(); err != nil {
		return nil, err
	}
	return &SQLJournal{db: db, d: d}, nil
}

func (j *SQLJournal) q(s string) string { return j.d.Q(s) }

func (j *SQLJournal) upsert(ctx context.Context, table, cols string, args ...any) error {
	ph := strings.TrimSuffix(strings.Repeat("?,", len(args)), ",")
	first := strings.SplitN(cols, ",", 2)[0]
	var set []string
	for _, c := range strings.Split(cols, ",")[1:] {
		set = append(set, c+"=excluded."+c)
	}
	_, err := j.db.ExecContext(ctx, j.q(fmt.Sprintf("INSERT INTO %s (%s) VALUES (%s) ON CONFLICT (%s) DO UPDATE SET %s",
		table, cols, ph, first, strings.Join(set, ","))), args...)
	return err
}

// PutRecord implements Journal.
func (j *SQLJournal) PutRecord(ctx context.Context, rec *QuarantineRecord) error {
	b, err := json.Marshal(cloneRecord(rec))
	if err != nil {
		return fmt.Errorf("encode quarantine %s: %w", rec.ID, err)
	}
	if err := j.upsert(ctx, "quarantines", "id,sandbox_id,status,created_at,record",
		rec.ID, rec.SandboxID, string(rec.Status), rec.QuarantinedAt.UnixNano(), string(b)); err != nil {
		return fmt.Errorf("store quarantine %s: %w", rec.ID, err)
	}
	return nil
}

// Records implements Journal.
func (j *SQLJournal) Records(ctx context.Context) ([]*QuarantineRecord, error) {
	rows, err := j.db.QueryContext(ctx, `SELECT record FROM quarantines ORDER BY created_at, id`)
	if err != nil {
		return nil, fmt.Errorf("list quarantines: %w", err)
	}
	return sqldialect.ScanJSON[*QuarantineRecord](rows, "quarantine")
}

// Held returns the records of held sandboxes (active or examining), for
// Manager.Refresh, which a cluster's replicas run every second.
func (j *SQLJournal) Held(ctx context.Context) ([]*QuarantineRecord, error) {
	rows, err := j.db.QueryContext(ctx, `SELECT record FROM quarantines WHERE status IN ('active', 'examining') ORDER BY created_at, id`)
	if err != nil {
		return nil, fmt.Errorf("list held quarantines: %w", err)
	}
	return sqldialect.ScanJSON[*QuarantineRecord](rows, "quarantine")
}

var _ ActorJournal = (*SQLJournal)(nil)

// AddActor implements ActorJournal.
func (j *SQLJournal) AddActor(ctx context.Context, sandboxID, actor string, at time.Time) error {
	_, err := j.db.ExecContext(ctx, j.q(`INSERT INTO quarantine_actors (sandbox_id, actor, at) VALUES (?, ?, ?)
		ON CONFLICT (sandbox_id, actor) DO UPDATE SET at = excluded.at`), sandboxID, actor, at.UnixNano())
	if err != nil {
		return fmt.Errorf("note actor of %s: %w", sandboxID, err)
	}
	return nil
}

// Actors implements ActorJournal.
func (j *SQLJournal) Actors(ctx context.Context, sandboxID string, max int) ([]string, error) {
	rows, err := j.db.QueryContext(ctx, j.q(`SELECT actor FROM quarantine_actors WHERE sandbox_id = ? ORDER BY at DESC, actor LIMIT ?`), sandboxID, max)
	if err != nil {
		return nil, fmt.Errorf("actors of %s: %w", sandboxID, err)
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var a string
		if err := rows.Scan(&a); err != nil {
			return nil, fmt.Errorf("actors of %s: %w", sandboxID, err)
		}
		out = append(out, a)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("actors of %s: %w", sandboxID, err)
	}
	slices.Reverse(out)
	return out, nil
}

// ForgetActors implements ActorJournal.
func (j *SQLJournal) ForgetActors(ctx context.Context, before time.Time, keep func(sandboxID string) bool) error {
	rows, err := j.db.QueryContext(ctx, j.q(`SELECT DISTINCT sandbox_id FROM quarantine_actors WHERE at < ?`), before.UnixNano())
	if err != nil {
		return fmt.Errorf("list actors: %w", err)
	}
	var gone []string
	for rows.Next() {
		var id string
		if err := rows.Scan(&id); err != nil {
			rows.Close()
			return fmt.Errorf("list actors: %w", err)
		}
		if !keep(id) {
			gone = append(gone, id)
		}
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return fmt.Errorf("list actors: %w", err)
	}
	for _, id := range gone {
		if _, err := j.db.ExecContext(ctx, j.q(`DELETE FROM quarantine_actors WHERE sandbox_id = ? AND at < ?`), id, before.UnixNano()); err != nil {
			return fmt.Errorf("forget actors of %s: %w", id, err)
		}
	}
	return nil
}

// PutReport implements Journal.
func (j *SQLJournal) PutReport(ctx context.Context, rep *ExaminationReport) error {
	b, err := json.Marshal(rep)
	if err != nil {
		return fmt.Errorf("encode report %s: %w", rep.ID, err)
	}
	if err := j.upsert(ctx, "quarantine_reports", "id,sandbox_id,examined_at,report",
		rep.ID, rep.SandboxID, rep.ExaminedAt.UnixNano(), string(b)); err != nil {
		return fmt.Errorf("store report %s: %w", rep.ID, err)
	}
	return nil
}

// Reports implements Journal.
func (j *SQLJournal) Reports(ctx context.Context, sandboxID string) ([]*ExaminationReport, error) {
	rows, err := j.db.QueryContext(ctx, j.q(`SELECT report FROM quarantine_reports WHERE sandbox_id = ? ORDER BY examined_at, id`), sandboxID)
	if err != nil {
		return nil, fmt.Errorf("list reports: %w", err)
	}
	return sqldialect.ScanJSON[*ExaminationReport](rows, "report")
}

// PutPolicy implements Journal.
func (j *SQLJournal) PutPolicy(ctx context.Context, p *QuarantinePolicy) error {
	b, err := json.Marshal(p)
	if err != nil {
		return fmt.Errorf("encode policy: %w", err)
	}
	if err := j.upsert(ctx, "quarantine_policy", "id,policy", "current", string(b)); err != nil {
		return fmt.Errorf("store policy: %w", err)
	}
	return nil
}

// Policy implements Journal.
func (j *SQLJournal) Policy(ctx context.Context) (*QuarantinePolicy, error) {
	p, err := sqldialect.GetJSON[QuarantinePolicy](ctx, j.db, "quarantine policy", "current",
		`SELECT policy FROM quarantine_policy WHERE id = 'current'`)
	if errors.Is(err, tartarus.ErrNotFound) {
		return nil, nil
	}
	return p, err
}
