//! `redis-fleet where KEY… [-n NS] [--policy NAME] [-o table|json]` (also `kubectl fleet
//! where`): which category, slot and instance each key lives on now, and whether its range is
//! migrating — read from the policy's routing ConfigMap and resolved exactly as the sidecar
//! resolves it.
//!
//! Two steps: [`fetch`] reads the policy and its routing table (the only I/O), [`locate`]
//! resolves the keys and draws the answer (pure).

pub mod locate;
#[cfg(test)]
mod tests;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, ListParams};
use kube::{Client, ResourceExt};

use crate::api::cache_policy::{CachePolicy, config_map_name};
use crate::routing::Resolver;
use crate::routing::config_map::table_of;
use crate::routing::table::TABLE_KEY;

use super::OutputFormat;
use super::cluster::{self, ClusterArgs};

pub use locate::{Answer, KeyLocation, KeyState, answer, locate, render};

/// Arguments of `redis-fleet where` (and `kubectl fleet where`).
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct WhereArgs {
    /// The keys, as an application sends them (`user:42`, `cart:{user42}:items`).
    #[arg(value_name = "KEY", required = true)]
    pub keys: Vec<String>,

    /// Namespace of the CachePolicy. Default: the namespace of the kubeconfig context (or of
    /// the service account in a pod).
    #[arg(short = 'n', long)]
    pub namespace: Option<String>,

    /// The CachePolicy whose routing table to read. Default: the namespace's only one.
    #[arg(short = 'p', long)]
    pub policy: Option<String>,

    /// Output format: a short table, or the same answer as JSON.
    #[arg(short = 'o', long, value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,

    /// Which cluster.
    #[command(flatten)]
    pub cluster: ClusterArgs,
}

/// Why `redis-fleet where` could not answer.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No usable cluster.
    #[error(transparent)]
    Cluster(#[from] cluster::Error),
    /// The namespace has no CachePolicy.
    #[error("there is no CachePolicy in namespace {namespace:?}")]
    NoPolicy {
        /// Namespace searched.
        namespace: String,
    },
    /// `--policy` names no CachePolicy.
    #[error("CachePolicy {name:?} not found in namespace {namespace:?} ({})", policies_hint(.available))]
    PolicyNotFound {
        /// Namespace searched.
        namespace: String,
        /// Policy asked for.
        name: String,
        /// Policies that exist there.
        available: Vec<String>,
    },
    /// Several policies and no `--policy`.
    #[error("namespace {namespace:?} has several CachePolicies ({}): pick one with --policy", available.join(", "))]
    WhichPolicy {
        /// Namespace searched.
        namespace: String,
        /// Policies that exist there.
        available: Vec<String>,
    },
    /// The routing table is not there yet.
    #[error("CachePolicy {policy:?} has no routing table yet: {why}")]
    NotPublished {
        /// The policy.
        policy: String,
        /// What is missing.
        why: String,
    },
    /// The routing table cannot be used (the sidecar would refuse it too).
    #[error("routing ConfigMap {config_map}: {message}")]
    Table {
        /// The ConfigMap.
        config_map: String,
        /// What is wrong.
        message: String,
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
    /// The answer could not be encoded (not expected for plain data).
    #[error("encoding the answer as JSON: {0}")]
    Json(#[from] serde_json::Error),
}

fn policies_hint(available: &[String]) -> String {
    if available.is_empty() {
        "there is no CachePolicy in that namespace".to_owned()
    } else {
        format!("policies there: {}", available.join(", "))
    }
}

/// The policy to read when none was named: the namespace's only one.
pub fn only_policy(namespace: &str, mut available: Vec<String>) -> Result<String, Error> {
    available.sort();
    match available.len() {
        0 => Err(Error::NoPolicy {
            namespace: namespace.to_owned(),
        }),
        1 => Ok(available.remove(0)),
        _ => Err(Error::WhichPolicy {
            namespace: namespace.to_owned(),
            available,
        }),
    }
}

/// The whole command: connect, read the table, resolve the keys. Returns what to print.
pub async fn run(args: &WhereArgs) -> Result<String, Error> {
    let cluster = cluster::connect(&args.cluster).await?;
    let namespace = args
        .namespace
        .clone()
        .unwrap_or_else(|| cluster.default_namespace.clone());
    let (policy, config_map, resolver) =
        match fetch(&cluster.client, &namespace, args.policy.as_deref()).await {
            Ok(found) => found,
            Err(Error::Api {
                message,
                transport: true,
                ..
            }) => {
                return Err(cluster::Error::Unreachable {
                    server: cluster.server,
                    message,
                }
                .into());
            }
            Err(other) => return Err(other),
        };
    let answer = answer(&resolver, &namespace, &policy, &config_map, &args.keys);
    match args.output {
        OutputFormat::Table => Ok(render(&answer)),
        OutputFormat::Json => Ok(serde_json::to_string_pretty(&answer)? + "\n"),
    }
}

fn api_error(what: &'static str, namespace: &str) -> impl Fn(kube::Error) -> Error {
    let namespace = namespace.to_owned();
    move |e| {
        let (message, transport) = cluster::api_message(&e);
        Error::Api {
            what,
            namespace: namespace.clone(),
            message,
            transport,
        }
    }
}

/// Reads the policy (the one named, else the namespace's only one) and its routing table as
/// the sidecar does (`routing.json` of its ConfigMap, text or gzip'ed), and compiles the
/// table. Returns the policy's name, the ConfigMap's and the resolver.
pub async fn fetch(
    client: &Client,
    namespace: &str,
    policy: Option<&str>,
) -> Result<(String, String, Resolver), Error> {
    let policies: Api<CachePolicy> = Api::namespaced(client.clone(), namespace);
    let list = |policies: Api<CachePolicy>| async move {
        match policies.list(&ListParams::default()).await {
            Ok(list) => Ok(list
                .items
                .iter()
                .map(ResourceExt::name_any)
                .collect::<Vec<_>>()),
            Err(kube::Error::Api(s)) if s.code == 404 => Err(cluster::Error::CrdsMissing.into()),
            Err(e) => Err(api_error("CachePolicies", namespace)(e)),
        }
    };
    let name = match policy {
        Some(name) => name.to_owned(),
        None => only_policy(namespace, list(policies.clone()).await?)?,
    };
    let Some(policy) = policies
        .get_opt(&name)
        .await
        .map_err(api_error("CachePolicy", namespace))?
    else {
        return Err(Error::PolicyNotFound {
            namespace: namespace.to_owned(),
            name,
            available: list(policies).await?,
        });
    };
    let config_map = config_map_name(&policy);
    let cm = Api::<ConfigMap>::namespaced(client.clone(), namespace)
        .get_opt(&config_map)
        .await
        .map_err(api_error("ConfigMap", namespace))?;
    let resolver = resolver_of(&name, &config_map, cm.as_ref())?;
    Ok((name, config_map, resolver))
}

/// The routing table of policy `policy` in its ConfigMap `config_map` (`None`: not found),
/// read and compiled as the sidecar does.
pub fn resolver_of(
    policy: &str,
    config_map: &str,
    cm: Option<&ConfigMap>,
) -> Result<Resolver, Error> {
    let not_published = |why: String| Error::NotPublished {
        policy: policy.to_owned(),
        why,
    };
    let cm = cm.ok_or_else(|| not_published(format!("ConfigMap {config_map} not found")))?;
    let unusable = |message: String| Error::Table {
        config_map: config_map.to_owned(),
        message,
    };
    let table = table_of(cm)
        .ok_or_else(|| not_published(format!("ConfigMap {config_map} has no {TABLE_KEY}")))?
        .map_err(|e| unusable(e.to_string()))?;
    Resolver::new(table).map_err(|e| unusable(e.to_string()))
}
