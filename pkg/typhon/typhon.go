// Package typhon (named for the monster bound in Tartarus) quarantines
// sandboxes: CEL triggers over each sandbox's signals, containment that
// keeps examiners in, evidence with checksums, examination reports with a
// risk score, and a two-person release.
//
// The seed's QuarantineManager is kept (Quarantine, Release, Examine,
// ListQuarantined, SetPolicy); its types live in pkg/tartarus, so that the
// HTTP API may speak them, and are re-exported here under the seed's names.
// Added to the seed: Get, Reports, Destroy, Evidence and Tick on the
// Manager; records carry an id, the tenant, the trigger, containment times
// and notes; evidence carries its source (host, guest or user), its blob
// key and checksum. What the node does (state, network, snapshot, console,
// termination) sits behind the small Host and NetworkController interfaces,
// which the node agent's wiring implements. See docs/quarantine.md.
package typhon

import (
	"context"
	"io"
	"slices"
	"time"

	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

// The seed's names for the contract types.
type (
	QuarantineRequest     = tartarus.QuarantineRequest
	QuarantineReason      = tartarus.QuarantineReason
	Evidence              = tartarus.Evidence
	EvidenceType          = tartarus.EvidenceType
	QuarantineRecord      = tartarus.QuarantineRecord
	QuarantineStatus      = tartarus.QuarantineStatus
	ExaminationReport     = tartarus.ExaminationReport
	Finding               = tartarus.Finding
	Severity              = tartarus.Severity
	RecommendedAction     = tartarus.RecommendedAction
	ReleaseApproval       = tartarus.ReleaseApproval
	QuarantineFilter      = tartarus.QuarantineFilter
	QuarantinePolicy      = tartarus.QuarantinePolicy
	AutoQuarantineTrigger = tartarus.AutoQuarantineTrigger
	QuarantineIsolation   = tartarus.QuarantineIsolation
	NetworkMode           = tartarus.NetworkMode
)

// The seed's constant names.
const (
	ReasonSuspiciousBehavior = tartarus.QuarantineSuspiciousBehavior
	ReasonPolicyViolation    = tartarus.QuarantinePolicyViolation
	ReasonNetworkAnomaly     = tartarus.QuarantineNetworkAnomaly
	ReasonResourceAbuse      = tartarus.QuarantineResourceAbuse
	ReasonUntrustedSource    = tartarus.QuarantineUntrustedSource
	ReasonManualFlag         = tartarus.QuarantineManualFlag
	ReasonSecurityScan       = tartarus.QuarantineSecurityScan

	EvidenceTypeNetworkLog    = tartarus.EvidenceNetworkLog
	EvidenceTypeSyscallTrace  = tartarus.EvidenceSyscallTrace
	EvidenceTypeFileAccess    = tartarus.EvidenceFileAccess
	EvidenceTypeResourceSpike = tartarus.EvidenceResourceSpike
	EvidenceTypeScreenshot    = tartarus.EvidenceScreenshot

	StatusActive    = tartarus.QuarantineActive
	StatusExamining = tartarus.QuarantineExamining
	StatusReleased  = tartarus.QuarantineReleased
	StatusDestroyed = tartarus.QuarantineDestroyed

	NetworkModeNone       = tartarus.NetworkModeNone
	NetworkModeRestricted = tartarus.NetworkModeRestricted
	NetworkModeMonitored  = tartarus.NetworkModeMonitored
)

// QuarantineManager handles high-risk workload isolation (the seed's).
type QuarantineManager interface {
	Quarantine(ctx context.Context, req *QuarantineRequest) (*QuarantineRecord, error)
	Release(ctx context.Context, sandboxID string, approval *ReleaseApproval) error
	Examine(ctx context.Context, sandboxID string) (*ExaminationReport, error)
	ListQuarantined(ctx context.Context, filter *QuarantineFilter) ([]*QuarantineRecord, error)
	SetPolicy(ctx context.Context, policy *QuarantinePolicy) error
}

// Host is what the manager needs of the node that runs the sandboxes.
type Host interface {
	// Sandboxes lists the live sandboxes the triggers look at.
	Sandboxes(ctx context.Context) ([]*tartarus.Sandbox, error)
	Get(ctx context.Context, id string) (*tartarus.Sandbox, error)
	// SetQuarantined moves a sandbox into the quarantined state (on) or
	// back to running (off). Idempotent.
	SetQuarantined(ctx context.Context, id string, on bool) error
	// Signals reads a sandbox's current signals (host counters first).
	Signals(ctx context.Context, sb *tartarus.Sandbox) (*Signals, error)
	// Collect gathers the evidence the node can see at quarantine time;
	// each piece's Data is set, Source says who produced it.
	Collect(ctx context.Context, sb *tartarus.Sandbox, iso *QuarantineIsolation, keepFor time.Duration) []Evidence
	// Destroy ends the sandbox through Thanatos with reason
	// policy_violation.
	Destroy(ctx context.Context, id string) error
}

// Sleeper is a Host that can hibernate and wake a sandbox (the node's
// Hypnos). A held sandbox sleeps only through the manager (Hibernate,
// Wake), so that the hold outlives the sleep: the record and the hold stay,
// and the woken sandbox is contained again before anyone else reaches it.
type Sleeper interface {
	Hibernate(ctx context.Context, id string) error
	Wake(ctx context.Context, id string) error
}

// SeccompStrict is the one isolation.seccomp_profile there is: a held
// microvm sandbox's QEMU is restored under the jail's strict seccomp
// filter (pkg/jail Spec.StrictSeccomp).
const SeccompStrict = "strict"

// SeccompHardener is a Host that can run a sandbox under the strict
// seccomp filter from its next restore on (on) or no longer (off). The
// manager then hibernates and wakes a Sleeper's sandbox so that the filter
// is in force at once.
type SeccompHardener interface {
	SetStrictSeccomp(ctx context.Context, id string, on bool) error
}

// NodeLabel is the node label key of quarantine nodes: a cluster keeps
// ordinary sandboxes off a node labelled quarantine=… (unless a create
// names the key in its node labels), so that a policy's quarantine_nodes
// (such as "quarantine=yes") name nodes that hold only quarantined
// sandboxes.
const NodeLabel = "quarantine"

// Mover is a Host that can move a held sandbox to another node (a
// cluster's): MoveTo hibernates it and wakes it on a node carrying one of
// labels ("key=value"), unless its own node carries one already, and
// returns the node it is on. The sandbox is running, not quarantined, when
// it is called; the manager contains it again after.
type Mover interface {
	MoveTo(ctx context.Context, id string, labels []string) (node string, err error)
}

// NetworkController switches a sandbox's network for containment
// (typhonnode implements it over the node agent's pkg/netns networks).
type NetworkController interface {
	// Contain switches the sandbox's network to mode (restricted allows
	// only allowedEgress) and returns the spec in force before, to put
	// back at release (nil: the sandbox has no network, so nothing leaves
	// it anyway).
	Contain(ctx context.Context, id string, mode NetworkMode, allowedEgress []string, record bool) (prev *tartarus.NetworkSpec, err error)
	// Restore puts back a spec Contain returned (nil: nothing to do).
	Restore(ctx context.Context, id string, prev *tartarus.NetworkSpec) error
}

// ContainSpec is the network spec that contains a sandbox whose spec is
// cur in mode (restricted allows only allowedEgress), its bandwidth limits
// kept, and a copy of cur to put back at release; both nil for a sandbox
// without a network (nothing leaves it anyway). The NetworkControllers of
// a node and of a cluster apply it with their own live update.
func ContainSpec(cur *tartarus.NetworkSpec, mode NetworkMode, allowedEgress []string) (spec, prev *tartarus.NetworkSpec) {
	if cur == nil {
		return nil, nil
	}
	p := *cur
	p.Allow, p.Deny = slices.Clone(p.Allow), slices.Clone(p.Deny)
	spec = &tartarus.NetworkSpec{Mode: string(mode), EgressBitsPerSec: p.EgressBitsPerSec, IngressBitsPerSec: p.IngressBitsPerSec}
	if mode == NetworkModeRestricted {
		spec.Allow = slices.Clone(allowedEgress)
	}
	return spec, &p
}

// BlobStore keeps evidence bytes with checksums (erebus.Store satisfies
// it through ErebusBlobs).
type BlobStore interface {
	Put(ctx context.Context, key string, r io.Reader) (size int64, checksum string, err error)
	Get(ctx context.Context, key string) (io.ReadCloser, string, error)
}
