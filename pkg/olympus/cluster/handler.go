package cluster

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/tartarus-sandbox/tartarus/pkg/hecatoncheir/wire"
	"github.com/tartarus-sandbox/tartarus/pkg/store"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

// maxAgentBody bounds what an agent may post (a full heartbeat of many
// sandboxes).
const maxAgentBody = 32 << 20

// maxPollWait bounds an agent's long poll.
const maxPollWait = time.Minute

// Handler serves the agents' side of the protocol (package wire). Serve it
// on a listener that requires client certificates.
func (c *Cluster) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST "+wire.PathHeartbeat, c.agentCall(c.heartbeat))
	mux.HandleFunc("GET "+wire.PathCommands, c.agentCall(c.commands))
	mux.HandleFunc("POST "+wire.PathCommands+"/{id}", c.agentCall(c.result))
	mux.HandleFunc("POST "+wire.PathReports, c.agentCall(c.reports))
	return mux
}

type agentHandler func(w http.ResponseWriter, r *http.Request, node string) error

// agentCall authenticates the agent and turns errors into JSON answers.
func (c *Cluster) agentCall(h agentHandler) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		node, err := c.cfg.AgentIdentity(r)
		if err != nil {
			writeAgentError(w, http.StatusUnauthorized, fmt.Errorf("agent identity: %w", err))
			return
		}
		r.Body = http.MaxBytesReader(w, r.Body, maxAgentBody)
		if err := h(w, r, node); err != nil {
			status := http.StatusInternalServerError
			switch {
			case errors.Is(err, tartarus.ErrInvalid):
				status = http.StatusBadRequest
			case errors.Is(err, tartarus.ErrPermissionDenied):
				status = http.StatusForbidden
			case errors.Is(err, tartarus.ErrNotFound):
				status = http.StatusNotFound
			}
			if status == http.StatusInternalServerError {
				c.log.Warn("agent call", "node", node, "path", r.URL.Path, "err", err)
			}
			writeAgentError(w, status, err)
		}
	}
}

func writeAgentError(w http.ResponseWriter, status int, err error) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(wire.ErrorOf(err))
}

func decodeBody(r *http.Request, v any) error {
	dec := json.NewDecoder(r.Body)
	if err := dec.Decode(v); err != nil {
		return tartarus.Errorf(tartarus.ErrInvalid, "request body: %v", err)
	}
	return nil
}

func (c *Cluster) heartbeat(w http.ResponseWriter, r *http.Request, node string) error {
	var hb wire.Heartbeat
	if err := decodeBody(r, &hb); err != nil {
		return err
	}
	if hb.Node.Name != node {
		return tartarus.Errorf(tartarus.ErrPermissionDenied, "certificate names agent %s, heartbeat says %q", node, hb.Node.Name)
	}
	if u, err := url.Parse(hb.Node.Address); err != nil || u.Scheme != "https" || u.Host == "" {
		return tartarus.Errorf(tartarus.ErrInvalid, "node address %q: want https://HOST:PORT", hb.Node.Address)
	}
	status, err := json.Marshal(hb.Node)
	if err != nil {
		return err
	}
	prev, err := c.st.Heartbeat(r.Context(), node, hb.Node.Address, status, c.cfg.Clock.Now().UTC())
	if err != nil {
		return err
	}
	reply := wire.HeartbeatReply{Interval: c.cfg.HeartbeatInterval}
	if prev != store.NodeUp {
		c.log.Info("node up", "node", node, "address", hb.Node.Address, "was", prev, "full", hb.Full)
	}
	if !hb.Full {
		reply.Resync = prev != store.NodeUp
	} else {
		drops, err := c.reconcile(r.Context(), node, hb.Sandboxes)
		if err != nil {
			return err
		}
		reply.Drop = drops
	}
	writeJSON(w, reply)
	return nil
}

// reconcile records a node's full list of sandboxes and returns those it
// must let go of: ones the cluster settled while the node was away.
func (c *Cluster) reconcile(ctx context.Context, node string, reports []wire.Report) ([]wire.Drop, error) {
	if err := c.apply(ctx, node, reports); err != nil {
		return nil, err
	}
	var drops []wire.Drop
	for _, rep := range reports {
		if rep.Sandbox.State.Final() {
			continue
		}
		sb, err := c.st.Get(ctx, rep.Sandbox.ID)
		if err != nil {
			return nil, err
		}
		if sb.Node == "" && sb.State == tartarus.StateHibernated && rep.Sandbox.State == tartarus.StateHibernated {
			// It slept here and nobody has woken it elsewhere: it is
			// this node's again.
			ok, err := c.st.Reclaim(ctx, sb.ID, node, c.cfg.Clock.Now().UTC())
			if err != nil {
				return nil, err
			}
			if ok {
				continue
			}
			if sb, err = c.st.Get(ctx, rep.Sandbox.ID); err != nil {
				return nil, err
			}
		}
		switch {
		case sb.Node != node:
			where := "another node"
			if sb.Node == "" {
				where = "any node that wakes it"
			}
			drops = append(drops, wire.Drop{SandboxID: sb.ID, KeepSnapshot: true,
				Reason: fmt.Sprintf("sandbox %s now belongs to %s", sb.ID, where)})
		case sb.State.Final():
			drops = append(drops, wire.Drop{SandboxID: sb.ID,
				Reason: fmt.Sprintf("sandbox %s was settled as %s while the node was away: %s", sb.ID, sb.State, sb.Error)})
		}
	}
	return drops, nil
}

// apply records sandboxes as a node reports them.
func (c *Cluster) apply(ctx context.Context, node string, reports []wire.Report) error {
	for _, rep := range reports {
		sb := rep.Sandbox
		if !tartarus.ValidName(sb.ID) {
			return tartarus.Errorf(tartarus.ErrInvalid, "sandbox id %q", sb.ID)
		}
		applied, err := c.st.Report(ctx, node, &sb)
		if err != nil {
			return err
		}
		if applied && sb.State.Final() {
			c.publish(ctx, Event{Kind: EventEnded, ID: sb.ID})
		}
		if applied && rep.Sleep != nil && sb.State == tartarus.StateHibernated {
			rec, err := json.Marshal(rep.Sleep)
			if err != nil {
				return err
			}
			if err := c.st.PutSleep(ctx, sb.ID, rec); err != nil {
				return err
			}
		}
	}
	return nil
}

func (c *Cluster) commands(w http.ResponseWriter, r *http.Request, node string) error {
	wait := wire.DefaultPollWait
	if s := r.URL.Query().Get("wait"); s != "" {
		d, err := time.ParseDuration(s)
		if err != nil || d < 0 {
			return tartarus.Errorf(tartarus.ErrInvalid, "wait %q: want a duration like 25s", s)
		}
		wait = min(d, maxPollWait)
	}
	have := map[string]bool{}
	for _, id := range strings.Split(r.URL.Query().Get(wire.QueryHave), ",") {
		if id != "" {
			have[id] = true
		}
	}
	ch, stop := c.listen(c.polls, node)
	defer stop()
	poll := c.cfg.Clock.NewTicker(c.cfg.PollInterval)
	defer poll.Stop()
	deadline := c.cfg.Clock.Now().Add(wait)
	for {
		all, err := c.st.PendingCommands(r.Context(), node, 64+len(have))
		if err != nil {
			return err
		}
		// Leave out what the agent has in hand already.
		pending := all[:0]
		for _, p := range all {
			if !have[p.ID] {
				pending = append(pending, p)
			}
		}
		if len(pending) > 0 || wait == 0 {
			out := wire.Commands{Commands: make([]wire.Command, 0, len(pending))}
			for _, p := range pending {
				var cmd wire.Command
				if err := json.Unmarshal(p.Body, &cmd); err != nil {
					return fmt.Errorf("command %s: %w", p.ID, err)
				}
				out.Commands = append(out.Commands, cmd)
			}
			writeJSON(w, out)
			return nil
		}
		if !c.cfg.Clock.Now().Before(deadline) {
			writeJSON(w, wire.Commands{Commands: []wire.Command{}})
			return nil
		}
		select {
		case <-r.Context().Done():
			return nil
		case <-ch:
		case <-poll.C():
		}
	}
}

func (c *Cluster) result(w http.ResponseWriter, r *http.Request, node string) error {
	id := r.PathValue("id")
	var res wire.Result
	if err := decodeBody(r, &res); err != nil {
		return err
	}
	if err := c.apply(r.Context(), node, res.Sandboxes); err != nil {
		return err
	}
	data, err := json.Marshal(res)
	if err != nil {
		return err
	}
	first, err := c.st.FinishCommand(r.Context(), node, id, data, c.cfg.Clock.Now().UTC())
	if err != nil {
		return err
	}
	if first {
		c.publish(r.Context(), Event{Kind: EventDone, ID: id})
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

func (c *Cluster) reports(w http.ResponseWriter, r *http.Request, node string) error {
	var reps wire.Reports
	if err := decodeBody(r, &reps); err != nil {
		return err
	}
	if reps.Node != "" && reps.Node != node {
		return tartarus.Errorf(tartarus.ErrPermissionDenied, "certificate names agent %s, reports say %q", node, reps.Node)
	}
	if err := c.apply(r.Context(), node, reps.Sandboxes); err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(v)
}

// AgentName returns the node an agent names itself in its certificate
// ("agent:NAME" or spiffe://…/agent/NAME), given the identity type and name
// a certificate check found.
func AgentName(typ, name string) (string, error) {
	if typ != "agent" {
		return "", tartarus.Errorf(tartarus.ErrPermissionDenied, "certificate names a %s, not an agent", typ)
	}
	if !tartarus.ValidName(strings.ToLower(name)) || name != strings.ToLower(name) {
		return "", tartarus.Errorf(tartarus.ErrInvalid, "agent name %q is not a valid node name", name)
	}
	return name, nil
}
