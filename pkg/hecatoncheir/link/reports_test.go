package link

import (
	"context"
	"fmt"
	"path/filepath"
	"testing"

	"github.com/tartarus-sandbox/tartarus/pkg/hypnos"
	"github.com/tartarus-sandbox/tartarus/pkg/store"
	"github.com/tartarus-sandbox/tartarus/pkg/store/storetest"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

// plainStore is a Store that keeps no sleep records.
type plainStore struct{ store.Store }

// Watch keeps the wrapped store's sleep records where they were: a wrapper
// that dropped them would move hibernation's records elsewhere.
func TestWatchForwardsSleepRecords(t *testing.T) {
	ctx := context.Background()
	sql, err := store.OpenSQLite(ctx, filepath.Join(t.TempDir(), "t.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sql.Close() })
	tests := []struct {
		name   string
		st     store.Store
		keeper bool
	}{
		{"SQLite", sql, true},
		{"without sleep records", plainStore{sql}, false},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			w, ch := Watch(tt.st)
			id := fmt.Sprintf("sb-%d", i)
			if err := w.Create(ctx, storetest.Sandbox(id, "t", tartarus.StateRunning)); err != nil {
				t.Fatal(err)
			}
			if got := ch.Take(); len(got) != 1 || got[0] != id {
				t.Errorf("changes %v, want [%s]", got, id)
			}
			rk, ok := w.(store.SleepRecordKeeper)
			if ok != tt.keeper {
				t.Fatalf("Watch(%T) is a SleepRecordKeeper: %v, want %v", tt.st, ok, tt.keeper)
			}
			if !ok {
				return
			}
			if err := rk.SleepRecords("microvm").PutRecord(ctx, &hypnos.SleepRecord{SandboxID: id, SnapshotID: "s1", Status: hypnos.StatusSleeping}); err != nil {
				t.Fatal(err)
			}
			got, err := sql.SleepRecords("microvm").GetRecord(ctx, id)
			if err != nil || got.SnapshotID != "s1" {
				t.Errorf("record in the wrapped store: %+v, %v", got, err)
			}
		})
	}
}
