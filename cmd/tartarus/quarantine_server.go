package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/tartarus-sandbox/tartarus/pkg/cerberus"
	"github.com/tartarus-sandbox/tartarus/pkg/clock"
	"github.com/tartarus-sandbox/tartarus/pkg/erebus/erebusopen"
	"github.com/tartarus-sandbox/tartarus/pkg/hecatoncheir"
	"github.com/tartarus-sandbox/tartarus/pkg/olympus"
	"github.com/tartarus-sandbox/tartarus/pkg/olympus/cluster"
	"github.com/tartarus-sandbox/tartarus/pkg/store"
	"github.com/tartarus-sandbox/tartarus/pkg/typhon"
	"github.com/tartarus-sandbox/tartarus/pkg/typhon/typhonnode"
)

// quarantineOptions are the server's quarantine flags.
type quarantineOptions struct {
	policyFile string
	interval   time.Duration
	// evidenceStore is where evidence is kept: a directory or s3://…
	// (erebusopen.Open); empty means DATA/evidence. It is a store of its
	// own, never the snapshot store, so that a tenant's snapshot quota or
	// deletions cannot touch evidence.
	evidenceStore string
}

// openQuarantine wires Typhon to the single node's agent.
func openQuarantine(ctx context.Context, o *quarantineOptions, st store.Store, agent *hecatoncheir.Agent, dataDir string,
	clk clock.Clock, log *slog.Logger, audit func(context.Context, *cerberus.AuditEntry) error) (*typhon.Manager, error) {
	host := typhonnode.New(agent, clk)
	host.Scratch = filepath.Join(dataDir, "tmp")
	return openTyphon(ctx, o, st, typhon.Config{Host: host, Network: host}, dataDir, clk, log, audit)
}

// openClusterQuarantine wires Typhon to a cluster replica: the same
// records in Postgres on every replica, evidence in the store named by
// --quarantine-evidence-store (give every replica the same s3://… store;
// the default DATA/evidence is this replica's alone), the sandboxes
// reached through their agents. Run it with Cluster.RunQuarantine.
func openClusterQuarantine(ctx context.Context, o *quarantineOptions, st store.Store, cl *cluster.Cluster, dataDir string,
	clk clock.Clock, log *slog.Logger, audit func(context.Context, *cerberus.AuditEntry) error) (*typhon.Manager, error) {
	if o.evidenceStore == "" || !strings.HasPrefix(o.evidenceStore, "s3://") {
		log.Warn("quarantine evidence is kept where only this replica reads it: give every replica the same --quarantine-evidence-store s3://…")
	}
	host := cl.QuarantineHost()
	return openTyphon(ctx, o, st, typhon.Config{Host: host, Network: host, Lock: cl.QuarantineLock}, dataDir, clk, log, audit)
}

// openTyphon makes the manager over cfg's host, network controller and
// (on a cluster) lock: records in the store's database (memory when the
// store has none), evidence in its own blob store
// (--quarantine-evidence-store, DATA/evidence by default), every step in
// the audit log. A policy file, when given, replaces the stored policy at
// start (audited as set by "policy-file").
func openTyphon(ctx context.Context, o *quarantineOptions, st store.Store, cfg typhon.Config, dataDir string,
	clk clock.Clock, log *slog.Logger, audit func(context.Context, *cerberus.AuditEntry) error) (*typhon.Manager, error) {
	spec := o.evidenceStore
	if spec == "" {
		spec = filepath.Join(dataDir, "evidence")
	}
	blobs, err := erebusopen.Open(ctx, spec, log)
	if err != nil {
		return nil, fmt.Errorf("--quarantine-evidence-store: %w", err)
	}
	var j typhon.Journal = typhon.NewMemJournal()
	if k, ok := st.(store.QuarantineKeeper); ok {
		j = k.Quarantines()
	} else {
		log.Warn("quarantine records are kept in memory: this store has no quarantine tables")
	}
	cfg.Blobs, cfg.Journal, cfg.Clock, cfg.Interval, cfg.Log = typhon.ErebusBlobs{Store: blobs}, j, clk, o.interval, log
	cfg.Audit = auditQuarantine(audit, clk)
	m, err := typhon.New(ctx, cfg)
	if err != nil {
		return nil, err
	}
	if o.policyFile != "" {
		b, err := os.ReadFile(o.policyFile)
		if err != nil {
			return nil, fmt.Errorf("--quarantine-policy: %w", err)
		}
		p, err := typhon.ParsePolicyFile(b)
		if err != nil {
			return nil, fmt.Errorf("--quarantine-policy %s: %w", o.policyFile, err)
		}
		p.UpdatedBy = "policy-file"
		if err := m.SetPolicy(ctx, p); err != nil {
			return nil, fmt.Errorf("--quarantine-policy %s: %w", o.policyFile, err)
		}
	}
	return m, nil
}

// auditQuarantine writes each quarantine step to the audit log.
func auditQuarantine(audit func(context.Context, *cerberus.AuditEntry) error, clk clock.Clock) func(context.Context, typhon.AuditEvent) {
	if audit == nil {
		return nil
	}
	return func(ctx context.Context, e typhon.AuditEvent) {
		res := cerberus.AuditResultSuccess
		msg := ""
		if e.Err != nil {
			res, msg = cerberus.AuditResultError, e.Err.Error()
		}
		who := &cerberus.Identity{Type: cerberus.IdentityTypeService, ID: "typhon", TenantID: e.Tenant}
		if e.Actor != "" && e.Actor != typhon.AutoActor {
			who = &cerberus.Identity{Type: cerberus.IdentityTypeUser, ID: e.Actor, TenantID: e.Tenant}
		}
		_ = audit(ctx, &cerberus.AuditEntry{Timestamp: clk.Now(), Action: cerberus.Action("quarantine." + e.Action), Identity: who,
			Resource: cerberus.Resource{Type: "quarantine", ID: e.SandboxID, TenantID: e.Tenant},
			Result:   res, Reason: e.Detail, ErrorMessage: msg})
	}
}

// Typhon's manager serves the API's quarantine routes.
var _ olympus.Quarantiner = (*typhon.Manager)(nil)
