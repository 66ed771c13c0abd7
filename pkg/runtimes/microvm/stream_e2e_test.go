package microvm_test

import (
	"context"
	"fmt"
	"io"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tartarus-sandbox/tartarus/pkg/erebus"
	"github.com/tartarus-sandbox/tartarus/pkg/hypnos"
	"github.com/tartarus-sandbox/tartarus/pkg/nyx"
	"github.com/tartarus-sandbox/tartarus/pkg/runtimes/microvm"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

// testStreamedSnapshot snapshots a running sandbox through Nyx, which
// streams QEMU's migration into the store: first a hibernate (Hypnos)
// with a store that fails part-way through the stream, which must leave
// nothing stored and the sandbox running with its file and process, then
// a snapshot for real, restored into a copy where the file and the process
// are still there. The sandbox is one restored from base's
// snapshot, as a user's sandbox is, so its whole memory is in the stream.
func testStreamedSnapshot(t *testing.T, d *microvm.Driver, img *tartarus.Image, base string) {
	ctx := ctxT(t)
	snap := t.TempDir()
	if _, err := d.Snapshot(ctx, base, snap); err != nil {
		t.Fatal(err)
	}
	if err := d.Resume(ctx, base); err != nil {
		t.Fatal(err)
	}
	id := base + "-stream"
	if err := d.Restore(ctx, &tartarus.VMConfig{ID: id, Template: img.Name, Image: img}, snap); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = d.Destroy(context.Background(), id) })
	run(t, d, id, "sh", "-c", "echo kept > /root/streamed; head -c 8000000 /dev/urandom > /root/junk")
	run(t, d, id, "sh", "-c", `setsid sh -c 'i=0; while :; do i=$((i+1)); echo $i > /tmp/counter; sleep 0.1; done' </dev/null >/dev/null 2>&1 &`)
	counter := func(t *testing.T, id string) int {
		n, _ := strconv.Atoi(strings.TrimSpace(run(t, d, id, "sh", "-c", "cat /tmp/counter 2>/dev/null || echo 0")))
		return n
	}
	waitCounter := func(t *testing.T, id string, atLeast int) int {
		deadline := time.Now().Add(30 * time.Second)
		for {
			n := counter(t, id)
			if n >= atLeast {
				return n
			}
			if time.Now().After(deadline) {
				t.Fatalf("counter in %s at %d after 30s, want %d", id, n, atLeast)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	before := waitCounter(t, id, 3)

	local, err := erebus.NewLocal(filepath.Join(t.TempDir(), "store"))
	if err != nil {
		t.Fatal(err)
	}
	tmp := t.TempDir()

	t.Run("HibernateFailsMidStream", func(t *testing.T) {
		// Hypnos over a store that fails part-way through the stream: the
		// sleep fails, and puts the sandbox back running.
		failing := &failAfterStore{Store: local, after: 4 << 20}
		hyp, err := hypnos.NewHypnosManager(hypnos.Deps{Runtime: d, Records: hypnos.NewStoreRecords(local, ""),
			Snapshots: nyx.New(d, failing, nyx.Options{TempDir: tmp})}, hypnos.HypnosConfig{})
		if err != nil {
			t.Fatal(err)
		}
		_, err = hyp.Sleep(ctx, id, nil)
		if err == nil || !strings.Contains(err.Error(), "no space") {
			t.Fatalf("Sleep with a failing store: %v, want the store's error", err)
		}
		if !failing.failed {
			t.Fatal("the store did not fail: the stream was shorter than expected")
		}
		t.Logf("hibernate failed as it should: %v", err)
		if objs, _ := local.List(ctx, ""); len(objs) != 0 {
			t.Errorf("a failed hibernate left %d objects: %+v", len(objs), objs)
		}
		if in := findInstance(t, d, id); in == nil || in.State != tartarus.InstanceRunning {
			t.Fatalf("after a failed hibernate the sandbox is %+v, want running", in)
		}
		if got := run(t, d, id, "cat", "/root/streamed"); got != "kept\n" {
			t.Errorf("after a failed hibernate the file holds %q", got)
		}
		before = waitCounter(t, id, before+3)
	})

	t.Run("HibernateCancelledMidStream", func(t *testing.T) {
		// A caller that gives up while QEMU saves into a slow store: the
		// migration is cancelled and the sandbox put back running.
		slow := &slowStore{Store: local}
		hyp, err := hypnos.NewHypnosManager(hypnos.Deps{Runtime: d, Records: hypnos.NewStoreRecords(local, ""),
			Snapshots: nyx.New(d, slow, nyx.Options{TempDir: tmp})}, hypnos.HypnosConfig{})
		if err != nil {
			t.Fatal(err)
		}
		cctx, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
		defer cancel()
		if _, err := hyp.Sleep(cctx, id, nil); err == nil {
			t.Fatal("Sleep with a cancelled context succeeded")
		} else {
			t.Logf("cancelled hibernate: %v", err)
		}
		if objs, _ := local.List(ctx, ""); len(objs) != 0 {
			t.Errorf("a cancelled hibernate left %d objects: %+v", len(objs), objs)
		}
		if in := findInstance(t, d, id); in == nil || in.State != tartarus.InstanceRunning {
			t.Fatalf("after a cancelled hibernate the sandbox is %+v, want running", in)
		}
		if got := run(t, d, id, "cat", "/root/streamed"); got != "kept\n" {
			t.Errorf("after a cancelled hibernate the file holds %q", got)
		}
		before = waitCounter(t, id, before+3)
	})

	t.Run("StoreAndRestore", func(t *testing.T) {
		if findInstance(t, d, id) == nil {
			t.Skip("no sandbox left")
		}
		m := nyx.New(d, local, nyx.Options{TempDir: tmp})
		start := time.Now()
		s, err := m.CreateFromRunning(ctx, id, nil)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("streamed snapshot stored in %s: %d bytes packed, %d stored", time.Since(start).Round(time.Millisecond), s.Size, s.CompressedSize)
		if s.Stream != "memory" || len(s.Files) != 3 || s.Size < 64<<20 {
			t.Errorf("snapshot metadata %+v: want the memory streamed, 3 files, the whole memory in it", s)
		}
		copyID := id + "-copy"
		if _, err := m.Restore(ctx, s.ID, &tartarus.VMConfig{ID: copyID, Template: img.Name, Image: img}); err != nil {
			t.Fatal(err)
		}
		defer d.Destroy(context.Background(), copyID)
		if got := run(t, d, copyID, "cat", "/root/streamed"); got != "kept\n" {
			t.Errorf("restored file holds %q", got)
		}
		if n := counter(t, copyID); n < before {
			t.Errorf("counter went from %d to %d: the process restarted", before, n)
		}
		waitCounter(t, copyID, before+3)
		if err := d.Resume(ctx, id); err != nil {
			t.Fatal(err)
		}
	})
}

// failAfterStore is a store whose Put reads fail with ENOSPC after the
// first after bytes, as a disk filling up would.
type failAfterStore struct {
	erebus.Store
	after  int64
	failed bool
}

func (s *failAfterStore) Put(ctx context.Context, key string, r io.Reader) (erebus.Object, error) {
	return s.Store.Put(ctx, key, &failAfterReader{r: r, left: s.after, failed: &s.failed})
}

type failAfterReader struct {
	r      io.Reader
	left   int64
	failed *bool
}

func (f *failAfterReader) Read(p []byte) (int, error) {
	if f.left <= 0 {
		*f.failed = true
		return 0, fmt.Errorf("write: %w", syscall.ENOSPC)
	}
	n, err := f.r.Read(p[:min(int64(len(p)), f.left)])
	f.left -= int64(n)
	return n, err
}

// slowStore is a store whose Put reads 64 KiB every 20 ms, as a slow
// remote store would.
type slowStore struct{ erebus.Store }

func (s *slowStore) Put(ctx context.Context, key string, r io.Reader) (erebus.Object, error) {
	return s.Store.Put(ctx, key, slowReader{r})
}

type slowReader struct{ r io.Reader }

func (s slowReader) Read(p []byte) (int, error) {
	time.Sleep(20 * time.Millisecond)
	return s.r.Read(p[:min(len(p), 64<<10)])
}
