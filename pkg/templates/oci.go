package templates

import (
	"archive/tar"
	"bufio"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"strings"

	"github.com/klauspost/compress/zstd"

	"github.com/tartarus-sandbox/tartarus/pkg/kampe"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus/api"
)

// Limits of an imported image.
const (
	MaxImageBytes  = api.MaxTemplateImageBytes
	MaxImageLayers = 128
)

// ImageConfig is what a template keeps of an OCI image's configuration.
type ImageConfig struct {
	Env        []string `json:"Env"`
	WorkingDir string   `json:"WorkingDir"`
	User       string   `json:"User"`
	Entrypoint []string `json:"Entrypoint"`
	Cmd        []string `json:"Cmd"`
}

// UnpackImage reads an image tarball — `docker save` output or an OCI
// image layout packed as a tar — and unpacks its layers in order into the
// empty directory root, honouring whiteouts. scratch is an empty directory
// for the tarball's members. Every layer entry is resolved inside root
// (kampe.ExtractTarRoot: os.Root), so a "../" name is refused and a
// symbolic link, even an absolute one, is never followed out of root. It
// returns the image's configuration and a digest of its manifest.
func UnpackImage(ctx context.Context, r io.Reader, root, scratch string) (*ImageConfig, string, error) {
	members, err := readMembers(r, scratch)
	if err != nil {
		return nil, "", err
	}
	configFile, layers, digest, err := imageParts(members)
	if err != nil {
		return nil, "", err
	}
	var cfg struct {
		Config ImageConfig `json:"config"`
	}
	b, err := os.ReadFile(configFile)
	if err != nil {
		return nil, "", err
	}
	if err := json.Unmarshal(b, &cfg); err != nil {
		return nil, "", tartarus.Errorf(tartarus.ErrInvalid, "image config: %v", err)
	}
	rt, err := os.OpenRoot(root)
	if err != nil {
		return nil, "", err
	}
	defer rt.Close()
	for i, l := range layers {
		if err := applyLayer(ctx, rt, l); err != nil {
			return nil, "", fmt.Errorf("layer %d: %w", i+1, err)
		}
	}
	return &cfg.Config, digest, nil
}

// readMembers copies the regular files of the tarball into scratch, by
// their cleaned names; a member that is a symbolic link (older `docker
// save` links repeated layers) is recorded as its cleaned target.
func readMembers(r io.Reader, scratch string) (map[string]string, error) {
	tr := tar.NewReader(r)
	files := map[string]string{}
	links := map[string]string{}
	var total int64
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil && tartarus.ClassOf(err).Err != nil {
			// The stream's own error (a registry pull's) keeps its class.
			return nil, fmt.Errorf("image tarball: %w", err)
		}
		if err != nil {
			return nil, tartarus.Errorf(tartarus.ErrInvalid, "image tarball: %v", err)
		}
		name := strings.TrimPrefix(path.Clean("/"+h.Name), "/")
		switch h.Typeflag {
		case tar.TypeReg:
			if total += h.Size; total > MaxImageBytes {
				return nil, tartarus.Errorf(tartarus.ErrInvalid, "image tarball: larger than %d bytes", MaxImageBytes)
			}
			f, err := os.CreateTemp(scratch, "member-")
			if err != nil {
				return nil, err
			}
			_, err = io.Copy(f, tr)
			if cerr := f.Close(); err == nil {
				err = cerr
			}
			if err != nil {
				return nil, fmt.Errorf("image tarball: %s: %w", name, err)
			}
			files[name] = f.Name()
		case tar.TypeSymlink:
			links[name] = strings.TrimPrefix(path.Clean(path.Join("/", path.Dir(name), h.Linkname)), "/")
		}
	}
	for name, target := range links {
		if f, ok := files[target]; ok {
			files[name] = f
		}
	}
	return files, nil
}

// imageParts finds the config and the layers: manifest.json (docker save)
// first, else index.json (an OCI layout).
func imageParts(files map[string]string) (config string, layers []string, digest string, err error) {
	get := func(name string) (string, error) {
		name = strings.TrimPrefix(path.Clean("/"+name), "/")
		f, ok := files[name]
		if !ok {
			return "", tartarus.Errorf(tartarus.ErrInvalid, "image tarball: %s is missing", name)
		}
		return f, nil
	}
	readJSON := func(name string, v any) (string, error) {
		f, err := get(name)
		if err != nil {
			return "", err
		}
		b, err := os.ReadFile(f)
		if err != nil {
			return "", err
		}
		if err := json.Unmarshal(b, v); err != nil {
			return "", tartarus.Errorf(tartarus.ErrInvalid, "image tarball: %s: %v", name, err)
		}
		sum := sha256.Sum256(b)
		return "sha256:" + hex.EncodeToString(sum[:]), nil
	}
	blob := func(d string) string { return "blobs/" + strings.Replace(d, ":", "/", 1) }
	if _, ok := files["manifest.json"]; ok {
		var m []struct {
			Config string   `json:"Config"`
			Layers []string `json:"Layers"`
		}
		if digest, err = readJSON("manifest.json", &m); err != nil {
			return "", nil, "", err
		}
		if len(m) != 1 {
			return "", nil, "", tartarus.Errorf(tartarus.ErrInvalid, "image tarball: %d images in manifest.json; save one image", len(m))
		}
		config, layers = m[0].Config, m[0].Layers
	} else {
		var idx struct {
			Manifests []struct {
				Digest string `json:"digest"`
			} `json:"manifests"`
		}
		if _, err := readJSON("index.json", &idx); err != nil {
			return "", nil, "", tartarus.Errorf(tartarus.ErrInvalid, "image tarball: neither manifest.json (docker save) nor index.json (OCI layout): %v", err)
		}
		if len(idx.Manifests) != 1 {
			return "", nil, "", tartarus.Errorf(tartarus.ErrInvalid, "image tarball: %d manifests in index.json; want one", len(idx.Manifests))
		}
		var m struct {
			Config struct {
				Digest string `json:"digest"`
			} `json:"config"`
			Layers []struct {
				Digest string `json:"digest"`
			} `json:"layers"`
		}
		if digest, err = readJSON(blob(idx.Manifests[0].Digest), &m); err != nil {
			return "", nil, "", err
		}
		config = blob(m.Config.Digest)
		for _, l := range m.Layers {
			layers = append(layers, blob(l.Digest))
		}
	}
	if len(layers) > MaxImageLayers {
		return "", nil, "", tartarus.Errorf(tartarus.ErrInvalid, "image: %d layers, at most %d", len(layers), MaxImageLayers)
	}
	if config, err = get(config); err != nil {
		return "", nil, "", err
	}
	for i, l := range layers {
		if layers[i], err = get(l); err != nil {
			return "", nil, "", err
		}
	}
	return config, layers, digest, nil
}

// applyLayer applies one layer file (tar, gzip or zstd) to root: first its
// whiteouts remove what lower layers put there, then its entries are
// written, every name resolved inside root.
func applyLayer(ctx context.Context, root *os.Root, file string) error {
	open := func() (io.ReadCloser, error) {
		f, err := os.Open(file)
		if err != nil {
			return nil, err
		}
		br := bufio.NewReader(f)
		magic, _ := br.Peek(4)
		switch {
		case len(magic) >= 2 && magic[0] == 0x1f && magic[1] == 0x8b:
			z, err := gzip.NewReader(br)
			if err != nil {
				f.Close()
				return nil, tartarus.Errorf(tartarus.ErrInvalid, "gzip: %v", err)
			}
			return readCloser{z, f}, nil
		case len(magic) == 4 && string(magic) == "\x28\xb5\x2f\xfd":
			z, err := zstd.NewReader(br)
			if err != nil {
				f.Close()
				return nil, err
			}
			return readCloser{z.IOReadCloser(), f}, nil
		}
		return readCloser{br, f}, nil
	}
	// Pass 1: whiteouts.
	rc, err := open()
	if err != nil {
		return err
	}
	tr := tar.NewReader(rc)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			rc.Close()
			return tartarus.Errorf(tartarus.ErrInvalid, "%v", err)
		}
		name := path.Clean(strings.TrimPrefix(h.Name, "/"))
		base, dir := path.Base(name), path.Dir(name)
		if !strings.HasPrefix(base, ".wh.") {
			continue
		}
		if name == ".." || strings.HasPrefix(name, "../") {
			rc.Close()
			return tartarus.Errorf(tartarus.ErrInvalid, "whiteout %q escapes the root", h.Name)
		}
		if base == ".wh..wh..opq" {
			err = clearDir(root, dir)
		} else {
			err = root.RemoveAll(path.Join(dir, strings.TrimPrefix(base, ".wh.")))
		}
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			rc.Close()
			return fmt.Errorf("whiteout %s: %w", name, err)
		}
	}
	rc.Close()

	// Pass 2: the entries, whiteouts left out.
	rc, err = open()
	if err != nil {
		return err
	}
	defer rc.Close()
	pr, pw := io.Pipe()
	go func() {
		tr := tar.NewReader(rc)
		tw := tar.NewWriter(pw)
		for {
			h, err := tr.Next()
			if errors.Is(err, io.EOF) {
				pw.CloseWithError(tw.Close())
				return
			}
			if err != nil {
				pw.CloseWithError(tartarus.Errorf(tartarus.ErrInvalid, "%v", err))
				return
			}
			if strings.HasPrefix(path.Base(h.Name), ".wh.") {
				continue
			}
			if err := tw.WriteHeader(h); err != nil {
				pw.CloseWithError(err)
				return
			}
			if _, err := io.Copy(tw, tr); err != nil {
				pw.CloseWithError(err)
				return
			}
		}
	}()
	_, err = kampe.ExtractTarRoot(ctx, pr, root)
	pr.CloseWithError(errors.New("extract stopped"))
	if err != nil && tartarus.ClassOf(err).Err == nil && ctx.Err() == nil {
		// A name that os.Root will not resolve inside the root is the
		// layer's doing (a link reaching out of it), not the server's.
		err = tartarus.Errorf(tartarus.ErrInvalid, "%v", err)
	}
	return err
}

type readCloser struct {
	io.Reader
	f io.Closer
}

func (r readCloser) Close() error {
	if c, ok := r.Reader.(io.Closer); ok {
		c.Close()
	}
	return r.f.Close()
}

// clearDir empties directory dir of root (an opaque whiteout).
func clearDir(root *os.Root, dir string) error {
	d, err := root.Open(dir)
	if err != nil {
		return err
	}
	names, err := d.Readdirnames(-1)
	d.Close()
	if err != nil {
		return err
	}
	for _, n := range names {
		if err := root.RemoveAll(path.Join(dir, n)); err != nil {
			return err
		}
	}
	return nil
}

// Installer is the template catalog an import writes to (pkg/images).
type Installer interface {
	StageTemplate(name string) (string, error)
	AddTemplate(ctx context.Context, dir string, img, base *tartarus.Image, inputs map[string]string) (*tartarus.Image, error)
}

// ImportImage makes template name, owned by tenant, of the image tarball
// r: its layers unpacked safely into a fresh root, an ext4 root filesystem
// made of it (mke2fs -d), base's kernel and initramfs, and the image's env,
// workdir and user kept as the template's defaults (its entrypoint and cmd
// are recorded in the manifest's inputs). source names the image in the
// description.
func ImportImage(ctx context.Context, cat Installer, base *tartarus.Image, tenant, name, source string, r io.Reader) (*tartarus.Image, error) {
	if !tartarus.ValidName(name) || strings.HasPrefix(name, ".") || strings.HasPrefix(name, CachePrefix) {
		return nil, tartarus.Errorf(tartarus.ErrInvalid, "template name %q", name)
	}
	return importImage(ctx, cat, base, tenant, name, source, r)
}

// importImage is ImportImage for any name, a build's cache step too.
func importImage(ctx context.Context, cat Installer, base *tartarus.Image, tenant, name, source string, r io.Reader) (*tartarus.Image, error) {
	stage, err := cat.StageTemplate(name)
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(stage)
	tree, scratch := filepath.Join(stage, "tree"), filepath.Join(stage, "scratch")
	for _, d := range []string{tree, scratch} {
		if err := os.Mkdir(d, 0o755); err != nil {
			return nil, err
		}
	}
	cfg, digest, err := UnpackImage(ctx, r, tree, scratch)
	if err != nil {
		return nil, fmt.Errorf("import %s: %w", name, err)
	}
	if err := os.RemoveAll(scratch); err != nil {
		return nil, err
	}
	for _, d := range []string{"proc", "sys", "dev", "tmp", "run"} {
		dr, err := kampe.MkdirInRoot(tree, d)
		if err != nil {
			return nil, fmt.Errorf("import %s: %w", name, err)
		}
		dr.Close()
	}
	if err := kampe.MakeExt4(ctx, tree, filepath.Join(stage, "rootfs.ext4"), 256); err != nil {
		return nil, fmt.Errorf("import %s: %w", name, err)
	}
	if err := os.RemoveAll(tree); err != nil {
		return nil, err
	}
	env := map[string]string{}
	for _, kv := range cfg.Env {
		if k, v, ok := strings.Cut(kv, "="); ok && k != "" {
			env[k] = v
		}
	}
	img := &tartarus.Image{Name: name, Tenant: tenant, Digest: digest, Env: env, WorkDir: cfg.WorkingDir, User: cfg.User,
		Description: "imported from image " + source}
	inputs := map[string]string{"image": source, "manifest": digest, "entrypoint": strings.Join(cfg.Entrypoint, " "), "cmd": strings.Join(cfg.Cmd, " ")}
	return cat.AddTemplate(ctx, stage, img, base, inputs)
}
