package store

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/tartarus-sandbox/tartarus/pkg/persephone"
	"github.com/tartarus-sandbox/tartarus/pkg/phlegethon"
	"github.com/tartarus-sandbox/tartarus/pkg/sqldialect"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
	"github.com/tartarus-sandbox/tartarus/pkg/thanatos"
	"github.com/tartarus-sandbox/tartarus/pkg/typhon"
)

// SQL is the Store written once over database/sql. SQLite and Postgres
// embed it, opened on their own driver with their own dialect.
type SQL struct {
	db *sql.DB
	d  *dialect
}

var (
	_ Store             = (*SQL)(nil)
	_ SleepRecordKeeper = (*SQL)(nil)
)

// dialect is what differs between the databases SQL runs on; the
// statements are otherwise the same text.
type dialect struct {
	// migrations are applied in order; the index+1 is the schema version.
	// Never edit a released migration: append a new one.
	migrations []string
	// lockMigrations, when not empty, runs first in the migration
	// transaction, so that servers starting at once migrate one after the
	// other and the later ones find nothing left to do.
	lockMigrations string
	// numbered is set when placeholders are $1, $2, … instead of ?.
	numbered bool
	// greatest is the SQL function for the larger of two values.
	greatest string
	// isDuplicate says whether err is a primary or unique key violation.
	isDuplicate func(err error) bool
}

// q returns query, written with ? placeholders, in the dialect's own.
func (d *dialect) q(query string) string {
	if d.numbered {
		return sqldialect.Numbered(query)
	}
	return query
}

// openSQL opens db in d and brings its schema up to date.
// componentSchema are the tables of the components that keep their state
// in the store's database, run after each dialect's own migrations, in
// this order: Thanatos's terminations and checkpoints; Phlegethon's
// admission queue, pools and observations, then the sandboxes' heat
// column (JSON of tartarus.SandboxHeat; empty when none); Persephone's usage
// history and seasons. Append only.
func componentSchema() []string {
	return slices.Concat(thanatos.Schema, phlegethon.Schema,
		[]string{`ALTER TABLE sandboxes ADD COLUMN heat TEXT NOT NULL DEFAULT ''`}, persephone.Schema)
}

// laterMigrations come after the component schema in both dialects (it
// was released before them, so they cannot go in a dialect's own list
// without renumbering it). The SQL is common to SQLite and Postgres.
// Append only.
var laterMigrations = slices.Concat([]string{
	// A sandbox's network spec (JSON; empty: no network).
	`ALTER TABLE sandboxes ADD COLUMN network TEXT NOT NULL DEFAULT ''`,
},
	// Typhon's quarantine records, reports and policy.
	typhon.Schema,
	// Persephone's warm and cold launches.
	persephone.SchemaLater,
	// A cluster's tenant template versions kept in the shared store, and
	// their tags (templates.go; unused by a single node's SQLite).
	templateSchema,
)

// QuarantineKeeper is the optional side interface of a Store that keeps
// Typhon's quarantine records, reports and policy in its own database, so
// that a quarantine survives a restart of the server.
type QuarantineKeeper interface {
	Quarantines() typhon.Journal
}

var _ QuarantineKeeper = (*SQL)(nil)

// Quarantines implements QuarantineKeeper.
func (s *SQL) Quarantines() typhon.Journal {
	d := typhon.SQLite
	if s.d.numbered {
		d = typhon.Postgres
	}
	j, _ := typhon.NewSQLJournal(s.db, d) // d is one of the two
	return j
}

// TerminationKeeper is the optional side interface of a Store that keeps
// Thanatos's terminations and checkpoints in its own database (SQLite and
// Postgres do), so that a termination survives a crash of its node.
type TerminationKeeper interface {
	Terminations() thanatos.Journal
}

var _ TerminationKeeper = (*SQL)(nil)

// HeatKeeper is the optional side interface of a Store that keeps
// Phlegethon's admission queue, pools and observations in its own database
// (SQLite and Postgres do), so that a queued create survives a restart.
type HeatKeeper interface {
	Heat() *phlegethon.SQLJournal
}

var _ HeatKeeper = (*SQL)(nil)

// Heat implements HeatKeeper.
func (s *SQL) Heat() *phlegethon.SQLJournal {
	d := phlegethon.SQLite
	if s.d.numbered {
		d = phlegethon.Postgres
	}
	j, _ := phlegethon.NewSQLJournal(s.db, d) // d is one of the two
	return j
}

// Terminations implements TerminationKeeper.
func (s *SQL) Terminations() thanatos.Journal {
	d := thanatos.SQLite
	if s.d.numbered {
		d = thanatos.Postgres
	}
	j, _ := thanatos.NewSQLJournal(s.db, d) // d is one of the two
	return j
}

// UsageKeeper is the optional side interface of a Store that keeps
// Persephone's per-minute usage history and seasons in its own database
// (SQLite and Postgres do), so that every replica records into and
// forecasts from one history.
type UsageKeeper interface {
	Usage() *persephone.SQLStore
	// Launches counts the sandboxes created in [from, to), by template.
	Launches(ctx context.Context, from, to time.Time) (map[string]LaunchCount, error)
}

// LaunchCount is how many sandboxes of a template were created in a span,
// and how many of those failed.
type LaunchCount struct {
	Launches, Failed int
}

var _ UsageKeeper = (*SQL)(nil)

// Usage implements UsageKeeper: the store is both Persephone's UsageStore
// and its SeasonStore.
func (s *SQL) Usage() *persephone.SQLStore {
	d := persephone.SQLite
	if s.d.numbered {
		d = persephone.Postgres
	}
	return persephone.NewSQLStore(s.db, d)
}

// Launches implements UsageKeeper. Every replica's creates are in the
// table, so in a cluster any replica counts them all.
func (s *SQL) Launches(ctx context.Context, from, to time.Time) (map[string]LaunchCount, error) {
	rows, err := s.db.QueryContext(ctx, s.d.q(`SELECT template, state, COUNT(*) FROM sandboxes
		WHERE created_at >= ? AND created_at < ? GROUP BY template, state`), nanos(from), nanos(to))
	if err != nil {
		return nil, fmt.Errorf("count launches: %w", err)
	}
	defer rows.Close()
	out := map[string]LaunchCount{}
	for rows.Next() {
		var tpl, state string
		var n int
		if err := rows.Scan(&tpl, &state, &n); err != nil {
			return nil, fmt.Errorf("count launches: %w", err)
		}
		c := out[tpl]
		c.Launches += n
		if tartarus.State(state) == tartarus.StateFailed {
			c.Failed += n
		}
		out[tpl] = c
	}
	return out, rows.Err()
}

// openSQL opens db in d and brings its schema up to date.
func openSQL(ctx context.Context, db *sql.DB, d *dialect) (*SQL, error) {
	s := &SQL{db: db, d: d}
	if err := s.migrate(ctx); err != nil {
		return nil, err
	}
	return s, nil
}

// migrate runs every missing migration in one transaction.
func (s *SQL) migrate(ctx context.Context) error {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	if s.d.lockMigrations != "" {
		if _, err := tx.ExecContext(ctx, s.d.lockMigrations); err != nil {
			return fmt.Errorf("migration lock: %w", err)
		}
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
	ms := s.d.migrations
	if v > len(ms) {
		return fmt.Errorf("database schema version %d is newer than this binary's %d", v, len(ms))
	}
	for i := v; i < len(ms); i++ {
		if _, err := tx.ExecContext(ctx, ms[i]); err != nil {
			return fmt.Errorf("migration %d: %w", i+1, err)
		}
	}
	if _, err := tx.ExecContext(ctx, s.d.q(`UPDATE schema_version SET version = ?`), len(ms)); err != nil {
		return err
	}
	return tx.Commit()
}

// Close closes the database.
func (s *SQL) Close() error { return s.db.Close() }

const columns = `id, tenant, template, runtime, state, node, cpus, memory_mb, env, metadata,
	created_at, updated_at, expires_at, last_activity_at, error, auto_hibernate_s, snapshot_bytes, heat, network`

// insertColumns inserts one sandbox; its arguments are sandboxArgs.
const insertColumns = `INSERT INTO sandboxes (` + columns + `) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)`

// sandboxArgs returns sb's values in the order of columns.
func sandboxArgs(sb *tartarus.Sandbox) ([]any, error) {
	env, err := json.Marshal(orEmpty(sb.Env))
	if err != nil {
		return nil, fmt.Errorf("sandbox %s env: %w", sb.ID, err)
	}
	md, err := json.Marshal(orEmpty(sb.Metadata))
	if err != nil {
		return nil, fmt.Errorf("sandbox %s metadata: %w", sb.ID, err)
	}
	heat := ""
	if sb.Heat != nil {
		b, err := json.Marshal(sb.Heat)
		if err != nil {
			return nil, fmt.Errorf("sandbox %s heat: %w", sb.ID, err)
		}
		heat = string(b)
	}
	var network []byte
	if sb.Network != nil {
		if network, err = json.Marshal(sb.Network); err != nil {
			return nil, fmt.Errorf("sandbox %s network: %w", sb.ID, err)
		}
	}
	return []any{sb.ID, sb.Tenant, sb.Template, sb.Runtime, string(sb.State), sb.Node, sb.CPUs, sb.MemoryMB,
		string(env), string(md), nanos(sb.CreatedAt), nanos(sb.UpdatedAt), nanos(sb.ExpiresAt),
		nanos(sb.LastActivityAt), sb.Error, sb.AutoHibernateS, sb.SnapshotBytes, heat, string(network)}, nil
}

// execer is a *sql.DB or a *sql.Tx.
type execer interface {
	ExecContext(ctx context.Context, q string, args ...any) (sql.Result, error)
}

// insertSandbox inserts sb through ex (the database, or a transaction of
// the cluster's placement).
func (s *SQL) insertSandbox(ctx context.Context, ex execer, sb *tartarus.Sandbox) error {
	args, err := sandboxArgs(sb)
	if err != nil {
		return err
	}
	if _, err := ex.ExecContext(ctx, s.d.q(insertColumns), args...); err != nil {
		return fmt.Errorf("insert sandbox %s: %w", sb.ID, err)
	}
	return nil
}

// Create implements Store.
func (s *SQL) Create(ctx context.Context, sb *tartarus.Sandbox) error {
	err := s.insertSandbox(ctx, s.db, sb)
	if err != nil && s.d.isDuplicate(err) {
		return tartarus.Errorf(tartarus.ErrAlreadyExists, "sandbox %s", sb.ID)
	}
	return err
}

// Get implements Store.
func (s *SQL) Get(ctx context.Context, id string) (*tartarus.Sandbox, error) {
	sb, err := scan(s.db.QueryRowContext(ctx, s.d.q(`SELECT `+columns+` FROM sandboxes WHERE id = ?`), id))
	if errors.Is(err, sql.ErrNoRows) {
		return nil, tartarus.Errorf(tartarus.ErrNotFound, "sandbox %s", id)
	}
	if err != nil {
		return nil, fmt.Errorf("get sandbox %s: %w", id, err)
	}
	return sb, nil
}

// List implements Store.
func (s *SQL) List(ctx context.Context, f tartarus.SandboxFilter) ([]*tartarus.Sandbox, error) {
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
	rows, err := s.db.QueryContext(ctx, s.d.q(q), args...)
	if err != nil {
		return nil, fmt.Errorf("list sandboxes: %w", err)
	}
	defer rows.Close()
	var out []*tartarus.Sandbox
	for rows.Next() {
		sb, err := scan(rows)
		if err != nil {
			return nil, fmt.Errorf("list sandboxes: %w", err)
		}
		out = append(out, sb)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list sandboxes: %w", err)
	}
	return out, nil
}

// Move implements Store. The row comes back from the UPDATE itself
// (RETURNING), so it is the state this move made, not a later writer's.
func (s *SQL) Move(ctx context.Context, id string, from, to tartarus.State, c Change) (*tartarus.Sandbox, error) {
	if err := tartarus.CheckMove(from, to); err != nil {
		return nil, fmt.Errorf("sandbox %s: %w", id, err)
	}
	sb, err := scan(s.db.QueryRowContext(ctx, s.d.q(
		`UPDATE sandboxes SET state = ?, updated_at = ?, error = CASE WHEN ? = '' THEN error ELSE ? END,
		 snapshot_bytes = ? WHERE id = ? AND state = ? RETURNING `+columns),
		string(to), nanos(c.At), c.Error, c.Error, c.SnapshotBytes, id, string(from)))
	if errors.Is(err, sql.ErrNoRows) {
		cur, err := s.Get(ctx, id)
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
func (s *SQL) Touch(ctx context.Context, id string, at time.Time) error {
	res, err := s.db.ExecContext(ctx, s.d.q(`UPDATE sandboxes SET last_activity_at = `+s.d.greatest+`(last_activity_at, ?) WHERE id = ?`),
		nanos(at), id)
	if err != nil {
		return fmt.Errorf("touch sandbox %s: %w", id, err)
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return tartarus.Errorf(tartarus.ErrNotFound, "sandbox %s", id)
	}
	return nil
}

// CountByState implements Store.
func (s *SQL) CountByState(ctx context.Context) (map[tartarus.State]int, error) {
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
	var state, env, md, heat, network string
	var created, updated, expires, active int64
	err := r.Scan(&sb.ID, &sb.Tenant, &sb.Template, &sb.Runtime, &state, &sb.Node, &sb.CPUs, &sb.MemoryMB,
		&env, &md, &created, &updated, &expires, &active, &sb.Error, &sb.AutoHibernateS, &sb.SnapshotBytes, &heat, &network)
	if err != nil {
		return nil, err
	}
	if network != "" {
		sb.Network = &tartarus.NetworkSpec{}
		if err := json.Unmarshal([]byte(network), sb.Network); err != nil {
			return nil, fmt.Errorf("sandbox %s network: %w", sb.ID, err)
		}
	}
	if heat != "" {
		sb.Heat = &tartarus.SandboxHeat{}
		if err := json.Unmarshal([]byte(heat), sb.Heat); err != nil {
			return nil, fmt.Errorf("sandbox %s heat: %w", sb.ID, err)
		}
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
