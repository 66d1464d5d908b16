#!/usr/bin/env bash
# Packs the kubectl plugin for krew: the redis-fleet binary as `kubectl-fleet` in
# kubectl-fleet_v<VERSION>_linux_amd64.tar.gz, and plugins/krew/fleet.yaml with its
# placeholders filled in (version, download URL, the archive's sha256), both in OUT_DIR.
# Uploading the archive to DOWNLOAD_BASE (and the manifest to a krew index) is the release's
# job; this script does not publish anything.
#
#   hack/krew.sh 0.1.0 https://github.com/<owner>/<repo>/releases/download/v0.1.0 [OUT_DIR]
#   REDIS_FLEET_BINARY=target/release/redis-fleet hack/krew.sh …   # pack a binary built before
#
# Without REDIS_FLEET_BINARY it builds `cargo build --release --locked --bin redis-fleet`.
# Linux amd64 only: the one platform this project builds. The archive is reproducible (sorted
# entries, owner 0, mtime SOURCE_DATE_EPOCH or 0, gzip without a timestamp).
set -euo pipefail

if [[ $# -lt 2 || $# -gt 3 ]]; then
  echo "usage: hack/krew.sh VERSION DOWNLOAD_BASE [OUT_DIR]" >&2
  exit 2
fi
version="$1"
base="${2%/}"
root="$(cd "$(dirname "$0")/.." && pwd)"
out="${3:-$root/target/krew}"

[[ "$version" =~ ^[0-9]+\.[0-9]+\.[0-9]+(-[0-9A-Za-z.-]+)?$ ]] \
  || { echo "krew.sh: VERSION must be semver without the v (got $version)" >&2; exit 2; }
[[ "$base" =~ ^https://[^|\&[:space:]]+$ ]] \
  || { echo "krew.sh: DOWNLOAD_BASE must be an https URL without | & \\ or spaces (got $base)" >&2; exit 2; }
[[ "$(uname -s)/$(uname -m)" == Linux/x86_64 ]] \
  || { echo "krew.sh: packs linux/amd64 only, on a linux/amd64 machine" >&2; exit 1; }

binary="${REDIS_FLEET_BINARY:-}"
if [[ -z "$binary" ]]; then
  (cd "$root" && cargo build --release --locked --bin redis-fleet >&2)
  binary="${CARGO_TARGET_DIR:-$root/target}/release/redis-fleet"
fi
# The binary must be the version the manifest names.
reported="$("$binary" --version)"
[[ "$reported" == "redis-fleet $version" ]] \
  || { echo "krew.sh: $binary reports '$reported', not redis-fleet $version" >&2; exit 1; }

archive="kubectl-fleet_v${version}_linux_amd64.tar.gz"
mkdir -p "$out"
stage="$(mktemp -d "$out/.stage.XXXXXX")"
trap 'rm -rf "$stage"' EXIT
install -m 0755 "$binary" "$stage/kubectl-fleet"
tar --sort=name --owner=0 --group=0 --numeric-owner --mtime="@${SOURCE_DATE_EPOCH:-0}" \
  -C "$stage" -cf - kubectl-fleet | gzip -n -9 > "$out/$archive"
sha="$(sha256sum "$out/$archive" | cut -d' ' -f1)"

# The filled manifest without the template's header comment.
sed -e '1,/^apiVersion:/{/^#/d}' \
    -e "s|{{VERSION}}|$version|g" \
    -e "s|{{DOWNLOAD_BASE}}|$base|g" \
    -e "s|{{SHA256_LINUX_AMD64}}|$sha|g" \
    "$root/plugins/krew/fleet.yaml" > "$out/fleet.yaml"
if grep -q '{{' "$out/fleet.yaml"; then
  echo "krew.sh: placeholders left in $out/fleet.yaml:" >&2
  grep -n '{{' "$out/fleet.yaml" >&2
  exit 1
fi
echo "$out/$archive"
echo "$out/fleet.yaml"
