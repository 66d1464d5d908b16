#!/usr/bin/env bash
# The sidecar's own instructions per request, counted by valgrind's callgrind: user space only,
# the same count for the same binary and load whatever else the machine is doing (unlike
# throughput on a shared 2-core machine). The kernel's share (sending replies, about half of
# the CPU under pipelining, see `perf` in the README) is not in it.
#
#   bench/proxy_instructions.sh                      # GET and SET, -P 1 and -P 16
#   REDIS_FLEET_BASELINE_BIN=/path/to/older/redis-fleet bench/proxy_instructions.sh
#   REQUESTS=20000 TESTS="get" PIPELINES="16" bench/proxy_instructions.sh
#
# Needs redis-server, redis-benchmark and valgrind (make bench-proxy-instructions installs them).
set -euo pipefail
cd "$(dirname "$0")/.."

REQUESTS="${REQUESTS:-20000}"
TESTS="${TESTS:-get set}"
PIPELINES="${PIPELINES:-1 16}"
source bench/lib.sh
bench_setup instructions

echo "building the release binary..." >&2
cargo build --release --quiet --bin redis-fleet
bins=("now:target/release/redis-fleet")
[ -n "${REDIS_FLEET_BASELINE_BIN:-}" ] && bins=("before:$REDIS_FLEET_BASELINE_BIN" "${bins[@]}")

redis_port=$(port)
redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no --daemonize no \
  --logfile "$work/redis.log" &
pids+=($!)
wait_port "$redis_port"
cat > "$work/routing.json" <<EOF
{"schemaVersion":1,"version":1,"policy":"bench/bench",
 "instances":{"redis":{"host":"127.0.0.1","port":$redis_port}},
 "categories":[{"name":"default","slots":[[0,16383,"redis"]]}]}
EOF

# count <binary> <test> <pipeline> -> instructions per request
count() {
  local out="$work/callgrind.$RANDOM" side_port pid ir
  side_port=$(port)
  RUST_LOG=warn valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$out" \
    "$1" sidecar --routing-file "$work/routing.json" --listen "127.0.0.1:$side_port" \
    --metrics-addr "127.0.0.1:$(port)" --id instructions > "$work/sidecar.log" 2>&1 &
  pid=$!
  pids+=($pid)
  wait_port "$side_port" 60 # valgrind starts slowly
  # Warm up (connections to Redis, the first table, allocator pools), then count only the run.
  redis-benchmark -p "$side_port" -t "$2" -P "$3" -c 50 -n 2000 -r 100000 -d 64 -q > /dev/null 2>&1
  callgrind_control -i on "$pid" > /dev/null 2>&1
  redis-benchmark -p "$side_port" -t "$2" -P "$3" -c 50 -n "$REQUESTS" -r 100000 -d 64 -q > /dev/null 2>&1
  callgrind_control -i off "$pid" > /dev/null 2>&1
  callgrind_control -d "$pid" > /dev/null 2>&1
  kill "$pid"
  wait "$pid" 2>/dev/null || true
  ir=$(callgrind_annotate "$out.1" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1; exit}')
  echo $((ir / REQUESTS))
}

printf '\nsidecar instructions per request (callgrind, user space), redis-benchmark -c 50, %s requests\n' "$REQUESTS"
printf '%-10s %-4s' pipeline cmd
for b in "${bins[@]}"; do printf ' %10s' "${b%%:*}"; done
[ "${#bins[@]}" = 2 ] && printf ' %10s' now/before
printf '\n'
for P in $PIPELINES; do
  for t in $TESTS; do
    printf '%-10s %-4s' "-P $P" "$t"
    vals=()
    for b in "${bins[@]}"; do
      vals+=("$(count "${b#*:}" "$t" "$P")")
      printf ' %10s' "${vals[-1]}"
    done
    [ "${#bins[@]}" = 2 ] && printf ' %10.2f' "$(echo "${vals[1]} / ${vals[0]}" | bc -l)"
    printf '\n'
  done
done
