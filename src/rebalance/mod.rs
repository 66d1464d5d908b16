//! Moving data between instances online: planning ([`plan`], pure) and the Job itself
//! ([`migrate`], `redis-fleet rebalance`). The operator builds the Job's manifest
//! (`operator::cache_policy::job`). The per-key move protocol it shares with the
//! sidecar is [`crate::redis::keymove`].

pub mod migrate;
pub mod plan;
