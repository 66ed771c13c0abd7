package persephone

import (
	"maps"
	"testing"
)

func TestSplitPool(t *testing.T) {
	two := []NodeRoom{{"a", 10, 0}, {"b", 10, 0}}
	cases := []struct {
		name  string
		total int
		prev  map[string]int
		nodes []NodeRoom
		want  map[string]int
	}{
		{"even, ties to the first name", 3, nil, two, map[string]int{"a": 2, "b": 1}},
		{"by room", 4, nil, []NodeRoom{{"a", 2, 0}, {"b", 10, 0}}, map[string]int{"b": 4}},
		{"by room, both", 10, nil, []NodeRoom{{"a", 4, 0}, {"b", 10, 0}}, map[string]int{"a": 2, "b": 8}},
		{"sticks to the previous split", 3, map[string]int{"b": 3}, two, map[string]int{"b": 3}},
		{"grows onto the emptier agent", 5, map[string]int{"b": 3}, two, map[string]int{"a": 2, "b": 3}},
		{"shrinks on the fuller agent", 2, map[string]int{"a": 1, "b": 3}, []NodeRoom{{"a", 10, 0}, {"b", 4, 0}}, map[string]int{"a": 1, "b": 1}},
		{"shrinks on the agent that launched fewest", 2, map[string]int{"a": 2, "b": 2}, []NodeRoom{{"a", 10, 5}, {"b", 4, 0}}, map[string]int{"a": 2}},
		{"an agent gone: its share moves", 3, map[string]int{"a": 2, "b": 1}, []NodeRoom{{"b", 10, 0}}, map[string]int{"b": 3}},
		{"previous share beyond room", 3, map[string]int{"a": 3}, []NodeRoom{{"a", 1, 0}, {"b", 10, 0}}, map[string]int{"a": 1, "b": 2}},
		{"not enough room", 30, nil, []NodeRoom{{"a", 2, 0}, {"b", 3, 0}}, map[string]int{"a": 2, "b": 3}},
		{"no room at all", 3, nil, []NodeRoom{{"a", 0, 0}, {"b", -4, 0}}, map[string]int{}},
		{"no agents", 3, map[string]int{"a": 1}, nil, map[string]int{}},
		{"zero", 0, map[string]int{"a": 1}, two, map[string]int{}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if got := SplitPool(c.total, c.prev, c.nodes); !maps.Equal(got, c.want) {
				t.Errorf("SplitPool(%d, %v, %v) = %v, want %v", c.total, c.prev, c.nodes, got, c.want)
			}
		})
	}
}
