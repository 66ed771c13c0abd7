package cluster

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/tartarus-sandbox/tartarus/pkg/cerberus"
	"github.com/tartarus-sandbox/tartarus/pkg/client"
	"github.com/tartarus-sandbox/tartarus/pkg/hecatoncheir/wire"
	"github.com/tartarus-sandbox/tartarus/pkg/images"
	"github.com/tartarus-sandbox/tartarus/pkg/store"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

// Tenant templates on a cluster. A version is made on one agent (a
// sandbox saved there); the replica then has that agent upload it to the
// snapshot store the nodes share and records it in the database (owner,
// name, tags, digest, size, the upload's checksum). The database is the
// truth for tags: a create that names NAME[:TAG] is resolved here to the
// version, placed preferably on an agent that has the version already,
// else on any agent that shares the store, which fetches and checks it
// before it creates (wire.Command.Template).

// maxShareWait bounds an agent's upload of a template version.
const maxShareWait = 30 * time.Minute

// SaveTemplate implements olympus.TemplateSaver: the agent holding the
// sandbox saves it, uploads the new version to the shared store, and the
// cluster records it and moves the tag.
func (c *Cluster) SaveTemplate(ctx context.Context, id, name string) (*tartarus.Image, error) {
	sb, err := c.st.Get(ctx, id)
	if err != nil {
		return nil, dbErr(err)
	}
	ref, err := tagRef(name)
	if err != nil {
		return nil, err
	}
	if rec, err := c.st.Template(ctx, ref); err == nil && rec.Tenant != sb.Tenant {
		return nil, tartarus.Errorf(tartarus.ErrAlreadyExists, "template %s", name)
	}
	cl, actx, done, err := c.agent(ctx, id)
	if err != nil {
		return nil, err
	}
	img, err := cl.SaveTemplate(actx, id, name)
	done()
	if err != nil {
		return nil, err
	}
	return c.share(ctx, sb.Node, sb.Tenant, img.Name, ref)
}

// share has node upload tenant's template version to the shared store,
// records it with tag ref pointing at it, and drops the version the tag
// left if nothing needs it.
func (c *Cluster) share(ctx context.Context, node, tenant, version, ref string) (*tartarus.Image, error) {
	// The work outlives a cancelled request: the version exists already.
	ctx = context.WithoutCancel(ctx)
	var st wire.SharedTemplate
	sctx, cancel := context.WithTimeout(ctx, maxShareWait)
	err := c.nodeCall(sctx, node, tenant, http.MethodPost, fmt.Sprintf(wire.PathShareTemplate, url.PathEscape(version)), nil, &st, 1<<20)
	cancel()
	if err != nil {
		return nil, fmt.Errorf("template %s: store it for the other nodes: %w", version, err)
	}
	if st.Image.Name != version || st.Image.Tenant != tenant {
		return nil, fmt.Errorf("template %s: node %s described %s of tenant %s", version, node, st.Image.Name, st.Image.Tenant)
	}
	raw, err := json.Marshal(&st)
	if err != nil {
		return nil, err
	}
	plain, _, _ := strings.Cut(ref, ":")
	old, err := c.st.PutTemplate(ctx, &store.TemplateRecord{Version: version, Tenant: tenant, Name: plain,
		SizeBytes: st.Image.SizeBytes, Record: raw, CreatedAt: c.cfg.Clock.Now().UTC()}, ref)
	if err != nil {
		return nil, dbErr(err)
	}
	if old != "" && old != version {
		c.dropVersion(ctx, tenant, old)
	}
	img := st.Image
	img.Tags = []string{ref}
	c.log.Info("template recorded", "template", version, "tag", ref, "tenant", tenant, "node", node, "bytes", st.RootFS.Size)
	return &img, nil
}

// tagRef is NAME:TAG for name (NAME is NAME:latest).
func tagRef(name string) (string, error) {
	plain, tag, err := images.ParseTemplateRef(name)
	if err != nil {
		return "", err
	}
	return plain + ":" + tag, nil
}

// sharedTemplate resolves req.Template when it names a tenant template the
// cluster keeps: req.Template becomes the version (which the sandbox
// records, so that a tag that moves later does not change it) and the
// version's record is returned for the create command; the template's
// env goes under the request's. Another tenant's
// template is not found, as on a single node; nil, nil for a template the
// cluster keeps no record of (built in, or one node's own).
func (c *Cluster) sharedTemplate(ctx context.Context, tenant string, req *tartarus.CreateRequest) (*wire.SharedTemplate, error) {
	name := req.Template
	if name == "" {
		return nil, nil
	}
	key := name
	if !strings.Contains(name, "..") {
		ref, err := tagRef(name)
		if err != nil {
			return nil, nil // not a name a tag can have: a built-in or a node's own
		}
		key = ref
	}
	rec, err := c.st.Template(ctx, key)
	if errors.Is(err, tartarus.ErrNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, dbErr(err)
	}
	var st wire.SharedTemplate
	if err := json.Unmarshal(rec.Record, &st); err != nil {
		return nil, fmt.Errorf("template %s: its record: %w", name, err)
	}
	if !st.Image.VisibleTo(tenant) {
		return nil, tartarus.Errorf(tartarus.ErrNotFound, "template %s", name)
	}
	req.Template = rec.Version
	if len(st.Image.Env) > 0 {
		// The template's ENV, under the request's own, as a single node
		// sets it.
		env := maps.Clone(st.Image.Env)
		maps.Copy(env, req.Env)
		req.Env = env
	}
	return &st, nil
}

// placeShared places a create of a shared template version on a node that
// does not have it yet but can fetch it (one that shares the snapshot
// store), when no node that has it can take the sandbox.
func (c *Cluster) placeShared(nodes []*store.NodeRecord, req *tartarus.CreateRequest, plan *heatPlan) (string, string, error) {
	var sharing []*store.NodeRecord
	for _, n := range nodes {
		if c.status(n).SharedSnapshots {
			sharing = append(sharing, n)
		}
	}
	if len(sharing) == 0 {
		return "", "", tartarus.Errorf(tartarus.ErrUnavailable, "template %s: no up node has it or shares the snapshot store to fetch it", req.Template)
	}
	anywhere := *req
	anywhere.Template = ""
	return c.placeTiers(sharing, &anywhere, plan)
}

// sharedImages adds the cluster's recorded template versions to byName
// (the templates the nodes list), with the tags the database has: a
// version is listed once, however many nodes have it.
func (c *Cluster) sharedImages(ctx context.Context, byName map[string]*tartarus.Image) error {
	recs, err := c.st.Templates(ctx)
	if err != nil {
		return dbErr(err)
	}
	for _, rec := range recs {
		var st wire.SharedTemplate
		if err := json.Unmarshal(rec.Record, &st); err != nil {
			c.log.Warn("template record unreadable", "template", rec.Version, "err", err)
			continue
		}
		img := st.Image
		img.Tags = rec.Tags
		if have := byName[rec.Version]; have != nil {
			img.Public = img.Public || have.Public
		}
		byName[rec.Version] = &img
	}
	return nil
}

// DeleteTemplate implements olympus.TemplateDeleter: name is a tag
// (NAME[:TAG]) or a version. A version a sandbox that is not over uses is
// refused (409), as is a version a tag points at, named by itself. A
// version no tag points at any more is dropped from every node and from
// the shared store. A template the cluster keeps no record of (one
// node's own, a build's cache step) is deleted on the nodes that list it.
func (c *Cluster) DeleteTemplate(ctx context.Context, name string) error {
	key := name
	if !strings.Contains(name, "..") {
		ref, err := tagRef(name)
		if err == nil {
			key = ref
		}
	}
	rec, err := c.st.Template(ctx, key)
	if errors.Is(err, tartarus.ErrNotFound) {
		return c.deleteOnNodes(ctx, name)
	}
	if err != nil {
		return dbErr(err)
	}
	if n, err := c.templateUsers(ctx, rec.Version); err != nil {
		return err
	} else if n > 0 {
		return tartarus.Errorf(tartarus.ErrFailedPrecondition, "template %s (version %s) is used by %d sandbox(es); delete it once they end", name, rec.Version, n)
	}
	if key == rec.Version {
		all, err := c.st.Templates(ctx)
		if err != nil {
			return dbErr(err)
		}
		for _, r := range all {
			if r.Version == rec.Version && len(r.Tags) > 0 {
				return tartarus.Errorf(tartarus.ErrFailedPrecondition, "template %s is tagged (%s); delete its tags", name, strings.Join(r.Tags, ", "))
			}
		}
	} else if err := c.st.DeleteTemplateTag(ctx, key); err != nil {
		return dbErr(err)
	}
	c.dropVersion(ctx, rec.Tenant, rec.Version)
	return nil
}

// templateUsers counts the sandboxes that are not over made from version.
func (c *Cluster) templateUsers(ctx context.Context, version string) (int, error) {
	live, err := c.st.List(ctx, tartarus.SandboxFilter{States: tartarus.LiveStates()})
	if err != nil {
		return 0, dbErr(err)
	}
	n := 0
	for _, sb := range live {
		if sb.Template == version {
			n++
		}
	}
	return n, nil
}

// dropVersion forgets tenant's version once neither a tag nor a sandbox
// needs it, and has every up node drop its copy and the shared store's;
// it stays recorded otherwise (deleted by name later). Failures are
// logged: a node that was down keeps an unused copy.
func (c *Cluster) dropVersion(ctx context.Context, tenant, version string) {
	if n, err := c.templateUsers(ctx, version); err != nil || n > 0 {
		return
	}
	gone, err := c.st.DeleteTemplateVersion(ctx, version)
	if err != nil || !gone {
		if err != nil {
			c.log.Warn("forget template version", "template", version, "err", err)
		}
		return
	}
	nodes, err := c.st.Nodes(ctx)
	if err != nil {
		c.log.Warn("drop template version from the nodes", "template", version, "err", err)
		return
	}
	objects := "1" // the first node that answers deletes the shared copy
	for _, n := range nodes {
		if n.State != store.NodeUp || !c.status(n).SharedSnapshots {
			continue
		}
		path := fmt.Sprintf(wire.PathShareTemplate, url.PathEscape(version)) + "?objects=" + objects
		if err := c.nodeCall(ctx, n.Name, tenant, http.MethodDelete, path, nil, nil, 1<<20); err != nil {
			c.log.Warn("drop template version on a node", "template", version, "node", n.Name, "err", err)
			continue
		}
		objects = "0"
	}
	c.log.Info("template version dropped", "template", version, "tenant", tenant)
}

// deleteOnNodes deletes a template the cluster keeps no record of on every
// up node that lists it.
func (c *Cluster) deleteOnNodes(ctx context.Context, name string) error {
	nodes, err := c.st.Nodes(ctx)
	if err != nil {
		return dbErr(err)
	}
	tenant := "cluster"
	if who := cerberus.IdentityFrom(ctx); who != nil && who.TenantID != "" {
		tenant = who.TenantID // the server checked the template is the caller's
	}
	found := false
	for _, n := range nodes {
		if n.State != store.NodeUp {
			continue
		}
		listed := false
		for _, t := range c.status(n).Templates {
			listed = listed || t == name
		}
		if !listed {
			continue
		}
		found = true
		cl, err := client.New(n.Address, "", client.WithHTTPClient(c.cfg.AgentClient), client.WithHeader(wire.TenantHeader, tenant))
		if err != nil {
			return err
		}
		if err := cl.DeleteTemplate(ctx, name); err != nil && !errors.Is(err, tartarus.ErrNotFound) {
			return fmt.Errorf("node %s: %w", n.Name, err)
		}
	}
	if !found {
		return tartarus.Errorf(tartarus.ErrNotFound, "template %s", name)
	}
	return nil
}

// nodeCall calls node's node API for tenant with in as the JSON body (nil:
// none), decoding at most limit bytes of a JSON answer into out (nil: none
// wanted).
func (c *Cluster) nodeCall(ctx context.Context, node, tenant, method, path string, in, out any, limit int64) error {
	n, err := c.st.Node(ctx, node)
	if err != nil {
		return dbErr(err)
	}
	if n.State != store.NodeUp {
		return tartarus.Errorf(tartarus.ErrUnavailable, "node %s is %s", node, n.State)
	}
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, strings.TrimRight(n.Address, "/")+path, body)
	if err != nil {
		return err
	}
	req.Header.Set(wire.TenantHeader, tenant)
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.cfg.AgentClient.Do(req)
	if err != nil {
		return fmt.Errorf("node %s: %w", node, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		return nodeError(resp)
	}
	if out == nil {
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, limit))
		return nil
	}
	b, err := io.ReadAll(io.LimitReader(resp.Body, limit+1))
	if err != nil {
		return fmt.Errorf("node %s: %w", node, err)
	}
	if int64(len(b)) > limit {
		return fmt.Errorf("node %s: %s %s: answer over %d bytes", node, method, path, limit)
	}
	if err := json.Unmarshal(b, out); err != nil {
		return fmt.Errorf("node %s: %s %s: %w", node, method, path, err)
	}
	return nil
}
