package cluster

import (
	"context"
	"log/slog"
	"testing"
	"time"

	"github.com/tartarus-sandbox/tartarus/pkg/olympus/cluster/clustertest"
)

// TestRedisBusSurvivesRestart sends events between two replicas' buses
// over a real Redis, restarts Redis, and checks that events flow again
// without anyone re-subscribing by hand.
func TestRedisBusSurvivesRestart(t *testing.T) {
	r := clustertest.StartRedis(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	log := slog.New(slog.DiscardHandler)
	pub, err := NewRedisBus(r.URL, log)
	if err != nil {
		t.Fatal(err)
	}
	defer pub.Close()
	sub, err := NewRedisBus(r.URL, log)
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	got := make(chan Event, 16)
	go func() { _ = sub.Run(ctx, func(ev Event) { got <- ev }) }()

	// send publishes until the subscriber hears one (a subscription takes
	// a moment to be in place, and again after a restart).
	send := func(id string) {
		t.Helper()
		deadline := time.Now().Add(20 * time.Second)
		for time.Now().Before(deadline) {
			_ = pub.Publish(ctx, Event{Kind: EventDone, ID: id})
			select {
			case ev := <-got:
				if ev.Kind == EventDone && ev.ID == id {
					return
				}
			case <-time.After(100 * time.Millisecond):
			}
		}
		t.Fatalf("event %s never arrived", id)
	}
	send("before")
	r.Stop()
	if err := pub.Publish(ctx, Event{Kind: EventDone, ID: "while-down"}); err == nil {
		t.Fatal("publish with Redis down did not fail")
	}
	r.Start(t)
	send("after")
}

func TestLocalBus(t *testing.T) {
	b := &LocalBus{}
	ctx, cancel := context.WithCancel(context.Background())
	got := make(chan Event, 1)
	ran := make(chan struct{})
	go func() { _ = b.Run(ctx, func(ev Event) { got <- ev }); close(ran) }()
	deadline := time.Now().Add(5 * time.Second)
	for {
		_ = b.Publish(ctx, Event{Kind: EventCommand, Node: "a"})
		select {
		case ev := <-got:
			if ev.Node != "a" {
				t.Fatalf("event %+v", ev)
			}
			cancel()
			<-ran
			return
		case <-time.After(10 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatal("local event never delivered")
		}
	}
}
