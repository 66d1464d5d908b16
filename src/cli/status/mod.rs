//! `redis-fleet status [-n NS | -A] [POLICY] [-o table|json]` (also `kubectl fleet status`): a
//! terminal view of a namespace's fleet, of every namespace's, or of one CachePolicy —
//! instances with usage bars against the capacity threshold, categories and where their slots
//! live, the routing version and the sidecars on it, failovers, migrations, rebalance
//! progress, advice and unhealthy conditions.
//!
//! Three steps, one module each, and only the first touches the API server:
//! 1. [`fetch`](mod@fetch) reads RedisInstances, CachePolicies and their routing ConfigMaps;
//! 2. [`build`](mod@build) turns those objects into a [`Snapshot`] ([`snapshot`], pure) —
//!    also the `-o json` document;
//! 3. [`render`](mod@render) draws a snapshot as text for a terminal of a given width (pure),
//!    with the terminal kit of `cli/term.rs` (styles, cells, wrapping, bars).

pub mod build;
pub mod fetch;
pub mod render;
pub mod snapshot;
#[cfg(test)]
mod tests;

use jiff::Timestamp;
use kube::Client;

pub use super::OutputFormat;
use super::cluster::{self, ClusterArgs};

pub use build::build;
pub use fetch::Objects;
pub use render::render;
pub use snapshot::*;

/// `schemaVersion` of the `-o json` document. New optional fields may be added without
/// bumping it; renaming or removing one bumps it.
pub const SCHEMA_VERSION: u32 = 1;

// ---------------------------------------------------------------------------------------------
// Command line

/// Arguments of `redis-fleet status` (and `kubectl fleet status`).
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct StatusArgs {
    /// Namespace to show. Default: the namespace of the kubeconfig context (or of the service
    /// account in a pod).
    #[arg(short = 'n', long)]
    pub namespace: Option<String>,

    /// Show every namespace that has a CachePolicy or a RedisInstance (`-n` is then ignored,
    /// as by kubectl).
    #[arg(short = 'A', long, conflicts_with = "policy")]
    pub all_namespaces: bool,

    /// Show only this CachePolicy. Default: every policy of the namespace, and the instances
    /// no policy selects.
    #[arg(value_name = "POLICY")]
    pub policy: Option<String>,

    /// Output format: a terminal view, or the same snapshot as JSON.
    #[arg(short = 'o', long, value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,

    /// Which cluster.
    #[command(flatten)]
    pub cluster: ClusterArgs,
}

/// Why `redis-fleet status` could not show anything.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No usable cluster.
    #[error(transparent)]
    Cluster(#[from] cluster::Error),
    /// The POLICY argument names no CachePolicy.
    #[error("CachePolicy {name:?} not found in namespace {namespace:?} ({})", available_hint(.available))]
    PolicyNotFound {
        /// Namespace searched.
        namespace: String,
        /// Policy asked for.
        name: String,
        /// Policies that exist there.
        available: Vec<String>,
    },
    /// The API server refused a request (permissions, …).
    #[error("reading {what} {}: {message}", scope(.namespace))]
    Api {
        /// What was read.
        what: &'static str,
        /// Namespace; `None` for all namespaces.
        namespace: Option<String>,
        /// The API server's message.
        message: String,
        /// Whether the request never got an answer (connection refused, TLS, timeout).
        transport: bool,
    },
    /// The snapshot could not be encoded (not expected for plain data).
    #[error("encoding the snapshot as JSON: {0}")]
    Json(#[from] serde_json::Error),
}

fn available_hint(available: &[String]) -> String {
    if available.is_empty() {
        "there is no CachePolicy in that namespace".to_owned()
    } else {
        format!("policies there: {}", available.join(", "))
    }
}

fn scope(namespace: &Option<String>) -> String {
    match namespace {
        Some(ns) => format!("in namespace {ns:?}"),
        None => "in all namespaces".to_owned(),
    }
}

/// The whole command: connect, fetch, and format as asked. Returns what to print; `width` is
/// the terminal's (`None`: lines are not wrapped).
pub async fn run(args: &StatusArgs, width: Option<usize>, color: bool) -> Result<String, Error> {
    let cluster = cluster::connect(&args.cluster).await?;
    let unreachable = |e| match e {
        Error::Api {
            message,
            transport: true,
            ..
        } => cluster::Error::Unreachable {
            server: cluster.server.clone(),
            message,
        }
        .into(),
        other => other,
    };
    // A width nothing wraps at: the views then lay every line out in one.
    let width = width.unwrap_or(usize::MAX);
    if args.all_namespaces {
        let snapshots = fetch_all(&cluster.client).await.map_err(unreachable)?;
        return match args.output {
            OutputFormat::Table => Ok(render_all(&snapshots, width, color)),
            OutputFormat::Json => Ok(to_json_all(snapshots)? + "\n"),
        };
    }
    let namespace = args
        .namespace
        .clone()
        .unwrap_or_else(|| cluster.default_namespace.clone());
    let snapshot = fetch(&cluster.client, &namespace, args.policy.as_deref())
        .await
        .map_err(unreachable)?;
    match args.output {
        OutputFormat::Table => Ok(render(&snapshot, width, color)),
        OutputFormat::Json => Ok(to_json(&snapshot)? + "\n"),
    }
}

/// Reads what a snapshot of `namespace` (or of one policy there) needs, and builds it.
pub async fn fetch(
    client: &Client,
    namespace: &str,
    policy: Option<&str>,
) -> Result<Snapshot, Error> {
    let objects = fetch::objects(client, namespace, policy).await?;
    Ok(build(namespace, policy, &objects, Timestamp::now()))
}

/// A snapshot of every namespace that has a CachePolicy or a RedisInstance, by namespace.
pub async fn fetch_all(client: &Client) -> Result<Vec<Snapshot>, Error> {
    let by_namespace = fetch::all_namespaces(client).await?;
    let now = Timestamp::now();
    Ok(by_namespace
        .iter()
        .map(|(namespace, objects)| build(namespace, None, objects, now))
        .collect())
}

/// The `-A` view: each namespace's, one after the other.
pub fn render_all(snapshots: &[Snapshot], width: usize, color: bool) -> String {
    if snapshots.is_empty() {
        return "No CachePolicy and no RedisInstance in any namespace.\n".to_owned();
    }
    snapshots
        .iter()
        .map(|s| render(s, width, color))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The snapshot as pretty-printed JSON (the `-o json` output).
pub fn to_json(snapshot: &Snapshot) -> Result<String, Error> {
    Ok(serde_json::to_string_pretty(snapshot)?)
}

/// Every namespace's snapshot as one pretty-printed JSON document (the `-A -o json` output).
pub fn to_json_all(snapshots: Vec<Snapshot>) -> Result<String, Error> {
    Ok(serde_json::to_string_pretty(&AllNamespaces {
        schema_version: SCHEMA_VERSION,
        namespaces: snapshots,
    })?)
}
