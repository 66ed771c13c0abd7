#!/usr/bin/env bash
# Builds SeaweedFS's `weed` (an S3-compatible object store, used by the
# Erebus S3 tests) from the Go module proxy at a pinned version into a cache
# directory and prints its path. Safe to run again: when the binary is there,
# runs and was built from the pinned version, it does nothing.
#
# The build runs outside the Tartarus module, so SeaweedFS's dependencies never
# enter ours. `go install module@version` refuses SeaweedFS (its go.mod has a
# replace directive), so the script downloads the module through the Go module
# proxy and builds ./weed inside it, as its own main module with its own go.sum.
#
#   scripts/seaweedfs.sh [DEST_DIR]   where the binary goes (default $WEED_DIR,
#                                     else /var/cache/tartarus/bin)
#   WEED_VERSION  the module version (default: the one measured to build here)
set -euo pipefail

WEED_VERSION="${WEED_VERSION:-v0.0.0-20261109003541-7506e5f91cd6}"
WEED_DIR="${1:-${WEED_DIR:-/var/cache/tartarus/bin}}"
bin="$WEED_DIR/weed"
stamp="$WEED_DIR/weed.version"

if [ -x "$bin" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$WEED_VERSION" ] &&
	"$bin" version >/dev/null 2>&1; then
	echo "$bin"
	exit 0
fi

mkdir -p "$WEED_DIR"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
echo "seaweedfs: building github.com/seaweedfs/seaweedfs/weed@$WEED_VERSION into $WEED_DIR (several minutes)" >&2
start=$(date +%s)
(
	cd "$work"
	src="$(GOFLAGS=-mod=mod GO111MODULE=on go mod download -json "github.com/seaweedfs/seaweedfs@$WEED_VERSION" |
		sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')"
	[ -d "$src/weed" ] || { echo "seaweedfs: download gave no source directory" >&2; exit 1; }
	cd "$src"
	GOFLAGS=-mod=readonly GO111MODULE=on GOWORK=off CGO_ENABLED=0 \
		go build -trimpath -ldflags='-s -w' -o "$work/weed" ./weed
)
mv "$work/weed" "$bin"
echo "seaweedfs: built in $(($(date +%s) - start)) s" >&2
"$bin" version >/dev/null
echo "$WEED_VERSION" >"$stamp"
echo "$bin"
