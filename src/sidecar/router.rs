//! One routing table version, ready to route: the resolver, a backend per instance and the
//! per-category counters. A new version is built beside the old one and swapped in
//! atomically; backends whose endpoint and credentials did not change are reused, so a reload
//! drops no connection, and requests in flight finish on the version they started with.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

use crate::redis::connect::Target;
use crate::redis::endpoint::{self, Available, SecretValues};
use crate::routing::keyspace::{InstanceId, Resolver};
use crate::routing::table::RoutingTable;

use super::backend::{Backend, BackendOptions};
use super::metrics::{CategoryMetrics, SidecarMetrics};

/// A routing table version with its backends.
#[derive(Debug)]
pub struct Router {
    /// Key → category → slot → instance.
    pub resolver: Resolver,
    /// Backends, indexed by [`InstanceId`].
    pub backends: Vec<Arc<Backend>>,
    /// Counters, indexed by category.
    pub categories: Vec<CategoryMetrics>,
}

impl Router {
    /// The backend of `id`.
    pub fn backend(&self, id: InstanceId) -> &Arc<Backend> {
        &self.backends[usize::from(id)]
    }

    /// Table version.
    pub fn version(&self) -> u64 {
        self.resolver.version()
    }
}

/// Live backends by instance name and target fingerprint, so that a new table version reuses
/// the connections of the previous one.
#[derive(Debug, Default)]
pub struct BackendRegistry {
    backends: Mutex<HashMap<(String, u64), Weak<Backend>>>,
}

impl BackendRegistry {
    fn get_or_start(
        &self,
        name: &str,
        target: Target,
        options: &BackendOptions,
        metrics: &SidecarMetrics,
    ) -> Arc<Backend> {
        let key = (name.to_owned(), target.fingerprint());
        let mut map = self.backends.lock().unwrap_or_else(|e| e.into_inner());
        map.retain(|_, w| w.strong_count() > 0);
        if let Some(b) = map.get(&key).and_then(Weak::upgrade) {
            return b;
        }
        let backend = Backend::start(name, target, options.clone(), metrics.backend(name));
        map.insert(key, Arc::downgrade(&backend));
        backend
    }
}

/// Builds the router of `table`.
pub async fn build(
    table: RoutingTable,
    secrets: &SecretValues,
    registry: &BackendRegistry,
    options: &BackendOptions,
    metrics: &SidecarMetrics,
) -> Result<Router, String> {
    let resolver = Resolver::new(table).map_err(|e| e.to_string())?;
    let mut backends = Vec::with_capacity(resolver.instances().len());
    for name in resolver.instances() {
        let endpoint = &resolver.table().instances[name];
        let available = Available {
            instance: name,
            values: secrets,
        };
        let target = endpoint::target(endpoint, &available).await?;
        backends.push(registry.get_or_start(name, target, options, metrics));
    }
    let categories = resolver
        .categories()
        .iter()
        .map(|c| metrics.category(&c.name))
        .collect();
    Ok(Router {
        resolver,
        backends,
        categories,
    })
}
