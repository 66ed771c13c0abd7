#!/usr/bin/env bash
# Installs, from Debian's packages, what Tartarus needs on a fresh Debian or
# Ubuntu machine. Safe to run again: it installs only what is missing.
#
#   scripts/deps.sh          what `make run` needs (QEMU, image tools, iproute2
#                            and nftables for sandbox networks)
#   scripts/deps.sh --test   also what the test suite starts (Redis, dockerd, a registry,
#                            containerd, runc, HAProxy and wrk for benchmarks,
#                            PostgreSQL for the Postgres store tests), and
#                            E2B's JavaScript SDK from npm for the E2B test
#                            (needs Node.js 20.18.1 or later on PATH)
set -euo pipefail

pkgs=(qemu-system-x86 qemu-utils busybox-static debootstrap e2fsprogs zstd cpio xz-utils ca-certificates procps iproute2 nftables)
if [ "${1:-}" = "--test" ]; then
	pkgs+=(redis-server docker.io containerd runc haproxy wrk postgresql docker-registry)
fi

need=()
have() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }
for p in "${pkgs[@]}"; do
	have "$p" || need+=("$p")
done
if [ ${#need[@]} -gt 0 ]; then
	if [ "$(id -u)" -ne 0 ]; then
		echo "deps: missing ${need[*]}; run as root or install them" >&2
		exit 1
	fi
	echo "deps: installing ${need[*]}"
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq
	apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

if [ "${1:-}" = "--test" ]; then
	# E2B's SDK, pinned in test/e2b, where TestE2BSDKEndToEnd looks for it
	# (it installs it itself when missing; this only does it ahead of time).
	root="$(cd "$(dirname "$0")/.." && pwd)"
	if command -v node >/dev/null && command -v npm >/dev/null; then
		sum="$(sha256sum "$root/test/e2b/package-lock.json" | cut -c1-12)"
		dir="${XDG_CACHE_HOME:-$HOME/.cache}/tartarus/e2b-sdk-$sum"
		if [ ! -f "$dir/node_modules/e2b/package.json" ]; then
			echo "deps: installing E2B's SDK into $dir"
			mkdir -p "$dir"
			cp "$root/test/e2b/package.json" "$root/test/e2b/package-lock.json" "$dir/"
			(cd "$dir" && npm ci --ignore-scripts --no-audit --no-fund >/dev/null)
		fi
	else
		echo "deps: node and npm (Node.js 20.18.1 or later) are missing: the E2B SDK test will skip" >&2
	fi
fi
