//! Moving data between instances online: planning ([`plan`], pure), the Job manifest
//! ([`job`]) and the Job itself ([`migrate`]). The per-key move protocol it shares with the
//! sidecar is [`crate::redis::keymove`].

pub mod job;
pub mod migrate;
pub mod plan;
