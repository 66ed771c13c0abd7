package hecatoncheir

import (
	"context"
	"log/slog"
	"sync"
	"time"

	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

// SamplerConfig configures a Sampler.
type SamplerConfig struct {
	// Interval between samples; zero means 5 s.
	Interval time.Duration
	// Keep is how many samples a sandbox keeps; zero means 720 (an hour
	// at 5 s).
	Keep int
}

// Sampler records each running sandbox's resource use over time, in a
// bounded ring per sandbox, from its runtime's stats.
type Sampler struct {
	a     *Agent
	cfg   SamplerConfig
	log   *slog.Logger
	mu    sync.Mutex
	rings map[string]*sampleRing
}

type sampleRing struct {
	buf  []tartarus.MetricSample
	next int
	full bool
}

func (r *sampleRing) add(s tartarus.MetricSample) {
	r.buf[r.next] = s
	r.next = (r.next + 1) % len(r.buf)
	r.full = r.full || r.next == 0
}

func (r *sampleRing) all() []tartarus.MetricSample {
	if !r.full {
		return append([]tartarus.MetricSample(nil), r.buf[:r.next]...)
	}
	return append(append([]tartarus.MetricSample(nil), r.buf[r.next:]...), r.buf[:r.next]...)
}

// NewSampler returns a sampler of a's sandboxes; Run drives it.
func NewSampler(a *Agent, cfg SamplerConfig) *Sampler {
	if cfg.Interval <= 0 {
		cfg.Interval = 5 * time.Second
	}
	if cfg.Keep <= 0 {
		cfg.Keep = 720
	}
	return &Sampler{a: a, cfg: cfg, log: a.log.With("part", "sampler"), rings: map[string]*sampleRing{}}
}

// Run samples every Interval until ctx ends.
func (s *Sampler) Run(ctx context.Context) {
	t := s.a.cfg.Clock.NewTicker(s.cfg.Interval)
	defer t.Stop()
	for {
		s.SampleOnce(ctx)
		select {
		case <-ctx.Done():
			return
		case <-t.C():
		}
	}
}

// SampleOnce takes one sample of every running sandbox of the node and
// forgets the rings of sandboxes that are gone.
func (s *Sampler) SampleOnce(ctx context.Context) {
	live, err := s.a.cfg.Store.List(ctx, tartarus.SandboxFilter{Node: s.a.cfg.Node, States: tartarus.LiveStates()})
	if err != nil {
		s.log.Warn("list sandboxes to sample", "err", err)
		return
	}
	keep := map[string]bool{}
	for _, sb := range live {
		keep[sb.ID] = true
		if sb.State != tartarus.StateRunning {
			continue
		}
		rt, err := s.a.runtime(sb.Runtime)
		if err != nil {
			continue
		}
		sctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		var st *tartarus.Stats
		if ss, ok := rt.(tartarus.StatsSampler); ok {
			st, err = ss.SampleStats(sctx, sb.ID)
		} else {
			st, err = rt.Stats(sctx, sb.ID)
		}
		cancel()
		if err != nil {
			s.log.Debug("sample sandbox", "sandbox", sb.ID, "err", err)
			continue
		}
		sample := tartarus.MetricSample{
			At: s.a.cfg.Clock.Now().UTC(), CPUCount: sb.CPUs, CPUPercent: st.CPUPercent,
			MemoryUsedMB: st.MemoryUsedMB, MemoryTotalMB: st.MemoryTotalMB,
			DiskUsedMB: st.DiskUsedMB, DiskTotalMB: st.DiskTotalMB,
		}
		s.mu.Lock()
		r := s.rings[sb.ID]
		if r == nil {
			r = &sampleRing{buf: make([]tartarus.MetricSample, s.cfg.Keep)}
			s.rings[sb.ID] = r
		}
		r.add(sample)
		s.mu.Unlock()
	}
	s.mu.Lock()
	for id := range s.rings {
		if !keep[id] {
			delete(s.rings, id)
		}
	}
	s.mu.Unlock()
}

// SandboxMetrics returns a sandbox's samples, oldest first, taken at or
// after since (all of them when since is zero).
func (s *Sampler) SandboxMetrics(ctx context.Context, id string, since time.Time) ([]tartarus.MetricSample, error) {
	if _, err := s.a.cfg.Store.Get(ctx, id); err != nil {
		return nil, err
	}
	s.mu.Lock()
	r := s.rings[id]
	var all []tartarus.MetricSample
	if r != nil {
		all = r.all()
	}
	s.mu.Unlock()
	out := []tartarus.MetricSample{}
	for _, m := range all {
		if !m.At.Before(since) {
			out = append(out, m)
		}
	}
	return out, nil
}
