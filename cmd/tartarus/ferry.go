package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"runtime/debug"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/spf13/cobra"

	"github.com/tartarus-sandbox/tartarus/pkg/charon"
	"github.com/tartarus-sandbox/tartarus/pkg/clock"
)

// ferryOptions are the flags of `tartarus ferry`; a --config file gives the
// same settings and flags given explicitly override it.
type ferryOptions struct {
	listen, adminListen, adminToken string
	shores                          []string
	strategy, config, redisURL      string
	zone                            string
	crossingTimeout                 time.Duration
	rateLimit, rateBurst            int
	rateKey                         string
	whenAllUnhealthy                string
	logLevel                        string
	transport                       string
}

func newFerryCmd() *cobra.Command {
	var o ferryOptions
	cmd := &cobra.Command{
		Use:   "ferry",
		Short: "Run the ferry: a load-balancing reverse proxy in front of several servers",
		Long: `The ferry (Charon) is one address in front of several tartarus servers
("shores"). It spreads requests over healthy shores, ejects failing ones,
opens a circuit breaker per shore, limits each tenant's request rate (shared
through Redis with --redis) and retries what is safe to retry.

GET /ferry/health on the listen address reports the ferry's health. The
admin address (loopback by default) serves /metrics, /ferry/health and the
shore API: GET/POST /ferry/shores, DELETE /ferry/shores/{id}.

A --shore is a base URL, optionally with settings:
  --shore http://10.0.0.1:7700,id=olympus-1,weight=3,zone=eu-1,priority=0`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return runFerry(cmd, o) },
	}
	fl := cmd.Flags()
	fl.StringVar(&o.listen, "listen", "127.0.0.1:7710", "address for client requests")
	fl.StringVar(&o.adminListen, "admin-listen", "127.0.0.1:7711", `address for the admin API and /metrics ("off" to disable)`)
	fl.StringVar(&o.adminToken, "admin-token", os.Getenv("TARTARUS_FERRY_ADMIN_TOKEN"), "bearer token the admin API requires (default $TARTARUS_FERRY_ADMIN_TOKEN; none if empty)")
	fl.StringArrayVar(&o.shores, "shore", nil, "a shore (server) base URL with optional ,id=,weight=,zone=,priority= (repeatable)")
	fl.StringVar(&o.strategy, "strategy", "round_robin", "round_robin, least_conn, weighted, ip_hash or zone_aware")
	fl.StringVar(&o.config, "config", "", "YAML config file (see docs/ferry.md)")
	fl.StringVar(&o.redisURL, "redis", "", "redis://host:port/db to share rate limits between ferries")
	fl.StringVar(&o.zone, "zone", "", "this ferry's zone, for zone_aware")
	fl.DurationVar(&o.crossingTimeout, "crossing-timeout", 30*time.Second, "deadline for a shore's answer headers, retries included (0: none)")
	fl.IntVar(&o.rateLimit, "rate-limit", 0, "requests per second per key (0: no rate limit)")
	fl.IntVar(&o.rateBurst, "rate-burst", 0, "bucket size per key (default: the rate)")
	fl.StringVar(&o.rateKey, "rate-key", "tenant", "what a bucket belongs to: tenant, identity or ip")
	fl.StringVar(&o.whenAllUnhealthy, "when-all-unhealthy", "try_all", "try_all (send anyway where breakers allow) or reject (503)")
	fl.StringVar(&o.logLevel, "log-level", "info", "debug, info, warn or error")
	fl.StringVar(&o.transport, "transport", "own", `"own" (the ferry's HTTP/1.1 pool) or "std" (net/http's Transport) for plain-HTTP shores`)
	return cmd
}

func runFerry(cmd *cobra.Command, o ferryOptions) error {
	ctx := cmd.Context()
	var level slog.Level
	if err := level.UnmarshalText([]byte(o.logLevel)); err != nil {
		return fmt.Errorf("--log-level: %w", err)
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level})).With("component", "ferry")
	if os.Getenv("GOGC") == "" {
		// The ferry's heap is small and short-lived garbage per request is
		// most of it: collecting at 5x the live heap instead of 2x saves
		// about 7% CPU per request under load (measured, bench/charon).
		debug.SetGCPercent(400)
	}

	fc := &charon.FileConfig{Ferry: charon.FerryConfig{CrossingTimeout: 30 * time.Second}}
	if o.config != "" {
		var err error
		if fc, err = charon.LoadFileConfig(o.config); err != nil {
			return err
		}
	}
	fl := cmd.Flags()
	set := func(name string, apply func()) {
		if fl.Changed(name) || o.config == "" {
			apply()
		}
	}
	set("listen", func() { fc.Listen = o.listen })
	set("admin-listen", func() { fc.AdminListen = o.adminListen })
	set("admin-token", func() { fc.AdminToken = o.adminToken })
	set("redis", func() { fc.Redis = o.redisURL })
	set("strategy", func() { fc.Ferry.Strategy = charon.LoadBalanceStrategy(o.strategy) })
	set("zone", func() { fc.Ferry.Zone = o.zone })
	set("crossing-timeout", func() { fc.Ferry.CrossingTimeout = o.crossingTimeout })
	set("when-all-unhealthy", func() { fc.Ferry.WhenAllUnhealthy = charon.AllUnhealthyPolicy(o.whenAllUnhealthy) })
	set("rate-key", func() { fc.Ferry.RateLimiting.KeyFunc = o.rateKey })
	set("rate-burst", func() { fc.Ferry.RateLimiting.Burst = o.rateBurst })
	set("rate-limit", func() {
		fc.Ferry.RateLimiting.RequestsPerSecond = o.rateLimit
		fc.Ferry.RateLimiting.Enabled = o.rateLimit > 0
	})
	if fc.Listen == "" {
		fc.Listen = o.listen
	}
	if fc.AdminListen == "" && !fl.Changed("admin-listen") {
		fc.AdminListen = o.adminListen
	}
	for _, v := range o.shores {
		s, err := charon.ParseShoreFlag(v)
		if err != nil {
			return err
		}
		fc.Shores = append(fc.Shores, *s)
	}
	if err := fc.Ferry.Validate(); err != nil {
		return err
	}

	if o.transport != "own" && o.transport != "std" {
		return fmt.Errorf("--transport %q: want own or std", o.transport)
	}
	// The one clock of this ferry: breakers, ejections and rate limits read it.
	clk := clock.System{}
	opts := charon.Options{Config: fc.Ferry, Clock: clk, Logger: log, StdTransport: o.transport == "std"}
	if fc.Redis != "" {
		if !fc.Ferry.RateLimiting.Enabled {
			return errors.New("--redis shares rate limits: also set --rate-limit (or rate_limiting in --config)")
		}
		ropts, err := redis.ParseURL(fc.Redis)
		if err != nil {
			return fmt.Errorf("--redis %q: %w", fc.Redis, err)
		}
		rdb := redis.NewClient(ropts)
		defer rdb.Close()
		pctx, cancel := context.WithTimeout(ctx, 3*time.Second)
		err = rdb.Ping(pctx).Err()
		cancel()
		if err != nil {
			return fmt.Errorf("redis %s: %w", ropts.Addr, err)
		}
		rl := fc.Ferry.RateLimiting
		opts.Limiter = charon.NewRedisLimiter(rdb, rl.RequestsPerSecond, rl.Burst, clk, log)
	}
	ferry, err := charon.New(opts)
	if err != nil {
		return err
	}
	defer ferry.Close()
	for i := range fc.Shores {
		if err := ferry.RegisterShore(&fc.Shores[i]); err != nil {
			return err
		}
	}
	if len(fc.Shores) == 0 {
		log.Warn("no shores yet: add them with POST /ferry/shores on the admin address")
	}

	servers := []*http.Server{{Addr: fc.Listen, Handler: ferry}}
	if fc.AdminListen != "" && fc.AdminListen != "off" {
		servers = append(servers, &http.Server{Addr: fc.AdminListen, Handler: ferry.AdminHandler(fc.AdminToken)})
	}
	errc := make(chan error, len(servers))
	for i, srv := range servers {
		srv.ReadHeaderTimeout = 10 * time.Second
		srv.IdleTimeout = 2 * time.Minute
		srv.ErrorLog = slog.NewLogLogger(log.Handler(), slog.LevelDebug)
		ln, err := net.Listen("tcp", srv.Addr)
		if err != nil {
			return fmt.Errorf("listen %s: %w", srv.Addr, err)
		}
		what := "ferry listening"
		if i == 1 {
			what = "ferry admin listening"
		}
		log.Info(what, "addr", ln.Addr().String(), "strategy", fc.Ferry.Strategy, "shores", len(fc.Shores))
		go func() { errc <- srv.Serve(ln) }()
	}
	select {
	case <-ctx.Done():
	case err := <-errc:
		return fmt.Errorf("ferry: %w", err)
	}
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	for _, srv := range servers {
		_ = srv.Shutdown(sctx)
	}
	return nil
}
