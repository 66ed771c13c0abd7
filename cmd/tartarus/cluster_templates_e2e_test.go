package main

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/tartarus-sandbox/tartarus/pkg/erebus/erebusopen"
	"github.com/tartarus-sandbox/tartarus/pkg/erebus/erebustest"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

// linkImages gives an agent's data directory dir an images directory of
// its own: the cache's kernel linked to, and the cache's built templates
// hard-linked in (only read), so that templates the agent adds stay its
// own and out of the cache.
func linkImages(t testing.TB, cache, dir string) {
	t.Helper()
	images := filepath.Join(dir, "images")
	if err := os.MkdirAll(filepath.Join(images, "templates"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(filepath.Join(cache, "images", "kernel"), filepath.Join(images, "kernel")); err != nil {
		t.Fatal(err)
	}
	ents, err := os.ReadDir(filepath.Join(cache, "images", "templates"))
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		if !e.IsDir() || strings.HasPrefix(e.Name(), ".") {
			continue
		}
		src, dst := filepath.Join(cache, "images", "templates", e.Name()), filepath.Join(images, "templates", e.Name())
		if err := os.MkdirAll(dst, 0o755); err != nil {
			t.Fatal(err)
		}
		for _, f := range []string{"vmlinux", "initrd.img", "rootfs.ext4", "manifest.json"} {
			if err := os.Link(filepath.Join(src, f), filepath.Join(dst, f)); err != nil {
				if err := os.Symlink(filepath.Join(src, f), filepath.Join(dst, f)); err != nil {
					t.Fatal(err)
				}
			}
		}
	}
}

// TestClusterTemplatesEndToEnd: on a cluster of two replicas and two
// agents (real microVMs, each agent with a catalog of its own) sharing a
// SeaweedFS snapshot store, a sandbox saved as a template on node-a
// through replica 1 is listed once, with its tag, at replica 2, and a
// create there placed on node-b (which never had it) fetches it and finds
// the saved files; a delete is refused while a sandbox uses the template
// and, once they end, removes it from the list, the nodes and the shared
// store; and a template whose uploaded object was damaged is refused on
// fetch, with nothing installed on the fetching node.
func TestClusterTemplatesEndToEnd(t *testing.T) {
	if testing.Short() {
		t.Skip("boots VMs")
	}
	e2eBinary(t) // skips without root, QEMU or templates
	s3 := erebustest.StartSeaweedFS(t)
	spec := "s3://snapshots/cluster?endpoint=" + s3.Endpoint + "&tls=false"
	creds := []string{"AWS_ACCESS_KEY_ID=" + s3.AccessKey, "AWS_SECRET_ACCESS_KEY=" + s3.SecretKey}
	c := newClusterWith(t, clusterOpts{replicas: 2, agents: 2, agentEnv: creds, ownImages: true,
		agentArgs: []string{"--snapshots", spec}})
	ctx, cl := context.Background(), c.cl
	waitNodes(t, cl[0], map[string]string{"node-a": "up", "node-b": "up"})

	on := func(node string) map[string]string { return map[string]string{"node": node} }
	src, err := cl[0].CreateSandbox(ctx, &tartarus.CreateRequest{Template: "base", TimeoutS: 1200, NodeLabels: on("node-a")})
	if err != nil {
		t.Fatalf("create on node-a: %v", err)
	}
	execOut(t, cl[0], src.ID, "sh", "-c", "mkdir -p /srv && echo saved-file > /srv/saved.txt")

	img, err := cl[0].SaveTemplate(ctx, src.ID, "mine")
	if err != nil {
		t.Fatalf("save on a replica: %v", err)
	}
	if !strings.HasPrefix(img.Name, "mine..") || !slices.Equal(img.Tags, []string{"mine:latest"}) || img.Tenant == "" {
		t.Fatalf("saved template: %+v", img)
	}
	version := img.Name

	t.Run("ListedOnceAtTheOtherReplica", func(t *testing.T) {
		all, err := cl[1].Templates(ctx)
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for _, got := range all {
			if got.Name == version {
				n++
				if !slices.Equal(got.Tags, []string{"mine:latest"}) || got.Digest != img.Digest {
					t.Errorf("listed: %+v", got)
				}
			}
		}
		if n != 1 {
			t.Fatalf("version %s listed %d times: %+v", version, n, all)
		}
	})

	var fetched *tartarus.Sandbox
	t.Run("CreateOnTheOtherNode", func(t *testing.T) {
		sb, err := cl[1].CreateSandbox(ctx, &tartarus.CreateRequest{Template: "mine", TimeoutS: 1200, NodeLabels: on("node-b")})
		if err != nil {
			t.Fatalf("create from mine on node-b: %v", err)
		}
		fetched = sb
		if sb.Node != "node-b" || sb.Template != version {
			t.Fatalf("created %s on %s from %s; want node-b, %s", sb.ID, sb.Node, sb.Template, version)
		}
		if out := execOut(t, cl[1], sb.ID, "cat", "/srv/saved.txt"); out != "saved-file\n" {
			t.Fatalf("saved file on node-b: %q", out)
		}
	})

	t.Run("DeleteRefusedWhileUsed", func(t *testing.T) {
		err := cl[1].DeleteTemplate(ctx, "mine")
		if !errors.Is(err, tartarus.ErrFailedPrecondition) {
			t.Fatalf("delete while used: %v; want failed_precondition", err)
		}
	})

	t.Run("DamagedUploadRefused", func(t *testing.T) {
		img2, err := cl[0].SaveTemplate(ctx, src.ID, "second")
		if err != nil {
			t.Fatalf("save: %v", err)
		}
		for _, kv := range creds {
			k, v, _ := strings.Cut(kv, "=")
			t.Setenv(k, v)
		}
		st, err := erebusopen.Open(ctx, spec, slog.New(slog.DiscardHandler))
		if err != nil {
			t.Fatal(err)
		}
		key := "templates/" + img2.Tenant + "/" + img2.Name + "/rootfs.ext4.zst"
		if _, err := st.Stat(ctx, key); err != nil {
			t.Fatalf("the upload of %s: %v", img2.Name, err)
		}
		if _, err := st.Put(ctx, key, bytes.NewReader([]byte("not the template that was uploaded"))); err != nil {
			t.Fatal(err)
		}
		_, err = cl[1].CreateSandbox(ctx, &tartarus.CreateRequest{Template: "second", TimeoutS: 600, NodeLabels: on("node-b")})
		if err == nil || !strings.Contains(err.Error(), "refused") {
			t.Fatalf("create from a damaged upload on node-b: %v; want it refused", err)
		}
		if _, err := os.Stat(filepath.Join(c.root, "node-b", "images", "templates", img2.Name)); !os.IsNotExist(err) {
			t.Fatalf("node-b installed the damaged template: %v", err)
		}
		if err := cl[0].DeleteTemplate(ctx, "second"); err != nil {
			t.Fatalf("delete second: %v", err)
		}
		if _, err := st.Stat(ctx, key); !errors.Is(err, tartarus.ErrNotFound) {
			t.Fatalf("shared copy of a deleted template: %v; want not found", err)
		}
	})

	t.Run("DeleteOnceUnused", func(t *testing.T) {
		for _, sb := range []*tartarus.Sandbox{src, fetched} {
			if sb == nil {
				continue
			}
			if _, err := cl[0].DeleteSandbox(ctx, sb.ID); err != nil {
				t.Fatal(err)
			}
		}
		if err := cl[0].DeleteTemplate(ctx, "mine"); err != nil {
			t.Fatalf("delete mine: %v", err)
		}
		all, err := cl[1].Templates(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for _, got := range all {
			if got.Name == version {
				t.Fatalf("deleted template still listed: %+v", got)
			}
		}
		for _, node := range []string{"node-a", "node-b"} {
			if _, err := os.Stat(filepath.Join(c.root, node, "images", "templates", version)); !os.IsNotExist(err) {
				t.Errorf("%s still has %s: %v", node, version, err)
			}
		}
	})
}
