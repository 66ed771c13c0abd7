// Package persephonesrv runs Persephone (pkg/persephone) inside a Tartarus
// server: the per-minute usage recording from the sandbox store, the API
// routes of seasons, forecasts and capacity, the loop that sets the warm-pool
// targets (of the node agent, or, on a cluster replica that leads, of every
// agent), and the capacity webhook.
package persephonesrv

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"sync"
	"time"

	"github.com/tartarus-sandbox/tartarus/pkg/clock"
	"github.com/tartarus-sandbox/tartarus/pkg/persephone"
	"github.com/tartarus-sandbox/tartarus/pkg/store"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

// Pools is the warm-pool side of a node agent (hecatoncheir.Agent): the
// ready sandboxes per template, and the per-template targets it fills to.
type Pools interface {
	TemplatePoolSizes() map[string]int
	SetPoolTargets(ctx context.Context, targets map[string]int) error
}

// RefillMeter is the side of Pools that measures its refills: the typical
// time one warm sandbox takes to make (0 before any was made) and how many
// are made at once. Pools sizes then follow the measured refill rate
// instead of the configured one.
type RefillMeter interface {
	RefillRate() (typical time.Duration, parallel int)
}

// Leader is the side of Pools of a cluster replica: only the replica that
// leads (holds the cluster's lease) sizes the pools; the others skip.
type Leader interface {
	Lead(ctx context.Context) (bool, error)
}

// PoolReader is the side of Pools that reads the ready sandboxes per
// template over I/O (a cluster's agents, from the database); it is used
// instead of TemplatePoolSizes.
type PoolReader interface {
	ReadyPools(ctx context.Context) (map[string]int, error)
}

// PoolPlanner is the side of Pools that takes the targets whole, with the
// node labels of the season that set their floor (a cluster places each
// pool on the agents carrying them); it is used instead of
// SetPoolTargets.
type PoolPlanner interface {
	SetPoolPlan(ctx context.Context, targets []persephone.PoolTarget) error
}

// NodePooler is the side of Pools of a cluster: each agent's share of
// each template's pool, shown by GET /v1/warm-pools.
type NodePooler interface {
	NodePools(ctx context.Context) ([]persephone.NodePool, error)
}

// Sandboxes is what the usage source reads from the sandbox store: the
// counts by state, and the creates of a span by template
// (store.UsageKeeper).
type Sandboxes interface {
	CountByState(ctx context.Context) (map[tartarus.State]int, error)
	Launches(ctx context.Context, from, to time.Time) (map[string]store.LaunchCount, error)
}

// NodeLister lists the nodes with what their sandboxes hold (the olympus
// Backend has it), for the CPU and memory utilization of a usage record.
type NodeLister interface {
	Nodes(ctx context.Context) ([]*tartarus.NodeInfo, error)
}

// NodeCreateCounter is the side of NodeLister that counts each node's creates
// since it started, by template and by how they were served
// (hecatoncheir.Agent.CreateCounts: "warm pool" is a warm launch,
// "failed" none, anything else a cold one).
type NodeCreateCounter interface {
	NodeCreateCounts(ctx context.Context) (map[string]map[string]map[string]int, error)
}

// Config wires a Service.
type Config struct {
	Scaler    *persephone.Scaler // required
	Usage     persephone.UsageStore
	Sandboxes Sandboxes // required: the recording source
	Nodes     NodeLister
	Clock     clock.Clock // required
	Log       *slog.Logger

	// Pools, when set, get their targets every PoolEvery (default 5m)
	// from Scaler.PoolTargets: a node agent's pools, or a cluster's
	// (cluster.ForecastPools, with the Leader side: one replica sizes).
	Pools     Pools
	PoolEvery time.Duration

	// Webhook, when set, receives each capacity recommendation, made
	// every WebhookEvery (default 5m), through WebhookClient (which must
	// obey the callback address rule: thanatos.GuardedHTTPClient).
	Webhook       string
	WebhookClient *http.Client
	WebhookEvery  time.Duration

	// Keep is the usage retention (persephone.DefaultRetention when zero).
	Keep persephone.Retention
}

// Validate returns every problem with the config, joined.
func (c Config) Validate() error {
	var errs []error
	if c.Scaler == nil {
		errs = append(errs, errors.New("persephonesrv: scaler is required"))
	}
	if c.Usage == nil {
		errs = append(errs, errors.New("persephonesrv: usage store is required"))
	}
	if c.Sandboxes == nil {
		errs = append(errs, errors.New("persephonesrv: sandbox store is required"))
	}
	if c.Clock == nil {
		errs = append(errs, errors.New("persephonesrv: clock is required"))
	}
	if c.PoolEvery < 0 || c.WebhookEvery < 0 {
		errs = append(errs, errors.New("persephonesrv: intervals must not be negative"))
	}
	if c.Webhook != "" && c.WebhookClient == nil {
		errs = append(errs, errors.New("persephonesrv: a webhook needs its guarded client"))
	}
	return errors.Join(errs...)
}

// Service is Persephone as the server runs it.
type Service struct {
	cfg    Config
	scaler *persephone.Scaler
	log    *slog.Logger

	mu      sync.Mutex
	targets []persephone.PoolTarget
}

// New returns a Service; Run starts its loops.
func New(cfg Config) (*Service, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.PoolEvery == 0 {
		cfg.PoolEvery = 5 * time.Minute
	}
	if cfg.WebhookEvery == 0 {
		cfg.WebhookEvery = 5 * time.Minute
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	return &Service{cfg: cfg, scaler: cfg.Scaler, log: cfg.Log.With("component", "persephone")}, nil
}

// Run records usage every minute, sets the warm-pool targets and sends
// the capacity webhook, until ctx is done.
func (s *Service) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	src := &Source{Sandboxes: s.cfg.Sandboxes, Nodes: s.cfg.Nodes}
	src.Prime(ctx)
	rec := &persephone.Recorder{Source: src, Store: s.cfg.Usage, Clock: s.cfg.Clock, Keep: s.cfg.Keep, Log: s.log}
	wg.Go(func() {
		if err := rec.Run(ctx); err != nil {
			s.log.Error("usage recorder", "err", err)
		}
	})
	if s.cfg.Pools != nil {
		wg.Go(func() { s.every(ctx, s.cfg.PoolEvery, s.SizePools) })
	}
	// Seasons defined or applied at another replica show here within a
	// minute (and before each sizing).
	wg.Go(func() { s.every(ctx, time.Minute, s.scaler.ReloadSeasons) })
	if s.cfg.Webhook != "" {
		wg.Go(func() { s.every(ctx, s.cfg.WebhookEvery, s.SendCapacity) })
	}
	wg.Wait()
	return nil
}

// every runs f at once and then every d, logging its errors.
func (s *Service) every(ctx context.Context, d time.Duration, f func(context.Context) error) {
	t := s.cfg.Clock.NewTicker(d)
	defer t.Stop()
	for {
		if err := f(ctx); err != nil && ctx.Err() == nil {
			s.log.Warn("persephone", "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C():
		}
	}
}

// SizePools asks the scaler for each template's pool size and gives the
// sizes to the node agent.
func (s *Service) SizePools(ctx context.Context) error {
	if l, ok := s.cfg.Pools.(Leader); ok {
		lead, err := l.Lead(ctx)
		if err != nil {
			return fmt.Errorf("size warm pools: %w", err)
		}
		if !lead {
			s.mu.Lock()
			s.targets = nil // another replica sizes them now
			s.mu.Unlock()
			return nil
		}
	}
	// Another replica may have defined or applied a season since.
	if err := s.scaler.ReloadSeasons(ctx); err != nil {
		return fmt.Errorf("size warm pools: %w", err)
	}
	current := s.cfg.Pools.TemplatePoolSizes()
	if r, ok := s.cfg.Pools.(PoolReader); ok {
		var err error
		if current, err = r.ReadyPools(ctx); err != nil {
			return fmt.Errorf("size warm pools: %w", err)
		}
	}
	var refill persephone.Refill
	if m, ok := s.cfg.Pools.(RefillMeter); ok {
		refill.Time, refill.Parallel = m.RefillRate()
	}
	ts, err := s.scaler.PoolTargets(ctx, current, refill)
	if err != nil {
		return fmt.Errorf("size warm pools: %w", err)
	}
	targets := make(map[string]int, len(ts))
	for _, t := range ts {
		targets[t.Template] = t.Size
	}
	if pp, ok := s.cfg.Pools.(PoolPlanner); ok {
		err = pp.SetPoolPlan(ctx, ts)
	} else {
		err = s.cfg.Pools.SetPoolTargets(ctx, targets)
	}
	if err != nil {
		return fmt.Errorf("set warm-pool targets: %w", err)
	}
	s.mu.Lock()
	s.targets = ts
	s.mu.Unlock()
	for _, t := range ts {
		if t.Size != t.Current {
			s.log.Info("warm pool target", "template", t.Template, "size", t.Size, "current", t.Current, "reason", t.Reason)
		}
	}
	return nil
}

// LastTargets returns the pool sizes set last, with their reasons.
func (s *Service) LastTargets() []persephone.PoolTarget {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]persephone.PoolTarget{}, s.targets...)
}

// SendCapacity makes a capacity recommendation and sends it to the
// webhook.
func (s *Service) SendCapacity(ctx context.Context) error {
	rec, err := s.scaler.RecommendCapacity(ctx, 0)
	if err != nil {
		return fmt.Errorf("recommend capacity: %w", err)
	}
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	return persephone.SendCapacityWebhook(wctx, s.cfg.WebhookClient, s.cfg.Webhook, rec)
}

// Source is the persephone.UsageSource of a server: active VMs are the
// running sandboxes and the queue depth those being created (both at the
// moment of recording); launches and errors are the sandboxes created in
// the minute, by template, and those of them that failed, read from the
// store, so that in a cluster any replica counts every replica's creates.
// CPU and memory utilization are what the nodes' sandboxes hold of the
// nodes' CPUs and memory (0 when the nodes do not say). Warm and cold
// launches are how much the nodes' create counts (NodeCreateCounter) grew
// since the previous record (or Prime); without a Prime the first record
// has none.
type Source struct {
	Sandboxes Sandboxes
	Nodes     NodeLister

	mu      sync.Mutex
	creates map[string]map[string]map[string]int // node → template → how → count, as read last
}

var _ persephone.UsageSource = (*Source)(nil)

// Usage implements persephone.UsageSource.
func (src *Source) Usage(ctx context.Context, minute time.Time) (*persephone.UsageRecord, error) {
	counts, err := src.Sandboxes.CountByState(ctx)
	if err != nil {
		return nil, err
	}
	launches, err := src.Sandboxes.Launches(ctx, minute, minute.Add(time.Minute))
	if err != nil {
		return nil, err
	}
	rec := &persephone.UsageRecord{Timestamp: minute, ActiveVMs: counts[tartarus.StateRunning],
		QueueDepth: counts[tartarus.StateCreating], LaunchesByTemplate: map[string]int{}}
	for tpl, c := range launches {
		rec.LaunchCount += c.Launches
		rec.ErrorCount += c.Failed
		rec.LaunchesByTemplate[tpl] = c.Launches
	}
	if cc, ok := src.Nodes.(NodeCreateCounter); ok {
		if counts, err := cc.NodeCreateCounts(ctx); err == nil {
			rec.WarmLaunches, rec.ColdLaunches = src.servedSince(counts)
		}
	}
	if src.Nodes != nil {
		if nodes, err := src.Nodes.Nodes(ctx); err == nil {
			var cpus, usedCPUs, mem, usedMem int
			for _, n := range nodes {
				cpus, usedCPUs, mem, usedMem = cpus+n.CPUs, usedCPUs+n.UsedCPUs, mem+n.MemoryMB, usedMem+n.UsedMemoryMB
			}
			if cpus > 0 {
				rec.CPUUtil = min(1, float64(usedCPUs)/float64(cpus))
			}
			if mem > 0 {
				rec.MemoryUtil = min(1, float64(usedMem)/float64(mem))
			}
		}
	}
	return rec, nil
}

// Prime reads the nodes' create counts as the baseline of the first
// record, so that creates from now on count in it (without it the first
// record only sets the baseline).
func (src *Source) Prime(ctx context.Context) {
	cc, ok := src.Nodes.(NodeCreateCounter)
	if !ok {
		return
	}
	counts, err := cc.NodeCreateCounts(ctx)
	if err != nil {
		return
	}
	if counts == nil {
		counts = map[string]map[string]map[string]int{}
	}
	src.mu.Lock()
	src.creates = counts
	src.mu.Unlock()
}

// servedSince returns the warm and cold creates counted since the previous
// reading and keeps counts for the next. A count that fell is a node that
// restarted: all of it is new. A node or template first seen counts whole,
// except at the first reading, which only sets the baseline.
func (src *Source) servedSince(counts map[string]map[string]map[string]int) (warm, cold int) {
	src.mu.Lock()
	defer src.mu.Unlock()
	first := src.creates == nil
	for node, byTpl := range counts {
		for tpl, byHow := range byTpl {
			for how, n := range byHow {
				d := n - src.creates[node][tpl][how]
				if d < 0 {
					d = n
				}
				if first || d <= 0 {
					continue
				}
				switch how {
				case "warm pool":
					warm += d
				case "failed":
				default:
					cold += d
				}
			}
		}
	}
	src.creates = counts
	return warm, cold
}
