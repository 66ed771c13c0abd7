package phlegethon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sort"
	"sync"
	"time"

	"github.com/tartarus-sandbox/tartarus/pkg/clock"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

// Policy is how the queue chooses among heats.
type Policy string

// The policies. FIFO exists to measure fair share against.
const (
	PolicyFair Policy = "fair" // weighted start-time fair queueing (default)
	PolicyFIFO Policy = "fifo" // arrival order across every heat
)

// Queue defaults.
const (
	DefaultQueueTimeout = 60 * time.Second
	MaxQueueTimeout     = time.Hour
	DefaultMaxDepth     = 1000
	DefaultMaxBypass    = 16
	DefaultTick         = time.Second
	waitSamples         = 1024
)

// DefaultWeights are the heats' shares of admissions when every queue is
// busy: cold 8, warm 4, hot 2, inferno 1.
func DefaultWeights() map[HeatLevel]int {
	return map[HeatLevel]int{HeatCold: 8, HeatWarm: 4, HeatHot: 2, HeatInferno: 1}
}

// QueueConfig configures a Queue; zero fields take the defaults.
type QueueConfig struct {
	Policy  Policy
	Weights map[HeatLevel]int // every heat, each at least 1
	// DefaultTimeout is how long a create waits when it sets no
	// queue_timeout_s; MaxTimeout caps what it may set.
	DefaultTimeout time.Duration
	MaxTimeout     time.Duration
	// MaxDepth bounds each heat's queue.
	MaxDepth int
	// MaxBypass is how many cooler entries may be admitted past a head
	// that does not fit before the queue holds room for it.
	MaxBypass int
	// Tick is how often deadlines are checked by Run.
	Tick   time.Duration
	Logger *slog.Logger
}

// Validate returns every problem of c.
func (c *QueueConfig) Validate() error {
	var errs []error
	bad := func(format string, args ...any) {
		errs = append(errs, tartarus.Errorf(tartarus.ErrInvalid, "queue: "+format, args...))
	}
	if c.Policy != "" && c.Policy != PolicyFair && c.Policy != PolicyFIFO {
		bad("policy %q: want fair or fifo", string(c.Policy))
	}
	if c.Weights != nil {
		for _, h := range Levels {
			if c.Weights[h] < 1 {
				bad("weight of %s %d: must be at least 1", h, c.Weights[h])
			}
		}
		for h := range c.Weights {
			if !h.Valid() {
				bad("weight of %q: not a heat", string(h))
			}
		}
	}
	if c.DefaultTimeout < 0 || c.MaxTimeout < 0 || c.MaxDepth < 0 || c.MaxBypass < 0 || c.Tick < 0 {
		bad("timeouts, depth, bypass and tick must not be negative")
	}
	if c.MaxTimeout > 0 && c.DefaultTimeout > c.MaxTimeout {
		bad("default timeout %s is above the maximum %s", c.DefaultTimeout, c.MaxTimeout)
	}
	return errors.Join(errs...)
}

// AdmitFunc tries to give e room now. nil admits e; an error wrapping
// tartarus.ErrResourceExhausted means no room yet (its text becomes the
// reason if e times out); any other error fails e with that reason. It runs
// under the queue's lock, so it must be quick (reserve a node and return)
// and must not call the Queue; it must be idempotent on e.ID.
type AdmitFunc func(ctx context.Context, e *Entry) error

// Position is where a queued create stands.
type Position struct {
	Status Status    `json:"status"`
	Heat   HeatLevel `json:"heat"`
	// InHeat is the 1-based place in its heat's queue; Overall the
	// 1-based place in the order the queue would serve now.
	InHeat  int `json:"position"`
	Overall int `json:"overall_position"`
	Depth   int `json:"depth"`
}

// Outcome is what became of a queued create.
type Outcome struct {
	Status Status        `json:"status"`
	Reason string        `json:"reason,omitempty"`
	Wait   time.Duration `json:"-"`
}

type item struct {
	e      Entry
	start  float64 // virtual start tag
	lastNo string  // last refusal, for the timeout reason
	bypass int
	done   chan Outcome
}

type heatQueue struct {
	items      []*item
	lastFinish float64
	waits      []time.Duration // ring of the last waitSamples admitted waits
	next       int
	admitted   int64
	timedOut   int64
	failed     int64
}

// Queue holds creates that no node can take now and admits them, fairly
// across heats, as room appears. It is safe for concurrent use.
type Queue struct {
	cfg   QueueConfig
	clock clock.Clock
	j     Journal
	admit AdmitFunc
	log   *slog.Logger
	kick  chan struct{}

	mu      sync.Mutex
	heats   [len(Levels)]heatQueue
	byID    map[string]*item
	vtime   float64
	seq     int64
	metrics *Collector
}

// NewQueue returns an empty queue; call Restore, then Run.
func NewQueue(cfg QueueConfig, clk clock.Clock, j Journal, admit AdmitFunc) (*Queue, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if clk == nil || j == nil || admit == nil {
		return nil, tartarus.Errorf(tartarus.ErrInvalid, "queue: clock, journal and admit function are required")
	}
	if cfg.Policy == "" {
		cfg.Policy = PolicyFair
	}
	if cfg.Weights == nil {
		cfg.Weights = DefaultWeights()
	}
	if cfg.DefaultTimeout == 0 {
		cfg.DefaultTimeout = DefaultQueueTimeout
	}
	if cfg.MaxTimeout == 0 {
		cfg.MaxTimeout = max(MaxQueueTimeout, cfg.DefaultTimeout)
	}
	if cfg.MaxDepth == 0 {
		cfg.MaxDepth = DefaultMaxDepth
	}
	if cfg.MaxBypass == 0 {
		cfg.MaxBypass = DefaultMaxBypass
	}
	if cfg.Tick == 0 {
		cfg.Tick = DefaultTick
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	return &Queue{cfg: cfg, clock: clk, j: j, admit: admit, log: cfg.Logger.With("component", "phlegethon-queue"),
		kick: make(chan struct{}, 1), byID: map[string]*item{}}, nil
}

// Timeout turns a create's queue_timeout_s into a wait: 0 is the default;
// negative or above the maximum is refused.
func (q *Queue) Timeout(seconds int) (time.Duration, error) {
	d := time.Duration(seconds) * time.Second
	switch {
	case seconds == 0:
		return q.cfg.DefaultTimeout, nil
	case seconds < 0 || d > q.cfg.MaxTimeout:
		return 0, tartarus.Errorf(tartarus.ErrInvalid, "queue_timeout_s %d: must be between 0 (default %d) and %d",
			seconds, int(q.cfg.DefaultTimeout/time.Second), int(q.cfg.MaxTimeout/time.Second))
	}
	return d, nil
}

// Enqueue adds a create that could not be placed, waiting up to wait (0:
// the default). It sets e's EnqueuedAt, Deadline and Seq, journals it, and
// returns its position. The Run loop is woken to try it at once.
func (q *Queue) Enqueue(ctx context.Context, e Entry, wait time.Duration) (Position, error) {
	switch {
	case !e.Heat.Valid():
		return Position{}, heatError(e.Heat)
	case e.ID == "" || len(e.ID) > 128:
		return Position{}, tartarus.Errorf(tartarus.ErrInvalid, "queue: entry id %q: want 1-128 characters", e.ID)
	case wait < 0 || wait > q.cfg.MaxTimeout:
		return Position{}, tartarus.Errorf(tartarus.ErrInvalid, "queue timeout %s: must be between 0 and %s", wait, q.cfg.MaxTimeout)
	}
	if wait == 0 {
		wait = q.cfg.DefaultTimeout
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	if _, ok := q.byID[e.ID]; ok {
		return Position{}, tartarus.Errorf(tartarus.ErrAlreadyExists, "queued create %s", e.ID)
	}
	hq := &q.heats[e.Heat.rank()]
	if len(hq.items) >= q.cfg.MaxDepth {
		return Position{}, tartarus.Errorf(tartarus.ErrResourceExhausted, "the %s queue is full (%d creates waiting)", e.Heat, len(hq.items))
	}
	now := q.clock.Now()
	// Seq follows the clock so that it keeps rising across restarts.
	prev := q.seq
	q.seq = max(q.seq+1, now.UnixNano())
	e.Seq, e.EnqueuedAt, e.Deadline = q.seq, now, now.Add(wait)
	if err := q.j.Put(ctx, &Record{Entry: e, Status: StatusQueued}); err != nil {
		q.seq = prev
		return Position{}, fmt.Errorf("enqueue %s: %w", e.ID, err)
	}
	q.add(e)
	q.wake()
	return q.positionLocked(e.ID), nil
}

// add tags e and appends it to its heat's queue. q.mu is held.
func (q *Queue) add(e Entry) {
	hq := &q.heats[e.Heat.rank()]
	it := &item{e: e, done: make(chan Outcome, 1)}
	// Start-time fair queueing: an entry starts at the later of the
	// virtual time and its heat's last finish tag, and finishes 1/weight
	// later, so each heat gets admissions in proportion to its weight
	// while it has work, and an idle heat earns no credit.
	it.start = max(q.vtime, hq.lastFinish)
	hq.lastFinish = it.start + 1/float64(q.cfg.Weights[e.Heat])
	hq.items = append(hq.items, it)
	q.byID[e.ID] = it
}

// Restore loads the entries a previous run left queued, in arrival order.
// Those already past their deadline time out at the next Dispatch, with a
// reason that says so.
func (q *Queue) Restore(ctx context.Context) (int, error) {
	recs, err := q.j.Queued(ctx)
	if err != nil {
		return 0, fmt.Errorf("restore queue: %w", err)
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	n := 0
	for _, r := range recs {
		if _, ok := q.byID[r.ID]; ok || !r.Heat.Valid() {
			continue
		}
		q.add(r.Entry)
		q.seq = max(q.seq, r.Seq)
		n++
	}
	q.wake()
	return n, nil
}

// CapacityFreed tells the queue that room may have appeared (a sandbox
// ended, a node joined); Run dispatches soon after.
func (q *Queue) CapacityFreed() { q.wake() }

func (q *Queue) wake() {
	select {
	case q.kick <- struct{}{}:
	default:
	}
}

// Run dispatches whenever capacity is freed or an entry arrives, and every
// Tick for deadlines, until ctx ends.
func (q *Queue) Run(ctx context.Context) error {
	t := q.clock.NewTicker(q.cfg.Tick)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-q.kick:
		case <-t.C():
		}
		q.Dispatch(ctx)
	}
}

// Dispatch times out the entries past their deadline, then admits entries in
// fair order while the admit function finds room. It returns how many were
// admitted.
func (q *Queue) Dispatch(ctx context.Context) int {
	q.mu.Lock()
	defer q.mu.Unlock()
	now := q.clock.Now()
	for r := range q.heats {
		hq := &q.heats[r]
		for _, it := range slices.Clone(hq.items) {
			if !now.Before(it.e.Deadline) {
				reason := fmt.Sprintf("waited %s in the %s queue and no node had room", it.e.Deadline.Sub(it.e.EnqueuedAt), it.e.Heat)
				if it.lastNo != "" {
					reason += ": " + it.lastNo
				}
				q.finish(ctx, it, Outcome{Status: StatusTimedOut, Reason: reason, Wait: now.Sub(it.e.EnqueuedAt)})
			}
		}
	}
	admitted := 0
	for {
		ok, progress := q.step(ctx, now)
		if ok {
			admitted++
		}
		if !progress {
			return admitted
		}
	}
}

// heads returns the head of every non-empty heat queue in service order.
// q.mu is held.
func (q *Queue) heads() []*item {
	var hs []*item
	for r := range q.heats {
		if len(q.heats[r].items) > 0 {
			hs = append(hs, q.heats[r].items[0])
		}
	}
	slices.SortFunc(hs, q.order)
	return hs
}

// order is the service order: by start tag, ties to the cooler heat (fair);
// or by arrival (FIFO).
func (q *Queue) order(a, b *item) int {
	if q.cfg.Policy == PolicyFIFO {
		return int(a.e.Seq - b.e.Seq)
	}
	switch {
	case a.start < b.start:
		return -1
	case a.start > b.start:
		return 1
	}
	return a.e.Heat.rank() - b.e.Heat.rank()
}

// step tries to admit one entry: the first head in service order, or a head
// of a cooler heat when the first does not fit and has been passed fewer
// than MaxBypass times. It reports whether one was admitted and whether
// anything changed (an admission or a failure). q.mu is held.
func (q *Queue) step(ctx context.Context, now time.Time) (admitted, progress bool) {
	hs := q.heads()
	if len(hs) == 0 {
		return false, false
	}
	first := hs[0]
	for i, it := range hs {
		if i > 0 && (q.cfg.Policy == PolicyFIFO || !first.e.Heat.Hotter(it.e.Heat) || first.bypass >= q.cfg.MaxBypass) {
			continue
		}
		err := q.admit(ctx, &it.e)
		switch {
		case err == nil:
			if i == 0 {
				q.vtime = max(q.vtime, it.start)
			} else {
				first.bypass++
			}
			q.finish(ctx, it, Outcome{Status: StatusAdmitted, Wait: now.Sub(it.e.EnqueuedAt)})
			return true, true
		case errors.Is(err, tartarus.ErrResourceExhausted):
			it.lastNo = err.Error()
		default:
			q.finish(ctx, it, Outcome{Status: StatusFailed, Reason: err.Error(), Wait: now.Sub(it.e.EnqueuedAt)})
			return false, true
		}
	}
	return false, false
}

// finish removes it, journals and delivers its outcome. q.mu is held.
func (q *Queue) finish(ctx context.Context, it *item, o Outcome) {
	hq := &q.heats[it.e.Heat.rank()]
	if i := slices.Index(hq.items, it); i >= 0 {
		hq.items = slices.Delete(hq.items, i, i+1)
	}
	delete(q.byID, it.e.ID)
	switch o.Status {
	case StatusAdmitted:
		hq.admitted++
		if len(hq.waits) < waitSamples {
			hq.waits = append(hq.waits, o.Wait)
		} else {
			hq.waits[hq.next] = o.Wait
			hq.next = (hq.next + 1) % waitSamples
		}
	case StatusTimedOut:
		hq.timedOut++
	case StatusFailed:
		hq.failed++
	}
	if q.metrics != nil {
		q.metrics.queued(it.e.Heat, o)
	}
	// A lost journal write replays the entry after a restart; the admit
	// function is idempotent on its ID, so that does no harm.
	rec := &Record{Entry: it.e, Status: o.Status, Reason: o.Reason, FinishedAt: q.clock.Now()}
	if err := q.j.Put(context.WithoutCancel(ctx), rec); err != nil {
		q.log.Error("journal queued create outcome", "id", it.e.ID, "status", o.Status, "err", err)
	}
	it.done <- o
}

// Wait blocks until the create id leaves the queue and returns what became
// of it. A create no longer queued answers from the journal.
func (q *Queue) Wait(ctx context.Context, id string) (Outcome, error) {
	q.mu.Lock()
	it, ok := q.byID[id]
	q.mu.Unlock()
	if !ok {
		r, err := q.j.Get(ctx, id)
		if err != nil {
			return Outcome{}, err
		}
		if r.Status == StatusQueued {
			return Outcome{}, tartarus.Errorf(tartarus.ErrUnavailable, "queued create %s is held by another server", id)
		}
		return Outcome{Status: r.Status, Reason: r.Reason, Wait: r.FinishedAt.Sub(r.EnqueuedAt)}, nil
	}
	select {
	case o := <-it.done:
		it.done <- o // for any other waiter
		return o, nil
	case <-ctx.Done():
		return Outcome{}, ctx.Err()
	}
}

// Cancel takes the create id out of the queue with reason.
func (q *Queue) Cancel(ctx context.Context, id, reason string) error {
	q.mu.Lock()
	defer q.mu.Unlock()
	it, ok := q.byID[id]
	if !ok {
		return tartarus.Errorf(tartarus.ErrNotFound, "queued create %s", id)
	}
	q.finish(ctx, it, Outcome{Status: StatusCancelled, Reason: reason, Wait: q.clock.Now().Sub(it.e.EnqueuedAt)})
	return nil
}

// Position reports where the create id stands; a create no longer queued
// reports its final status from the journal.
func (q *Queue) Position(ctx context.Context, id string) (Position, error) {
	q.mu.Lock()
	_, ok := q.byID[id]
	var p Position
	if ok {
		p = q.positionLocked(id)
	}
	q.mu.Unlock()
	if ok {
		return p, nil
	}
	r, err := q.j.Get(ctx, id)
	if err != nil {
		return Position{}, err
	}
	return Position{Status: r.Status, Heat: r.Heat}, nil
}

// positionLocked is id's position; q.mu is held and id is queued.
func (q *Queue) positionLocked(id string) Position {
	it := q.byID[id]
	hq := &q.heats[it.e.Heat.rank()]
	p := Position{Status: StatusQueued, Heat: it.e.Heat, InHeat: slices.Index(hq.items, it) + 1, Depth: len(hq.items), Overall: 1}
	for r := range q.heats {
		for _, o := range q.heats[r].items {
			if o != it && q.order(o, it) < 0 {
				p.Overall++
			}
		}
	}
	return p
}

// QueueStats is one heat's queue now.
type QueueStats struct {
	Depth    int
	AvgWait  time.Duration
	P99Wait  time.Duration
	Admitted int64
	TimedOut int64
	Failed   int64
}

// Stats reports every heat's queue; waits are over the last 1024 admitted.
func (q *Queue) Stats() map[HeatLevel]QueueStats {
	q.mu.Lock()
	defer q.mu.Unlock()
	out := make(map[HeatLevel]QueueStats, len(Levels))
	for r, h := range Levels {
		hq := &q.heats[r]
		s := QueueStats{Depth: len(hq.items), Admitted: hq.admitted, TimedOut: hq.timedOut, Failed: hq.failed}
		if len(hq.waits) > 0 {
			var sum time.Duration
			for _, w := range hq.waits {
				sum += w
			}
			s.AvgWait = sum / time.Duration(len(hq.waits))
			s.P99Wait = Percentile(hq.waits, 0.99)
		}
		out[h] = s
	}
	return out
}

// Percentile returns the p-th quantile (0 < p <= 1) of ds by the nearest-rank
// method, or 0 for none.
func Percentile(ds []time.Duration, p float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	rank := int(float64(len(s))*p+0.999999999) - 1
	return s[min(max(rank, 0), len(s)-1)]
}
