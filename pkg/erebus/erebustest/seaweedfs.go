package erebustest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"
)

// Environment variables of StartSeaweedFS: WeedEnv names the `weed`
// binary (scripts/seaweedfs.sh builds one); RequireS3Env=1 turns a missing
// binary into a test failure instead of a skip.
const (
	WeedEnv      = "TARTARUS_WEED"
	RequireS3Env = "TARTARUS_REQUIRE_S3"
)

// SeaweedFS is a real SeaweedFS server (`weed mini`: master, volume server,
// filer and S3 gateway in one process) on loopback, started for one test
// with its own data directory, free ports and an S3 identity.
type SeaweedFS struct {
	// Endpoint is 127.0.0.1:PORT of the S3 API (plain http).
	Endpoint string
	// AccessKey and SecretKey are the identity the server accepts; it has
	// every S3 permission.
	AccessKey string
	SecretKey string
	// Dir holds the server's data and its log (weed.log).
	Dir string

	master   string   // HOST:PORT of the master's HTTP API
	sockets  []string // what the server leaves in /tmp
	cmd      *exec.Cmd
	done     chan struct{}
	stopOnce sync.Once
}

// WeedPath returns the weed binary to run: $TARTARUS_WEED, else weed on
// PATH. It skips the test when there is none (fails it when
// TARTARUS_REQUIRE_S3 is set).
func WeedPath(t testing.TB) string {
	t.Helper()
	miss := func(why string) {
		t.Helper()
		if os.Getenv(RequireS3Env) != "" {
			t.Fatalf("SeaweedFS missing: %s", why)
		}
		t.Skipf("SeaweedFS missing: %s (build it with scripts/seaweedfs.sh DIR and set %s=DIR/weed; set %s=1 to fail instead)",
			why, WeedEnv, RequireS3Env)
	}
	if p := os.Getenv(WeedEnv); p != "" {
		if _, err := os.Stat(p); err != nil {
			miss(fmt.Sprintf("%s=%s: %v", WeedEnv, p, err))
		}
		return p
	}
	p, err := exec.LookPath("weed")
	if err != nil {
		miss("weed not on PATH and " + WeedEnv + " unset")
	}
	return p
}

// StartSeaweedFS starts SeaweedFS for t and waits until its S3 API accepts
// writes. The server is killed when the test ends (or by Stop).
func StartSeaweedFS(t testing.TB) *SeaweedFS {
	t.Helper()
	weed := WeedPath(t)
	dir := t.TempDir()
	s := &SeaweedFS{
		AccessKey: "tartarus-" + randomHex(8),
		SecretKey: randomHex(20),
		Dir:       dir,
		done:      make(chan struct{}),
	}
	cfgPath := filepath.Join(dir, "s3.json")
	if err := writeS3Config(cfgPath, s.AccessKey, s.SecretKey); err != nil {
		t.Fatal(err)
	}
	ports, err := freePorts(10)
	if err != nil {
		t.Fatalf("seaweedfs: %v", err)
	}
	s.Endpoint = net.JoinHostPort("127.0.0.1", strconv.Itoa(ports[6]))
	s.master = net.JoinHostPort("127.0.0.1", strconv.Itoa(ports[0]))
	data := filepath.Join(dir, "data")
	if err := os.Mkdir(data, 0o700); err != nil {
		t.Fatal(err)
	}
	logf, err := os.Create(filepath.Join(dir, "weed.log"))
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	p := func(i int) string { return strconv.Itoa(ports[i]) }
	// weed mini puts one unix socket per gRPC port in /tmp whatever its
	// flags say; they are removed once the server is gone.
	for _, svc := range []struct {
		name string
		port int
	}{{"master", ports[1]}, {"volume", ports[3]}, {"filer", ports[5]}, {"s3", ports[7]}, {"admin", ports[9]}} {
		s.sockets = append(s.sockets, fmt.Sprintf("/tmp/seaweedfs-%s-grpc-%d.sock", svc.name, svc.port))
	}
	s.cmd = exec.Command(weed, "-logdir="+dir, "mini",
		"-dir="+data,
		"-ip=127.0.0.1", "-ip.bind=127.0.0.1",
		"-master.port="+p(0), "-master.port.grpc="+p(1),
		"-volume.port="+p(2), "-volume.port.grpc="+p(3),
		"-filer.port="+p(4), "-filer.port.grpc="+p(5),
		"-s3.port="+p(6), "-s3.port.grpc="+p(7),
		"-s3.config="+cfgPath,
		"-s3.port.iceberg=0", "-s3.port.lance=0",
		"-webdav=false", "-admin.ui=false",
		"-admin.port="+p(8), "-admin.port.grpc="+p(9), "-admin.port.legacy=0",
		"-master.telemetry=false",
		"-master.volumeSizeLimitMB=256",
		"-filer.localSocket="+filepath.Join(dir, "filer.sock"),
		"-s3.localSocket="+filepath.Join(dir, "s3.sock"),
	)
	s.cmd.Dir = dir
	s.cmd.Stdout, s.cmd.Stderr = logf, logf
	if err := s.cmd.Start(); err != nil {
		t.Fatalf("seaweedfs: start %s: %v", weed, err)
	}
	go func() { s.cmd.Wait(); close(s.done) }()
	t.Cleanup(func() {
		s.Stop()
		if t.Failed() {
			t.Logf("seaweedfs log (tail):\n%s", s.LogTail(4000))
		}
	})
	start := time.Now()
	if err := s.waitReady(60 * time.Second); err != nil {
		t.Fatalf("seaweedfs: %v\nlog (tail):\n%s", err, s.LogTail(4000))
	}
	t.Logf("seaweedfs: S3 on %s ready in %v", s.Endpoint, time.Since(start).Round(time.Millisecond))
	return s
}

// Stop kills the server and waits for it to exit. Safe to call twice.
func (s *SeaweedFS) Stop() {
	s.stopOnce.Do(func() {
		s.cmd.Process.Kill()
		<-s.done
		for _, p := range s.sockets {
			os.Remove(p)
		}
	})
}

// LogTail returns the last n bytes of the server's log.
func (s *SeaweedFS) LogTail(n int) string {
	b, _ := os.ReadFile(filepath.Join(s.Dir, "weed.log"))
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return string(b)
}

// waitReady polls until the S3 gateway answers HTTP and the master has a
// writable volume (its /dir/assign hands out a file id), so the first PUT
// of a test does not race the volume server's registration.
func (s *SeaweedFS) waitReady(limit time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), limit)
	defer cancel()
	client := &http.Client{Timeout: 2 * time.Second}
	probes := []struct {
		what string
		url  string
		ok   func(*http.Response) bool
	}{
		{"S3 gateway", "http://" + s.Endpoint + "/", func(r *http.Response) bool { return r.StatusCode < 500 }},
		{"writable volume", "http://" + s.master + "/dir/assign", func(r *http.Response) bool {
			var a struct {
				Fid string `json:"fid"`
			}
			return r.StatusCode == http.StatusOK && json.NewDecoder(r.Body).Decode(&a) == nil && a.Fid != ""
		}},
	}
	for _, p := range probes {
		for {
			req, _ := http.NewRequestWithContext(ctx, http.MethodGet, p.url, nil)
			resp, err := client.Do(req)
			if err == nil {
				ok := p.ok(resp)
				resp.Body.Close()
				if ok {
					break
				}
			}
			select {
			case <-s.done:
				return fmt.Errorf("weed exited while waiting for the %s", p.what)
			case <-ctx.Done():
				return fmt.Errorf("no %s after %v", p.what, limit)
			case <-time.After(100 * time.Millisecond):
			}
		}
	}
	return nil
}

func writeS3Config(path, access, secret string) error {
	type cred struct {
		AccessKey string `json:"accessKey"`
		SecretKey string `json:"secretKey"`
	}
	type identity struct {
		Name        string   `json:"name"`
		Credentials []cred   `json:"credentials"`
		Actions     []string `json:"actions"`
	}
	cfg := struct {
		Identities []identity `json:"identities"`
	}{[]identity{{
		Name:        "tartarus",
		Credentials: []cred{{access, secret}},
		Actions:     []string{"Admin", "Read", "List", "Tagging", "Write"},
	}}}
	b, err := json.MarshalIndent(cfg, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, b, 0o600)
}

// freePorts returns n distinct loopback ports that were free a moment ago,
// each below 55536 so that SeaweedFS's default "port+10000" arithmetic,
// should it apply anywhere, stays in range.
func freePorts(n int) ([]int, error) {
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	var ports []int
	for tries := 0; len(ports) < n && tries < 100*n; tries++ {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("free port: %w", err)
		}
		ls = append(ls, l)
		if port := l.Addr().(*net.TCPAddr).Port; port < 55536 {
			ports = append(ports, port)
		}
	}
	if len(ports) < n {
		return nil, fmt.Errorf("found only %d free ports below 55536", len(ports))
	}
	return ports, nil
}

func randomHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}
