package sqldialect

import (
	"errors"
	"testing"

	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

func TestQ(t *testing.T) {
	for _, tc := range []struct {
		d     Dialect
		query string
		want  string
	}{
		{SQLite, `SELECT a FROM t WHERE b = ? AND c = ?`, `SELECT a FROM t WHERE b = ? AND c = ?`},
		{Postgres, `SELECT a FROM t WHERE b = ? AND c = ?`, `SELECT a FROM t WHERE b = $1 AND c = $2`},
		{Postgres, `SELECT 1`, `SELECT 1`},
		{Postgres, `INSERT INTO t VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`, `INSERT INTO t VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)`},
	} {
		if got := tc.d.Q(tc.query); got != tc.want {
			t.Errorf("%s.Q(%q) = %q, want %q", tc.d, tc.query, got, tc.want)
		}
	}
}

func TestValidate(t *testing.T) {
	for _, tc := range []struct {
		d  Dialect
		ok bool
	}{
		{SQLite, true}, {Postgres, true}, {"", false}, {"mysql", false},
	} {
		err := tc.d.Validate()
		if (err == nil) != tc.ok {
			t.Errorf("Validate(%q) = %v, want ok %v", tc.d, err, tc.ok)
		}
		if err != nil && !errors.Is(err, tartarus.ErrInvalid) {
			t.Errorf("Validate(%q) = %v, want ErrInvalid", tc.d, err)
		}
	}
}
