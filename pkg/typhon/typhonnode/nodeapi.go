package typhonnode

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"sync"
	"time"

	"github.com/tartarus-sandbox/tartarus/pkg/cerberus"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus/api"
	"github.com/tartarus-sandbox/tartarus/pkg/typhon"
)

// The node API's quarantine routes, which a cluster replica's Typhon calls
// on the agent holding a sandbox (fmt: the sandbox id). Only servers reach
// a node API (pkg/hecatoncheir/link), and a request acts within the tenant
// the server names.
const (
	// PathState: POST StateRequest → the sandbox as the agent now has it.
	PathState = "/v1/node/quarantine/%s/state"
	// PathSignals: GET → typhon.Signals (host counters read on the node).
	PathSignals = "/v1/node/quarantine/%s/signals"
	// PathCollect: POST CollectRequest → CollectResponse, the evidence
	// with its bytes, for the replica to store.
	PathCollect = "/v1/node/quarantine/%s/collect"
)

// StateRequest moves a sandbox into (On) or out of the quarantined state.
type StateRequest struct {
	On bool `json:"on"`
}

// CollectRequest asks the node for a sandbox's evidence.
type CollectRequest struct {
	Isolation typhon.QuarantineIsolation `json:"isolation"`
	// KeepForS is how long the evidence snapshot is kept, in seconds.
	KeepForS int64 `json:"keep_for_s"`
}

// CollectResponse is the evidence the node gathered (Data set).
type CollectResponse struct {
	Evidence []typhon.Evidence `json:"evidence"`
}

// NodeAPI serves the quarantine routes of one agent's node API and is
// that API's containment check: the server that forwarded a call decided
// already whether its caller may reach a held sandbox (an examiner), so
// the node lets every forwarded call through.
type NodeAPI struct {
	host *Host

	mu     sync.Mutex
	pruned time.Time // when readings of gone sandboxes were last dropped
}

// pruneEvery is how often the node API drops the readings of sandboxes
// that no longer run (on a single node, each tick does).
const pruneEvery = time.Minute

// NewNodeAPI returns the quarantine side of an agent's node API over
// host (New over the agent).
func NewNodeAPI(host *Host) *NodeAPI {
	return &NodeAPI{host: host}
}

// Routes are the node API's quarantine routes, by ServeMux pattern.
func (n *NodeAPI) Routes() map[string]http.Handler {
	return map[string]http.Handler{
		"POST /v1/node/quarantine/{id}/state":   http.HandlerFunc(n.state),
		"GET /v1/node/quarantine/{id}/signals":  http.HandlerFunc(n.signals),
		"POST /v1/node/quarantine/{id}/collect": http.HandlerFunc(n.collect),
	}
}

// sandbox loads the path's sandbox within the tenant the server named.
func (n *NodeAPI) sandbox(r *http.Request) (*tartarus.Sandbox, error) {
	id := r.PathValue("id")
	sb, err := n.host.agent.Get(r.Context(), id)
	if err != nil {
		return nil, err
	}
	who := cerberus.IdentityFrom(r.Context())
	if who == nil || who.TenantID != sb.Tenant {
		return nil, tartarus.Errorf(tartarus.ErrNotFound, "sandbox %.80q", id)
	}
	return sb, nil
}

func answer(w http.ResponseWriter, v any, err error) {
	if err != nil {
		api.WriteError(w, err, "")
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(v)
}

// decode reads a small JSON body.
func decode(r *http.Request, v any) error {
	b, err := io.ReadAll(io.LimitReader(r.Body, 1<<20))
	if err != nil {
		return err
	}
	if err := json.Unmarshal(b, v); err != nil {
		return tartarus.Errorf(tartarus.ErrInvalid, "body: %v", err)
	}
	return nil
}

func (n *NodeAPI) state(w http.ResponseWriter, r *http.Request) {
	sb, err := n.sandbox(r)
	if err != nil {
		answer(w, nil, err)
		return
	}
	var req StateRequest
	if err := decode(r, &req); err != nil {
		answer(w, nil, err)
		return
	}
	if err := n.host.SetQuarantined(r.Context(), sb.ID, req.On); err != nil {
		answer(w, nil, err)
		return
	}
	sb, err = n.host.agent.Get(r.Context(), sb.ID)
	answer(w, sb, err)
}

func (n *NodeAPI) signals(w http.ResponseWriter, r *http.Request) {
	sb, err := n.sandbox(r)
	if err != nil {
		answer(w, nil, err)
		return
	}
	n.mu.Lock()
	prune := n.host.clk.Now().Sub(n.pruned) >= pruneEvery
	if prune {
		n.pruned = n.host.clk.Now()
	}
	n.mu.Unlock()
	if prune {
		_, _ = n.host.Sandboxes(r.Context()) // drops what no longer runs
	}
	s, err := n.host.Signals(r.Context(), sb)
	answer(w, s, err)
}

func (n *NodeAPI) collect(w http.ResponseWriter, r *http.Request) {
	sb, err := n.sandbox(r)
	if err != nil {
		answer(w, nil, err)
		return
	}
	var req CollectRequest
	if err := decode(r, &req); err != nil {
		answer(w, nil, err)
		return
	}
	// The replica's caller may go away; what is collected must not be
	// left half-made (a snapshot).
	ctx := context.WithoutCancel(r.Context())
	evs := n.host.Collect(ctx, sb, &req.Isolation, time.Duration(req.KeepForS)*time.Second)
	if evs == nil {
		evs = []typhon.Evidence{}
	}
	answer(w, CollectResponse{Evidence: evs}, nil)
}

// Quarantiner methods: the node API serves no quarantine of its own.

func notHere() error {
	return tartarus.Errorf(tartarus.ErrNotImplemented, "quarantine is served by the cluster's replicas, not by a node API")
}

// Admit lets every forwarded call through: the replica checked it.
func (n *NodeAPI) Admit(string, string, bool) error { return nil }

// Quarantine is served by the replicas.
func (n *NodeAPI) Quarantine(context.Context, *tartarus.QuarantineRequest) (*tartarus.QuarantineRecord, error) {
	return nil, notHere()
}

// ListQuarantined is served by the replicas.
func (n *NodeAPI) ListQuarantined(context.Context, *tartarus.QuarantineFilter) ([]*tartarus.QuarantineRecord, error) {
	return nil, notHere()
}

// Get is served by the replicas.
func (n *NodeAPI) Get(context.Context, string) (*tartarus.QuarantineRecord, error) {
	return nil, notHere()
}

// Reports is served by the replicas.
func (n *NodeAPI) Reports(context.Context, string) ([]*tartarus.ExaminationReport, error) {
	return nil, notHere()
}

// ExamineAs is served by the replicas.
func (n *NodeAPI) ExamineAs(context.Context, string, string) (*tartarus.ExaminationReport, error) {
	return nil, notHere()
}

// Release is served by the replicas.
func (n *NodeAPI) Release(context.Context, string, *tartarus.ReleaseApproval) error { return notHere() }

// Destroy is served by the replicas.
func (n *NodeAPI) Destroy(context.Context, string, string) (*tartarus.QuarantineRecord, error) {
	return nil, notHere()
}

// Hibernate is served by the replicas.
func (n *NodeAPI) Hibernate(context.Context, string, string) (*tartarus.QuarantineRecord, error) {
	return nil, notHere()
}

// Wake is served by the replicas.
func (n *NodeAPI) Wake(context.Context, string, string) (*tartarus.QuarantineRecord, error) {
	return nil, notHere()
}

// Evidence is served by the replicas.
func (n *NodeAPI) Evidence(context.Context, string, string) (io.ReadCloser, *tartarus.Evidence, error) {
	return nil, nil, notHere()
}

// Policy is served by the replicas: the node has none.
func (n *NodeAPI) Policy() *tartarus.QuarantinePolicy { return &tartarus.QuarantinePolicy{} }

// SetPolicy is served by the replicas.
func (n *NodeAPI) SetPolicy(context.Context, *tartarus.QuarantinePolicy) error { return notHere() }
