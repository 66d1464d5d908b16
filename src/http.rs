//! A small HTTP/1 server for `/metrics` (Prometheus text), `/healthz` and `/readyz`, used by
//! the operator and the sidecar. Nothing else is served.
//!
//! It listens on addresses other pods can reach (the operator's 0.0.0.0:8080), so a client that
//! opens connections and never finishes a request cannot hold them: request headers must
//! arrive within [`HEADER_TIMEOUT`], a connection lives at most [`CONNECTION_LIFETIME`], at
//! most [`MAX_CONNECTIONS`] are open at once (more wait in the listen backlog), and a failing
//! accept (out of file descriptors) backs off instead of spinning.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::CONTENT_TYPE;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

/// How long a client may take to send a request's headers.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);

/// The longest a connection stays open (keep-alive included).
pub const CONNECTION_LIFETIME: Duration = Duration::from_secs(60);

/// Connections served at once.
pub const MAX_CONNECTIONS: usize = 1024;

/// What the endpoints report.
#[derive(Debug)]
pub struct Probes {
    registry: Registry,
    ready: AtomicBool,
}

impl Probes {
    /// Serves `registry` on `/metrics`; `/readyz` fails until [`Probes::set_ready`].
    pub fn new(registry: Registry) -> Arc<Self> {
        Arc::new(Self {
            registry,
            ready: AtomicBool::new(false),
        })
    }

    /// Marks the process ready (or not).
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Release);
    }

    /// Whether the process reported ready.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    fn respond(&self, req: &Request<Incoming>) -> Response<Full<Bytes>> {
        let text = |status: StatusCode, body: String| {
            let mut r = Response::new(Full::new(Bytes::from(body)));
            *r.status_mut() = status;
            r
        };
        if req.method() != Method::GET {
            return text(StatusCode::METHOD_NOT_ALLOWED, "GET only\n".into());
        }
        match req.uri().path() {
            "/metrics" => {
                let mut body = String::new();
                if prometheus_client::encoding::text::encode(&mut body, &self.registry).is_err() {
                    return text(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "encoding failed\n".into(),
                    );
                }
                let mut r = text(StatusCode::OK, body);
                if let Ok(v) = "application/openmetrics-text; version=1.0.0; charset=utf-8".parse()
                {
                    r.headers_mut().insert(CONTENT_TYPE, v);
                }
                r
            }
            "/healthz" | "/livez" => text(StatusCode::OK, "ok\n".into()),
            "/readyz" if self.is_ready() => text(StatusCode::OK, "ready\n".into()),
            "/readyz" => text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n".into()),
            _ => text(StatusCode::NOT_FOUND, "not found\n".into()),
        }
    }
}

/// Binds `addr` and returns the bound address; serves until the task is dropped.
pub async fn serve(
    addr: SocketAddr,
    probes: Arc<Probes>,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let task = tokio::spawn(async move {
        let mut backoff = Duration::from_millis(10);
        loop {
            let Ok(permit) = slots.clone().acquire_owned().await else {
                return;
            };
            let stream = match listener.accept().await {
                Ok((stream, _)) => {
                    backoff = Duration::from_millis(10);
                    stream
                }
                Err(_) => {
                    // Out of file descriptors, say: give the process a moment.
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                    continue;
                }
            };
            let probes = probes.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req: Request<Incoming>| {
                    let probes = probes.clone();
                    async move { Ok::<_, Infallible>(probes.respond(&req)) }
                });
                let conn = http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(HEADER_TIMEOUT)
                    .serve_connection(TokioIo::new(stream), service);
                let _ = tokio::time::timeout(CONNECTION_LIFETIME, conn).await;
                drop(permit);
            });
        }
    });
    Ok((bound, task))
}
