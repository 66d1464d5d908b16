//! `redis-fleet status [-n NS] [POLICY] [-o table|json]`: a terminal view of a namespace's
//! fleet or of one CachePolicy — instances with usage bars against the capacity threshold,
//! categories and where their slots live, the routing version and the sidecars on it,
//! failovers, migrations, rebalance progress, advice and unhealthy conditions.
//!
//! Three steps, one module each, and only the first touches the API server:
//! 1. [`fetch`](mod@fetch) reads RedisInstances, CachePolicies and their routing ConfigMaps;
//! 2. [`build`](mod@build) turns those objects into a [`Snapshot`] ([`snapshot`], pure) —
//!    also the `-o json` document;
//! 3. [`render`](mod@render) draws a snapshot as text for a terminal of a given width (pure),
//!    with the terminal kit of `term.rs` (styles, cells, wrapping, bars).

pub mod build;
pub mod fetch;
pub mod render;
pub mod snapshot;
mod term;
#[cfg(test)]
mod tests;

use std::io::IsTerminal;
use std::time::Duration;

use jiff::Timestamp;
use kube::Client;

pub use build::build;
pub use fetch::Objects;
pub use render::render;
pub use snapshot::*;

/// `schemaVersion` of the `-o json` document. New optional fields may be added without
/// bumping it; renaming or removing one bumps it.
pub const SCHEMA_VERSION: u32 = 1;

/// Terminal width used when `COLUMNS` is unset or not a number.
pub const DEFAULT_WIDTH: usize = 100;

// ---------------------------------------------------------------------------------------------
// Command line

/// Arguments of `redis-fleet status`.
#[derive(Debug, Clone, clap::Args)]
pub struct StatusArgs {
    /// Namespace to show. Default: the namespace of the current kubeconfig context (or of the
    /// service account in a pod).
    #[arg(short = 'n', long)]
    pub namespace: Option<String>,

    /// Show only this CachePolicy. Default: every policy of the namespace, and the instances
    /// no policy selects.
    #[arg(value_name = "POLICY")]
    pub policy: Option<String>,

    /// Output format: a terminal view, or the same snapshot as JSON.
    #[arg(short = 'o', long, value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
}

/// `-o` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum OutputFormat {
    /// Human-readable view with usage bars.
    #[default]
    Table,
    /// The same snapshot as pretty-printed JSON, with a `schemaVersion`.
    Json,
}

/// Why `redis-fleet status` could not show anything.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Neither an in-cluster service account nor a usable kubeconfig.
    #[error(
        "no Kubernetes cluster found (tried KUBECONFIG, ~/.kube/config and the in-cluster service account): {0}"
    )]
    NoCluster(String),
    /// The API server did not answer.
    #[error("cannot reach the Kubernetes API server at {server}: {message}")]
    Unreachable {
        /// Cluster URL.
        server: String,
        /// Cause.
        message: String,
    },
    /// The CRDs are not installed.
    #[error(
        "the redis-fleet resource types are not installed in this cluster (install them with `kubectl apply --server-side -f crds/`)"
    )]
    CrdsMissing,
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
    #[error("reading {what} in namespace {namespace:?}: {message}")]
    Api {
        /// What was read.
        what: &'static str,
        /// Namespace.
        namespace: String,
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

/// A cluster connection found the usual way.
#[derive(Clone)]
pub struct Cluster {
    /// The client.
    pub client: Client,
    /// The kubeconfig context's namespace (or the service account's).
    pub default_namespace: String,
    /// The API server URL, for messages.
    pub server: String,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("default_namespace", &self.default_namespace)
            .field("server", &self.server)
            .finish_non_exhaustive()
    }
}

/// Connects the usual way (`KUBECONFIG` / `~/.kube/config`, else the in-cluster service
/// account), with timeouts so that an unreachable cluster fails instead of hanging.
pub async fn connect() -> Result<Cluster, Error> {
    let mut config = kube::Config::infer()
        .await
        .map_err(|e| Error::NoCluster(e.to_string()))?;
    config.connect_timeout = Some(Duration::from_secs(10));
    config.read_timeout = Some(Duration::from_secs(30));
    let default_namespace = config.default_namespace.clone();
    let server = config.cluster_url.to_string();
    let client = Client::try_from(config).map_err(|e| Error::NoCluster(e.to_string()))?;
    Ok(Cluster {
        client,
        default_namespace,
        server,
    })
}

/// Whether to use ANSI colors: stdout is a terminal and `NO_COLOR` is unset or empty.
pub fn color_from_env() -> bool {
    std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// Terminal width: `COLUMNS`, else [`DEFAULT_WIDTH`].
pub fn width_from_env() -> usize {
    std::env::var("COLUMNS")
        .ok()
        .and_then(|c| c.trim().parse::<usize>().ok())
        .filter(|w| *w > 0)
        .unwrap_or(DEFAULT_WIDTH)
}

/// The whole command: connect, fetch, and format as asked. Returns what to print.
pub async fn run(args: &StatusArgs, width: usize, color: bool) -> Result<String, Error> {
    let cluster = connect().await?;
    let namespace = args
        .namespace
        .clone()
        .unwrap_or_else(|| cluster.default_namespace.clone());
    let snapshot = fetch(&cluster.client, &namespace, args.policy.as_deref())
        .await
        .map_err(|e| match e {
            Error::Api {
                message,
                transport: true,
                ..
            } => Error::Unreachable {
                server: cluster.server.clone(),
                message,
            },
            other => other,
        })?;
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

/// The snapshot as pretty-printed JSON (the `-o json` output).
pub fn to_json(snapshot: &Snapshot) -> Result<String, Error> {
    Ok(serde_json::to_string_pretty(snapshot)?)
}
