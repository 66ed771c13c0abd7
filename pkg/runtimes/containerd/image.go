package containerd

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io"
	"os"

	"github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/errdefs"
	digest "github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/tartarus-sandbox/tartarus/pkg/runtimes/container"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

// ensureImage imports and unpacks the template unless it is there.
func (r *Runtime) ensureImage(ctx context.Context, img *tartarus.Image) (client.Image, error) {
	ref, err := container.ImageRef(img)
	if err != nil {
		return nil, err
	}
	r.importMu.Lock()
	defer r.importMu.Unlock()
	if im, err := r.cli.GetImage(ctx, ref); err == nil {
		if ok, _ := im.IsUnpacked(ctx, snapshotter); ok {
			return im, nil
		}
		return im, im.Unpack(ctx, snapshotter)
	} else if !errdefs.IsNotFound(err) {
		return nil, fmt.Errorf("image %s: %w", ref, err)
	}
	dir, err := container.UnpackImage(ctx, img, r.opts.CacheDir)
	if err != nil {
		return nil, err
	}
	layer, err := os.CreateTemp(r.opts.CacheDir, ".layer-*.tar")
	if err != nil {
		return nil, err
	}
	defer os.Remove(layer.Name())
	defer layer.Close()
	h := sha256.New()
	if err := container.WriteTar(ctx, dir, io.MultiWriter(layer, h)); err != nil {
		return nil, fmt.Errorf("import template %s: %w", img.Name, err)
	}
	size, err := layer.Seek(0, io.SeekCurrent)
	if err != nil {
		return nil, err
	}
	if _, err := layer.Seek(0, io.SeekStart); err != nil {
		return nil, err
	}
	pr, pw := io.Pipe()
	go func() {
		pw.CloseWithError(writeOCIArchive(pw, ref, digest.NewDigestFromBytes(digest.SHA256, h.Sum(nil)), size, layer))
	}()
	imgs, err := r.cli.Import(ctx, pr)
	pr.CloseWithError(err)
	if err != nil {
		return nil, fmt.Errorf("import template %s: %w", img.Name, err)
	}
	if len(imgs) == 0 {
		return nil, fmt.Errorf("import template %s: no image in the archive", img.Name)
	}
	im := client.NewImage(r.cli, imgs[0])
	if err := im.Unpack(ctx, snapshotter); err != nil {
		return nil, fmt.Errorf("unpack template %s: %w", img.Name, err)
	}
	r.Log.Info("imported template", "template", img.Name, "ref", ref)
	return im, nil
}

// writeOCIArchive writes an OCI image layout as a tar stream: one
// uncompressed layer (its digest and size known), its config and manifest,
// and an index naming the image ref.
func writeOCIArchive(w io.Writer, ref string, layerDigest digest.Digest, layerSize int64, layer io.Reader) error {
	cfg := ocispec.Image{
		Platform: ocispec.Platform{Architecture: "amd64", OS: "linux"},
		Config:   ocispec.ImageConfig{Env: []string{container.DefaultPath}, Cmd: container.InitCommand, WorkingDir: "/"},
		RootFS:   ocispec.RootFS{Type: "layers", DiffIDs: []digest.Digest{layerDigest}},
	}
	cfgJSON, err := json.Marshal(cfg)
	if err != nil {
		return err
	}
	cfgDesc := ocispec.Descriptor{MediaType: ocispec.MediaTypeImageConfig, Digest: digest.FromBytes(cfgJSON), Size: int64(len(cfgJSON))}
	man := ocispec.Manifest{MediaType: ocispec.MediaTypeImageManifest, Config: cfgDesc,
		Layers: []ocispec.Descriptor{{MediaType: ocispec.MediaTypeImageLayer, Digest: layerDigest, Size: layerSize}}}
	man.SchemaVersion = 2
	manJSON, err := json.Marshal(man)
	if err != nil {
		return err
	}
	idx := ocispec.Index{MediaType: ocispec.MediaTypeImageIndex, Manifests: []ocispec.Descriptor{{
		MediaType: ocispec.MediaTypeImageManifest, Digest: digest.FromBytes(manJSON), Size: int64(len(manJSON)),
		Annotations: map[string]string{images.AnnotationImageName: ref, ocispec.AnnotationRefName: ref},
		Platform:    &ocispec.Platform{Architecture: "amd64", OS: "linux"},
	}}}
	idx.SchemaVersion = 2
	idxJSON, err := json.Marshal(idx)
	if err != nil {
		return err
	}
	tw := tar.NewWriter(w)
	add := func(name string, size int64, r io.Reader) error {
		if err := tw.WriteHeader(&tar.Header{Name: name, Mode: 0o644, Size: size, Typeflag: tar.TypeReg}); err != nil {
			return err
		}
		_, err := io.Copy(tw, r)
		return err
	}
	blob := func(d digest.Digest) string { return "blobs/sha256/" + d.Encoded() }
	if err := tw.WriteHeader(&tar.Header{Name: "blobs/sha256/", Mode: 0o755, Typeflag: tar.TypeDir}); err != nil {
		return err
	}
	layout := []byte(`{"imageLayoutVersion":"1.0.0"}`)
	for _, f := range []struct {
		name string
		b    []byte
	}{{"oci-layout", layout}, {"index.json", idxJSON}, {blob(cfgDesc.Digest), cfgJSON}, {blob(digest.FromBytes(manJSON)), manJSON}} {
		if err := add(f.name, int64(len(f.b)), bytes.NewReader(f.b)); err != nil {
			return err
		}
	}
	if err := add(blob(layerDigest), layerSize, layer); err != nil {
		return err
	}
	return tw.Close()
}

// ImportTemplate imports img as an image of the runtime's namespace (once)
// and returns its name, so ordinary containers can run the template.
func (r *Runtime) ImportTemplate(ctx context.Context, img *tartarus.Image) (string, error) {
	im, err := r.ensureImage(r.ns(ctx), img)
	if err != nil {
		return "", err
	}
	return im.Name(), nil
}
