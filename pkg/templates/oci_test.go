package templates

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

// entry is one member of a test layer.
type entry struct {
	name, body, link string
	typ              byte
}

// layer makes a layer tar (gzipped when gz) of entries.
func layer(t testing.TB, gz bool, es ...entry) []byte {
	t.Helper()
	var b bytes.Buffer
	tw := tar.NewWriter(&b)
	for _, e := range es {
		h := &tar.Header{Name: e.name, Typeflag: e.typ, Mode: 0o644, Linkname: e.link}
		switch e.typ {
		case tar.TypeReg:
			h.Size = int64(len(e.body))
		case tar.TypeDir:
			h.Mode = 0o755
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		tw.Write([]byte(e.body))
	}
	tw.Close()
	if !gz {
		return b.Bytes()
	}
	var z bytes.Buffer
	zw := gzip.NewWriter(&z)
	zw.Write(b.Bytes())
	zw.Close()
	return z.Bytes()
}

// ociTarball packs an OCI image layout (index.json, blobs) of layers and
// an image config with env as a tar stream.
func ociTarball(t testing.TB, env []string, workdir string, layers ...[]byte) []byte {
	t.Helper()
	blobs := map[string][]byte{}
	put := func(b []byte) string {
		s := sha256.Sum256(b)
		d := "sha256:" + hex.EncodeToString(s[:])
		blobs["blobs/sha256/"+hex.EncodeToString(s[:])] = b
		return d
	}
	config, _ := json.Marshal(map[string]any{"architecture": "amd64", "os": "linux",
		"config": map[string]any{"Env": env, "WorkingDir": workdir, "Cmd": []string{"/bin/sh"}}})
	type desc struct {
		MediaType string `json:"mediaType"`
		Digest    string `json:"digest"`
		Size      int    `json:"size"`
	}
	m := map[string]any{"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
		"config": desc{"application/vnd.oci.image.config.v1+json", put(config), len(config)}}
	var ls []desc
	for _, l := range layers {
		ls = append(ls, desc{"application/vnd.oci.image.layer.v1.tar+gzip", put(l), len(l)})
	}
	m["layers"] = ls
	mb, _ := json.Marshal(m)
	index, _ := json.Marshal(map[string]any{"schemaVersion": 2, "manifests": []desc{{"application/vnd.oci.image.manifest.v1+json", put(mb), len(mb)}}})
	var b bytes.Buffer
	tw := tar.NewWriter(&b)
	add := func(name string, body []byte) {
		tw.WriteHeader(&tar.Header{Name: name, Typeflag: tar.TypeReg, Mode: 0o644, Size: int64(len(body))})
		tw.Write(body)
	}
	add("oci-layout", []byte(`{"imageLayoutVersion":"1.0.0"}`))
	add("index.json", index)
	for name, body := range blobs {
		add(name, body)
	}
	tw.Close()
	return b.Bytes()
}

// TestUnpackImage: layers apply in order with their whiteouts, gzip or not,
// and the config comes back.
func TestUnpackImage(t *testing.T) {
	l1 := layer(t, true,
		entry{name: "bin/", typ: tar.TypeDir},
		entry{name: "bin/tool", body: "v1", typ: tar.TypeReg},
		entry{name: "etc/old.conf", body: "old", typ: tar.TypeReg},
		entry{name: "var/cache/a", body: "a", typ: tar.TypeReg},
		entry{name: "var/cache/b", body: "b", typ: tar.TypeReg},
	)
	l2 := layer(t, false,
		entry{name: "bin/tool", body: "v2", typ: tar.TypeReg},
		entry{name: "etc/.wh.old.conf", typ: tar.TypeReg},
		entry{name: "var/cache/.wh..wh..opq", typ: tar.TypeReg},
		entry{name: "var/cache/c", body: "c", typ: tar.TypeReg},
		entry{name: "bin/sh", link: "/bin/tool", typ: tar.TypeSymlink},
	)
	root, scratch := t.TempDir(), t.TempDir()
	cfg, digest, err := UnpackImage(context.Background(), bytes.NewReader(ociTarball(t, []string{"A=1", "PATH=/bin"}, "/srv", l1, l2)), root, scratch)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.WorkingDir != "/srv" || len(cfg.Env) != 2 || digest == "" {
		t.Errorf("config %+v digest %q", cfg, digest)
	}
	for name, want := range map[string]string{"bin/tool": "v2", "var/cache/c": "c"} {
		if b, err := os.ReadFile(filepath.Join(root, name)); err != nil || string(b) != want {
			t.Errorf("%s: %q %v, want %q", name, b, err, want)
		}
	}
	for _, gone := range []string{"etc/old.conf", "var/cache/a", "var/cache/b"} {
		if _, err := os.Lstat(filepath.Join(root, gone)); err == nil {
			t.Errorf("%s survived its whiteout", gone)
		}
	}
	if l, err := os.Readlink(filepath.Join(root, "bin/sh")); err != nil || l != "/bin/tool" {
		t.Errorf("bin/sh: %q %v", l, err)
	}
}

// TestUnpackImageStaysInside: a layer cannot reach the host through "../"
// names, absolute symbolic links or links written through later; the
// host's files are unchanged whatever the outcome.
func TestUnpackImageStaysInside(t *testing.T) {
	host := t.TempDir()
	victim := filepath.Join(host, "victim.txt")
	for _, c := range []struct {
		name    string
		entries []entry
		refused bool // else contained
	}{
		{"dotdot", []entry{{name: "../../../../" + victim[1:], body: "pwned", typ: tar.TypeReg}}, true},
		{"dotdot inside", []entry{{name: "a/../../victim.txt", body: "pwned", typ: tar.TypeReg}}, true},
		{"absolute link then write", []entry{
			{name: "evil", link: victim, typ: tar.TypeSymlink},
			{name: "evil", body: "pwned", typ: tar.TypeReg}}, false},
		{"absolute dir link then write below", []entry{
			{name: "hostdir", link: host, typ: tar.TypeSymlink},
			{name: "hostdir/victim.txt", body: "pwned", typ: tar.TypeReg}}, true},
		{"relative link climbing out", []entry{
			{name: "up", link: "../../../../../../" + host[1:], typ: tar.TypeSymlink},
			{name: "up/victim.txt", body: "pwned", typ: tar.TypeReg}}, true},
		{"hard link to a host file", []entry{{name: "hard", link: victim, typ: tar.TypeLink}}, true},
		{"whiteout of a host path", []entry{{name: "../" + filepath.Base(host) + "/.wh.victim.txt", typ: tar.TypeReg}}, true},
		{"whiteout through a link", []entry{
			{name: "hostdir", link: host, typ: tar.TypeSymlink}}, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			if err := os.WriteFile(victim, []byte("original"), 0o644); err != nil {
				t.Fatal(err)
			}
			layers := [][]byte{layer(t, true, c.entries...)}
			if c.name == "whiteout through a link" {
				layers = append(layers, layer(t, false, entry{name: "hostdir/.wh.victim.txt", typ: tar.TypeReg}))
			}
			root := filepath.Join(t.TempDir(), "a", "b", "root")
			os.MkdirAll(root, 0o755)
			_, _, err := UnpackImage(context.Background(), bytes.NewReader(ociTarball(t, nil, "", layers...)), root, t.TempDir())
			if c.refused && err == nil {
				t.Error("the layer was accepted")
			}
			if !c.refused && err != nil && !errors.Is(err, tartarus.ErrInvalid) {
				t.Logf("refused: %v", err)
			}
			if b, err := os.ReadFile(victim); err != nil || string(b) != "original" {
				t.Fatalf("the host file is now %q (%v)", b, err)
			}
		})
	}
}

func TestUnpackImageBadTarballs(t *testing.T) {
	for name, body := range map[string][]byte{
		"not a tar":     []byte("hello"),
		"no manifest":   layer(t, false, entry{name: "x", body: "y", typ: tar.TypeReg}),
		"missing layer": layer(t, false, entry{name: "manifest.json", body: `[{"Config":"c.json","Layers":["l.tar"]}]`, typ: tar.TypeReg}, entry{name: "c.json", body: "{}", typ: tar.TypeReg}),
		"two images":    layer(t, false, entry{name: "manifest.json", body: `[{},{}]`, typ: tar.TypeReg}),
	} {
		if _, _, err := UnpackImage(context.Background(), bytes.NewReader(body), t.TempDir(), t.TempDir()); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}
