package images

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

// Tenant templates are made outside this package (from a running sandbox,
// from a Dockerfile) and installed here: their files are prepared in a
// staging directory beside the templates, then moved into place in one
// rename that never replaces an existing template.

// StageTemplate returns a new empty directory, on the templates' file
// system, to prepare template name's files in. The caller removes it if it
// does not hand it to AddTemplate.
func (c *Catalog) StageTemplate(name string) (string, error) {
	if !validTemplateName(name) {
		return "", tartarus.Errorf(tartarus.ErrInvalid, "template name %q: use letters, digits, '-', '_' and '.'", name)
	}
	dir, err := os.MkdirTemp(filepath.Join(c.dir, "templates"), ".stage-"+name+"-")
	if err != nil {
		return "", fmt.Errorf("images: stage %s: %w", name, err)
	}
	return dir, nil
}

// AddTemplate installs the staged directory dir, which holds rootfs.ext4,
// as template img.Name owned by img.Tenant, booting with base's kernel and
// initramfs. img gives the name, tenant, digest, description and the
// defaults (env, workdir, user, build time); inputs
// are recorded in the manifest. A template of that name that exists
// already is not replaced (ErrAlreadyExists). It returns the installed
// template.
func (c *Catalog) AddTemplate(ctx context.Context, dir string, img, base *tartarus.Image, inputs map[string]string) (*tartarus.Image, error) {
	if !validTemplateName(img.Name) {
		return nil, tartarus.Errorf(tartarus.ErrInvalid, "template name %q", img.Name)
	}
	if !tartarus.ValidName(img.Tenant) {
		return nil, tartarus.Errorf(tartarus.ErrInvalid, "template %s: tenant %q", img.Name, img.Tenant)
	}
	if filepath.Dir(dir) != filepath.Join(c.dir, "templates") {
		return nil, fmt.Errorf("images: add %s: %s is not a staging directory of this catalog", img.Name, dir)
	}
	if _, err := os.Stat(filepath.Join(dir, "rootfs.ext4")); err != nil {
		return nil, fmt.Errorf("images: add %s: %w", img.Name, err)
	}
	if err := linkOrCopy(base.Kernel, filepath.Join(dir, "vmlinux")); err != nil {
		return nil, fmt.Errorf("images: add %s: kernel: %w", img.Name, err)
	}
	if err := linkOrCopy(base.Initrd, filepath.Join(dir, "initrd.img")); err != nil {
		return nil, fmt.Errorf("images: add %s: initramfs: %w", img.Name, err)
	}
	m := manifest{Name: img.Name, Description: img.Description, Digest: img.Digest, RootFSDigest: img.Digest,
		Inputs: inputs, BuiltAt: c.clock.Now().UTC(), Tenant: img.Tenant,
		Env: img.Env, WorkDir: img.WorkDir, User: img.User, BuildMS: img.BuildMS}
	b, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(dir, "manifest.json"), append(b, '\n'), 0o644); err != nil {
		return nil, fmt.Errorf("images: add %s: %w", img.Name, err)
	}
	err = unix.Renameat2(unix.AT_FDCWD, dir, unix.AT_FDCWD, c.templateDir(img.Name), unix.RENAME_NOREPLACE)
	if errors.Is(err, unix.EEXIST) {
		return nil, tartarus.Errorf(tartarus.ErrAlreadyExists, "template %s", img.Name)
	}
	if err != nil {
		return nil, fmt.Errorf("images: add %s: %w", img.Name, err)
	}
	return c.Get(ctx, img.Name)
}

// RemoveTemplate deletes tenant template name. Built-in templates are not
// removed (ErrFailedPrecondition).
func (c *Catalog) RemoveTemplate(ctx context.Context, name string) error {
	img, err := c.Get(ctx, name)
	if err != nil {
		return err
	}
	if img.Tenant == "" {
		return tartarus.Errorf(tartarus.ErrFailedPrecondition, "template %s is built in", name)
	}
	// Renamed aside first, so that a half-deleted template is never listed.
	gone, err := os.MkdirTemp(filepath.Join(c.dir, "templates"), ".remove-"+name+"-")
	if err != nil {
		return fmt.Errorf("images: remove %s: %w", name, err)
	}
	if err := os.Rename(c.templateDir(name), filepath.Join(gone, name)); err != nil {
		os.Remove(gone)
		return fmt.Errorf("images: remove %s: %w", name, err)
	}
	return os.RemoveAll(gone)
}

// Tags: NAME:TAG names one version of a tenant template. A build or save
// installs a new version (a template directory named VersionName) and
// only then points the tag at it, so a failed rebuild leaves the tag where
// it was. A tag is a small file in templates/.tags holding its version's
// name; a bare NAME means NAME:latest. Sandboxes record the version they
// were created from, so moving a tag never changes a running sandbox.

// DefaultTag is the tag a bare template name means.
const DefaultTag = "latest"

// maxRefName bounds a tagged template's name, so that its version names
// (name, "..", a 9-character stamp) stay valid names.
const maxRefName = 48

// ParseTemplateRef splits ref, "NAME" or "NAME:TAG", into its name and tag
// (DefaultTag when none is given), refusing what could not name a tag.
func ParseTemplateRef(ref string) (name, tag string, err error) {
	name, tag, ok := strings.Cut(ref, ":")
	if !ok || tag == "" {
		tag = DefaultTag
	}
	switch {
	case !validTemplateName(name) || len(name) > maxRefName || strings.Contains(name, "..") || strings.HasSuffix(name, "."):
		return "", "", tartarus.Errorf(tartarus.ErrInvalid, "template name %q: 1-%d lowercase letters, digits, '-', '_' and '.' (not starting or ending with '.', no '..')", name, maxRefName)
	case !validTemplateName(tag) || len(tag) > 32 || strings.Contains(tag, ":"):
		return "", "", tartarus.Errorf(tartarus.ErrInvalid, "template tag %q: 1-32 lowercase letters, digits, '-', '_' and '.', not starting with '.'", tag)
	}
	return name, tag, nil
}

// VersionName is the name of the version of template name made at t: the
// name, "..", and the time in milliseconds, base 36.
func VersionName(name string, t time.Time) string {
	return name + ".." + strconv.FormatInt(t.UnixMilli(), 36)
}

func (c *Catalog) tagDir() string { return filepath.Join(c.dir, "templates", ".tags") }

// tagTarget returns the version tag name:tag points at, or "" if none.
func (c *Catalog) tagTarget(name, tag string) (string, error) {
	b, err := os.ReadFile(filepath.Join(c.tagDir(), name+":"+tag))
	if os.IsNotExist(err) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("images: tag %s:%s: %w", name, tag, err)
	}
	v := strings.TrimSpace(string(b))
	if !validTemplateName(v) {
		return "", fmt.Errorf("images: tag %s:%s points at %q", name, tag, v)
	}
	return v, nil
}

// resolve returns the template directory ref names: the version a tag
// points at (a bare name is NAME:latest), else a template of that name.
func (c *Catalog) resolve(ref string) (string, error) {
	name, tag, err := ParseTemplateRef(ref)
	if err != nil {
		if strings.Contains(ref, ":") {
			return "", err
		}
		return ref, nil // a built-in, a version, or an older template name
	}
	v, err := c.tagTarget(name, tag)
	if err != nil || v != "" {
		return v, err
	}
	if strings.Contains(ref, ":") && tag != DefaultTag {
		return "", fmt.Errorf("%q: %w", ref, ErrNotFound)
	}
	return name, nil
}

// TagTemplate points ref (NAME or NAME:TAG) at installed template version,
// in one rename. It returns the version the tag pointed at before ("" if
// none).
func (c *Catalog) TagTemplate(ctx context.Context, ref, version string) (string, error) {
	name, tag, err := ParseTemplateRef(ref)
	if err != nil {
		return "", err
	}
	if _, err := c.Get(ctx, version); err != nil {
		return "", fmt.Errorf("tag %s:%s: %w", name, tag, err)
	}
	old, err := c.tagTarget(name, tag)
	if err != nil {
		return "", err
	}
	if err := os.MkdirAll(c.tagDir(), 0o755); err != nil {
		return "", fmt.Errorf("images: tag %s:%s: %w", name, tag, err)
	}
	f, err := os.CreateTemp(c.tagDir(), ".new-")
	if err != nil {
		return "", fmt.Errorf("images: tag %s:%s: %w", name, tag, err)
	}
	_, err = f.WriteString(version + "\n")
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(f.Name(), filepath.Join(c.tagDir(), name+":"+tag))
	}
	if err != nil {
		os.Remove(f.Name())
		return "", fmt.Errorf("images: tag %s:%s: %w", name, tag, err)
	}
	return old, nil
}

// UntagTemplate removes tag ref (NAME or NAME:TAG) and returns the version
// it pointed at; ErrNotFound if there is no such tag.
func (c *Catalog) UntagTemplate(ctx context.Context, ref string) (string, error) {
	name, tag, err := ParseTemplateRef(ref)
	if err != nil {
		return "", err
	}
	v, err := c.tagTarget(name, tag)
	if err != nil {
		return "", err
	}
	if v == "" {
		return "", fmt.Errorf("tag %s:%s: %w", name, tag, ErrNotFound)
	}
	if err := os.Remove(filepath.Join(c.tagDir(), name+":"+tag)); err != nil {
		return "", fmt.Errorf("images: untag %s:%s: %w", name, tag, err)
	}
	return v, nil
}

// tags returns the tags ("NAME:TAG") of every version, by version.
func (c *Catalog) tags() (map[string][]string, error) {
	entries, err := os.ReadDir(c.tagDir())
	if os.IsNotExist(err) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("images: list tags: %w", err)
	}
	out := map[string][]string{}
	for _, e := range entries {
		name, tag, ok := strings.Cut(e.Name(), ":")
		if !ok || strings.HasPrefix(e.Name(), ".") {
			continue
		}
		v, err := c.tagTarget(name, tag)
		if err != nil || v == "" {
			continue
		}
		out[v] = append(out[v], e.Name())
	}
	return out, nil
}
