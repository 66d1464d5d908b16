# Shared settings of the real-node tier (`make e2e`): where things are cached and built, and the
# addresses of the one-node cluster. Sourced by the scripts beside it; nothing here has effects.
#
# The network, all of it made by hack/e2e/cluster.sh and removed by `cluster.sh down`:
#
#   host network namespace                      │ network namespace "rf-e2e-node" (the node)
#   etcd, kube-apiserver, controller-manager,   │ containerd, kubelet, kube-proxy, CoreDNS and
#   scheduler, the "external" redis-server      │ every pod; iptables rules of kube-proxy and CNI
#   all on 10.87.0.1 (veth rfe2e-host) ─────────┼── 10.87.0.2 (veth rfe2e-node): the node IP
#                                               │   bridge rfe2e-br0 10.244.0.1/24: pod addresses
#                                               │   Services 10.96.0.0/16 (kube-proxy, iptables)
#
# Nothing listens on another address and nothing is routed off the machine: the node namespace's
# only way out is the veth to the host, whose ip_forward stays as it is (off here).

E2E_HACK="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
E2E_ROOT="$(cd "$E2E_HACK/../.." && pwd)"

# Caches (outside the checkout, keyed by version) and the running cluster's state.
E2E_CACHE="${REDIS_FLEET_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/redis-fleet}"
E2E_IMAGES="$E2E_CACHE/e2e-images"
E2E_WORK="${REDIS_FLEET_E2E_DIR:-/tmp/rf-e2e}"

# Network.
E2E_NETNS=rf-e2e-node
E2E_VETH_HOST=rfe2e-host
E2E_VETH_NODE=rfe2e-node
E2E_BRIDGE=rfe2e-br0
E2E_HOST_IP=10.87.0.1
E2E_NODE_IP=10.87.0.2
E2E_LINK_PREFIX=30
E2E_POD_CIDR=10.244.0.0/24
E2E_POD_GATEWAY=10.244.0.1
E2E_SERVICE_CIDR=10.96.0.0/16
E2E_KUBERNETES_SERVICE_IP=10.96.0.1
E2E_DNS_IP=10.96.0.10
E2E_APISERVER="https://$E2E_HOST_IP:6443"
E2E_NODE_NAME=rf-e2e-node
# The cgroup (in every v1 hierarchy) that holds the kubelet's pods: removed by `down`.
E2E_CGROUP_ROOT=/rf-e2e

# Images the node runs, all built here (hack/e2e/images.sh); none is pulled.
E2E_PAUSE_IMAGE=localhost/pause:3.10
E2E_REDIS_IMAGE=localhost/redis:7.0
E2E_SHOP_IMAGE=localhost/shop-backend:e2e
E2E_RUNTIME_BASE_IMAGE=localhost/cc-debian12:nonroot
E2E_FLEET_VERSION="$(awk -F'"' '/^version = / {print $2; exit}' "$E2E_ROOT/Cargo.toml")"
E2E_FLEET_REPOSITORY=localhost/redis-fleet
E2E_FLEET_IMAGE="$E2E_FLEET_REPOSITORY:$E2E_FLEET_VERSION"

e2e_log() { printf '%s %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
e2e_die() { e2e_log "error: $*"; exit 1; }

# Runs a command in the node's network namespace (and nothing else: mounts, cgroups and
# processes stay shared with the host, as on a machine whose only difference is its network).
e2e_in_node() { nsenter --net="/run/netns/$E2E_NETNS" -- "$@"; }

# Installs Debian packages that are missing (apt-get update first, once).
e2e_apt() {
  local missing=() p
  for p in "$@"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  [[ ${#missing[@]} -eq 0 ]] && return 0
  e2e_log "installing ${missing[*]}"
  local sudo=""
  [[ "$(id -u)" == 0 ]] || sudo=sudo
  # A mirror that hiccups, or another apt holding the lock for a moment, gets three tries.
  local try
  for try in 1 2 3; do
    if $sudo apt-get -o Acquire::Retries=3 update -qq &&
      DEBIAN_FRONTEND=noninteractive $sudo apt-get -o Acquire::Retries=3 \
        -o DPkg::Lock::Timeout=120 install -y -qq --no-install-recommends "${missing[@]}" >/dev/null; then
      return 0
    fi
    ((try < 3)) && { e2e_log "apt-get failed (try $try of 3); again in $((try * 10))s"; sleep $((try * 10)); }
  done
  e2e_die "could not install ${missing[*]} with apt-get"
}

# The Debian packages of the node and of the image builds.
E2E_APT_PACKAGES=(containerd runc containernetworking-plugins buildah iptables iproute2
  util-linux conntrack debootstrap openssl redis-server redis-tools gcc libc6-dev
  ca-certificates python3)

# The CoreDNS version: the one its wrapper module requires (the single source of truth).
e2e_coredns_version() {
  awk '$1 == "require" && $2 == "github.com/coredns/coredns" {print $3}' "$E2E_HACK/coredns/go.mod"
}
