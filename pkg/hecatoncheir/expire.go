package hecatoncheir

import (
	"context"
	"errors"
	"sort"

	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

// Expire destroys this node's sandboxes whose expiry time has passed and
// returns their ids. A quarantined sandbox is left to its quarantine's own
// bound (pkg/typhon), so examiners do not lose it to its owner's timeout.
func (a *Agent) Expire(ctx context.Context) ([]string, error) {
	live, err := a.cfg.Store.List(ctx, tartarus.SandboxFilter{Node: a.cfg.Node, States: tartarus.LiveStates()})
	if err != nil {
		return nil, err
	}
	now := a.cfg.Clock.Now()
	var done []string
	var errs []error
	for _, sb := range live {
		if sb.ExpiresAt.IsZero() || now.Before(sb.ExpiresAt) || sb.State == tartarus.StateTerminating ||
			sb.State == tartarus.StateQuarantined {
			continue
		}
		if err := a.expire(ctx, sb.ID); err != nil {
			errs = append(errs, err)
			continue
		}
		done = append(done, sb.ID)
	}
	sort.Strings(done)
	return done, errors.Join(errs...)
}

func (a *Agent) expire(ctx context.Context, id string) error {
	sb, err := a.cfg.Store.Get(ctx, id)
	if err != nil {
		return err
	}
	if sb.State.Final() || sb.State == tartarus.StateTerminating {
		return nil
	}
	a.log.Info("sandbox expired", "sandbox", id, "expires_at", sb.ExpiresAt)
	_, err = a.terminateAndWait(ctx, id, &tartarus.ShutdownOptions{Reason: tartarus.ReasonTimeout})
	return err
}
