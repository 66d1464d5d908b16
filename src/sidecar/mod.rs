//! The sidecar: a RESP proxy on 127.0.0.1:6379 that makes the fleet look like one Redis.
//! Every command is routed by the routing table to the instance that serves its key.
//!
//! - [`command`], [`ttl`]: the command table and TTL rules (pure; the RESP codec they speak
//!   is [`crate::redis::resp`]);
//! - [`backend`]: pipelined connections to instances; [`router`]: one table version;
//! - [`session`]: one client connection, one file per kind of command; [`reload`]: table and
//!   credential updates;
//! - [`resp3`]: what each reply becomes for a RESP3 client (pure); [`pubsub`]: the
//!   sidecar's subscriptions on the instances, shared by its clients;
//! - [`keyspace`]: the fleet's keyspace as one (SCAN's walk, stale copies, what moved);
//! - [`heartbeat`]: writes the table version this sidecar uses, for rebalance Jobs;
//! - [`metrics`]: Prometheus series on a separate port.

pub mod backend;
pub mod command;
pub mod fleet;
pub mod heartbeat;
pub mod keyspace;
pub mod latency_window;
pub mod metrics;
pub mod pubsub;
pub mod reload;
pub mod resp3;
pub mod roster;
pub mod router;
pub mod scripts;
pub mod session;
pub mod target_first;
pub mod ttl;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tracing::{info, warn};

use crate::http;
use crate::redis::connect::SecretString;
use crate::redis::endpoint::SecretSource;
use backend::BackendOptions;
use metrics::SidecarMetrics;
use reload::{Reloader, TableSource};
use session::Shared;

/// How the sidecar runs.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where clients connect.
    pub listen: SocketAddr,
    /// Where `/metrics`, `/healthz` and `/readyz` are served.
    pub metrics_addr: SocketAddr,
    /// The routing table.
    pub table: TableSource,
    /// Instance credentials.
    pub secrets: SecretSource,
    /// Password clients must AUTH with, if any.
    pub client_password: Option<SecretString>,
    /// This sidecar's id (heartbeat key).
    pub id: String,
    /// Backend tuning.
    pub backend: BackendOptions,
    /// How often a mounted table file and the credentials are re-read.
    pub poll: Duration,
    /// Whether FLUSHDB / FLUSHALL erase the fleet's application keys (else they are refused).
    pub allow_flush: bool,
}

/// Why the sidecar stopped.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The listen address could not be bound.
    #[error("listening on {addr}: {source}")]
    Listen {
        /// Address.
        addr: SocketAddr,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The API could not be reached (`--configmap` mode).
    #[error("connecting to Kubernetes: {0}")]
    Client(#[source] kube::Error),
}

/// Runs the sidecar until SIGTERM or Ctrl-C.
pub async fn run(config: Config) -> Result<(), Error> {
    let mut registry = Registry::default();
    let metrics = Arc::new(SidecarMetrics::new(&mut registry));
    let probes = http::Probes::new(registry);
    let shared = Shared::new(metrics, config.client_password.clone(), config.id.clone());

    let client = match (&config.table, &config.secrets) {
        (TableSource::ConfigMap { .. }, _) | (_, SecretSource::Api(_)) => {
            Some(crate::kube_client::infer().await.map_err(Error::Client)?)
        }
        _ => None,
    };
    let reloader = Reloader::new(
        shared.clone(),
        config.backend.clone(),
        config.secrets.clone(),
        client.clone(),
    );
    match config.table.clone() {
        TableSource::File(path) => {
            tokio::spawn(reloader.watch_file(path, config.poll));
        }
        TableSource::ConfigMap { namespace, name } => {
            if let Some(client) = client {
                tokio::spawn(reloader.watch_config_map(
                    client,
                    namespace,
                    name,
                    Duration::from_secs(30),
                ));
            }
        }
    }
    tokio::spawn(heartbeat::run(shared.clone()));
    let current = {
        let shared = shared.clone();
        move || shared.router.load_full()
    };
    tokio::spawn(pubsub::watch(shared.pubsub.clone(), current.clone()));
    tokio::spawn(keyspace::watch(shared.keyspace.clone(), current));
    shared
        .allow_flush
        .store(config.allow_flush, std::sync::atomic::Ordering::Relaxed);

    match http::serve(config.metrics_addr, probes.clone()).await {
        Ok((addr, _)) => info!(%addr, "serving /metrics, /healthz and /readyz"),
        Err(e) => warn!(addr = %config.metrics_addr, error = %e, "cannot serve metrics"),
    }
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|source| Error::Listen {
            addr: config.listen,
            source,
        })?;
    info!(addr = %config.listen, id = %config.id, "accepting Redis clients");
    let ready = {
        let shared = shared.clone();
        let probes = probes.clone();
        async move {
            while shared.router.load().is_none() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            probes.set_ready(true);
        }
    };
    tokio::spawn(ready);

    let accept = async {
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    tokio::spawn(session::serve(stream, shared.clone()));
                }
                Err(e) => {
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }
    };
    tokio::select! {
        () = accept => {}
        () = crate::shutdown::signal() => info!("shutting down"),
    }
    deliver_async_results(&shared.metrics.replication_backlog).await;
    Ok(())
}

/// How long a stopping sidecar waits for the results of `async` writes still on their way to
/// a replica. Kubernetes gives a pod 30 s by default between SIGTERM and SIGKILL, and a native
/// sidecar is stopped after the application's containers: by then no new write arrives.
pub const SHUTDOWN_DELIVERY: Duration = Duration::from_secs(10);

/// Waits (at most [`SHUTDOWN_DELIVERY`]) until no `async` result is in flight: those writes
/// were acknowledged, and one that dies with the process would be missing on its replica until
/// the operator's replica check (`docs/replication.md`) repairs it. Clients stay served
/// meanwhile.
async fn deliver_async_results(backlog: &Gauge) {
    let started = tokio::time::Instant::now();
    let pending = backlog.get();
    if pending <= 0 {
        return;
    }
    info!(
        pending,
        "delivering async results to their replicas before exiting"
    );
    while backlog.get() > 0 && started.elapsed() < SHUTDOWN_DELIVERY {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    match backlog.get() {
        0 => info!(
            delivered = pending,
            ms = started.elapsed().as_millis() as u64,
            "async results delivered"
        ),
        left => warn!(
            left,
            "exiting with async results not delivered: their replicas miss them until the operator's replica check repairs them"
        ),
    }
}
