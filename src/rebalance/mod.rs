//! Moving data between instances online: planning ([`plan`], pure) and the Job itself
//! ([`migrate`], `redis-fleet rebalance`). The operator builds the Job's manifest
//! (`operator::cache_policy::job`). The protocol it shares with the sidecars and the
//! operator is [`crate::redis::protocol`] (`docs/protocol.md`).

pub mod migrate;
pub mod plan;
