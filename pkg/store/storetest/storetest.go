// Package storetest checks that a store.Store implementation behaves as the
// control plane expects: create/get/list with filters, compare-and-set
// moves (including two Store values racing on one database), touches and
// counts. Every implementation's tests run the same suite.
package storetest

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/tartarus-sandbox/tartarus/pkg/store"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

// Opener opens one more Store on the same database; the Store is closed
// when t ends.
type Opener func(t *testing.T) store.Store

// Run runs the conformance suite. newDB makes a fresh, empty database for
// one subtest and returns how to open Stores on it.
func Run(t *testing.T, newDB func(t *testing.T) Opener) {
	tests := []struct {
		name string
		fn   func(t *testing.T, open Opener)
	}{
		{"CreateGet", testCreateGet},
		{"List", testList},
		{"Move", testMove},
		{"MoveRace", testMoveRace},
		{"Touch", testTouch},
		{"SnapshotBytes", testSnapshotBytes},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) { tt.fn(t, newDB(t)) })
	}
}

// T0 is the creation time of the sandboxes the suite makes.
var T0 = time.Date(2026, 1, 2, 3, 4, 5, 6, time.UTC)

// Sandbox returns a sandbox with every field set, for tests.
func Sandbox(id, tenant string, st tartarus.State) *tartarus.Sandbox {
	return &tartarus.Sandbox{
		ID: id, Tenant: tenant, Template: "base", Runtime: "fake", State: st, Node: "n1",
		CPUs: 1, MemoryMB: 256, Env: map[string]string{"A": "1"}, Metadata: map[string]string{"k": "v"},
		CreatedAt: T0, UpdatedAt: T0, ExpiresAt: T0.Add(time.Hour),
	}
}

func testCreateGet(t *testing.T, open Opener) {
	ctx := context.Background()
	s := open(t)
	want := Sandbox("sb-1", "acme", tartarus.StateCreating)
	if err := s.Create(ctx, want); err != nil {
		t.Fatal(err)
	}
	got, err := s.Get(ctx, "sb-1")
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(got) != fmt.Sprint(want) || got.Env["A"] != "1" || got.Metadata["k"] != "v" ||
		!got.CreatedAt.Equal(T0) || !got.ExpiresAt.Equal(T0.Add(time.Hour)) || !got.LastActivityAt.IsZero() {
		t.Errorf("got %+v, want %+v", got, want)
	}
	if err := s.Create(ctx, want); !errors.Is(err, tartarus.ErrAlreadyExists) {
		t.Errorf("second create: %v, want ErrAlreadyExists", err)
	}
	if _, err := s.Get(ctx, "nope"); !errors.Is(err, tartarus.ErrNotFound) {
		t.Errorf("get unknown: %v, want ErrNotFound", err)
	}
	// Metadata is never nil so the API always shows an object.
	bare := Sandbox("sb-2", "acme", tartarus.StateCreating)
	bare.Metadata, bare.Env = nil, nil
	if err := s.Create(ctx, bare); err != nil {
		t.Fatal(err)
	}
	got, err = s.Get(ctx, "sb-2")
	if err != nil {
		t.Fatal(err)
	}
	if got.Metadata == nil || got.Env != nil {
		t.Errorf("metadata %v env %v: want empty map and nil", got.Metadata, got.Env)
	}
}

func testList(t *testing.T, open Opener) {
	ctx := context.Background()
	s := open(t)
	for i, c := range []struct {
		tenant, node string
		st           tartarus.State
	}{{"a", "n1", tartarus.StateRunning}, {"b", "n2", tartarus.StateRunning}, {"a", "n1", tartarus.StateFailed}} {
		sb := Sandbox(fmt.Sprintf("sb-%d", i), c.tenant, c.st)
		sb.Node = c.node
		sb.CreatedAt = T0.Add(time.Duration(i) * time.Second)
		if err := s.Create(ctx, sb); err != nil {
			t.Fatal(err)
		}
	}
	tests := []struct {
		f    tartarus.SandboxFilter
		want string
	}{
		{tartarus.SandboxFilter{}, "sb-0 sb-1 sb-2"},
		{tartarus.SandboxFilter{Tenant: "a"}, "sb-0 sb-2"},
		{tartarus.SandboxFilter{Tenant: "c"}, ""},
		{tartarus.SandboxFilter{States: []tartarus.State{tartarus.StateRunning}}, "sb-0 sb-1"},
		{tartarus.SandboxFilter{Tenant: "a", States: []tartarus.State{tartarus.StateRunning, tartarus.StateFailed}}, "sb-0 sb-2"},
		{tartarus.SandboxFilter{Node: "n2"}, "sb-1"},
		{tartarus.SandboxFilter{Node: "n1", States: []tartarus.State{tartarus.StateFailed}}, "sb-2"},
		{tartarus.SandboxFilter{Node: "other"}, ""},
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
	if err != nil || len(counts) != 2 || counts[tartarus.StateRunning] != 2 || counts[tartarus.StateFailed] != 1 {
		t.Errorf("CountByState = %v, %v", counts, err)
	}
}

func testMove(t *testing.T, open Opener) {
	ctx := context.Background()
	s := open(t)
	if err := s.Create(ctx, Sandbox("sb", "a", tartarus.StateCreating)); err != nil {
		t.Fatal(err)
	}
	at := T0.Add(time.Minute)
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
			moved, err := s.Move(ctx, "sb", tt.from, tt.to, store.Change{At: at, Error: tt.msg})
			if !errors.Is(err, tt.wantErr) || (tt.wantErr == nil && err != nil) {
				t.Fatalf("Move: %v, want %v", err, tt.wantErr)
			}
			if err == nil && moved.State != tt.to {
				t.Errorf("Move returned state %s, want %s", moved.State, tt.to)
			}
			got, err := s.Get(ctx, "sb")
			if err != nil {
				t.Fatal(err)
			}
			if got.State != tt.want {
				t.Errorf("state %s, want %s", got.State, tt.want)
			}
		})
	}
	got, err := s.Get(ctx, "sb")
	if err != nil {
		t.Fatal(err)
	}
	if got.Error != "boom" || !got.UpdatedAt.Equal(at) {
		t.Errorf("error %q updated %v", got.Error, got.UpdatedAt)
	}
	if _, err := s.Move(ctx, "nope", tartarus.StateRunning, tartarus.StatePaused, store.Change{At: at}); !errors.Is(err, tartarus.ErrNotFound) {
		t.Errorf("move unknown: %v", err)
	}
}

// testMoveRace has two Store values over one database (as two servers
// would) race many goroutines to move the same sandboxes to different
// states: exactly one writer may win each sandbox.
func testMoveRace(t *testing.T, open Opener) {
	ctx := context.Background()
	a, b := open(t), open(t)
	const n = 20
	for i := range n {
		if err := a.Create(ctx, Sandbox(fmt.Sprintf("sb-%d", i), "t", tartarus.StateRunning)); err != nil {
			t.Fatal(err)
		}
	}
	targets := []tartarus.State{tartarus.StatePaused, tartarus.StateTerminating, tartarus.StateFailed, tartarus.StateQuarantined}
	for i := range n {
		id := fmt.Sprintf("sb-%d", i)
		var wg sync.WaitGroup
		wins := make(chan tartarus.State, 2*len(targets))
		for _, s := range []store.Store{a, b} {
			for _, to := range targets {
				wg.Add(1)
				go func() {
					defer wg.Done()
					_, err := s.Move(ctx, id, tartarus.StateRunning, to, store.Change{At: T0})
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
		got, err := b.Get(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		if got.State != won[0] {
			t.Errorf("%s: stored %s, winner %s", id, got.State, won[0])
		}
	}
}

func testTouch(t *testing.T, open Opener) {
	ctx := context.Background()
	s := open(t)
	if err := s.Create(ctx, Sandbox("sb", "a", tartarus.StateRunning)); err != nil {
		t.Fatal(err)
	}
	if err := s.Touch(ctx, "sb", T0.Add(2*time.Second)); err != nil {
		t.Fatal(err)
	}
	// An older touch never moves the time back.
	if err := s.Touch(ctx, "sb", T0.Add(time.Second)); err != nil {
		t.Fatal(err)
	}
	if err := s.Touch(ctx, "nope", T0); !errors.Is(err, tartarus.ErrNotFound) {
		t.Errorf("touch unknown: %v", err)
	}
	// A second Store on the same database sees the touch.
	got, err := open(t).Get(ctx, "sb")
	if err != nil {
		t.Fatal(err)
	}
	if !got.LastActivityAt.Equal(T0.Add(2 * time.Second)) {
		t.Errorf("last activity %v", got.LastActivityAt)
	}
}

func testSnapshotBytes(t *testing.T, open Opener) {
	ctx := context.Background()
	s := open(t)
	sb := Sandbox("sb-1", "acme", tartarus.StateRunning)
	sb.AutoHibernateS = 30
	if err := s.Create(ctx, sb); err != nil {
		t.Fatal(err)
	}
	got, err := s.Move(ctx, "sb-1", tartarus.StateRunning, tartarus.StateHibernated, store.Change{At: T0, SnapshotBytes: 15 << 20})
	if err != nil || got.SnapshotBytes != 15<<20 || got.AutoHibernateS != 30 {
		t.Fatalf("hibernated: %+v, %v", got, err)
	}
	got, err = s.Move(ctx, "sb-1", tartarus.StateHibernated, tartarus.StateRunning, store.Change{At: T0})
	if err != nil || got.SnapshotBytes != 0 {
		t.Errorf("woken: %+v, %v", got, err)
	}
}
