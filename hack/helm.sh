#!/usr/bin/env bash
# Builds Helm from the Go module proxy (`go install helm.sh/helm/v3/cmd/helm@<version>`) and
# caches it outside the checkout, keyed by version. Prints the path of the helm binary on
# stdout. A cold build takes a few minutes on two cores; a warm call returns at once.
#
#   hack/helm.sh                       # build if missing, print the binary's path
#   HELM_VERSION=v3.21.4 hack/helm.sh  # another version (must build with the machine's Go)
set -euo pipefail

# v3.22.0 is the newest Helm 3 the module proxy serves whose go.mod asks for no newer Go than
# the machine's (go 1.26.0 <= go1.26.8), so it builds with GOTOOLCHAIN=local.
version="${HELM_VERSION:-v3.22.0}"
cache_root="${REDIS_FLEET_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/redis-fleet}"
out="$cache_root/helm-$version"
bin="$out/helm"

if [[ -x "$bin" ]]; then
  echo "$bin"
  exit 0
fi

command -v go >/dev/null || { echo "helm.sh: go is required to build helm" >&2; exit 1; }

mkdir -p "$out"
tmp="$(mktemp -d "$out/.build.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
echo "helm.sh: building helm $version into $out (cold build: a few minutes)" >&2
cd "$tmp" # outside any Go module: nothing may touch a go.mod or go.sum of the caller
# The linker flags of Helm's own Makefile: `helm version` reports the version (a module build
# would say "v3.22"), and the default Kubernetes version of `helm lint`/`helm template` is the
# client-go minor Helm is built with (unset, it is v1.20, older than the chart's kubeVersion).
gomod="$(CGO_ENABLED=0 GOTOOLCHAIN=local GOFLAGS=-mod=mod go mod download -json "helm.sh/helm/v3@$version" \
  | awk -F'"' '$2 == "GoMod" {print $4}')"
client_go="$(awk '$1 == "k8s.io/client-go" {print $2}' "$gomod")" # e.g. v0.37.0
k8s_minor="$(echo "$client_go" | cut -d. -f2)"
if [[ -z "$k8s_minor" ]]; then
  echo "helm.sh: cannot read the k8s.io/client-go version of helm $version" >&2
  exit 1
fi
ldflags="-s -w -X helm.sh/helm/v3/internal/version.version=$version"
ldflags+=" -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
for pkg in helm.sh/helm/v3/pkg/lint/rules helm.sh/helm/v3/pkg/chartutil; do
  ldflags+=" -X $pkg.k8sVersionMajor=1 -X $pkg.k8sVersionMinor=$k8s_minor"
done
CGO_ENABLED=0 GOTOOLCHAIN=local GOFLAGS=-mod=mod GOBIN="$tmp" \
  go install -trimpath -ldflags "$ldflags" "helm.sh/helm/v3/cmd/helm@$version"
# Move into place only when complete, so an interrupted build never leaves a broken binary.
mv "$tmp/helm" "$bin"
echo "$bin"
