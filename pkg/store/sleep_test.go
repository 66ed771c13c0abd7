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

func TestSnapshotBytesFollowMoves(t *testing.T) {
	ctx := context.Background()
	s := openTest(t, "")
	sb := sandbox("sb-1", "acme", tartarus.StateRunning)
	sb.AutoHibernateS = 30
	if err := s.Create(ctx, sb); err != nil {
		t.Fatal(err)
	}
	got, err := s.Move(ctx, "sb-1", tartarus.StateRunning, tartarus.StateHibernated, Change{At: t0, SnapshotBytes: 15 << 20})
	if err != nil || got.SnapshotBytes != 15<<20 || got.AutoHibernateS != 30 {
		t.Fatalf("hibernated: %+v, %v", got, err)
	}
	got, err = s.Move(ctx, "sb-1", tartarus.StateHibernated, tartarus.StateRunning, Change{At: t0})
	if err != nil || got.SnapshotBytes != 0 {
		t.Errorf("woken: %+v, %v", got, err)
	}
}
