package cluster

import (
	"context"
	"slices"

	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

// deliver wakes whoever waits for ev.
func (c *Cluster) deliver(ev Event) {
	c.mu.Lock()
	defer c.mu.Unlock()
	wake := func(chs []chan struct{}) {
		for _, ch := range chs {
			select {
			case ch <- struct{}{}:
			default:
			}
		}
	}
	switch ev.Kind {
	case EventCommand:
		wake(c.polls[ev.Node])
	case EventDone:
		wake(c.waiters[ev.ID])
	case EventNodeDown:
		for _, chs := range c.waiters {
			wake(chs)
		}
		c.kill(func(st *stream) bool { return st.node == ev.Node },
			tartarus.Errorf(tartarus.ErrUnavailable, "node %s went down", ev.Node))
	case EventEnded:
		c.kill(func(st *stream) bool { return st.sandbox == ev.ID },
			tartarus.Errorf(tartarus.ErrFailedPrecondition, "sandbox %s ended", ev.ID))
	}
}

func (c *Cluster) publish(ctx context.Context, ev Event) {
	if err := c.cfg.Bus.Publish(context.WithoutCancel(ctx), ev); err != nil {
		// Polling picks it up; say so once per failure.
		c.log.Warn("publish event (falling back to polling)", "kind", ev.Kind, "err", err)
		c.deliver(ev)
	}
}

// listen registers ch to be woken for key in m; the returned func
// unregisters it.
func (c *Cluster) listen(m map[string][]chan struct{}, key string) (chan struct{}, func()) {
	ch := make(chan struct{}, 1)
	c.mu.Lock()
	m[key] = append(m[key], ch)
	c.mu.Unlock()
	return ch, func() {
		c.mu.Lock()
		defer c.mu.Unlock()
		m[key] = slices.DeleteFunc(m[key], func(x chan struct{}) bool { return x == ch })
		if len(m[key]) == 0 {
			delete(m, key)
		}
	}
}
