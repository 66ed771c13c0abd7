package main

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/tartarus-sandbox/tartarus/pkg/runtimes/container/containertest"
)

// TestImageImportEndToEnd: against a real server, VMs and a private
// dockerd and containerd, an image of the local Docker daemon (docker
// import of a busybox tree, with an ENV), the same image as an OCI layout
// tarball and the same image in containerd each become a template whose
// sandbox boots as a microVM with the image's env, runs its commands in
// the image's WORKDIR as its USER (a user of the image's /etc/passwd,
// with that user's groups and HOME) unless the exec names a user and
// cwd, and refuses a user the image lacks; a tarball whose layer
// reaches for a host file through an absolute link is refused and the host
// file is unchanged.
func TestImageImportEndToEnd(t *testing.T) {
	if testing.Short() {
		t.Skip("boots VMs")
	}
	containertest.Require(t, "dockerd", "docker", "mke2fs")
	e2eBinary(t)
	host := containertest.Dockerd(t)
	tree := filepath.Join(t.TempDir(), "rootfs")
	if err := containertest.BuildRootFS(tree); err != nil {
		t.Fatal(err)
	}
	// The image's USER: a user of its own, in a second group too.
	for name, line := range map[string]string{"etc/passwd": "app:x:1000:1000:app:/home/app:/bin/sh\n",
		"etc/group": "app:x:1000:\nstaff:x:50:app\n"} {
		f, err := os.OpenFile(filepath.Join(tree, name), os.O_APPEND|os.O_WRONLY, 0)
		if err != nil {
			t.Fatal(err)
		}
		f.WriteString(line)
		f.Close()
	}
	for _, d := range []string{"srv", "home/app"} {
		if err := os.MkdirAll(filepath.Join(tree, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	work := t.TempDir()
	rootTar := filepath.Join(work, "rootfs.tar")
	docker := func(args ...string) {
		t.Helper()
		if out, err := exec.Command("docker", append([]string{"-H", host}, args...)...).CombinedOutput(); err != nil {
			t.Fatalf("docker %v: %v\n%s", args, err, out)
		}
	}
	if out, err := exec.Command("tar", "-C", tree, "-cf", rootTar, ".").CombinedOutput(); err != nil {
		t.Fatalf("tar: %v %s", err, out)
	}
	docker("import", "--change", "ENV GREETING=hello-oci", "--change", "WORKDIR /srv", "--change", "USER app", rootTar, "tartarus-import-test:1")
	saved := filepath.Join(work, "saved.tar")
	docker("save", "-o", saved, "tartarus-import-test:1")
	// The same image as an OCI image layout.
	ociTar := filepath.Join(work, "oci.tar")
	dockerSaveToOCI(t, saved, ociTar)

	// The same image in a private containerd.
	ctrSock := containertest.Containerd(t)
	if out, err := exec.Command("ctr", "--address", ctrSock, "--namespace", "tartarus-test", "images", "import", saved).CombinedOutput(); err != nil {
		t.Fatalf("ctr images import: %v\n%s", err, out)
	}

	e := newTemplateE2E(t, []string{"base"})
	acme := strings.TrimSpace(e.cli(t, 0, "", "apikey", "create", "--tenant", "acme", "--role", "sandbox-user"))
	for _, c := range []struct {
		name string
		args []string
	}{
		{"from-docker", []string{"--docker", "tartarus-import-test:1", "--docker-host", host}},
		{"from-oci", []string{ociTar}},
		{"from-containerd", []string{"--containerd", "docker.io/library/tartarus-import-test:1",
			"--containerd-address", ctrSock, "--containerd-namespace", "tartarus-test"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			out := e.as(t, acme, append([]string{"template", "import", c.name}, c.args...)...)
			t.Log(strings.TrimSpace(out))
			id := strings.TrimSpace(e.as(t, acme, "sandbox", "create", "--template", c.name, "--timeout", "300"))
			got := e.as(t, acme, "exec", id, "--", "sh", "-c", `echo "$GREETING"; cat /etc/hostname >/dev/null && echo busybox-root`)
			if got != "hello-oci\nbusybox-root\n" {
				t.Errorf("exec in the imported template's sandbox: %q", got)
			}
			// The image's WORKDIR and USER, with the user's groups and HOME.
			got = e.as(t, acme, "exec", id, "--", "sh", "-c", `pwd; id -u; id -G; echo "$HOME"`)
			if got != "/srv\n1000\n1000 50\n/home/app\n" {
				t.Errorf("pwd, id -u, id -G, HOME by default: %q, want /srv, 1000, 1000 50, /home/app", got)
			}
			// An exec that names its user and cwd gets them.
			got = e.as(t, acme, "exec", id, "--user", "root", "--cwd", "/tmp", "--", "sh", "-c", `pwd; id -u; echo "$HOME"`)
			if got != "/tmp\n0\n/root\n" {
				t.Errorf("--user root --cwd /tmp: %q", got)
			}
			// A background process gets the same defaults.
			e.as(t, acme, "proc", "start", id, "--", "sh", "-c", `echo $(pwd) $(id -u) >/tmp/p.tmp && mv /tmp/p.tmp /tmp/p`)
			got = e.as(t, acme, "exec", id, "--", "sh", "-c", `i=0; while [ ! -s /tmp/p ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done; cat /tmp/p`)
			if got != "/srv 1000\n" {
				t.Errorf("background process: %q, want /srv 1000", got)
			}
			got = e.as(t, acme, "exec", id, "--user", "4242:50", "--", "sh", "-c", `id -u; id -g`)
			if got != "4242\n50\n" {
				t.Errorf("--user 4242:50: %q", got)
			}
			if code, out, errOut := e.runAs(t, acme, "exec", id, "--user", "nosuch", "--", "id"); code == 0 || !strings.Contains(errOut, "nosuch") {
				t.Errorf("--user nosuch: exit %d, stdout %q, stderr %q; want a refusal naming the user", code, out, errOut)
			}
			req, _ := http.NewRequest("POST", e.url+"/v1/sandboxes/"+id+"/exec", strings.NewReader(`{"cmd":["id","-u"],"user":"root"}`))
			req.Header.Set("Authorization", "Bearer "+acme)
			if resp, err := http.DefaultClient.Do(req); err != nil {
				t.Error(err)
			} else {
				body, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if resp.StatusCode != 200 || !strings.Contains(string(body), `"stdout":"0\n"`) {
					t.Errorf(`exec {"user":"root"}: %d %s`, resp.StatusCode, body)
				}
			}
			e.as(t, acme, "sandbox", "rm", id)
		})
	}

	// A Dockerfile build FROM the imported template runs its steps as the
	// image's USER (through su, the build's own commands being root's),
	// and the built template keeps the WORKDIR and USER.
	t.Run("BuildFrom", func(t *testing.T) {
		ctxDir := t.TempDir()
		df := filepath.Join(ctxDir, "Dockerfile")
		os.WriteFile(df, []byte("FROM from-docker\nRUN id -u > /tmp/built-as\n"), 0o644)
		if out, errOut, code := e.slowCLI(t, acme, "template", "build", "from-imported", "-f", df, ctxDir); code != 0 {
			t.Fatalf("build FROM the imported template: exit %d\n%s\n%s", code, out, errOut)
		}
		id := strings.TrimSpace(e.as(t, acme, "sandbox", "create", "--template", "from-imported", "--timeout", "300"))
		defer e.as(t, acme, "sandbox", "rm", id)
		if got := e.as(t, acme, "exec", id, "--", "sh", "-c", "cat /tmp/built-as; id -u; pwd"); got != "1000\n1000\n/srv\n" {
			t.Errorf("RUN's user, then exec's user and cwd: %q, want 1000, 1000, /srv", got)
		}
	})

	t.Run("HostileLayer", func(t *testing.T) {
		victimDir := t.TempDir()
		victim := filepath.Join(victimDir, "victim.txt")
		os.WriteFile(victim, []byte("original"), 0o644)
		var layer bytes.Buffer
		tw := tar.NewWriter(&layer)
		tw.WriteHeader(&tar.Header{Name: "evil", Typeflag: tar.TypeSymlink, Linkname: victimDir})
		tw.WriteHeader(&tar.Header{Name: "evil/victim.txt", Typeflag: tar.TypeReg, Mode: 0o644, Size: 5})
		tw.Write([]byte("pwned"))
		tw.WriteHeader(&tar.Header{Name: "../../../../../../" + victim[1:], Typeflag: tar.TypeReg, Mode: 0o644, Size: 5})
		tw.Write([]byte("pwned"))
		tw.Close()
		bad := filepath.Join(work, "hostile.tar")
		f, _ := os.Create(bad)
		btw := tar.NewWriter(f)
		manifest, _ := json.Marshal([]map[string]any{{"Config": "config.json", "Layers": []string{"layer.tar"}}})
		for name, body := range map[string][]byte{"manifest.json": manifest, "config.json": []byte(`{"config":{}}`), "layer.tar": layer.Bytes()} {
			btw.WriteHeader(&tar.Header{Name: name, Typeflag: tar.TypeReg, Mode: 0o644, Size: int64(len(body))})
			btw.Write(body)
		}
		btw.Close()
		f.Close()
		code, out, errOut := e.runAs(t, acme, "template", "import", "hostile", bad)
		if code == 0 {
			t.Errorf("the hostile image was imported: %s", out)
		}
		t.Logf("refused: %s", strings.TrimSpace(errOut))
		if b, _ := os.ReadFile(victim); string(b) != "original" {
			t.Fatalf("the host file is now %q", b)
		}
		if status, body := e.httpAs(t, acme, "GET", "/v1/templates"); strings.Contains(body, `"hostile"`) {
			t.Errorf("the refused template is listed: %d %s", status, body)
		}
	})
}

// dockerSaveToOCI rewrites a `docker save` tarball (Debian's dockerd 20.10
// writes the docker format only) as an OCI image layout tarball.
func dockerSaveToOCI(t *testing.T, src, dst string) {
	t.Helper()
	in, err := os.Open(src)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	members := map[string][]byte{}
	tr := tar.NewReader(in)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if h.Typeflag == tar.TypeReg {
			b, _ := io.ReadAll(tr)
			members[strings.TrimPrefix(h.Name, "./")] = b
		}
	}
	var m []struct {
		Config string
		Layers []string
	}
	if err := json.Unmarshal(members["manifest.json"], &m); err != nil || len(m) != 1 {
		t.Fatalf("manifest.json: %v", err)
	}
	blobs := map[string][]byte{}
	type desc struct {
		MediaType string `json:"mediaType"`
		Digest    string `json:"digest"`
		Size      int    `json:"size"`
	}
	put := func(mt string, b []byte) desc {
		sum := sha256.Sum256(b)
		blobs["blobs/sha256/"+hex.EncodeToString(sum[:])] = b
		return desc{mt, "sha256:" + hex.EncodeToString(sum[:]), len(b)}
	}
	manifest := map[string]any{"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
		"config": put("application/vnd.oci.image.config.v1+json", members[m[0].Config])}
	var layers []desc
	for _, l := range m[0].Layers {
		layers = append(layers, put("application/vnd.oci.image.layer.v1.tar", members[l]))
	}
	manifest["layers"] = layers
	mb, _ := json.Marshal(manifest)
	index, _ := json.Marshal(map[string]any{"schemaVersion": 2, "manifests": []desc{put("application/vnd.oci.image.manifest.v1+json", mb)}})
	blobs["index.json"] = index
	blobs["oci-layout"] = []byte(`{"imageLayoutVersion":"1.0.0"}`)
	out, err := os.Create(dst)
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	tw := tar.NewWriter(out)
	for name, b := range blobs {
		tw.WriteHeader(&tar.Header{Name: name, Typeflag: tar.TypeReg, Mode: 0o644, Size: int64(len(b))})
		tw.Write(b)
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
}
