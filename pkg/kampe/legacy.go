// Package kampe (named for the jailer of the old order in Tartarus) moves
// containers to microVM templates: the seed's LegacyRuntime interface and
// migration types, the migration analysis (Analyze), and the template
// build (BuildTemplate, with ExtractTar and MakeExt4).
//
// The container runtimes themselves — Docker, containerd and gVisor behind
// the same tartarus.Runtime as the microVM driver — live in
// pkg/runtimes/{docker,containerd,gvisor}; the docker and containerd drivers
// are LegacyRuntimes and fill ContainerFacts from their own inspection.
//
// Extensions beyond the seed: MigrationChange has a Field naming what it
// concerns; ContainerState carries the seed's FileEntry, ProcessInfo and
// PortMapping, which the seed names but does not define; Migrate (on the
// docker and containerd drivers) carries a compatible container into a
// template.
package kampe

import (
	"context"
	"time"

	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

// LegacyRuntime is a container runtime behind the Tartarus Runtime interface
// that can also inspect its existing containers for a move to microVMs.
type LegacyRuntime interface {
	tartarus.Runtime

	// CanMigrate reports whether containerID can move to a microVM without
	// a change that needs a person (a host bind mount, host networking, …).
	CanMigrate(ctx context.Context, containerID string) (bool, error)
	// MigrateToMicroVM inspects containerID and returns the plan for its
	// move; it changes nothing.
	MigrateToMicroVM(ctx context.Context, containerID string) (*MigrationPlan, error)
	// ExportState describes containerID: image, configuration, top-level
	// files and processes.
	ExportState(ctx context.Context, containerID string) (*ContainerState, error)
}

// MigrationPlan describes the steps to move one container to a microVM.
type MigrationPlan struct {
	ContainerID       string            `json:"container_id"`
	TargetTemplate    string            `json:"target_template"`
	RequiredChanges   []MigrationChange `json:"required_changes"`
	EstimatedDowntime time.Duration     `json:"estimated_downtime"`
	RiskLevel         RiskLevel         `json:"risk_level"`
	Recommendations   []string          `json:"recommendations"`
}

// Blocking returns the changes that need a person: required and not fixed
// automatically. A plan with none can be carried out by Migrate as it is.
func (p *MigrationPlan) Blocking() []MigrationChange {
	var out []MigrationChange
	for _, c := range p.RequiredChanges {
		if c.Required && !c.AutoFix {
			out = append(out, c)
		}
	}
	return out
}

// MigrationChange is one difference between the container and what a
// microVM sandbox offers.
type MigrationChange struct {
	Type        ChangeType `json:"type"`
	Description string     `json:"description"`
	// Required is true when the workload would behave differently (or not
	// start) without the change.
	Required bool `json:"required"`
	// AutoFix is true when Migrate makes the change itself.
	AutoFix bool `json:"auto_fix"`
	// Field names the container setting concerned ("HostConfig.Binds",
	// "Mounts[/data]"); an extension of the seed.
	Field string `json:"field,omitempty"`
}

// ChangeType says what a MigrationChange concerns.
type ChangeType string

// The change types (the seed's five, plus security and devices).
const (
	ChangeTypeFilesystem  ChangeType = "filesystem"
	ChangeTypeNetwork     ChangeType = "network"
	ChangeTypeResources   ChangeType = "resources"
	ChangeTypeEnvironment ChangeType = "environment"
	ChangeTypeEntrypoint  ChangeType = "entrypoint"
	ChangeTypeSecurity    ChangeType = "security"
	ChangeTypeDevices     ChangeType = "devices"
)

// RiskLevel grades how likely the move is to change the workload's behaviour.
type RiskLevel string

// The risk levels, in increasing order.
const (
	RiskLevelLow    RiskLevel = "low"
	RiskLevelMedium RiskLevel = "medium"
	RiskLevelHigh   RiskLevel = "high"
)

func (r RiskLevel) rank() int {
	switch r {
	case RiskLevelHigh:
		return 2
	case RiskLevelMedium:
		return 1
	}
	return 0
}

// ContainerState is a container as ExportState describes it.
type ContainerState struct {
	ID          string            `json:"id"`
	Name        string            `json:"name,omitempty"`
	Image       string            `json:"image"`
	Running     bool              `json:"running"`
	Config      ContainerConfig   `json:"config"`
	Filesystem  []FileEntry       `json:"filesystem"`
	Environment map[string]string `json:"environment"`
	Processes   []ProcessInfo     `json:"processes"`
}

// ContainerConfig is the part of a container's configuration a template
// keeps.
type ContainerConfig struct {
	Entrypoint []string      `json:"entrypoint"`
	Cmd        []string      `json:"cmd"`
	WorkingDir string        `json:"working_dir"`
	User       string        `json:"user"`
	Env        []string      `json:"env"`
	Volumes    []string      `json:"volumes"`
	Ports      []PortMapping `json:"ports"`
}

// FileEntry is one entry of a container's file system; ExportState lists
// the changes against the image (docker diff), not every file.
type FileEntry struct {
	Path string `json:"path"`
	// Change is "added", "changed" or "deleted" relative to the image.
	Change string `json:"change"`
}

// ProcessInfo is one process running in a container.
type ProcessInfo struct {
	PID     int    `json:"pid"`
	User    string `json:"user,omitempty"`
	Command string `json:"command"`
}

// PortMapping is a published container port.
type PortMapping struct {
	ContainerPort int    `json:"container_port"`
	Protocol      string `json:"protocol"`
	HostIP        string `json:"host_ip,omitempty"`
	HostPort      int    `json:"host_port,omitempty"`
}
