package hecatoncheir

import (
	"context"
	"maps"
	"slices"

	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

// Exec runs a command in a running sandbox, waking it first if it is
// hibernated. The sandbox's environment is applied under req.Env here too,
// so that it holds in sandboxes restored from a snapshot taken without it
// (a warm-pool sandbox).
func (a *Agent) Exec(ctx context.Context, id string, req *tartarus.ExecRequest) (*tartarus.ExecResult, error) {
	sb, rt, err := a.awake(ctx, id)
	if err != nil {
		return nil, err
	}
	defer a.work.begin(id)()
	defer a.touch(ctx, id)
	if len(sb.Env) > 0 {
		r := *req
		r.Env = make(map[string]string, len(sb.Env)+len(req.Env))
		maps.Copy(r.Env, sb.Env)
		maps.Copy(r.Env, req.Env)
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
