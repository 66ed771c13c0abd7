package phlegethon

import (
	"context"
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/tartarus-sandbox/tartarus/pkg/clock"
)

func TestDeadlines(t *testing.T) {
	ctx := context.Background()
	clk := clock.NewFake(t0)
	var ended []string
	failing := true
	d, err := NewDeadlines(clk, func(_ context.Context, id string) error {
		if id == "flaky" && failing {
			failing = false
			return errors.New("agent unreachable")
		}
		ended = append(ended, id)
		return nil
	}, 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	d.Watch("a", t0, 30*time.Second)
	d.Watch("b", t0.Add(-time.Minute), 90*time.Second) // re-watched after a restart
	d.Watch("none", t0, 0)
	d.Watch("gone", t0, time.Second)
	d.Forget("gone")
	d.Watch("flaky", t0, 10*time.Second)
	if got := d.Check(ctx); len(got) != 0 {
		t.Fatalf("ended %v at once", got)
	}
	clk.Advance(10 * time.Second)
	if got := d.Check(ctx); len(got) != 0 {
		t.Fatalf("ended %v while flaky failed", got)
	}
	if got := d.Check(ctx); !slices.Equal(got, []string{"flaky"}) {
		t.Fatalf("retry ended %v", got)
	}
	clk.Advance(20 * time.Second)
	got := d.Check(ctx)
	slices.Sort(got)
	if !slices.Equal(got, []string{"a", "b"}) {
		t.Errorf("at 30s ended %v", got)
	}
	clk.Advance(time.Hour)
	if got := d.Check(ctx); len(got) != 0 {
		t.Errorf("ended %v again", got)
	}
	if _, err := NewDeadlines(nil, nil, 0, nil); err == nil {
		t.Error("nil parts accepted")
	}
}
