//! Pub/Sub commands of one client: its subscriptions (held for it by the sidecar's
//! [`Hub`](super::super::pubsub::Hub)), the confirmations and messages in its protocol
//! (arrays in RESP2, push frames in RESP3), RESP2's subscribed mode, and PUBLISH, SPUBLISH and
//! PUBSUB answered across the fleet (see `sidecar/pubsub.rs` for which instance carries what).

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::{BufMut, Bytes, BytesMut};

use super::super::command::{CommandSpec, Kind, LocalCommand, PubSub};
use super::super::pubsub::{Hub, Inbox, SubKind, spublish_target};
use super::super::router::Router;
use super::{Client, Pending, backend_reply, encode, error_reply, lost, parse, wire};
use crate::redis::resp::{Frame, Request, encode_request};

/// One client's subscriptions.
#[derive(Debug)]
pub(super) struct Subscriptions {
    hub: Arc<Hub>,
    id: u64,
    /// Names by kind, in subscription order (UNSUBSCRIBE without arguments answers in it).
    names: [Vec<Bytes>; 3],
    inbox: Option<Inbox>,
}

impl Subscriptions {
    pub(super) fn new(hub: Arc<Hub>, id: u64) -> Self {
        Self {
            hub,
            id,
            names: Default::default(),
            inbox: None,
        }
    }

    /// Channels and patterns (what SUBSCRIBE / PSUBSCRIBE confirmations count).
    fn classic(&self) -> usize {
        self.names[0].len() + self.names[1].len()
    }

    fn total(&self) -> usize {
        self.classic() + self.names[2].len()
    }

    /// Whether messages may arrive (the serve loop then waits for them too).
    pub(super) fn receiving(&self) -> bool {
        self.inbox.is_some()
    }

    /// The next message for the client; `None` once the hub dropped it (it did not read its
    /// messages): the connection is then closed.
    pub(super) async fn next(&mut self) -> Option<Bytes> {
        match &mut self.inbox {
            Some(inbox) => inbox.rx.recv().await,
            None => std::future::pending().await,
        }
    }

    /// The client's message queue, created if it has none yet (tracking sends invalidations
    /// through it).
    pub(super) fn ensure_inbox(&mut self, resp3: bool) {
        if self.inbox.is_none() {
            self.inbox = Some(self.hub.inbox(self.id, resp3));
        }
    }

    /// Every subscription dropped (RESET).
    pub(super) fn clear(&mut self) {
        let names = std::mem::take(&mut self.names);
        self.hub.remove_client(self.id, names);
        self.inbox = None;
    }
}

impl Drop for Subscriptions {
    fn drop(&mut self) {
        if self.inbox.is_some() || self.total() > 0 {
            self.clear();
        }
    }
}

fn kind_of(p: PubSub) -> SubKind {
    match p {
        PubSub::PSubscribe | PubSub::PUnsubscribe => SubKind::Pattern,
        PubSub::SSubscribe | PubSub::SUnsubscribe => SubKind::Shard,
        _ => SubKind::Channel,
    }
}

fn index(kind: SubKind) -> usize {
    match kind {
        SubKind::Channel => 0,
        SubKind::Pattern => 1,
        SubKind::Shard => 2,
    }
}

/// `subscribe <name> <count>` and friends, in the client's protocol.
fn confirmation(out: &mut BytesMut, resp3: bool, verb: &str, name: Option<&Bytes>, count: usize) {
    out.put_slice(if resp3 { b">3\r\n" } else { b"*3\r\n" });
    Frame::Bulk(Bytes::copy_from_slice(verb.as_bytes())).encode(out);
    match name {
        Some(n) => Frame::Bulk(n.clone()).encode(out),
        None if resp3 => out.put_slice(b"_\r\n"),
        None => out.put_slice(b"$-1\r\n"),
    }
    Frame::Integer(i64::try_from(count).unwrap_or(i64::MAX)).encode(out);
}

/// Commands a RESP2 client may send while subscribed (Redis' list).
fn allowed_when_subscribed(spec: &CommandSpec) -> bool {
    matches!(
        spec.kind,
        Kind::PubSub(
            PubSub::Subscribe
                | PubSub::PSubscribe
                | PubSub::SSubscribe
                | PubSub::Unsubscribe
                | PubSub::PUnsubscribe
                | PubSub::SUnsubscribe
        ) | Kind::Local(LocalCommand::Ping | LocalCommand::Quit | LocalCommand::Reset)
    )
}

impl Client {
    /// Before dispatch: RESP2's subscribed mode (only subscription commands, PING, QUIT and
    /// RESET; PING answers `pong` as a message would), and no subscribing inside MULTI.
    pub(super) fn pubsub_gate(&mut self, spec: &CommandSpec, request: &Request) -> Option<Pending> {
        if let Some(inbox) = &self.pubsub.inbox {
            inbox.resp3.store(self.protocol.resp3, Ordering::Relaxed);
        }
        let subscribing = matches!(
            spec.kind,
            Kind::PubSub(
                PubSub::Subscribe
                    | PubSub::PSubscribe
                    | PubSub::SSubscribe
                    | PubSub::Unsubscribe
                    | PubSub::PUnsubscribe
                    | PubSub::SUnsubscribe
            )
        );
        if subscribing && self.transaction.is_some() {
            if let Some(t) = &mut self.transaction {
                t.aborted = true;
            }
            return Some(Pending::Ready(error_reply(&format!(
                "ERR {} is not allowed inside a transaction",
                spec.name.to_ascii_uppercase()
            ))));
        }
        if self.protocol.resp3 || self.pubsub.total() == 0 {
            return None;
        }
        if !allowed_when_subscribed(spec) {
            return Some(Pending::Ready(error_reply(&format!(
                "ERR Can't execute '{}': only (P|S)SUBSCRIBE / (P|S)UNSUBSCRIBE / PING / QUIT / RESET are allowed in this context",
                spec.name
            ))));
        }
        if spec.kind == Kind::Local(LocalCommand::Ping) {
            let message = request.args.get(1).cloned().unwrap_or_default();
            return Some(Pending::Ready(encode(&Frame::Array(vec![
                Frame::Bulk(Bytes::from_static(b"pong")),
                Frame::Bulk(message),
            ]))));
        }
        None
    }

    pub(super) async fn pubsub(
        &mut self,
        router: Arc<Router>,
        p: PubSub,
        request: Request,
    ) -> Pending {
        let args = &request.args[1..];
        match p {
            PubSub::Subscribe | PubSub::PSubscribe | PubSub::SSubscribe => {
                self.subscribe(kind_of(p), args).await
            }
            PubSub::Unsubscribe | PubSub::PUnsubscribe | PubSub::SUnsubscribe => {
                self.unsubscribe(kind_of(p), args)
            }
            PubSub::Publish => {
                let target = Hub::publish_target(&router, &request.args[1]);
                self.publish_to(&router, target, &request)
            }
            PubSub::SPublish => {
                let target = spublish_target(&router, &request.args[1]);
                self.publish_to(&router, target, &request)
            }
            PubSub::Channels | PubSub::ShardChannels => {
                let replies = self.ask_all(&router, &request).await;
                let mut seen = HashSet::new();
                let mut names = Vec::new();
                for reply in replies {
                    if let Ok(Frame::Array(items)) = reply {
                        for item in items {
                            if let Some(b) = item.as_bulk()
                                && seen.insert(b.clone())
                            {
                                names.push(item);
                            }
                        }
                    }
                }
                Pending::Ready(encode(&Frame::Array(names)))
            }
            // Every sidecar listens on every instance: one instance's count is the number of
            // subscribing sidecars (and direct subscribers there); the largest is reported.
            PubSub::NumPat => {
                let mut most = 0;
                for reply in self.ask_all(&router, &request).await {
                    if let Ok(Frame::Integer(n)) = reply {
                        most = most.max(n);
                    }
                }
                Pending::Ready(encode(&Frame::Integer(most)))
            }
            PubSub::NumSub => {
                let mut counts = vec![0i64; args.len().saturating_sub(1)];
                for reply in self.ask_all(&router, &request).await {
                    if let Ok(Frame::Array(items)) = reply {
                        for (i, pair) in items.chunks(2).enumerate() {
                            if let (Some(slot), Some(Frame::Integer(n))) =
                                (counts.get_mut(i), pair.get(1))
                            {
                                *slot = (*slot).max(*n);
                            }
                        }
                    }
                }
                let mut items = Vec::new();
                for (name, n) in args.iter().skip(1).zip(counts) {
                    items.push(Frame::Bulk(name.clone()));
                    items.push(Frame::Integer(n));
                }
                Pending::Ready(encode(&Frame::Array(items)))
            }
            // A shard channel's subscribers are on its carrier.
            PubSub::ShardNumSub => {
                let mut items = Vec::new();
                for name in args.iter().skip(1) {
                    let target = spublish_target(&router, name);
                    let mut cmd = BytesMut::new();
                    encode_request(&[&b"PUBSUB"[..], b"SHARDNUMSUB", name], &mut cmd);
                    let rx = router.backends[target].send_or_refuse(
                        self.lane(),
                        router.version(),
                        cmd.freeze(),
                        1,
                    );
                    let reply = backend_reply(rx.await.unwrap_or_else(|_| Err(lost())), true);
                    let n = match parse(&reply) {
                        Ok(Frame::Array(pair)) => {
                            pair.get(1).and_then(Frame::as_integer).unwrap_or(0)
                        }
                        _ => 0,
                    };
                    items.push(Frame::Bulk(name.clone()));
                    items.push(Frame::Integer(n));
                }
                Pending::Ready(encode(&Frame::Array(items)))
            }
        }
    }

    async fn subscribe(&mut self, kind: SubKind, names: &[Bytes]) -> Pending {
        let resp3 = self.protocol.resp3;
        if self.pubsub.inbox.is_none() {
            self.pubsub.inbox = Some(self.shared.pubsub.inbox(self.id, resp3));
        }
        let i = index(kind);
        let mut fresh = Vec::new();
        for name in names {
            if !self.pubsub.names[i].contains(name) && !fresh.contains(name) {
                fresh.push(name.clone());
            }
        }
        if !fresh.is_empty() {
            self.shared.pubsub.subscribe(self.id, kind, &fresh).await;
        }
        let verb = match kind {
            SubKind::Channel => "subscribe",
            SubKind::Pattern => "psubscribe",
            SubKind::Shard => "ssubscribe",
        };
        let mut out = BytesMut::new();
        for name in names {
            if !self.pubsub.names[i].contains(name) {
                self.pubsub.names[i].push(name.clone());
            }
            let count = match kind {
                SubKind::Shard => self.pubsub.names[2].len(),
                _ => self.pubsub.classic(),
            };
            confirmation(&mut out, resp3, verb, Some(name), count);
        }
        Pending::Ready(out.freeze())
    }

    fn unsubscribe(&mut self, kind: SubKind, names: &[Bytes]) -> Pending {
        let resp3 = self.protocol.resp3;
        let i = index(kind);
        let verb = match kind {
            SubKind::Channel => "unsubscribe",
            SubKind::Pattern => "punsubscribe",
            SubKind::Shard => "sunsubscribe",
        };
        let targets: Vec<Bytes> = if names.is_empty() {
            self.pubsub.names[i].clone()
        } else {
            names.to_vec()
        };
        let mut out = BytesMut::new();
        let mut gone = Vec::new();
        for name in &targets {
            if let Some(at) = self.pubsub.names[i].iter().position(|n| n == name) {
                self.pubsub.names[i].remove(at);
                gone.push(name.clone());
            }
            let count = match kind {
                SubKind::Shard => self.pubsub.names[2].len(),
                _ => self.pubsub.classic(),
            };
            confirmation(&mut out, resp3, verb, Some(name), count);
        }
        if targets.is_empty() {
            let count = match kind {
                SubKind::Shard => self.pubsub.names[2].len(),
                _ => self.pubsub.classic(),
            };
            confirmation(&mut out, resp3, verb, None, count);
        }
        self.shared.pubsub.unsubscribe(self.id, kind, &gone);
        Pending::Ready(out.freeze())
    }

    /// Sends a PUBLISH to `target`; PUBLISH (not SPUBLISH, whose carrier is fixed) falls back
    /// to the next instance while `target` is unreachable, since every instance is listened to.
    fn publish_to(&self, router: &Arc<Router>, target: usize, request: &Request) -> Pending {
        let n = router.backends.len();
        if target >= n {
            return Pending::Ready(error_reply("ERR no instance"));
        }
        let sharded = request.args[0].eq_ignore_ascii_case(b"spublish");
        let order: Vec<usize> = if sharded {
            vec![target]
        } else {
            (0..n).map(|k| (target + k) % n).collect()
        };
        let router = router.clone();
        let bytes = wire(request);
        let lane = self.lane();
        Pending::Future(Box::pin(async move {
            let mut last = Bytes::new();
            for i in order {
                let rx =
                    router.backends[i].send_or_refuse(lane, router.version(), bytes.clone(), 1);
                last = backend_reply(rx.await.unwrap_or_else(|_| Err(lost())), true);
                if !last.starts_with(b"-UNAVAILABLE") {
                    break;
                }
            }
            last
        }))
    }

    /// The request's reply from every instance (errors of unreachable ones included).
    async fn ask_all(&self, router: &Router, request: &Request) -> Vec<Result<Frame, Bytes>> {
        let rxs: Vec<_> = router
            .backends
            .iter()
            .map(|b| b.send_or_refuse(self.lane(), router.version(), wire(request), 1))
            .collect();
        let mut out = Vec::with_capacity(rxs.len());
        for rx in rxs {
            let reply = backend_reply(rx.await.unwrap_or_else(|_| Err(lost())), true);
            out.push(parse(&reply).and_then(|f| match f {
                Frame::Error(e) => Err(e),
                other => Ok(other),
            }));
        }
        out
    }
}
