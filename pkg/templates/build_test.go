package templates

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

// fakeBackend records what a build asks of the node agent; the real one is
// proven in cmd/tartarus's TestDockerfileBuildEndToEnd.
type fakeBackend struct {
	mu        sync.Mutex
	templates map[string]*tartarus.Image
	owner     map[string]string // sandbox → tenant
	n         int
	execs     []string
	writes    []string
	failOn    string
}

func newFake() *fakeBackend {
	return &fakeBackend{templates: map[string]*tartarus.Image{"python": {Name: "python", Digest: "sha256:py", Env: map[string]string{"PATH": "/usr/bin"}}},
		owner: map[string]string{}}
}

func (f *fakeBackend) Create(_ context.Context, tenant string, req *tartarus.CreateRequest) (*tartarus.Sandbox, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	img, ok := f.templates[req.Template]
	if !ok || !img.VisibleTo(tenant) {
		return nil, tartarus.Errorf(tartarus.ErrNotFound, "template %s", req.Template)
	}
	f.n++
	id := fmt.Sprintf("sb-%d", f.n)
	f.owner[id] = tenant
	return &tartarus.Sandbox{ID: id, Tenant: tenant, Template: req.Template}, nil
}

func (f *fakeBackend) Exec(_ context.Context, id string, req *tartarus.ExecRequest) (*tartarus.ExecResult, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	cmd := strings.Join(req.Cmd, " ")
	if req.Cmd[0] != "mkdir" {
		f.execs = append(f.execs, cmd)
	}
	if f.failOn != "" && strings.Contains(cmd, f.failOn) {
		fmt.Fprintln(req.Stderr, "it broke")
		return &tartarus.ExecResult{ExitCode: 7}, nil
	}
	return &tartarus.ExecResult{}, nil
}

func (f *fakeBackend) WriteFile(_ context.Context, id, path string, _ os.FileMode, r io.Reader) error {
	b, _ := io.ReadAll(r)
	f.mu.Lock()
	defer f.mu.Unlock()
	f.writes = append(f.writes, path+"="+string(b))
	return nil
}

func (f *fakeBackend) Destroy(context.Context, string) (*tartarus.Sandbox, error) { return nil, nil }

func (f *fakeBackend) Template(_ context.Context, name string) (*tartarus.Image, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if img, ok := f.templates[name]; ok {
		return img, nil
	}
	return nil, tartarus.Errorf(tartarus.ErrNotFound, "template %s", name)
}

func (f *fakeBackend) SaveTemplateAs(_ context.Context, id string, spec *tartarus.Image) (*tartarus.Image, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	img := *spec
	img.Tenant, img.Digest = f.owner[id], "sha256:"+spec.Name
	f.templates[spec.Name] = &img
	return &img, nil
}

func (f *fakeBackend) DeleteTemplate(_ context.Context, name string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.templates, name)
	return nil
}

func (f *fakeBackend) TagTemplate(_ context.Context, ref, version string) (*tartarus.Image, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	img, ok := f.templates[version]
	if !ok {
		return nil, tartarus.Errorf(tartarus.ErrNotFound, "template %s", version)
	}
	f.templates[ref] = img
	return img, nil
}

func (f *fakeBackend) take() (execs, writes []string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	execs, writes = f.execs, f.writes
	f.execs, f.writes = nil, nil
	return execs, writes
}

// build runs one build to its end and returns its events.
func build(t *testing.T, bd *Builder, tenant, dockerfile, dir string) (*Build, []Event) {
	t.Helper()
	d, err := ParseDockerfile(strings.NewReader(dockerfile))
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	b, err := bd.Start(&Request{Name: "app", Tenant: tenant, Dockerfile: d, Context: dir}, func() { close(done) })
	if err != nil {
		t.Fatal(err)
	}
	<-done
	evs, over, _ := b.Events(0)
	if !over {
		t.Fatal("the build is not over after done")
	}
	return b, evs
}

func cachedSteps(evs []Event) (cached, ran []int) {
	for _, e := range evs {
		if e.Type == "step" && (strings.HasPrefix(e.Text, "RUN") || strings.HasPrefix(e.Text, "COPY")) {
			if e.Cached {
				cached = append(cached, e.Step)
			} else {
				ran = append(ran, e.Step)
			}
		}
	}
	return cached, ran
}

// TestBuildCache: a rebuild after changing only a copied file reruns from
// that step; another tenant's identical build shares nothing; ENV reaches
// the template; a failing step fails the build with its exit code.
func TestBuildCache(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "app.py"), []byte("v1"), 0o644)
	const df = "FROM python\nARG V=1\nRUN echo install $V\nENV MODE=prod\nCOPY app.py /app/\nRUN echo after\nSTART python3 /app/app.py\n"
	be := newFake()
	bd := NewBuilder(be, nil, nil, nil)

	b, evs := build(t, bd, "acme", df, dir)
	if st := b.Status(); st.Status != StatusSucceeded {
		t.Fatalf("build: %+v", st)
	}
	if cached, ran := cachedSteps(evs); len(cached) != 0 || fmt.Sprint(ran) != "[3 5 6]" {
		t.Errorf("cold build: cached %v ran %v", cached, ran)
	}
	execs, writes := be.take()
	if fmt.Sprint(writes) != "[/app/app.py=v1]" || !strings.Contains(strings.Join(execs, "\n"), "setsid") {
		t.Errorf("cold build wrote %v and ran %q", writes, execs)
	}
	if img := be.templates["app"]; img.Tenant != "acme" || img.Env["MODE"] != "prod" || img.Env["PATH"] != "/usr/bin" || img.Env["V"] != "" {
		t.Errorf("template: %+v", img)
	}

	os.WriteFile(filepath.Join(dir, "app.py"), []byte("v2"), 0o644)
	_, evs = build(t, bd, "acme", df, dir)
	if cached, ran := cachedSteps(evs); fmt.Sprint(cached) != "[3]" || fmt.Sprint(ran) != "[5 6]" {
		t.Errorf("after changing app.py: cached %v ran %v", cached, ran)
	}
	execs, _ = be.take()
	if strings.Contains(strings.Join(execs, "\n"), "install") {
		t.Errorf("the install step ran again: %q", execs)
	}

	_, evs = build(t, bd, "globex", df, dir)
	if cached, _ := cachedSteps(evs); len(cached) != 0 {
		t.Errorf("globex used acme's cache: steps %v", cached)
	}
	if evs[len(evs)-1].Status != StatusFailed || !strings.Contains(evs[len(evs)-1].Text, "template app") {
		t.Errorf("globex built over acme's template: %+v", evs[len(evs)-1])
	}

	be.failOn = "after"
	os.WriteFile(filepath.Join(dir, "app.py"), []byte("v3"), 0o644)
	b, evs = build(t, bd, "acme", df, dir)
	last := evs[len(evs)-1]
	if b.Status().Status != StatusFailed || !strings.Contains(last.Text, "exit code 7") {
		t.Errorf("failing step: %+v", last)
	}
	var out string
	for _, e := range evs {
		out += e.Data
	}
	if !strings.Contains(out, "it broke") {
		t.Errorf("the failing step's output is not in the log: %q", out)
	}
}
