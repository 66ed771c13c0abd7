package thanatos

import (
	"context"
	"time"

	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

// PreMortemHook runs before a sandbox is signalled (Typhon collects
// evidence here). Its error is logged and counted; the sandbox ends anyway.
type PreMortemHook func(ctx context.Context, sandboxID string, reason tartarus.TerminationReason) error

// PostMortemHook runs after the termination's final phase is recorded;
// duration is from initiation to that phase.
type PostMortemHook func(ctx context.Context, sandboxID string, exitCode int, duration time.Duration) error

// DefaultHookBudget is a hook's budget when it is registered with none.
const DefaultHookBudget = 10 * time.Second

type preHook struct {
	name   string
	budget time.Duration
	f      PreMortemHook
}

type postHook struct {
	name   string
	budget time.Duration
	f      PostMortemHook
}

// AddPreMortem registers h under name; each call gets at most budget (on
// the manager's clock; zero means DefaultHookBudget) and is then cut: its
// context is cancelled and the termination goes on without waiting. Hooks
// run in registration order, and their time counts against the grace
// period.
func (m *Manager) AddPreMortem(name string, budget time.Duration, h PreMortemHook) {
	if budget <= 0 {
		budget = DefaultHookBudget
	}
	m.mu.Lock()
	m.pre = append(m.pre, preHook{name, budget, h})
	m.mu.Unlock()
}

// AddPostMortem registers h under name, with a budget as AddPreMortem.
func (m *Manager) AddPostMortem(name string, budget time.Duration, h PostMortemHook) {
	if budget <= 0 {
		budget = DefaultHookBudget
	}
	m.mu.Lock()
	m.post = append(m.post, postHook{name, budget, h})
	m.mu.Unlock()
}

func (m *Manager) preMortem(ctx context.Context, st *tartarus.TerminationStatus) {
	m.mu.Lock()
	hooks := append([]preHook(nil), m.pre...)
	m.mu.Unlock()
	for _, h := range hooks {
		err := m.within(ctx, h.budget, func(ctx context.Context) error { return h.f(ctx, st.SandboxID, st.Reason) })
		m.hookDone("pre_mortem", h.name, st, err)
	}
	m.webhooks(ctx, WebhookPreMortem, st)
}

func (m *Manager) postMortem(ctx context.Context, st *tartarus.TerminationStatus) {
	m.mu.Lock()
	hooks := append([]postHook(nil), m.post...)
	m.mu.Unlock()
	code := -1
	if st.ExitCode != nil {
		code = *st.ExitCode
	}
	dur := st.FinishedAt.Sub(st.InitiatedAt)
	for _, h := range hooks {
		err := m.within(ctx, h.budget, func(ctx context.Context) error { return h.f(ctx, st.SandboxID, code, dur) })
		m.hookDone("post_mortem", h.name, st, err)
	}
	m.webhooks(ctx, WebhookPostMortem, st)
}

func (m *Manager) hookDone(kind, name string, st *tartarus.TerminationStatus, err error) {
	if err == nil || m.ctx.Err() != nil {
		return
	}
	m.metrics.hookFailures.WithLabelValues(kind, name).Inc()
	m.log.Warn("hook failed", "kind", kind, "hook", name, "sandbox", st.SandboxID, "err", err)
}
