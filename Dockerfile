# syntax=docker/dockerfile:1
#
# The redis-fleet image: two binaries on distroless, running as uid 65532 —
#   /redis-fleet            the entrypoint: `sidecar | rebalance | operator | crds | status |
#                           where | plan` (the system allocator);
#   /redis-fleet-operator   the operator alone, linked with jemalloc (less memory for its
#                           caches); the chart's Deployment runs it as its `command`.
#
# Reproducible build (same sources + same base images => same image digest):
#   docker buildx build \
#     --build-arg SOURCE_DATE_EPOCH="$(git log -1 --format=%ct)" \
#     --build-arg VERSION="$(cargo metadata --no-deps --format-version 1 | jq -r '.packages[0].version')" \
#     --build-arg REVISION="$(git rev-parse HEAD)" \
#     --output type=image,name=ghcr.io/redis-fleet/redis-fleet:0.1.0,rewrite-timestamp=true \
#     .
# Pin the base images by digest for bit-for-bit rebuilds, e.g.
#   --build-arg RUST_IMAGE=rust:1.95-slim-bookworm@sha256:… --build-arg RUNTIME_IMAGE=…@sha256:…
#
# Where the binary comes from (BINARY_FROM):
#   builder   (default) compiled by the `builder` stage below, inside the build;
#   prebuilt  the `prebuilt` stage: the files redis-fleet and redis-fleet-operator of the build
#             context named "redis-fleet-bin", made by `cargo build --release --locked
#             --bin redis-fleet --bin redis-fleet-operator` on a Debian 12 (bookworm, glibc
#             2.36) machine, for builders without a Rust image.
#             `make image` builds so with buildah and locally made base images
#             (hack/e2e/images.sh), and `make e2e` runs that image. Either way the image is the
#             final stage below: the same base, user and entrypoint.
#   docker buildx build --build-arg BINARY_FROM=prebuilt \
#     --build-context redis-fleet-bin=<dir holding both> -t redis-fleet:0.1.0 .

ARG RUST_IMAGE=rust:1.95-slim-bookworm
ARG RUNTIME_IMAGE=gcr.io/distroless/cc-debian12:nonroot
ARG BINARY_FROM=builder

# ---------------------------------------------------------------------------------------------
FROM ${RUST_IMAGE} AS builder

# Timestamps embedded anywhere in the build come from here (0 = 1970 unless the caller passes
# the commit time), and the source paths in panic messages are rewritten, so the binaries do
# not depend on when or where they were built. jemalloc's build would otherwise ask the build
# machine's CPU how many address bits it has (48 or 57): it is told 48, what Linux gives a
# process unless it asks for more. The binaries keep their symbols but not the line tables
# of the release profile (`strip = "debuginfo"`): ~52 MB for both instead of ~230 MB.
ARG SOURCE_DATE_EPOCH=0
ENV SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH} \
    CARGO_HOME=/usr/local/cargo \
    CARGO_INCREMENTAL=0 \
    CARGO_NET_RETRY=10 \
    CARGO_TERM_COLOR=never \
    CARGO_PROFILE_RELEASE_STRIP=debuginfo \
    JEMALLOC_SYS_WITH_LG_VADDR=48 \
    RUSTFLAGS="--remap-path-prefix=/build=/redis-fleet --remap-path-prefix=/usr/local/cargo/registry/src=/cargo --remap-path-prefix=/usr/local/cargo/git/checkouts=/cargo-git --remap-path-prefix=/usr/local/rustup=/rustup"

# jemalloc (the operator binary's allocator) is built from C by `make`, which the slim image
# lacks; gcc is there.
RUN apt-get update \
 && apt-get install -y --no-install-recommends make \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /build

# 1. Dependencies only: the manifest, the lock file and an empty crate. This layer is rebuilt
#    only when Cargo.toml or Cargo.lock change, not on every source edit. Only the binaries
#    are built, so the examples, tests and benches Cargo.toml declares need not be here.
COPY Cargo.toml Cargo.lock ./
RUN mkdir -p src/bin \
 && echo 'fn main() {}' > src/main.rs \
 && echo 'fn main() {}' > src/bin/redis-fleet-operator.rs \
 && : > src/lib.rs \
 && cargo build --locked --release --bin redis-fleet --bin redis-fleet-operator \
 && rm -rf src target/release/.fingerprint/redis-fleet-* target/release/deps/redis_fleet-* \
           target/release/deps/libredis_fleet-* target/release/deps/redis_fleet_operator-* \
           target/release/redis-fleet*

# 2. The real sources.
COPY src ./src
RUN cargo build --locked --release --bin redis-fleet --bin redis-fleet-operator \
 && install -D -m 0755 target/release/redis-fleet /out/redis-fleet \
 && install -D -m 0755 target/release/redis-fleet-operator /out/redis-fleet-operator \
 && touch -h -d "@${SOURCE_DATE_EPOCH}" /out/redis-fleet /out/redis-fleet-operator /out \
 && /out/redis-fleet --version \
 && /out/redis-fleet-operator --version

# ---------------------------------------------------------------------------------------------
# The binary built outside (BINARY_FROM=prebuilt), from the named build context
# "redis-fleet-bin" (not the main context, which holds the sources only).
FROM scratch AS prebuilt
COPY --from=redis-fleet-bin redis-fleet redis-fleet-operator /out/

# The stage the image takes its binary from (builders skip the stage not chosen).
FROM ${BINARY_FROM} AS binary

# ---------------------------------------------------------------------------------------------
FROM ${RUNTIME_IMAGE}

ARG RUNTIME_IMAGE
ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="redis-fleet" \
      org.opencontainers.image.description="Kubernetes operator that runs several Redis instances as one cache, with a routing sidecar" \
      org.opencontainers.image.source="https://github.com/redis-fleet/redis-fleet" \
      org.opencontainers.image.url="https://github.com/redis-fleet/redis-fleet" \
      org.opencontainers.image.documentation="https://github.com/redis-fleet/redis-fleet#readme" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.vendor="redis-fleet" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.base.name="${RUNTIME_IMAGE}"

# Only the binaries (root-owned, not writable by the runtime user). The base image brings glibc,
# libgcc, CA certificates (TLS to hosted Redis, the API server) and /etc/passwd with "nonroot".
COPY --from=binary /out/redis-fleet /out/redis-fleet-operator /

# distroless "nonroot": uid/gid 65532, matching the chart's securityContext.
USER 65532:65532
# Operator /metrics, /healthz, /readyz (the sidecar's 6379 and 9121 are per-pod, set by args).
EXPOSE 8080
ENTRYPOINT ["/redis-fleet"]
CMD ["--help"]
