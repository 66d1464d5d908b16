//! One routing table version, ready to route: the resolver, a backend per instance, the
//! migrating ranges' guard keys and the per-category counters. A new version is built beside
//! the old one and swapped in atomically; backends whose endpoint and credentials did not
//! change are reused (and renamed for the new version), so a reload drops no connection, and
//! requests in flight finish on the version they started with.

use std::collections::HashMap;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, Weak};

use bytes::Bytes;

use crate::redis::connect::Target;
use crate::redis::endpoint::{self, Available, SecretValues};
use crate::redis::protocol::guard::RangeNames;
use crate::redis::protocol::names;
use crate::routing::keyspace::{InstanceId, Resolver};
use crate::routing::table::RoutingTable;

use super::backend::{Backend, BackendOptions, Naming, ReplyReceiver, SendError};
use super::fleet::FleetView;
use super::metrics::{CategoryMetrics, SidecarMetrics};
use super::roster::{RosterUse, SourceRoster};
use super::target_first::{AskProves, KnownMoved, TargetFirst};

/// A migrating range as the sidecar routes it.
#[derive(Debug, Clone)]
pub struct MigrationRoute {
    /// Where the guard runs.
    pub source: InstanceId,
    /// Where keys the source no longer has live.
    pub target: InstanceId,
    /// The range's importing marker on the source.
    pub marker: String,
    /// The range's imported marker on the target (`target_first.rs`).
    pub imported: Bytes,
    /// The names of its plan's slot group states (`docs/protocol.md`, "Scripts").
    pub groups: String,
    /// Whether its reads ask the target first.
    pub target_first: Arc<TargetFirst>,
    /// Whether the guard's `ASK` to a write proves its keys moved for good.
    pub ask_proves: Arc<AskProves>,
    /// Whether the guard answered `CHECK` here (a move into a range its target served
    /// already): reads then ask the target first.
    pub served: Arc<AtomicBool>,
    /// In a move into a range its target served already (as the table records it), the
    /// source's roster: blind writes of keys it lacks go straight to the target.
    pub roster: Option<RosterUse>,
}

/// A routing table version with its backends.
#[derive(Debug)]
pub struct Router {
    /// Key → category → slot → instance.
    pub resolver: Resolver,
    /// Backends, indexed by [`InstanceId`].
    pub backends: Vec<Arc<Backend>>,
    /// Counters, indexed by category.
    pub categories: Vec<CategoryMetrics>,
    /// The table's migrating ranges, indexed like `migrating` in the table.
    pub migrations: Vec<MigrationRoute>,
    /// The policy's urgent list (keys the guard asks the Job to move first).
    pub urgent: String,
    /// The policy's urgent group list (slot groups a script waits to see moved whole).
    pub urgent_groups: String,
    /// Keys of the migrating ranges known off their sources for good, in this version.
    pub known_moved: KnownMoved,
}

impl Router {
    /// The backend of `id`.
    pub fn backend(&self, id: InstanceId) -> &Arc<Backend> {
        &self.backends[usize::from(id)]
    }

    /// The names the guard of migrating range `m` works with.
    pub fn range_names(&self, m: u16) -> RangeNames<'_> {
        let mig = &self.migrations[usize::from(m)];
        RangeNames {
            marker: &mig.marker,
            groups: &mig.groups,
            urgent: &self.urgent,
            urgent_groups: &self.urgent_groups,
        }
    }

    /// Table version.
    pub fn version(&self) -> u64 {
        self.resolver.version()
    }

    /// `<namespace>/<name>` of the policy.
    pub fn policy(&self) -> &str {
        &self.resolver.table().policy
    }

    /// Marks the backends as carrying this table's commands from now on: call it once the
    /// router is the one in use, so requests of older tables are routed again.
    pub fn installed(&self) {
        for b in &self.backends {
            b.rename(self.version());
        }
    }

    /// Sends `bytes` (`replies` replies expected) to instance `id` as routed by this table.
    pub fn send(
        &self,
        id: InstanceId,
        lane: usize,
        bytes: Bytes,
        replies: usize,
    ) -> Result<ReplyReceiver, SendError> {
        self.backend(id).send(lane, self.version(), bytes, replies)
    }
}

/// Backends by instance and connection target, shared by successive table versions.
#[derive(Debug, Default)]
pub struct BackendRegistry {
    backends: Mutex<HashMap<(String, u64), Weak<Backend>>>,
}

impl BackendRegistry {
    #[allow(clippy::too_many_arguments)]
    fn get_or_start(
        &self,
        name: &str,
        target: Target,
        options: &BackendOptions,
        metrics: &SidecarMetrics,
        naming: &Naming,
        view: &Arc<FleetView>,
        version: u64,
    ) -> Arc<Backend> {
        let key = (name.to_owned(), target.fingerprint());
        let mut map = self.backends.lock().unwrap_or_else(|e| e.into_inner());
        map.retain(|_, w| w.strong_count() > 0);
        if let Some(b) = map.get(&key).and_then(Weak::upgrade)
            && b.naming() == naming
        {
            // Renamed once the new router is in use (see `Router::install`).
            return b;
        }
        let backend = Backend::start(
            name,
            target,
            options.clone(),
            metrics.backend(name),
            naming.clone(),
            view.clone(),
            version,
        );
        map.insert(key, Arc::downgrade(&backend));
        backend
    }
}

/// Builds the router of `table`, reusing the registry's backends where the endpoint and
/// credentials did not change.
pub async fn build(
    table: RoutingTable,
    secrets: &SecretValues,
    registry: &BackendRegistry,
    options: &BackendOptions,
    metrics: &SidecarMetrics,
    sidecar: &str,
    view: &Arc<FleetView>,
) -> Result<Router, String> {
    let resolver = Resolver::new(table).map_err(|e| e.to_string())?;
    let naming = Naming {
        policy: resolver.table().policy.clone(),
        sidecar: sidecar.to_owned(),
    };
    let version = resolver.version();
    let mut backends = Vec::with_capacity(resolver.instances().len());
    for name in resolver.instances() {
        let endpoint = &resolver.table().instances[name];
        let available = Available {
            instance: name,
            values: secrets,
        };
        let target = endpoint::target(endpoint, &available).await?;
        backends
            .push(registry.get_or_start(name, target, options, metrics, &naming, view, version));
    }
    let categories = resolver
        .categories()
        .iter()
        .map(|c| metrics.category(&c.name))
        .collect();
    let id = |name: &str| resolver.instance_id(name).unwrap_or_default();
    // One roster per source and plan, shared by its moves.
    let mut rosters: HashMap<(String, u64), Arc<SourceRoster>> = HashMap::new();
    let migrations = resolver
        .table()
        .migrating
        .iter()
        .map(|m| MigrationRoute {
            roster: (m.target_serves == Some(true)).then(|| RosterUse {
                roster: rosters
                    .entry((m.from.clone(), m.epoch))
                    .or_insert_with(|| {
                        Arc::new(SourceRoster::new(names::roster(&naming.policy, m.epoch)))
                    })
                    .clone(),
                category: m.category.clone(),
                range: m.range(),
            }),
            source: id(&m.from),
            target: id(&m.to),
            marker: names::importing(&naming.policy, m),
            imported: Bytes::from(names::imported(&naming.policy, m)),
            groups: names::slot_group_prefix(&naming.policy, m.epoch),
            target_first: Arc::new(TargetFirst::new(
                metrics.reads_on_target.clone(),
                metrics.reads_not_on_target.clone(),
            )),
            ask_proves: Arc::default(),
            served: Arc::default(),
        })
        .collect();
    Ok(Router {
        resolver,
        backends,
        categories,
        migrations,
        urgent: names::urgent(&naming.policy),
        urgent_groups: names::urgent_groups(&naming.policy),
        known_moved: KnownMoved::default(),
    })
}
