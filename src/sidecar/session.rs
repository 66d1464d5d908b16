//! One client connection: requests are read and dispatched in order by a reader, replies are
//! written in the same order by a writer, so a client may pipeline freely.
//!
//! Dispatch:
//! - single-key commands go to the instance that serves the key (its owner, its failover
//!   instance, or — while its slot migrates — the target, after the key was moved there);
//! - MGET/MSET/DEL/UNLINK/EXISTS/TOUCH are split per instance and merged in the client's order;
//! - scripts, multi-key commands and transactions must stay on one instance, else
//!   `-CROSSINSTANCE`; blocking commands and WATCH use a connection of their own;
//! - PING, ECHO, SELECT 0, AUTH, HELLO 2, CLIENT …, QUIT are answered here; DBSIZE, SCAN,
//!   RANDOMKEY and SCRIPT LOAD/EXISTS/FLUSH go to every instance; administrative commands are
//!   refused with a reason.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context as TaskContext, Poll};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::backend::{BackendError, Dedicated, Replies, ReplyReceiver};
use super::command::{self, FanOut, Kind, LocalCommand, Split, TxnCommand};
use super::metrics::SidecarMetrics;
use super::router::Router;
use super::ttl::{self, TtlAction};
use crate::redis::connect::SecretString;
use crate::redis::keymove;
use crate::redis::keys::RESERVED_PREFIX;
use crate::redis::resp::{Frame, Limits, Request, RequestDecoder, encode_request, parse_frame};
use crate::routing::keyspace::{CategoryId, InstanceId, Route};

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
    /// This sidecar's id (heartbeats, move leases).
    pub id: String,
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

/// Serves one client connection until it closes.
///
/// One task per connection: requests are decoded and dispatched in order, and the replies are
/// written in the same order as they become ready, coalescing every reply that is ready into
/// one write. A request that has to wait before it can be sent (a key being migrated, a
/// blocking command, a fan-out) lets the replies before it go out meanwhile.
pub async fn serve(mut stream: TcpStream, shared: Arc<Shared>) {
    let _ = stream.set_nodelay(true);
    let id = shared.next_client.fetch_add(1, Ordering::Relaxed);
    shared.metrics.clients.inc();
    let mut client = Client::new(id, shared.clone());
    let mut buf = BytesMut::with_capacity(4096);
    let mut decoder = RequestDecoder::new(shared.limits);
    let mut queue: VecDeque<Pending> = VecDeque::new();
    let mut out = BytesMut::new();
    let mut closing = false;
    'conn: loop {
        // Dispatch every request that has fully arrived.
        while !closing {
            match decoder.decode_request(&mut buf) {
                Ok(Some(request)) => {
                    let dispatch = client.handle(request);
                    tokio::pin!(dispatch);
                    let pending = loop {
                        tokio::select! {
                            biased;
                            p = &mut dispatch => break p,
                            () = std::future::poll_fn(|cx| drain_ready(&mut queue, &mut out, &mut closing, cx)),
                                if !queue.is_empty() =>
                            {
                                if !flush(&mut stream, &mut out).await || closing {
                                    break 'conn;
                                }
                            }
                        }
                    };
                    closing = matches!(pending, Pending::Close(_));
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
        if closing && queue.is_empty() {
            let _ = stream.shutdown().await;
            break;
        }
        if let Some(needed) = decoder.needed() {
            buf.reserve(needed.saturating_sub(buf.len()));
        } else if buf.capacity() - buf.len() < 1024 {
            buf.reserve(4096);
        }
        tokio::select! {
            biased;
            () = std::future::poll_fn(|cx| drain_ready(&mut queue, &mut out, &mut closing, cx)),
                if !queue.is_empty() => {}
            read = stream.read_buf(&mut buf), if !closing => match read {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            },
        }
    }
    shared.metrics.clients.dec();
}

/// A transaction being queued (MULTI … EXEC).
#[derive(Default)]
struct Transaction {
    queued: Vec<Vec<Bytes>>,
    /// Category TTL commands for keys the transaction writes, sent after EXEC.
    after: Vec<Vec<Bytes>>,
    target: Option<InstanceId>,
    aborted: bool,
}

/// Per-connection state.
struct Client {
    id: u64,
    shared: Arc<Shared>,
    name: Option<Bytes>,
    authenticated: bool,
    transaction: Option<Transaction>,
    /// A connection holding WATCHed keys: (table instance name, connection).
    watching: Option<(String, Dedicated)>,
    /// Connections for blocking commands, by instance name.
    dedicated: HashMap<String, Dedicated>,
    sample: u32,
}

/// The category TTL rules for a command whose keys belong to `categories`: each key gets the
/// rules of its own category (the keys of one command may span several categories).
fn ttl_action(
    router: &Router,
    name: &str,
    args: &[Bytes],
    mut categories: impl Iterator<Item = CategoryId> + Clone,
) -> TtlAction {
    let resolver = &router.resolver;
    let rules_of = |c: CategoryId| resolver.categories()[usize::from(c)].ttl;
    let now = now_ms();
    let Some(first) = categories.clone().next() else {
        return TtlAction::Unchanged;
    };
    if categories.clone().all(|c| c == first) {
        return ttl::apply(&rules_of(first), name, args, now);
    }
    let mut distinct: Vec<CategoryId> = categories.by_ref().collect();
    distinct.sort_unstable();
    distinct.dedup();
    let mut appended = Vec::new();
    for c in distinct {
        match ttl::apply(&rules_of(c), name, args, now) {
            TtlAction::Unchanged => {}
            TtlAction::Append(cmds) => appended.extend(
                cmds.into_iter()
                    .filter(|cmd| cmd.get(1).is_some_and(|k| resolver.category_of(k) == c)),
            ),
            other => return other,
        }
    }
    if appended.is_empty() {
        TtlAction::Unchanged
    } else {
        TtlAction::Append(appended)
    }
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
        Self {
            id,
            shared,
            name: None,
            authenticated,
            transaction: None,
            watching: None,
            dedicated: HashMap::new(),
            sample: (id as u32).wrapping_mul(2_654_435_761) | 1,
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

    async fn handle(&mut self, request: Request) -> Pending {
        let resolved = match command::resolve(&request.args) {
            Ok(r) => r,
            Err(e) => {
                if let Some(t) = &mut self.transaction {
                    t.aborted = true;
                }
                return Pending::Ready(error_reply(&format!("ERR {e}")));
            }
        };
        let spec = resolved.spec;
        if !self.authenticated
            && !matches!(
                spec.kind,
                Kind::Local(LocalCommand::Auth | LocalCommand::Hello | LocalCommand::Quit)
            )
        {
            return Pending::Ready(error_reply("NOAUTH Authentication required."));
        }
        if resolved
            .keys
            .iter()
            .any(|i| request.args[*i].starts_with(RESERVED_PREFIX))
        {
            return Pending::Ready(error_reply(
                "ERR keys starting with 'redisfleet:' are reserved for redis-fleet",
            ));
        }
        if let Kind::Transaction(t) = spec.kind {
            return self.transaction_command(t, request).await;
        }
        if self.transaction.is_some() {
            return self.queue(request, &resolved.keys, spec.name);
        }
        if let Kind::Local(l) = spec.kind {
            return self.local(l, &request).await;
        }
        let Some(router) = self.shared.router.load_full() else {
            return Pending::Ready(error_reply("TRYAGAIN the routing table is not loaded yet"));
        };
        match spec.kind {
            Kind::SingleKey => {
                self.single(router, request, resolved.keys[0], spec.name)
                    .await
            }
            Kind::MultiKey(split) => self.split(router, request, split, &resolved.keys).await,
            Kind::SameInstance | Kind::Script => {
                self.same_instance(router, request, &resolved.keys, spec.name)
                    .await
            }
            Kind::Blocking => self.blocking(router, request, &resolved.keys).await,
            Kind::FanOut(f) => self.fan_out(router, f, request).await,
            Kind::Container | Kind::Refused(_) | Kind::Local(_) | Kind::Transaction(_) => {
                Pending::Ready(error_reply("ERR unsupported command"))
            }
        }
    }

    /// The route of `key`, after moving it to the migration target if its slot migrates.
    async fn route(&mut self, router: &Router, key: &Bytes) -> Result<Route, Bytes> {
        let route = router.resolver.resolve(key);
        if let Some(from) = route.migrating_from {
            self.move_key(router, from, route.target, key).await?;
        }
        Ok(route)
    }

    /// Moves one key from `from` to `to` (see [`keymove`]); waits while another mover has it.
    async fn move_key(
        &mut self,
        router: &Router,
        from: InstanceId,
        to: InstanceId,
        key: &Bytes,
    ) -> Result<(), Bytes> {
        let owner = format!("{}/{}", self.shared.id, self.id);
        let started = Instant::now();
        let mut pause = Duration::from_millis(1);
        loop {
            let take = router
                .backend(from)
                .command(self.lane(), &keymove::take_command(key, &owner));
            let reply = backend_reply(take.await.unwrap_or_else(|_| Err(lost())), true);
            let frame = parse(&reply)?;
            match keymove::parse_taken(&frame) {
                Ok(keymove::Taken::None) => return Ok(()),
                Ok(keymove::Taken::Busy) => {
                    if started.elapsed() > Duration::from_millis(keymove::LEASE_MS + 1000) {
                        return Err(error_reply("TRYAGAIN the key is being migrated, retry"));
                    }
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_millis(50));
                }
                Ok(keymove::Taken::Value { dump, pttl }) => {
                    if let Some(restore) = keymove::restore_command(key, &dump, pttl) {
                        let rx = router.backend(to).command(self.lane(), &restore);
                        let reply = backend_reply(rx.await.unwrap_or_else(|_| Err(lost())), true);
                        if let Err(e) = keymove::parse_restored(&parse(&reply)?) {
                            // The lease expires and the rebalance Job finishes this key.
                            return Err(error_reply(&format!(
                                "TRYAGAIN moving the key failed: {e}"
                            )));
                        }
                    }
                    let fin = router
                        .backend(from)
                        .command(self.lane(), &keymove::finish_command(key, &owner));
                    let _ = fin.await;
                    self.shared.metrics.keys_moved.inc();
                    return Ok(());
                }
                Ok(keymove::Taken::Big { .. }) => {
                    return Err(error_reply("TRYAGAIN the key is being migrated, retry"));
                }
                Err(e) => return Err(error_reply(&format!("ERR moving the key failed: {e}"))),
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
    ) -> Pending {
        router.categories[usize::from(category)].commands.inc();
        let rx = router.backend(target).send(self.lane(), bytes, replies);
        Pending::Backend {
            rx,
            accounting: Accounting {
                router,
                category,
                read,
                first: true,
            },
        }
    }

    async fn single(
        &mut self,
        router: Arc<Router>,
        request: Request,
        key_index: usize,
        name: &str,
    ) -> Pending {
        let key = request.args[key_index].clone();
        let route = match self.route(&router, &key).await {
            Ok(r) => r,
            Err(e) => return Pending::Ready(e),
        };
        let rules = router.resolver.categories()[usize::from(route.category)].ttl;
        let read = if matches!(
            name,
            "get" | "getex" | "getdel" | "hget" | "lindex" | "getrange"
        ) {
            ReadKind::Single
        } else {
            ReadKind::None
        };
        let mut extra: Vec<Vec<Bytes>> = Vec::new();
        let mut args_override: Option<Vec<Bytes>> = None;
        match ttl::apply(&rules, name, &request.args, now_ms()) {
            TtlAction::Unchanged => {}
            TtlAction::Replace(args) => args_override = Some(args),
            TtlAction::Append(cmds) => extra = cmds,
            TtlAction::Refuse(text) => return Pending::Ready(error_reply(&text)),
        }
        if rules.adaptive && ttl::is_adaptive_read(name.as_bytes()) && self.sampled() {
            extra.extend(ttl::adaptive_extension(&rules, &key));
        }
        let bytes = match (args_override, extra.is_empty(), &request.raw) {
            (None, true, Some(raw)) => raw.clone(),
            (args, _, _) => {
                let mut cmds = vec![args.unwrap_or(request.args)];
                cmds.extend(extra.iter().cloned());
                bundle(&cmds)
            }
        };
        self.forward(
            router,
            route.target,
            route.category,
            bytes,
            1 + extra.len(),
            read,
        )
    }

    async fn split(
        &mut self,
        router: Arc<Router>,
        request: Request,
        split: Split,
        keys: &[usize],
    ) -> Pending {
        let per_key = match split {
            Split::Mset => 2,
            _ => 1,
        };
        // Route every key (moving migrating ones first).
        let mut routes = Vec::with_capacity(keys.len());
        for i in keys {
            match self.route(&router, &request.args[*i]).await {
                Ok(r) => routes.push(r),
                Err(e) => return Pending::Ready(e),
            }
        }
        let name = request.args[0].clone();
        let category = routes[0].category;
        let default_ttl = |cat: CategoryId| {
            router.resolver.categories()[usize::from(cat)]
                .ttl
                .default_ms
        };
        // One instance and no TTL to add: forward as it is.
        let single_target = routes.iter().all(|r| r.target == routes[0].target);
        let needs_ttl =
            split == Split::Mset && routes.iter().any(|r| default_ttl(r.category).is_some());
        if single_target && !needs_ttl {
            let bytes = wire(&request);
            return self.forward(router, routes[0].target, category, bytes, 1, ReadKind::None);
        }
        // Group keys by target, keeping the client's order inside each group.
        let mut groups: Vec<(InstanceId, Vec<usize>)> = Vec::new();
        for (n, r) in routes.iter().enumerate() {
            match groups.iter_mut().find(|(t, _)| *t == r.target) {
                Some((_, v)) => v.push(n),
                None => groups.push((r.target, vec![n])),
            }
        }
        let mut parts = Vec::with_capacity(groups.len());
        for (target, members) in &groups {
            let mut cmd = vec![name.clone()];
            let mut extra = Vec::new();
            for n in members {
                let at = keys[*n];
                cmd.extend(request.args[at..at + per_key].iter().cloned());
                if split == Split::Mset {
                    let rules = &router.resolver.categories()[usize::from(routes[*n].category)].ttl;
                    extra.extend(ttl::default_expiry(rules, &request.args[at]));
                }
            }
            for n in members {
                router.categories[usize::from(routes[*n].category)]
                    .commands
                    .inc();
            }
            let mut cmds = vec![cmd];
            let replies = 1 + extra.len();
            cmds.extend(extra);
            let rx = router
                .backend(*target)
                .send(self.lane(), bundle(&cmds), replies);
            parts.push((members.clone(), rx));
        }
        let total = keys.len();
        let router2 = router.clone();
        let categories: Vec<CategoryId> = routes.iter().map(|r| r.category).collect();
        Pending::Future(Box::pin(async move {
            merge(split, parts, total, &router2, &categories).await
        }))
    }

    async fn same_instance(
        &mut self,
        router: Arc<Router>,
        request: Request,
        keys: &[usize],
        name: &str,
    ) -> Pending {
        let mut routes = Vec::with_capacity(keys.len());
        for i in keys {
            match self.route(&router, &request.args[*i]).await {
                Ok(r) => routes.push(r),
                Err(e) => return Pending::Ready(e),
            }
        }
        let (target, category) = match routes.first() {
            Some(r) => (r.target, r.category),
            // A script without keys runs on the first instance of the table.
            None => (0, (router.resolver.categories().len() - 1) as CategoryId),
        };
        if routes.iter().any(|r| r.target != target) {
            return Pending::Ready(error_reply(&format!(
                "CROSSINSTANCE the keys of this {} command live on different instances",
                name.to_ascii_uppercase()
            )));
        }
        // Destination keys (COPY, LMOVE, *STORE, MSETNX, …) get their category's TTL rules.
        let categories = routes.iter().map(|r| r.category);
        let (bytes, replies) = match ttl_action(&router, name, &request.args, categories) {
            TtlAction::Unchanged => (wire(&request), 1),
            TtlAction::Replace(args) => (bundle(&[args]), 1),
            TtlAction::Append(extra) => {
                let mut cmds = vec![request.args];
                cmds.extend(extra);
                let n = cmds.len();
                (bundle(&cmds), n)
            }
            TtlAction::Refuse(text) => return Pending::Ready(error_reply(&text)),
        };
        self.forward(router, target, category, bytes, replies, ReadKind::None)
    }

    async fn blocking(&mut self, router: Arc<Router>, request: Request, keys: &[usize]) -> Pending {
        let mut target = None;
        for i in keys {
            let r = match self.route(&router, &request.args[*i]).await {
                Ok(r) => r,
                Err(e) => return Pending::Ready(e),
            };
            router.categories[usize::from(r.category)].commands.inc();
            if target.is_some_and(|t| t != r.target) {
                return Pending::Ready(error_reply(
                    "CROSSINSTANCE the keys of this blocking command live on different instances",
                ));
            }
            target = Some(r.target);
        }
        let Some(target) = target else {
            return Pending::Ready(error_reply("ERR blocking command without keys"));
        };
        let backend = router.backend(target).clone();
        let name = backend.name().to_owned();
        if !self.dedicated.contains_key(&name) {
            match backend.dedicated().await {
                Ok(conn) => {
                    self.dedicated.insert(name.clone(), conn);
                }
                Err(e) => return Pending::Ready(e.reply()),
            }
        }
        let bytes = wire(&request);
        let Some(conn) = self.dedicated.get_mut(&name) else {
            return Pending::Ready(error_reply("ERR no connection"));
        };
        match conn.call(&bytes, 1).await {
            Ok(r) => Pending::Ready(r.first()),
            Err(e) => {
                self.dedicated.remove(&name);
                Pending::Ready(e.reply())
            }
        }
    }

    fn queue(&mut self, request: Request, keys: &[usize], name: &str) -> Pending {
        let router = self.shared.router.load_full();
        let Some(t) = self.transaction.as_mut() else {
            return Pending::Ready(error_reply("ERR no transaction"));
        };
        if let Some(router) = &router {
            for i in keys {
                let route = router.resolver.resolve(&request.args[*i]);
                if route.migrating_from.is_some() {
                    t.aborted = true;
                    return Pending::Ready(error_reply(
                        "TRYAGAIN a key of this transaction is being migrated, retry the transaction",
                    ));
                }
                match t.target {
                    Some(existing) if existing != route.target => {
                        t.aborted = true;
                        return Pending::Ready(error_reply(
                            "CROSSINSTANCE the keys of this transaction live on different instances",
                        ));
                    }
                    _ => t.target = Some(route.target),
                }
            }
        }
        let mut args = request.args;
        if let Some(router) = &router {
            let categories = keys.iter().map(|i| router.resolver.category_of(&args[*i]));
            match ttl_action(router, name, &args, categories) {
                TtlAction::Unchanged => {}
                TtlAction::Replace(replaced) => args = replaced,
                // Sent right after EXEC on the same connection (NX: never shortens a TTL).
                TtlAction::Append(extra) => t.after.extend(extra),
                TtlAction::Refuse(text) => {
                    t.aborted = true;
                    return Pending::Ready(error_reply(&text));
                }
            }
        }
        t.queued.push(args);
        Pending::Ready(Bytes::from_static(b"+QUEUED\r\n"))
    }

    async fn transaction_command(&mut self, t: TxnCommand, request: Request) -> Pending {
        match t {
            TxnCommand::Multi => {
                if self.transaction.is_some() {
                    return Pending::Ready(error_reply("ERR MULTI calls can not be nested"));
                }
                self.transaction = Some(Transaction::default());
                Pending::Ready(Frame::ok().to_bytes())
            }
            TxnCommand::Discard => match self.transaction.take() {
                None => Pending::Ready(error_reply("ERR DISCARD without MULTI")),
                Some(_) => {
                    self.unwatch().await;
                    Pending::Ready(Frame::ok().to_bytes())
                }
            },
            TxnCommand::Exec => self.exec().await,
            TxnCommand::Watch => {
                if self.transaction.is_some() {
                    return Pending::Ready(error_reply("ERR WATCH inside MULTI is not allowed"));
                }
                let Some(router) = self.shared.router.load_full() else {
                    return Pending::Ready(error_reply(
                        "TRYAGAIN the routing table is not loaded yet",
                    ));
                };
                let mut target = None;
                for key in &request.args[1..] {
                    let r = match self.route(&router, key).await {
                        Ok(r) => r,
                        Err(e) => return Pending::Ready(e),
                    };
                    if target.is_some_and(|t| t != r.target) {
                        return Pending::Ready(error_reply(
                            "CROSSINSTANCE WATCHed keys live on different instances",
                        ));
                    }
                    target = Some(r.target);
                }
                let Some(target) = target else {
                    return Pending::Ready(error_reply(
                        "ERR wrong number of arguments for 'watch' command",
                    ));
                };
                let backend = router.backend(target).clone();
                if self
                    .watching
                    .as_ref()
                    .is_some_and(|(n, _)| n != backend.name())
                {
                    return Pending::Ready(error_reply(
                        "CROSSINSTANCE WATCHed keys live on different instances",
                    ));
                }
                if self.watching.is_none() {
                    match backend.dedicated().await {
                        Ok(conn) => self.watching = Some((backend.name().to_owned(), conn)),
                        Err(e) => return Pending::Ready(e.reply()),
                    }
                }
                let bytes = wire(&request);
                let Some((_, conn)) = self.watching.as_mut() else {
                    return Pending::Ready(error_reply("ERR no connection"));
                };
                match conn.call(&bytes, 1).await {
                    Ok(r) => Pending::Ready(r.first()),
                    Err(e) => {
                        self.watching = None;
                        Pending::Ready(e.reply())
                    }
                }
            }
            TxnCommand::Unwatch => {
                self.unwatch().await;
                Pending::Ready(Frame::ok().to_bytes())
            }
        }
    }

    async fn unwatch(&mut self) {
        if let Some((_, mut conn)) = self.watching.take() {
            let mut out = BytesMut::new();
            encode_request(&[b"UNWATCH".as_slice()], &mut out);
            let _ = conn.call(&out, 1).await;
        }
    }

    async fn exec(&mut self) -> Pending {
        let Some(t) = self.transaction.take() else {
            return Pending::Ready(error_reply("ERR EXEC without MULTI"));
        };
        if t.aborted {
            self.unwatch().await;
            return Pending::Ready(error_reply(
                "EXECABORT Transaction discarded because of previous errors.",
            ));
        }
        let Some(router) = self.shared.router.load_full() else {
            return Pending::Ready(error_reply("TRYAGAIN the routing table is not loaded yet"));
        };
        let mut cmds = vec![vec![Bytes::from_static(b"MULTI")]];
        cmds.extend(t.queued);
        cmds.push(vec![Bytes::from_static(b"EXEC")]);
        let replies = cmds.len();
        let bytes = bundle(&cmds);
        let after = (!t.after.is_empty()).then(|| (bundle(&t.after), t.after.len()));
        if let Some((name, mut conn)) = self.watching.take() {
            if t.target.is_some_and(|tg| router.backend(tg).name() != name) {
                return Pending::Ready(error_reply(
                    "CROSSINSTANCE the transaction's keys and the WATCHed keys live on different instances",
                ));
            }
            let reply = match conn.call(&bytes, replies).await {
                Ok(r) => r.last(),
                Err(e) => return Pending::Ready(e.reply()),
            };
            if let Some((after, n)) = after {
                let _ = conn.call(&after, n).await;
            }
            return Pending::Ready(reply);
        }
        if replies == 2 {
            return Pending::Ready(Bytes::from_static(b"*0\r\n"));
        }
        let target = t.target.unwrap_or(0);
        let category = (router.resolver.categories().len() - 1) as CategoryId;
        let lane = self.lane();
        let backend = router.backend(target).clone();
        let mut pending = self.forward(router, target, category, bytes, replies, ReadKind::None);
        if let Pending::Backend { accounting, .. } = &mut pending {
            accounting.first = false;
        }
        if let Some((after, n)) = after {
            // Pipelined behind EXEC on the same connection; the client does not wait for it.
            drop(backend.send(lane, after, n));
        }
        pending
    }

    async fn local(&mut self, l: LocalCommand, request: &Request) -> Pending {
        let args = &request.args;
        let ok = || Pending::Ready(Frame::ok().to_bytes());
        match l {
            LocalCommand::Ping => match args.get(1) {
                Some(msg) => Pending::Ready(encode(&Frame::Bulk(msg.clone()))),
                None => Pending::Ready(Bytes::from_static(b"+PONG\r\n")),
            },
            LocalCommand::Echo => Pending::Ready(encode(&Frame::Bulk(args[1].clone()))),
            LocalCommand::Select => match args.get(1).map(|a| a.as_ref()) {
                Some(b"0") => ok(),
                _ => Pending::Ready(error_reply(
                    "ERR redis-fleet serves database 0 only (SELECT 0)",
                )),
            },
            LocalCommand::Quit => Pending::Close(Frame::ok().to_bytes()),
            LocalCommand::Reset => {
                self.transaction = None;
                self.unwatch().await;
                self.dedicated.clear();
                self.name = None;
                Pending::Ready(Bytes::from_static(b"+RESET\r\n"))
            }
            LocalCommand::Auth => self.auth(args.last()),
            LocalCommand::Hello => self.hello(args),
            LocalCommand::Time => {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap_or_default();
                Pending::Ready(encode(&Frame::Array(vec![
                    Frame::Bulk(Bytes::from(now.as_secs().to_string())),
                    Frame::Bulk(Bytes::from(now.subsec_micros().to_string())),
                ])))
            }
            LocalCommand::Info => Pending::Ready(encode(&Frame::Bulk(Bytes::from(self.info())))),
            LocalCommand::ClientId => Pending::Ready(encode(&Frame::Integer(self.id as i64))),
            LocalCommand::ClientGetName => Pending::Ready(match &self.name {
                Some(n) => encode(&Frame::Bulk(n.clone())),
                None => Bytes::from_static(b"$-1\r\n"),
            }),
            LocalCommand::ClientSetName => {
                self.name = args.get(2).cloned();
                ok()
            }
            LocalCommand::ClientSetInfo => ok(),
            LocalCommand::ClientInfo | LocalCommand::ClientList => {
                let name = self
                    .name
                    .as_ref()
                    .map(|n| String::from_utf8_lossy(n).into_owned())
                    .unwrap_or_default();
                Pending::Ready(encode(&Frame::Bulk(Bytes::from(format!(
                    "id={} name={name} db=0 resp=2 lib=redis-fleet-sidecar\n",
                    self.id
                )))))
            }
            LocalCommand::ClientReply => match args.get(2).map(|a| a.to_ascii_uppercase()) {
                Some(v) if v == b"ON" => ok(),
                _ => Pending::Ready(error_reply(
                    "ERR CLIENT REPLY OFF/SKIP is not supported by redis-fleet",
                )),
            },
            // COMMAND and its subcommands, and HELP: the instances know best.
            LocalCommand::Help
            | LocalCommand::Command
            | LocalCommand::CommandCount
            | LocalCommand::CommandDocs
            | LocalCommand::CommandGetKeys
            | LocalCommand::CommandGetKeysAndFlags
            | LocalCommand::CommandInfo
            | LocalCommand::CommandList => {
                let Some(router) = self.shared.router.load_full() else {
                    return Pending::Ready(error_reply(
                        "TRYAGAIN the routing table is not loaded yet",
                    ));
                };
                let Some(backend) = router
                    .backends
                    .iter()
                    .find(|b| b.is_up())
                    .or(router.backends.first())
                else {
                    return Pending::Ready(error_reply("ERR no instance"));
                };
                let bytes = wire(request);
                let rx = backend.send(self.lane(), bytes, 1);
                Pending::Future(Box::pin(async move {
                    backend_reply(rx.await.unwrap_or_else(|_| Err(lost())), true)
                }))
            }
        }
    }

    fn auth(&mut self, password: Option<&Bytes>) -> Pending {
        match (&self.shared.password, password) {
            (None, _) => {
                self.authenticated = true;
                Pending::Ready(Frame::ok().to_bytes())
            }
            (Some(expected), Some(given)) if expected.expose().as_bytes() == given.as_ref() => {
                self.authenticated = true;
                Pending::Ready(Frame::ok().to_bytes())
            }
            _ => Pending::Ready(error_reply(
                "WRONGPASS invalid username-password pair or user is disabled.",
            )),
        }
    }

    fn hello(&mut self, args: &[Bytes]) -> Pending {
        if let Some(v) = args.get(1)
            && v.as_ref() != b"2"
        {
            return Pending::Ready(error_reply(
                "NOPROTO sorry, this protocol version is not supported",
            ));
        }
        let mut i = 2;
        while i < args.len() {
            match args[i].to_ascii_uppercase().as_slice() {
                b"AUTH" if i + 2 < args.len() => {
                    if let Pending::Ready(reply) = self.auth(Some(&args[i + 2]))
                        && reply.starts_with(b"-")
                    {
                        return Pending::Ready(reply);
                    }
                    i += 3;
                }
                b"SETNAME" if i + 1 < args.len() => {
                    self.name = Some(args[i + 1].clone());
                    i += 2;
                }
                _ => return Pending::Ready(error_reply("ERR Syntax error in HELLO option")),
            }
        }
        if !self.authenticated {
            return Pending::Ready(error_reply(
                "NOAUTH HELLO must be called with the client already authenticated, otherwise the HELLO <proto> AUTH <user> <pass> option can be used to authenticate the client and select the RESP protocol version at the same time",
            ));
        }
        let field = |k: &'static str, v: Frame| [Frame::Bulk(Bytes::from_static(k.as_bytes())), v];
        let mut items = Vec::new();
        items.extend(field("server", Frame::Bulk(Bytes::from_static(b"redis"))));
        items.extend(field("version", Frame::Bulk(Bytes::from_static(b"7.0.0"))));
        items.extend(field("proto", Frame::Integer(2)));
        items.extend(field("id", Frame::Integer(self.id as i64)));
        items.extend(field(
            "mode",
            Frame::Bulk(Bytes::from_static(b"standalone")),
        ));
        items.extend(field("role", Frame::Bulk(Bytes::from_static(b"master"))));
        items.extend(field("modules", Frame::Array(Vec::new())));
        Pending::Ready(encode(&Frame::Array(items)))
    }

    fn info(&self) -> String {
        let router = self.shared.router.load_full();
        let version = router.as_ref().map_or(0, |r| r.version());
        let instances = router.as_ref().map_or(0, |r| r.backends.len());
        let up = router
            .as_ref()
            .map_or(0, |r| r.backends.iter().filter(|b| b.is_up()).count());
        format!(
            "# Server\r\nredis_version:7.0.0\r\nredis_mode:standalone\r\nserver_name:redis-fleet-sidecar\r\n\
             sidecar_version:{}\r\n\r\n# Clients\r\nconnected_clients:{}\r\n\r\n# Keyspace\r\n\r\n\
             # Fleet\r\nrouting_version:{version}\r\ninstances:{instances}\r\ninstances_up:{up}\r\n",
            env!("CARGO_PKG_VERSION"),
            self.shared.metrics.clients.get(),
        )
    }

    async fn fan_out(&mut self, router: Arc<Router>, f: FanOut, request: Request) -> Pending {
        let args = &request.args;
        let lane = self.lane();
        let call_all = |cmd: &[Bytes]| {
            let bytes = bundle(&[cmd.to_vec()]);
            router
                .backends
                .iter()
                .map(|b| b.send(lane, bytes.clone(), 1))
                .collect::<Vec<_>>()
        };
        match f {
            FanOut::DbSize => {
                let mut total = 0i64;
                for rx in call_all(args) {
                    match parse(&backend_reply(
                        rx.await.unwrap_or_else(|_| Err(lost())),
                        true,
                    )) {
                        Ok(Frame::Integer(n)) => total += n,
                        Ok(Frame::Error(e)) => {
                            return Pending::Ready(error_reply(&String::from_utf8_lossy(&e)));
                        }
                        Ok(_) => {}
                        Err(e) => return Pending::Ready(e),
                    }
                }
                Pending::Ready(encode(&Frame::Integer(total)))
            }
            FanOut::ScriptLoad | FanOut::ScriptFlush => {
                let mut last = Frame::ok().to_bytes();
                for rx in call_all(args) {
                    let reply = backend_reply(rx.await.unwrap_or_else(|_| Err(lost())), true);
                    if reply.starts_with(b"-") {
                        return Pending::Ready(reply);
                    }
                    last = reply;
                }
                Pending::Ready(last)
            }
            FanOut::ScriptExists => {
                let mut all: Option<Vec<i64>> = None;
                for rx in call_all(args) {
                    let reply = backend_reply(rx.await.unwrap_or_else(|_| Err(lost())), true);
                    let Ok(Frame::Array(items)) = parse(&reply) else {
                        return Pending::Ready(reply);
                    };
                    let flags: Vec<i64> =
                        items.iter().map(|f| f.as_integer().unwrap_or(0)).collect();
                    all = Some(match all {
                        None => flags,
                        Some(prev) => prev
                            .iter()
                            .zip(&flags)
                            .map(|(a, b)| a.min(b))
                            .copied()
                            .collect(),
                    });
                }
                Pending::Ready(encode(&Frame::Array(
                    all.unwrap_or_default()
                        .into_iter()
                        .map(Frame::Integer)
                        .collect(),
                )))
            }
            FanOut::RandomKey => {
                let n = router.backends.len();
                let start = (self.id as usize).wrapping_add(self.sample as usize) % n.max(1);
                for k in 0..n {
                    let b = &router.backends[(start + k) % n];
                    let rx = b.send(lane, wire(&request), 1);
                    let reply = backend_reply(rx.await.unwrap_or_else(|_| Err(lost())), true);
                    if reply.starts_with(b"$") && !reply.starts_with(b"$-1") {
                        let key = parse(&reply).ok().and_then(|f| f.as_bulk().cloned());
                        if key.is_some_and(|k| !k.starts_with(RESERVED_PREFIX)) {
                            return Pending::Ready(reply);
                        }
                    }
                }
                Pending::Ready(Bytes::from_static(b"$-1\r\n"))
            }
            FanOut::Scan => self.scan(router, request).await,
        }
    }

    /// SCAN over the instances one after the other; the cursor is
    /// `instance cursor × number of instances + instance index`.
    async fn scan(&mut self, router: Arc<Router>, request: Request) -> Pending {
        let args = &request.args;
        let n = router.backends.len() as u64;
        let Some(cursor) = std::str::from_utf8(&args[1])
            .ok()
            .and_then(|s| s.parse::<u64>().ok())
        else {
            return Pending::Ready(error_reply("ERR invalid cursor"));
        };
        let mut instance = cursor % n.max(1);
        let mut inner = cursor / n.max(1);
        let mut keys = Vec::new();
        loop {
            let mut cmd = args.clone();
            cmd[1] = Bytes::from(inner.to_string());
            let b = &router.backends[instance as usize];
            let rx = b.send(self.lane(), bundle(&[cmd]), 1);
            let reply = backend_reply(rx.await.unwrap_or_else(|_| Err(lost())), true);
            let frame = match parse(&reply) {
                Ok(f) => f,
                Err(e) => return Pending::Ready(e),
            };
            let Frame::Array(parts) = frame else {
                return Pending::Ready(reply);
            };
            let next: u64 = parts
                .first()
                .and_then(|f| f.as_bulk())
                .and_then(|b| std::str::from_utf8(b).ok()?.parse().ok())
                .unwrap_or(0);
            if let Some(Frame::Array(found)) = parts.get(1) {
                keys.extend(
                    found
                        .iter()
                        .filter(|k| k.as_bulk().is_some_and(|k| !k.starts_with(RESERVED_PREFIX)))
                        .cloned(),
                );
            }
            let next_cursor = if next != 0 {
                match next.checked_mul(n).and_then(|c| c.checked_add(instance)) {
                    Some(c) => c,
                    None => return Pending::Ready(error_reply("ERR SCAN cursor overflow")),
                }
            } else if instance + 1 < n {
                instance += 1;
                inner = 0;
                if keys.is_empty() {
                    continue;
                }
                instance
            } else {
                0
            };
            return Pending::Ready(encode(&Frame::Array(vec![
                Frame::Bulk(Bytes::from(next_cursor.to_string())),
                Frame::Array(keys),
            ])));
        }
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

/// Merges the replies of a split command in the client's key order.
async fn merge(
    split: Split,
    parts: Vec<(Vec<usize>, ReplyReceiver)>,
    total: usize,
    router: &Router,
    categories: &[CategoryId],
) -> Bytes {
    let mut values: Vec<Frame> = vec![Frame::Null; total];
    let mut sum = 0i64;
    for (members, rx) in parts {
        let reply = backend_reply(rx.await.unwrap_or_else(|_| Err(lost())), true);
        let frame = match parse(&reply) {
            Ok(f) => f,
            Err(e) => return e,
        };
        match (split, frame) {
            (_, Frame::Error(e)) => {
                for n in &members {
                    router.categories[usize::from(categories[*n])].errors.inc();
                }
                let mut out = BytesMut::new();
                Frame::Error(e).encode(&mut out);
                return out.freeze();
            }
            (Split::Mget, Frame::Array(items)) => {
                for (n, item) in members.iter().zip(items) {
                    let m = &router.categories[usize::from(categories[*n])];
                    if matches!(item, Frame::Null) {
                        m.misses.inc();
                    } else {
                        m.hits.inc();
                    }
                    values[*n] = item;
                }
            }
            (Split::Mset, _) => {}
            (_, Frame::Integer(n)) => sum += n,
            (_, other) => return encode(&other),
        }
    }
    match split {
        Split::Mget => encode(&Frame::Array(values)),
        Split::Mset => Frame::ok().to_bytes(),
        _ => encode(&Frame::Integer(sum)),
    }
}
