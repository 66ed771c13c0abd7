package kampe

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/tartarus-sandbox/tartarus/pkg/clock"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

// MigrateOptions says where and how a container becomes a template.
type MigrateOptions struct {
	// DataDir is Tartarus's data directory: the template goes to
	// DataDir/images/templates/<name>/, the layout of package images.
	DataDir string
	// Template is the new template's name; empty means the plan's
	// TargetTemplate.
	Template string
	// Force carries out the move despite changes that need a person (the
	// plan still lists them); without it such a plan stops the move.
	Force bool
	// Replace overwrites an existing template of the same name.
	Replace bool
	// Tenant owns the template: it carries the container's files and
	// environment, so only that tenant may list and use it until an
	// operator publishes it. Empty means DefaultTenant.
	Tenant string
	// Clock is the time source for built_at and the duration; nil means
	// clock.System{}.
	Clock clock.Clock
}

// MigrateResult is what a migration built.
type MigrateResult struct {
	Plan     *MigrationPlan `json:"plan"`
	Template string         `json:"template"`
	Dir      string         `json:"dir"`
	RootFS   string         `json:"rootfs"`
	// Bootable is true when the template directory also holds a kernel and
	// initramfs (linked from the base template); Missing says what lacks.
	Bootable bool   `json:"bootable"`
	Missing  string `json:"missing,omitempty"`
	// SkippedEntries counts device nodes and other special files of the
	// container's file system that were not carried.
	SkippedEntries int           `json:"skipped_entries"`
	Duration       time.Duration `json:"duration"`
}

// TemplateManifest is the manifest.json of a migrated template: the fields
// package images reads, plus the container's configuration.
type TemplateManifest struct {
	Name        string            `json:"name"`
	Description string            `json:"description"`
	Digest      string            `json:"digest"`
	Inputs      map[string]string `json:"inputs"`
	BuiltAt     time.Time         `json:"built_at"`
	Container   ContainerManifest `json:"container"`
	// Tenant owns the template; Public opens it to every tenant
	// (images.Publish).
	Tenant string `json:"tenant"`
	Public bool   `json:"public,omitempty"`
}

// DefaultTenant is the tenant a migrated template belongs to when none is
// given: the server's default tenant (cerberus.DefaultTenant).
const DefaultTenant = "default"

// ContainerManifest is what a migrated template keeps of its container.
// The same JSON is written into the root filesystem as
// /etc/tartarus/container.json.
type ContainerManifest struct {
	SourceID    string   `json:"source_id"`
	SourceName  string   `json:"source_name,omitempty"`
	SourceImage string   `json:"source_image"`
	Entrypoint  []string `json:"entrypoint"`
	Cmd         []string `json:"cmd"`
	WorkingDir  string   `json:"working_dir"`
	User        string   `json:"user,omitempty"`
	Env         []string `json:"env"`
}

// FillFunc writes a container's file system into the empty directory
// rootfs and returns how many entries it skipped and a digest of what it
// read ("sha256:…").
type FillFunc func(ctx context.Context, rootfs string) (skipped int, digest string, err error)

// BuildTemplate carries the container f describes into a microVM template:
// fill writes its file system, then its configuration goes into
// /etc/tartarus/container.json and manifest.json, mke2fs makes
// rootfs.ext4, and the base template's kernel and initramfs are linked in
// when they exist. A plan with changes that need a person stops it
// (ErrFailedPrecondition, with the plan in the result) unless opts.Force.
func BuildTemplate(ctx context.Context, f *ContainerFacts, opts MigrateOptions, fill FillFunc) (*MigrateResult, error) {
	clk := opts.Clock
	if clk == nil {
		clk = clock.System{}
	}
	start := clk.Now()
	if opts.DataDir == "" {
		return nil, tartarus.Errorf(tartarus.ErrInvalid, "migrate: no data directory")
	}
	plan := Analyze(f)
	res := &MigrateResult{Plan: plan, Template: opts.Template}
	if res.Template == "" {
		res.Template = plan.TargetTemplate
	}
	if !tartarus.ValidName(res.Template) {
		return res, tartarus.Errorf(tartarus.ErrInvalid, "migrate: template name %q", res.Template)
	}
	if opts.Tenant == "" {
		opts.Tenant = DefaultTenant
	}
	if !tartarus.ValidName(opts.Tenant) {
		return res, tartarus.Errorf(tartarus.ErrInvalid, "migrate: tenant %q", opts.Tenant)
	}
	ref := firstNonEmpty(f.Name, shortID(f.ID))
	if blocking := plan.Blocking(); len(blocking) > 0 && !opts.Force {
		var lines []string
		for _, c := range blocking {
			lines = append(lines, c.Description)
		}
		return res, tartarus.Errorf(tartarus.ErrFailedPrecondition, "migrate %s: %d change(s) need a person (pass --force to migrate without them): %s",
			ref, len(blocking), strings.Join(lines, "; "))
	}
	templates := filepath.Join(opts.DataDir, "images", "templates")
	res.Dir = filepath.Join(templates, res.Template)
	if _, err := os.Stat(res.Dir); err == nil && !opts.Replace {
		return res, tartarus.Errorf(tartarus.ErrAlreadyExists, "migrate: template %s (%s)", res.Template, res.Dir)
	}
	if err := os.MkdirAll(templates, 0o755); err != nil {
		return res, err
	}
	work, err := os.MkdirTemp(templates, ".migrate-"+res.Template+"-")
	if err != nil {
		return res, err
	}
	defer os.RemoveAll(work)
	rootfs := filepath.Join(work, "rootfs")
	if err := os.Mkdir(rootfs, 0o755); err != nil {
		return res, err
	}

	// 1. The file system, as the container sees it now.
	skipped, digest, err := fill(ctx, rootfs)
	if err != nil {
		return res, fmt.Errorf("migrate %s: %w", ref, err)
	}
	res.SkippedEntries = skipped
	// Everything written into the container's tree from here is resolved
	// inside it: its links are the image author's, not ours to follow.
	if err := finishRootFS(rootfs, cmJSON(f)); err != nil {
		return res, fmt.Errorf("migrate %s: %w", ref, err)
	}

	// 2. The ext4 image a microVM boots.
	if err := MakeExt4(ctx, rootfs, filepath.Join(work, "rootfs.ext4"), 256); err != nil {
		return res, fmt.Errorf("migrate %s: %w", ref, err)
	}
	if err := os.RemoveAll(rootfs); err != nil {
		return res, err
	}
	// The kernel and initramfs are the base template's: a migrated
	// template differs only in its root filesystem.
	base := filepath.Join(templates, "base")
	var missing []string
	for _, name := range []string{"vmlinux", "initrd.img"} {
		if err := linkOrCopy(filepath.Join(base, name), filepath.Join(work, name)); err != nil {
			missing = append(missing, name)
		}
	}
	res.Bootable = len(missing) == 0
	if !res.Bootable {
		res.Missing = fmt.Sprintf("%s of the base template, not found in %s (run `tartarus template build base` first, then migrate again with --replace)",
			strings.Join(missing, " and "), base)
	}
	m := TemplateManifest{Name: res.Template, Digest: digest, BuiltAt: clk.Now().UTC(),
		Description: fmt.Sprintf("migrated from container %s (%s)", ref, f.Image),
		Inputs:      map[string]string{"container": f.ID, "image": f.Image, "kernel": "base"}, Container: containerManifest(f),
		Tenant: opts.Tenant}
	mJSON, _ := json.MarshalIndent(m, "", "  ")
	if err := os.WriteFile(filepath.Join(work, "manifest.json"), append(mJSON, '\n'), 0o644); err != nil {
		return res, err
	}
	if opts.Replace {
		_ = os.RemoveAll(res.Dir)
	}
	if err := os.Rename(work, res.Dir); err != nil {
		return res, fmt.Errorf("migrate %s: %w", ref, err)
	}
	_ = os.Chmod(res.Dir, 0o755)
	res.RootFS = filepath.Join(res.Dir, "rootfs.ext4")
	res.Duration = clk.Now().Sub(start)
	return res, nil
}

func containerManifest(f *ContainerFacts) ContainerManifest {
	return ContainerManifest{SourceID: f.ID, SourceName: f.Name, SourceImage: f.Image, Entrypoint: f.Entrypoint,
		Cmd: f.Cmd, WorkingDir: f.WorkingDir, User: f.User, Env: f.Env}
}

func cmJSON(f *ContainerFacts) []byte {
	b, _ := json.MarshalIndent(containerManifest(f), "", "  ")
	return b
}

// finishRootFS adds what every guest needs to the container's tree and
// writes its configuration to /etc/tartarus/container.json, every name
// resolved inside rootfs (MkdirInRoot).
func finishRootFS(rootfs string, config []byte) error {
	for _, d := range []string{"proc", "sys", "dev", "tmp", "run"} {
		r, err := MkdirInRoot(rootfs, d)
		if err != nil {
			return err
		}
		r.Close()
	}
	top, err := os.OpenRoot(rootfs)
	if err != nil {
		return err
	}
	_ = top.Remove(".dockerenv")
	top.Close()
	etc, err := MkdirInRoot(rootfs, "etc/tartarus")
	if err != nil {
		return err
	}
	defer etc.Close()
	// Remove first: a link planted at the name is replaced, not followed.
	if err := etc.RemoveAll("container.json"); err != nil {
		return err
	}
	return etc.WriteFile("container.json", config, 0o644)
}

// linkOrCopy hard-links src to dst, or copies it across file systems.
func linkOrCopy(src, dst string) error {
	if err := os.Link(src, dst); err == nil {
		return nil
	}
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.Create(dst)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}
