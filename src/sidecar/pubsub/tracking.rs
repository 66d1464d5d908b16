//! Client-side caching (`CLIENT TRACKING`) across the fleet.
//!
//! The instances only know the sidecar's shared connections, so Redis cannot track what each
//! client read. Instead, while at least one client of the sidecar has tracking on, the hub
//! keeps **one invalidation connection per instance** with broadcast tracking redirected to
//! itself (`CLIENT TRACKING ON BCAST REDIRECT <its own id>`, then
//! `SUBSCRIBE __redis__:invalidate`): it hears of every key modified on that instance. The
//! hub then decides per client what to send:
//! - default mode: the keys the client read (the key arguments of its read-only commands,
//!   recorded before they are sent), each forgotten once invalidated;
//! - BCAST: every invalidated key that matches one of its prefixes (all of them without one);
//! - a flush (`invalidate` with a null) whenever an instance flushes, whenever an invalidation
//!   connection (re)connects (invalidations may have been missed meanwhile), whenever the
//!   routing table changes and whenever a client tracks more keys than [`MAX_TRACKED_KEYS`].
//!
//! RESP3 clients get `>2 invalidate [keys]` push frames; a client with `REDIRECT <id>` has
//! them sent to that client of the same sidecar: as push frames if it speaks RESP3, as
//! messages on `__redis__:invalidate` if it speaks RESP2 and is subscribed to that channel.
//! Over-invalidation is allowed, a missed invalidation is not: every key is recorded before
//! its read is sent, so an invalidation for a write after the read always finds it.
//! The connections close when the last tracking client stops.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use tokio::io::AsyncReadExt;
use tokio::sync::oneshot;
use tracing::{debug, warn};

use super::super::backend::open;
use super::{Hub, KEEPALIVE, State, SubKind, lock};
use crate::redis::connect::Target;
use crate::redis::keys::RESERVED_PREFIX;
use crate::redis::resp::{FrameScanner, Limits, Value, encode_request, parse_value};
use crate::redis::stream::write_flushed;

/// The channel Redis sends invalidations on (RESP2 redirection).
pub const CHANNEL: &[u8] = b"__redis__:invalidate";

/// Keys remembered for one client in default mode; beyond, it is sent a flush and the
/// remembering starts over (Redis' `tracking-table-max-keys`, per client).
pub const MAX_TRACKED_KEYS: usize = 1 << 20;

/// How long `CLIENT TRACKING ON` waits for the invalidation connections to be subscribed.
const READY_TIMEOUT: Duration = Duration::from_secs(2);

/// A client's tracking options, as `CLIENT TRACKING ON` set them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrackConfig {
    /// BCAST mode.
    pub bcast: bool,
    /// BCAST prefixes (none: every key).
    pub prefixes: Vec<Bytes>,
    /// The client invalidations are sent to, if not this one.
    pub redirect: Option<u64>,
    /// OPTIN: only reads after `CLIENT CACHING yes` are tracked.
    pub optin: bool,
    /// OPTOUT: reads after `CLIENT CACHING no` are not tracked.
    pub optout: bool,
}

/// One tracking client, as the hub sees it.
#[derive(Debug)]
pub(super) struct Tracked {
    config: TrackConfig,
    /// Default mode: the keys read and not invalidated since.
    keys: HashSet<Bytes>,
    /// Whether `CLIENT TRACKING ON` was answered (reads may have been cached since).
    armed: bool,
}

/// One instance's invalidation connection.
#[derive(Debug)]
pub(super) struct Conn {
    /// Dropping it ends the connection.
    _stop: oneshot::Sender<()>,
    ready: Arc<AtomicBool>,
    fingerprint: u64,
}

/// An invalidation in the protocol of the client it goes to: `>2 invalidate …` in RESP3, a
/// message on [`CHANNEL`] in RESP2; `None` invalidates everything.
pub fn invalidation(resp3: bool, keys: Option<&[Bytes]>) -> Bytes {
    let mut out = BytesMut::new();
    if resp3 {
        out.put_slice(b">2\r\n$10\r\ninvalidate\r\n");
    } else {
        out.put_slice(b"*3\r\n$7\r\nmessage\r\n$20\r\n__redis__:invalidate\r\n");
    }
    match keys {
        Some(keys) => {
            out.put_slice(format!("*{}\r\n", keys.len()).as_bytes());
            for k in keys {
                out.put_slice(format!("${}\r\n", k.len()).as_bytes());
                out.put_slice(k);
                out.put_slice(b"\r\n");
            }
        }
        None if resp3 => out.put_slice(b"_\r\n"),
        None => out.put_slice(b"$-1\r\n"),
    }
    out.freeze()
}

fn redirect_broken(id: u64) -> Bytes {
    Bytes::from(format!(">2\r\n$21\r\ntracking-redir-broken\r\n:{id}\r\n"))
}

impl Hub {
    /// Whether client `id` may receive invalidations for another client (`REDIRECT id`): it
    /// has a message queue (it subscribed or tracks), as Redis requires the client to exist.
    pub fn client_exists(&self, id: u64) -> bool {
        lock(&self.state).sinks.contains_key(&id)
    }

    /// Starts (or changes) tracking for client `id`, whose inbox exists. Resolves once every
    /// instance's invalidation connection is subscribed (at most [`READY_TIMEOUT`]: one that
    /// connects later sends a flush).
    pub async fn track(&self, id: u64, config: TrackConfig) {
        let readies = {
            let mut state = lock(&self.state);
            match state.tracking.get_mut(&id) {
                Some(t) => t.config = config,
                None => {
                    state.tracking.insert(
                        id,
                        Tracked {
                            config,
                            keys: HashSet::new(),
                            armed: false,
                        },
                    );
                }
            }
            state.keep_trackers();
            state
                .trackers
                .values()
                .map(|c| c.ready.clone())
                .collect::<Vec<_>>()
        };
        let deadline = Instant::now() + READY_TIMEOUT;
        while Instant::now() < deadline && !readies.iter().all(|r| r.load(Ordering::Acquire)) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        if let Some(t) = lock(&self.state).tracking.get_mut(&id) {
            t.armed = true;
        }
    }

    /// Stops tracking for client `id` (`CLIENT TRACKING OFF`).
    pub fn untrack(&self, id: u64) {
        let mut state = lock(&self.state);
        if state.tracking.remove(&id).is_some() {
            state.keep_trackers();
        }
    }

    /// Remembers that client `id` read `keys` (default mode), before the read is sent.
    pub fn remember<'a>(&self, id: u64, keys: impl Iterator<Item = &'a Bytes>) {
        let mut state = lock(&self.state);
        let Some(t) = state.tracking.get_mut(&id) else {
            return;
        };
        if t.config.bcast {
            return;
        }
        t.keys.extend(keys.cloned());
        if t.keys.len() > MAX_TRACKED_KEYS {
            t.keys = HashSet::new();
            state.invalidate_client(id, None);
        }
    }

    /// Whether client `id`'s redirection target is gone.
    pub fn redirect_broken(&self, id: u64) -> bool {
        let state = lock(&self.state);
        state
            .tracking
            .get(&id)
            .and_then(|t| t.config.redirect)
            .is_some_and(|to| !state.sinks.contains_key(&to))
    }

    /// An instance modified `keys` (`None`: flushed everything).
    fn invalidated(&self, keys: Option<Vec<Bytes>>) {
        let mut state = lock(&self.state);
        let ids: Vec<u64> = state.tracking.keys().copied().collect();
        for id in ids {
            let Some(t) = state.tracking.get_mut(&id) else {
                continue;
            };
            let hit: Option<Vec<Bytes>> = match &keys {
                None => {
                    t.keys.clear();
                    None
                }
                Some(keys) if t.config.bcast => {
                    let prefixes = &t.config.prefixes;
                    let hit: Vec<Bytes> = keys
                        .iter()
                        .filter(|k| {
                            prefixes.is_empty() || prefixes.iter().any(|p| k.starts_with(p))
                        })
                        .cloned()
                        .collect();
                    if hit.is_empty() {
                        continue;
                    }
                    Some(hit)
                }
                Some(keys) => {
                    let hit: Vec<Bytes> =
                        keys.iter().filter(|k| t.keys.remove(*k)).cloned().collect();
                    if hit.is_empty() {
                        continue;
                    }
                    Some(hit)
                }
            };
            state.invalidate_client(id, hit.as_deref());
        }
    }

    /// An invalidation connection is subscribed: everything it may have missed is flushed.
    fn tracker_ready(&self, ready: &AtomicBool) {
        let mut state = lock(&self.state);
        ready.store(true, Ordering::Release);
        state.flush_tracking();
    }
}

impl State {
    /// Sends client `id` an invalidation of `keys` (`None`: all), where its options say.
    fn invalidate_client(&mut self, id: u64, keys: Option<&[Bytes]>) {
        let Some(t) = self.tracking.get(&id) else {
            return;
        };
        let to = t.config.redirect.unwrap_or(id);
        let bytes = match self.sinks.get(&to) {
            Some(sink) if sink.resp3.load(Ordering::Relaxed) => invalidation(true, keys),
            Some(_) => {
                let subscribed = self.subs[SubKind::Channel.index()]
                    .get(CHANNEL)
                    .is_some_and(|s| s.contains(&to));
                if t.config.redirect.is_none() || !subscribed {
                    // A RESP2 client without a subscribed redirection gets nothing, as in Redis.
                    return;
                }
                invalidation(false, keys)
            }
            None => match self.sinks.get(&id) {
                Some(sink) if to != id && sink.resp3.load(Ordering::Relaxed) => {
                    self.send(id, redirect_broken(to));
                    return;
                }
                _ => return,
            },
        };
        self.send(to, bytes);
    }

    /// A flush to every tracking client whose reads may have been cached.
    pub(super) fn flush_tracking(&mut self) {
        let ids: Vec<u64> = self
            .tracking
            .iter()
            .filter(|(_, t)| t.armed)
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            if let Some(t) = self.tracking.get_mut(&id) {
                t.keys.clear();
            }
            self.invalidate_client(id, None);
        }
    }

    /// Invalidation connections to every instance of the table while a client tracks; none
    /// otherwise.
    pub(super) fn keep_trackers(&mut self) {
        let Some(router) = self.router.clone() else {
            return;
        };
        if self.tracking.is_empty() {
            self.trackers.clear();
            return;
        }
        let mut keep = HashSet::new();
        for backend in &router.backends {
            let name = backend.name().to_owned();
            let fingerprint = backend.target().fingerprint();
            keep.insert(name.clone());
            if self
                .trackers
                .get(&name)
                .is_some_and(|c| c.fingerprint == fingerprint)
            {
                continue;
            }
            let (stop, stopped) = oneshot::channel();
            let ready = Arc::new(AtomicBool::new(false));
            tokio::spawn(run(
                self.me.clone(),
                name.clone(),
                backend.target().clone(),
                stopped,
                ready.clone(),
            ));
            self.trackers.insert(
                name,
                Conn {
                    _stop: stop,
                    ready,
                    fingerprint,
                },
            );
        }
        self.trackers.retain(|name, _| keep.contains(name));
    }

    /// Client `id` and its tracking are gone.
    pub(super) fn forget_tracking(&mut self, id: u64) {
        if self.tracking.remove(&id).is_some() {
            self.keep_trackers();
        }
    }
}

/// One instance's invalidation connection: (re)connects with backoff until `stop` is dropped.
async fn run(
    hub: Weak<Hub>,
    name: String,
    target: Target,
    mut stop: oneshot::Receiver<()>,
    ready: Arc<AtomicBool>,
) {
    let mut backoff = Duration::from_millis(50);
    loop {
        if hub.strong_count() == 0 {
            return;
        }
        let stream = tokio::select! {
            stream = open(&target, Duration::from_secs(1)) => stream,
            _ = &mut stop => return,
        };
        match stream {
            Ok(stream) => {
                let result = listen(&hub, stream, &mut stop, &ready).await;
                if ready.swap(false, Ordering::AcqRel) {
                    backoff = Duration::from_millis(50);
                } else {
                    // Refused before it was subscribed (an old server, a closed door): wait.
                    tokio::select! {
                        () = tokio::time::sleep(backoff) => {}
                        _ = &mut stop => return,
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
                match result {
                    Ok(()) => return,
                    Err(reason) => {
                        warn!(instance = %name, %reason, "invalidation connection lost; reconnecting");
                    }
                }
            }
            Err(reason) => {
                debug!(instance = %name, %reason, "invalidation connection cannot connect");
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    _ = &mut stop => return,
                }
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
        }
    }
}

/// One connected session: broadcast tracking redirected to itself, then invalidations until
/// the connection fails (`Err`) or it is no longer wanted (`Ok`).
async fn listen(
    hub: &Weak<Hub>,
    stream: super::super::backend::Stream,
    stop: &mut oneshot::Receiver<()>,
    ready: &AtomicBool,
) -> Result<(), String> {
    let (mut reader, mut writer) = tokio::io::split(stream);
    let mut out = BytesMut::new();
    encode_request(&[&b"CLIENT"[..], b"ID"], &mut out);
    write_flushed(&mut writer, &out)
        .await
        .map_err(|e| e.to_string())?;
    let mut buf = BytesMut::with_capacity(16 * 1024);
    let mut scanner = FrameScanner::new();
    let limits = Limits::replies();
    let mut keepalive = tokio::time::interval(KEEPALIVE);
    keepalive.tick().await;
    let mut last_heard = Instant::now();
    let mut subscribed = false;
    loop {
        while let Some(n) = scanner
            .scan(&buf, &limits)
            .map_err(|e| format!("protocol error from the server: {e}"))?
        {
            scanner.reset();
            let frame = buf.split_to(n).freeze();
            last_heard = Instant::now();
            let Ok(Some((value, _))) = parse_value(&frame, &limits) else {
                continue;
            };
            match value {
                // `CLIENT ID`: redirect this connection's invalidations to itself.
                Value::Integer(id) if !subscribed => {
                    let id = id.to_string();
                    let mut out = BytesMut::new();
                    encode_request(
                        &[
                            &b"CLIENT"[..],
                            b"TRACKING",
                            b"ON",
                            b"BCAST",
                            b"REDIRECT",
                            id.as_bytes(),
                        ],
                        &mut out,
                    );
                    encode_request(&[&b"SUBSCRIBE"[..], CHANNEL], &mut out);
                    write_flushed(&mut writer, &out)
                        .await
                        .map_err(|e| e.to_string())?;
                }
                Value::Error(e) => {
                    return Err(format!(
                        "the instance refused tracking: {}",
                        String::from_utf8_lossy(&e)
                    ));
                }
                Value::Array(items) => {
                    let verb = items.first().and_then(Value::as_bytes).cloned();
                    let channel = items.get(1).and_then(Value::as_bytes);
                    match verb.as_deref() {
                        Some(b"subscribe") if channel.is_some_and(|c| c == CHANNEL) => {
                            subscribed = true;
                            if let Some(hub) = hub.upgrade() {
                                hub.tracker_ready(ready);
                            }
                        }
                        Some(b"message") if channel.is_some_and(|c| c == CHANNEL) => {
                            let keys = match items.get(2) {
                                // The fleet's own bookkeeping keys are nobody's cache.
                                Some(Value::Array(keys)) => {
                                    let keys: Vec<Bytes> = keys
                                        .iter()
                                        .filter_map(Value::as_bytes)
                                        .filter(|k| !k.starts_with(RESERVED_PREFIX))
                                        .cloned()
                                        .collect();
                                    if keys.is_empty() {
                                        continue;
                                    }
                                    Some(keys)
                                }
                                _ => None,
                            };
                            if let Some(hub) = hub.upgrade() {
                                hub.invalidated(keys);
                            }
                        }
                        _ => {}
                    }
                }
                _ => {}
            }
        }
        tokio::select! {
                _ = &mut *stop => return Ok(()),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn decoded(bytes: &[u8]) -> Value {
        let (value, used) = parse_value(bytes, &Limits::replies()).unwrap().unwrap();
        assert_eq!(used, bytes.len());
        value
    }

    #[test]
    fn invalidations_in_both_protocols() {
        let keys = [Bytes::from_static(b"k"), Bytes::from_static(b"")];
        assert_eq!(
            decoded(&invalidation(true, Some(&keys))),
            Value::Push(vec![
                Value::Bulk(Bytes::from_static(b"invalidate")),
                Value::Array(keys.iter().cloned().map(Value::Bulk).collect()),
            ])
        );
        assert_eq!(
            decoded(&invalidation(true, None)),
            Value::Push(vec![
                Value::Bulk(Bytes::from_static(b"invalidate")),
                Value::Null
            ])
        );
        assert_eq!(
            decoded(&invalidation(false, None)),
            Value::Array(vec![
                Value::Bulk(Bytes::from_static(b"message")),
                Value::Bulk(Bytes::from_static(CHANNEL)),
                Value::Null,
            ])
        );
        assert!(matches!(decoded(&redirect_broken(7)), Value::Push(v) if v.len() == 2));
    }
}
