//! Test harness shared by the integration tests: a real control plane and real Redis servers.
//! Each test binary includes this module and uses what it needs.
#![allow(dead_code)]

pub mod control_plane;
pub mod process;
pub mod redis;

pub use control_plane::ControlPlane;
#[allow(unused_imports)]
pub use redis::{RedisOptions, RedisServer};
