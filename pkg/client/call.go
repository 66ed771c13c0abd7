package client

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/url"
)

// Call sends a JSON request (in, when not nil) to an API path and decodes
// the JSON answer into out (when not nil): for routes without a method of
// their own here, such as seasons, forecasts and capacity (their types are
// in pkg/persephone and pkg/persephone/persephonesrv).
func (c *Client) Call(ctx context.Context, method, path string, q url.Values, in, out any) error {
	return c.callQuery(ctx, method, path, q, in, out)
}

// Upload sends body with its content type to an API path and decodes the
// JSON answer into out (when not nil): POST /v1/usage/import takes CSV.
func (c *Client) Upload(ctx context.Context, method, path, contentType string, body io.Reader, out any) error {
	req, err := c.request(ctx, method, path, nil, body)
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", contentType)
	resp, err := c.do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if out == nil {
		_, _ = io.Copy(io.Discard, resp.Body)
		return nil
	}
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		return fmt.Errorf("%s %s: decode answer: %w", method, path, err)
	}
	return nil
}
