package phlegethon

import (
	"context"
	"log/slog"
	"sync"
	"time"

	"github.com/tartarus-sandbox/tartarus/pkg/clock"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

// EndFunc ends sandbox id because its class's maximum duration passed; the
// server passes one that asks Thanatos to terminate with reason timeout.
type EndFunc func(ctx context.Context, id string) error

// Deadlines ends sandboxes when their Limits.MaxDuration has passed. It
// keeps no state of its own that matters after a restart: the server
// re-Watches each running sandbox from its start time and its limit. It is
// safe for concurrent use.
type Deadlines struct {
	clock clock.Clock
	end   EndFunc
	tick  time.Duration
	log   *slog.Logger

	mu    sync.Mutex
	until map[string]time.Time
}

// NewDeadlines returns a Deadlines that checks every tick (0: a second).
func NewDeadlines(clk clock.Clock, end EndFunc, tick time.Duration, log *slog.Logger) (*Deadlines, error) {
	if clk == nil || end == nil {
		return nil, tartarus.Errorf(tartarus.ErrInvalid, "deadlines: clock and end function are required")
	}
	if tick < 0 {
		return nil, tartarus.Errorf(tartarus.ErrInvalid, "deadlines: tick %s is negative", tick)
	}
	if tick == 0 {
		tick = time.Second
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Deadlines{clock: clk, end: end, tick: tick, log: log.With("component", "phlegethon-deadlines"), until: map[string]time.Time{}}, nil
}

// Watch ends sandbox id at started+max; max 0 is no limit (nothing to
// watch).
func (d *Deadlines) Watch(id string, started time.Time, max time.Duration) {
	if max <= 0 {
		return
	}
	d.mu.Lock()
	d.until[id] = started.Add(max)
	d.mu.Unlock()
}

// Forget stops watching id (it ended on its own).
func (d *Deadlines) Forget(id string) {
	d.mu.Lock()
	delete(d.until, id)
	d.mu.Unlock()
}

// Check ends every sandbox whose deadline has passed and returns their
// IDs. A failed end is retried at the next Check.
func (d *Deadlines) Check(ctx context.Context) []string {
	now := d.clock.Now()
	var due []string
	d.mu.Lock()
	for id, t := range d.until {
		if !now.Before(t) {
			due = append(due, id)
		}
	}
	d.mu.Unlock()
	var ended []string
	for _, id := range due {
		if err := d.end(ctx, id); err != nil {
			d.log.Warn("end sandbox at its max duration", "sandbox", id, "err", err)
			continue
		}
		d.Forget(id)
		ended = append(ended, id)
	}
	return ended
}

// Run checks every tick until ctx ends.
func (d *Deadlines) Run(ctx context.Context) error {
	t := d.clock.NewTicker(d.tick)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C():
			d.Check(ctx)
		}
	}
}
