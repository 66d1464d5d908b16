#!/usr/bin/env bash
# Sidecar throughput, latency and memory against direct Redis and twemproxy (Debian's
# nutcracker), all on the same single redis-server, measured side by side in one run and
# printed as ratios (the machine is shared and noisy: absolute numbers mean little).
#
#   bench/proxy.sh            # default: 200k requests per run, 3 rounds (median kept)
#   REQUESTS=500000 ROUNDS=5 bench/proxy.sh
#   REDIS_FLEET_BASELINE_BIN=/path/to/older/redis-fleet bench/proxy.sh   # adds before columns
#
# Needs redis-server, redis-benchmark (redis-tools) and nutcracker (make bench installs them).
set -euo pipefail
cd "$(dirname "$0")/.."

REQUESTS="${REQUESTS:-200000}"
ROUNDS="${ROUNDS:-3}"
CLIENTS="${CLIENTS:-50}"
source bench/lib.sh
bench_setup bench

echo "building the release binary..." >&2
cargo build --release --quiet --bin redis-fleet
bin=target/release/redis-fleet

redis_port=$(port); twem_port=$(port); side_port=$(port); metrics_port=$(port)
redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no --daemonize no \
  --maxmemory 1gb --logfile "$work/redis.log" &
redis_pid=$!
pids+=($redis_pid)
wait_port "$redis_port"

cat > "$work/nutcracker.yml" <<EOF
bench:
  listen: 127.0.0.1:$twem_port
  hash: fnv1a_64
  distribution: ketama
  redis: true
  auto_eject_hosts: false
  servers:
    - 127.0.0.1:$redis_port:1
EOF
nutcracker -c "$work/nutcracker.yml" -o "$work/nutcracker.log" -s "$(port)" &
twem_pid=$!
pids+=($twem_pid)
wait_port "$twem_port"

cat > "$work/routing.json" <<EOF
{"schemaVersion":1,"version":1,"policy":"bench/bench",
 "instances":{"redis":{"host":"127.0.0.1","port":$redis_port}},
 "categories":[{"name":"default","slots":[[0,16383,"redis"]]}]}
EOF
RUST_LOG=warn "$bin" sidecar --routing-file "$work/routing.json" --listen "127.0.0.1:$side_port" \
  --metrics-addr "127.0.0.1:$metrics_port" --id bench > "$work/sidecar.log" 2>&1 &
side_pid=$!
pids+=($side_pid)
wait_port "$side_port"
idle_rss=$(awk '/VmRSS/ {print $2}' "/proc/$side_pid/status")
idle_file=$(awk '/RssFile/ {print $2}' "/proc/$side_pid/status")

# Replication (docs/replication.md): the same category replicated onto a second redis-server,
# async and sync, each through a sidecar of its own, measured beside the unreplicated sidecar.
replica_port=$(port)
redis-server --port "$replica_port" --bind 127.0.0.1 --save '' --appendonly no --daemonize no \
  --maxmemory 1gb --logfile "$work/replica.log" &
pids+=($!)
wait_port "$replica_port"
declare -A rep_port rep_pid
for mode in async sync; do
  cat > "$work/routing-$mode.json" <<EOF
{"schemaVersion":1,"version":1,"policy":"bench/bench",
 "instances":{"redis":{"host":"127.0.0.1","port":$redis_port},
              "replica":{"host":"127.0.0.1","port":$replica_port}},
 "categories":[{"name":"default","slots":[[0,16383,"redis"]],
   "replication":{"mode":"$mode","replicas":[[0,16383,"replica"]]}}]}
EOF
  rep_port[$mode]=$(port)
  RUST_LOG=warn "$bin" sidecar --routing-file "$work/routing-$mode.json" \
    --listen "127.0.0.1:${rep_port[$mode]}" --metrics-addr "127.0.0.1:$(port)" --id "bench-$mode" \
    > "$work/sidecar-$mode.log" 2>&1 &
  rep_pid[$mode]=$!
  pids+=($!)
  wait_port "${rep_port[$mode]}"
done

# REDIS_FLEET_BASELINE_BIN=<another redis-fleet binary>: its sidecar is measured in the same
# run (the "before" columns), so that a change is judged side by side on the same noise.
base_pid=0
if [ -n "${REDIS_FLEET_BASELINE_BIN:-}" ]; then
  base_port=$(port)
  RUST_LOG=warn "$REDIS_FLEET_BASELINE_BIN" sidecar --routing-file "$work/routing.json" \
    --listen "127.0.0.1:$base_port" --metrics-addr "127.0.0.1:$(port)" --id bench-baseline \
    > "$work/baseline.log" 2>&1 &
  base_pid=$!
  pids+=($base_pid)
  wait_port "$base_port"
fi

# CPU nanoseconds a process has used so far, all its threads (schedstat: exact, not ticks).
cpu_ns() { cat /proc/"$1"/task/*/schedstat 2>/dev/null | awk '{s += $1} END {printf "%.0f\n", s}'; }

# run <port> <test> <pipeline> <clients> <proxy pid or 0> [extra redis-benchmark flags]
#   -> "<requests/s, median of ROUNDS> <proxy CPU µs per request over all rounds>"
run() {
  local vals=() before after
  before=$([ "$5" != 0 ] && cpu_ns "$5" || echo 0)
  for _ in $(seq 1 "$ROUNDS"); do
    vals+=("$(redis-benchmark -h 127.0.0.1 -p "$1" -t "$2" -P "$3" -c "$4" -n "$REQUESTS" -r 100000 -d 64 --csv -q ${6:-} \
      | awk -F'","' 'NR==2 {gsub(/"/,"",$2); print $2}')")
  done
  after=$([ "$5" != 0 ] && cpu_ns "$5" || echo 0)
  printf '%s %s\n' \
    "$(printf '%s\n' "${vals[@]}" | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')" \
    "$(echo "($after - $before) / 1000 / ($REQUESTS * $ROUNDS)" | bc -l)"
}

# p50 and p99 in ms with one client (median run)
lat() {
  redis-benchmark -h 127.0.0.1 -p "$1" -t "$2" -P 1 -c 1 -n 50000 -r 100000 -d 64 --csv -q ${3:-} \
    | awk -F'","' 'NR==2 {gsub(/"/,"",$0); split($0,f,","); print f[5], f[7]}'
}

declare -A R C
for P in 1 16; do
  for t in set get; do
    for target in direct:$redis_port:0 twemproxy:$twem_port:$twem_pid sidecar:$side_port:$side_pid; do
      IFS=: read -r name p pid <<<"$target"
      read -r R[$name,$t,$P] C[$name,$t,$P] <<<"$(run "$p" "$t" "$P" "$CLIENTS" "$pid")"
    done
    # RESP3 (HELLO 3 first): twemproxy does not speak it.
    read -r R[direct3,$t,$P] C[direct3,$t,$P] <<<"$(run "$redis_port" "$t" "$P" "$CLIENTS" 0 -3)"
    read -r R[sidecar3,$t,$P] C[sidecar3,$t,$P] <<<"$(run "$side_port" "$t" "$P" "$CLIENTS" "$side_pid" -3)"
    if [ "$base_pid" != 0 ]; then
      read -r R[base,$t,$P] C[base,$t,$P] <<<"$(run "$base_port" "$t" "$P" "$CLIENTS" "$base_pid")"
    fi
  done
done

printf '\nredis-benchmark, %s clients, %s requests, 64-byte values, median of %s runs (requests/s);\n' "$CLIENTS" "$REQUESTS" "$ROUNDS"
printf 'CPU: the proxy process'"'"'s CPU time per request, in µs (lower is better; the ratio is what a\n'
printf 'proxy costs, which on a 2-core machine shared with redis-benchmark and Redis decides the rest)\n'
printf '%-5s %-10s %-4s %10s %10s %10s %9s %9s %9s %9s %8s\n' \
  RESP pipeline cmd direct twemproxy sidecar side/dir side/twem cpu-twem cpu-side cpu-s/t
for P in 1 16; do
  for t in set get; do
    d=${R[direct,$t,$P]}; w=${R[twemproxy,$t,$P]}; s=${R[sidecar,$t,$P]}
    cw=${C[twemproxy,$t,$P]}; cs=${C[sidecar,$t,$P]}
    printf '%-5s %-10s %-4s %10.0f %10.0f %10.0f %9.2f %9.2f %9.2f %9.2f %8.2f\n' 2 "-P $P" "$t" "$d" "$w" "$s" \
      "$(echo "$s / $d" | bc -l)" "$(echo "$s / $w" | bc -l)" "$cw" "$cs" "$(echo "$cs / $cw" | bc -l)"
  done
done
for P in 1 16; do
  for t in set get; do
    d=${R[direct3,$t,$P]}; s=${R[sidecar3,$t,$P]}; cs=${C[sidecar3,$t,$P]}
    printf '%-5s %-10s %-4s %10.0f %10s %10.0f %9.2f %9s %9s %9.2f %8s\n' 3 "-P $P" "$t" "$d" - "$s" \
      "$(echo "$s / $d" | bc -l)" - - "$cs" -
  done
done

if [ "$base_pid" != 0 ]; then
  printf '\nbaseline sidecar (%s), RESP2, same run\n' "$REDIS_FLEET_BASELINE_BIN"
  printf '%-10s %-4s %12s %12s %10s %12s %12s %10s\n' pipeline cmd before now now/before \
    cpu-before cpu-now cpu-n/b
  for P in 1 16; do
    for t in set get; do
      b=${R[base,$t,$P]}; s=${R[sidecar,$t,$P]}; cb=${C[base,$t,$P]}; cs=${C[sidecar,$t,$P]}
      printf '%-10s %-4s %12.0f %12.0f %10.2f %12.2f %12.2f %10.2f\n' "-P $P" "$t" "$b" "$s" \
        "$(echo "$s / $b" | bc -l)" "$cb" "$cs" "$(echo "$cs / $cb" | bc -l)"
    done
  done
fi

# Where the CPU goes: one longer run per target, each process's CPU per request (the client is
# redis-benchmark itself) and the machine's idle share. On loopback the three processes share
# the machine's cores, so a proxy's CPU per request is taken from Redis and the client: with the
# cores as busy as in the direct run, the ratio a proxy can reach is the direct run's CPU per
# request over the proxied run's ("bound"); the proxy's kernel share is what every proxy pays
# for its extra TCP hop (a read and a write per client batch).
hz=$(getconf CLK_TCK)
cpus=$(grep -c '^cpu[0-9]' /proc/stat)
# A process's user and system CPU ticks so far, all its threads (fields 14 and 15 of its stat,
# counted after the name, which may hold spaces; ticks of 1/CLK_TCK s: a run lasts hundreds).
ticks() { [ "$1" != 0 ] && sed 's/.*) //' "/proc/$1/stat" | awk '{print $12, $13}' || echo 0 0; }
# cpu_split <port> <test> <pipeline> <proxy pid or 0>
#   -> "<client µs/req> <redis µs/req> <proxy user µs/req> <proxy sys µs/req> <idle %> <requests/s>"
# The idle share is taken over the whole benchmark process (connecting its clients included).
cpu_split() {
  local r0 r1 p0 p1 i0 i1 out client rate secs pu0 ps0 pu1 ps1
  r0=$(cpu_ns "$redis_pid"); p0=$(ticks "$4")
  i0=$(awk '/^cpu / {print $5 + $6}' /proc/stat)
  out=$(python3 - "$@" <<'PY'
import os, resource, subprocess, sys, time
port, test, pipeline = sys.argv[1:4]
n = os.environ["cpu_req"]
began = time.monotonic()
res = subprocess.run(["redis-benchmark", "-h", "127.0.0.1", "-p", port, "-t", test, "-P", pipeline,
                      "-c", os.environ["CLIENTS"], "-n", n, "-r", "100000", "-d", "64", "--csv", "-q"],
                     capture_output=True, text=True, check=True)
took = time.monotonic() - began
rate = res.stdout.splitlines()[1].split('","')[1]
r = resource.getrusage(resource.RUSAGE_CHILDREN)
print((r.ru_utime + r.ru_stime) * 1e6 / int(n), rate, took)
PY
) || return 1
  i1=$(awk '/^cpu / {print $5 + $6}' /proc/stat)
  r1=$(cpu_ns "$redis_pid"); p1=$(ticks "$4")
  read -r client rate secs <<<"$out"
  [ -n "$secs" ] || return 1
  read -r pu0 ps0 <<<"$p0"; read -r pu1 ps1 <<<"$p1"
  printf '%s %s %s %s %s %s\n' "$client" "$(echo "($r1 - $r0) / 1000 / $cpu_req" | bc -l)" \
    "$(echo "($pu1 - $pu0) * 1000000 / $hz / $cpu_req" | bc -l)" \
    "$(echo "($ps1 - $ps0) * 1000000 / $hz / $cpu_req" | bc -l)" \
    "$(echo "100 * ($i1 - $i0) / $hz / $cpus / $secs" | bc -l)" "$rate"
}
export CLIENTS
printf '\nwhere the CPU goes (%s requests per run, 5 times that with -P 16; RESP2): µs per request of each process, the\n' "$REQUESTS"
printf 'machine idle, and the ratio the proxy could reach with the cores as busy as directly ("bound")\n'
printf '%-10s %-4s %-9s %10s %8s %8s %10s %9s %7s %9s %7s\n' pipeline cmd target requests/s client redis \
  proxy-usr proxy-sys idle ratio bound
for P in 1 16; do
  export cpu_req=$((P == 1 ? REQUESTS : REQUESTS * 5))
  for t in set get; do
    row=$(cpu_split "$redis_port" "$t" "$P" 0) || exit 1
    read -r dc dr _ _ di drate <<<"$row"
    printf '%-10s %-4s %-9s %10.0f %8.2f %8.2f %10s %9s %6.0f%% %9s %7s\n' "-P $P" "$t" direct "$drate" \
      "$dc" "$dr" - - "$di" - -
    for target in twemproxy:$twem_port:$twem_pid sidecar:$side_port:$side_pid; do
      IFS=: read -r name p pid <<<"$target"
      row=$(cpu_split "$p" "$t" "$P" "$pid") || exit 1
      read -r c r pu ps i rate <<<"$row"
      printf '%-10s %-4s %-9s %10.0f %8.2f %8.2f %10.2f %9.2f %6.0f%% %9.2f %7.2f\n' "-P $P" "$t" "$name" \
        "$rate" "$c" "$r" "$pu" "$ps" "$i" "$(echo "$rate / $drate" | bc -l)" \
        "$(echo "($dc + $dr) / ($c + $r + $pu + $ps)" | bc -l)"
    done
  done
done

# Replication's cost, same run: writes pay the write script (and, for sync, the replica's
# round trip before the reply); reads pay nothing.
declare -A RR CR
for t in set:1 set:16 get:1; do
  IFS=: read -r cmd P <<<"$t"
  read -r RR[off,$cmd,$P] CR[off,$cmd,$P] <<<"$(run "$side_port" "$cmd" "$P" "$CLIENTS" "$side_pid")"
  for mode in async sync; do
    read -r RR[$mode,$cmd,$P] CR[$mode,$cmd,$P] \
      <<<"$(run "${rep_port[$mode]}" "$cmd" "$P" "$CLIENTS" "${rep_pid[$mode]}")"
  done
done
printf '\nreplication (one category, its replica on a second redis-server), %s clients, requests/s\n' "$CLIENTS"
printf '%-10s %-4s %10s %10s %10s %9s %9s %9s %9s %9s\n' \
  pipeline cmd off async sync async/off sync/off cpu-off cpu-async cpu-sync
for t in set:1 set:16 get:1; do
  IFS=: read -r cmd P <<<"$t"
  o=${RR[off,$cmd,$P]}; a=${RR[async,$cmd,$P]}; y=${RR[sync,$cmd,$P]}
  printf '%-10s %-4s %10.0f %10.0f %10.0f %9.2f %9.2f %9.2f %9.2f %9.2f\n' "-P $P" "$cmd" "$o" "$a" "$y" \
    "$(echo "$a / $o" | bc -l)" "$(echo "$y / $o" | bc -l)" \
    "${CR[off,$cmd,$P]}" "${CR[async,$cmd,$P]}" "${CR[sync,$cmd,$P]}"
done
read -r o50 o99 <<<"$(lat "$side_port" set)"
read -r a50 a99 <<<"$(lat "${rep_port[async]}" set)"
read -r y50 y99 <<<"$(lat "${rep_port[sync]}" set)"
printf 'one client, SET: off p50 %.3f p99 %.3f ms; async p50 %.3f p99 %.3f ms; sync p50 %.3f p99 %.3f ms\n' \
  "$o50" "$o99" "$a50" "$a99" "$y50" "$y99"
for mode in async sync; do
  printf '%s sidecar: RSS %.1f MB\n' "$mode" \
    "$(echo "$(awk '/VmRSS/ {print $2}' "/proc/${rep_pid[$mode]}/status") / 1024" | bc -l)"
done

printf '\n'
for resp in 2 3; do
  flag=$([ "$resp" = 3 ] && echo -3 || true)
  read -r d50 d99 <<<"$(lat "$redis_port" get "$flag")"
  read -r s50 s99 <<<"$(lat "$side_port" get "$flag")"
  printf 'one client, GET, RESP%s: direct p50 %.3f ms p99 %.3f ms; sidecar p50 %.3f ms p99 %.3f ms; added p50 %.0f µs, p99 %.0f µs\n' \
    "$resp" "$d50" "$d99" "$s50" "$s99" \
    "$(echo "($s50 - $d50) * 1000" | bc -l)" "$(echo "($s99 - $d99) * 1000" | bc -l)"
done

# Memory: 1000 client connections at once.
redis-benchmark -h 127.0.0.1 -p "$side_port" -t get -c 1000 -n 200000 -q > /dev/null
hwm=$(awk '/VmHWM/ {print $2}' "/proc/$side_pid/status")
rss=$(awk '/VmRSS/ {print $2}' "/proc/$side_pid/status")
printf '\nsidecar memory: peak RSS %.1f MB with 1000 client connections (now %.1f MB; %.1f MB before any\n' \
  "$(echo "$hwm / 1024" | bc -l)" "$(echo "$rss / 1024" | bc -l)" "$(echo "$idle_rss / 1024" | bc -l)"
printf 'client, %.1f MB of it the binary'"'"'s pages): %.1f KB per connection at the peak\n' \
  "$(echo "$idle_file / 1024" | bc -l)" "$(echo "($hwm - $idle_rss) / 1000" | bc -l)"
