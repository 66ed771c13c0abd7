// Package thanatos (after the Greek god of peaceful death) ends sandboxes
// through one phased, observable, crash-safe termination.
//
// A termination moves through phases, each written to a Journal before its
// step runs, so a manager that dies mid-way is resumed by the next one:
//
//	initiated     pre-mortem hooks run (each cut at its budget)
//	signaled      the signal (SIGTERM by default) goes to every guest process
//	draining      wait until the sandbox's active work ends or the deadline
//	checkpointing a restorable snapshot is taken (only if asked)
//	terminating   the sandbox is killed and its resources released
//	completed / failed, then post-mortem hooks, webhooks and the callback
//
// The deadline is fixed when the termination starts (initiation + grace
// period) and decided by the injected clock; hooks spend from it as
// Kubernetes' preStop does.
//
// The seed's interface is kept and extended where real use needs more:
// InitiateShutdown returns the status it started (or the one already in
// progress), ShutdownOptions carries the tenant (who owns the checkpoint)
// and a checkpoint lifetime, TerminationStatus records each phase's start
// time, and checkpoints carry their tenant and the snapshot reference
// (SnapshotRef) instead of a path. Those data types are part of the public
// contract and live in pkg/tartarus (termination.go); this package holds the
// engine.
package thanatos

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"time"

	"github.com/tartarus-sandbox/tartarus/pkg/tartarus"
)

// TerminationHandler manages graceful sandbox deaths.
type TerminationHandler interface {
	// InitiateShutdown starts a termination, or returns the one already
	// under way for the sandbox. It does not wait for the termination.
	InitiateShutdown(ctx context.Context, sandboxID string, opts *tartarus.ShutdownOptions) (*tartarus.TerminationStatus, error)
	// Checkpoint takes a restorable checkpoint of a live sandbox.
	Checkpoint(ctx context.Context, sandboxID string) (*tartarus.Checkpoint, error)
	// ForceTerminate ends the grace period now (or starts a termination
	// with none) and waits until the sandbox is gone.
	ForceTerminate(ctx context.Context, sandboxID string) error
	// Status reports a sandbox's termination, running or finished.
	Status(ctx context.Context, sandboxID string) (*tartarus.TerminationStatus, error)
	// ListPending lists the terminations not yet completed or failed.
	ListPending(ctx context.Context) ([]*tartarus.TerminationStatus, error)
}

// MaxCallbackURL bounds a callback URL's length.
const MaxCallbackURL = 2048

// normalize fills o's defaults and checks it against maxGrace. Every problem
// is returned, joined, as ErrInvalid.
func normalize(o tartarus.ShutdownOptions, maxGrace time.Duration) (tartarus.ShutdownOptions, error) {
	if o.Reason == "" {
		o.Reason = tartarus.ReasonUserRequest
	}
	if o.Signal == "" {
		o.Signal = tartarus.SignalTerm
	}
	var errs []error
	if !o.Reason.Valid() {
		errs = append(errs, tartarus.Errorf(tartarus.ErrInvalid, "reason %q: want one of %v", string(o.Reason), tartarus.Reasons))
	}
	if _, err := o.Signal.Syscall(); err != nil {
		errs = append(errs, err)
	}
	if o.GracePeriod < 0 || o.GracePeriod > maxGrace {
		errs = append(errs, tartarus.Errorf(tartarus.ErrInvalid, "grace period %v: want 0 to %v", o.GracePeriod, maxGrace))
	}
	if o.CheckpointTTL < 0 {
		errs = append(errs, tartarus.Errorf(tartarus.ErrInvalid, "checkpoint ttl %v is negative", o.CheckpointTTL))
	}
	if o.CallbackURL != "" {
		if err := checkURL(o.CallbackURL); err != nil {
			errs = append(errs, tartarus.Errorf(tartarus.ErrInvalid, "callback url: %v", err))
		}
	}
	return o, errors.Join(errs...)
}

// checkURL accepts absolute http and https URLs without credentials.
func checkURL(raw string) error {
	if len(raw) > MaxCallbackURL {
		return fmt.Errorf("longer than %d bytes", MaxCallbackURL)
	}
	u, err := url.Parse(raw)
	if err != nil {
		return err
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return fmt.Errorf("scheme %q: want http or https", u.Scheme)
	}
	if u.Hostname() == "" {
		return fmt.Errorf("no host")
	}
	if u.User != nil {
		return fmt.Errorf("credentials in the URL are not allowed")
	}
	return nil
}
