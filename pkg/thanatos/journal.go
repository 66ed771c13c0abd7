package thanatos

import (
	"cmp"
	"context"
	"slices"
	"sync"
	"time"

	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

// Journal keeps terminations and checkpoints durably. The manager writes a
// termination's phase before the phase's step runs; a new manager resumes
// from what the journal holds.
type Journal interface {
	// Put inserts or replaces the termination of s.SandboxID.
	Put(ctx context.Context, s *tartarus.TerminationStatus) error
	// Get returns a sandbox's termination, or ErrNotFound.
	Get(ctx context.Context, sandboxID string) (*tartarus.TerminationStatus, error)
	// ListPending returns every termination in a non-final phase, oldest
	// first.
	ListPending(ctx context.Context) ([]*tartarus.TerminationStatus, error)

	// PutCheckpoint inserts or replaces a checkpoint by its ID.
	PutCheckpoint(ctx context.Context, c *tartarus.Checkpoint) error
	// GetCheckpoint returns a checkpoint, or ErrNotFound.
	GetCheckpoint(ctx context.Context, id string) (*tartarus.Checkpoint, error)
	// ListCheckpoints returns a tenant's checkpoints ("" for every
	// tenant's), oldest first.
	ListCheckpoints(ctx context.Context, tenant string) ([]*tartarus.Checkpoint, error)
	// ExpiredCheckpoints returns the checkpoints whose ExpiresAt is not
	// after now.
	ExpiredCheckpoints(ctx context.Context, now time.Time) ([]*tartarus.Checkpoint, error)
	// DeleteCheckpoint removes a checkpoint; a missing one is not an error.
	DeleteCheckpoint(ctx context.Context, id string) error
}

// MemJournal is a Journal in memory, for tests and for callers that need
// no crash safety. The zero value is ready.
type MemJournal struct {
	mu    sync.Mutex
	terms map[string]*tartarus.TerminationStatus
	cks   map[string]*tartarus.Checkpoint
}

var _ Journal = (*MemJournal)(nil)

// Put implements Journal.
func (j *MemJournal) Put(_ context.Context, s *tartarus.TerminationStatus) error {
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.terms == nil {
		j.terms = map[string]*tartarus.TerminationStatus{}
	}
	j.terms[s.SandboxID] = s.Clone()
	return nil
}

// Get implements Journal.
func (j *MemJournal) Get(_ context.Context, id string) (*tartarus.TerminationStatus, error) {
	j.mu.Lock()
	defer j.mu.Unlock()
	s, ok := j.terms[id]
	if !ok {
		return nil, tartarus.Errorf(tartarus.ErrNotFound, "termination of sandbox %s", id)
	}
	return s.Clone(), nil
}

// ListPending implements Journal.
func (j *MemJournal) ListPending(context.Context) ([]*tartarus.TerminationStatus, error) {
	j.mu.Lock()
	defer j.mu.Unlock()
	var out []*tartarus.TerminationStatus
	for _, s := range j.terms {
		if !s.Phase.Final() {
			out = append(out, s.Clone())
		}
	}
	slices.SortFunc(out, func(a, b *tartarus.TerminationStatus) int {
		if c := a.InitiatedAt.Compare(b.InitiatedAt); c != 0 {
			return c
		}
		return cmp.Compare(a.SandboxID, b.SandboxID)
	})
	return out, nil
}

// PutCheckpoint implements Journal.
func (j *MemJournal) PutCheckpoint(_ context.Context, c *tartarus.Checkpoint) error {
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.cks == nil {
		j.cks = map[string]*tartarus.Checkpoint{}
	}
	cp := *c
	j.cks[c.ID] = &cp
	return nil
}

// GetCheckpoint implements Journal.
func (j *MemJournal) GetCheckpoint(_ context.Context, id string) (*tartarus.Checkpoint, error) {
	j.mu.Lock()
	defer j.mu.Unlock()
	c, ok := j.cks[id]
	if !ok {
		return nil, tartarus.Errorf(tartarus.ErrNotFound, "checkpoint %s", id)
	}
	cp := *c
	return &cp, nil
}

// ListCheckpoints implements Journal.
func (j *MemJournal) ListCheckpoints(_ context.Context, tenant string) ([]*tartarus.Checkpoint, error) {
	return j.checkpoints(func(c *tartarus.Checkpoint) bool { return tenant == "" || c.Tenant == tenant }), nil
}

// ExpiredCheckpoints implements Journal.
func (j *MemJournal) ExpiredCheckpoints(_ context.Context, now time.Time) ([]*tartarus.Checkpoint, error) {
	return j.checkpoints(func(c *tartarus.Checkpoint) bool { return !c.ExpiresAt.After(now) }), nil
}

func (j *MemJournal) checkpoints(keep func(*tartarus.Checkpoint) bool) []*tartarus.Checkpoint {
	j.mu.Lock()
	defer j.mu.Unlock()
	var out []*tartarus.Checkpoint
	for _, c := range j.cks {
		if keep(c) {
			cp := *c
			out = append(out, &cp)
		}
	}
	slices.SortFunc(out, func(a, b *tartarus.Checkpoint) int {
		if c := a.CreatedAt.Compare(b.CreatedAt); c != 0 {
			return c
		}
		return cmp.Compare(a.ID, b.ID)
	})
	return out
}

// DeleteCheckpoint implements Journal.
func (j *MemJournal) DeleteCheckpoint(_ context.Context, id string) error {
	j.mu.Lock()
	defer j.mu.Unlock()
	delete(j.cks, id)
	return nil
}
