// Package phlegethon (named for the river of fire that flows into Tartarus)
// classifies each sandbox create by heat (cold, warm, hot, inferno), gives it
// the resource class of that heat, routes it to the node pools that serve the
// heat, and queues it fairly across heats when no node can take it now.
//
// It follows the seed's Phlegethon section: the HeatRouter interface
// (ClassifyHeat, RouteToPool, GetResourceClass, DefinePool, GetHeatMetrics),
// the four heat levels, the four default resource classes (ember, flame,
// blaze, inferno) and the HeatClassifier's order (explicit hint, template
// hint, request thresholds). It extends the seed where real use needs more:
//
//   - The classifier's thresholds are the seed's classifier code, not the
//     seed's comments (which disagree: cold "< 10s" against ember's 30 s).
//     After the seed's rules a level is raised, never lowered, to the
//     coolest class that holds what the request asks for (cores, memory,
//     GPUs, duration), and an explicit hint or class that cannot hold it is
//     refused. Every classification carries an Explanation.
//   - Learning: HeatObservations recorded when sandboxes end replace a
//     template's hint with the decay-weighted median heat of its recent runs
//     once it has MinSamples of them.
//   - A ResourceClass's GPUCount is the most GPUs a sandbox of the class
//     may ask for, not what every sandbox of it needs (the seed's inferno has
//     1 GPU and "GPU possible"); 0 network burst or disk IOPS means no limit.
//   - A Pool (the seed's ResourcePool) may serve several heat levels, and
//     RouteToPool answers with ordered tiers of candidate nodes (the heat's
//     pools, then shared nodes, then hotter pools) rather than one node:
//     choosing among candidates by capacity stays with placement.
//   - Admission queues (Queue): a create that no node can take waits in its
//     heat's queue until its deadline, served by weighted start-time fair
//     queueing across heats, durable through a Journal.
//   - HeatMetrics adds the p99 wait by heat.
//
// The package does no HTTP and owns no sandbox: the control plane calls
// Router.Decide on each create, applies the Decision (vCPUs, memory, limits),
// tries placement over the Decision's tiers, and on no room hands the create
// to the Queue.
package phlegethon

import (
	"context"
	"fmt"
	"time"

	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

// HeatRouter classifies and routes workloads by intensity (the seed's
// interface; Router implements it).
type HeatRouter interface {
	// ClassifyHeat determines workload intensity.
	ClassifyHeat(ctx context.Context, req *SandboxRequest) (HeatLevel, error)
	// RouteToPool selects the pools and candidate nodes for a heat level.
	RouteToPool(ctx context.Context, heat HeatLevel) (*PoolAssignment, error)
	// GetResourceClass returns the resource class for a heat level.
	GetResourceClass(heat HeatLevel) *ResourceClass
	// DefinePool creates a new resource pool.
	DefinePool(ctx context.Context, pool *Pool) error
	// GetHeatMetrics returns the current heat distribution.
	GetHeatMetrics(ctx context.Context) (*HeatMetrics, error)
}

// HeatLevel is a workload's intensity.
type HeatLevel string

// The heat levels, coolest first. The seed's comments give each a size
// (cold < 10 s, < 1 CPU, < 512 MB; warm < 5 min, < 4 CPU, < 4 GB; hot
// < 30 min, < 8 CPU, < 16 GB; inferno unlimited, GPU possible); the
// classifier's thresholds (Thresholds) are what decide.
const (
	HeatCold    HeatLevel = "cold"
	HeatWarm    HeatLevel = "warm"
	HeatHot     HeatLevel = "hot"
	HeatInferno HeatLevel = "inferno"
)

// Levels lists the heat levels, coolest first.
var Levels = [...]HeatLevel{HeatCold, HeatWarm, HeatHot, HeatInferno}

// Valid reports whether h is one of the four levels.
func (h HeatLevel) Valid() bool { return h.rank() >= 0 }

// rank is h's index in Levels, or -1.
func (h HeatLevel) rank() int {
	switch h {
	case HeatCold:
		return 0
	case HeatWarm:
		return 1
	case HeatHot:
		return 2
	case HeatInferno:
		return 3
	}
	return -1
}

// Hotter reports whether h is hotter than o.
func (h HeatLevel) Hotter(o HeatLevel) bool { return h.rank() > o.rank() }

// ParseHeat reads a heat level; "" is allowed and means none.
func ParseHeat(s string) (HeatLevel, error) {
	h := HeatLevel(s)
	if s == "" || h.Valid() {
		return h, nil
	}
	return "", tartarus.Errorf(tartarus.ErrInvalid, "heat %q: want cold, warm, hot or inferno", s)
}

// SandboxRequest is what the classifier and the classes read from a create.
// Zero means "not asked": the control plane fills it from the create before
// applying its own defaults (so CPUCores is 0 when the caller sent no cpus).
type SandboxRequest struct {
	TemplateID string
	// HeatHint is the create's heat_hint.
	HeatHint HeatLevel
	// ResourceClass is the create's resource_class: a class by name, which
	// also sets the heat (the class's).
	ResourceClass string
	// MaxDuration is the create's max_duration_s: the sandbox is ended with
	// reason timeout after it.
	MaxDuration time.Duration
	CPUCores    int
	MemoryMB    int
	GPUCount    int
}

// Opted reports whether the caller asked for heat management: a hint, a
// class or a maximum duration. Router.Decide enforces classes on such
// requests (and on every request when Config.EnforceAll is set).
func (r *SandboxRequest) Opted() bool {
	return r.HeatHint != "" || r.ResourceClass != "" || r.MaxDuration > 0
}

// Validate checks the request's own shape; errors wrap tartarus.ErrInvalid.
func (r *SandboxRequest) Validate() error {
	switch {
	case !r.HeatHint.Valid() && r.HeatHint != "":
		return tartarus.Errorf(tartarus.ErrInvalid, "heat_hint %q: want cold, warm, hot or inferno", string(r.HeatHint))
	case r.ResourceClass != "" && !tartarus.ValidName(r.ResourceClass):
		return tartarus.Errorf(tartarus.ErrInvalid, "resource_class %q: want 1-64 characters of a-z, 0-9, '-', '_', '.'", r.ResourceClass)
	case r.MaxDuration < 0 || r.MaxDuration > tartarus.MaxTimeoutS*time.Second:
		return tartarus.Errorf(tartarus.ErrInvalid, "max_duration_s %d: must be between 0 (the class's) and %d", int64(r.MaxDuration/time.Second), tartarus.MaxTimeoutS)
	case r.MaxDuration%time.Second != 0:
		return tartarus.Errorf(tartarus.ErrInvalid, "max_duration_s: whole seconds only")
	case r.CPUCores < 0 || r.MemoryMB < 0 || r.GPUCount < 0:
		return tartarus.Errorf(tartarus.ErrInvalid, "cpus %d, memory_mb %d, gpus %d: must not be negative", r.CPUCores, r.MemoryMB, r.GPUCount)
	}
	return nil
}

// HeatObservation is what one sandbox did, recorded when it ends.
type HeatObservation struct {
	TemplateID     string        `json:"template_id"`
	ActualDuration time.Duration `json:"actual_duration"`
	// PeakCPU is in cores (1.5 = one and a half cores busy), from the
	// guest's stats.
	PeakCPU float64 `json:"peak_cpu"`
	// PeakMemory is in bytes.
	PeakMemory int64     `json:"peak_memory"`
	Timestamp  time.Time `json:"timestamp"`
}

// HeatMetrics is the current heat distribution.
type HeatMetrics struct {
	TotalSandboxes   int                         `json:"total_sandboxes"`
	ByHeat           map[HeatLevel]int           `json:"by_heat"`
	QueueDepthByHeat map[HeatLevel]int           `json:"queue_depth_by_heat"`
	AvgWaitByHeat    map[HeatLevel]time.Duration `json:"avg_wait_by_heat"`
	P99WaitByHeat    map[HeatLevel]time.Duration `json:"p99_wait_by_heat"`
}

func heatError(h HeatLevel) error {
	return tartarus.Errorf(tartarus.ErrInvalid, "heat %q: want cold, warm, hot or inferno", string(h))
}

func plural(n int, one, many string) string {
	if n == 1 {
		return fmt.Sprintf("%d %s", n, one)
	}
	return fmt.Sprintf("%d %s", n, many)
}
