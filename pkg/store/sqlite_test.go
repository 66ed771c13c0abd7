package store

import (
	"context"
	"errors"
	"path/filepath"
	"testing"
	"time"

	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

func openTest(t *testing.T, path string) *SQLite {
	t.Helper()
	if path == "" {
		path = filepath.Join(t.TempDir(), "t.db")
	}
	s, err := OpenSQLite(context.Background(), path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

var t0 = time.Date(2026, 1, 2, 3, 4, 5, 6, time.UTC)

func sandbox(id, tenant string, st tartarus.State) *tartarus.Sandbox {
	return &tartarus.Sandbox{
		ID: id, Tenant: tenant, Template: "base", Runtime: "fake", State: st, Node: "n1",
		CPUs: 1, MemoryMB: 256, Env: map[string]string{"A": "1"}, Metadata: map[string]string{"k": "v"},
		CreatedAt: t0, UpdatedAt: t0, ExpiresAt: t0.Add(time.Hour),
	}
}

func TestTouchAndReopen(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "r.db")
	s := openTest(t, path)
	if err := s.Create(ctx, sandbox("sb", "a", tartarus.StateRunning)); err != nil {
		t.Fatal(err)
	}
	if err := s.Touch(ctx, "sb", t0.Add(2*time.Second)); err != nil {
		t.Fatal(err)
	}
	// An older touch never moves the time back.
	if err := s.Touch(ctx, "sb", t0.Add(time.Second)); err != nil {
		t.Fatal(err)
	}
	if err := s.Touch(ctx, "nope", t0); !errors.Is(err, tartarus.ErrNotFound) {
		t.Errorf("touch unknown: %v", err)
	}
	s.Close()
	// Reopening runs the migrations again without harm and keeps the data.
	s2 := openTest(t, path)
	got, err := s2.Get(ctx, "sb")
	if err != nil {
		t.Fatal(err)
	}
	if !got.LastActivityAt.Equal(t0.Add(2 * time.Second)) {
		t.Errorf("last activity %v", got.LastActivityAt)
	}
}
