//! Talking to Redis: INFO parsing (pure) and the helpers the operator and the Job use to
//! connect and probe.

pub mod connect;
pub mod info;
pub mod keys;
pub mod probe;
