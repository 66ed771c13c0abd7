package cluster

import (
	"slices"
	"strings"

	"github.com/tartarus-sandbox/tartarus/pkg/olympus/placement"
	"github.com/tartarus-sandbox/tartarus/pkg/store"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

// candidates turns the up nodes into placement's view, leaving out those
// without the template (and saying which were left out, for the refusal).
func (c *Cluster) candidates(nodes []*store.NodeRecord, template string) ([]placement.Node, []string) {
	out := make([]placement.Node, 0, len(nodes))
	var without []string
	for _, n := range nodes {
		st := c.status(n)
		if template != "" && !slices.Contains(st.Templates, template) {
			without = append(without, n.Name)
			continue
		}
		pn := placement.Node{Name: n.Name, Labels: st.Labels, CPUs: st.CPUs, MemoryMB: st.MemoryMB,
			UsedCPUs: n.UsedCPUs, UsedMemoryMB: n.UsedMemoryMB, Sandboxes: n.Sandboxes}
		for _, fp := range st.Runtimes {
			pn.Runtimes = append(pn.Runtimes, placement.Runtime{Name: fp.Runtime, Available: fp.Available,
				Reason: fp.Reason, MaxCPUs: fp.MaxCPUs, MaxMemoryMB: fp.MaxMemoryMB})
		}
		out = append(out, pn)
	}
	return out, without
}

// place chooses a node for a sandbox of req's shape.
func (c *Cluster) place(nodes []*store.NodeRecord, template string, req placement.Request) (string, string, error) {
	if len(nodes) == 0 {
		return "", "", tartarus.Errorf(tartarus.ErrUnavailable, "no node agent is up (`tartarus node ls` shows those registered)")
	}
	cands, without := c.candidates(nodes, template)
	cands = offQuarantineNodes(cands, req)
	if len(cands) == 0 && len(without) > 0 {
		return "", "", tartarus.Errorf(tartarus.ErrNotFound, "template %s: no up node has it built (%s)", template, strings.Join(without, ", "))
	}
	name, err := placement.Place(cands, req, c.cfg.Strategy)
	if err != nil {
		return "", "", err
	}
	rt := req.Runtime
	if rt == "" {
		for _, n := range cands {
			if n.Name == name && len(n.Runtimes) > 0 {
				rt = n.Runtimes[0].Name
			}
		}
	}
	return name, rt, nil
}

// warm returns a sandbox id waiting in node's warm pool of key that no
// sandbox has taken yet, or "". The node's list is as of its last
// heartbeat: an id it handed out since is taken already, and one it
// dropped since is created afresh under that id.
func (c *Cluster) warm(nodes []*store.NodeRecord, node, key string, taken func(string) bool) string {
	for _, n := range nodes {
		if n.Name != node {
			continue
		}
		for _, id := range c.status(n).Warm[key] {
			if tartarus.ValidName(id) && !taken(id) {
				return id
			}
		}
	}
	return ""
}

func placementRequest(req *tartarus.CreateRequest) placement.Request {
	return placement.Request{Runtime: req.Runtime, CPUs: req.CPUs, MemoryMB: req.MemoryMB, Labels: req.NodeLabels}
}
