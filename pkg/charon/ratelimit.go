package charon

import (
	"context"
	"fmt"
	"hash/maphash"
	"log/slog"
	"math"
	"strconv"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tartarus-sandbox/tartarus/pkg/clock"
)

// Decision is a rate limiter's answer for one request.
type Decision struct {
	Allowed    bool
	Limit      int           // burst: the most requests at once
	Remaining  int           // whole tokens left after this request
	RetryAfter time.Duration // when refused: until one token is back
	Reset      time.Duration // until the bucket is full again
}

// Limiter takes one token from the bucket named key.
type Limiter interface {
	Take(ctx context.Context, key string) (Decision, error)
}

var (
	_ Limiter = (*LocalLimiter)(nil)
	_ Limiter = (*RedisLimiter)(nil)
)

// LocalLimiter keeps token buckets in this process: each key has a bucket of
// Burst tokens refilled at RequestsPerSecond. Buckets idle long enough to be
// full again are dropped, so memory follows the number of active keys.
type LocalLimiter struct {
	rate   float64 // tokens per second
	burst  float64
	clock  clock.Clock
	seed   maphash.Seed
	shards [32]limiterShard
}

type limiterShard struct {
	mu      sync.Mutex
	buckets map[string]*bucket
	ops     int
}

type bucket struct {
	tokens float64
	last   time.Time
}

// NewLocalLimiter returns a limiter of rps requests per second with the
// given burst.
func NewLocalLimiter(rps, burst int, clk clock.Clock) *LocalLimiter {
	if clk == nil {
		clk = clock.System{}
	}
	if burst <= 0 {
		burst = max(rps, 1)
	}
	l := &LocalLimiter{rate: float64(rps), burst: float64(burst), clock: clk, seed: maphash.MakeSeed()}
	for i := range l.shards {
		l.shards[i].buckets = make(map[string]*bucket)
	}
	return l
}

// Take implements Limiter.
func (l *LocalLimiter) Take(_ context.Context, key string) (Decision, error) {
	now := l.clock.Now()
	sh := &l.shards[maphash.String(l.seed, key)%uint64(len(l.shards))]
	sh.mu.Lock()
	defer sh.mu.Unlock()
	sh.ops++
	if sh.ops%1024 == 0 {
		l.sweep(sh, now)
	}
	b := sh.buckets[key]
	if b == nil {
		b = &bucket{tokens: l.burst, last: now}
		sh.buckets[key] = b
	}
	if el := now.Sub(b.last); el > 0 {
		b.tokens = math.Min(l.burst, b.tokens+el.Seconds()*l.rate)
		b.last = now
	}
	d := Decision{Limit: int(l.burst)}
	if b.tokens >= 1 {
		b.tokens--
		d.Allowed = true
	} else {
		d.RetryAfter = l.secs((1 - b.tokens) / l.rate)
	}
	d.Remaining = int(b.tokens)
	d.Reset = l.secs((l.burst - b.tokens) / l.rate)
	return d, nil
}

func (l *LocalLimiter) secs(s float64) time.Duration { return time.Duration(s * float64(time.Second)) }

// sweep drops buckets that have refilled completely since their last use.
func (l *LocalLimiter) sweep(sh *limiterShard, now time.Time) {
	full := l.secs(l.burst / l.rate)
	for k, b := range sh.buckets {
		if now.Sub(b.last) >= full {
			delete(sh.buckets, k)
		}
	}
}

// RedisLimiter keeps the buckets in Redis so that several ferries share one
// limit per key. One Lua script reads, refills and takes atomically, with
// Redis's own clock (TIME), so the ferries' clocks need not agree. If Redis
// cannot be reached the limiter falls back to a local bucket for that
// request (fail open, at the local rate) and logs it, rather than refusing
// every request because the limiter is down.
type RedisLimiter struct {
	client   redis.UniversalClient
	rps      int
	burst    int
	prefix   string
	fallback *LocalLimiter
	log      *slog.Logger
}

// tokenBucketScript: KEYS[1] bucket; ARGV rate (tokens/s), burst.
// Returns {allowed, tokens (string, fractional), now_us}.
var tokenBucketScript = redis.NewScript(`
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local v = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(v[1])
local ts = tonumber(v[2])
if tokens == nil or ts == nil then
  tokens = burst
  ts = now
end
if now > ts then
  tokens = math.min(burst, tokens + (now - ts) * rate / 1000000)
  ts = now
end
local allowed = 0
if tokens >= 1 then
  tokens = tokens - 1
  allowed = 1
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', tostring(ts))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000)
return {allowed, tostring(tokens)}
`)

// NewRedisLimiter returns a limiter sharing its buckets through client.
// Keys are prefixed with "tartarus:ferry:rl:".
func NewRedisLimiter(client redis.UniversalClient, rps, burst int, clk clock.Clock, log *slog.Logger) *RedisLimiter {
	if burst <= 0 {
		burst = max(rps, 1)
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &RedisLimiter{client: client, rps: rps, burst: burst, prefix: "tartarus:ferry:rl:",
		fallback: NewLocalLimiter(rps, burst, clk), log: log}
}

// Take implements Limiter.
func (l *RedisLimiter) Take(ctx context.Context, key string) (Decision, error) {
	res, err := tokenBucketScript.Run(ctx, l.client, []string{l.prefix + key}, l.rps, l.burst).Slice()
	if err == nil && len(res) == 2 {
		allowed, _ := res[0].(int64)
		ts, _ := res[1].(string)
		tokens, perr := strconv.ParseFloat(ts, 64)
		if perr == nil {
			rate := float64(l.rps)
			d := Decision{Allowed: allowed == 1, Limit: l.burst, Remaining: int(tokens),
				Reset: time.Duration((float64(l.burst) - tokens) / rate * float64(time.Second))}
			if !d.Allowed {
				d.RetryAfter = time.Duration((1 - tokens) / rate * float64(time.Second))
			}
			return d, nil
		}
		err = fmt.Errorf("token %q: %w", ts, perr)
	} else if err == nil {
		err = fmt.Errorf("unexpected reply %v", res)
	}
	d, _ := l.fallback.Take(ctx, key)
	return d, fmt.Errorf("redis rate limit %s (answered locally): %w", key, err)
}
