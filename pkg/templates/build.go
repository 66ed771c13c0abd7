package templates

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"os"
	"path"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tartarus-sandbox/tartarus/pkg/clock"
	"github.com/tartarus-sandbox/tartarus/pkg/images"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus/api"
)

// Backend is what a build drives: the node agent (hecatoncheir.Agent).
// Every step runs in a sandbox it creates.
type Backend interface {
	Create(ctx context.Context, tenant string, req *tartarus.CreateRequest) (*tartarus.Sandbox, error)
	Exec(ctx context.Context, id string, req *tartarus.ExecRequest) (*tartarus.ExecResult, error)
	WriteFile(ctx context.Context, id, path string, mode os.FileMode, r io.Reader) error
	Destroy(ctx context.Context, id string) (*tartarus.Sandbox, error)
	Template(ctx context.Context, name string) (*tartarus.Image, error)
	SaveTemplateAs(ctx context.Context, id string, spec *tartarus.Image) (*tartarus.Image, error)
	DeleteTemplate(ctx context.Context, name string) error
	// TagTemplate points ref (NAME or NAME:TAG) at template version.
	TagTemplate(ctx context.Context, ref, version string) (*tartarus.Image, error)
}

// Limits and defaults of one build.
const (
	DefaultBuildTimeout = 30 * time.Minute
	MaxBuildTimeout     = 2 * time.Hour
	DefaultReadyTimeout = 60 * time.Second
	// maxStepOutput and maxBuildOutput bound the output a build keeps of
	// one step and in all (logs stay in memory).
	maxStepOutput  = 256 << 10
	maxBuildOutput = 4 << 20
	// CachePrefix starts the names of the templates that hold cached steps.
	CachePrefix = "cache-"
)

// Request is one build.
type Request struct {
	// Name is the template to make; Tenant owns it.
	Name   string
	Tenant string
	// Dockerfile is the parsed Dockerfile; Context the unpacked build
	// context directory (read only); Ignore its .dockerignore (nil: none).
	Dockerfile *Dockerfile
	Context    string
	Ignore     *Ignore
	// Args are --build-arg values.
	Args map[string]string
	// MemoryMB and CPUs shape the build sandbox, and the template's
	// snapshot (0: the defaults).
	MemoryMB, CPUs int
	// Network is the build sandboxes' network (nil: none). The START
	// process and the final snapshot run without it.
	Network *tartarus.NetworkSpec
	// Timeout bounds the whole build (0: DefaultBuildTimeout);
	// ReadyTimeout bounds the wait for READY (0: DefaultReadyTimeout).
	Timeout      time.Duration
	ReadyTimeout time.Duration
}

// Validate reports every problem of r at once.
func (r *Request) Validate() error {
	errs := r.paramProblems()
	if r.Dockerfile == nil || len(r.Dockerfile.Instructions) == 0 {
		errs = append(errs, errors.New("no Dockerfile"))
	}
	if err := errors.Join(errs...); err != nil {
		return tartarus.Errorf(tartarus.ErrInvalid, "build: %v", err)
	}
	return nil
}

// paramProblems lists the problems of everything but the Dockerfile and
// the context, which can be checked before they arrive.
func (r *Request) paramProblems() []error {
	var errs []error
	if name, _, err := images.ParseTemplateRef(r.Name); err != nil {
		errs = append(errs, err)
	} else if strings.HasPrefix(name, CachePrefix) {
		errs = append(errs, fmt.Errorf("template name %q: not starting with %q", r.Name, CachePrefix))
	}
	if !tartarus.ValidName(r.Tenant) {
		errs = append(errs, fmt.Errorf("tenant %q", r.Tenant))
	}
	if r.Timeout < 0 || r.Timeout > MaxBuildTimeout {
		errs = append(errs, fmt.Errorf("timeout %s: at most %s", r.Timeout, MaxBuildTimeout))
	}
	if r.Network != nil {
		if err := r.Network.Check(); err != nil {
			errs = append(errs, fmt.Errorf("network: %w", err))
		}
	}
	return errs
}

// Event is one line of a build's log (NDJSON on the API).
type Event = api.TemplateBuildEvent

// Build states.
const (
	StatusRunning   = api.TemplateBuildRunning
	StatusSucceeded = api.TemplateBuildSucceeded
	StatusFailed    = api.TemplateBuildFailed
)

// Build is one build's state and log. Its methods are safe for concurrent
// use.
type Build struct {
	ID     string `json:"id"`
	Name   string `json:"name"`
	Tenant string `json:"tenant"`

	mu      sync.Mutex
	status  string
	errText string
	events  []Event
	changed chan struct{} // closed and replaced on every event
}

// Status returns the build's state.
func (b *Build) Status() api.TemplateBuild {
	b.mu.Lock()
	defer b.mu.Unlock()
	return api.TemplateBuild{ID: b.ID, Name: b.Name, Status: b.status, Error: b.errText}
}

var _ api.TemplateBuildLog = (*Build)(nil)

// Events returns the events from index from on, whether the build is
// over, and a channel closed at the next event.
func (b *Build) Events(from int) ([]Event, bool, <-chan struct{}) {
	b.mu.Lock()
	defer b.mu.Unlock()
	var out []Event
	if from < len(b.events) {
		out = slices.Clone(b.events[from:])
	}
	return out, b.status != StatusRunning, b.changed
}

func (b *Build) add(e Event) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.events = append(b.events, e)
	if e.Type == "done" {
		b.status = e.Status
	}
	close(b.changed)
	b.changed = make(chan struct{})
}

// Builder runs builds through a Backend and keeps their logs in memory;
// it imports images into cat.
type Builder struct {
	be    Backend
	cat   Installer
	log   *slog.Logger
	clock clock.Clock

	mu     sync.Mutex
	builds map[string]*Build
	// running serialises builds of one template name.
	running map[string]bool
	// registries are the registries pulls may reach (none by default).
	registries RegistryPolicy
}

// SetRegistryPolicy sets which registries imports and FROM may pull from;
// call it before the builder is used.
func (bd *Builder) SetRegistryPolicy(p RegistryPolicy) { bd.registries = p }

// NewBuilder returns a Builder over be, importing images into cat (nil:
// imports are refused); log and clk may be nil.
func NewBuilder(be Backend, cat Installer, log *slog.Logger, clk clock.Clock) *Builder {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if clk == nil {
		clk = clock.System{}
	}
	return &Builder{be: be, cat: cat, log: log.With("component", "templates"), clock: clk, builds: map[string]*Build{}, running: map[string]bool{}}
}

// maxKeptBuilds bounds the finished builds whose logs stay in memory.
const maxKeptBuilds = 256

// Start checks req and starts the build in the background; the Build
// reports its progress. A second build of the same template while one runs
// is refused (ErrFailedPrecondition). The request's
// Context directory must stay until the build is over; done, when not
// nil, is called then.
func (bd *Builder) Start(req *Request, done func()) (*Build, error) {
	if err := req.Validate(); err != nil {
		return nil, err
	}
	bd.mu.Lock()
	defer bd.mu.Unlock()
	key := req.Tenant + "/" + req.Name
	if bd.running[key] {
		return nil, tartarus.Errorf(tartarus.ErrFailedPrecondition, "template %s is being built already", req.Name)
	}
	bd.running[key] = true
	b := &Build{ID: tartarus.NewID("bld-"), Name: req.Name, Tenant: req.Tenant, status: StatusRunning, changed: make(chan struct{})}
	if len(bd.builds) >= maxKeptBuilds {
		for id, old := range bd.builds {
			if old.Status().Status != StatusRunning {
				delete(bd.builds, id)
				break
			}
		}
	}
	bd.builds[b.ID] = b
	go func() {
		bd.run(req, b)
		bd.mu.Lock()
		delete(bd.running, key)
		bd.mu.Unlock()
		if done != nil {
			done()
		}
	}()
	return b, nil
}

// BuildLog is Get as the API wants it.
func (bd *Builder) BuildLog(tenant, name, id string) (api.TemplateBuildLog, error) {
	return bd.Get(tenant, name, id)
}

// Get returns build id of tenant's template name (ErrNotFound otherwise).
func (bd *Builder) Get(tenant, name, id string) (*Build, error) {
	bd.mu.Lock()
	defer bd.mu.Unlock()
	b, ok := bd.builds[id]
	if !ok || b.Tenant != tenant || b.Name != name {
		return nil, tartarus.Errorf(tartarus.ErrNotFound, "build %s of template %s", id, name)
	}
	return b, nil
}

// run does one build and records its end.
func (bd *Builder) run(req *Request, b *Build) {
	start := bd.clock.Now()
	timeout := req.Timeout
	if timeout == 0 {
		timeout = DefaultBuildTimeout
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	r := &run{bd: bd, req: req, b: b, start: start}
	img, err := r.do(ctx)
	if r.sandbox != "" {
		r.dropSandbox()
	}
	end := Event{Time: bd.clock.Now().UTC(), Type: "done", Status: StatusSucceeded, DurationMS: bd.clock.Now().Sub(start).Milliseconds()}
	if err != nil {
		if errors.Is(ctx.Err(), context.DeadlineExceeded) {
			err = fmt.Errorf("%w (the build's time limit is %s)", err, timeout)
		}
		end.Status, end.Text = StatusFailed, err.Error()
		b.mu.Lock()
		b.errText = err.Error()
		b.mu.Unlock()
		bd.log.Warn("template build failed", "template", req.Name, "tenant", req.Tenant, "build", b.ID, "err", err)
	} else {
		// The tag as asked; the version it now points at in the text.
		end.Template, end.Text = req.Name, "version "+img.Name
		bd.log.Info("template built", "template", req.Name, "tenant", req.Tenant, "build", b.ID, "took", bd.clock.Now().Sub(start))
	}
	b.add(end)
}

// run is the state of one build as it goes.
type run struct {
	bd    *Builder
	req   *Request
	b     *Build
	start time.Time

	vars    map[string]string // ARG and ENV values, for expansion
	args    map[string]string // ARG values: RUN sees them, the template does not keep them
	env     map[string]string
	workdir string
	user    string
	// layer is the template the next sandbox is created from: FROM's, or
	// the last cached step's.
	layer string
	// sandbox is the build sandbox of layer with the steps since applied
	// ("" until a step needs one); netted says it has the build network.
	sandbox string
	netted  bool
	// output counts the step output kept in the log (stdout and stderr
	// may be written from two goroutines).
	output atomic.Int64
}

func (r *run) event(e Event) {
	e.Time = r.bd.clock.Now().UTC()
	r.b.add(e)
}

// do runs the steps and saves the template.
func (r *run) do(ctx context.Context) (*tartarus.Image, error) {
	ins := r.req.Dockerfile.Instructions
	// ARGs before FROM (moved after it by the parser) may name the template.
	r.vars, r.args = map[string]string{}, map[string]string{}
	for _, in := range ins[1:] {
		if in.Cmd != "ARG" {
			break
		}
		r.arg(in)
	}
	if old, err := r.bd.be.Template(ctx, r.req.Name); err == nil && old.Tenant != r.req.Tenant {
		return nil, tartarus.Errorf(tartarus.ErrAlreadyExists, "template %s", r.req.Name)
	}
	from := expand(ins[0].Args[0], r.vars)
	layer, fromCached := from, false
	if file, ok := imageArchive(from); ok {
		// An image archive in the context, imported as a cache step.
		var err error
		if layer, fromCached, err = r.fromImage(ctx, from, file); err != nil {
			return nil, fmt.Errorf("FROM %s: %w", from, err)
		}
	} else if ref, ok := registryImage(from); ok {
		// An image of a registry, pulled and imported as a cache step.
		var err error
		if layer, fromCached, err = r.fromRegistry(ctx, from, ref); err != nil {
			return nil, fmt.Errorf("FROM %s: %w", from, err)
		}
	} else if strings.HasPrefix(from, CachePrefix) {
		return nil, tartarus.Errorf(tartarus.ErrNotFound, "FROM %s: template %s", from, from)
	}
	base, err := r.bd.be.Template(ctx, layer)
	if err != nil {
		return nil, fmt.Errorf("FROM %s: %w", from, err)
	}
	if !base.VisibleTo(r.req.Tenant) {
		return nil, tartarus.Errorf(tartarus.ErrNotFound, "FROM %s: template %s", from, from)
	}
	r.env = maps.Clone(base.Env)
	if r.env == nil {
		r.env = map[string]string{}
	}
	maps.Copy(r.vars, r.env)
	r.workdir, r.user, r.layer = base.WorkDir, base.User, layer
	if r.workdir == "" {
		r.workdir = "/"
	}
	// The cache key chain starts from the tenant (caches are not shared
	// between tenants) and the base template's exact build.
	digest := chain("", r.req.Tenant, base.Digest, fmt.Sprint(r.req.MemoryMB, r.req.CPUs, r.req.Network != nil))
	total := len(ins)
	var start, ready []string
	r.event(Event{Type: "step", Step: 1, Total: total, Text: ins[0].Text, Cached: fromCached})
	for i, in := range ins[1:] {
		step := i + 2
		switch in.Cmd {
		case "ARG":
			r.arg(in)
			digest = chain(digest, in.Text, r.vars[in.Args[0]])
			r.event(Event{Type: "step", Step: step, Total: total, Text: in.Text})
		case "ENV":
			var kv []string
			for j := 0; j+1 < len(in.Args); j += 2 {
				v := expand(in.Args[j+1], r.vars)
				r.env[in.Args[j]], r.vars[in.Args[j]] = v, v
				kv = append(kv, in.Args[j]+"="+v)
			}
			digest = chain(digest, "ENV", strings.Join(kv, "\x00"))
			r.event(Event{Type: "step", Step: step, Total: total, Text: in.Text})
		case "WORKDIR":
			wd := expand(in.Args[0], r.vars)
			if !path.IsAbs(wd) {
				wd = path.Join(r.workdir, wd)
			}
			r.workdir = path.Clean(wd)
			digest = chain(digest, "WORKDIR", r.workdir)
			r.event(Event{Type: "step", Step: step, Total: total, Text: in.Text})
		case "USER":
			r.user = expand(in.Args[0], r.vars)
			digest = chain(digest, "USER", r.user)
			r.event(Event{Type: "step", Step: step, Total: total, Text: in.Text})
		case "START":
			start = in.argv(r.vars)
			r.event(Event{Type: "step", Step: step, Total: total, Text: in.Text})
		case "READY":
			ready = in.argv(r.vars)
			r.event(Event{Type: "step", Step: step, Total: total, Text: in.Text})
		case "RUN", "COPY", "ADD":
			var files []copyFile
			key := in.Text
			if in.Cmd != "RUN" {
				srcs := make([]string, len(in.Args)-1)
				for j, s := range in.Args[:len(in.Args)-1] {
					srcs[j] = expand(s, r.vars)
				}
				var sum string
				files, sum, err = resolveCopy(r.req.Context, r.req.Ignore, srcs, expand(in.Args[len(in.Args)-1], r.vars), r.workdir)
				if err != nil {
					return nil, fmt.Errorf("step %d (%s): %w", step, in.Text, err)
				}
				key += "\x00" + sum
			}
			digest = chain(digest, key, envKey(r.env), r.workdir, r.user)
			cache := CachePrefix + strings.TrimPrefix(digest, "sha256:")[:32]
			if img, err := r.bd.be.Template(ctx, cache); err == nil && img.Tenant == r.req.Tenant {
				r.event(Event{Type: "step", Step: step, Total: total, Text: in.Text, Cached: true})
				if r.sandbox != "" {
					r.dropSandbox()
				}
				r.layer = cache
				continue
			}
			r.event(Event{Type: "step", Step: step, Total: total, Text: in.Text})
			if err := r.ensureSandbox(ctx, r.req.Network); err != nil {
				return nil, fmt.Errorf("step %d: %w", step, err)
			}
			switch in.Cmd {
			case "RUN":
				err = r.exec(ctx, step, r.shell(in.argv(r.vars)))
			default:
				err = r.copy(ctx, step, in.Cmd == "ADD", files)
			}
			if err != nil {
				return nil, err
			}
			if _, err := r.bd.be.SaveTemplateAs(ctx, r.sandbox, &tartarus.Image{Name: cache,
				Description: fmt.Sprintf("build cache of %s, step %d: %.80s", r.req.Name, step, in.Text),
				Env:         r.env, WorkDir: r.workdir, User: r.user}); err != nil {
				return nil, fmt.Errorf("step %d: keep the step in the cache: %w", step, err)
			}
			r.layer = cache
		}
	}

	// The template's snapshot is taken without the build's network: a
	// sandbox with none (the default) restores it.
	if r.sandbox != "" && r.netted {
		r.dropSandbox()
	}
	if err := r.ensureSandbox(ctx, nil); err != nil {
		return nil, fmt.Errorf("final sandbox: %w", err)
	}
	if start != nil {
		if err := r.startProcess(ctx, start, ready); err != nil {
			return nil, err
		}
	}
	// The build is saved as a new version, and only then does the tag
	// move to it: a build that fails leaves the tag where it was. The
	// version the tag leaves is removed once no sandbox uses it.
	if old, err := r.bd.be.Template(ctx, r.req.Name); err == nil && old.Tenant != r.req.Tenant {
		return nil, tartarus.Errorf(tartarus.ErrAlreadyExists, "template %s", r.req.Name)
	}
	name, _, _ := images.ParseTemplateRef(r.req.Name) // checked by Validate
	img, err := r.bd.be.SaveTemplateAs(ctx, r.sandbox, &tartarus.Image{Name: images.VersionName(name, r.bd.clock.Now()),
		Description: fmt.Sprintf("%s built from a Dockerfile (FROM %s)", r.req.Name, from),
		Env:         r.env, WorkDir: r.workdir, User: r.user, BuildMS: r.bd.clock.Now().Sub(r.start).Milliseconds()})
	if err != nil {
		return nil, fmt.Errorf("save template %s: %w", r.req.Name, err)
	}
	tagged, err := r.bd.be.TagTemplate(ctx, r.req.Name, img.Name)
	if err != nil {
		if derr := r.bd.be.DeleteTemplate(ctx, img.Name); derr != nil {
			r.bd.log.Warn("remove an untagged template version", "template", img.Name, "err", derr)
		}
		return nil, fmt.Errorf("tag template %s: %w", r.req.Name, err)
	}
	return tagged, nil
}

// arg applies an ARG: the --build-arg value, else the default.
func (r *run) arg(in Instruction) {
	name := in.Args[0]
	v, ok := r.req.Args[name]
	if !ok {
		v = expand(in.Args[1], r.vars)
	}
	r.vars[name] = v
	r.args[name] = v
}

// argv is the command of a RUN, START or READY.
func (in Instruction) argv(vars map[string]string) []string {
	if in.Exec {
		return slices.Clone(in.Args)
	}
	return []string{"/bin/sh", "-c", in.Args[0]}
}

// shell runs argv as the build's USER, when there is one.
func (r *run) shell(argv []string) []string {
	if r.user == "" || r.user == "root" || r.user == "0" {
		return argv
	}
	return []string{"su", "-s", "/bin/sh", r.user, "-c", shellQuote(argv)}
}

func shellQuote(argv []string) string {
	q := make([]string, len(argv))
	for i, a := range argv {
		q[i] = "'" + strings.ReplaceAll(a, "'", `'\''`) + "'"
	}
	return strings.Join(q, " ")
}

// ensureSandbox creates the build sandbox from the current layer if there
// is none.
func (r *run) ensureSandbox(ctx context.Context, network *tartarus.NetworkSpec) error {
	if r.sandbox != "" {
		return nil
	}
	sb, err := r.bd.be.Create(ctx, r.req.Tenant, &tartarus.CreateRequest{Template: r.layer, MemoryMB: r.req.MemoryMB, CPUs: r.req.CPUs,
		TimeoutS: int(MaxBuildTimeout / time.Second), Network: network,
		Metadata: map[string]string{"purpose": "template build", "template": r.req.Name, "build": r.b.ID}})
	if err != nil {
		return fmt.Errorf("create the build sandbox from %s: %w", r.layer, err)
	}
	r.sandbox, r.netted = sb.ID, network != nil
	return nil
}

func (r *run) dropSandbox() {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, err := r.bd.be.Destroy(ctx, r.sandbox); err != nil {
		r.bd.log.Warn("destroy a build sandbox", "sandbox", r.sandbox, "err", err)
	}
	r.sandbox = ""
}

// streamWriter turns a step's output into events, keeping at most
// maxStepOutput bytes of it.
type streamWriter struct {
	r      *run
	step   int
	stream string
	n      int
}

func (w *streamWriter) Write(p []byte) (int, error) {
	if total := int(w.r.output.Load()); w.n < maxStepOutput && total < maxBuildOutput {
		keep := p[:min(len(p), maxStepOutput-w.n, maxBuildOutput-total)]
		w.n += len(keep)
		w.r.output.Add(int64(len(keep)))
		w.r.event(Event{Type: "output", Step: w.step, Stream: w.stream, Data: string(bytes.ToValidUTF8(keep, []byte("?")))})
	}
	return len(p), nil
}

// buildUser runs the build's own commands as root whatever the FROM
// template's USER (which sandbox execs otherwise default to): the build
// applies USER itself, through su.
const buildUser = "root"

// exec runs one command of a step in the build sandbox with the build's
// env and workdir; a non-zero exit fails the step with its code.
func (r *run) exec(ctx context.Context, step int, argv []string) error {
	if err := r.mkdirWorkdir(ctx); err != nil {
		return err
	}
	env := maps.Clone(r.args)
	maps.Copy(env, r.env)
	res, err := r.bd.be.Exec(ctx, r.sandbox, &tartarus.ExecRequest{User: buildUser, Cmd: argv, Env: env, Cwd: r.workdir,
		Stdout: &streamWriter{r: r, step: step, stream: "stdout"}, Stderr: &streamWriter{r: r, step: step, stream: "stderr"}})
	if err != nil {
		return fmt.Errorf("step %d: %w", step, err)
	}
	if res.ExitCode != 0 {
		code := res.ExitCode
		r.event(Event{Type: "error", Step: step, ExitCode: &code, Text: fmt.Sprintf("step %d failed with exit code %d", step, code)})
		return tartarus.Errorf(tartarus.ErrFailedPrecondition, "step %d: %s: exit code %d", step, strings.Join(argv, " "), code)
	}
	return nil
}

func (r *run) mkdirWorkdir(ctx context.Context) error {
	if r.workdir == "/" {
		return nil
	}
	res, err := r.bd.be.Exec(ctx, r.sandbox, &tartarus.ExecRequest{User: buildUser, Cmd: []string{"mkdir", "-p", r.workdir}})
	if err != nil {
		return err
	}
	if res.ExitCode != 0 {
		return fmt.Errorf("WORKDIR %s: mkdir exit code %d", r.workdir, res.ExitCode)
	}
	return nil
}

// copy puts files into the build sandbox through the files API (ADD of a
// tar unpacks it inside the sandbox, never on the host).
func (r *run) copy(ctx context.Context, step int, add bool, files []copyFile) error {
	dirs := map[string]bool{}
	for _, f := range files {
		dirs[path.Dir(f.dst)] = true
	}
	mk := []string{"mkdir", "-p"}
	for d := range dirs {
		mk = append(mk, d)
	}
	sort.Strings(mk[2:])
	if err := r.exec(ctx, step, mk); err != nil {
		return err
	}
	for i, f := range files {
		dst := f.dst
		isTar := add && isTarball(f.src)
		if isTar {
			dst = fmt.Sprintf("/tmp/.tartarus-add-%d-%d", step, i)
		}
		file, err := os.Open(f.src)
		if err != nil {
			return err
		}
		err = r.bd.be.WriteFile(ctx, r.sandbox, dst, f.mode, file)
		file.Close()
		if err != nil {
			return fmt.Errorf("step %d: copy %s: %w", step, f.dst, err)
		}
		if isTar {
			// Unpacked by the guest's tar, inside the sandbox.
			if err := r.exec(ctx, step, []string{"/bin/sh", "-c", `tar -xf "$1" -C "$2" && rm -f "$1"`, "add", dst, path.Dir(f.dst)}); err != nil {
				return err
			}
		}
	}
	r.event(Event{Type: "output", Step: step, Stream: "stdout", Data: fmt.Sprintf("copied %d file(s)\n", len(files))})
	return nil
}

func isTarball(name string) bool {
	for _, ext := range []string{".tar", ".tar.gz", ".tgz", ".tar.xz", ".tar.bz2"} {
		if strings.HasSuffix(name, ext) {
			return true
		}
	}
	return false
}

// startProcess starts START in the background and polls READY until it
// succeeds.
func (r *run) startProcess(ctx context.Context, start, ready []string) error {
	if err := r.mkdirWorkdir(ctx); err != nil {
		return err
	}
	launch := "setsid " + shellQuote(r.shell(start)) + " </dev/null >/tmp/tartarus-start.log 2>&1 &"
	res, err := r.bd.be.Exec(ctx, r.sandbox, &tartarus.ExecRequest{User: buildUser, Cmd: []string{"/bin/sh", "-c", launch}, Env: r.env, Cwd: r.workdir})
	if err != nil {
		return fmt.Errorf("START: %w", err)
	}
	if res.ExitCode != 0 {
		return fmt.Errorf("START: exit code %d", res.ExitCode)
	}
	if ready == nil {
		return nil
	}
	limit := r.req.ReadyTimeout
	if limit == 0 {
		limit = DefaultReadyTimeout
	}
	deadline := r.bd.clock.Now().Add(limit)
	for {
		var out bytes.Buffer
		res, err := r.bd.be.Exec(ctx, r.sandbox, &tartarus.ExecRequest{User: buildUser, Cmd: r.shell(ready), Env: r.env, Cwd: r.workdir, Stdout: &out, Stderr: &out, Timeout: 10 * time.Second})
		if err != nil {
			return fmt.Errorf("READY: %w", err)
		}
		if res.ExitCode == 0 {
			return nil
		}
		if r.bd.clock.Now().After(deadline) {
			var log bytes.Buffer
			_, _ = r.bd.be.Exec(ctx, r.sandbox, &tartarus.ExecRequest{User: buildUser, Cmd: []string{"tail", "-c", "4096", "/tmp/tartarus-start.log"}, Stdout: &log})
			return tartarus.Errorf(tartarus.ErrFailedPrecondition, "READY did not succeed within %s (last exit code %d: %s); START's output: %s",
				limit, res.ExitCode, strings.TrimSpace(out.String()), strings.TrimSpace(log.String()))
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-r.bd.clock.After(200 * time.Millisecond):
		}
	}
}

// chain hashes the previous digest with the parts of one step.
func chain(prev string, parts ...string) string {
	h := sha256.New()
	fmt.Fprintf(h, "%s\n", prev)
	for _, p := range parts {
		fmt.Fprintf(h, "%d:%s\n", len(p), p)
	}
	return "sha256:" + hex.EncodeToString(h.Sum(nil))
}

// envKey is env in a fixed order.
func envKey(env map[string]string) string {
	keys := slices.Sorted(maps.Keys(env))
	var b strings.Builder
	for _, k := range keys {
		fmt.Fprintf(&b, "%s=%s\x00", k, env[k])
	}
	return b.String()
}

// Import makes template name of tenant from an image tarball (see
// ImportImage), booting with the base template's kernel, as a new version
// of name (NAME or NAME:TAG) that the tag then points at. Another tenant's
// name is refused (ErrAlreadyExists).
func (bd *Builder) Import(ctx context.Context, tenant, name, source string, r io.Reader) (*tartarus.Image, error) {
	if bd.cat == nil {
		return nil, tartarus.Errorf(tartarus.ErrNotImplemented, "this server imports no images")
	}
	plain, _, err := images.ParseTemplateRef(name)
	if err != nil {
		return nil, err
	}
	if strings.HasPrefix(plain, CachePrefix) {
		return nil, tartarus.Errorf(tartarus.ErrInvalid, "template name %q: not starting with %q", name, CachePrefix)
	}
	if old, err := bd.be.Template(ctx, name); err == nil && old.Tenant != tenant {
		return nil, tartarus.Errorf(tartarus.ErrAlreadyExists, "template %s", name)
	}
	base, err := bd.be.Template(ctx, "base")
	if err != nil {
		return nil, fmt.Errorf("import %s: the base template's kernel: %w", name, err)
	}
	start := bd.clock.Now()
	// A new version; the tag moves to it once it is installed.
	img, err := ImportImage(ctx, bd.cat, base, tenant, images.VersionName(plain, start), source, r)
	if err != nil {
		return nil, err
	}
	tagged, err := bd.be.TagTemplate(ctx, name, img.Name)
	if err != nil {
		if derr := bd.be.DeleteTemplate(ctx, img.Name); derr != nil {
			bd.log.Warn("remove an untagged template version", "template", img.Name, "err", derr)
		}
		return nil, fmt.Errorf("import %s: %w", name, err)
	}
	bd.log.Info("image imported", "template", name, "version", img.Name, "tenant", tenant, "image", source, "took", bd.clock.Now().Sub(start))
	return tagged, nil
}

// ImportFromRegistry makes template name of tenant, as Import does, from
// the image ref of a registry this server reaches (PullImage): plain HTTP
// only to a loopback registry or with insecure.
func (bd *Builder) ImportFromRegistry(ctx context.Context, tenant, name, ref string, insecure bool) (*tartarus.Image, error) {
	r, err := ParseImageRef(ref)
	if err != nil {
		return nil, err
	}
	if err := bd.registries.Check(r, insecure); err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	pr, pw := io.Pipe()
	done := make(chan struct{})
	go func() {
		defer close(done)
		pw.CloseWithError(PullImage(ctx, r, PullOptions{Insecure: insecure, Credentials: DockerConfigCredentials()}, pw))
	}()
	img, err := bd.Import(ctx, tenant, name, r.String(), pr)
	// An import refused part way stops the pull.
	pr.CloseWithError(errors.New("import stopped"))
	cancel()
	<-done
	return img, err
}
