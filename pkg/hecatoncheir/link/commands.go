package link

import (
	"context"
	"errors"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/tartarus-sandbox/tartarus/pkg/hecatoncheir/wire"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

// kindDrop marks a heartbeat's Drop, queued with the sandbox's commands so
// that it never runs beside one of them. It never goes on the wire.
const kindDrop wire.Kind = "drop (from heartbeat)"

// maxHave bounds the command ids one poll names as had already.
const maxHave = 64

// idlePoll bounds the pause after a poll that brought no new command: a
// server answers at once while commands are pending, including those the
// agent runs already, unless it honours wire.QueryHave. The pause ends
// early when one of those commands is done.
const idlePoll = 250 * time.Millisecond

// poll long-polls for commands until ctx ends and queues each one.
func (l *Link) poll(ctx context.Context) {
	failures := 0
	for ctx.Err() == nil {
		q := url.Values{"wait": {l.cfg.PollWait.String()}}
		if have := l.have(); len(have) > 0 {
			q.Set(wire.QueryHave, strings.Join(have, ","))
		}
		var cmds wire.Commands
		if err := l.call(ctx, http.MethodGet, wire.PathCommands+"?"+q.Encode(), nil, &cmds); err != nil {
			if ctx.Err() != nil {
				return
			}
			failures++
			if failures == 1 || failures%30 == 0 {
				l.log.Warn("poll for commands failed", "failures", failures, "err", err)
			}
			l.sleep(ctx, l.backoff(failures))
			continue
		}
		failures = 0
		fresh := 0
		for _, c := range cmds.Commands {
			if l.enqueue(ctx, c, nil) {
				fresh++
			}
		}
		if len(cmds.Commands) > 0 && fresh == 0 {
			l.waitSettled(ctx)
		}
	}
}

// waitSettled waits until a command is done, idlePoll passes, or ctx ends.
func (l *Link) waitSettled(ctx context.Context) {
	t := l.cfg.Clock.NewTicker(idlePoll)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-l.settled:
	case <-t.C():
	}
}

// have lists the commands queued or running (not drops), at most maxHave.
func (l *Link) have() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	var ids []string
	for id := range l.inflight {
		if _, drop := l.dropOf[id]; !drop && len(ids) < maxHave {
			ids = append(ids, id)
		}
	}
	slices.Sort(ids)
	return ids
}

// enqueue queues a command behind the others of its sandbox, unless it is
// queued or running already (delivered again before its result arrived)
// or done; it reports whether it queued it.
func (l *Link) enqueue(ctx context.Context, c wire.Command, drop *wire.Drop) bool {
	key := c.SandboxID
	if key == "" {
		key = "command/" + c.ID
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.inflight[c.ID] || l.done[c.ID] {
		return false
	}
	l.inflight[c.ID] = true
	q, running := l.queues[key]
	l.queues[key] = append(q, c)
	if drop != nil {
		l.dropOf[c.ID] = *drop
	}
	if !running {
		l.workers.Go(func() { l.work(ctx, key) })
	}
	return true
}

// work runs the queued commands of one sandbox in order until none is
// left.
func (l *Link) work(ctx context.Context, key string) {
	for {
		l.mu.Lock()
		q := l.queues[key]
		if len(q) == 0 {
			delete(l.queues, key)
			l.mu.Unlock()
			return
		}
		c := q[0]
		l.queues[key] = q[1:]
		d, isDrop := l.dropOf[c.ID]
		l.mu.Unlock()

		taken := false
		if isDrop {
			l.drop(ctx, d)
		} else {
			taken = l.postResult(ctx, c, l.execute(ctx, c))
		}
		l.mu.Lock()
		delete(l.inflight, c.ID)
		delete(l.dropOf, c.ID)
		if taken {
			l.rememberDone(c.ID)
		}
		l.mu.Unlock()
		select {
		case l.settled <- struct{}{}:
		default:
		}
	}
}

// drop lets go of a sandbox as a heartbeat's reply asked; a failure is
// logged (the server repeats the Drop in its next replies).
func (l *Link) drop(ctx context.Context, d wire.Drop) {
	if err := l.agent.Drop(ctx, d.SandboxID, d.KeepSnapshot); err != nil {
		l.log.Error("drop sandbox", "sandbox", d.SandboxID, "reason", d.Reason, "err", err)
		return
	}
	l.log.Info("dropped sandbox", "sandbox", d.SandboxID, "reason", d.Reason, "keep_snapshot", d.KeepSnapshot)
}

// maxDone is how many finished commands the link remembers.
const maxDone = 4096

// rememberDone notes a command whose result a server took; the caller
// holds l.mu.
func (l *Link) rememberDone(id string) {
	l.done[id] = true
	l.doneOrder = append(l.doneOrder, id)
	if len(l.doneOrder) > maxDone {
		delete(l.done, l.doneOrder[0])
		l.doneOrder = l.doneOrder[1:]
	}
}

// execute does one command and says what became of it.
func (l *Link) execute(ctx context.Context, c wire.Command) *wire.Result {
	log := l.log.With("command", c.ID, "kind", c.Kind, "sandbox", c.SandboxID)
	log.Debug("command")
	sbs, err := l.do(ctx, c)
	res := &wire.Result{Error: wire.ErrorOf(err)}
	if err != nil {
		log.Warn("command failed", "err", err)
	}
	for _, sb := range sbs {
		res.Sandboxes = append(res.Sandboxes, l.report(ctx, sb))
	}
	return res
}

func (l *Link) do(ctx context.Context, c wire.Command) ([]*tartarus.Sandbox, error) {
	a := l.agent
	one := func(sb *tartarus.Sandbox, err error) ([]*tartarus.Sandbox, error) {
		if err != nil {
			return nil, err
		}
		return []*tartarus.Sandbox{sb}, nil
	}
	switch c.Kind {
	case wire.KindCreate:
		if c.Sandbox == nil || c.Create == nil || c.Sandbox.ID != c.SandboxID {
			return nil, tartarus.Errorf(tartarus.ErrInvalid, "create command %s: want the sandbox %s and the request", c.ID, c.SandboxID)
		}
		if c.Template != nil {
			if err := a.FetchTemplate(ctx, c.Template); err != nil {
				// Nothing was recorded here: the cluster learns of the
				// failure from this report.
				failed := *c.Sandbox
				failed.State, failed.Error, failed.UpdatedAt = tartarus.StateFailed, err.Error(), l.cfg.Clock.Now().UTC()
				return []*tartarus.Sandbox{&failed}, err
			}
		}
		return one(a.CreateAs(ctx, c.Sandbox, c.Create))
	case wire.KindDestroy:
		sb, err := a.DestroyWith(ctx, c.SandboxID, c.Shutdown)
		if errors.Is(err, tartarus.ErrNotFound) {
			// Never here, or gone already: destroyed is what was asked.
			if c.Sandbox == nil {
				return nil, nil
			}
			gone := *c.Sandbox
			gone.State = tartarus.StateTerminated
			return []*tartarus.Sandbox{&gone}, nil
		}
		return one(sb, err)
	case wire.KindPause:
		return one(a.Pause(ctx, c.SandboxID))
	case wire.KindResume:
		return one(a.Resume(ctx, c.SandboxID))
	case wire.KindHibernate:
		return one(a.Hibernate(ctx, c.SandboxID))
	case wire.KindWake:
		return one(a.Wake(ctx, c.SandboxID))
	case wire.KindFork:
		copies, err := a.ForkAs(ctx, c.SandboxID, c.ForkIDs)
		if err != nil {
			return nil, err
		}
		parent, err := a.Get(ctx, c.SandboxID)
		if err != nil {
			return nil, err
		}
		return append([]*tartarus.Sandbox{parent}, copies...), nil
	case wire.KindAdopt:
		if c.Sandbox == nil || c.Sleep == nil || c.Sandbox.ID != c.SandboxID {
			return nil, tartarus.Errorf(tartarus.ErrInvalid, "adopt command %s: want the sandbox %s and its sleep record", c.ID, c.SandboxID)
		}
		if _, err := a.Adopt(ctx, c.Sandbox, c.Sleep); err != nil {
			return nil, err
		}
		return one(a.Wake(ctx, c.SandboxID))
	case wire.KindDiscard:
		if c.Sandbox == nil || c.Sleep == nil || c.Sandbox.ID != c.SandboxID {
			return nil, tartarus.Errorf(tartarus.ErrInvalid, "discard command %s: want the sandbox %s and its sleep record", c.ID, c.SandboxID)
		}
		return nil, a.Discard(ctx, c.Sandbox, c.Sleep)
	case wire.KindPoolTargets:
		return nil, a.SetPoolTargets(ctx, c.PoolTargets)
	}
	return nil, tartarus.Errorf(tartarus.ErrNotImplemented, "command %s: this agent does not know the kind %q", c.ID, c.Kind)
}

// postResult posts a command's result until a server takes it (true),
// answers that it cannot (a 4xx: it is logged), or ctx ends (the server
// delivers the command again after the restart, and doing it again
// changes nothing).
func (l *Link) postResult(ctx context.Context, c wire.Command, res *wire.Result) bool {
	path := wire.PathCommands + "/" + url.PathEscape(c.ID)
	for n := 1; ; n++ {
		err := l.call(ctx, http.MethodPost, path, res, nil)
		switch {
		case err == nil:
			return true
		case ctx.Err() != nil:
			return false
		case final(err):
			l.log.Error("server refused a command's result", "command", c.ID, "kind", c.Kind, "err", err)
			return false
		}
		if n == 1 || n%30 == 0 {
			l.log.Warn("post command result; retrying", "command", c.ID, "attempt", n, "err", err)
		}
		if !l.sleep(ctx, l.backoff(n)) {
			return false
		}
	}
}
