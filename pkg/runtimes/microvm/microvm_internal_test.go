package microvm

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/tartarus-sandbox/tartarus/pkg/clock"

	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

func TestConfigValidate(t *testing.T) {
	tests := []struct {
		name string
		cfg  Config
		want []string
	}{
		{"ok", Config{StateDir: "/x", Accel: "tcg"}, nil},
		{"defaults ok", Config{StateDir: "/x"}, nil},
		{"everything wrong", Config{Accel: "hvf", BootTimeout: -1, TBSizeMB: -2},
			[]string{"StateDir", "accel \"hvf\"", "BootTimeout", "TBSizeMB"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.cfg.Validate()
			if len(tt.want) == 0 {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if !errors.Is(err, tartarus.ErrInvalid) {
				t.Fatalf("err %v, want ErrInvalid", err)
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q lacks %q", err, w)
				}
			}
		})
	}
}

func TestValidID(t *testing.T) {
	tests := []struct {
		id string
		ok bool
	}{
		{"sb-1a2b", true}, {"RT_x.9", true}, {"", false}, {".hidden", false}, {"a/b", false},
		{"..", false}, {strings.Repeat("a", 65), false}, {"a b", false},
	}
	for _, tt := range tests {
		if err := validID(tt.id); (err == nil) != tt.ok {
			t.Errorf("validID(%q) = %v, want ok=%v", tt.id, err, tt.ok)
		}
	}
}

func TestParseCPUMHz(t *testing.T) {
	tests := []struct {
		in      string
		want    int
		wantErr bool
	}{
		{"processor\t: 0\ncpu MHz\t\t: 2299.998\ncache size\t: 512 KB\n", 2299998, false},
		{"cpu MHz : 3000\n", 3000000, false},
		{"processor: 0\n", 0, true},
		{"cpu MHz : fast\n", 0, true},
	}
	for _, tt := range tests {
		got, err := parseCPUMHz([]byte(tt.in))
		if got != tt.want || (err != nil) != tt.wantErr {
			t.Errorf("parseCPUMHz(%q) = %d, %v", tt.in, got, err)
		}
	}
}

func TestIsOurQEMU(t *testing.T) {
	dir := "/state/sb-1"
	ours := []string{"qemu-system-x86_64", "-name", "tartarus-sb-1", "-pidfile", "/state/sb-1/qemu.pid"}
	tests := []struct {
		name string
		argv []string
		want bool
	}{
		{"ours", ours, true},
		{"full path", append([]string{"/usr/bin/qemu-system-x86_64"}, ours[1:]...), true},
		{"other sandbox", []string{"qemu-system-x86_64", "-name", "tartarus-sb-2", "-pidfile", "/state/sb-1/qemu.pid"}, false},
		{"other state dir", []string{"qemu-system-x86_64", "-name", "tartarus-sb-1", "-pidfile", "/other/sb-1/qemu.pid"}, false},
		{"not qemu", []string{"sleep", "-name", "tartarus-sb-1", "-pidfile", "/state/sb-1/qemu.pid"}, false},
		{"gone", nil, false},
	}
	for _, tt := range tests {
		if got := isOurQEMU(tt.argv, "sb-1", dir); got != tt.want {
			t.Errorf("%s: isOurQEMU = %v, want %v", tt.name, got, tt.want)
		}
	}
}

func testDriver(t *testing.T) *Driver {
	d := &Driver{
		cfg:    Config{StateDir: t.TempDir(), QEMU: "qemu-system-x86_64", TBSizeMB: 32, KernelArgs: []string{"8250.nr_uarts=1"}},
		tscKHz: 2299998,
		vms:    map[string]*vm{},
		fp:     tartarus.Fingerprint{Available: true, MaxCPUs: 2, MaxMemoryMB: 1024, Accel: "tcg"},
	}
	d.log = discardLogger()
	d.clock = clock.System{}
	return d
}

func TestQEMUArgs(t *testing.T) {
	d := testDriver(t)
	v := &vm{id: "sb-1", dir: "/state/sb-1", conf: vmConfig{ID: "sb-1", CPUs: 2, MemoryMB: 256,
		Image: tartarus.Image{Kernel: "/img/vmlinux", Initrd: "/img/initrd.img", RootFS: "/img/rootfs.ext4"}}}
	for _, tt := range []struct {
		accel string
		want  []string
		// kernel command line words that only this accelerator gets
		kernel, notKernel []string
	}{
		// ARAT and a trusted TSC let an idle TCG guest stop its tick;
		// without ASLR, TCG reuses the code it translated for the last
		// process.
		{"tcg", []string{"-accel", "tcg,tb-size=32", "-cpu qemu64,+arat"}, []string{"norandmaps"}, nil},
		{"kvm", []string{"-accel", "kvm", "-cpu", "host"}, nil, []string{"norandmaps"}},
	} {
		args := d.qemuArgs(v, tt.accel)
		joined := strings.Join(args, " ")
		for _, w := range append(tt.want, "-machine microvm", "-m 256", "-smp 2", "-kernel /img/vmlinux",
			"-pidfile /state/sb-1/qemu.pid", "name=tartarus", "virtio-blk-device,drive=root") {
			if !strings.Contains(joined, w) {
				t.Errorf("%s: args lack %q:\n%s", tt.accel, w, joined)
			}
		}
		i := slices.Index(args, "-append")
		for _, w := range []string{"tsc_early_khz=2299998", "tartarus.root=/dev/vda", "tartarus.rootfstype=ext4",
			"tartarus.hostname=sb-1", "panic=-1", "8250.nr_uarts=1", "tsc=reliable"} {
			if !slices.Contains(strings.Fields(args[i+1]), w) {
				t.Errorf("kernel command line %q lacks %s", args[i+1], w)
			}
		}
		for _, w := range tt.kernel {
			if !slices.Contains(strings.Fields(args[i+1]), w) {
				t.Errorf("%s: kernel command line %q lacks %s", tt.accel, args[i+1], w)
			}
		}
		for _, w := range tt.notKernel {
			if slices.Contains(strings.Fields(args[i+1]), w) {
				t.Errorf("%s: kernel command line %q has %s", tt.accel, args[i+1], w)
			}
		}
		if !isOurQEMU(append([]string{"qemu-system-x86_64"}, args...), "sb-1", "/state/sb-1") {
			t.Errorf("Recover would not recognise its own QEMU")
		}
	}
}

func TestQEMUArgsDiskThrottle(t *testing.T) {
	d := testDriver(t)
	for _, tt := range []struct {
		iops int
		want string
	}{
		{0, "format=qcow2,if=none,discard=unmap"},
		{500, "format=qcow2,if=none,discard=unmap,throttling.iops-total=500"},
	} {
		v := &vm{id: "sb-1", dir: "/state/sb-1", conf: vmConfig{ID: "sb-1", CPUs: 1, MemoryMB: 256, DiskIOPS: tt.iops,
			Image: tartarus.Image{Kernel: "/img/vmlinux", Initrd: "/img/initrd.img", RootFS: "/img/rootfs.ext4"}}}
		args := d.qemuArgs(v, "tcg")
		i := slices.Index(args, "-drive")
		if i < 0 || !strings.HasSuffix(args[i+1], tt.want) {
			t.Errorf("iops %d: -drive %q, want it to end in %q", tt.iops, args[i+1], tt.want)
		}
	}
}

func TestCreateChecks(t *testing.T) {
	d := testDriver(t)
	imgDir := t.TempDir()
	img := &tartarus.Image{Name: "base"}
	for _, f := range []struct {
		p    *string
		name string
	}{{&img.Kernel, "vmlinux"}, {&img.Initrd, "initrd.img"}, {&img.RootFS, "rootfs.ext4"}} {
		*f.p = filepath.Join(imgDir, f.name)
		if err := os.WriteFile(*f.p, nil, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	tests := []struct {
		name string
		cfg  *tartarus.VMConfig
		want error
		msg  string
	}{
		{"too many cpus", &tartarus.VMConfig{ID: "a", Image: img, CPUs: 3, MemoryMB: 256}, tartarus.ErrResourceExhausted, "at most 2"},
		{"too much memory", &tartarus.VMConfig{ID: "a", Image: img, CPUs: 1, MemoryMB: 2048}, tartarus.ErrResourceExhausted, "at most 1024 MiB"},
		{"too little memory", &tartarus.VMConfig{ID: "a", Image: img, CPUs: 1, MemoryMB: 8}, tartarus.ErrInvalid, "at least"},
		{"no image", &tartarus.VMConfig{ID: "a", CPUs: 1, MemoryMB: 256}, tartarus.ErrInvalid, "no kernel"},
		{"missing image file", &tartarus.VMConfig{ID: "a", Image: &tartarus.Image{Name: "x", Kernel: "/nope", Initrd: "/nope", RootFS: "/nope"}, CPUs: 1, MemoryMB: 256}, tartarus.ErrFailedPrecondition, "/nope"},
		{"bad id", &tartarus.VMConfig{ID: "../x", Image: img, CPUs: 1, MemoryMB: 256}, tartarus.ErrInvalid, "sandbox id"},
		{"bad env", &tartarus.VMConfig{ID: "a", Image: img, CPUs: 1, MemoryMB: 256, Env: map[string]string{"A=B": "c"}}, tartarus.ErrInvalid, "env"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := d.Create(context.Background(), tt.cfg)
			if !errors.Is(err, tt.want) || !strings.Contains(err.Error(), tt.msg) {
				t.Fatalf("Create: %v, want %v mentioning %q", err, tt.want, tt.msg)
			}
			if ents, _ := os.ReadDir(d.cfg.StateDir); len(ents) != 0 {
				t.Errorf("a refused Create left %d entries in the state dir", len(ents))
			}
		})
	}
	unavailable := testDriver(t)
	unavailable.fp = tartarus.Fingerprint{Reason: "not installed: qemu"}
	if _, err := unavailable.Create(context.Background(), tests[0].cfg); !errors.Is(err, tartarus.ErrUnavailable) {
		t.Errorf("Create without QEMU: %v, want ErrUnavailable", err)
	}
}

func TestUnknownID(t *testing.T) {
	d := testDriver(t)
	ctx := context.Background()
	if err := d.Start(ctx, "nope"); !errors.Is(err, tartarus.ErrNotFound) {
		t.Errorf("Start: %v", err)
	}
	if _, err := d.Exec(ctx, "nope", &tartarus.ExecRequest{Cmd: []string{"true"}}); !errors.Is(err, tartarus.ErrNotFound) {
		t.Errorf("Exec: %v", err)
	}
	if _, err := d.Exec(ctx, "nope", &tartarus.ExecRequest{}); !errors.Is(err, tartarus.ErrInvalid) {
		t.Errorf("Exec without a command: %v, want ErrInvalid", err)
	}
	if err := d.Pause(ctx, "nope"); !errors.Is(err, tartarus.ErrNotFound) {
		t.Errorf("Pause: %v", err)
	}
	if err := d.Destroy(ctx, "nope"); err != nil {
		t.Errorf("Destroy of an unknown id: %v", err)
	}
	if err := d.Destroy(ctx, "../etc"); !errors.Is(err, tartarus.ErrInvalid) {
		t.Errorf("Destroy of a path: %v, want ErrInvalid", err)
	}
}

func discardLogger() *slog.Logger { return slog.New(slog.DiscardHandler) }

func TestSnapshotChecks(t *testing.T) {
	d := testDriver(t)
	ctx := context.Background()
	if _, err := d.Snapshot(ctx, "nope", t.TempDir()); !errors.Is(err, tartarus.ErrNotFound) {
		t.Errorf("Snapshot of an unknown id: %v, want ErrNotFound", err)
	}
	tests := []struct {
		name  string
		files map[string]string
		dir   string
		want  error
	}{
		{"empty dir", nil, "", tartarus.ErrInvalid},
		{"bad vm.json", map[string]string{snapConfig: "{"}, "", tartarus.ErrInvalid},
		{"quote in path", nil, "it's", tartarus.ErrInvalid},
		{"other image", map[string]string{snapConfig: `{"id":"a","image":{"digest":"sha256:old"},"cpus":1,"memory_mb":256}`}, "", tartarus.ErrFailedPrecondition},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), tt.dir)
			if err := os.MkdirAll(dir, 0o755); err != nil {
				t.Fatal(err)
			}
			for name, content := range tt.files {
				if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			cfg := &tartarus.VMConfig{ID: "restored", Image: &tartarus.Image{Name: "base", Digest: "sha256:new"}}
			if err := d.Restore(ctx, cfg, dir); !errors.Is(err, tt.want) {
				t.Fatalf("Restore: %v, want %v", err, tt.want)
			}
			if ents, _ := os.ReadDir(d.cfg.StateDir); len(ents) != 0 {
				t.Errorf("a refused Restore left %d entries in the state dir", len(ents))
			}
		})
	}
}
