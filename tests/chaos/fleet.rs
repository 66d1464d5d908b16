//! The fleet under test, all of it real: the shared control plane, one namespace per seed,
//! redis-servers (the user's `primary`, `secondary` and `tertiary`, and the ones the faults
//! add), the `redis-fleet-operator`, the stand-in node that runs rebalance Job pods, and the
//! sidecars — one that follows the routing ConfigMap through the API, the others reading a
//! table file that [`deliver`] copies from the ConfigMap late, as a kubelet does.
//!
//! [`observe`] records what the fleet published and reported (tables, instance phases, plans)
//! with the test's clock, for the checker and the report.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, ListParams, Patch, PatchParams};
use redis_fleet::api::cache_policy::{CachePolicy, RebalanceStatus};
use redis_fleet::api::redis_instance::{InstancePhase, RedisInstance};
use redis_fleet::routing::RoutingTable;
use redis_fleet::routing::config_map::table_of;
use serde_json::json;

use crate::rng::Rng;
use crate::support::node::Node;
use crate::support::operator::Operator;
use crate::support::operator::http_get;
use crate::support::process::signal;
use crate::support::shop::{
    MB, apply_third_instance, kubectl_apply, server_with_password, shop_configured,
};
use crate::support::sidecar::{Sidecar, replace_table};
use crate::support::{ControlPlane, RedisServer, series_value};

/// The user's policy (`examples/cache-policy.yaml`) and its routing ConfigMap.
pub const POLICY: &str = "shop";
/// The routing ConfigMap of [`POLICY`].
pub const ROUTING: &str = "shop-redis-routing";
/// Every instance is the user's size: 30 MB.
pub const CAPACITY: u64 = 30 * MB;
/// How long a rebalance Job waits for sidecars before fencing the stragglers off.
pub const CONVERGE_TIMEOUT: &str = "5s";

/// Locks a mutex, whatever a panicking holder left.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The test's clock: monotonic nanoseconds since the seed began (the history's time).
#[derive(Debug, Clone, Copy)]
pub struct Clock(Instant);

impl Clock {
    /// Nanoseconds since the seed began.
    pub fn now(&self) -> u64 {
        self.0.elapsed().as_nanos() as u64
    }

    /// Seconds since the seed began, for logs.
    pub fn secs(&self) -> f64 {
        self.0.elapsed().as_secs_f64()
    }

    /// When the seed began, as the processes' logs write time.
    pub fn began(&self) -> String {
        let ms = wall_ms() - self.0.elapsed().as_millis() as u64;
        jiff::Timestamp::from_millisecond(ms as i64)
            .map_or_else(|_| ms.to_string(), |t| t.to_string())
    }
}

/// Unix time in ms (the clock Redis expiries use; same machine).
pub fn wall_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}

/// One Redis instance of the fleet.
#[derive(Debug)]
pub struct Member {
    /// RedisInstance name.
    pub name: String,
    /// `redisfleet.io/tier`.
    pub tier: String,
    /// Its redis-server.
    pub server: RedisServer,
    /// `spec.drain` was set.
    pub draining: bool,
    /// Its RedisInstance was deleted.
    pub removed: bool,
}

/// One sidecar process and how it gets its table.
#[derive(Debug)]
pub struct SidecarSlot {
    /// `api` or `file-N`.
    pub name: String,
    /// Where clients connect (kept across restarts).
    pub port: u16,
    /// Where its /metrics are.
    pub metrics_port: u16,
    /// Reads a table file the harness delivers (else follows the ConfigMap).
    pub file: bool,
    /// That file.
    pub routing_file: PathBuf,
    /// Its mounted Secrets.
    pub secrets_dir: PathBuf,
    /// The process (locked while it restarts).
    pub process: Mutex<Sidecar>,
    /// The table version in its file.
    pub delivered: AtomicU64,
}

/// A routing table as the ConfigMap showed it.
#[derive(Debug, Clone)]
pub struct Published {
    /// When the observer last asked and still saw the version before: it was published after.
    pub after: u64,
    /// When the observer first saw it: it was published before.
    pub at: u64,
    /// The table.
    pub table: RoutingTable,
}

/// A RedisInstance phase as status showed it.
#[derive(Debug, Clone)]
pub struct PhaseSeen {
    /// When the observer saw it change.
    pub at: u64,
    /// Instance.
    pub instance: String,
    /// New phase.
    pub phase: InstancePhase,
}

/// A SIGSTOP … SIGCONT of a redis-server.
#[derive(Debug, Clone)]
pub struct Pause {
    /// Instance.
    pub instance: String,
    /// SIGSTOP sent.
    pub stop: u64,
    /// SIGCONT sent.
    pub cont: u64,
}

/// The category chaos replicates `Async` (`auth` is `Sync`).
pub const ASYNC_CATEGORY: &str = "order";

/// What one sidecar's /metrics said about its `async` results.
#[derive(Debug, Clone, Copy)]
pub struct ReplicationSample {
    /// The sidecar.
    pub sidecar: usize,
    /// Asked (before the request went out).
    pub asked: u64,
    /// Answered.
    pub at: u64,
    /// Its process: how many times it had been killed when asked.
    pub generation: usize,
    /// `replica_failures` of [`ASYNC_CATEGORY`].
    pub failures: u64,
    /// `replication_backlog_age_seconds`, in ns.
    pub backlog_age: u64,
}

/// The fleet of one seed.
#[derive(Debug)]
pub struct Fleet {
    /// The shared control plane.
    pub cp: &'static ControlPlane,
    /// This seed's namespace.
    pub ns: String,
    /// The test's clock.
    pub clock: Clock,
    /// ConfigMaps of `ns`.
    pub configmaps: Api<ConfigMap>,
    /// CachePolicies of `ns`.
    pub policies: Api<CachePolicy>,
    /// RedisInstances of `ns`.
    pub instances: Api<RedisInstance>,
    /// The instances, including drained and removed ones (their servers run to the end).
    pub members: Mutex<Vec<Member>>,
    /// The operator (None between a kill and its restart).
    pub operator: Mutex<Option<Operator>>,
    /// The log of every operator process, in order.
    pub operator_logs: Mutex<Vec<PathBuf>>,
    /// The sidecars; the first follows the API.
    pub sidecars: Vec<SidecarSlot>,
    /// Runs rebalance Job pods.
    pub node: Node,
    /// Every table version seen, in order.
    pub tables: Mutex<Vec<Published>>,
    /// Every instance phase change seen.
    pub phases: Mutex<Vec<PhaseSeen>>,
    /// Every plan seen: id → its last status.
    pub plans: Mutex<BTreeMap<i64, RebalanceStatus>>,
    /// Every pause.
    pub pauses: Mutex<Vec<Pause>>,
    /// Every sidecar kill -9: (sidecar, when).
    pub kills: Mutex<Vec<(usize, u64)>>,
    /// What the faults did and how plans went, with the test's clock: a failed seed's timeline.
    pub events: Mutex<Vec<(u64, String)>>,
    /// The sidecars' reports on their `async` results, every 200 ms.
    pub replication: Mutex<Vec<ReplicationSample>>,
    /// The instances' memory (percent of capacity, from their status) whenever it changed.
    pub memory: Mutex<Vec<(u64, String)>>,
    /// A redis-server is stopped now.
    pub pausing: AtomicBool,
    /// The faults are over: tables reach every sidecar at once.
    pub settling: AtomicBool,
    /// The background tasks stop.
    pub stop: AtomicBool,
    /// Credentials of every instance, as mounted Secrets: (secret, password).
    secrets: Mutex<Vec<(String, String)>>,
}

/// The operator's command line besides the namespace.
fn operator_args() -> [&'static str; 2] {
    ["--rebalance-converge-timeout", CONVERGE_TIMEOUT]
}

/// The user's policy, with `auth` replicated `Sync` (the checker allows its keys no drop when
/// their replica takes over) and `order` `Async` (nothing older than the lag its sidecars
/// report may be missing when the replica takes over), a short cooldown (plans follow each other quickly) and a slower
/// copy (so that faults land in the middle of it).
fn chaos_policy(policy: String) -> String {
    let auth = "      fallbackTier: warm\n      ttl: {default: 1h, max: 24h, adaptive: true}\n";
    let order = "      keyPrefixes: [\"order:\"]\n      tier: hot\n      fallbackTier: warm\n      ttl: {default: 2h, max: 48h}\n";
    assert!(policy.contains(auth), "the example's auth category changed");
    assert!(
        policy.contains(order),
        "the example's order category changed"
    );
    policy
        .replace(auth, &format!("{auth}      replication: Sync\n"))
        .replace(order, &format!("{order}      replication: Async\n"))
        .replace("      cooldown: 5m\n", "      cooldown: 1s\n")
        .replace(
            "      keysPerSecond: 50000\n",
            "      keysPerSecond: 4000\n",
        )
}

/// A RedisInstance (and its Secret) for a local server.
fn instance_yaml(name: &str, tier: &str, port: u16, password: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: {name}-redis, labels: {{app.kubernetes.io/part-of: shop}}}}\nstringData: {{password: {password}}}\n---\n\
         apiVersion: redisfleet.io/v1alpha1\nkind: RedisInstance\nmetadata:\n  name: {name}\n  labels: {{app.kubernetes.io/part-of: shop, redisfleet.io/tier: {tier}}}\n\
         spec:\n  external: {{host: 127.0.0.1, port: {port}, passwordSecretRef: {{name: {name}-redis, key: password}}}}\n  capacity: 30Mi\n  health: {{interval: 1s, timeout: 500ms, failureThreshold: 2, recoveryThreshold: 2}}\n"
    )
}

impl Fleet {
    /// The user's fleet with a third instance, settled, and `file_sidecars` + 1 sidecars.
    pub async fn start(file_sidecars: usize) -> Fleet {
        let clock = Clock(Instant::now());
        let shop = shop_configured("chaos", chaos_policy, &operator_args()).await;
        let tertiary = apply_third_instance(&shop);
        let members = vec![
            Member {
                name: "primary".into(),
                tier: "hot".into(),
                server: shop.primary,
                draining: false,
                removed: false,
            },
            Member {
                name: "secondary".into(),
                tier: "warm".into(),
                server: shop.secondary,
                draining: false,
                removed: false,
            },
            Member {
                name: "tertiary".into(),
                tier: "warm".into(),
                server: tertiary,
                draining: false,
                removed: false,
            },
        ];
        let secrets = vec![
            ("primary-redis".to_owned(), "change-me-primary".to_owned()),
            (
                "secondary-redis".to_owned(),
                "change-me-secondary".to_owned(),
            ),
            ("tertiary-redis".to_owned(), "change-me-tertiary".to_owned()),
        ];
        let node = Node::start(shop.cp, &shop.ns);
        let mut fleet = Fleet {
            cp: shop.cp,
            ns: shop.ns,
            clock,
            configmaps: shop.configmaps,
            policies: shop.policies,
            instances: shop.instances,
            members: Mutex::new(members),
            operator_logs: Mutex::new(vec![shop.operator.log.clone()]),
            operator: Mutex::new(Some(shop.operator)),
            sidecars: Vec::new(),
            node,
            tables: Mutex::new(Vec::new()),
            phases: Mutex::new(Vec::new()),
            plans: Mutex::new(BTreeMap::new()),
            pauses: Mutex::new(Vec::new()),
            kills: Mutex::new(Vec::new()),
            events: Mutex::new(Vec::new()),
            replication: Mutex::new(Vec::new()),
            memory: Mutex::new(Vec::new()),
            pausing: AtomicBool::new(false),
            settling: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            secrets: Mutex::new(secrets),
        };
        // The three instances serve and the (empty) joining plan is done.
        let table = fleet
            .wait_idle(Duration::from_secs(120), |t| {
                let owners: std::collections::BTreeSet<&str> =
                    t.categories.iter().flat_map(|c| c.owners()).collect();
                owners.len() == 3
            })
            .await
            .unwrap_or_else(|e| panic!("the fleet never settled at the start: {e}"));
        let (cp, ns) = (fleet.cp, fleet.ns.clone());
        let api = tokio::task::spawn_blocking(move || Sidecar::follow(cp, &ns, ROUTING, "api"))
            .await
            .expect("starting the API sidecar");
        fleet.sidecars.push(SidecarSlot {
            name: "api".into(),
            port: api.port,
            metrics_port: api.metrics_port,
            file: false,
            routing_file: api.routing_file.clone(),
            secrets_dir: api.secrets_dir.clone(),
            process: Mutex::new(api),
            delivered: AtomicU64::new(0),
        });
        for i in 1..=file_sidecars {
            let secrets = lock(&fleet.secrets).clone();
            let t = table.clone();
            let sidecar = tokio::task::spawn_blocking(move || {
                let s: Vec<(&str, &str, &str)> = secrets
                    .iter()
                    .map(|(n, p)| (n.as_str(), "password", p.as_str()))
                    .collect();
                Sidecar::start_as(&format!("file-{i}"), &t, &s, &[])
            })
            .await
            .expect("starting a file sidecar");
            fleet.sidecars.push(SidecarSlot {
                name: format!("file-{i}"),
                port: sidecar.port,
                metrics_port: sidecar.metrics_port,
                file: true,
                routing_file: sidecar.routing_file.clone(),
                secrets_dir: sidecar.secrets_dir.clone(),
                process: Mutex::new(sidecar),
                delivered: AtomicU64::new(table.version),
            });
        }
        fleet
    }

    /// The routing table now.
    pub async fn table(&self) -> Option<RoutingTable> {
        let cm = self.configmaps.get_opt(ROUTING).await.ok()??;
        table_of(&cm)?.ok()
    }

    /// Notes `what` at this moment in the timeline a failed seed prints.
    pub fn event(&self, what: impl Into<String>) {
        lock(&self.events).push((self.clock.now(), what.into()));
    }

    /// The policy's rebalance status now.
    pub async fn rebalance(&self) -> Option<RebalanceStatus> {
        self.policies.get(POLICY).await.ok()?.status?.rebalance
    }

    /// Waits until no plan is active and the table has no migrating or failed-over range and
    /// satisfies `cond`; returns the table, or why it gave up after `bound`.
    pub async fn wait_idle(
        &self,
        bound: Duration,
        cond: impl Fn(&RoutingTable) -> bool,
    ) -> Result<RoutingTable, String> {
        let deadline = Instant::now() + bound;
        loop {
            let rb = self.rebalance().await;
            let active = rb.as_ref().is_some_and(|r| r.is_active());
            let table = self.table().await;
            if let Some(t) = &table
                && !active
                && t.migrating.is_empty()
                && t.failover.is_empty()
                && cond(t)
            {
                return Ok(t.clone());
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "after {bound:?}: rebalance {rb:#?}\ntable {:?}",
                    table.map(|t| (t.version, t.migrating, t.failover))
                ));
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// The version of the table each sidecar routes by (from its metrics; 0 when it does not
    /// answer).
    pub async fn sidecar_versions(&self) -> Vec<u64> {
        let ports: Vec<u16> = self.sidecars.iter().map(|s| s.metrics_port).collect();
        tokio::task::spawn_blocking(move || ports.into_iter().map(routing_version).collect())
            .await
            .unwrap_or_default()
    }

    /// Names of the instances still in the fleet (not removed).
    pub fn live_members(&self) -> Vec<String> {
        lock(&self.members)
            .iter()
            .filter(|m| !m.removed)
            .map(|m| m.name.clone())
            .collect()
    }

    // -----------------------------------------------------------------------------------------
    // Faults
    // -----------------------------------------------------------------------------------------

    /// kill -9 of the operator, and a new one after `down`.
    pub async fn restart_operator(self: &Arc<Self>, down: Duration) {
        let fleet = self.clone();
        tokio::task::spawn_blocking(move || {
            if let Some(mut op) = lock(&fleet.operator).take() {
                op.kill();
            }
            std::thread::sleep(down);
            let op = Operator::start_with(fleet.cp, &fleet.ns, &operator_args());
            lock(&fleet.operator_logs).push(op.log.clone());
            *lock(&fleet.operator) = Some(op);
        })
        .await
        .expect("restarting the operator");
    }

    /// kill -9 of sidecar `i`, and the same sidecar again after `down`.
    pub async fn restart_sidecar(self: &Arc<Self>, i: usize, down: Duration) {
        let fleet = self.clone();
        tokio::task::spawn_blocking(move || {
            lock(&fleet.sidecars[i].process).kill();
            lock(&fleet.kills).push((i, fleet.clock.now()));
            std::thread::sleep(down);
            lock(&fleet.sidecars[i].process).restart();
        })
        .await
        .expect("restarting a sidecar");
    }

    /// SIGSTOP of `instance`'s redis-server for `length`, then SIGCONT. One at a time: false
    /// (nothing done) while another is stopped.
    pub async fn pause(self: &Arc<Self>, instance: &str, length: Duration) -> bool {
        if self.pausing.swap(true, Ordering::SeqCst) {
            return false;
        }
        let pid = lock(&self.members)
            .iter()
            .find(|m| m.name == instance)
            .and_then(|m| m.server.pid());
        let Some(pid) = pid else {
            self.pausing.store(false, Ordering::SeqCst);
            return false;
        };
        let stop = self.clock.now();
        signal(pid, "-STOP");
        // The pause ends early when the faults stop.
        let end = Instant::now() + length;
        while Instant::now() < end && !self.settling.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        signal(pid, "-CONT");
        lock(&self.pauses).push(Pause {
            instance: instance.to_owned(),
            stop,
            cont: self.clock.now(),
        });
        self.pausing.store(false, Ordering::SeqCst);
        true
    }

    /// A new 30 MB instance `name` in `tier`: its Secret reaches the file sidecars first (as a
    /// mounted Secret would), then the RedisInstance is applied.
    pub async fn add_instance(&self, name: &str, tier: &str) {
        let password = format!("change-me-{name}");
        let server = {
            let p = password.clone();
            tokio::task::spawn_blocking(move || server_with_password(&p))
                .await
                .expect("starting a redis-server")
        };
        let secret = format!("{name}-redis");
        for s in self.sidecars.iter().filter(|s| s.file) {
            let dir = s.secrets_dir.join(&secret);
            std::fs::create_dir_all(&dir).expect("a secret's dir");
            std::fs::write(dir.join("password"), &password).expect("writing a secret");
        }
        lock(&self.secrets).push((secret, password.clone()));
        let yaml = instance_yaml(name, tier, server.port, &password);
        lock(&self.members).push(Member {
            name: name.to_owned(),
            tier: tier.to_owned(),
            server,
            draining: false,
            removed: false,
        });
        let (cp, ns) = (self.cp, self.ns.clone());
        let out = tokio::task::spawn_blocking(move || kubectl_apply(cp, &ns, &yaml))
            .await
            .expect("running kubectl");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// `spec.drain: true` on `name`.
    /// The instances that serve and are not draining.
    pub fn serving_members(&self) -> usize {
        lock(&self.members)
            .iter()
            .filter(|m| !m.removed && !m.draining)
            .count()
    }

    pub async fn drain(&self, name: &str) {
        self.instances
            .patch(
                name,
                &PatchParams::default(),
                &Patch::Merge(&json!({"spec": {"drain": true}})),
            )
            .await
            .expect("draining an instance");
        if let Some(m) = lock(&self.members).iter_mut().find(|m| m.name == name) {
            m.draining = true;
        }
    }

    /// Deletes the RedisInstance of a drained instance, once it holds no data, no slot and no
    /// migration; false when it is not empty yet.
    pub async fn remove_if_empty(&self, name: &str) -> bool {
        let Some(table) = self.table().await else {
            return false;
        };
        let referenced = table
            .categories
            .iter()
            .any(|c| c.slots.iter().any(|s| s.instance == name))
            || table
                .migrating
                .iter()
                .any(|m| m.from == name || m.to == name)
            || table
                .failover
                .iter()
                .any(|f| f.from == name || f.to == name)
            || table.replicates_on(name);
        if referenced || self.rebalance().await.is_some_and(|r| r.is_active()) {
            return false;
        }
        let client = lock(&self.members)
            .iter()
            .find(|m| m.name == name)
            .map(|m| m.server.client());
        let Some(client) = client else {
            return false;
        };
        if app_keys(&client).await != Some(0) {
            return false;
        }
        if self
            .instances
            .delete(name, &Default::default())
            .await
            .is_err()
        {
            return false;
        }
        if let Some(m) = lock(&self.members).iter_mut().find(|m| m.name == name) {
            m.removed = true;
        }
        true
    }

    /// Asks for a rebalance now (`redisfleet.io/rebalance-now`).
    pub async fn rebalance_now(&self, token: &str) {
        let _ = self
            .policies
            .patch(
                POLICY,
                &PatchParams::default(),
                &Patch::Merge(&json!({"metadata": {"annotations": {
                    redis_fleet::api::cache_policy::REBALANCE_NOW_ANNOTATION: token
                }}})),
            )
            .await;
    }

    /// Sets (`Some`) or removes (`None`) the policy's `redisfleet.io/rebalance` annotation;
    /// retried until the API server takes it (a held rebalance left behind never settles).
    pub async fn rebalance_control(&self, value: Option<&str>) {
        for _ in 0..50 {
            let done = self
                .policies
                .patch(
                    POLICY,
                    &PatchParams::default(),
                    &Patch::Merge(&json!({"metadata": {"annotations": {
                        redis_fleet::api::cache_policy::REBALANCE_CONTROL_ANNOTATION: value
                    }}})),
                )
                .await;
            if done.is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        panic!("the rebalance annotation could not be set to {value:?}");
    }

    /// `used_memory` of every instance still in the fleet that answers within a second.
    pub async fn used_memory(&self) -> Vec<(String, u64)> {
        let clients: Vec<(String, redis::Client)> = lock(&self.members)
            .iter()
            .filter(|m| !m.removed)
            .map(|m| (m.name.clone(), m.server.client()))
            .collect();
        let mut out = Vec::new();
        for (name, client) in clients {
            let info = tokio::time::timeout(Duration::from_secs(1), async {
                let mut c = client.get_multiplexed_async_connection().await.ok()?;
                redis::cmd("INFO")
                    .arg("memory")
                    .query_async::<String>(&mut c)
                    .await
                    .ok()
            })
            .await
            .ok()
            .flatten();
            if let Some(used) = info.as_deref().and_then(|i| {
                i.lines()
                    .find_map(|l| l.strip_prefix("used_memory:"))
                    .and_then(|v| v.trim().parse().ok())
            }) {
                out.push((name, used));
            }
        }
        out
    }
}

/// Reads every sidecar's `async` replication metrics every 200 ms until the run stops: what
/// the checker allows an `async` category to have lost at a failover is what they reported.
pub async fn watch_replication(fleet: Arc<Fleet>) {
    while !fleet.stop.load(Ordering::SeqCst) {
        let f = fleet.clone();
        let samples = tokio::task::spawn_blocking(move || {
            let mut out = Vec::new();
            for (i, s) in f.sidecars.iter().enumerate() {
                let asked = f.clock.now();
                let generation = lock(&f.kills).iter().filter(|(k, _)| *k == i).count();
                let Some(body) = http_get(s.metrics_port, "/metrics") else {
                    continue;
                };
                let failures = format!(
                    "redisfleet_sidecar_replica_failures_total{{category=\"{ASYNC_CATEGORY}\"}}"
                );
                let Some(age) =
                    series_value(&body, "redisfleet_sidecar_replication_backlog_age_seconds")
                else {
                    continue;
                };
                out.push(ReplicationSample {
                    sidecar: i,
                    asked,
                    at: f.clock.now(),
                    generation,
                    failures: series_value(&body, &failures).unwrap_or(0.0) as u64,
                    backlog_age: (age * 1e9) as u64,
                });
            }
            out
        })
        .await
        .unwrap_or_default();
        lock(&fleet.replication).extend(samples);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The table version a sidecar's /metrics report (0: no answer).
fn routing_version(metrics_port: u16) -> u64 {
    http_get(metrics_port, "/metrics")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("redisfleet_sidecar_routing_version"))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|v| v.parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

/// Keys of a server outside the fleet's own `redisfleet:` bookkeeping (None: no answer).
async fn app_keys(client: &redis::Client) -> Option<u64> {
    tokio::time::timeout(Duration::from_secs(5), async {
        let mut c = client.get_multiplexed_async_connection().await.ok()?;
        let mut cursor: u64 = 0;
        let mut n = 0;
        loop {
            let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut c)
                .await
                .ok()?;
            n += keys
                .iter()
                .filter(|k| !k.starts_with("redisfleet:"))
                .count() as u64;
            if next == 0 {
                return Some(n);
            }
            cursor = next;
        }
    })
    .await
    .ok()
    .flatten()
}

/// Records tables, instance phases and plans as they change, every 200 ms, until the fleet
/// stops.
pub async fn observe(fleet: Arc<Fleet>) {
    let mut phases: BTreeMap<String, InstancePhase> = BTreeMap::new();
    // The last plan line noted: (plan, line).
    let mut plan_seen: Option<(i64, String)> = None;
    let mut asked = 0;
    while !fleet.stop.load(Ordering::SeqCst) {
        let asking = fleet.clock.now();
        if let Some(t) = fleet.table().await {
            let mut tables = lock(&fleet.tables);
            if tables.last().is_none_or(|p| p.table.version < t.version) {
                tables.push(Published {
                    after: asked,
                    at: fleet.clock.now(),
                    table: t,
                });
            }
            asked = asking;
        }
        if let Ok(list) = fleet.instances.list(&ListParams::default()).await {
            let memory: Vec<String> = list
                .iter()
                .filter_map(|ri| {
                    let m = ri.status.as_ref()?.memory.as_ref()?;
                    Some(format!(
                        "{} {}%",
                        ri.metadata.name.as_deref().unwrap_or_default(),
                        m.used_percent?
                    ))
                })
                .collect();
            let memory = memory.join(", ");
            let mut seen = lock(&fleet.memory);
            if seen.last().is_none_or(|(_, last)| *last != memory) {
                seen.push((fleet.clock.now(), memory));
            }
            drop(seen);
            for ri in list {
                let name = ri.metadata.name.clone().unwrap_or_default();
                let Some(phase) = ri.status.and_then(|s| s.phase) else {
                    continue;
                };
                if phases.insert(name.clone(), phase) != Some(phase) {
                    lock(&fleet.phases).push(PhaseSeen {
                        at: fleet.clock.now(),
                        instance: name,
                        phase,
                    });
                }
            }
        }
        if let Some(r) = fleet.rebalance().await
            && r.plan_id > 0
        {
            let now = plan_summary(&r, false);
            if plan_seen.as_ref().is_none_or(|(_, seen)| *seen != now) {
                let first = plan_seen.as_ref().is_none_or(|(id, _)| *id != r.plan_id);
                fleet.event(plan_summary(&r, first));
                plan_seen = Some((r.plan_id, now));
            }
            lock(&fleet.plans).insert(r.plan_id, r);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A plan's status in one line (`moves`: with its moves, for the plan's first line).
fn plan_summary(r: &RebalanceStatus, moves: bool) -> String {
    let mut line = format!(
        "plan {} {} step {} attempts {} job {}{}",
        r.plan_id,
        r.phase,
        r.step.as_deref().unwrap_or("-"),
        r.attempts,
        r.job.as_deref().unwrap_or("-"),
        if r.paused == Some(true) {
            " paused"
        } else {
            ""
        },
    );
    if moves {
        for m in &r.moves {
            line.push_str(&format!(
                "; {} {}..{} {} → {}{}",
                m.category,
                m.start,
                m.end,
                m.from,
                m.to,
                if m.target_serves == Some(true) {
                    " (target serves)"
                } else {
                    ""
                }
            ));
        }
    }
    line
}

/// Copies each new table into file sidecar `i`'s file late, as a kubelet syncs a mounted
/// ConfigMap: each version after its own random delay (a later version may overtake an earlier
/// one; the file never goes back), and now and then not at all for a long while (a stuck
/// sync). Once the fleet settles, at once.
pub async fn deliver(fleet: Arc<Fleet>, i: usize, mut rng: Rng) {
    let slot = &fleet.sidecars[i];
    let mut due: BTreeMap<u64, u64> = BTreeMap::new();
    let mut stuck_until = 0u64;
    while !fleet.stop.load(Ordering::SeqCst) {
        let now = fleet.clock.now();
        let settling = fleet.settling.load(Ordering::SeqCst);
        let delivered = slot.delivered.load(Ordering::SeqCst);
        let newest: Option<RoutingTable> = {
            let tables = lock(&fleet.tables);
            let mut best = None;
            for p in tables.iter().filter(|p| p.table.version > delivered) {
                let at = *due.entry(p.table.version).or_insert_with(|| {
                    if rng.chance(6) {
                        // The kubelet's sync of this pod is stuck for a while.
                        stuck_until = now + rng.range(40_000, 120_000) * 1_000_000;
                    }
                    let ms = match rng.range(0, 100) {
                        0..45 => rng.range(0, 1_500),
                        45..80 => rng.range(1_500, 10_000),
                        _ => rng.range(10_000, 30_000),
                    };
                    p.at + ms * 1_000_000
                });
                if settling || (at <= now && stuck_until <= now) {
                    best = Some(p.table.clone());
                }
            }
            best
        };
        if let Some(t) = newest {
            replace_table(&slot.routing_file, &t);
            slot.delivered.store(t.version, Ordering::SeqCst);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Sends SIGCONT to every server (a stop the harness lost track of must not outlive the run).
pub fn resume_all(fleet: &Fleet) {
    for m in lock(&fleet.members).iter() {
        if let Some(pid) = m.server.pid() {
            signal(pid, "-CONT");
        }
    }
}

/// The capacity threshold, 80 % of 30 MB, and how far past it a fill goes.
pub fn fill_limit() -> u64 {
    CAPACITY * 83 / 100
}

/// The most the fleet holds in all before a fill stops, or a drain is refused: 55 % of the
/// capacity of the instances that serve, but one. A fleet filled past that has no room left
/// for a drain or a failover to move into, and its instances answer writes with `-OOM` (as
/// one full Redis would): the guarantees under test hold for a fleet run within its capacity,
/// and a fault model that fills the whole fleet tests only that Redis refuses writes.
pub fn fleet_budget(serving: usize) -> u64 {
    CAPACITY * (serving.saturating_sub(1) as u64) * 55 / 100
}
