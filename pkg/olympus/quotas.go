package olympus

import (
	"context"
	"fmt"
	"net/http"
	"slices"
	"sync"
	"time"

	"github.com/tartarus-sandbox/tartarus/pkg/cerberus"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

// lineageKey is the metadata that carries when the first sandbox of a line
// was created; forks copy their parent's metadata, so a line of forks
// cannot outlive the max_lifetime_s quota by forking. The server sets it;
// a caller's own value is overwritten.
const lineageKey = "tartarus.lineage_created_at"

// QuotaUsage is what a tenant holds now, counted from the store (so every
// replica, and a restarted server, sees the same), except ConcurrentExecs,
// which is this server's.
type QuotaUsage struct {
	RunningSandboxes int   `json:"running_sandboxes"`
	VCPUs            int   `json:"vcpus"`
	MemoryMB         int   `json:"memory_mb"`
	SnapshotBytes    int64 `json:"snapshot_bytes"`
	TemplateBytes    int64 `json:"template_bytes"` // this node's catalog: see templateBytes
	ConcurrentExecs  int   `json:"concurrent_execs"`
	CreatesPerMinute int   `json:"creates_per_minute"` // creates in the last minute
}

// QuotaReport is the body of GET /v1/quotas.
type QuotaReport struct {
	Tenant string         `json:"tenant"`
	Limits cerberus.Quota `json:"limits"` // 0: no limit
	Usage  QuotaUsage     `json:"usage"`
}

// held are the states whose sandboxes hold memory and CPUs.
var held = []tartarus.State{tartarus.StateCreating, tartarus.StateRunning, tartarus.StatePaused, tartarus.StateQuarantined}

// quotaOf returns tenant's quota; ok is false when none is set.
func (s *Server) quotaOf(tenant string) (cerberus.Quota, bool) {
	qs, ok := s.guard.(cerberus.QuotaSource)
	if !ok {
		return cerberus.Quota{}, false
	}
	q := qs.Quota(tenant)
	return q, q != (cerberus.Quota{})
}

// usage counts what tenant holds, from the store. Sandboxes that ended
// are read only when withEnded (creates_per_minute counts them): a
// tenant's history grows without bound, what it holds does not.
func (s *Server) usage(ctx context.Context, tenant string, withEnded bool) (QuotaUsage, error) {
	var u QuotaUsage
	f := tartarus.SandboxFilter{Tenant: tenant}
	if !withEnded {
		f.States = append(slices.Clone(held), tartarus.StateHibernated)
	}
	list, err := s.be.List(ctx, f)
	if err != nil {
		return u, fmt.Errorf("quota usage of %s: %w", tenant, err)
	}
	since := s.clock.Now().Add(-time.Minute)
	for _, sb := range list {
		for _, st := range held {
			if sb.State == st {
				u.RunningSandboxes++
				u.VCPUs += sb.CPUs
				u.MemoryMB += sb.MemoryMB
			}
		}

		if sb.State == tartarus.StateHibernated {
			u.SnapshotBytes += sb.SnapshotBytes
		}
		if sb.CreatedAt.After(since) {
			u.CreatesPerMinute++
		}
	}
	u.ConcurrentExecs = s.execs.count(tenant)
	return u, nil
}

func quotaExceeded(tenant, quota string, limit, used, asked int64, unit string) error {
	return tartarus.Errorf(tartarus.ErrQuotaExceeded, "tenant %s is at its %s quota: limit %d%s, in use %d%s, asked %d%s",
		tenant, quota, limit, unit, used, unit, asked, unit)
}

// growth is what creates in flight on this server will add to a tenant's
// use: checked and not yet returned, they may not be in the store yet.
type growth struct{ sandboxes, cpus, memoryMB int }

// reservation is one create (or fork) in flight and what it adds.
type reservation struct{ growth }

// pending holds the growth in flight per tenant. Its lock is held from a
// check's read of the store to its reservation, so two creates on this
// server cannot both pass a quota with room for one. A create in flight
// counts until it returns, also once its record is in the store: near a
// limit, concurrent creates may be refused early (the error is on the
// refusing side; a retry after they return passes).
type pending struct {
	mu sync.Mutex
	r  map[string]map[*reservation]bool // tenant → reservations in flight
}

// checkGrow refuses n more sandboxes of the given shape for tenant when
// that passes one of its quotas; otherwise it reserves them until release.
func (s *Server) checkGrow(ctx context.Context, tenant string, n, cpus, memoryMB int) (release func(), err error) {
	q, ok := s.quotaOf(tenant)
	if !ok {
		return func() {}, nil
	}
	s.pending.mu.Lock()
	defer s.pending.mu.Unlock()
	u, err := s.usage(ctx, tenant, q.CreatesPerMinute > 0)
	if err != nil {
		return nil, err
	}
	var notYet growth
	for r := range s.pending.r[tenant] {
		notYet.sandboxes += r.sandboxes
		notYet.cpus += r.cpus
		notYet.memoryMB += r.memoryMB
	}
	u.RunningSandboxes += notYet.sandboxes
	u.CreatesPerMinute += notYet.sandboxes
	u.VCPUs += notYet.cpus
	u.MemoryMB += notYet.memoryMB
	for _, c := range []struct {
		name              string
		limit, used, more int64
		unit              string
	}{
		{"running_sandboxes", int64(q.RunningSandboxes), int64(u.RunningSandboxes), int64(n), ""},
		{"vcpus", int64(q.VCPUs), int64(u.VCPUs), int64(n * cpus), ""},
		{"memory_mb", int64(q.MemoryMB), int64(u.MemoryMB), int64(n * memoryMB), " MiB"},
		{"creates_per_minute", int64(q.CreatesPerMinute), int64(u.CreatesPerMinute), int64(n), ""},
	} {
		if c.limit > 0 && c.used+c.more > c.limit {
			return nil, quotaExceeded(tenant, c.name, c.limit, c.used, c.more, c.unit)
		}
	}
	if s.pending.r == nil {
		s.pending.r = map[string]map[*reservation]bool{}
	}
	if s.pending.r[tenant] == nil {
		s.pending.r[tenant] = map[*reservation]bool{}
	}
	r := &reservation{growth{n, n * cpus, n * memoryMB}}
	s.pending.r[tenant][r] = true
	var once sync.Once
	return func() {
		once.Do(func() {
			s.pending.mu.Lock()
			defer s.pending.mu.Unlock()
			delete(s.pending.r[tenant], r)
			if len(s.pending.r[tenant]) == 0 {
				delete(s.pending.r, tenant)
			}
		})
	}, nil
}

// checkCreateQuota checks a create of req (normalized) by tenant, stamps
// the line's start for the lifetime quota, and reserves the sandbox until
// release (call it once the create returned).
func (s *Server) checkCreateQuota(ctx context.Context, tenant string, req *tartarus.CreateRequest) (release func(), err error) {
	q, ok := s.quotaOf(tenant)
	if !ok {
		return func() {}, nil
	}
	if q.MaxLifetimeS > 0 {
		if req.TimeoutS > q.MaxLifetimeS {
			return nil, quotaExceeded(tenant, "max_lifetime_s", int64(q.MaxLifetimeS), 0, int64(req.TimeoutS), " s")
		}
		if req.Metadata == nil {
			req.Metadata = map[string]string{}
		}
		req.Metadata[lineageKey] = s.clock.Now().UTC().Format(time.RFC3339)
	}
	return s.checkGrow(ctx, tenant, 1, req.CPUs, req.MemoryMB)
}

// checkForkQuota checks count forks of parent: they count as creates of
// its shape, and they may not live past the line's max lifetime. Like
// checkCreateQuota it reserves them until release.
func (s *Server) checkForkQuota(ctx context.Context, parent *tartarus.Sandbox, count int) (release func(), err error) {
	q, ok := s.quotaOf(parent.Tenant)
	if !ok {
		return func() {}, nil
	}
	if q.MaxLifetimeS > 0 {
		origin := parent.CreatedAt
		if t, err := time.Parse(time.RFC3339, parent.Metadata[lineageKey]); err == nil && t.Before(origin) {
			origin = t
		}
		// A fork lives as long as its parent was given.
		end := s.clock.Now().Add(parent.ExpiresAt.Sub(parent.CreatedAt))
		if lived := int64(end.Sub(origin).Seconds()); lived > int64(q.MaxLifetimeS) {
			return nil, tartarus.Errorf(tartarus.ErrQuotaExceeded, "tenant %s is at its max_lifetime_s quota: limit %d s from the first sandbox of the line (created %s); a fork now would reach %d s",
				parent.Tenant, q.MaxLifetimeS, origin.Format(time.RFC3339), lived)
		}
	}
	return s.checkGrow(ctx, parent.Tenant, count, parent.CPUs, parent.MemoryMB)
}

// checkSnapshotQuota refuses a new snapshot of sb (hibernate, checkpoint)
// when the tenant's snapshots already hold its limit or this one, as big as
// the sandbox's memory at most, could pass it.
func (s *Server) checkSnapshotQuota(ctx context.Context, sb *tartarus.Sandbox) error {
	q, ok := s.quotaOf(sb.Tenant)
	if !ok || q.SnapshotBytes == 0 {
		return nil
	}
	u, err := s.usage(ctx, sb.Tenant, false)
	if err != nil {
		return err
	}
	more := int64(sb.MemoryMB) << 20
	if u.SnapshotBytes+more > q.SnapshotBytes {
		return quotaExceeded(sb.Tenant, "snapshot_bytes", q.SnapshotBytes, u.SnapshotBytes, more, " bytes")
	}
	return nil
}

// execSlots counts the execs running per tenant on this server.
type execSlots struct {
	mu sync.Mutex
	n  map[string]int
}

func (e *execSlots) count(tenant string) int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.n[tenant]
}

// acquire takes an exec slot for tenant unless limit (> 0) are taken.
func (e *execSlots) acquire(tenant string, limit int) (release func(), err error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if limit > 0 && e.n[tenant] >= limit {
		return nil, quotaExceeded(tenant, "concurrent_execs", int64(limit), int64(e.n[tenant]), 1, "")
	}
	if e.n == nil {
		e.n = map[string]int{}
	}
	e.n[tenant]++
	return func() {
		e.mu.Lock()
		defer e.mu.Unlock()
		if e.n[tenant]--; e.n[tenant] <= 0 {
			delete(e.n, tenant)
		}
	}, nil
}

// execSlot takes an exec slot for sb's tenant under its quota.
func (s *Server) execSlot(sb *tartarus.Sandbox) (func(), error) {
	q, _ := s.quotaOf(sb.Tenant)
	return s.execs.acquire(sb.Tenant, q.ConcurrentExecs)
}

// getQuotas is GET /v1/quotas: the caller's tenant's limits and use.
func (s *Server) getQuotas(w http.ResponseWriter, r *http.Request) {
	serve(s, w, r, s.tenantFor(cerberus.ResourceTypeSandbox), cerberus.ActionRead, backend, func(ctx context.Context, _ Backend, who *cerberus.Identity) (int, any, error) {
		q, _ := s.quotaOf(who.TenantID)
		u, err := s.usage(ctx, who.TenantID, true)
		if err != nil {
			return 0, nil, err
		}
		// Read here only: a create's quota check does not list templates.
		if u.TemplateBytes, err = s.templateBytes(ctx, who.TenantID); err != nil {
			return 0, nil, err
		}
		return http.StatusOK, QuotaReport{Tenant: who.TenantID, Limits: q, Usage: u}, nil
	})
}
