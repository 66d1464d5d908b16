//! Writes on keys of replicated categories (`docs/replication.md`). A write runs on its target
//! inside the write script (`redis::protocol::replica`), which versions its result; the result
//! then goes to the replica of each written key's slot — before the client's reply for a `sync`
//! category, after it for an `async` one. The target runs the script also where there is no
//! replica to write (a promoted replica in an outage is the target itself): its versions must
//! outrank the late results of the writer before it.
//!
//! Commands on one key, commands whose keys share one instance, and MSET / DEL / UNLINK (split
//! per instance) run *inside* the write script. An application's script (`EVAL`, `EVALSHA`,
//! `FCALL`) and a transaction (`MULTI … EXEC`) cannot — Redis runs no script or transaction from
//! a script — so they run just *before* it, in one send on the same connection, and the write
//! script only reads and versions the states of their declared keys and of the keys their
//! scripts' recorder listed (`scripts::recording`, [`Shape::After`]). Another
//! client's write may run in between; the states read are then that later write's, with a
//! version above its own, so the replica still ends with the writer's newest state. Blocking
//! pops poll their non-blocking form inside the write script (`blocking.rs`). Writes on a
//! migrating range whose replica is named, and FLUSHDB / FLUSHALL, are refused on replicated
//! categories, never run unreplicated.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;

use super::super::backend::{BackendError, Replies, ReplyReceiver, SendError};
use super::super::command::{CommandSpec, Kind, Resolved, Split};
use super::super::metrics::{BacklogEntry, CategoryMetrics, SidecarMetrics};
use super::super::router::Router;
use super::super::scripts;
use super::super::ttl::TtlAction;
use super::keyed::ttl_action;
use super::{
    Client, Dispatched, Interrupt, Pending, ROUTING_ATTEMPTS, Shared, backend_reply, bundle,
    encode, error_reply, lost, parse, stop,
};
use crate::redis::protocol::replica::{self, KeyState, WriteError, Written};
use crate::redis::protocol::{guard, names};
use crate::redis::resp::{Frame, Request};
use crate::routing::keyspace::{CategoryId, InstanceId, Route};
use crate::routing::table::ReplicationMode;

/// How the reply to a write begins when its instance had lost the write script: nothing ran.
pub(super) const LOST_WRITE_SCRIPT: &[u8] =
    b"-TRYAGAIN redis-fleet: the instance had lost the write script";

/// Results of `async` writes on their way to replicas, and their bytes, beyond which a result
/// is dropped (and counted as a replica failure) rather than held: a replica that stopped
/// answering must not grow the sidecar without bound.
const BACKLOG_LIMIT: i64 = 100_000;
const BACKLOG_BYTES_LIMIT: i64 = 64 << 20;

/// An `async` result held longer than this is dropped (and counted), not applied: replicas
/// forget the versions they applied after a while (`replica.rs`), so a result may only arrive
/// that late.
const MAX_HELD: std::time::Duration = std::time::Duration::from_secs(60);

/// Bytes of `sync` results a replica missed that a sidecar holds to deliver again; one that
/// would go past it is not held (the replica check repairs it): a replica that refuses every
/// write while the table still names it must not make the sidecar hold a minute of them.
const REDELIVERY_BYTES_LIMIT: i64 = 16 << 20;
const _: () = assert!(MAX_HELD.as_secs() * 5 <= replica::FORGET_AFTER.as_secs());

fn refused(what: &str) -> Interrupt {
    stop(&format!(
        "ERR redis-fleet: {what} on a replicated category is not supported yet (docs/replication.md)"
    ))
}

/// The result of a write for one replica: the states of the keys it holds.
#[derive(Clone)]
struct ForReplica {
    replica: InstanceId,
    /// Its keys' category: a write whose keys span categories hands each its own part, so
    /// that a failure is counted where its keys are (`replica_failures{category}`).
    category: CategoryId,
    sync: bool,
    written: Written,
    metrics: CategoryMetrics,
}

impl Client {
    /// Routes `request` when it may write a key of a replicated category; `None` when it
    /// writes none, and the ordinary dispatch routes it.
    pub(super) async fn replicated(
        &mut self,
        router: &Arc<Router>,
        request: &Request,
        resolved: &Resolved,
    ) -> Option<Dispatched> {
        let spec = resolved.spec;
        let read_only_script = spec.name.ends_with("_ro");
        if !(spec.write || spec.kind == Kind::Script) || read_only_script {
            return None;
        }
        let routes: Vec<Route> = resolved
            .keys
            .iter()
            .map(|i| router.resolver.resolve(&request.args[*i]))
            .collect();
        // FLUSHDB / FLUSHALL (the replicas would keep what the owners lost), and a script that
        // declares no key (it could write any: there is no telling which to replicate).
        let anywhere = matches!(spec.kind, Kind::FanOut(_))
            || (spec.kind == Kind::Script && routes.is_empty());
        if !anywhere
            && !routes
                .iter()
                .any(|r| router.resolver.replication(r).is_some())
        {
            return None;
        }
        if anywhere {
            if let Some(t) = &mut self.transaction {
                t.aborted = true;
            }
            return Some(Err(refused(&format!(
                "{} (the fleet replicates a category)",
                spec.name.to_ascii_uppercase()
            ))));
        }
        if self.transaction.is_some() {
            // Queued; EXEC reads the states of the keys it wrote (`transaction.rs`).
            return None;
        }
        if routes.iter().any(|r| r.migration.is_some()) {
            // The operator names no replica for a migrating range: while it moves, its writes
            // are the guarded ones of any category, and its replica is seeded once it landed.
            let replica_named = routes
                .iter()
                .any(|r| matches!(router.resolver.replication(r), Some((_, Some(_)))));
            if !replica_named {
                return None;
            }
            return Some(Err(stop(
                "TRYAGAIN redis-fleet: this key's range is being migrated, and replicated ranges \
                 move without their replica (docs/replication.md); retry",
            )));
        }
        let keys: Vec<Bytes> = resolved
            .keys
            .iter()
            .map(|i| request.args[*i].clone())
            .collect();
        let category = routes[0].category;
        let result = match spec.kind {
            Kind::SingleKey | Kind::SameInstance => {
                let target = routes[0].target;
                if routes.iter().any(|r| r.target != target) {
                    return Some(Ok(Pending::Ready(error_reply(&format!(
                        "CROSSINSTANCE the keys of this {} command live on different instances",
                        spec.name.to_ascii_uppercase()
                    )))));
                }
                let cmds = match with_ttl_commands(router, spec, &request.args, &routes) {
                    Ok(cmds) => cmds,
                    Err(text) => return Some(Ok(Pending::Ready(error_reply(&text)))),
                };
                // Sent now, in the client's order; answered when its result is in.
                return Some(
                    self.send_write(router, target, keys, routes, cmds)
                        .map(|sent| answer_later(router, category, sent)),
                );
            }
            Kind::Script => {
                let target = routes[0].target;
                if routes.iter().any(|r| r.target != target) {
                    return Some(Ok(Pending::Ready(error_reply(
                        "CROSSINSTANCE the keys of this script live on different instances",
                    ))));
                }
                let mut cmds = match with_ttl_commands(router, spec, &request.args, &routes) {
                    Ok(cmds) => cmds,
                    Err(text) => return Some(Ok(Pending::Ready(error_reply(&text)))),
                };
                let legacy = router.backend(target).legacy();
                for c in cmds.iter_mut().skip(1) {
                    *c = super::super::ttl::for_server(std::mem::take(c), legacy);
                }
                if cmds[0]
                    .get(1)
                    .is_some_and(|b| scripts::declares_no_writes(b))
                {
                    return None;
                }
                let recorded = recorded_set();
                record_writes(&mut cmds[0], &recorded);
                let capture = Capture {
                    keys,
                    routes,
                    recorded,
                };
                return Some(
                    self.send_before_capture(router, target, capture, cmds, 0)
                        .map(|sent| answer_later(router, category, sent)),
                );
            }
            Kind::MultiKey(split) => {
                Box::pin(self.split_replicated(router, request, split, resolved, &routes)).await
            }
            Kind::Blocking => {
                return Some(
                    Box::pin(self.blocking_replicated(
                        router.clone(),
                        request,
                        &resolved.keys,
                        spec,
                    ))
                    .await,
                );
            }
            _ => Err(refused(&spec.name.to_ascii_uppercase())),
        };
        Some(result.map(|reply| {
            count(router, category, &reply);
            Pending::Ready(reply)
        }))
    }

    /// MSET / DEL / UNLINK: one write per instance, each replicated; the replies merged.
    async fn split_replicated(
        &mut self,
        router: &Arc<Router>,
        request: &Request,
        split: Split,
        resolved: &Resolved,
        routes: &[Route],
    ) -> Result<Bytes, Interrupt> {
        let per_key = if split == Split::Mset { 2 } else { 1 };
        let mut groups: BTreeMap<InstanceId, Vec<usize>> = BTreeMap::new();
        for (n, r) in routes.iter().enumerate() {
            groups.entry(r.target).or_default().push(n);
        }
        let mut sum = 0i64;
        for (target, members) in groups {
            let mut cmd = vec![request.args[0].clone()];
            for &n in &members {
                let at = resolved.keys[n];
                cmd.extend(request.args[at..at + per_key].iter().cloned());
            }
            let group_keys: Vec<Bytes> = members
                .iter()
                .map(|&n| request.args[resolved.keys[n]].clone())
                .collect();
            let group_routes: Vec<Route> = members.iter().map(|&n| routes[n]).collect();
            let mut cmds = vec![cmd];
            if split == Split::Mset {
                for (key, route) in group_keys.iter().zip(&group_routes) {
                    let rules = &router.resolver.categories()[usize::from(route.category)].ttl;
                    cmds.extend(super::super::ttl::default_expiry(rules, key));
                }
            }
            let reply = self
                .send_write(router, target, group_keys, group_routes, cmds)?
                .spawn()
                .await;
            match parse(&reply) {
                Ok(Frame::Integer(n)) => sum += n,
                Ok(Frame::Error(_)) | Err(_) => return Ok(reply),
                Ok(_) => {}
            }
        }
        Ok(match split {
            Split::Mset => Frame::ok().to_bytes(),
            _ => encode(&Frame::Integer(sum)),
        })
    }

    /// Sends `cmds` to `target` inside the write script, onto the client's lane now (so the
    /// requests after it stay after it), with `keys` the keys they may write.
    pub(super) fn send_write(
        &self,
        router: &Arc<Router>,
        target: InstanceId,
        keys: Vec<Bytes>,
        routes: Vec<Route>,
        cmds: Vec<Vec<Bytes>>,
    ) -> Result<Sent, Interrupt> {
        // Lua's `unpack` stops near 8 000 values: the script could not run the command.
        if keys.len() > guard::MAX_GUARDED_ARGS
            || cmds.iter().any(|c| c.len() > guard::MAX_GUARDED_ARGS)
        {
            return Err(stop(&format!(
                "ERR redis-fleet: a write of more than {} arguments on a replicated category is \
                 not supported; split it",
                guard::MAX_GUARDED_ARGS
            )));
        }
        let args = replica::write_command(router.policy(), router.version(), &keys, &cmds, false);
        let sent = Instant::now();
        let rx = router.send(target, self.lane(), bundle(&[args]), 1)?;
        Ok(Sent {
            sent,
            router: router.clone(),
            shared: self.shared.clone(),
            lane: self.lane(),
            target,
            keys,
            routes,
            rx: Some(rx),
            shape: Shape::Inside,
            hand_over: false,
        })
    }

    /// Sends `cmds` to `target` onto the client's lane, followed in the same send by the write
    /// script reading and versioning the states `capture` names ([`Shape::After`]); the
    /// client's reply is the one of `cmds[client]`.
    pub(super) fn send_before_capture(
        &self,
        router: &Arc<Router>,
        target: InstanceId,
        capture: Capture,
        mut cmds: Vec<Vec<Bytes>>,
        client: usize,
    ) -> Result<Sent, Interrupt> {
        cmds.push(capture.command(router)?);
        let n = cmds.len();
        let sent = Instant::now();
        let rx = router.send(target, self.lane(), bundle(&cmds), n)?;
        Ok(self.sent_before_capture(router, target, capture, rx, client, sent))
    }

    /// [`Sent`] for replies already in (`replies`: of commands sent on a connection of the
    /// client's own at `sent`, the last one [`Capture::command`]).
    pub(super) fn captured(
        &self,
        router: &Arc<Router>,
        target: InstanceId,
        capture: Capture,
        replies: Result<Replies, BackendError>,
        client: usize,
        sent: Instant,
    ) -> Sent {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let _ = tx.send(replies);
        self.sent_before_capture(router, target, capture, rx, client, sent)
    }

    fn sent_before_capture(
        &self,
        router: &Arc<Router>,
        target: InstanceId,
        capture: Capture,
        rx: ReplyReceiver,
        client: usize,
        sent: Instant,
    ) -> Sent {
        Sent {
            sent,
            router: router.clone(),
            shared: self.shared.clone(),
            lane: self.lane(),
            target,
            keys: capture.keys,
            routes: capture.routes,
            rx: Some(rx),
            shape: Shape::After { client },
            hand_over: false,
        }
    }
}

/// What the write script run after a script or a transaction reads: the keys they declared
/// (with their routes), and the set their scripts' recorders list the other keys they wrote in.
pub(super) struct Capture {
    pub keys: Vec<Bytes>,
    pub routes: Vec<Route>,
    pub recorded: Bytes,
}

impl Capture {
    /// The write script with no command of its own (`replica::capture_command`): it reads the
    /// states of the keys, with a fresh version.
    pub(super) fn command(&self, router: &Router) -> Result<Vec<Bytes>, Interrupt> {
        if self.keys.len() > guard::MAX_GUARDED_ARGS {
            return Err(stop(&format!(
                "ERR redis-fleet: a write of more than {} keys on a replicated category is not \
                 supported; split it",
                guard::MAX_GUARDED_ARGS
            )));
        }
        Ok(replica::capture_command(
            router.policy(),
            router.version(),
            &self.keys,
            &self.recorded,
        ))
    }
}

/// A name for the set a script's recorder lists the keys it wrote in: unique per script run
/// (the sidecar's process, its start, a counter).
pub(super) fn recorded_set() -> Bytes {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    static PROCESS: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let process = PROCESS.get_or_init(|| {
        let started = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        format!("{:x}-{started:x}", std::process::id())
    });
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    Bytes::from(names::script_writes(&format!("{process}-{n:x}")))
}

/// An `EVAL` of a wrapped script (`scripts::rewrite`) made to record the keys it writes in
/// set `recorded` ([`scripts::recording`]); other commands (`FCALL`: functions cannot be
/// wrapped, and must declare the keys they write) are left as they are.
/// A script declaring `flags=no-writes` is left as it is too: it writes nothing (and Redis
/// would refuse the recorder's writes in it).
pub(super) fn record_writes(cmd: &mut Vec<Bytes>, recorded: &Bytes) {
    // `scripts::rewrite` turned every EVALSHA of a script this sidecar knows into an EVAL.
    let is_eval = cmd.first().is_some_and(|n| n.eq_ignore_ascii_case(b"EVAL"));
    if !is_eval || cmd.len() < 3 || scripts::declares_no_writes(&cmd[1]) {
        return;
    }
    cmd[1] = scripts::recording(&cmd[1]);
    cmd.push(recorded.clone());
}

/// The client's reply to a write sent as `sent`, once its result is in (and, for `sync`, on
/// its replica).
pub(super) fn answer_later(router: &Arc<Router>, category: CategoryId, sent: Sent) -> Pending {
    let router = router.clone();
    let reply = sent.spawn();
    Pending::Future(Box::pin(async move {
        let reply = reply.await;
        count(&router, category, &reply);
        reply
    }))
}

/// Where the write script's reply is among the replies of what was sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    /// The client's commands ran inside the write script: its one reply carries the client's.
    Inside,
    /// The client's commands ran just before the write script, which only read the keys'
    /// states: its reply is the last one, and the client's is the one at `client`.
    After { client: usize },
}

/// A replicated write on its way to its target.
pub(super) struct Sent {
    /// When the write went to its writer (it ran after): a `sync` result that reaches its
    /// replica more than [`replica::SYNC_RESULT_DEADLINE`] later is not acknowledged.
    sent: Instant,
    router: Arc<Router>,
    shared: Arc<Shared>,
    lane: usize,
    target: InstanceId,
    keys: Vec<Bytes>,
    routes: Vec<Route>,
    /// The writer's reply (taken when it is awaited).
    rx: Option<ReplyReceiver>,
    shape: Shape,
    /// The reply is what the write took (a pop): the client gets it even when a `sync`
    /// replica did not take the result — the element is still on the replica then, where a
    /// failover would hand it out a second time; failing the reply would lose it.
    hand_over: bool,
}

impl Sent {
    /// See [`Sent::hand_over`].
    pub(super) fn handing_over_what_it_took(mut self) -> Self {
        self.hand_over = true;
        self
    }

    /// Runs the rest in a task of its own from now on: it waits for the writer's result as it
    /// arrives (so the time a result is held, taken off the replica's TTL, is measured from
    /// then), and the replicas get it even when the client hangs up before its reply. The
    /// future returned is the client's reply.
    pub(super) fn spawn(self) -> impl Future<Output = Bytes> + Send + 'static {
        let (tx, rx) = tokio::sync::oneshot::channel();
        tokio::spawn(self.run(tx));
        async move {
            rx.await.unwrap_or_else(|_| {
                error_reply("UNKNOWN redis-fleet: the write's outcome was lost; it may have run")
            })
        }
    }

    /// Waits for the writer's result, hands each written key's state to its slot's replica —
    /// before the client's reply (`tx`) for a `sync` category, after it for an `async` one.
    async fn run(mut self, tx: tokio::sync::oneshot::Sender<Bytes>) {
        let result = match self.rx.take() {
            Some(rx) => rx.await.unwrap_or_else(|_| Err(lost())),
            None => Err(lost()),
        };
        // The client's own reply, when its commands ran before the write script.
        let (client_reply, reply) = match self.shape {
            Shape::Inside => (None, backend_reply(result, true)),
            Shape::After { client } => match result {
                Ok(Replies::Many(mut replies)) if replies.len() > client + 1 => {
                    let capture = replies.pop().unwrap_or_default();
                    (Some(replies.swap_remove(client)), capture)
                }
                Ok(_) => {
                    let _ = tx.send(error_reply("ERR redis-fleet: replies missing"));
                    return;
                }
                Err(e) => {
                    let _ = tx.send(e.reply());
                    return;
                }
            },
        };
        if let Some(client) = client_reply.as_ref().filter(|r| nothing_ran(r)) {
            // An EXEC that a WATCH aborted, a transaction discarded, a script that never
            // started: there is nothing to replicate, and the client must hear what happened
            // (a WATCH loop retries on nil), not that the write ran.
            let _ = tx.send(client.clone());
            return;
        }
        let answered = Instant::now();
        if client_reply.is_none() && reply.starts_with(b"-NOSCRIPT") {
            // The instance lost its scripts (`SCRIPT FLUSH`; each connection loads them when
            // it is made): load it again for the next writes. This one did not run, and is
            // not sent again: the client's later requests may have run already.
            let load = vec![
                Bytes::from_static(b"SCRIPT"),
                Bytes::from_static(b"LOAD"),
                Bytes::from_static(replica::WRITE_SCRIPT.as_bytes()),
            ];
            let _ = self.router.send(self.target, self.lane, bundle(&[load]), 1);
            let mut text = String::from_utf8_lossy(&LOST_WRITE_SCRIPT[1..]).into_owned();
            text.push_str(" (nothing ran); retry");
            let _ = tx.send(error_reply(&text));
            return;
        }
        let written = match parse(&reply)
            .map_err(|e| WriteError::Malformed(String::from_utf8_lossy(&e).into_owned()))
            .and_then(|frame| match self.shape {
                Shape::Inside => replica::parse_written(frame, &self.keys),
                Shape::After { .. } => replica::parse_captured(frame, &self.keys),
            }) {
            Ok(w) => w,
            Err(e) => {
                let _ = tx.send(self.unread(client_reply, e));
                return;
            }
        };
        // Keys a script wrote without declaring them: routed now. One the table gives another
        // instance is not this writer's to replicate (a script that strays outside its slot
        // writes where nothing routes to).
        let mut routes = std::mem::take(&mut self.routes);
        let mut written = written;
        if written.states.len() > routes.len() {
            let extra = written.states.split_off(routes.len());
            for (key, state) in extra {
                let route = self.router.resolver.resolve(&key);
                if route.target == self.target {
                    routes.push(route);
                    written.states.push((key, state));
                }
            }
        }
        self.routes = routes;
        let parts = for_replicas(&self.router, self.target, &self.routes, &written);
        let (sync, later): (Vec<ForReplica>, Vec<ForReplica>) =
            parts.into_iter().partition(|p| p.sync);
        let policy = self.router.policy().to_owned();
        // Every part is tried, also after one failed: the other replicas must not fall behind.
        let mut failure = None;
        // The `sync` parts a replica did not take: delivered again after the reply (below).
        let mut missed: Vec<&ForReplica> = Vec::new();
        for part in &sync {
            let mut taken_late = false;
            let handed = match self.apply(&policy, part, answered).await {
                Ok(Handed::Applied) if self.sent.elapsed() > replica::SYNC_RESULT_DEADLINE => {
                    taken_late = true;
                    Err(format!(
                        "its result reached it more than {:?} after the write was sent, later \
                         than a newer writer may take the key",
                        replica::SYNC_RESULT_DEADLINE
                    ))
                }
                handed => handed,
            };
            match handed {
                Ok(Handed::Applied) => {
                    part.metrics.replicated.inc();
                }
                Ok(Handed::Over) => {}
                Err(why) => {
                    part.metrics.replica_failures.inc();
                    if !taken_late {
                        missed.push(part);
                    }
                    let name = self.router.resolver.instance_name(part.replica);
                    failure.get_or_insert_with(|| {
                        // Not -TRYAGAIN: the write ran, and clients retry that code on their own.
                        error_reply(&format!(
                            "NOREPLICA redis-fleet: the write ran, but its replica {name} did not \
                             take it ({why})"
                        ))
                    });
                }
            }
        }
        // The async parts count as in flight before the client hears of the write: a sidecar
        // told to stop waits for them (`deliver_async_results`) and must not see nothing
        // pending in between. (The sync parts a replica missed are not: their clients were
        // told the write did not reach the replica, and the backlog measures the async lag.)
        let in_flight = if later.is_empty() {
            None
        } else {
            let bytes: i64 = later.iter().map(ForReplica::size).sum();
            let m = &self.shared.metrics;
            if m.replication_backlog.get() >= BACKLOG_LIMIT
                || m.replication_backlog_bytes.get() + bytes > BACKLOG_BYTES_LIMIT
            {
                for part in &later {
                    part.metrics.replica_failures.inc();
                }
                None
            } else {
                Some(InFlight::new(&self.shared.metrics, bytes, answered))
            }
        };
        if self.hand_over && failure.is_some() {
            tracing::debug!("a pop's result did not reach its replica; the element is handed over");
            failure = None;
        }
        let _ = tx.send(
            failure
                .or(client_reply)
                .unwrap_or_else(|| encode(&written.reply)),
        );
        // Dropped from a full backlog (no `in_flight`): not delivered, already counted failed.
        let delivering: &[ForReplica] = if in_flight.is_some() { &later } else { &[] };
        for part in delivering {
            let outcome = if answered.elapsed() > MAX_HELD {
                Err("held too long".to_owned())
            } else {
                self.apply(&policy, part, answered).await
            };
            match outcome {
                Ok(Handed::Applied) => {
                    part.metrics.replicated.inc();
                }
                Ok(Handed::Over) => {}
                Err(why) => {
                    part.metrics.replica_failures.inc();
                    tracing::debug!(%why, "a replicated write's result did not reach its replica");
                    missed.push(part);
                }
            }
        }
        if !missed.is_empty() {
            // The sync parts among them are held within their own budget (the async ones are
            // in the backlog's).
            let mut held_bytes: i64 = missed.iter().filter(|p| p.sync).map(|p| p.size()).sum();
            let gauge = &self.shared.metrics.redelivery_bytes;
            if gauge.get() + held_bytes > REDELIVERY_BYTES_LIMIT {
                missed.retain(|p| !p.sync);
                held_bytes = 0;
            }
            gauge.inc_by(held_bytes);
            self.deliver_again(&policy, &missed, answered).await;
            gauge.dec_by(held_bytes);
        }
        drop(in_flight);
    }

    /// Delivers `parts` — results their replica did not take (frozen past the request
    /// timeout, a connection lost, a fence this sidecar's table was behind) — again, backing
    /// off, until each is taken or handed over, or has been held [`MAX_HELD`]. A `sync` write
    /// whose client heard `-NOREPLICA` ran on its writer, where reads see it: without this, a
    /// replica promoted minutes later (before the replica check repaired it) would answer
    /// with the value before it — a read going back in time (`make chaos` seed 3). Results
    /// are versioned, so one applied late never overwrites a newer one, and a new writer's
    /// own writes outrank it.
    ///
    /// Only while the table in use still names the instance the replica of every key of a
    /// part, by that table: once it serves them (promoted: the result would reach the keys'
    /// new writer without reaching its replicas) or another instance replicates them (seeded
    /// from the writer), they are not its to take; a replica that is gone is not waited for.
    async fn deliver_again(&self, policy: &str, parts: &[&ForReplica], answered: Instant) {
        let mut pause = std::time::Duration::from_millis(100);
        let mut left: Vec<&ForReplica> = parts.to_vec();
        while !left.is_empty() {
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(std::time::Duration::from_secs(2));
            if answered.elapsed() > MAX_HELD {
                tracing::debug!(
                    results = left.len(),
                    "results their replica missed were held too long; the replica check repairs them"
                );
                return;
            }
            let Some(current) = self.shared.router.load_full() else {
                return;
            };
            let mut still = Vec::new();
            for part in left {
                let name = self.router.resolver.instance_name(part.replica);
                let Some(id) = current.resolver.instance_id(name) else {
                    continue;
                };
                let replica_of_all = part.written.states.iter().all(|(key, _)| {
                    let route = current.resolver.resolve(key);
                    route.target != id && current.resolver.replica_targets(&route).any(|r| r == id)
                });
                if !replica_of_all {
                    continue;
                }
                let by_current = ForReplica {
                    replica: id,
                    ..(*part).clone()
                };
                match apply(
                    &current,
                    &self.shared,
                    self.lane,
                    policy,
                    &by_current,
                    answered,
                )
                .await
                {
                    Ok(Handed::Applied) => {
                        part.metrics.redelivered.inc();
                    }
                    Ok(Handed::Over) => {}
                    Err(_) => still.push(part),
                }
            }
            left = still;
        }
    }

    /// The client's reply when the write script returned no result. Inside it, the client's
    /// commands did not run: its error is theirs. After them (`client_reply`), they ran but
    /// their result was not read: it reaches no replica until the replica check repairs it,
    /// so a `sync` category answers `-NOREPLICA`, an `async` one the commands' own reply.
    fn unread(&self, client_reply: Option<Bytes>, e: WriteError) -> Bytes {
        let Some(reply) = client_reply else {
            return match e {
                WriteError::Failed(e) => encode(&Frame::Error(e)),
                e @ WriteError::Malformed(_) => error_reply(&format!("ERR {e}")),
            };
        };
        let mut sync = false;
        for route in &self.routes {
            if let Some((mode, Some(replica))) = self.router.resolver.replication(route)
                && replica != self.target
            {
                sync |= mode == ReplicationMode::Sync;
                self.router.categories[usize::from(route.category)]
                    .replica_failures
                    .inc();
            }
        }
        tracing::debug!(%e, "a script's or transaction's result could not be read for its replica");
        if sync {
            error_reply(&format!(
                "NOREPLICA redis-fleet: the write ran, but its result could not be read for its \
                 replica ({e})"
            ))
        } else {
            reply
        }
    }

    /// [`apply`] of `part` from this write's connection lane.
    async fn apply(
        &self,
        policy: &str,
        part: &ForReplica,
        answered: Instant,
    ) -> Result<Handed, String> {
        apply(
            &self.router,
            &self.shared,
            self.lane,
            policy,
            part,
            answered,
        )
        .await
    }
}

/// The keys among `written` (once each) whose category the table replicates, with their
/// routes: those a transaction that wrote them must hand to their replicas.
pub(super) fn replicated_writes(router: &Router, written: &[Bytes]) -> Vec<(Bytes, Route)> {
    if !router.resolver.replicates() {
        return Vec::new();
    }
    let mut out: Vec<(Bytes, Route)> = Vec::new();
    for key in written {
        if out.iter().any(|(k, _)| k == key) {
            continue;
        }
        let route = router.resolver.resolve(key);
        if router.resolver.replication(&route).is_some() {
            out.push((key.clone(), route));
        }
    }
    out
}

/// The client's command `args` (of `spec`, on keys routed as `routes`) with the TTL commands
/// their categories' rules add after it (or in its place), or the text of the refusal.
fn with_ttl_commands(
    router: &Router,
    spec: &CommandSpec,
    args: &[Bytes],
    routes: &[Route],
) -> Result<Vec<Vec<Bytes>>, String> {
    match ttl_action(router, spec, args, routes.iter().map(|r| r.category)) {
        TtlAction::Unchanged => Ok(vec![args.to_vec()]),
        TtlAction::Replace(replaced) => Ok(vec![replaced]),
        TtlAction::Append(extra) => {
            let mut cmds = vec![args.to_vec()];
            cmds.extend(extra);
            Ok(cmds)
        }
        TtlAction::Refuse(text) => Err(text),
    }
}

/// Whether a script's or transaction's own reply says none of it ran: `EXEC` answering nil (a
/// WATCHed key changed) or `-EXECABORT`, a script that was not found or not started (`-BUSY`
/// of another script running).
fn nothing_ran(reply: &[u8]) -> bool {
    // With the space: `-BUSYGROUP` or `-BUSYKEY` from a command inside a script that had
    // written before is not one of them.
    reply.starts_with(b"*-1")
        || reply.starts_with(b"-EXECABORT ")
        || reply.starts_with(b"-NOSCRIPT ")
        || reply.starts_with(b"-BUSY ")
}

/// Counts `reply` as a command of `category`.
fn count(router: &Router, category: CategoryId, reply: &[u8]) {
    let m = &router.categories[usize::from(category)];
    m.commands.inc();
    if reply.first() == Some(&b'-') {
        m.errors.inc();
    }
}

/// The parts of `written` each replica takes, per category: the keys whose category
/// replicates and whose slot has a replica other than the target — and an outgoing replica
/// while its successor seeds (a failover then promotes it: it must have every write).
fn for_replicas(
    router: &Router,
    target: InstanceId,
    routes: &[Route],
    written: &Written,
) -> Vec<ForReplica> {
    let mut parts: Vec<ForReplica> = Vec::new();
    for (route, state) in routes.iter().zip(&written.states) {
        let Some((mode, Some(replica))) = router.resolver.replication(route) else {
            continue;
        };
        // The replica just looked up, then the outgoing one (one lookup each per write).
        for replica in std::iter::once(replica).chain(router.resolver.outgoing(route)) {
            if replica == target {
                continue;
            }
            add_part(
                router,
                &mut parts,
                replica,
                route,
                mode,
                state,
                written.version,
            );
        }
    }
    parts
}

/// Adds the result `state` of a key routed as `route` to the part for `replica`.
fn add_part(
    router: &Router,
    parts: &mut Vec<ForReplica>,
    replica: InstanceId,
    route: &Route,
    mode: ReplicationMode,
    state: &(Bytes, KeyState),
    version: replica::Version,
) {
    let sync = mode == ReplicationMode::Sync;
    match parts
        .iter_mut()
        .find(|p| p.replica == replica && p.category == route.category)
    {
        Some(p) => {
            p.sync |= sync;
            p.written.states.push(state.clone());
        }
        None => parts.push(ForReplica {
            replica,
            category: route.category,
            sync,
            written: Written {
                reply: Frame::Null,
                version,
                states: vec![state.clone()],
            },
            metrics: router.categories[usize::from(route.category)].clone(),
        }),
    }
}

impl ForReplica {
    /// The bytes of the states it carries.
    fn size(&self) -> i64 {
        self.written
            .states
            .iter()
            .map(|(k, s)| {
                let payload = match s {
                    KeyState::Present { payload, .. } => payload.len(),
                    KeyState::Absent => 0,
                };
                i64::try_from(k.len() + payload).unwrap_or(i64::MAX)
            })
            .sum()
    }
}

/// `async` results of one write counted in the backlog gauges while they are on their way;
/// uncounted when dropped, also when the task ends early (cancelled, or a panic).
struct InFlight<'m> {
    metrics: &'m SidecarMetrics,
    bytes: i64,
    age: BacklogEntry,
}

impl<'m> InFlight<'m> {
    fn new(metrics: &'m SidecarMetrics, bytes: i64, answered: Instant) -> Self {
        metrics.replication_backlog.inc();
        metrics.replication_backlog_bytes.inc_by(bytes);
        let age = metrics.replication_backlog_age.enter(answered);
        Self {
            metrics,
            bytes,
            age,
        }
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.metrics.replication_backlog.dec();
        self.metrics.replication_backlog_bytes.dec_by(self.bytes);
        self.metrics.replication_backlog_age.leave(&self.age);
    }
}

/// What became of a result sent to its replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Handed {
    /// The replica took it.
    Applied,
    /// A table loaded meanwhile no longer makes the instance anything of these keys: the new
    /// table's replica of them (if any) is seeded from the writer after every sidecar routes
    /// by it, which copies this result too; no instance keeps a copy nothing routes to.
    Over,
}

/// How long a result waits for this sidecar to load the table an instance is fenced at: about
/// two heartbeats, within which a sidecar that keeps up has it; one further behind answers
/// `-NOREPLICA` rather than hold the client longer.
const NEWER_TABLE_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Waits until this sidecar routes by table `fence` or later (at most [`NEWER_TABLE_WAIT`]).
async fn newer_table(shared: &Shared, fence: u64, instance: &str) -> Result<(), String> {
    let waited = Instant::now();
    while shared
        .router
        .load()
        .as_ref()
        .is_none_or(|r| r.version() < fence)
    {
        if waited.elapsed() > NEWER_TABLE_WAIT {
            return Err(format!(
                "this sidecar's routing table is behind the fleet (instance {instance} needs \
                 v{fence} or later)"
            ));
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    Ok(())
}

/// Sends the apply of `part` to its replica and waits for it; `Err` with the reason when the
/// replica did not take all of it. A table loaded meanwhile (the replica's connection then
/// refuses requests routed by the older one) sends it again by the table in use when that
/// table still gives every key in it to the same instance, as replica or promoted to serve
/// them (results are versioned: one applied twice changes nothing, and a promoted replica's
/// own later writes outrank it); when it gives none of them to it, the result is handed over
/// ([`Handed::Over`]); a mix fails.
async fn apply(
    router: &Arc<Router>,
    shared: &Shared,
    lane: usize,
    policy: &str,
    part: &ForReplica,
    answered: Instant,
) -> Result<Handed, String> {
    let name = router.resolver.instance_name(part.replica).to_owned();
    let mut current = router.clone();
    let mut id = part.replica;
    let mut by_body = false;
    for _ in 0..ROUTING_ATTEMPTS {
        let args = replica::apply_command(policy, &part.written, answered.elapsed(), by_body);
        let rx = match current.send(id, lane, bundle(&[args]), 1) {
            Ok(rx) => rx,
            Err(refused) => {
                if let SendError::Fenced { fence, .. } = refused {
                    // The fleet is past this sidecar's table (the replica is fenced above it):
                    // the operator published a newer one, which this sidecar loads in a
                    // moment. The write ran, so its result waits for that table rather than
                    // fail; it is then routed by it, as after any table change.
                    newer_table(shared, fence, &name).await?;
                }
                current = shared.router.load_full().ok_or("no routing table")?;
                let Some(now) = current.resolver.instance_id(&name) else {
                    // It left the table: these keys have another replica or none now.
                    return Ok(Handed::Over);
                };
                // Per key: does the new table still give it to this instance — as its replica,
                // or as its server (promoted by a failover: its own later writes outrank
                // this result, which must not be lost with the old owner)?
                let kept: Vec<bool> = part
                    .written
                    .states
                    .iter()
                    .map(|(key, _)| {
                        let route = current.resolver.resolve(key);
                        route.target == now
                            || current.resolver.replica_targets(&route).any(|r| r == now)
                    })
                    .collect();
                if kept.iter().all(|k| !k) {
                    // The new table names another replica for them (seeded from the writer
                    // once every sidecar routes by it: this result is in what it copies) or
                    // none (the range is unreplicated, or moving): it governs them now.
                    return Ok(Handed::Over);
                }
                if !kept.iter().all(|k| *k) {
                    return Err(format!(
                        "the routing table changed the replica of some of {name}'s keys"
                    ));
                }
                id = now;
                continue;
            }
        };
        let reply = rx
            .await
            .unwrap_or_else(|_| Err(lost()))
            .map(Replies::first)
            .map_err(|e: BackendError| String::from_utf8_lossy(&e.reply()).trim().to_owned())?;
        if reply.starts_with(b"-NOSCRIPT") && !by_body {
            by_body = true;
            continue;
        }
        let frame = parse(&reply).map_err(|_| "an unreadable reply".to_owned())?;
        let applied = replica::parse_applied(&frame)?;
        part.metrics
            .replication_lag
            .observe(answered.elapsed().as_secs_f64());
        return if applied.complete() {
            Ok(Handed::Applied)
        } else {
            Err(String::from_utf8_lossy(applied.error.as_deref().unwrap_or_default()).into_owned())
        };
    }
    Err("the routing table kept changing".to_owned())
}
