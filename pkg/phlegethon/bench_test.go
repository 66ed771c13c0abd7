package phlegethon

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/tartarus-sandbox/tartarus/pkg/clock"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

// BenchmarkDecide is classification plus routing per create: a template with
// learned history, three pools and 64 nodes.
func BenchmarkDecide(b *testing.B) {
	var nodes []tartarus.NodeInfo
	for i := range 64 {
		nodes = append(nodes, node(fmt.Sprintf("n%02d", i), "up", fmt.Sprintf("tier=%d", i%4)))
	}
	r := newRouter(b, Config{}, nodes)
	ctx := context.Background()
	for i, h := range []HeatLevel{HeatCold, HeatHot, HeatInferno} {
		if err := r.DefinePool(ctx, &Pool{Name: string(h), Heats: []HeatLevel{h}, NodeSelector: map[string]string{"tier": fmt.Sprint(i)}}); err != nil {
			b.Fatal(err)
		}
	}
	for range DefaultWindow {
		if err := r.Ended(ctx, "x", &HeatObservation{TemplateID: "python", ActualDuration: time.Minute, PeakCPU: 1.5, PeakMemory: 300 << 20}); err != nil {
			b.Fatal(err)
		}
	}
	req := &SandboxRequest{TemplateID: "python", MemoryMB: 512}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := r.Decide(ctx, req); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkClassify is the classifier alone, by the rule that decides.
func BenchmarkClassify(b *testing.B) {
	c, _ := NewClassifier(nil, LearnConfig{})
	for range DefaultWindow {
		_ = c.Observe(HeatObservation{TemplateID: "python", ActualDuration: time.Minute, PeakCPU: 1.5})
	}
	for _, tc := range []struct {
		name string
		req  SandboxRequest
	}{
		{"hint", SandboxRequest{HeatHint: HeatHot}},
		{"learned", SandboxRequest{TemplateID: "python"}},
		{"thresholds", SandboxRequest{TemplateID: "base", CPUCores: 2}},
	} {
		b.Run(tc.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := c.Classify(&tc.req); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkQueue is one enqueue and one admission with 100 creates waiting
// in each heat.
func BenchmarkQueue(b *testing.B) {
	ctx := context.Background()
	admit := func(context.Context, *Entry) error { return nil }
	clk := clock.NewFake(t0)
	q, err := NewQueue(QueueConfig{MaxDepth: 1 << 20}, clk, &MemJournal{}, func(ctx context.Context, e *Entry) error { return admit(ctx, e) })
	if err != nil {
		b.Fatal(err)
	}
	full := func(context.Context, *Entry) error { return tartarus.Errorf(tartarus.ErrResourceExhausted, "full") }
	admit = full
	for i := range 400 {
		if _, err := q.Enqueue(ctx, Entry{ID: fmt.Sprint("pre-", i), Heat: Levels[i%4]}, time.Hour); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		i++
		admit = full
		if _, err := q.Enqueue(ctx, Entry{ID: fmt.Sprint("e-", i), Heat: Levels[i%4]}, time.Hour); err != nil {
			b.Fatal(err)
		}
		once := true
		admit = func(context.Context, *Entry) error {
			if once {
				once = false
				return nil
			}
			return tartarus.Errorf(tartarus.ErrResourceExhausted, "full")
		}
		if q.Dispatch(ctx) != 1 {
			b.Fatal("no admission")
		}
	}
}

// BenchmarkColdWait is the cold creates' p99 wait (simulated seconds, on the
// fake clock) with and without a concurrent flood of 50 inferno creates, in
// the same run, under fair share and FIFO.
func BenchmarkColdWait(b *testing.B) {
	filler := make([]time.Duration, 8)
	for i := range filler {
		filler[i] = time.Duration(i+1) * 10 * time.Second
	}
	cold := simArrival{h: HeatCold, n: 20, start: 5 * time.Second, every: 30 * time.Second}
	flood := simArrival{h: HeatInferno, n: 50}
	runFor := map[HeatLevel]time.Duration{HeatInferno: 80 * time.Second, HeatCold: 10 * time.Second}
	for _, p := range []Policy{PolicyFair, PolicyFIFO} {
		b.Run(string(p), func(b *testing.B) {
			var quiet, flooded time.Duration
			for b.Loop() {
				quiet = Percentile(runSim(b, p, 8, filler, []simArrival{cold}, runFor).waits[HeatCold], 0.99)
				flooded = Percentile(runSim(b, p, 8, filler, []simArrival{flood, cold}, runFor).waits[HeatCold], 0.99)
			}
			b.ReportMetric(quiet.Seconds(), "cold-p99-s-quiet")
			b.ReportMetric(flooded.Seconds(), "cold-p99-s-flood")
		})
	}
}
