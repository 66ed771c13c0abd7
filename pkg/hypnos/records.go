package hypnos

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"sync"

	"github.com/tartarus-sandbox/tartarus/pkg/erebus"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

// RecordStore keeps sleep records durably: a record written before Put
// returns survives a crash of the process. The node agent backs it with its
// SQL store; StoreRecords keeps them in Erebus; MemRecords is for tests.
type RecordStore interface {
	// PutRecord creates or replaces the record of rec.SandboxID.
	PutRecord(ctx context.Context, rec *SleepRecord) error
	// GetRecord returns the record or an error wrapping tartarus.ErrNotFound.
	GetRecord(ctx context.Context, sandboxID string) (*SleepRecord, error)
	// DeleteRecord removes the record; a missing one is not an error.
	DeleteRecord(ctx context.Context, sandboxID string) error
	// ListRecords returns every record, in any order.
	ListRecords(ctx context.Context) ([]*SleepRecord, error)
}

// MemRecords is a RecordStore in memory, for tests: it is not durable.
type MemRecords struct {
	mu   sync.Mutex
	recs map[string][]byte
}

var _ RecordStore = (*MemRecords)(nil)

// NewMemRecords returns an empty MemRecords.
func NewMemRecords() *MemRecords { return &MemRecords{recs: map[string][]byte{}} }

// PutRecord implements RecordStore. It stores a JSON copy, so the caller's
// later changes do not leak in, just as with a real store.
func (m *MemRecords) PutRecord(ctx context.Context, rec *SleepRecord) error {
	b, err := json.Marshal(rec)
	if err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.recs[rec.SandboxID] = b
	return nil
}

// GetRecord implements RecordStore.
func (m *MemRecords) GetRecord(ctx context.Context, id string) (*SleepRecord, error) {
	m.mu.Lock()
	b, ok := m.recs[id]
	m.mu.Unlock()
	if !ok {
		return nil, tartarus.Errorf(tartarus.ErrNotFound, "sleep record %s", id)
	}
	var r SleepRecord
	return &r, json.Unmarshal(b, &r)
}

// DeleteRecord implements RecordStore.
func (m *MemRecords) DeleteRecord(ctx context.Context, id string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	delete(m.recs, id)
	return nil
}

// ListRecords implements RecordStore.
func (m *MemRecords) ListRecords(ctx context.Context) ([]*SleepRecord, error) {
	m.mu.Lock()
	ids := make([]string, 0, len(m.recs))
	for id := range m.recs {
		ids = append(ids, id)
	}
	m.mu.Unlock()
	slices.Sort(ids)
	var out []*SleepRecord
	for _, id := range ids {
		r, err := m.GetRecord(ctx, id)
		if errors.Is(err, tartarus.ErrNotFound) {
			continue
		}
		if err != nil {
			return nil, err
		}
		out = append(out, r)
	}
	return out, nil
}

// StoreRecords keeps each record as a JSON object <prefix>/<sandbox id>.json
// in an Erebus store, whose writes are atomic and fsynced: a durable
// RecordStore with nothing else to run.
type StoreRecords struct {
	store  erebus.Store
	prefix string
}

var _ RecordStore = (*StoreRecords)(nil)

// NewStoreRecords returns records kept in store under prefix (default
// "hypnos/records").
func NewStoreRecords(store erebus.Store, prefix string) *StoreRecords {
	if prefix == "" {
		prefix = "hypnos/records"
	}
	return &StoreRecords{store: store, prefix: strings.TrimSuffix(prefix, "/")}
}

func (s *StoreRecords) key(id string) (string, error) {
	k := s.prefix + "/" + id + ".json"
	if strings.Contains(id, "/") || erebus.ValidKey(k) != nil {
		return "", tartarus.Errorf(tartarus.ErrInvalid, "sandbox id %.64q cannot name a record", id)
	}
	return k, nil
}

// PutRecord implements RecordStore.
func (s *StoreRecords) PutRecord(ctx context.Context, rec *SleepRecord) error {
	k, err := s.key(rec.SandboxID)
	if err != nil {
		return err
	}
	b, err := json.MarshalIndent(rec, "", "  ")
	if err != nil {
		return err
	}
	if _, err := s.store.Put(ctx, k, bytes.NewReader(b)); err != nil {
		return fmt.Errorf("put sleep record %s: %w", rec.SandboxID, err)
	}
	return nil
}

// GetRecord implements RecordStore.
func (s *StoreRecords) GetRecord(ctx context.Context, id string) (*SleepRecord, error) {
	k, err := s.key(id)
	if err != nil {
		return nil, err
	}
	rc, _, err := s.store.Get(ctx, k)
	if err != nil {
		return nil, fmt.Errorf("sleep record %s: %w", id, err)
	}
	defer rc.Close()
	b, err := io.ReadAll(io.LimitReader(rc, 1<<20))
	if err != nil {
		return nil, fmt.Errorf("sleep record %s: %w", id, err)
	}
	var r SleepRecord
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, fmt.Errorf("sleep record %s: %w", id, err)
	}
	return &r, nil
}

// DeleteRecord implements RecordStore.
func (s *StoreRecords) DeleteRecord(ctx context.Context, id string) error {
	k, err := s.key(id)
	if err != nil {
		return err
	}
	if err := s.store.Delete(ctx, k); err != nil {
		return fmt.Errorf("delete sleep record %s: %w", id, err)
	}
	return nil
}

// ListRecords implements RecordStore.
func (s *StoreRecords) ListRecords(ctx context.Context) ([]*SleepRecord, error) {
	objs, err := s.store.List(ctx, s.prefix+"/")
	if err != nil {
		return nil, fmt.Errorf("list sleep records: %w", err)
	}
	var out []*SleepRecord
	for _, o := range objs {
		id, ok := strings.CutSuffix(strings.TrimPrefix(o.Key, s.prefix+"/"), ".json")
		if !ok || strings.Contains(id, "/") {
			continue
		}
		r, err := s.GetRecord(ctx, id)
		if errors.Is(err, tartarus.ErrNotFound) {
			continue
		}
		if err != nil {
			return nil, err
		}
		out = append(out, r)
	}
	return out, nil
}
