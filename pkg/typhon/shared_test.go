package typhon

import (
	"context"
	"database/sql"
	"errors"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

// TestReplicasShareTheJournal runs two managers over one journal, as two
// replicas of a cluster do: a quarantine, a policy and a release made at
// one are seen by the other after its Refresh.
func TestReplicasShareTheJournal(t *testing.T) {
	j := NewMemJournal()
	a := newRig(t, j, "sb-1")
	b, err := New(ctx, Config{Host: a.host, Blobs: ErebusBlobs{a.blobs}, Journal: j, Clock: a.clk, Network: a.net})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.m.Quarantine(ctx, &QuarantineRequest{SandboxID: "sb-1", RequestedBy: "alice"}); err != nil {
		t.Fatal(err)
	}
	if b.Contained("sb-1") {
		t.Fatal("held at the other replica before it refreshed")
	}
	p := &QuarantinePolicy{QuarantineNodes: []string{"quarantine=yes"}, Isolation: QuarantineIsolation{NetworkMode: NetworkModeRestricted}}
	if err := a.m.SetPolicy(ctx, p); err != nil {
		t.Fatal(err)
	}
	if err := b.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	if !b.Contained("sb-1") || b.Admit("sb-1", "owner", false) == nil || b.Admit("sb-1", "examiner", true) != nil {
		t.Fatal("the other replica does not hold the sandbox after a refresh")
	}
	if got := b.Policy(); got.Version != 1 || !slices.Equal(got.QuarantineNodes, p.QuarantineNodes) {
		t.Fatalf("policy at the other replica: %+v", got)
	}
	// A policy set at the other replica counts on from the stored one.
	p.MaxQuarantineDuration = 2 * time.Hour
	if err := b.SetPolicy(ctx, p); err != nil {
		t.Fatal(err)
	}
	if got, _ := j.Policy(ctx); got.Version != 2 {
		t.Fatalf("stored policy version %d after a second replica's SetPolicy, want 2", got.Version)
	}
	if err := b.Release(ctx, "sb-1", &ReleaseApproval{ApprovedBy: "bob"}); err != nil {
		t.Fatal(err)
	}
	if err := a.m.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	if a.m.Contained("sb-1") || a.m.Admit("sb-1", "owner", false) != nil {
		t.Fatal("still held at the first replica after a release at the other")
	}
	// A quarantine reads the stored policy, refreshed or not.
	p.MaxQuarantineDuration = 3 * time.Hour
	if err := b.SetPolicy(ctx, p); err != nil {
		t.Fatal(err)
	}
	rec, err := a.m.Quarantine(ctx, &QuarantineRequest{SandboxID: "sb-1", RequestedBy: "alice"})
	if err != nil {
		t.Fatal(err)
	}
	if got := rec.ExpiresAt.Sub(rec.QuarantinedAt); got != 3*time.Hour {
		t.Fatalf("quarantine bound %v, want the other replica's new 3h", got)
	}
}

// moverHost is a fakeHost whose sandboxes can move to a labelled node.
type moverHost struct {
	*fakeHost
	labels map[string]string // node → its one label
	err    error
	moves  []string
}

func (h *moverHost) MoveTo(_ context.Context, id string, labels []string) (string, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	sb := h.sbs[id]
	if sb.State != tartarus.StateRunning {
		return sb.Node, errors.New("moved while contained")
	}
	if h.err != nil {
		return sb.Node, h.err
	}
	for node, l := range h.labels {
		if slices.Contains(labels, l) {
			h.moves = append(h.moves, sb.Node+"→"+node)
			sb.Node = node
			return node, nil
		}
	}
	return sb.Node, errors.New("no labelled node")
}

func TestQuarantineMovesToQuarantineNode(t *testing.T) {
	for _, tc := range []struct {
		name     string
		err      error
		wantNode string
		wantNote string
	}{
		{"moves", nil, "q1", "moved from node n1 to quarantine node q1"},
		{"stays held when the move fails", errors.New("no room"), "n1", "no room; held on n1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := newRig(t, NewMemJournal(), "sb-1")
			h := &moverHost{fakeHost: r.host, labels: map[string]string{"q1": "quarantine=yes"}, err: tc.err}
			m, err := New(ctx, Config{Host: h, Blobs: ErebusBlobs{r.blobs}, Journal: r.j, Clock: r.clk, Network: r.net,
				Audit: func(_ context.Context, e AuditEvent) { r.mu.Lock(); r.audits = append(r.audits, e); r.mu.Unlock() }})
			if err != nil {
				t.Fatal(err)
			}
			if err := m.SetPolicy(ctx, &QuarantinePolicy{QuarantineNodes: []string{"quarantine=yes"}}); err != nil {
				t.Fatal(err)
			}
			rec, err := m.Quarantine(ctx, &QuarantineRequest{SandboxID: "sb-1", RequestedBy: "alice"})
			if err != nil {
				t.Fatal(err)
			}
			if rec.Node != tc.wantNode || len(rec.Notes) != 1 || !strings.Contains(rec.Notes[0], tc.wantNote) {
				t.Fatalf("record on %s, notes %q; want %s and %q", rec.Node, rec.Notes, tc.wantNode, tc.wantNote)
			}
			// Contained again after the move (or the failed one), network too.
			if sb, _ := h.Get(ctx, "sb-1"); sb.State != tartarus.StateQuarantined || r.net.mode("sb-1") != NetworkModeNone {
				t.Fatalf("after the move: %s, network %q", sb.State, r.net.mode("sb-1"))
			}
			if !slices.Contains(r.actions(), "move") {
				t.Fatalf("no move audited: %v", r.actions())
			}
			if got, _ := r.j.Records(ctx); got[0].Node != tc.wantNode {
				t.Fatalf("stored record on %s", got[0].Node)
			}
		})
	}
}

func TestQuarantineNodesAreLabels(t *testing.T) {
	r := newRig(t, NewMemJournal(), "sb-1")
	for _, tc := range []struct {
		nodes []string
		ok    bool
	}{
		{[]string{"quarantine=yes"}, true},
		{[]string{"pool=forensics", "quarantine=yes"}, true},
		{[]string{"node-b"}, false},
		{[]string{"quarantine="}, false},
		{[]string{"bad key=x"}, false},
	} {
		err := r.m.SetPolicy(ctx, &QuarantinePolicy{QuarantineNodes: tc.nodes})
		if (err == nil) != tc.ok || (err != nil && !errors.Is(err, tartarus.ErrInvalid)) {
			t.Errorf("%q: %v", tc.nodes, err)
		}
	}
}

// TestActorsAcrossReplicas: someone who acted in a sandbox through one
// replica may not approve its release at another, which quarantined it.
func TestActorsAcrossReplicas(t *testing.T) {
	db, err := sql.Open("sqlite", filepath.Join(t.TempDir(), "q.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	if err := Migrate(ctx, db); err != nil {
		t.Fatal(err)
	}
	j, err := NewSQLJournal(db, SQLite)
	if err != nil {
		t.Fatal(err)
	}
	a := newRig(t, j, "sb-1")
	b, err := New(ctx, Config{Host: a.host, Blobs: ErebusBlobs{a.blobs}, Journal: j, Clock: a.clk, Network: a.net})
	if err != nil {
		t.Fatal(err)
	}
	if err := a.m.Admit("sb-1", "mallory", false); err != nil {
		t.Fatal(err)
	}
	rec, err := b.Quarantine(ctx, &QuarantineRequest{SandboxID: "sb-1", RequestedBy: "alice"})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(rec.Involved, []string{"mallory", "alice"}) {
		t.Fatalf("involved %q, want mallory (acted at the other replica) and alice", rec.Involved)
	}
	if err := b.Release(ctx, "sb-1", &ReleaseApproval{ApprovedBy: "mallory"}); !errors.Is(err, tartarus.ErrPermissionDenied) {
		t.Fatalf("release approved by who acted at the other replica: %v", err)
	}
	if err := b.Release(ctx, "sb-1", &ReleaseApproval{ApprovedBy: "bob"}); err != nil {
		t.Fatal(err)
	}
	if got, _ := j.Actors(ctx, "sb-1", 8); len(got) != 0 {
		t.Fatalf("actors kept after the release: %q", got)
	}
}
