package phlegethon

import (
	"time"

	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

// RequestOf is the heat request of a create (normalized: Asked holds the
// sizes the caller gave, before the server's defaults).
func RequestOf(req *tartarus.CreateRequest) *SandboxRequest {
	return &SandboxRequest{TemplateID: req.Template, HeatHint: HeatLevel(req.HeatHint),
		ResourceClass: req.ResourceClass, MaxDuration: time.Duration(req.MaxDurationS) * time.Second,
		CPUCores: req.Asked.CPUs, MemoryMB: req.Asked.MemoryMB, GPUCount: req.GPUs}
}

// Apply returns the heat a sandbox created under d records. For an
// enforced class it also sizes req to the class and holds req's network
// (when it has one yet) to the class's bandwidth; the sandbox's timeout is
// the caller's to fit to MaxDurationS (a single node ends a sandbox at its
// class's end itself, a cluster's node by its timeout).
func (d *Decision) Apply(req *tartarus.CreateRequest) *tartarus.SandboxHeat {
	h := &tartarus.SandboxHeat{Heat: string(d.Heat), Class: d.Class, Rule: string(d.Rule),
		RaisedFrom: string(d.RaisedFrom), Reason: d.Reason, Enforced: d.Enforced}
	if !d.Enforced {
		return h
	}
	req.CPUs, req.MemoryMB = d.Limits.CPUs, d.Limits.MemoryMB
	h.MaxDurationS = int(d.Limits.MaxDuration / time.Second)
	h.DiskIOPS, h.NetworkMbps = d.Limits.DiskIOPS, d.Limits.NetworkMbps
	ApplyNetworkBurst(req.Network, h.NetworkMbps)
	return h
}
