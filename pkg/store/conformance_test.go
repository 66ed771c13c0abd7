package store_test

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"sync"
	"testing"

	"github.com/tartarus-sandbox/tartarus/pkg/hypnos"
	"github.com/tartarus-sandbox/tartarus/pkg/hypnos/hypnostest"
	"github.com/tartarus-sandbox/tartarus/pkg/store"
	"github.com/tartarus-sandbox/tartarus/pkg/store/pgtest"
	"github.com/tartarus-sandbox/tartarus/pkg/store/storetest"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

func TestSQLiteConformance(t *testing.T) {
	storetest.Run(t, func(t *testing.T) storetest.Opener {
		path := filepath.Join(t.TempDir(), "t.db")
		return func(t *testing.T) store.Store {
			s, err := store.Open(context.Background(), path)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { s.Close() })
			return s
		}
	})
}

// TestPostgres runs the conformance suites, the migration race and the
// per-runtime sleep records against a real PostgreSQL server it starts.
func TestPostgres(t *testing.T) {
	admin := pgtest.StartPostgres(t)
	n := 0
	newDB := func(t *testing.T) string {
		n++
		return pgtest.CreateDatabase(t, admin, fmt.Sprintf("t%d", n))
	}
	open := func(t *testing.T, dsn string) *store.Postgres {
		s, err := store.OpenPostgres(context.Background(), dsn)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		return s
	}
	t.Run("Store", func(t *testing.T) {
		storetest.Run(t, func(t *testing.T) storetest.Opener {
			dsn := newDB(t)
			return func(t *testing.T) store.Store {
				s, err := store.Open(context.Background(), dsn)
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { s.Close() })
				if _, ok := s.(*store.Postgres); !ok {
					t.Fatalf("Open(%s) = %T, want *store.Postgres", dsn, s)
				}
				return s
			}
		})
	})
	t.Run("SleepRecords", func(t *testing.T) {
		hypnostest.RunRecordStore(t, open(t, newDB(t)).SleepRecords("microvm"))
	})
	t.Run("SleepRecordsPerRuntime", func(t *testing.T) {
		ctx := context.Background()
		dsn := newDB(t)
		a, b := open(t, dsn).SleepRecords("microvm"), open(t, dsn).SleepRecords("gvisor")
		if err := a.PutRecord(ctx, &hypnos.SleepRecord{SandboxID: "sb-a", SnapshotID: "s1", Status: hypnos.StatusSleeping}); err != nil {
			t.Fatal(err)
		}
		if _, err := b.GetRecord(ctx, "sb-a"); !errors.Is(err, tartarus.ErrNotFound) {
			t.Errorf("another runtime's record: %v, want ErrNotFound", err)
		}
		got, err := open(t, dsn).SleepRecords("microvm").GetRecord(ctx, "sb-a")
		if err != nil || got.SnapshotID != "s1" {
			t.Errorf("from another Store: %+v, %v", got, err)
		}
	})
	// Servers starting at once on a fresh database: the advisory lock makes
	// one migrate and the others find the schema done; without it the
	// CREATE TABLEs would collide.
	t.Run("MigrationRace", func(t *testing.T) {
		dsn := newDB(t)
		const servers = 4
		var wg sync.WaitGroup
		errs := make(chan error, servers)
		for range servers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				s, err := store.OpenPostgres(context.Background(), dsn)
				if err == nil {
					err = s.Create(context.Background(), storetest.Sandbox(fmt.Sprintf("sb-%p", s), "t", tartarus.StateRunning))
					s.Close()
				}
				errs <- err
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			if err != nil {
				t.Errorf("open during migration race: %v", err)
			}
		}
		got, err := open(t, dsn).List(context.Background(), tartarus.SandboxFilter{})
		if err != nil || len(got) != servers {
			t.Errorf("after race: %d sandboxes, %v; want %d", len(got), err, servers)
		}
	})
}

// BenchmarkPostgresMove measures one compare-and-set state change on the
// Postgres store over loopback TCP (the server runs with fsync off).
func BenchmarkPostgresMove(b *testing.B) {
	ctx := context.Background()
	dsn := pgtest.CreateDatabase(b, pgtest.StartPostgres(b), "bench")
	s, err := store.OpenPostgres(ctx, dsn)
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	if err := s.Create(ctx, storetest.Sandbox("sb", "t", tartarus.StateRunning)); err != nil {
		b.Fatal(err)
	}
	states := [2]tartarus.State{tartarus.StateRunning, tartarus.StatePaused}
	for i := 0; b.Loop(); i++ {
		if _, err := s.Move(ctx, "sb", states[i%2], states[(i+1)%2], store.Change{At: storetest.T0}); err != nil {
			b.Fatal(err)
		}
	}
}
