//! Sidecars in `--configmap` mode, as the API server sees them: each one its own TLS
//! connection holding a watch on the routing ConfigMap (the request a kube-rs watcher sends),
//! nothing else. A watcher reports when an update carrying a tick annotation reaches it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Instant;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinHandle;
use tokio_rustls::TlsConnector;

/// The annotation the bench bumps; its value is the tick.
pub const TICK_ANNOTATION: &str = "bench.redisfleet.io/tick";

/// Running watchers.
#[derive(Debug)]
pub struct Watchers {
    tasks: Vec<JoinHandle<()>>,
    /// Watches whose response headers arrived.
    pub established: Arc<AtomicUsize>,
    /// Bytes received by all watchers.
    pub bytes: Arc<AtomicU64>,
    /// `(tick, when)` for every watcher that saw a tick.
    pub seen: mpsc::UnboundedReceiver<(u64, Instant)>,
}

impl Watchers {
    /// Opens `count` watches of ConfigMap `namespace/name` from `resource_version` on.
    pub fn start(
        count: usize,
        apiserver: SocketAddr,
        ca: &std::path::Path,
        token: &str,
        namespace: &str,
        name: &str,
        resource_version: &str,
    ) -> Watchers {
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(ca).unwrap() {
            roots.add(cert.unwrap()).unwrap();
        }
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        let connector = TlsConnector::from(Arc::new(config));
        let request = Arc::new(format!(
            "GET /api/v1/namespaces/{namespace}/configmaps?watch=true&fieldSelector=metadata.name%3D{name}&resourceVersion={resource_version}&timeoutSeconds=3600 HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\nAccept: application/json\r\nUser-Agent: redis-fleet-bench-watcher\r\n\r\n"
        ));
        let established = Arc::new(AtomicUsize::new(0));
        let bytes = Arc::new(AtomicU64::new(0));
        let (tx, seen) = mpsc::unbounded_channel();
        // Connect a few hundred at a time: the listen backlog is finite.
        let gate = Arc::new(Semaphore::new(200));
        let tasks = (0..count)
            .map(|_| {
                let (connector, request, established, bytes, tx, gate) = (
                    connector.clone(),
                    request.clone(),
                    established.clone(),
                    bytes.clone(),
                    tx.clone(),
                    gate.clone(),
                );
                tokio::spawn(async move {
                    let permit = gate.acquire_owned().await.ok();
                    let Ok(tcp) = TcpStream::connect(apiserver).await else {
                        return;
                    };
                    let server = ServerName::IpAddress(apiserver.ip().into());
                    let Ok(mut tls) = connector.connect(server, tcp).await else {
                        return;
                    };
                    if tls.write_all(request.as_bytes()).await.is_err() {
                        return;
                    }
                    watch(&mut tls, permit, &established, &bytes, &tx).await;
                })
            })
            .collect();
        Watchers {
            tasks,
            established,
            bytes,
            seen,
        }
    }

    /// Closes every watch.
    pub fn stop(self) {
        for t in self.tasks {
            t.abort();
        }
    }
}

async fn watch<S: tokio::io::AsyncRead + Unpin>(
    stream: &mut S,
    permit: Option<tokio::sync::OwnedSemaphorePermit>,
    established: &AtomicUsize,
    bytes: &AtomicU64,
    tx: &mpsc::UnboundedSender<(u64, Instant)>,
) {
    let marker = format!("\"{TICK_ANNOTATION}\":\"");
    let marker = marker.as_bytes();
    let mut permit = permit;
    let mut headers_done = false;
    let mut window: Vec<u8> = Vec::new();
    let mut buf = vec![0u8; 16 * 1024];
    let mut last_tick = 0u64;
    loop {
        let Ok(n) = stream.read(&mut buf).await else {
            return;
        };
        if n == 0 {
            return;
        }
        bytes.fetch_add(n as u64, Ordering::Relaxed);
        window.extend_from_slice(&buf[..n]);
        if !headers_done {
            if memchr::memmem::find(&window, b"\r\n\r\n").is_none() {
                continue;
            }
            headers_done = true;
            established.fetch_add(1, Ordering::Relaxed);
            permit.take();
        }
        let now = Instant::now();
        let mut keep_from = window.len().saturating_sub(marker.len() + 24);
        let mut at = 0;
        while let Some(i) = memchr::memmem::find(&window[at..], marker) {
            let start = at + i + marker.len();
            match window[start..].iter().position(|b| *b == b'"') {
                Some(end) => {
                    let tick = std::str::from_utf8(&window[start..start + end])
                        .ok()
                        .and_then(|t| t.parse().ok())
                        .unwrap_or(0);
                    if tick > last_tick {
                        last_tick = tick;
                        let _ = tx.send((tick, now));
                    }
                    at = start + end;
                }
                None => {
                    keep_from = keep_from.min(at + i);
                    break;
                }
            }
        }
        window.drain(..keep_from.min(window.len()));
    }
}
