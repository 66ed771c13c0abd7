package cerberus

import (
	"fmt"
	"net/netip"
	"sync"
	"time"

	"github.com/tartarus-sandbox/tartarus/pkg/clock"
)

// FailureAuditConfig bounds how many failed authentications reach the
// audit log. Anyone can send requests with bogus credentials; written one
// by one (and each fsync'd) they would cost disk and I/O at the attacker's
// rate and rotate the real evidence away. So failures are admitted per
// source address (an IPv6 one by its /64) through a token bucket, and
// under one global bucket across all sources; the rest are counted
// (tartarus_audit_failures_suppressed_total) and summed up in the next
// entry written for that source. Zero values take the defaults.
type FailureAuditConfig struct {
	PerSourceRate  float64 // entries per second per source; default 1
	PerSourceBurst int     // default 20
	GlobalRate     float64 // entries per second over all sources; default 20
	GlobalBurst    int     // default 200
	MaxSources     int     // sources remembered; default 10000
}

func (c FailureAuditConfig) withDefaults() FailureAuditConfig {
	if c.PerSourceRate <= 0 {
		c.PerSourceRate = 1
	}
	if c.PerSourceBurst <= 0 {
		c.PerSourceBurst = 20
	}
	if c.GlobalRate <= 0 {
		c.GlobalRate = 20
	}
	if c.GlobalBurst <= 0 {
		c.GlobalBurst = 200
	}
	if c.MaxSources <= 0 {
		c.MaxSources = 10000
	}
	return c
}

// failureGate decides which failed authentications are written.
type failureGate struct {
	cfg   FailureAuditConfig
	clock clock.Clock

	mu      sync.Mutex
	global  tokenBucket
	sources map[string]*sourceState
}

type sourceState struct {
	bucket     tokenBucket
	suppressed uint64    // failures not written since the last one that was
	since      time.Time // first of those
}

type tokenBucket struct {
	tokens float64
	last   time.Time
}

// take refills b at rate up to burst and takes one token if there is one.
func (b *tokenBucket) take(now time.Time, rate float64, burst int) bool {
	if b.last.IsZero() {
		b.tokens = float64(burst)
	} else if dt := now.Sub(b.last).Seconds(); dt > 0 {
		b.tokens = min(float64(burst), b.tokens+dt*rate)
	}
	b.last = now
	if b.tokens >= 1 {
		b.tokens--
		return true
	}
	return false
}

func newFailureGate(cfg FailureAuditConfig, clk clock.Clock) *failureGate {
	return &failureGate{cfg: cfg.withDefaults(), clock: clk, sources: map[string]*sourceState{}}
}

// admit reports whether a failure from addr is written; when it is, note
// says how many earlier ones from the same source were not ("" for none).
func (g *failureGate) admit(addr string) (ok bool, note string) {
	now := g.clock.Now()
	key := sourceKey(addr)
	g.mu.Lock()
	defer g.mu.Unlock()
	st := g.sources[key]
	if st == nil {
		if len(g.sources) >= g.cfg.MaxSources {
			g.pruneLocked(now)
		}
		st = &sourceState{}
		if len(g.sources) < g.cfg.MaxSources {
			g.sources[key] = st
		}
	}
	if !st.bucket.take(now, g.cfg.PerSourceRate, g.cfg.PerSourceBurst) || !g.global.take(now, g.cfg.GlobalRate, g.cfg.GlobalBurst) {
		if st.suppressed == 0 {
			st.since = now
		}
		st.suppressed++
		return false, ""
	}
	if st.suppressed > 0 {
		note = fmt.Sprintf("; %d earlier failures from %s since %s not written", st.suppressed, key, st.since.UTC().Format(time.RFC3339))
		st.suppressed = 0
	}
	return true, note
}

// pruneLocked forgets the sources whose buckets are full again and that
// have nothing to report: they are as new.
func (g *failureGate) pruneLocked(now time.Time) {
	full := time.Duration(float64(g.cfg.PerSourceBurst) / g.cfg.PerSourceRate * float64(time.Second))
	for k, st := range g.sources {
		if st.suppressed == 0 && now.Sub(st.bucket.last) >= full {
			delete(g.sources, k)
		}
	}
}

// sourceKey is the address a failure is charged to: an IPv6 peer by its
// /64 (one host usually holds the whole prefix), others as they are.
func sourceKey(addr string) string {
	ip, err := netip.ParseAddr(addr)
	if err != nil {
		return addr
	}
	if ip.Is6() && !ip.Is4In6() {
		p, _ := ip.Prefix(64)
		return p.String()
	}
	return ip.Unmap().String()
}
