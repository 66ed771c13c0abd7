package store

import (
	"context"
	"encoding/json"
	"fmt"

	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

// NetworkSetter is the optional side interface of a Store that can change
// a live sandbox's network spec (SQLite and Postgres can), so that a policy
// updated on a running sandbox survives its hibernation, fork and restart.
type NetworkSetter interface {
	// SetNetwork sets the network of sandbox id, which must not be in a
	// final state (ErrFailedPrecondition); nil means none.
	SetNetwork(ctx context.Context, id string, n *tartarus.NetworkSpec) (*tartarus.Sandbox, error)
}

var _ NetworkSetter = (*SQL)(nil)

// SetNetwork implements NetworkSetter.
func (s *SQL) SetNetwork(ctx context.Context, id string, n *tartarus.NetworkSpec) (*tartarus.Sandbox, error) {
	var b []byte
	if n != nil {
		var err error
		if b, err = json.Marshal(n); err != nil {
			return nil, fmt.Errorf("sandbox %s network: %w", id, err)
		}
	}
	res, err := s.db.ExecContext(ctx, s.d.q(`UPDATE sandboxes SET network = ? WHERE id = ? AND state NOT IN (?, ?)`),
		string(b), id, string(tartarus.StateTerminated), string(tartarus.StateFailed))
	if err != nil {
		return nil, fmt.Errorf("set network of sandbox %s: %w", id, err)
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
