# Shared by the shell benchmarks (sourced): a scratch directory and the processes to stop on
# exit, free loopback ports, and waiting for a Redis-speaking port.
#
#   source bench/lib.sh; bench_setup <name>   # sets $work, $pids; cleans both up on exit

bench_setup() {
  work="$(mktemp -d "/tmp/redis-fleet-$1.XXXXXX")"
  pids=()
  trap bench_cleanup EXIT
}

bench_cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}

# A free port on 127.0.0.1.
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# wait_port <port> [seconds, default 10]: until it answers PING.
wait_port() {
  local tries=$(( ${2:-10} * 20 ))
  for _ in $(seq 1 "$tries"); do redis-cli -p "$1" PING >/dev/null 2>&1 && return 0; sleep 0.05; done
  echo "nothing on $1" >&2
  exit 1
}
