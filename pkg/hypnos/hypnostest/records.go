package hypnostest

import (
	"errors"
	"reflect"
	"testing"
	"time"

	"github.com/tartarus-sandbox/tartarus/pkg/hypnos"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

// RunRecordStore is the conformance suite for a hypnos.RecordStore (the
// node agent's SQL-backed one, for instance), given an empty store: every
// field survives a round trip, a replaced record reads back replaced,
// missing records are tartarus.ErrNotFound, deleting twice is harmless.
func RunRecordStore(t *testing.T, rs hypnos.RecordStore) {
	ctx := t.Context()
	sleep := time.Date(2026, 11, 25, 12, 0, 0, 123456789, time.UTC)
	wakeAt, expires := sleep.Add(time.Hour), sleep.Add(24*time.Hour)
	full := &hypnos.SleepRecord{
		SandboxID: "sb-full", TenantID: "acme", Template: "python", SleepTime: sleep,
		ScheduledWake: &wakeAt, ExpiresAt: &expires, MemorySize: 256 << 20, CompressedSize: 15 << 20,
		SnapshotID: "snap-1", SnapshotPath: "sleep/snap-1/data", WakePriority: 7, PreserveNetwork: true,
		WasPaused: true, Status: hypnos.StatusSleeping, SleepDuration: 420 * time.Millisecond,
		Config: &tartarus.VMConfig{ID: "sb-full", Template: "python", CPUs: 2, MemoryMB: 256,
			Env:   map[string]string{"A": "b"},
			Image: &tartarus.Image{Name: "python", Kernel: "/k", Initrd: "/i", RootFS: "/r", Digest: "d1"}},
	}
	minimal := &hypnos.SleepRecord{SandboxID: "sb-min", SleepTime: sleep, SnapshotID: "snap-2", Status: hypnos.StatusSleeping}

	for _, rec := range []*hypnos.SleepRecord{full, minimal} {
		if err := rs.PutRecord(ctx, rec); err != nil {
			t.Fatalf("PutRecord(%s): %v", rec.SandboxID, err)
		}
		got, err := rs.GetRecord(ctx, rec.SandboxID)
		if err != nil {
			t.Fatalf("GetRecord(%s): %v", rec.SandboxID, err)
		}
		if !got.SleepTime.Equal(rec.SleepTime) {
			t.Errorf("%s: SleepTime %v, want %v", rec.SandboxID, got.SleepTime, rec.SleepTime)
		}
		g, w := *got, *rec
		g.SleepTime, w.SleepTime = time.Time{}, time.Time{}
		if g.ScheduledWake != nil && w.ScheduledWake != nil && g.ScheduledWake.Equal(*w.ScheduledWake) {
			g.ScheduledWake, w.ScheduledWake = nil, nil
		}
		if g.ExpiresAt != nil && w.ExpiresAt != nil && g.ExpiresAt.Equal(*w.ExpiresAt) {
			g.ExpiresAt, w.ExpiresAt = nil, nil
		}
		if g.Config != nil && w.Config != nil && g.Config.Image != nil && w.Config.Image != nil &&
			g.Config.Image.BuiltAt.Equal(w.Config.Image.BuiltAt) {
			gi, wi := *g.Config.Image, *w.Config.Image
			gi.BuiltAt, wi.BuiltAt = time.Time{}, time.Time{}
			gc, wc := *g.Config, *w.Config
			gc.Image, wc.Image = &gi, &wi
			g.Config, w.Config = &gc, &wc
		}
		if !reflect.DeepEqual(g, w) {
			t.Errorf("%s read back as\n%+v\nwant\n%+v", rec.SandboxID, g, w)
		}
	}

	failed := *minimal
	failed.Status, failed.Error = hypnos.StatusFailed, "checksum mismatch"
	if err := rs.PutRecord(ctx, &failed); err != nil {
		t.Fatalf("PutRecord replace: %v", err)
	}
	if got, err := rs.GetRecord(ctx, "sb-min"); err != nil || got.Status != hypnos.StatusFailed || got.Error != failed.Error {
		t.Errorf("replaced record reads %+v, %v", got, err)
	}

	list, err := rs.ListRecords(ctx)
	if err != nil || len(list) != 2 {
		t.Fatalf("ListRecords = %d records, %v; want 2", len(list), err)
	}

	if _, err := rs.GetRecord(ctx, "sb-missing"); !errors.Is(err, tartarus.ErrNotFound) {
		t.Errorf("GetRecord missing: %v, want ErrNotFound", err)
	}
	for range 2 {
		if err := rs.DeleteRecord(ctx, "sb-full"); err != nil {
			t.Fatalf("DeleteRecord: %v", err)
		}
	}
	if _, err := rs.GetRecord(ctx, "sb-full"); !errors.Is(err, tartarus.ErrNotFound) {
		t.Errorf("GetRecord after delete: %v, want ErrNotFound", err)
	}
	if list, _ := rs.ListRecords(ctx); len(list) != 1 || list[0].SandboxID != "sb-min" {
		t.Errorf("ListRecords after delete = %+v", list)
	}
}
