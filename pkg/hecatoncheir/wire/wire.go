// Package wire is the protocol between node agents (`tartarus agent`) and
// the API server replicas of a multi-node Tartarus: the messages, their
// routes, and how each side authenticates the other.
//
// Everything goes over HTTPS with mutual TLS: both sides hold certificates
// of the operator's CA (`tartarus certs` makes a development one). An
// agent's certificate names it "agent:NAME"; a server's names it
// "service:NAME".
//
// The agent calls the server (its --agent-listen address):
//
//	POST /v1/agent/heartbeat        Heartbeat → HeartbeatReply
//	GET  /v1/agent/commands?wait=D  → Commands (long poll: answers at once when
//	                                 commands are pending, else within D)
//	     [&have=ID,ID…]              commands the agent has queued or running:
//	                                 a server may leave them out and wait
//	                                 instead (QueryHave; agents pause briefly
//	                                 between polls that brought nothing new)
//	POST /v1/agent/commands/{id}    Result → 204 (idempotent)
//	POST /v1/agent/reports          Reports → 204 (state changes the agent made
//	                                 on its own: expiry, auto-hibernate, wake)
//
// The server calls the agent's node API (Heartbeat.Node.Address) only for
// streams: exec, file transfers and listings. They are the public API's
// requests, forwarded unchanged under the same paths, with the sandbox's
// tenant in the TenantHeader header; the agent trusts that header only from
// a verified server certificate. Exposed ports are reached through one
// route of the node API's own:
//
//	GET /v1/sandboxes/{id}/dial/{port}   Upgrade: PortUpgrade → 101, then the
//	                                     connection carries the bytes of a TCP
//	                                     connection to the guest's port (the
//	                                     agent wakes a hibernated sandbox first)
//
// Tenant templates on a cluster use three more (the tenant in TenantHeader):
//
//	POST   /v1/node/templates/{version}        → SharedTemplate: the agent
//	                                             uploads the version to the
//	                                             shared store
//	POST   /v1/node/templates/{version}/fetch  SharedTemplate [?ref=NAME:TAG]
//	                                             → 204: fetch it (and tag it)
//	DELETE /v1/node/templates/{version}        [?objects=1] → 204: drop the
//	                                             agent's copy (and the shared one)
//
// Commands are durable: the server writes one to its database before it
// answers the caller, delivers it until the agent posts its Result, and an
// agent that gets the same command twice (after a restart, or because a
// Result was lost) does it once. Pending commands for one node are
// delivered oldest first.
package wire

import (
	"fmt"
	"strings"
	"time"

	"github.com/tartarus-sandbox/tartarus/pkg/hypnos"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

// Routes on the server's agent listener.
const (
	PathHeartbeat = "/v1/agent/heartbeat"
	PathCommands  = "/v1/agent/commands"
	PathReports   = "/v1/agent/reports"
)

// PathDial is the node API route that opens a connection to a guest port
// (fmt: sandbox id, port); PortUpgrade is the Upgrade protocol it
// switches to.
const (
	PathDial    = "/v1/sandboxes/%s/dial/%d"
	PortUpgrade = "tartarus-port"
)

// QueryHave is the commands poll's parameter listing, comma separated, the
// ids of commands the agent already has (queued or running), so that a
// long-running command does not make every poll answer at once.
const QueryHave = "have"

// TenantHeader carries the tenant of the sandbox a forwarded request acts
// on.
const TenantHeader = "X-Tartarus-Tenant"

// Defaults both sides use unless configured otherwise.
const (
	DefaultHeartbeatInterval = 2 * time.Second
	// DefaultPollWait is how long a command long poll waits when nothing
	// is pending.
	DefaultPollWait = 25 * time.Second
)

// NodeStatus is what an agent says about itself in every heartbeat.
type NodeStatus struct {
	Name string `json:"name"`
	// Address is the agent's node API, https://HOST:PORT.
	Address string            `json:"address"`
	Labels  map[string]string `json:"labels,omitempty"`
	// CPUs and MemoryMB are what sandboxes may use on this host in all
	// (memory held by the warm pools taken out).
	CPUs     int `json:"cpus"`
	MemoryMB int `json:"memory_mb"`
	// Sandboxes counts the sandboxes the agent holds that are not final.
	Sandboxes int `json:"sandboxes"`
	// Runtimes are the enabled runtimes, default first.
	Runtimes []tartarus.Fingerprint `json:"runtimes"`
	// Templates are the template names the agent can create from.
	Templates []string `json:"templates,omitempty"`
	// Warm lists the sandboxes waiting in the agent's warm pools, by
	// "runtime/template/memory_mb/cpus": a server that creates a sandbox of
	// that shape under one of these ids gets it at once.
	Warm map[string][]string `json:"warm,omitempty"`
	// SharedSnapshots is true when the agent keeps snapshots in storage
	// other nodes share (S3), so its hibernated sandboxes can wake
	// elsewhere.
	SharedSnapshots bool `json:"shared_snapshots"`
	// PoolTargets are the per-template warm-pool sizes the agent fills to
	// (set by a KindPoolTargets command); null while it keeps its fixed
	// --warm-pool, {} when it was told to keep no pools (so no omitempty).
	PoolTargets map[string]int `json:"pool_targets"`
	// Creates counts the agent's creates since it started, by template and
	// by how they were served ("warm pool", "restored", "booted", "failed").
	Creates map[string]map[string]int `json:"creates,omitempty"`
	// RefillTime is the agent's typical time to make one warm sandbox (0
	// before its first) and RefillParallel how many a pool makes at once
	// (hecatoncheir.Agent.RefillRate).
	RefillTime     time.Duration `json:"refill_ns,omitempty"`
	RefillParallel int           `json:"refill_parallel,omitempty"`
	StartedAt      time.Time     `json:"started_at"`
	Version        string        `json:"version,omitempty"`
}

// Heartbeat is sent every HeartbeatReply.Interval. The first one after the
// agent starts (and any after the server answered Resync) is Full: it lists
// every sandbox the agent holds, so the server can reconcile.
type Heartbeat struct {
	Node NodeStatus `json:"node"`
	Full bool       `json:"full,omitempty"`
	// Sandboxes is every sandbox the agent holds, when Full.
	Sandboxes []Report `json:"sandboxes,omitempty"`
}

// HeartbeatReply tells the agent what the server wants of it.
type HeartbeatReply struct {
	// Interval is when to send the next heartbeat.
	Interval time.Duration `json:"interval_ns"`
	// Resync asks for a Full heartbeat next (the server had marked the node
	// down, or has no record of it).
	Resync bool `json:"resync,omitempty"`
	// Drop lists sandboxes the agent must let go of: the cluster declared
	// them lost while the node was down, or woke them elsewhere. The agent
	// destroys their instances; a hibernated one's snapshot is left alone
	// when the sandbox now lives on another node (Keep).
	Drop []Drop `json:"drop,omitempty"`
}

// Drop is one sandbox to let go of.
type Drop struct {
	SandboxID string `json:"sandbox_id"`
	// KeepSnapshot: another node owns the sandbox's snapshot now.
	KeepSnapshot bool   `json:"keep_snapshot,omitempty"`
	Reason       string `json:"reason"`
}

// Kind names a command.
type Kind string

// The commands.
const (
	KindCreate    Kind = "create"
	KindDestroy   Kind = "destroy"
	KindPause     Kind = "pause"
	KindResume    Kind = "resume"
	KindHibernate Kind = "hibernate"
	KindWake      Kind = "wake"
	KindFork      Kind = "fork"
	// KindAdopt takes over a hibernated sandbox whose node went down: the
	// agent records Sandbox and Sleep as its own, then wakes it.
	KindAdopt Kind = "adopt"
	// KindDiscard deletes the shared snapshot of a hibernated sandbox that
	// was destroyed while no node held it (its node went down); Sandbox
	// and Sleep are set. Nothing is recorded on the agent.
	KindDiscard Kind = "discard"
	// KindPoolTargets sets the agent's per-template warm-pool sizes
	// (PoolTargets; SandboxID is empty): the cluster's share of each
	// template's forecast pool that this node keeps.
	KindPoolTargets Kind = "pool_targets"
)

// Command is one thing an agent must do.
type Command struct {
	ID        string    `json:"id"`
	Node      string    `json:"node"`
	Kind      Kind      `json:"kind"`
	SandboxID string    `json:"sandbox_id"`
	CreatedAt time.Time `json:"created_at"`
	// Create: the sandbox to create, with its id, tenant, shape, times.
	Sandbox *tartarus.Sandbox `json:"sandbox,omitempty"`
	// Create: the caller's request (normalized).
	Create *tartarus.CreateRequest `json:"create,omitempty"`
	// Fork: the ids the copies get, in order.
	ForkIDs []string `json:"fork_ids,omitempty"`
	// Adopt, Discard: the sleep record of the hibernated sandbox (Sandbox
	// is set too).
	Sleep *hypnos.SleepRecord `json:"sleep,omitempty"`
	// Destroy: how the sandbox ends (reason and grace period); nil is a
	// user's immediate end.
	Shutdown *tartarus.ShutdownOptions `json:"shutdown,omitempty"`
	// PoolTargets: the warm-pool size per template (a template not named
	// keeps no pool).
	PoolTargets map[string]int `json:"pool_targets,omitempty"`
	// Create: the tenant template version the sandbox is made from, as
	// the cluster recorded it; an agent without it fetches it from the
	// shared store first, checking it against RootFS.Checksum.
	Template *SharedTemplate `json:"template,omitempty"`
}

// PathShareTemplate is the node API route (fmt: version) that uploads a
// tenant template version of the agent's to the shared store and answers
// its SharedTemplate; DELETE on it removes the agent's copy, and with
// ?objects=1 the shared objects too.
const PathShareTemplate = "/v1/node/templates/%s"

// PathFetchTemplate is the node API route (fmt: version) that has an agent
// fetch the SharedTemplate in the body from the shared store, and with
// ?ref=NAME:TAG point its own tag at it: a replica does so before it
// forwards a build FROM that template to an agent that lacks it.
const PathFetchTemplate = "/v1/node/templates/%s/fetch"

// SharedTemplate is a tenant template version kept in the snapshot store
// the nodes share: what any agent needs to install it.
type SharedTemplate struct {
	// Image is the version as it was made: Name is the version's name,
	// Tenant its owner, Digest, Env, WorkDir, User, SizeBytes as made.
	Image tartarus.Image `json:"image"`
	// Parent is the template whose kernel and initramfs it boots with.
	Parent string `json:"parent"`
	// RootFS is its root filesystem, zstd-compressed.
	RootFS SharedObject `json:"rootfs"`
	// Snapshots are its memory snapshots (a saved sandbox's processes, a
	// build's START), one per runtime and shape, each a zstd-compressed tar
	// of the runtime's snapshot files.
	Snapshots []SharedSnapshot `json:"snapshots,omitempty"`
	// Node made it.
	Node string `json:"node"`
}

// SharedSnapshot is one memory snapshot of a shared template: the
// runtime and shape it restores at, and its object.
type SharedSnapshot struct {
	Runtime  string       `json:"runtime"`
	MemoryMB int          `json:"memory_mb"`
	CPUs     int          `json:"cpus"`
	Network  bool         `json:"network,omitempty"`
	Object   SharedObject `json:"object"`
}

// SharedObject is one object of the shared store: its key, size and
// checksum ("sha256:HEX" of the stored bytes) as written.
type SharedObject struct {
	Key      string `json:"key"`
	Size     int64  `json:"size"`
	Checksum string `json:"checksum"`
}

// Commands is the long poll's answer.
type Commands struct {
	Commands []Command `json:"commands"`
}

// Result is what became of a command. Error is empty on success.
type Result struct {
	// Sandboxes are the sandboxes the command touched, as the agent now
	// has them (a fork's copies after the parent).
	Sandboxes []Report `json:"sandboxes,omitempty"`
	Error     *Error   `json:"error,omitempty"`
}

// Error is a failed command's error: Code is the error class's wire code
// from the one table (tartarus.ClassOf: not_found, invalid_argument,
// failed_precondition, resource_exhausted, unavailable, not_implemented, …)
// so the server answers its caller with the same status a single node would.
type Error struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

// Report is one sandbox as its agent has it.
type Report struct {
	Sandbox tartarus.Sandbox `json:"sandbox"`
	// Sleep is the sleep record of a hibernated sandbox, so that another
	// node can wake it if this one goes down.
	Sleep *hypnos.SleepRecord `json:"sleep,omitempty"`
}

// Reports carries state changes the agent made on its own.
type Reports struct {
	Node      string   `json:"node"`
	Sandboxes []Report `json:"sandboxes"`
}

// legacyCodes are codes agents sent before the one error table.
var legacyCodes = map[string]error{"invalid": tartarus.ErrInvalid}

// ErrorOf makes the wire form of err; nil for nil.
func ErrorOf(err error) *Error {
	if err == nil {
		return nil
	}
	return &Error{Code: tartarus.CodeOf(err), Message: err.Error()}
}

// Err turns a wire error back into a Go error of the same class; nil for
// nil. The message is the agent's, prefixed so the caller knows where it
// happened.
func (e *Error) Err(node string) error {
	if e == nil {
		return nil
	}
	class := legacyCodes[e.Code]
	if c, ok := tartarus.ClassForCode(e.Code); ok {
		class = c.Err
	}
	if class == nil {
		return fmt.Errorf("node %s: %s", node, e.Message)
	}
	return fmt.Errorf("node %s: %s: %w", node, strings.TrimSuffix(e.Message, ": "+class.Error()), class)
}
