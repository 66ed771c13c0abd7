package nyx_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/tartarus-sandbox/tartarus/pkg/erebus"
	"github.com/tartarus-sandbox/tartarus/pkg/nyx"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

// fakeSnapshotter keeps each "sandbox" as a set of named file contents and
// writes them as real files, as a runtime would write a memory image and a
// disk overlay. It is the layer below Nyx, faked for Nyx's unit tests.
type fakeSnapshotter struct {
	mu       sync.Mutex
	boxes    map[string]map[string][]byte
	paused   map[string]bool
	restores int
	failSnap error
	// sizesOnly makes Restore record file sizes, not contents, so tests
	// can measure Nyx's own memory use.
	sizesOnly bool
}

var _ tartarus.Snapshotter = (*fakeSnapshotter)(nil)

func newFake() *fakeSnapshotter {
	return &fakeSnapshotter{boxes: map[string]map[string][]byte{}, paused: map[string]bool{}}
}

func (f *fakeSnapshotter) Snapshot(ctx context.Context, id, dir string) (*tartarus.SnapshotInfo, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.failSnap != nil {
		return nil, f.failSnap
	}
	files, ok := f.boxes[id]
	if !ok {
		return nil, tartarus.Errorf(tartarus.ErrNotFound, "sandbox %s", id)
	}
	f.paused[id] = true
	info := &tartarus.SnapshotInfo{Template: "base", ImageDigest: "img-1", MemoryBytes: 256 << 20, Created: time.Unix(1700000000, 0)}
	for name, data := range files {
		p := filepath.Join(dir, name)
		os.MkdirAll(filepath.Dir(p), 0o700)
		if err := os.WriteFile(p, data, 0o600); err != nil {
			return nil, err
		}
		info.Files = append(info.Files, name)
	}
	return info, nil
}

func (f *fakeSnapshotter) Restore(ctx context.Context, cfg *tartarus.VMConfig, dir string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.restores++
	if _, ok := f.boxes[cfg.ID]; ok {
		return tartarus.Errorf(tartarus.ErrAlreadyExists, "sandbox %s", cfg.ID)
	}
	files := map[string][]byte{}
	err := filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		if f.sizesOnly {
			fi, err := d.Info()
			if err == nil {
				files[filepath.ToSlash(rel)] = []byte(fmt.Sprint(fi.Size()))
			}
			return err
		}
		b, err := os.ReadFile(p)
		files[filepath.ToSlash(rel)] = b
		return err
	})
	f.boxes[cfg.ID] = files
	return err
}

// streamingFake is the fake as a tartarus.StreamSnapshotter: the file
// memory.bin goes to the stream, in odd-sized writes as from a pipe, and
// not into dir. writeErr is what the stream's Write last failed with.
type streamingFake struct {
	*fakeSnapshotter
	writeErr *error
}

var _ tartarus.StreamSnapshotter = streamingFake{}

func (f streamingFake) SnapshotStream(ctx context.Context, id, dir string, w io.Writer) (*tartarus.SnapshotInfo, error) {
	info, err := f.Snapshot(ctx, id, dir)
	if err != nil {
		return nil, err
	}
	p := filepath.Join(dir, "memory.bin")
	mem, err := os.Open(p)
	if err != nil {
		return nil, err
	}
	defer mem.Close()
	if _, err := io.CopyBuffer(w, struct{ io.Reader }{mem}, make([]byte, 40000)); err != nil {
		*f.writeErr = err
		return nil, fmt.Errorf("save memory: %w", err)
	}
	info.Stream = "memory.bin"
	return info, os.Remove(p)
}

// snapshotters are the two ways Nyx creates: from files, and streaming.
var snapshotters = []struct {
	name string
	of   func(*fakeSnapshotter) tartarus.Snapshotter
}{
	{"files", func(f *fakeSnapshotter) tartarus.Snapshotter { return f }},
	{"stream", func(f *fakeSnapshotter) tartarus.Snapshotter { return streamingFake{f, new(error)} }},
}

func memoryImage(n int) []byte {
	b := make([]byte, n) // mostly zero, like guest memory
	for i := 0; i < n; i += 8192 {
		copy(b[i:], fmt.Sprintf("page %d: some text the guest had in memory", i))
	}
	return b
}

func setup(t *testing.T) (*nyx.Manager, *fakeSnapshotter, *erebus.Local, string) {
	t.Helper()
	dir := t.TempDir()
	store, err := erebus.NewLocal(filepath.Join(dir, "store"))
	if err != nil {
		t.Fatal(err)
	}
	f := newFake()
	f.boxes["sb-1"] = map[string][]byte{
		"memory.bin":        memoryImage(4 << 20),
		"disk/overlay.raw":  bytes.Repeat([]byte("disk block "), 50000),
		"disk/empty-extent": make([]byte, 1<<20),
	}
	tmp := filepath.Join(dir, "tmp")
	os.Mkdir(tmp, 0o700)
	return nyx.New(f, store, nyx.Options{TempDir: tmp}), f, store, dir
}

func TestCreateAndRestore(t *testing.T) {
	for _, sn := range snapshotters {
		for _, compression := range []string{nyx.CompressionZstd, nyx.CompressionNone} {
			t.Run(sn.name+"/"+compression, func(t *testing.T) { testCreateAndRestore(t, sn.of, compression) })
		}
	}
}

func testCreateAndRestore(t *testing.T, of func(*fakeSnapshotter) tartarus.Snapshotter, compression string) {
	_, f, store, dir := setup(t)
	m := nyx.New(of(f), store, nyx.Options{TempDir: filepath.Join(dir, "tmp")})
	ctx := t.Context()
	s, err := m.CreateFromRunning(ctx, "sb-1", &nyx.CreateOptions{Compression: compression, Labels: map[string]string{"purpose": "test"}})
	if err != nil {
		t.Fatal(err)
	}
	if !f.paused["sb-1"] {
		t.Error("sandbox not left paused")
	}
	_, streaming := of(f).(tartarus.StreamSnapshotter)
	if s.Template != "base" || s.MemoryBytes != 256<<20 || s.Compression != compression ||
		!slices.Equal(s.Files, []string{"disk/empty-extent", "disk/overlay.raw", "memory.bin"}) ||
		(s.Stream == "memory.bin") != streaming || s.Created != time.Unix(1700000000, 0) {
		t.Errorf("metadata %+v", s)
	}
	obj, err := store.Stat(ctx, s.DataKey)
	if err != nil || obj.Checksum != s.Checksum || obj.Size != s.CompressedSize {
		t.Fatalf("stored %+v, %v; metadata %+v", obj, err, s)
	}
	if compression == nyx.CompressionZstd && s.CompressedSize*5 > s.Size {
		t.Errorf("zstd stored %d of %d bytes; want at least 5x smaller for this mostly-repetitive data", s.CompressedSize, s.Size)
	}
	got, err := m.Get(ctx, s.ID)
	if err != nil || got.Checksum != s.Checksum || got.Labels["purpose"] != "test" {
		t.Fatalf("Get = %+v, %v", got, err)
	}
	if _, err := m.Restore(ctx, s.ID, &tartarus.VMConfig{ID: "sb-2", Template: "base", Image: &tartarus.Image{Digest: "img-1"}}); err != nil {
		t.Fatal(err)
	}
	for name, want := range f.boxes["sb-1"] {
		if !bytes.Equal(f.boxes["sb-2"][name], want) {
			t.Errorf("restored %s differs", name)
		}
	}
	// The same snapshot restores again, into another sandbox.
	if _, err := m.Restore(ctx, s.ID, &tartarus.VMConfig{ID: "sb-3"}); err != nil {
		t.Fatal(err)
	}
	assertEmptyDir(t, filepath.Join(dir, "tmp"))
}

func TestCreateFailuresStoreNothing(t *testing.T) {
	for _, tc := range []struct {
		name  string
		setup func(*fakeSnapshotter, *failingStore)
		want  error
	}{
		{"snapshot error", func(f *fakeSnapshotter, _ *failingStore) { f.failSnap = errors.New("qmp: migrate failed") }, nil},
		{"unknown sandbox", func(f *fakeSnapshotter, _ *failingStore) { delete(f.boxes, "sb-1") }, tartarus.ErrNotFound},
		{"data put fails", func(_ *fakeSnapshotter, s *failingStore) { s.failPut = "/data" }, syscall.ENOSPC},
		{"metadata put fails", func(_ *fakeSnapshotter, s *failingStore) { s.failPut = "/meta.json" }, syscall.ENOSPC},
	} {
		for _, sn := range snapshotters {
			t.Run(tc.name+"/"+sn.name, func(t *testing.T) {
				_, f, store, dir := setup(t)
				fs := &failingStore{Store: store}
				tc.setup(f, fs)
				snap := sn.of(f)
				m := nyx.New(snap, fs, nyx.Options{TempDir: filepath.Join(dir, "tmp")})
				_, err := m.CreateFromRunning(t.Context(), "sb-1", nil)
				if err == nil || tc.want != nil && !errors.Is(err, tc.want) {
					t.Fatalf("CreateFromRunning: %v, want an error matching %v", err, tc.want)
				}
				// A store that fails mid-stream fails the runtime's writes,
				// so that it stops saving.
				if sf, ok := snap.(streamingFake); ok && fs.failPut == "/data" && *sf.writeErr == nil {
					t.Error("the store failed but the stream's writes did not")
				}
				objs, _ := store.List(t.Context(), "")
				if len(objs) != 0 {
					t.Errorf("failed create left %d objects: %+v", len(objs), objs)
				}
				assertEmptyDir(t, filepath.Join(dir, "tmp"))
			})
		}
	}
}

func TestRestoreRefusesDamage(t *testing.T) {
	for _, tc := range []struct {
		name   string
		damage func(t *testing.T, s *nyx.Snapshot, store erebus.Store, dir string)
		want   error
	}{
		{"flipped byte", func(t *testing.T, s *nyx.Snapshot, _ erebus.Store, dir string) {
			p := filepath.Join(dir, "store", "objects", filepath.FromSlash(s.DataKey))
			b, _ := os.ReadFile(p)
			b[len(b)-100] ^= 1
			os.WriteFile(p, b, 0o600)
		}, erebus.ErrCorrupt},
		{"truncated", func(t *testing.T, s *nyx.Snapshot, _ erebus.Store, dir string) {
			p := filepath.Join(dir, "store", "objects", filepath.FromSlash(s.DataKey))
			fi, _ := os.Stat(p)
			os.Truncate(p, fi.Size()/2)
		}, erebus.ErrCorrupt},
		{"data replaced by another valid object", func(t *testing.T, s *nyx.Snapshot, store erebus.Store, _ string) {
			if _, err := store.Put(t.Context(), s.DataKey, strings.NewReader("not the snapshot")); err != nil {
				t.Fatal(err)
			}
		}, erebus.ErrCorrupt},
		{"data missing", func(t *testing.T, s *nyx.Snapshot, store erebus.Store, _ string) {
			store.Delete(t.Context(), s.DataKey)
		}, erebus.ErrCorrupt},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m, f, store, dir := setup(t)
			s, err := m.CreateFromRunning(t.Context(), "sb-1", nil)
			if err != nil {
				t.Fatal(err)
			}
			tc.damage(t, s, store, dir)
			_, err = m.Restore(t.Context(), s.ID, &tartarus.VMConfig{ID: "sb-2"})
			if !errors.Is(err, tc.want) {
				t.Fatalf("Restore of damaged snapshot: %v, want %v", err, tc.want)
			}
			if f.restores != 0 {
				t.Fatal("the runtime was asked to restore from damaged data")
			}
			assertEmptyDir(t, filepath.Join(dir, "tmp"))
		})
	}
}

func TestRestoreRefusesOtherImage(t *testing.T) {
	m, f, _, _ := setup(t)
	s, err := m.CreateFromRunning(t.Context(), "sb-1", nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, cfg := range []*tartarus.VMConfig{
		{ID: "sb-2", Template: "python"},
		{ID: "sb-2", Template: "base", Image: &tartarus.Image{Digest: "img-2"}},
	} {
		if _, err := m.Restore(t.Context(), s.ID, cfg); !errors.Is(err, tartarus.ErrFailedPrecondition) {
			t.Errorf("Restore with %+v: %v, want ErrFailedPrecondition", cfg, err)
		}
	}
	if f.restores != 0 {
		t.Fatal("runtime asked to restore onto another image")
	}
}

func TestListAndDelete(t *testing.T) {
	m, _, store, _ := setup(t)
	ctx := t.Context()
	var ids []string
	for i := range 3 {
		s, err := m.CreateFromRunning(ctx, "sb-1", &nyx.CreateOptions{ID: fmt.Sprintf("s%d", i)})
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, s.ID)
	}
	// Data without metadata (a create that crashed) is not a snapshot.
	store.Put(ctx, "snapshots/orphan/data", strings.NewReader("x"))
	list, err := m.List(ctx)
	if err != nil || len(list) != 3 {
		t.Fatalf("List = %d snapshots, %v; want 3", len(list), err)
	}
	if inc, err := m.Incomplete(ctx); err != nil || !slices.Equal(inc, []string{"orphan"}) {
		t.Fatalf("Incomplete = %v, %v; want [orphan]", inc, err)
	}
	if err := m.Delete(ctx, ids[1]); err != nil {
		t.Fatal(err)
	}
	if err := m.Delete(ctx, ids[1]); err != nil {
		t.Fatalf("second Delete: %v", err)
	}
	if _, err := m.Get(ctx, ids[1]); !errors.Is(err, tartarus.ErrNotFound) {
		t.Fatalf("Get deleted: %v", err)
	}
	if list, _ := m.List(ctx); len(list) != 2 {
		t.Fatalf("List after delete = %d", len(list))
	}
	for _, bad := range []string{"", "a/b", "..", "x y"} {
		if _, err := m.Get(ctx, bad); !errors.Is(err, tartarus.ErrInvalid) {
			t.Errorf("Get(%q): %v, want ErrInvalid", bad, err)
		}
		if _, err := m.CreateFromRunning(ctx, "sb-1", &nyx.CreateOptions{ID: bad}); bad != "" && !errors.Is(err, tartarus.ErrInvalid) {
			t.Errorf("Create with id %q: %v, want ErrInvalid", bad, err)
		}
	}
}

// failingStore fails Put for keys ending in failPut, with ENOSPC as a full
// disk would.
type failingStore struct {
	erebus.Store
	failPut string
}

func (s *failingStore) Put(ctx context.Context, key string, r io.Reader) (erebus.Object, error) {
	if s.failPut != "" && strings.HasSuffix(key, s.failPut) {
		io.CopyN(io.Discard, r, 4<<10) // fail part-way, like a disk filling up
		return erebus.Object{}, fmt.Errorf("put %s: %w: %w", key, tartarus.ErrResourceExhausted, syscall.ENOSPC)
	}
	return s.Store.Put(ctx, key, r)
}

func assertEmptyDir(t *testing.T, dir string) {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(ents) != 0 {
		t.Errorf("%s still holds %d entries", dir, len(ents))
	}
}

// TestStreams checks that create and restore stream: a 128 MiB snapshot
// file crosses them with a bounded amount of allocation (encoder and
// decoder windows), not its size.
func TestStreams(t *testing.T) {
	for _, sn := range snapshotters {
		t.Run(sn.name, func(t *testing.T) { testStreams(t, sn.of) })
	}
}

func testStreams(t *testing.T, of func(*fakeSnapshotter) tartarus.Snapshotter) {
	_, f, store, dir := setup(t)
	m := nyx.New(of(f), store, nyx.Options{TempDir: filepath.Join(dir, "tmp")})
	const size = 128 << 20
	img := make([]byte, size)
	line := []byte("page of a test image with some text on it: ")
	for i := 0; i < size; i += 4096 {
		n := copy(img[i:], line)
		strconv.AppendInt(img[i+n:i+n], int64(i), 10)
	}
	f.boxes["big"] = map[string][]byte{"memory.bin": img}
	allocated := func(fn func()) uint64 {
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		fn()
		runtime.ReadMemStats(&after)
		return after.TotalAlloc - before.TotalAlloc
	}
	var s *nyx.Snapshot
	create := allocated(func() {
		var err error
		if s, err = m.CreateFromRunning(t.Context(), "big", nil); err != nil {
			t.Fatal(err)
		}
	})
	f.boxes["big"] = nil // the fake's own copy is not Nyx's business
	f.sizesOnly = true
	restore := allocated(func() {
		if _, err := m.Restore(t.Context(), s.ID, &tartarus.VMConfig{ID: "big2"}); err != nil {
			t.Fatal(err)
		}
	})
	t.Logf("create allocated %d MiB, restore %d MiB for %d MiB", create>>20, restore>>20, size>>20)
	if got := string(f.boxes["big2"]["memory.bin"]); got != fmt.Sprint(size) {
		t.Fatalf("restored memory.bin has %s bytes, want %d", got, size)
	}
	if create > size/4 || restore > size/4 {
		t.Errorf("create allocated %d bytes, restore %d, for a %d-byte snapshot: not streaming", create, restore, size)
	}
}
