package hecatoncheir

import (
	"bytes"
	"context"
	"testing"

	"github.com/tartarus-sandbox/tartarus/pkg/runtimes/fake"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

// TestExecTemplateDefaults: an exec that names no cwd or user runs in its
// template's WORKDIR as its USER; one that names them gets its own; a
// template without them keeps "/" and root.
func TestExecTemplateDefaults(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t, fake.Config{MaxCPUs: 2, MaxMemoryMB: 1024})
	e.agent.cfg.Images = catalog{"base": {Name: "base"}, "imported": {Name: "imported", WorkDir: "/tmp", User: "1000:1000"}}
	imported, err := e.agent.Create(ctx, "acme", &tartarus.CreateRequest{Template: "imported", TimeoutS: 60})
	if err != nil {
		t.Fatal(err)
	}
	base, err := e.agent.Create(ctx, "acme", &tartarus.CreateRequest{Template: "base", TimeoutS: 60})
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		id   string
		req  tartarus.ExecRequest
		want string
	}{
		{"template defaults", imported.ID, tartarus.ExecRequest{}, "/tmp\n1000\n"},
		{"own cwd and user", imported.ID, tartarus.ExecRequest{Cwd: "/", User: "root"}, "/\n0\n"},
		{"own user only", imported.ID, tartarus.ExecRequest{User: "0"}, "/tmp\n0\n"},
		{"template without defaults", base.ID, tartarus.ExecRequest{}, "/\n0\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out bytes.Buffer
			req := tt.req
			req.Cmd, req.Stdout = []string{"sh", "-c", "pwd; id -u"}, &out
			res, err := e.agent.Exec(ctx, tt.id, &req)
			if err != nil || res.ExitCode != 0 || out.String() != tt.want {
				t.Errorf("exec: %v %+v %q; want %q", err, res, out.String(), tt.want)
			}
		})
	}
}
