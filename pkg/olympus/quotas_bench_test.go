package olympus

import (
	"context"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/tartarus-sandbox/tartarus/pkg/cerberus"
	"github.com/tartarus-sandbox/tartarus/pkg/store"
	"github.com/tartarus-sandbox/tartarus/pkg/store/pgtest"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

// storeBackend answers List from a store, as a single node's agent
// (SQLite) and a replica's cluster backend (Postgres) do.
type storeBackend struct {
	Backend
	st store.Store
}

func (b storeBackend) List(ctx context.Context, f tartarus.SandboxFilter) ([]*tartarus.Sandbox, error) {
	return b.st.List(ctx, f)
}

// BenchmarkQuotaCheck is the quota check a create pays (checkCreateQuota:
// the tenant's sandboxes read from the store and summed) with the tenant
// holding 10 and 100 sandboxes among 1,000 of other tenants, on a single
// node's SQLite and on a replica's Postgres, in the same run.
func BenchmarkQuotaCheck(b *testing.B) {
	ctx := context.Background()
	stores := []struct {
		name string
		open func(b *testing.B) store.Store
	}{
		{"single-node-sqlite", func(b *testing.B) store.Store {
			st, err := store.OpenSQLite(ctx, filepath.Join(b.TempDir(), "t.db"))
			if err != nil {
				b.Fatal(err)
			}
			return st
		}},
		{"replica-postgres", func(b *testing.B) store.Store {
			st, err := store.OpenPostgres(ctx, pgtest.StartPostgres(b))
			if err != nil {
				b.Fatal(err)
			}
			return st
		}},
	}
	// Without creates_per_minute: the check reads only what the tenant
	// holds (a tenant's ended sandboxes are read only for that quota).
	set := cerberus.QuotaSet{Default: cerberus.Quota{RunningSandboxes: 1 << 20, MemoryMB: 1 << 30}}
	for _, sc := range stores {
		b.Run(sc.name, func(b *testing.B) {
			st := sc.open(b)
			defer st.Close()
			now := time.Now().UTC()
			add := func(tenant string, n int) {
				for i := range n {
					req := &tartarus.CreateRequest{Template: "base", CPUs: 1, MemoryMB: 256, TimeoutS: 3600}
					sb := tartarus.NewSandbox(tartarus.NewID("sb-"), tenant, req, now)
					switch i % 3 {
					case 0:
						sb.State = tartarus.StateRunning
					case 1:
						sb.State = tartarus.StateTerminated
					}
					if err := st.Create(ctx, sb); err != nil {
						b.Fatal(err)
					}
				}
			}
			for i := range 10 {
				add(fmt.Sprintf("other-%d", i), 100)
			}
			add("ten", 10)
			add("hundred", 100)
			s, err := New(Config{Backend: storeBackend{st: st}, Guard: quotaGuard{set: set}})
			if err != nil {
				b.Fatal(err)
			}
			for _, tenant := range []string{"ten", "hundred"} {
				b.Run("tenant="+tenant, func(b *testing.B) {
					for b.Loop() {
						req := &tartarus.CreateRequest{Template: "base", CPUs: 1, MemoryMB: 256}
						release, err := s.checkCreateQuota(ctx, tenant, req)
						if err != nil {
							b.Fatal(err)
						}
						release()
					}
				})
			}
		})
	}
}
