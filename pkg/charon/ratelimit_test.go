package charon

import (
	"context"
	"testing"
	"time"
)

func TestLocalLimiter(t *testing.T) {
	clock := newFakeClock()
	l := NewLocalLimiter(2, 4, clock) // 2/s, burst 4
	ctx := context.Background()
	take := func(key string) Decision {
		d, err := l.Take(ctx, key)
		if err != nil {
			t.Fatal(err)
		}
		return d
	}
	for i := range 4 {
		if d := take("a"); !d.Allowed || d.Remaining != 3-i || d.Limit != 4 {
			t.Fatalf("take %d: %+v, want allowed with %d left", i, d, 3-i)
		}
	}
	d := take("a")
	if d.Allowed || d.RetryAfter != 500*time.Millisecond {
		t.Fatalf("over the burst: %+v, want refused, retry after 500ms", d)
	}
	if d := take("b"); !d.Allowed {
		t.Fatal("another key was refused")
	}
	clock.Advance(500 * time.Millisecond)
	if d := take("a"); !d.Allowed {
		t.Fatal("refused after a token came back")
	}
	if d := take("a"); d.Allowed {
		t.Fatal("allowed with no token")
	}
	clock.Advance(time.Hour)
	if d := take("a"); !d.Allowed || d.Remaining != 3 {
		t.Fatalf("after an hour: %+v, want a full bucket", d)
	}
}

func TestLocalLimiterDropsIdleBuckets(t *testing.T) {
	clock := newFakeClock()
	l := NewLocalLimiter(10, 10, clock)
	for i := range 5000 {
		_, _ = l.Take(context.Background(), string(rune('a'+i%26))+time.Duration(i).String())
	}
	clock.Advance(2 * time.Second)
	for i := range 80000 { // every shard sees more than 1024 takes
		_, _ = l.Take(context.Background(), "hot"+time.Duration(i%64).String())
	}
	n := 0
	for i := range l.shards {
		n += len(l.shards[i].buckets)
	}
	if n > 4000 {
		t.Fatalf("%d buckets kept after they refilled, want idle ones dropped", n)
	}
}

func TestRedisLimiterSharedBetweenLimiters(t *testing.T) {
	rdb := startRedis(t)
	ctx := context.Background()
	a := NewRedisLimiter(rdb, 1, 5, nil, nil)
	b := NewRedisLimiter(rdb, 1, 5, nil, nil)
	allowed := 0
	for i := range 10 {
		l := a
		if i%2 == 1 {
			l = b
		}
		d, err := l.Take(ctx, "tenant-x")
		if err != nil {
			t.Fatalf("take %d: %v", i, err)
		}
		if d.Allowed {
			allowed++
		} else if d.RetryAfter <= 0 || d.RetryAfter > time.Second {
			t.Fatalf("refused with RetryAfter %v, want (0, 1s]", d.RetryAfter)
		}
	}
	// 5 from the burst, at most one more refilled while the loop ran.
	if allowed < 5 || allowed > 6 {
		t.Fatalf("%d of 10 allowed across two limiters sharing a 5-token bucket", allowed)
	}
	if d, _ := a.Take(ctx, "tenant-y"); !d.Allowed {
		t.Fatal("another tenant was refused")
	}
}

func TestRedisLimiterFallsBackWhenRedisIsDown(t *testing.T) {
	rdb := startRedis(t)
	l := NewRedisLimiter(rdb, 1, 2, nil, nil)
	rdb.Close()
	d, err := l.Take(context.Background(), "k")
	if err == nil || !d.Allowed {
		t.Fatalf("with redis closed: %+v, %v; want a local decision and an error", d, err)
	}
}
