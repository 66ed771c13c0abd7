package phlegethon

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"testing"

	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

func node(name, state string, labels ...string) tartarus.NodeInfo {
	n := tartarus.NodeInfo{Name: name, State: state, Labels: map[string]string{}}
	for _, l := range labels {
		k, v, _ := strings.Cut(l, "=")
		n.Labels[k] = v
	}
	return n
}

func TestPoolValidate(t *testing.T) {
	p := &Pool{Name: "Big Pool", Heats: []HeatLevel{"tepid", HeatHot, HeatHot}, NodeSelector: map[string]string{"a b": "c"}, MinNodes: 3, MaxNodes: 2}
	err := p.Validate()
	for _, want := range []string{"name:", `"tepid"`, "hot named twice", `"a b"="c"`, "min_nodes 3 is above max_nodes 2"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%v lacks %q", err, want)
		}
	}
	if err := (&Pool{Name: "p"}).Validate(); err == nil || !strings.Contains(err.Error(), "heats") || !strings.Contains(err.Error(), "node_selector") {
		t.Errorf("empty pool: %v", err)
	}
}

func TestRoute(t *testing.T) {
	pools := []Pool{
		{Name: "small", Heats: []HeatLevel{HeatCold, HeatWarm}, NodeSelector: map[string]string{"tier": "small"}},
		{Name: "big", Heats: []HeatLevel{HeatHot}, NodeSelector: map[string]string{"tier": "big"}, MaxNodes: 2},
		{Name: "furnace", Heats: []HeatLevel{HeatInferno}, NodeSelector: map[string]string{"tier": "gpu"}},
	}
	nodes := []tartarus.NodeInfo{
		node("s1", "up", "tier=small"), node("s2", "down", "tier=small"),
		node("b3", "up", "tier=big"), node("b1", "up", "tier=big"), node("b2", "up", "tier=big"),
		node("g1", "up", "tier=gpu", "gpus=2"),
		node("x1", "up"), node("x0", ""),
	}
	for _, tc := range []struct {
		name  string
		pools []Pool
		heat  HeatLevel
		gpus  int
		want  []Tier
	}{
		{"cold: its pool, shared, then hotter pools", pools, HeatCold, 0, []Tier{
			{TierPool, "small", []string{"s1"}}, {TierShared, "", []string{"x0", "x1"}},
			{TierHotter, "big", []string{"b1", "b2"}}, {TierHotter, "furnace", []string{"g1"}}}},
		{"hot never borrows a cooler pool; MaxNodes caps big", pools, HeatHot, 0, []Tier{
			{TierPool, "big", []string{"b1", "b2"}}, {TierShared, "", []string{"x0", "x1"}}, {TierHotter, "furnace", []string{"g1"}}}},
		{"a GPU: only nodes that report one", pools, HeatInferno, 1, []Tier{{TierPool, "furnace", []string{"g1"}}}},
		{"no pools: every up node", nil, HeatWarm, 0, []Tier{{TierShared, "", []string{"b1", "b2", "b3", "g1", "s1", "x0", "x1"}}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := Route(tc.pools, tc.heat, tc.gpus, nodes)
			if err != nil || !reflect.DeepEqual(got, tc.want) {
				t.Errorf("got %+v, %v\nwant %+v", got, err, tc.want)
			}
		})
	}
}

func TestRouteRefusals(t *testing.T) {
	hotOnly := []Pool{{Name: "big", Heats: []HeatLevel{HeatHot}, NodeSelector: map[string]string{"tier": "big"}},
		{Name: "small", Heats: []HeatLevel{HeatCold}, NodeSelector: map[string]string{"tier": "small"}}}
	for _, tc := range []struct {
		name  string
		pools []Pool
		heat  HeatLevel
		gpus  int
		nodes []tartarus.NodeInfo
		class error
		want  string
	}{
		{"no nodes", nil, HeatCold, 0, nil, tartarus.ErrUnavailable, "no nodes registered"},
		{"all down", nil, HeatCold, 0, []tartarus.NodeInfo{node("a", "down"), node("b", "down")}, tartarus.ErrResourceExhausted, "no node is up for cold work (2 nodes, all down)"},
		{"no GPUs anywhere", nil, HeatInferno, 1, []tartarus.NodeInfo{node("a", "up"), node("b", "up", "gpus=x")}, tartarus.ErrResourceExhausted,
			"inferno work asks for 1 GPU and no node reports GPUs (label gpus) (2 nodes)"},
		{"its pool is down and the rest are cooler pools", hotOnly, HeatHot, 0, []tartarus.NodeInfo{node("b1", "down", "tier=big"), node("s1", "up", "tier=small")}, tartarus.ErrResourceExhausted,
			"no node for hot work: pool big (tier=big) has no usable node up, every up node is in a pool of a cooler heat (2 nodes)"},
		{"no pool serves it", hotOnly, HeatInferno, 0, []tartarus.NodeInfo{node("s1", "up", "tier=small")}, tartarus.ErrResourceExhausted,
			"no node for inferno work: no pool serves inferno"},
		{"bad heat", nil, "tepid", 0, []tartarus.NodeInfo{node("a", "up")}, tartarus.ErrInvalid, "tepid"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Route(tc.pools, tc.heat, tc.gpus, tc.nodes)
			if !errors.Is(err, tc.class) || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("got %v, want %v with %q", err, tc.class, tc.want)
			}
		})
	}
}

func TestPools(t *testing.T) {
	ctx := context.Background()
	store := &MemJournal{}
	ps, err := NewPools(ctx, store)
	if err != nil {
		t.Fatal(err)
	}
	p := &Pool{Name: "big", Heats: []HeatLevel{HeatHot}, NodeSelector: map[string]string{"tier": "big"}, MinNodes: 1, MaxNodes: 4, CurrentNodes: 7}
	if err := ps.Define(ctx, p); err != nil {
		t.Fatal(err)
	}
	p.NodeSelector["tier"] = "changed" // the caller's map is not kept
	if err := ps.Define(ctx, p); !errors.Is(err, tartarus.ErrAlreadyExists) {
		t.Errorf("twice: %v", err)
	}
	if err := ps.Define(ctx, &Pool{Name: "bad"}); !errors.Is(err, tartarus.ErrInvalid) {
		t.Errorf("bad: %v", err)
	}
	if err := ps.Define(ctx, nil); !errors.Is(err, tartarus.ErrInvalid) {
		t.Errorf("nil: %v", err)
	}
	got := ps.List()
	if len(got) != 1 || got[0].NodeSelector["tier"] != "big" || got[0].CurrentNodes != 0 {
		t.Errorf("list %+v", got)
	}
	// A second Pools over the same store sees the pool (it is durable).
	ps2, err := NewPools(ctx, store)
	if err != nil || len(ps2.List()) != 1 {
		t.Fatalf("reload %v, %v", ps2.List(), err)
	}
	if err := ps.Remove(ctx, "big"); err != nil {
		t.Fatal(err)
	}
	if err := ps.Remove(ctx, "big"); !errors.Is(err, tartarus.ErrNotFound) {
		t.Errorf("remove twice: %v", err)
	}
	for i := range MaxPools {
		if err := ps.Define(ctx, &Pool{Name: fmt.Sprintf("p%d", i), Heats: []HeatLevel{HeatCold}, NodeSelector: map[string]string{"a": "b"}}); err != nil {
			t.Fatal(err)
		}
	}
	if err := ps.Define(ctx, &Pool{Name: "one-more", Heats: []HeatLevel{HeatCold}, NodeSelector: map[string]string{"a": "b"}}); !errors.Is(err, tartarus.ErrResourceExhausted) {
		t.Errorf("over the limit: %v", err)
	}
}
