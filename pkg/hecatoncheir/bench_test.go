package hecatoncheir

import (
	"context"
	"testing"

	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

// The agent's own cost of a create, over the fake runtime (whose restore
// copies a small directory): by restore from a template snapshot kept
// unpacked, and by claiming a warm-pool sandbox. What a real runtime adds
// (QEMU's restore, the guest's clock and entropy sync) is not here.
//
//	go test -run XXX -bench . -benchtime 50x ./pkg/hecatoncheir/
func BenchmarkCreate(b *testing.B) {
	for _, tt := range []struct {
		name string
		o    snapOpts
	}{
		{"restore", snapOpts{createFromSnapshot: true, templateCache: true}},
		{"warm-pool", snapOpts{createFromSnapshot: true, templateCache: true, pool: 1}},
	} {
		b.Run(tt.name, func(b *testing.B) {
			ctx := context.Background()
			e := newSnapEnv(b, tt.o)
			e.create(b, tartarus.CreateRequest{}) // builds the template snapshot
			for b.Loop() {
				b.StopTimer()
				e.agent.FillWarmPools(ctx)
				b.StartTimer()
				sb := e.create(b, tartarus.CreateRequest{})
				b.StopTimer()
				if _, err := e.agent.Destroy(ctx, sb.ID); err != nil {
					b.Fatal(err)
				}
				b.StartTimer()
			}
		})
	}
}
