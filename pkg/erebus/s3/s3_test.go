package s3_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"hash"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"

	"github.com/tartarus-sandbox/tartarus/pkg/erebus"
	"github.com/tartarus-sandbox/tartarus/pkg/erebus/erebustest"
	"github.com/tartarus-sandbox/tartarus/pkg/erebus/s3"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

func testLog(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelWarn}))
}

func config(srv *erebustest.SeaweedFS, bucket, prefix string) s3.Config {
	return s3.Config{
		Endpoint:  srv.Endpoint,
		Bucket:    bucket,
		Prefix:    prefix,
		AccessKey: srv.AccessKey,
		SecretKey: srv.SecretKey,
	}
}

func newStore(t testing.TB, cfg s3.Config) *s3.Store {
	t.Helper()
	st, err := s3.New(t.Context(), cfg, testLog(t))
	if err != nil {
		t.Fatalf("s3.New: %v", err)
	}
	return st
}

// rawClient talks to the server behind the store's back.
func rawClient(t testing.TB, srv *erebustest.SeaweedFS) *minio.Client {
	t.Helper()
	c, err := minio.New(srv.Endpoint, &minio.Options{Creds: credentials.NewStaticV4(srv.AccessKey, srv.SecretKey, "")})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// TestConformance runs the shared Erebus suite against a real SeaweedFS,
// with objects under a prefix, corrupting objects by rewriting them
// through a second client.
func TestConformance(t *testing.T) {
	srv := erebustest.StartSeaweedFS(t)
	st := newStore(t, config(srv, "conformance", "cluster-1"))
	raw := rawClient(t, srv)
	erebustest.Run(t, st, erebustest.Options{Corrupt: func(t *testing.T, key string, how erebustest.Damage) {
		name := "cluster-1/" + key
		obj, err := raw.GetObject(t.Context(), "conformance", name, minio.GetObjectOptions{})
		if err != nil {
			t.Fatal(err)
		}
		b, err := io.ReadAll(obj)
		obj.Close()
		if err != nil {
			t.Fatal(err)
		}
		switch how {
		case erebustest.FlipByte:
			b[len(b)/2] ^= 0x40
		case erebustest.Truncate:
			// Drop the last content byte, keeping the trailer.
			b = slices.Delete(b, len(b)-129, len(b)-128)
		}
		if _, err := raw.PutObject(t.Context(), "conformance", name, bytes.NewReader(b), int64(len(b)),
			minio.PutObjectOptions{}); err != nil {
			t.Fatal(err)
		}
	}})
}

// TestS3 holds the S3-specific checks that share one server.
func TestS3(t *testing.T) {
	srv := erebustest.StartSeaweedFS(t)
	raw := rawClient(t, srv)
	ctx := t.Context()

	t.Run("CreatesMissingBucket", func(t *testing.T) {
		if ok, err := raw.BucketExists(ctx, "fresh-bucket"); err != nil || ok {
			t.Fatalf("before: BucketExists = %v, %v; want false", ok, err)
		}
		st := newStore(t, config(srv, "fresh-bucket", ""))
		if ok, err := raw.BucketExists(ctx, "fresh-bucket"); err != nil || !ok {
			t.Fatalf("after New: BucketExists = %v, %v; want true", ok, err)
		}
		if _, err := st.Put(ctx, "x", strings.NewReader("y")); err != nil {
			t.Fatal(err)
		}
		// A second store on the existing bucket sees the object.
		if obj, err := newStore(t, config(srv, "fresh-bucket", "")).Stat(ctx, "x"); err != nil || obj.Size != 1 {
			t.Fatalf("second store: Stat = %+v, %v", obj, err)
		}
	})

	t.Run("WrongCredentials", func(t *testing.T) {
		for _, tc := range []struct{ name, access, secret string }{
			{"wrong secret", srv.AccessKey, "not-the-secret"},
			{"unknown key", "nobody", "nothing"},
		} {
			cfg := config(srv, "conformance-creds", "")
			cfg.AccessKey, cfg.SecretKey = tc.access, tc.secret
			_, err := s3.New(ctx, cfg, testLog(t))
			if !errors.Is(err, tartarus.ErrUnauthenticated) && !errors.Is(err, tartarus.ErrPermissionDenied) {
				t.Errorf("%s: New = %v, want ErrUnauthenticated or ErrPermissionDenied", tc.name, err)
			} else if !strings.Contains(err.Error(), "refused the credentials") {
				t.Errorf("%s: error %q does not say the credentials were refused", tc.name, err)
			} else {
				t.Logf("%s: %v", tc.name, err)
			}
		}
	})

	t.Run("OddKeysAndPrefixes", func(t *testing.T) {
		a := newStore(t, config(srv, "odd", "tenant-a"))
		b := newStore(t, config(srv, "odd", "tenant-b"))
		keys := []string{"sleep/sb-1/2026-11-25T21:41:28Z", "a+b=c@d,e~f", ".hidden/x_y-z"}
		for _, k := range keys {
			if _, err := a.Put(ctx, k, strings.NewReader("v:"+k)); err != nil {
				t.Fatalf("Put(%q): %v", k, err)
			}
			rc, _, err := a.Get(ctx, k)
			if err != nil {
				t.Fatalf("Get(%q): %v", k, err)
			}
			got, err := io.ReadAll(rc)
			rc.Close()
			if err != nil || string(got) != "v:"+k {
				t.Fatalf("Get(%q) = %q, %v", k, got, err)
			}
		}
		objs, err := a.List(ctx, "")
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, o := range objs {
			got = append(got, o.Key)
		}
		want := slices.Sorted(slices.Values(keys))
		if !slices.Equal(got, want) {
			t.Fatalf("List = %q, want %q", got, want)
		}
		if objs, err := b.List(ctx, ""); err != nil || len(objs) != 0 {
			t.Fatalf("the other prefix lists %v, %v; want nothing", objs, err)
		}
		if _, err := b.Stat(ctx, keys[0]); !errors.Is(err, tartarus.ErrNotFound) {
			t.Fatalf("the other prefix: Stat = %v, want ErrNotFound", err)
		}
	})

	t.Run("KeyAndPrefixCoexist", func(t *testing.T) {
		// Unlike the local store (which refuses), S3 keeps "a" and "a/b"
		// side by side; deleting "a" must not touch "a/b".
		st := newStore(t, config(srv, "coexist", ""))
		for _, k := range []string{"d/a/b", "d/a", "f", "f/x"} {
			if _, err := st.Put(ctx, k, strings.NewReader("v:"+k)); err != nil {
				t.Fatalf("Put(%q): %v", k, err)
			}
		}
		if err := st.Delete(ctx, "d/a"); err != nil {
			t.Fatal(err)
		}
		objs, err := st.List(ctx, "")
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, o := range objs {
			got = append(got, o.Key)
		}
		if want := []string{"d/a/b", "f", "f/x"}; !slices.Equal(got, want) {
			t.Fatalf("List = %q, want %q", got, want)
		}
	})

	t.Run("ListPages", func(t *testing.T) {
		var listCalls atomic.Int64
		cfg := config(srv, "pages", "")
		cfg.ListPageSize = 7
		cfg.Transport = countingTransport{next: http.DefaultTransport, n: &listCalls}
		st := newStore(t, cfg)
		var want []string
		for i := range 23 {
			k := fmt.Sprintf("p/%02d", i)
			want = append(want, k)
			if _, err := st.Put(ctx, k, strings.NewReader(k)); err != nil {
				t.Fatal(err)
			}
		}
		listCalls.Store(0)
		objs, err := st.List(ctx, "p/")
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, o := range objs {
			got = append(got, o.Key)
			if o.Size != int64(len(o.Key)) || o.Checksum == "" {
				t.Errorf("List: %+v has wrong size or no checksum", o)
			}
		}
		if !slices.Equal(got, want) {
			t.Fatalf("List = %q, want %q", got, want)
		}
		if n := listCalls.Load(); n < 4 {
			t.Fatalf("List made %d ListObjects requests for 23 keys in pages of 7, want at least 4", n)
		}
	})

	t.Run("LargeObjectStreams", func(t *testing.T) {
		// 100 MiB from a generator, never held whole: the heap must stay
		// far below the object's size while it goes up and comes back.
		const size = 100 << 20
		st := newStore(t, config(srv, "large", ""))
		peak := watchHeap(t)
		src := &genReader{left: size, r: rand.New(rand.NewPCG(1, 2)), h: sha256.New()}
		obj, err := st.Put(ctx, "big", src)
		if err != nil {
			t.Fatalf("Put: %v", err)
		}
		wantSum := fmt.Sprintf("sha256:%x", src.h.Sum(nil))
		if obj.Size != size || obj.Checksum != wantSum {
			t.Fatalf("Put = %+v, want size %d checksum %s", obj, size, wantSum)
		}
		rc, _, err := st.Get(ctx, "big")
		if err != nil {
			t.Fatal(err)
		}
		h := sha256.New()
		n, err := io.CopyBuffer(h, rc, make([]byte, 1<<20))
		rc.Close()
		if err != nil || n != size || fmt.Sprintf("sha256:%x", h.Sum(nil)) != wantSum {
			t.Fatalf("Get: %d bytes, %v; checksum match %v", n, err, fmt.Sprintf("sha256:%x", h.Sum(nil)) == wantSum)
		}
		grew := peak()
		t.Logf("heap grew by at most %d MiB while a %d MiB object went up and down", grew>>20, size>>20)
		if grew > 64<<20 {
			t.Fatalf("heap grew by %d MiB for a %d MiB object: the store buffers it", grew>>20, size>>20)
		}
		// The multipart upload left no parts behind.
		for up := range rawClient(t, srv).ListIncompleteUploads(ctx, "large", "", true) {
			t.Errorf("incomplete upload left: %+v", up)
		}
	})

	t.Run("FailedMultipartLeavesNothing", func(t *testing.T) {
		st := newStore(t, config(srv, "aborted", ""))
		boom := errors.New("source broke")
		r := io.MultiReader(&genReader{left: 40 << 20, r: rand.New(rand.NewPCG(5, 6)), h: sha256.New()}, errReader{boom})
		if _, err := st.Put(ctx, "half", r); !errors.Is(err, boom) {
			t.Fatalf("Put = %v, want the source's error", err)
		}
		if _, err := st.Stat(ctx, "half"); !errors.Is(err, tartarus.ErrNotFound) {
			t.Fatalf("Stat after failed Put = %v, want ErrNotFound", err)
		}
		for up := range rawClient(t, srv).ListIncompleteUploads(ctx, "aborted", "", true) {
			t.Errorf("the failed Put left its multipart upload: %+v", up)
		}
	})

	t.Run("ReplacedDuringGet", func(t *testing.T) {
		// The object is replaced between Get's trailer read and its
		// content read: Get must return one whole version, never the new
		// content checked against the old trailer.
		var replaced atomic.Bool
		cfg := config(srv, "replace", "")
		cfg.Transport = hookTransport{next: http.DefaultTransport, before: func(r *http.Request) {
			if strings.HasPrefix(r.Header.Get("Range"), "bytes=0-") && replaced.CompareAndSwap(false, true) {
				if _, err := raw.PutObject(context.WithoutCancel(r.Context()), "replace", "obj", bytes.NewReader([]byte("new")), 3,
					minio.PutObjectOptions{}); err != nil {
					t.Error(err)
				}
			}
		}}
		st := newStore(t, cfg)
		if _, err := st.Put(ctx, "obj", strings.NewReader("old version")); err != nil {
			t.Fatal(err)
		}
		// "new" was written raw, without a trailer: the retried Get must
		// see that the new version is not a valid object.
		rc, obj, err := st.Get(ctx, "obj")
		if err == nil {
			got, rerr := io.ReadAll(rc)
			rc.Close()
			t.Fatalf("Get after replacement = %q (%+v), %v; want ErrCorrupt from the new version's trailer", got, obj, rerr)
		}
		if !errors.Is(err, erebus.ErrCorrupt) || !replaced.Load() {
			t.Fatalf("Get = %v (replaced %v), want ErrCorrupt", err, replaced.Load())
		}
	})

	t.Run("ServerDown", func(t *testing.T) {
		down := erebustest.StartSeaweedFS(t)
		st := newStore(t, config(down, "down", ""))
		if _, err := st.Put(ctx, "x", strings.NewReader("y")); err != nil {
			t.Fatal(err)
		}
		down.Stop()
		cctx, cancel := context.WithTimeout(ctx, 20*time.Second)
		defer cancel()
		_, err := st.Put(cctx, "x", strings.NewReader("z"))
		if !errors.Is(err, tartarus.ErrUnavailable) {
			t.Errorf("Put to a stopped server = %v, want ErrUnavailable", err)
		}
		t.Logf("Put: %v", err)
		if _, _, err := st.Get(cctx, "x"); !errors.Is(err, tartarus.ErrUnavailable) {
			t.Errorf("Get from a stopped server = %v, want ErrUnavailable", err)
		}
		if _, err := s3.New(cctx, config(down, "down", ""), testLog(t)); !errors.Is(err, tartarus.ErrUnavailable) {
			t.Errorf("New against a stopped server = %v, want ErrUnavailable", err)
		}
	})
}

// TestHungServer checks that a server which accepts connections but never
// answers cannot hang a call past its ctx.
func TestHungServer(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var conns []net.Conn
	var mu sync.Mutex
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c) // read nothing, answer nothing
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		l.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
	})
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Second)
	defer cancel()
	_, err = s3.New(ctx, s3.Config{Endpoint: l.Addr().String(), Bucket: "hung", AccessKey: "a", SecretKey: "b"}, testLog(t))
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("New against a hung server = %v, want context.DeadlineExceeded", err)
	}
}

func TestConfigValidate(t *testing.T) {
	good := s3.Config{Endpoint: "127.0.0.1:8333", Bucket: "snapshots", AccessKey: "a", SecretKey: "b"}
	for _, tc := range []struct {
		name   string
		change func(*s3.Config)
		want   []string // parts of the error; nil means valid
	}{
		{"good", func(*s3.Config) {}, nil},
		{"with prefix", func(c *s3.Config) { c.Prefix = "prod/eu-1" }, nil},
		{"no endpoint", func(c *s3.Config) { c.Endpoint = "" }, []string{"endpoint is empty"}},
		{"scheme", func(c *s3.Config) { c.Endpoint = "http://x:1" }, []string{"without a scheme"}},
		{"bad bucket", func(c *s3.Config) { c.Bucket = "Bad_Bucket" }, []string{`bucket "Bad_Bucket"`}},
		{"bad prefix", func(c *s3.Config) { c.Prefix = "/abs/" }, []string{"prefix"}},
		{"no secret", func(c *s3.Config) { c.SecretKey = "" }, []string{"secret key"}},
		{"small parts", func(c *s3.Config) { c.PartSize = 1 << 20 }, []string{"part size"}},
		{"small object above part", func(c *s3.Config) { c.PartSize, c.SmallObjectSize = 5<<20, 6<<20 }, []string{"small object size"}},
		{"custom sizes", func(c *s3.Config) { c.PartSize, c.SmallObjectSize, c.ListPageSize = 8<<20, 8<<20, 100 }, nil},
		{"everything", func(c *s3.Config) { *c = s3.Config{} }, []string{"endpoint", "bucket", "access key"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := good
			tc.change(&c)
			err := c.Validate()
			if tc.want == nil {
				if err != nil {
					t.Fatalf("Validate = %v, want nil", err)
				}
				return
			}
			if !errors.Is(err, tartarus.ErrInvalid) {
				t.Fatalf("Validate = %v, want ErrInvalid", err)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("Validate = %q, want it to mention %q", err, w)
				}
			}
		})
	}
}

func TestConfigLogValueHidesSecret(t *testing.T) {
	var b bytes.Buffer
	slog.New(slog.NewTextHandler(&b, nil)).Info("x", "s3", s3.Config{AccessKey: "AKID", SecretKey: "hunter2", SessionToken: "tok"})
	if strings.Contains(b.String(), "hunter2") || strings.Contains(b.String(), "tok") || !strings.Contains(b.String(), "AKID") {
		t.Fatalf("log line %q: want the access key and neither secret", b.String())
	}
}

// watchHeap samples the live heap until the test ends and returns a func
// that reports the largest growth over the heap at the start.
func watchHeap(t *testing.T) func() uint64 {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	base := ms.HeapAlloc
	var peak atomic.Uint64
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		var ms runtime.MemStats
		for {
			runtime.ReadMemStats(&ms)
			if ms.HeapAlloc > base && ms.HeapAlloc-base > peak.Load() {
				peak.Store(ms.HeapAlloc - base)
			}
			select {
			case <-stop:
				return
			case <-time.After(5 * time.Millisecond):
			}
		}
	}()
	var once sync.Once
	finish := func() { once.Do(func() { close(stop); <-done }) }
	t.Cleanup(finish)
	return func() uint64 { finish(); return peak.Load() }
}

// genReader yields left pseudo-random bytes and hashes them.
type genReader struct {
	left    int64
	r       *rand.Rand
	h       hash.Hash
	buf     [8]byte
	pending []byte
}

func (g *genReader) Read(p []byte) (int, error) {
	if g.left == 0 {
		return 0, io.EOF
	}
	p = p[:min(int64(len(p)), g.left)]
	n := 0
	for n < len(p) {
		if len(g.pending) == 0 {
			binary.LittleEndian.PutUint64(g.buf[:], g.r.Uint64())
			g.pending = g.buf[:]
		}
		c := copy(p[n:], g.pending)
		g.pending = g.pending[c:]
		n += c
	}
	g.h.Write(p)
	g.left -= int64(n)
	return n, nil
}

type errReader struct{ err error }

func (e errReader) Read([]byte) (int, error) { return 0, e.err }

// countingTransport counts ListObjectsV2 requests.
type countingTransport struct {
	next http.RoundTripper
	n    *atomic.Int64
}

func (c countingTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	if r.Method == http.MethodGet && r.URL.Query().Get("list-type") == "2" {
		c.n.Add(1)
	}
	return c.next.RoundTrip(r)
}

// hookTransport calls before ahead of each request.
type hookTransport struct {
	next   http.RoundTripper
	before func(*http.Request)
}

func (h hookTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	h.before(r)
	return h.next.RoundTrip(r)
}

var _ erebus.Store = (*s3.Store)(nil)
