//! Test harness shared by the integration tests: a real control plane and real Redis servers.
//! Each test binary includes this module and uses what it needs.
#![allow(dead_code)]

pub mod control_plane;
pub mod pki;
pub mod process;
pub mod redis;
pub mod resp;
pub mod shop;

pub use control_plane::ControlPlane;
#[allow(unused_imports)]
pub use redis::{RedisOptions, RedisServer};
pub mod node;
pub mod operator;
pub mod relay;
pub mod sidecar;

use std::path::PathBuf;
use std::time::Duration;

use kube::Resource;
use kube::api::Api;
use serde::de::DeserializeOwned;

/// The value of one series — its name with its labels, as `/metrics` prints them — in a
/// `/metrics` body.
pub fn series_value(metrics: &str, series: &str) -> Option<f64> {
    metrics.lines().find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

/// The `redis-fleet` binary under test: the one Cargo built for this test or bench target;
/// for other targets (the demo) `REDIS_FLEET_BIN`, else `target/debug/redis-fleet`.
pub fn redis_fleet_binary() -> PathBuf {
    match option_env!("CARGO_BIN_EXE_redis-fleet") {
        Some(path) => PathBuf::from(path),
        None => std::env::var_os("REDIS_FLEET_BIN").map_or_else(
            || control_plane::project_root().join("target/debug/redis-fleet"),
            PathBuf::from,
        ),
    }
}

/// The `redis-fleet-operator` binary (the operator alone, on jemalloc) of this build.
pub fn operator_binary() -> PathBuf {
    match option_env!("CARGO_BIN_EXE_redis-fleet-operator") {
        Some(path) => PathBuf::from(path),
        None => redis_fleet_binary().with_file_name("redis-fleet-operator"),
    }
}

/// Waits (with a watch, not a sleep loop) until object `name` satisfies `cond`, and returns
/// it; panics with `what` and the last state seen after `timeout`.
pub async fn wait_for<K>(
    api: &Api<K>,
    name: &str,
    timeout: Duration,
    what: &str,
    cond: impl Fn(&K) -> bool,
) -> K
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    let waited = tokio::time::timeout(
        timeout,
        kube::runtime::wait::await_condition(api.clone(), name, |obj: Option<&K>| {
            obj.is_some_and(&cond)
        }),
    )
    .await;
    match waited {
        Ok(Ok(Some(obj))) => obj,
        other => {
            let last = api.get_opt(name).await;
            panic!(
                "timed out after {timeout:?} waiting for {what} on {name}: {other:?}\nlast seen: {last:#?}"
            )
        }
    }
}
