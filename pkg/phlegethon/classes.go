package phlegethon

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"slices"
	"strconv"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

// ResourceClass is the resources and limits a sandbox of one heat gets.
type ResourceClass struct {
	Name     string    `json:"name" yaml:"name"`
	Heat     HeatLevel `json:"heat" yaml:"heat"`
	CPUCores int       `json:"cpu_cores" yaml:"cpu_cores"`
	MemoryMB int       `json:"memory_mb" yaml:"memory_mb"`
	// GPUCount is the most GPUs a sandbox of this class may ask for.
	GPUCount int `json:"gpu_count,omitempty" yaml:"gpu_count"`
	// MaxDuration ends the sandbox with reason timeout.
	MaxDuration time.Duration `json:"-" yaml:"-"`
	// NetworkBurst is the bandwidth limit in Mbit/s; 0: none.
	NetworkBurst int `json:"network_burst_mbps,omitempty" yaml:"network_burst_mbps"`
	// DiskIOPS is the disk's I/O operations per second; 0: none.
	DiskIOPS int `json:"disk_iops,omitempty" yaml:"disk_iops"`
}

// DefaultClasses returns fresh copies of the seed's four classes, one per
// heat, coolest first. The seed leaves network burst and disk IOPS unset:
// no limit.
func DefaultClasses() []ResourceClass {
	return []ResourceClass{
		{Name: "ember", Heat: HeatCold, CPUCores: 1, MemoryMB: 512, MaxDuration: 30 * time.Second},
		{Name: "flame", Heat: HeatWarm, CPUCores: 2, MemoryMB: 2048, MaxDuration: 5 * time.Minute},
		{Name: "blaze", Heat: HeatHot, CPUCores: 4, MemoryMB: 8192, MaxDuration: 30 * time.Minute},
		{Name: "inferno", Heat: HeatInferno, CPUCores: 8, MemoryMB: 32768, GPUCount: 1, MaxDuration: 24 * time.Hour},
	}
}

// Validate returns every problem of c.
func (c *ResourceClass) Validate() error {
	var errs []error
	bad := func(format string, args ...any) {
		errs = append(errs, tartarus.Errorf(tartarus.ErrInvalid, "class %q: "+format, append([]any{c.Name}, args...)...))
	}
	if !tartarus.ValidName(c.Name) {
		bad("name: want 1-64 characters of a-z, 0-9, '-', '_', '.'")
	}
	if !c.Heat.Valid() {
		bad("heat %q: want cold, warm, hot or inferno", string(c.Heat))
	}
	if c.CPUCores < 1 {
		bad("cpu_cores %d: must be at least 1", c.CPUCores)
	}
	if c.MemoryMB < tartarus.MinMemoryMB {
		bad("memory_mb %d: must be at least %d", c.MemoryMB, tartarus.MinMemoryMB)
	}
	if c.GPUCount < 0 {
		bad("gpu_count %d: must not be negative", c.GPUCount)
	}
	if c.MaxDuration < time.Second || c.MaxDuration > tartarus.MaxTimeoutS*time.Second {
		bad("max_duration_s %d: must be between 1 and %d", int64(c.MaxDuration/time.Second), tartarus.MaxTimeoutS)
	}
	if c.NetworkBurst < 0 {
		bad("network_burst_mbps %d: must not be negative (0: no limit)", c.NetworkBurst)
	}
	if c.DiskIOPS < 0 {
		bad("disk_iops %d: must not be negative (0: no limit)", c.DiskIOPS)
	}
	return errors.Join(errs...)
}

// holds reports why c cannot hold req's asks, or "" when it can.
func (c *ResourceClass) holds(req *SandboxRequest) string {
	switch {
	case req.CPUCores > c.CPUCores:
		return fmt.Sprintf("%s does not fit %s's %d", plural(req.CPUCores, "CPU", "CPUs"), c.Name, c.CPUCores)
	case req.MemoryMB > c.MemoryMB:
		return fmt.Sprintf("%d MiB does not fit %s's %d MiB", req.MemoryMB, c.Name, c.MemoryMB)
	case req.GPUCount > c.GPUCount:
		return fmt.Sprintf("%s does not fit %s's %d", plural(req.GPUCount, "GPU", "GPUs"), c.Name, c.GPUCount)
	case req.MaxDuration > c.MaxDuration:
		return fmt.Sprintf("max duration %s is beyond %s's %s", req.MaxDuration, c.Name, c.MaxDuration)
	}
	return ""
}

// Classes is a validated set of resource classes: one default class per heat
// (the first listed of that heat) and any others reachable by name.
type Classes struct {
	list   []ResourceClass
	byHeat [len(Levels)]int // index into list
}

// NewClasses validates list and returns the set. Every heat needs a class;
// names are unique.
func NewClasses(list []ResourceClass) (*Classes, error) {
	var errs []error
	cs := &Classes{list: slices.Clone(list)}
	for i := range cs.byHeat {
		cs.byHeat[i] = -1
	}
	seen := map[string]bool{}
	for i := range cs.list {
		c := &cs.list[i]
		if err := c.Validate(); err != nil {
			errs = append(errs, err)
			continue
		}
		if seen[c.Name] {
			errs = append(errs, tartarus.Errorf(tartarus.ErrInvalid, "class %q: named twice", c.Name))
		}
		seen[c.Name] = true
		if cs.byHeat[c.Heat.rank()] < 0 {
			cs.byHeat[c.Heat.rank()] = i
		}
	}
	for i, h := range Levels {
		if cs.byHeat[i] < 0 && len(errs) == 0 {
			errs = append(errs, tartarus.Errorf(tartarus.ErrInvalid, "classes: no class for heat %s", h))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return cs, nil
}

// MustDefaultClasses is NewClasses(DefaultClasses()), which cannot fail.
func MustDefaultClasses() *Classes {
	cs, err := NewClasses(DefaultClasses())
	if err != nil {
		panic(err)
	}
	return cs
}

// ForHeat returns a copy of heat's default class, or nil for a bad heat.
func (cs *Classes) ForHeat(h HeatLevel) *ResourceClass {
	if !h.Valid() {
		return nil
	}
	c := cs.list[cs.byHeat[h.rank()]]
	return &c
}

// Named returns a copy of the class called name.
func (cs *Classes) Named(name string) (*ResourceClass, error) {
	for _, c := range cs.list {
		if c.Name == name {
			return &c, nil
		}
	}
	return nil, tartarus.Errorf(tartarus.ErrNotFound, "resource class %q", name)
}

// List returns copies of every class in their configured order.
func (cs *Classes) List() []ResourceClass { return slices.Clone(cs.list) }

// classFile is the YAML or JSON shape of a classes file.
type classFile struct {
	Classes []classEntry `yaml:"classes"`
}

type classEntry struct {
	ResourceClass `yaml:",inline"`
	MaxDurationS  int64 `yaml:"max_duration_s"`
}

// ParseClasses reads a classes file (YAML, or JSON, which YAML reads):
//
//	classes:
//	  - {name: ember, heat: cold, cpu_cores: 1, memory_mb: 512, max_duration_s: 30}
//
// Heats the file names no class for keep their default class. Unknown keys
// are refused.
func ParseClasses(data []byte) (*Classes, error) {
	var f classFile
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(&f); err != nil {
		return nil, tartarus.Errorf(tartarus.ErrInvalid, "classes file: %v", err)
	}
	list := make([]ResourceClass, 0, len(f.Classes)+len(Levels))
	named := map[HeatLevel]bool{}
	for _, e := range f.Classes {
		c := e.ResourceClass
		if e.MaxDurationS > tartarus.MaxTimeoutS || e.MaxDurationS < 0 {
			c.MaxDuration = -1 // Validate words it
		} else {
			c.MaxDuration = time.Duration(e.MaxDurationS) * time.Second
		}
		list = append(list, c)
		named[c.Heat] = true
	}
	for _, d := range DefaultClasses() {
		if named[d.Heat] || slices.ContainsFunc(list, func(c ResourceClass) bool { return c.Name == d.Name }) {
			continue
		}
		list = append(list, d)
	}
	return NewClasses(list)
}

// LoadClasses reads the classes file at path (see ParseClasses).
func LoadClasses(path string) (*Classes, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("load classes: %w", err)
	}
	cs, err := ParseClasses(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return cs, nil
}

// Limits is what a sandbox of a class gets and what its runtime must
// enforce.
type Limits struct {
	Class    string `json:"class"`
	CPUs     int    `json:"cpus"`
	MemoryMB int    `json:"memory_mb"`
	GPUs     int    `json:"gpus,omitempty"`
	// MaxDuration: end the sandbox with reason timeout this long after it
	// starts (Thanatos). 0: no heat limit (the sandbox's own timeout_s only).
	MaxDuration time.Duration `json:"-"`
	// NetworkMbps: the sandbox's bandwidth limit (tc on its tap); 0: none.
	NetworkMbps int `json:"network_mbps,omitempty"`
	// DiskIOPS: QEMU's block throttle on the sandbox's disk; 0: none.
	DiskIOPS int `json:"disk_iops,omitempty"`
}

// Apply sizes req by class c: the request's own cores, memory and GPUs when
// it asked for them (they must fit the class), the class's otherwise; the
// request's max duration when set (within the class's), the class's
// otherwise; the class's network and disk limits. Errors wrap
// tartarus.ErrInvalid and say what does not fit.
func Apply(c *ResourceClass, req *SandboxRequest) (Limits, error) {
	if c == nil {
		return Limits{}, tartarus.Errorf(tartarus.ErrInvalid, "apply: no class")
	}
	if why := c.holds(req); why != "" {
		return Limits{}, tartarus.Errorf(tartarus.ErrInvalid, "resource class %s: %s", c.Name, why)
	}
	l := Limits{
		Class: c.Name, CPUs: c.CPUCores, MemoryMB: c.MemoryMB, GPUs: req.GPUCount,
		MaxDuration: c.MaxDuration, NetworkMbps: c.NetworkBurst, DiskIOPS: c.DiskIOPS,
	}
	if req.CPUCores > 0 {
		l.CPUs = req.CPUCores
	}
	if req.MemoryMB > 0 {
		l.MemoryMB = req.MemoryMB
	}
	if req.MaxDuration > 0 {
		l.MaxDuration = req.MaxDuration
	}
	return l, nil
}

// QEMUDriveThrottle returns the -drive options that hold the disk to
// DiskIOPS (QEMU's block throttling), or "" for no limit.
func (l Limits) QEMUDriveThrottle() string {
	if l.DiskIOPS <= 0 {
		return ""
	}
	return "throttling.iops-total=" + strconv.Itoa(l.DiskIOPS)
}

// ApplyNetworkBurst holds a sandbox network to its class's network burst
// (mbps, Mbit/s; 0: no limit) in both directions; a lower limit the create
// asked for itself is kept. pkg/netns turns the limits into tbf qdiscs on
// the sandbox's veth pair; a sandbox without a network has nothing to limit.
func ApplyNetworkBurst(n *tartarus.NetworkSpec, mbps int) {
	if n == nil || mbps <= 0 {
		return
	}
	limit := uint64(mbps) * 1_000_000
	for _, b := range []*uint64{&n.EgressBitsPerSec, &n.IngressBitsPerSec} {
		if *b == 0 || *b > limit {
			*b = limit
		}
	}
}

// TCArgs returns the arguments of `tc` that hold dev's egress to
// NetworkMbps with a token bucket, or nil for no limit. The burst is a
// tenth of a second at the rate, and at least 32 KiB.
func (l Limits) TCArgs(dev string) []string {
	if l.NetworkMbps <= 0 {
		return nil
	}
	burst := max(l.NetworkMbps*1_000_000/8/10, 32*1024)
	return []string{"qdisc", "replace", "dev", dev, "root", "tbf",
		"rate", strconv.Itoa(l.NetworkMbps) + "mbit", "burst", strconv.Itoa(burst), "latency", "50ms"}
}
