//! What every reconcile of one watch scope (a namespace, or the whole cluster) shares: handles
//! only — the client, metrics, the event recorder, the caches of the watched kinds, Secrets and
//! kept connections. What one controller remembers between its reconciles lives with that
//! controller (`cache_policy::PolicyContext`, `redis_instance::InstanceContext`).

use std::sync::Arc;

use kube::Client;
use kube::runtime::events::Recorder;
use kube::runtime::reflector::Store;

use crate::api::{CachePolicy, RedisInstance};

use super::connections::Connections;
use super::metrics::Metrics;
use super::secrets::SecretReader;

/// Shared by all reconciles of a scope.
pub struct Context {
    /// API client.
    pub client: Client,
    /// Operator metrics (shared by all scopes).
    pub metrics: Arc<Metrics>,
    /// Event recorder (events.k8s.io).
    pub recorder: Recorder,
    /// Referenced Secrets' data.
    pub secrets: SecretReader,
    /// CachePolicies of the scope.
    pub policies: Store<CachePolicy>,
    /// RedisInstances of the scope.
    pub instances: Store<RedisInstance>,
    /// Connections for sampling and purging, kept between reconciles.
    pub connections: Connections,
    /// Returning instances, as (policy, instance), and the version they were fenced at when
    /// they answered again: each reconcile raises that fence again (an instance that restarted
    /// empty lost it), never a newer one — a failover entry that stays (a replicated range's,
    /// with rebalancing off) must not close, at each new table, the connections of every
    /// sidecar not on it yet.
    pub fenced_on_return: std::sync::Mutex<std::collections::BTreeMap<(String, String), u64>>,
    /// Per policy, the highest fence a failover notice raised (`fences::notify`), or that this
    /// process found on the instances when it first published for the policy. A version above
    /// the published table's is a notice whose table never went out
    /// (`fences::unpublished_notice`).
    pub notices: std::sync::Mutex<std::collections::BTreeMap<String, u64>>,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context").finish_non_exhaustive()
    }
}

impl Context {
    /// A context for one scope.
    pub fn new(
        client: Client,
        metrics: Arc<Metrics>,
        recorder: Recorder,
        secrets: SecretReader,
        policies: Store<CachePolicy>,
        instances: Store<RedisInstance>,
    ) -> Self {
        Self {
            client,
            metrics,
            recorder,
            secrets,
            policies,
            instances,
            connections: Connections::default(),
            fenced_on_return: std::sync::Mutex::default(),
            notices: std::sync::Mutex::default(),
        }
    }
}
