package store

import (
	"context"
	"fmt"
	"time"

	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

var _ ExpirySetter = (*SQL)(nil)

// SetExpiry implements ExpirySetter.
func (s *SQL) SetExpiry(ctx context.Context, id string, at time.Time) (*tartarus.Sandbox, error) {
	res, err := s.db.ExecContext(ctx, s.d.q(`UPDATE sandboxes SET expires_at = ? WHERE id = ? AND state NOT IN (?, ?)`),
		nanos(at), id, string(tartarus.StateTerminated), string(tartarus.StateFailed))
	if err != nil {
		return nil, fmt.Errorf("set expiry of sandbox %s: %w", id, err)
	}
	if n, _ := res.RowsAffected(); n == 0 {
		sb, err := s.Get(ctx, id)
		if err != nil {
			return nil, err
		}
		return nil, tartarus.Errorf(tartarus.ErrFailedPrecondition, "sandbox %s is %s", id, sb.State)
	}
	return s.Get(ctx, id)
}
