package hecatoncheir

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/tartarus-sandbox/tartarus/pkg/hypnos"
	"github.com/tartarus-sandbox/tartarus/pkg/nyx"
	"github.com/tartarus-sandbox/tartarus/pkg/phlegethon"
	"github.com/tartarus-sandbox/tartarus/pkg/store"
	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

// What a cluster's node agent (`tartarus agent`, pkg/hecatoncheir/link)
// needs besides the single-node calls: the API servers choose sandbox ids
// and deliver each command until its result arrives, so every call here
// may run twice for the same thing and must then do it once.

// msgDropped is stored on a sandbox the cluster took away from this node.
const msgDropped = "dropped: the cluster moved or ended this sandbox while the node was away"

// CreateAs creates sandbox want.ID as the API server chose it: its id,
// tenant, creation and expiry times and metadata, with the shape of req.
// If this node already has want.ID it is returned as it is now, once any
// lifecycle change in progress on it has finished: a command delivered
// twice creates one sandbox. When want.ID is a sandbox waiting in the warm
// pool of this shape (the servers read WarmIDs from heartbeats), it is
// claimed instead of restoring one.
func (a *Agent) CreateAs(ctx context.Context, want *tartarus.Sandbox, req *tartarus.CreateRequest) (*tartarus.Sandbox, error) {
	if want == nil || want.ID == "" || req == nil {
		return nil, tartarus.Errorf(tartarus.ErrInvalid, "create: want a sandbox with an id and a request")
	}
	if sb, err := a.current(ctx, want.ID); err == nil || !errors.Is(err, tartarus.ErrNotFound) {
		return sb, err
	}
	rt, img, err := a.checkCreate(ctx, want.Tenant, req)
	if err != nil {
		return nil, err
	}
	if h := want.Heat; h != nil && h.Enforced {
		// The replica sized it by its class; the node's default network is
		// known only here.
		phlegethon.ApplyNetworkBurst(req.Network, h.NetworkMbps)
	}
	now := a.cfg.Clock.Now().UTC()
	sb := tartarus.NewSandbox(want.ID, want.Tenant, req, now)
	sb.Runtime, sb.Node, sb.Heat = rt.Name(), a.cfg.Node, want.Heat
	// The API server's creation and expiry times and metadata stand; the
	// request fills in what it left out.
	if !want.CreatedAt.IsZero() {
		sb.CreatedAt = want.CreatedAt.UTC()
		sb.ExpiresAt = sb.CreatedAt.Add(time.Duration(req.TimeoutS) * time.Second)
	}
	if !want.ExpiresAt.IsZero() {
		sb.ExpiresAt = want.ExpiresAt.UTC()
	}
	if want.Metadata != nil {
		sb.Metadata = want.Metadata
	}
	cfg := a.vmConfig(sb, img) // with the class's disk throttle
	// The warm pool's VMs have no network and no throttle.
	claimed := req.Network == nil && cfg.DiskIOPS == 0 && a.claimWarm(ctx, rt, img, req.MemoryMB, req.CPUs, want.ID) != ""
	how := "warm pool"
	made, err := a.createWith(ctx, sb, func() error {
		if claimed {
			return nil
		}
		var err error
		how, err = a.restoreOrBoot(ctx, rt, cfg)
		return err
	}, "how", &how)
	if err != nil && errors.Is(err, tartarus.ErrAlreadyExists) {
		// Another delivery of the same command recorded it first.
		return a.current(ctx, want.ID)
	}
	if err != nil {
		how = "failed"
	}
	// Counted as Create counts, so the cluster sees warm and cold creates.
	a.creates.add(sb.Template, how)
	return made, err
}

// current returns sandbox id once no lifecycle change holds it.
func (a *Agent) current(ctx context.Context, id string) (*tartarus.Sandbox, error) {
	unlock := a.lock(id)
	defer unlock()
	return a.cfg.Store.Get(ctx, id)
}

// ForkAs forks sandbox parentID into copies with the ids the API server
// chose, in order. Ids this node already has are returned as they are now
// and not forked again; only the missing ones are made.
func (a *Agent) ForkAs(ctx context.Context, parentID string, ids []string) ([]*tartarus.Sandbox, error) {
	if len(ids) < 1 || len(ids) > MaxFork {
		return nil, tartarus.Errorf(tartarus.ErrInvalid, "fork %s into %d: must be between 1 and %d copies", parentID, len(ids), MaxFork)
	}
	seen := map[string]bool{}
	have := map[string]*tartarus.Sandbox{}
	var missing []string
	for _, id := range ids {
		if id == "" || id == parentID || seen[id] {
			return nil, tartarus.Errorf(tartarus.ErrInvalid, "fork %s: copy id %q is empty, the parent's or given twice", parentID, id)
		}
		seen[id] = true
		sb, err := a.current(ctx, id)
		switch {
		case err == nil:
			have[id] = sb
		case errors.Is(err, tartarus.ErrNotFound):
			missing = append(missing, id)
		default:
			return nil, err
		}
	}
	if len(missing) > 0 {
		made, err := a.forkInto(ctx, parentID, missing)
		if err != nil {
			return nil, err
		}
		for _, sb := range made {
			have[sb.ID] = sb
		}
	}
	out := make([]*tartarus.Sandbox, 0, len(ids))
	for _, id := range ids {
		out = append(out, have[id])
	}
	return out, nil
}

// Adopt takes over a hibernated sandbox that another node put to sleep:
// its snapshot is read where rec.SnapshotPath says, in the snapshot store
// this node shares with that node, and restored here; the sandbox is then
// recorded as this node's, running (or paused, if it was paused when put
// to sleep), and the snapshot it was restored from is deleted, as a wake
// does. A later Wake is a no-op. If this node already holds sb.ID, Adopt
// returns it as it is.
//
// The record is written only after the restore worked, so a crash in
// between leaves an unrecorded VM that Recover destroys, and the command
// can simply run again.
func (a *Agent) Adopt(ctx context.Context, sb *tartarus.Sandbox, rec *hypnos.SleepRecord) (*tartarus.Sandbox, error) {
	if sb == nil || rec == nil || sb.ID == "" || rec.SandboxID != sb.ID {
		return nil, tartarus.Errorf(tartarus.ErrInvalid, "adopt: want a sandbox and its own sleep record")
	}
	sr, err := a.snapshotter(sb.Runtime, "adopt")
	if err != nil {
		return nil, err
	}
	prefix, ok := strings.CutSuffix(rec.SnapshotPath, "/"+rec.SnapshotID+"/data")
	if !ok || rec.SnapshotID == "" || prefix == "" {
		return nil, tartarus.Errorf(tartarus.ErrInvalid, "adopt %s: snapshot path %q does not name snapshot %q", sb.ID, rec.SnapshotPath, rec.SnapshotID)
	}
	unlock := a.lock(sb.ID)
	defer unlock()
	ctx = context.WithoutCancel(ctx) // a restored VM must end up recorded or destroyed
	if have, err := a.cfg.Store.Get(ctx, sb.ID); err == nil {
		if have.State.Final() {
			return nil, tartarus.Errorf(tartarus.ErrFailedPrecondition, "adopt %s: this node holds it as %s already; its id cannot be reused here", sb.ID, have.State)
		}
		return have, nil
	} else if !errors.Is(err, tartarus.ErrNotFound) {
		return nil, err
	}
	img, err := a.cfg.Images.Get(ctx, sb.Template)
	if err != nil {
		return nil, fmt.Errorf("adopt %s: template %s: %w", sb.ID, sb.Template, err)
	}
	// The snapshot's disk is an overlay on the template's root file
	// system: restoring it over another build would corrupt it.
	if rec.Config != nil && rec.Config.Image != nil && rec.Config.Image.Digest != "" && rec.Config.Image.Digest != img.Digest {
		return nil, tartarus.Errorf(tartarus.ErrFailedPrecondition,
			"adopt %s: template %s here is another build (digest %.12s, the sandbox slept on %.12s); build the same templates on every node",
			sb.ID, sb.Template, img.Digest, rec.Config.Image.Digest)
	}
	from := nyx.New(sr.snap, a.cfg.Snapshots, nyx.Options{Prefix: prefix, TempDir: a.cfg.SnapshotTempDir,
		Clock: a.cfg.Clock, Logger: a.cfg.Log})
	cfg := &tartarus.VMConfig{ID: sb.ID, Template: sb.Template, Image: img, CPUs: sb.CPUs, MemoryMB: sb.MemoryMB, Env: sb.Env, Network: sb.Network}
	log := a.log.With("sandbox", sb.ID, "snapshot", rec.SnapshotPath)
	start := a.cfg.Clock.Now()
	state := tartarus.StateRunning
	_, err = from.Restore(ctx, rec.SnapshotID, cfg)
	if err == nil && rec.WasPaused {
		if perr := sr.rt.Pause(ctx, sb.ID); perr != nil {
			log.Warn("adopted sandbox was paused before sleep but cannot be paused again", "err", perr)
		} else {
			state = tartarus.StatePaused
		}
	}
	now := a.cfg.Clock.Now().UTC()
	mine := *sb
	mine.Node, mine.State, mine.UpdatedAt, mine.LastActivityAt = a.cfg.Node, state, now, now
	mine.SnapshotBytes, mine.Error = 0, ""
	if mine.Metadata == nil {
		mine.Metadata = map[string]string{}
	}
	if err == nil {
		err = a.cfg.Store.Create(ctx, &mine)
	}
	if err != nil {
		if derr := sr.rt.Destroy(ctx, sb.ID); derr != nil {
			log.Error("destroy after a failed adopt", "err", derr)
		}
		if tartarus.ClassOf(err).Err == nil {
			err = fmt.Errorf("%w (%w)", err, tartarus.ErrUnavailable)
		}
		return nil, fmt.Errorf("adopt %s: %w", sb.ID, err)
	}
	if err := from.Delete(ctx, rec.SnapshotID); err != nil {
		log.Warn("adopted sandbox: cannot delete the snapshot it woke from", "err", err)
	}
	a.schedule(&mine)
	sr.hyp.Touch(sb.ID)
	log.Info("sandbox adopted from another node", "state", state, "took", a.cfg.Clock.Now().Sub(start))
	return a.cfg.Store.Get(ctx, sb.ID)
}

// Discard deletes the snapshot a sleep record of another node names, in
// the shared snapshot store: the sandbox was destroyed while no node held
// it. A snapshot already gone is not an error.
func (a *Agent) Discard(ctx context.Context, sb *tartarus.Sandbox, rec *hypnos.SleepRecord) error {
	if sb == nil || rec == nil || rec.SandboxID != sb.ID {
		return tartarus.Errorf(tartarus.ErrInvalid, "discard: want a sandbox and its own sleep record")
	}
	sr, err := a.snapshotter(sb.Runtime, "discard")
	if err != nil {
		return err
	}
	prefix, ok := strings.CutSuffix(rec.SnapshotPath, "/"+rec.SnapshotID+"/data")
	if !ok || rec.SnapshotID == "" || prefix == "" {
		return tartarus.Errorf(tartarus.ErrInvalid, "discard %s: snapshot path %q does not name snapshot %q", sb.ID, rec.SnapshotPath, rec.SnapshotID)
	}
	from := nyx.New(sr.snap, a.cfg.Snapshots, nyx.Options{Prefix: prefix, TempDir: a.cfg.SnapshotTempDir,
		Clock: a.cfg.Clock, Logger: a.cfg.Log})
	if err := from.Delete(ctx, rec.SnapshotID); err != nil && !errors.Is(err, tartarus.ErrNotFound) {
		return fmt.Errorf("discard %s: %w", sb.ID, err)
	}
	a.log.Info("discarded the snapshot of a sandbox destroyed while unassigned", "sandbox", sb.ID, "snapshot", rec.SnapshotPath)
	return nil
}

// Drop lets go of a sandbox the cluster took away from this node (it was
// declared lost while the node was away, or woke elsewhere): its instance
// is destroyed and its record ends terminated. With keepSnapshot, the
// stored snapshot of a hibernated sandbox is left where it is, since
// another node owns it now, and this node never deletes it (see
// keepSnapshot). An unknown or already ended id is done already.
func (a *Agent) Drop(ctx context.Context, id string, keepSnapshot bool) error {
	unlock := a.lock(id)
	defer unlock()
	ctx = context.WithoutCancel(ctx)
	sb, err := a.cfg.Store.Get(ctx, id)
	if errors.Is(err, tartarus.ErrNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	if rt, ok := a.runtimes[sb.Runtime]; ok {
		if err := rt.Destroy(ctx, id); err != nil {
			return fmt.Errorf("drop %s: %w", id, err)
		}
	}
	if sr, ok := a.snaps[sb.Runtime]; ok && keepSnapshot {
		if err := a.keepSnapshot(ctx, sr, id); err != nil {
			return fmt.Errorf("drop %s: %w", id, err)
		}
	} else {
		a.forget(ctx, sb)
	}
	if sb.State.Final() {
		return nil
	}
	if err := a.record(ctx, id, tartarus.StateTerminated, store.Change{At: a.cfg.Clock.Now().UTC(), Error: msgDropped}); err != nil {
		return fmt.Errorf("drop %s: %w", id, err)
	}
	a.log.Info("sandbox dropped", "sandbox", id, "keep_snapshot", keepSnapshot)
	return nil
}

// keepSnapshot lets go of a sleeping sandbox's record without deleting
// its snapshot, which another node owns now (and may still be about to
// wake from). The record stays behind marked failed, as a tombstone:
// Hypnos's clean-up at the next start deletes every snapshot under this
// node's prefix that no record refers to, and must not delete this one;
// a failed record is never woken nor counted as sleeping.
func (a *Agent) keepSnapshot(ctx context.Context, sr *snapRuntime, id string) error {
	rec, err := sr.records.GetRecord(ctx, id)
	if err != nil && !errors.Is(err, tartarus.ErrNotFound) {
		return err
	}
	if rec != nil {
		if err := sr.records.DeleteRecord(ctx, id); err != nil {
			return err
		}
	}
	// Without a record, Forget only clears what Hypnos holds in memory.
	if err := sr.hyp.Forget(ctx, id); err != nil {
		return err
	}
	if rec == nil {
		return nil
	}
	rec.Status, rec.Error = hypnos.StatusFailed, msgDropped+" (the snapshot is another node's now)"
	return sr.records.PutRecord(ctx, rec)
}

// Dropped reports whether sb ended because the cluster dropped it from
// this node (its record here is stale, not news).
func Dropped(sb *tartarus.Sandbox) bool { return sb.Error == msgDropped }

// SleepRecord returns the sleep record of a hibernated sandbox (what
// another node needs to wake it), or an error wrapping ErrNotFound.
func (a *Agent) SleepRecord(ctx context.Context, id string) (*hypnos.SleepRecord, error) {
	sb, err := a.cfg.Store.Get(ctx, id)
	if err != nil {
		return nil, err
	}
	sr, ok := a.snaps[sb.Runtime]
	if !ok {
		return nil, tartarus.Errorf(tartarus.ErrNotFound, "sleep record of %s: runtime %s does not hibernate here", id, sb.Runtime)
	}
	return sr.hyp.Record(ctx, id)
}
