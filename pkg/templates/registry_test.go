package templates

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

func TestParseImageRef(t *testing.T) {
	dg := "sha256:" + strings.Repeat("ab", 32)
	for _, c := range []struct {
		in   string
		want ImageRef
		bad  bool
	}{
		{in: "127.0.0.1:5000/app:1", want: ImageRef{Host: "127.0.0.1:5000", Repo: "app", Tag: "1"}},
		{in: "localhost/team/app", want: ImageRef{Host: "localhost", Repo: "team/app", Tag: "latest"}},
		{in: "registry.example.com/a/b@" + dg, want: ImageRef{Host: "registry.example.com", Repo: "a/b", Digest: dg}},
		{in: "[::1]:5000/app:v1.2", want: ImageRef{Host: "[::1]:5000", Repo: "app", Tag: "v1.2"}},
		{in: "app:1", bad: true},
		{in: "team/app:1", bad: true},
		{in: "127.0.0.1:5000/App:1", bad: true},
		{in: "127.0.0.1:5000/app/../x:1", bad: true},
		{in: "127.0.0.1:5000/app@sha256:xyz", bad: true},
		{in: "127.0.0.1:5000/app:bad/tag", bad: true},
		{in: "user@host:5000/app:1", bad: true},
	} {
		got, err := ParseImageRef(c.in)
		if c.bad {
			if !errors.Is(err, tartarus.ErrInvalid) {
				t.Errorf("ParseImageRef(%q) = %+v, %v; want ErrInvalid", c.in, got, err)
			}
			continue
		}
		if err != nil || got != c.want {
			t.Errorf("ParseImageRef(%q) = %+v, %v; want %+v", c.in, got, err, c.want)
		}
	}
}

// fakeRegistry serves blobs and manifests over the distribution API;
// token, when set, is the bearer token it asks for (from its /token).
type fakeRegistry struct {
	blobs     map[string][]byte
	manifests map[string][]byte // by tag and by digest
	token     string
	basic     string // user:password it asks for with a Basic challenge
}

func (f *fakeRegistry) put(b []byte) descriptor {
	s := sha256.Sum256(b)
	d := descriptor{Digest: "sha256:" + hex.EncodeToString(s[:]), Size: int64(len(b))}
	f.blobs[d.Digest] = b
	return d
}

func (f *fakeRegistry) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path == "/token" {
		json.NewEncoder(w).Encode(map[string]string{"token": f.token})
		return
	}
	if u, pw, ok := r.BasicAuth(); f.basic != "" && (!ok || u+":"+pw != f.basic) {
		w.Header().Set("WWW-Authenticate", `Basic realm="fake"`)
		w.WriteHeader(http.StatusUnauthorized)
		return
	}
	if f.token != "" && r.Header.Get("Authorization") != "Bearer "+f.token {
		w.Header().Set("WWW-Authenticate", `Bearer realm="http://`+r.Host+`/token",service="fake"`)
		w.WriteHeader(http.StatusUnauthorized)
		return
	}
	rest := strings.TrimPrefix(r.URL.Path, "/v2/app/")
	if d, ok := strings.CutPrefix(rest, "blobs/"); ok && f.blobs[d] != nil {
		w.Write(f.blobs[d])
		return
	}
	if ref, ok := strings.CutPrefix(rest, "manifests/"); ok && f.manifests[ref] != nil {
		w.Write(f.manifests[ref])
		return
	}
	http.NotFound(w, r)
}

// newFakeRegistry holds one image of a layer with /etc/greeting and
// GREETING in its env, tagged "1" directly and "multi" through an index.
func newFakeRegistry(t *testing.T) (*fakeRegistry, ImageRef) {
	f := &fakeRegistry{blobs: map[string][]byte{}, manifests: map[string][]byte{}}
	l := f.put(layer(t, true, entry{name: "etc/", typ: '5'}, entry{name: "etc/greeting", body: "hi", typ: '0'}))
	l.MediaType = "application/vnd.oci.image.layer.v1.tar+gzip"
	cfg := f.put([]byte(`{"config":{"Env":["GREETING=hello"]}}`))
	cfg.MediaType = "application/vnd.oci.image.config.v1+json"
	m, _ := json.Marshal(map[string]any{"schemaVersion": 2, "mediaType": mtOCIManifest, "config": cfg, "layers": []descriptor{l}})
	md := f.put(m)
	f.manifests["1"], f.manifests[md.Digest] = m, m
	md.MediaType = mtOCIManifest
	idx, _ := json.Marshal(map[string]any{"schemaVersion": 2, "mediaType": mtOCIIndex, "manifests": []map[string]any{
		{"mediaType": mtOCIManifest, "digest": "sha256:" + strings.Repeat("0", 64), "size": 1, "platform": map[string]string{"os": "linux", "architecture": "elsewhere"}},
		{"mediaType": mtOCIManifest, "digest": md.Digest, "size": md.Size, "platform": map[string]string{"os": "linux", "architecture": runtime.GOARCH}},
	}})
	f.manifests["multi"] = idx
	srv := httptest.NewServer(f)
	t.Cleanup(srv.Close)
	ref, err := ParseImageRef(strings.TrimPrefix(srv.URL, "http://") + "/app:1")
	if err != nil {
		t.Fatal(err)
	}
	return f, ref
}

// TestPullImage: an image pulled from a fake registry, by tag, through an
// index, by digest and behind a bearer token, unpacks to its layer and
// env; a blob whose bytes or size are not the manifest's, a manifest not
// of the digest asked for and a missing image are refused.
func TestPullImage(t *testing.T) {
	ctx := context.Background()
	// The server's docker config has a login for the fake registry.
	t.Setenv("DOCKER_CONFIG", t.TempDir())
	pull := func(ref ImageRef) (*ImageConfig, error) {
		var b bytes.Buffer
		if err := PullImage(ctx, ref, PullOptions{Credentials: DockerConfigCredentials()}, &b); err != nil {
			return nil, err
		}
		root, scratch := t.TempDir(), t.TempDir()
		cfg, _, err := UnpackImage(ctx, &b, root, scratch)
		if err != nil {
			return nil, err
		}
		if got, err := os.ReadFile(filepath.Join(root, "etc/greeting")); err != nil || string(got) != "hi" {
			t.Errorf("etc/greeting: %q, %v", got, err)
		}
		return cfg, nil
	}
	f, ref := newFakeRegistry(t)
	digestRef := ref
	digestRef.Tag = ""
	for d, m := range f.manifests {
		if strings.HasPrefix(d, "sha256:") && bytes.Equal(m, f.manifests["1"]) {
			digestRef.Digest = d
		}
	}
	multi := ref
	multi.Tag = "multi"
	login := base64.StdEncoding.EncodeToString([]byte("alice:pw"))
	os.WriteFile(filepath.Join(os.Getenv("DOCKER_CONFIG"), "config.json"), []byte(`{"auths":{"`+ref.Host+`":{"auth":"`+login+`"}}}`), 0o600)
	for _, c := range []struct {
		name         string
		ref          ImageRef
		token, basic string
	}{{"tag", ref, "", ""}, {"index", multi, "", ""}, {"digest", digestRef, "", ""}, {"token", ref, "s3cret", ""}, {"basic", ref, "", "alice:pw"}} {
		t.Run(c.name, func(t *testing.T) {
			f.token, f.basic = c.token, c.basic
			cfg, err := pull(c.ref)
			if err != nil {
				t.Fatal(err)
			}
			if len(cfg.Env) != 1 || cfg.Env[0] != "GREETING=hello" {
				t.Errorf("env %q", cfg.Env)
			}
		})
	}
	f.token, f.basic = "", ""

	t.Run("WrongLogin", func(t *testing.T) {
		f.basic = "alice:other"
		defer func() { f.basic = "" }()
		if _, err := pull(ref); !errors.Is(err, tartarus.ErrPermissionDenied) {
			t.Errorf("a login the registry refuses: %v, want ErrPermissionDenied", err)
		}
	})

	t.Run("Refused", func(t *testing.T) {
		wrong := digestRef
		wrong.Digest = "sha256:" + strings.Repeat("1", 64)
		f.manifests[wrong.Digest] = f.manifests["1"]
		missing := ref
		missing.Tag = "none"
		var layerDigest string
		for d, b := range f.blobs {
			if len(b) > 0 && b[0] == 0x1f {
				layerDigest = d
			}
		}
		good := f.blobs[layerDigest]
		for _, c := range []struct {
			name  string
			ref   ImageRef
			blob  []byte
			class error
		}{
			{"tampered", ref, append([]byte{good[0] ^ 0xff}, good[1:]...), tartarus.ErrInvalid},
			{"short", ref, good[:len(good)-1], tartarus.ErrInvalid},
			{"manifest-digest", wrong, good, tartarus.ErrInvalid},
			{"missing", missing, good, tartarus.ErrNotFound},
		} {
			f.blobs[layerDigest] = c.blob
			_, err := pull(c.ref)
			if !errors.Is(err, c.class) {
				t.Errorf("%s: %v, want %v", c.name, err, c.class)
			}
		}
		f.blobs[layerDigest] = good
	})

	t.Run("NoPlainHTTPElsewhere", func(t *testing.T) {
		far := ImageRef{Host: "registry.invalid:5000", Repo: "app", Tag: "1"}
		for _, insecure := range []bool{false, true} {
			var scheme string
			hc := &http.Client{Transport: roundTripFunc(func(r *http.Request) (*http.Response, error) {
				scheme = r.URL.Scheme
				return nil, errors.New("no network in this test")
			})}
			err := PullImage(ctx, far, PullOptions{Client: hc, Insecure: insecure}, &bytes.Buffer{})
			want := map[bool]string{false: "https", true: "http"}[insecure]
			if scheme != want || !errors.Is(err, tartarus.ErrUnavailable) {
				t.Errorf("insecure %v: scheme %q, %v; want %s and ErrUnavailable", insecure, scheme, err, want)
			}
		}
	})
}

// TestRegistryPolicy: a pull reaches only a registry the operator listed,
// and plain HTTP away from loopback only when the operator allows it.
func TestRegistryPolicy(t *testing.T) {
	loop := ImageRef{Host: "127.0.0.1:5000", Repo: "app", Tag: "1"}
	far := ImageRef{Host: "registry.example:5000", Repo: "app", Tag: "1"}
	for _, c := range []struct {
		name     string
		p        RegistryPolicy
		ref      ImageRef
		insecure bool
		ok       bool
	}{
		{"none allowed", RegistryPolicy{}, loop, false, false},
		{"listed", RegistryPolicy{Allow: []string{loop.Host}}, loop, false, true},
		{"loopback plain", RegistryPolicy{Allow: []string{loop.Host}}, loop, true, true},
		{"another host", RegistryPolicy{Allow: []string{loop.Host}}, far, false, false},
		{"far over https", RegistryPolicy{Allow: []string{far.Host}}, far, false, true},
		{"far plain, not allowed", RegistryPolicy{Allow: []string{far.Host}}, far, true, false},
		{"far plain, allowed", RegistryPolicy{Allow: []string{far.Host}, Insecure: true}, far, true, true},
	} {
		err := c.p.Check(c.ref, c.insecure)
		if (err == nil) != c.ok || (err != nil && !errors.Is(err, tartarus.ErrPermissionDenied)) {
			t.Errorf("%s: %v, want ok %v", c.name, err, c.ok)
		}
	}
}

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

// TestBuildFromRegistry: FROM registry:REF and a plain HOST:PORT/REPO:TAG
// pull the image into a cache step the build starts from (its env); the
// second build finds that step; a missing image fails the build.
func TestBuildFromRegistry(t *testing.T) {
	if _, err := exec.LookPath("mke2fs"); err != nil {
		t.Skip("mke2fs is not installed")
	}
	_, ref := newFakeRegistry(t)
	f := newFake()
	f.templates["base"] = &tartarus.Image{Name: "base", Digest: "sha256:base"}
	cat := &fakeCatalog{f: f, dir: t.TempDir()}
	bd := NewBuilder(f, cat, nil, nil)
	// No registry is reached until the operator lists it.
	b, _ := buildNamed(t, bd, "app", "acme", "FROM registry:"+ref.String()+"\nRUN true\n", t.TempDir())
	if st := b.Status(); st.Status != StatusFailed || !strings.Contains(st.Error, "pulls from no registry") {
		t.Errorf("FROM a registry no one allowed: %+v", st)
	}
	bd.SetRegistryPolicy(RegistryPolicy{Allow: []string{ref.Host}})
	for i, from := range []string{"registry:" + ref.String(), ref.String()} {
		b, evs := buildNamed(t, bd, "app", "acme", "FROM "+from+"\nRUN echo \"$GREETING\"\n", t.TempDir())
		if st := b.Status(); st.Status != StatusSucceeded {
			t.Fatalf("FROM %s: %+v %+v", from, st, evs)
		}
		if evs[0].Cached != (i == 1) {
			t.Errorf("FROM %s: step %+v; cached only the second time", from, evs[0])
		}
	}
	if len(cat.added) != 1 || f.templates[cat.added[0]].Env["GREETING"] != "hello" {
		t.Fatalf("imports %q", cat.added)
	}
	missing := ref
	missing.Tag = "none"
	b, _ = buildNamed(t, bd, "app2", "acme", "FROM "+missing.String()+"\nRUN true\n", t.TempDir())
	if st := b.Status(); st.Status != StatusFailed || !strings.Contains(st.Error, "not found") {
		t.Errorf("FROM a missing image: %+v", st)
	}
}
