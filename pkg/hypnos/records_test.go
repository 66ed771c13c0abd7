package hypnos_test

import (
	"testing"

	"github.com/tartarus-sandbox/tartarus/pkg/erebus"
	"github.com/tartarus-sandbox/tartarus/pkg/hypnos"
	"github.com/tartarus-sandbox/tartarus/pkg/hypnos/hypnostest"
)

func TestRecordStores(t *testing.T) {
	t.Run("MemRecords", func(t *testing.T) { hypnostest.RunRecordStore(t, hypnos.NewMemRecords()) })
	t.Run("StoreRecords", func(t *testing.T) {
		store, err := erebus.NewLocal(t.TempDir())
		if err != nil {
			t.Fatal(err)
		}
		hypnostest.RunRecordStore(t, hypnos.NewStoreRecords(store, ""))
	})
}
