package templates

import (
	"archive/tar"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strings"
	"sync"

	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

// Pulling an image from a registry over the OCI distribution API: the
// manifest (through an index to the host's platform), the config and the
// layers are fetched, each checked against its digest and size, and
// written as an OCI image layout tarball, which the import reads as it
// reads any other.

// MaxManifestBytes bounds a manifest or an index fetched from a registry.
const MaxManifestBytes = 4 << 20

// ImageRef is a parsed registry reference: HOST[:PORT]/REPO[:TAG|@DIGEST].
type ImageRef struct {
	Host   string // host[:port]
	Repo   string // path of the repository, e.g. "library/app"
	Tag    string // empty when Digest is set
	Digest string // sha256:…, or empty
}

// String gives the reference back in its canonical form.
func (r ImageRef) String() string {
	if r.Digest != "" {
		return r.Host + "/" + r.Repo + "@" + r.Digest
	}
	return r.Host + "/" + r.Repo + ":" + r.Tag
}

var (
	repoComponent = regexp.MustCompile(`^[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*$`)
	tagPattern    = regexp.MustCompile(`^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$`)
	digestPattern = regexp.MustCompile(`^sha256:[a-f0-9]{64}$`)
	hostPattern   = regexp.MustCompile(`^(?:[A-Za-z0-9.-]+|\[[0-9A-Fa-f:]+\])(?::[0-9]{1,5})?$`)
)

// ParseImageRef parses HOST[:PORT]/REPO[:TAG][@DIGEST]. The host is
// required (there is no default registry): the first component must
// contain a '.' or a ':', or be localhost.
func ParseImageRef(s string) (ImageRef, error) {
	bad := func(why string) (ImageRef, error) {
		return ImageRef{}, tartarus.Errorf(tartarus.ErrInvalid, "image reference %q: %s", s, why)
	}
	if len(s) > 512 {
		return bad("longer than 512 bytes")
	}
	host, rest, ok := strings.Cut(s, "/")
	if !ok || !(strings.ContainsAny(host, ".:") || host == "localhost") || !hostPattern.MatchString(host) {
		return bad("want HOST[:PORT]/REPOSITORY[:TAG|@DIGEST], the registry's host named")
	}
	ref := ImageRef{Host: host}
	if r, d, ok := strings.Cut(rest, "@"); ok {
		if !digestPattern.MatchString(d) {
			return bad("the digest is not sha256:<64 hex digits>")
		}
		rest, ref.Digest = r, d
	}
	if i := strings.LastIndex(rest, ":"); i >= 0 && !strings.Contains(rest[i:], "/") {
		rest, ref.Tag = rest[:i], rest[i+1:]
		if !tagPattern.MatchString(ref.Tag) {
			return bad("tag " + ref.Tag)
		}
	}
	if ref.Digest != "" {
		ref.Tag = ""
	} else if ref.Tag == "" {
		ref.Tag = "latest"
	}
	for _, c := range strings.Split(rest, "/") {
		if !repoComponent.MatchString(c) {
			return bad("repository " + rest + ": lowercase components separated by '/'")
		}
	}
	ref.Repo = rest
	return ref, nil
}

// Loopback reports whether the registry is on this host (localhost or a
// loopback address), where plain HTTP is allowed.
func (r ImageRef) Loopback() bool {
	h := r.Host
	if hh, _, err := net.SplitHostPort(h); err == nil {
		h = hh
	}
	h = strings.Trim(h, "[]")
	if h == "localhost" {
		return true
	}
	ip := net.ParseIP(h)
	return ip != nil && ip.IsLoopback()
}

// RegistryPolicy is which registries a server pulls images from. A pull
// makes the server fetch from whatever host a tenant names, its own
// loopback services included, so none is reached unless the operator lists
// it (--registry).
type RegistryPolicy struct {
	// Allow lists the registry hosts (host or host:port, as references
	// name them) pulls may reach; empty: none.
	Allow []string
	// Insecure lets a pull that asks for it use plain HTTP to an allowed
	// registry that is not on loopback.
	Insecure bool
}

// Check refuses a pull of ref (with plain HTTP when insecure) that the
// policy does not allow.
func (p RegistryPolicy) Check(ref ImageRef, insecure bool) error {
	if !slices.Contains(p.Allow, ref.Host) {
		if len(p.Allow) == 0 {
			return tartarus.Errorf(tartarus.ErrPermissionDenied, "registry %s: this server pulls from no registry (its operator allows them with --registry HOST)", ref.Host)
		}
		return tartarus.Errorf(tartarus.ErrPermissionDenied, "registry %s: not one this server pulls from (%s)", ref.Host, strings.Join(p.Allow, ", "))
	}
	if insecure && !p.Insecure && !ref.Loopback() {
		return tartarus.Errorf(tartarus.ErrPermissionDenied, "registry %s: plain HTTP is not allowed on this server (--registry-insecure)", ref.Host)
	}
	return nil
}

// PullOptions are how a pull reaches a registry.
type PullOptions struct {
	// Client makes the requests; nil is http.DefaultClient.
	Client *http.Client
	// Insecure allows plain HTTP to a registry that is not on loopback.
	Insecure bool
	// Credentials gives the user and password for a registry host, if
	// any (DockerConfigCredentials reads the server's docker config).
	Credentials func(host string) (user, password string, ok bool)
}

// descriptor is an OCI content descriptor.
type descriptor struct {
	MediaType string `json:"mediaType"`
	Digest    string `json:"digest"`
	Size      int64  `json:"size"`
	Platform  *struct {
		OS           string `json:"os"`
		Architecture string `json:"architecture"`
	} `json:"platform,omitempty"`
}

const (
	mtOCIIndex     = "application/vnd.oci.image.index.v1+json"
	mtOCIManifest  = "application/vnd.oci.image.manifest.v1+json"
	mtDockerList   = "application/vnd.docker.distribution.manifest.list.v2+json"
	mtDockerSchema = "application/vnd.docker.distribution.manifest.v2+json"
)

// PullImage fetches the image ref names from its registry and writes it
// to w as an OCI image layout tarball (the form ImportImage reads). Every
// blob is checked against its digest and size before its end is written,
// and the image as a whole is held to MaxImageBytes and MaxImageLayers;
// a mismatch is an ErrInvalid error, and w then holds a truncated member.
func PullImage(ctx context.Context, ref ImageRef, o PullOptions, w io.Writer) error {
	p := &puller{ref: ref, o: o, client: o.Client, scheme: "https"}
	if p.client == nil {
		p.client = http.DefaultClient
	}
	if ref.Loopback() || o.Insecure {
		// Plain HTTP only on this host, or when asked for.
		p.scheme = "http"
	}
	reference := ref.Tag
	if ref.Digest != "" {
		reference = ref.Digest
	}
	mb, mdesc, err := p.manifest(ctx, reference, ref.Digest)
	if err != nil {
		return err
	}
	if mdesc.MediaType == mtOCIIndex || mdesc.MediaType == mtDockerList {
		var idx struct {
			Manifests []descriptor `json:"manifests"`
		}
		if err := json.Unmarshal(mb, &idx); err != nil {
			return tartarus.Errorf(tartarus.ErrInvalid, "pull %s: index: %v", ref, err)
		}
		var pick *descriptor
		for i, m := range idx.Manifests {
			if m.Platform != nil && m.Platform.OS == "linux" && m.Platform.Architecture == runtime.GOARCH {
				pick = &idx.Manifests[i]
				break
			}
		}
		if pick == nil {
			return tartarus.Errorf(tartarus.ErrInvalid, "pull %s: no linux/%s image in its index", ref, runtime.GOARCH)
		}
		if !digestPattern.MatchString(pick.Digest) {
			return tartarus.Errorf(tartarus.ErrInvalid, "pull %s: index entry digest %q", ref, pick.Digest)
		}
		if mb, mdesc, err = p.manifest(ctx, pick.Digest, pick.Digest); err != nil {
			return err
		}
	}
	if mdesc.MediaType != mtOCIManifest && mdesc.MediaType != mtDockerSchema {
		return tartarus.Errorf(tartarus.ErrInvalid, "pull %s: manifest of type %q, want an OCI or Docker v2 image manifest", ref, mdesc.MediaType)
	}
	var m struct {
		Config descriptor   `json:"config"`
		Layers []descriptor `json:"layers"`
	}
	if err := json.Unmarshal(mb, &m); err != nil {
		return tartarus.Errorf(tartarus.ErrInvalid, "pull %s: manifest: %v", ref, err)
	}
	if len(m.Layers) > MaxImageLayers {
		return tartarus.Errorf(tartarus.ErrInvalid, "pull %s: %d layers, at most %d", ref, len(m.Layers), MaxImageLayers)
	}
	blobs := append([]descriptor{m.Config}, m.Layers...)
	var total int64
	for _, b := range blobs {
		if !digestPattern.MatchString(b.Digest) {
			return tartarus.Errorf(tartarus.ErrInvalid, "pull %s: blob digest %q: want sha256:<64 hex digits>", ref, b.Digest)
		}
		if b.Size < 0 || b.Size > MaxImageBytes {
			return tartarus.Errorf(tartarus.ErrInvalid, "pull %s: blob %s: size %d", ref, b.Digest, b.Size)
		}
		if total += b.Size; total > MaxImageBytes {
			return tartarus.Errorf(tartarus.ErrInvalid, "pull %s: larger than %d bytes", ref, MaxImageBytes)
		}
	}

	tw := tar.NewWriter(w)
	put := func(name string, b []byte) error {
		if err := tw.WriteHeader(&tar.Header{Name: name, Typeflag: tar.TypeReg, Mode: 0o644, Size: int64(len(b))}); err != nil {
			return err
		}
		_, err := tw.Write(b)
		return err
	}
	index, _ := json.Marshal(map[string]any{"schemaVersion": 2, "mediaType": mtOCIIndex,
		"manifests": []descriptor{{MediaType: mdesc.MediaType, Digest: mdesc.Digest, Size: mdesc.Size}}})
	if err := errors.Join(put("oci-layout", []byte(`{"imageLayoutVersion":"1.0.0"}`)), put("index.json", index),
		put(blobPath(mdesc.Digest), mb)); err != nil {
		return err
	}
	seen := map[string]bool{mdesc.Digest: true}
	for _, b := range blobs {
		if seen[b.Digest] {
			continue
		}
		seen[b.Digest] = true
		if err := tw.WriteHeader(&tar.Header{Name: blobPath(b.Digest), Typeflag: tar.TypeReg, Mode: 0o644, Size: b.Size}); err != nil {
			return err
		}
		if err := p.blob(ctx, b, tw); err != nil {
			return err
		}
	}
	return tw.Close()
}

func blobPath(digest string) string { return "blobs/" + strings.Replace(digest, ":", "/", 1) }

// puller is one pull's connection to its registry.
type puller struct {
	ref    ImageRef
	o      PullOptions
	client *http.Client
	scheme string

	mu    sync.Mutex
	token string // a bearer token the registry gave, else ""
}

// manifest fetches a manifest or an index by tag or digest; want, when
// set, is the digest its bytes must have.
func (p *puller) manifest(ctx context.Context, reference, want string) ([]byte, descriptor, error) {
	resp, err := p.get(ctx, "manifests/"+reference, strings.Join([]string{mtOCIManifest, mtOCIIndex, mtDockerSchema, mtDockerList}, ", "))
	if err != nil {
		return nil, descriptor{}, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, MaxManifestBytes+1))
	if err != nil {
		return nil, descriptor{}, fmt.Errorf("pull %s: manifest %s: %w", p.ref, reference, err)
	}
	if len(b) > MaxManifestBytes {
		return nil, descriptor{}, tartarus.Errorf(tartarus.ErrInvalid, "pull %s: manifest %s larger than %d bytes", p.ref, reference, MaxManifestBytes)
	}
	sum := sha256.Sum256(b)
	d := descriptor{Digest: "sha256:" + hex.EncodeToString(sum[:]), Size: int64(len(b))}
	if want != "" && d.Digest != want {
		return nil, descriptor{}, tartarus.Errorf(tartarus.ErrInvalid, "pull %s: manifest digest %s, want %s", p.ref, d.Digest, want)
	}
	// The media type in the manifest wins over the header's.
	var mt struct {
		MediaType string `json:"mediaType"`
	}
	if err := json.Unmarshal(b, &mt); err != nil {
		return nil, descriptor{}, tartarus.Errorf(tartarus.ErrInvalid, "pull %s: manifest %s: %v", p.ref, reference, err)
	}
	d.MediaType = mt.MediaType
	if d.MediaType == "" {
		d.MediaType, _, _ = strings.Cut(resp.Header.Get("Content-Type"), ";")
	}
	return b, d, nil
}

// blob copies blob d to w, exactly d.Size bytes (more are not read), and fails (ErrInvalid)
// when its bytes do not have its digest.
func (p *puller) blob(ctx context.Context, d descriptor, w io.Writer) error {
	resp, err := p.get(ctx, "blobs/"+d.Digest, "")
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	h := sha256.New()
	n, err := io.Copy(io.MultiWriter(w, h), io.LimitReader(resp.Body, d.Size))
	if err != nil {
		return fmt.Errorf("pull %s: blob %s: %w", p.ref, d.Digest, err)
	}
	if n != d.Size {
		return tartarus.Errorf(tartarus.ErrInvalid, "pull %s: blob %s: %d bytes, the manifest says %d", p.ref, d.Digest, n, d.Size)
	}
	if got := "sha256:" + hex.EncodeToString(h.Sum(nil)); got != d.Digest {
		return tartarus.Errorf(tartarus.ErrInvalid, "pull %s: blob %s: its bytes have digest %s", p.ref, d.Digest, got)
	}
	return nil
}

// get requests /v2/REPO/what, answering one authentication challenge
// (Basic, or a Bearer token from the realm the registry names).
func (p *puller) get(ctx context.Context, what, accept string) (*http.Response, error) {
	u := p.scheme + "://" + p.ref.Host + "/v2/" + p.ref.Repo + "/" + what
	for try := 0; ; try++ {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
		if err != nil {
			return nil, err
		}
		if accept != "" {
			req.Header.Set("Accept", accept)
		}
		p.mu.Lock()
		tok := p.token
		p.mu.Unlock()
		if tok != "" {
			req.Header.Set("Authorization", tok)
		}
		resp, err := p.client.Do(req)
		if err != nil {
			return nil, tartarus.Errorf(tartarus.ErrUnavailable, "pull %s: %v", p.ref, err)
		}
		if resp.StatusCode == http.StatusOK {
			return resp, nil
		}
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		resp.Body.Close()
		if resp.StatusCode == http.StatusUnauthorized && try == 0 {
			if err := p.authenticate(ctx, resp.Header.Get("WWW-Authenticate")); err != nil {
				return nil, err
			}
			continue
		}
		class := tartarus.ErrUnavailable
		switch resp.StatusCode {
		case http.StatusNotFound:
			class = tartarus.ErrNotFound
		case http.StatusUnauthorized, http.StatusForbidden:
			class = tartarus.ErrPermissionDenied
		}
		return nil, tartarus.Errorf(class, "pull %s: GET %s: %s: %s", p.ref, what, resp.Status, strings.TrimSpace(string(msg)))
	}
}

// authenticate answers a 401's challenge: Basic with the registry's
// credentials, or Bearer with a token fetched from the realm (with the
// credentials when there are some, anonymously otherwise).
func (p *puller) authenticate(ctx context.Context, challenge string) error {
	user, pass, haveCreds := "", "", false
	if p.o.Credentials != nil {
		user, pass, haveCreds = p.o.Credentials(p.ref.Host)
	}
	scheme, params, _ := strings.Cut(challenge, " ")
	switch strings.ToLower(scheme) {
	case "basic":
		if !haveCreds {
			return tartarus.Errorf(tartarus.ErrPermissionDenied, "pull %s: the registry wants a login and the server's docker config has none for %s", p.ref, p.ref.Host)
		}
		p.mu.Lock()
		p.token = "Basic " + base64.StdEncoding.EncodeToString([]byte(user+":"+pass))
		p.mu.Unlock()
		return nil
	case "bearer":
	default:
		return tartarus.Errorf(tartarus.ErrPermissionDenied, "pull %s: the registry wants authentication %q", p.ref, scheme)
	}
	kv := map[string]string{}
	for _, m := range regexp.MustCompile(`(\w+)="([^"]*)"`).FindAllStringSubmatch(params, -1) {
		kv[strings.ToLower(m[1])] = m[2]
	}
	realm, err := url.Parse(kv["realm"])
	if err != nil || (realm.Scheme != "https" && realm.Scheme != "http") || realm.Host == "" {
		return tartarus.Errorf(tartarus.ErrPermissionDenied, "pull %s: token realm %q", p.ref, kv["realm"])
	}
	q := realm.Query()
	if s := kv["service"]; s != "" {
		q.Set("service", s)
	}
	scope := kv["scope"]
	if scope == "" {
		scope = "repository:" + p.ref.Repo + ":pull"
	}
	q.Set("scope", scope)
	realm.RawQuery = q.Encode()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, realm.String(), nil)
	if err != nil {
		return err
	}
	// A login goes to the realm only over HTTPS, or on this host.
	if haveCreds && (realm.Scheme == "https" || (ImageRef{Host: realm.Host}).Loopback()) {
		req.SetBasicAuth(user, pass)
	}
	resp, err := p.client.Do(req)
	if err != nil {
		return tartarus.Errorf(tartarus.ErrUnavailable, "pull %s: token: %v", p.ref, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return tartarus.Errorf(tartarus.ErrPermissionDenied, "pull %s: token: %s", p.ref, resp.Status)
	}
	var t struct {
		Token       string `json:"token"`
		AccessToken string `json:"access_token"`
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(&t); err != nil {
		return tartarus.Errorf(tartarus.ErrPermissionDenied, "pull %s: token: %v", p.ref, err)
	}
	if t.Token == "" {
		t.Token = t.AccessToken
	}
	p.mu.Lock()
	p.token = "Bearer " + t.Token
	p.mu.Unlock()
	return nil
}

// DockerConfigCredentials reads registry logins from a docker config file
// ($DOCKER_CONFIG/config.json, else ~/.docker/config.json, of the server):
// its "auths" entries with an "auth" (base64 user:password) or a username
// and password. Credential helpers are not run.
func DockerConfigCredentials() func(host string) (string, string, bool) {
	dir := os.Getenv("DOCKER_CONFIG")
	if dir == "" {
		home, err := os.UserHomeDir()
		if err != nil {
			return nil
		}
		dir = filepath.Join(home, ".docker")
	}
	return func(host string) (string, string, bool) {
		b, err := os.ReadFile(filepath.Join(dir, "config.json"))
		if err != nil {
			return "", "", false
		}
		var cfg struct {
			Auths map[string]struct {
				Auth     string `json:"auth"`
				Username string `json:"username"`
				Password string `json:"password"`
			} `json:"auths"`
		}
		if json.Unmarshal(b, &cfg) != nil {
			return "", "", false
		}
		for k, a := range cfg.Auths {
			k = strings.TrimPrefix(strings.TrimPrefix(k, "https://"), "http://")
			if k, _, _ = strings.Cut(k, "/"); k != host {
				continue
			}
			if a.Auth != "" {
				raw, err := base64.StdEncoding.DecodeString(a.Auth)
				if u, pw, ok := strings.Cut(string(raw), ":"); err == nil && ok {
					return u, pw, true
				}
			}
			if a.Username != "" {
				return a.Username, a.Password, true
			}
		}
		return "", "", false
	}
}
