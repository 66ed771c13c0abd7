package cluster

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/http"
	"sort"
	"testing"
	"time"

	"github.com/tartarus-sandbox/tartarus/pkg/hecatoncheir/wire"
	"github.com/tartarus-sandbox/tartarus/pkg/store"
	"github.com/tartarus-sandbox/tartarus/pkg/store/pgtest"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

// BenchmarkPlaceSimulated1000 measures a whole placement as a replica does
// it, against 1,000 simulated nodes registered in a real Postgres: the
// transaction under the placement lock, reading every up node with what
// its sandboxes hold, choosing one, and recording the sandbox and its
// create command. The nodes are rows, not agents (nothing carries the
// commands out), so this is the control plane's own cost per placement.
func BenchmarkPlaceSimulated1000(b *testing.B) {
	admin := pgtest.StartPostgres(b)
	st, err := store.OpenPostgres(context.Background(), pgtest.CreateDatabase(b, admin, "bench_place"))
	if err != nil {
		b.Fatal(err)
	}
	defer st.Close()
	c, err := New(Config{Store: st, AgentClient: http.DefaultClient,
		AgentIdentity: func(*http.Request) (string, error) { return "", nil }})
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	rng := rand.New(rand.NewPCG(1, 2))
	pools := []string{"a", "b", "c", "d"}
	for i := range 1000 {
		mem := 16384 * (1 + rng.IntN(8))
		st1 := status(fmt.Sprintf("sim-%04d", i), mem, map[string]string{"pool": pools[rng.IntN(len(pools))]}, true)
		data, _ := json.Marshal(st1)
		if _, err := st.Heartbeat(ctx, st1.Name, st1.Address, data, time.Now()); err != nil {
			b.Fatal(err)
		}
	}
	req := &tartarus.CreateRequest{Template: "base", MemoryMB: 256, CPUs: 1, NodeLabels: map[string]string{"pool": "b"}}
	if err := req.Normalize(); err != nil {
		b.Fatal(err)
	}
	lat := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		start := time.Now()
		if err := c.placeOnly(ctx, "t1", req); err != nil {
			b.Fatal(err)
		}
		lat = append(lat, time.Since(start))
	}
	b.StopTimer()
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	b.ReportMetric(float64(lat[len(lat)/2].Microseconds()), "p50-µs")
	b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds()), "p99-µs")
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "placements/s")
}

// placeOnly is Create without waiting for the node.
func (c *Cluster) placeOnly(ctx context.Context, tenant string, req *tartarus.CreateRequest) error {
	now := time.Now().UTC()
	sb := tartarus.NewSandbox(tartarus.NewID("sb-"), tenant, req, now)
	cmd := &wire.Command{ID: tartarus.NewID("cmd-"), Kind: wire.KindCreate, SandboxID: sb.ID, CreatedAt: now, Sandbox: sb, Create: req}
	_, err := c.st.Place(ctx, store.IdempotencyKey{}, func(nodes []*store.NodeRecord, _ func(string) bool) (*tartarus.Sandbox, *store.CommandRecord, error) {
		name, rt, err := c.place(nodes, req.Template, placementRequest(req))
		if err != nil {
			return nil, nil, err
		}
		sb.Node, sb.Runtime, cmd.Node = name, rt, name
		rec, err := commandRecord(cmd)
		return sb, rec, err
	})
	return err
}
