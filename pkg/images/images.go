// Package images builds and caches the templates that sandboxes boot from:
// a Debian kernel, an initramfs holding the guest agent and the kernel
// modules it needs, and a read-only ext4 root filesystem per template.
//
// Everything is built by this package from Debian's own packages (apt-get
// download, dpkg-deb, debootstrap, mke2fs) and rebuilt only when an input
// changes: each template records a digest of its inputs in manifest.json.
//
// Layout under Options.DataDir:
//
//	images/kernel/<package>_<version>/   vmlinux, modules/*.ko, modules/load, kernel.json
//	images/templates/<name>/             vmlinux, initrd.img, rootfs.ext4, manifest.json
package images

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/tartarus-sandbox/tartarus/pkg/clock"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

// ErrNotFound is returned for a template that is unknown or not built yet.
var ErrNotFound = fmt.Errorf("images: template %w", tartarus.ErrNotFound)

// Options configures a Catalog.
type Options struct {
	// DataDir holds images/ (required).
	DataDir string
	// GuestAgent is the path of the static tartarus-guest binary. Empty
	// means "tartarus-guest next to this executable".
	GuestAgent string
	Log        *slog.Logger
	// EtcApt is apt's configuration directory, read to find the Debian
	// mirror; empty means /etc/apt.
	EtcApt string
	// Clock stamps built_at; nil means clock.System.
	Clock clock.Clock
}

// Progress reports one step of a template build.
type Progress struct {
	Template string
	Step     string
	Done     int
	Total    int
	// Cached is true when the template was already built from the same inputs.
	Cached bool
}

// recipe is how one template is made.
type recipe struct {
	name        string
	description string
	// version changes whenever the recipe's code changes what it produces.
	version string
	// packages are the Debian packages in the image besides the kernel.
	packages []string
}

// recipeVersion covers the kernel, module and initramfs steps shared by all
// templates; bump it when they change what they produce.
const recipeVersion = "images/2"

// rootfsVersion covers the root filesystem steps (skeleton, ext4 image).
const rootfsVersion = "rootfs/1"

var recipes = []recipe{
	{name: "base", description: "busybox (Debian busybox-static)", version: "base/1", packages: []string{"busybox-static"}},
	{name: "python", description: "Debian " + debianSuite + " minbase with python3", version: "python/1", packages: []string{"python3"}},
}

// Catalog knows the template recipes and the templates built from them.
type Catalog struct {
	dir    string
	agent  string
	etcApt string
	log    *slog.Logger
	clock  clock.Clock
}

// Open returns a catalog over opts.DataDir, creating its directory.
func Open(opts Options) (*Catalog, error) {
	if opts.DataDir == "" {
		return nil, tartarus.Errorf(tartarus.ErrInvalid, "images: no data directory")
	}
	dir, err := filepath.Abs(filepath.Join(opts.DataDir, "images"))
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(filepath.Join(dir, "templates"), 0o755); err != nil {
		return nil, fmt.Errorf("images: %w", err)
	}
	c := &Catalog{dir: dir, agent: opts.GuestAgent, etcApt: opts.EtcApt, log: opts.Log, clock: opts.Clock}
	if c.log == nil {
		c.log = slog.New(slog.DiscardHandler)
	}
	c.log = c.log.With("component", "images")
	if c.etcApt == "" {
		c.etcApt = "/etc/apt"
	}
	if c.clock == nil {
		c.clock = clock.System{}
	}
	return c, nil
}

// Names lists the known recipes.
func (c *Catalog) Names() []string {
	names := make([]string, len(recipes))
	for i, r := range recipes {
		names[i] = r.name
	}
	return names
}

// manifest is a built template's record, stored as manifest.json.
type manifest struct {
	Name        string `json:"name"`
	Description string `json:"description"`
	Digest      string `json:"digest"`
	// RootFSDigest covers only what rootfs.ext4 is made from.
	RootFSDigest string            `json:"rootfs_digest"`
	Inputs       map[string]string `json:"inputs"`
	BuiltAt      time.Time         `json:"built_at"`
	// Tenant and Public: see tartarus.Image (a built template has neither).
	Tenant string `json:"tenant,omitempty"`
	Public bool   `json:"public,omitempty"`
	// Defaults of a tenant's built template: see tartarus.Image.
	Env     map[string]string `json:"env,omitempty"`
	WorkDir string            `json:"workdir,omitempty"`
	User    string            `json:"user,omitempty"`
	BuildMS int64             `json:"build_ms,omitempty"`
}

func (c *Catalog) templateDir(name string) string { return filepath.Join(c.dir, "templates", name) }

// List returns the built templates, by name.
func (c *Catalog) List(ctx context.Context) ([]*tartarus.Image, error) {
	entries, err := os.ReadDir(filepath.Join(c.dir, "templates"))
	if os.IsNotExist(err) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("images: list templates: %w", err)
	}
	tags, err := c.tags()
	if err != nil {
		return nil, err
	}
	var out []*tartarus.Image
	for _, e := range entries {
		// Builds in progress live in dot-directories.
		if !e.IsDir() || !validTemplateName(e.Name()) {
			continue
		}
		img, err := c.getDir(e.Name())
		if errors.Is(err, tartarus.ErrNotFound) {
			continue
		}
		if err != nil {
			return nil, err
		}
		img.Tags = tags[e.Name()]
		sort.Strings(img.Tags)
		out = append(out, img)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

func (c *Catalog) Get(ctx context.Context, name string) (*tartarus.Image, error) {
	// Besides the recipes, a template may have been made elsewhere (by
	// `tartarus migrate`): any directory with a manifest and the three
	// files counts. A tag (NAME:TAG, or a bare NAME tagged latest) names
	// the version it points at.
	name, err := c.resolve(name)
	if err != nil {
		return nil, err
	}
	return c.getDir(name)
}

// getDir returns the template in directory name, tags aside.
func (c *Catalog) getDir(name string) (*tartarus.Image, error) {
	if !validTemplateName(name) {
		return nil, fmt.Errorf("%q: %w", name, ErrNotFound)
	}
	dir := c.templateDir(name)
	m, err := readManifest(dir)
	if os.IsNotExist(err) {
		if _, ok := findRecipe(name); ok {
			return nil, fmt.Errorf("%q not built (run tartarus template build %s): %w", name, name, ErrNotFound)
		}
		return nil, fmt.Errorf("%q: %w", name, ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("images: template %s: %w", name, err)
	}
	img := &tartarus.Image{
		Name:        m.Name,
		Kernel:      filepath.Join(dir, "vmlinux"),
		Initrd:      filepath.Join(dir, "initrd.img"),
		RootFS:      filepath.Join(dir, "rootfs.ext4"),
		Digest:      m.Digest,
		Description: m.Description,
		BuiltAt:     m.BuiltAt,
		Tenant:      m.Tenant,
		Public:      m.Public,
		Env:         m.Env,
		WorkDir:     m.WorkDir,
		User:        m.User,
		BuildMS:     m.BuildMS,
	}
	for _, f := range []string{img.Kernel, img.Initrd, img.RootFS} {
		st, err := os.Stat(f)
		if err != nil {
			return nil, fmt.Errorf("images: template %s is incomplete: %w", name, err)
		}
		// Disk use, not apparent size: the root filesystem is sparse.
		if sys, ok := st.Sys().(*syscall.Stat_t); ok {
			img.SizeBytes += sys.Blocks * 512
		} else {
			img.SizeBytes += st.Size()
		}
	}
	return img, nil
}

func readManifest(dir string) (*manifest, error) {
	b, err := os.ReadFile(filepath.Join(dir, "manifest.json"))
	if err != nil {
		return nil, err
	}
	m := &manifest{}
	if err := json.Unmarshal(b, m); err != nil {
		return nil, fmt.Errorf("manifest.json: %w", err)
	}
	return m, nil
}

// validTemplateName reports whether name can be a template's directory: a
// valid name that is not hidden (builds in progress are dot-directories).
func validTemplateName(name string) bool {
	return tartarus.ValidName(name) && !strings.HasPrefix(name, ".")
}

func findRecipe(name string) (recipe, bool) {
	for _, r := range recipes {
		if r.name == name {
			return r, true
		}
	}
	return recipe{}, false
}

// guestAgent returns the guest agent's path.
func (c *Catalog) guestAgent() (string, error) {
	if c.agent != "" {
		if _, err := os.Stat(c.agent); err != nil {
			return "", tartarus.Errorf(tartarus.ErrFailedPrecondition, "guest agent %s: %v", c.agent, err)
		}
		return c.agent, nil
	}
	exe, err := os.Executable()
	if err != nil {
		return "", fmt.Errorf("guest agent: %w", err)
	}
	p := filepath.Join(filepath.Dir(exe), "tartarus-guest")
	if _, err := os.Stat(p); err != nil {
		return "", tartarus.Errorf(tartarus.ErrFailedPrecondition,
			"guest agent not found at %s (build it with `make build`, or pass its path)", p)
	}
	return p, nil
}

// Build builds the named templates (all known ones when names is empty),
// skipping each whose inputs have not changed. progress, when not nil, is
// called as each step starts and when a template is done.
func (c *Catalog) Build(ctx context.Context, names []string, progress func(Progress)) error {
	if len(names) == 0 {
		names = c.Names()
	}
	var rs []recipe
	for _, n := range names {
		r, ok := findRecipe(n)
		if !ok {
			return tartarus.Errorf(tartarus.ErrNotFound, "template %q (known: %s)", n, strings.Join(c.Names(), ", "))
		}
		rs = append(rs, r)
	}
	if progress == nil {
		progress = func(Progress) {}
	}
	unlock, err := c.lock()
	if err != nil {
		return err
	}
	defer unlock()

	agent, err := c.guestAgent()
	if err != nil {
		return err
	}
	agentSum, err := fileSHA256(agent)
	if err != nil {
		return fmt.Errorf("guest agent: %w", err)
	}
	kpkg, err := resolveKernelPackage(ctx)
	if err != nil {
		return err
	}
	for _, r := range rs {
		if err := c.build(ctx, r, agent, agentSum, kpkg, progress); err != nil {
			return fmt.Errorf("build template %s: %w", r.name, err)
		}
	}
	return nil
}

// lock serialises builds on one data directory across processes.
func (c *Catalog) lock() (func(), error) {
	f, err := os.OpenFile(filepath.Join(c.dir, ".lock"), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, fmt.Errorf("images: lock: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		f.Close()
		return nil, fmt.Errorf("images: lock: %w", err)
	}
	return func() { f.Close() }, nil
}

const buildSteps = 5

func (c *Catalog) build(ctx context.Context, r recipe, agent, agentSum string, kpkg aptPackage, progress func(Progress)) error {
	step := 0
	report := func(s string) {
		step++
		progress(Progress{Template: r.name, Step: s, Done: step - 1, Total: buildSteps})
		c.log.Info("template build", "template", r.name, "step", s)
	}
	inputs := map[string]string{
		"recipe":      recipeVersion + " " + r.version,
		"kernel":      kpkg.String(),
		"guest_agent": agentSum,
		"modules":     strings.Join(guestModules, ","),
		"packages":    strings.Join(r.packages, ","),
	}
	var basePkg aptPackage
	if r.name == "base" {
		var err error
		if basePkg, err = packageVersion(ctx, "busybox-static"); err != nil {
			return err
		}
		inputs["packages"] = basePkg.String()
	} else {
		inputs["suite"] = debianSuite
	}
	digest := inputDigest(inputs)
	// The root filesystem depends on fewer inputs than the template: a new
	// guest agent or kernel reuses it instead of bootstrapping again.
	rootfsDigest := inputDigest(map[string]string{
		"rootfs":   rootfsVersion + " " + r.version,
		"packages": inputs["packages"],
		"suite":    inputs["suite"],
	})
	dir := c.templateDir(r.name)
	old, err := readManifest(dir)
	if err == nil && old.Digest == digest {
		progress(Progress{Template: r.name, Step: "cached", Done: buildSteps, Total: buildSteps, Cached: true})
		return nil
	}
	reuseRootFS := err == nil && old.RootFSDigest == rootfsDigest

	report("kernel " + kpkg.String())
	kdir := kernelCacheDir(filepath.Dir(c.dir), kpkg)
	k, err := loadKernel(kdir)
	if err != nil {
		return err
	}
	if k == nil || !slices.Equal(k.Wanted, guestModules) {
		if k, err = buildKernel(ctx, kdir, kpkg); err != nil {
			return err
		}
	}

	work, err := os.MkdirTemp(filepath.Join(c.dir, "templates"), ".build-"+r.name+"-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(work)
	out := filepath.Join(work, "out")
	tree := filepath.Join(work, "tree")
	for _, d := range []string{out, tree} {
		if err := os.Mkdir(d, 0o755); err != nil {
			return err
		}
	}

	report("initramfs")
	if err := linkOrCopy(k.vmlinux(), filepath.Join(out, "vmlinux")); err != nil {
		return err
	}
	if err := writeInitramfs(filepath.Join(out, "initrd.img"), agent, k); err != nil {
		return err
	}

	report("root filesystem")
	if reuseRootFS {
		err = linkOrCopy(filepath.Join(dir, "rootfs.ext4"), filepath.Join(out, "rootfs.ext4"))
	}
	switch {
	case reuseRootFS:
	case r.name == "base":
		dl := filepath.Join(work, "pkg")
		if err := os.Mkdir(dl, 0o755); err != nil {
			return err
		}
		err = buildBase(ctx, tree, dl, basePkg)
	default:
		var mirror string
		if mirror, err = aptMirror(c.etcApt); err == nil {
			err = buildDebian(ctx, tree, r.packages, mirror)
		}
	}
	if err != nil {
		return err
	}

	report("ext4 image")
	if !reuseRootFS {
		if err := makeExt4(ctx, tree, filepath.Join(out, "rootfs.ext4")); err != nil {
			return err
		}
	}

	report("manifest")
	m := manifest{Name: r.name, Description: r.description, Digest: digest, RootFSDigest: rootfsDigest, Inputs: inputs, BuiltAt: c.clock.Now().UTC()}
	b, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(out, "manifest.json"), b, 0o644); err != nil {
		return err
	}
	if err := replaceDir(out, dir); err != nil {
		return err
	}
	progress(Progress{Template: r.name, Step: "done", Done: buildSteps, Total: buildSteps})
	return nil
}

// inputDigest hashes a template's inputs in a fixed order.
func inputDigest(inputs map[string]string) string {
	keys := make([]string, 0, len(inputs))
	for k := range inputs {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	h := sha256.New()
	for _, k := range keys {
		fmt.Fprintf(h, "%s=%s\n", k, inputs[k])
	}
	return "sha256:" + hex.EncodeToString(h.Sum(nil))
}

func fileSHA256(file string) (string, error) {
	f, err := os.Open(file)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// linkOrCopy hard-links src to dst, copying when they are on different file systems.
func linkOrCopy(src, dst string) error {
	if err := os.Link(src, dst); err == nil {
		return nil
	}
	return copyFile(src, dst, 0o644)
}

// Publish opens the template name under dataDir to every tenant (public
// true) or back to its owner only, by rewriting its manifest.json (fields
// it does not know are kept). Built templates have no owner and are public
// already: publishing one is refused, so the operator learns it.
func Publish(dataDir, name string, public bool) (*tartarus.Image, error) {
	if !validTemplateName(name) {
		return nil, fmt.Errorf("template %q: %w", name, ErrNotFound)
	}
	dir := filepath.Join(dataDir, "images", "templates", name)
	b, err := os.ReadFile(filepath.Join(dir, "manifest.json"))
	if os.IsNotExist(err) {
		return nil, fmt.Errorf("template %s: %w", name, ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("images: template %s: %w", name, err)
	}
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(b, &fields); err != nil {
		return nil, fmt.Errorf("images: template %s: manifest.json: %w", name, err)
	}
	var tenant string
	_ = json.Unmarshal(fields["tenant"], &tenant)
	if tenant == "" {
		return nil, tartarus.Errorf(tartarus.ErrFailedPrecondition, "template %s is built in and public to every tenant already", name)
	}
	if public {
		fields["public"] = json.RawMessage("true")
	} else {
		delete(fields, "public")
	}
	out, err := json.MarshalIndent(fields, "", "  ")
	if err != nil {
		return nil, err
	}
	tmp, err := os.CreateTemp(dir, ".manifest-*.json")
	if err != nil {
		return nil, fmt.Errorf("images: publish %s: %w", name, err)
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(append(out, '\n')); err != nil {
		tmp.Close()
		return nil, fmt.Errorf("images: publish %s: %w", name, err)
	}
	if err := errors.Join(tmp.Chmod(0o644), tmp.Sync(), tmp.Close()); err != nil {
		return nil, fmt.Errorf("images: publish %s: %w", name, err)
	}
	if err := os.Rename(tmp.Name(), filepath.Join(dir, "manifest.json")); err != nil {
		return nil, fmt.Errorf("images: publish %s: %w", name, err)
	}
	c := &Catalog{dir: filepath.Join(dataDir, "images")}
	return c.Get(context.Background(), name)
}
