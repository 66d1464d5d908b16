//! What every reconcile of one watch scope (a namespace, or the whole cluster) shares: the
//! client, metrics, the event recorder, caches of the watched kinds, and per-instance probe
//! state kept in memory between probes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use kube::Client;
use kube::runtime::events::Recorder;
use kube::runtime::reflector::{ObjectRef, Store};
use redis::aio::MultiplexedConnection;

use crate::api::redis_instance::RedisInstanceStatus;
use crate::api::{CachePolicy, RedisInstance};
use crate::redis::connect::{Target, redact};
use crate::redis::info::Counters;
use crate::redis::probe::Prober;

use std::time::Duration;

use super::cache_policy::job::JobSettings;
use super::cache_policy::routing::InstanceView;
use super::cache_policy::{PolicySample, UsageHistory, sample_instances};
use super::metrics::Metrics;
use super::secrets::SecretReader;
use crate::routing::table::RoutingTable;

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
    /// How rebalance Jobs are made.
    pub jobs: JobSettings,
    probes: Mutex<HashMap<ObjectRef<RedisInstance>, Arc<tokio::sync::Mutex<InstanceState>>>>,
    usage: Mutex<UsageHistory>,
    samples: Mutex<HashMap<String, (Instant, PolicySample)>>,
    /// Connections for sampling and purging, kept between reconciles (a TLS handshake and
    /// AUTH per reconcile would cost more than the work); keyed by instance, valid for the
    /// target they were opened to.
    connections: Mutex<HashMap<ObjectRef<RedisInstance>, (Target, MultiplexedConnection)>>,
    started: Instant,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context").finish_non_exhaustive()
    }
}

/// In-memory state of one instance between probes.
#[derive(Debug, Default)]
pub struct InstanceState {
    /// The probe connection.
    pub prober: Prober,
    /// When the last probe ran.
    pub last_probe: Option<Instant>,
    /// Generation and target fingerprint of the last probe: a change probes at once.
    pub last_basis: Option<(Option<i64>, u64)>,
    /// Counters of the last good probe, for window rates.
    pub last_counters: Option<(Instant, Counters)>,
    /// The status last written (more recent than the cache right after a write).
    pub last_status: Option<RedisInstanceStatus>,
    /// When status was last written.
    pub last_write: Option<Instant>,
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
        jobs: JobSettings,
    ) -> Self {
        Self {
            client,
            metrics,
            recorder,
            secrets,
            policies,
            instances,
            jobs,
            probes: Mutex::new(HashMap::new()),
            usage: Mutex::new(UsageHistory::default()),
            samples: Mutex::new(HashMap::new()),
            connections: Mutex::new(HashMap::new()),
            started: Instant::now(),
        }
    }

    /// Samples the instances of policy `key` (memory per category, heartbeats); a sample
    /// younger than `max_age` is reused.
    pub async fn sample(
        &self,
        key: &str,
        namespace: &str,
        selected: &[Arc<RedisInstance>],
        table: &RoutingTable,
        max_age: Duration,
    ) -> PolicySample {
        {
            let cache = self.samples.lock().unwrap_or_else(|e| e.into_inner());
            if let Some((at, s)) = cache.get(key)
                && at.elapsed() < max_age
            {
                return s.clone();
            }
        }
        let fresh = sample_instances(self, namespace, selected, table).await;
        let mut cache = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        cache.insert(key.to_owned(), (Instant::now(), fresh.clone()));
        fresh
    }

    /// A connection to `instance` at `target`: the one kept from an earlier call while the
    /// target is the same, else a new one. Errors are redacted. A caller whose command fails
    /// calls [`Context::drop_connection`], so the next call connects afresh.
    pub async fn connection(
        &self,
        instance: &ObjectRef<RedisInstance>,
        target: &Target,
        timeout: Duration,
    ) -> Result<MultiplexedConnection, String> {
        {
            let cache = self.connections.lock().unwrap_or_else(|e| e.into_inner());
            if let Some((t, conn)) = cache.get(instance)
                && t == target
            {
                return Ok(conn.clone());
            }
        }
        let conn = target
            .connect(timeout)
            .await
            .map_err(|e| redact(&e.to_string(), &target.credentials))?;
        let mut cache = self.connections.lock().unwrap_or_else(|e| e.into_inner());
        cache.insert(instance.clone(), (target.clone(), conn.clone()));
        Ok(conn)
    }

    /// Forgets the kept connection to `instance` (after an error on it).
    pub fn drop_connection(&self, instance: &ObjectRef<RedisInstance>) {
        let mut cache = self.connections.lock().unwrap_or_else(|e| e.into_inner());
        cache.remove(instance);
    }

    /// Records the memory of `views` for growth estimates.
    pub fn record_usage(&self, namespace: &str, views: &[InstanceView]) {
        let now = self.started.elapsed().as_secs_f64();
        let mut usage = self.usage.lock().unwrap_or_else(|e| e.into_inner());
        usage.record(namespace, views, now);
    }

    /// Memory growth per instance in bytes per hour, where the history allows an estimate.
    pub fn growth(
        &self,
        namespace: &str,
        views: &[InstanceView],
    ) -> std::collections::BTreeMap<String, f64> {
        let usage = self.usage.lock().unwrap_or_else(|e| e.into_inner());
        usage.growth(namespace, views)
    }

    /// The probe state of `instance` (created on first use).
    pub fn instance_state(
        &self,
        instance: &ObjectRef<RedisInstance>,
    ) -> Arc<tokio::sync::Mutex<InstanceState>> {
        let mut map = self.probes.lock().unwrap_or_else(|e| e.into_inner());
        map.entry(instance.clone()).or_default().clone()
    }

    /// Drops the state of instances that no longer exist; returns the dropped references.
    pub fn forget_deleted_instances(&self) -> Vec<ObjectRef<RedisInstance>> {
        let mut map = self.probes.lock().unwrap_or_else(|e| e.into_inner());
        let gone: Vec<_> = map
            .keys()
            .filter(|r| self.instances.get(r).is_none())
            .cloned()
            .collect();
        let mut connections = self.connections.lock().unwrap_or_else(|e| e.into_inner());
        for r in &gone {
            map.remove(r);
            connections.remove(r);
        }
        gone
    }
}
