package hecatoncheir

import (
	"context"
	"errors"
	"fmt"

	"github.com/tartarus-sandbox/tartarus/pkg/images"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

// TemplateTagger is the optional side interface of a Catalog whose tenant
// templates have versions and tags (pkg/images implements it).
type TemplateTagger interface {
	// TagTemplate points ref (NAME or NAME:TAG) at installed version and
	// returns the version it pointed at before ("" if none).
	TagTemplate(ctx context.Context, ref, version string) (string, error)
	// UntagTemplate removes tag ref and returns the version it pointed at.
	UntagTemplate(ctx context.Context, ref string) (string, error)
}

func (a *Agent) tagger() (TemplateTagger, error) {
	t, ok := a.cfg.Images.(TemplateTagger)
	if !ok {
		return nil, tartarus.Errorf(tartarus.ErrNotImplemented, "template tags: this node's template catalog has none")
	}
	return t, nil
}

// TagTemplate points ref (NAME or NAME:TAG) at template version, which
// must belong to the same tenant as the version the tag points at now. The
// version it pointed at before is removed once neither a tag nor a sandbox
// uses it. It returns the tagged version.
func (a *Agent) TagTemplate(ctx context.Context, ref, version string) (*tartarus.Image, error) {
	t, err := a.tagger()
	if err != nil {
		return nil, err
	}
	img, err := a.cfg.Images.Get(ctx, version)
	if err != nil {
		return nil, err
	}
	if img.Tenant == "" {
		return nil, tartarus.Errorf(tartarus.ErrFailedPrecondition, "template %s is built in; it takes no tags", version)
	}
	unlock := a.lock("template-tag/" + ref)
	defer unlock()
	name, tag, err := images.ParseTemplateRef(ref)
	if err != nil {
		return nil, err
	}
	if cur, err := a.cfg.Images.Get(ctx, ref); err == nil {
		if cur.Tenant != img.Tenant {
			return nil, tartarus.Errorf(tartarus.ErrAlreadyExists, "template %s", ref)
		}
		if cur.Name == name {
			// A template made before tags, named NAME: the tag would hide
			// it from the sandboxes that recorded NAME, so it goes first,
			// as a rebuild did before tags (refused while they run).
			if err := a.DeleteTemplate(ctx, name); err != nil {
				return nil, fmt.Errorf("replace template %s: %w", name, err)
			}
		}
	}
	old, err := t.TagTemplate(ctx, ref, version)
	if err != nil {
		return nil, err
	}
	if old != "" && old != version {
		a.dropVersion(ctx, old)
	}
	img, err = a.cfg.Images.Get(ctx, version)
	if err != nil {
		return nil, err
	}
	img.Tags = []string{name + ":" + tag}
	return img, nil
}

// dropVersion removes template version once nothing uses it: it is kept
// (and removed by a later delete) while a tag points at it or a sandbox
// runs from it.
func (a *Agent) dropVersion(ctx context.Context, version string) {
	err := a.DeleteTemplate(ctx, version)
	if err != nil && !errors.Is(err, tartarus.ErrFailedPrecondition) && !errors.Is(err, tartarus.ErrNotFound) {
		a.log.Warn("remove an untagged template version", "template", version, "err", err)
	}
}

// untag removes tag ref for DeleteTemplate, once no sandbox uses the
// version it points at, and then the version if nothing else needs it.
func (a *Agent) untag(ctx context.Context, ref string, img *tartarus.Image) error {
	t, err := a.tagger()
	if err != nil {
		return err
	}
	if n, err := a.templateUsers(ctx, img.Name); err != nil {
		return err
	} else if n > 0 {
		return tartarus.Errorf(tartarus.ErrFailedPrecondition, "template %s (version %s) is used by %d sandbox(es); delete it once they end", ref, img.Name, n)
	}
	if _, err := t.UntagTemplate(ctx, ref); err != nil {
		return fmt.Errorf("delete template %s: %w", ref, err)
	}
	a.dropVersion(ctx, img.Name)
	return nil
}

// templateUsers counts the sandboxes that are not over made from template
// version name.
func (a *Agent) templateUsers(ctx context.Context, name string) (int, error) {
	live, err := a.cfg.Store.List(ctx, tartarus.SandboxFilter{States: tartarus.LiveStates()})
	if err != nil {
		return 0, err
	}
	users := 0
	for _, sb := range live {
		if sb.Template == name {
			users++
		}
	}
	return users, nil
}

// versionTagged reports whether a tag points at template version name.
func (a *Agent) versionTagged(ctx context.Context, name string) (bool, error) {
	all, err := a.cfg.Images.List(ctx)
	if err != nil {
		return false, err
	}
	for _, img := range all {
		if img.Name == name {
			return len(img.Tags) > 0, nil
		}
	}
	return false, nil
}
