package link

import (
	"context"
	"errors"
	"net/http"
	"slices"
	"sync"
	"time"

	"github.com/tartarus-sandbox/tartarus/pkg/hecatoncheir"
	"github.com/tartarus-sandbox/tartarus/pkg/hecatoncheir/wire"
	"github.com/tartarus-sandbox/tartarus/pkg/store"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
	"github.com/tartarus-sandbox/tartarus/pkg/thanatos"
)

// Changes collects the ids of sandboxes whose record changed, each once
// until the link takes them; noting never blocks.
type Changes struct {
	mu    sync.Mutex
	ids   map[string]bool
	ready chan struct{} // holds a token while ids is not empty
}

// NewChanges returns an empty set of changes.
func NewChanges() *Changes {
	return &Changes{ids: map[string]bool{}, ready: make(chan struct{}, 1)}
}

// Note adds id.
func (c *Changes) Note(id string) {
	c.mu.Lock()
	c.ids[id] = true
	c.mu.Unlock()
	select {
	case c.ready <- struct{}{}:
	default:
	}
}

// Take returns the noted ids, sorted, and forgets them.
func (c *Changes) Take() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make([]string, 0, len(c.ids))
	for id := range c.ids {
		out = append(out, id)
	}
	clear(c.ids)
	slices.Sort(out)
	return out
}

// Watch returns st wrapped so that every sandbox it creates or moves is
// noted in the returned Changes: the node agent opened over the wrapper
// has every state change it makes, on its own or on command, reported.
// When st is a store.SleepRecordKeeper the wrapper is one too, forwarding
// to st, so the agent keeps its sleep records in the same database.
func Watch(st store.Store) (store.Store, *Changes) {
	ch := NewChanges()
	w := &watched{Store: st, ch: ch}
	if rs, ok := st.(store.SleepRecordKeeper); ok {
		return &watchedRecords{watched: w, rs: rs}, ch
	}
	return w, ch
}

type watched struct {
	store.Store
	ch *Changes
}

// Create implements store.Store.
func (w *watched) Create(ctx context.Context, sb *tartarus.Sandbox) error {
	err := w.Store.Create(ctx, sb)
	if err == nil {
		w.ch.Note(sb.ID)
	}
	return err
}

// Move implements store.Store.
func (w *watched) Move(ctx context.Context, id string, from, to tartarus.State, m store.Change) (*tartarus.Sandbox, error) {
	sb, err := w.Store.Move(ctx, id, from, to, m)
	if err == nil {
		w.ch.Note(id)
	}
	return sb, err
}

// SetNetwork implements store.NetworkSetter when the wrapped store does
// (the agent changes a sandbox's policy only through it): the new policy
// is reported like a state change, so that the cluster's record, which a
// wake on another node starts from, has it.
func (w *watched) SetNetwork(ctx context.Context, id string, n *tartarus.NetworkSpec) (*tartarus.Sandbox, error) {
	ns, ok := w.Store.(store.NetworkSetter)
	if !ok {
		return nil, tartarus.Errorf(tartarus.ErrNotImplemented, "this node's store cannot change sandbox networks")
	}
	sb, err := ns.SetNetwork(ctx, id, n)
	if err == nil {
		w.ch.Note(id)
	}
	return sb, err
}

// SetExpiry implements store.ExpirySetter when the wrapped store does; the
// new expiry is reported.
func (w *watched) SetExpiry(ctx context.Context, id string, at time.Time) (*tartarus.Sandbox, error) {
	es, ok := w.Store.(store.ExpirySetter)
	if !ok {
		return nil, tartarus.Errorf(tartarus.ErrNotImplemented, "this node's store cannot change a sandbox's expiry")
	}
	sb, err := es.SetExpiry(ctx, id, at)
	if err == nil {
		w.ch.Note(id)
	}
	return sb, err
}

// Terminations implements store.TerminationKeeper: the wrapped store's
// journal, so that an agent's terminations survive its restart as a single
// node's do; nil when the wrapped store keeps none.
func (w *watched) Terminations() thanatos.Journal {
	if tk, ok := w.Store.(store.TerminationKeeper); ok {
		return tk.Terminations()
	}
	return nil
}

// watchedRecords is watched over a store that keeps sleep records.
type watchedRecords struct {
	*watched
	rs store.SleepRecordKeeper
}

// SleepRecords implements store.SleepRecordKeeper: the wrapped store's
// sleep records.
func (w *watchedRecords) SleepRecords(runtime string) *store.SleepRecords {
	return w.rs.SleepRecords(runtime)
}

var (
	_ store.Store             = (*watched)(nil)
	_ store.Store             = (*watchedRecords)(nil)
	_ store.SleepRecordKeeper = (*watchedRecords)(nil)
	_ store.NetworkSetter     = (*watched)(nil)
	_ store.ExpirySetter      = (*watched)(nil)
	_ store.TerminationKeeper = (*watched)(nil)
)

// maxReports bounds one POST of reports.
const maxReports = 256

// reports sends the noted changes as they come, each sandbox as it is
// when sent (so changes coalesce), retrying with backoff until a server
// takes them.
func (l *Link) reports(ctx context.Context) {
	ch := l.cfg.Changes
	failures := 0
	for {
		select {
		case <-ctx.Done():
			return
		case <-ch.ready:
		}
		ids := ch.Take()
		for len(ids) > 0 && ctx.Err() == nil {
			n := min(len(ids), maxReports)
			if err := l.sendReports(ctx, ids[:n]); err != nil {
				if ctx.Err() != nil {
					return
				}
				failures++
				if failures == 1 || failures%30 == 0 {
					l.log.Warn("send reports; retrying", "sandboxes", len(ids), "failures", failures, "err", err)
				}
				// Put them back: they are sent with whatever changes next.
				for _, id := range ids {
					ch.Note(id)
				}
				l.sleep(ctx, l.backoff(failures))
				break
			}
			failures = 0
			ids = ids[n:]
		}
	}
}

func (l *Link) sendReports(ctx context.Context, ids []string) error {
	batch := wire.Reports{Node: l.agent.Node()}
	for _, id := range ids {
		sb, err := l.agent.Get(ctx, id)
		if errors.Is(err, tartarus.ErrNotFound) {
			continue
		}
		if err != nil {
			return err
		}
		// A sandbox this node let go of belongs to the cluster, or another
		// node, now: its record here is no news to anyone.
		if sb.Node != l.agent.Node() || hecatoncheir.Dropped(sb) {
			continue
		}
		batch.Sandboxes = append(batch.Sandboxes, l.report(ctx, sb))
	}
	if len(batch.Sandboxes) == 0 {
		return nil
	}
	start := l.cfg.Clock.Now()
	if err := l.call(ctx, http.MethodPost, wire.PathReports, batch, nil); err != nil {
		if final(err) {
			l.log.Error("server refused reports", "sandboxes", len(batch.Sandboxes), "err", err)
			return nil
		}
		return err
	}
	l.log.Debug("reports sent", "sandboxes", len(batch.Sandboxes), "took", l.cfg.Clock.Now().Sub(start).Round(time.Millisecond))
	return nil
}
