package store

import (
	"context"
	"fmt"
	"testing"

	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

// BenchmarkMove measures one compare-and-set state change (a write
// transaction in WAL mode) on the SQLite store.
func BenchmarkMove(b *testing.B) {
	ctx := context.Background()
	s, err := OpenSQLite(ctx, b.TempDir()+"/b.db")
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	if err := s.Create(ctx, sandbox("sb", "t", tartarus.StateRunning)); err != nil {
		b.Fatal(err)
	}
	states := [2]tartarus.State{tartarus.StateRunning, tartarus.StatePaused}
	b.ResetTimer()
	for i := range b.N {
		if _, err := s.Move(ctx, "sb", states[i%2], states[(i+1)%2], Change{At: t0}); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkListTenant measures listing one tenant's 100 sandboxes among 1,000.
func BenchmarkListTenant(b *testing.B) {
	ctx := context.Background()
	s, err := OpenSQLite(ctx, b.TempDir()+"/b.db")
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	for i := range 1000 {
		if err := s.Create(ctx, sandbox(fmt.Sprintf("sb-%d", i), fmt.Sprintf("t%d", i%10), tartarus.StateRunning)); err != nil {
			b.Fatal(err)
		}
	}
	b.ResetTimer()
	for range b.N {
		list, err := s.List(ctx, tartarus.SandboxFilter{Tenant: "t3"})
		if err != nil || len(list) != 100 {
			b.Fatal(len(list), err)
		}
	}
}
