package phlegethon

import (
	"context"
	"encoding/json"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

// Status is where a queued create is.
type Status string

// The statuses; every one but StatusQueued is final.
const (
	StatusQueued    Status = "queued"
	StatusAdmitted  Status = "admitted"
	StatusTimedOut  Status = "timed_out"
	StatusFailed    Status = "failed"
	StatusCancelled Status = "cancelled"
)

// Entry is one create waiting for room.
type Entry struct {
	// ID names the create (its sandbox ID); the admit function must be
	// idempotent on it, since a crash between admitting and journaling
	// replays the entry.
	ID     string    `json:"id"`
	Tenant string    `json:"tenant,omitempty"`
	Heat   HeatLevel `json:"heat"`
	// Payload is the create as the control plane wants it back after a
	// restart (opaque here).
	Payload    json.RawMessage `json:"payload,omitempty"`
	EnqueuedAt time.Time       `json:"enqueued_at"`
	Deadline   time.Time       `json:"deadline"`
	// Seq is the arrival order, set by the queue.
	Seq int64 `json:"seq"`
}

// Record is an entry and what became of it.
type Record struct {
	Entry
	Status     Status    `json:"status"`
	Reason     string    `json:"reason,omitempty"`
	FinishedAt time.Time `json:"finished_at,omitzero"`
}

// Journal keeps queue entries durable, so a queued create survives a
// restart or fails with its reason.
type Journal interface {
	// Put writes r, replacing the record of the same ID.
	Put(ctx context.Context, r *Record) error
	// Get returns the record of id, or tartarus.ErrNotFound.
	Get(ctx context.Context, id string) (*Record, error)
	// Queued returns the records still queued, by Seq.
	Queued(ctx context.Context) ([]*Record, error)
	// Prune deletes final records that finished before t.
	Prune(ctx context.Context, before time.Time) (int, error)
}

// ObservationStore keeps the runs the classifier learns from, so learning
// survives a restart.
type ObservationStore interface {
	PutObservation(ctx context.Context, o *HeatObservation) error
	// RecentObservations returns, for every template, its newest perTemplate
	// runs, oldest first.
	RecentObservations(ctx context.Context, perTemplate int) ([]HeatObservation, error)
	// PruneObservations deletes runs older than before.
	PruneObservations(ctx context.Context, before time.Time) (int, error)
}

// MemJournal is a Journal, a PoolStore and an ObservationStore in memory
// (for a server without a database, and tests).
type MemJournal struct {
	mu      sync.Mutex
	records map[string]Record
	pools   map[string]Pool
	obs     []HeatObservation
}

var (
	_ Journal          = (*MemJournal)(nil)
	_ PoolStore        = (*MemJournal)(nil)
	_ ObservationStore = (*MemJournal)(nil)
)

// PutObservation implements ObservationStore.
func (j *MemJournal) PutObservation(_ context.Context, o *HeatObservation) error {
	j.mu.Lock()
	defer j.mu.Unlock()
	j.obs = append(j.obs, *o)
	return nil
}

// RecentObservations implements ObservationStore.
func (j *MemJournal) RecentObservations(_ context.Context, perTemplate int) ([]HeatObservation, error) {
	j.mu.Lock()
	defer j.mu.Unlock()
	all := slices.Clone(j.obs)
	slices.SortStableFunc(all, func(a, b HeatObservation) int { return a.Timestamp.Compare(b.Timestamp) })
	return newestPerTemplate(all, perTemplate), nil
}

// PruneObservations implements ObservationStore.
func (j *MemJournal) PruneObservations(_ context.Context, before time.Time) (int, error) {
	j.mu.Lock()
	defer j.mu.Unlock()
	n := len(j.obs)
	j.obs = slices.DeleteFunc(j.obs, func(o HeatObservation) bool { return o.Timestamp.Before(before) })
	return n - len(j.obs), nil
}

// newestPerTemplate keeps the last n of each template in all (oldest
// first), keeping the order.
func newestPerTemplate(all []HeatObservation, n int) []HeatObservation {
	count := map[string]int{}
	for _, o := range all {
		count[o.TemplateID]++
	}
	var out []HeatObservation
	for _, o := range all {
		if count[o.TemplateID] <= n {
			out = append(out, o)
		}
		count[o.TemplateID]--
	}
	return out
}

func cloneRecord(r *Record) *Record {
	c := *r
	c.Payload = slices.Clone(r.Payload)
	return &c
}

// Put implements Journal.
func (j *MemJournal) Put(_ context.Context, r *Record) error {
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.records == nil {
		j.records = map[string]Record{}
	}
	j.records[r.ID] = *cloneRecord(r)
	return nil
}

// Get implements Journal.
func (j *MemJournal) Get(_ context.Context, id string) (*Record, error) {
	j.mu.Lock()
	defer j.mu.Unlock()
	r, ok := j.records[id]
	if !ok {
		return nil, tartarus.Errorf(tartarus.ErrNotFound, "queued create %s", id)
	}
	return cloneRecord(&r), nil
}

// Queued implements Journal.
func (j *MemJournal) Queued(_ context.Context) ([]*Record, error) {
	j.mu.Lock()
	defer j.mu.Unlock()
	var out []*Record
	for _, r := range j.records {
		if r.Status == StatusQueued {
			out = append(out, cloneRecord(&r))
		}
	}
	slices.SortFunc(out, func(a, b *Record) int { return int(a.Seq - b.Seq) })
	return out, nil
}

// Prune implements Journal.
func (j *MemJournal) Prune(_ context.Context, before time.Time) (int, error) {
	j.mu.Lock()
	defer j.mu.Unlock()
	n := 0
	for id, r := range j.records {
		if r.Status != StatusQueued && r.FinishedAt.Before(before) {
			delete(j.records, id)
			n++
		}
	}
	return n, nil
}

// PutPool implements PoolStore.
func (j *MemJournal) PutPool(_ context.Context, p *Pool) error {
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.pools == nil {
		j.pools = map[string]Pool{}
	}
	j.pools[p.Name] = p.clone()
	return nil
}

// DeletePool implements PoolStore.
func (j *MemJournal) DeletePool(_ context.Context, name string) error {
	j.mu.Lock()
	defer j.mu.Unlock()
	delete(j.pools, name)
	return nil
}

// ListPools implements PoolStore.
func (j *MemJournal) ListPools(_ context.Context) ([]Pool, error) {
	j.mu.Lock()
	defer j.mu.Unlock()
	out := make([]Pool, 0, len(j.pools))
	for _, p := range j.pools {
		out = append(out, p.clone())
	}
	slices.SortFunc(out, func(a, b Pool) int { return strings.Compare(a.Name, b.Name) })
	return out, nil
}
