package store

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/tartarus-sandbox/tartarus/pkg/hypnos"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

// SleepRecords is the hypnos.RecordStore of one runtime's hibernated
// sandboxes, kept in the sleep_records table of the SQLite or Postgres store. Each
// runtime has its own view, so that one runtime's Hypnos never reconciles
// another's sandboxes. A record is written in one statement, so it survives
// a crash once PutRecord returns.
type SleepRecords struct {
	db      *sql.DB
	d       *dialect
	runtime string
}

var _ hypnos.RecordStore = (*SleepRecords)(nil)

// SleepRecords implements SleepRecordKeeper.
func (s *SQL) SleepRecords(runtime string) *SleepRecords {
	return &SleepRecords{db: s.db, d: s.d, runtime: runtime}
}

// PutRecord implements hypnos.RecordStore.
func (r *SleepRecords) PutRecord(ctx context.Context, rec *hypnos.SleepRecord) error {
	b, err := json.Marshal(rec)
	if err != nil {
		return fmt.Errorf("put sleep record %s: %w", rec.SandboxID, err)
	}
	_, err = r.db.ExecContext(ctx, r.d.q(`INSERT INTO sleep_records (sandbox_id, runtime, status, record) VALUES (?,?,?,?)
		ON CONFLICT(sandbox_id) DO UPDATE SET runtime = excluded.runtime, status = excluded.status, record = excluded.record`),
		rec.SandboxID, r.runtime, string(rec.Status), string(b))
	if err != nil {
		return fmt.Errorf("put sleep record %s: %w", rec.SandboxID, err)
	}
	return nil
}

// GetRecord implements hypnos.RecordStore.
func (r *SleepRecords) GetRecord(ctx context.Context, id string) (*hypnos.SleepRecord, error) {
	var raw string
	err := r.db.QueryRowContext(ctx, r.d.q(`SELECT record FROM sleep_records WHERE sandbox_id = ? AND runtime = ?`), id, r.runtime).Scan(&raw)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, tartarus.Errorf(tartarus.ErrNotFound, "sleep record %s", id)
	}
	if err != nil {
		return nil, fmt.Errorf("get sleep record %s: %w", id, err)
	}
	return decodeRecord(id, raw)
}

func decodeRecord(id, raw string) (*hypnos.SleepRecord, error) {
	var rec hypnos.SleepRecord
	if err := json.Unmarshal([]byte(raw), &rec); err != nil {
		return nil, fmt.Errorf("sleep record %s: %w", id, err)
	}
	return &rec, nil
}

// DeleteRecord implements hypnos.RecordStore.
func (r *SleepRecords) DeleteRecord(ctx context.Context, id string) error {
	if _, err := r.db.ExecContext(ctx, r.d.q(`DELETE FROM sleep_records WHERE sandbox_id = ? AND runtime = ?`), id, r.runtime); err != nil {
		return fmt.Errorf("delete sleep record %s: %w", id, err)
	}
	return nil
}

// ListRecords implements hypnos.RecordStore.
func (r *SleepRecords) ListRecords(ctx context.Context) ([]*hypnos.SleepRecord, error) {
	rows, err := r.db.QueryContext(ctx, r.d.q(`SELECT sandbox_id, record FROM sleep_records WHERE runtime = ? ORDER BY sandbox_id`), r.runtime)
	if err != nil {
		return nil, fmt.Errorf("list sleep records: %w", err)
	}
	defer rows.Close()
	var out []*hypnos.SleepRecord
	for rows.Next() {
		var id, raw string
		if err := rows.Scan(&id, &raw); err != nil {
			return nil, fmt.Errorf("list sleep records: %w", err)
		}
		rec, err := decodeRecord(id, raw)
		if err != nil {
			return nil, err
		}
		out = append(out, rec)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list sleep records: %w", err)
	}
	return out, nil
}
