#!/usr/bin/env bash
# Builds the images of `make e2e` with buildah, without any registry, and writes each as a
# docker-archive into ~/.cache/redis-fleet/e2e-images/archives/ (hack/e2e/cluster.sh imports them into
# the node's containerd with `ctr images import`):
#
#   localhost/pause:3.10              the pod sandbox (images/pause: a static C program)
#   localhost/cc-debian12:nonroot     stand-in for gcr.io/distroless/cc-debian12:nonroot, made
#                                     from the same Debian 12 packages (images/cc-debian12)
#   localhost/redis-fleet:<version>   THE project's Dockerfile, with RUNTIME_IMAGE set to the
#                                     base above and BINARY_FROM=prebuilt (see the Dockerfile)
#   localhost/redis:7.0               Debian 12's redis-server on a debootstrap'ed minbase
#   localhost/coredns:<version>       CoreDNS built by hack/e2e/build.sh
#   localhost/shop-backend:e2e        the e2e's application (redis-cli and a script)
#
#   hack/e2e/images.sh           # all of them (the base images only when missing)
#   hack/e2e/images.sh fleet     # only the redis-fleet image (`make image`)
#   REDIS_FLEET_BINARY=path hack/e2e/images.sh fleet
#                                # package that release binary (and the redis-fleet-operator
#                                # beside it) instead of building them
#
# Cold: about a minute plus the release build of redis-fleet; warm: seconds (buildah's layer
# cache, and an archive is rewritten only when its image changed).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

what="${1:-all}"
e2e_apt "${E2E_APT_PACKAGES[@]}"
mkdir -p "$E2E_IMAGES"

# buildah with its own storage in the cache (layers survive between runs; nothing touches
# /var/lib/containers).
bh() {
  buildah --root "$E2E_IMAGES/storage" --runroot "$E2E_IMAGES/run" --storage-driver overlay "$@"
}

# build NAME CONTEXT [buildah bud args...]: builds CONTEXT/Containerfile (or -f) as NAME.
build() {
  local name="$1" context="$2"
  shift 2
  e2e_log "buildah bud -t $name"
  bh bud --quiet --layers --pull-never --format docker -t "$name" "$@" "$context" >/dev/null
}

# export NAME: writes NAME as a docker-archive, unless the archive already holds that image.
export_image() {
  local name="$1" file id
  mkdir -p "$E2E_IMAGES/archives"
  file="$E2E_IMAGES/archives/$(echo "${name#localhost/}" | tr ':/' '__').tar"
  id="$(bh inspect --type image --format '{{.FromImageID}}' "$name")"
  if [[ -f "$file" && "$(cat "$file.id" 2>/dev/null)" == "$id" ]]; then
    return 0
  fi
  rm -f "$file" "$file.id"
  bh push --quiet "$name" "docker-archive:$file.tmp:$name" >/dev/null
  mv "$file.tmp" "$file"
  echo "$id" >"$file.id"
}

have_image() { bh inspect --type image "$1" >/dev/null 2>&1; }

# context NAME [FILE AS]...: a context directory in the cache with the Containerfile and files
# of images/NAME, plus each FILE under the name AS (linked or copied: the checkout never holds
# build outputs).
context() {
  local name="$1" dir="$E2E_IMAGES/context/$1"
  shift
  rm -rf "$dir"
  mkdir -p "$dir"
  cp -a "$E2E_HACK/images/$name/." "$dir/"
  while [[ $# -ge 2 ]]; do
    ln "$1" "$dir/$2" 2>/dev/null || cp "$1" "$dir/$2"
    shift 2
  done
  echo "$dir"
}

debian_mirror=http://deb.debian.org/debian

# A debootstrap'ed bookworm minbase with redis-server and redis-tools, as a tar (uid 999 owns
# /data as in the official image). Keyed by the package list.
redis_rootfs() {
  local out="$E2E_IMAGES/rootfs-bookworm-minbase-redis.tar"
  [[ -f "$out" ]] && { echo "$out"; return; }
  local dir="$E2E_IMAGES/rootfs.tmp"
  rm -rf "$dir"
  e2e_log "debootstrap --variant=minbase bookworm (+ redis-server, redis-tools)"
  nice debootstrap --variant=minbase --include=redis-server,redis-tools bookworm "$dir" \
    "$debian_mirror" >"$E2E_IMAGES/debootstrap.log" 2>&1 ||
    { tail -20 "$E2E_IMAGES/debootstrap.log" >&2; e2e_die "debootstrap failed"; }
  # What an image does not need: package caches and lists, docs, man pages, locales.
  rm -rf "$dir"/var/cache/apt/archives/*.deb "$dir"/var/lib/apt/lists/* "$dir"/usr/share/doc \
    "$dir"/usr/share/man "$dir"/usr/share/info "$dir"/usr/share/locale "$dir"/var/log/*.log \
    "$dir"/var/cache/debconf/*-old "$dir"/etc/machine-id
  install -d -o 999 -g 999 -m 0755 "$dir/data"
  tar --numeric-owner --xattrs -C "$dir" -cf "$out.tmp" .
  rm -rf "$dir"
  mv "$out.tmp" "$out"
  echo "$out"
}

# The distroless cc-debian12 package set, unpacked (no maintainer scripts run, as distroless
# does), with the CA bundle and the users of distroless' nonroot variant.
runtime_rootfs() {
  local out="$E2E_IMAGES/rootfs-cc-debian12.tar"
  [[ -f "$out" ]] && { echo "$out"; return; }
  local dir="$E2E_IMAGES/cc.tmp" debs="$E2E_IMAGES/cc-debs"
  local packages=(base-files netbase tzdata libc6 libgcc-s1 libgomp1 libstdc++6 libssl3)
  rm -rf "$dir" "$debs"
  mkdir -p "$dir" "$debs"
  e2e_log "apt-get download ${packages[*]}"
  (cd "$debs" && apt-get -o Acquire::Retries=3 download "${packages[@]}" >/dev/null 2>&1) ||
    (apt-get -o Acquire::Retries=3 update -qq && cd "$debs" &&
      apt-get -o Acquire::Retries=3 download "${packages[@]}" >/dev/null)
  for deb in "$debs"/*.deb; do dpkg-deb -x "$deb" "$dir"; done
  rm -rf "$dir"/usr/share/doc "$dir"/usr/share/man "$dir"/usr/share/info "$dir"/usr/share/lintian
  install -d -m 0755 "$dir/etc/ssl/certs"
  cp /etc/ssl/certs/ca-certificates.crt "$dir/etc/ssl/certs/ca-certificates.crt"
  cat >"$dir/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/sbin/nologin
nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin
nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin
EOF
  cat >"$dir/etc/group" <<'EOF'
root:x:0:
nobody:x:65534:
nonroot:x:65532:
EOF
  install -d -m 0700 "$dir/root"
  install -d -m 0700 -o 65532 -g 65532 "$dir/home/nonroot"
  install -d -m 1777 "$dir/tmp"
  tar --numeric-owner -C "$dir" -cf "$out.tmp" .
  rm -rf "$dir" "$debs"
  mv "$out.tmp" "$out"
  echo "$out"
}

runtime_base_image() {
  if ! have_image "$E2E_RUNTIME_BASE_IMAGE"; then
    local rootfs ctx
    rootfs="$(runtime_rootfs)"
    ctx="$(context cc-debian12 "$rootfs" rootfs.tar)"
    build "$E2E_RUNTIME_BASE_IMAGE" "$ctx"
  fi
}

base_images() {
  if ! have_image "$E2E_PAUSE_IMAGE"; then
    local ctx
    ctx="$(context pause)"
    gcc -Os -static -o "$ctx/pause" "$ctx/pause.c"
    strip "$ctx/pause"
    build "$E2E_PAUSE_IMAGE" "$ctx"
  fi
  runtime_base_image
  if ! have_image "$E2E_REDIS_IMAGE"; then
    local rootfs ctx
    rootfs="$(redis_rootfs)"
    ctx="$(context redis "$rootfs" rootfs.tar)"
    build "$E2E_REDIS_IMAGE" "$ctx"
  fi
  local coredns_image coredns_bin ctx
  coredns_image="localhost/coredns:$(e2e_coredns_version)"
  coredns_bin="$E2E_CACHE/coredns-$(e2e_coredns_version)/coredns"
  if ! have_image "$coredns_image"; then
    [[ -x "$coredns_bin" ]] || e2e_die "no $coredns_bin: run hack/e2e/build.sh first"
    ctx="$(context coredns "$coredns_bin" coredns)"
    build "$coredns_image" "$ctx"
  fi
  # The application changes with shop.sh: always rebuilt (a cached layer when unchanged).
  ctx="$(context shop-backend)"
  build "$E2E_SHOP_IMAGE" "$ctx"
  for image in "$E2E_PAUSE_IMAGE" "$E2E_REDIS_IMAGE" "$coredns_image" "$E2E_SHOP_IMAGE"; do
    export_image "$image"
  done
}

# The redis-fleet image: the project's Dockerfile. Compiling Rust inside the build needs a Rust
# image, which no registry here serves, so the Dockerfile's `prebuilt` stage takes the two
# binaries `cargo build --release` made on this Debian 12 host; the runtime stage (base, user
# 65532, entrypoint) is the one every user builds.
fleet_image() {
  local binary="${REDIS_FLEET_BINARY:-}"
  if [[ -z "$binary" ]]; then
    e2e_log "cargo build --release --locked --bin redis-fleet --bin redis-fleet-operator"
    (cd "$E2E_ROOT" && nice cargo build --quiet --release --locked --bin redis-fleet --bin redis-fleet-operator)
    binary="$E2E_ROOT/target/release/redis-fleet"
  fi
  local operator
  operator="$(dirname "$binary")/redis-fleet-operator"
  [[ -x "$operator" ]] || e2e_die "$operator is missing: build it from the same sources as $binary"
  # The named context holds the binaries alone (not all of target/release), without their
  # line tables, as the Dockerfile's builder makes them (CARGO_PROFILE_RELEASE_STRIP).
  local bin="$E2E_IMAGES/context/redis-fleet-bin"
  rm -rf "$bin"
  mkdir -p "$bin"
  strip --strip-debug -o "$bin/redis-fleet" "$binary"
  strip --strip-debug -o "$bin/redis-fleet-operator" "$operator"
  build "$E2E_FLEET_IMAGE" "$E2E_ROOT" -f "$E2E_ROOT/Dockerfile" \
    --build-arg BINARY_FROM=prebuilt --build-context redis-fleet-bin="$bin" \
    --build-arg RUNTIME_IMAGE="$E2E_RUNTIME_BASE_IMAGE" \
    --build-arg VERSION="$E2E_FLEET_VERSION" \
    --build-arg REVISION="$(git -C "$E2E_ROOT" rev-parse HEAD 2>/dev/null || echo unknown)"
  export_image "$E2E_FLEET_IMAGE"
  e2e_log "$E2E_FLEET_IMAGE: $(bh inspect --type image --format '{{.FromImageID}}' "$E2E_FLEET_IMAGE" | cut -c1-12)," \
    "user $(bh inspect --type image --format '{{.OCIv1.Config.User}}' "$E2E_FLEET_IMAGE")," \
    "entrypoint $(bh inspect --type image --format '{{.OCIv1.Config.Entrypoint}}' "$E2E_FLEET_IMAGE")"
}

case "$what" in
  all)
    base_images
    fleet_image
    ;;
  base) base_images ;;
  fleet)
    runtime_base_image
    fleet_image
    ;;
  *) e2e_die "usage: hack/e2e/images.sh [all|base|fleet]" ;;
esac
