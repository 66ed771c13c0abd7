package client

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/url"

	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus/api"
)

// BuildTemplate starts a Dockerfile build: context is the tar stream of
// the build context (pkg/templates' PackContext makes one) and q the build's
// parameters (name, dockerfile, build_arg, memory_mb, cpus, timeout_s,
// network, allow). Follow it with BuildLog.
func (c *Client) BuildTemplate(ctx context.Context, q url.Values, context io.Reader) (*api.TemplateBuild, error) {
	var out api.TemplateBuild
	if err := c.postTar(ctx, "/v1/templates", q, context, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// postTar sends body, a tar stream, to path and decodes the answer into out.
func (c *Client) postTar(ctx context.Context, path string, q url.Values, body io.Reader, out any) error {
	req, err := c.request(ctx, "POST", path, q, body)
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/x-tar")
	resp, err := c.do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		return fmt.Errorf("POST %s: decode answer: %w", path, err)
	}
	return nil
}

// BuildLog calls each for every event of a build, as they come, until the
// build ends; it returns the last event ("done").
func (c *Client) BuildLog(ctx context.Context, name, id string, each func(api.TemplateBuildEvent)) (*api.TemplateBuildEvent, error) {
	req, err := c.request(ctx, "GET", "/v1/templates/"+url.PathEscape(name)+"/builds/"+url.PathEscape(id), nil, nil)
	if err != nil {
		return nil, err
	}
	resp, err := c.do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 4<<20)
	for sc.Scan() {
		var e api.TemplateBuildEvent
		if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
			return nil, fmt.Errorf("build log: %w", err)
		}
		if each != nil {
			each(e)
		}
		if e.Type == "done" {
			return &e, nil
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("build log: %w", err)
	}
	return nil, fmt.Errorf("build log of %s ended before the build did", id)
}

// DeleteTemplate removes one of the tenant's templates.
func (c *Client) DeleteTemplate(ctx context.Context, name string) error {
	return c.call(ctx, "DELETE", "/v1/templates/"+url.PathEscape(name), nil, nil)
}

// ImportFromRegistry makes template name of image ref (HOST[:PORT]/REPO[:TAG|@DIGEST]),
// which the server pulls from its registry; insecure lets it use plain
// HTTP to a registry that is not on its own loopback.
func (c *Client) ImportFromRegistry(ctx context.Context, name, ref string, insecure bool) (*tartarus.Image, error) {
	q := url.Values{"name": {name}, "ref": {ref}}
	if insecure {
		q.Set("insecure", "true")
	}
	var out tartarus.Image
	if err := c.callQuery(ctx, "POST", "/v1/templates/import", q, nil, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// ImportImage makes template name of an image tarball (`docker save`
// output, or an OCI image layout as a tar); source names the image.
func (c *Client) ImportImage(ctx context.Context, name, source string, image io.Reader) (*tartarus.Image, error) {
	var out tartarus.Image
	if err := c.postTar(ctx, "/v1/templates/import", url.Values{"name": {name}, "source": {source}}, image, &out); err != nil {
		return nil, err
	}
	return &out, nil
}
