// Package erebustest is the conformance suite every erebus.Store backend
// must pass: round trips of small and large objects, replacement, listing,
// deletion, key validation, failed and cancelled writes that leave nothing
// behind, concurrent writers, and (where the backend lets the suite damage
// an object) detection of corrupted data on read.
package erebustest

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"slices"
	"sync"
	"testing"

	"github.com/tartarus-sandbox/tartarus/pkg/erebus"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

// Options adapt the suite to a backend.
type Options struct {
	// Corrupt damages the stored bytes of key behind the store's back (flip
	// a byte of the content, truncate it). Nil skips the corruption tests.
	Corrupt func(t *testing.T, key string, how Damage)
}

// Damage is a way to corrupt a stored object.
type Damage int

// The damages Corrupt must support.
const (
	FlipByte Damage = iota // change one content byte, same length
	Truncate               // drop the last content byte
)

// Run runs the suite against an empty store s.
func Run(t *testing.T, s erebus.Store, opts Options) {
	ctx := t.Context()
	t.Run("RoundTrip", func(t *testing.T) {
		for _, size := range []int{0, 1, 4095, 4096, 1<<20 + 7, 9 << 20} {
			t.Run(fmt.Sprint(size), func(t *testing.T) {
				key := fmt.Sprintf("roundtrip/obj-%d", size)
				data := randomBytes(size, uint64(size))
				obj, err := s.Put(ctx, key, bytes.NewReader(data))
				if err != nil {
					t.Fatalf("Put: %v", err)
				}
				if obj.Key != key || obj.Size != int64(size) || obj.Checksum != checksum(data) {
					t.Fatalf("Put returned %+v, want key %s size %d checksum %s", obj, key, size, checksum(data))
				}
				got, gobj := mustGet(t, s, key)
				if !bytes.Equal(got, data) {
					t.Fatalf("Get returned %d bytes that differ from the %d put", len(got), size)
				}
				if gobj.Size != obj.Size || gobj.Checksum != obj.Checksum {
					t.Fatalf("Get object %+v, Put object %+v", gobj, obj)
				}
				st, err := s.Stat(ctx, key)
				if err != nil || st.Size != obj.Size || st.Checksum != obj.Checksum {
					t.Fatalf("Stat = %+v, %v; want %+v", st, err, obj)
				}
			})
		}
	})

	t.Run("Replace", func(t *testing.T) {
		key := "replace/x"
		for i, data := range [][]byte{[]byte("first version, longer"), []byte("second")} {
			if _, err := s.Put(ctx, key, bytes.NewReader(data)); err != nil {
				t.Fatalf("Put %d: %v", i, err)
			}
			if got, _ := mustGet(t, s, key); !bytes.Equal(got, data) {
				t.Fatalf("after Put %d got %q, want %q", i, got, data)
			}
		}
	})

	t.Run("NotFound", func(t *testing.T) {
		if _, _, err := s.Get(ctx, "missing/x"); !errors.Is(err, tartarus.ErrNotFound) {
			t.Errorf("Get missing: %v, want ErrNotFound", err)
		}
		if _, err := s.Stat(ctx, "missing/x"); !errors.Is(err, tartarus.ErrNotFound) {
			t.Errorf("Stat missing: %v, want ErrNotFound", err)
		}
		if err := s.Delete(ctx, "missing/x"); err != nil {
			t.Errorf("Delete missing: %v, want nil", err)
		}
	})

	t.Run("Delete", func(t *testing.T) {
		mustPut(t, s, "delete/a/b", "x")
		mustPut(t, s, "delete/a/c", "y")
		if err := s.Delete(ctx, "delete/a/b"); err != nil {
			t.Fatalf("Delete: %v", err)
		}
		if _, err := s.Stat(ctx, "delete/a/b"); !errors.Is(err, tartarus.ErrNotFound) {
			t.Fatalf("Stat after Delete: %v, want ErrNotFound", err)
		}
		if got, _ := mustGet(t, s, "delete/a/c"); string(got) != "y" {
			t.Fatalf("sibling changed: %q", got)
		}
		if err := s.Delete(ctx, "delete/a/b"); err != nil {
			t.Fatalf("second Delete: %v", err)
		}
		// Once all objects under a prefix are gone, its name is usable as a key.
		if err := s.Delete(ctx, "delete/a/c"); err != nil {
			t.Fatalf("Delete: %v", err)
		}
		mustPut(t, s, "delete/a", "now an object")
	})

	t.Run("List", func(t *testing.T) {
		keys := []string{"list/b", "list/a/2", "list/a/1", "list/a.x", "list/ab", "listing/z"}
		for _, k := range keys {
			mustPut(t, s, k, "v:"+k)
		}
		for _, tc := range []struct {
			prefix string
			want   []string
		}{
			{"list/", []string{"list/a.x", "list/a/1", "list/a/2", "list/ab", "list/b"}},
			{"list/a", []string{"list/a.x", "list/a/1", "list/a/2", "list/ab"}},
			{"list/a/", []string{"list/a/1", "list/a/2"}},
			{"list/a/1", []string{"list/a/1"}},
			{"list", []string{"list/a.x", "list/a/1", "list/a/2", "list/ab", "list/b", "listing/z"}},
			{"list/nothing/", nil},
			{"nothing", nil},
		} {
			objs, err := s.List(ctx, tc.prefix)
			if err != nil {
				t.Fatalf("List(%q): %v", tc.prefix, err)
			}
			var got []string
			for _, o := range objs {
				got = append(got, o.Key)
				if o.Size != int64(len("v:"+o.Key)) || o.Checksum != checksum([]byte("v:"+o.Key)) {
					t.Errorf("List(%q): %+v has wrong size or checksum", tc.prefix, o)
				}
			}
			if !slices.Equal(got, tc.want) {
				t.Errorf("List(%q) = %q, want %q", tc.prefix, got, tc.want)
			}
		}
	})

	t.Run("InvalidKeys", func(t *testing.T) {
		for _, key := range []string{"", "/abs", "a/../b", "..", "a/./b", "a//b", "trail/", `back\slash`,
			"nul\x00", "space here", string(bytes.Repeat([]byte("a"), erebus.MaxKeyLen+1))} {
			if _, err := s.Put(ctx, key, bytes.NewReader(nil)); !errors.Is(err, tartarus.ErrInvalid) {
				t.Errorf("Put(%q): %v, want ErrInvalid", key, err)
			}
			if _, _, err := s.Get(ctx, key); !errors.Is(err, tartarus.ErrInvalid) {
				t.Errorf("Get(%q): %v, want ErrInvalid", key, err)
			}
			if err := s.Delete(ctx, key); !errors.Is(err, tartarus.ErrInvalid) {
				t.Errorf("Delete(%q): %v, want ErrInvalid", key, err)
			}
		}
	})

	t.Run("FailedWriteLeavesOldObject", func(t *testing.T) {
		mustPut(t, s, "failed/x", "old")
		boom := errors.New("source broke")
		r := io.MultiReader(bytes.NewReader(randomBytes(3<<20, 1)), errReader{boom})
		if _, err := s.Put(ctx, "failed/x", r); !errors.Is(err, boom) {
			t.Fatalf("Put from failing reader: %v, want the reader's error", err)
		}
		if got, _ := mustGet(t, s, "failed/x"); string(got) != "old" {
			t.Fatalf("after failed Put got %d bytes, want the old object", len(got))
		}
		if _, err := s.Put(ctx, "failed/new", errReader{boom}); err == nil {
			t.Fatal("Put from failing reader succeeded")
		}
		if _, err := s.Stat(ctx, "failed/new"); !errors.Is(err, tartarus.ErrNotFound) {
			t.Fatalf("a failed Put left an object: %v", err)
		}
	})

	t.Run("CancelledWriteLeavesNothing", func(t *testing.T) {
		cctx, cancel := context.WithCancel(ctx)
		pr, pw := io.Pipe()
		go func() {
			pw.Write(randomBytes(1<<20, 2))
			cancel()
			pw.Write(randomBytes(1<<20, 3))
			pw.Close()
		}()
		if _, err := s.Put(cctx, "cancelled/x", pr); !errors.Is(err, context.Canceled) {
			t.Fatalf("Put with cancelled ctx: %v, want context.Canceled", err)
		}
		pr.Close()
		if _, err := s.Stat(ctx, "cancelled/x"); !errors.Is(err, tartarus.ErrNotFound) {
			t.Fatalf("a cancelled Put left an object: %v", err)
		}
	})

	t.Run("ConcurrentWriters", func(t *testing.T) {
		var wg sync.WaitGroup
		versions := make([][]byte, 6)
		for i := range versions {
			versions[i] = randomBytes(512<<10, uint64(100+i))
		}
		errs := make(chan error, 2*len(versions))
		for i, data := range versions {
			wg.Go(func() {
				if _, err := s.Put(ctx, "concurrent/same", bytes.NewReader(data)); err != nil {
					errs <- err
				}
				if _, err := s.Put(ctx, fmt.Sprintf("concurrent/own-%d", i), bytes.NewReader(data)); err != nil {
					errs <- err
				}
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Fatalf("concurrent Put: %v", err)
		}
		got, _ := mustGet(t, s, "concurrent/same")
		if !slices.ContainsFunc(versions, func(v []byte) bool { return bytes.Equal(v, got) }) {
			t.Fatal("concurrent writers to one key produced a mix of their data")
		}
		for i, data := range versions {
			if got, _ := mustGet(t, s, fmt.Sprintf("concurrent/own-%d", i)); !bytes.Equal(got, data) {
				t.Fatalf("object %d differs", i)
			}
		}
	})

	t.Run("Corrupt", func(t *testing.T) {
		if opts.Corrupt == nil {
			t.Skip("backend gives the suite no way to damage an object")
		}
		for _, how := range []Damage{FlipByte, Truncate} {
			key := fmt.Sprintf("corrupt/%d", how)
			data := randomBytes(2<<20, 9)
			if _, err := s.Put(ctx, key, bytes.NewReader(data)); err != nil {
				t.Fatal(err)
			}
			opts.Corrupt(t, key, how)
			rc, _, err := s.Get(ctx, key)
			if err == nil {
				_, err = io.Copy(io.Discard, rc)
				rc.Close()
			}
			if !errors.Is(err, erebus.ErrCorrupt) {
				t.Errorf("damage %d: reading gave %v, want ErrCorrupt", how, err)
			}
		}
	})
}

func mustPut(t *testing.T, s erebus.Store, key, data string) {
	t.Helper()
	if _, err := s.Put(t.Context(), key, bytes.NewReader([]byte(data))); err != nil {
		t.Fatalf("Put(%q): %v", key, err)
	}
}

func mustGet(t *testing.T, s erebus.Store, key string) ([]byte, erebus.Object) {
	t.Helper()
	rc, obj, err := s.Get(t.Context(), key)
	if err != nil {
		t.Fatalf("Get(%q): %v", key, err)
	}
	defer rc.Close()
	data, err := io.ReadAll(rc)
	if err != nil {
		t.Fatalf("read %q: %v", key, err)
	}
	return data, obj
}

func checksum(b []byte) string {
	h := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(h[:])
}

func randomBytes(n int, seed uint64) []byte {
	r := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	b := make([]byte, n+8)
	for i := 0; i < n; i += 8 {
		binary.LittleEndian.PutUint64(b[i:], r.Uint64())
	}
	return b[:n]
}

type errReader struct{ err error }

func (e errReader) Read([]byte) (int, error) { return 0, e.err }
