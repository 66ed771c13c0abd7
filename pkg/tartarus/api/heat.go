package api

// HeatMetrics is the answer to GET /v1/heat: running sandboxes by heat, and
// each heat's admission queue (depth, average and p99 wait over the last
// 1024 admitted creates, in seconds).
type HeatMetrics struct {
	TotalSandboxes    int                `json:"total_sandboxes"`
	ByHeat            map[string]int     `json:"by_heat"`
	QueueDepthByHeat  map[string]int     `json:"queue_depth_by_heat"`
	AvgWaitSByHeat    map[string]float64 `json:"avg_wait_s_by_heat"`
	P99WaitSByHeat    map[string]float64 `json:"p99_wait_s_by_heat"`
	DefaultQueueWaitS int                `json:"default_queue_timeout_s"`
}

// Pool is the body of POST /v1/pools and an entry of GET /v1/pools: nodes
// chosen by their labels that serve some heat levels.
type Pool struct {
	Name         string            `json:"name"`
	Heats        []string          `json:"heats"`
	NodeSelector map[string]string `json:"node_selector"`
	MinNodes     int               `json:"min_nodes,omitempty"`
	MaxNodes     int               `json:"max_nodes,omitempty"`
	// CurrentNodes counts the up nodes in the pool now (answers only).
	CurrentNodes int `json:"current_nodes"`
}

// PoolList is the answer to GET /v1/pools.
type PoolList struct {
	Pools []Pool `json:"pools"`
}

// ResourceClass is one entry of GET /v1/classes.
type ResourceClass struct {
	Name         string `json:"name"`
	Heat         string `json:"heat"`
	CPUCores     int    `json:"cpu_cores"`
	MemoryMB     int    `json:"memory_mb"`
	GPUCount     int    `json:"gpu_count"`
	MaxDurationS int    `json:"max_duration_s"`
	NetworkMbps  int    `json:"network_burst_mbps"`
	DiskIOPS     int    `json:"disk_iops"`
	// Default is set on the class a heat gets unless resource_class names
	// another.
	Default bool `json:"default"`
}

// ClassList is the answer to GET /v1/classes.
type ClassList struct {
	Classes []ResourceClass `json:"classes"`
}
