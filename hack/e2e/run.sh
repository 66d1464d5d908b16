#!/usr/bin/env bash
# `make e2e`: the user's install path on a real one-node cluster (hack/e2e/cluster.sh), driven
# only with helm and kubectl. The install commands are not written here: they are the shell
# blocks of the README marked `<!-- e2e: NAME -->`, run word for word. What this script
# supplies is what a user writes themselves — the chart values and their copies of the examples,
# adapted as the README says (printed as diffs) — and the checks after each step.
#
#   hack/e2e/run.sh                  # cluster up, the story, cluster down
#   E2E_KEEP=1 hack/e2e/run.sh       # leave the cluster running at the end (cluster.sh down)
#   E2E_STOP_AFTER=N hack/e2e/run.sh # stop after step N (with E2E_KEEP=1: to look around)
#
# Needs root (the node) and the images of hack/e2e/images.sh (`make e2e` builds them).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

USER_DIR="$E2E_WORK/user"   # the user's working directory: values, edited examples
E2E_ARTIFACTS="${E2E_ARTIFACTS:-$E2E_CACHE/e2e-logs}"  # logs of a failed run
NS=shop                     # the application's namespace
RELEASE_NS=redis-fleet
CAPACITY=$((30 * 1024 * 1024))
HOT=auth:,session:,order:   # hot categories of examples/cache-policy.yaml (TTL >= 1h)
WARM=user:,menu:            # warm categories (TTL 6h)
EXTERNAL_PORT=6390          # the Redis outside the cluster, on the host's end of the node link

# ---------------------------------------------------------------------------------------------
# steps and their times

STEP_NAMES=()
STEP_TIMES=()
STEP=0
step_started=0
run_started=$SECONDS

step() {
  end_step
  if [[ -n "${E2E_STOP_AFTER:-}" ]] && ((STEP >= E2E_STOP_AFTER)); then
    say "stopping after step $STEP (E2E_STOP_AFTER)"
    exit 0
  fi
  STEP=$((STEP + 1))
  step_started=$SECONDS
  STEP_NAMES+=("$*")
  printf '\n\033[1m==> [%d] %s\033[0m\n' "$STEP" "$*"
}

end_step() {
  if ((STEP > 0 && ${#STEP_TIMES[@]} < STEP)); then
    local took=$((SECONDS - step_started))
    STEP_TIMES+=("$took")
    printf '<== [%d] %ss\n' "$STEP" "$took"
  fi
}

summary() {
  end_step
  printf '\n%-4s %-88s %6s\n' "step" "" "time"
  local i
  for i in "${!STEP_NAMES[@]}"; do
    printf '%-4s %-88s %5ss\n' "$((i + 1))" "${STEP_NAMES[$i]}" "${STEP_TIMES[$i]:-?}"
  done
  printf '%-4s %-88s %5ss\n' "" "make e2e (total)" "$((SECONDS - run_started))"
}

say() { printf '    %s\n' "$*"; }
# The failure, printed where it happens and again as the run's last lines (after the
# diagnostics and the cluster's teardown), with the tail of the failing README block's output:
# a log read from its end shows why.
# Kept in files: `fail` may run in a subshell (`plan="$(settle …)"`), whose variables die with it.
FAILURE_FILE="$(mktemp)"
FAILURE_OUTPUT=""
fail() {
  local failure
  failure="$(printf 'FAILED in step %d (%s): %s' "$STEP" "${STEP_NAMES[$((STEP - 1))]:-}" "$*")"
  printf '%s\n' "$failure" >"$FAILURE_FILE"
  [[ -z "$FAILURE_OUTPUT" ]] || printf '%s\n' "$FAILURE_OUTPUT" >"$FAILURE_FILE.output"
  printf '\n\033[1;31m%s\033[0m\n' "$failure" >&2
  diagnose >&2 || true
  exit 1
}

# wait_until SECONDS DESCRIPTION CMD...: polls CMD every second.
wait_until() {
  local seconds="$1" what="$2"
  shift 2
  local deadline=$((SECONDS + seconds))
  until "$@"; do
    ((SECONDS < deadline)) || fail "timed out after ${seconds}s waiting for $what"
    sleep 1
  done
}

# ---------------------------------------------------------------------------------------------
# the README's blocks

# readme_block NAME: the shell block after `<!-- e2e: NAME -->` in README.md.
readme_block() {
  awk -v name="$1" '
    $0 == "<!-- e2e: " name " -->" { found = 1; next }
    found && /^```/ && !inside { inside = 1; next }
    inside && /^```/ { exit }
    inside { print }' "$E2E_ROOT/README.md"
}

# run_readme NAME [DIR]: prints the README's block NAME and runs it in DIR (default: the user's
# directory) with bash -euo pipefail.
run_readme() {
  local block dir="${2:-$USER_DIR}"
  block="$(readme_block "$1")"
  [[ -n "$block" ]] || fail "README.md has no block <!-- e2e: $1 -->"
  say "README.md, <!-- e2e: $1 -->, in ${dir/#$E2E_ROOT/<checkout>}:"
  sed 's/^/    $ /' <<<"$block"
  local out
  out="$(mktemp)"
  if ! (cd "$dir" && bash -euo pipefail -c "$block") 2>&1 | sed 's/^/      /' | tee "$out"; then
    FAILURE_OUTPUT="$(tail -n 30 "$out")"
    rm -f "$out"
    fail "the README's block $1 failed"
  fi
  rm -f "$out"
}

# user_copy SRC DEST SED-SCRIPT: the user's adapted copy of SRC, shown as a diff.
user_copy() {
  local src="$1" dest="$USER_DIR/$2"
  mkdir -p "$(dirname "$dest")"
  sed -e "$3" "$E2E_ROOT/$src" >"$dest"
  say "your copy of $src ($2), adapted:"
  diff -u --label "$src" --label "$2" "$E2E_ROOT/$src" "$dest" | sed 's/^/      /' || true
}

# ---------------------------------------------------------------------------------------------
# observations (kubectl only)

k() { kubectl "$@"; }
shop() { k -n "$NS" exec deploy/shop-backend -c app -- shop "$@"; }
ri_field() { k -n "$NS" get ri "$1" -o jsonpath="{.status.$2}"; }
eviction_safe_is() {
  [[ "$(k -n "$NS" get ri "$1" -o jsonpath='{.status.conditions[?(@.type=="EvictionSafe")].status}')" == "$2" ]]
}
rebalance_field() { k -n "$NS" get cp shop -o jsonpath="{.status.rebalance.$1}"; }
# The routing table document: schema 1 is text in data, schema 2 gzip'ed in binaryData (both
# under routing.json; failover, migrating and version are the same fields in both).
routing_json() {
  local plain
  plain="$(k -n "$NS" get cm shop-redis-routing -o jsonpath='{.data.routing\.json}')"
  if [[ -n "$plain" ]]; then
    printf '%s\n' "$plain"
  else
    k -n "$NS" get cm shop-redis-routing -o jsonpath='{.binaryData.routing\.json}' | base64 -d | gunzip
  fi
}
table_version() { routing_json | python3 -c 'import json,sys; print(json.load(sys.stdin)["version"])'; }
failovers_from() {
  routing_json | python3 -c 'import json,sys
print(sum(1 for f in json.load(sys.stdin).get("failover", []) if f["from"] == sys.argv[1]))' "$1"
}
# Used memory of a managed instance in percent of its 30 MB, from INFO in its pod.
redis_used_pct() {
  local bytes
  bytes="$(k -n "$NS" exec "$1-redis-0" -c redis -- sh -c \
    'REDISCLI_AUTH="$REDIS_PASSWORD" redis-cli info memory' | tr -d '\r' |
    awk -F: '$1 == "used_memory" {print $2}')"
  echo $((bytes * 100 / CAPACITY))
}
external_cli() {
  redis-cli -h "$E2E_HOST_IP" -p "$EXTERNAL_PORT" --no-auth-warning -a change-me-tertiary "$@"
}
lease_holder() { k -n "$RELEASE_NS" get lease redis-fleet-operator -o jsonpath='{.spec.holderIdentity}'; }
operator_pods() {
  k -n "$RELEASE_NS" get pods -l app.kubernetes.io/component=operator -o jsonpath='{.items[*].metadata.name}'
}

# check_keys LABEL PREFIXES FIRST COUNT [VALUE]: every key reads back as written, through the
# sidecar of the application.
check_keys() {
  local label="$1" out
  shift
  out="$(shop check "$@" 2>&1)" || fail "$label: $out"
  say "$label: $out"
}

# check_nothing_stale LABEL MISSING PREFIXES FIRST COUNT: no key reads another value than the
# one written last, and exactly MISSING are gone (those the deleted pod held: a cache).
check_nothing_stale() {
  local label="$1" missing="$2" out
  shift 2
  out="$(shop check "$@" 2>/dev/null)" || true
  [[ "$out" == *"($missing missing, 0 with another value)"* ]] ||
    fail "$label: $out; expected exactly $missing missing (the deleted pod's) and none stale"
  say "$label: $out"
}

# Keys of the shop's categories on a managed instance's Redis.
keys_on() {
  local prefix total=0 n
  for prefix in auth session order user menu; do
    n="$(k -n "$NS" exec "$1-redis-0" -c redis -- sh -c \
      "REDISCLI_AUTH=\"\$REDIS_PASSWORD\" redis-cli --scan --pattern '$prefix:*' | wc -l")"
    total=$((total + n))
  done
  echo "$total"
}

# Predicates for wait_until.
balanced() {
  local p s
  p="$(ri_field primary memory.usedPercent)"
  s="$(ri_field secondary memory.usedPercent)"
  [[ -n "$p" && -n "$s" ]] && ((p >= 40 && p <= 60 && s >= 40 && s <= 60))
}
tertiary_has_keys() { (($(external_cli --scan --pattern 'user:*' | wc -l) > 0)); }
primary_below_threshold() { local p; p="$(ri_field primary memory.usedPercent)"; [[ -n "$p" ]] && ((p < 80)); }
secondary_failed_over() { (($(failovers_from secondary) > 0)); }
secondary_back() {
  [[ "$(ri_field secondary phase)" == Ready ]] && (($(failovers_from secondary) == 0))
}
sidecars_at_least() {
  local v
  v="$(k -n "$NS" get cp shop -o jsonpath='{.status.sidecars.minVersion}')"
  [[ -n "$v" ]] && ((v >= $1))
}
new_leader() { local h; h="$(lease_holder)"; [[ -n "$h" && "$h" != "$1" ]]; }
has_leader() { [[ -n "$(lease_holder)" ]]; }
observed() { [[ "$(ri_field primary observedGeneration)" == "$1" ]]; }
# The leading operator acts: a harmless change to the primary's spec (its probe timeout, within
# its 1 s interval) is observed in its status, which only the leader writes. (lastProbeTime is
# a live figure since issue 17: it reaches the status with the periodic refresh only.)
leader_acts() {
  local gen
  k -n "$NS" patch ri primary --type merge -p "{\"spec\":{\"health\":{\"timeout\":\"$1\"}}}" >/dev/null
  gen="$(k -n "$NS" get ri primary -o jsonpath='{.metadata.generation}')"
  wait_until 60 "$2 observing generation $gen of primary" observed "$gen"
}
no_operator_pods() { [[ -z "$(operator_pods)" ]]; }

fleet_view() {
  k -n "$NS" get ri -o wide | sed 's/^/    /'
  redis-fleet-status | sed 's/^/    /' || true
}
# `redis-fleet status` from the workstation, as the README shows it: the image's binary.
redis-fleet-status() {
  COLUMNS=110 "${REDIS_FLEET_BINARY:-$E2E_ROOT/target/release/redis-fleet}" status -n "$NS" 2>/dev/null
}

current_plan() { local id; id="$(rebalance_field planId)"; echo "${id:-0}"; }

# settle AFTER SECONDS PREDICATE...: follows the rebalance plans after plan AFTER (printing
# their progress) until no plan runs, at least one has succeeded and PREDICATE holds; fails when
# a plan fails. Plans come one at a time; the fleet may need more than one. Prints the last id.
settle() {
  local after="$1" deadline=$((SECONDS + $2)) last="" line id phase
  shift 2
  while :; do
    id="$(current_plan)"
    phase="$(rebalance_field phase)"
    if ((id > after)); then
      line="plan $id · $phase · $(rebalance_field step) · $(rebalance_field keysMoved)/$(rebalance_field keysTotal) keys · job $(rebalance_field job) · $(rebalance_field reason)"
      [[ "$line" == "$last" ]] || { say "$line" >&2; last="$line"; }
      [[ "$phase" != Failed ]] || fail "rebalance plan $id failed: $(k -n "$NS" get cp shop -o jsonpath='{.status.rebalance}')"
      if [[ "$phase" == Succeeded ]] && "$@"; then
        echo "$id"
        return
      fi
    fi
    ((SECONDS < deadline)) || fail "no rebalance after plan $after brought the fleet to: $*"
    sleep 1
  done
}

diagnose() {
  echo "--- diagnostics"
  if ! k get --raw /readyz --request-timeout=5s >/dev/null 2>&1; then
    echo "(no cluster answers yet: nothing to ask it)"
    return 0
  fi
  k get nodes -o wide || true
  k describe node "$E2E_NODE_NAME" | sed -n '/^Taints:/,/^Capacity:/p' || true
  k get pods -A -o wide || true
  k -n "$NS" get ri,cp -o wide || true
  k -n "$NS" get cp shop -o jsonpath='{.status}' || true
  echo
  k get events -A --sort-by=.lastTimestamp 2>/dev/null | tail -30 || true
  k -n "$RELEASE_NS" logs deploy/redis-fleet --tail=40 2>/dev/null || true
  local pod
  for pod in $(k -n "$RELEASE_NS" get pods -l app.kubernetes.io/component=rebalance -o name 2>/dev/null); do
    echo "--- $pod"
    k -n "$RELEASE_NS" logs "$pod" --tail=20 || true
  done
  k -n "$NS" logs deploy/shop-backend -c redis-fleet --tail=20 2>/dev/null || true
}

# ---------------------------------------------------------------------------------------------
# the story

cleanup() {
  local rc=$?
  summary
  if ((rc != 0)) && [[ -d "$E2E_WORK/logs" ]]; then
    # The cluster's logs outlive it (its work directory goes with `down`).
    rm -rf "$E2E_ARTIFACTS"
    mkdir -p "$E2E_ARTIFACTS"
    cp -a "$E2E_WORK/logs/." "$E2E_ARTIFACTS/"
    cp -a "$E2E_WORK/pod-logs" "$E2E_ARTIFACTS/pods" 2>/dev/null || true
    echo "the cluster's logs and the pods' logs: $E2E_ARTIFACTS"
  fi
  if [[ -n "${E2E_KEEP:-}" ]]; then
    echo "the cluster keeps running: eval \"\$(hack/e2e/cluster.sh env)\"; stop it with hack/e2e/cluster.sh down"
  else
    "$E2E_HACK/cluster.sh" down
  fi
  if [[ -s "$FAILURE_FILE" ]]; then
    if [[ -s "$FAILURE_FILE.output" ]]; then
      printf '\nthe end of its output:\n%s\n' "$(cat "$FAILURE_FILE.output")" >&2
    fi
    printf '\n\033[1;31m%s\033[0m\n' "$(cat "$FAILURE_FILE")" >&2
  fi
  rm -f "$FAILURE_FILE" "$FAILURE_FILE.output"
  exit "$rc"
}

main() {
  [[ "$(id -u)" == 0 ]] || e2e_die "make e2e needs root (the node: network namespace, mounts, cgroups)"
  trap cleanup EXIT
  trap 'exit 130' INT TERM

  step "the image: make image (the Dockerfile's runtime stage on locally made base images, built with buildah)"
  run_readme image "$E2E_ROOT"

  step "a real one-node cluster: etcd, kube-apiserver, controller-manager, scheduler; containerd + runc, CNI bridge, kubelet, kube-proxy, CoreDNS"
  "$E2E_HACK/cluster.sh" up >/dev/null
  eval "$("$E2E_HACK/cluster.sh" env)"
  k get nodes -o wide | sed 's/^/    /'
  "$E2E_HACK/cluster.sh" import "$E2E_IMAGES/archives/$(echo "${E2E_FLEET_IMAGE#localhost/}" | tr ':/' '__').tar"
  mkdir -p "$USER_DIR"
  ln -s "$E2E_ROOT/charts" "$USER_DIR/charts"

  step "helm install: the operator from the local image, 2 replicas with leader election, the chart's ServiceAccount and RBAC"
  cat >"$USER_DIR/redis-fleet-values.yaml" <<EOF
image:
  repository: $E2E_FLEET_REPOSITORY
  tag: "$E2E_FLEET_VERSION"
replicaCount: 2
EOF
  say "your values (redis-fleet-values.yaml):"
  sed 's/^/      /' "$USER_DIR/redis-fleet-values.yaml"
  run_readme helm-install
  k -n "$RELEASE_NS" get pods -o wide | sed 's/^/    /'
  local sa
  sa="$(k -n "$RELEASE_NS" get pods -l app.kubernetes.io/component=operator -o jsonpath='{.items[*].spec.serviceAccountName}')"
  [[ "$sa" == "redis-fleet redis-fleet" ]] || fail "operator pods run as '$sa', not the chart's ServiceAccount"
  wait_until 60 "a leader" has_leader
  say "both pods run as ServiceAccount redis-fleet (no admin kubeconfig anywhere); leader: $(lease_holder)"

  step "two managed RedisInstances (StatefulSets, probed Ready through their Services) and the CachePolicy"
  user_copy examples/managed-instances.yaml examples/managed-instances.yaml "s|image: redis:7.2|image: $E2E_REDIS_IMAGE|"
  user_copy examples/cache-policy.yaml examples/cache-policy.yaml "s|cooldown: 5m|cooldown: 10s|"
  run_readme instances
  k -n "$NS" get statefulsets,pods,services -o wide | sed 's/^/    /'
  local endpoint
  endpoint="$(ri_field primary endpoint)"
  [[ "$endpoint" == "primary-redis.$NS.svc:6379" ]] || fail "primary's endpoint is '$endpoint'"
  say "the operator (in its pod) probes primary at $endpoint: Service DNS from CoreDNS, the ClusterIP from kube-proxy"
  local policy pod_uid
  policy="$(ri_field primary evictionPolicy)"
  [[ "$policy" == volatile-lru ]] || fail "primary runs maxmemory-policy '$policy', not the example's volatile-lru"
  pod_uid="$(k -n "$NS" get pod primary-redis-0 -o jsonpath='{.metadata.uid}')"
  # (A plan moving data out of primary, none expected here, would hold the switch to
  # allkeys-lru until it ends.)
  k -n "$NS" patch ri primary --type merge -p '{"spec":{"managed":{"evictionPolicy":"allkeys-lru"}}}' >/dev/null
  wait_until 120 "EvictionSafe=False on primary" eviction_safe_is primary False
  say "primary switched to allkeys-lru: $(k -n "$NS" get ri primary -o jsonpath='{.status.conditions[?(@.type=="EvictionSafe")].message}')"
  k -n "$NS" patch ri primary --type merge -p '{"spec":{"managed":{"evictionPolicy":"volatile-lru"}}}' >/dev/null
  wait_until 120 "EvictionSafe=True on primary" eviction_safe_is primary True
  [[ "$(k -n "$NS" get pod primary-redis-0 -o jsonpath='{.metadata.uid}')" == "$pod_uid" ]] ||
    fail "changing the eviction policy restarted primary's pod"
  say "and back to volatile-lru, both applied to the running server (CONFIG SET): the pod was not restarted"

  step "the application: the chart's sidecar example, with the application container replaced"
  user_copy charts/redis-fleet/examples/app-with-sidecar.yaml app-with-sidecar.yaml \
    "s|image: ghcr.io/redis-fleet/redis-fleet:0.1.0|image: $E2E_FLEET_IMAGE|; s|image: registry.example.com/shop/backend:1.0.0|image: $E2E_SHOP_IMAGE|"
  run_readme app
  k -n "$NS" get pods -l app.kubernetes.io/name=shop-backend -o wide | sed 's/^/    /'
  local app_generation
  app_generation="$(k -n "$NS" get deploy shop-backend -o jsonpath='{.metadata.generation}')"
  say "the application reaches Redis at 127.0.0.1:6379: $(k -n "$NS" exec deploy/shop-backend -c app -- redis-cli PING)"

  step "the shop writes its categories through the sidecar until the primary passes 80 %"
  local plan
  plan="$(current_plan)"
  shop write "$WARM" 0 4000 | tail -1 | sed 's/^/    /' || fail "writing through the sidecar"
  local hot=0
  while (($(redis_used_pct primary) < 83)); do
    shop write "$HOT" $((1000000 + hot)) 2000 >/dev/null || fail "writing through the sidecar"
    hot=$((hot + 2000))
    ((hot < 100000)) || fail "the primary does not fill up"
  done
  say "$((4000 + hot)) keys written ($hot hot, 4000 warm); primary at $(redis_used_pct primary) % of 30 MB, secondary at $(redis_used_pct secondary) %"

  step "a rebalance Job, run by the kubelet under the chart's RBAC, moves slots: both instances 40–60 %, every key intact"
  plan="$(settle "$plan" 600 balanced)"
  k -n "$RELEASE_NS" get jobs,pods -l app.kubernetes.io/component=rebalance -o wide | sed 's/^/    /'
  local job_sa
  job_sa="$(k -n "$RELEASE_NS" get pods -l app.kubernetes.io/component=rebalance -o jsonpath='{.items[0].spec.serviceAccountName}')"
  [[ "$job_sa" == "redis-fleet-rebalance" ]] || fail "the rebalance pod runs as '$job_sa'"
  say "the Job ran in $RELEASE_NS as ServiceAccount $job_sa"
  say "primary at $(ri_field primary memory.usedPercent) %, secondary at $(ri_field secondary memory.usedPercent) %"
  check_keys "warm keys" "$WARM" 0 4000
  check_keys "hot keys" "$HOT" 1000000 "$hot"
  fleet_view

  step "a third instance with its own Secret, applied with kubectl as GitOps would: data spreads, the application untouched"
  setsid redis-server --bind "$E2E_HOST_IP" --port "$EXTERNAL_PORT" --requirepass change-me-tertiary \
    --maxmemory 30mb --maxmemory-policy volatile-lru --save "" --appendonly no \
    >"$E2E_WORK/logs/external-redis.log" 2>&1 </dev/null &
  echo $! >"$E2E_WORK/pids/external-redis"
  wait_until 10 "the external Redis" external_cli ping >/dev/null 2>&1
  say "a Redis outside the cluster: redis-server on $E2E_HOST_IP:$EXTERNAL_PORT (the host's end of the node's link)"
  user_copy examples/third-instance.yaml examples/third-instance.yaml \
    "s|host: redis-tertiary.example.com|host: $E2E_HOST_IP|; s|port: 6379|port: $EXTERNAL_PORT|"
  run_readme third-instance
  plan="$(settle "$plan" 600 tertiary_has_keys)"
  say "keys on the third instance: $(external_cli --scan --pattern 'user:*' | wc -l) user, $(external_cli --scan --pattern 'menu:*' | wc -l) menu"
  [[ "$(k -n "$NS" get deploy shop-backend -o jsonpath='{.metadata.generation}')" == "$app_generation" ]] ||
    fail "the application's Deployment was changed"
  check_keys "warm keys" "$WARM" 0 4000
  check_keys "hot keys" "$HOT" 1000000 "$hot"
  fleet_view

  step "delete a Redis pod (its node cordoned, so it stays away): failover; uncordon: back, nothing stale"
  shop write fo: 0 300 before | tail -1 | sed 's/^/    /' || fail "writing through the sidecar"
  local held
  held="$(keys_on secondary)"
  say "the secondary holds $held of the shop's keys; its pod has no persistent storage (a cache)"
  # A deleted pod is back within a second or two, usually before two probes fail; while the
  # node is cordoned (as during maintenance) its replacement cannot be scheduled.
  k cordon "$E2E_NODE_NAME" | sed 's/^/    /'
  k -n "$NS" delete pod secondary-redis-0 --wait=false | sed 's/^/    /'
  local deleted=$SECONDS
  wait_until 60 "failover entries for the secondary" secondary_failed_over
  local failover_version
  failover_version="$(table_version)"
  say "failover published $((SECONDS - deleted))s after the delete: routing v$failover_version; secondary $(ri_field secondary phase)"
  wait_until 180 "every sidecar on the failover table (v$failover_version)" \
    sidecars_at_least "$failover_version"
  say "every sidecar uses v$failover_version or later $((SECONDS - deleted))s after the delete (the kubelet refreshes mounted ConfigMaps lazily)"
  shop write fo: 0 300 during | tail -1 | sed 's/^/    /' || fail "writing through the sidecar"
  k uncordon "$E2E_NODE_NAME" | sed 's/^/    /'
  plan="$(settle "$plan" 600 secondary_back)"
  k -n "$NS" get pods -l redisfleet.io/instance=secondary -o wide | sed 's/^/    /'
  check_keys "keys written during the failover" fo: 0 300 during
  local hot_lost warm_lost
  hot_lost="$({ shop check "$HOT" 1000000 "$hot" 2>/dev/null || true; } | sed -n 's/.*(\([0-9]*\) missing.*/\1/p')"
  warm_lost="$({ shop check "$WARM" 0 4000 2>/dev/null || true; } | sed -n 's/.*(\([0-9]*\) missing.*/\1/p')"
  ((hot_lost + warm_lost == held)) ||
    fail "$((hot_lost + warm_lost)) keys missing, but the deleted pod held $held"
  check_nothing_stale "hot keys" "$hot_lost" "$HOT" 1000000 "$hot"
  check_nothing_stale "warm keys" "$warm_lost" "$WARM" 0 4000
  say "the application refills what the deleted pod held"
  shop write "$HOT" 1000000 "$hot" >/dev/null || fail "writing through the sidecar"
  shop write "$WARM" 0 4000 >/dev/null || fail "writing through the sidecar"
  check_keys "warm keys" "$WARM" 0 4000
  check_keys "hot keys" "$HOT" 1000000 "$hot"
  if (($(redis_used_pct primary) >= 80)); then
    say "the refill takes the primary past 80 % again (it holds the hot tier alone): another rebalance"
    plan="$(settle "$plan" 600 primary_below_threshold)"
    check_keys "warm keys" "$WARM" 0 4000
    check_keys "hot keys" "$HOT" 1000000 "$hot"
  fi
  fleet_view

  step "delete the leader operator pod: another replica leads"
  local leader pods
  leader="$(lease_holder)"
  pods="$(operator_pods)"
  k -n "$RELEASE_NS" delete pod "$leader" --wait=false | sed 's/^/    /'
  local t0=$SECONDS
  wait_until 60 "a new leader" new_leader "$leader"
  local new_leader
  new_leader="$(lease_holder)"
  # The leader lets the Lease go when it stops; the standby looks for it every few seconds, and
  # the replacement pod at once when it starts: either may win.
  local who="the standby"
  [[ " $pods " == *" $new_leader "* ]] || who="the replacement pod"
  leader_acts 900ms "the new leader"
  say "$who $new_leader leads $((SECONDS - t0))s after the delete, and reconciles"

  step "helm upgrade with changed values"
  cat >>"$USER_DIR/redis-fleet-values.yaml" <<'EOF'
logLevel: info,redis_fleet=debug
resources:
  requests: {cpu: 20m, memory: 48Mi}
  limits: {cpu: "1", memory: 192Mi}
EOF
  say "your values, changed (redis-fleet-values.yaml):"
  sed 's/^/      /' "$USER_DIR/redis-fleet-values.yaml"
  run_readme helm-upgrade
  k -n "$RELEASE_NS" get pods -o wide | sed 's/^/    /'
  local env
  env="$(k -n "$RELEASE_NS" get deploy redis-fleet -o jsonpath='{.spec.template.spec.containers[0].env[?(@.name=="RUST_LOG")].value}')"
  [[ "$env" == "info,redis_fleet=debug" ]] || fail "the upgrade did not apply logLevel"
  wait_until 60 "a leader after the upgrade" has_leader
  leader_acts 800ms "the upgraded operator"
  say "revision $(helm -n "$RELEASE_NS" history redis-fleet -o json | python3 -c 'import json,sys; print(json.load(sys.stdin)[-1]["revision"])'), RUST_LOG=$env, leader $(lease_holder)"

  step "helm uninstall: the CRDs, the fleet and the data stay"
  run_readme helm-uninstall
  wait_until 60 "the operator pods gone" no_operator_pods
  k get crd redisinstances.redisfleet.io cachepolicies.redisfleet.io | sed 's/^/    /'
  k -n "$NS" get ri,cp,statefulsets | sed 's/^/    /'
  check_keys "warm keys, through the sidecar" "$WARM" 0 4000
  check_keys "hot keys, through the sidecar" "$HOT" 1000000 "$hot"

  step "kubectl get pods -A -o wide"
  k get pods -A -o wide
}

main "$@"
