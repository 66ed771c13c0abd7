package persephone

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"sync"
	"time"

	"github.com/tartarus-sandbox/tartarus/pkg/clock"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

// UsageStore keeps the cluster's usage history: one row per minute
// (recorded) or per hour (downsampled or imported).
type UsageStore interface {
	// Record stores r under its minute (or hour, for an hourly record) and
	// reports whether it was new. Every replica records every minute; the
	// first one wins and the rest get false with no error, which makes
	// recording once per cluster per minute without electing a leader.
	Record(ctx context.Context, r *UsageRecord) (bool, error)
	// Range returns the records with from <= Timestamp < to, oldest first.
	Range(ctx context.Context, from, to time.Time) ([]*UsageRecord, error)
	// Compact applies the retention rules as of now.
	Compact(ctx context.Context, now time.Time, keep Retention) error
}

// Retention is how long history is kept at each resolution. Minute rows
// older than Minutes are replaced by hourly rows (peak of gauges, sum of
// counts, mean of utilisations); hourly rows older than Hours are deleted.
// The defaults keep five weeks of minutes (two weekly seasons for the
// forecaster plus a week to backtest on) and 400 days of hours.
type Retention struct {
	Minutes time.Duration
	Hours   time.Duration
}

// DefaultRetention is 35 days of minutes and 400 days of hours.
var DefaultRetention = Retention{Minutes: 35 * 24 * time.Hour, Hours: 400 * 24 * time.Hour}

// Validate returns every problem with the retention, joined.
func (r Retention) Validate() error {
	var errs []error
	if r.Minutes < 24*time.Hour {
		errs = append(errs, tartarus.Errorf(tartarus.ErrInvalid, "retention: minutes %s below one day", r.Minutes))
	}
	if r.Hours < r.Minutes {
		errs = append(errs, tartarus.Errorf(tartarus.ErrInvalid, "retention: hours %s below minutes %s", r.Hours, r.Minutes))
	}
	return errors.Join(errs...)
}

// bucketOf is the row key of a record: its resolution and the start of its
// minute or hour.
func bucketOf(r *UsageRecord) (time.Duration, time.Time) {
	res := r.Resolution
	if res == 0 {
		res = time.Minute
	}
	return res, r.Timestamp.UTC().Truncate(res)
}

func normalise(r *UsageRecord) (*UsageRecord, error) {
	if err := validateRecord(r); err != nil {
		return nil, tartarus.Errorf(tartarus.ErrInvalid, "usage record: %v", err)
	}
	c := *r
	c.Resolution, c.Timestamp = bucketOf(r)
	if len(r.LaunchesByTemplate) > 0 {
		c.LaunchesByTemplate = make(map[string]int, len(r.LaunchesByTemplate))
		for k, v := range r.LaunchesByTemplate {
			c.LaunchesByTemplate[k] = v
		}
	} else {
		c.LaunchesByTemplate = nil
	}
	return &c, nil
}

// MemoryStore is a UsageStore in memory, for one process and tests.
type MemoryStore struct {
	mu   sync.Mutex
	rows map[memKey]*UsageRecord
}

type memKey struct {
	res time.Duration
	at  int64
}

var _ UsageStore = (*MemoryStore)(nil)

// NewMemoryStore returns an empty MemoryStore.
func NewMemoryStore() *MemoryStore { return &MemoryStore{rows: map[memKey]*UsageRecord{}} }

// Record implements UsageStore.
func (m *MemoryStore) Record(_ context.Context, r *UsageRecord) (bool, error) {
	c, err := normalise(r)
	if err != nil {
		return false, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	k := memKey{c.Resolution, c.Timestamp.Unix()}
	if _, ok := m.rows[k]; ok {
		return false, nil
	}
	m.rows[k] = c
	return true, nil
}

// Range implements UsageStore.
func (m *MemoryStore) Range(_ context.Context, from, to time.Time) ([]*UsageRecord, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []*UsageRecord
	for _, r := range m.rows {
		if !r.Timestamp.Before(from) && r.Timestamp.Before(to) {
			c := *r
			out = append(out, &c)
		}
	}
	sortRecords(out)
	return out, nil
}

// Compact implements UsageStore.
func (m *MemoryStore) Compact(_ context.Context, now time.Time, keep Retention) error {
	if err := keep.Validate(); err != nil {
		return err
	}
	minuteCut := now.Add(-keep.Minutes).Truncate(time.Hour)
	hourCut := now.Add(-keep.Hours)
	m.mu.Lock()
	defer m.mu.Unlock()
	var old []*UsageRecord
	for k, r := range m.rows {
		switch {
		case k.res == time.Minute && r.Timestamp.Before(minuteCut):
			old = append(old, r)
			delete(m.rows, k)
		case k.res == time.Hour && r.Timestamp.Before(hourCut):
			delete(m.rows, k)
		}
	}
	for _, h := range Downsample(old, time.Hour) {
		k := memKey{time.Hour, h.Timestamp.Unix()}
		if _, ok := m.rows[k]; !ok && !h.Timestamp.Before(hourCut) {
			m.rows[k] = h
		}
	}
	return nil
}

func sortRecords(rs []*UsageRecord) {
	sort.Slice(rs, func(i, j int) bool {
		if !rs[i].Timestamp.Equal(rs[j].Timestamp) {
			return rs[i].Timestamp.Before(rs[j].Timestamp)
		}
		return rs[i].Resolution < rs[j].Resolution
	})
}

// UsageSource reads the cluster's usage of the minute that just ended (the
// server implements it from its store and event counters).
type UsageSource interface {
	Usage(ctx context.Context, minute time.Time) (*UsageRecord, error)
}

// Recorder records a UsageRecord every minute into a UsageStore and
// compacts the store every hour. Every replica runs one; the store's
// unique key keeps one row per minute.
type Recorder struct {
	Source UsageSource
	Store  UsageStore
	Clock  clock.Clock
	Keep   Retention
	Log    *slog.Logger
}

// Run records until ctx is done.
func (r *Recorder) Run(ctx context.Context) error {
	if r.Source == nil || r.Store == nil || r.Clock == nil {
		return errors.New("persephone recorder: source, store and clock are required")
	}
	keep := r.Keep
	if keep == (Retention{}) {
		keep = DefaultRetention
	}
	log := r.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	t := r.Clock.NewTicker(time.Minute)
	defer t.Stop()
	var lastCompact time.Time
	for {
		select {
		case <-ctx.Done():
			return nil
		case now := <-t.C():
			if err := r.RecordOnce(ctx, now); err != nil {
				log.Warn("record usage", "err", err)
			}
			if now.Sub(lastCompact) >= time.Hour {
				if err := r.Store.Compact(ctx, now, keep); err != nil {
					log.Warn("compact usage", "err", err)
				}
				lastCompact = now
			}
		}
	}
}

// RecordOnce records the minute before now.
func (r *Recorder) RecordOnce(ctx context.Context, now time.Time) error {
	minute := now.UTC().Truncate(time.Minute).Add(-time.Minute)
	rec, err := r.Source.Usage(ctx, minute)
	if err != nil {
		return fmt.Errorf("read usage of %s: %w", minute, err)
	}
	rec.Timestamp, rec.Resolution = minute, time.Minute
	if _, err := r.Store.Record(ctx, rec); err != nil {
		return fmt.Errorf("record usage of %s: %w", minute, err)
	}
	return nil
}

// SeasonStore keeps defined seasons and the pinned season durably, so that
// every replica resolves the same season.
type SeasonStore interface {
	SaveSeason(ctx context.Context, s *Season) error
	LoadSeasons(ctx context.Context) (seasons []*Season, pinned string, err error)
	SavePin(ctx context.Context, id string) error
}

var _ SeasonStore = (*SQLStore)(nil)
