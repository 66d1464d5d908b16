//! The sidecar: a RESP proxy on 127.0.0.1:6379 that makes the fleet look like one Redis.
//! Every command is routed by the routing table to the instance that owns its key.

pub mod command;
pub mod resp;
