#!/usr/bin/env bash
# Builds the Go peers of benchmarks/load.py into a cache folder outside the repo.
#
#   benchmarks/peers/build.sh gcp           build the go-control-plane peer (no-op when built)
#   benchmarks/peers/build.sh gcp --print   print the binary's path and exit (no build)
#   benchmarks/peers/build.sh istio-bench   istiod's pilot/pkg/xds benchmarks (a `go test -c`
#                                           binary of the Istio version tools/istio pins;
#                                           it runs in the package's folder, written beside
#                                           it as istio-bench-peer.dir)
#
# The binary's folder is named after a hash of the peer's sources and go.sum, so an
# edit rebuilds it. XDSD_PEERS_CACHE overrides the cache root
# (default $HOME/.cache/xdsd/peers). Exit status: 0 built or already there; 3 when
# go is absent (load.py then skips the peer with a message); other non-zero: failed.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
name="${1:?usage: build.sh PEER [--print]}"
if [[ "$name" == istio-bench ]]; then
  src="$here/../../tools/istio"
  hash="$(cat "$src"/go.mod "$src"/go.sum | sha256sum | cut -c1-12)"
  out="${XDSD_PEERS_CACHE:-${HOME}/.cache/xdsd/peers}/$name-$hash"
  bin="$out/$name-peer"
  if [[ "${2:-}" == "--print" ]]; then
    echo "$bin"
    exit 0
  fi
  [[ -x "$bin" && -f "$bin.dir" ]] && exit 0
  command -v go >/dev/null || { echo "build.sh: go is not on PATH" >&2; exit 3; }
  mkdir -p "$out"
  work="$(mktemp -d)"
  trap 'rm -rf "$work"' EXIT
  cp "$src/go.mod" "$src/go.sum" "$work/"
  start=$SECONDS
  # -mod=mod: the test's own dependencies join the copy's go.sum, not the repo's.
  (cd "$work" && GOFLAGS=-mod=mod go test -c -o "$bin.tmp" istio.io/istio/pilot/pkg/xds)
  (cd "$work" && GOFLAGS=-mod=mod go list -f '{{.Dir}}' istio.io/istio/pilot/pkg/xds) > "$bin.dir"
  mv "$bin.tmp" "$bin"
  echo "build.sh: built $name-peer in $((SECONDS - start)) s: $bin"
  exit 0
fi
src="$here/$name"
[[ -f "$src/go.mod" ]] || { echo "build.sh: no peer $name (no $src/go.mod)" >&2; exit 2; }
hash="$(cat "$src"/go.mod "$src"/go.sum "$src"/*.go | sha256sum | cut -c1-12)"
out="${XDSD_PEERS_CACHE:-${HOME}/.cache/xdsd/peers}/$name-$hash"
bin="$out/$name-peer"
if [[ "${2:-}" == "--print" ]]; then
  echo "$bin"
  exit 0
fi
[[ -x "$bin" ]] && exit 0
command -v go >/dev/null || { echo "build.sh: go is not on PATH" >&2; exit 3; }
mkdir -p "$out"
start=$SECONDS
(cd "$src" && go build -trimpath -o "$bin.tmp" .)
mv "$bin.tmp" "$bin"
echo "build.sh: built $name-peer in $((SECONDS - start)) s: $bin"
