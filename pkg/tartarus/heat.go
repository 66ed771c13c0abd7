package tartarus

// SandboxHeat is how a sandbox's create was classified by heat (pkg/phlegethon):
// its heat level, resource class, the rule that chose them and why, and the
// limits the class put on it. GET /v1/sandboxes/{id} shows it as "heat";
// GET /v1/heat/explain answers with it for a template.
type SandboxHeat struct {
	Heat  string `json:"heat"`
	Class string `json:"class"`
	// Rule is the classifier's rule: resource_class, hint, learned,
	// template_hint or thresholds.
	Rule string `json:"rule"`
	// RaisedFrom is the level the rule chose when its class could not hold
	// the create and a hotter one was taken.
	RaisedFrom string `json:"raised_from,omitempty"`
	Reason     string `json:"reason"`
	// Enforced is set when the class sized and limits the sandbox (the
	// create set heat_hint, resource_class or max_duration_s, or the
	// server enforces classes on every create).
	Enforced bool `json:"enforced,omitempty"`
	// MaxDurationS ends the sandbox with reason timeout this long after it
	// starts; 0: no heat limit.
	MaxDurationS int `json:"max_duration_s,omitempty"`
	// DiskIOPS and NetworkMbps are the class's disk and bandwidth limits
	// (0: none).
	DiskIOPS    int `json:"disk_iops,omitempty"`
	NetworkMbps int `json:"network_mbps,omitempty"`
}

// QueuePosition is where a queued create stands in its heat's admission
// queue; a sandbox shows it as "queue" while its state is queued.
type QueuePosition struct {
	Heat string `json:"heat"`
	// Position is the 1-based place in its heat's queue; OverallPosition
	// the 1-based place in the order the queue serves now; Depth its
	// heat's queue length.
	Position        int `json:"position"`
	OverallPosition int `json:"overall_position"`
	Depth           int `json:"depth"`
}

// StateQueued is what a create that waits in an admission queue shows
// (HTTP 202). It is never stored: the sandbox is recorded only once it is
// admitted (creating), or shows failed when its wait ends without room.
const StateQueued State = "queued"

// HeatRequested reports whether the create asks for anything heat
// management does: a hint, a class, a maximum duration, a queue wait or
// GPUs.
func (r *CreateRequest) HeatRequested() bool {
	return r.HeatHint != "" || r.ResourceClass != "" || r.MaxDurationS != 0 || r.QueueTimeoutS != 0 || r.GPUs != 0
}
