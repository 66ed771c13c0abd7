package client

import (
	"context"

	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus/api"
)

// SetNetwork replaces a sandbox's network policy and limits; a running
// sandbox's new connections see it at once.
func (c *Client) SetNetwork(ctx context.Context, id string, n *tartarus.NetworkSpec) (*tartarus.Sandbox, error) {
	var out tartarus.Sandbox
	return &out, c.call(ctx, "PUT", sandboxPath(id, "/network"), n, &out)
}

// NetworkLog returns a sandbox's connection log.
func (c *Client) NetworkLog(ctx context.Context, id string) (*tartarus.NetworkLog, error) {
	var out tartarus.NetworkLog
	return &out, c.call(ctx, "GET", sandboxPath(id, "/network/log"), nil, &out)
}

// PortToken returns the sandbox's port access token (docs/network.md).
func (c *Client) PortToken(ctx context.Context, id string) (*api.PortToken, error) {
	var out api.PortToken
	return &out, c.call(ctx, "GET", sandboxPath(id, "/ports/token"), nil, &out)
}
