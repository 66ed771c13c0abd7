package persephone

import (
	"maps"
	"slices"
)

// NodeRoom is one agent of a cluster as the pool split sees it.
type NodeRoom struct {
	Name string
	// Room is how many warm sandboxes the agent can hold in all: its free
	// capacity (counting what its own pools hold now as free) in sandboxes
	// of the pool's shape.
	Room int
	// Recent counts the agent's launches of the template over the recent
	// window: when the pool shrinks, the agents that launched fewest give
	// up their share first.
	Recent int
}

// NodePool is one agent's share of one template's warm pool in a cluster:
// the target it was sent and fills to, the sandboxes ready in it, and its
// creates of the template since it started, by whether they found a warm
// sandbox.
type NodePool struct {
	Node        string `json:"node"`
	Template    string `json:"template"`
	Target      int    `json:"target"`
	Ready       int    `json:"ready"`
	WarmCreates int    `json:"warm_creates"`
	ColdCreates int    `json:"cold_creates"`
}

// SplitPool spreads a template's pool target of total sandboxes over the
// agents that can hold them, sticking to the previous split prev (by
// agent) so that the agents do not destroy and remake warm sandboxes each
// time their free room moves a little:
//
//   - an agent keeps its previous share as far as its room allows (an agent
//     gone from nodes loses its share);
//   - while the shares sum to more than total, one comes off the agent
//     that launched the fewest of the template recently, among those
//     the agent with the least room left (the per-agent side of scale-in:
//     an agent keeps its warm sandboxes while it uses them);
//   - while they sum to less, one goes to the agent with the most room
//     left, until total is reached or no agent has room.
//
// Ties go to the agent whose name sorts first. Agents with a share of 0
// are left out of the result.
func SplitPool(total int, prev map[string]int, nodes []NodeRoom) map[string]int {
	nodes = slices.Clone(nodes)
	slices.SortFunc(nodes, func(a, b NodeRoom) int {
		switch {
		case a.Name < b.Name:
			return -1
		case a.Name > b.Name:
			return 1
		}
		return 0
	})
	share := make(map[string]int, len(nodes))
	sum := 0
	for _, n := range nodes {
		s := max(0, min(prev[n.Name], n.Room))
		share[n.Name] = s
		sum += s
	}
	left := func(n NodeRoom) int { return n.Room - share[n.Name] }
	for sum > total {
		pick := -1
		for i, n := range nodes {
			if share[n.Name] == 0 {
				continue
			}
			if pick < 0 || n.Recent < nodes[pick].Recent || n.Recent == nodes[pick].Recent && left(n) < left(nodes[pick]) {
				pick = i
			}
		}
		share[nodes[pick].Name]--
		sum--
	}
	for sum < total {
		pick := -1
		for i, n := range nodes {
			if left(n) > 0 && (pick < 0 || left(n) > left(nodes[pick])) {
				pick = i
			}
		}
		if pick < 0 {
			break
		}
		share[nodes[pick].Name]++
		sum++
	}
	maps.DeleteFunc(share, func(_ string, v int) bool { return v == 0 })
	return share
}
