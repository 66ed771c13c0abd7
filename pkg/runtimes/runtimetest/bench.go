package runtimetest

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

// BenchCreateFirstExec measures create, start and the first command of a
// new sandbox, destroying it outside the timed part.
func BenchCreateFirstExec(b *testing.B, rt tartarus.Runtime, img *tartarus.Image) {
	ctx := context.Background()
	for i := 0; b.Loop(); i++ {
		cfg := &tartarus.VMConfig{ID: fmt.Sprintf("bench-%d-%d", time.Now().UnixNano()%1e6, i), Template: img.Name, Image: img, CPUs: 1, MemoryMB: 128}
		if _, err := rt.Create(ctx, cfg); err != nil {
			b.Fatal(err)
		}
		if err := rt.Start(ctx, cfg.ID); err != nil {
			b.Fatal(err)
		}
		if res, err := rt.Exec(ctx, cfg.ID, &tartarus.ExecRequest{Cmd: []string{"true"}}); err != nil || res.ExitCode != 0 {
			b.Fatal(err, res)
		}
		b.StopTimer()
		_ = rt.Destroy(ctx, cfg.ID)
		b.StartTimer()
	}
}

// BenchExec measures one command's round trip in a running sandbox.
func BenchExec(b *testing.B, rt tartarus.Runtime, img *tartarus.Image) {
	ctx := context.Background()
	cfg := &tartarus.VMConfig{ID: fmt.Sprintf("bench-exec-%d", time.Now().UnixNano()%1e6), Template: img.Name, Image: img, CPUs: 1, MemoryMB: 128}
	if _, err := rt.Create(ctx, cfg); err != nil {
		b.Fatal(err)
	}
	defer rt.Destroy(ctx, cfg.ID)
	if err := rt.Start(ctx, cfg.ID); err != nil {
		b.Fatal(err)
	}
	// The first exec warms caches (image layers, runsc binary pages).
	if _, err := rt.Exec(ctx, cfg.ID, &tartarus.ExecRequest{Cmd: []string{"true"}}); err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		if res, err := rt.Exec(ctx, cfg.ID, &tartarus.ExecRequest{Cmd: []string{"true"}}); err != nil || res.ExitCode != 0 {
			b.Fatal(err, res)
		}
	}
}
