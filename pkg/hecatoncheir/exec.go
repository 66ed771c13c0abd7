package hecatoncheir

import (
	"context"
	"slices"
	"sync"

	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

// Exec runs a command in a running sandbox, waking it first if it is
// hibernated. The sandbox's environment is applied under req.Env here too,
// so that it holds in sandboxes restored from a snapshot taken without it
// (a warm-pool sandbox). An exec without a cwd or user gets its
// template's WORKDIR and USER.
func (a *Agent) Exec(ctx context.Context, id string, req *tartarus.ExecRequest) (*tartarus.ExecResult, error) {
	sb, rt, err := a.awake(ctx, id)
	if err != nil {
		return nil, err
	}
	defer a.work.begin(id)()
	defer a.touch(ctx, id)
	if cwd, user := a.withTemplateDefaults(ctx, sb, req.Cwd, req.User); len(sb.Env) > 0 || cwd != req.Cwd || user != req.User {
		r := *req
		r.Env = withSandboxEnv(sb, req.Env)
		r.Cwd, r.User = cwd, user
		req = &r
	}
	res, err := rt.Exec(ctx, id, req)
	e := ExecEntry{At: a.cfg.Clock.Now().UTC(), Cmd: slices.Clone(req.Cmd), ExitCode: -1}
	if res != nil {
		e.ExitCode = res.ExitCode
	}
	if err != nil {
		e.Error = err.Error()
	}
	a.execs.add(id, e)
	return res, err
}

// execDefault is what a template gives the commands run in its
// sandboxes when they do not say: the image's WORKDIR and USER.
type execDefault struct {
	WorkDir string
	User    string
}

// execDefaults caches each template version's execDefault, so that an
// exec reads no manifest: a template version does not change once built.
type execDefaults struct {
	mu sync.Mutex
	m  map[string]execDefault
}

// withTemplateDefaults returns cwd and user, or the sandbox's template's
// WORKDIR and USER where they are empty.
func (a *Agent) withTemplateDefaults(ctx context.Context, sb *tartarus.Sandbox, cwd, user string) (string, string) {
	if cwd != "" && user != "" {
		return cwd, user
	}
	d := a.templateDefaults(ctx, sb.Template)
	if cwd == "" {
		cwd = d.WorkDir
	}
	if user == "" {
		user = d.User
	}
	return cwd, user
}

// templateDefaults returns the exec defaults of template, reading its
// manifest on first use. A template that cannot be read (removed
// since, or a test catalog without it) gives none, and is asked again
// next time.
func (a *Agent) templateDefaults(ctx context.Context, template string) execDefault {
	a.dflts.mu.Lock()
	d, ok := a.dflts.m[template]
	a.dflts.mu.Unlock()
	if ok {
		return d
	}
	img, err := a.cfg.Images.Get(ctx, template)
	if err != nil {
		a.log.Debug("exec defaults: template unreadable", "template", template, "err", err)
		return execDefault{}
	}
	d = execDefault{WorkDir: img.WorkDir, User: img.User}
	a.dflts.mu.Lock()
	if a.dflts.m == nil {
		a.dflts.m = map[string]execDefault{}
	}
	a.dflts.m[template] = d
	a.dflts.mu.Unlock()
	return d
}
