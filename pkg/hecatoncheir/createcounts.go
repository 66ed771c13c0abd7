package hecatoncheir

import "context"

// NodeCreateCounts is CreateCounts by node, as a cluster reports it: this
// node's only. Persephone's usage records split launches into warm and
// cold with it.
func (a *Agent) NodeCreateCounts(ctx context.Context) (map[string]map[string]map[string]int, error) {
	return map[string]map[string]map[string]int{a.cfg.Node: a.CreateCounts()}, nil
}
