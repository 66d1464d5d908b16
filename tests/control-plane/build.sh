#!/usr/bin/env bash
# Builds Kubernetes binaries from the Go module proxy (through the wrapper module beside this
# script) and caches them outside the checkout, keyed by version. Prints the cache directory on
# stdout. A cold build takes several minutes on two cores per binary; a warm call returns at once.
#
#   tests/control-plane/build.sh            # kube-apiserver and kube-controller-manager (the
#                                           # fast tier's control plane)
#   tests/control-plane/build.sh kubelet kube-proxy kube-scheduler kubectl
#                                           # any binaries of k8s.io/kubernetes/cmd (the real
#                                           # node of `make e2e`; see hack/e2e/build.sh)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# The version is the one the wrapper module requires; keep go.mod the single source of truth.
version="$(awk '$1 == "require" && $2 == "k8s.io/kubernetes" {print $3}' "$here/go.mod")"
if [[ -z "$version" ]]; then
  echo "build.sh: cannot read the k8s.io/kubernetes version from $here/go.mod" >&2
  exit 1
fi
cache_root="${REDIS_FLEET_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/redis-fleet}"
out="$cache_root/k8s-$version"
binaries=("$@")
[[ ${#binaries[@]} -gt 0 ]] || binaries=(kube-apiserver kube-controller-manager)

missing=()
for b in "${binaries[@]}"; do
  [[ -x "$out/$b" ]] || missing+=("$b")
done
if [[ ${#missing[@]} -eq 0 ]]; then
  echo "$out"
  exit 0
fi

command -v go >/dev/null || { echo "build.sh: go is required to build the control plane" >&2; exit 1; }

# "v1.37.2" -> major 1, minor 37
semver="${version#v}"
major="${semver%%.*}"
rest="${semver#*.}"
minor="${rest%%.*}"
commit="0000000000000000000000000000000000000000"
build_date="1970-01-01T00:00:00Z"
ldflags=""
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  ldflags+=" -X $pkg.gitVersion=$version -X $pkg.gitMajor=$major -X $pkg.gitMinor=$minor"
  ldflags+=" -X $pkg.gitCommit=$commit -X $pkg.gitTreeState=clean -X $pkg.buildDate=$build_date"
done

mkdir -p "$out"
tmp="$(mktemp -d "$out/.build.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
cd "$here"
for b in "${missing[@]}"; do
  echo "build.sh: building $b $version into $out (cold build: several minutes)" >&2
  # nice: the machine is shared with cargo builds; one Go build at a time.
  CGO_ENABLED=0 GOTOOLCHAIN=local GOFLAGS=-mod=mod \
    nice go build -trimpath -ldflags "-s -w $ldflags" -o "$tmp/$b" "k8s.io/kubernetes/cmd/$b"
  # Move into place only when complete, so an interrupted build never leaves a broken binary.
  mv "$tmp/$b" "$out/$b"
done
echo "$out"
