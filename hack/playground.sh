#!/usr/bin/env bash
# Starts the local control plane (etcd + kube-apiserver + kube-controller-manager), applies the
# CRDs and the examples, shows them, and leaves the control plane running.
set -euo pipefail
cd "$(dirname "$0")/.."
state="${1:-$PWD/.playground}"

if [[ -f "$state/pid" ]] && kill -0 "$(cat "$state/pid")" 2>/dev/null; then
  echo "a playground is already running (make playground-stop to stop it)"
else
  rm -rf "$state"
  mkdir -p "$state"
  echo "==> building"
  cargo build --quiet --example local-control-plane
  echo "==> starting the local control plane"
  REDIS_FLEET_K8S_BIN="$(tests/control-plane/build.sh)" \
    setsid nohup target/debug/examples/local-control-plane "$state" >"$state/control-plane.log" 2>&1 &
  for _ in $(seq 1 600); do
    [[ -f "$state/kubeconfig" ]] && break
    if ! kill -0 $! 2>/dev/null; then cat "$state/control-plane.log"; exit 1; fi
    sleep 0.2
  done
fi
export KUBECONFIG="$state/kubeconfig"

echo "==> kubectl apply -f crds/"
kubectl apply --server-side -f crds/
kubectl wait --for=condition=Established crd/redisinstances.redisfleet.io crd/cachepolicies.redisfleet.io --timeout=30s >/dev/null
echo "==> kubectl apply -f examples/redis-instances.yaml -f examples/cache-policy.yaml"
kubectl apply -f examples/redis-instances.yaml -f examples/cache-policy.yaml
echo "==> kubectl get ri,cp -o wide"
kubectl get ri,cp -o wide
cat <<MSG

The control plane keeps running. Try:
  export KUBECONFIG=$KUBECONFIG
  kubectl get redis-fleet -o wide
  kubectl apply -f examples/third-instance.yaml
Stop it with: make playground-stop
MSG
