//! redis-fleet runs several Redis instances as one cache on Kubernetes.
//!
//! The modules form layers; each names only those below it (`tests/layers.rs` checks):
//! - [`api`]: the `RedisInstance` and `CachePolicy` custom resources and the pure functions of
//!   them; [`routing`]: the routing table contract, slots, placement and key resolution (pure).
//! - [`redis`]: talking to Redis — the RESP codec, INFO, connections and endpoints, probes,
//!   and the key-move, heartbeat and sampling protocols every component shares; [`http`],
//!   [`kube_client`], [`shutdown`], [`telemetry`]: process plumbing.
//! - [`sidecar`]: the RESP proxy applications talk to; [`rebalance`]: the planner and the Job
//!   that moves data (`redis-fleet rebalance`).
//! - [`operator`]: the controllers (`redis-fleet operator`, or the `redis-fleet-operator`
//!   binary on jemalloc that the chart runs).
//! - [`cli`]: terminal views (`redis-fleet status`).
//!
//! See `docs/architecture.md` for the layer picture and where a request goes, and `README.md`
//! for the whole story.

pub mod api;
pub mod cli;
pub mod http;
pub mod kube_client;
pub mod operator;
pub mod rebalance;
pub mod redis;
pub mod routing;
pub mod shutdown;
pub mod sidecar;
pub mod telemetry;
