//! redis-fleet runs several Redis instances as one cache on Kubernetes.
//!
//! - [`api`]: the `RedisInstance` and `CachePolicy` custom resources.
//! - [`routing`]: the routing table contract, slots, placement and key resolution (pure).
//! - [`operator`]: the controllers (`redis-fleet operator`).
//! - [`redis`]: INFO parsing, connections and probes.
//! - [`sidecar`]: the RESP proxy applications talk to.
//! - [`cli`]: terminal views (`redis-fleet status`).
//!
//! See `README.md` and `../shared/design/architecture.md` for the whole picture.

pub mod api;
pub mod cli;
pub mod http;
pub mod operator;
pub mod rebalance;
pub mod redis;
pub mod routing;
pub mod shutdown;
pub mod sidecar;
pub mod telemetry;
