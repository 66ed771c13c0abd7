package store_test

import (
	"context"
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/tartarus-sandbox/tartarus/pkg/store"
	"github.com/tartarus-sandbox/tartarus/pkg/store/pgtest"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

// TestPostgresTemplates: a cluster's template records: a tag moves to a
// new version and says which it left; another tenant cannot take a tag;
// a version is found by tag or name and listed with its tags; a tagged
// version is not forgotten, an untagged one is.
func TestPostgresTemplates(t *testing.T) {
	ctx := context.Background()
	p, err := store.OpenPostgres(ctx, pgtest.StartPostgres(t))
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	at := time.Unix(1_800_000_000, 0).UTC()
	rec := func(version, tenant string) *store.TemplateRecord {
		return &store.TemplateRecord{Version: version, Tenant: tenant, Name: "web", SizeBytes: 42, Record: []byte(`{"v":"` + version + `"}`), CreatedAt: at}
	}
	if old, err := p.PutTemplate(ctx, rec("web..1", "acme"), "web:latest"); err != nil || old != "" {
		t.Fatalf("first put: %q, %v", old, err)
	}
	if old, err := p.PutTemplate(ctx, rec("web..2", "acme"), "web:latest"); err != nil || old != "web..1" {
		t.Fatalf("second put: %q, %v; want web..1 left", old, err)
	}
	if _, err := p.PutTemplate(ctx, rec("web..3", "globex"), "web:latest"); !errors.Is(err, tartarus.ErrAlreadyExists) {
		t.Fatalf("another tenant's tag: %v; want already exists", err)
	}
	for ref, want := range map[string]string{"web:latest": "web..2", "web..1": "web..1"} {
		got, err := p.Template(ctx, ref)
		if err != nil || got.Version != want || got.Tenant != "acme" || string(got.Record) != `{"v":"`+want+`"}` || !got.CreatedAt.Equal(at) {
			t.Errorf("Template(%s) = %+v, %v; want %s", ref, got, err, want)
		}
	}
	if _, err := p.Template(ctx, "web:v9"); !errors.Is(err, tartarus.ErrNotFound) {
		t.Errorf("unknown tag: %v", err)
	}
	all, err := p.Templates(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var tagged []string
	for _, r := range all {
		if len(r.Tags) > 0 {
			tagged = append(tagged, r.Version+"="+r.Tags[0])
		}
	}
	// web..3 was refused: nothing of it is recorded.
	if len(all) != 2 || !slices.Equal(tagged, []string{"web..2=web:latest"}) {
		t.Fatalf("listed %d: tagged %q", len(all), tagged)
	}
	if gone, err := p.DeleteTemplateVersion(ctx, "web..2"); err != nil || gone {
		t.Errorf("delete a tagged version: %v, %v; want kept", gone, err)
	}
	if gone, err := p.DeleteTemplateVersion(ctx, "web..1"); err != nil || !gone {
		t.Errorf("delete an untagged version: %v, %v", gone, err)
	}
	if err := p.DeleteTemplateTag(ctx, "web:latest"); err != nil {
		t.Fatal(err)
	}
	if err := p.DeleteTemplateTag(ctx, "web:latest"); !errors.Is(err, tartarus.ErrNotFound) {
		t.Errorf("delete a tag twice: %v", err)
	}
	if gone, err := p.DeleteTemplateVersion(ctx, "web..2"); err != nil || !gone {
		t.Errorf("delete a version once untagged: %v, %v", gone, err)
	}
}
