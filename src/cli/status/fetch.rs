//! Fetch, the only step of `redis-fleet status` that talks to the API server: the
//! RedisInstances, the CachePolicies and their routing ConfigMaps of one namespace, or of
//! every namespace that has any.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, ListParams};
use kube::{Client, ResourceExt};

use crate::api::cache_policy::{CachePolicy, config_map_name};
use crate::api::redis_instance::RedisInstance;

use super::Error;
use crate::cli::cluster;

/// The objects [`build`](super::build()) works from.
#[derive(Debug, Clone, Default)]
pub struct Objects {
    /// RedisInstances of the namespace.
    pub instances: Vec<RedisInstance>,
    /// The CachePolicies shown (all of the namespace, or the one asked for).
    pub policies: Vec<CachePolicy>,
    /// Routing ConfigMaps by name; absent when not found, `Err` when unreadable.
    pub config_maps: BTreeMap<String, Result<ConfigMap, String>>,
}

/// The error of reading `what` in `namespace` (`None`: in all namespaces).
fn api_error(what: &'static str, namespace: Option<&str>) -> impl Fn(kube::Error) -> Error {
    let namespace = namespace.map(str::to_owned);
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

/// Reads what a snapshot of `namespace` (or of one policy there) needs.
pub async fn objects(
    client: &Client,
    namespace: &str,
    policy: Option<&str>,
) -> Result<Objects, Error> {
    let instances_api: Api<RedisInstance> = Api::namespaced(client.clone(), namespace);
    let policies_api: Api<CachePolicy> = Api::namespaced(client.clone(), namespace);
    let lp = ListParams::default();

    let instances = match instances_api.list(&lp).await {
        Ok(list) => list.items,
        Err(kube::Error::Api(s)) if s.code == 404 => return Err(cluster::Error::CrdsMissing.into()),
        Err(e) => return Err(api_error("RedisInstances", Some(namespace))(e)),
    };
    let policies = match policy {
        Some(name) => {
            let found = policies_api
                .get_opt(name)
                .await
                .map_err(api_error("CachePolicy", Some(namespace)))?;
            match found {
                Some(p) => vec![p],
                None => {
                    let available = policies_api
                        .list(&lp)
                        .await
                        .map_err(api_error("CachePolicies", Some(namespace)))?
                        .items
                        .iter()
                        .map(ResourceExt::name_any)
                        .collect();
                    return Err(Error::PolicyNotFound {
                        namespace: namespace.to_owned(),
                        name: name.to_owned(),
                        available,
                    });
                }
            }
        }
        None => {
            policies_api
                .list(&lp)
                .await
                .map_err(api_error("CachePolicies", Some(namespace)))?
                .items
        }
    };
    let config_maps = config_maps(client, namespace, &policies).await;
    Ok(Objects {
        instances,
        policies,
        config_maps,
    })
}

/// Reads the objects of every namespace that has a RedisInstance or a CachePolicy, by
/// namespace: two cluster-wide lists, then each policy's routing ConfigMap.
pub async fn all_namespaces(client: &Client) -> Result<BTreeMap<String, Objects>, Error> {
    let lp = ListParams::default();
    let instances = match Api::<RedisInstance>::all(client.clone()).list(&lp).await {
        Ok(list) => list.items,
        Err(kube::Error::Api(s)) if s.code == 404 => return Err(cluster::Error::CrdsMissing.into()),
        Err(e) => return Err(api_error("RedisInstances", None)(e)),
    };
    let policies = Api::<CachePolicy>::all(client.clone())
        .list(&lp)
        .await
        .map_err(api_error("CachePolicies", None))?
        .items;
    let mut by_namespace: BTreeMap<String, Objects> = BTreeMap::new();
    for ri in instances {
        let ns = ri.namespace().unwrap_or_default();
        by_namespace.entry(ns).or_default().instances.push(ri);
    }
    for p in policies {
        let ns = p.namespace().unwrap_or_default();
        by_namespace.entry(ns).or_default().policies.push(p);
    }
    for (namespace, objects) in &mut by_namespace {
        objects.config_maps = config_maps(client, namespace, &objects.policies).await;
    }
    Ok(by_namespace)
}

/// The routing ConfigMaps of `policies`, by name; one that cannot be read is kept as its
/// error (not fatal: a user may see policies without being allowed to read ConfigMaps).
async fn config_maps(
    client: &Client,
    namespace: &str,
    policies: &[CachePolicy],
) -> BTreeMap<String, Result<ConfigMap, String>> {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    let mut config_maps = BTreeMap::new();
    for p in policies {
        let name = config_map_name(p);
        match api.get_opt(&name).await {
            Ok(Some(cm)) => {
                config_maps.insert(name, Ok(cm));
            }
            Ok(None) => {}
            Err(e) => {
                let message = match api_error("ConfigMap", Some(namespace))(e) {
                    Error::Api { message, .. } => message,
                    other => other.to_string(),
                };
                config_maps.insert(name, Err(message));
            }
        }
    }
    config_maps
}
