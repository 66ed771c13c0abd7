package storetest

import (
	"testing"

	"github.com/tartarus-sandbox/tartarus/pkg/store/pgtest"
)

// StartPostgres is pgtest.StartPostgres (kept for the store's own tests).
func StartPostgres(t testing.TB) string { return pgtest.StartPostgres(t) }

// PostgresServer is pgtest.PostgresServer.
type PostgresServer = pgtest.PostgresServer

// StartPostgresServer is pgtest.StartPostgresServer.
func StartPostgresServer(t testing.TB) *PostgresServer { return pgtest.StartPostgresServer(t) }

// CreateDatabase is pgtest.CreateDatabase.
func CreateDatabase(t testing.TB, adminDSN, name string) string {
	return pgtest.CreateDatabase(t, adminDSN, name)
}
