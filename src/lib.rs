//! redis-fleet runs several Redis instances as one cache on Kubernetes.
//!
//! - [`api`]: the `RedisInstance` and `CachePolicy` custom resources.
//!
//! See `README.md` and `../shared/design/architecture.md` for the whole picture.

pub mod api;
