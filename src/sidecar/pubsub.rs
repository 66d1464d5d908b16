//! Pub/Sub across the fleet: which instance carries which channels, and the sidecar's own
//! subscriptions on them, shared by all its clients.
//!
//! Redis delivers a message only to the subscribers of the instance it is published on. For
//! the fleet to behave as one Redis — a publisher on one application pod reaching subscribers
//! on another, through different sidecars — every sidecar keeps **one listener connection per
//! instance** of its table and subscribes there to every channel and pattern its clients want:
//! - **channels and patterns** (`SUBSCRIBE`, `PSUBSCRIBE`) are listened to on *every*
//!   instance, and a `PUBLISH` through a sidecar goes to *one* instance (chosen by the
//!   channel's hash among the instances that are up, so one channel's messages keep their
//!   order). Each message so reaches each subscribing sidecar exactly once, whichever instance
//!   it was published on — through a sidecar, inside `MULTI` or a Lua script, or by a client
//!   connected to an instance directly — and keyspace notifications reach subscribers from
//!   every instance.
//! - **shard channels** (`SSUBSCRIBE`, `SPUBLISH`) belong to a slot like keys do: a shard
//!   channel is carried by the instance that serves the key of the same name (the migration
//!   source while its slot migrates, where the guard runs commands). Subscribers listen on
//!   that instance and, while a slot migrates, on its target too; after a table change they
//!   keep listening on the previous carrier for [`LINGER`], so a publisher whose sidecar still
//!   routes by the older table is heard.
//!
//! A listener that loses its connection reconnects with backoff and subscribes again; one
//! that stops answering its keep-alive PING is dropped and reconnected. Messages published
//! while a listener is disconnected are not delivered (Redis Pub/Sub is at-most-once; nothing
//! is queued). Each listener's connection is one subscriber for Redis: `PUBLISH` and
//! `PUBSUB NUMSUB` count sidecars (and direct subscribers), not application connections.
//!
//! The hub also serves client-side caching (`CLIENT TRACKING`, `pubsub/tracking.rs`): while a
//! client tracks, one more connection per instance hears of every modified key, and the hub
//! sends each tracking client the invalidations it asked for, through the same queues.
//!
//! Delivery to a client goes through a bounded queue; a client that does not read its
//! messages and lets [`CLIENT_QUEUE`] of them pile up is disconnected, as Redis does with its
//! pub/sub output buffer limit.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tokio::io::AsyncReadExt;
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, warn};

use super::backend::open;
use super::router::Router;
use crate::redis::connect::Target;
use crate::redis::resp::{FrameScanner, Limits, Value, encode_request, parse_value};
use crate::redis::stream::write_flushed;
use crate::routing::slots::crc16;

mod tracking;
pub use tracking::{CHANNEL as INVALIDATE_CHANNEL, MAX_TRACKED_KEYS, TrackConfig, invalidation};

/// How long a shard channel stays subscribed on an instance that no longer carries it.
pub const LINGER: Duration = Duration::from_secs(30);

/// Messages waiting for one client before it is disconnected.
pub const CLIENT_QUEUE: usize = 16 * 1024;

/// How long a subscription waits for the instances to confirm it before it is confirmed to
/// the client anyway (it stays wanted, and is made when an instance comes back).
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(2);

const KEEPALIVE: Duration = Duration::from_secs(5);

/// The three kinds of subscriptions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SubKind {
    /// `SUBSCRIBE`.
    Channel,
    /// `PSUBSCRIBE`.
    Pattern,
    /// `SSUBSCRIBE`.
    Shard,
}

impl SubKind {
    const ALL: [SubKind; 3] = [SubKind::Channel, SubKind::Pattern, SubKind::Shard];

    fn index(self) -> usize {
        match self {
            SubKind::Channel => 0,
            SubKind::Pattern => 1,
            SubKind::Shard => 2,
        }
    }

    fn subscribe(self) -> &'static [u8] {
        match self {
            SubKind::Channel => b"SUBSCRIBE",
            SubKind::Pattern => b"PSUBSCRIBE",
            SubKind::Shard => b"SSUBSCRIBE",
        }
    }

    fn unsubscribe(self) -> &'static [u8] {
        match self {
            SubKind::Channel => b"UNSUBSCRIBE",
            SubKind::Pattern => b"PUNSUBSCRIBE",
            SubKind::Shard => b"SUNSUBSCRIBE",
        }
    }

    /// The kind a confirmation or message names.
    fn of_reply(name: &[u8]) -> Option<(SubKind, bool)> {
        Some(match name {
            b"subscribe" => (SubKind::Channel, true),
            b"psubscribe" => (SubKind::Pattern, true),
            b"ssubscribe" => (SubKind::Shard, true),
            b"unsubscribe" => (SubKind::Channel, false),
            b"punsubscribe" => (SubKind::Pattern, false),
            b"sunsubscribe" => (SubKind::Shard, false),
            _ => return None,
        })
    }
}

/// Where a client's messages go.
#[derive(Debug)]
struct Sink {
    tx: mpsc::Sender<Bytes>,
    resp3: Arc<AtomicBool>,
}

/// A client's side of its message queue.
#[derive(Debug)]
pub struct Inbox {
    /// Messages, encoded for the client's protocol.
    pub rx: mpsc::Receiver<Bytes>,
    /// Whether the client speaks RESP3 (push frames) now.
    pub resp3: Arc<AtomicBool>,
}

/// The sidecar's subscriptions, shared by all its clients.
#[derive(Debug)]
pub struct Hub {
    state: Mutex<State>,
    me: Weak<Hub>,
}

#[derive(Debug, Default)]
struct State {
    sinks: HashMap<u64, Sink>,
    /// Subscribers by kind and name.
    subs: [HashMap<Bytes, HashSet<u64>>; 3],
    /// One listener per instance of the table, by instance name.
    listeners: HashMap<String, Listener>,
    /// Shard channel → the instances it is subscribed on (carriers and lingering ones).
    shard_on: HashMap<Bytes, HashMap<String, Option<Instant>>>,
    router: Option<Arc<Router>>,
    /// Clients with tracking on (`tracking.rs`).
    tracking: HashMap<u64, tracking::Tracked>,
    /// One invalidation connection per instance while a client tracks.
    trackers: HashMap<String, tracking::Conn>,
    me: Weak<Hub>,
}

#[derive(Debug)]
struct Listener {
    tx: mpsc::UnboundedSender<Cmd>,
    connected: Arc<AtomicBool>,
    fingerprint: u64,
}

#[derive(Debug)]
enum Cmd {
    Add {
        kind: SubKind,
        names: Vec<Bytes>,
        ack: Option<oneshot::Sender<()>>,
    },
    Remove {
        kind: SubKind,
        names: Vec<Bytes>,
    },
}

fn lock(m: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Hub {
    /// An empty hub.
    pub fn new() -> Arc<Hub> {
        Arc::new_cyclic(|me| Hub {
            state: Mutex::new(State {
                me: me.clone(),
                ..State::default()
            }),
            me: me.clone(),
        })
    }

    /// Registers client `id`'s inbox (once, at its first subscription).
    pub fn inbox(&self, id: u64, resp3: bool) -> Inbox {
        let (tx, rx) = mpsc::channel(CLIENT_QUEUE);
        let flag = Arc::new(AtomicBool::new(resp3));
        lock(&self.state).sinks.insert(
            id,
            Sink {
                tx,
                resp3: flag.clone(),
            },
        );
        Inbox { rx, resp3: flag }
    }

    /// Subscribes client `id` to `names`; resolves once the instances that are connected
    /// confirmed the subscriptions that are new to this sidecar (at most [`CONFIRM_TIMEOUT`]).
    pub async fn subscribe(&self, id: u64, kind: SubKind, names: &[Bytes]) {
        let acks = {
            let mut state = lock(&self.state);
            let mut fresh = Vec::new();
            for name in names {
                let subscribers = state.subs[kind.index()].entry(name.clone()).or_default();
                if subscribers.is_empty() {
                    fresh.push(name.clone());
                }
                subscribers.insert(id);
            }
            if fresh.is_empty() {
                Vec::new()
            } else {
                state.add(kind, fresh)
            }
        };
        let all = futures::future::join_all(acks);
        let _ = tokio::time::timeout(CONFIRM_TIMEOUT, all).await;
    }

    /// Unsubscribes client `id` from `names`.
    pub fn unsubscribe(&self, id: u64, kind: SubKind, names: &[Bytes]) {
        let mut state = lock(&self.state);
        let mut gone = Vec::new();
        for name in names {
            let map = &mut state.subs[kind.index()];
            if let Some(subscribers) = map.get_mut(name) {
                subscribers.remove(&id);
                if subscribers.is_empty() {
                    map.remove(name);
                    gone.push(name.clone());
                }
            }
        }
        state.remove(kind, gone);
    }

    /// Forgets client `id` (its connection closed).
    pub fn remove_client(&self, id: u64, subscribed: [Vec<Bytes>; 3]) {
        for (kind, names) in SubKind::ALL.into_iter().zip(subscribed) {
            self.unsubscribe(id, kind, &names);
        }
        let mut state = lock(&self.state);
        state.sinks.remove(&id);
        state.forget_tracking(id);
    }

    /// The instance a `PUBLISH` on `channel` goes to: by the channel's hash among the
    /// instances that are up (all of them when none is), so that one channel's messages
    /// through one sidecar keep their order.
    pub fn publish_target(router: &Router, channel: &[u8]) -> usize {
        let up: Vec<usize> = (0..router.backends.len())
            .filter(|i| router.backends[*i].is_up())
            .collect();
        let pick = usize::from(crc16(channel));
        match up.len() {
            0 => pick % router.backends.len().max(1),
            n => up[pick % n],
        }
    }

    /// Follows a new routing table: listeners for new instances (subscribed to everything),
    /// none for removed ones, shard channels moved to their new carriers.
    pub fn reconcile(&self, router: Arc<Router>) {
        let mut state = lock(&self.state);
        if state
            .router
            .as_ref()
            .is_some_and(|r| r.version() == router.version() && Arc::ptr_eq(r, &router))
        {
            state.expire_lingering();
            return;
        }
        // A key may be served by another instance now: tracking clients start over.
        if state.router.is_some() {
            state.flush_tracking();
        }
        state.router = Some(router.clone());
        state.keep_trackers();
        let mut keep = HashSet::new();
        for backend in &router.backends {
            let name = backend.name().to_owned();
            let fingerprint = backend.target().fingerprint();
            keep.insert(name.clone());
            let same = state
                .listeners
                .get(&name)
                .is_some_and(|l| l.fingerprint == fingerprint);
            if same {
                continue;
            }
            // New (or moved) instance: a fresh listener with every channel and pattern.
            let listener = spawn_listener(
                self.me.clone(),
                name.clone(),
                backend.target().clone(),
                fingerprint,
            );
            for kind in [SubKind::Channel, SubKind::Pattern] {
                let names: Vec<Bytes> = state.subs[kind.index()].keys().cloned().collect();
                if !names.is_empty() {
                    let _ = listener.tx.send(Cmd::Add {
                        kind,
                        names,
                        ack: None,
                    });
                }
            }
            // Shard channels it carried before a restart of its listener.
            for (channel, on) in state.shard_on.iter_mut() {
                if on.contains_key(&name) {
                    let _ = listener.tx.send(Cmd::Add {
                        kind: SubKind::Shard,
                        names: vec![channel.clone()],
                        ack: None,
                    });
                }
            }
            state.listeners.insert(name, listener);
        }
        state.listeners.retain(|name, _| keep.contains(name));
        for on in state.shard_on.values_mut() {
            on.retain(|name, _| keep.contains(name));
        }
        // Shard channels: subscribe on the new carriers first, let the old ones linger.
        let channels: Vec<Bytes> = state.subs[SubKind::Shard.index()].keys().cloned().collect();
        for channel in channels {
            let carriers = carriers(&router, &channel);
            let until = Instant::now() + LINGER;
            let on = state.shard_on.entry(channel.clone()).or_default();
            let mut added = Vec::new();
            for (name, linger) in on.iter_mut() {
                if !carriers.contains(name) && linger.is_none() {
                    *linger = Some(until);
                }
            }
            for name in &carriers {
                if on.insert(name.clone(), None).is_none() {
                    added.push(name.clone());
                }
            }
            for name in added {
                if let Some(l) = state.listeners.get(&name) {
                    let _ = l.tx.send(Cmd::Add {
                        kind: SubKind::Shard,
                        names: vec![channel.clone()],
                        ack: None,
                    });
                }
            }
        }
        state.expire_lingering();
    }

    /// Hands a message frame (RESP2, as the instance sent it) to the subscribers of `name`.
    fn deliver(&self, kind: SubKind, name: &[u8], frame: &Bytes) {
        let mut state = lock(&self.state);
        let Some(subscribers) = state.subs[kind.index()].get(name) else {
            return;
        };
        let ids: Vec<u64> = subscribers.iter().copied().collect();
        let mut resp3: Option<Bytes> = None;
        for id in ids {
            let Some(sink) = state.sinks.get(&id) else {
                continue;
            };
            let bytes = if sink.resp3.load(Ordering::Relaxed) {
                resp3.get_or_insert_with(|| as_push(frame)).clone()
            } else {
                frame.clone()
            };
            state.send(id, bytes);
        }
    }
}

impl State {
    /// Queues `bytes` for client `id`; a client whose queue is full is dropped.
    fn send(&mut self, id: u64, bytes: Bytes) {
        let Some(sink) = self.sinks.get(&id) else {
            return;
        };
        if let Err(mpsc::error::TrySendError::Full(_)) = sink.tx.try_send(bytes) {
            warn!(
                client = id,
                "pub/sub client does not read its messages: dropping it"
            );
            // Dropping the sender ends the client's inbox: its connection closes once what
            // it was sent is written. Its subscriptions and tracking end now.
            self.sinks.remove(&id);
            for kind in SubKind::ALL {
                let mut gone = Vec::new();
                self.subs[kind.index()].retain(|name, subscribers| {
                    subscribers.remove(&id);
                    let empty = subscribers.is_empty();
                    if empty {
                        gone.push(name.clone());
                    }
                    !empty
                });
                self.remove(kind, gone);
            }
            self.forget_tracking(id);
        }
    }

    /// Asks the listeners to subscribe to `names`; the acknowledgements to wait for.
    fn add(&mut self, kind: SubKind, names: Vec<Bytes>) -> Vec<oneshot::Receiver<()>> {
        let mut acks = Vec::new();
        let mut ask = |listener: &Listener, names: Vec<Bytes>| {
            let (tx, rx) = oneshot::channel();
            let connected = listener.connected.load(Ordering::Acquire);
            let ack = connected.then_some(tx);
            if listener.tx.send(Cmd::Add { kind, names, ack }).is_ok() && connected {
                acks.push(rx);
            }
        };
        match kind {
            SubKind::Channel | SubKind::Pattern => {
                for listener in self.listeners.values() {
                    ask(listener, names.clone());
                }
            }
            SubKind::Shard => {
                let Some(router) = self.router.clone() else {
                    return acks;
                };
                for channel in names {
                    let on = self.shard_on.entry(channel.clone()).or_default();
                    for name in carriers(&router, &channel) {
                        on.insert(name.clone(), None);
                        if let Some(l) = self.listeners.get(&name) {
                            ask(l, vec![channel.clone()]);
                        }
                    }
                }
            }
        }
        acks
    }

    fn remove(&mut self, kind: SubKind, names: Vec<Bytes>) {
        if names.is_empty() {
            return;
        }
        match kind {
            SubKind::Channel | SubKind::Pattern => {
                for l in self.listeners.values() {
                    let _ = l.tx.send(Cmd::Remove {
                        kind,
                        names: names.clone(),
                    });
                }
            }
            SubKind::Shard => {
                for channel in names {
                    for name in self.shard_on.remove(&channel).unwrap_or_default().keys() {
                        if let Some(l) = self.listeners.get(name) {
                            let _ = l.tx.send(Cmd::Remove {
                                kind,
                                names: vec![channel.clone()],
                            });
                        }
                    }
                }
            }
        }
    }

    /// Drops shard subscriptions whose linger time is over.
    fn expire_lingering(&mut self) {
        let now = Instant::now();
        let State {
            shard_on,
            listeners,
            ..
        } = self;
        for (channel, on) in shard_on.iter_mut() {
            on.retain(|name, until| {
                let keep = until.is_none_or(|t| t > now);
                if !keep && let Some(l) = listeners.get(name) {
                    let _ = l.tx.send(Cmd::Remove {
                        kind: SubKind::Shard,
                        names: vec![channel.clone()],
                    });
                }
                keep
            });
        }
    }
}

/// The instances that carry shard channel `channel`: the owner of the key of the same name,
/// and while its slot migrates, the source and the target.
pub fn carriers(router: &Router, channel: &[u8]) -> Vec<String> {
    let route = router.resolver.resolve(channel);
    let mut out = vec![router.backend(route.target).name().to_owned()];
    if let Some(from) = route.migrating_from {
        out.push(router.backend(from).name().to_owned());
    }
    out
}

/// The instance an `SPUBLISH` on `channel` goes to: the carrier where the guard runs
/// commands of its slot (the migration source while it migrates).
pub fn spublish_target(router: &Router, channel: &[u8]) -> usize {
    let route = router.resolver.resolve(channel);
    usize::from(route.migrating_from.unwrap_or(route.target))
}

/// A RESP2 message frame (`*3 message …`) as a RESP3 push frame (`>3 message …`).
fn as_push(frame: &Bytes) -> Bytes {
    let mut out = BytesMut::from(&frame[..]);
    if out.first() == Some(&b'*') {
        out[0] = b'>';
    }
    out.freeze()
}

/// Keeps the hub's listeners in step with the routing table in use (`current`).
pub async fn watch(hub: Arc<Hub>, current: impl Fn() -> Option<Arc<Router>>) {
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if let Some(router) = current() {
            hub.reconcile(router);
        }
    }
}

fn spawn_listener(hub: Weak<Hub>, name: String, target: Target, fingerprint: u64) -> Listener {
    let (tx, rx) = mpsc::unbounded_channel();
    let connected = Arc::new(AtomicBool::new(false));
    tokio::spawn(run_listener(hub, name, target, rx, connected.clone()));
    Listener {
        tx,
        connected,
        fingerprint,
    }
}

/// The subscriptions one listener holds, and who waits for their confirmation.
#[derive(Default)]
struct Wanted {
    names: [HashSet<Bytes>; 3],
    waiting: Vec<(SubKind, HashSet<Bytes>, oneshot::Sender<()>)>,
}

impl Wanted {
    /// Records `cmd`: whether it adds, its kind, the names to send to the server (new or
    /// gone) and, for an addition, the names that were held already (confirmed at once).
    fn apply(&mut self, cmd: Cmd) -> (bool, SubKind, Vec<Bytes>, Vec<Bytes>) {
        match cmd {
            Cmd::Add { kind, names, ack } => {
                let set = &mut self.names[kind.index()];
                let (new, held): (Vec<Bytes>, Vec<Bytes>) =
                    names.iter().cloned().partition(|n| set.insert(n.clone()));
                if let Some(ack) = ack {
                    self.waiting.push((kind, names.into_iter().collect(), ack));
                }
                (true, kind, new, held)
            }
            Cmd::Remove { kind, names } => {
                let set = &mut self.names[kind.index()];
                let gone: Vec<Bytes> = names.into_iter().filter(|n| set.remove(n)).collect();
                (false, kind, gone, Vec::new())
            }
        }
    }

    fn confirmed(&mut self, kind: SubKind, name: &[u8]) {
        for (k, names, _) in &mut self.waiting {
            if *k == kind {
                names.remove(name);
            }
        }
        let (done, rest): (Vec<_>, Vec<_>) = std::mem::take(&mut self.waiting)
            .into_iter()
            .partition(|(_, names, _)| names.is_empty());
        self.waiting = rest;
        for (_, _, tx) in done {
            let _ = tx.send(());
        }
    }
}

fn command(verb: &[u8], names: &[Bytes], out: &mut BytesMut) {
    // Large lists in several commands, so no request grows without bound.
    for chunk in names.chunks(512) {
        let mut args: Vec<&[u8]> = Vec::with_capacity(chunk.len() + 1);
        args.push(verb);
        args.extend(chunk.iter().map(|n| &n[..]));
        encode_request(&args, out);
    }
}

async fn run_listener(
    hub: Weak<Hub>,
    name: String,
    target: Target,
    mut rx: mpsc::UnboundedReceiver<Cmd>,
    connected: Arc<AtomicBool>,
) {
    let mut wanted = Wanted::default();
    let mut backoff = Duration::from_millis(50);
    loop {
        if hub.strong_count() == 0 {
            return;
        }
        let stream = tokio::select! {
            stream = open(&target, Duration::from_secs(1)) => stream,
            cmd = rx.recv() => match cmd {
                Some(cmd) => { wanted.apply(cmd); continue; }
                None => return,
            },
        };
        let stream = match stream {
            Ok(s) => s,
            Err(reason) => {
                debug!(instance = %name, %reason, "pub/sub listener cannot connect");
                let deadline = tokio::time::Instant::now() + backoff;
                loop {
                    tokio::select! {
                        cmd = rx.recv() => match cmd {
                            Some(cmd) => { wanted.apply(cmd); }
                            None => return,
                        },
                        () = tokio::time::sleep_until(deadline) => break,
                    }
                }
                backoff = (backoff * 2).min(Duration::from_secs(2));
                continue;
            }
        };
        backoff = Duration::from_millis(50);
        match listen(&hub, &name, stream, &mut rx, &mut wanted, &connected).await {
            Ok(()) => return,
            Err(reason) => {
                warn!(instance = %name, %reason, "pub/sub listener lost its connection; resubscribing");
            }
        }
    }
}

/// One connected session of a listener: subscribes everything wanted, then forwards
/// commands and messages until the connection fails (`Err`) or the hub is gone (`Ok`).
async fn listen(
    hub: &Weak<Hub>,
    name: &str,
    stream: super::backend::Stream,
    rx: &mut mpsc::UnboundedReceiver<Cmd>,
    wanted: &mut Wanted,
    connected: &AtomicBool,
) -> Result<(), String> {
    let (mut reader, mut writer) = tokio::io::split(stream);
    let mut out = BytesMut::new();
    for kind in SubKind::ALL {
        let names: Vec<Bytes> = wanted.names[kind.index()].iter().cloned().collect();
        command(kind.subscribe(), &names, &mut out);
    }
    write_flushed(&mut writer, &out)
        .await
        .map_err(|e| e.to_string())?;
    connected.store(true, Ordering::Release);
    let result = async {
        let mut buf = BytesMut::with_capacity(16 * 1024);
        let mut scanner = FrameScanner::new();
        let limits = Limits::replies();
        let mut keepalive = tokio::time::interval(KEEPALIVE);
        keepalive.tick().await;
        let mut last_heard = Instant::now();
        loop {
            // Every complete frame in the buffer.
            while let Some(n) = scanner
                .scan(&buf, &limits)
                .map_err(|e| format!("protocol error from the server: {e}"))?
            {
                scanner.reset();
                let frame = buf.split_to(n).freeze();
                last_heard = Instant::now();
                handle_frame(hub, wanted, frame)?;
            }
            tokio::select! {
                        cmd = rx.recv() => match cmd {
                            None => return Ok(()),
                            Some(cmd) => {
                                let (add, kind, names, held) = wanted.apply(cmd);
                                let mut out = BytesMut::new();
                                let verb = if add { kind.subscribe() } else { kind.unsubscribe() };
                                command(verb, &names, &mut out);
                                if !out.is_empty() {
                                    write_flushed(&mut writer, &out)
        .await
        .map_err(|e| e.to_string())?;
                                }
                                for n in held {
                                    wanted.confirmed(kind, &n);
                                }
                            }
                        },
                        read = reader.read_buf(&mut buf) => match read {
                            Ok(0) => return Err("the server closed the connection".to_owned()),
                            Ok(_) => {}
                            Err(e) => return Err(e.to_string()),
                        },
                        _ = keepalive.tick() => {
                            if last_heard.elapsed() > KEEPALIVE * 2 {
                                return Err("no answer to PING".to_owned());
                            }
                            let mut out = BytesMut::new();
                            encode_request(&[&b"PING"[..]], &mut out);
                            write_flushed(&mut writer, &out)
        .await
        .map_err(|e| e.to_string())?;
                        }
                    }
            if buf.capacity() - buf.len() < 4096 {
                buf.reserve(16 * 1024);
            }
        }
    }
    .await;
    connected.store(false, Ordering::Release);
    let _ = name;
    result
}

fn handle_frame(hub: &Weak<Hub>, wanted: &mut Wanted, frame: Bytes) -> Result<(), String> {
    let Ok(Some((value, _))) = parse_value(&frame, &Limits::replies()) else {
        return Ok(());
    };
    let Value::Array(items) = &value else {
        if let Value::Error(e) = &value {
            warn!(error = %String::from_utf8_lossy(e), "pub/sub listener got an error");
        }
        return Ok(());
    };
    let text = |i: usize| items.get(i).and_then(Value::as_bytes);
    let Some(verb) = text(0) else { return Ok(()) };
    match &verb[..] {
        b"message" | b"smessage" => {
            let kind = if &verb[..] == b"message" {
                SubKind::Channel
            } else {
                SubKind::Shard
            };
            if let (Some(channel), Some(hub)) = (text(1), hub.upgrade()) {
                hub.deliver(kind, channel, &frame);
            }
        }
        b"pmessage" => {
            if let (Some(pattern), Some(hub)) = (text(1), hub.upgrade()) {
                hub.deliver(SubKind::Pattern, pattern, &frame);
            }
        }
        b"pong" => {}
        other => {
            if let Some((kind, true)) = SubKind::of_reply(other)
                && let Some(name) = text(1)
            {
                wanted.confirmed(kind, name);
            }
        }
    }
    Ok(())
}
