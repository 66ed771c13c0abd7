package typhon

import (
	"fmt"
	"slices"
	"testing"
	"time"
)

// BenchmarkTick evaluates three triggers over N sandboxes per tick, with
// simulated signals (a fake host; no VM): the cost of the trigger loop
// itself. Each sandbox has a full CPU history and exec log.
func BenchmarkTick(b *testing.B) {
	for _, n := range []int{100, 1000} {
		b.Run(fmt.Sprintf("sandboxes=%d", n), func(b *testing.B) {
			ids := make([]string, n)
			for i := range ids {
				ids[i] = fmt.Sprintf("sb-%d", i)
			}
			r := newRig(b, NewMemJournal(), ids...)
			if err := r.m.SetPolicy(ctx, &QuarantinePolicy{AutoTriggers: []AutoQuarantineTrigger{
				{Name: "spin", Condition: "host_counters && size(cpu_history) >= 2 && cpu_history[size(cpu_history)-1] > 90.0 && cpu_history[size(cpu_history)-2] > 90.0", Reason: ReasonResourceAbuse, Enabled: true},
				{Name: "forkbomb", Condition: "processes > 500", Reason: ReasonResourceAbuse, Enabled: true},
				{Name: "scanner", Condition: `net_denied > 20 || exec_history.exists(c, c.contains("nmap"))`, Reason: ReasonNetworkAnomaly, Enabled: true},
			}}); err != nil {
				b.Fatal(err)
			}
			for _, s := range r.host.sig {
				s.CPUPercent, s.Processes, s.HostCounters = 12, 20, true
				for j := 0; j < maxExecHistory; j++ {
					s.ExecHistory = append(s.ExecHistory, "python3 -c print(42)")
				}
			}
			for range maxHistory {
				r.m.Tick(ctx)
			}
			var ticks []time.Duration
			b.ResetTimer()
			for b.Loop() {
				start := time.Now()
				rep := r.m.Tick(ctx)
				ticks = append(ticks, time.Since(start))
				if rep.Evaluated != n || len(rep.Tripped) != 0 || len(rep.Errors) != 0 {
					b.Fatalf("tick: evaluated %d, tripped %d, errors %v", rep.Evaluated, len(rep.Tripped), rep.Errors)
				}
			}
			slices.Sort(ticks)
			b.ReportMetric(float64(b.Elapsed().Microseconds())/float64(b.N)/float64(n), "µs/sandbox")
			b.ReportMetric(float64(ticks[len(ticks)/2].Microseconds())/1000, "p50-ms/tick")
			b.ReportMetric(float64(ticks[(len(ticks)*99)/100].Microseconds())/1000, "p99-ms/tick")
		})
	}
}
