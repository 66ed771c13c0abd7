#!/usr/bin/env bash
# Charon benchmark: latency and throughput of the same two backends reached
# directly, through `tartarus ferry`, and through HAProxy, in one run, with wrk.
#
#   bash bench/charon/run.sh            # 8 s per measurement
#   DURATION=5s bash bench/charon/run.sh
#
# Needs haproxy and wrk (apt-get install -y haproxy wrk). Everything listens
# on 127.0.0.1 ports 1808x/1809x. Prints a Markdown table.
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

go build -o "$work/tartarus" ./cmd/tartarus
go build -o "$work/backend" ./bench/charon/backend

"$work/backend" -listen 127.0.0.1:18081,127.0.0.1:18082 & pids+=($!)
"$work/tartarus" ferry --listen 127.0.0.1:18090 --admin-listen 127.0.0.1:18095 \
	--shore http://127.0.0.1:18081 --shore http://127.0.0.1:18082 --log-level warn & pids+=($!)

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

for port in 18081 18090 18091; do
	for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/v1/templates" >/dev/null && break; sleep 0.1; done
done

# run NAME URL THREADS CONNS -> "rps p50 p99" (latencies in ms)
run() {
	local out
	out=$(wrk -t"$3" -c"$4" -d"$DURATION" --latency "$2")
	echo "$out" >"$work/wrk-$1-$4.txt"
	awk '
		function ms(v) { if (v ~ /us$/) return v/1000; if (v ~ /ms$/) return v+0; if (v ~ /s$/) return v*1000; return v }
		$1=="50%" {p50=ms($2)} $1=="99%" {p99=ms($2)} $1=="Requests/sec:" {rps=$2}
		END { printf "%s %.3f %.3f\n", rps, p50, p99 }' <<<"$out"
}

declare -A R
for target in direct:18081 ferry:18090 haproxy:18091; do
	name=${target%%:*}; port=${target##*:}
	wrk -t1 -c4 -d1s "http://127.0.0.1:$port/v1/templates" >/dev/null # warm up
	R[$name-lat]=$(run "$name" "http://127.0.0.1:$port/v1/templates" 1 1)
	R[$name-load]=$(run "$name" "http://127.0.0.1:$port/v1/templates" 2 "$CONNS")
done

read -r _ d50 d99 <<<"${R[direct-lat]}"
echo
echo "wrk, $DURATION per row, same two backends; 'one at a time' = 1 connection, 'loaded' = 2 threads × $CONNS connections"
echo
echo "| path | one at a time p50 | p99 | added p50 | added p99 | loaded req/s | loaded p50 | loaded p99 |"
echo "|---|---|---|---|---|---|---|---|"
for name in direct ferry haproxy; do
	read -r _ l50 l99 <<<"${R[$name-lat]}"
	read -r rps p50 p99 <<<"${R[$name-load]}"
	a50=$(awk -v a="$l50" -v b="$d50" 'BEGIN{printf "%+.3f", a-b}')
	a99=$(awk -v a="$l99" -v b="$d99" 'BEGIN{printf "%+.3f", a-b}')
	[ "$name" = direct ] && a50="—" && a99="—"
	echo "| $name | ${l50} ms | ${l99} ms | ${a50} ms | ${a99} ms | ${rps} | ${p50} ms | ${p99} ms |"
done
read -r frps _ _ <<<"${R[ferry-load]}"
read -r hrps _ _ <<<"${R[haproxy-load]}"
awk -v f="$frps" -v h="$hrps" 'BEGIN{printf "\nferry throughput = %.0f%% of HAProxy'"'"'s\n", 100*f/h}'
