package images

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"

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
