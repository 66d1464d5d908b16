#!/usr/bin/env bash
# A real one-node Kubernetes cluster on this machine, for `make e2e`:
#   etcd, kube-apiserver, kube-controller-manager, kube-scheduler   (host, on 10.87.0.1)
#   containerd + runc, the CNI bridge, kubelet, kube-proxy (iptables), CoreDNS
#                                                  (the node: network namespace rf-e2e-node)
# See lib.sh for the addresses. Everything it starts and changes is undone by `down`:
# processes (by the pids it recorded, and every process in the node's cgroup), mounts under the
# work directory, the network namespace (with its bridge, veths and iptables rules), the cgroups
# and the node's files outside the work directory.
#
#   hack/e2e/cluster.sh up              # build what is missing, start, wait until the node and
#                                       # CoreDNS are Ready; prints the kubeconfig path
#   hack/e2e/cluster.sh import FILE...  # load docker-archives into the node's containerd
#   hack/e2e/cluster.sh down            # stop and clean up (also after a crash)
#   hack/e2e/cluster.sh env             # `eval "$(hack/e2e/cluster.sh env)"`: KUBECONFIG, PATH
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

W="$E2E_WORK"
PKI="$W/pki"
PIDS="$W/pids"
LOGS="$W/logs"
CTR_SOCK="$W/containerd/containerd.sock"

ctr_() { ctr --address "$CTR_SOCK" --namespace k8s.io "$@"; }

# start NAME [--node] CMD...: runs CMD in the background (in its own session, in the node's
# network namespace with --node), output in logs/NAME.log, pid in pids/NAME.
start() {
  local name="$1"
  shift
  local prefix=()
  if [[ "$1" == --node ]]; then
    prefix=(nsenter "--net=/run/netns/$E2E_NETNS" --)
    shift
  fi
  setsid "${prefix[@]}" "$@" >"$LOGS/$name.log" 2>&1 </dev/null &
  echo $! >"$PIDS/$name"
}

running() { [[ -f "$PIDS/$1" ]] && kill -0 "$(cat "$PIDS/$1")" 2>/dev/null; }

# wait_for WHAT SECONDS PROCESS CMD...: polls CMD until it succeeds; fails early when PROCESS
# exits, showing its log.
wait_for() {
  local what="$1" seconds="$2" process="$3"
  shift 3
  local deadline=$((SECONDS + seconds))
  until "$@" >/dev/null 2>&1; do
    if [[ -n "$process" ]] && ! running "$process"; then
      tail -30 "$LOGS/$process.log" >&2
      e2e_die "$process exited while waiting for $what"
    fi
    if ((SECONDS > deadline)); then
      [[ -z "$process" ]] || tail -30 "$LOGS/$process.log" >&2
      e2e_die "timed out after ${seconds}s waiting for $what"
    fi
    sleep 0.5
  done
}

# stop NAME: SIGTERM, then SIGKILL after 10 s.
stop() {
  local name="$1" pid
  [[ -f "$PIDS/$name" ]] || return 0
  pid="$(cat "$PIDS/$name")"
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$PIDS/$name"
}

# ---------------------------------------------------------------------------------------------
# certificates and kubeconfigs

pki() {
  mkdir -p "$PKI"
  (
    cd "$PKI"
    local ec=(-newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes)
    openssl req -x509 "${ec[@]}" -keyout ca.key -out ca.crt -days 3650 \
      -subj "/CN=redis-fleet-e2e-ca" 2>/dev/null
    # cert NAME SUBJECT EXTENSIONS
    cert() {
      openssl req "${ec[@]}" -keyout "$1.key" -out "$1.csr" -subj "$2" 2>/dev/null
      printf '%b\n' "$3" >"$1.ext"
      openssl x509 -req -in "$1.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -out "$1.crt" \
        -days 3650 -extfile "$1.ext" 2>/dev/null
    }
    cert apiserver "/CN=kube-apiserver" \
      "subjectAltName=IP:$E2E_HOST_IP,IP:$E2E_KUBERNETES_SERVICE_IP,IP:127.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local\nextendedKeyUsage=serverAuth"
    # The apiserver's client certificate towards kubelets (logs, exec, port-forward).
    cert apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client" \
      "extendedKeyUsage=clientAuth"
    cert kubelet "/O=system:nodes/CN=system:node:$E2E_NODE_NAME" "extendedKeyUsage=clientAuth"
    cert kube-proxy "/CN=system:kube-proxy" "extendedKeyUsage=clientAuth"
    cert admin "/O=system:masters/CN=redis-fleet-e2e-admin" "extendedKeyUsage=clientAuth"
    openssl genrsa -out sa.key 2048 2>/dev/null
    openssl rsa -in sa.key -pubout -out sa.pub 2>/dev/null
  )
}

# kubeconfig FILE NAME: a kubeconfig with the client certificate pki/NAME.{crt,key}.
kubeconfig() {
  cat >"$1" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: rf-e2e
  cluster:
    server: $E2E_APISERVER
    certificate-authority: $PKI/ca.crt
users:
- name: $2
  user:
    client-certificate: $PKI/$2.crt
    client-key: $PKI/$2.key
contexts:
- name: rf-e2e
  context: {cluster: rf-e2e, user: $2}
current-context: rf-e2e
EOF
}

# ---------------------------------------------------------------------------------------------
# the network

network_up() {
  ip netns add "$E2E_NETNS"
  ip link add "$E2E_VETH_HOST" type veth peer name "$E2E_VETH_NODE" netns "$E2E_NETNS"
  ip addr add "$E2E_HOST_IP/$E2E_LINK_PREFIX" dev "$E2E_VETH_HOST"
  ip link set "$E2E_VETH_HOST" up
  e2e_in_node ip link set lo up
  e2e_in_node ip addr add "$E2E_NODE_IP/$E2E_LINK_PREFIX" dev "$E2E_VETH_NODE"
  e2e_in_node ip link set "$E2E_VETH_NODE" up
  e2e_in_node ip route add default via "$E2E_HOST_IP"
  # The node routes for its pods and kube-proxy's Services (this namespace only), and bridged
  # pod-to-pod traffic passes iptables, so replies of a Service on the same bridge are un-NATed.
  e2e_in_node sysctl -q -w net.ipv4.ip_forward=1 net.bridge.bridge-nf-call-iptables=1
  mkdir -p "$W/cni/net.d" "$W/cni/ipam"
  cat >"$W/cni/net.d/10-rf-e2e.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "rf-e2e",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "$E2E_BRIDGE",
      "isGateway": true,
      "ipMasq": true,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "dataDir": "$W/cni/ipam",
        "ranges": [[{"subnet": "$E2E_POD_CIDR", "gateway": "$E2E_POD_GATEWAY"}]],
        "routes": [{"dst": "0.0.0.0/0"}]
      }
    },
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
EOF
}

# ---------------------------------------------------------------------------------------------
# the control plane (host)

control_plane_up() {
  start etcd etcd --data-dir "$W/etcd" --name rf-e2e \
    --listen-client-urls "http://$E2E_HOST_IP:2379" --advertise-client-urls "http://$E2E_HOST_IP:2379" \
    --listen-peer-urls "http://$E2E_HOST_IP:2380" --initial-advertise-peer-urls "http://$E2E_HOST_IP:2380" \
    --initial-cluster "rf-e2e=http://$E2E_HOST_IP:2380" \
    --unsafe-no-fsync --log-level warn --quota-backend-bytes 4294967296
  start kube-apiserver kube-apiserver \
    --etcd-servers "http://$E2E_HOST_IP:2379" \
    --bind-address "$E2E_HOST_IP" --advertise-address "$E2E_HOST_IP" --secure-port 6443 \
    --cert-dir "$PKI" --tls-cert-file "$PKI/apiserver.crt" --tls-private-key-file "$PKI/apiserver.key" \
    --client-ca-file "$PKI/ca.crt" \
    --kubelet-client-certificate "$PKI/apiserver-kubelet-client.crt" \
    --kubelet-client-key "$PKI/apiserver-kubelet-client.key" \
    --kubelet-preferred-address-types InternalIP \
    --service-cluster-ip-range "$E2E_SERVICE_CIDR" \
    --service-account-issuer https://kubernetes.default.svc.cluster.local \
    --service-account-key-file "$PKI/sa.pub" --service-account-signing-key-file "$PKI/sa.key" \
    --authorization-mode Node,RBAC --enable-admission-plugins NodeRestriction \
    --allow-privileged=true --profiling=false --v=1
  kubeconfig "$W/kubeconfig" admin
  wait_for "kube-apiserver /readyz" 120 kube-apiserver \
    kubectl --kubeconfig "$W/kubeconfig" get --raw /readyz
  start kube-controller-manager kube-controller-manager \
    --kubeconfig "$W/kubeconfig" --authentication-kubeconfig "$W/kubeconfig" \
    --authorization-kubeconfig "$W/kubeconfig" \
    --bind-address "$E2E_HOST_IP" --secure-port 10257 --cert-dir "$PKI/kcm" --leader-elect=false \
    --service-account-private-key-file "$PKI/sa.key" --root-ca-file "$PKI/ca.crt" \
    --cluster-signing-cert-file "$PKI/ca.crt" --cluster-signing-key-file "$PKI/ca.key" \
    --use-service-account-credentials=true --controllers '*' --v=1
  start kube-scheduler kube-scheduler \
    --kubeconfig "$W/kubeconfig" --authentication-kubeconfig "$W/kubeconfig" \
    --authorization-kubeconfig "$W/kubeconfig" \
    --bind-address "$E2E_HOST_IP" --secure-port 10259 --cert-dir "$PKI/scheduler" \
    --leader-elect=false --v=1
}

# ---------------------------------------------------------------------------------------------
# the node (network namespace)

cgroups_up() {
  local h
  for h in /sys/fs/cgroup/*/; do
    [[ -f "$h/cgroup.procs" && ! -f "$h/cgroup.controllers" ]] || continue # v1 hierarchies only
    mkdir -p "$h$E2E_CGROUP_ROOT"
    if [[ -f "$h/cpuset.cpus" ]]; then
      cat "$h/cpuset.cpus" >"$h$E2E_CGROUP_ROOT/cpuset.cpus"
      cat "$h/cpuset.mems" >"$h$E2E_CGROUP_ROOT/cpuset.mems"
    fi
  done
}

containerd_up() {
  mkdir -p "$W/containerd"
  cat >"$W/containerd/config.toml" <<EOF
version = 2
root = "$W/containerd/root"
state = "$W/containerd/state"
[grpc]
  address = "$CTR_SOCK"
[ttrpc]
  address = "$CTR_SOCK.ttrpc"
[debug]
  level = "warn"
[metrics]
  address = ""
[plugins."io.containerd.internal.v1.opt"]
  path = "$W/containerd/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$E2E_PAUSE_IMAGE"
  # runc cannot write /proc/self/oom_score_adj below the parent's here; keep it >= containerd's.
  restrict_oom_score_adj = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  netns_mounts_under_state_dir = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        BinaryName = "/usr/sbin/runc"
        Root = "$W/runc"
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$W/cni/net.d"
    max_conf_num = 1
EOF
  start containerd --node containerd --config "$W/containerd/config.toml"
  wait_for "containerd" 60 containerd ctr --address "$CTR_SOCK" version
}

import_images() {
  local f
  for f in "$@"; do
    e2e_log "ctr -n k8s.io images import $(basename "$f")"
    ctr_ images import "$f" >/dev/null
  done
}

kubelet_up() {
  kubeconfig "$W/kubelet.kubeconfig" kubelet
  mkdir -p "$W/kubelet" "$W/pod-logs"
  cat >"$W/kubelet-config.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $E2E_NODE_IP
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $PKI/ca.crt}
authorization: {mode: Webhook}
containerRuntimeEndpoint: unix://$CTR_SOCK
# This machine: cgroup v1 (kubelet >= 1.35 refuses it unless told), no systemd, swap allowed.
failCgroupV1: false
cgroupDriver: cgroupfs
cgroupRoot: $E2E_CGROUP_ROOT
failSwapOn: false
clusterDNS: [$E2E_DNS_IP]
clusterDomain: cluster.local
# No upstream resolvers: pods with dnsPolicy Default get an empty resolv.conf.
resolvConf: ""
podLogsDir: $W/pod-logs
# A shared disk: do not evict or garbage-collect images (none could be pulled back).
evictionHard: {memory.available: 100Mi, nodefs.available: 1%, imagefs.available: 1%, nodefs.inodesFree: 1%}
# A moment of pressure on the shared disk (another build) must not keep the node tainted for
# the default five minutes.
evictionPressureTransitionPeriod: 30s
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
serializeImagePulls: false
maxPods: 60
EOF
  start kubelet --node kubelet --config "$W/kubelet-config.yaml" \
    --kubeconfig "$W/kubelet.kubeconfig" --root-dir "$W/kubelet" --cert-dir "$W/kubelet/pki" \
    --hostname-override "$E2E_NODE_NAME" --node-ip "$E2E_NODE_IP" --v=1
  wait_for "node $E2E_NODE_NAME Ready" 180 kubelet \
    kubectl --kubeconfig "$W/kubeconfig" wait --for=condition=Ready "node/$E2E_NODE_NAME" --timeout=2s
}

kube_proxy_up() {
  kubeconfig "$W/kube-proxy.kubeconfig" kube-proxy
  cat >"$W/kube-proxy-config.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: iptables
clientConnection: {kubeconfig: $W/kube-proxy.kubeconfig}
hostnameOverride: $E2E_NODE_NAME
clusterCIDR: $E2E_POD_CIDR
metricsBindAddress: 127.0.0.1:10249
healthzBindAddress: 127.0.0.1:10256
# Leave the machine-wide conntrack settings alone.
conntrack: {maxPerCore: 0, min: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}
EOF
  start kube-proxy --node kube-proxy --config "$W/kube-proxy-config.yaml" --v=1
  wait_for "kube-proxy /healthz" 60 kube-proxy \
    e2e_in_node bash -c "exec 3<>/dev/tcp/127.0.0.1/10256"
}

dns_up() {
  sed -e "s|__COREDNS_IMAGE__|localhost/coredns:$(e2e_coredns_version)|" -e "s|__DNS_IP__|$E2E_DNS_IP|" \
    "$E2E_HACK/manifests/coredns.yaml" | kubectl --kubeconfig "$W/kubeconfig" apply -f - >/dev/null
  kubectl --kubeconfig "$W/kubeconfig" -n kube-system rollout status deployment/coredns --timeout=180s >/dev/null
}

up() {
  local t0=$SECONDS
  [[ "$(id -u)" == 0 ]] || e2e_die "the node needs root (network namespace, mounts, cgroups)"
  down quiet
  local bin
  bin="$("$E2E_HACK/build.sh")"
  export PATH="$bin:$PATH"
  "$E2E_HACK/images.sh" base
  mkdir -p "$W" "$PIDS" "$LOGS"
  e2e_log "certificates"
  pki
  e2e_log "network namespace $E2E_NETNS: node $E2E_NODE_IP, pods $E2E_POD_CIDR, Services $E2E_SERVICE_CIDR"
  network_up
  e2e_log "etcd, kube-apiserver ($E2E_APISERVER), kube-controller-manager, kube-scheduler"
  control_plane_up
  e2e_log "containerd"
  cgroups_up
  containerd_up
  import_images "$E2E_IMAGES"/archives/*.tar
  e2e_log "kubelet (node $E2E_NODE_NAME)"
  kubelet_up
  e2e_log "kube-proxy"
  kube_proxy_up
  e2e_log "CoreDNS ($E2E_DNS_IP)"
  dns_up
  e2e_log "cluster up in $((SECONDS - t0))s; export KUBECONFIG=$W/kubeconfig"
  echo "$W/kubeconfig"
}

# ---------------------------------------------------------------------------------------------
# down: also cleans up after a crashed run, so `up` starts with it

# Pids of every process in the node's cgroups (pods, and anything runc left behind).
node_cgroup_pids() {
  local h
  for h in /sys/fs/cgroup/*/; do
    [[ -d "$h${E2E_CGROUP_ROOT#/}" ]] || continue
    find "$h${E2E_CGROUP_ROOT#/}" -name cgroup.procs -exec cat {} + 2>/dev/null
  done | sort -u
}

# Pids of the containerd shims of this node's containerd (matched by its socket path).
shim_pids() {
  local p
  for p in /proc/[0-9]*; do
    tr '\0' ' ' <"$p/cmdline" 2>/dev/null | grep -q -- "containerd-shim.*-address $CTR_SOCK " &&
      echo "${p#/proc/}"
  done
  return 0
}

down() {
  local quiet="${1:-}"
  [[ -d "$W" || -e "/run/netns/$E2E_NETNS" ]] || return 0
  [[ -n "$quiet" ]] || e2e_log "stopping the cluster"
  # The node first: no new pods, then every container, then containerd.
  stop kubelet
  stop kube-proxy
  if running containerd; then
    local task
    for task in $(ctr_ tasks ls -q 2>/dev/null); do
      ctr_ tasks kill -s SIGKILL "$task" >/dev/null 2>&1 || true
    done
  fi
  local pid
  for pid in $(node_cgroup_pids); do kill -KILL "$pid" 2>/dev/null || true; done
  stop containerd
  for pid in $(shim_pids); do kill -KILL "$pid" 2>/dev/null || true; done
  # The control plane, and whatever else the e2e recorded (the external redis-server).
  stop kube-scheduler
  stop kube-controller-manager
  stop kube-apiserver
  stop etcd
  if [[ -d "$PIDS" ]]; then
    local f
    for f in "$PIDS"/*; do [[ -e "$f" ]] && stop "$(basename "$f")"; done
  fi
  # Mounts under the work directory (container root file systems, pod volumes, the pods'
  # network namespaces), deepest first.
  local m
  for _ in 1 2 3; do
    while read -r m; do
      umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true
    done < <(awk -v w="$W/" 'index($5, w) == 1 {print $5}' /proc/self/mountinfo | sort -r)
  done
  # The network namespace takes its bridge, veths (the host's end too) and iptables rules.
  [[ ! -e "/run/netns/$E2E_NETNS" ]] || ip netns delete "$E2E_NETNS"
  # Empty cgroups, deepest first (a cgroup is removed with rmdir, not rm).
  local h
  for h in /sys/fs/cgroup/*/; do
    [[ -d "$h${E2E_CGROUP_ROOT#/}" ]] || continue
    find "$h${E2E_CGROUP_ROOT#/}" -depth -type d -exec rmdir {} \; 2>/dev/null || true
  done
  # What the kubelet, the CNI plugins and the shims write outside the work directory: log links,
  # the CNI result cache of this node's sandboxes, the shims' sockets (no longer listened on).
  find /var/log/containers -maxdepth 1 -type l -lname "$W/*" -delete 2>/dev/null || true
  # (The device-plugin socket's directory is fixed in the kubelet, whatever its --root-dir.)
  rm -f /var/lib/kubelet/device-plugins/kubelet.sock
  rmdir /var/lib/kubelet/device-plugins /var/lib/kubelet /var/log/containers 2>/dev/null || true
  local sandbox
  for sandbox in "$W"/containerd/root/io.containerd.grpc.v1.cri/sandboxes/*/; do
    [[ -d "$sandbox" ]] || continue
    rm -f /var/lib/cni/results/*"$(basename "$sandbox")"* 2>/dev/null || true
  done
  rm -f /var/lib/cni/results/rf-e2e-* 2>/dev/null || true
  if [[ -d /run/containerd/s ]]; then
    local listening s
    listening="$(ss -xlH 2>/dev/null | awk '{print $5}')"
    for s in /run/containerd/s/*; do
      [[ -S "$s" ]] && ! grep -qxF "$s" <<<"$listening" && rm -f "$s"
    done
  fi
  rmdir /var/lib/cni/results /var/lib/cni /run/containerd/s /run/containerd 2>/dev/null || true
  rm -rf "$W"
  [[ -n "$quiet" ]] || e2e_log "cluster stopped"
}

env_() {
  echo "export KUBECONFIG=$W/kubeconfig"
  echo "export PATH=$E2E_CACHE/e2e-bin:\$PATH"
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  import)
    shift
    import_images "$@"
    ;;
  env) env_ ;;
  *) e2e_die "usage: hack/e2e/cluster.sh up|down|import FILE...|env" ;;
esac
