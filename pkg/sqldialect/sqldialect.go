// Package sqldialect is what Tartarus's SQL stores share across SQLite and
// Postgres: the dialect, the rewrite of ? placeholders for Postgres, and
// the reading of rows that keep a record as one JSON text column.
//
// It imports nothing of Tartarus but pkg/tartarus, so that every component
// with a SQL store can use it without an import cycle.
package sqldialect

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

// Dialect is the SQL database a store speaks.
type Dialect string

// The dialects.
const (
	SQLite   Dialect = "sqlite"
	Postgres Dialect = "postgres"
)

// Validate says whether d is one of the dialects.
func (d Dialect) Validate() error {
	if d != SQLite && d != Postgres {
		return tartarus.Errorf(tartarus.ErrInvalid, "sql dialect %q: want sqlite or postgres", string(d))
	}
	return nil
}

// Q returns query, written with ? placeholders, in d's own: Postgres
// numbers them.
func (d Dialect) Q(query string) string {
	if d != Postgres {
		return query
	}
	return Numbered(query)
}

// Numbered rewrites the ? placeholders of query as Postgres's $1, $2, …
// The queries it is used on have no ? inside a literal.
func Numbered(query string) string {
	var b strings.Builder
	n := 0
	for _, r := range query {
		if r == '?' {
			n++
			b.WriteString("$" + strconv.Itoa(n))
			continue
		}
		b.WriteRune(r)
	}
	return b.String()
}

// Querier is what GetJSON reads through: a *sql.DB or a *sql.Tx.
type Querier interface {
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
}

// GetJSON decodes into a T the one JSON text column of the row query
// finds. No row is tartarus.ErrNotFound; what and id name the record in
// errors ("checkpoint ck-1").
func GetJSON[T any](ctx context.Context, db Querier, what, id, query string, args ...any) (*T, error) {
	var data string
	err := db.QueryRowContext(ctx, query, args...).Scan(&data)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, tartarus.Errorf(tartarus.ErrNotFound, "%s %s", what, id)
	}
	if err != nil {
		return nil, fmt.Errorf("get %s %s: %w", what, id, err)
	}
	v := new(T)
	if err := json.Unmarshal([]byte(data), v); err != nil {
		return nil, fmt.Errorf("decode %s %s: %w", what, id, err)
	}
	return v, nil
}

// ScanJSON decodes rows of one JSON text column into Ts and closes rows;
// what names a record in errors ("pool").
func ScanJSON[T any](rows *sql.Rows, what string) ([]T, error) {
	defer rows.Close()
	var out []T
	for rows.Next() {
		var data string
		if err := rows.Scan(&data); err != nil {
			return nil, fmt.Errorf("scan %s: %w", what, err)
		}
		var v T
		if err := json.Unmarshal([]byte(data), &v); err != nil {
			return nil, fmt.Errorf("decode %s: %w", what, err)
		}
		out = append(out, v)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list %ss: %w", what, err)
	}
	return out, nil
}

// Migrate runs schema's statements in order; each must be idempotent
// (CREATE … IF NOT EXISTS), so that it is safe on every start. who names
// the component in the error.
func Migrate(ctx context.Context, db *sql.DB, who string, schema []string) error {
	for _, q := range schema {
		if _, err := db.ExecContext(ctx, q); err != nil {
			return fmt.Errorf("%s migrate: %w", who, err)
		}
	}
	return nil
}
