package images

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"testing"

	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

// cpioEntry is one parsed newc record, for checking the writer.
type cpioEntry struct {
	name       string
	mode       uint32
	rmaj, rmin uint32
	data       string
}

// parseNewc reads a newc archive up to its trailer.
func parseNewc(t *testing.T, b []byte) []cpioEntry {
	t.Helper()
	var out []cpioEntry
	off := 0
	align := func() { off = (off + 3) &^ 3 }
	for {
		if len(b)-off < 110 || string(b[off:off+6]) != "070701" {
			t.Fatalf("bad header at %d", off)
		}
		field := func(i int) uint32 {
			v, err := strconv.ParseUint(string(b[off+6+8*i:off+14+8*i]), 16, 32)
			if err != nil {
				t.Fatalf("field %d at %d: %v", i, off, err)
			}
			return uint32(v)
		}
		mode, size, rmaj, rmin, nameSize := field(1), field(6), field(9), field(10), field(11)
		off += 110
		name := string(b[off : off+int(nameSize)-1])
		off += int(nameSize)
		align()
		if name == "TRAILER!!!" {
			if off != len(b) {
				t.Fatalf("%d bytes after trailer", len(b)-off)
			}
			return out
		}
		data := string(b[off : off+int(size)])
		off += int(size)
		align()
		out = append(out, cpioEntry{name, mode, rmaj, rmin, data})
	}
}

func TestCPIOWriter(t *testing.T) {
	tests := []struct {
		name  string
		write func(w *cpioWriter) error
		want  []cpioEntry
	}{
		{"empty", func(*cpioWriter) error { return nil }, nil},
		{"dir and file", func(w *cpioWriter) error {
			if err := w.Dir("modules", 0o755); err != nil {
				return err
			}
			return w.File("/modules/load", 0o644, 6, strings.NewReader("a.ko\n\n"))
		}, []cpioEntry{{"modules", cpioDir | 0o755, 0, 0, ""}, {"modules/load", cpioFile | 0o644, 0, 0, "a.ko\n\n"}}},
		{"odd sizes need padding", func(w *cpioWriter) error {
			for i := 1; i <= 5; i++ {
				if err := w.File(fmt.Sprintf("f%d", i), 0o755, int64(i), strings.NewReader(strings.Repeat("x", i))); err != nil {
					return err
				}
			}
			return nil
		}, []cpioEntry{{"f1", cpioFile | 0o755, 0, 0, "x"}, {"f2", cpioFile | 0o755, 0, 0, "xx"},
			{"f3", cpioFile | 0o755, 0, 0, "xxx"}, {"f4", cpioFile | 0o755, 0, 0, "xxxx"}, {"f5", cpioFile | 0o755, 0, 0, "xxxxx"}}},
		{"char device", func(w *cpioWriter) error { return w.CharDev("dev/console", 0o600, 5, 1) },
			[]cpioEntry{{"dev/console", cpioChar | 0o600, 5, 1, ""}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var buf bytes.Buffer
			w := newCPIOWriter(&buf)
			if err := tt.write(w); err != nil {
				t.Fatal(err)
			}
			if err := w.Close(); err != nil {
				t.Fatal(err)
			}
			if got := parseNewc(t, buf.Bytes()); !reflect.DeepEqual(got, tt.want) {
				t.Fatalf("got %+v, want %+v", got, tt.want)
			}
		})
	}
}

func TestCPIOWriterShortFile(t *testing.T) {
	w := newCPIOWriter(&bytes.Buffer{})
	if err := w.File("init", 0o755, 10, strings.NewReader("abc")); err == nil {
		t.Fatal("a file shorter than its size must fail")
	}
	if err := w.Dir("", 0o755); err == nil {
		t.Fatal("an empty name must fail")
	}
}

// TestCPIOToolReadsArchive checks the writer against GNU cpio, when installed.
func TestCPIOToolReadsArchive(t *testing.T) {
	if _, err := exec.LookPath("cpio"); err != nil {
		t.Skip("cpio not installed")
	}
	var buf bytes.Buffer
	w := newCPIOWriter(&buf)
	_ = w.Dir("modules", 0o755)
	_ = w.File("modules/load", 0o644, 3, strings.NewReader("x\ny"))
	_ = w.File("init", 0o755, 4, strings.NewReader("#!/x"))
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("cpio", "-it", "--quiet")
	cmd.Stdin = &buf
	out, err := cmd.Output()
	if err != nil {
		t.Fatal(err)
	}
	if got, want := strings.Fields(string(out)), []string{"modules", "modules/load", "init"}; !reflect.DeepEqual(got, want) {
		t.Fatalf("cpio lists %v, want %v", got, want)
	}
}

func TestResolveModules(t *testing.T) {
	// Debian 6.1's real dependencies for the guest's modules.
	table := map[string]moduleEntry{
		"virtio_ring":    {Path: "kernel/drivers/virtio/virtio_ring.ko"},
		"virtio":         {Path: "kernel/drivers/virtio/virtio.ko", Depends: []string{"virtio_ring"}},
		"virtio_mmio":    {Path: "kernel/drivers/virtio/virtio_mmio.ko", Depends: []string{"virtio", "virtio_ring"}},
		"virtio_blk":     {Path: "kernel/drivers/block/virtio_blk.ko", Depends: []string{"virtio", "virtio_ring"}},
		"virtio_console": {Path: "kernel/drivers/char/virtio_console.ko", Depends: []string{"virtio", "virtio_ring"}},
		"crc32c_generic": {Path: "kernel/crypto/crc32c_generic.ko"},
		"ext4":           {Path: "kernel/fs/ext4/ext4.ko", Depends: []string{"crc16", "jbd2", "mbcache"}},
		"jbd2":           {Path: "kernel/fs/jbd2/jbd2.ko"},
		"mbcache":        {Path: "kernel/fs/mbcache.ko"},
		"crc16":          {Path: "kernel/lib/crc16.ko"},
		"failover":       {Path: "kernel/net/core/failover.ko"},
		"net_failover":   {Path: "kernel/drivers/net/net_failover.ko", Depends: []string{"failover"}},
		"virtio_net":     {Path: "kernel/drivers/net/virtio_net.ko", Depends: []string{"net_failover", "virtio", "virtio_ring"}},
		"a":              {Path: "a.ko", Depends: []string{"b"}},
		"b":              {Path: "b.ko", Depends: []string{"a"}},
	}
	lookup := func(name string) (moduleEntry, error) {
		e, ok := table[name]
		if !ok {
			return moduleEntry{}, fmt.Errorf("module %s: unknown", name)
		}
		return e, nil
	}
	tests := []struct {
		name    string
		want    []string
		builtin map[string]bool
		order   []string
		wantErr string
	}{
		{"guest modules", guestModules, nil,
			[]string{"virtio_ring", "virtio", "virtio_mmio", "virtio_blk", "virtio_console", "failover", "net_failover", "virtio_net", "crc32c_generic", "crc16", "jbd2", "mbcache", "ext4"}, ""},
		{"built-in skipped", []string{"ext4"}, map[string]bool{"crc16": true, "jbd2": true},
			[]string{"mbcache", "ext4"}, ""},
		{"dashes are underscores", []string{"virtio-ring"}, nil, []string{"virtio_ring"}, ""},
		{"everything built in", []string{"ext4"}, map[string]bool{"ext4": true}, nil, ""},
		{"unknown", []string{"nope"}, nil, nil, "module nope: unknown"},
		{"cycle", []string{"a"}, nil, nil, "cycle: a → b → a"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := resolveModules(tt.want, tt.builtin, lookup)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			var names []string
			for _, e := range got {
				names = append(names, moduleName(e.Path))
			}
			if !reflect.DeepEqual(names, tt.order) {
				t.Fatalf("order %v, want %v", names, tt.order)
			}
		})
	}
}

func TestParseModulesDep(t *testing.T) {
	in := "kernel/fs/ext4/ext4.ko.xz: kernel/fs/jbd2/jbd2.ko.xz kernel/fs/mbcache.ko.xz kernel/lib/crc16.ko.xz\n" +
		"kernel/fs/jbd2/jbd2.ko.xz:\n\nkernel/drivers/char/hw_random/virtio-rng.ko:\n"
	mods, err := parseModulesDep(strings.NewReader(in))
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]moduleEntry{
		"ext4":       {Path: "kernel/fs/ext4/ext4.ko.xz", Depends: []string{"jbd2", "mbcache", "crc16"}},
		"jbd2":       {Path: "kernel/fs/jbd2/jbd2.ko.xz"},
		"virtio_rng": {Path: "kernel/drivers/char/hw_random/virtio-rng.ko"},
	}
	if !reflect.DeepEqual(mods, want) {
		t.Fatalf("got %+v, want %+v", mods, want)
	}
	if _, err := parseModulesDep(strings.NewReader("no colon here\n")); err == nil {
		t.Fatal("a line without ':' must fail")
	}
}

func TestParseModinfoDepends(t *testing.T) {
	tests := []struct {
		in   string
		want []string
	}{
		{"license=GPL\x00depends=virtio,virtio_ring\x00name=virtio_mmio\x00", []string{"virtio", "virtio_ring"}},
		{"softdep=pre: crypto-crc32c\x00depends=\x00name=jbd2\x00", nil},
		{"depends=jbd2,mbcache,crc16\x00", []string{"crc16", "jbd2", "mbcache"}},
		{"name=x\x00", nil},
	}
	for _, tt := range tests {
		if got := parseModinfoDepends([]byte(tt.in)); !reflect.DeepEqual(got, tt.want) {
			t.Errorf("parseModinfoDepends(%q) = %v, want %v", tt.in, got, tt.want)
		}
	}
}

func TestParseKernelDepends(t *testing.T) {
	tests := []struct{ in, want string }{
		{"linux-image-amd64\n  Depends: linux-image-6.1.0-56-amd64\n", "linux-image-6.1.0-56-amd64"},
		{"linux-image-amd64\n  Depends: initramfs-tools\n |Depends: linux-image-6.12.0-1-amd64\n", "linux-image-6.12.0-1-amd64"},
		{"linux-image-amd64\n", ""},
	}
	for _, tt := range tests {
		if got := parseKernelDepends([]byte(tt.in)); got != tt.want {
			t.Errorf("parseKernelDepends(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

func TestMirror(t *testing.T) {
	deb822 := `Types: deb
# http://snapshot.example/archive
URIs: http://mirror.example/debian
Suites: bookworm bookworm-updates
Components: main

Types: deb
URIs: http://mirror.example/debian-security
Suites: bookworm-security
Components: main
`
	tests := []struct {
		name    string
		files   map[string]string
		want    string
		wantErr bool
	}{
		{"deb822", map[string]string{"sources.list.d/debian.sources": deb822}, "http://mirror.example/debian", false},
		{"deb822 disabled then list", map[string]string{
			"sources.list.d/debian.sources": "Enabled: no\n" + deb822,
			"sources.list":                  "# comment\ndeb-src http://src.example/debian bookworm main\ndeb [arch=amd64 signed-by=/k.gpg] http://list.example/debian bookworm main\n",
		}, "http://list.example/debian", false},
		{"security only", map[string]string{"sources.list": "deb http://sec.example/debian-security bookworm-security main\n"}, "", true},
		{"nothing", nil, "", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			for name, content := range tt.files {
				p := filepath.Join(dir, name)
				if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			got, err := aptMirror(dir)
			if (err != nil) != tt.wantErr || got != tt.want {
				t.Fatalf("aptMirror = %q, %v; want %q (error %v)", got, err, tt.want, tt.wantErr)
			}
		})
	}
}

func TestInputDigest(t *testing.T) {
	a := inputDigest(map[string]string{"kernel": "k=1", "recipe": "r"})
	b := inputDigest(map[string]string{"recipe": "r", "kernel": "k=1"})
	c := inputDigest(map[string]string{"recipe": "r", "kernel": "k=2"})
	if a != b || a == c || !strings.HasPrefix(a, "sha256:") {
		t.Fatalf("digests %s %s %s", a, b, c)
	}
}

func TestGetUnknownAndUnbuilt(t *testing.T) {
	cat, err := Open(Options{DataDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"nope", "base"} {
		if _, err := cat.Get(context.Background(), name); !errors.Is(err, tartarus.ErrNotFound) || !errors.Is(err, ErrNotFound) {
			t.Errorf("Get(%q) = %v, want ErrNotFound", name, err)
		}
	}
	if imgs, err := cat.List(context.Background()); err != nil || len(imgs) != 0 {
		t.Errorf("List = %v, %v; want nothing", imgs, err)
	}
	if err := cat.Build(context.Background(), []string{"nope"}, nil); !errors.Is(err, tartarus.ErrNotFound) {
		t.Errorf("Build(nope) = %v, want ErrNotFound", err)
	}
	if got := cat.Names(); !reflect.DeepEqual(got, []string{"base", "python"}) {
		t.Errorf("Names = %v", got)
	}
}

// TestBuildBase builds the real base template with Debian's packages (as
// root, with apt), then builds again and expects the cache to answer.
func TestBuildBase(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("building templates needs root (apt-get download, debootstrap, device nodes)")
	}
	for _, tool := range []string{"apt-get", "apt-cache", "dpkg-deb", "mke2fs", "xz"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not installed (scripts/deps.sh installs it)", tool)
		}
	}
	if out, err := exec.Command("apt-cache", "depends", "linux-image-amd64").Output(); err != nil || parseKernelDepends(out) == "" {
		t.Skip("apt knows no linux-image-amd64 (not Debian, or apt-get update never ran)")
	}
	// Any static binary serves as /init here; booting is the microvm tests' job.
	agent := filepath.Join(t.TempDir(), "agent")
	if err := os.WriteFile(agent, []byte("\x7fELF not really an agent"), 0o755); err != nil {
		t.Fatal(err)
	}
	dir := os.Getenv("TARTARUS_TEST_DATA")
	if dir == "" {
		dir = t.TempDir()
	} else {
		dir = filepath.Join(dir, "images-unit")
	}
	cat, err := Open(Options{DataDir: dir, GuestAgent: agent})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	var steps []Progress
	if err := cat.Build(ctx, []string{"base"}, func(p Progress) { steps = append(steps, p) }); err != nil {
		t.Fatal(err)
	}
	img, err := cat.Get(ctx, "base")
	if err != nil {
		t.Fatal(err)
	}
	if !isELF(img.Kernel) {
		t.Errorf("kernel %s is not an ELF vmlinux", img.Kernel)
	}
	initrd, err := os.ReadFile(img.Initrd)
	if err != nil {
		t.Fatal(err)
	}
	names := map[string]string{}
	for _, e := range parseNewc(t, initrd) {
		names[e.name] = e.data
	}
	if !strings.HasPrefix(names["init"], "\x7fELF not really") {
		t.Errorf("initramfs /init is not the guest agent")
	}
	load := strings.Fields(names["modules/load"])
	if len(load) < 3 || load[0] != "virtio_ring.ko" || load[len(load)-1] != "ext4.ko" {
		t.Errorf("modules/load = %v", load)
	}
	for _, m := range load {
		if !strings.HasPrefix(names["modules/"+m], "\x7fELF") {
			t.Errorf("modules/%s missing or not an uncompressed module", m)
		}
	}
	out, err := exec.Command("debugfs", "-R", "stat /bin/sh", img.RootFS).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "symlink") {
		t.Errorf("rootfs has no /bin/sh symlink: %v\n%s", err, out)
	}
	st, err := os.Stat(img.RootFS)
	if err != nil || st.Size() < freeSpace {
		t.Errorf("rootfs size %v, want at least %d free", st, freeSpace)
	}

	steps = nil
	if err := cat.Build(ctx, []string{"base"}, func(p Progress) { steps = append(steps, p) }); err != nil {
		t.Fatal(err)
	}
	if len(steps) != 1 || !steps[0].Cached {
		t.Fatalf("second build reported %+v, want one cached step", steps)
	}
	again, err := cat.Get(ctx, "base")
	if err != nil || again.Digest != img.Digest {
		t.Fatalf("digest changed on a cached build: %v %v", again, err)
	}

	// A new guest agent rebuilds the template but reuses its root filesystem.
	before, err := os.Stat(img.RootFS)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(agent, []byte("\x7fELF another agent"), 0o755); err != nil {
		t.Fatal(err)
	}
	steps = nil
	if err := cat.Build(ctx, []string{"base"}, func(p Progress) { steps = append(steps, p) }); err != nil {
		t.Fatal(err)
	}
	rebuilt, err := cat.Get(ctx, "base")
	if err != nil || rebuilt.Digest == img.Digest || len(steps) < 2 || steps[0].Cached {
		t.Fatalf("a new agent did not rebuild: %+v %v, steps %+v", rebuilt, err, steps)
	}
	after, err := os.Stat(rebuilt.RootFS)
	if err != nil || !os.SameFile(before, after) {
		t.Errorf("root filesystem was rebuilt, want it reused (same file)")
	}
}

func TestStripModuleSignature(t *testing.T) {
	sig := bytes.Repeat([]byte{0xaa}, 681)
	info := []byte{0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0x02, 0xa9}
	signed := append(append(append([]byte("\x7fELF body"), sig...), info...), moduleSigMagic...)
	tests := []struct {
		name string
		in   []byte
		want string
	}{
		{"signed", signed, "\x7fELF body"},
		{"unsigned", []byte("\x7fELF body"), "\x7fELF body"},
		{"length past start", append(append([]byte("x"), info...), moduleSigMagic...), "x" + string(info) + moduleSigMagic},
	}
	for _, tt := range tests {
		if got := string(stripModuleSignature(tt.in)); got != tt.want {
			t.Errorf("%s: got %q, want %q", tt.name, got, tt.want)
		}
	}
}

// TestForeignTemplate checks that a template made outside the recipes (as
// `tartarus migrate` makes them) is listed and usable, and that a directory
// without its files or a build in progress is not.
func TestForeignTemplate(t *testing.T) {
	data := t.TempDir()
	cat, err := Open(Options{DataDir: data})
	if err != nil {
		t.Fatal(err)
	}
	mk := func(name string, files ...string) {
		dir := filepath.Join(data, "images", "templates", name)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		for _, f := range files {
			body := []byte("x")
			if f == "manifest.json" {
				body = []byte(`{"name":"` + name + `","digest":"d1"}`)
			}
			if err := os.WriteFile(filepath.Join(dir, f), body, 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
	mk("myapp", "manifest.json", "vmlinux", "initrd.img", "rootfs.ext4")
	mk(".migrate-other-123", "manifest.json", "vmlinux", "initrd.img", "rootfs.ext4")
	mk("half", "manifest.json", "vmlinux")
	mk("empty")

	img, err := cat.Get(context.Background(), "myapp")
	if err != nil || img.Digest != "d1" || img.RootFS != filepath.Join(data, "images", "templates", "myapp", "rootfs.ext4") {
		t.Fatalf("Get(myapp) = %+v, %v", img, err)
	}
	if _, err := cat.Get(context.Background(), "../myapp"); !errors.Is(err, tartarus.ErrNotFound) {
		t.Errorf("Get(../myapp) = %v, want ErrNotFound", err)
	}
	if _, err := cat.List(context.Background()); err == nil {
		t.Error("List with an incomplete template: want an error naming it")
	}
	if err := os.RemoveAll(filepath.Join(data, "images", "templates", "half")); err != nil {
		t.Fatal(err)
	}
	imgs, err := cat.List(context.Background())
	if err != nil || len(imgs) != 1 || imgs[0].Name != "myapp" {
		t.Fatalf("List = %v, %v; want only myapp", imgs, err)
	}
}
