#!/usr/bin/env bash
# Charon benchmark: latency and throughput of the same two backends reached
# directly, through `tartarus ferry`, and through HAProxy, in one run, with wrk.
#
#   bash bench/charon/run.sh            # 8 s per measurement
#   DURATION=5s bash bench/charon/run.sh
#   TARTARUS_BIN=/path/to/tartarus bash bench/charon/run.sh   # skip the build
#
# Needs haproxy and wrk (apt-get install -y haproxy wrk). Everything listens
# on 127.0.0.1 ports 1808x/1809x. Prints a Markdown table. Rows: the
# backend directly, the ferry, the ferry with --transport std, HAProxy.
set -euo pipefail
cd "$(dirname "$0")/../.."
DURATION=${DURATION:-8s}
CONNS=${CONNS:-32}
for b in haproxy wrk; do
	command -v "$b" >/dev/null || { echo "need $b: apt-get install -y $b" >&2; exit 1; }
done
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

if [ -n "${TARTARUS_BIN:-}" ]; then cp "$TARTARUS_BIN" "$work/tartarus"; else go build -o "$work/tartarus" ./cmd/tartarus; fi
go build -o "$work/backend" ./bench/charon/backend

"$work/backend" -listen 127.0.0.1:18081,127.0.0.1:18082 & pids+=($!)
"$work/tartarus" ferry --listen 127.0.0.1:18090 --admin-listen 127.0.0.1:18095 \
	--shore http://127.0.0.1:18081 --shore http://127.0.0.1:18082 --log-level warn & pids+=($!)
declare -A PID
PID[ferry]=$!
# The same ferry on net/http's Transport, for comparison.
"$work/tartarus" ferry --transport std --listen 127.0.0.1:18092 --admin-listen 127.0.0.1:18096 \
	--shore http://127.0.0.1:18081 --shore http://127.0.0.1:18082 --log-level warn & pids+=($!)
PID[ferry-std]=$!

# HAProxy doing the same job: round robin, keep-alive to the backends,
# active health checks every 2 s, 30 s server timeout, X-Forwarded-For.
cat >"$work/haproxy.cfg" <<CFG
global
    maxconn 4096
    nbthread 2
defaults
    mode http
    option http-keep-alive
    option forwardfor
    timeout connect 2s
    timeout client 30s
    timeout server 30s
    http-reuse always
frontend fe
    bind 127.0.0.1:18091
    default_backend shores
backend shores
    balance roundrobin
    option httpchk GET /healthz
    server s1 127.0.0.1:18081 check inter 2s
    server s2 127.0.0.1:18082 check inter 2s
CFG
haproxy -f "$work/haproxy.cfg" -db >"$work/haproxy.log" 2>&1 & pids+=($!)
PID[haproxy]=$!

for port in 18081 18090 18091 18092; do
	for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/v1/templates" >/dev/null && break; sleep 0.1; done
done

# cpu PID -> CPU seconds (user+system) the process has used so far
cpu() { awk -v hz="$(getconf CLK_TCK)" '{printf "%.3f", ($14+$15)/hz}' "/proc/$1/stat"; }

# run NAME URL THREADS CONNS -> "rps p50 p99 requests cpu_us_per_request" (latencies in ms)
run() {
	local out c0 c1
	c0=0; [ -n "${PID[$1]:-}" ] && c0=$(cpu "${PID[$1]}")
	out=$(wrk -t"$3" -c"$4" -d"$DURATION" --latency "$2")
	c1=0; [ -n "${PID[$1]:-}" ] && c1=$(cpu "${PID[$1]}")
	echo "$out" >"$work/wrk-$1-$4.txt"
	awk -v c0="$c0" -v c1="$c1" '
		function ms(v) { if (v ~ /us$/) return v/1000; if (v ~ /ms$/) return v+0; if (v ~ /s$/) return v*1000; return v }
		$1=="50%" {p50=ms($2)} $1=="99%" {p99=ms($2)} $1=="Requests/sec:" {rps=$2} $2=="requests" && $3=="in" {n=$1}
		END { printf "%s %.3f %.3f %d %.1f\n", rps, p50, p99, n, (n ? (c1-c0)*1e6/n : 0) }' <<<"$out"
}

declare -A R
targets="direct:18081 ferry:18090 ferry-std:18092 haproxy:18091"
for target in $targets; do
	name=${target%%:*}; port=${target##*:}
	wrk -t1 -c4 -d1s "http://127.0.0.1:$port/v1/templates" >/dev/null # warm up
	R[$name-lat]=$(run "$name" "http://127.0.0.1:$port/v1/templates" 1 1)
	R[$name-load]=$(run "$name" "http://127.0.0.1:$port/v1/templates" 2 "$CONNS")
done

read -r _ d50 d99 _ _ <<<"${R[direct-lat]}"
echo
echo "wrk, $DURATION per cell, same two backends; 'one at a time' = 1 connection, 'loaded' = 2 threads x $CONNS connections."
echo "CPU/request = user+system CPU time of the proxy process / requests, during the loaded run. Load average: $(cut -d' ' -f1-3 /proc/loadavg)"
echo
echo "| path | one at a time p50 | p99 | added p50 | added p99 | loaded req/s | loaded p50 | loaded p99 | proxy CPU/request |"
echo "|---|---|---|---|---|---|---|---|---|"
for target in $targets; do
	name=${target%%:*}
	read -r _ l50 l99 _ _ <<<"${R[$name-lat]}"
	read -r rps p50 p99 _ cpr <<<"${R[$name-load]}"
	a50=$(awk -v a="$l50" -v b="$d50" 'BEGIN{printf "%+.3f ms", a-b}')
	a99=$(awk -v a="$l99" -v b="$d99" 'BEGIN{printf "%+.3f ms", a-b}')
	c="${cpr} µs"
	if [ "$name" = direct ]; then a50="—"; a99="—"; c="—"; fi
	echo "| $name | ${l50} ms | ${l99} ms | ${a50} | ${a99} | ${rps} | ${p50} ms | ${p99} ms | $c |"
done
read -r frps _ _ _ fc <<<"${R[ferry-load]}"
read -r hrps _ _ _ hc <<<"${R[haproxy-load]}"
awk -v f="$frps" -v h="$hrps" -v fc="$fc" -v hc="$hc" 'BEGIN{printf "\nferry throughput = %.0f%% of HAProxy'"'"'s; ferry CPU per request = %.1fx HAProxy'"'"'s\n", 100*f/h, fc/hc}'
