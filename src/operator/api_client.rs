//! The operator's API client: one pool, one HTTP/2 connection. Every reconcile, watch, status
//! write and Event of the process goes over it as a stream of its own, so the API server sees
//! one TLS handshake per operator process instead of one per concurrent request (HTTP/1.1,
//! which kube's default client speaks, needs a connection per request in flight, and a burst
//! of 1 000 status writes opened hundreds of them). HTTP/1.1 stays possible for API servers or
//! proxies that do not offer h2.

use std::time::Duration;

use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use kube::client::ConfigExt;
use kube::{Client, Config};
use tower::{BoxError, ServiceBuilder};

/// How often an idle connection is pinged: a dead API server (or a dropped NAT entry) is
/// noticed within this plus [`KEEP_ALIVE_TIMEOUT`], not when a write times out.
const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(30);

/// How long a ping may go unanswered.
const KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(20);

/// A client for `config` that multiplexes every request over one HTTP/2 connection.
pub fn client(config: Config) -> kube::Result<Client> {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_connect_timeout(config.connect_timeout);
    http.set_nodelay(true);
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(config.rustls_client_config()?)
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(http);
    let pool = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .timer(TokioTimer::new())
        .pool_timer(TokioTimer::new())
        .http2_keep_alive_interval(KEEP_ALIVE_INTERVAL)
        .http2_keep_alive_timeout(KEEP_ALIVE_TIMEOUT)
        .http2_keep_alive_while_idle(true)
        .build(https);
    let service = ServiceBuilder::new()
        .layer(config.base_uri_layer())
        .option_layer(config.auth_layer()?)
        .layer(config.extra_headers_layer()?)
        .map_err(BoxError::from)
        .service(pool);
    Ok(Client::new(service, config.default_namespace))
}

/// [`client`] for the configuration found the usual way (in-cluster, else `KUBECONFIG` or
/// `~/.kube/config`).
pub async fn infer() -> kube::Result<Client> {
    let config = Config::infer().await.map_err(kube::Error::InferConfig)?;
    client(config)
}
