//! A TCP relay that can lose connections silently: placed between a process and a server (the
//! API server), it plays a network that stops delivering the packets of the connections open
//! at some moment and never tells either end (a lost NAT or conntrack entry, a partition): no
//! reset, no close, only silence, for good. Connections opened after the network heals work.
//! A client that bounds nothing waits on a lost connection for ever. The relay's own sockets
//! stay healthy, so TCP keep-alive notices nothing here: only a client's own bounds (pings,
//! request timeouts) do.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// The relay, listening on `127.0.0.1:port` and forwarding to its upstream.
pub struct Relay {
    pub port: u16,
    network: Arc<Network>,
    accept: JoinHandle<()>,
}

/// Which connections still get through: those accepted in the current generation, while the
/// network is up. Cutting and healing each start a new generation, so a connection open when
/// the network went down, or opened while it was down, stays lost.
#[derive(Default)]
struct Network {
    generation: AtomicU64,
    down: AtomicBool,
    /// Connections accepted, lost ones included.
    accepted: AtomicU64,
}

impl Network {
    fn delivers(&self, generation: u64) -> bool {
        !self.down.load(Ordering::SeqCst) && self.generation.load(Ordering::SeqCst) == generation
    }
}

impl Relay {
    /// A relay to `upstream`.
    pub async fn start(upstream: SocketAddr) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding the relay");
        let port = listener.local_addr().unwrap().port();
        let network = Arc::new(Network::default());
        let net = network.clone();
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                net.accepted.fetch_add(1, Ordering::SeqCst);
                let generation = net.generation.load(Ordering::SeqCst);
                let Ok(server) = TcpStream::connect(upstream).await else {
                    continue;
                };
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                let (client_read, client_write) = client.into_split();
                let (server_read, server_write) = server.into_split();
                tokio::spawn(pass(client_read, server_write, net.clone(), generation));
                tokio::spawn(pass(server_read, client_write, net.clone(), generation));
            }
        });
        Relay {
            port,
            network,
            accept,
        }
    }

    /// From now on nothing gets through, and every connection open now is lost for good.
    pub fn cut(&self) {
        self.network.down.store(true, Ordering::SeqCst);
        self.network.generation.fetch_add(1, Ordering::SeqCst);
    }

    /// New connections get through again; those lost stay lost.
    pub fn heal(&self) {
        self.network.generation.fetch_add(1, Ordering::SeqCst);
        self.network.down.store(false, Ordering::SeqCst);
    }

    /// How many connections the relay accepted so far.
    pub fn accepted(&self) -> u64 {
        self.network.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// Copies `from` to `to` while the network delivers this connection's packets, and then
/// swallows whatever `from` sends, keeping both ends open: the sender sees its bytes leave,
/// the receiver sees nothing arrive.
async fn pass(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    network: Arc<Network>,
    generation: u64,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if network.delivers(generation) && to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    // The sender closed: a connection that still gets through passes the close on; a lost
    // one stays open on the other side for ever, as across a network that dropped it.
    if network.delivers(generation) {
        let _ = to.shutdown().await;
    } else {
        let _open = to;
        std::future::pending::<()>().await;
    }
}
