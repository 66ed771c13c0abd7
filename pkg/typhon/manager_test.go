package typhon

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tartarus-sandbox/tartarus/pkg/clock"
	"github.com/tartarus-sandbox/tartarus/pkg/erebus"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

// fakeHost is a Host over a map of sandboxes, for unit tests of the
// manager (the real one is the node agent's wiring).
type fakeHost struct {
	mu        sync.Mutex
	sbs       map[string]*tartarus.Sandbox
	sig       map[string]*Signals
	destroyed []string
}

func newFakeHost(ids ...string) *fakeHost {
	h := &fakeHost{sbs: map[string]*tartarus.Sandbox{}, sig: map[string]*Signals{}}
	for _, id := range ids {
		h.sbs[id] = &tartarus.Sandbox{ID: id, Tenant: "t1", Template: "base", Runtime: "microvm", State: tartarus.StateRunning, Node: "n1", MemoryMB: 256}
		h.sig[id] = &Signals{SandboxID: id, Tenant: "t1", Template: "base", Runtime: "microvm"}
	}
	return h
}

func (h *fakeHost) Sandboxes(context.Context) ([]*tartarus.Sandbox, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	var out []*tartarus.Sandbox
	for _, sb := range h.sbs {
		if !sb.State.Final() {
			c := *sb
			out = append(out, &c)
		}
	}
	return out, nil
}

func (h *fakeHost) Get(_ context.Context, id string) (*tartarus.Sandbox, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	sb, ok := h.sbs[id]
	if !ok {
		return nil, tartarus.Errorf(tartarus.ErrNotFound, "sandbox %s", id)
	}
	c := *sb
	return &c, nil
}

func (h *fakeHost) SetQuarantined(_ context.Context, id string, on bool) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if on {
		h.sbs[id].State = tartarus.StateQuarantined
	} else {
		h.sbs[id].State = tartarus.StateRunning
	}
	return nil
}

func (h *fakeHost) Signals(_ context.Context, sb *tartarus.Sandbox) (*Signals, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	s := *h.sig[sb.ID]
	return &s, nil
}

func (h *fakeHost) Collect(_ context.Context, sb *tartarus.Sandbox, _ *QuarantineIsolation, _ time.Duration) []Evidence {
	h.mu.Lock()
	s := *h.sig[sb.ID]
	h.mu.Unlock()
	spike, _ := json.Marshal(spikeData{HostCounters: true, Samples: []spikeSample{{CPUPercent: s.CPUPercent, Processes: s.Processes}}})
	return []Evidence{
		{Type: tartarus.EvidenceResourceSpike, Source: tartarus.SourceHost, Description: "host counters", Data: spike},
		{Type: tartarus.EvidenceExecHistory, Source: tartarus.SourceHost, Data: []byte(strings.Join(s.ExecHistory, "\n"))},
	}
}

func (h *fakeHost) Destroy(_ context.Context, id string) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.sbs[id].State = tartarus.StateTerminated
	h.destroyed = append(h.destroyed, id)
	return nil
}

type fakeNet struct {
	mu    sync.Mutex
	modes map[string]NetworkMode
}

func (n *fakeNet) Contain(_ context.Context, id string, mode NetworkMode, _ []string, _ bool) (*tartarus.NetworkSpec, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.modes[id] = mode
	return &tartarus.NetworkSpec{Mode: tartarus.NetworkOpen}, nil
}

func (n *fakeNet) Restore(_ context.Context, id string, prev *tartarus.NetworkSpec) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.modes[id] = ""
	if prev == nil || prev.Mode != tartarus.NetworkOpen {
		n.modes[id] = "lost"
	}
	return nil
}

func (n *fakeNet) mode(id string) NetworkMode {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.modes[id]
}

type rig struct {
	m      *Manager
	host   *fakeHost
	net    *fakeNet
	clk    *clock.Fake
	j      Journal
	blobs  erebus.Store
	audits []AuditEvent
	mu     sync.Mutex
}

func newRig(t testing.TB, j Journal, ids ...string) *rig {
	t.Helper()
	st, err := erebus.NewLocal(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	r := &rig{host: newFakeHost(ids...), net: &fakeNet{modes: map[string]NetworkMode{}},
		clk: clock.NewFake(time.Date(2026, 12, 6, 0, 0, 0, 0, time.UTC)), j: j, blobs: st}
	r.m, err = New(context.Background(), Config{Host: r.host, Blobs: ErebusBlobs{st}, Journal: j, Clock: r.clk, Network: r.net,
		Audit: func(_ context.Context, e AuditEvent) { r.mu.Lock(); r.audits = append(r.audits, e); r.mu.Unlock() }})
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func (r *rig) actions() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []string
	for _, a := range r.audits {
		out = append(out, a.Action)
	}
	return out
}

var ctx = context.Background()

func TestAutoQuarantineContainsAndKeepsExaminers(t *testing.T) {
	r := newRig(t, NewMemJournal(), "sb-1", "sb-2")
	if err := r.m.SetPolicy(ctx, &QuarantinePolicy{UpdatedBy: "admin",
		AutoTriggers: []AutoQuarantineTrigger{{Name: "spin", Condition: "cpu_percent > 80.0 && size(cpu_history) >= 2", Reason: ReasonResourceAbuse, Enabled: true}},
		Isolation:    QuarantineIsolation{NetworkMode: NetworkModeNone}, MaxQuarantineDuration: time.Hour}); err != nil {
		t.Fatal(err)
	}
	r.host.sig["sb-1"].CPUPercent = 99
	r.host.sig["sb-1"].ExecHistory = []string{"python3 -c while True: pass", "nmap -p- 10.0.0.1"}
	if err := r.m.Admit("sb-1", "owner-key", false); err != nil {
		t.Fatal(err)
	}
	if rep := r.m.Tick(ctx); len(rep.Tripped) != 0 {
		t.Fatalf("tripped on the first reading: %+v", rep)
	}
	rep := r.m.Tick(ctx)
	if len(rep.Tripped) != 1 || rep.Tripped[0] != "sb-1" || len(rep.Errors) != 0 {
		t.Fatalf("tick: %+v", rep)
	}
	if st := r.host.sbs["sb-1"].State; st != tartarus.StateQuarantined {
		t.Fatalf("state %s", st)
	}
	if r.net.mode("sb-1") != NetworkModeNone {
		t.Fatalf("network %q", r.net.mode("sb-1"))
	}
	if err := r.m.Admit("sb-1", "owner-key", false); !errors.Is(err, tartarus.ErrPermissionDenied) {
		t.Fatalf("owner admitted: %v", err)
	}
	if err := r.m.Admit("sb-1", "examiner", true); err != nil {
		t.Fatalf("examiner refused: %v", err)
	}
	if err := r.m.Admit("sb-2", "owner-key", false); err != nil {
		t.Fatalf("other sandbox refused: %v", err)
	}
	rec, err := r.m.Get(ctx, "sb-1")
	if err != nil {
		t.Fatal(err)
	}
	if rec.QuarantinedBy != AutoActor || rec.Trigger != "spin" || len(rec.Evidence) != 2 || rec.Involved[0] != "owner-key" {
		t.Fatalf("record: %+v", rec)
	}
	for _, ev := range rec.Evidence {
		if !strings.HasPrefix(ev.Checksum, "sha256:") || ev.Key == "" {
			t.Fatalf("evidence not stored with a checksum: %+v", ev)
		}
		rc, got, err := r.m.Evidence(ctx, "sb-1", ev.ID)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadAll(rc); err != nil {
			t.Fatalf("evidence %s: %v", got.ID, err)
		}
		rc.Close()
	}

	report, err := r.m.ExamineAs(ctx, "sb-1", "examiner")
	if err != nil {
		t.Fatal(err)
	}
	if report.RiskScore <= 0 || report.RiskScore > 1 || len(report.Findings) < 2 {
		t.Fatalf("report: %+v", report)
	}
	rec, _ = r.m.Get(ctx, "sb-1")
	if rec.Status != StatusExamining || rec.ExaminationCount != 1 {
		t.Fatalf("after examine: %s %d", rec.Status, rec.ExaminationCount)
	}

	// Two-person rule: the owner who acted in it may not approve.
	if err := r.m.Release(ctx, "sb-1", &ReleaseApproval{ApprovedBy: "owner-key"}); !errors.Is(err, tartarus.ErrPermissionDenied) {
		t.Fatalf("self-approval: %v", err)
	}
	if err := r.m.Release(ctx, "sb-1", &ReleaseApproval{ApprovedBy: "approver", Reason: "benign", Conditions: []string{"network restricted"}}); err != nil {
		t.Fatal(err)
	}
	rec, _ = r.m.Get(ctx, "sb-1")
	if rec.Status != StatusReleased || r.host.sbs["sb-1"].State != tartarus.StateRunning || r.net.mode("sb-1") != NetworkModeRestricted {
		t.Fatalf("after release: %+v, net %q", rec, r.net.mode("sb-1"))
	}
	// Conditions hold until the approval expires, then lift.
	r.clk.Advance(DefaultConditionsFor + time.Second)
	r.host.sig["sb-1"].CPUPercent = 0
	r.m.Tick(ctx)
	rec, _ = r.m.Get(ctx, "sb-1")
	if rec.ConditionsLifted.IsZero() || r.net.mode("sb-1") != "" {
		t.Fatalf("conditions not lifted: %+v net %q", rec, r.net.mode("sb-1"))
	}
	want := []string{"set_policy", "quarantine", "contain", "evidence", "examine", "release", "release", "lift_conditions"}
	if got := r.actions(); strings.Join(got, ",") != strings.Join(want, ",") {
		t.Fatalf("audit %v, want %v", got, want)
	}
}

func TestMaxQuarantineDurationDestroys(t *testing.T) {
	r := newRig(t, NewMemJournal(), "sb-1")
	if err := r.m.SetPolicy(ctx, &QuarantinePolicy{MaxQuarantineDuration: time.Hour}); err != nil {
		t.Fatal(err)
	}
	if _, err := r.m.Quarantine(ctx, &QuarantineRequest{SandboxID: "sb-1", Reason: ReasonManualFlag, RequestedBy: "alice"}); err != nil {
		t.Fatal(err)
	}
	r.clk.Advance(59 * time.Minute)
	if rep := r.m.Tick(ctx); len(rep.Expired) != 0 {
		t.Fatalf("expired early: %+v", rep)
	}
	r.clk.Advance(time.Minute)
	if rep := r.m.Tick(ctx); len(rep.Expired) != 1 {
		t.Fatalf("not expired: %+v", rep)
	}
	rec, _ := r.m.Get(ctx, "sb-1")
	if rec.Status != StatusDestroyed || len(r.host.destroyed) != 1 || len(rec.Evidence) == 0 {
		t.Fatalf("record %+v destroyed %v", rec, r.host.destroyed)
	}
	if _, err := r.m.Examine(ctx, "sb-1"); !errors.Is(err, tartarus.ErrFailedPrecondition) {
		t.Fatalf("examine after destroy: %v", err)
	}
}

func TestSetPolicyRefusesInvalidCEL(t *testing.T) {
	r := newRig(t, NewMemJournal(), "sb-1")
	for _, tc := range []struct {
		cond, want string
	}{
		{"cpu_percent >", "line 1, column 14"},
		{"cpu_percnt > 1.0", "undeclared reference to 'cpu_percnt'"},
		{"cpu_percent", "must be a bool"},
		{"processes > 'x'", "no matching overload"},
		{"true &&\n  (", "line 2"},
	} {
		err := r.m.SetPolicy(ctx, &QuarantinePolicy{AutoTriggers: []AutoQuarantineTrigger{{Condition: tc.cond, Reason: ReasonResourceAbuse, Enabled: true}}})
		if !errors.Is(err, tartarus.ErrInvalid) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: %v, want %q", tc.cond, err, tc.want)
		}
		var ce *CompileError
		if tc.want != "must be a bool" && !errors.As(err, &ce) {
			t.Errorf("%q: no position in %v", tc.cond, err)
		}
	}
	if p := r.m.Policy(); p.Version != 0 {
		t.Fatalf("an invalid policy was installed: %+v", p)
	}
	for _, p := range []*QuarantinePolicy{
		{AutoTriggers: []AutoQuarantineTrigger{{Condition: "true", Reason: "because"}}},
		{Isolation: QuarantineIsolation{NetworkMode: "open"}},
		{MaxQuarantineDuration: -time.Second},
		{QuarantineNodes: []string{"Bad Node"}},
	} {
		if err := r.m.SetPolicy(ctx, p); !errors.Is(err, tartarus.ErrInvalid) {
			t.Errorf("%+v: %v", p, err)
		}
	}
}

func TestCostLimitCutsExpensiveTrigger(t *testing.T) {
	r := newRig(t, NewMemJournal(), "sb-1")
	// Three nested walks of a 64-entry history: 262,144 steps, well over
	// the default limit.
	cond := `exec_history.exists(a, exec_history.exists(b, exec_history.exists(c, a + b + c == "never")))`
	if err := r.m.SetPolicy(ctx, &QuarantinePolicy{AutoTriggers: []AutoQuarantineTrigger{{Condition: cond, Reason: ReasonSuspiciousBehavior, Enabled: true}}}); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 64; i++ {
		r.host.sig["sb-1"].ExecHistory = append(r.host.sig["sb-1"].ExecHistory, "ls")
	}
	rep := r.m.Tick(ctx)
	if len(rep.Tripped) != 0 || len(rep.Errors) != 1 || !strings.Contains(rep.Errors[0].Error(), "cost limit") {
		t.Fatalf("tick: %+v", rep)
	}
}

func TestRiskScore(t *testing.T) {
	f := func(s tartarus.Severity, src tartarus.EvidenceSource) tartarus.Finding {
		return tartarus.Finding{Severity: s, Source: src}
	}
	for _, tc := range []struct {
		name string
		fs   []tartarus.Finding
		risk float64
		act  tartarus.RecommendedAction
	}{
		{"none", nil, 0, tartarus.ActionRelease},
		{"info", []tartarus.Finding{f(tartarus.SeverityInfo, tartarus.SourceHost)}, 0, tartarus.ActionRelease},
		{"medium host", []tartarus.Finding{f(tartarus.SeverityMedium, tartarus.SourceHost)}, 0.3, tartarus.ActionMonitor},
		{"medium guest", []tartarus.Finding{f(tartarus.SeverityMedium, tartarus.SourceGuest)}, 0.15, tartarus.ActionRelease},
		{"high host", []tartarus.Finding{f(tartarus.SeverityHigh, tartarus.SourceHost)}, 0.6, tartarus.ActionEscalate},
		{"two high", []tartarus.Finding{f(tartarus.SeverityHigh, tartarus.SourceHost), f(tartarus.SeverityHigh, tartarus.SourceHost)}, 0.84, tartarus.ActionDestroy},
		{"critical guest", []tartarus.Finding{f(tartarus.SeverityCritical, tartarus.SourceGuest)}, 0.45, tartarus.ActionMonitor},
		{"critical host", []tartarus.Finding{f(tartarus.SeverityCritical, tartarus.SourceHost)}, 0.9, tartarus.ActionDestroy},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := RiskScore(tc.fs)
			if r != tc.risk || Recommend(r, tc.fs) != tc.act {
				t.Fatalf("risk %v %s, want %v %s", r, Recommend(r, tc.fs), tc.risk, tc.act)
			}
		})
	}
}

func TestQuarantineRequestBounds(t *testing.T) {
	r := newRig(t, NewMemJournal(), "sb-1")
	for _, req := range []*QuarantineRequest{
		{SandboxID: "../x"},
		{SandboxID: "sb-1", Reason: "whim"},
		{SandboxID: "sb-1", Evidence: make([]Evidence, MaxRequestEvidence+1)},
		{SandboxID: "sb-1", Evidence: []Evidence{{Data: make([]byte, MaxEvidenceBytes+1)}}},
	} {
		if _, err := r.m.Quarantine(ctx, req); !errors.Is(err, tartarus.ErrInvalid) {
			t.Errorf("%+v: %v", req.Reason, err)
		}
	}
	if _, err := r.m.Quarantine(ctx, &QuarantineRequest{SandboxID: "sb-9"}); !errors.Is(err, tartarus.ErrNotFound) {
		t.Fatalf("missing sandbox: %v", err)
	}
	// Quarantining twice returns the same record.
	a, err := r.m.Quarantine(ctx, &QuarantineRequest{SandboxID: "sb-1", RequestedBy: "alice"})
	if err != nil {
		t.Fatal(err)
	}
	b, err := r.m.Quarantine(ctx, &QuarantineRequest{SandboxID: "sb-1", RequestedBy: "bob"})
	if err != nil || a.ID != b.ID {
		t.Fatalf("second quarantine: %v %s %s", err, a.ID, b.ID)
	}
	if err := r.m.Release(ctx, "sb-1", &ReleaseApproval{ApprovedBy: "alice"}); !errors.Is(err, tartarus.ErrPermissionDenied) {
		t.Fatalf("self-approval by the requester: %v", err)
	}
	if err := r.m.Release(ctx, "sb-1", &ReleaseApproval{ApprovedBy: "carol", Conditions: []string{"no internet please"}}); !errors.Is(err, tartarus.ErrInvalid) {
		t.Fatalf("unknown condition: %v", err)
	}
}

func TestQuarantineSurvivesRestart(t *testing.T) {
	j := NewMemJournal()
	r := newRig(t, j, "sb-1")
	if err := r.m.SetPolicy(ctx, &QuarantinePolicy{Isolation: QuarantineIsolation{NetworkMode: NetworkModeRestricted}}); err != nil {
		t.Fatal(err)
	}
	if _, err := r.m.Quarantine(ctx, &QuarantineRequest{SandboxID: "sb-1", RequestedBy: "alice"}); err != nil {
		t.Fatal(err)
	}
	net := &fakeNet{modes: map[string]NetworkMode{}}
	m2, err := New(ctx, Config{Host: r.host, Blobs: ErebusBlobs{r.blobs}, Journal: j, Clock: r.clk, Network: net})
	if err != nil {
		t.Fatal(err)
	}
	if !m2.Contained("sb-1") || m2.Admit("sb-1", "owner", false) == nil || net.mode("sb-1") != NetworkModeRestricted {
		t.Fatal("quarantine lost over a restart")
	}
	if m2.Policy().Isolation.NetworkMode != NetworkModeRestricted {
		t.Fatal("policy lost over a restart")
	}
}

func TestReleaseConditionsForUsesTheClock(t *testing.T) {
	r := newRig(t, NewMemJournal(), "sb-1")
	if _, err := r.m.Quarantine(ctx, &QuarantineRequest{SandboxID: "sb-1", RequestedBy: "alice"}); err != nil {
		t.Fatal(err)
	}
	if err := r.m.Release(ctx, "sb-1", &ReleaseApproval{ApprovedBy: "bob", Conditions: []string{"network  None"}, ConditionsFor: time.Hour}); err != nil {
		t.Fatal(err)
	}
	rec, _ := r.m.Get(ctx, "sb-1")
	if rec.Approval.ExpiresAt == nil || !rec.Approval.ExpiresAt.Equal(r.clk.Now().Add(time.Hour)) || r.net.mode("sb-1") != NetworkModeNone {
		t.Fatalf("approval %+v, net %q", rec.Approval, r.net.mode("sb-1"))
	}
	r.clk.Advance(time.Hour)
	r.m.Tick(ctx)
	if r.net.mode("sb-1") != "" {
		t.Fatalf("after expiry the owner's network is not back: %q", r.net.mode("sb-1"))
	}
}

// TestFileAccessRule: a write to a system file is a high host finding;
// names of any bytes stay clean in the report.
func TestFileAccessRule(t *testing.T) {
	for _, tc := range []struct {
		name string
		data string
		sev  tartarus.Severity // "" for no finding
	}{
		{"system file", `{"changed_blocks":3,"files":[{"path":"/tmp/x"},{"path":"/etc/shadow"}]}`, tartarus.SeverityHigh},
		{"scratch only", `{"changed_blocks":3,"files":[{"path":"/tmp/x"},{"path":"/home/u/.cache/y"}]}`, ""},
		{"hostile name", `{"files":[{"path":"/usr/bin/\u001b[31m\n\u202eevil\uFFFF"}]}`, tartarus.SeverityHigh},
		{"not json", "\xff\x00", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rec := &tartarus.QuarantineRecord{Evidence: []tartarus.Evidence{{ID: "ev1", Type: tartarus.EvidenceFileAccess, Source: tartarus.SourceHost}}}
			fs := examineEvidence(rec, map[string][]byte{"ev1": []byte(tc.data)})
			if tc.sev == "" {
				if len(fs) != 0 {
					t.Fatalf("findings %+v", fs)
				}
				return
			}
			if len(fs) != 1 || fs[0].Severity != tc.sev || fs[0].Source != tartarus.SourceHost || fs[0].EvidenceID != "ev1" {
				t.Fatalf("findings %+v", fs)
			}
			if strings.ContainsAny(fs[0].Description, "\x1b\n") {
				t.Fatalf("uncleaned %q", fs[0].Description)
			}
		})
	}
}

// TestPolicyRefusesUnenforcedIsolation: settings that are not applied are
// refused, each named; an unknown seccomp profile is refused with the one
// there is.
func TestPolicyRefusesUnenforcedIsolation(t *testing.T) {
	p := &QuarantinePolicy{Isolation: QuarantineIsolation{SeccompProfile: "lax", StorageBackend: "s3://x"}}
	err := validatePolicy(p)
	if err == nil || !strings.Contains(err.Error(), `seccomp_profile "lax": want "strict"`) || !strings.Contains(err.Error(), "storage_backend") {
		t.Fatalf("err %v", err)
	}
	if err := validatePolicy(&QuarantinePolicy{Isolation: QuarantineIsolation{NetworkMode: NetworkModeNone, SeccompProfile: SeccompStrict}}); err != nil {
		t.Fatalf("strict refused: %v", err)
	}
}

// strictHost is a sleepyHost that can restore sandboxes under the strict
// seccomp filter; it records whether each wake was strict.
type strictHost struct {
	sleepyHost
	strict map[string]bool
	refuse map[string]bool // sandboxes it cannot restore strict (another runtime)
	wakes  []string        // "id strict" or "id"
}

func (h *strictHost) SetStrictSeccomp(_ context.Context, id string, on bool) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if on && h.refuse[id] {
		return tartarus.Errorf(tartarus.ErrFailedPrecondition, "sandbox %s: not a jailed microVM", id)
	}
	h.strict[id] = on
	return nil
}

func (h *strictHost) Wake(ctx context.Context, id string) error {
	h.mu.Lock()
	w := id
	if h.strict[id] {
		w += " strict"
	}
	h.wakes = append(h.wakes, w)
	h.mu.Unlock()
	return h.sleepyHost.Wake(ctx, id)
}

// TestStrictSeccompProfile: under seccomp_profile strict a quarantined
// sandbox is hibernated and woken under the filter, held, and stays
// strict after a restart of the manager until its release; a host that
// cannot restore under a filter gets a note, not a silent pass.
func TestStrictSeccompProfile(t *testing.T) {
	r := newRig(t, NewMemJournal(), "sb-1")
	host := &strictHost{sleepyHost: sleepyHost{fakeHost: r.host}, strict: map[string]bool{}}
	j := NewMemJournal()
	m, err := New(ctx, Config{Host: host, Blobs: ErebusBlobs{r.blobs}, Journal: j, Clock: r.clk, Network: r.net})
	if err != nil {
		t.Fatal(err)
	}
	pol := &QuarantinePolicy{UpdatedBy: "admin", Isolation: QuarantineIsolation{NetworkMode: NetworkModeNone, SeccompProfile: SeccompStrict}}
	if err := m.SetPolicy(ctx, pol); err != nil {
		t.Fatal(err)
	}
	rec, err := m.Quarantine(ctx, &QuarantineRequest{SandboxID: "sb-1", RequestedBy: "alice", Reason: tartarus.QuarantinePolicyViolation})
	if err != nil {
		t.Fatal(err)
	}
	sb, _ := host.Get(ctx, "sb-1")
	if rec.SeccompProfile != SeccompStrict || sb.State != tartarus.StateQuarantined || len(rec.Notes) != 0 {
		t.Fatalf("record profile %q notes %q, state %s", rec.SeccompProfile, rec.Notes, sb.State)
	}
	if strings.Join(host.wakes, ",") != "sb-1 strict" {
		t.Fatalf("wakes %q, want one under the strict filter", host.wakes)
	}
	if m.Admit("sb-1", "owner", false) == nil {
		t.Fatal("the owner reaches the sandbox after its strict wake")
	}
	// A restarted server: the host forgot; the manager tells it again.
	host.strict = map[string]bool{}
	m2, err := New(ctx, Config{Host: host, Blobs: ErebusBlobs{r.blobs}, Journal: j, Clock: r.clk, Network: r.net})
	if err != nil {
		t.Fatal(err)
	}
	if !host.strict["sb-1"] {
		t.Fatal("after a restart the sandbox's next wake would not be strict")
	}
	if err := m2.Release(ctx, "sb-1", &ReleaseApproval{ApprovedBy: "bob"}); err != nil {
		t.Fatal(err)
	}
	if host.strict["sb-1"] {
		t.Fatal("release did not lift the strict filter")
	}

	// A sandbox the host cannot restore strict: noted, still held.
	r2 := newRig(t, NewMemJournal(), "sb-2")
	host2 := &strictHost{sleepyHost: sleepyHost{fakeHost: r2.host}, strict: map[string]bool{}, refuse: map[string]bool{"sb-2": true}}
	m3, err := New(ctx, Config{Host: host2, Blobs: ErebusBlobs{r2.blobs}, Journal: NewMemJournal(), Clock: r2.clk, Network: r2.net})
	if err != nil {
		t.Fatal(err)
	}
	if err := m3.SetPolicy(ctx, pol); err != nil {
		t.Fatal(err)
	}
	rec, err = m3.Quarantine(ctx, &QuarantineRequest{SandboxID: "sb-2", RequestedBy: "alice", Reason: tartarus.QuarantinePolicyViolation})
	if err != nil {
		t.Fatal(err)
	}
	if rec.SeccompProfile != "" || len(rec.Notes) != 1 || !strings.Contains(rec.Notes[0], "seccomp_profile strict") || !m3.Contained("sb-2") {
		t.Fatalf("profile %q notes %q", rec.SeccompProfile, rec.Notes)
	}
	// A host that cannot at all (a cluster's, today) refuses the policy.
	if err := r2.m.SetPolicy(ctx, pol); !errors.Is(err, tartarus.ErrInvalid) || !strings.Contains(err.Error(), "seccomp_profile") {
		t.Errorf("a strict profile on a host that cannot apply it: %v, want refused", err)
	}
}

// TestHeldSandboxFoundRunningIsContainedAgain: a held sandbox that comes
// back running by another path than Wake (a wake on demand, a restore) is
// contained again by the next tick: state and network.
func TestHeldSandboxFoundRunningIsContainedAgain(t *testing.T) {
	r := newRig(t, NewMemJournal(), "sb-1")
	if _, err := r.m.Quarantine(ctx, &QuarantineRequest{SandboxID: "sb-1", RequestedBy: "alice"}); err != nil {
		t.Fatal(err)
	}
	r.host.SetQuarantined(ctx, "sb-1", false)
	r.net.mu.Lock()
	r.net.modes["sb-1"] = ""
	r.net.mu.Unlock()
	if rep := r.m.Tick(ctx); len(rep.Errors) != 0 || len(rep.Tripped) != 0 {
		t.Fatalf("tick: %+v", rep)
	}
	if sb, _ := r.host.Get(ctx, "sb-1"); sb.State != tartarus.StateQuarantined || r.net.mode("sb-1") != NetworkModeNone {
		t.Fatalf("after a tick: state %s, network %q", sb.State, r.net.mode("sb-1"))
	}
	if r.m.Admit("sb-1", "owner", false) == nil {
		t.Fatal("the owner reaches a held sandbox")
	}
}

// TestCPURuleReadsDemand: on a loaded host a spinning guest gets a small
// share of a core but stays runnable; the rule rates what it wanted.
func TestCPURuleReadsDemand(t *testing.T) {
	for _, tc := range []struct {
		name string
		data string
		sev  tartarus.Severity
	}{
		{"spin on a loaded host", `{"host_counters":true,"samples":[{"cpu_percent":4,"cpu_demand":10},{"cpu_percent":17,"cpu_demand":99},{"cpu_percent":15,"cpu_demand":98}]}`, tartarus.SeverityHigh},
		{"spin on a quiet host", `{"host_counters":true,"samples":[{"cpu_percent":97,"cpu_demand":99}]}`, tartarus.SeverityHigh},
		{"idle", `{"host_counters":true,"samples":[{"cpu_percent":4,"cpu_demand":12},{"cpu_percent":5,"cpu_demand":11}]}`, ""},
		{"guest's word only", `{"host_counters":false,"samples":[{"cpu_percent":10,"cpu_demand":99}]}`, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rec := &tartarus.QuarantineRecord{Evidence: []tartarus.Evidence{{ID: "ev1", Type: tartarus.EvidenceResourceSpike, Source: tartarus.SourceHost}}}
			fs := examineEvidence(rec, map[string][]byte{"ev1": []byte(tc.data)})
			if tc.sev == "" {
				if len(fs) != 0 {
					t.Fatalf("findings %+v", fs)
				}
				return
			}
			if len(fs) != 1 || fs[0].Severity != tc.sev || fs[0].Category != "cpu" {
				t.Fatalf("findings %+v", fs)
			}
		})
	}
}

// sleepyHost is a fakeHost that can hibernate and wake, or fail to.
type sleepyHost struct {
	*fakeHost
	fail error
}

func (h sleepyHost) Hibernate(_ context.Context, id string) error {
	if h.fail != nil {
		return h.fail
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	h.sbs[id].State = tartarus.StateHibernated
	return nil
}

func (h sleepyHost) Wake(_ context.Context, id string) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.sbs[id].State = tartarus.StateRunning
	return nil
}

// TestHibernateKeepsTheHold: a held sandbox sleeps and wakes held; a
// failed hibernation leaves it contained.
func TestHibernateKeepsTheHold(t *testing.T) {
	for _, tc := range []struct {
		name string
		fail error
	}{{"sleeps", nil}, {"fails", errors.New("snapshot store full")}} {
		t.Run(tc.name, func(t *testing.T) {
			r := newRig(t, NewMemJournal(), "sb-1")
			host := sleepyHost{r.host, tc.fail}
			m, err := New(ctx, Config{Host: host, Blobs: ErebusBlobs{r.blobs}, Journal: NewMemJournal(), Clock: r.clk, Network: r.net})
			if err != nil {
				t.Fatal(err)
			}
			if _, err := m.Hibernate(ctx, "sb-1", "eve"); err == nil {
				t.Fatal("hibernated a sandbox that is not held")
			}
			if _, err := m.Quarantine(ctx, &QuarantineRequest{SandboxID: "sb-1", RequestedBy: "alice"}); err != nil {
				t.Fatal(err)
			}
			_, err = m.Hibernate(ctx, "sb-1", "eve")
			sb, _ := host.Get(ctx, "sb-1")
			if tc.fail != nil {
				if err == nil || sb.State != tartarus.StateQuarantined {
					t.Fatalf("failed hibernation: %v, state %s", err, sb.State)
				}
			} else {
				if err != nil || sb.State != tartarus.StateHibernated {
					t.Fatalf("hibernation: %v, state %s", err, sb.State)
				}
				if m.Admit("sb-1", "owner", false) == nil {
					t.Fatal("the owner reaches a held, sleeping sandbox")
				}
				r.net.mu.Lock()
				r.net.modes["sb-1"] = ""
				r.net.mu.Unlock()
				if _, err := m.Wake(ctx, "sb-1", "eve"); err != nil {
					t.Fatal(err)
				}
				sb, _ = host.Get(ctx, "sb-1")
				if sb.State != tartarus.StateQuarantined || r.net.mode("sb-1") != NetworkModeNone {
					t.Fatalf("after wake: state %s, network %q", sb.State, r.net.mode("sb-1"))
				}
			}
			if m.Admit("sb-1", "owner", false) == nil || m.Admit("sb-1", "eve", true) != nil {
				t.Fatal("the hold changed")
			}
		})
	}
}
