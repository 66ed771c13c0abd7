package cluster

import (
	"context"
	"sync"
	"time"

	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

// drainParallel bounds the sandboxes a drain ends or moves at once.
const drainParallel = 4

// DrainNode takes node out of placement and ends its sandboxes (reason
// node_drain, each through its node's Thanatos with opts.GraceS), or, with
// opts.Hibernate and a node that shares snapshots, hibernates them and
// leaves them unassigned so that each wakes on another node at its next
// call. The node stays drained (no new sandboxes) until UndrainNode.
func (c *Cluster) DrainNode(ctx context.Context, name string, opts tartarus.DrainOptions) (*tartarus.DrainReport, error) {
	n, err := c.st.Node(ctx, name)
	if err != nil {
		return nil, dbErr(err)
	}
	if err := c.st.SetDraining(ctx, name, true); err != nil {
		return nil, dbErr(err)
	}
	move := opts.Hibernate && c.status(n).SharedSnapshots
	live, err := c.st.List(ctx, tartarus.SandboxFilter{Node: name, States: tartarus.LiveStates()})
	if err != nil {
		return nil, dbErr(err)
	}
	rep := tartarus.NewDrainReport(name)
	var mu sync.Mutex
	var wg sync.WaitGroup
	sem := make(chan struct{}, drainParallel)
	for _, sb := range live {
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			moved, err := false, error(nil)
			if move {
				moved, err = c.moveOff(ctx, sb)
			}
			if !moved && err == nil {
				_, err = c.destroy(ctx, sb.ID, &tartarus.ShutdownOptions{Reason: tartarus.ReasonNodeDrain,
					GracePeriod: time.Duration(opts.GraceS) * time.Second})
			}
			mu.Lock()
			defer mu.Unlock()
			rep.Record(sb.ID, moved, err)
		})
	}
	wg.Wait()
	rep.Sort()
	c.log.Info("node drained", "node", name, "ended", len(rep.Ended), "moved", len(rep.Moved), "failed", len(rep.Failed))
	return rep, nil
}

// moveOff hibernates sb (unless it sleeps already) and unassigns it from
// its node; false without an error means it cannot hibernate (it is paused
// or being created) and must end instead.
func (c *Cluster) moveOff(ctx context.Context, sb *tartarus.Sandbox) (bool, error) {
	switch sb.State {
	case tartarus.StateRunning:
		if _, err := c.Hibernate(ctx, sb.ID); err != nil {
			return false, err
		}
	case tartarus.StateHibernated:
	default:
		return false, nil
	}
	ok, err := c.st.Unassign(ctx, sb.ID, sb.Node, c.cfg.Clock.Now().UTC())
	if err != nil {
		return false, dbErr(err)
	}
	return ok, nil
}

// UndrainNode lets a drained node take sandboxes again.
func (c *Cluster) UndrainNode(ctx context.Context, name string) error {
	return dbErr(c.st.SetDraining(ctx, name, false))
}
