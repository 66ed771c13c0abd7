package hecatoncheir

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/tartarus-sandbox/tartarus/pkg/images"
	"github.com/tartarus-sandbox/tartarus/pkg/runtimes/fake"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

// TestTemplateTags: a create from a tag records the version; moving the
// tag keeps a version a sandbox uses and removes one nothing uses;
// deleting a tag is refused while a sandbox uses its version.
func TestTemplateTags(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t, fake.Config{MaxCPUs: 2, MaxMemoryMB: 1024})
	data := t.TempDir()
	for name, tenant := range map[string]string{"base": "", "web..a": "acme", "web..b": "acme", "web..c": "acme", "other..a": "globex"} {
		dir := filepath.Join(data, "images", "templates", name)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		for f, body := range map[string]string{"vmlinux": "x", "initrd.img": "x", "rootfs.ext4": "x",
			"manifest.json": `{"name":"` + name + `","digest":"d-` + name + `","tenant":"` + tenant + `"}`} {
			if err := os.WriteFile(filepath.Join(dir, f), []byte(body), 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
	cat, err := images.Open(images.Options{DataDir: data})
	if err != nil {
		t.Fatal(err)
	}
	e.agent.cfg.Images = cat
	exists := func(name string) bool {
		_, err := os.Stat(filepath.Join(data, "images", "templates", name))
		return err == nil
	}
	create := func(ref string) *tartarus.Sandbox {
		t.Helper()
		sb, err := e.agent.Create(ctx, "acme", &tartarus.CreateRequest{Template: ref, TimeoutS: 600})
		if err != nil {
			t.Fatalf("create from %s: %v", ref, err)
		}
		return sb
	}

	if img, err := e.agent.TagTemplate(ctx, "web", "web..a"); err != nil || img.Name != "web..a" || len(img.Tags) != 1 || img.Tags[0] != "web:latest" {
		t.Fatalf("tag web: %+v %v", img, err)
	}
	if _, err := e.agent.TagTemplate(ctx, "web", "other..a"); !errors.Is(err, tartarus.ErrAlreadyExists) {
		t.Errorf("globex's version under acme's tag: %v", err)
	}
	sb := create("web")
	if sb.Template != "web..a" {
		t.Errorf("sandbox from web records %q, want the version web..a", sb.Template)
	}
	// The tag moves; web..a stays while sb uses it.
	if _, err := e.agent.TagTemplate(ctx, "web", "web..b"); err != nil {
		t.Fatal(err)
	}
	if !exists("web..a") {
		t.Error("web..a removed while a sandbox uses it")
	}
	if sb2 := create("web:latest"); sb2.Template != "web..b" {
		t.Errorf("after the move a create records %q", sb2.Template)
	} else if err := e.agent.DeleteTemplate(ctx, "web"); !errors.Is(err, tartarus.ErrFailedPrecondition) {
		t.Errorf("delete of web while a sandbox uses web..b: %v", err)
	} else if _, err := e.agent.Destroy(ctx, sb2.ID); err != nil {
		t.Fatal(err)
	}
	// Moving it again removes web..b, which nothing uses now.
	if _, err := e.agent.TagTemplate(ctx, "web", "web..c"); err != nil {
		t.Fatal(err)
	}
	if exists("web..b") {
		t.Error("web..b kept with no tag and no sandbox")
	}
	if _, err := e.agent.TagTemplate(ctx, "web:v1", "web..c"); err != nil {
		t.Fatal(err)
	}
	if err := e.agent.DeleteTemplate(ctx, "web..c"); !errors.Is(err, tartarus.ErrFailedPrecondition) {
		t.Errorf("delete of a tagged version by its name: %v", err)
	}
	if err := e.agent.DeleteTemplate(ctx, "web"); err != nil {
		t.Fatalf("delete web: %v", err)
	}
	if !exists("web..c") {
		t.Error("web..c removed while web:v1 points at it")
	}
	if err := e.agent.DeleteTemplate(ctx, "web:v1"); err != nil || exists("web..c") {
		t.Fatalf("delete web:v1: %v (web..c exists: %v)", err, exists("web..c"))
	}
	if _, err := e.agent.Destroy(ctx, sb.ID); err != nil {
		t.Fatal(err)
	}
	e.clock.Advance(time.Second)
	if err := e.agent.DeleteTemplate(ctx, "web..a"); err != nil || exists("web..a") {
		t.Errorf("delete the untagged web..a once unused: %v", err)
	}
}
