#!/bin/sh
# qemu-perf.sh runs QEMU under `perf record` (2 kHz, call graphs), one
# profile per QEMU in $PERF_DIR (default /tmp/qemu-perf): give it to the
# microvm driver as its QEMU (BenchmarkFirstCommand's TARTARUS_BENCH_QEMU)
# to see where a restored sandbox's CPU goes. `perf report -i FILE
# --no-children --sort sym` then shows TCG's translator (tcg_gen_code,
# tcg_optimize, translator_*) against the guest's own code ([JIT] / perf map).
dir=${PERF_DIR:-/tmp/qemu-perf}
mkdir -p "$dir"
exec perf record -q -F 2000 -g -o "$dir/qemu-$$.data" -- qemu-system-x86_64 "$@"
