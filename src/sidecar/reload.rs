//! Keeping the routing table current: from a mounted file (polled: the kubelet updates
//! ConfigMap volumes by swapping a symlink, which file watches miss) or from the API (a watch
//! on the ConfigMap), with credentials from mounted Secret files (`<dir>/<secret>/<key>`, or
//! `<dir>/<secret>.<key>` where the policy's credentials Secret is mounted) or, in API mode
//! without a secrets dir, from the Secrets themselves.
//!
//! Credentials are read again at every poll, and the fingerprint of a version covers them: a
//! table that waits for a Secret file the kubelet has not written yet loads once it is there.
//!
//! A new version is built completely, then swapped in; a table that cannot be read is logged
//! and counted, and the previous one stays in use.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::Api;
use kube::runtime::{WatchStreamExt, watcher};
use tracing::{info, warn};

use crate::redis::endpoint::{SecretSource, read_secrets, referenced_secrets};
use crate::routing::config_map::table_text;
use crate::routing::encoding::decode;
use crate::routing::table::{RoutingTable, TABLE_KEY, fnv1a64};

use super::backend::BackendOptions;
use super::router::{self, BackendRegistry};
use super::session::Shared;

/// Where the routing table comes from.
#[derive(Debug, Clone)]
pub enum TableSource {
    /// A mounted ConfigMap key.
    File(PathBuf),
    /// A ConfigMap read through the API.
    ConfigMap {
        /// Namespace.
        namespace: String,
        /// Name.
        name: String,
    },
}

/// Loads tables and swaps them into `shared`.
pub struct Reloader {
    shared: Arc<Shared>,
    registry: BackendRegistry,
    options: BackendOptions,
    secrets: SecretSource,
    client: Option<kube::Client>,
    /// Fingerprint of the table text and secret values last applied.
    applied: Option<u64>,
}

impl Reloader {
    /// A reloader for `shared`.
    pub fn new(
        shared: Arc<Shared>,
        options: BackendOptions,
        secrets: SecretSource,
        client: Option<kube::Client>,
    ) -> Self {
        Self {
            shared,
            registry: BackendRegistry::default(),
            options,
            secrets,
            client,
            applied: None,
        }
    }

    /// Parses `text`, reads the credentials it needs and swaps the new router in. Nothing
    /// happens when neither the table nor the credentials changed.
    pub async fn apply(&mut self, text: &str) -> Result<bool, String> {
        let table = RoutingTable::from_json(text).map_err(|e| e.to_string())?;
        let wanted = referenced_secrets(&table);
        let secrets = read_secrets(&self.secrets, self.client.as_ref(), &wanted).await?;
        let mut fingerprint_input = text.as_bytes().to_vec();
        for (k, v) in &secrets {
            fingerprint_input.extend_from_slice(k.name.as_bytes());
            fingerprint_input.extend_from_slice(k.key.as_bytes());
            fingerprint_input.extend_from_slice(v);
        }
        let fingerprint = fnv1a64(&fingerprint_input);
        if self.applied == Some(fingerprint) {
            return Ok(false);
        }
        let version = table.version;
        if let Some(current) = self.shared.router.load_full()
            && version < current.version()
        {
            return Err(format!(
                "routing table v{version} is older than v{} in use",
                current.version()
            ));
        }
        let router = Arc::new(
            router::build(
                table,
                &secrets,
                &self.registry,
                &self.options,
                &self.shared.metrics,
                &self.shared.id,
                &self.shared.fleet,
            )
            .await?,
        );
        self.shared.fleet.set_instances(router.resolver.instances());
        self.shared.router.store(Some(router.clone()));
        router.installed();
        self.shared.metrics.routing_version.set(version as i64);
        self.shared.metrics.reloads.inc();
        self.applied = Some(fingerprint);
        info!(version, "routing table loaded");
        Ok(true)
    }

    fn failed(&self, error: &str) {
        self.shared.metrics.reload_errors.inc();
        warn!(%error, "keeping the previous routing table");
    }

    /// Polls `path` every `every` (and re-reads credentials at the same pace), forever.
    pub async fn watch_file(mut self, path: PathBuf, every: Duration) {
        let mut last_text: Option<String> = None;
        let mut last_error: Option<String> = None;
        loop {
            match read_file(&path) {
                Ok(text) => {
                    let changed = last_text.as_deref() != Some(text.as_str());
                    match self.apply(&text).await {
                        Ok(_) => last_error = None,
                        Err(e) => {
                            if changed || last_error.as_deref() != Some(e.as_str()) {
                                self.failed(&e);
                            }
                            last_error = Some(e);
                        }
                    }
                    last_text = Some(text);
                }
                Err(e) => {
                    if last_error.as_deref() != Some(e.as_str()) {
                        self.failed(&e);
                    }
                    last_error = Some(e);
                }
            }
            tokio::time::sleep(every).await;
        }
    }

    /// Watches the ConfigMap through the API, re-reading credentials every `every`, forever.
    pub async fn watch_config_map(
        mut self,
        client: kube::Client,
        namespace: String,
        name: String,
        every: Duration,
    ) {
        let api: Api<ConfigMap> = Api::namespaced(client, &namespace);
        let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
        let mut events = watcher(api, config)
            .default_backoff()
            .applied_objects()
            .boxed();
        let mut latest: Option<String> = None;
        let mut tick = tokio::time::interval(every);
        // After a slow read, the next tick comes `every` later, not all the missed ones at once.
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                ev = events.next() => match ev {
                    Some(Ok(cm)) => {
                        match table_text(&cm) {
                            Some(Ok(text)) => latest = Some(text.into_owned()),
                            Some(Err(e)) => self.failed(&format!("ConfigMap {namespace}/{name}: {e}")),
                            None => self.failed(&format!("ConfigMap {namespace}/{name} has no {TABLE_KEY}")),
                        }
                    }
                    Some(Err(e)) => {
                        warn!(error = %e, "watching the routing ConfigMap");
                        continue;
                    }
                    None => return,
                },
                _ = tick.tick() => {}
            }
            if let Some(text) = latest.clone()
                && let Err(e) = self.apply(&text).await
            {
                self.failed(&e);
            }
        }
    }
}

impl std::fmt::Debug for Reloader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reloader")
            .field("applied", &self.applied)
            .finish_non_exhaustive()
    }
}

/// The table's text in a mounted file: plain JSON (schema 1) or gzip (schema 2, from
/// `binaryData`).
fn read_file(path: &Path) -> Result<String, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    decode(&bytes).map_err(|e| format!("reading {}: {e}", path.display()))
}
