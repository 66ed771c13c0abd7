#!/usr/bin/env bash
# Builds gVisor's runsc from the Go module proxy at a pinned version into a
# cache directory and prints its path. Safe to run again: when the binary is
# there and reports the pinned version, it does nothing.
#
# The build runs outside the Tartarus module (in a temporary directory with
# GOFLAGS=-mod=mod and no go.mod), so gVisor's dependencies never enter ours.
#
#   RUNSC_DIR  where the binary goes (default /var/cache/tartarus/bin)
#   RUNSC_VERSION  the module version (default: the one measured to build here)
set -euo pipefail

RUNSC_VERSION="${RUNSC_VERSION:-v0.0.0-20250503011706-39ed1f5ac29c}"
RUNSC_DIR="${RUNSC_DIR:-/var/cache/tartarus/bin}"
bin="$RUNSC_DIR/runsc"
stamp="$RUNSC_DIR/runsc.version"

if [ -x "$bin" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$RUNSC_VERSION" ]; then
	echo "$bin"
	exit 0
fi

mkdir -p "$RUNSC_DIR"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
echo "runsc: building gvisor.dev/gvisor/runsc@$RUNSC_VERSION into $RUNSC_DIR (about a minute)" >&2
(
	cd "$work"
	GOFLAGS=-mod=mod GO111MODULE=on CGO_ENABLED=0 GOBIN="$RUNSC_DIR" \
		go install "gvisor.dev/gvisor/runsc@$RUNSC_VERSION"
)
echo "$RUNSC_VERSION" >"$stamp"
echo "$bin"
