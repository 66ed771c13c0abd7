package store

import (
	"context"
	"errors"
	"path/filepath"
	"testing"

	"github.com/tartarus-sandbox/tartarus/pkg/hypnos"
	"github.com/tartarus-sandbox/tartarus/pkg/hypnos/hypnostest"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

func TestSleepRecordsConformance(t *testing.T) {
	hypnostest.RunRecordStore(t, openTest(t, "").SleepRecords("microvm"))
}

// Each runtime sees only its own records, and records survive reopening
// the database.
func TestSleepRecordsPerRuntimeAndDurable(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "t.db")
	s := openTest(t, path)
	a, b := s.SleepRecords("microvm"), s.SleepRecords("gvisor")
	if err := a.PutRecord(ctx, &hypnos.SleepRecord{SandboxID: "sb-a", SnapshotID: "s1", Status: hypnos.StatusSleeping}); err != nil {
		t.Fatal(err)
	}
	if _, err := b.GetRecord(ctx, "sb-a"); !errors.Is(err, tartarus.ErrNotFound) {
		t.Errorf("another runtime's record: %v, want ErrNotFound", err)
	}
	if list, err := b.ListRecords(ctx); err != nil || len(list) != 0 {
		t.Errorf("other runtime lists %d records, %v", len(list), err)
	}
	s.Close()
	s2 := openTest(t, path)
	got, err := s2.SleepRecords("microvm").GetRecord(ctx, "sb-a")
	if err != nil || got.SnapshotID != "s1" {
		t.Errorf("after reopen: %+v, %v", got, err)
	}
}
