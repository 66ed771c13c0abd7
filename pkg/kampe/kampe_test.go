package kampe

import (
	"archive/tar"
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/tartarus-sandbox/tartarus/pkg/runtimes/container"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

func TestAnalyze(t *testing.T) {
	base := func() *ContainerFacts {
		return &ContainerFacts{ID: "0123456789abcdef0123", Name: "/web", Image: "nginx", NetworkMode: "none",
			MemoryMB: 512, Cmd: []string{"nginx"}, Arch: "amd64"}
	}
	tests := []struct {
		name         string
		change       func(f *ContainerFacts)
		wantBlocking int
		wantRisk     RiskLevel
		wantType     ChangeType
		wantText     string
	}{
		{name: "plain container", change: func(*ContainerFacts) {}, wantRisk: RiskLevelLow},
		{name: "host bind mount", change: func(f *ContainerFacts) {
			f.Mounts = []Mount{{Type: "bind", Source: "/srv/data", Destination: "/data"}}
		}, wantBlocking: 1, wantRisk: RiskLevelMedium, wantType: ChangeTypeFilesystem, wantText: "/srv/data"},
		{name: "docker socket", change: func(f *ContainerFacts) {
			f.Mounts = []Mount{{Type: "bind", Source: "/var/run/docker.sock", Destination: "/var/run/docker.sock"}}
		}, wantBlocking: 2, wantRisk: RiskLevelHigh, wantType: ChangeTypeSecurity, wantText: "control of the host"},
		{name: "named volume is carried", change: func(f *ContainerFacts) {
			f.Mounts = []Mount{{Type: "volume", Source: "/var/lib/docker/volumes/v/_data", Destination: "/data"}}
		}, wantRisk: RiskLevelMedium, wantType: ChangeTypeFilesystem, wantText: "copied"},
		{name: "host network", change: func(f *ContainerFacts) { f.NetworkMode = "host" },
			wantBlocking: 1, wantRisk: RiskLevelHigh, wantType: ChangeTypeNetwork, wantText: "host network"},
		{name: "another container's network", change: func(f *ContainerFacts) { f.NetworkMode = "container:db" },
			wantBlocking: 1, wantRisk: RiskLevelHigh, wantType: ChangeTypeNetwork, wantText: "db"},
		{name: "bridge network", change: func(f *ContainerFacts) { f.NetworkMode = "bridge" },
			wantRisk: RiskLevelLow, wantType: ChangeTypeNetwork, wantText: "no network"},
		{name: "published port", change: func(f *ContainerFacts) {
			f.Ports = []PortMapping{{ContainerPort: 80, Protocol: "tcp", HostIP: "0.0.0.0", HostPort: 8080}}
		}, wantBlocking: 1, wantRisk: RiskLevelMedium, wantType: ChangeTypeNetwork, wantText: "80/tcp"},
		{name: "privileged", change: func(f *ContainerFacts) { f.Privileged = true },
			wantBlocking: 1, wantRisk: RiskLevelHigh, wantType: ChangeTypeSecurity, wantText: "privileged"},
		{name: "device", change: func(f *ContainerFacts) { f.Devices = []string{"/dev/fuse"} },
			wantBlocking: 1, wantRisk: RiskLevelHigh, wantType: ChangeTypeDevices, wantText: "/dev/fuse"},
		{name: "gpu", change: func(f *ContainerFacts) { f.GPUs = true },
			wantBlocking: 1, wantRisk: RiskLevelHigh, wantType: ChangeTypeDevices, wantText: "GPU"},
		{name: "host pid", change: func(f *ContainerFacts) { f.PidMode = "host" },
			wantBlocking: 1, wantRisk: RiskLevelHigh, wantType: ChangeTypeSecurity, wantText: "process namespace"},
		{name: "host ipc", change: func(f *ContainerFacts) { f.IpcMode = "host" },
			wantBlocking: 1, wantRisk: RiskLevelHigh, wantType: ChangeTypeSecurity, wantText: "IPC"},
		{name: "user namespace", change: func(f *ContainerFacts) { f.UsernsMode = "private" },
			wantRisk: RiskLevelMedium, wantType: ChangeTypeSecurity, wantText: "user namespace"},
		{name: "cap_add is fine in a guest", change: func(f *ContainerFacts) { f.CapAdd = []string{"NET_ADMIN"} },
			wantRisk: RiskLevelLow, wantType: ChangeTypeSecurity, wantText: "NET_ADMIN"},
		{name: "sysctl", change: func(f *ContainerFacts) { f.Sysctls = map[string]string{"net.core.somaxconn": "1024"} },
			wantBlocking: 1, wantRisk: RiskLevelLow, wantType: ChangeTypeResources, wantText: "somaxconn"},
		{name: "arm64 image", change: func(f *ContainerFacts) { f.Arch = "arm64" },
			wantBlocking: 1, wantRisk: RiskLevelHigh, wantType: ChangeTypeEntrypoint, wantText: "arm64"},
		{name: "no memory limit", change: func(f *ContainerFacts) { f.MemoryMB = 0 },
			wantRisk: RiskLevelLow, wantType: ChangeTypeResources, wantText: "no memory limit"},
		{name: "running", change: func(f *ContainerFacts) { f.Running = true },
			wantRisk: RiskLevelLow, wantType: ChangeTypeEntrypoint, wantText: "processes and memory are not carried"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := base()
			tt.change(f)
			p := Analyze(f)
			if got := len(p.Blocking()); got != tt.wantBlocking {
				t.Errorf("blocking changes %d, want %d: %+v", got, tt.wantBlocking, p.RequiredChanges)
			}
			if p.RiskLevel != tt.wantRisk {
				t.Errorf("risk %s, want %s", p.RiskLevel, tt.wantRisk)
			}
			if p.TargetTemplate != "migrated-web" || p.ContainerID != f.ID {
				t.Errorf("plan names %q %q", p.TargetTemplate, p.ContainerID)
			}
			if tt.wantType != "" {
				found := false
				for _, c := range p.RequiredChanges {
					found = found || c.Type == tt.wantType && strings.Contains(c.Description, tt.wantText)
				}
				if !found {
					t.Errorf("no %s change mentioning %q: %+v", tt.wantType, tt.wantText, p.RequiredChanges)
				}
			}
			if len(p.Recommendations) == 0 || p.EstimatedDowntime <= 0 {
				t.Errorf("plan without recommendations or downtime: %+v", p)
			}
			if tt.wantBlocking > 0 && !strings.Contains(p.Recommendations[0], "--force") {
				t.Errorf("first recommendation %q does not say how to proceed", p.Recommendations[0])
			}
		})
	}
}

func TestTemplateName(t *testing.T) {
	for in, want := range map[string]string{
		"/web":                   "migrated-web",
		"My_App.v2":              "migrated-my_app.v2",
		"":                       "migrated-",
		"ünïcode":                "migrated-ncode",
		strings.Repeat("a", 100): "migrated-" + strings.Repeat("a", 55),
	} {
		got := TemplateName(in)
		if in == "" {
			want = "migrated"
		}
		if got != want || !tartarus.ValidName(got) {
			t.Errorf("TemplateName(%q) = %q, want %q", in, got, want)
		}
	}
}

type tarEntry struct {
	hdr  tar.Header
	body string
}

func makeTar(t testing.TB, entries []tarEntry) []byte {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		h := e.hdr
		h.Size = int64(len(e.body))
		if h.Mode == 0 {
			h.Mode = 0o644
		}
		if err := tw.WriteHeader(&h); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write([]byte(e.body)); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func TestExtractTar(t *testing.T) {
	tests := []struct {
		name    string
		entries []tarEntry
		wantErr bool
		// check runs on the extraction directory and the directory around it.
		check func(t *testing.T, root, outside string)
	}{
		{name: "files, dirs, links", entries: []tarEntry{
			{hdr: tar.Header{Name: "etc/", Typeflag: tar.TypeDir, Mode: 0o755}},
			{hdr: tar.Header{Name: "etc/conf", Typeflag: tar.TypeReg, Mode: 0o600}, body: "x=1"},
			{hdr: tar.Header{Name: "bin/tool", Typeflag: tar.TypeReg, Mode: 0o4755}, body: "#!"},
			{hdr: tar.Header{Name: "etc/link", Typeflag: tar.TypeSymlink, Linkname: "/etc/conf"}},
			{hdr: tar.Header{Name: "etc/hard", Typeflag: tar.TypeLink, Linkname: "etc/conf"}},
			{hdr: tar.Header{Name: "dev/null", Typeflag: tar.TypeChar, Devmajor: 1, Devminor: 3}},
		}, check: func(t *testing.T, root, _ string) {
			if b, _ := os.ReadFile(filepath.Join(root, "etc/hard")); string(b) != "x=1" {
				t.Errorf("hard link content %q", b)
			}
			if l, _ := os.Readlink(filepath.Join(root, "etc/link")); l != "/etc/conf" {
				t.Errorf("symlink target %q", l)
			}
			if st, err := os.Stat(filepath.Join(root, "bin/tool")); err != nil || st.Mode()&os.ModeSetuid == 0 || st.Mode().Perm() != 0o755 {
				t.Errorf("bin/tool mode %v %v", st.Mode(), err)
			}
			if st, err := os.Stat(filepath.Join(root, "etc/conf")); err != nil || st.Mode().Perm() != 0o600 {
				t.Errorf("etc/conf mode %v %v", st.Mode(), err)
			}
			if _, err := os.Lstat(filepath.Join(root, "dev/null")); !os.IsNotExist(err) {
				t.Errorf("device node was created: %v", err)
			}
		}},
		{name: "dot-dot escape", entries: []tarEntry{{hdr: tar.Header{Name: "../evil", Typeflag: tar.TypeReg}, body: "x"}}, wantErr: true},
		{name: "absolute name stays inside", entries: []tarEntry{{hdr: tar.Header{Name: "/abs", Typeflag: tar.TypeReg}, body: "x"}},
			check: func(t *testing.T, root, _ string) {
				if b, _ := os.ReadFile(filepath.Join(root, "abs")); string(b) != "x" {
					t.Errorf("abs: %q", b)
				}
			}},
		{name: "write through a planted symlink", entries: []tarEntry{
			{hdr: tar.Header{Name: "up", Typeflag: tar.TypeSymlink, Linkname: ".."}},
			{hdr: tar.Header{Name: "up/evil", Typeflag: tar.TypeReg}, body: "x"},
		}, wantErr: true, check: func(t *testing.T, _, outside string) {
			if _, err := os.Stat(filepath.Join(outside, "evil")); err == nil {
				t.Error("a file was written outside the root")
			}
		}},
		{name: "hard link to outside", entries: []tarEntry{
			{hdr: tar.Header{Name: "h", Typeflag: tar.TypeLink, Linkname: "../../etc/passwd"}},
		}, wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			outside := t.TempDir()
			root := filepath.Join(outside, "root")
			if err := os.Mkdir(root, 0o755); err != nil {
				t.Fatal(err)
			}
			_, err := ExtractTar(context.Background(), bytes.NewReader(makeTar(t, tt.entries)), root)
			if (err != nil) != tt.wantErr {
				t.Fatalf("ExtractTar: %v, wantErr %v", err, tt.wantErr)
			}
			if tt.check != nil {
				tt.check(t, root, outside)
			}
		})
	}
}

func FuzzExtractTar(f *testing.F) {
	f.Add(makeTar(f, []tarEntry{{hdr: tar.Header{Name: "a/b", Typeflag: tar.TypeReg}, body: "x"}}))
	f.Add(makeTar(f, []tarEntry{{hdr: tar.Header{Name: "up", Typeflag: tar.TypeSymlink, Linkname: "/"}},
		{hdr: tar.Header{Name: "up/x", Typeflag: tar.TypeReg}, body: "x"}}))
	f.Fuzz(func(t *testing.T, data []byte) {
		outside := t.TempDir()
		root := filepath.Join(outside, "root")
		if err := os.Mkdir(root, 0o755); err != nil {
			t.Fatal(err)
		}
		_, _ = ExtractTar(context.Background(), bytes.NewReader(data), root)
		ents, _ := os.ReadDir(outside)
		if len(ents) != 1 {
			t.Errorf("extraction wrote next to the root: %v", ents)
		}
	})
}

func TestWriteTarRoundTrip(t *testing.T) {
	src := t.TempDir()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.MkdirAll(filepath.Join(src, "a/b"), 0o750))
	must(os.WriteFile(filepath.Join(src, "a/b/f"), []byte("data"), 0o640))
	must(os.Symlink("b/f", filepath.Join(src, "a/l")))
	must(os.WriteFile(filepath.Join(src, ".tartarus-unpacked"), []byte("marker"), 0o644))
	var buf bytes.Buffer
	must(container.WriteTar(context.Background(), src, &buf))
	dst := t.TempDir()
	if _, err := ExtractTar(context.Background(), &buf, dst); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(filepath.Join(dst, "a/l")); string(b) != "data" {
		t.Errorf("through symlink: %q", b)
	}
	if st, _ := os.Stat(filepath.Join(dst, "a/b")); st == nil || st.Mode().Perm() != 0o750 {
		t.Errorf("dir mode %v", st)
	}
	if _, err := os.Stat(filepath.Join(dst, ".tartarus-unpacked")); !os.IsNotExist(err) {
		t.Errorf("the unpack marker was archived")
	}
}
