#!/usr/bin/env bash
# Installs, from Debian's packages, what Tartarus needs on a fresh Debian or
# Ubuntu machine. Safe to run again: it installs only what is missing.
#
#   scripts/deps.sh          what `make run` needs (QEMU, image tools, iproute2
#                            and nftables for sandbox networks)
#   scripts/deps.sh --test   also what the test suite starts (Redis, dockerd,
#                            containerd, runc, HAProxy and wrk for benchmarks,
#                            PostgreSQL for the Postgres store tests)
set -euo pipefail

pkgs=(qemu-system-x86 qemu-utils busybox-static debootstrap e2fsprogs zstd cpio xz-utils ca-certificates procps iproute2 nftables)
if [ "${1:-}" = "--test" ]; then
	pkgs+=(redis-server docker.io containerd runc haproxy wrk postgresql)
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
