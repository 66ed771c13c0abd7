package client

import (
	"context"
	"io"
	"net/http"
	"net/url"

	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus/api"
)

func quarantinePath(id, rest string) string { return "/v1/quarantine/" + url.PathEscape(id) + rest }

// Quarantine holds a sandbox: its owner loses exec and files, examiners
// keep them.
func (c *Client) Quarantine(ctx context.Context, id string, body *api.QuarantineBody) (*tartarus.QuarantineRecord, error) {
	var out tartarus.QuarantineRecord
	return &out, c.call(ctx, "POST", sandboxPath(id, "/quarantine"), body, &out)
}

// ListQuarantined lists quarantine records: held ones by default; q may
// name status, reason, sandbox, tenant ("*" for every tenant) and all.
func (c *Client) ListQuarantined(ctx context.Context, q url.Values) ([]*tartarus.QuarantineRecord, error) {
	var out api.QuarantineList
	return out.Quarantines, c.callQuery(ctx, "GET", "/v1/quarantine", q, nil, &out)
}

// QuarantineDetail returns a sandbox's latest quarantine and its reports.
func (c *Client) QuarantineDetail(ctx context.Context, id string) (*api.QuarantineDetail, error) {
	var out api.QuarantineDetail
	return &out, c.call(ctx, "GET", quarantinePath(id, ""), nil, &out)
}

// Examine examines a held sandbox and returns the report.
func (c *Client) Examine(ctx context.Context, id string) (*tartarus.ExaminationReport, error) {
	var out tartarus.ExaminationReport
	return &out, c.call(ctx, "POST", quarantinePath(id, "/examine"), struct{}{}, &out)
}

// ApproveRelease releases a held sandbox (the caller approves it).
func (c *Client) ApproveRelease(ctx context.Context, id string, body *api.ApproveBody) (*tartarus.QuarantineRecord, error) {
	var out tartarus.QuarantineRecord
	return &out, c.call(ctx, "POST", quarantinePath(id, "/release"), body, &out)
}

// DestroyQuarantined ends a held sandbox (reason policy_violation);
// its evidence is kept.
func (c *Client) DestroyQuarantined(ctx context.Context, id string) (*tartarus.QuarantineRecord, error) {
	var out tartarus.QuarantineRecord
	return &out, c.call(ctx, "POST", quarantinePath(id, "/destroy"), struct{}{}, &out)
}

// HibernateQuarantined puts a held sandbox to sleep, still held.
func (c *Client) HibernateQuarantined(ctx context.Context, id string) (*tartarus.QuarantineRecord, error) {
	var out tartarus.QuarantineRecord
	return &out, c.call(ctx, "POST", quarantinePath(id, "/hibernate"), struct{}{}, &out)
}

// WakeQuarantined wakes a held sandbox, contained again.
func (c *Client) WakeQuarantined(ctx context.Context, id string) (*tartarus.QuarantineRecord, error) {
	var out tartarus.QuarantineRecord
	return &out, c.call(ctx, "POST", quarantinePath(id, "/wake"), struct{}{}, &out)
}

// Evidence streams one piece of evidence; the header X-Checksum carries
// its "sha256:…" checksum. The caller closes the body.
func (c *Client) Evidence(ctx context.Context, id, evidenceID string) (io.ReadCloser, http.Header, error) {
	req, err := c.request(ctx, "GET", quarantinePath(id, "/evidence/"+url.PathEscape(evidenceID)), nil, nil)
	if err != nil {
		return nil, nil, err
	}
	resp, err := c.do(req)
	if err != nil {
		return nil, nil, err
	}
	return resp.Body, resp.Header, nil
}

// QuarantinePolicy returns the quarantine policy in force.
func (c *Client) QuarantinePolicy(ctx context.Context) (*tartarus.QuarantinePolicy, error) {
	var out tartarus.QuarantinePolicy
	return &out, c.call(ctx, "GET", "/v1/quarantine/policy", nil, &out)
}

// SetQuarantinePolicy replaces the quarantine policy.
func (c *Client) SetQuarantinePolicy(ctx context.Context, p *tartarus.QuarantinePolicy) (*tartarus.QuarantinePolicy, error) {
	var out tartarus.QuarantinePolicy
	return &out, c.call(ctx, "PUT", "/v1/quarantine/policy", p, &out)
}
