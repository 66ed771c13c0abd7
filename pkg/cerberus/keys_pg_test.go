package cerberus

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tartarus-sandbox/tartarus/pkg/clock"
	"github.com/tartarus-sandbox/tartarus/pkg/store/pgtest"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

// pgKeysEnv is one throwaway Postgres server; each test gets its own
// database on it.
type pgKeysEnv struct {
	admin string
	n     atomic.Int64
}

func newPGKeysEnv(t testing.TB) *pgKeysEnv {
	return &pgKeysEnv{admin: pgtest.StartPostgres(t)}
}

func (e *pgKeysEnv) database(t testing.TB) string {
	return pgtest.CreateDatabase(t, e.admin, fmt.Sprintf("keys%d", e.n.Add(1)))
}

func openPGKeys(t testing.TB, dsn string, clk clock.Clock) *KeyStore {
	t.Helper()
	s, err := OpenPostgresKeyStore(context.Background(), PostgresKeysConfig{DSN: dsn, Clock: clk})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// TestKeyStorePostgres runs the key store suite against a real Postgres,
// then what only a shared store must do: a key made through one replica
// works on another at once, a revocation reaches the other within its
// CacheTTL, and two replicas starting at once make one admin key.
func TestKeyStorePostgres(t *testing.T) {
	env := newPGKeysEnv(t)
	testKeyStore(t, keyStoreCase{name: "postgres", place: func(t *testing.T) func(*testing.T, clock.Clock) *KeyStore {
		dsn := env.database(t)
		return func(t *testing.T, clk clock.Clock) *KeyStore { return openPGKeys(t, dsn, clk) }
	}})

	t.Run("TwoReplicas", func(t *testing.T) {
		ctx := context.Background()
		clock := newFakeClock()
		dsn := env.database(t)
		a, b := openPGKeys(t, dsn, clock), openPGKeys(t, dsn, clock)
		ttl := b.CacheTTL()
		if ttl != DefaultKeyCacheTTL {
			t.Fatalf("cache TTL %v, want the default %v", ttl, DefaultKeyCacheTTL)
		}

		// Made on A: works on B at once, and B remembers it.
		k, secret, err := a.Create(ctx, KeySpec{TenantID: "acme", Roles: []string{"sandbox-user"}})
		if err != nil {
			t.Fatal(err)
		}
		cred, _ := ParseAPIKey(string(secret))
		if got, err := b.Verify(ctx, cred); err != nil || got.ID != k.ID {
			t.Fatalf("key made on A, verified on B: %+v %v", got, err)
		}

		// Revoked on A: A refuses at once; B trusts its copy for less
		// than the TTL, then refuses.
		if _, err := a.Revoke(ctx, k.ID); err != nil {
			t.Fatal(err)
		}
		if _, err := a.Verify(ctx, cred); reasonOf(err) != ReasonRevoked {
			t.Fatalf("A after its own revoke: %v", err)
		}
		clock.Advance(ttl - time.Nanosecond)
		if _, err := b.Verify(ctx, cred); err != nil {
			t.Fatalf("B within the TTL (documented bound): %v", err)
		}
		clock.Advance(time.Nanosecond)
		if _, err := b.Verify(ctx, cred); reasonOf(err) != ReasonRevoked {
			t.Fatalf("B one TTL after the revoke: %v, want %s", err, ReasonRevoked)
		}

		// A key in B's cache still expires on time.
		_, short, _ := a.Create(ctx, KeySpec{TenantID: "acme", Roles: []string{"viewer"}, ExpiresAt: clock.Now().Add(ttl / 2)})
		shortCred, _ := ParseAPIKey(string(short))
		if _, err := b.Verify(ctx, shortCred); err != nil {
			t.Fatal(err)
		}
		clock.Advance(ttl / 2)
		if _, err := b.Verify(ctx, shortCred); reasonOf(err) != ReasonExpired {
			t.Fatalf("cached key past its expiry: %v", err)
		}

		// B's list shows A's keys.
		if ks, err := b.List(ctx, "acme"); err != nil || len(ks) != 2 || !ks[0].Revoked {
			t.Fatalf("list on B: %+v %v", ks, err)
		}
	})

	t.Run("NoCache", func(t *testing.T) {
		ctx := context.Background()
		clock := newFakeClock()
		dsn := env.database(t)
		a := openPGKeys(t, dsn, clock)
		b, err := OpenPostgresKeyStore(ctx, PostgresKeysConfig{DSN: dsn, Clock: clock, CacheTTL: -1})
		if err != nil {
			t.Fatal(err)
		}
		defer b.Close()
		k, secret, _ := a.Create(ctx, KeySpec{TenantID: "acme", Roles: []string{"viewer"}})
		cred, _ := ParseAPIKey(string(secret))
		if _, err := b.Verify(ctx, cred); err != nil {
			t.Fatal(err)
		}
		a.Revoke(ctx, k.ID)
		if _, err := b.Verify(ctx, cred); reasonOf(err) != ReasonRevoked {
			t.Fatalf("uncached store after a revoke elsewhere: %v", err)
		}
	})

	t.Run("ConcurrentBootstrap", func(t *testing.T) {
		// Several rounds, each a fresh database and two replicas released
		// at the same instant.
		for round := range 5 {
			ctx := context.Background()
			dsn := env.database(t)
			stores := []*KeyStore{openPGKeys(t, dsn, clock.System{}), openPGKeys(t, dsn, clock.System{})}
			paths := []string{filepath.Join(t.TempDir(), "admin.key"), filepath.Join(t.TempDir(), "admin.key")}
			made := make([]bool, len(stores))
			errs := make([]error, len(stores))
			start := make(chan struct{})
			var wg sync.WaitGroup
			for i := range stores {
				wg.Go(func() {
					<-start
					made[i], errs[i] = EnsureAdminKey(ctx, stores[i], paths[i])
				})
			}
			close(start)
			wg.Wait()
			if err := errors.Join(errs...); err != nil {
				t.Fatal(err)
			}
			if made[0] == made[1] {
				t.Fatalf("round %d: made = %v, want exactly one replica to make the key", round, made)
			}
			winner := 0
			if made[1] {
				winner = 1
			}
			if _, err := os.Stat(paths[1-winner]); !errors.Is(err, os.ErrNotExist) {
				t.Fatalf("round %d: the replica that made no key has an admin.key (%v)", round, err)
			}
			ks, err := stores[0].List(ctx, "*")
			if err != nil || len(ks) != 1 {
				t.Fatalf("round %d: %d keys (%v), want one", round, len(ks), err)
			}
			key, _ := ReadKeyFile(paths[winner])
			cred, err := ParseAPIKey(key)
			if err != nil {
				t.Fatal(err)
			}
			for i, s := range stores {
				if k, err := s.Verify(ctx, cred); err != nil || k.Roles[0] != AdminRole {
					t.Fatalf("round %d: admin key on replica %d: %+v %v", round, i, k, err)
				}
			}
		}
	})

	t.Run("ConcurrentOpen", func(t *testing.T) {
		// Replicas creating the table at the same time do not fail.
		dsn := env.database(t)
		var wg sync.WaitGroup
		errs := make([]error, 4)
		for i := range errs {
			wg.Go(func() {
				s, err := OpenPostgresKeyStore(context.Background(), PostgresKeysConfig{DSN: dsn})
				if err == nil {
					s.Close()
				}
				errs[i] = err
			})
		}
		wg.Wait()
		if err := errors.Join(errs...); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("NoSecretInTable", func(t *testing.T) {
		ctx := context.Background()
		dsn := env.database(t)
		s := openPGKeys(t, dsn, newFakeClock())
		_, secret, _ := s.Create(ctx, KeySpec{TenantID: "acme", Roles: []string{"viewer"}})
		cred, _ := ParseAPIKey(string(secret))
		db, err := sql.Open("pgx", dsn)
		if err != nil {
			t.Fatal(err)
		}
		defer db.Close()
		var row string
		if err := db.QueryRow(`SELECT api_keys::text FROM api_keys`).Scan(&row); err != nil {
			t.Fatal(err)
		}
		if strings.Contains(row, cred.Secret) {
			t.Fatalf("api_keys row holds the secret in clear: %s", row)
		}
	})

	t.Run("DatabaseGone", func(t *testing.T) {
		// Once the cached copy is stale and the database cannot answer,
		// Verify says "unavailable" (a 503), not "invalid key".
		ctx := context.Background()
		clock := newFakeClock()
		name := fmt.Sprintf("gone%d", env.n.Add(1))
		dsn := pgtest.CreateDatabase(t, env.admin, name)
		s := openPGKeys(t, dsn, clock)
		_, secret, _ := s.Create(ctx, KeySpec{TenantID: "acme", Roles: []string{"viewer"}})
		cred, _ := ParseAPIKey(string(secret))
		if _, err := s.Verify(ctx, cred); err != nil {
			t.Fatal(err)
		}
		admin, err := sql.Open("pgx", env.admin)
		if err != nil {
			t.Fatal(err)
		}
		defer admin.Close()
		if _, err := admin.Exec(`DROP DATABASE "` + name + `" WITH (FORCE)`); err != nil {
			t.Fatal(err)
		}
		if _, err := s.Verify(ctx, cred); err != nil {
			t.Fatalf("within the TTL the cached key still serves: %v", err)
		}
		clock.Advance(s.CacheTTL())
		_, err = s.Verify(ctx, cred)
		if reasonOf(err) != ReasonUnavailable || !errors.Is(err, tartarus.ErrUnauthenticated) {
			t.Fatalf("database gone: %v (reason %s), want %s", err, reasonOf(err), ReasonUnavailable)
		}
		if _, err := s.List(ctx, ""); err == nil {
			t.Fatal("list with the database gone did not fail")
		}
	})

	t.Run("BadDSN", func(t *testing.T) {
		_, err := OpenPostgresKeyStore(context.Background(), PostgresKeysConfig{DSN: "/var/lib/tartarus/state.db"})
		if !errors.Is(err, tartarus.ErrInvalid) {
			t.Fatalf("sqlite path: %v", err)
		}
	})
}

func TestRedactDSN(t *testing.T) {
	tests := []struct{ in, want string }{
		{"postgres://u:secret@h:5432/db", "postgres://u:xxxxx@h:5432/db"},
		{"postgres://u@h/db", "postgres://u@h/db"},
		{"postgres://h/db", "postgres://h/db"},
		{"state.db", "state.db"},
	}
	for _, tt := range tests {
		if got := redactDSN(tt.in); got != tt.want {
			t.Errorf("redactDSN(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

// BenchmarkKeyStoreVerify measures one API key check: the JSON file store
// (keys in memory), the Postgres store answering from its cache (the usual
// case: a key used more than once a CacheTTL), and the Postgres store
// querying every time (CacheTTL < 0) over loopback TCP.
func BenchmarkKeyStoreVerify(b *testing.B) {
	ctx := context.Background()
	file, err := OpenKeyStore(filepath.Join(b.TempDir(), "apikeys.json"), clock.System{})
	if err != nil {
		b.Fatal(err)
	}
	env := newPGKeysEnv(b)
	dsn := env.database(b)
	cached := openPGKeys(b, dsn, clock.System{})
	uncached, err := OpenPostgresKeyStore(ctx, PostgresKeysConfig{DSN: dsn, CacheTTL: -1})
	if err != nil {
		b.Fatal(err)
	}
	defer uncached.Close()
	for _, c := range []struct {
		name string
		s    *KeyStore
	}{{"file", file}, {"postgres-cached", cached}, {"postgres-query", uncached}} {
		_, secret, err := c.s.Create(ctx, KeySpec{TenantID: "acme", Roles: []string{"sandbox-user"}})
		if err != nil {
			b.Fatal(err)
		}
		cred, _ := ParseAPIKey(string(secret))
		b.Run(c.name, func(b *testing.B) {
			for b.Loop() {
				if _, err := c.s.Verify(ctx, cred); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
