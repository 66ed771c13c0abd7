package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

// templateSchema keeps a cluster's tenant templates: each version uploaded
// to the store the nodes share (its record, as the agent that made it
// described it), and the tags (NAME:TAG) that point at versions.
var templateSchema = []string{
	`CREATE TABLE tenant_templates (
		version    TEXT PRIMARY KEY,
		tenant     TEXT NOT NULL,
		name       TEXT NOT NULL,
		size_bytes BIGINT NOT NULL,
		record     TEXT NOT NULL,
		created_at BIGINT NOT NULL
	)`,
	`CREATE TABLE tenant_template_tags (
		ref     TEXT PRIMARY KEY,
		tenant  TEXT NOT NULL,
		version TEXT NOT NULL
	)`,
}

// TemplateRecord is one tenant template version a cluster keeps in its
// shared store.
type TemplateRecord struct {
	Version   string
	Tenant    string
	Name      string
	SizeBytes int64
	// Record is the agent's description of the upload (wire.SharedTemplate).
	Record    []byte
	CreatedAt time.Time
	// Tags point at the version (NAME:TAG), when listed.
	Tags []string
}

// PutTemplate records version rec (a version uploaded again gets the new
// record) and points tag ref (NAME:TAG) at it, in one transaction; it returns the version ref pointed at before ("" if
// none). A tag of another tenant is not taken (ErrAlreadyExists).
func (p *Postgres) PutTemplate(ctx context.Context, rec *TemplateRecord, ref string) (string, error) {
	tx, err := p.db.BeginTx(ctx, nil)
	if err != nil {
		return "", err
	}
	defer tx.Rollback()
	if _, err := tx.ExecContext(ctx, p.d.q(`INSERT INTO tenant_templates (version, tenant, name, size_bytes, record, created_at)
		VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (version) DO UPDATE SET record = EXCLUDED.record, size_bytes = EXCLUDED.size_bytes
		WHERE tenant_templates.tenant = EXCLUDED.tenant`),
		rec.Version, rec.Tenant, rec.Name, rec.SizeBytes, string(rec.Record), rec.CreatedAt.UnixNano()); err != nil {
		return "", fmt.Errorf("record template %s: %w", rec.Version, err)
	}
	var tenant, old string
	err = tx.QueryRowContext(ctx, p.d.q(`SELECT tenant, version FROM tenant_template_tags WHERE ref = ? FOR UPDATE`), ref).Scan(&tenant, &old)
	switch {
	case errors.Is(err, sql.ErrNoRows):
	case err != nil:
		return "", fmt.Errorf("tag %s: %w", ref, err)
	case tenant != rec.Tenant:
		return "", tartarus.Errorf(tartarus.ErrAlreadyExists, "template %s", ref)
	}
	if _, err := tx.ExecContext(ctx, p.d.q(`INSERT INTO tenant_template_tags (ref, tenant, version) VALUES (?, ?, ?)
		ON CONFLICT (ref) DO UPDATE SET version = EXCLUDED.version`), ref, rec.Tenant, rec.Version); err != nil {
		return "", fmt.Errorf("tag %s: %w", ref, err)
	}
	return old, tx.Commit()
}

// Template returns the version ref names: a tag (NAME:TAG) or a version's
// name; ErrNotFound when the cluster keeps no such template.
func (p *Postgres) Template(ctx context.Context, ref string) (*TemplateRecord, error) {
	version := ref
	if strings.Contains(ref, ":") {
		err := p.db.QueryRowContext(ctx, p.d.q(`SELECT version FROM tenant_template_tags WHERE ref = ?`), ref).Scan(&version)
		if errors.Is(err, sql.ErrNoRows) {
			return nil, tartarus.Errorf(tartarus.ErrNotFound, "template %s", ref)
		}
		if err != nil {
			return nil, fmt.Errorf("template %s: %w", ref, err)
		}
	}
	var r TemplateRecord
	var rec string
	var at int64
	err := p.db.QueryRowContext(ctx, p.d.q(`SELECT version, tenant, name, size_bytes, record, created_at FROM tenant_templates WHERE version = ?`), version).
		Scan(&r.Version, &r.Tenant, &r.Name, &r.SizeBytes, &rec, &at)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, tartarus.Errorf(tartarus.ErrNotFound, "template %s", ref)
	}
	if err != nil {
		return nil, fmt.Errorf("template %s: %w", ref, err)
	}
	r.Record, r.CreatedAt = []byte(rec), time.Unix(0, at).UTC()
	return &r, nil
}

// Templates lists every recorded version with its tags.
func (p *Postgres) Templates(ctx context.Context) ([]*TemplateRecord, error) {
	rows, err := p.db.QueryContext(ctx, `SELECT version, tenant, name, size_bytes, record, created_at FROM tenant_templates ORDER BY version`)
	if err != nil {
		return nil, fmt.Errorf("list templates: %w", err)
	}
	defer rows.Close()
	var out []*TemplateRecord
	byVersion := map[string]*TemplateRecord{}
	for rows.Next() {
		var r TemplateRecord
		var rec string
		var at int64
		if err := rows.Scan(&r.Version, &r.Tenant, &r.Name, &r.SizeBytes, &rec, &at); err != nil {
			return nil, fmt.Errorf("list templates: %w", err)
		}
		r.Record, r.CreatedAt = []byte(rec), time.Unix(0, at).UTC()
		out = append(out, &r)
		byVersion[r.Version] = &r
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list templates: %w", err)
	}
	tags, err := p.db.QueryContext(ctx, `SELECT ref, version FROM tenant_template_tags ORDER BY ref`)
	if err != nil {
		return nil, fmt.Errorf("list template tags: %w", err)
	}
	defer tags.Close()
	for tags.Next() {
		var ref, version string
		if err := tags.Scan(&ref, &version); err != nil {
			return nil, fmt.Errorf("list template tags: %w", err)
		}
		if r := byVersion[version]; r != nil {
			r.Tags = append(r.Tags, ref)
		}
	}
	return out, tags.Err()
}

// DeleteTemplateTag removes tag ref; ErrNotFound if there is none.
func (p *Postgres) DeleteTemplateTag(ctx context.Context, ref string) error {
	res, err := p.db.ExecContext(ctx, p.d.q(`DELETE FROM tenant_template_tags WHERE ref = ?`), ref)
	if err != nil {
		return fmt.Errorf("delete tag %s: %w", ref, err)
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return tartarus.Errorf(tartarus.ErrNotFound, "template %s", ref)
	}
	return nil
}

// DeleteTemplateVersion forgets version unless a tag points at it (it
// reports whether it did).
func (p *Postgres) DeleteTemplateVersion(ctx context.Context, version string) (bool, error) {
	res, err := p.db.ExecContext(ctx, p.d.q(`DELETE FROM tenant_templates WHERE version = ?
		AND NOT EXISTS (SELECT 1 FROM tenant_template_tags WHERE version = ?)`), version, version)
	if err != nil {
		return false, fmt.Errorf("delete template %s: %w", version, err)
	}
	n, _ := res.RowsAffected()
	return n > 0, nil
}
