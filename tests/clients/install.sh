#!/usr/bin/env bash
# Installs a client library workload's dependencies once, into ~/.cache/redis-fleet/clients/,
# keyed by the hash of its lock file; prints the directory. Idempotent: a second run with the
# same lock file only prints the path.
#   tests/clients/install.sh python    -> a venv with tests/clients/python/requirements.txt
#   tests/clients/install.sh go        -> go-redis' workload built (go.mod, go.sum) as <dir>/workload
#   tests/clients/install.sh node      -> <dir>/node_modules from tests/clients/node/package-lock.json
#   tests/clients/install.sh java      -> Jedis' workload built by Maven: <dir>/classes, <dir>/deps/*.jar
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cache="${REDIS_FLEET_CACHE:-$HOME/.cache/redis-fleet}/clients"
lang="${1:?usage: install.sh python|go|node|java}"
# One install per language at a time: the tests of one binary run in parallel, and on a cold
# cache a second caller would remove the directory the first is installing into.
mkdir -p "$cache"
exec 9>"$cache/.install-$lang.lock"
flock 9
# A tool this machine lacks comes from Debian (CI runs as root on a fresh machine).
need() {
  command -v "$1" >/dev/null 2>&1 && return 0
  local sudo=""
  [ "$(id -u)" = 0 ] || sudo=sudo
  echo "installing $2 for the $lang client workload" >&2
  $sudo apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends $2 >&2
}
case "$lang" in
  python)
    lock="$here/python/requirements.txt"
    dir="$cache/python-$(sha256sum "$lock" | cut -c1-12)"
    if [ ! -x "$dir/bin/python" ] || [ ! -f "$dir/.done" ]; then
      rm -rf "$dir"
      python3 -m venv "$dir" >&2
      "$dir/bin/pip" install --quiet --disable-pip-version-check -r "$lock" >&2
      touch "$dir/.done"
    fi
    echo "$dir"
    ;;
  go)
    key="$(cat "$here/go/go.mod" "$here/go/go.sum" "$here/go/main.go" | sha256sum | cut -c1-12)"
    dir="$cache/go-$key"
    if [ ! -x "$dir/workload" ]; then
      mkdir -p "$dir"
      (cd "$here/go" && GOTOOLCHAIN=local GOFLAGS=-mod=readonly go build -o "$dir/workload.tmp" .) >&2
      mv "$dir/workload.tmp" "$dir/workload"
    fi
    echo "$dir"
    ;;
  node)
    need npm "nodejs npm"
    lock="$here/node/package-lock.json"
    dir="$cache/node-$(cat "$here/node/package.json" "$lock" | sha256sum | cut -c1-12)"
    if [ ! -f "$dir/.done" ]; then
      rm -rf "$dir"
      mkdir -p "$dir"
      cp "$here/node/package.json" "$lock" "$dir/"
      # Exactly the lock file; no install scripts (msgpackr's optional native build is not
      # needed: it falls back to JavaScript).
      (cd "$dir" && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error) >&2
      touch "$dir/.done"
    fi
    echo "$dir"
    ;;
  java)
    need java default-jdk-headless
    need mvn maven
    key="$(cat "$here/java/pom.xml" "$here/java/src/main/java/Workload.java" | sha256sum | cut -c1-12)"
    dir="$cache/java-$key"
    if [ ! -f "$dir/.done" ]; then
      rm -rf "$dir"
      mkdir -p "$dir"
      cp -r "$here/java/pom.xml" "$here/java/src" "$dir/"
      (cd "$dir" && mvn -q -B -DskipTests package dependency:copy-dependencies \
        -DoutputDirectory=deps) >&2
      mv "$dir/target/classes" "$dir/classes"
      touch "$dir/.done"
    fi
    echo "$dir"
    ;;
  *)
    echo "unknown client workload: $lang" >&2
    exit 2
    ;;
esac
