package templates

import (
	"archive/tar"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"strings"

	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

// FROM an OCI image: `FROM docker-archive:FILE` or `FROM oci-archive:FILE`
// names an image tarball in the build context (`docker save` output, or
// an OCI image layout packed as a tar; either prefix takes either, as
// `template import` does), `FROM oci:DIR` an OCI image layout directory
// of the context; these come with the context. `FROM registry:REF` (or a
// plain HOST[:PORT]/REPO[:TAG]) is pulled from its registry by the node
// that builds. Each is imported through the same code as `template import`
// (layers unpacked inside their own root) into a cache step template
// named by the tenant and the tarball's digest, so a rebuild with the
// same tarball imports nothing; the image's env, workdir and user are
// the build's starting point, as a template's are.

// Image transports FROM accepts (the names skopeo and podman use): a
// tarball, or with "oci:" an OCI image layout directory of the context.
var imageTransports = []string{"docker-archive:", "oci-archive:", "oci:"}

// imageArchive returns the context path FROM names when it names an image
// in the context.
func imageArchive(from string) (string, bool) {
	for _, p := range imageTransports {
		if file, ok := strings.CutPrefix(from, p); ok {
			return file, true
		}
	}
	return "", false
}

// packLayout writes the OCI image layout directory rel of root as a tar
// (the form ImportImage reads), its entries in lexical order so that the
// same layout makes the same bytes.
func packLayout(root *os.Root, rel string, w io.Writer) error {
	tw := tar.NewWriter(w)
	err := fs.WalkDir(root.FS(), rel, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		name := strings.TrimPrefix(strings.TrimPrefix(p, rel), "/")
		switch {
		case name == "":
			return nil
		case d.IsDir():
			return tw.WriteHeader(&tar.Header{Name: name + "/", Typeflag: tar.TypeDir, Mode: 0o755})
		case !d.Type().IsRegular():
			return tartarus.Errorf(tartarus.ErrInvalid, "OCI layout %s: %s is not a regular file", rel, name)
		}
		f, err := root.Open(p)
		if err != nil {
			return err
		}
		defer f.Close()
		st, err := f.Stat()
		if err != nil {
			return err
		}
		if err := tw.WriteHeader(&tar.Header{Name: name, Typeflag: tar.TypeReg, Mode: 0o644, Size: st.Size()}); err != nil {
			return err
		}
		_, err = io.Copy(tw, f)
		return err
	})
	if err != nil {
		return err
	}
	return tw.Close()
}

// fromImage imports the image archive file of the build context (unless
// the tenant has it already) and returns its cache template's name and
// whether it was there already.
func (r *run) fromImage(ctx context.Context, from, file string) (string, bool, error) {
	rel := strings.TrimPrefix(path.Clean("/"+file), "/")
	if file == "" || rel == "" {
		return "", false, tartarus.Errorf(tartarus.ErrInvalid, "name the image tarball in the build context")
	}
	// Opened through a root: nothing outside the context is read.
	root, err := os.OpenRoot(r.req.Context)
	if err != nil {
		return "", false, err
	}
	defer root.Close()
	var f *os.File
	if strings.HasPrefix(from, "oci:") {
		// A layout directory: packed once into a scratch file, which is
		// then read as a tarball is.
		if f, err = os.CreateTemp("", "tartarus-oci-layout-"); err != nil {
			return "", false, err
		}
		defer os.Remove(f.Name())
		if err := packLayout(root, rel, f); err != nil {
			f.Close()
			return "", false, tartarus.Errorf(tartarus.ErrInvalid, "OCI layout %s in the build context: %v", file, err)
		}
		if _, err := f.Seek(0, io.SeekStart); err != nil {
			f.Close()
			return "", false, err
		}
	} else if f, err = root.Open(rel); err != nil {
		return "", false, tartarus.Errorf(tartarus.ErrInvalid, "image tarball %s in the build context: %v", file, err)
	}
	defer f.Close()
	if st, err := f.Stat(); err != nil || !st.Mode().IsRegular() {
		return "", false, tartarus.Errorf(tartarus.ErrInvalid, "image tarball %s in the build context: not a regular file", file)
	}
	return r.importArchive(ctx, from, f)
}

// registryImage returns the registry reference FROM names: `registry:REF`,
// or a plain HOST[:PORT]/REPO[:TAG] (a template's name has no '/').
func registryImage(from string) (string, bool) {
	if ref, ok := strings.CutPrefix(from, "registry:"); ok {
		return ref, true
	}
	if _, ok := imageArchive(from); ok {
		return "", false
	}
	return from, strings.Contains(from, "/")
}

// fromRegistry pulls image ref (PullImage; plain HTTP only to a loopback
// registry) into a scratch tarball and imports it as fromImage does a
// context's tarball: the same image makes the same tarball, so a rebuild
// finds its cache step (the image is fetched again to know that).
func (r *run) fromRegistry(ctx context.Context, from, ref string) (string, bool, error) {
	ir, err := ParseImageRef(ref)
	if err != nil {
		return "", false, err
	}
	if err := r.bd.registries.Check(ir, false); err != nil {
		return "", false, err
	}
	f, err := os.CreateTemp("", "tartarus-pull-")
	if err != nil {
		return "", false, err
	}
	defer os.Remove(f.Name())
	defer f.Close()
	if err := PullImage(ctx, ir, PullOptions{Credentials: DockerConfigCredentials()}, f); err != nil {
		return "", false, err
	}
	return r.importArchive(ctx, from, f)
}

// importArchive imports image tarball f (unless the tenant has it
// already, by its digest) and returns its cache template's name and
// whether it was there already.
func (r *run) importArchive(ctx context.Context, from string, f *os.File) (string, bool, error) {
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return "", false, err
	}
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", false, err
	}
	sum := "sha256:" + hex.EncodeToString(h.Sum(nil))
	name := CachePrefix + strings.TrimPrefix(chain("", r.req.Tenant, "FROM image", sum), "sha256:")[:32]
	if img, err := r.bd.be.Template(ctx, name); err == nil && img.Tenant == r.req.Tenant {
		return name, true, nil
	}
	if r.bd.cat == nil {
		return "", false, tartarus.Errorf(tartarus.ErrNotImplemented, "this server imports no images")
	}
	kernel, err := r.bd.be.Template(ctx, "base")
	if err != nil {
		return "", false, fmt.Errorf("the base template's kernel: %w", err)
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return "", false, err
	}
	if _, err := importImage(ctx, r.bd.cat, kernel, r.req.Tenant, name, from, f); err != nil {
		return "", false, err
	}
	return name, false, nil
}
