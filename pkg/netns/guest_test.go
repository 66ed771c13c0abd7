package netns_test

import (
	"context"
	"io"
	"net"
	"os"
	"testing"

	"github.com/tartarus-sandbox/tartarus/pkg/netns"
)

// TestGuestNetns: a guest namespace (what container sandboxes join) is
// numbered as a microVM guest, reaches an allowed host and not a
// disallowed one, its ports are reached by DialGuest, and destroy and
// reconcile leave nothing of it.
func TestGuestNetns(t *testing.T) {
	in, m := setup(t)
	before := snapshot(t, in, m)
	ctx := context.Background()
	spec := netns.Spec{GuestNetns: true, Policy: netns.Policy{Mode: netns.ModeRestricted, Allow: rules(t, "allowed.example")}}
	sb := create(t, m, "guest1", spec)
	if sb.GuestNetns == "" {
		t.Fatal("no guest namespace")
	}
	guest := &netns.Sandbox{Netns: sb.GuestNetns}
	if _, err := get(guest, in, "http://allowed.example/hello"); err != nil {
		t.Errorf("allowed.example from the guest namespace: %v", err)
	}
	if _, err := get(guest, in, "http://blocked.example/hello"); err == nil {
		t.Error("blocked.example reached from the guest namespace")
	}

	var ln net.Listener
	if err := netns.Do(sb.GuestNetns, func() error {
		var err error
		ln, err = net.Listen("tcp4", ":8080")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		if c, err := ln.Accept(); err == nil {
			_, _ = c.Write([]byte("hi"))
			c.Close()
		}
	}()
	c, err := m.DialGuest(ctx, "guest1", 8080)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(c)
	c.Close()
	if string(b) != "hi" {
		t.Errorf("DialGuest read %q", b)
	}

	if err := m.Destroy(ctx, "guest1"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(sb.GuestNetns); err == nil {
		t.Error("guest namespace left after destroy")
	}
	// A crashed agent's guest namespaces go on reconcile.
	create(t, m, "guest2", spec)
	if _, err := m.Reconcile(ctx, nil); err != nil {
		t.Fatal(err)
	}
	if after := snapshot(t, in, m); after != before {
		t.Fatalf("leftovers:\nbefore:\n%s\nafter:\n%s", before, after)
	}
}
