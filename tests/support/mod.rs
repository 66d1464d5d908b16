//! Test harness shared by the integration tests: a real control plane and real Redis servers.
//! Each test binary includes this module and uses what it needs.
#![allow(dead_code)]

pub mod control_plane;
pub mod pki;
pub mod process;
pub mod redis;
pub mod shop;

pub use control_plane::ControlPlane;
#[allow(unused_imports)]
pub use redis::{RedisOptions, RedisServer};
pub mod node;
pub mod operator;
pub mod sidecar;

use std::time::Duration;

use kube::Resource;
use kube::api::Api;
use serde::de::DeserializeOwned;

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
