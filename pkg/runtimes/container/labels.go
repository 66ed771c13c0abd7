package container

import (
	"strconv"

	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

// Labels the docker and containerd drivers set on their containers: what
// List and Recover need to find and describe a sandbox after a restart.
const (
	LabelRuntime  = "tartarus.runtime"
	LabelSandbox  = "tartarus.sandbox"
	LabelTemplate = "tartarus.template"
	LabelCPUs     = "tartarus.cpus"
	LabelMemory   = "tartarus.memory_mb"
)

// SandboxLabels are the labels of the container for cfg, made by runtime.
func SandboxLabels(runtime string, cfg *tartarus.VMConfig) map[string]string {
	return map[string]string{LabelRuntime: runtime, LabelTemplate: TemplateName(cfg),
		LabelCPUs: strconv.Itoa(cfg.CPUs), LabelMemory: strconv.Itoa(cfg.MemoryMB)}
}

// LabeledInstance is sandbox id as its container's labels describe it; the
// caller fills in its state and times.
func LabeledInstance(id string, labels map[string]string) *tartarus.Instance {
	cpus, _ := strconv.Atoi(labels[LabelCPUs])
	mem, _ := strconv.Atoi(labels[LabelMemory])
	return &tartarus.Instance{ID: id, Template: labels[LabelTemplate], CPUs: cpus, MemoryMB: mem}
}

// TemplateName is the template cfg's sandbox comes from: cfg.Template, or
// its image's name when the caller named none.
func TemplateName(cfg *tartarus.VMConfig) string {
	if cfg.Template != "" {
		return cfg.Template
	}
	return cfg.Image.Name
}

// InstanceState maps a backend's state of a container ("running",
// "paused", "created", …; "" when it has none) to the sandbox's.
func InstanceState(state string) tartarus.InstanceState {
	switch state {
	case "running":
		return tartarus.InstanceRunning
	case "paused", "pausing":
		return tartarus.InstancePaused
	case "", "creating", "created":
		return tartarus.InstanceCreated
	}
	return tartarus.InstanceStopped
}
