package tartarus

import "time"

// NodeInfo describes a node (the single node, or an agent of a cluster) and
// what its runtimes can do; GET /v1/nodes answers with it.
type NodeInfo struct {
	Name     string         `json:"name"`
	Runtimes []*Fingerprint `json:"runtimes"`
	// DefaultRuntime is used when a create request names none.
	DefaultRuntime string `json:"default_runtime"`
	// Sandboxes counts this node's sandboxes that are not final.
	Sandboxes int `json:"sandboxes"`
	// SnapshotRuntimes can hibernate, fork and create by restore here.
	SnapshotRuntimes []string `json:"snapshot_runtimes,omitempty"`
	// WarmPools counts the ready sandboxes of each warm pool, by
	// "runtime/template/memory_mb/cpus".
	WarmPools map[string]int `json:"warm_pools,omitempty"`

	// In a cluster: whether the node is "up" or "down" (and why), where
	// its agent listens, its labels and last heartbeat, and what its
	// sandboxes hold of its CPUs and memory.
	State        string            `json:"state,omitempty"`
	DownReason   string            `json:"down_reason,omitempty"`
	Address      string            `json:"address,omitempty"`
	Labels       map[string]string `json:"labels,omitempty"`
	LastSeen     time.Time         `json:"last_seen,omitzero"`
	CPUs         int               `json:"cpus,omitempty"`
	MemoryMB     int               `json:"memory_mb,omitempty"`
	UsedCPUs     int               `json:"used_cpus,omitempty"`
	UsedMemoryMB int               `json:"used_memory_mb,omitempty"`
}

// SandboxFilter narrows a listing of sandboxes. Zero fields match everything.
type SandboxFilter struct {
	Tenant string
	Node   string
	States []State
}
