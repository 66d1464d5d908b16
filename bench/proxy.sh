#!/usr/bin/env bash
# Sidecar throughput, latency and memory against direct Redis and twemproxy (Debian's
# nutcracker), all on the same single redis-server, measured side by side in one run and
# printed as ratios (the machine is shared and noisy: absolute numbers mean little).
#
#   bench/proxy.sh            # default: 200k requests per run, 3 rounds (median kept)
#   REQUESTS=500000 ROUNDS=5 bench/proxy.sh
#
# Needs redis-server, redis-benchmark (redis-tools) and nutcracker (make bench installs them).
set -euo pipefail
cd "$(dirname "$0")/.."

REQUESTS="${REQUESTS:-200000}"
ROUNDS="${ROUNDS:-3}"
CLIENTS="${CLIENTS:-50}"
work="$(mktemp -d /tmp/redis-fleet-bench.XXXXXX)"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 1 200); do redis-cli -p "$1" PING >/dev/null 2>&1 && return 0; sleep 0.05; done; echo "nothing on $1" >&2; exit 1; }

echo "building the release binary..." >&2
cargo build --release --quiet --bin redis-fleet
bin=target/release/redis-fleet

redis_port=$(port); twem_port=$(port); side_port=$(port); metrics_port=$(port)
redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no --daemonize no \
  --maxmemory 1gb --logfile "$work/redis.log" &
pids+=($!)
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
pids+=($!)
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

# rps <port> <test> <pipeline> <clients> -> requests per second (median of ROUNDS)
rps() {
  local vals=()
  for _ in $(seq 1 "$ROUNDS"); do
    vals+=("$(redis-benchmark -h 127.0.0.1 -p "$1" -t "$2" -P "$3" -c "$4" -n "$REQUESTS" -r 100000 -d 64 --csv -q \
      | awk -F'","' 'NR==2 {gsub(/"/,"",$2); print $2}')")
  done
  printf '%s\n' "${vals[@]}" | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'
}

# p50 and p99 in ms with one client (median run)
lat() {
  redis-benchmark -h 127.0.0.1 -p "$1" -t "$2" -P 1 -c 1 -n 50000 -r 100000 -d 64 --csv -q \
    | awk -F'","' 'NR==2 {gsub(/"/,"",$0); split($0,f,","); print f[5], f[7]}'
}

declare -A R
for P in 1 16; do
  for t in set get; do
    for target in direct:$redis_port twemproxy:$twem_port sidecar:$side_port; do
      name=${target%%:*}; p=${target##*:}
      R[$name,$t,$P]=$(rps "$p" "$t" "$P" "$CLIENTS")
    done
  done
done

printf '\nredis-benchmark, %s clients, %s requests, 64-byte values, median of %s runs (requests/s)\n' "$CLIENTS" "$REQUESTS" "$ROUNDS"
printf '%-10s %-4s %12s %12s %12s %10s %12s\n' pipeline cmd direct twemproxy sidecar side/dir side/twem
for P in 1 16; do
  for t in set get; do
    d=${R[direct,$t,$P]}; w=${R[twemproxy,$t,$P]}; s=${R[sidecar,$t,$P]}
    printf '%-10s %-4s %12.0f %12.0f %12.0f %10.2f %12.2f\n' "-P $P" "$t" "$d" "$w" "$s" \
      "$(echo "$s / $d" | bc -l)" "$(echo "$s / $w" | bc -l)"
  done
done

read -r d50 d99 <<<"$(lat "$redis_port" get)"
read -r s50 s99 <<<"$(lat "$side_port" get)"
printf '\none client, GET: direct p50 %.3f ms p99 %.3f ms; sidecar p50 %.3f ms p99 %.3f ms\n' "$d50" "$d99" "$s50" "$s99"
printf 'added by the sidecar: p50 %.0f µs, p99 %.0f µs\n' \
  "$(echo "($s50 - $d50) * 1000" | bc -l)" "$(echo "($s99 - $d99) * 1000" | bc -l)"

# Memory: 1000 client connections at once.
redis-benchmark -h 127.0.0.1 -p "$side_port" -t get -c 1000 -n 200000 -q > /dev/null
hwm=$(awk '/VmHWM/ {print $2}' "/proc/$side_pid/status")
rss=$(awk '/VmRSS/ {print $2}' "/proc/$side_pid/status")
printf '\nsidecar memory: peak RSS %.1f MB with 1000 client connections (now %.1f MB)\n' \
  "$(echo "$hwm / 1024" | bc -l)" "$(echo "$rss / 1024" | bc -l)"
