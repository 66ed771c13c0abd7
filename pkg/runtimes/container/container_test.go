package container

import (
	"errors"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/tartarus-sandbox/tartarus/pkg/clock"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

func TestParseStatLines(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		want    []tartarus.FileInfo
		wantErr bool
	}{
		{name: "empty", in: "", want: []tartarus.FileInfo{}},
		{name: "file dir link", in: "6 81a4 1700000000 small.txt\n4096 41ed 1700000001 sub dir\n7 a1ff 1700000002 link\n",
			want: []tartarus.FileInfo{
				{Name: "small.txt", Size: 6, Mode: 0o644, ModTime: time.Unix(1700000000, 0).UTC()},
				{Name: "sub dir", Size: 4096, Mode: os.ModeDir | 0o755, ModTime: time.Unix(1700000001, 0).UTC(), IsDir: true},
				{Name: "link", Size: 7, Mode: os.ModeSymlink | 0o777, ModTime: time.Unix(1700000002, 0).UTC()},
			}},
		{name: "setuid and sticky", in: "1 89ed 0 suid\n0 43ff 0 tmp\n", want: []tartarus.FileInfo{
			{Name: "suid", Size: 1, Mode: os.ModeSetuid | 0o755, ModTime: time.Unix(0, 0).UTC()},
			{Name: "tmp", Mode: os.ModeDir | os.ModeSticky | 0o777, ModTime: time.Unix(0, 0).UTC(), IsDir: true},
		}},
		{name: "bad size", in: "x 81a4 0 f\n", wantErr: true},
		{name: "missing name", in: "1 81a4 0\n", wantErr: true},
		{name: "bad mode", in: "1 zz 0 f\n", wantErr: true},
		{name: "name past the limit", in: "1 81a4 0 " + strings.Repeat("n", 1025) + "\n", wantErr: true},
		{name: "line of a MiB", in: strings.Repeat("x", 1<<20) + "\n", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseStatLines(strings.NewReader(tt.in))
			if (err != nil) != tt.wantErr {
				t.Fatalf("err %v, wantErr %v", err, tt.wantErr)
			}
			if tt.wantErr {
				return
			}
			if len(got) != len(tt.want) {
				t.Fatalf("got %+v, want %+v", got, tt.want)
			}
			for i := range got {
				if got[i] != tt.want[i] {
					t.Errorf("entry %d: %+v, want %+v", i, got[i], tt.want[i])
				}
			}
		})
	}
}

func FuzzParseStatLines(f *testing.F) {
	f.Add("6 81a4 1700000000 small.txt\n4096 41ed 1700000001 sub\n")
	f.Add("x y z\n")
	f.Fuzz(func(t *testing.T, in string) {
		infos, err := ParseStatLines(strings.NewReader(in))
		if err == nil {
			for _, fi := range infos {
				if fi.Name == "" {
					t.Errorf("entry without a name from %q", in)
				}
			}
		}
	})
}

func TestCleanPath(t *testing.T) {
	for in, want := range map[string]string{"/a/../b": "/b", "/": "/", "/tmp//x/": "/tmp/x", "/../..": "/"} {
		if got, err := CleanPath(in); err != nil || got != want {
			t.Errorf("CleanPath(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, in := range []string{"", "relative", "a/b", "/nul\x00"} {
		if _, err := CleanPath(in); !errors.Is(err, tartarus.ErrInvalid) {
			t.Errorf("CleanPath(%q): %v, want ErrInvalid", in, err)
		}
	}
}

func TestEnvList(t *testing.T) {
	got := EnvList([]string{"PATH=/bin", "A=1"}, map[string]string{"B": "2", "A": "x"}, map[string]string{"B": "3"})
	want := []string{"PATH=/bin", "A=x", "B=3"}
	if strings.Join(got, " ") != strings.Join(want, " ") {
		t.Errorf("EnvList = %q, want %q", got, want)
	}
}

func TestActivity(t *testing.T) {
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	clk := clock.NewFake(now)
	a := NewActivity(clk)
	if got := a.IdleSince("x"); got == nil || !got.Equal(now) {
		t.Errorf("unseen sandbox idle since %v", got)
	}
	end := a.Begin("x")
	if a.IdleSince("x") != nil {
		t.Error("busy sandbox reported idle")
	}
	now = now.Add(time.Minute)
	clk.Advance(time.Minute)
	end()
	end() // ending twice is harmless
	if got := a.IdleSince("x"); got == nil || !got.Equal(now) {
		t.Errorf("idle since %v, want %v", got, now)
	}
}

func TestCheckLimits(t *testing.T) {
	fp := &tartarus.Fingerprint{MaxCPUs: 2, MaxMemoryMB: 1024}
	img := &tartarus.Image{Name: "base", RootFS: "/x"}
	tests := []struct {
		cfg  *tartarus.VMConfig
		want error
	}{
		{&tartarus.VMConfig{ID: "a", Image: img, CPUs: 1, MemoryMB: 128}, nil},
		{&tartarus.VMConfig{ID: "a", Image: img, CPUs: 3, MemoryMB: 128}, tartarus.ErrResourceExhausted},
		{&tartarus.VMConfig{ID: "a", Image: img, CPUs: 1, MemoryMB: 2048}, tartarus.ErrResourceExhausted},
		{&tartarus.VMConfig{ID: "../a", Image: img, CPUs: 1, MemoryMB: 128}, tartarus.ErrInvalid},
		{&tartarus.VMConfig{ID: "a", CPUs: 1, MemoryMB: 128}, tartarus.ErrInvalid},
		{&tartarus.VMConfig{ID: "a", Image: img, CPUs: 1, MemoryMB: 128, Env: map[string]string{"A=B": "c"}}, tartarus.ErrInvalid},
	}
	for i, tt := range tests {
		err := CheckLimits(fp, tt.cfg)
		if tt.want == nil && err != nil || tt.want != nil && !errors.Is(err, tt.want) {
			t.Errorf("case %d: %v, want %v", i, err, tt.want)
		}
	}
}

// A sandbox's output past the cap is dropped and noted, never held.
func TestCapped(t *testing.T) {
	c := &capped{max: 10}
	for range 1000 {
		if n, err := c.Write([]byte("0123456789abcdef")); n != 16 || err != nil {
			t.Fatalf("write: %d %v", n, err)
		}
	}
	if c.String() != "0123456789" || !c.over {
		t.Errorf("kept %q over=%v: want the first 10 bytes, over", c.String(), c.over)
	}
	small := &capped{max: 10}
	_, _ = small.Write([]byte("abc"))
	if small.String() != "abc" || small.over {
		t.Errorf("kept %q over=%v", small.String(), small.over)
	}
}

// Past guest.MaxListEntries a listing is refused, not held.
func TestParseStatLinesTooMany(t *testing.T) {
	var b strings.Builder
	for range 200_001 {
		b.WriteString("1 81a4 0 f\n")
	}
	if _, err := ParseStatLines(strings.NewReader(b.String())); !errors.Is(err, tartarus.ErrResourceExhausted) {
		t.Errorf("200001 entries: %v, want ErrResourceExhausted", err)
	}
}
