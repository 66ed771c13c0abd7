package hecatoncheir

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/klauspost/compress/zstd"

	"github.com/tartarus-sandbox/tartarus/pkg/erebus"
	"github.com/tartarus-sandbox/tartarus/pkg/hecatoncheir/wire"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

// Tenant templates on a cluster: a version made on one node (saved,
// built, imported) is uploaded to the snapshot store the nodes share
// (Config.Snapshots with a SnapshotPrefix: the agent runs beside others)
// under templates/TENANT/VERSION/, outside any node's key space, and the
// cluster records it; an agent asked to create from a version it lacks
// fetches it, checks the bytes against the checksum the cluster recorded,
// and installs it in its catalog under the same name and digest.

// sharedTemplateKey is the shared store's key of tenant's version's root
// filesystem.
func sharedTemplateKey(tenant, version string) string {
	return "templates/" + tenant + "/" + version + "/rootfs.ext4.zst"
}

// sharing reports whether this agent keeps snapshots in a store other
// nodes share.
func (a *Agent) sharing() bool {
	return a.cfg.Snapshots != nil && a.cfg.SnapshotPrefix != ""
}

// ShareTemplate uploads tenant template version to the shared store and
// describes it for the cluster's record. It is refused for a built-in
// template and when this agent shares no store.
func (a *Agent) ShareTemplate(ctx context.Context, version string) (*wire.SharedTemplate, error) {
	if !a.sharing() {
		return nil, tartarus.Errorf(tartarus.ErrNotImplemented, "share template %s: this agent has no shared snapshot store (--snapshots s3://…)", version)
	}
	img, err := a.cfg.Images.Get(ctx, version)
	if err != nil {
		return nil, err
	}
	if img.Tenant == "" {
		return nil, tartarus.Errorf(tartarus.ErrFailedPrecondition, "template %s is built in; every node has it", version)
	}
	if img.Name != version {
		return nil, tartarus.Errorf(tartarus.ErrInvalid, "share template %s: name a version (%s), not a tag", version, img.Name)
	}
	unlock := a.lock("template-share/" + version)
	defer unlock()
	// The upload outlives a cancelled request, so that the store does not
	// keep half of it.
	ctx = context.WithoutCancel(ctx)
	key := sharedTemplateKey(img.Tenant, img.Name)
	f, err := os.Open(img.RootFS)
	if err != nil {
		return nil, fmt.Errorf("share template %s: %w", version, err)
	}
	defer f.Close()
	rootfs, err := a.upload(ctx, key, func(w io.Writer) error {
		_, err := io.Copy(w, f)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("share template %s: upload: %w", version, err)
	}
	out := &wire.SharedTemplate{Image: *img, Parent: templateParent(img), Node: a.cfg.Node, RootFS: rootfs}
	// Paths are this node's own.
	out.Image.Kernel, out.Image.Initrd, out.Image.RootFS, out.Image.Tags = "", "", "", nil
	if out.Snapshots, err = a.shareSnapshots(ctx, img); err != nil {
		return nil, fmt.Errorf("share template %s: %w", version, err)
	}
	a.log.Info("template shared", "template", version, "tenant", img.Tenant, "key", key, "bytes", rootfs.Size, "snapshots", len(out.Snapshots))
	return out, nil
}

// templateParent is the template whose kernel and initramfs img boots
// with, as its manifest records it ("base" if it does not say).
func templateParent(img *tartarus.Image) string {
	var m struct {
		Inputs map[string]string `json:"inputs"`
	}
	b, err := os.ReadFile(filepath.Join(filepath.Dir(img.RootFS), "manifest.json"))
	if err == nil && json.Unmarshal(b, &m) == nil && m.Inputs["parent"] != "" {
		return m.Inputs["parent"]
	}
	return "base"
}

// maxSharedRootFS bounds the root filesystem a fetch writes: the store
// is another node's word, and a stream that inflates without end must not
// fill this one's disk.
const maxSharedRootFS = 64 << 30

// FetchTemplate installs template version st.Image.Name from the shared
// store unless this node has it already (with the same digest). The
// stored bytes must match st.RootFS.Checksum, the checksum the cluster
// recorded when it was uploaded: a damaged or replaced object is refused
// (ErrCorrupt) and nothing is installed.
func (a *Agent) FetchTemplate(ctx context.Context, st *wire.SharedTemplate) error {
	version := st.Image.Name
	if have, err := a.cfg.Images.Get(ctx, version); err == nil {
		if have.Digest != st.Image.Digest || have.Tenant != st.Image.Tenant {
			return tartarus.Errorf(tartarus.ErrFailedPrecondition, "template %s here is another template (digest %.19s, want %.19s)", version, have.Digest, st.Image.Digest)
		}
		return nil
	} else if !errors.Is(err, tartarus.ErrNotFound) {
		return err
	}
	if !a.sharing() {
		return tartarus.Errorf(tartarus.ErrNotFound, "template %s: not on this node, which has no shared snapshot store to fetch it from", version)
	}
	if st.RootFS.Key != sharedTemplateKey(st.Image.Tenant, version) {
		return tartarus.Errorf(tartarus.ErrInvalid, "template %s: stored under %q, not its own key", version, st.RootFS.Key)
	}
	adder, ok := a.cfg.Images.(TemplateAdder)
	if !ok {
		return tartarus.Errorf(tartarus.ErrNotImplemented, "fetch template %s: this node's template catalog takes no new templates", version)
	}
	unlock := a.lock("template-fetch/" + version)
	defer unlock()
	if _, err := a.cfg.Images.Get(ctx, version); err == nil {
		return nil // fetched meanwhile
	}
	ctx = context.WithoutCancel(ctx)
	base, err := a.cfg.Images.Get(ctx, st.Parent)
	if err != nil {
		if base, err = a.cfg.Images.Get(ctx, "base"); err != nil {
			return fmt.Errorf("fetch template %s: its kernel (template %s, or base): %w", version, st.Parent, err)
		}
	}
	start := a.cfg.Clock.Now()
	stage, err := adder.StageTemplate(version)
	if err != nil {
		return err
	}
	defer os.RemoveAll(stage) // gone already once installed
	if err := a.downloadFile(ctx, st.RootFS, filepath.Join(stage, "rootfs.ext4")); err != nil {
		return fmt.Errorf("fetch template %s: %w", version, err)
	}
	snaps, err := a.fetchSnapshots(ctx, st)
	defer func() {
		for _, f := range snaps {
			os.RemoveAll(f.dir)
		}
	}()
	if err != nil {
		return fmt.Errorf("fetch template %s: %w", version, err)
	}
	img := st.Image
	img.Kernel, img.Initrd, img.RootFS, img.Tags = "", "", "", nil
	made, err := adder.AddTemplate(ctx, stage, &img, base, map[string]string{"fetched_from": st.Node,
		"parent": st.Parent, "object": st.RootFS.Key, "checksum": st.RootFS.Checksum})
	if err != nil {
		return fmt.Errorf("fetch template %s: %w", version, err)
	}
	a.installSnapshots(ctx, made, snaps)
	a.log.Info("template fetched from the shared store", "template", version, "tenant", st.Image.Tenant,
		"from_node", st.Node, "bytes", st.RootFS.Size, "snapshots", len(snaps), "took", a.cfg.Clock.Now().Sub(start))
	return nil
}

// upload stores what write writes, zstd-compressed, as object key.
func (a *Agent) upload(ctx context.Context, key string, write func(io.Writer) error) (wire.SharedObject, error) {
	pr, pw := io.Pipe()
	go func() {
		zw, err := zstd.NewWriter(pw, zstd.WithEncoderLevel(zstd.SpeedFastest))
		if err == nil {
			err = write(zw)
			if cerr := zw.Close(); err == nil {
				err = cerr
			}
		}
		pw.CloseWithError(err)
	}()
	obj, err := a.cfg.Snapshots.Put(ctx, key, pr)
	pr.CloseWithError(errors.New("upload over"))
	if err != nil {
		return wire.SharedObject{}, err
	}
	return wire.SharedObject{Key: obj.Key, Size: obj.Size, Checksum: obj.Checksum}, nil
}

// download streams the zstd object o, decompressed and bounded, to read,
// checking the stored bytes against o's size and checksum (those recorded
// when it was uploaded). On error, whatever read wrote must be discarded.
func (a *Agent) download(ctx context.Context, o wire.SharedObject, read func(io.Reader) error) error {
	rc, obj, err := a.cfg.Snapshots.Get(ctx, o.Key)
	if err != nil {
		return err
	}
	defer rc.Close()
	if obj.Checksum != o.Checksum || obj.Size != o.Size {
		return corrupt("object %s is not the one uploaded: %s, %d bytes; recorded %s, %d bytes", o.Key, obj.Checksum, obj.Size, o.Checksum, o.Size)
	}
	h := sha256.New()
	zr, err := zstd.NewReader(io.TeeReader(io.LimitReader(rc, o.Size+1), h))
	if err != nil {
		return err
	}
	defer zr.Close()
	lr := &io.LimitedReader{R: zr, N: maxSharedRootFS + 1}
	err = read(lr)
	if err == nil && lr.N <= 0 {
		err = tartarus.Errorf(tartarus.ErrInvalid, "object %s inflates to more than %d bytes", o.Key, int64(maxSharedRootFS))
	}
	if err == nil {
		// Read to the end, so that the store's own check runs too.
		_, err = io.Copy(io.Discard, rc)
	}
	if err != nil {
		return fmt.Errorf("object %s: %w", o.Key, err)
	}
	if got := "sha256:" + hex.EncodeToString(h.Sum(nil)); got != o.Checksum {
		return corrupt("object %s: its bytes hash to %s, recorded %s", o.Key, got, o.Checksum)
	}
	return nil
}

// downloadFile is download into the new file dst, sparsely.
func (a *Agent) downloadFile(ctx context.Context, o wire.SharedObject, dst string) error {
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return err
	}
	err = a.download(ctx, o, func(r io.Reader) error {
		_, err := writeSparse(out, r)
		return err
	})
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	return err
}

// corrupt is the error of a shared object that is not what was uploaded:
// it is refused (failed_precondition on the wire) and matches
// erebus.ErrCorrupt.
func corrupt(format string, args ...any) error {
	return fmt.Errorf("%s: refused: %w: %w", fmt.Sprintf(format, args...), erebus.ErrCorrupt, tartarus.ErrFailedPrecondition)
}

// writeSparse copies r to f, seeking over blocks of zeros so that f keeps
// the holes of a sparse disk image, and returns the bytes copied.
func writeSparse(f *os.File, r io.Reader) (int64, error) {
	const block = 64 << 10
	buf := make([]byte, block)
	zero := make([]byte, block)
	var off int64
	for {
		n, err := io.ReadFull(r, buf)
		if n > 0 {
			if bytes.Equal(buf[:n], zero[:n]) {
				if _, serr := f.Seek(int64(n), io.SeekCurrent); serr != nil {
					return off, serr
				}
			} else if _, werr := f.Write(buf[:n]); werr != nil {
				return off, werr
			}
			off += int64(n)
		}
		if err == io.EOF || err == io.ErrUnexpectedEOF {
			return off, f.Truncate(off)
		}
		if err != nil {
			return off, err
		}
	}
}

// UnshareTemplate removes this node's copy of tenant's template version,
// unless a sandbox here uses it, and, when objects is set, its objects in
// the shared store (the cluster decides when no node needs them).
func (a *Agent) UnshareTemplate(ctx context.Context, tenant, version string, objects bool) error {
	img, err := a.cfg.Images.Get(ctx, version)
	switch {
	case err == nil && img.Name == version && img.Tenant == tenant:
		if n, err := a.templateUsers(ctx, version); err != nil {
			return err
		} else if n > 0 {
			return tartarus.Errorf(tartarus.ErrFailedPrecondition, "template %s is used by %d sandbox(es) on node %s", version, n, a.cfg.Node)
		}
		// The cluster's tags are the truth: this node's own tags of the
		// version (it made it) go with it.
		if err := a.untagAll(ctx, version); err != nil {
			return err
		}
		if err := a.DeleteTemplate(ctx, version); err != nil && !errors.Is(err, tartarus.ErrNotFound) {
			return err
		}
	case err == nil:
		return tartarus.Errorf(tartarus.ErrNotFound, "template %s", version)
	case !errors.Is(err, tartarus.ErrNotFound):
		return err
	}
	if objects && a.sharing() {
		objs, err := a.cfg.Snapshots.List(ctx, "templates/"+tenant+"/"+version+"/")
		if err != nil {
			return fmt.Errorf("delete template %s: shared copy: %w", version, err)
		}
		for _, o := range objs {
			if err := a.cfg.Snapshots.Delete(ctx, o.Key); err != nil {
				return fmt.Errorf("delete template %s: shared copy: %w", version, err)
			}
		}
	}
	return nil
}

// untagAll removes this node's tags of version.
func (a *Agent) untagAll(ctx context.Context, version string) error {
	all, err := a.cfg.Images.List(ctx)
	if err != nil {
		return err
	}
	for _, img := range all {
		if img.Name != version || len(img.Tags) == 0 {
			continue
		}
		t, err := a.tagger()
		if err != nil {
			return err
		}
		for _, ref := range img.Tags {
			if _, err := t.UntagTemplate(ctx, ref); err != nil && !errors.Is(err, tartarus.ErrNotFound) {
				return fmt.Errorf("delete template %s: tag %s: %w", version, ref, err)
			}
		}
	}
	return nil
}
