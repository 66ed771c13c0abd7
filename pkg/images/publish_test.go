package images

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

func TestPublish(t *testing.T) {
	data := t.TempDir()
	mk := func(name, manifest string) {
		dir := filepath.Join(data, "images", "templates", name)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		for _, f := range []string{"vmlinux", "initrd.img", "rootfs.ext4"} {
			if err := os.WriteFile(filepath.Join(dir, f), []byte("x"), 0o644); err != nil {
				t.Fatal(err)
			}
		}
		if err := os.WriteFile(filepath.Join(dir, "manifest.json"), []byte(manifest), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	mk("migrated-web", `{"name":"migrated-web","digest":"sha256:1","container":{"source_id":"abc"},"tenant":"acme"}`)
	mk("base", `{"name":"base","digest":"sha256:2"}`)

	img, err := Publish(data, "migrated-web", true)
	if err != nil || !img.Public || img.Tenant != "acme" || !img.VisibleTo("globex") {
		t.Fatalf("publish: %+v %v", img, err)
	}
	b, _ := os.ReadFile(filepath.Join(data, "images", "templates", "migrated-web", "manifest.json"))
	if !strings.Contains(string(b), `"source_id": "abc"`) {
		t.Errorf("publish lost the manifest's other fields:\n%s", b)
	}
	img, err = Publish(data, "migrated-web", false)
	if err != nil || img.Public || img.VisibleTo("globex") || !img.VisibleTo("acme") {
		t.Fatalf("unpublish: %+v %v", img, err)
	}
	if _, err := Publish(data, "base", true); !errors.Is(err, tartarus.ErrFailedPrecondition) {
		t.Errorf("publishing a built-in template: %v", err)
	}
	for _, name := range []string{"nope", "../base", ".hidden"} {
		if _, err := Publish(data, name, true); !errors.Is(err, ErrNotFound) {
			t.Errorf("publish %q: %v, want not found", name, err)
		}
	}
}
