package cluster

import (
	"context"
	"errors"
	"net/http"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tartarus-sandbox/tartarus/pkg/olympus/placement"
	"github.com/tartarus-sandbox/tartarus/pkg/store"
	"github.com/tartarus-sandbox/tartarus/pkg/store/pgtest"
)

func TestOffQuarantineNodes(t *testing.T) {
	nodes := []placement.Node{
		{Name: "a", Labels: map[string]string{"pool": "test"}},
		{Name: "q", Labels: map[string]string{"pool": "test", "quarantine": "yes"}},
		{Name: "b"},
	}
	for _, tc := range []struct {
		name   string
		labels map[string]string
		want   []string
	}{
		{"an ordinary create", nil, []string{"a", "b"}},
		{"one that names other labels", map[string]string{"pool": "test"}, []string{"a", "b"}},
		{"one that names the quarantine label", map[string]string{"quarantine": "yes"}, []string{"a", "q", "b"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var got []string
			for _, n := range offQuarantineNodes(slices.Clone(nodes), placement.Request{Labels: tc.labels}) {
				got = append(got, n.Name)
			}
			if !slices.Equal(got, tc.want) {
				t.Fatalf("got %v, want %v", got, tc.want)
			}
		})
	}
}

// TestOneReplicaTicks runs the quarantine's lease loop on two replicas of
// one database: only one leads at a time, both refresh, and when the
// leader stops the other takes over.
func TestOneReplicaTicks(t *testing.T) {
	admin := pgtest.StartPostgres(t)
	e := quickEnv(t, admin, "quarantine_lease")
	st2, err := store.OpenPostgres(context.Background(), e.dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st2.Close() })
	c2, err := New(Config{Store: st2, PollInterval: 20 * time.Millisecond, AgentClient: http.DefaultClient,
		AgentIdentity: func(*http.Request) (string, error) { return "", errors.New("none") }})
	if err != nil {
		t.Fatal(err)
	}
	var leads, refreshes [2]atomic.Int64
	run := func(c *Cluster, i int) (stop func()) {
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() {
			defer close(done)
			c.runLeased(ctx, quarantineLease, "test", 0,
				func(context.Context) { refreshes[i].Add(1) }, func(context.Context) { leads[i].Add(1) })
		}()
		return func() { cancel(); <-done }
	}
	stop1 := run(e.c, 0)
	waitUntil(t, "replica 1 to lead", func() bool { return leads[0].Load() > 3 })
	stop2 := run(c2, 1)
	defer stop2()
	waitUntil(t, "replica 2 to refresh", func() bool { return refreshes[1].Load() > 3 })
	if n := leads[1].Load(); n != 0 {
		t.Fatalf("replica 2 led %d times while replica 1 held the lease", n)
	}
	stop1()
	waitUntil(t, "replica 2 to take over", func() bool { return leads[1].Load() > 0 })
}

// TestQuarantineLockIsShared takes one sandbox's quarantine lock at one
// replica: another replica waits for it, and a different sandbox does not.
func TestQuarantineLockIsShared(t *testing.T) {
	admin := pgtest.StartPostgres(t)
	e := quickEnv(t, admin, "quarantine_lock")
	st2, err := store.OpenPostgres(context.Background(), e.dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st2.Close() })
	c2, err := New(Config{Store: st2, AgentClient: http.DefaultClient,
		AgentIdentity: func(*http.Request) (string, error) { return "", errors.New("none") }})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	unlock, err := e.c.QuarantineLock(ctx, "sb-1")
	if err != nil {
		t.Fatal(err)
	}
	other, err := c2.QuarantineLock(ctx, "sb-2")
	if err != nil {
		t.Fatalf("another sandbox's lock: %v", err)
	}
	other()
	short, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
	defer cancel()
	if _, err := c2.QuarantineLock(short, "sb-1"); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("the same sandbox's lock at another replica: %v, want it to wait", err)
	}
	unlock()
	again, err := c2.QuarantineLock(ctx, "sb-1")
	if err != nil {
		t.Fatalf("after the unlock: %v", err)
	}
	again()
}
