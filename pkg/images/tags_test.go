package images

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

func TestParseTemplateRef(t *testing.T) {
	for _, tc := range []struct {
		ref, name, tag string
		ok             bool
	}{
		{"web", "web", "latest", true},
		{"web:v2", "web", "v2", true},
		{"web:", "web", "latest", true},
		{"my.app:1.0", "my.app", "1.0", true},
		{"web..x", "", "", false},
		{"web.", "", "", false},
		{".web", "", "", false},
		{"Web", "", "", false},
		{"web:.x", "", "", false},
		{"web:a:b", "", "", false},
		{"web:A", "", "", false},
		{":v1", "", "", false},
	} {
		name, tag, err := ParseTemplateRef(tc.ref)
		if (err == nil) != tc.ok || name != tc.name || tag != tc.tag {
			t.Errorf("ParseTemplateRef(%q) = %q, %q, %v", tc.ref, name, tag, err)
		}
		if err != nil && !errors.Is(err, tartarus.ErrInvalid) {
			t.Errorf("ParseTemplateRef(%q): %v, want ErrInvalid", tc.ref, err)
		}
	}
	if v := VersionName("web", time.UnixMilli(1)); v != "web..1" {
		t.Errorf("VersionName = %q", v)
	}
}

func TestTags(t *testing.T) {
	ctx := context.Background()
	data := t.TempDir()
	cat, err := Open(Options{DataDir: data})
	if err != nil {
		t.Fatal(err)
	}
	mk := func(name string) {
		dir := filepath.Join(data, "images", "templates", name)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		for f, body := range map[string]string{"vmlinux": "x", "initrd.img": "x", "rootfs.ext4": "x",
			"manifest.json": `{"name":"` + name + `","digest":"d-` + name + `","tenant":"acme"}`} {
			if err := os.WriteFile(filepath.Join(dir, f), []byte(body), 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
	mk("web")
	mk("web..a")
	mk("web..b")
	get := func(ref string) string {
		img, err := cat.Get(ctx, ref)
		if err != nil {
			return err.Error()
		}
		return img.Name
	}

	// Untagged, a bare name is its own template (as before tags).
	if got := get("web"); got != "web" {
		t.Fatalf("Get(web) = %s", got)
	}
	if _, err := cat.Get(ctx, "web:v1"); !errors.Is(err, tartarus.ErrNotFound) {
		t.Errorf("Get(web:v1) before tagging: %v", err)
	}
	if _, err := cat.TagTemplate(ctx, "web:v1", "web..nope"); !errors.Is(err, tartarus.ErrNotFound) {
		t.Errorf("tag to a missing version: %v", err)
	}
	if old, err := cat.TagTemplate(ctx, "web", "web..a"); err != nil || old != "" {
		t.Fatalf("tag web: %q %v", old, err)
	}
	if old, err := cat.TagTemplate(ctx, "web:v1", "web..a"); err != nil || old != "" {
		t.Fatalf("tag web:v1: %q %v", old, err)
	}
	if get("web") != "web..a" || get("web:latest") != "web..a" || get("web:v1") != "web..a" {
		t.Fatalf("after tagging: %s %s %s", get("web"), get("web:latest"), get("web:v1"))
	}
	// Moving latest leaves v1 where it was.
	if old, err := cat.TagTemplate(ctx, "web:latest", "web..b"); err != nil || old != "web..a" {
		t.Fatalf("move latest: %q %v", old, err)
	}
	if get("web") != "web..b" || get("web:v1") != "web..a" {
		t.Fatalf("after moving latest: %s %s", get("web"), get("web:v1"))
	}
	all, err := cat.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	tags := map[string][]string{}
	for _, img := range all {
		tags[img.Name] = img.Tags
	}
	if !slices.Equal(tags["web..a"], []string{"web:v1"}) || !slices.Equal(tags["web..b"], []string{"web:latest"}) || tags["web"] != nil || len(all) != 3 {
		t.Errorf("List tags = %v (%d templates)", tags, len(all))
	}
	if v, err := cat.UntagTemplate(ctx, "web:v1"); err != nil || v != "web..a" {
		t.Fatalf("untag: %q %v", v, err)
	}
	if _, err := cat.UntagTemplate(ctx, "web:v1"); !errors.Is(err, tartarus.ErrNotFound) {
		t.Errorf("untag twice: %v", err)
	}
	if _, err := cat.Get(ctx, "web:v1"); !errors.Is(err, tartarus.ErrNotFound) {
		t.Errorf("Get(web:v1) after untag: %v", err)
	}
}
