//! The data protocol shared by the operator, the sidecars and the rebalance Job: the names of
//! redis-fleet's own keys and connections, fences, heartbeats, the guard that runs commands on
//! migrating ranges, and the move scripts. `docs/protocol.md` explains how they fit together
//! and what they guarantee.

pub mod fence;
pub mod guard;
pub mod heartbeat;
pub mod mover;
pub mod names;
