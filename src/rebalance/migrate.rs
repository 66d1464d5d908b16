//! `redis-fleet rebalance`: the Job that moves the data of one plan, online, losing nothing.
//!
//! The operator owns the routing table; the Job owns the data movement. They meet in the
//! CachePolicy's `status.rebalance`: the operator writes the plan and its phase, the Job its
//! `step` and counters.
//!
//! 1. **Prepare**: delete whatever the targets hold in the moving ranges (leftovers of an
//!    older ownership), then report `Prepared`.
//! 2. **Flip** (operator): publish the ranges as `migrating`; sidecars now send every command
//!    for those keys to the target, moving the key first if it is still on the source.
//! 3. **Converge**: wait until every live sidecar's heartbeat shows the flip version, so no
//!    sidecar still writes to a source by an older table.
//! 4. **Copy**: SCAN the source, move keys in pipelined batches (take into a tombstone,
//!    RESTORE without REPLACE, finish — see [`crate::redis::keymove`] and `migrate/batch.rs`),
//!    big or non-portable values piece by piece (`migrate/piecewise.rs`); checkpoint the
//!    cursor on the source so a restarted Job resumes; respect `keysPerSecond`; sweep until no
//!    key and no tombstone of the ranges is left.
//! 5. **Finalize** (operator): publish the targets as owners; the Job removes its checkpoints.

mod batch;
mod piecewise;

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use kube::api::{Api, Patch, PatchParams};
use kube::{Client, ResourceExt};
use redis::aio::MultiplexedConnection;
use serde_json::json;
use tracing::info;

use crate::api::CachePolicy;
use crate::api::cache_policy::{
    MoveStatus, RebalanceStatus, config_map_name, rebalance_phase, rebalance_step,
};
use crate::redis::connect::{Credentials, redact};
use crate::redis::endpoint::{self, Available, SecretSource, read_secrets, referenced_secrets};
use crate::redis::keymove::{
    FINISH_MANY_SCRIPT, LEASE_MS, MoveError, TAKE_MANY_SCRIPT, TOMB_PREFIX,
};
use crate::redis::keys::{RangeScan, ScanCheckpoint, delete_ranges, in_ranges};
use crate::routing::config_map::table_of;
use crate::routing::keyspace::{CategoryId, Resolver};
use crate::routing::slots::SlotRange;

use batch::{BATCHES_IN_FLIGHT, BatchOutcome, Mover};

/// Values larger than this (MEMORY USAGE) are copied piece by piece, not with one DUMP.
pub const BIG_VALUE_BYTES: u64 = 8 << 20;

/// Field manager of the Job's status writes.
pub const FIELD_MANAGER: &str = "redis-fleet-rebalance";

/// How the Job runs.
#[derive(Debug, Clone)]
pub struct Config {
    /// Namespace of the CachePolicy.
    pub namespace: String,
    /// Name of the CachePolicy.
    pub policy: String,
    /// The plan to carry out (`status.rebalance.planId`).
    pub plan_id: i64,
    /// Who holds the per-key leases (the pod name).
    pub owner: String,
    /// Longest wait for the operator to publish a table (flip, finalize).
    pub publish_timeout: Duration,
    /// Longest wait for the sidecars to converge on the flip version.
    pub converge_timeout: Duration,
}

/// Why the Job failed; Kubernetes retries it, and it resumes from its checkpoints.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Talking to the API failed.
    #[error("Kubernetes API: {0}")]
    Api(#[from] kube::Error),
    /// Talking to an instance failed.
    #[error("instance {instance}: {message}")]
    Redis {
        /// Instance.
        instance: String,
        /// Error text (credentials redacted).
        message: String,
    },
    /// The routing table or a Secret could not be read.
    #[error("{0}")]
    Setup(String),
    /// A wait ran out.
    #[error("{0}")]
    Timeout(String),
    /// A bug: a task of the Job panicked or was cancelled.
    #[error("internal error: {0}")]
    Internal(String),
    /// A key could not be moved.
    #[error("moving {key:?}: {source}")]
    Move {
        /// The key.
        key: String,
        /// Cause.
        #[source]
        source: MoveError,
    },
}

/// A connection to one instance of the table, and how to report its errors (credentials
/// redacted). Cheap to clone: the connection is multiplexed.
#[derive(Clone)]
struct Instance {
    name: String,
    credentials: Credentials,
    conn: MultiplexedConnection,
}

impl Instance {
    fn err(&self, e: &redis::RedisError) -> Error {
        Error::Redis {
            instance: self.name.clone(),
            message: redact(&e.to_string(), &self.credentials),
        }
    }
}

/// One move, resolved.
struct Step {
    index: usize,
    category: CategoryId,
    range: SlotRange,
    from: String,
    to: String,
}

struct Job {
    config: Config,
    policies: Api<CachePolicy>,
    resolver: Resolver,
    instances: HashMap<String, Instance>,
    steps: Vec<Step>,
    keys_per_second: u64,
    batch_size: usize,
    moved: u64,
    total: u64,
    started: Instant,
    last_report: Instant,
    take_sha: String,
    finish_sha: String,
}

/// Runs the Job to completion.
pub async fn run(config: Config) -> Result<(), Error> {
    let client = Client::try_default().await?;
    let policies: Api<CachePolicy> = Api::namespaced(client.clone(), &config.namespace);
    let policy = policies.get(&config.policy).await?;
    let Some(plan) = current_plan(&policy, config.plan_id) else {
        info!(
            plan = config.plan_id,
            "the plan is finished or superseded; nothing to do"
        );
        return Ok(());
    };
    let mut job = Job::connect(client, policies, &policy, &plan, config).await?;
    if plan.flip_version.is_none() {
        job.report(rebalance_step::PREPARING, &[]).await?;
        job.prepare().await?;
        job.report(rebalance_step::PREPARED, &[]).await?;
    }
    let Some(flip) = job.wait_for(|r| r.flip_version).await? else {
        return Ok(());
    };
    job.converge(flip).await?;
    job.total = job.count().await?;
    job.report(rebalance_step::COPYING, &[]).await?;
    job.copy().await?;
    job.sweep().await?;
    job.report(rebalance_step::COPIED, &[]).await?;
    if job.wait_for(|r| r.final_version).await?.is_none() {
        return Ok(());
    }
    job.cleanup().await?;
    job.report(rebalance_step::DONE, &[]).await?;
    info!(
        keys = job.moved,
        seconds = job.started.elapsed().as_secs_f64(),
        "rebalance done"
    );
    Ok(())
}

/// The rebalance status if it is still plan `plan_id` and still running.
fn current_plan(policy: &CachePolicy, plan_id: i64) -> Option<RebalanceStatus> {
    policy
        .status
        .as_ref()?
        .rebalance
        .clone()
        .filter(|r| r.plan_id == plan_id)
        .filter(|r| r.phase != rebalance_phase::SUCCEEDED && r.phase != rebalance_phase::FAILED)
}

impl Job {
    async fn connect(
        client: Client,
        policies: Api<CachePolicy>,
        policy: &CachePolicy,
        plan: &RebalanceStatus,
        config: Config,
    ) -> Result<Self, Error> {
        let namespace = policy.namespace().unwrap_or_default();
        let cms: Api<k8s_openapi::api::core::v1::ConfigMap> =
            Api::namespaced(client.clone(), &namespace);
        let cm = cms.get(&config_map_name(policy)).await?;
        let table = table_of(&cm)
            .ok_or_else(|| Error::Setup("the routing ConfigMap has no table".to_owned()))?
            .map_err(|e| Error::Setup(e.to_string()))?;
        let secrets = read_secrets(
            &SecretSource::Api(namespace.clone()),
            Some(&client),
            &referenced_secrets(&table),
        )
        .await
        .map_err(Error::Setup)?;
        let resolver = Resolver::new(table).map_err(|e| Error::Setup(e.to_string()))?;
        let mut instances = HashMap::new();
        let mut take_sha = String::new();
        let mut finish_sha = String::new();
        for name in resolver.instances() {
            let endpoint = &resolver.table().instances[name];
            let available = Available {
                instance: name,
                values: &secrets,
            };
            let target = endpoint::target(endpoint, &available)
                .await
                .map_err(Error::Setup)?;
            let conn = target
                .connect(Duration::from_secs(10))
                .await
                .map_err(|e| Error::Redis {
                    instance: name.clone(),
                    message: redact(&e.to_string(), &target.credentials),
                })?;
            let mut instance = Instance {
                name: name.clone(),
                credentials: target.credentials,
                conn,
            };
            take_sha = load_script(&mut instance, TAKE_MANY_SCRIPT).await?;
            finish_sha = load_script(&mut instance, FINISH_MANY_SCRIPT).await?;
            instances.insert(name.clone(), instance);
        }
        let mut steps = Vec::new();
        for (index, m) in plan.moves.iter().enumerate() {
            steps.push(resolve_step(&resolver, index, m)?);
        }
        let spec = &policy.spec.balancing.rebalance;
        Ok(Self {
            config,
            policies,
            resolver,
            instances,
            steps,
            keys_per_second: u64::try_from(spec.keys_per_second).unwrap_or(50_000).max(1),
            batch_size: usize::try_from(spec.batch_size).unwrap_or(256).max(1),
            moved: 0,
            total: 0,
            started: Instant::now(),
            last_report: Instant::now(),
            take_sha,
            finish_sha,
        })
    }

    fn instance(&mut self, name: &str) -> Result<&mut Instance, Error> {
        self.instances
            .get_mut(name)
            .ok_or_else(|| Error::Setup(format!("instance {name} is not in the routing table")))
    }

    /// Merge-patches the Job-owned fields of `status.rebalance`.
    async fn report(&mut self, step: &str, stragglers: &[String]) -> Result<(), Error> {
        let rate = self.moved as f64 / self.started.elapsed().as_secs_f64().max(0.001);
        let patch = json!({"status": {"rebalance": {
            "step": step,
            "keysMoved": self.moved,
            "keysTotal": self.total.max(self.moved),
            "keysPerSecond": rate.round() as i64,
            "stragglers": stragglers,
        }}});
        self.policies
            .patch_status(
                &self.config.policy,
                &PatchParams::apply(FIELD_MANAGER),
                &Patch::Merge(&patch),
            )
            .await?;
        self.last_report = Instant::now();
        info!(step, moved = self.moved, total = self.total, "progress");
        Ok(())
    }

    /// Waits until the operator publishes what `field` reads (flip or final version). `None`
    /// when the plan was superseded meanwhile.
    async fn wait_for(
        &self,
        field: impl Fn(&RebalanceStatus) -> Option<i64>,
    ) -> Result<Option<i64>, Error> {
        let deadline = Instant::now() + self.config.publish_timeout;
        loop {
            let policy = self.policies.get(&self.config.policy).await?;
            let Some(plan) = current_plan(&policy, self.config.plan_id) else {
                info!("the plan was superseded");
                return Ok(None);
            };
            if let Some(v) = field(&plan) {
                return Ok(Some(v));
            }
            if Instant::now() > deadline {
                return Err(Error::Timeout(
                    "the operator did not publish the next routing table in time".to_owned(),
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn prepare(&mut self) -> Result<(), Error> {
        let work: Vec<(String, CategoryId, SlotRange)> = self
            .steps
            .iter()
            .map(|s| (s.to.clone(), s.category, s.range))
            .collect();
        for (to, category, range) in work {
            let resolver = self.resolver.clone();
            let name = &resolver.categories()[usize::from(category)].name;
            if super::plan::target_serves(resolver.table(), name, range, &to) {
                // Emptying a legacy instance into the range's live owner: nothing is stale.
                continue;
            }
            let target = self.instance(&to)?;
            let deleted = delete_ranges(&mut target.conn, &resolver, category, &[range])
                .await
                .map_err(|e| target.err(&e))?;
            if deleted > 0 {
                info!(instance = %to, deleted, "removed stale keys from the target");
            }
        }
        Ok(())
    }

    async fn converge(&mut self, flip: i64) -> Result<(), Error> {
        let deadline = Instant::now() + self.config.converge_timeout;
        loop {
            let mut behind = BTreeMap::new();
            for instance in self.instances.values_mut() {
                let beats = crate::redis::heartbeat::read(&mut instance.conn)
                    .await
                    .map_err(|e| instance.err(&e))?;
                for (id, version) in beats {
                    if (version as i64) < flip {
                        behind.insert(id, version);
                    }
                }
            }
            if behind.is_empty() {
                return Ok(());
            }
            let stragglers: Vec<String> = behind
                .iter()
                .map(|(id, v)| format!("{id} (v{v})"))
                .collect();
            if Instant::now() > deadline {
                self.report(rebalance_step::CONVERGING, &stragglers).await?;
                return Err(Error::Timeout(format!(
                    "sidecars still on a table older than v{flip}: {}",
                    stragglers.join(", ")
                )));
            }
            if self.last_report.elapsed() > Duration::from_secs(1) {
                self.report(rebalance_step::CONVERGING, &stragglers).await?;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Keys left to move in every range (for progress).
    async fn count(&mut self) -> Result<u64, Error> {
        let mut total = 0;
        let work: Vec<(String, CategoryId, SlotRange)> = self
            .steps
            .iter()
            .map(|s| (s.from.clone(), s.category, s.range))
            .collect();
        let resolver = self.resolver.clone();
        for (from, category, range) in work {
            let source = self.instance(&from)?;
            let mut scan = RangeScan::new(&resolver, category, &[range]);
            while let Some(batch) = scan
                .next_batch(&mut source.conn)
                .await
                .map_err(|e| source.err(&e))?
            {
                total += batch.len() as u64;
            }
        }
        Ok(total)
    }

    fn checkpoint_key(&self, index: usize) -> String {
        format!(
            "redisfleet:checkpoint:{}/{}:{}:{index}",
            self.config.namespace, self.config.policy, self.config.plan_id
        )
    }

    async fn copy(&mut self) -> Result<(), Error> {
        let resolver = self.resolver.clone();
        for i in 0..self.steps.len() {
            let (index, category, range, from, to) = {
                let s = &self.steps[i];
                (s.index, s.category, s.range, s.from.clone(), s.to.clone())
            };
            let key = self.checkpoint_key(index);
            let source = self.instance(&from)?;
            let saved: Option<String> = redis::cmd("GET")
                .arg(&key)
                .query_async(&mut source.conn)
                .await
                .map_err(|e| source.err(&e))?;
            let checkpoint = saved
                .as_deref()
                .and_then(parse_checkpoint)
                .unwrap_or_default();
            if checkpoint != ScanCheckpoint::default() {
                info!(move = index, ?checkpoint, "resuming from the checkpoint");
            }
            let mover = self.mover(&from, &to)?;
            let mut scan_conn = mover.from.clone();
            let mut scan = RangeScan::resume(&resolver, category, &[range], checkpoint);
            // Batches in flight, in scan order: the source takes the next ones while the
            // target restores earlier ones. A scan position is checkpointed once every batch
            // before it has landed.
            let mut in_flight = futures::stream::FuturesOrdered::new();
            let mut scanned_all = false;
            loop {
                while !scanned_all && in_flight.len() < BATCHES_IN_FLIGHT {
                    let Some(batch) = scan
                        .next_batch(&mut scan_conn.conn)
                        .await
                        .map_err(|e| scan_conn.err(&e))?
                    else {
                        scanned_all = true;
                        break;
                    };
                    let chunks: Vec<Vec<Vec<u8>>> =
                        batch.chunks(self.batch_size).map(<[_]>::to_vec).collect();
                    let last = chunks.len().saturating_sub(1);
                    let position = scan.checkpoint();
                    if chunks.is_empty() {
                        // Nothing of the range in this stretch: only the position moves.
                        in_flight.push_back(tokio::spawn(futures::future::ready(Ok((
                            BatchOutcome::default(),
                            Some(position),
                        )))));
                    }
                    for (n, chunk) in chunks.into_iter().enumerate() {
                        let mover = mover.clone();
                        let at = (n == last).then_some(position);
                        // A task of its own: a batch holds its keys' leases, so it must run
                        // to the end while the Job paces, checkpoints or reports.
                        in_flight.push_back(tokio::spawn(async move {
                            mover.move_batch(chunk).await.map(|o| (o, at))
                        }));
                    }
                }
                let Some(done) = futures::StreamExt::next(&mut in_flight).await else {
                    break;
                };
                let (outcome, position) =
                    done.map_err(|e| Error::Internal(format!("a batch of the copy failed: {e}")))??;
                self.moved += self.settle(&from, &to, outcome).await?;
                if let Some(cp) = position {
                    let source = self.instance(&from)?;
                    let _: () = redis::cmd("SET")
                        .arg(&key)
                        .arg(format!("{}:{}", cp.pattern, cp.cursor))
                        .arg("EX")
                        .arg(86_400)
                        .query_async(&mut source.conn)
                        .await
                        .map_err(|e| source.err(&e))?;
                }
                self.pace().await;
                if self.last_report.elapsed() > Duration::from_secs(1) {
                    self.report(rebalance_step::COPYING, &[]).await?;
                }
            }
        }
        Ok(())
    }

    /// Rescans every range until no key and no abandoned tombstone is left (keys a sidecar
    /// was moving meanwhile, keys whose mover died).
    async fn sweep(&mut self) -> Result<(), Error> {
        let resolver = self.resolver.clone();
        let deadline = Instant::now() + Duration::from_secs(LEASE_MS / 1000 * 6 + 60);
        loop {
            let mut found = 0usize;
            for i in 0..self.steps.len() {
                let (category, range, from, to) = {
                    let s = &self.steps[i];
                    (s.category, s.range, s.from.clone(), s.to.clone())
                };
                let mut keys: Vec<Vec<u8>> = Vec::new();
                let source = self.instance(&from)?;
                let mut scan = RangeScan::new(&resolver, category, &[range]);
                while let Some(batch) = scan
                    .next_batch(&mut source.conn)
                    .await
                    .map_err(|e| source.err(&e))?
                {
                    keys.extend(batch);
                }
                // Tombstones of keys in the range (their movers died or are still at it).
                let pattern = crate::redis::keys::prefix_pattern(TOMB_PREFIX);
                let mut cursor = 0u64;
                loop {
                    let (next, batch): (u64, Vec<Vec<u8>>) = redis::cmd("SCAN")
                        .arg(cursor)
                        .arg("MATCH")
                        .arg(&pattern)
                        .arg("COUNT")
                        .arg(1000)
                        .query_async(&mut source.conn)
                        .await
                        .map_err(|e| source.err(&e))?;
                    for tomb in batch {
                        let key = tomb[TOMB_PREFIX.len()..].to_vec();
                        if in_ranges(&resolver, category, &[range], &key) {
                            keys.push(key);
                        }
                    }
                    if next == 0 {
                        break;
                    }
                    cursor = next;
                }
                found += keys.len();
                self.move_keys(&from, &to, &keys).await?;
            }
            if found == 0 {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(Error::Timeout(format!(
                    "{found} keys still to move after the sweep"
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn cleanup(&mut self) -> Result<(), Error> {
        let work: Vec<(usize, String)> = self
            .steps
            .iter()
            .map(|s| (s.index, s.from.clone()))
            .collect();
        for (index, from) in work {
            let key = self.checkpoint_key(index);
            let source = self.instance(&from)?;
            let _: () = redis::cmd("DEL")
                .arg(&key)
                .query_async(&mut source.conn)
                .await
                .map_err(|e| source.err(&e))?;
        }
        Ok(())
    }

    /// Keeps the copy at or below `keysPerSecond`.
    async fn pace(&self) {
        let earliest = Duration::from_secs_f64(self.moved as f64 / self.keys_per_second as f64);
        let elapsed = self.started.elapsed();
        if earliest > elapsed {
            tokio::time::sleep(earliest - elapsed).await;
        }
    }

    /// A mover for keys from `from` to `to`, to be cloned into each batch in flight.
    fn mover(&mut self, from: &str, to: &str) -> Result<Mover, Error> {
        let from = self.instance(from)?.clone();
        let to = self.instance(to)?.clone();
        Ok(Mover {
            from,
            to,
            take_sha: self.take_sha.clone(),
            finish_sha: self.finish_sha.clone(),
            owner: self.config.owner.clone(),
        })
    }

    /// Moves `keys` one batch at a time (the sweep's leftovers); adds them to `moved`.
    async fn move_keys(&mut self, from: &str, to: &str, keys: &[Vec<u8>]) -> Result<(), Error> {
        for chunk in keys.chunks(self.batch_size) {
            let outcome = self.mover(from, to)?.move_batch(chunk.to_vec()).await?;
            self.moved += self.settle(from, to, outcome).await?;
        }
        Ok(())
    }

    /// Copies the keys a batch left for piece-by-piece copying, ends their moves; returns the
    /// keys the batch moved in all.
    async fn settle(&mut self, from: &str, to: &str, outcome: BatchOutcome) -> Result<u64, Error> {
        let mut moved = outcome.moved;
        for (key, pttl) in outcome.piecewise {
            self.copy_piecewise(from, to, &key, pttl).await?;
            let mover = self.mover(from, to)?;
            mover.finish(&[key]).await?;
            moved += 1;
        }
        Ok(moved)
    }
}

async fn load_script(instance: &mut Instance, script: &str) -> Result<String, Error> {
    redis::cmd("SCRIPT")
        .arg("LOAD")
        .arg(script)
        .query_async(&mut instance.conn)
        .await
        .map_err(|e| instance.err(&e))
}

fn resolve_step(resolver: &Resolver, index: usize, m: &MoveStatus) -> Result<Step, Error> {
    let category = resolver
        .categories()
        .iter()
        .position(|c| c.name == m.category)
        .ok_or_else(|| {
            Error::Setup(format!(
                "category {} is not in the routing table",
                m.category
            ))
        })?;
    let start =
        u16::try_from(m.start).map_err(|_| Error::Setup(format!("bad slot {}", m.start)))?;
    let end = u16::try_from(m.end).map_err(|_| Error::Setup(format!("bad slot {}", m.end)))?;
    Ok(Step {
        index,
        category: category as CategoryId,
        range: SlotRange::new(start, end),
        from: m.from.clone(),
        to: m.to.clone(),
    })
}

fn parse_checkpoint(text: &str) -> Option<ScanCheckpoint> {
    let (pattern, cursor) = text.split_once(':')?;
    Some(ScanCheckpoint {
        pattern: pattern.parse().ok()?,
        cursor: cursor.parse().ok()?,
    })
}
