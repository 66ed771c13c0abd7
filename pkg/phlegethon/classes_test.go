package phlegethon

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

func TestDefaultClassesAreTheSeeds(t *testing.T) {
	cs := MustDefaultClasses()
	for _, tc := range []struct {
		heat       HeatLevel
		name       string
		cores, mem int
		gpus       int
		d          time.Duration
	}{
		{HeatCold, "ember", 1, 512, 0, 30 * time.Second},
		{HeatWarm, "flame", 2, 2048, 0, 5 * time.Minute},
		{HeatHot, "blaze", 4, 8192, 0, 30 * time.Minute},
		{HeatInferno, "inferno", 8, 32768, 1, 24 * time.Hour},
	} {
		c := cs.ForHeat(tc.heat)
		if c.Name != tc.name || c.CPUCores != tc.cores || c.MemoryMB != tc.mem || c.GPUCount != tc.gpus || c.MaxDuration != tc.d || c.Heat != tc.heat {
			t.Errorf("%s: %+v", tc.heat, c)
		}
	}
	// Copies: changing one does not change the set.
	cs.ForHeat(HeatCold).CPUCores = 99
	if cs.ForHeat(HeatCold).CPUCores != 1 {
		t.Error("ForHeat returned the set's own class")
	}
	if cs.ForHeat("tepid") != nil {
		t.Error("a bad heat has a class")
	}
}

func TestNewClassesReportsEveryProblem(t *testing.T) {
	_, err := NewClasses([]ResourceClass{
		{Name: "Bad Name", Heat: "tepid", CPUCores: 0, MemoryMB: 1, GPUCount: -1, MaxDuration: 0, NetworkBurst: -1, DiskIOPS: -1},
	})
	for _, want := range []string{"name:", `heat "tepid"`, "cpu_cores 0", "memory_mb 1", "gpu_count -1", "max_duration_s 0", "network_burst_mbps -1", "disk_iops -1"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%v lacks %q", err, want)
		}
	}
	list := DefaultClasses()[:3]
	if _, err := NewClasses(list); err == nil || !strings.Contains(err.Error(), "no class for heat inferno") {
		t.Errorf("missing heat: %v", err)
	}
	dup := append(DefaultClasses(), ResourceClass{Name: "ember", Heat: HeatCold, CPUCores: 1, MemoryMB: 64, MaxDuration: time.Second})
	if _, err := NewClasses(dup); err == nil || !strings.Contains(err.Error(), "named twice") {
		t.Errorf("duplicate: %v", err)
	}
}

func TestParseClasses(t *testing.T) {
	yamlFile := `
classes:
  - name: spark
    heat: cold
    cpu_cores: 1
    memory_mb: 256
    max_duration_s: 20
    network_burst_mbps: 10
    disk_iops: 500
  - name: gpu-big
    heat: inferno
    cpu_cores: 16
    memory_mb: 65536
    gpu_count: 2
    max_duration_s: 3600
`
	jsonFile := `{"classes": [{"name": "spark", "heat": "cold", "cpu_cores": 1, "memory_mb": 256, "max_duration_s": 20, "network_burst_mbps": 10, "disk_iops": 500},
		{"name": "gpu-big", "heat": "inferno", "cpu_cores": 16, "memory_mb": 65536, "gpu_count": 2, "max_duration_s": 3600}]}`
	for name, data := range map[string]string{"yaml": yamlFile, "json": jsonFile} {
		t.Run(name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "classes."+name)
			if err := os.WriteFile(path, []byte(data), 0o600); err != nil {
				t.Fatal(err)
			}
			cs, err := LoadClasses(path)
			if err != nil {
				t.Fatal(err)
			}
			if c := cs.ForHeat(HeatCold); c.Name != "spark" || c.MaxDuration != 20*time.Second || c.NetworkBurst != 10 || c.DiskIOPS != 500 {
				t.Errorf("cold: %+v", c)
			}
			if c := cs.ForHeat(HeatInferno); c.Name != "gpu-big" || c.GPUCount != 2 {
				t.Errorf("inferno: %+v", c)
			}
			// Heats the file leaves out keep their defaults.
			if c := cs.ForHeat(HeatWarm); c.Name != "flame" {
				t.Errorf("warm: %+v", c)
			}
			var names []string
			for _, c := range cs.List() {
				names = append(names, c.Name)
			}
			if !slices.Equal(names, []string{"spark", "gpu-big", "flame", "blaze"}) {
				t.Errorf("names %v", names)
			}
		})
	}
	for _, bad := range []string{
		"classes: [{name: x, heat: cold, cpu_cores: 1, memory_mb: 256, max_duration_s: 20, colour: red}]",
		"classes: [{name: x, heat: cold, cpu_cores: 1, memory_mb: 256, max_duration_s: 99999999999}]",
		"classes: {",
	} {
		if _, err := ParseClasses([]byte(bad)); !errors.Is(err, tartarus.ErrInvalid) {
			t.Errorf("%q: %v", bad, err)
		}
	}
	if _, err := LoadClasses(filepath.Join(t.TempDir(), "missing")); err == nil {
		t.Error("missing file loaded")
	}
}

func TestApply(t *testing.T) {
	cs := MustDefaultClasses()
	blaze := cs.ForHeat(HeatHot)
	blaze.NetworkBurst, blaze.DiskIOPS = 100, 2000
	for _, tc := range []struct {
		name string
		req  SandboxRequest
		want Limits
		err  string
	}{
		{"the class decides", SandboxRequest{}, Limits{Class: "blaze", CPUs: 4, MemoryMB: 8192, MaxDuration: 30 * time.Minute, NetworkMbps: 100, DiskIOPS: 2000}, ""},
		{"the request within the class", SandboxRequest{CPUCores: 2, MemoryMB: 1024, MaxDuration: time.Minute}, Limits{Class: "blaze", CPUs: 2, MemoryMB: 1024, MaxDuration: time.Minute, NetworkMbps: 100, DiskIOPS: 2000}, ""},
		{"too many CPUs", SandboxRequest{CPUCores: 5}, Limits{}, "5 CPUs does not fit blaze's 4"},
		{"a GPU", SandboxRequest{GPUCount: 1}, Limits{}, "1 GPU does not fit blaze's 0"},
		{"too long", SandboxRequest{MaxDuration: time.Hour}, Limits{}, "beyond blaze's 30m0s"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := Apply(blaze, &tc.req)
			if tc.err != "" {
				if !errors.Is(err, tartarus.ErrInvalid) || !strings.Contains(err.Error(), tc.err) {
					t.Errorf("got %v, want %q", err, tc.err)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Errorf("got %+v, %v", got, err)
			}
		})
	}
	if _, err := Apply(nil, &SandboxRequest{}); err == nil {
		t.Error("nil class applied")
	}
}

func TestLimitsRuntimeArguments(t *testing.T) {
	l := Limits{NetworkMbps: 100, DiskIOPS: 500}
	if got := l.QEMUDriveThrottle(); got != "throttling.iops-total=500" {
		t.Errorf("drive %q", got)
	}
	if got := strings.Join(l.TCArgs("tap0"), " "); got != "qdisc replace dev tap0 root tbf rate 100mbit burst 1250000 latency 50ms" {
		t.Errorf("tc %q", got)
	}
	if got := strings.Join((Limits{NetworkMbps: 1}).TCArgs("tap0"), " "); !strings.Contains(got, "burst 32768") {
		t.Errorf("small burst %q", got)
	}
	if (Limits{}).QEMUDriveThrottle() != "" || (Limits{}).TCArgs("tap0") != nil {
		t.Error("no limit gave arguments")
	}
}

// FuzzParseClasses: a classes file either loads into a set every class of
// which validates, or is refused as invalid; it never panics.
func FuzzParseClasses(f *testing.F) {
	f.Add([]byte("classes: [{name: x, heat: cold, cpu_cores: 1, memory_mb: 256, max_duration_s: 20}]"))
	f.Add([]byte(`{"classes": [{"name": "gpu", "heat": "inferno", "cpu_cores": 16, "memory_mb": 65536, "gpu_count": 2, "max_duration_s": 3600}]}`))
	f.Add([]byte("classes: [{name: y, heat: hot, cpu_cores: -1, memory_mb: 1, max_duration_s: -5}]"))
	f.Add([]byte(""))
	f.Fuzz(func(t *testing.T, data []byte) {
		cs, err := ParseClasses(data)
		if err != nil {
			if !errors.Is(err, tartarus.ErrInvalid) {
				t.Fatalf("not invalid: %v", err)
			}
			return
		}
		for _, h := range Levels {
			if c := cs.ForHeat(h); c == nil || c.Validate() != nil || c.Heat != h {
				t.Fatalf("heat %s: %+v", h, c)
			}
		}
	})
}
