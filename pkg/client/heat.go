package client

import (
	"context"
	"net/url"

	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus/api"
)

// Heat returns running sandboxes and admission queues by heat.
func (c *Client) Heat(ctx context.Context) (*api.HeatMetrics, error) {
	var m api.HeatMetrics
	return &m, c.call(ctx, "GET", "/v1/heat", nil, &m)
}

// ExplainHeat says how a create of template would be classified and why.
func (c *Client) ExplainHeat(ctx context.Context, template string) (*tartarus.SandboxHeat, error) {
	var e tartarus.SandboxHeat
	return &e, c.callQuery(ctx, "GET", "/v1/heat/explain", url.Values{"template": {template}}, nil, &e)
}

// Pools lists the node pools.
func (c *Client) Pools(ctx context.Context) ([]api.Pool, error) {
	var out api.PoolList
	return out.Pools, c.call(ctx, "GET", "/v1/pools", nil, &out)
}

// DefinePool creates or replaces a node pool.
func (c *Client) DefinePool(ctx context.Context, p *api.Pool) (*api.Pool, error) {
	var out api.Pool
	return &out, c.call(ctx, "POST", "/v1/pools", p, &out)
}

// RemovePool deletes a node pool.
func (c *Client) RemovePool(ctx context.Context, name string) error {
	return c.call(ctx, "DELETE", "/v1/pools/"+url.PathEscape(name), nil, nil)
}

// Classes lists the resource classes.
func (c *Client) Classes(ctx context.Context) ([]api.ResourceClass, error) {
	var out api.ClassList
	return out.Classes, c.call(ctx, "GET", "/v1/classes", nil, &out)
}
