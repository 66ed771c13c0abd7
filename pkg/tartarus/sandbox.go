// Package tartarus holds the domain types shared by every part of Tartarus:
// sandboxes and their state machine, the Runtime interface that isolation
// backends implement, and the error classes the API maps to HTTP statuses.
//
// It does no I/O. The seed names this package and its Runtime; the interface
// here extends the seed's (which only shows Create, Pause, Resume, Destroy and
// List) with exec, files, signals, fingerprint and recovery, which real use of
// a sandbox platform needs.
package tartarus

import (
	"fmt"
	"slices"
	"strings"
	"time"
)

// State is where a sandbox is in its life.
type State string

// The sandbox states. Terminated and failed are final.
const (
	StateCreating    State = "creating"
	StateRunning     State = "running"
	StatePaused      State = "paused"
	StateHibernated  State = "hibernated"
	StateTerminating State = "terminating"
	StateTerminated  State = "terminated"
	StateQuarantined State = "quarantined"
	StateFailed      State = "failed"
)

// States lists every state, in life order.
var States = []State{StateCreating, StateRunning, StatePaused, StateHibernated,
	StateTerminating, StateTerminated, StateQuarantined, StateFailed}

// Final reports whether no transition leaves s.
func (s State) Final() bool { return s == StateTerminated || s == StateFailed }

// LiveStates returns the states that are not final.
func LiveStates() []State {
	return slices.DeleteFunc(slices.Clone(States), State.Final)
}

// transitions lists, for each state, the states it may move to. A move to the
// same state is always allowed, so every transition is idempotent.
var transitions = map[State][]State{
	StateCreating:    {StateRunning, StateTerminating, StateFailed},
	StateRunning:     {StatePaused, StateHibernated, StateTerminating, StateQuarantined, StateFailed},
	StatePaused:      {StateRunning, StateHibernated, StateTerminating, StateQuarantined, StateFailed},
	StateHibernated:  {StateRunning, StateTerminating, StateFailed},
	StateQuarantined: {StateRunning, StateTerminating, StateFailed},
	StateTerminating: {StateTerminated, StateFailed},
}

// CanMove reports whether a sandbox in state from may move to state to.
func CanMove(from, to State) bool {
	if from == to {
		return true
	}
	for _, s := range transitions[from] {
		if s == to {
			return true
		}
	}
	return false
}

// CheckMove returns an ErrFailedPrecondition error when from → to is not allowed.
func CheckMove(from, to State) error {
	if CanMove(from, to) {
		return nil
	}
	return Errorf(ErrFailedPrecondition, "sandbox is %s, cannot become %s", from, to)
}

// Sandbox is one isolated environment as the control plane records it.
type Sandbox struct {
	ID        string            `json:"id"`
	Tenant    string            `json:"tenant,omitempty"`
	Template  string            `json:"template"`
	Runtime   string            `json:"runtime"`
	State     State             `json:"state"`
	Node      string            `json:"node"`
	CPUs      int               `json:"cpus"`
	MemoryMB  int               `json:"memory_mb"`
	Env       map[string]string `json:"env,omitempty"`
	Metadata  map[string]string `json:"metadata"`
	CreatedAt time.Time         `json:"created_at"`
	UpdatedAt time.Time         `json:"updated_at"`
	ExpiresAt time.Time         `json:"expires_at"`
	// LastActivityAt is when the API last acted on the sandbox (create,
	// exec, files, pause, resume); idle detection reads it.
	LastActivityAt time.Time `json:"last_activity_at,omitzero"`
	// Error says why a sandbox failed; empty otherwise.
	Error string `json:"error,omitempty"`
	// AutoHibernateS is the sandbox's own idle threshold in seconds before
	// it is hibernated; 0 means the server's default.
	AutoHibernateS int `json:"auto_hibernate_s,omitempty"`
	// SnapshotBytes is what the stored snapshot of a hibernated sandbox
	// takes; 0 otherwise.
	SnapshotBytes int64 `json:"snapshot_bytes,omitempty"`
	// Heat is how the create was classified by heat (which rule chose its
	// class, and the limits it got); nil on servers without heat classes.
	Heat *SandboxHeat `json:"heat,omitempty"`
	// Queue is where the create waits while its state is queued.
	Queue *QueuePosition `json:"queue,omitempty"`
	// Network is the sandbox's network; nil means none (only loopback).
	Network *NetworkSpec `json:"network,omitempty"`
}

// NewSandbox returns the record of a sandbox about to be created from req
// (normalized) by tenant: creating, created and last active at now, expiring
// req.TimeoutS later, with req's shape, environment and metadata (an empty
// map when req has none). Runtime and Node are left to the caller, who
// knows where the sandbox is placed.
func NewSandbox(id, tenant string, req *CreateRequest, now time.Time) *Sandbox {
	sb := &Sandbox{
		ID: id, Tenant: tenant, Template: req.Template, State: StateCreating,
		CPUs: req.CPUs, MemoryMB: req.MemoryMB, Env: req.Env, Metadata: req.Metadata,
		CreatedAt: now, UpdatedAt: now, ExpiresAt: now.Add(time.Duration(req.TimeoutS) * time.Second),
		LastActivityAt: now, AutoHibernateS: req.AutoHibernateS, Network: req.Network,
	}
	if sb.Metadata == nil {
		sb.Metadata = map[string]string{}
	}
	return sb
}

// CreateRequest is what a caller asks for when creating a sandbox.
type CreateRequest struct {
	Template string            `json:"template"`
	Runtime  string            `json:"runtime,omitempty"`
	MemoryMB int               `json:"memory_mb,omitempty"`
	CPUs     int               `json:"cpus,omitempty"`
	TimeoutS int               `json:"timeout_s,omitempty"`
	Env      map[string]string `json:"env,omitempty"`
	Metadata map[string]string `json:"metadata,omitempty"`
	// AutoHibernateS hibernates the sandbox once idle this many seconds;
	// 0 means the server's default (which may be off). Negative is invalid.
	AutoHibernateS int `json:"auto_hibernate_s,omitempty"`
	// NodeLabels restricts a multi-node server's placement to nodes
	// carrying every one of these labels (for example {"pool": "gpu"}).
	NodeLabels map[string]string `json:"node_labels,omitempty"`
	// IdempotencyKey, from the request's Idempotency-Key header, makes a
	// create sent again (after a lost answer) return the sandbox the
	// first one made instead of making another. Cluster replicas honour
	// it.
	IdempotencyKey string `json:"-"`
	// FromCheckpoint creates the sandbox from a checkpoint a termination
	// (or POST /v1/sandboxes/{id}/checkpoint) left: its files and memory as
	// they were, running. Template, runtime, memory and CPUs are the
	// checkpointed sandbox's; asking for others is invalid.
	FromCheckpoint string `json:"from_checkpoint,omitempty"`

	// Heat classes (pkg/phlegethon, docs/heat.md). HeatHint is cold, warm,
	// hot or inferno; ResourceClass names a class (which sets the heat);
	// MaxDurationS ends the sandbox with reason timeout that long after it
	// starts (within its class's maximum). Setting any of the three makes
	// the class size the sandbox.
	HeatHint      string `json:"heat_hint,omitempty"`
	ResourceClass string `json:"resource_class,omitempty"`
	MaxDurationS  int    `json:"max_duration_s,omitempty"`
	// QueueTimeoutS lets the create wait up to this long in its heat's
	// admission queue when the node has no room now (answer 202, state
	// queued); without it a full node refuses at once.
	QueueTimeoutS int `json:"queue_timeout_s,omitempty"`
	// GPUs is how many GPUs the sandbox needs; only nodes that report
	// GPUs can take it.
	GPUs int `json:"gpus,omitempty"`

	// Asked is what the caller itself set of cpus and memory_mb, before
	// Normalize filled the defaults (0: not asked); heat classification
	// reads it.
	Asked      struct{ CPUs, MemoryMB int } `json:"-"`
	normalized bool
	// Network gives the sandbox a network with this policy; without it
	// the node's default applies (by default: no network).
	Network *NetworkSpec `json:"network,omitempty"`
}

// Defaults and bounds for a CreateRequest.
const (
	DefaultTemplate = "base"
	DefaultMemoryMB = 256
	DefaultCPUs     = 1
	DefaultTimeoutS = 300
	MinMemoryMB     = 64
	MaxTimeoutS     = 7 * 24 * 3600
	MaxEnvEntries   = 256
	MaxMetadata     = 64
	MaxNodeLabels   = 16
	// MaxQueueTimeoutS bounds queue_timeout_s (an hour).
	MaxQueueTimeoutS = 3600
)

// Normalize fills defaults and checks the request's own shape (not host
// limits, which only the node knows). Errors wrap ErrInvalid.
func (r *CreateRequest) Normalize() error {
	if !r.normalized {
		r.Asked.CPUs, r.Asked.MemoryMB, r.normalized = r.CPUs, r.MemoryMB, true
	}
	if r.Template == "" {
		r.Template = DefaultTemplate
	}
	if r.MemoryMB == 0 {
		r.MemoryMB = DefaultMemoryMB
	}
	if r.CPUs == 0 {
		r.CPUs = DefaultCPUs
	}
	if r.TimeoutS == 0 {
		r.TimeoutS = DefaultTimeoutS
	}
	switch {
	case !validTemplateRef(r.Template):
		return Errorf(ErrInvalid, "template %q: want 1-64 characters of a-z, 0-9, '-', '_', '.', optionally :TAG", r.Template)
	case r.MemoryMB < MinMemoryMB:
		return Errorf(ErrInvalid, "memory_mb %d: must be at least %d", r.MemoryMB, MinMemoryMB)
	case r.CPUs < 1:
		return Errorf(ErrInvalid, "cpus %d: must be at least 1", r.CPUs)
	case r.TimeoutS < 1 || r.TimeoutS > MaxTimeoutS:
		return Errorf(ErrInvalid, "timeout_s %d: must be between 1 and %d", r.TimeoutS, MaxTimeoutS)
	case r.AutoHibernateS < 0 || r.AutoHibernateS > MaxTimeoutS:
		return Errorf(ErrInvalid, "auto_hibernate_s %d: must be between 0 (server default) and %d", r.AutoHibernateS, MaxTimeoutS)
	case len(r.Env) > MaxEnvEntries:
		return Errorf(ErrInvalid, "env: at most %d entries", MaxEnvEntries)
	case len(r.Metadata) > MaxMetadata:
		return Errorf(ErrInvalid, "metadata: at most %d entries", MaxMetadata)
	case len(r.NodeLabels) > MaxNodeLabels:
		return Errorf(ErrInvalid, "node_labels: at most %d entries", MaxNodeLabels)
	case r.MaxDurationS < 0 || r.MaxDurationS > MaxTimeoutS:
		return Errorf(ErrInvalid, "max_duration_s %d: must be between 0 (the class's) and %d", r.MaxDurationS, MaxTimeoutS)
	case r.QueueTimeoutS < 0 || r.QueueTimeoutS > MaxQueueTimeoutS:
		return Errorf(ErrInvalid, "queue_timeout_s %d: must be between 0 (no waiting) and %d", r.QueueTimeoutS, MaxQueueTimeoutS)
	case r.GPUs < 0 || r.GPUs > 64:
		return Errorf(ErrInvalid, "gpus %d: must be between 0 and 64", r.GPUs)
	case r.ResourceClass != "" && !ValidName(r.ResourceClass):
		return Errorf(ErrInvalid, "resource_class %q: want 1-64 characters of a-z, 0-9, '-', '_', '.'", r.ResourceClass)
	}
	switch r.HeatHint {
	case "", "cold", "warm", "hot", "inferno":
	default:
		return Errorf(ErrInvalid, "heat_hint %q: want cold, warm, hot or inferno", r.HeatHint)
	}
	if len(r.IdempotencyKey) > 128 {
		return Errorf(ErrInvalid, "Idempotency-Key: at most 128 characters")
	}
	for _, c := range r.IdempotencyKey {
		if c < 0x21 || c > 0x7e {
			return Errorf(ErrInvalid, "Idempotency-Key: printable ASCII without spaces only")
		}
	}
	for k, v := range r.NodeLabels {
		if !ValidLabel(k) || !ValidLabel(v) {
			return Errorf(ErrInvalid, "node_labels: %q=%q: want 1-63 characters of a-z, A-Z, 0-9, '-', '_', '.', '/'", k, v)
		}
	}
	if r.Network != nil {
		if err := r.Network.Check(); err != nil {
			return err
		}
	}
	return ValidEnv(r.Env)
}

// ValidName reports whether s is a usable template, runtime or node name.
func ValidName(s string) bool {
	if len(s) == 0 || len(s) > 64 {
		return false
	}
	for _, c := range s {
		ok := c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.'
		if !ok {
			return false
		}
	}
	return true
}

// validTemplateRef reports whether s names a template: NAME or NAME:TAG.
func validTemplateRef(s string) bool {
	name, tag, ok := strings.Cut(s, ":")
	return ValidName(name) && (!ok || ValidName(tag))
}

// ValidLabel reports whether s is a usable node label key or value.
func ValidLabel(s string) bool {
	if len(s) == 0 || len(s) > 63 {
		return false
	}
	for _, c := range s {
		ok := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.' || c == '/'
		if !ok {
			return false
		}
	}
	return true
}

// ValidEnv checks environment variable names: non-empty, no '=' and no NUL.
func ValidEnv(env map[string]string) error {
	for k, v := range env {
		if k == "" || len(k) > 256 {
			return Errorf(ErrInvalid, "env: name %q must be 1-256 characters", k)
		}
		for i := 0; i < len(k); i++ {
			if k[i] == '=' || k[i] == 0 {
				return Errorf(ErrInvalid, "env: name %q must not contain '=' or NUL", k)
			}
		}
		for i := 0; i < len(v); i++ {
			if v[i] == 0 {
				return Errorf(ErrInvalid, "env: value of %q must not contain NUL", k)
			}
		}
	}
	return nil
}

// String is a short description for logs.
func (s *Sandbox) String() string {
	return fmt.Sprintf("%s(%s %s %s)", s.ID, s.Template, s.Runtime, s.State)
}
