//! Command-line views for people at a terminal (as opposed to the long-running components).
//!
//! - [`status`]: `redis-fleet status`, a terminal (or JSON) view of a namespace or a policy.

pub mod status;
