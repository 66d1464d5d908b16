//! One client connection: requests are read and dispatched in order, replies are written in
//! the same order as they become ready, so a client may pipeline freely. This file holds the
//! serve loop, the per-connection state and the dispatch; each kind of command has a file:
//! `keyed.rs` (commands on keys), `transaction.rs` (MULTI/EXEC/WATCH), `local.rs` (answered
//! here) and `fan_out.rs` (sent to every instance).
//!
//! Dispatch:
//! - single-key commands go to the instance that serves the key (its owner or its failover
//!   instance); while its slot migrates, through the guard on the source (`guarded.rs`,
//!   `docs/protocol.md`);
//! - MGET/MSET/DEL/UNLINK/EXISTS/TOUCH are split per instance and merged in the client's order;
//! - scripts, multi-key commands and transactions must stay on one instance, else
//!   `-CROSSINSTANCE`; blocking commands and WATCH use a connection of their own;
//! - PING, ECHO, SELECT 0, AUTH, HELLO 2, CLIENT …, QUIT are answered here; DBSIZE, SCAN,
//!   RANDOMKEY and SCRIPT LOAD/EXISTS/FLUSH go to every instance; administrative commands are
//!   refused with a reason.

mod blocking;
mod fan_out;
mod guarded;
mod keyed;
mod local;
mod protocol;
mod pubsub;
mod replicated;
mod scan;
mod tracking;
mod transaction;

use arc_swap::ArcSwapOption;
use bytes::{Bytes, BytesMut};
use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::task::{Context as TaskContext, Poll};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::backend::{BackendError, Dedicated, Replies, ReplyReceiver, SendError};
use super::command::{self, Kind, LocalCommand, Resolved, TxnCommand};
use super::fleet::FleetView;
use super::metrics::SidecarMetrics;
use super::router::Router;
use super::scripts::ScriptCache;
use crate::redis::connect::SecretString;
use crate::redis::keys::RESERVED_PREFIX;
use crate::redis::resp::{Frame, Limits, Request, RequestDecoder, encode_request, parse_frame};
use crate::routing::keyspace::{CategoryId, InstanceId};
use transaction::Transaction;

/// State shared by all client connections.
#[derive(Debug)]
pub struct Shared {
    /// The routing table in use (`None` until the first one is loaded).
    pub router: ArcSwapOption<Router>,
    /// Metrics.
    pub metrics: Arc<SidecarMetrics>,
    /// Protocol limits for client requests.
    pub limits: Limits,
    /// Password clients must send with AUTH, if any.
    pub password: Option<SecretString>,
    /// This sidecar's id (heartbeats, connection names).
    pub id: String,
    /// Fences and heartbeat rounds.
    pub fleet: Arc<FleetView>,
    /// Application scripts seen, wrapped.
    pub scripts: ScriptCache,
    /// The sidecar's Pub/Sub subscriptions on the instances, for all its clients.
    pub pubsub: Arc<super::pubsub::Hub>,
    /// The tables loaded lately, for SCAN cursors across table changes.
    pub keyspace: Arc<super::keyspace::History>,
    /// Whether FLUSHDB / FLUSHALL may erase the fleet's keys (`--allow-flush`).
    pub allow_flush: std::sync::atomic::AtomicBool,
    next_client: AtomicU64,
}

impl Shared {
    /// Shared state with no table loaded yet.
    pub fn new(
        metrics: Arc<SidecarMetrics>,
        password: Option<SecretString>,
        id: String,
    ) -> Arc<Self> {
        Arc::new(Self {
            router: ArcSwapOption::empty(),
            metrics,
            limits: Limits::default(),
            password,
            id,
            fleet: FleetView::new(),
            scripts: ScriptCache::default(),
            pubsub: super::pubsub::Hub::new(),
            keyspace: Arc::default(),
            allow_flush: std::sync::atomic::AtomicBool::new(false),
            next_client: AtomicU64::new(1),
        })
    }
}

/// What the writer sends back, in request order.
enum Pending {
    Ready(Bytes),
    /// Write this, then close the connection.
    Close(Bytes),
    Backend {
        rx: ReplyReceiver,
        accounting: Accounting,
    },
    Future(Pin<Box<dyn Future<Output = Bytes> + Send>>),
    /// A reply converted for a RESP3 client once it is ready (see `protocol.rs`).
    Resp3(Box<Pending>, super::resp3::Shape),
}

/// Why a dispatch stopped before it produced a pending reply.
enum Interrupt {
    /// A connection carries a newer table's commands now: route the request again.
    Stale,
    /// Answer the client this (an error, usually).
    Reply(Bytes),
}

impl From<SendError> for Interrupt {
    fn from(e: SendError) -> Self {
        match e {
            SendError::Stale => Interrupt::Stale,
            other => Interrupt::Reply(other.reply()),
        }
    }
}

/// The result of a dispatch step.
type Dispatched = Result<Pending, Interrupt>;

/// A request handled: its reply (pending or ready), or the work that routes it, which has
/// to be awaited (a key in transit, a blocking command, a fan-out, a local command).
enum Handled<'a> {
    Now(Pending),
    Later(Pin<Box<dyn Future<Output = Pending> + Send + 'a>>),
}

/// Why a dispatch cannot continue, as the client's reply.
fn stop(text: &str) -> Interrupt {
    Interrupt::Reply(error_reply(text))
}

/// How a backend reply is counted and which reply of a bundle the client gets.
struct Accounting {
    router: Arc<Router>,
    category: CategoryId,
    read: ReadKind,
    first: bool,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum ReadKind {
    /// Not a read: no hit or miss.
    None,
    /// A read whose nil reply is a miss.
    Single,
}

fn error_reply(text: &str) -> Bytes {
    let mut out = BytesMut::new();
    Frame::Error(Bytes::copy_from_slice(text.as_bytes())).encode(&mut out);
    out.freeze()
}

fn encode(frame: &Frame) -> Bytes {
    frame.to_bytes()
}

fn backend_reply(result: Result<Replies, BackendError>, first: bool) -> Bytes {
    match result {
        Ok(r) if first => r.first(),
        Ok(r) => r.last(),
        Err(e) => e.reply(),
    }
}

fn account(a: &Accounting, reply: &[u8]) {
    let m = &a.router.categories[usize::from(a.category)];
    if reply.first() == Some(&b'-') {
        m.errors.inc();
    } else if a.read == ReadKind::Single {
        if reply.starts_with(b"$-1") || reply.starts_with(b"*-1") {
            m.misses.inc();
        } else {
            m.hits.inc();
        }
    }
}

impl Pending {
    /// Whether the connection closes once this reply is written (whatever the protocol
    /// wrapped around it): no request after it runs.
    fn closes(&self) -> bool {
        match self {
            Pending::Close(_) => true,
            Pending::Resp3(inner, _) => inner.closes(),
            _ => false,
        }
    }

    /// Polls for the reply: `(bytes, close the connection after writing them)`.
    fn poll_reply(&mut self, cx: &mut TaskContext<'_>) -> Poll<(Bytes, bool)> {
        match self {
            Pending::Ready(b) => Poll::Ready((std::mem::take(b), false)),
            Pending::Close(b) => Poll::Ready((std::mem::take(b), true)),
            Pending::Backend { rx, accounting } => match Pin::new(rx).poll(cx) {
                Poll::Ready(result) => {
                    let reply =
                        backend_reply(result.unwrap_or_else(|_| Err(lost())), accounting.first);
                    account(accounting, &reply);
                    Poll::Ready((reply, false))
                }
                Poll::Pending => Poll::Pending,
            },
            Pending::Future(f) => f.as_mut().poll(cx).map(|b| (b, false)),
            Pending::Resp3(inner, shape) => inner
                .poll_reply(cx)
                .map(|(b, close)| (super::resp3::convert_owned(b, shape), close)),
        }
    }
}

/// Moves the replies that are ready at the head of `queue` into `out`, in order. Ready when
/// at least one was moved; `close` is set when one of them ends the connection.
fn drain_ready(
    queue: &mut VecDeque<Pending>,
    out: &mut BytesMut,
    close: &mut bool,
    cx: &mut TaskContext<'_>,
) -> Poll<()> {
    let mut moved = false;
    while let Some(head) = queue.front_mut() {
        match head.poll_reply(cx) {
            Poll::Ready((bytes, c)) => {
                out.extend_from_slice(&bytes);
                queue.pop_front();
                moved = true;
                if c {
                    *close = true;
                    queue.clear();
                    break;
                }
            }
            Poll::Pending => break,
        }
    }
    if moved {
        Poll::Ready(())
    } else {
        Poll::Pending
    }
}

/// Writes `out` and empties it (keeping a modest buffer around).
async fn flush(stream: &mut TcpStream, out: &mut BytesMut) -> bool {
    if out.is_empty() {
        return true;
    }
    let ok = stream.write_all(out).await.is_ok();
    out.clear();
    if out.capacity() > 64 * 1024 {
        *out = BytesMut::new();
    }
    ok
}

/// Reads what the client sent into `buf`, taking a buffer only once the socket is readable
/// (a connection waiting for its client holds none). The read itself is tokio's, which marks
/// the socket drained after a short read, so a request costs one read, not a read and an
/// empty one.
///
/// A read into an empty buffer (the usual case: the previous requests were all complete) goes
/// into the thread's scratch buffer, and only what came is copied into a buffer of the
/// connection's own: a small allocation the allocator serves from its per-thread cache, where
/// reserving a read's worth per request cost a slow large allocation and free every time.
fn read_lazily(
    stream: &mut TcpStream,
    buf: &mut BytesMut,
    decoder: &RequestDecoder,
    cx: &mut TaskContext<'_>,
) -> Poll<std::io::Result<usize>> {
    if let Err(e) = std::task::ready!(stream.poll_read_ready(cx)) {
        return Poll::Ready(Err(e));
    }
    if buf.is_empty() && decoder.needed().is_none() {
        return SCRATCH.with_borrow_mut(|scratch| {
            let mut read = tokio::io::ReadBuf::new(scratch);
            std::task::ready!(Pin::new(&mut *stream).poll_read(cx, &mut read))?;
            buf.extend_from_slice(read.filled());
            Poll::Ready(Ok(read.filled().len()))
        });
    }
    // Grow the buffer as data arrives, never by what a header merely announces: a
    // `$536870912` must not reserve 512 MiB before a byte of it came.
    if let Some(needed) = decoder.needed() {
        let missing = needed.saturating_sub(buf.len());
        buf.reserve(missing.min(READ_CHUNK));
    } else if buf.capacity() - buf.len() < 1024 {
        buf.reserve(4096);
    }
    let read = stream.read_buf(buf);
    tokio::pin!(read);
    read.poll(cx)
}

thread_local! {
    /// Where a connection's fresh reads land first (see [`read_lazily`]): one per thread.
    static SCRATCH: std::cell::RefCell<Box<[u8]>> =
        std::cell::RefCell::new(vec![0; READ_CHUNK].into_boxed_slice());
}

/// Requests read ahead while one waits: beyond this, the client's further requests wait in
/// its socket.
const PENDING_READ_LIMIT: usize = 1 << 20;

/// The most the read buffer grows by at once.
const READ_CHUNK: usize = 64 * 1024;

/// Whether the client still reads, and whether its request waits in a blocking command:
/// shared by the serve loop, which sees the end of the client's stream, and a blocking
/// dispatch, which must not pop anything for a client that went away (one task polls both).
#[derive(Clone, Default)]
struct Liveness(Arc<AtomicU8>);

impl Liveness {
    const BLOCKED: u8 = 1;
    const HUNG_UP: u8 = 2;

    /// The client's stream ended; true if a blocking command waits for it (the wait must end).
    fn hang_up(&self) -> bool {
        self.0.fetch_or(Self::HUNG_UP, Ordering::Relaxed) & Self::BLOCKED != 0
    }

    fn hung_up(&self) -> bool {
        self.0.load(Ordering::Relaxed) & Self::HUNG_UP != 0
    }

    /// Marks a blocking wait until the returned guard is dropped.
    fn block(&self) -> BlockedGuard<'_> {
        self.0.fetch_or(Self::BLOCKED, Ordering::Relaxed);
        BlockedGuard(self)
    }
}

struct BlockedGuard<'a>(&'a Liveness);

impl Drop for BlockedGuard<'_> {
    fn drop(&mut self) {
        (self.0).0.fetch_and(!Liveness::BLOCKED, Ordering::Relaxed);
    }
}

/// How the wait for a request's dispatch ended.
enum Waited {
    /// Its reply, pending or ready.
    Done(Pending),
    /// The client's stream ended while the request waited in a blocking command: the wait
    /// ends unanswered (the replies before it still go out).
    HungUp,
    /// The connection is gone (a write or read failed, or a reply closed it).
    Lost,
}

/// Waits for `dispatch` — a request that may wait before it can be sent (a blocking command,
/// a key in transit) — while the replies before it go out and the client is read on, so the
/// wait ends with the client and a blocked pop is never served to a socket nobody reads.
async fn wait_reading(
    dispatch: impl Future<Output = Pending>,
    stream: &mut TcpStream,
    buf: &mut BytesMut,
    queue: &mut VecDeque<Pending>,
    out: &mut BytesMut,
    closing: &mut bool,
    liveness: &Liveness,
) -> Waited {
    tokio::pin!(dispatch);
    loop {
        let room = !liveness.hung_up() && buf.len() < PENDING_READ_LIMIT;
        if room && buf.capacity() - buf.len() < 1024 {
            buf.reserve(4096);
        }
        tokio::select! {
            biased;
            p = &mut dispatch => return Waited::Done(p),
            () = std::future::poll_fn(|cx| drain_ready(queue, out, closing, cx)),
                if !queue.is_empty() =>
            {
                if !flush(stream, out).await || *closing {
                    return Waited::Lost;
                }
            }
            read = stream.read_buf(buf), if room => match read {
                Ok(0) => {
                    if liveness.hang_up() {
                        return Waited::HungUp;
                    }
                }
                Err(_) => return Waited::Lost,
                Ok(_) => {}
            },
        }
    }
}

/// Serves one client connection until it closes.
///
/// One task per connection: requests are decoded and dispatched in order, and the replies are
/// written in the same order as they become ready, coalescing every reply that is ready into
/// one write. A request that has to wait before it can be sent (a key being migrated, a
/// blocking command, a fan-out) lets the replies before it go out meanwhile.
///
/// When the client's stream ends (a half-close: `printf … | nc -N`), every request read before
/// it is answered and then the connection closes, as Redis does; a blocking command waiting
/// then, or after it, ends without popping anything.
pub async fn serve(mut stream: TcpStream, shared: Arc<Shared>) {
    let _ = stream.set_nodelay(true);
    let id = shared.next_client.fetch_add(1, Ordering::Relaxed);
    shared.metrics.clients.inc();
    let mut client = Client::new(id, shared.clone());
    let mut buf = BytesMut::new();
    let mut decoder = RequestDecoder::new(shared.limits);
    let mut queue: VecDeque<Pending> = VecDeque::new();
    let mut out = BytesMut::new();
    let mut closing = false;
    let liveness = client.liveness.clone();
    'conn: loop {
        // Dispatch every request that has fully arrived.
        while !closing {
            match decoder.decode_request(&mut buf) {
                Ok(Some(request)) => {
                    let work = match client.handle(request) {
                        Handled::Now(pending) => Ok(pending),
                        Handled::Later(work) => Err(wait_reading(
                            work,
                            &mut stream,
                            &mut buf,
                            &mut queue,
                            &mut out,
                            &mut closing,
                            &liveness,
                        )
                        .await),
                    };
                    let pending = match work {
                        Ok(pending) | Err(Waited::Done(pending)) => pending,
                        Err(Waited::HungUp) => {
                            // Its blocking call may still wait on the instance: that
                            // connection goes now, not when the replies before it are out.
                            client.dedicated.clear();
                            Pending::Close(Bytes::new())
                        }
                        Err(Waited::Lost) => break 'conn,
                    };
                    closing = pending.closes();
                    queue.push_back(pending);
                }
                Ok(None) => break,
                Err(e) => {
                    queue.push_back(Pending::Close(encode(&Frame::protocol_error(e))));
                    closing = true;
                }
            }
        }
        // Whatever is ready goes out in one write.
        let _ = std::future::poll_fn(|cx| {
            let _ = drain_ready(&mut queue, &mut out, &mut closing, cx);
            Poll::Ready(())
        })
        .await;
        if !flush(&mut stream, &mut out).await {
            break;
        }
        if (closing || liveness.hung_up()) && queue.is_empty() {
            let _ = stream.shutdown().await;
            break;
        }
        // A connection waiting for its client holds no read buffer: one is taken when bytes
        // are there (most connections of a busy application are idle at any moment).
        if buf.is_empty() && buf.capacity() > 0 {
            buf = BytesMut::new();
        }
        tokio::select! {
            biased;
            () = std::future::poll_fn(|cx| drain_ready(&mut queue, &mut out, &mut closing, cx)),
                if !queue.is_empty() => {}
            read = std::future::poll_fn(|cx| read_lazily(&mut stream, &mut buf, &decoder, cx)),
                if !closing && !liveness.hung_up() => match read {
                Ok(0) => {
                    liveness.hang_up();
                }
                Err(_) => break,
                Ok(_) => {}
            },
            // Pub/Sub messages, after the replies before them.
            push = client.pubsub.next(),
                if client.pubsub.receiving() && !closing && !liveness.hung_up() => match push {
                Some(message) => queue.push_back(Pending::Ready(message)),
                None => {
                    queue.push_back(Pending::Close(Bytes::new()));
                    closing = true;
                }
            },
        }
    }
    shared.metrics.clients.dec();
}

/// How many times a request is routed afresh when connections go over to a newer table.
const ROUTING_ATTEMPTS: usize = 4;

/// Per-connection state.
struct Client {
    id: u64,
    shared: Arc<Shared>,
    name: Option<Bytes>,
    authenticated: bool,
    transaction: Option<Transaction>,
    /// A connection holding WATCHed keys: (table instance name, connection). Boxed: a
    /// connection is large, and rarely held.
    watching: Option<Box<(String, Dedicated)>>,
    /// A WATCH failed since the last EXEC, DISCARD or UNWATCH: the keys the client believes
    /// watched may not be (a failed WATCH also drops the connection holding the earlier
    /// ones), so the next EXEC is refused.
    watch_failed: bool,
    /// Connections for blocking commands, by instance name.
    dedicated: HashMap<String, Dedicated>,
    sample: u32,
    /// RESP version and what goes with it (`protocol.rs`).
    protocol: protocol::Protocol,
    /// Pub/Sub subscriptions (`pubsub.rs`).
    pubsub: pubsub::Subscriptions,
    /// Client-side caching (`tracking.rs`).
    tracking: tracking::Tracking,
    /// Whether the client still reads (`serve`) and whether it waits in a blocking command.
    liveness: Liveness,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}

/// The request as it goes to an instance: its bytes as received, or encoded if inline.
fn wire(request: &Request) -> Bytes {
    match &request.raw {
        Some(raw) => raw.clone(),
        None => bundle(std::slice::from_ref(&request.args)),
    }
}

fn bundle(commands: &[Vec<Bytes>]) -> Bytes {
    let mut out = BytesMut::new();
    for c in commands {
        encode_request(c, &mut out);
    }
    out.freeze()
}

impl Client {
    fn new(id: u64, shared: Arc<Shared>) -> Self {
        let authenticated = shared.password.is_none();
        let pubsub = pubsub::Subscriptions::new(shared.pubsub.clone(), id);
        Self {
            id,
            shared,
            name: None,
            authenticated,
            transaction: None,
            watching: None,
            watch_failed: false,
            dedicated: HashMap::new(),
            sample: (id as u32).wrapping_mul(2_654_435_761) | 1,
            protocol: protocol::Protocol::default(),
            pubsub,
            tracking: tracking::Tracking::default(),
            liveness: Liveness::default(),
        }
    }

    fn lane(&self) -> usize {
        self.id as usize
    }

    /// One in sixteen, cheaply: which reads extend an adaptive TTL.
    fn sampled(&mut self) -> bool {
        self.sample ^= self.sample << 13;
        self.sample ^= self.sample >> 17;
        self.sample ^= self.sample << 5;
        self.sample & 15 == 0
    }

    /// Dispatches one request; a RESP3 client's reply is converted on its way out. A command
    /// on keys that are not migrating (nearly every request) is sent here and now; the rest is
    /// handed back as work to await, boxed, so that a connection's task only holds room for it
    /// while such a request waits.
    fn handle(&mut self, request: Request) -> Handled<'_> {
        let shape = self
            .protocol
            .shape(&request.args, self.transaction.is_some());
        // `CLIENT CACHING` applies to the next command only: which one this is.
        let head: Option<Vec<Bytes>> = self
            .tracking
            .on()
            .then(|| request.args.iter().take(2).cloned().collect());
        let now = match self.admit(request) {
            Err(answered) => Ok(answered),
            Ok((request, resolved)) => match self.dispatch_now(&request, &resolved) {
                Some(Ok(pending)) => Ok(pending),
                Some(Err(Interrupt::Reply(b))) => Ok(Pending::Ready(b)),
                Some(Err(Interrupt::Stale)) => Err((request, resolved, true)),
                None => Err((request, resolved, false)),
            },
        };
        match now {
            Ok(pending) => {
                if let Some(head) = head {
                    self.caching_done(&head);
                }
                Handled::Now(self.protocol.wrap(pending, shape))
            }
            Err((request, resolved, stale)) => Handled::Later(Box::pin(async move {
                let pending = self.route(request, resolved, stale).await;
                if let Some(head) = head {
                    self.caching_done(&head);
                }
                self.protocol.wrap(pending, shape)
            })),
        }
    }

    /// What every request goes through before it is routed: the command's keys, AUTH, the
    /// reserved prefix, Pub/Sub mode, client-side caching and script wrapping. `Err` is the
    /// answer when it goes no further.
    fn admit(&mut self, request: Request) -> Result<(Request, Resolved), Pending> {
        let resolved = match command::resolve(&request.args) {
            Ok(r) => r,
            Err(e) => {
                if let Some(t) = &mut self.transaction {
                    t.aborted = true;
                }
                return Err(Pending::Ready(error_reply(&format!("ERR {e}"))));
            }
        };
        let spec = resolved.spec;
        if !self.authenticated
            && !matches!(
                spec.kind,
                Kind::Local(LocalCommand::Auth | LocalCommand::Hello | LocalCommand::Quit)
            )
        {
            return Err(Pending::Ready(error_reply(
                "NOAUTH Authentication required.",
            )));
        }
        if resolved
            .keys
            .iter()
            .any(|i| request.args[*i].starts_with(RESERVED_PREFIX))
        {
            return Err(Pending::Ready(error_reply(
                "ERR keys starting with 'redisfleet:' are reserved for redis-fleet",
            )));
        }
        if let Some(refused) = self.pubsub_gate(spec, &request) {
            return Err(refused);
        }
        // Client-side caching: a read's keys are remembered before it is sent.
        self.remember_reads(spec, &resolved.keys, &request);
        // Application scripts go to the instances wrapped (`scripts.rs`).
        if spec.kind != Kind::Script {
            return Ok((request, resolved));
        }
        match super::scripts::rewrite(&self.shared.scripts, &request.args) {
            Some(args) if args != request.args => Ok((Request { args, raw: None }, resolved)),
            Some(_) => Ok((request, resolved)),
            None => {
                if let Some(t) = &mut self.transaction {
                    t.aborted = true;
                }
                Err(Pending::Ready(error_reply(
                    "NOSCRIPT No matching script. Please use EVAL.",
                )))
            }
        }
    }

    /// Routes a request that has to wait (or whose connection went over to a newer table
    /// while it was routed in place: `stale`), afresh each time that happens.
    async fn route(&mut self, request: Request, resolved: Resolved, stale: bool) -> Pending {
        let spec = resolved.spec;
        if stale {
            tokio::task::yield_now().await;
        }
        for _ in usize::from(stale)..ROUTING_ATTEMPTS {
            match self.dispatch(&request, &resolved).await {
                Ok(p) => return p,
                Err(Interrupt::Reply(b)) => return Pending::Ready(b),
                Err(Interrupt::Stale) => tokio::task::yield_now().await,
            }
        }
        if spec.kind == Kind::Transaction(TxnCommand::Exec) {
            // An EXEC refused unsent keeps its transaction for the next attempt; after the
            // last one it ends, as EXEC ends it in Redis whatever its answer.
            self.transaction = None;
            self.unwatch().await;
        }
        Pending::Ready(SendError::Stale.reply())
    }

    /// The requests that are sent at once, without waiting for anything: commands on keys
    /// whose ranges are not migrating, outside a transaction, and no write while the table
    /// replicates any category (it may take the replicated path). `None`: the request takes
    /// [`Client::dispatch`].
    fn dispatch_now(&mut self, request: &Request, resolved: &Resolved) -> Option<Dispatched> {
        let spec = resolved.spec;
        if self.transaction.is_some() || !matches!(spec.kind, Kind::SingleKey | Kind::MultiKey(_)) {
            return None;
        }
        let router = self.shared.router.load_full()?;
        // A write may take the replicated path (`replicated.rs`).
        if spec.write && router.resolver.replicates() {
            return None;
        }
        match spec.kind {
            Kind::SingleKey => {
                let key_index = resolved.keys[0];
                let route = router.resolver.resolve(&request.args[key_index]);
                if route.migration.is_some() {
                    return None;
                }
                Some(self.single_plain(router, request, key_index, spec, route))
            }
            Kind::MultiKey(split) => self.split_plain(&router, request, split, &resolved.keys),
            _ => None,
        }
    }

    /// Routes one request, whatever its kind (those [`Client::dispatch_now`] sends too: it
    /// is tried first, in place, and this runs when it could not send or was stale). Each
    /// kind is boxed, so that the boxed work of a waiting request stays small too.
    async fn dispatch(&mut self, request: &Request, resolved: &Resolved) -> Dispatched {
        let spec = resolved.spec;
        if let Kind::Transaction(t) = spec.kind {
            return Box::pin(self.transaction_command(t, request)).await;
        }
        // Writes on replicated categories take their own path (`replicated.rs`); reads, and
        // every command of a table without replication, cost this one check.
        let replicating = if spec.write || spec.kind == Kind::Script {
            self.shared
                .router
                .load()
                .as_ref()
                .filter(|r| r.resolver.replicates())
                .cloned()
        } else {
            None
        };
        if let Some(router) = replicating
            && let Some(dispatched) = Box::pin(self.replicated(&router, request, resolved)).await
        {
            return dispatched;
        }
        if self.transaction.is_some() {
            return Box::pin(self.queue(request, resolved)).await;
        }
        if let Kind::Local(l) = spec.kind {
            return Ok(Box::pin(self.local(l, request)).await);
        }
        let Some(router) = self.shared.router.load_full() else {
            return Ok(Pending::Ready(error_reply(
                "TRYAGAIN the routing table is not loaded yet",
            )));
        };
        match spec.kind {
            Kind::SingleKey => {
                let key_index = resolved.keys[0];
                let route = router.resolver.resolve(&request.args[key_index]);
                match route.migration {
                    Some(m) => {
                        Box::pin(self.single_moving(router, request, key_index, spec, route, m))
                            .await
                    }
                    None => self.single_plain(router, request, key_index, spec, route),
                }
            }
            Kind::MultiKey(split) => {
                Box::pin(self.split(router, request, split, &resolved.keys)).await
            }
            Kind::SameInstance | Kind::Script => {
                Box::pin(self.same_instance(router, request, &resolved.keys, spec)).await
            }
            Kind::Blocking => Box::pin(self.blocking(router, request, &resolved.keys, spec)).await,
            Kind::FanOut(f) => Ok(Box::pin(self.fan_out(router, f, request.clone())).await),
            Kind::PubSub(p) => Ok(Box::pin(self.pubsub(router, p, request.clone())).await),
            Kind::Container | Kind::Refused(_) | Kind::Local(_) | Kind::Transaction(_) => {
                Ok(Pending::Ready(error_reply("ERR unsupported command")))
            }
        }
    }

    fn forward(
        &self,
        router: Arc<Router>,
        target: InstanceId,
        category: CategoryId,
        bytes: Bytes,
        replies: usize,
        read: ReadKind,
    ) -> Dispatched {
        let rx = router.send(target, self.lane(), bytes, replies)?;
        router.categories[usize::from(category)].commands.inc();
        Ok(Pending::Backend {
            rx,
            accounting: Accounting {
                router,
                category,
                read,
                first: true,
            },
        })
    }

    /// Sends `bytes` to instance `target` as routed by `router` and waits for the replies.
    async fn call(
        &self,
        router: &Router,
        target: InstanceId,
        bytes: Bytes,
        replies: usize,
    ) -> Result<Replies, Interrupt> {
        let rx = router.send(target, self.lane(), bytes, replies)?;
        rx.await
            .unwrap_or_else(|_| Err(lost()))
            .map_err(|e| Interrupt::Reply(e.reply()))
    }
}

fn lost() -> BackendError {
    BackendError::Lost {
        instance: "?".to_owned(),
        reason: "the request was dropped".to_owned(),
    }
}

fn parse(reply: &Bytes) -> Result<Frame, Bytes> {
    match parse_frame(reply, &Limits::replies()) {
        Ok(Some((frame, _))) => Ok(frame),
        _ => Err(error_reply("ERR unreadable reply from the instance")),
    }
}
