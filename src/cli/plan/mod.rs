//! `redis-fleet plan --policy NS/NAME [--add-instance FILE]... [--drain NAME]...
//! [--threshold N] [-o table|json]`: what a rebalance would move now — category, slots,
//! estimated keys and bytes, each instance's share before → after — or after a what-if, without
//! changing anything.
//!
//! Three steps:
//! 1. fetch (this file, the only I/O): the policy, the RedisInstances it selects, the routing
//!    ConfigMap; the what-ifs applied to the instances; a sample of each serving instance,
//!    read-only (DBSIZE, RANDOMKEY or SCAN, MEMORY USAGE), through the instance's Secrets like the
//!    operator does (`redis::endpoint`, `redis::sample`);
//! 2. [`preview`](mod@preview): the moves the operator would plan, composed as its rebalance step
//!    composes them (pure) — also the `-o json` document;
//! 3. [`render`](mod@render): the preview as text.
//!
//! An instance that cannot be sampled from here (a Redis reachable only inside the cluster)
//! is planned from its total memory, spread over its slots, and the output says so.

pub mod preview;
pub mod render;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ListParams};
use kube::{Client, ResourceExt};

use crate::api::cache_policy::{CachePolicy, config_map_name, selects};
use crate::api::quantity::format_bytes_human;
use crate::api::redis_instance::{InstancePhase, RedisInstance};
use crate::cli::OutputFormat;
use crate::cli::cluster::{self, ClusterArgs};
use crate::cli::status;
use crate::operator::cache_policy::build::InstanceView;
use crate::operator::cache_policy::{fetch, planning};
use crate::redis::connect::redact;
use crate::redis::endpoint::{
    Available, SecretSource, endpoint_of, read_secrets, referenced_secrets, target,
};
use crate::redis::sample::{SAMPLE_KEYS, sample_categories};
use crate::routing::config_map::table_of;
use crate::routing::keyspace::Resolver;
use crate::routing::table::RoutingTable;

pub use preview::{Preview, preview};
pub use render::render;

/// Arguments of `redis-fleet plan` (and `kubectl fleet plan`).
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct PlanArgs {
    /// The CachePolicy, as `namespace/name`.
    #[arg(long, value_name = "NS/NAME")]
    pub policy: String,

    /// What if this RedisInstance joined: a YAML file as you would apply it (other kinds in
    /// it, such as its Secret, are ignored). It counts as Ready and empty. Repeatable.
    #[arg(long = "add-instance", value_name = "FILE")]
    pub add_instance: Vec<PathBuf>,

    /// What if this instance drained (`spec.drain: true`). Repeatable.
    #[arg(long, value_name = "NAME")]
    pub drain: Vec<String>,

    /// What if the capacity threshold were this (percent).
    #[arg(long, value_name = "PERCENT", value_parser = clap::value_parser!(u32).range(1..=100))]
    pub threshold: Option<u32>,

    /// Output format: text, or the preview as JSON.
    #[arg(short = 'o', long, value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,

    /// Which cluster.
    #[command(flatten)]
    pub cluster: ClusterArgs,
}

/// Why `redis-fleet plan` could not preview.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Finding or reading the cluster failed (as for `redis-fleet status`).
    #[error(transparent)]
    Cluster(#[from] status::Error),
    /// `--policy` is not `namespace/name`.
    #[error("--policy takes namespace/name, not {0:?}")]
    PolicyArgument(String),
    /// An `--add-instance` file could not be used.
    #[error("{path}: {message}")]
    File {
        /// The file.
        path: String,
        /// What is wrong with it.
        message: String,
    },
    /// A `--drain` name is not one of the policy's instances.
    #[error("--drain {name}: the policy selects no such instance (it selects: {})", .selected.join(", "))]
    UnknownInstance {
        /// The name given.
        name: String,
        /// The instances the policy selects.
        selected: Vec<String>,
    },
    /// The routing ConfigMap is missing or unreadable.
    #[error("routing ConfigMap {namespace}/{name}: {message}")]
    Table {
        /// Namespace.
        namespace: String,
        /// ConfigMap name.
        name: String,
        /// What is wrong.
        message: String,
    },
    /// The preview could not be encoded (not expected for plain data).
    #[error("encoding the preview as JSON: {0}")]
    Json(#[from] serde_json::Error),
}

/// The whole command: connect, fetch, sample, preview, and format as asked. `width` is the
/// terminal's (`None`: lines are not wrapped).
pub async fn run(args: &PlanArgs, width: Option<usize>, color: bool) -> Result<String, Error> {
    let (namespace, name) = args
        .policy
        .split_once('/')
        .filter(|(ns, n)| !ns.is_empty() && !n.is_empty())
        .ok_or_else(|| Error::PolicyArgument(args.policy.clone()))?;
    let cluster = cluster::connect(&args.cluster)
        .await
        .map_err(status::Error::from)?;
    let objects = fetch_objects(&cluster.client, namespace, name)
        .await
        .map_err(|e| match e {
            Error::Cluster(status::Error::Api {
                message,
                transport: true,
                ..
            }) => Error::Cluster(
                cluster::Error::Unreachable {
                    server: cluster.server.clone(),
                    message,
                }
                .into(),
            ),
            other => other,
        })?;
    let added = args
        .add_instance
        .iter()
        .map(|path| read_instance_file(path))
        .collect::<Result<Vec<_>, _>>()?;
    let what = what_ifs(&objects, namespace, &added, &args.drain, args.threshold)?;
    let sample = sample_policy(
        &cluster.client,
        namespace,
        &objects.selected,
        &objects.table,
    )
    .await;
    let mut notes = what.notes;
    notes.extend(sample.notes);
    let threshold = args
        .threshold
        .unwrap_or_else(|| planning::threshold_percent(&objects.policy.spec));
    let p = preview(
        &preview::Inputs {
            policy: &objects.policy,
            views: &what.views,
            published: &objects.table,
            category_bytes: &sample.category_bytes,
            category_keys: &sample.category_keys,
            threshold_percent: threshold,
            now: Timestamp::now(),
        },
        what.what_if,
        notes,
    );
    match args.output {
        // A width nothing wraps at: every line is laid out in one.
        OutputFormat::Table => Ok(render(&p, width.unwrap_or(usize::MAX), color)),
        OutputFormat::Json => Ok(serde_json::to_string_pretty(&p)? + "\n"),
    }
}

/// What a preview reads from the API.
#[derive(Debug, Clone)]
pub struct Objects {
    /// The policy.
    pub policy: CachePolicy,
    /// The RedisInstances it selects, by name.
    pub selected: Vec<RedisInstance>,
    /// The published routing table.
    pub table: RoutingTable,
}

fn api_error(what: &'static str, namespace: &str) -> impl Fn(kube::Error) -> Error {
    let namespace = namespace.to_owned();
    move |e| {
        let (message, transport) = cluster::api_message(&e);
        Error::Cluster(status::Error::Api {
            what,
            namespace: Some(namespace.clone()),
            message,
            transport,
        })
    }
}

/// Reads the policy, the instances it selects and its routing table.
pub async fn fetch_objects(client: &Client, namespace: &str, name: &str) -> Result<Objects, Error> {
    let policies: Api<CachePolicy> = Api::namespaced(client.clone(), namespace);
    let policy = match policies.get_opt(name).await {
        Ok(Some(p)) => p,
        Ok(None) => {
            let available = policies
                .list(&ListParams::default())
                .await
                .map_err(api_error("CachePolicies", namespace))?
                .items
                .iter()
                .map(ResourceExt::name_any)
                .collect();
            return Err(status::Error::PolicyNotFound {
                namespace: namespace.to_owned(),
                name: name.to_owned(),
                available,
            }
            .into());
        }
        Err(kube::Error::Api(s)) if s.code == 404 => {
            return Err(status::Error::from(cluster::Error::CrdsMissing).into());
        }
        Err(e) => return Err(api_error("CachePolicy", namespace)(e)),
    };
    let instances: Api<RedisInstance> = Api::namespaced(client.clone(), namespace);
    let mut selected: Vec<RedisInstance> = instances
        .list(&ListParams::default())
        .await
        .map_err(api_error("RedisInstances", namespace))?
        .items
        .into_iter()
        .filter(|ri| ri.metadata.deletion_timestamp.is_none() && selects(&policy, ri))
        .collect();
    selected.sort_by_key(ResourceExt::name_any);
    let cm_name = config_map_name(&policy);
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    let table_error = |message: String| Error::Table {
        namespace: namespace.to_owned(),
        name: cm_name.clone(),
        message,
    };
    let cm = config_maps
        .get_opt(&cm_name)
        .await
        .map_err(|e| table_error(e.to_string()))?
        .ok_or_else(|| {
            table_error("not found: the operator has not published a table yet".into())
        })?;
    let table = match table_of(&cm) {
        Some(Ok(t)) => t,
        Some(Err(e)) => return Err(table_error(e.to_string())),
        None => return Err(table_error("it holds no routing table".into())),
    };
    Ok(Objects {
        policy,
        selected,
        table,
    })
}

/// The RedisInstances of an `--add-instance` file.
pub fn read_instance_file(path: &std::path::Path) -> Result<Vec<RedisInstance>, Error> {
    let file_error = |message: String| Error::File {
        path: path.display().to_string(),
        message,
    };
    let text = std::fs::read_to_string(path).map_err(|e| file_error(e.to_string()))?;
    parse_instances(&text).map_err(file_error)
}

/// The RedisInstances among the YAML documents of `text`.
pub fn parse_instances(text: &str) -> Result<Vec<RedisInstance>, String> {
    let docs: Vec<serde_json::Value> =
        serde_saphyr::from_multiple(text).map_err(|e| format!("not YAML: {e}"))?;
    let instances: Vec<RedisInstance> = docs
        .into_iter()
        .filter(|d| d["kind"] == "RedisInstance")
        .map(|d| serde_json::from_value(d).map_err(|e| format!("not a valid RedisInstance: {e}")))
        .collect::<Result<_, _>>()?;
    if instances.is_empty() {
        return Err("holds no RedisInstance".to_owned());
    }
    Ok(instances)
}

/// The instances with the what-ifs applied.
#[derive(Debug, Clone)]
pub struct WhatIfs {
    /// The policy's instances as the planner sees them.
    pub views: Vec<InstanceView>,
    /// What was assumed, for the output.
    pub what_if: Vec<String>,
    /// Notes on the what-ifs.
    pub notes: Vec<String>,
}

/// Applies `--add-instance`, `--drain` and `--threshold` to the fetched objects.
pub fn what_ifs(
    objects: &Objects,
    namespace: &str,
    added: &[Vec<RedisInstance>],
    drain: &[String],
    threshold: Option<u32>,
) -> Result<WhatIfs, Error> {
    let mut views: Vec<InstanceView> = objects
        .selected
        .iter()
        .map(|ri| fetch::view_of(ri, namespace))
        .collect();
    let mut what_if = Vec::new();
    let mut notes = Vec::new();
    for ri in added.iter().flatten() {
        let name = ri.name_any();
        if !selects(&objects.policy, ri) {
            notes.push(format!(
                "{name} is not selected by the policy (its labels do not match spec.instanceSelector): it would not join"
            ));
            continue;
        }
        let mut v = fetch::view_of(ri, namespace);
        // Planned as it would be once probed: Ready and empty.
        v.phase = InstancePhase::Ready;
        v.used_bytes = 0;
        let Some(capacity) = v.capacity_bytes else {
            notes.push(format!(
                "{name} has no spec.capacity (nor managed.maxMemory): the operator learns it from INFO maxmemory when it probes; give spec.capacity to plan with it"
            ));
            continue;
        };
        what_if.push(format!(
            "{name} joins ({}, {}, counted as empty)",
            v.tier
                .as_deref()
                .map_or_else(|| "no tier".to_owned(), |t| format!("tier {t}")),
            format_bytes_human(capacity)
        ));
        match views.iter_mut().find(|x| x.name == name) {
            Some(existing) => *existing = v,
            None => views.push(v),
        }
    }
    for name in drain {
        let Some(v) = views.iter_mut().find(|v| v.name == *name) else {
            return Err(Error::UnknownInstance {
                name: name.clone(),
                selected: views.iter().map(|v| v.name.clone()).collect(),
            });
        };
        v.drain = true;
        what_if.push(format!("{name} drains"));
    }
    if let Some(t) = threshold
        && i64::from(t) != i64::from(objects.policy.spec.balancing.capacity_threshold)
    {
        what_if.push(format!("the capacity threshold is {t}%"));
    }
    views.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(WhatIfs {
        views,
        what_if,
        notes,
    })
}

/// What sampling found.
#[derive(Debug, Clone, Default)]
pub struct Sampled {
    /// Bytes per (category, instance).
    pub category_bytes: BTreeMap<(String, String), u64>,
    /// Keys per (category, instance).
    pub category_keys: BTreeMap<(String, String), u64>,
    /// Instances not sampled, and why.
    pub notes: Vec<String>,
}

/// Samples the serving instances of the table (and draining ones), read-only, as the
/// operator does; an instance that cannot be reached from here is noted and left out.
pub async fn sample_policy(
    client: &Client,
    namespace: &str,
    selected: &[RedisInstance],
    table: &RoutingTable,
) -> Sampled {
    let mut out = Sampled::default();
    let Ok(resolver) = Resolver::new(table.clone()) else {
        out.notes
            .push("the routing table cannot be resolved: nothing was sampled".to_owned());
        return out;
    };
    let mut unsampled = Vec::new();
    for ri in selected {
        let name = ri.name_any();
        let serving = ri
            .status
            .as_ref()
            .and_then(|s| s.phase)
            .is_some_and(InstancePhase::serves_traffic);
        if !serving || !(table.instances.contains_key(&name) || ri.spec.drain) {
            continue;
        }
        let endpoint = endpoint_of(ri, namespace);
        let probe = async {
            let wanted = referenced_secrets(&RoutingTable {
                instances: [(name.clone(), endpoint.clone())].into(),
                ..table.clone()
            });
            let values = read_secrets(
                &SecretSource::Api(namespace.to_owned()),
                Some(client),
                &wanted,
            )
            .await?;
            let t = target(
                &endpoint,
                &Available {
                    instance: &name,
                    values: &values,
                },
            )
            .await?;
            let mut conn = t
                .connect(Duration::from_secs(3))
                .await
                .map_err(|e| redact(&e.to_string(), &t.credentials))?;
            let s = tokio::time::timeout(
                Duration::from_secs(10),
                sample_categories(&mut conn, &resolver, &name, SAMPLE_KEYS),
            )
            .await
            .map_err(|_| "sampling timed out".to_owned())?
            .map_err(|e| redact(&e.to_string(), &t.credentials))?;
            Ok::<_, String>(s)
        };
        match probe.await {
            Ok(s) => {
                for (cat, bytes) in s.category_bytes {
                    out.category_bytes.insert((cat, name.clone()), bytes);
                }
                for (cat, keys) in s.category_keys {
                    out.category_keys.insert((cat, name.clone()), keys);
                }
            }
            Err(e) => unsampled.push(format!("{name} ({e})")),
        }
    }
    if !unsampled.is_empty() {
        out.notes.push(format!(
            "not sampled from here: {} — planned from total memory spread evenly over their slots, without key counts",
            unsampled.join(", ")
        ));
    }
    out
}
