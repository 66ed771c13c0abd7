package tartarus

import "time"

// The quarantine contract (pkg/typhon implements it; pkg/olympus serves it).
// The names are the seed's (Typhon's QuarantineManager); the reasons carry
// a Quarantine prefix here because TerminationReason already owns
// ReasonPolicyViolation. pkg/typhon re-exports them under the seed's names.

// QuarantineReason says why a sandbox was quarantined.
type QuarantineReason string

// The quarantine reasons.
const (
	QuarantineSuspiciousBehavior QuarantineReason = "suspicious_behavior"
	QuarantinePolicyViolation    QuarantineReason = "policy_violation"
	QuarantineNetworkAnomaly     QuarantineReason = "network_anomaly"
	QuarantineResourceAbuse      QuarantineReason = "resource_abuse"
	QuarantineUntrustedSource    QuarantineReason = "untrusted_source"
	QuarantineManualFlag         QuarantineReason = "manual_flag"
	QuarantineSecurityScan       QuarantineReason = "security_scan"
)

// QuarantineReasons lists every reason.
var QuarantineReasons = []QuarantineReason{QuarantineSuspiciousBehavior, QuarantinePolicyViolation,
	QuarantineNetworkAnomaly, QuarantineResourceAbuse, QuarantineUntrustedSource, QuarantineManualFlag,
	QuarantineSecurityScan}

// Valid reports whether r is one of the reasons.
func (r QuarantineReason) Valid() bool {
	for _, x := range QuarantineReasons {
		if r == x {
			return true
		}
	}
	return false
}

// EvidenceType says what a piece of evidence is.
type EvidenceType string

// The evidence types: the seed's five, plus the memory and disk snapshot,
// the guest's process tree and the exec history.
const (
	EvidenceNetworkLog    EvidenceType = "network_log"
	EvidenceSyscallTrace  EvidenceType = "syscall_trace"
	EvidenceFileAccess    EvidenceType = "file_access"
	EvidenceResourceSpike EvidenceType = "resource_spike"
	EvidenceScreenshot    EvidenceType = "screenshot"
	EvidenceSnapshot      EvidenceType = "snapshot"
	EvidenceProcessTree   EvidenceType = "process_tree"
	EvidenceExecHistory   EvidenceType = "exec_history"
	EvidenceNote          EvidenceType = "note"
)

// EvidenceSource says who produced a piece of evidence, and so whether the
// guest could have forged it.
type EvidenceSource string

// The sources. Everything the guest reports may lie.
const (
	SourceHost  EvidenceSource = "host"  // observed on the host: counters, console, snapshot, API log
	SourceGuest EvidenceSource = "guest" // reported by the guest: attacker-controlled
	SourceUser  EvidenceSource = "user"  // given by whoever asked for the quarantine
)

// Evidence is one piece of evidence. Its bytes live in the blob store under
// Key with Checksum; Data is only set on the way in (a request) and when a
// caller downloads it.
type Evidence struct {
	ID          string         `json:"id"`
	Type        EvidenceType   `json:"type"`
	Source      EvidenceSource `json:"source"`
	Description string         `json:"description"`
	Data        []byte         `json:"data,omitempty"`
	Timestamp   time.Time      `json:"timestamp"`
	// Key, Size and Checksum ("sha256:…") say where the bytes are stored.
	Key      string `json:"key,omitempty"`
	Size     int64  `json:"size"`
	Checksum string `json:"checksum,omitempty"`
	// Ref names evidence kept elsewhere (a snapshot's checkpoint id).
	Ref string `json:"ref,omitempty"`
}

// QuarantineStatus is where a quarantine is.
type QuarantineStatus string

// The quarantine statuses. Released and destroyed are final.
const (
	QuarantineActive    QuarantineStatus = "active"
	QuarantineExamining QuarantineStatus = "examining"
	QuarantineReleased  QuarantineStatus = "released"
	QuarantineDestroyed QuarantineStatus = "destroyed"
)

// Contained reports whether the sandbox is still held (active or examining).
func (s QuarantineStatus) Contained() bool {
	return s == QuarantineActive || s == QuarantineExamining
}

// QuarantineRequest asks for a sandbox to be quarantined.
type QuarantineRequest struct {
	SandboxID      string           `json:"sandbox_id"`
	Reason         QuarantineReason `json:"reason"`
	Evidence       []Evidence       `json:"evidence,omitempty"`
	RequestedBy    string           `json:"requested_by,omitempty"`
	AutoQuarantine bool             `json:"auto_quarantine,omitempty"`
	// Trigger is the condition that tripped an automatic quarantine.
	Trigger string `json:"trigger,omitempty"`
}

// QuarantineRecord is one quarantine of one sandbox.
type QuarantineRecord struct {
	ID            string           `json:"id"`
	SandboxID     string           `json:"sandbox_id"`
	Tenant        string           `json:"tenant,omitempty"`
	Reason        QuarantineReason `json:"reason"`
	QuarantinedAt time.Time        `json:"quarantined_at"`
	// QuarantinedBy is the caller, or "typhon" for an automatic one.
	QuarantinedBy string `json:"quarantined_by"`
	// Trigger is the CEL condition that tripped, for an automatic one.
	Trigger          string           `json:"trigger,omitempty"`
	Evidence         []Evidence       `json:"evidence"`
	Node             string           `json:"node,omitempty"`
	Status           QuarantineStatus `json:"status"`
	ExaminationCount int              `json:"examination_count"`
	// ContainedAt is when containment was in place; ExpiresAt is when the
	// sandbox is destroyed if still held (MaxQuarantineDuration).
	ContainedAt time.Time `json:"contained_at,omitzero"`
	// CollectedAt is when the evidence taken at quarantine was stored.
	CollectedAt time.Time `json:"collected_at,omitzero"`
	ExpiresAt   time.Time `json:"expires_at,omitzero"`
	// NetworkMode is the containment's network mode; OwnerNetwork is the
	// sandbox's own network spec, put back at release.
	NetworkMode  NetworkMode  `json:"network_mode,omitempty"`
	OwnerNetwork *NetworkSpec `json:"owner_network,omitempty"`
	// SeccompProfile is the system-call filter the sandbox is held under
	// ("strict", or empty for its usual one): its QEMU was restored with
	// it, and every restore while it is held is.
	SeccompProfile string           `json:"seccomp_profile,omitempty"`
	Approval       *ReleaseApproval `json:"approval,omitempty"`
	EndedAt        time.Time        `json:"ended_at,omitzero"`
	// Notes lists what containment could not do (no network controller…).
	Notes []string `json:"notes,omitempty"`
	// Involved are the identities that quarantined the sandbox or acted in
	// it before its trigger tripped: none of them may approve its release.
	Involved []string `json:"involved,omitempty"`
	// ConditionsLifted is when a release's conditions stopped applying.
	ConditionsLifted time.Time `json:"conditions_lifted,omitzero"`
}

// ExaminationReport is the outcome of one examination.
type ExaminationReport struct {
	ID             string            `json:"id"`
	SandboxID      string            `json:"sandbox_id"`
	ExaminedAt     time.Time         `json:"examined_at"`
	ExaminedBy     string            `json:"examined_by"`
	Findings       []Finding         `json:"findings"`
	RiskScore      float64           `json:"risk_score"`
	Recommendation RecommendedAction `json:"recommendation"`
}

// Finding is one thing an examination found.
type Finding struct {
	Severity    Severity `json:"severity"`
	Category    string   `json:"category"`
	Description string   `json:"description"`
	// EvidenceID names the evidence the finding rests on; Source says
	// whether that evidence is host-observed or guest-reported.
	EvidenceID string         `json:"evidence_id,omitempty"`
	Source     EvidenceSource `json:"source,omitempty"`
}

// Severity ranks a finding.
type Severity string

// The severities, least first.
const (
	SeverityInfo     Severity = "info"
	SeverityLow      Severity = "low"
	SeverityMedium   Severity = "medium"
	SeverityHigh     Severity = "high"
	SeverityCritical Severity = "critical"
)

// RecommendedAction is what an examination recommends.
type RecommendedAction string

// The recommendations.
const (
	ActionRelease  RecommendedAction = "release"
	ActionMonitor  RecommendedAction = "monitor"
	ActionDestroy  RecommendedAction = "destroy"
	ActionEscalate RecommendedAction = "escalate"
)

// ReleaseApproval releases a quarantined sandbox, with conditions that hold
// until ExpiresAt.
type ReleaseApproval struct {
	ApprovedBy string     `json:"approved_by"`
	Reason     string     `json:"reason"`
	Conditions []string   `json:"conditions,omitempty"`
	ExpiresAt  *time.Time `json:"expires_at,omitempty"`
	ApprovedAt time.Time  `json:"approved_at,omitzero"`
	// ConditionsFor, when ExpiresAt is nil, sets it that long after the
	// approval on the manager's clock.
	ConditionsFor time.Duration `json:"-"`
}

// QuarantineFilter selects quarantine records; zero fields match all.
type QuarantineFilter struct {
	Tenant    string             `json:"tenant,omitempty"`
	SandboxID string             `json:"sandbox_id,omitempty"`
	Statuses  []QuarantineStatus `json:"statuses,omitempty"`
	Reason    QuarantineReason   `json:"reason,omitempty"`
}

// QuarantinePolicy configures automatic quarantine and containment.
type QuarantinePolicy struct {
	AutoTriggers    []AutoQuarantineTrigger `json:"auto_triggers"`
	QuarantineNodes []string                `json:"quarantine_nodes,omitempty"`
	Isolation       QuarantineIsolation     `json:"isolation"`
	// MaxQuarantineDuration bounds a quarantine; then the sandbox is
	// destroyed (evidence kept). Zero means DefaultMaxQuarantine.
	MaxQuarantineDuration time.Duration `json:"max_quarantine_duration_ns"`
	// Version counts SetPolicy calls; UpdatedBy and UpdatedAt say who and
	// when. Set by the manager.
	Version   int       `json:"version"`
	UpdatedBy string    `json:"updated_by,omitempty"`
	UpdatedAt time.Time `json:"updated_at,omitzero"`
}

// DefaultMaxQuarantine is the bound of a quarantine when the policy sets none.
const DefaultMaxQuarantine = 24 * time.Hour

// AutoQuarantineTrigger quarantines a sandbox when Condition (CEL over the
// sandbox's signals) is true.
type AutoQuarantineTrigger struct {
	Name      string           `json:"name,omitempty"`
	Condition string           `json:"condition"`
	Reason    QuarantineReason `json:"reason"`
	Enabled   bool             `json:"enabled"`
}

// QuarantineIsolation is how a quarantined sandbox is held.
type QuarantineIsolation struct {
	NetworkMode    NetworkMode `json:"network_mode"`
	AllowedEgress  []string    `json:"allowed_egress,omitempty"`
	SeccompProfile string      `json:"seccomp_profile,omitempty"`
	StorageBackend string      `json:"storage_backend,omitempty"`
	EnableStrace   bool        `json:"enable_strace,omitempty"`
	EnableAuditd   bool        `json:"enable_auditd,omitempty"`
	RecordNetwork  bool        `json:"record_network,omitempty"`
}

// NetworkMode is a quarantined sandbox's network.
type NetworkMode string

// The network modes.
const (
	NetworkModeNone       NetworkMode = "none"
	NetworkModeRestricted NetworkMode = "restricted"
	NetworkModeMonitored  NetworkMode = "monitored"
)
