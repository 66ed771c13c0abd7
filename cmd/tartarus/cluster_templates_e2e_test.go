package main

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/tartarus-sandbox/tartarus/pkg/client"
	"github.com/tartarus-sandbox/tartarus/pkg/erebus/erebusopen"
	"github.com/tartarus-sandbox/tartarus/pkg/erebus/erebustest"
	"github.com/tartarus-sandbox/tartarus/pkg/runtimes/container/containertest"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus/api"
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
// the saved files and the saved process running on (the memory snapshot
// travels too); a delete is refused while a sandbox uses the template
// and, once they end, removes it from the list, the nodes and the shared
// store; a template whose uploaded object was damaged is refused on
// fetch, with nothing installed on the fetching node; and an image import
// and Dockerfile builds (FROM a template, FROM an image tarball in the
// context) at a replica run on an agent and yield sandboxes with their env
// and files (the plain build's on both nodes); a build FROM a template only the other (drained)
// node has fetches it first.
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
	execOut(t, cl[0], src.ID, "sh", "-c", "mkdir -p /srv && echo saved-file > /srv/saved.txt && "+
		"setsid sh -c 'i=0; while :; do i=$((i+1)); echo $i > /tmp/counter; sleep 0.1; done' </dev/null >/dev/null 2>&1 &")
	counter := func(at *client.Client, id string) int {
		t.Helper()
		var n int
		for range 3 {
			if _, err := fmt.Sscan(execOut(t, at, id, "sh", "-c", "cat /tmp/counter 2>/dev/null || echo 0"), &n); err == nil {
				return n
			}
		}
		t.Fatalf("cannot read the counter of %s", id)
		return 0
	}
	for counter(cl[0], src.ID) < 5 {
		time.Sleep(200 * time.Millisecond)
	}

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
		began := time.Now()
		sb, err := cl[1].CreateSandbox(ctx, &tartarus.CreateRequest{Template: "mine", TimeoutS: 1200, NodeLabels: on("node-b")})
		if err != nil {
			t.Fatalf("create from mine on node-b: %v", err)
		}
		fetching := time.Since(began)
		fetched = sb
		if sb.Node != "node-b" || sb.Template != version {
			t.Fatalf("created %s on %s from %s; want node-b, %s", sb.ID, sb.Node, sb.Template, version)
		}
		if out := execOut(t, cl[1], sb.ID, "cat", "/srv/saved.txt"); out != "saved-file\n" {
			t.Fatalf("saved file on node-b: %q", out)
		}
		// The saved memory came along: the counter goes on from where it
		// was (a boot of the disk alone would find no process running).
		first := counter(cl[1], sb.ID)
		time.Sleep(time.Second)
		if next := counter(cl[1], sb.ID); first < 5 || next <= first {
			t.Fatalf("counter on node-b: %d then %d; want the saved process running on", first, next)
		}
		// Figures for docs/BENCHMARKS.md (TARTARUS_TEMPLATE_FIGURES=N: N
		// rounds): the create that fetched, then creates on each node that
		// has the template (create → first exec).
		rounds, _ := strconv.Atoi(os.Getenv("TARTARUS_TEMPLATE_FIGURES"))
		if rounds <= 0 {
			return
		}
		took := map[string][]time.Duration{}
		for range rounds {
			for _, node := range []string{"node-a", "node-b"} {
				began := time.Now()
				sb, err := cl[1].CreateSandbox(ctx, &tartarus.CreateRequest{Template: "mine", TimeoutS: 600, NodeLabels: on(node)})
				if err != nil {
					t.Fatal(err)
				}
				execOut(t, cl[1], sb.ID, "true")
				took[node] = append(took[node], time.Since(began))
				if _, err := cl[1].DeleteSandbox(ctx, sb.ID); err != nil {
					t.Fatal(err)
				}
			}
		}
		t.Logf("figures: create fetching the template on node-b %s; create+exec on node-a (made it) %v, on node-b (fetched) %v",
			fetching.Round(time.Millisecond), took["node-a"], took["node-b"])
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

	t.Run("ImportAtAReplica", func(t *testing.T) {
		image := busyboxImage(t, "GREETING=hello-imported")
		f, err := os.Open(image)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		img, err := cl[1].ImportImage(ctx, "imported", "busybox.tar", f)
		if err != nil {
			t.Fatalf("import at replica 2: %v", err)
		}
		if !slices.Equal(img.Tags, []string{"imported:latest"}) {
			t.Fatalf("imported: %+v", img)
		}
		// One node: BuildAtAReplica shows both.
		for _, node := range []string{"node-a"} {
			sb, err := cl[0].CreateSandbox(ctx, &tartarus.CreateRequest{Template: "imported", TimeoutS: 600, NodeLabels: on(node)})
			if err != nil {
				t.Fatalf("create from the imported image on %s: %v", node, err)
			}
			if out := execOut(t, cl[0], sb.ID, "sh", "-c", "echo $GREETING"); out != "hello-imported\n" {
				t.Errorf("env on %s: %q", node, out)
			}
			if _, err := cl[0].DeleteSandbox(ctx, sb.ID); err != nil {
				t.Fatal(err)
			}
		}
	})

	t.Run("BuildAtAReplica", func(t *testing.T) {
		var ctxTar bytes.Buffer
		tw := tar.NewWriter(&ctxTar)
		for name, body := range map[string]string{
			"Dockerfile": "FROM base\nCOPY hello.txt /srv/hello.txt\nENV GREETING=built-here\n",
			"hello.txt":  "hello from the build context\n",
		} {
			if err := tw.WriteHeader(&tar.Header{Name: name, Mode: 0o644, Size: int64(len(body)), Typeflag: tar.TypeReg}); err != nil {
				t.Fatal(err)
			}
			tw.Write([]byte(body))
		}
		tw.Close()
		b, err := cl[0].BuildTemplate(ctx, url.Values{"name": {"built"}}, &ctxTar)
		if err != nil {
			t.Fatalf("build at replica 1: %v", err)
		}
		end, err := cl[0].BuildLog(ctx, b.Name, b.ID, func(e api.TemplateBuildEvent) { t.Logf("build: %s %s%s", e.Type, e.Text, e.Data) })
		if err != nil || end.Status != api.TemplateBuildSucceeded {
			t.Fatalf("build: %+v, %v", end, err)
		}
		for _, node := range []string{"node-a", "node-b"} {
			sb, err := cl[1].CreateSandbox(ctx, &tartarus.CreateRequest{Template: "built", TimeoutS: 600, NodeLabels: on(node)})
			if err != nil {
				t.Fatalf("create from the built template on %s: %v", node, err)
			}
			if out := execOut(t, cl[1], sb.ID, "sh", "-c", "echo $GREETING; cat /srv/hello.txt"); out != "built-here\nhello from the build context\n" {
				t.Errorf("built template on %s: %q", node, out)
			}
			if _, err := cl[1].DeleteSandbox(ctx, sb.ID); err != nil {
				t.Fatal(err)
			}
		}
	})

	t.Run("BuildFromImageTarball", func(t *testing.T) {
		image, err := os.ReadFile(busyboxImage(t, "GREETING=from-the-image"))
		if err != nil {
			t.Fatal(err)
		}
		var ctxTar bytes.Buffer
		tw := tar.NewWriter(&ctxTar)
		for name, body := range map[string][]byte{
			"Dockerfile":  []byte("FROM docker-archive:busybox.tar\nRUN echo made-in-the-vm > /made.txt\n"),
			"busybox.tar": image,
		} {
			if err := tw.WriteHeader(&tar.Header{Name: name, Mode: 0o644, Size: int64(len(body)), Typeflag: tar.TypeReg}); err != nil {
				t.Fatal(err)
			}
			tw.Write(body)
		}
		tw.Close()
		b, err := cl[1].BuildTemplate(ctx, url.Values{"name": {"from-image"}}, &ctxTar)
		if err != nil {
			t.Fatalf("build at replica 2: %v", err)
		}
		end, err := cl[1].BuildLog(ctx, b.Name, b.ID, func(e api.TemplateBuildEvent) { t.Logf("build: %s %s%s", e.Type, e.Text, e.Data) })
		if err != nil || end.Status != api.TemplateBuildSucceeded {
			t.Fatalf("build: %+v, %v", end, err)
		}
		// One node: BuildAtAReplica shows both.
		for _, node := range []string{"node-b"} {
			sb, err := cl[0].CreateSandbox(ctx, &tartarus.CreateRequest{Template: "from-image", TimeoutS: 600, NodeLabels: on(node)})
			if err != nil {
				t.Fatalf("create from the template built FROM an image on %s: %v", node, err)
			}
			if out := execOut(t, cl[0], sb.ID, "sh", "-c", "echo $GREETING; cat /made.txt; busybox | head -1 | cut -d' ' -f1"); out != "from-the-image\nmade-in-the-vm\nBusyBox\n" {
				t.Errorf("template built FROM an image, on %s: %q", node, out)
			}
			if _, err := cl[0].DeleteSandbox(ctx, sb.ID); err != nil {
				t.Fatal(err)
			}
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

	t.Run("BuildFromATemplateOnTheOtherNode", func(t *testing.T) {
		sb, err := cl[0].CreateSandbox(ctx, &tartarus.CreateRequest{Template: "base", TimeoutS: 600, NodeLabels: on("node-a")})
		if err != nil {
			t.Fatal(err)
		}
		execOut(t, cl[0], sb.ID, "sh", "-c", "mkdir -p /srv && echo from-the-layer > /srv/layer.txt")
		if _, err := cl[0].SaveTemplate(ctx, sb.ID, "layer"); err != nil {
			t.Fatalf("save: %v", err)
		}
		if _, err := cl[0].DeleteSandbox(ctx, sb.ID); err != nil {
			t.Fatal(err)
		}
		// Only node-a has the template; with node-a drained the build
		// runs on node-b, which must fetch it first.
		if _, err := cl[0].DrainNode(ctx, "node-a", tartarus.DrainOptions{}); err != nil {
			t.Fatal(err)
		}
		defer cl[0].UndrainNode(ctx, "node-a")
		var ctxTar bytes.Buffer
		tw := tar.NewWriter(&ctxTar)
		df := "FROM layer\nRUN cp /srv/layer.txt /srv/copied.txt\n"
		tw.WriteHeader(&tar.Header{Name: "Dockerfile", Mode: 0o644, Size: int64(len(df)), Typeflag: tar.TypeReg})
		tw.Write([]byte(df))
		tw.Close()
		b, err := cl[1].BuildTemplate(ctx, url.Values{"name": {"on-layer"}}, &ctxTar)
		if err != nil {
			t.Fatalf("build FROM layer at replica 2: %v", err)
		}
		end, err := cl[1].BuildLog(ctx, b.Name, b.ID, func(e api.TemplateBuildEvent) { t.Logf("build: %s %s%s", e.Type, e.Text, e.Data) })
		if err != nil || end.Status != api.TemplateBuildSucceeded {
			t.Fatalf("build: %+v, %v", end, err)
		}
		got, err := cl[0].CreateSandbox(ctx, &tartarus.CreateRequest{Template: "on-layer", TimeoutS: 600})
		if err != nil {
			t.Fatal(err)
		}
		if out := execOut(t, cl[0], got.ID, "cat", "/srv/copied.txt"); got.Node != "node-b" || out != "from-the-layer\n" {
			t.Fatalf("sandbox of on-layer on %s: %q", got.Node, out)
		}
		if _, err := cl[0].DeleteSandbox(ctx, got.ID); err != nil {
			t.Fatal(err)
		}
	})
}

// busyboxImage writes a `docker save` tarball of a one-layer busybox
// image with env, made here (no registry is reachable), and returns its
// path.
func busyboxImage(t testing.TB, env ...string) string {
	t.Helper()
	work := t.TempDir()
	tree := filepath.Join(work, "rootfs")
	if err := containertest.BuildRootFS(tree); err != nil {
		t.Skipf("no busybox for a test image: %v", err)
	}
	image := filepath.Join(work, "image")
	if err := os.Mkdir(image, 0o755); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("tar", "-C", tree, "-cf", filepath.Join(image, "layer.tar"), ".").CombinedOutput(); err != nil {
		t.Fatalf("tar: %v %s", err, out)
	}
	config, _ := json.Marshal(map[string]any{"architecture": "amd64", "os": "linux",
		"config": map[string]any{"Env": env}, "rootfs": map[string]any{"type": "layers"}})
	manifest, _ := json.Marshal([]map[string]any{{"Config": "config.json", "Layers": []string{"layer.tar"}}})
	for name, b := range map[string][]byte{"config.json": config, "manifest.json": manifest} {
		if err := os.WriteFile(filepath.Join(image, name), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	out := filepath.Join(work, "image.tar")
	if b, err := exec.Command("tar", "-C", image, "-cf", out, "manifest.json", "config.json", "layer.tar").CombinedOutput(); err != nil {
		t.Fatalf("tar: %v %s", err, b)
	}
	return out
}
