#!/usr/bin/env bash
# Builds the real Istio binaries (pilot-agent, istioctl, pilot-discovery) from
# the Go module proxy at the version pinned in tools/istio/go.mod, into a cache
# folder outside the repo. Nothing of Istio is ever written into the repo.
#
#   tools/istio/build.sh            build (no-op when already built)
#   tools/istio/build.sh --print    print the bin folder and exit (no build)
#
# XDSD_ISTIO_CACHE overrides the cache folder (default
# $HOME/.cache/xdsd/istio-<version>); the binaries land in its bin/.
# Exit status: 0 built or already there, 0 with a message when go is absent
# (the tests that need the binaries skip), non-zero when a build failed.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
binaries=(pilot-agent istioctl pilot-discovery)
packages=(
  istio.io/istio/pilot/cmd/pilot-agent
  istio.io/istio/istioctl/cmd/istioctl
  istio.io/istio/pilot/cmd/pilot-discovery
)

# The pinned version is read from go.mod (no go needed for that), so the test
# helper and this script derive the same cache path.
version="$(awk '$1 == "istio.io/istio" { print $2; exit }' "$here/go.mod")"
if [[ -z "$version" ]]; then
  echo "build.sh: istio.io/istio is not required in $here/go.mod" >&2
  exit 2
fi
cache="${XDSD_ISTIO_CACHE:-${HOME}/.cache/xdsd/istio-${version}}"
bin="$cache/bin"
stamp="$bin/.built-$version"

if [[ "${1:-}" == "--print" ]]; then
  echo "$bin"
  exit 0
fi

template="$cache/share/envoy_bootstrap_tmpl.json"

# pilot-agent renders Envoy's bootstrap from this template, a data file of the
# same module (the istio-proxy image has it at /var/lib/istio/envoy/).
copy_template() {
  local src
  src="$(cd "$here" && go list -m -f '{{.Dir}}' istio.io/istio)"
  mkdir -p "$cache/share"
  install -m 0644 "$src/tools/packaging/common/envoy_bootstrap.json" "$template"
}

if [[ -f "$stamp" ]]; then
  missing=0
  for b in "${binaries[@]}"; do [[ -x "$bin/$b" ]] || missing=1; done
  if [[ $missing == 0 ]]; then
    if [[ ! -f "$template" ]] && command -v go > /dev/null 2>&1; then
      (cd "$here" && go mod download istio.io/istio) && copy_template
    fi
    echo "build.sh: Istio $version already built in $bin"
    exit 0
  fi
fi

if ! command -v go > /dev/null 2>&1; then
  echo "build.sh: go is not on PATH: not building Istio $version (tests needing pilot-agent/istioctl will skip)"
  exit 0
fi

mkdir -p "$bin"
# One build at a time per cache folder: a second caller waits, then finds the
# stamp and does nothing.
exec 9> "$cache/.lock"
if command -v flock > /dev/null 2>&1; then flock 9; fi
if [[ -f "$stamp" ]]; then
  echo "build.sh: Istio $version was built by another run in $bin"
  exit 0
fi

cd "$here"
echo "build.sh: building Istio $version into $bin (takes a while)"
start=$SECONDS
go mod download istio.io/istio
src="$(go list -m -f '{{.Dir}}' istio.io/istio)"
# The version Istio's own Makefile stamps on a build from source (its VERSION
# file plus -dev); pilot-agent reports it as ISTIO_VERSION in node metadata.
istio_version=""
if [[ -f "$src/VERSION" ]]; then
  istio_version="$(tr -d '[:space:]' < "$src/VERSION")-dev"
fi
revision="${version##*-}"
pkgv=istio.io/istio/pkg/version
ldflags="-s -w -X $pkgv.buildVersion=${istio_version:-unknown} -X $pkgv.buildGitRevision=$revision"
ldflags+=" -X $pkgv.buildStatus=Clean -X $pkgv.buildTag=$version"
ldflags+=" -X $pkgv.buildOS=$(go env GOOS) -X $pkgv.buildArch=$(go env GOARCH)"
# Static binaries, like Istio's own release build.
CGO_ENABLED=0 go build -trimpath -ldflags "$ldflags" -o "$bin/" "${packages[@]}"
copy_template
touch "$stamp"
echo "build.sh: built ${binaries[*]} (Istio ${istio_version:-unknown}, $version) in $((SECONDS - start)) s"
