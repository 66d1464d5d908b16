//! A TCP pass-through in front of the API server that counts the connections opened through
//! it: TLS stays end to end (the operator's kubeconfig names the proxy's port on 127.0.0.1,
//! which the serving certificate covers), so every accepted connection is one TLS handshake.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::net::{TcpListener, TcpStream};

/// A running proxy.
#[derive(Debug)]
pub struct CountingProxy {
    /// Its port on 127.0.0.1.
    pub port: u16,
    accepted: Arc<AtomicU64>,
    open: Arc<AtomicU64>,
}

impl CountingProxy {
    /// Forwards 127.0.0.1:<port> to `upstream`.
    pub async fn start(upstream: SocketAddr) -> CountingProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepted = Arc::new(AtomicU64::new(0));
        let open = Arc::new(AtomicU64::new(0));
        let (a, o) = (accepted.clone(), open.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    return;
                };
                a.fetch_add(1, Ordering::Relaxed);
                let o = o.clone();
                tokio::spawn(async move {
                    o.fetch_add(1, Ordering::Relaxed);
                    if let Ok(mut outbound) = TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                    o.fetch_sub(1, Ordering::Relaxed);
                });
            }
        });
        CountingProxy {
            port,
            accepted,
            open,
        }
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }

    /// Connections open now.
    pub fn open(&self) -> u64 {
        self.open.load(Ordering::Relaxed)
    }
}
