//! The API client of the long-running processes, the operator and the sidecar: one pool, one
//! HTTP/2 connection. Every reconcile, watch, status write and Event of the operator goes over
//! it as a stream of its own, so the API server sees one TLS handshake per process instead of
//! one per concurrent request (HTTP/1.1, which kube's default client speaks, needs a
//! connection per request in flight, and a burst of 1 000 status writes opened hundreds of
//! them). HTTP/1.1 stays possible for API servers or proxies that do not offer h2.
//!
//! Nothing waits on the API server for ever. kube's default client sets no read timeout, so a
//! connection the network lost without a reset (a NAT or conntrack entry dropped, a
//! partition) held its requests for good (a watch until the watcher's own idle timeout, about
//! five minutes): a sidecar whose Secret read hung stopped following its routing table. Here
//! a connection that does not answer its pings is closed (its watches fail and start again),
//! and each request has [`REQUEST_TIMEOUT`] to get its answer's headers, the connection and
//! TLS handshake included.

use std::time::Duration;

use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use kube::client::ConfigExt;
use kube::{Client, Config};
use tower::timeout::TimeoutLayer;
use tower::{BoxError, ServiceBuilder};

/// How often an idle connection is pinged: a dead API server (or a dropped NAT entry) is
/// noticed within this plus [`KEEP_ALIVE_TIMEOUT`], not when a write times out.
const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(30);

/// How long a ping may go unanswered.
const KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(20);

/// TCP keep-alive of the connection (idle time, then probes every 10 s, three of them): on
/// HTTP/1.1, which has no pings, a connection the network lost is noticed by the kernel.
const TCP_KEEP_ALIVE: Duration = Duration::from_secs(30);

/// How long a request may wait for its answer to start (a watch's answer starts at once and
/// then streams, watched over by the pings): past it the request fails, and its caller's
/// retry opens a new connection if it must.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// A client for `config` that multiplexes every request over one HTTP/2 connection, each
/// bounded by [`REQUEST_TIMEOUT`].
pub fn client(config: Config) -> kube::Result<Client> {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_connect_timeout(config.connect_timeout);
    http.set_nodelay(true);
    http.set_keepalive(Some(TCP_KEEP_ALIVE));
    http.set_keepalive_interval(Some(Duration::from_secs(10)));
    http.set_keepalive_retries(Some(3));
    let mut https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(config.rustls_client_config()?)
        .https_or_http();
    // A kubeconfig's `tls-server-name`: the name the API server's certificate is checked for.
    if let Some(name) = &config.tls_server_name {
        let name = rustls::pki_types::ServerName::try_from(name.clone())
            .map_err(|e| kube::Error::Service(Box::new(e)))?;
        https = https.with_server_name_resolver(hyper_rustls::FixedServerNameResolver::new(name));
    }
    let https = https.enable_http1().enable_http2().wrap_connector(http);
    let pool = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .timer(TokioTimer::new())
        .pool_timer(TokioTimer::new())
        .http2_keep_alive_interval(KEEP_ALIVE_INTERVAL)
        .http2_keep_alive_timeout(KEEP_ALIVE_TIMEOUT)
        .http2_keep_alive_while_idle(true)
        .build(https);
    let service = ServiceBuilder::new()
        .layer(TimeoutLayer::new(REQUEST_TIMEOUT))
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
