package phlegethon

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"time"

	"github.com/tartarus-sandbox/tartarus/pkg/sqldialect"
)

// Dialect is the SQL database a SQLJournal speaks.
type Dialect = sqldialect.Dialect

// The dialects.
const (
	SQLite   = sqldialect.SQLite
	Postgres = sqldialect.Postgres
)

// Schema creates the tables; the store runs it among its migrations
// (pkg/store componentSchema). The SQL is the same on both dialects: TEXT
// and BIGINT (unix nanoseconds) only. Append only.
var Schema = []string{
	`CREATE TABLE IF NOT EXISTS heat_queue (
		id         TEXT PRIMARY KEY,
		seq        BIGINT NOT NULL,
		heat       TEXT NOT NULL,
		status     TEXT NOT NULL,
		finished_at BIGINT NOT NULL,
		record     TEXT NOT NULL
	)`,
	`CREATE INDEX IF NOT EXISTS heat_queue_status ON heat_queue (status, seq)`,
	`CREATE TABLE IF NOT EXISTS heat_pools (
		name TEXT PRIMARY KEY,
		pool TEXT NOT NULL
	)`,
	`CREATE TABLE IF NOT EXISTS heat_observations (
		template    TEXT NOT NULL,
		observed_at BIGINT NOT NULL,
		observation TEXT NOT NULL
	)`,
	`CREATE INDEX IF NOT EXISTS heat_observations_template ON heat_observations (template, observed_at)`,
}

// Migrate creates the heat_queue, heat_pools and heat_observations tables
// if they are missing.
// It is idempotent; the store's migrations should call it (under their lock
// on Postgres).
func Migrate(ctx context.Context, db *sql.DB) error {
	return sqldialect.Migrate(ctx, db, "phlegethon", Schema)
}

// SQLJournal is a Journal, a PoolStore and an ObservationStore in a SQL
// database (SQLite or Postgres). Each row keeps the whole record as JSON beside the columns it
// is queried by.
type SQLJournal struct {
	db      *sql.DB
	dialect Dialect
}

var (
	_ Journal          = (*SQLJournal)(nil)
	_ PoolStore        = (*SQLJournal)(nil)
	_ ObservationStore = (*SQLJournal)(nil)
)

// NewSQLJournal returns a journal over db; call Migrate first.
func NewSQLJournal(db *sql.DB, dialect Dialect) (*SQLJournal, error) {
	if err := dialect.Validate(); err != nil {
		return nil, fmt.Errorf("sql journal: %w", err)
	}
	return &SQLJournal{db: db, dialect: dialect}, nil
}

// q writes query's ? placeholders in the journal's dialect.
func (j *SQLJournal) q(query string) string { return j.dialect.Q(query) }

// Put implements Journal.
func (j *SQLJournal) Put(ctx context.Context, r *Record) error {
	data, err := json.Marshal(r)
	if err != nil {
		return fmt.Errorf("encode queued create %s: %w", r.ID, err)
	}
	var finished int64
	if !r.FinishedAt.IsZero() {
		finished = r.FinishedAt.UnixNano()
	}
	_, err = j.db.ExecContext(ctx, j.q(`INSERT INTO heat_queue (id, seq, heat, status, finished_at, record)
		VALUES (?, ?, ?, ?, ?, ?)
		ON CONFLICT (id) DO UPDATE SET seq = excluded.seq, heat = excluded.heat, status = excluded.status,
			finished_at = excluded.finished_at, record = excluded.record`),
		r.ID, r.Seq, string(r.Heat), string(r.Status), finished, string(data))
	if err != nil {
		return fmt.Errorf("put queued create %s: %w", r.ID, err)
	}
	return nil
}

// Get implements Journal.
func (j *SQLJournal) Get(ctx context.Context, id string) (*Record, error) {
	return sqldialect.GetJSON[Record](ctx, j.db, "queued create", id, j.q(`SELECT record FROM heat_queue WHERE id = ?`), id)
}

// Queued implements Journal.
func (j *SQLJournal) Queued(ctx context.Context) ([]*Record, error) {
	rows, err := j.db.QueryContext(ctx, j.q(`SELECT record FROM heat_queue WHERE status = ? ORDER BY seq, id`), string(StatusQueued))
	if err != nil {
		return nil, fmt.Errorf("list queued creates: %w", err)
	}
	return sqldialect.ScanJSON[*Record](rows, "queued create")
}

// Prune implements Journal.
func (j *SQLJournal) Prune(ctx context.Context, before time.Time) (int, error) {
	res, err := j.db.ExecContext(ctx, j.q(`DELETE FROM heat_queue WHERE status <> ? AND finished_at < ?`), string(StatusQueued), before.UnixNano())
	if err != nil {
		return 0, fmt.Errorf("prune queued creates: %w", err)
	}
	n, _ := res.RowsAffected()
	return int(n), nil
}

// PutPool implements PoolStore.
func (j *SQLJournal) PutPool(ctx context.Context, p *Pool) error {
	data, err := json.Marshal(p)
	if err != nil {
		return fmt.Errorf("encode pool %s: %w", p.Name, err)
	}
	_, err = j.db.ExecContext(ctx, j.q(`INSERT INTO heat_pools (name, pool) VALUES (?, ?)
		ON CONFLICT (name) DO UPDATE SET pool = excluded.pool`), p.Name, string(data))
	if err != nil {
		return fmt.Errorf("put pool %s: %w", p.Name, err)
	}
	return nil
}

// DeletePool implements PoolStore.
func (j *SQLJournal) DeletePool(ctx context.Context, name string) error {
	if _, err := j.db.ExecContext(ctx, j.q(`DELETE FROM heat_pools WHERE name = ?`), name); err != nil {
		return fmt.Errorf("delete pool %s: %w", name, err)
	}
	return nil
}

// ListPools implements PoolStore.
func (j *SQLJournal) ListPools(ctx context.Context) ([]Pool, error) {
	rows, err := j.db.QueryContext(ctx, `SELECT pool FROM heat_pools ORDER BY name`)
	if err != nil {
		return nil, fmt.Errorf("list pools: %w", err)
	}
	return sqldialect.ScanJSON[Pool](rows, "pool")
}

// PutObservation implements ObservationStore.
func (j *SQLJournal) PutObservation(ctx context.Context, o *HeatObservation) error {
	data, err := json.Marshal(o)
	if err != nil {
		return fmt.Errorf("encode observation of %s: %w", o.TemplateID, err)
	}
	_, err = j.db.ExecContext(ctx, j.q(`INSERT INTO heat_observations (template, observed_at, observation) VALUES (?, ?, ?)`),
		o.TemplateID, o.Timestamp.UnixNano(), string(data))
	if err != nil {
		return fmt.Errorf("put observation of %s: %w", o.TemplateID, err)
	}
	return nil
}

// RecentObservations implements ObservationStore. It reads every kept run
// (Prune bounds them) and keeps the newest of each template here, which
// needs no window functions and so reads the same on both dialects.
func (j *SQLJournal) RecentObservations(ctx context.Context, perTemplate int) ([]HeatObservation, error) {
	rows, err := j.db.QueryContext(ctx, `SELECT observation FROM heat_observations ORDER BY observed_at`)
	if err != nil {
		return nil, fmt.Errorf("list observations: %w", err)
	}
	all, err := sqldialect.ScanJSON[HeatObservation](rows, "observation")
	if err != nil {
		return nil, err
	}
	return newestPerTemplate(all, perTemplate), nil
}

// PruneObservations implements ObservationStore.
func (j *SQLJournal) PruneObservations(ctx context.Context, before time.Time) (int, error) {
	res, err := j.db.ExecContext(ctx, j.q(`DELETE FROM heat_observations WHERE observed_at < ?`), before.UnixNano())
	if err != nil {
		return 0, fmt.Errorf("prune observations: %w", err)
	}
	n, _ := res.RowsAffected()
	return int(n), nil
}
