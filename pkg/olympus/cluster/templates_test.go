package cluster

import (
	"context"
	"encoding/json"
	"errors"
	"maps"
	"testing"
	"time"

	"github.com/tartarus-sandbox/tartarus/pkg/hecatoncheir/wire"
	"github.com/tartarus-sandbox/tartarus/pkg/store"
	"github.com/tartarus-sandbox/tartarus/pkg/store/pgtest"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

// TestSharedTemplates: a create naming a tenant template the cluster
// records is resolved to its version, carries the version's record to the
// node and the template's env under its own; it goes to a node that has
// the version, else to one that shares the snapshot store, never to one
// that cannot fetch it; another tenant does not find it; it is listed
// once with its tags, and its delete is refused while a sandbox uses it.
func TestSharedTemplates(t *testing.T) {
	e := newEnv(t, pgtest.StartPostgres(t), "templates")
	ctx := context.Background()
	on := func(n string) map[string]string { return map[string]string{"node": n} }
	a, b, c := status("node-a", 2048, on("node-a"), true), status("node-b", 8192, on("node-b"), true), status("node-c", 16384, on("node-c"), false)
	a.Templates = append(a.Templates, "web..1")
	for _, st := range []wire.NodeStatus{a, b, c} {
		e.beat(st, true)
		t.Cleanup(e.keepBeating(st))
	}
	shared := wire.SharedTemplate{Image: tartarus.Image{Name: "web..1", Tenant: "t1", Digest: "sha256:web1",
		Env: map[string]string{"A": "template", "B": "template"}, SizeBytes: 100},
		Parent: "base", Node: "node-a", RootFS: wire.SharedObject{Key: "templates/t1/web..1/rootfs.ext4.zst", Size: 10, Checksum: "sha256:x"}}
	raw, _ := json.Marshal(shared)
	if _, err := e.st.PutTemplate(ctx, &store.TemplateRecord{Version: "web..1", Tenant: "t1", Name: "web", SizeBytes: 100,
		Record: raw, CreatedAt: time.Now()}, "web:latest"); err != nil {
		t.Fatal(err)
	}

	placed := func(req *tartarus.CreateRequest) (wire.Command, *tartarus.Sandbox) {
		t.Helper()
		ch := e.create(req)
		deadline := time.Now().Add(5 * time.Second)
		for time.Now().Before(deadline) {
			for _, n := range []string{"node-a", "node-b", "node-c"} {
				var cmds wire.Commands
				e.call(n, "GET", wire.PathCommands+"?wait=0s", nil, &cmds)
				for _, cmd := range cmds.Commands {
					if cmd.Kind == wire.KindCreate {
						e.finish(cmd, cmd.Sandbox, tartarus.StateRunning)
						r := <-ch
						if r.err != nil {
							t.Fatal(r.err)
						}
						return cmd, r.sb
					}
				}
			}
			time.Sleep(10 * time.Millisecond)
		}
		t.Fatal("no create command reached any node")
		return wire.Command{}, nil
	}

	cmd, sb := placed(&tartarus.CreateRequest{Template: "web", Env: map[string]string{"B": "mine"}})
	if cmd.Node != "node-a" || sb.Template != "web..1" || cmd.Template == nil || cmd.Template.RootFS != shared.RootFS {
		t.Fatalf("create from web: node %s, template %s, record %+v; want node-a (it has it), web..1 and the record", cmd.Node, sb.Template, cmd.Template)
	}
	if want := map[string]string{"A": "template", "B": "mine"}; !maps.Equal(cmd.Create.Env, want) {
		t.Errorf("env sent to the node: %v; want %v", cmd.Create.Env, want)
	}
	if cmd, _ := placed(&tartarus.CreateRequest{Template: "web:latest", NodeLabels: on("node-b")}); cmd.Node != "node-b" || cmd.Template == nil {
		t.Errorf("create on node-b: node %s, record %v; want node-b, which fetches it", cmd.Node, cmd.Template)
	}
	if _, err := e.c.Create(ctx, "t1", &tartarus.CreateRequest{Template: "web", NodeLabels: on("node-c")}); err == nil {
		t.Error("create on node-c, which shares no snapshot store: placed")
	}
	if _, err := e.c.Create(ctx, "t2", &tartarus.CreateRequest{Template: "web"}); !errors.Is(err, tartarus.ErrNotFound) {
		t.Errorf("another tenant's create from web: %v; want not found", err)
	}

	all, err := e.c.Templates(ctx)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, img := range all {
		if img.Name == "web..1" {
			n++
			if len(img.Tags) != 1 || img.Tags[0] != "web:latest" || img.Tenant != "t1" {
				t.Errorf("listed: %+v", img)
			}
		}
	}
	if n != 1 {
		t.Errorf("web..1 listed %d times", n)
	}
	if err := e.c.DeleteTemplate(ctx, "web"); !errors.Is(err, tartarus.ErrFailedPrecondition) {
		t.Errorf("delete while sandboxes use it: %v; want failed precondition", err)
	}
}
