package typhon

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// Dialect is the SQL database a SQLJournal speaks.
type Dialect string

// The dialects.
const (
	SQLite   Dialect = "sqlite"
	Postgres Dialect = "postgres"
)

// Schema creates the journal's tables, one statement each, the same SQL on
// both dialects (TEXT and BIGINT only). pkg/store runs it among its
// migrations; Migrate runs it on a database of the journal's own.
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
}

// Migrate creates the journal's tables if missing. Idempotent.
func Migrate(ctx context.Context, db *sql.DB) error {
	for _, q := range Schema {
		if _, err := db.ExecContext(ctx, q); err != nil {
			return fmt.Errorf("typhon migrate: %w", err)
		}
	}
	return nil
}

// SQLJournal is a Journal over SQLite or Postgres.
type SQLJournal struct {
	db *sql.DB
	d  Dialect
}

var _ Journal = (*SQLJournal)(nil)

// NewSQLJournal returns a journal over db, whose tables Schema made.
func NewSQLJournal(db *sql.DB, d Dialect) (*SQLJournal, error) {
	if d != SQLite && d != Postgres {
		return nil, fmt.Errorf("typhon: dialect %q: want sqlite or postgres", d)
	}
	return &SQLJournal{db: db, d: d}, nil
}

// q numbers the placeholders for Postgres.
func (j *SQLJournal) q(s string) string {
	if j.d != Postgres {
		return s
	}
	var b strings.Builder
	n := 0
	for _, c := range s {
		if c == '?' {
			n++
			b.WriteString("$" + strconv.Itoa(n))
			continue
		}
		b.WriteRune(c)
	}
	return b.String()
}

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
	defer rows.Close()
	var out []*QuarantineRecord
	for rows.Next() {
		var s string
		if err := rows.Scan(&s); err != nil {
			return nil, fmt.Errorf("list quarantines: %w", err)
		}
		var r QuarantineRecord
		if err := json.Unmarshal([]byte(s), &r); err != nil {
			return nil, fmt.Errorf("decode quarantine: %w", err)
		}
		out = append(out, &r)
	}
	return out, rows.Err()
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
	defer rows.Close()
	var out []*ExaminationReport
	for rows.Next() {
		var s string
		if err := rows.Scan(&s); err != nil {
			return nil, fmt.Errorf("list reports: %w", err)
		}
		var r ExaminationReport
		if err := json.Unmarshal([]byte(s), &r); err != nil {
			return nil, fmt.Errorf("decode report: %w", err)
		}
		out = append(out, &r)
	}
	return out, rows.Err()
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
	var s string
	err := j.db.QueryRowContext(ctx, `SELECT policy FROM quarantine_policy WHERE id = 'current'`).Scan(&s)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read policy: %w", err)
	}
	var p QuarantinePolicy
	if err := json.Unmarshal([]byte(s), &p); err != nil {
		return nil, fmt.Errorf("decode policy: %w", err)
	}
	return &p, nil
}
