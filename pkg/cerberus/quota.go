package cerberus

import (
	"strconv"

	"go.yaml.in/yaml/v3"
)

// Quota is what one tenant may hold at once (and start per minute). A zero
// field is no limit. Olympus enforces them, counting from the store, and
// answers 429 quota_exceeded naming the quota, its limit and the use.
type Quota struct {
	RunningSandboxes int   `json:"running_sandboxes,omitempty"` // creating, running, paused, quarantined
	VCPUs            int   `json:"vcpus,omitempty"`             // over those sandboxes
	MemoryMB         int   `json:"memory_mb,omitempty"`         // over those sandboxes
	SnapshotBytes    int64 `json:"snapshot_bytes,omitempty"`    // held by hibernated sandboxes
	TemplateBytes    int64 `json:"template_bytes,omitempty"`    // the tenant's templates, build cache included
	ConcurrentExecs  int   `json:"concurrent_execs,omitempty"`  // execs running at once (per server)
	CreatesPerMinute int   `json:"creates_per_minute,omitempty"`
	// MaxLifetimeS bounds a sandbox's lifetime from the create of the
	// first of its line: a fork lives no longer than its original could.
	MaxLifetimeS int `json:"max_lifetime_s,omitempty"`
}

// QuotaSet is the quotas section of a policy file: defaults for every
// tenant, and per-tenant overrides of single fields.
//
//	quotas:
//	  default: {running_sandboxes: 10, memory_mb: 8192}
//	  tenants:
//	    acme: {running_sandboxes: 50}
type QuotaSet struct {
	Default Quota            `json:"default"`
	Tenants map[string]Quota `json:"tenants,omitempty"`
}

// For returns tenant's quota: its overrides over the defaults.
func (s QuotaSet) For(tenant string) Quota {
	q := s.Default
	o, ok := s.Tenants[tenant]
	if !ok {
		return q
	}
	pick := func(d, o int) int {
		if o != 0 {
			return o
		}
		return d
	}
	q.RunningSandboxes = pick(q.RunningSandboxes, o.RunningSandboxes)
	q.VCPUs = pick(q.VCPUs, o.VCPUs)
	q.MemoryMB = pick(q.MemoryMB, o.MemoryMB)
	if o.SnapshotBytes != 0 {
		q.SnapshotBytes = o.SnapshotBytes
	}
	if o.TemplateBytes != 0 {
		q.TemplateBytes = o.TemplateBytes
	}
	q.ConcurrentExecs = pick(q.ConcurrentExecs, o.ConcurrentExecs)
	q.CreatesPerMinute = pick(q.CreatesPerMinute, o.CreatesPerMinute)
	q.MaxLifetimeS = pick(q.MaxLifetimeS, o.MaxLifetimeS)
	return q
}

// QuotaSource is the side ability of a Guard whose policy sets quotas.
type QuotaSource interface {
	Quota(tenant string) Quota
}

// Quota returns tenant's quota under the policy in force.
func (c *Cerberus) Quota(tenant string) Quota { return c.Policy().Quotas().For(tenant) }

// Quota implements QuotaSource.
func (g guard) Quota(tenant string) Quota { return g.c.Quota(tenant) }

var _ QuotaSource = guard{}

// Quotas is the policy's quotas section.
func (p *Policy) Quotas() QuotaSet { return p.quotas }

var quotaFields = []string{"running_sandboxes", "vcpus", "memory_mb", "snapshot_bytes", "template_bytes", "concurrent_execs",
	"creates_per_minute", "max_lifetime_s"}

func (p *policyParser) quotas(n *yaml.Node) {
	p.mapping(n, "quotas", []string{"default", "tenants"}, func(key string, k, v *yaml.Node) {
		switch key {
		case "default":
			p.quotaSet.Default = p.quota(v, "quotas.default")
		case "tenants":
			if v.Kind != yaml.MappingNode {
				p.errf(v, "quotas.tenants must be a mapping of tenant → quota")
				return
			}
			p.quotaSet.Tenants = map[string]Quota{}
			for i := 0; i+1 < len(v.Content); i += 2 {
				tk, tv := v.Content[i], v.Content[i+1]
				t, ok := p.scalar(tk, "tenant name")
				if !ok {
					continue
				}
				if _, dup := p.quotaSet.Tenants[t]; dup {
					p.errf(tk, "quotas.tenants has %q twice", t)
					continue
				}
				p.quotaSet.Tenants[t] = p.quota(tv, "quotas.tenants."+t)
			}
		}
	})
}

func (p *policyParser) quota(n *yaml.Node, what string) Quota {
	var q Quota
	p.mapping(n, what, quotaFields, func(key string, k, v *yaml.Node) {
		s, ok := p.scalar(v, what+"."+key)
		if !ok {
			return
		}
		x, err := strconv.ParseInt(s, 10, 64)
		if err != nil || x < 0 || (key != "snapshot_bytes" && key != "template_bytes" && x > 1<<31-1) {
			p.errf(v, "%s.%s: %q is not a whole number ≥ 0 (0 or absent: no limit)", what, key, s)
			return
		}
		switch key {
		case "running_sandboxes":
			q.RunningSandboxes = int(x)
		case "vcpus":
			q.VCPUs = int(x)
		case "memory_mb":
			q.MemoryMB = int(x)
		case "snapshot_bytes":
			q.SnapshotBytes = x
		case "template_bytes":
			q.TemplateBytes = x
		case "concurrent_execs":
			q.ConcurrentExecs = int(x)
		case "creates_per_minute":
			q.CreatesPerMinute = int(x)
		case "max_lifetime_s":
			q.MaxLifetimeS = int(x)
		}
	})
	return q
}
