package persephone

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"github.com/tartarus-sandbox/tartarus/pkg/sqldialect"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

// Dialect is the SQL flavour of a *sql.DB.
type Dialect = sqldialect.Dialect

// The dialects SQLStore speaks.
const (
	SQLite   = sqldialect.SQLite
	Postgres = sqldialect.Postgres
)

// Schema creates Persephone's tables, one statement each; the store runs
// it among its own migrations (pkg/store). It works in both dialects:
// BIGINT and DOUBLE PRECISION are native to Postgres and accepted by
// SQLite. The primary key is the once-per-minute rule.
var Schema = []string{
	`CREATE TABLE IF NOT EXISTS persephone_usage (
		bucket      BIGINT NOT NULL,
		resolution  INTEGER NOT NULL,
		active_vms  BIGINT NOT NULL,
		queue_depth BIGINT NOT NULL,
		cpu_util    DOUBLE PRECISION NOT NULL,
		memory_util DOUBLE PRECISION NOT NULL,
		launches    BIGINT NOT NULL,
		errors      BIGINT NOT NULL,
		launches_by_template TEXT NOT NULL DEFAULT '{}',
		PRIMARY KEY (resolution, bucket)
	)`,
	`CREATE INDEX IF NOT EXISTS persephone_usage_bucket ON persephone_usage(bucket)`,
	`CREATE TABLE IF NOT EXISTS persephone_seasons (
		id     TEXT PRIMARY KEY,
		season TEXT NOT NULL
	)`,
}

// SchemaLater are the changes to Persephone's tables made after Schema was
// released: the store runs them after its later migrations (pkg/store),
// Migrate after Schema. Closed, like Schema: migrations follow it in the
// store (pkg/store's TestMigrationsOnlyGrow says so when one is inserted).
var SchemaLater = []string{
	`ALTER TABLE persephone_usage ADD COLUMN warm_launches BIGINT NOT NULL DEFAULT 0`,
	`ALTER TABLE persephone_usage ADD COLUMN cold_launches BIGINT NOT NULL DEFAULT 0`,
}

// Migrate creates Persephone's tables (persephone_usage, persephone_seasons)
// when they are missing; it is safe to run on every start.
func Migrate(ctx context.Context, db *sql.DB, d Dialect) error {
	if err := sqldialect.Migrate(ctx, db, "persephone", Schema); err != nil {
		return err
	}
	// SchemaLater's statements are not idempotent (SQLite has no ADD
	// COLUMN IF NOT EXISTS): a column already there is what they want.
	for _, q := range SchemaLater {
		if _, err := db.ExecContext(ctx, q); err != nil && !columnExists(err) {
			return fmt.Errorf("persephone migrate: %w", err)
		}
	}
	return nil
}

// columnExists says whether err is SQLite's or Postgres's refusal to add
// a column that exists.
func columnExists(err error) bool {
	msg := err.Error()
	return strings.Contains(msg, "duplicate column") || strings.Contains(msg, "already exists")
}

// SQLStore is a UsageStore over a *sql.DB (SQLite or Postgres) migrated
// with Migrate.
type SQLStore struct {
	db *sql.DB
	d  Dialect
}

var _ UsageStore = (*SQLStore)(nil)

// NewSQLStore returns a SQLStore; call Migrate first.
func NewSQLStore(db *sql.DB, d Dialect) *SQLStore { return &SQLStore{db: db, d: d} }

const insertUsage = `INSERT INTO persephone_usage
	(bucket, resolution, active_vms, queue_depth, cpu_util, memory_util, launches, errors, launches_by_template,
	warm_launches, cold_launches)
	VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (resolution, bucket) DO NOTHING`

type execer interface {
	ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error)
}

func (s *SQLStore) insert(ctx context.Context, ex execer, c *UsageRecord) (bool, error) {
	byT := []byte("{}")
	if len(c.LaunchesByTemplate) > 0 {
		byT, _ = json.Marshal(c.LaunchesByTemplate)
	}
	res, err := ex.ExecContext(ctx, s.d.Q(insertUsage), c.Timestamp.Unix(), int64(c.Resolution/time.Second),
		c.ActiveVMs, c.QueueDepth, c.CPUUtil, c.MemoryUtil, c.LaunchCount, c.ErrorCount, string(byT),
		c.WarmLaunches, c.ColdLaunches)
	if err != nil {
		return false, fmt.Errorf("insert usage %s: %w", c.Timestamp, err)
	}
	n, err := res.RowsAffected()
	if err != nil {
		return false, fmt.Errorf("insert usage %s: %w", c.Timestamp, err)
	}
	return n == 1, nil
}

// Record implements UsageStore.
func (s *SQLStore) Record(ctx context.Context, r *UsageRecord) (bool, error) {
	c, err := normalise(r)
	if err != nil {
		return false, err
	}
	return s.insert(ctx, s.db, c)
}

// Range implements UsageStore.
func (s *SQLStore) Range(ctx context.Context, from, to time.Time) ([]*UsageRecord, error) {
	return s.rangeWhere(ctx, s.db, "bucket >= ? AND bucket < ?", from.Unix(), to.Unix())
}

type querier interface {
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
}

func (s *SQLStore) rangeWhere(ctx context.Context, qr querier, where string, args ...any) ([]*UsageRecord, error) {
	rows, err := qr.QueryContext(ctx, s.d.Q(`SELECT bucket, resolution, active_vms, queue_depth, cpu_util, memory_util,
		launches, errors, launches_by_template, warm_launches, cold_launches FROM persephone_usage WHERE `+where+` ORDER BY bucket, resolution`), args...)
	if err != nil {
		return nil, fmt.Errorf("read usage: %w", err)
	}
	defer rows.Close()
	var out []*UsageRecord
	for rows.Next() {
		var bucket, res int64
		var byT string
		r := &UsageRecord{}
		if err := rows.Scan(&bucket, &res, &r.ActiveVMs, &r.QueueDepth, &r.CPUUtil, &r.MemoryUtil, &r.LaunchCount, &r.ErrorCount, &byT,
			&r.WarmLaunches, &r.ColdLaunches); err != nil {
			return nil, fmt.Errorf("read usage: %w", err)
		}
		r.Timestamp, r.Resolution = time.Unix(bucket, 0).UTC(), time.Duration(res)*time.Second
		if byT != "{}" && byT != "" {
			if err := json.Unmarshal([]byte(byT), &r.LaunchesByTemplate); err != nil {
				return nil, tartarus.Errorf(tartarus.ErrInvalid, "usage row %d: launches_by_template: %v", bucket, err)
			}
		}
		out = append(out, r)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("read usage: %w", err)
	}
	return out, nil
}

// Compact implements UsageStore in one transaction, so that a crash leaves
// either the minute rows or their hourly rows, never neither.
func (s *SQLStore) Compact(ctx context.Context, now time.Time, keep Retention) error {
	if err := keep.Validate(); err != nil {
		return err
	}
	minuteCut := now.Add(-keep.Minutes).Truncate(time.Hour).Unix()
	hourCut := now.Add(-keep.Hours).Unix()
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("compact usage: %w", err)
	}
	defer tx.Rollback()
	old, err := s.rangeWhere(ctx, tx, "resolution = 60 AND bucket < ?", minuteCut)
	if err != nil {
		return fmt.Errorf("compact usage: %w", err)
	}
	for _, h := range Downsample(old, time.Hour) {
		if h.Timestamp.Unix() < hourCut {
			continue
		}
		if _, err := s.insert(ctx, tx, h); err != nil {
			return fmt.Errorf("compact usage: %w", err)
		}
	}
	if _, err := tx.ExecContext(ctx, s.d.Q(`DELETE FROM persephone_usage WHERE resolution = 60 AND bucket < ?`), minuteCut); err != nil {
		return fmt.Errorf("compact usage: %w", err)
	}
	if _, err := tx.ExecContext(ctx, s.d.Q(`DELETE FROM persephone_usage WHERE resolution = 3600 AND bucket < ?`), hourCut); err != nil {
		return fmt.Errorf("compact usage: %w", err)
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("compact usage: %w", err)
	}
	return nil
}

// pinRow is the persephone_seasons row holding the pinned season's ID; no
// season ID can start with "@".
const pinRow = "@pinned"

// SaveSeason implements SeasonStore.
func (s *SQLStore) SaveSeason(ctx context.Context, season *Season) error {
	if err := season.Validate(); err != nil {
		return err
	}
	b, err := json.Marshal(season)
	if err != nil {
		return fmt.Errorf("save season %s: %w", season.ID, err)
	}
	return s.put(ctx, season.ID, string(b))
}

func (s *SQLStore) put(ctx context.Context, id, value string) error {
	_, err := s.db.ExecContext(ctx, s.d.Q(`INSERT INTO persephone_seasons (id, season) VALUES (?, ?)
		ON CONFLICT (id) DO UPDATE SET season = excluded.season`), id, value)
	if err != nil {
		return fmt.Errorf("save season %s: %w", id, err)
	}
	return nil
}

// LoadSeasons implements SeasonStore.
func (s *SQLStore) LoadSeasons(ctx context.Context) ([]*Season, string, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT id, season FROM persephone_seasons ORDER BY id`)
	if err != nil {
		return nil, "", fmt.Errorf("load seasons: %w", err)
	}
	defer rows.Close()
	var out []*Season
	pinned := ""
	for rows.Next() {
		var id, v string
		if err := rows.Scan(&id, &v); err != nil {
			return nil, "", fmt.Errorf("load seasons: %w", err)
		}
		if id == pinRow {
			pinned = v
			continue
		}
		var season Season
		if err := json.Unmarshal([]byte(v), &season); err != nil {
			return nil, "", fmt.Errorf("load season %s: %w", id, err)
		}
		out = append(out, &season)
	}
	if err := rows.Err(); err != nil {
		return nil, "", fmt.Errorf("load seasons: %w", err)
	}
	return out, pinned, nil
}

// SavePin implements SeasonStore.
func (s *SQLStore) SavePin(ctx context.Context, id string) error { return s.put(ctx, pinRow, id) }
