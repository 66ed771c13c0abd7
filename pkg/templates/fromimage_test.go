package templates

import (
	"archive/tar"
	"bytes"
	"context"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

// fakeCatalog installs imported images into a fakeBackend's templates.
type fakeCatalog struct {
	f     *fakeBackend
	dir   string
	mu    sync.Mutex
	added []string
}

func (c *fakeCatalog) StageTemplate(name string) (string, error) {
	return os.MkdirTemp(c.dir, "stage-"+name+"-")
}

func (c *fakeCatalog) AddTemplate(_ context.Context, dir string, img, _ *tartarus.Image, _ map[string]string) (*tartarus.Image, error) {
	if _, err := os.Stat(filepath.Join(dir, "rootfs.ext4")); err != nil {
		return nil, err
	}
	c.mu.Lock()
	c.added = append(c.added, img.Name)
	c.mu.Unlock()
	c.f.mu.Lock()
	defer c.f.mu.Unlock()
	in := *img
	c.f.templates[img.Name] = &in
	return &in, nil
}

// TestBuildFromImageArchive: FROM oci-archive:FILE (or docker-archive:)
// imports the context's image tarball once per tenant as a cache step
// whose env the build starts from; a rebuild imports nothing; FROM
// oci:DIR imports an OCI layout directory of the context; a path out of
// the context, a missing file and FROM a cache step by name are refused.
func TestBuildFromImageArchive(t *testing.T) {
	if _, err := exec.LookPath("mke2fs"); err != nil {
		t.Skip("mke2fs is not installed")
	}
	f := newFake()
	f.templates["base"] = &tartarus.Image{Name: "base", Digest: "sha256:base"}
	cat := &fakeCatalog{f: f, dir: t.TempDir()}
	bd := NewBuilder(f, cat, nil, nil)
	dir := t.TempDir()
	img := ociTarball(t, []string{"GREETING=hi"}, "/srv", layer(t, true, entry{name: "bin/", typ: '5'}, entry{name: "bin/sh", body: "#!", typ: '0'}))
	if err := os.WriteFile(filepath.Join(dir, "img.tar"), img, 0o644); err != nil {
		t.Fatal(err)
	}

	for i, tenant := range []string{"acme", "acme", "globex"} {
		b, evs := buildNamed(t, bd, tenant+"-app", tenant, "FROM oci-archive:img.tar\nRUN echo \"$GREETING\"\n", dir)
		if st := b.Status(); st.Status != StatusSucceeded {
			t.Fatalf("build %d: %+v %+v", i, st, evs)
		}
		if evs[0].Type != "step" || evs[0].Cached != (i == 1) {
			t.Errorf("build %d: FROM step %+v; cached only on the rebuild", i, evs[0])
		}
		// The RUN step is cached on the rebuild too.
		execs, _ := f.take()
		if ran := len(execs) > 0; ran != (i != 1) || ran && !strings.Contains(execs[len(execs)-1], "GREETING") {
			t.Errorf("build %d: execs %q", i, execs)
		}
	}
	if len(cat.added) != 2 || cat.added[0] == cat.added[1] || !strings.HasPrefix(cat.added[0], CachePrefix) {
		t.Fatalf("imports: %q; want one per tenant, as cache steps", cat.added)
	}
	if got := f.templates[cat.added[0]]; got.Tenant != "acme" || got.Env["GREETING"] != "hi" || got.WorkDir != "/srv" {
		t.Errorf("imported image: %+v", got)
	}

	// The same image as an OCI layout directory of the context.
	tr := tar.NewReader(bytes.NewReader(img))
	for {
		h, err := tr.Next()
		if err != nil {
			break
		}
		dst := filepath.Join(dir, "layout", h.Name)
		os.MkdirAll(filepath.Dir(dst), 0o755)
		b, _ := io.ReadAll(tr)
		if err := os.WriteFile(dst, b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	b, evs := buildNamed(t, bd, "initech-app", "initech", "FROM oci:layout\nRUN echo \"$GREETING\"\n", dir)
	if st := b.Status(); st.Status != StatusSucceeded {
		t.Fatalf("FROM oci:layout: %+v %+v", st, evs)
	}
	if len(cat.added) != 3 || f.templates[cat.added[2]].Env["GREETING"] != "hi" {
		t.Fatalf("FROM oci:layout imported %q", cat.added)
	}

	for _, df := range []string{
		"FROM oci:img.tar\n",
		"FROM oci:../..\n",
		"FROM docker-archive:../../etc/passwd\n",
		"FROM oci-archive:missing.tar\n",
		"FROM docker-archive:\n",
		"FROM " + cat.added[0] + "\n",
	} {
		b, _ := build(t, bd, "acme", df+"RUN true\n", dir)
		if st := b.Status(); st.Status != StatusFailed {
			t.Errorf("%q: %+v; want it refused", df, st)
		}
	}
}

// buildNamed is build of template name.
func buildNamed(t *testing.T, bd *Builder, name, tenant, dockerfile, dir string) (*Build, []Event) {
	t.Helper()
	d, err := ParseDockerfile(strings.NewReader(dockerfile))
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	b, err := bd.Start(&Request{Name: name, Tenant: tenant, Dockerfile: d, Context: dir}, func() { close(done) })
	if err != nil {
		t.Fatal(err)
	}
	<-done
	evs, _, _ := b.Events(0)
	return b, evs
}

// TestContextFrom: the FROM of the named Dockerfile in a context stream.
func TestContextFrom(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "Dockerfile"), []byte("ARG V=1\nFROM web:v2\nRUN true\n"), 0o644)
	os.MkdirAll(filepath.Join(dir, "sub"), 0o755)
	os.WriteFile(filepath.Join(dir, "sub", "Alt"), []byte("FROM python\n"), 0o644)
	os.WriteFile(filepath.Join(dir, "Bad"), []byte("FROM a b\n"), 0o644)
	var b bytes.Buffer
	if err := PackContext(&b, dir, nil, ""); err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string]string{"": "web:v2", "sub/Alt": "python", "./sub/../Dockerfile": "web:v2", "Bad": "", "missing": ""} {
		if got := ContextFrom(bytes.NewReader(b.Bytes()), name); got != want {
			t.Errorf("ContextFrom(%q) = %q, want %q", name, got, want)
		}
	}
}
