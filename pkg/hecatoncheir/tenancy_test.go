package hecatoncheir

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/tartarus-sandbox/tartarus/pkg/runtimes/fake"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

// TestCreateRefusesWhatTheHostCannotHold: a single node counts the
// memory its sandboxes hold and refuses a create past its host's, with
// the numbers; a sandbox that goes away makes room again.
func TestCreateRefusesWhatTheHostCannotHold(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t, fake.Config{MaxCPUs: 8, MaxMemoryMB: 1024})
	var made []*tartarus.Sandbox
	for range 2 {
		sb, err := e.agent.Create(ctx, "acme", &tartarus.CreateRequest{MemoryMB: 512, TimeoutS: 60})
		if err != nil {
			t.Fatal(err)
		}
		made = append(made, sb)
	}
	_, err := e.agent.Create(ctx, "globex", &tartarus.CreateRequest{MemoryMB: 256, TimeoutS: 60})
	if !errors.Is(err, tartarus.ErrResourceExhausted) || !strings.Contains(err.Error(), "1024 MiB in use + 256 MiB asked > 1024 MiB") {
		t.Fatalf("create past the host's memory: %v", err)
	}
	if _, err := e.agent.Destroy(ctx, made[0].ID); err != nil {
		t.Fatal(err)
	}
	if _, err := e.agent.Create(ctx, "globex", &tartarus.CreateRequest{MemoryMB: 256, TimeoutS: 60}); err != nil {
		t.Fatalf("create after a sandbox went away: %v", err)
	}
}

// TestCreateFromAnotherTenantsTemplate: a template owned by one tenant is
// not found for another, and usable once published.
func TestCreateFromAnotherTenantsTemplate(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t, fake.Config{MaxCPUs: 2, MaxMemoryMB: 1024})
	img := &tartarus.Image{Name: "migrated-web", Tenant: "acme"}
	e.agent.cfg.Images = catalog{"base": {Name: "base"}, "migrated-web": img}
	if _, err := e.agent.Create(ctx, "globex", &tartarus.CreateRequest{Template: "migrated-web", TimeoutS: 60}); !errors.Is(err, tartarus.ErrNotFound) {
		t.Fatalf("globex from acme's template: %v, want not found", err)
	}
	if _, err := e.agent.Create(ctx, "acme", &tartarus.CreateRequest{Template: "migrated-web", TimeoutS: 60}); err != nil {
		t.Fatalf("acme from its template: %v", err)
	}
	img.Public = true
	if _, err := e.agent.Create(ctx, "globex", &tartarus.CreateRequest{Template: "migrated-web", TimeoutS: 60}); err != nil {
		t.Fatalf("globex from the published template: %v", err)
	}
}
