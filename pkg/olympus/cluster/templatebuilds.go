package cluster

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/tartarus-sandbox/tartarus/pkg/client"
	"github.com/tartarus-sandbox/tartarus/pkg/hecatoncheir/wire"
	"github.com/tartarus-sandbox/tartarus/pkg/olympus"
	"github.com/tartarus-sandbox/tartarus/pkg/olympus/placement"
	"github.com/tartarus-sandbox/tartarus/pkg/store"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus/api"
	"github.com/tartarus-sandbox/tartarus/pkg/templates"
)

// Dockerfile builds and image imports on a cluster run on one agent that
// shares the snapshot store, chosen as a sandbox of the build's shape
// would be; what they make is then shared and recorded as a saved
// sandbox is (share). The replica that started a build follows its log
// and ends it ("done") only once the template is recorded, so a create
// that follows the log's end finds it on every node; another replica
// asked for the log relays the agent's (each such request follows the
// agent's log until the build ends).

// maxBuildLogWait bounds how long a replica follows one build's log.
const maxBuildLogWait = 3 * time.Hour

// TemplateBuilds returns what runs a replica's builds and imports
// (olympus.Config.Builds).
func (c *Cluster) TemplateBuilds() olympus.TemplateBuilds {
	return &clusterBuilds{c: c, logs: map[string]*relayedLog{}}
}

type clusterBuilds struct {
	c    *Cluster
	mu   sync.Mutex
	logs map[string]*relayedLog // build id → its log, as this replica follows it
}

var _ olympus.TemplateBuilds = (*clusterBuilds)(nil)

// builder chooses the node for a build or import of tenant's template
// ref: an up node that shares the snapshot store and has room for a
// sandbox of the shape asked. A build FROM a template the cluster
// records (from, non-nil) goes preferably to a node that has it; another
// node fetches it first, its own tag fromRef pointed at it.
func (b *clusterBuilds) builder(ctx context.Context, tenant, ref string, memoryMB, cpus int, from *wire.SharedTemplate, fromRef string) (string, *client.Client, error) {
	c := b.c
	if rec, err := c.st.Template(ctx, ref); err == nil && rec.Tenant != tenant {
		return "", nil, tartarus.Errorf(tartarus.ErrAlreadyExists, "template %s", ref)
	}
	nodes, err := c.st.Nodes(ctx)
	if err != nil {
		return "", nil, dbErr(err)
	}
	var sharing, having []*store.NodeRecord
	for _, n := range nodes {
		if n.State == store.NodeUp && !n.Draining && c.status(n).SharedSnapshots {
			sharing = append(sharing, n)
			if from != nil && slices.Contains(c.status(n).Templates, from.Image.Name) {
				having = append(having, n)
			}
		}
	}
	if len(sharing) == 0 {
		return "", nil, tartarus.Errorf(tartarus.ErrUnavailable, "no up node shares a snapshot store (agent --snapshots s3://…) to build templates every node can use")
	}
	pr := placement.Request{MemoryMB: memoryMB, CPUs: cpus}
	name, _, err := c.place(having, "", pr)
	fetch := err != nil && from != nil
	if err != nil {
		if name, _, err = c.place(sharing, "", pr); err != nil {
			return "", nil, err
		}
	}
	if fetch {
		q := ""
		if fromRef != "" {
			q = "?ref=" + url.QueryEscape(fromRef)
		}
		if err := c.nodeCall(ctx, name, tenant, "POST", fmt.Sprintf(wire.PathFetchTemplate, url.PathEscape(from.Image.Name))+q, from, nil, 1<<20); err != nil {
			return "", nil, fmt.Errorf("FROM %s: fetch it on node %s: %w", from.Image.Name, name, err)
		}
	}
	for _, n := range sharing {
		if n.Name == name {
			cl, err := client.New(n.Address, "", client.WithHTTPClient(c.cfg.AgentClient), client.WithHeader(wire.TenantHeader, tenant))
			return name, cl, err
		}
	}
	return "", nil, fmt.Errorf("placed on %s, which is not up", name)
}

// Import implements olympus.TemplateBuilds: the chosen agent imports the
// image, and the version it made is shared and tagged.
func (b *clusterBuilds) Import(ctx context.Context, tenant, name, source string, r io.Reader) (*tartarus.Image, error) {
	return b.importOn(ctx, tenant, name, func(cl *client.Client) (*tartarus.Image, error) {
		return cl.ImportImage(ctx, name, source, r)
	})
}

var _ olympus.RegistryImporter = (*clusterBuilds)(nil)

// ImportFromRegistry implements olympus.RegistryImporter: the chosen
// agent pulls the image from its registry (loopback is the agent's) and
// imports it, and the version it made is shared and tagged.
func (b *clusterBuilds) ImportFromRegistry(ctx context.Context, tenant, name, imageRef string, insecure bool) (*tartarus.Image, error) {
	return b.importOn(ctx, tenant, name, func(cl *client.Client) (*tartarus.Image, error) {
		return cl.ImportFromRegistry(ctx, name, imageRef, insecure)
	})
}

// importOn has the agent chosen for an import of template name run it
// through its client, then shares and tags the version it made.
func (b *clusterBuilds) importOn(ctx context.Context, tenant, name string, run func(*client.Client) (*tartarus.Image, error)) (*tartarus.Image, error) {
	ref, err := tagRef(name)
	if err != nil {
		return nil, err
	}
	node, cl, err := b.builder(ctx, tenant, ref, 0, 0, nil, "")
	if err != nil {
		return nil, err
	}
	img, err := run(cl)
	if err != nil {
		return nil, fmt.Errorf("import on node %s: %w", node, err)
	}
	return b.c.share(ctx, node, tenant, img.Name, ref)
}

// StartFromContext implements olympus.TemplateBuilds: the context is kept
// in a file under tmpDir while the replica reads the Dockerfile's FROM,
// then sent to the chosen agent, which runs the build; this replica
// follows its log.
func (b *clusterBuilds) StartFromContext(tenant string, p *api.TemplateBuildRequest, tarball io.Reader, tmpDir string) (api.TemplateBuild, error) {
	ctx := context.Background()
	ref, err := tagRef(p.Name)
	if err != nil {
		return api.TemplateBuild{}, err
	}
	// The context is kept in a file while the replica reads its FROM, so
	// that the build goes where that template is (or is fetched first).
	spool, err := os.CreateTemp(tmpDir, "tartarus-context-")
	if err != nil {
		return api.TemplateBuild{}, err
	}
	defer os.Remove(spool.Name())
	defer spool.Close()
	if _, err := io.Copy(spool, tarball); err != nil {
		return api.TemplateBuild{}, fmt.Errorf("build %s: read the context: %w", p.Name, err)
	}
	if _, err := spool.Seek(0, io.SeekStart); err != nil {
		return api.TemplateBuild{}, err
	}
	from, fromRef, err := b.buildFrom(ctx, tenant, templates.ContextFrom(spool, p.Dockerfile))
	if err != nil {
		return api.TemplateBuild{}, err
	}
	if _, err := spool.Seek(0, io.SeekStart); err != nil {
		return api.TemplateBuild{}, err
	}
	node, cl, err := b.builder(ctx, tenant, ref, p.MemoryMB, p.CPUs, from, fromRef)
	if err != nil {
		return api.TemplateBuild{}, err
	}
	started, err := cl.BuildTemplate(ctx, buildQuery(p), spool)
	if err != nil {
		return api.TemplateBuild{}, fmt.Errorf("build on node %s: %w", node, err)
	}
	l := newRelayedLog(tenant, started.Name)
	b.mu.Lock()
	b.logs[started.ID] = l
	b.mu.Unlock()
	go b.follow(cl, node, tenant, ref, started, l)
	return *started, nil
}

// follow relays a build's log from its node and, when it succeeded,
// shares and records the version before the log ends.
func (b *clusterBuilds) follow(cl *client.Client, node, tenant, ref string, started *api.TemplateBuild, l *relayedLog) {
	ctx, cancel := context.WithTimeout(context.Background(), maxBuildLogWait)
	defer cancel()
	end, err := cl.BuildLog(ctx, started.Name, started.ID, func(e api.TemplateBuildEvent) {
		if e.Type != "done" {
			l.add(e)
		}
	})
	if err != nil {
		l.add(api.TemplateBuildEvent{Time: b.c.cfg.Clock.Now().UTC(), Type: "done", Status: api.TemplateBuildFailed,
			Text: fmt.Sprintf("following the build on node %s: %v", node, err)})
		return
	}
	if end.Status == api.TemplateBuildSucceeded {
		version := strings.TrimPrefix(end.Text, "version ")
		if _, err := b.c.share(ctx, node, tenant, version, ref); err != nil {
			end.Status, end.Text = api.TemplateBuildFailed, err.Error()
		}
	}
	end.Time = b.c.cfg.Clock.Now().UTC()
	l.add(*end)
	// Finished logs are kept a while for late readers, then dropped.
	b.c.cfg.Clock.AfterFunc(time.Hour, func() {
		b.mu.Lock()
		delete(b.logs, started.ID)
		b.mu.Unlock()
	})
}

// buildFrom resolves a build's FROM to the template version the cluster
// records for tenant and the tag it names (NAME:TAG; "" for a version):
// nil when FROM names something else (a built-in template, an image
// tarball, one that depends on an ARG) and the build resolves it there.
func (b *clusterBuilds) buildFrom(ctx context.Context, tenant, from string) (*wire.SharedTemplate, string, error) {
	if from == "" || strings.Contains(from, "$") {
		return nil, "", nil
	}
	req := &tartarus.CreateRequest{Template: from}
	st, err := b.c.sharedTemplate(ctx, tenant, req)
	if errors.Is(err, tartarus.ErrNotFound) {
		return nil, "", nil // the build says so in its log, as on a single node
	}
	if err != nil || st == nil {
		return nil, "", err
	}
	if strings.Contains(from, "..") {
		return st, "", nil
	}
	ref, err := tagRef(from)
	if err != nil {
		return nil, "", err
	}
	return st, ref, nil
}

// BuildLog implements olympus.TemplateBuilds: the log this replica
// follows, or else the agent's, relayed from whichever node has the
// build.
func (b *clusterBuilds) BuildLog(tenant, name, id string) (api.TemplateBuildLog, error) {
	b.mu.Lock()
	l := b.logs[id]
	b.mu.Unlock()
	if l != nil {
		if l.tenant != tenant || l.name != name {
			return nil, tartarus.Errorf(tartarus.ErrNotFound, "build %s of template %s", id, name)
		}
		return l, nil
	}
	ctx := context.Background()
	nodes, err := b.c.st.Nodes(ctx)
	if err != nil {
		return nil, dbErr(err)
	}
	for _, n := range nodes {
		if n.State != store.NodeUp || !b.c.status(n).SharedSnapshots {
			continue
		}
		cl, err := client.New(n.Address, "", client.WithHTTPClient(b.c.cfg.AgentClient), client.WithHeader(wire.TenantHeader, tenant))
		if err != nil {
			return nil, err
		}
		l := newRelayedLog(tenant, name)
		first := make(chan error, 1)
		go func() {
			lctx, cancel := context.WithTimeout(ctx, maxBuildLogWait)
			defer cancel()
			_, err := cl.BuildLog(lctx, name, id, func(e api.TemplateBuildEvent) {
				l.add(e)
				select {
				case first <- nil:
				default:
				}
			})
			if err != nil {
				l.add(api.TemplateBuildEvent{Time: b.c.cfg.Clock.Now().UTC(), Type: "done", Status: api.TemplateBuildFailed, Text: err.Error()})
			}
			select {
			case first <- err:
			default:
			}
		}()
		if err := <-first; err == nil {
			return l, nil
		} else if !errors.Is(err, tartarus.ErrNotFound) {
			return nil, err
		}
	}
	return nil, tartarus.Errorf(tartarus.ErrNotFound, "build %s of template %s", id, name)
}

// buildQuery is the query of a forwarded build (olympus's buildRequest
// read it from the caller's).
func buildQuery(p *api.TemplateBuildRequest) url.Values {
	q := url.Values{"name": {p.Name}}
	set := func(k string, v int) {
		if v > 0 {
			q.Set(k, strconv.Itoa(v))
		}
	}
	if p.Dockerfile != "" {
		q.Set("dockerfile", p.Dockerfile)
	}
	set("memory_mb", p.MemoryMB)
	set("cpus", p.CPUs)
	set("timeout_s", p.TimeoutS)
	set("ready_timeout_s", p.ReadyTimeoutS)
	keys := make([]string, 0, len(p.Args))
	for k := range p.Args {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		q.Add("build_arg", k+"="+p.Args[k])
	}
	if p.Network != nil {
		q.Set("network", p.Network.Mode)
		for _, a := range p.Network.Allow {
			q.Add("allow", a)
		}
	}
	return q
}

// relayedLog is a build's log as a replica relays it.
type relayedLog struct {
	tenant, name string

	mu      sync.Mutex
	events  []api.TemplateBuildEvent
	over    bool
	changed chan struct{}
}

func newRelayedLog(tenant, name string) *relayedLog {
	return &relayedLog{tenant: tenant, name: name, changed: make(chan struct{})}
}

func (l *relayedLog) add(e api.TemplateBuildEvent) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.over {
		return
	}
	l.events = append(l.events, e)
	l.over = e.Type == "done"
	close(l.changed)
	l.changed = make(chan struct{})
}

// Events implements api.TemplateBuildLog.
func (l *relayedLog) Events(from int) ([]api.TemplateBuildEvent, bool, <-chan struct{}) {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []api.TemplateBuildEvent
	if from < len(l.events) {
		out = slices.Clone(l.events[from:])
	}
	return out, l.over, l.changed
}
