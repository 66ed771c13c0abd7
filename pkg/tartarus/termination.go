package tartarus

import (
	"slices"
	"syscall"
	"time"
)

// The types of a sandbox's termination, shared by the termination engine
// (pkg/thanatos), the API (pkg/olympus) and the SDK: how to end a sandbox,
// why, the phases it goes through and the checkpoint it may leave.

// ShutdownOptions say how a sandbox should end. The zero value is an
// immediate termination at the user's request.
type ShutdownOptions struct {
	// GracePeriod is how long the sandbox's processes get between the
	// signal and SIGKILL; hooks spend from it. Zero kills at once, without
	// a signal.
	GracePeriod time.Duration
	// Reason is why the sandbox ends; empty means ReasonUserRequest.
	Reason TerminationReason
	// CreateCheckpoint takes a restorable checkpoint after draining.
	CreateCheckpoint bool
	// CheckpointTTL is how long the checkpoint is kept; zero means the
	// manager's default.
	CheckpointTTL time.Duration
	// Signal is sent at the signaled phase; empty means SIGTERM.
	Signal Signal
	// CallbackURL receives a signed POST of the final status.
	CallbackURL string
	// Tenant owns the sandbox and its checkpoint; its key signs the callback.
	Tenant string
}

// TerminationReason says why a sandbox ends.
type TerminationReason string

// The reasons.
const (
	ReasonCompleted       TerminationReason = "completed"
	ReasonTimeout         TerminationReason = "timeout"
	ReasonUserRequest     TerminationReason = "user_request"
	ReasonResourceLimit   TerminationReason = "resource_limit"
	ReasonPolicyViolation TerminationReason = "policy_violation"
	ReasonNodeDrain       TerminationReason = "node_drain"
	ReasonSystemShutdown  TerminationReason = "system_shutdown"
)

// Reasons lists every reason, in a stable order.
var Reasons = []TerminationReason{
	ReasonCompleted, ReasonTimeout, ReasonUserRequest, ReasonResourceLimit,
	ReasonPolicyViolation, ReasonNodeDrain, ReasonSystemShutdown,
}

// Valid reports whether r is one of Reasons.
func (r TerminationReason) Valid() bool {
	for _, k := range Reasons {
		if r == k {
			return true
		}
	}
	return false
}

// Signal names the signal sent at the signaled phase.
type Signal string

// The signals a termination may send.
const (
	SignalTerm Signal = "SIGTERM"
	SignalInt  Signal = "SIGINT"
	SignalKill Signal = "SIGKILL"
	SignalHup  Signal = "SIGHUP"
	SignalQuit Signal = "SIGQUIT"
)

var signals = map[Signal]syscall.Signal{
	SignalTerm: syscall.SIGTERM,
	SignalInt:  syscall.SIGINT,
	SignalKill: syscall.SIGKILL,
	SignalHup:  syscall.SIGHUP,
	SignalQuit: syscall.SIGQUIT,
}

// Syscall returns the signal's number, or ErrInvalid for an unknown name.
func (s Signal) Syscall() (syscall.Signal, error) {
	n, ok := signals[s]
	if !ok {
		return 0, Errorf(ErrInvalid, "signal %q: want SIGTERM, SIGINT, SIGHUP, SIGQUIT or SIGKILL", string(s))
	}
	return n, nil
}

// TerminationPhase is a step of a termination.
type TerminationPhase string

// The phases, in order; completed and failed are final.
const (
	PhaseInitiated     TerminationPhase = "initiated"
	PhaseSignaled      TerminationPhase = "signaled"
	PhaseDraining      TerminationPhase = "draining"
	PhaseCheckpointing TerminationPhase = "checkpointing"
	PhaseTerminating   TerminationPhase = "terminating"
	PhaseCompleted     TerminationPhase = "completed"
	PhaseFailed        TerminationPhase = "failed"
)

// Phases lists every phase in order.
var Phases = []TerminationPhase{
	PhaseInitiated, PhaseSignaled, PhaseDraining, PhaseCheckpointing,
	PhaseTerminating, PhaseCompleted, PhaseFailed,
}

// Final reports whether nothing follows p.
func (p TerminationPhase) Final() bool { return p == PhaseCompleted || p == PhaseFailed }

// PhaseRecord is when a termination entered a phase.
type PhaseRecord struct {
	Phase     TerminationPhase `json:"phase"`
	StartedAt time.Time        `json:"started_at"`
}

// TerminationStatus is a termination as it stands.
type TerminationStatus struct {
	SandboxID string            `json:"sandbox_id"`
	Tenant    string            `json:"tenant,omitempty"`
	Phase     TerminationPhase  `json:"phase"`
	Reason    TerminationReason `json:"reason"`
	Signal    Signal            `json:"signal"`
	// GracePeriod and CreateCheckpoint are what was asked.
	GracePeriod      time.Duration `json:"grace_period_ns"`
	CreateCheckpoint bool          `json:"checkpoint"`
	CheckpointTTL    time.Duration `json:"checkpoint_ttl_ns,omitempty"`
	CallbackURL      string        `json:"callback_url,omitempty"`
	InitiatedAt      time.Time     `json:"initiated_at"`
	// GraceDeadline is when SIGKILL is due; ForceTerminate moves it to now.
	GraceDeadline time.Time `json:"grace_deadline"`
	// Phases holds each phase entered, in order.
	Phases []PhaseRecord `json:"phases"`
	// CheckpointID names the checkpoint (chosen at initiation, so a
	// resumed termination reuses it).
	CheckpointID string `json:"checkpoint_id,omitempty"`
	// ExitCode is 0 when the sandbox's work ended within the grace period
	// and 137 (128+SIGKILL) when it was killed with work still running;
	// nil until draining ends.
	ExitCode *int `json:"exit_code,omitempty"`
	// Forced says ForceTerminate cut the grace period short.
	Forced       bool      `json:"forced,omitempty"`
	ErrorMessage string    `json:"error,omitempty"`
	FinishedAt   time.Time `json:"finished_at,omitzero"`
}

// Started returns when the termination entered phase, or the zero time.
func (s *TerminationStatus) Started(phase TerminationPhase) time.Time {
	for _, p := range s.Phases {
		if p.Phase == phase {
			return p.StartedAt
		}
	}
	return time.Time{}
}

// Clone returns a deep copy.
func (s *TerminationStatus) Clone() *TerminationStatus {
	c := *s
	c.Phases = append([]PhaseRecord(nil), s.Phases...)
	if s.ExitCode != nil {
		v := *s.ExitCode
		c.ExitCode = &v
	}
	return &c
}

// Checkpoint is a restorable snapshot of a sandbox, kept until ExpiresAt.
type Checkpoint struct {
	ID        string    `json:"id"`
	SandboxID string    `json:"sandbox_id"`
	Tenant    string    `json:"tenant,omitempty"`
	CreatedAt time.Time `json:"created_at"`
	ExpiresAt time.Time `json:"expires_at"`
	Size      int64     `json:"size"`
	// SnapshotRef is the target's reference to the snapshot (an Erebus key).
	SnapshotRef string `json:"snapshot_ref"`
	Restorable  bool   `json:"restorable"`
	// Reason is the termination's reason, or "" for a live checkpoint.
	Reason TerminationReason `json:"reason,omitempty"`
}

// DrainOptions say how a node is drained: its sandboxes end (reason
// node_drain, with GraceS seconds each) or, with Hibernate, hibernate so
// that they wake on another node (a cluster whose nodes share snapshots;
// elsewhere they end).
type DrainOptions struct {
	Hibernate bool `json:"hibernate,omitempty"`
	GraceS    int  `json:"grace_s,omitempty"`
}

// DrainReport is what a drain did with each of the node's sandboxes.
type DrainReport struct {
	Node  string   `json:"node"`
	Ended []string `json:"ended"`
	// Moved hibernated and left the node: they wake elsewhere.
	Moved  []string          `json:"moved"`
	Failed map[string]string `json:"failed,omitempty"`
}

// NewDrainReport starts the report of a drain of node: no sandbox yet,
// with empty lists (not null) in its JSON.
func NewDrainReport(node string) *DrainReport {
	return &DrainReport{Node: node, Ended: []string{}, Moved: []string{}}
}

// Record notes what became of sandbox id: it failed with err, else it
// moved or ended. Callers that drain in parallel hold a lock around it.
func (r *DrainReport) Record(id string, moved bool, err error) {
	switch {
	case err != nil:
		if r.Failed == nil {
			r.Failed = map[string]string{}
		}
		r.Failed[id] = err.Error()
	case moved:
		r.Moved = append(r.Moved, id)
	default:
		r.Ended = append(r.Ended, id)
	}
}

// Sort orders Ended and Moved, which parallel drains fill in any order.
func (r *DrainReport) Sort() {
	slices.Sort(r.Ended)
	slices.Sort(r.Moved)
}
