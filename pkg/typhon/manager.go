package typhon

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/tartarus-sandbox/tartarus/pkg/clock"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

// Bounds of what a caller may hand in.
const (
	MaxRequestEvidence   = 16
	MaxEvidenceBytes     = 1 << 20
	MaxDescriptionLen    = 1024
	MaxConditions        = 8
	DefaultConditionsFor = 24 * time.Hour
	maxActors            = 8
	// examineReadLimit bounds the bytes of one evidence an examination
	// reads: the rules need no more, and a huge blob must not stall it.
	examineReadLimit = 4 << 20
)

// AutoActor is QuarantinedBy of an automatic quarantine.
const AutoActor = "typhon"

// AuditEvent is one step of a quarantine, for the audit log.
type AuditEvent struct {
	Action    string // quarantine, contain, evidence, examine, release, destroy, expire, set_policy, lift_conditions
	SandboxID string
	Tenant    string
	Actor     string
	Detail    string
	Err       error
}

// Config wires a Manager.
type Config struct {
	Host    Host
	Blobs   BlobStore
	Journal Journal
	Clock   clock.Clock
	// Network switches containment's network; nil leaves it as it is and
	// notes so on each record.
	Network NetworkController
	// Audit hears every step; nil drops them.
	Audit func(context.Context, AuditEvent)
	// CostLimit bounds one trigger evaluation in CEL cost units; zero means
	// DefaultCostLimit.
	CostLimit uint64
	// Interval between ticks of Run; zero means 5 s.
	Interval time.Duration
	// Policy is used when the journal holds none.
	Policy *QuarantinePolicy
	Log    *slog.Logger
	// Lock, when set, serializes one sandbox's quarantine steps among the
	// managers that share the journal (a cluster's replicas); within one
	// manager they are serialized anyway. It returns its unlock.
	Lock func(ctx context.Context, sandboxID string) (unlock func(), err error)
}

// lockWait bounds the wait for another replica's step on a sandbox.
const lockWait = 2 * time.Minute

// Validate returns every problem of the config.
func (c *Config) Validate() error {
	var errs []error
	if c.Host == nil {
		errs = append(errs, errors.New("typhon: no Host"))
	}
	if c.Blobs == nil {
		errs = append(errs, errors.New("typhon: no Blobs"))
	}
	if c.Journal == nil {
		errs = append(errs, errors.New("typhon: no Journal"))
	}
	if c.Clock == nil {
		errs = append(errs, errors.New("typhon: no Clock"))
	}
	if c.Interval < 0 {
		errs = append(errs, errors.New("typhon: negative Interval"))
	}
	return errors.Join(errs...)
}

// Manager is the QuarantineManager of one node.
type Manager struct {
	cfg Config
	log *slog.Logger

	mu       sync.Mutex
	policy   *QuarantinePolicy
	triggers []*Trigger
	history  map[string]*History
	actors   map[string][]string
	// held maps a sandbox to its contained record's id.
	held map[string]string
	// opLocks serialize the steps of one sandbox's quarantine.
	opLocks map[string]*sync.Mutex
}

var _ QuarantineManager = (*Manager)(nil)

// New returns a manager with the journal's policy (or cfg.Policy) and its
// held sandboxes, whose containment it puts back in place.
func New(ctx context.Context, cfg Config) (*Manager, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.CostLimit == 0 {
		cfg.CostLimit = DefaultCostLimit
	}
	if cfg.Interval == 0 {
		cfg.Interval = 5 * time.Second
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	m := &Manager{cfg: cfg, log: cfg.Log.With("component", "typhon"), history: map[string]*History{},
		actors: map[string][]string{}, held: map[string]string{}, opLocks: map[string]*sync.Mutex{}}
	p, err := cfg.Journal.Policy(ctx)
	if err != nil {
		return nil, err
	}
	if p == nil {
		p = cfg.Policy
	}
	if p == nil {
		p = &QuarantinePolicy{Isolation: QuarantineIsolation{NetworkMode: NetworkModeNone, RecordNetwork: true}}
	}
	if err := m.install(p); err != nil {
		return nil, fmt.Errorf("typhon: stored policy: %w", err)
	}
	recs, err := cfg.Journal.Records(ctx)
	if err != nil {
		return nil, err
	}
	for _, r := range recs {
		if r.Status.Contained() {
			m.held[r.SandboxID] = r.ID
			_, _ = m.applyNetwork(ctx, r.SandboxID, r.NetworkMode, p.Isolation.AllowedEgress, true)
			m.setStrict(ctx, r, true)
		}
	}
	return m, nil
}

func (m *Manager) install(p *QuarantinePolicy) error {
	if err := validatePolicy(p); err != nil {
		return err
	}
	ts, err := compileTriggers(p, m.cfg.CostLimit)
	if err != nil {
		return err
	}
	m.mu.Lock()
	m.policy, m.triggers = clonePolicy(p), ts
	m.mu.Unlock()
	return nil
}

// Policy returns the policy in force.
func (m *Manager) Policy() *QuarantinePolicy {
	m.mu.Lock()
	defer m.mu.Unlock()
	return clonePolicy(m.policy)
}

// SetPolicy implements QuarantineManager: an invalid policy (a condition
// that does not compile, with its line and column) is refused whole and
// changes nothing.
func (m *Manager) SetPolicy(ctx context.Context, p *QuarantinePolicy) error {
	if p == nil {
		return tartarus.Errorf(tartarus.ErrInvalid, "no policy")
	}
	p = clonePolicy(p)
	if err := m.syncPolicy(ctx); err != nil {
		return err
	}
	old := m.Policy()
	p.Version = old.Version + 1
	p.UpdatedAt = m.cfg.Clock.Now().UTC()
	if err := validatePolicy(p); err != nil {
		m.audit(ctx, AuditEvent{Action: "set_policy", Actor: p.UpdatedBy, Err: err})
		return err
	}
	if _, ok := m.cfg.Host.(SeccompHardener); !ok && p.Isolation.SeccompProfile != "" {
		// Accepted, it would not be applied (a cluster's replicas cannot
		// yet carry it to their agents).
		err := tartarus.Errorf(tartarus.ErrInvalid, "isolation.seccomp_profile %q: not supported on this server (a single node applies it; a cluster does not yet)", p.Isolation.SeccompProfile)
		m.audit(ctx, AuditEvent{Action: "set_policy", Actor: p.UpdatedBy, Err: err})
		return err
	}
	if _, err := compileTriggers(p, m.cfg.CostLimit); err != nil {
		m.audit(ctx, AuditEvent{Action: "set_policy", Actor: p.UpdatedBy, Err: err})
		return err
	}
	if err := m.cfg.Journal.PutPolicy(ctx, p); err != nil {
		return err
	}
	if err := m.install(p); err != nil {
		return err
	}
	m.audit(ctx, AuditEvent{Action: "set_policy", Actor: p.UpdatedBy,
		Detail: fmt.Sprintf("version %d, %d triggers, network %s", p.Version, len(p.AutoTriggers), p.Isolation.NetworkMode)})
	return nil
}

func (m *Manager) audit(ctx context.Context, e AuditEvent) {
	if e.Err != nil {
		m.log.Warn("quarantine step failed", "action", e.Action, "sandbox", e.SandboxID, "err", e.Err)
	} else {
		m.log.Info("quarantine step", "action", e.Action, "sandbox", e.SandboxID, "actor", e.Actor, "detail", e.Detail)
	}
	if m.cfg.Audit != nil {
		m.cfg.Audit(context.WithoutCancel(ctx), e)
	}
}

func (m *Manager) opLock(id string) func() {
	m.mu.Lock()
	l, ok := m.opLocks[id]
	if !ok {
		l = &sync.Mutex{}
		m.opLocks[id] = l
	}
	m.mu.Unlock()
	l.Lock()
	if m.cfg.Lock == nil {
		return l.Unlock
	}
	ctx, cancel := context.WithTimeout(context.Background(), lockWait)
	defer cancel()
	shared, err := m.cfg.Lock(ctx, id)
	if err != nil {
		// Go on under this manager's lock alone: a step the other
		// replica is taking meanwhile is the rare race this lock closes,
		// and holding a sandbox matters more.
		m.log.Warn("quarantine lock shared with other replicas", "sandbox", id, "err", err)
		return l.Unlock
	}
	return func() { shared(); l.Unlock() }
}

// Contained reports whether the sandbox is held now.
func (m *Manager) Contained(id string) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	_, ok := m.held[id]
	return ok
}

// Admit is the containment check of exec, file and port calls: a held
// sandbox answers only examiners. Otherwise it notes who acted in the
// sandbox, so that none of them may approve a later release.
func (m *Manager) Admit(id, who string, examiner bool) error {
	m.mu.Lock()
	if _, ok := m.held[id]; ok {
		m.mu.Unlock()
		if examiner {
			return nil
		}
		return tartarus.Errorf(tartarus.ErrPermissionDenied, "sandbox %s is quarantined: only examiners may reach it", id)
	}
	fresh := false
	if who != "" {
		fresh = !slices.Contains(m.actors[id], who)
		a := slices.DeleteFunc(m.actors[id], func(s string) bool { return s == who })
		a = append(a, who)
		if len(a) > maxActors {
			a = a[len(a)-maxActors:]
		}
		m.actors[id] = a
	}
	m.mu.Unlock()
	if aj, ok := m.cfg.Journal.(ActorJournal); ok && fresh {
		// Once per sandbox and actor on this manager: the other managers
		// over the journal learn of them at a quarantine.
		ctx, cancel := context.WithTimeout(context.Background(), actorWriteLimit)
		defer cancel()
		if err := aj.AddActor(ctx, id, who, m.cfg.Clock.Now().UTC()); err != nil {
			m.log.Warn("note who acted in a sandbox", "sandbox", id, "err", err)
		}
	}
	return nil
}

// actorWriteLimit bounds Admit's write of a new actor, on the call's path.
const actorWriteLimit = 2 * time.Second

// involved returns who acted in the sandbox, as this manager and the
// journal know them, the latest last, at most maxActors.
func (m *Manager) involved(ctx context.Context, id string) []string {
	var out []string
	if aj, ok := m.cfg.Journal.(ActorJournal); ok {
		a, err := aj.Actors(ctx, id, maxActors)
		if err != nil {
			m.log.Warn("who acted in a sandbox", "sandbox", id, "err", err)
		}
		out = a
	}
	m.mu.Lock()
	for _, a := range m.actors[id] {
		out = append(slices.DeleteFunc(out, func(s string) bool { return s == a }), a)
	}
	m.mu.Unlock()
	if len(out) > maxActors {
		out = out[len(out)-maxActors:]
	}
	return out
}

// forgetActors drops who acted in the sandbox, here and in the journal.
func (m *Manager) forgetActors(ctx context.Context, id string) {
	m.mu.Lock()
	delete(m.actors, id)
	m.mu.Unlock()
	if aj, ok := m.cfg.Journal.(ActorJournal); ok {
		if err := aj.ForgetActors(ctx, m.cfg.Clock.Now().Add(time.Second), func(s string) bool { return s != id }); err != nil {
			m.log.Warn("forget who acted in a sandbox", "sandbox", id, "err", err)
		}
	}
}

// checkRequest bounds what a caller hands in.
func checkRequest(req *QuarantineRequest) error {
	var errs []error
	bad := func(format string, args ...any) {
		errs = append(errs, tartarus.Errorf(tartarus.ErrInvalid, format, args...))
	}
	if !tartarus.ValidName(req.SandboxID) {
		bad("sandbox_id %.80q is not a sandbox id", req.SandboxID)
	}
	if req.Reason == "" {
		req.Reason = ReasonManualFlag
	}
	if !req.Reason.Valid() {
		bad("reason %.80q: want one of %v", string(req.Reason), tartarus.QuarantineReasons)
	}
	if len(req.Evidence) > MaxRequestEvidence {
		bad("evidence: at most %d pieces", MaxRequestEvidence)
	}
	for i, e := range req.Evidence {
		if len(e.Data) > MaxEvidenceBytes {
			bad("evidence[%d]: data over %d bytes", i, MaxEvidenceBytes)
		}
		if len(e.Description) > MaxDescriptionLen {
			bad("evidence[%d]: description over %d bytes", i, MaxDescriptionLen)
		}
		switch e.Type {
		case "", tartarus.EvidenceNote, tartarus.EvidenceNetworkLog, tartarus.EvidenceSyscallTrace, tartarus.EvidenceFileAccess,
			tartarus.EvidenceResourceSpike, tartarus.EvidenceScreenshot, tartarus.EvidenceProcessTree, tartarus.EvidenceExecHistory:
		default:
			bad("evidence[%d]: type %.64q is not an evidence type", i, string(e.Type))
		}
	}
	if len(req.RequestedBy) > 256 || len(req.Trigger) > MaxConditionLen {
		bad("requested_by or trigger too long")
	}
	return errors.Join(errs...)
}

// Quarantine implements QuarantineManager. Containment comes first (state,
// then network), evidence after: the sandbox is held before anything slow
// runs. Quarantining a held sandbox returns its record.
func (m *Manager) Quarantine(ctx context.Context, req *QuarantineRequest) (*QuarantineRecord, error) {
	if req == nil {
		return nil, tartarus.Errorf(tartarus.ErrInvalid, "no request")
	}
	r := *req
	if err := checkRequest(&r); err != nil {
		return nil, err
	}
	ctx = context.WithoutCancel(ctx) // a held sandbox must not be left half-contained
	unlock := m.opLock(r.SandboxID)
	defer unlock()
	last, lerr := m.current(ctx, r.SandboxID)
	if lerr == nil && last.Status.Contained() {
		return last, nil
	}
	sb, err := m.cfg.Host.Get(ctx, r.SandboxID)
	if err != nil {
		return nil, err
	}
	if sb.State != tartarus.StateRunning && sb.State != tartarus.StatePaused && sb.State != tartarus.StateQuarantined {
		return nil, tartarus.Errorf(tartarus.ErrFailedPrecondition, "sandbox %s is %s: only a running or paused sandbox can be quarantined", sb.ID, sb.State)
	}
	if err := m.syncPolicy(ctx); err != nil {
		return nil, err
	}
	pol := m.Policy()
	now := m.cfg.Clock.Now().UTC()
	bound := pol.MaxQuarantineDuration
	if bound <= 0 {
		bound = tartarus.DefaultMaxQuarantine
	}
	by := r.RequestedBy
	if r.AutoQuarantine {
		by = AutoActor
	}
	mode := pol.Isolation.NetworkMode
	if mode == "" {
		mode = NetworkModeNone
	}
	rec := &QuarantineRecord{ID: tartarus.NewID("qr"), SandboxID: sb.ID, Tenant: sb.Tenant, Reason: r.Reason,
		QuarantinedAt: now, QuarantinedBy: by, Trigger: clean(r.Trigger, MaxConditionLen), Node: sb.Node,
		Status: StatusActive, ExpiresAt: now.Add(bound), NetworkMode: mode, Evidence: []Evidence{}}
	rec.Involved = m.involved(ctx, sb.ID)
	if by != "" && by != AutoActor && !slices.Contains(rec.Involved, by) {
		rec.Involved = append(rec.Involved, by)
	}
	if _, ok := m.cfg.Host.(Mover); len(pol.QuarantineNodes) > 0 && !ok {
		rec.Notes = append(rec.Notes, clean(fmt.Sprintf("policy names quarantine nodes %v; a single node cannot move the sandbox: it is held where it runs", pol.QuarantineNodes), MaxDescriptionLen))
	}
	if err := m.cfg.Journal.PutRecord(ctx, rec); err != nil {
		return nil, err
	}
	m.mu.Lock()
	m.held[sb.ID] = rec.ID
	m.mu.Unlock()
	m.audit(ctx, AuditEvent{Action: "quarantine", SandboxID: sb.ID, Tenant: sb.Tenant, Actor: by,
		Detail: fmt.Sprintf("reason %s%s", r.Reason, ifNonEmpty(", trigger ", rec.Trigger))})

	// Containment.
	if err := m.cfg.Host.SetQuarantined(ctx, sb.ID, true); err != nil {
		rec.Notes = append(rec.Notes, clean("state: "+err.Error(), MaxDescriptionLen))
	}
	prev, note := m.applyNetwork(ctx, sb.ID, mode, pol.Isolation.AllowedEgress, pol.Isolation.RecordNetwork)
	if note != "" {
		rec.Notes = append(rec.Notes, clean(note, MaxDescriptionLen))
	}
	rec.OwnerNetwork = prev
	if lerr == nil && last.Status == StatusReleased && last.ConditionsLifted.IsZero() {
		// Held again under a release's conditions: the owner's own network
		// is the one the first quarantine kept.
		rec.OwnerNetwork = last.OwnerNetwork
	}
	rec.ContainedAt = m.cfg.Clock.Now().UTC()
	if err := m.cfg.Journal.PutRecord(ctx, rec); err != nil {
		return nil, err
	}
	m.audit(ctx, AuditEvent{Action: "contain", SandboxID: sb.ID, Tenant: sb.Tenant, Actor: by,
		Detail: fmt.Sprintf("network %s, held until %s", mode, rec.ExpiresAt.Format(time.RFC3339))})

	// Evidence: what the caller gave, then what the node sees.
	var evs []Evidence
	for _, e := range r.Evidence {
		e.Source = tartarus.SourceUser
		if e.Type == "" {
			e.Type = tartarus.EvidenceNote
		}
		e.Description = clean(e.Description, MaxDescriptionLen)
		if e.Timestamp.IsZero() {
			e.Timestamp = now
		}
		evs = append(evs, e)
	}
	evs = append(evs, m.cfg.Host.Collect(ctx, sb, &pol.Isolation, bound+24*time.Hour)...)
	for _, e := range evs {
		stored, err := m.storeEvidence(ctx, rec.ID, e)
		if err != nil {
			rec.Notes = append(rec.Notes, clean(fmt.Sprintf("evidence %s: %v", e.Type, err), MaxDescriptionLen))
			continue
		}
		rec.Evidence = append(rec.Evidence, stored)
	}
	rec.CollectedAt = m.cfg.Clock.Now().UTC()
	if err := m.cfg.Journal.PutRecord(ctx, rec); err != nil {
		return nil, err
	}
	m.audit(ctx, AuditEvent{Action: "evidence", SandboxID: sb.ID, Tenant: sb.Tenant, Actor: by,
		Detail: fmt.Sprintf("%d pieces", len(rec.Evidence))})
	if pol.Isolation.SeccompProfile == SeccompStrict {
		// After the evidence: the console and memory as they were.
		m.harden(ctx, rec, by)
		if err := m.cfg.Journal.PutRecord(ctx, rec); err != nil {
			return nil, err
		}
	}
	if mv, ok := m.cfg.Host.(Mover); ok && len(pol.QuarantineNodes) > 0 {
		// After the evidence: the console and the disk as they were stay
		// on the node it ran on.
		m.move(ctx, mv, rec, pol.QuarantineNodes, by)
		if err := m.cfg.Journal.PutRecord(ctx, rec); err != nil {
			return nil, err
		}
	}
	return cloneRecord(rec), nil
}

// move takes a held sandbox to a quarantine node and contains it again
// there; a move that fails leaves it held where it is, with a note.
func (m *Manager) move(ctx context.Context, mv Mover, rec *QuarantineRecord, labels []string, by string) {
	from := rec.Node
	err := m.cfg.Host.SetQuarantined(ctx, rec.SandboxID, false)
	node := from
	if err == nil {
		node, err = mv.MoveTo(ctx, rec.SandboxID, labels)
	}
	if cerr := m.recontain(ctx, rec); cerr != nil {
		err = errors.Join(err, cerr)
	}
	if node != "" {
		rec.Node = node
	}
	if err != nil {
		rec.Notes = append(rec.Notes, clean(fmt.Sprintf("move to a quarantine node (%v): %v; held on %s", labels, err, rec.Node), MaxDescriptionLen))
	} else if node != from {
		rec.Notes = append(rec.Notes, clean(fmt.Sprintf("moved from node %s to quarantine node %s", from, node), MaxDescriptionLen))
	}
	m.audit(ctx, AuditEvent{Action: "move", SandboxID: rec.SandboxID, Tenant: rec.Tenant, Actor: by,
		Detail: fmt.Sprintf("from %s to %s", from, rec.Node), Err: err})
}

func ifNonEmpty(prefix, s string) string {
	if s == "" {
		return ""
	}
	return prefix + s
}

// applyNetwork switches the sandbox's network, returning the spec before
// and a note when it could not.
func (m *Manager) applyNetwork(ctx context.Context, id string, mode NetworkMode, egress []string, record bool) (*tartarus.NetworkSpec, string) {
	if m.cfg.Network == nil {
		return nil, fmt.Sprintf("network: no network controller on this node; mode %q not applied", mode)
	}
	prev, err := m.cfg.Network.Contain(ctx, id, mode, egress, record)
	if err != nil {
		return nil, "network: " + err.Error()
	}
	return prev, ""
}

// storeEvidence puts one piece's bytes in the blob store.
func (m *Manager) storeEvidence(ctx context.Context, recID string, e Evidence) (Evidence, error) {
	e.ID = tartarus.NewID("ev")
	// A description may quote the guest (an error with its output): it
	// reaches the API only cleaned. The bytes themselves are kept as they
	// are, for the examiner to download.
	e.Description = clean(e.Description, MaxDescriptionLen)
	if e.Timestamp.IsZero() {
		e.Timestamp = m.cfg.Clock.Now().UTC()
	}
	if e.Data == nil && e.Ref != "" {
		return e, nil // kept elsewhere (a snapshot), already checksummed there
	}
	e.Key = "quarantine/" + recID + "/" + e.ID
	size, sum, err := m.cfg.Blobs.Put(ctx, e.Key, bytes.NewReader(e.Data))
	if err != nil {
		return Evidence{}, err
	}
	e.Size, e.Checksum, e.Data = size, sum, nil
	return e, nil
}

// current returns the sandbox's latest record.
func (m *Manager) current(ctx context.Context, sandboxID string) (*QuarantineRecord, error) {
	recs, err := m.cfg.Journal.Records(ctx)
	if err != nil {
		return nil, err
	}
	for i := len(recs) - 1; i >= 0; i-- {
		if recs[i].SandboxID == sandboxID || recs[i].ID == sandboxID {
			return recs[i], nil
		}
	}
	return nil, tartarus.Errorf(tartarus.ErrNotFound, "no quarantine of %s", sandboxID)
}

// Get returns the latest quarantine record of a sandbox (or the record
// with that id).
func (m *Manager) Get(ctx context.Context, id string) (*QuarantineRecord, error) {
	return m.current(ctx, id)
}

// ListQuarantined implements QuarantineManager. A nil filter lists the
// held ones (active and examining).
func (m *Manager) ListQuarantined(ctx context.Context, f *QuarantineFilter) ([]*QuarantineRecord, error) {
	if f == nil {
		f = &QuarantineFilter{Statuses: []QuarantineStatus{StatusActive, StatusExamining}}
	}
	recs, err := m.cfg.Journal.Records(ctx)
	if err != nil {
		return nil, err
	}
	out := []*QuarantineRecord{}
	for _, r := range recs {
		switch {
		case f.Tenant != "" && r.Tenant != f.Tenant:
		case f.SandboxID != "" && r.SandboxID != f.SandboxID:
		case f.Reason != "" && r.Reason != f.Reason:
		case len(f.Statuses) > 0 && !slices.Contains(f.Statuses, r.Status):
		default:
			out = append(out, r)
		}
	}
	return out, nil
}

// held returns the sandbox's record, which must be contained.
func (m *Manager) heldRecord(ctx context.Context, id string) (*QuarantineRecord, error) {
	rec, err := m.current(ctx, id)
	if err != nil {
		return nil, err
	}
	if !rec.Status.Contained() {
		return nil, tartarus.Errorf(tartarus.ErrFailedPrecondition, "sandbox %s is not quarantined (its last quarantine is %s)", rec.SandboxID, rec.Status)
	}
	return rec, nil
}

// Examine implements QuarantineManager; the examiner is unnamed. See
// ExamineAs.
func (m *Manager) Examine(ctx context.Context, sandboxID string) (*ExaminationReport, error) {
	return m.ExamineAs(ctx, sandboxID, "")
}

// ExamineAs examines a held sandbox by the rules in examine.go: the
// record moves to examining, the report is stored and returned.
func (m *Manager) ExamineAs(ctx context.Context, sandboxID, examiner string) (*ExaminationReport, error) {
	ctx = context.WithoutCancel(ctx)
	unlock := m.opLock(sandboxID)
	defer unlock()
	rec, err := m.heldRecord(ctx, sandboxID)
	if err != nil {
		return nil, err
	}
	data := map[string][]byte{}
	var readErrs []tartarus.Finding
	for _, ev := range rec.Evidence {
		if ev.Key == "" {
			continue
		}
		b, err := m.readEvidence(ctx, ev.Key, examineReadLimit)
		if err != nil {
			readErrs = append(readErrs, tartarus.Finding{Severity: tartarus.SeverityHigh, Category: "evidence",
				Description: clean(fmt.Sprintf("evidence %s (%s) could not be read: %v", ev.ID, ev.Type, err), 512),
				EvidenceID:  ev.ID, Source: tartarus.SourceHost})
			continue
		}
		data[ev.ID] = b
	}
	fs := append(examineEvidence(rec, data), readErrs...)
	if fs == nil {
		fs = []tartarus.Finding{}
	}
	risk := RiskScore(fs)
	rep := &ExaminationReport{ID: tartarus.NewID("rep"), SandboxID: rec.SandboxID, ExaminedAt: m.cfg.Clock.Now().UTC(),
		ExaminedBy: examiner, Findings: fs, RiskScore: risk, Recommendation: Recommend(risk, fs)}
	if err := m.cfg.Journal.PutReport(ctx, rep); err != nil {
		return nil, err
	}
	rec.Status = StatusExamining
	rec.ExaminationCount++
	if err := m.cfg.Journal.PutRecord(ctx, rec); err != nil {
		return nil, err
	}
	m.audit(ctx, AuditEvent{Action: "examine", SandboxID: rec.SandboxID, Tenant: rec.Tenant, Actor: examiner,
		Detail: fmt.Sprintf("risk %.3f, %d findings, recommends %s", risk, len(fs), rep.Recommendation)})
	return rep, nil
}

// Reports returns a sandbox's examination reports, oldest first.
func (m *Manager) Reports(ctx context.Context, sandboxID string) ([]*ExaminationReport, error) {
	reps, err := m.cfg.Journal.Reports(ctx, sandboxID)
	if reps == nil && err == nil {
		reps = []*ExaminationReport{}
	}
	return reps, err
}

// readEvidence reads at most limit bytes of a blob, checked against its
// checksum by the store as it streams (a blob longer than limit is read
// only in part, unchecked, which the rules may use but a download may not).
func (m *Manager) readEvidence(ctx context.Context, key string, limit int64) ([]byte, error) {
	rc, _, err := m.cfg.Blobs.Get(ctx, key)
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	return io.ReadAll(io.LimitReader(rc, limit))
}

// Evidence opens one piece of evidence of a sandbox's latest quarantine;
// the reader fails at its end if the bytes do not match their checksum.
func (m *Manager) Evidence(ctx context.Context, sandboxID, evidenceID string) (io.ReadCloser, *Evidence, error) {
	rec, err := m.current(ctx, sandboxID)
	if err != nil {
		return nil, nil, err
	}
	for _, ev := range rec.Evidence {
		if ev.ID != evidenceID {
			continue
		}
		if ev.Key == "" {
			return nil, nil, tartarus.Errorf(tartarus.ErrFailedPrecondition, "evidence %s is kept as %s, not as a download", ev.ID, ev.Ref)
		}
		rc, _, err := m.cfg.Blobs.Get(ctx, ev.Key)
		if err != nil {
			return nil, nil, err
		}
		e := ev
		return rc, &e, nil
	}
	return nil, nil, tartarus.Errorf(tartarus.ErrNotFound, "evidence %.80q of %s", evidenceID, sandboxID)
}

// conditionModes are the release conditions Release understands: the
// network mode the sandbox keeps until the approval expires.
var conditionModes = map[string]NetworkMode{
	"network none": NetworkModeNone, "network restricted": NetworkModeRestricted, "network monitored": NetworkModeMonitored,
}

// parseConditions checks a release's conditions and returns the network
// mode they ask for ("" for none).
func parseConditions(cs []string) (NetworkMode, error) {
	if len(cs) > MaxConditions {
		return "", tartarus.Errorf(tartarus.ErrInvalid, "conditions: at most %d", MaxConditions)
	}
	var mode NetworkMode
	for _, c := range cs {
		k := strings.ToLower(strings.Join(strings.Fields(c), " "))
		mm, ok := conditionModes[k]
		if !ok {
			return "", tartarus.Errorf(tartarus.ErrInvalid, "condition %.80q: want one of \"network none\", \"network restricted\", \"network monitored\"", c)
		}
		if mode != "" && mode != mm {
			return "", tartarus.Errorf(tartarus.ErrInvalid, "conditions: two network modes")
		}
		mode = mm
	}
	return mode, nil
}

// Release implements QuarantineManager under the two-person rule: the
// approver must be named and must not be whoever quarantined the sandbox or
// acted in it before its trigger tripped. (That the approver holds the
// approver role is the API's check, through Cerberus.) Conditions apply
// until the approval expires (DefaultConditionsFor when it names no expiry).
func (m *Manager) Release(ctx context.Context, sandboxID string, a *ReleaseApproval) error {
	if a == nil || strings.TrimSpace(a.ApprovedBy) == "" {
		return tartarus.Errorf(tartarus.ErrInvalid, "release needs an approval naming its approver")
	}
	if len(a.Reason) > MaxDescriptionLen || len(a.ApprovedBy) > 256 {
		return tartarus.Errorf(tartarus.ErrInvalid, "approval: reason at most %d bytes, approver at most 256", MaxDescriptionLen)
	}
	mode, err := parseConditions(a.Conditions)
	if err != nil {
		return err
	}
	ctx = context.WithoutCancel(ctx)
	unlock := m.opLock(sandboxID)
	defer unlock()
	rec, err := m.heldRecord(ctx, sandboxID)
	if err != nil {
		return err
	}
	now := m.cfg.Clock.Now().UTC()
	if a.ApprovedBy == rec.QuarantinedBy || slices.Contains(rec.Involved, a.ApprovedBy) {
		err := tartarus.Errorf(tartarus.ErrPermissionDenied, "%s quarantined this sandbox or acted in it: a second person must approve its release", a.ApprovedBy)
		m.audit(ctx, AuditEvent{Action: "release", SandboxID: rec.SandboxID, Tenant: rec.Tenant, Actor: a.ApprovedBy, Err: err})
		return err
	}
	if a.ExpiresAt != nil && !a.ExpiresAt.After(now) {
		return tartarus.Errorf(tartarus.ErrInvalid, "approval expires_at %s is not in the future", a.ExpiresAt.Format(time.RFC3339))
	}
	ap := *a
	ap.Reason = clean(a.Reason, MaxDescriptionLen)
	ap.Conditions = slices.Clone(a.Conditions)
	ap.ApprovedAt = now
	if ap.ExpiresAt == nil && ap.ConditionsFor > 0 {
		t := now.Add(ap.ConditionsFor)
		ap.ExpiresAt = &t
	}
	if len(ap.Conditions) > 0 && ap.ExpiresAt == nil {
		t := now.Add(DefaultConditionsFor)
		ap.ExpiresAt = &t
	}
	pol := m.Policy()
	if mode != "" {
		if _, note := m.applyNetwork(ctx, rec.SandboxID, mode, pol.Isolation.AllowedEgress, true); note != "" {
			return tartarus.Errorf(tartarus.ErrFailedPrecondition, "condition %s cannot be enforced: %s", mode, note)
		}
	} else if m.cfg.Network != nil {
		if err := m.cfg.Network.Restore(ctx, rec.SandboxID, rec.OwnerNetwork); err != nil {
			return fmt.Errorf("restore network of %s: %w", rec.SandboxID, err)
		}
	}
	if err := m.cfg.Host.SetQuarantined(ctx, rec.SandboxID, false); err != nil {
		return fmt.Errorf("release %s: %w", rec.SandboxID, err)
	}
	rec.Status, rec.Approval, rec.EndedAt = StatusReleased, &ap, now
	if mode == "" {
		rec.ConditionsLifted = now
	}
	if err := m.cfg.Journal.PutRecord(ctx, rec); err != nil {
		return err
	}
	m.mu.Lock()
	delete(m.held, rec.SandboxID)
	m.mu.Unlock()
	m.setStrict(ctx, rec, false)
	m.forgetActors(ctx, rec.SandboxID)
	m.audit(ctx, AuditEvent{Action: "release", SandboxID: rec.SandboxID, Tenant: rec.Tenant, Actor: a.ApprovedBy,
		Detail: fmt.Sprintf("conditions %q until %v", ap.Conditions, ap.ExpiresAt)})
	return nil
}

// Hibernate puts a held sandbox to sleep (to free the node while it awaits
// examination or approval): the hold stays, so only examiners may wake or
// reach it, and Wake (or the next tick, if something else woke it)
// contains it again.
func (m *Manager) Hibernate(ctx context.Context, sandboxID, by string) (*QuarantineRecord, error) {
	sl, ok := m.cfg.Host.(Sleeper)
	if !ok {
		return nil, tartarus.Errorf(tartarus.ErrNotImplemented, "this node cannot hibernate a quarantined sandbox")
	}
	ctx = context.WithoutCancel(ctx)
	unlock := m.opLock(sandboxID)
	defer unlock()
	rec, err := m.heldRecord(ctx, sandboxID)
	if err != nil {
		return nil, err
	}
	if err := m.sleepHeld(ctx, sl, rec, by); err != nil {
		return nil, err
	}
	return cloneRecord(rec), nil
}

// sleepHeld hibernates a held sandbox (the caller holds its op lock).
func (m *Manager) sleepHeld(ctx context.Context, sl Sleeper, rec *QuarantineRecord, by string) error {
	// Hibernation starts from running; the hold is the manager's, not
	// the state's, so nobody but an examiner reaches it meanwhile.
	if err := m.cfg.Host.SetQuarantined(ctx, rec.SandboxID, false); err != nil {
		return fmt.Errorf("hibernate %s: %w", rec.SandboxID, err)
	}
	if err := sl.Hibernate(ctx, rec.SandboxID); err != nil {
		if rerr := m.cfg.Host.SetQuarantined(ctx, rec.SandboxID, true); rerr != nil {
			err = errors.Join(err, fmt.Errorf("contain again: %w", rerr))
		}
		m.audit(ctx, AuditEvent{Action: "hibernate", SandboxID: rec.SandboxID, Tenant: rec.Tenant, Actor: by, Err: err})
		return err
	}
	m.audit(ctx, AuditEvent{Action: "hibernate", SandboxID: rec.SandboxID, Tenant: rec.Tenant, Actor: by, Detail: "held while asleep"})
	return nil
}

// Wake wakes a held, hibernated sandbox and contains it again (state and
// network) before returning.
func (m *Manager) Wake(ctx context.Context, sandboxID, by string) (*QuarantineRecord, error) {
	sl, ok := m.cfg.Host.(Sleeper)
	if !ok {
		return nil, tartarus.Errorf(tartarus.ErrNotImplemented, "this node cannot wake a quarantined sandbox")
	}
	ctx = context.WithoutCancel(ctx)
	unlock := m.opLock(sandboxID)
	defer unlock()
	rec, err := m.heldRecord(ctx, sandboxID)
	if err != nil {
		return nil, err
	}
	if err := m.wakeHeld(ctx, sl, rec, by); err != nil {
		return nil, err
	}
	return cloneRecord(rec), nil
}

// wakeHeld wakes a held sandbox and contains it again (the caller holds
// its op lock).
func (m *Manager) wakeHeld(ctx context.Context, sl Sleeper, rec *QuarantineRecord, by string) error {
	if err := sl.Wake(ctx, rec.SandboxID); err != nil {
		m.audit(ctx, AuditEvent{Action: "wake", SandboxID: rec.SandboxID, Tenant: rec.Tenant, Actor: by, Err: err})
		return err
	}
	if err := m.recontain(ctx, rec); err != nil {
		return err
	}
	detail := "contained again"
	if rec.SeccompProfile != "" {
		detail += ", seccomp profile " + rec.SeccompProfile
	}
	m.audit(ctx, AuditEvent{Action: "wake", SandboxID: rec.SandboxID, Tenant: rec.Tenant, Actor: by, Detail: detail})
	return nil
}

// harden puts a held sandbox under the strict seccomp filter. A filter
// is installed by the process itself or inherited across its execve, so a
// running QEMU cannot get one: the sandbox is hibernated and woken, and
// the host restores it (and every later wake while it is held) under the
// filter. What cannot be done is noted on the record; the sandbox stays
// held either way.
func (m *Manager) harden(ctx context.Context, rec *QuarantineRecord, by string) {
	note := func(format string, args ...any) {
		rec.Notes = append(rec.Notes, clean("seccomp_profile strict: "+fmt.Sprintf(format, args...), MaxDescriptionLen))
	}
	h, ok := m.cfg.Host.(SeccompHardener)
	sl, ok2 := m.cfg.Host.(Sleeper)
	if !ok || !ok2 {
		note("this node cannot restore a sandbox under another filter; not applied")
		return
	}
	if err := h.SetStrictSeccomp(ctx, rec.SandboxID, true); err != nil {
		note("not applied: %v", err)
		return
	}
	rec.SeccompProfile = SeccompStrict
	if err := m.cfg.Journal.PutRecord(ctx, rec); err != nil {
		note("not recorded: %v", err)
	}
	if err := m.sleepHeld(ctx, sl, rec, by); err != nil {
		note("hibernate: %v; the filter applies from its next wake", err)
		return
	}
	if err := m.wakeHeld(ctx, sl, rec, by); err != nil {
		note("wake: %v; it sleeps, held, and wakes under the filter", err)
	}
}

// setStrict tells a SeccompHardener host whether the record's sandbox
// restores under the strict filter: on for a held one recorded so, off
// when its hold ends. A running QEMU keeps the filter it started with.
func (m *Manager) setStrict(ctx context.Context, rec *QuarantineRecord, on bool) {
	h, ok := m.cfg.Host.(SeccompHardener)
	if !ok || rec.SeccompProfile != SeccompStrict {
		return
	}
	if err := h.SetStrictSeccomp(ctx, rec.SandboxID, on); err != nil {
		m.log.Warn("strict seccomp filter", "sandbox", rec.SandboxID, "on", on, "err", err)
	}
}

// recontain puts a held sandbox's containment back: its quarantined state
// and its network mode (the caller holds its op lock).
func (m *Manager) recontain(ctx context.Context, rec *QuarantineRecord) error {
	if err := m.cfg.Host.SetQuarantined(ctx, rec.SandboxID, true); err != nil {
		return fmt.Errorf("contain %s again: %w", rec.SandboxID, err)
	}
	pol := m.Policy()
	if _, note := m.applyNetwork(ctx, rec.SandboxID, rec.NetworkMode, pol.Isolation.AllowedEgress, true); note != "" && m.cfg.Network != nil {
		return fmt.Errorf("contain %s again: %s", rec.SandboxID, note)
	}
	return nil
}

// Destroy ends a held sandbox through Thanatos (reason policy_violation);
// its evidence is kept.
func (m *Manager) Destroy(ctx context.Context, sandboxID, by string) (*QuarantineRecord, error) {
	ctx = context.WithoutCancel(ctx)
	unlock := m.opLock(sandboxID)
	defer unlock()
	rec, err := m.heldRecord(ctx, sandboxID)
	if err != nil {
		return nil, err
	}
	return m.destroy(ctx, rec, by, "destroy")
}

func (m *Manager) destroy(ctx context.Context, rec *QuarantineRecord, by, action string) (*QuarantineRecord, error) {
	if err := m.cfg.Host.Destroy(ctx, rec.SandboxID); err != nil && !errors.Is(err, tartarus.ErrNotFound) {
		m.audit(ctx, AuditEvent{Action: action, SandboxID: rec.SandboxID, Tenant: rec.Tenant, Actor: by, Err: err})
		return nil, fmt.Errorf("destroy %s: %w", rec.SandboxID, err)
	}
	rec.Status, rec.EndedAt = StatusDestroyed, m.cfg.Clock.Now().UTC()
	if err := m.cfg.Journal.PutRecord(ctx, rec); err != nil {
		return nil, err
	}
	m.mu.Lock()
	delete(m.held, rec.SandboxID)
	delete(m.history, rec.SandboxID)
	m.mu.Unlock()
	m.setStrict(ctx, rec, false)
	m.forgetActors(ctx, rec.SandboxID)
	m.audit(ctx, AuditEvent{Action: action, SandboxID: rec.SandboxID, Tenant: rec.Tenant, Actor: by,
		Detail: "terminated with reason policy_violation; evidence kept"})
	return cloneRecord(rec), nil
}

// Refresh reloads from the journal which sandboxes are held, and the
// policy. Replicas of a cluster share one journal: another replica may
// have quarantined or released a sandbox or set the policy since this one
// last looked, and Admit, the tick and containment go by what this one
// holds.
func (m *Manager) Refresh(ctx context.Context) error {
	if err := m.syncPolicy(ctx); err != nil {
		return err
	}
	var recs []*QuarantineRecord
	var err error
	if hj, ok := m.cfg.Journal.(heldJournal); ok {
		recs, err = hj.Held(ctx)
	} else {
		recs, err = m.cfg.Journal.Records(ctx)
	}
	if err != nil {
		return err
	}
	held := map[string]string{}
	for _, r := range recs { // oldest first: a sandbox's latest record decides
		if r.Status.Contained() {
			held[r.SandboxID] = r.ID
		} else {
			delete(held, r.SandboxID)
		}
	}
	m.mu.Lock()
	m.held = held
	m.mu.Unlock()
	return nil
}

// syncPolicy installs the journal's policy when it is not the one in
// force: another manager over the same journal (a replica) may have set
// it.
func (m *Manager) syncPolicy(ctx context.Context) error {
	p, err := m.cfg.Journal.Policy(ctx)
	if err != nil {
		return err
	}
	if cur := m.Policy(); p != nil && (p.Version != cur.Version || !p.UpdatedAt.Equal(cur.UpdatedAt)) {
		if err := m.install(p); err != nil {
			return fmt.Errorf("typhon: stored policy: %w", err)
		}
	}
	return nil
}

// heldJournal is a Journal that lists the held records alone (SQLJournal),
// which Refresh needs every second on a cluster.
type heldJournal interface {
	Held(ctx context.Context) ([]*QuarantineRecord, error)
}

// Interval is the time between ticks.
func (m *Manager) Interval() time.Duration { return m.cfg.Interval }
