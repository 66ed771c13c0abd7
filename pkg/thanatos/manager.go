package thanatos

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"sync"
	"time"

	"github.com/tartarus-sandbox/tartarus/pkg/clock"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

// Defaults for Config's zero fields.
const (
	DefaultDrainPoll      = 250 * time.Millisecond
	DefaultCheckpointTTL  = 7 * 24 * time.Hour
	DefaultMaxGracePeriod = time.Hour
)

// Config configures a Manager.
type Config struct {
	Target  Target
	Journal Journal
	// Clock decides every deadline; nil means the system clock.
	Clock  clock.Clock
	Logger *slog.Logger
	// DrainPoll is how often ActiveWork is asked while draining.
	DrainPoll time.Duration
	// CheckpointTTL is how long a checkpoint is kept unless asked otherwise.
	CheckpointTTL time.Duration
	// MaxGracePeriod bounds tartarus.ShutdownOptions.GracePeriod.
	MaxGracePeriod time.Duration
	// Webhooks are operator-configured URLs told of each termination.
	Webhooks []Webhook
	// WebhookKey signs webhook requests (required with Webhooks).
	WebhookKey []byte
	// CallbackKey returns the key that signs a tenant's callbacks
	// (required for a termination with a CallbackURL).
	CallbackKey func(tenant string) ([]byte, error)
	// Retry says how callbacks are retried.
	Retry RetryPolicy
	// AllowHosts lets callbacks and webhooks reach these hosts (names,
	// addresses or CIDR prefixes) even if they are loopback, private,
	// link-local or the host's own.
	AllowHosts []string
	// Resolver resolves callback and webhook hosts; nil means the system's.
	Resolver Resolver
	// OnPhase, if set, hears each phase once it is in the journal (the
	// initiated one included), for the audit log; it must not block.
	OnPhase func(ctx context.Context, st *tartarus.TerminationStatus)
}

// Validate returns every problem with c, joined.
func (c *Config) Validate() error {
	var errs []error
	if c.Target == nil {
		errs = append(errs, errors.New("thanatos: Target is required"))
	}
	if c.Journal == nil {
		errs = append(errs, errors.New("thanatos: Journal is required"))
	}
	if c.DrainPoll < 0 || c.CheckpointTTL < 0 || c.MaxGracePeriod < 0 {
		errs = append(errs, errors.New("thanatos: DrainPoll, CheckpointTTL and MaxGracePeriod must not be negative"))
	}
	if len(c.Webhooks) > 0 && len(c.WebhookKey) == 0 {
		errs = append(errs, errors.New("thanatos: WebhookKey is required with Webhooks"))
	}
	for i, w := range c.Webhooks {
		if err := w.validate(); err != nil {
			errs = append(errs, fmt.Errorf("thanatos: webhook %d: %w", i, err))
		}
	}
	if err := c.Retry.validate(); err != nil {
		errs = append(errs, err)
	}
	if _, err := newAddressGuard(c.AllowHosts, nil); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// Manager drives terminations through their phases. It implements
// TerminationHandler.
type Manager struct {
	cfg     Config
	clock   clock.Clock
	log     *slog.Logger
	guard   *addressGuard
	http    *http.Client
	metrics *Collector

	ctx    context.Context // ends with Close; runs and deliveries stop
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu    sync.Mutex
	runs  map[string]*run
	pre   []preHook
	post  []postHook
	close bool
}

var _ TerminationHandler = (*Manager)(nil)

// run is one termination being driven.
type run struct {
	ready chan struct{} // closed once st is set (or err)
	err   error
	st    *tartarus.TerminationStatus // guarded by Manager.mu
	force chan struct{}               // closed by ForceTerminate
	done  chan struct{}               // closed when the run stops (final or manager closed)
	once  sync.Once
}

// New returns a Manager. Call Resume to finish what an earlier manager
// left, and Close when done.
func New(cfg Config) (*Manager, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.Clock == nil {
		cfg.Clock = clock.System{}
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.DrainPoll == 0 {
		cfg.DrainPoll = DefaultDrainPoll
	}
	if cfg.CheckpointTTL == 0 {
		cfg.CheckpointTTL = DefaultCheckpointTTL
	}
	if cfg.MaxGracePeriod == 0 {
		cfg.MaxGracePeriod = DefaultMaxGracePeriod
	}
	cfg.Retry = cfg.Retry.withDefaults()
	guard, err := newAddressGuard(cfg.AllowHosts, cfg.Resolver)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	m := &Manager{
		cfg:     cfg,
		clock:   cfg.Clock,
		log:     cfg.Logger.With("component", "thanatos"),
		guard:   guard,
		http:    newHTTPClient(guard, cfg.Retry.Timeout),
		metrics: newCollector(),
		ctx:     ctx,
		cancel:  cancel,
		runs:    map[string]*run{},
	}
	return m, nil
}

// Close stops every run where it stands (the journal keeps its phase for
// the next manager's Resume) and every callback delivery, and waits for
// them.
func (m *Manager) Close() error {
	m.mu.Lock()
	m.close = true
	m.mu.Unlock()
	m.cancel()
	m.wg.Wait()
	return nil
}

// Collector returns the manager's Prometheus metrics; register it once.
func (m *Manager) Collector() *Collector { return m.metrics }

// InitiateShutdown implements TerminationHandler. It validates opts,
// writes the initiated phase and starts driving the termination in the
// background; ctx bounds only that first write. A sandbox that already
// has a termination (running, left by a crash, or finished) gets that
// one back, unchanged.
func (m *Manager) InitiateShutdown(ctx context.Context, id string, opts *tartarus.ShutdownOptions) (*tartarus.TerminationStatus, error) {
	if id == "" {
		return nil, tartarus.Errorf(tartarus.ErrInvalid, "sandbox id is empty")
	}
	if opts == nil {
		opts = &tartarus.ShutdownOptions{}
	}
	o, err := normalize(*opts, m.cfg.MaxGracePeriod)
	if err != nil {
		return nil, err
	}
	if o.CallbackURL != "" && m.cfg.CallbackKey == nil {
		return nil, tartarus.Errorf(tartarus.ErrFailedPrecondition, "callbacks are not configured on this server")
	}
	r, mine, err := m.claim(id)
	if err != nil {
		return nil, err
	}
	if !mine {
		return m.await(ctx, r)
	}
	// Ours to set up: an earlier record wins over opts.
	st, err := m.cfg.Journal.Get(ctx, id)
	switch {
	case err == nil && st.Phase.Final():
		m.unclaim(id, r, st, nil)
		return st, nil
	case err == nil:
		m.log.Info("adopting a termination left by an earlier manager", "sandbox", id, "phase", st.Phase)
	case errors.Is(err, tartarus.ErrNotFound):
		now := m.clock.Now()
		st = &tartarus.TerminationStatus{
			SandboxID: id, Tenant: o.Tenant, Phase: tartarus.PhaseInitiated, Reason: o.Reason, Signal: o.Signal,
			GracePeriod: o.GracePeriod, CreateCheckpoint: o.CreateCheckpoint, CheckpointTTL: o.CheckpointTTL,
			CallbackURL: o.CallbackURL, InitiatedAt: now, GraceDeadline: now.Add(o.GracePeriod),
			Phases: []tartarus.PhaseRecord{{Phase: tartarus.PhaseInitiated, StartedAt: now}},
		}
		if o.CreateCheckpoint {
			st.CheckpointID = tartarus.NewID("ck-")
		}
		if err := m.cfg.Journal.Put(ctx, st); err != nil {
			err = fmt.Errorf("initiate termination of %s: %w", id, err)
			m.unclaim(id, r, nil, err)
			return nil, err
		}
		m.log.Info("termination initiated", "sandbox", id, "reason", st.Reason, "grace", st.GracePeriod, "checkpoint", st.CreateCheckpoint)
		if m.cfg.OnPhase != nil {
			m.cfg.OnPhase(ctx, st.Clone())
		}
	default:
		err = fmt.Errorf("initiate termination of %s: %w", id, err)
		m.unclaim(id, r, nil, err)
		return nil, err
	}
	m.start(r, st)
	return st.Clone(), nil
}

// claim returns the run for id, creating a placeholder if there is none;
// mine says the caller created it and must set it up.
func (m *Manager) claim(id string) (*run, bool, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.close {
		return nil, false, tartarus.Errorf(tartarus.ErrUnavailable, "termination manager is closed")
	}
	if r, ok := m.runs[id]; ok {
		return r, false, nil
	}
	r := &run{ready: make(chan struct{}), force: make(chan struct{}), done: make(chan struct{})}
	m.runs[id] = r
	return r, true, nil
}

// unclaim removes a placeholder that will not run, answering its waiters
// with st or err.
func (m *Manager) unclaim(id string, r *run, st *tartarus.TerminationStatus, err error) {
	m.mu.Lock()
	delete(m.runs, id)
	r.st, r.err = st, err
	m.mu.Unlock()
	close(r.ready)
	close(r.done)
}

// await returns r's status once it is set up.
func (m *Manager) await(ctx context.Context, r *run) (*tartarus.TerminationStatus, error) {
	select {
	case <-r.ready:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if r.err != nil {
		return nil, r.err
	}
	return r.st.Clone(), nil
}

// start drives r from st's phase in the background.
func (m *Manager) start(r *run, st *tartarus.TerminationStatus) {
	m.mu.Lock()
	r.st = st.Clone()
	m.mu.Unlock()
	close(r.ready)
	m.metrics.pending.Inc()
	m.wg.Add(1)
	go func() {
		defer m.wg.Done()
		defer m.metrics.pending.Dec()
		m.drive(r)
	}()
}

// Resume picks up every termination the journal holds in a non-final
// phase and finishes each from its recorded phase. It returns how many it
// resumed.
func (m *Manager) Resume(ctx context.Context) (int, error) {
	pending, err := m.cfg.Journal.ListPending(ctx)
	if err != nil {
		return 0, fmt.Errorf("resume terminations: %w", err)
	}
	n := 0
	for _, st := range pending {
		r, mine, err := m.claim(st.SandboxID)
		if err != nil {
			return n, err
		}
		if !mine {
			continue
		}
		m.log.Info("resuming termination", "sandbox", st.SandboxID, "phase", st.Phase)
		m.start(r, st)
		n++
	}
	return n, nil
}

// Status implements TerminationHandler.
func (m *Manager) Status(ctx context.Context, id string) (*tartarus.TerminationStatus, error) {
	m.mu.Lock()
	r, ok := m.runs[id]
	if ok && r.st != nil {
		st := r.st.Clone()
		m.mu.Unlock()
		return st, nil
	}
	m.mu.Unlock()
	return m.cfg.Journal.Get(ctx, id)
}

// ListPending implements TerminationHandler: what the journal holds in a
// non-final phase (on every node sharing the journal).
func (m *Manager) ListPending(ctx context.Context) ([]*tartarus.TerminationStatus, error) {
	return m.cfg.Journal.ListPending(ctx)
}

// Wait blocks until the sandbox's termination is final (or ctx ends, or
// the manager closes) and returns its status.
func (m *Manager) Wait(ctx context.Context, id string) (*tartarus.TerminationStatus, error) {
	m.mu.Lock()
	r, ok := m.runs[id]
	m.mu.Unlock()
	if ok {
		select {
		case <-r.done:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	st, err := m.Status(ctx, id)
	if err != nil {
		return nil, err
	}
	if !st.Phase.Final() {
		return st, tartarus.Errorf(tartarus.ErrUnavailable, "termination of %s stopped in phase %s (manager closed)", id, st.Phase)
	}
	return st, nil
}

// ForceTerminate implements TerminationHandler: a termination under way
// skips the rest of its grace period (no signal if not yet sent, drain
// ends, kill now); otherwise one starts with no grace at the user's
// request. It waits for the final phase and returns its error, if any.
func (m *Manager) ForceTerminate(ctx context.Context, id string) error {
	if _, err := m.InitiateShutdown(ctx, id, &tartarus.ShutdownOptions{Reason: tartarus.ReasonUserRequest}); err != nil {
		return err
	}
	m.mu.Lock()
	r, ok := m.runs[id]
	m.mu.Unlock()
	if ok {
		r.once.Do(func() { close(r.force) })
	}
	st, err := m.Wait(ctx, id)
	if err != nil {
		return err
	}
	if st.Phase == tartarus.PhaseFailed {
		return fmt.Errorf("terminate %s: %s", id, st.ErrorMessage)
	}
	return nil
}

// Checkpoint implements TerminationHandler: a checkpoint of a live
// sandbox, which keeps running. It is refused while the sandbox is being
// terminated (ask for CreateCheckpoint instead).
func (m *Manager) Checkpoint(ctx context.Context, id string) (*tartarus.Checkpoint, error) {
	return m.CheckpointFor(ctx, id, "", 0)
}

// CheckpointFor is Checkpoint recording the owning tenant and a lifetime
// (zero means the default).
func (m *Manager) CheckpointFor(ctx context.Context, id, tenant string, ttl time.Duration) (*tartarus.Checkpoint, error) {
	if ttl < 0 {
		return nil, tartarus.Errorf(tartarus.ErrInvalid, "checkpoint ttl %v is negative", ttl)
	}
	if ttl == 0 {
		ttl = m.cfg.CheckpointTTL
	}
	m.mu.Lock()
	_, busy := m.runs[id]
	m.mu.Unlock()
	if busy {
		return nil, tartarus.Errorf(tartarus.ErrFailedPrecondition, "sandbox %s is being terminated", id)
	}
	if st, err := m.cfg.Journal.Get(ctx, id); err == nil {
		return nil, tartarus.Errorf(tartarus.ErrFailedPrecondition, "sandbox %s has a termination (%s)", id, st.Phase)
	} else if !errors.Is(err, tartarus.ErrNotFound) {
		return nil, fmt.Errorf("checkpoint %s: %w", id, err)
	}
	return m.checkpoint(ctx, id, tenant, tartarus.NewID("ck-"), ttl, "")
}

func (m *Manager) checkpoint(ctx context.Context, id, tenant, ckID string, ttl time.Duration, reason tartarus.TerminationReason) (*tartarus.Checkpoint, error) {
	snap, err := m.cfg.Target.Checkpoint(ctx, id, ckID)
	if err != nil {
		return nil, fmt.Errorf("checkpoint %s: %w", id, err)
	}
	now := m.clock.Now()
	ck := &tartarus.Checkpoint{
		ID: ckID, SandboxID: id, Tenant: tenant, CreatedAt: now, ExpiresAt: now.Add(ttl),
		Size: snap.Size, SnapshotRef: snap.Ref, Restorable: true, Reason: reason,
	}
	if err := m.cfg.Journal.PutCheckpoint(ctx, ck); err != nil {
		return nil, fmt.Errorf("checkpoint %s: %w", id, err)
	}
	return ck, nil
}

// ListCheckpoints returns a tenant's checkpoints ("" for all).
func (m *Manager) ListCheckpoints(ctx context.Context, tenant string) ([]*tartarus.Checkpoint, error) {
	return m.cfg.Journal.ListCheckpoints(ctx, tenant)
}

// GetCheckpoint returns one checkpoint, or ErrNotFound.
func (m *Manager) GetCheckpoint(ctx context.Context, id string) (*tartarus.Checkpoint, error) {
	return m.cfg.Journal.GetCheckpoint(ctx, id)
}

// CollectCheckpoints deletes every expired checkpoint (its snapshot first,
// when the Target is a CheckpointRemover) and returns how many went.
func (m *Manager) CollectCheckpoints(ctx context.Context) (int, error) {
	expired, err := m.cfg.Journal.ExpiredCheckpoints(ctx, m.clock.Now())
	if err != nil {
		return 0, fmt.Errorf("collect checkpoints: %w", err)
	}
	rm, _ := m.cfg.Target.(CheckpointRemover)
	n := 0
	var errs []error
	for _, c := range expired {
		if rm != nil {
			if err := rm.RemoveCheckpoint(ctx, c.SnapshotRef); err != nil && !errors.Is(err, tartarus.ErrNotFound) {
				errs = append(errs, fmt.Errorf("remove checkpoint %s: %w", c.ID, err))
				continue
			}
		}
		if err := m.cfg.Journal.DeleteCheckpoint(ctx, c.ID); err != nil {
			errs = append(errs, err)
			continue
		}
		n++
	}
	return n, errors.Join(errs...)
}
