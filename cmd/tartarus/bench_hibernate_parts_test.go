package main

import (
	"testing"
	"time"
)

// hibernateParts splits the server's time of the hibernates of one
// sandbox (medians) by what the server logged for each: the driver's
// snapshot (pause, QEMU's save, which also packs, compresses and stores
// a streamed memory, and the disk copy), Nyx packing and storing the rest
// and the metadata, Hypnos recording the sleep and destroying the VM, and
// what came before the snapshot started.
type hibernateParts struct {
	before, snapshot, store, destroy time.Duration
}

var hibernatePartNames = []partName[hibernateParts]{
	{"before the snapshot (lookups)", func(p hibernateParts) time.Duration { return p.before }},
	{"driver snapshot (save, stream)", func(p hibernateParts) time.Duration { return p.snapshot }},
	{"pack + store the rest, metadata", func(p hibernateParts) time.Duration { return p.store }},
	{"record + destroy the VM", func(p hibernateParts) time.Duration { return p.destroy }},
}

// hibernateBreakdown reads the server's log for the hibernates of id.
func hibernateBreakdown(b *testing.B, e *e2e, id string) hibernateParts {
	b.Helper()
	var before, snapshot, store, destroy []time.Duration
	var snapAt, storedAt time.Time
	var snapTook time.Duration
	for _, l := range serverLog(b, e) {
		f := l.f
		if f["sandbox"] != id {
			continue
		}
		at, _ := time.Parse(time.RFC3339Nano, f["time"])
		switch l.msg {
		case "snapshotted":
			snapAt, snapTook = at, lastMark(marks(f))
		case "snapshot stored":
			storedAt = at
		case "sandbox hibernated":
			took, _ := time.ParseDuration(f["took"])
			if snapAt.IsZero() || storedAt.IsZero() {
				continue
			}
			st, de := storedAt.Sub(snapAt), at.Sub(storedAt)
			snapshot = append(snapshot, snapTook)
			store = append(store, st)
			destroy = append(destroy, de)
			before = append(before, took-snapTook-st-de)
			snapAt, storedAt = time.Time{}, time.Time{}
		}
	}
	return hibernateParts{before: pct(before, 50), snapshot: pct(snapshot, 50), store: pct(store, 50), destroy: pct(destroy, 50)}
}
