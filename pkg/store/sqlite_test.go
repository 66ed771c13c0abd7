package store

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"sync"
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

func TestCreateGetRoundTrip(t *testing.T) {
	ctx := context.Background()
	s := openTest(t, "")
	want := sandbox("sb-1", "acme", tartarus.StateCreating)
	if err := s.Create(ctx, want); err != nil {
		t.Fatal(err)
	}
	got, err := s.Get(ctx, "sb-1")
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(got) != fmt.Sprint(want) || got.Env["A"] != "1" || got.Metadata["k"] != "v" ||
		!got.CreatedAt.Equal(t0) || !got.ExpiresAt.Equal(t0.Add(time.Hour)) || !got.LastActivityAt.IsZero() {
		t.Errorf("got %+v, want %+v", got, want)
	}
	if err := s.Create(ctx, want); !errors.Is(err, tartarus.ErrAlreadyExists) {
		t.Errorf("second create: %v, want ErrAlreadyExists", err)
	}
	if _, err := s.Get(ctx, "nope"); !errors.Is(err, tartarus.ErrNotFound) {
		t.Errorf("get unknown: %v, want ErrNotFound", err)
	}
	// Metadata is never nil so the API always shows an object.
	bare := sandbox("sb-2", "acme", tartarus.StateCreating)
	bare.Metadata, bare.Env = nil, nil
	if err := s.Create(ctx, bare); err != nil {
		t.Fatal(err)
	}
	got, _ = s.Get(ctx, "sb-2")
	if got.Metadata == nil || got.Env != nil {
		t.Errorf("metadata %v env %v: want empty map and nil", got.Metadata, got.Env)
	}
}

func TestList(t *testing.T) {
	ctx := context.Background()
	s := openTest(t, "")
	for i, c := range []struct {
		tenant string
		st     tartarus.State
	}{{"a", tartarus.StateRunning}, {"b", tartarus.StateRunning}, {"a", tartarus.StateFailed}} {
		sb := sandbox(fmt.Sprintf("sb-%d", i), c.tenant, c.st)
		sb.CreatedAt = t0.Add(time.Duration(i) * time.Second)
		if err := s.Create(ctx, sb); err != nil {
			t.Fatal(err)
		}
	}
	tests := []struct {
		f    Filter
		want string
	}{
		{Filter{}, "sb-0 sb-1 sb-2"},
		{Filter{Tenant: "a"}, "sb-0 sb-2"},
		{Filter{Tenant: "c"}, ""},
		{Filter{States: []tartarus.State{tartarus.StateRunning}}, "sb-0 sb-1"},
		{Filter{Tenant: "a", States: []tartarus.State{tartarus.StateRunning, tartarus.StateFailed}}, "sb-0 sb-2"},
		{Filter{Node: "other"}, ""},
	}
	for _, tt := range tests {
		got, err := s.List(ctx, tt.f)
		if err != nil {
			t.Fatal(err)
		}
		ids := ""
		for i, sb := range got {
			if i > 0 {
				ids += " "
			}
			ids += sb.ID
		}
		if ids != tt.want {
			t.Errorf("List(%+v) = %q, want %q", tt.f, ids, tt.want)
		}
	}
	counts, err := s.CountByState(ctx)
	if err != nil || counts[tartarus.StateRunning] != 2 || counts[tartarus.StateFailed] != 1 {
		t.Errorf("CountByState = %v, %v", counts, err)
	}
}

func TestMove(t *testing.T) {
	ctx := context.Background()
	s := openTest(t, "")
	if err := s.Create(ctx, sandbox("sb", "a", tartarus.StateCreating)); err != nil {
		t.Fatal(err)
	}
	at := t0.Add(time.Minute)
	tests := []struct {
		name     string
		from, to tartarus.State
		msg      string
		wantErr  error
		want     tartarus.State
	}{
		{"allowed", tartarus.StateCreating, tartarus.StateRunning, "", nil, tartarus.StateRunning},
		{"same state is idempotent", tartarus.StateRunning, tartarus.StateRunning, "", nil, tartarus.StateRunning},
		{"stale from", tartarus.StateCreating, tartarus.StateFailed, "x", tartarus.ErrFailedPrecondition, tartarus.StateRunning},
		{"not allowed", tartarus.StateRunning, tartarus.StateCreating, "", tartarus.ErrFailedPrecondition, tartarus.StateRunning},
		{"with error", tartarus.StateRunning, tartarus.StateFailed, "boom", nil, tartarus.StateFailed},
		{"final stays", tartarus.StateFailed, tartarus.StateRunning, "", tartarus.ErrFailedPrecondition, tartarus.StateFailed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := s.Move(ctx, "sb", tt.from, tt.to, Change{At: at, Error: tt.msg})
			if !errors.Is(err, tt.wantErr) || (tt.wantErr == nil && err != nil) {
				t.Fatalf("Move: %v, want %v", err, tt.wantErr)
			}
			got, _ := s.Get(ctx, "sb")
			if got.State != tt.want {
				t.Errorf("state %s, want %s", got.State, tt.want)
			}
		})
	}
	got, _ := s.Get(ctx, "sb")
	if got.Error != "boom" || !got.UpdatedAt.Equal(at) {
		t.Errorf("error %q updated %v", got.Error, got.UpdatedAt)
	}
	if _, err := s.Move(ctx, "nope", tartarus.StateRunning, tartarus.StatePaused, Change{At: at}); !errors.Is(err, tartarus.ErrNotFound) {
		t.Errorf("move unknown: %v", err)
	}
}

// TestMoveRace has two Store values over one file (as two processes would)
// race many goroutines to move the same sandboxes to different states:
// exactly one writer may win each sandbox.
func TestMoveRace(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "race.db")
	a, b := openTest(t, path), openTest(t, path)
	const n = 20
	for i := range n {
		if err := a.Create(ctx, sandbox(fmt.Sprintf("sb-%d", i), "t", tartarus.StateRunning)); err != nil {
			t.Fatal(err)
		}
	}
	targets := []tartarus.State{tartarus.StatePaused, tartarus.StateTerminating, tartarus.StateFailed, tartarus.StateQuarantined}
	for i := range n {
		id := fmt.Sprintf("sb-%d", i)
		var wg sync.WaitGroup
		wins := make(chan tartarus.State, 2*len(targets))
		for _, s := range []*SQLite{a, b} {
			for _, to := range targets {
				wg.Add(1)
				go func() {
					defer wg.Done()
					_, err := s.Move(ctx, id, tartarus.StateRunning, to, Change{At: t0})
					switch {
					case err == nil:
						wins <- to
					case !errors.Is(err, tartarus.ErrFailedPrecondition):
						t.Errorf("move %s: %v", id, err)
					}
				}()
			}
		}
		wg.Wait()
		close(wins)
		var won []tartarus.State
		for st := range wins {
			won = append(won, st)
		}
		if len(won) != 1 {
			t.Fatalf("%s: %d writers won (%v), want exactly 1", id, len(won), won)
		}
		got, _ := b.Get(ctx, id)
		if got.State != won[0] {
			t.Errorf("%s: stored %s, winner %s", id, got.State, won[0])
		}
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
