//! Writes on keys of replicated categories (`docs/replication.md`). A write runs on its target
//! inside the write script (`redis::protocol::replica`), which versions its result; the result
//! then goes to the replica of each written key's slot — before the client's reply for a `sync`
//! category, after it for an `async` one. The target runs the script also where there is no
//! replica to write (a promoted replica in an outage is the target itself): its versions must
//! outrank the late results of the writer before it.
//!
//! What this first step carries: commands on one key, commands whose keys share one instance,
//! and MSET / DEL / UNLINK split per instance. Writes the scripts cannot carry yet — scripts,
//! blocking pops, writes queued in MULTI, writes on a migrating range, FLUSHDB / FLUSHALL — are
//! refused on replicated categories, never run unreplicated.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;

use super::super::backend::{BackendError, Replies, ReplyReceiver, SendError};
use super::super::command::{Kind, Resolved, Split};
use super::super::metrics::{CategoryMetrics, SidecarMetrics};
use super::super::router::Router;
use super::super::ttl::TtlAction;
use super::keyed::ttl_action;
use super::{
    Client, Dispatched, Interrupt, Pending, ROUTING_ATTEMPTS, Shared, backend_reply, bundle,
    encode, error_reply, lost, parse, stop,
};
use crate::redis::protocol::guard;
use crate::redis::protocol::replica::{self, KeyState, WriteError, Written};
use crate::redis::resp::{Frame, Request};
use crate::routing::keyspace::{CategoryId, InstanceId, Route};
use crate::routing::table::ReplicationMode;

/// Results of `async` writes on their way to replicas, and their bytes, beyond which a result
/// is dropped (and counted as a replica failure) rather than held: a replica that stopped
/// answering must not grow the sidecar without bound.
const BACKLOG_LIMIT: i64 = 100_000;
const BACKLOG_BYTES_LIMIT: i64 = 64 << 20;

/// An `async` result held longer than this is dropped (and counted), not applied: replicas
/// forget the versions they applied after a while (`replica.rs`), so a result may only arrive
/// that late.
const MAX_HELD: std::time::Duration = std::time::Duration::from_secs(60);
const _: () = assert!(MAX_HELD.as_secs() * 5 <= replica::FORGET_AFTER.as_secs());

fn refused(what: &str) -> Interrupt {
    stop(&format!(
        "ERR redis-fleet: {what} on a replicated category is not supported yet (docs/replication.md)"
    ))
}

/// The result of a write for one replica: the states of the keys it holds.
struct ForReplica {
    replica: InstanceId,
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
        if let Some(t) = &mut self.transaction {
            t.aborted = true;
            return Some(Err(refused("a write queued in MULTI")));
        }
        if anywhere {
            return Some(Err(refused(&format!(
                "{} (the fleet replicates a category)",
                spec.name.to_ascii_uppercase()
            ))));
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
                let cmds = match ttl_action(
                    router,
                    spec,
                    &request.args,
                    routes.iter().map(|r| r.category),
                ) {
                    TtlAction::Unchanged => vec![request.args.clone()],
                    TtlAction::Replace(args) => vec![args],
                    TtlAction::Append(extra) => {
                        let mut c = vec![request.args.clone()];
                        c.extend(extra);
                        c
                    }
                    TtlAction::Refuse(text) => return Some(Ok(Pending::Ready(error_reply(&text)))),
                };
                // Sent now, in the client's order; answered when its result is in.
                return Some(
                    self.send_write(router, target, keys, routes, cmds)
                        .map(|sent| {
                            let router = router.clone();
                            let reply = sent.spawn();
                            Pending::Future(Box::pin(async move {
                                let reply = reply.await;
                                count(&router, category, &reply);
                                reply
                            }))
                        }),
                );
            }
            Kind::MultiKey(split) => {
                Box::pin(self.split_replicated(router, request, split, resolved, &routes)).await
            }
            Kind::Script => Err(refused("a script")),
            Kind::Blocking => Err(refused("a blocking write")),
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
    fn send_write(
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
        let rx = router.send(target, self.lane(), bundle(&[args]), 1)?;
        Ok(Sent {
            router: router.clone(),
            shared: self.shared.clone(),
            lane: self.lane(),
            target,
            keys,
            routes,
            rx: Some(rx),
        })
    }
}

/// A replicated write on its way to its target.
struct Sent {
    router: Arc<Router>,
    shared: Arc<Shared>,
    lane: usize,
    target: InstanceId,
    keys: Vec<Bytes>,
    routes: Vec<Route>,
    /// The writer's reply (taken when it is awaited).
    rx: Option<ReplyReceiver>,
}

impl Sent {
    /// Runs the rest in a task of its own from now on: it waits for the writer's result as it
    /// arrives (so the time a result is held, taken off the replica's TTL, is measured from
    /// then), and the replicas get it even when the client hangs up before its reply. The
    /// future returned is the client's reply.
    fn spawn(self) -> impl Future<Output = Bytes> + Send + 'static {
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
        let reply = backend_reply(result, true);
        let answered = Instant::now();
        if reply.starts_with(b"-NOSCRIPT") {
            // The instance lost its scripts (`SCRIPT FLUSH`; each connection loads them when
            // it is made): load it again for the next writes. This one did not run, and is
            // not sent again: the client's later requests may have run already.
            let load = vec![
                Bytes::from_static(b"SCRIPT"),
                Bytes::from_static(b"LOAD"),
                Bytes::from_static(replica::WRITE_SCRIPT.as_bytes()),
            ];
            let _ = self.router.send(self.target, self.lane, bundle(&[load]), 1);
            let _ = tx.send(error_reply(
                "TRYAGAIN redis-fleet: the instance had lost the write script (nothing ran); retry",
            ));
            return;
        }
        let frame = match parse(&reply) {
            Ok(f) => f,
            Err(e) => {
                let _ = tx.send(e);
                return;
            }
        };
        let written = match replica::parse_written(frame, &self.keys) {
            Ok(w) => w,
            Err(WriteError::Failed(e)) => {
                let _ = tx.send(encode(&Frame::Error(e)));
                return;
            }
            Err(e @ WriteError::Malformed(_)) => {
                let _ = tx.send(error_reply(&format!("ERR {e}")));
                return;
            }
        };
        let parts = for_replicas(&self.router, self.target, &self.routes, &written);
        let (sync, later): (Vec<ForReplica>, Vec<ForReplica>) =
            parts.into_iter().partition(|p| p.sync);
        let policy = self.router.policy().to_owned();
        // Every part is tried, also after one failed: the other replicas must not fall behind.
        let mut failure = None;
        for part in &sync {
            match self.apply(&policy, part, answered).await {
                Ok(Handed::Applied) => {
                    part.metrics.replicated.inc();
                }
                Ok(Handed::Over) => {}
                Err(why) => {
                    part.metrics.replica_failures.inc();
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
        // pending in between.
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
                Some(InFlight::new(&self.shared.metrics, bytes))
            }
        };
        let _ = tx.send(failure.unwrap_or_else(|| encode(&written.reply)));
        let Some(_in_flight) = in_flight else {
            return;
        };
        for part in &later {
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
                }
            }
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

/// Counts `reply` as a command of `category`.
fn count(router: &Router, category: CategoryId, reply: &[u8]) {
    let m = &router.categories[usize::from(category)];
    m.commands.inc();
    if reply.first() == Some(&b'-') {
        m.errors.inc();
    }
}

/// The parts of `written` each replica takes: the keys whose category replicates and whose
/// slot has a replica other than the target.
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
        if replica == target {
            continue;
        }
        let sync = mode == ReplicationMode::Sync;
        match parts.iter_mut().find(|p| p.replica == replica) {
            Some(p) => {
                p.sync |= sync;
                p.written.states.push(state.clone());
            }
            None => parts.push(ForReplica {
                replica,
                sync,
                written: Written {
                    reply: Frame::Null,
                    version: written.version,
                    states: vec![state.clone()],
                },
                metrics: router.categories[usize::from(route.category)].clone(),
            }),
        }
    }
    parts
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
}

impl<'m> InFlight<'m> {
    fn new(metrics: &'m SidecarMetrics, bytes: i64) -> Self {
        metrics.replication_backlog.inc();
        metrics.replication_backlog_bytes.inc_by(bytes);
        Self { metrics, bytes }
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.metrics.replication_backlog.dec();
        self.metrics.replication_backlog_bytes.dec_by(self.bytes);
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
            Err(SendError::Stale) => {
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
                            || matches!(current.resolver.replication(&route), Some((_, Some(r))) if r == now)
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
            Err(e) => return Err(String::from_utf8_lossy(&e.reply()).trim().to_owned()),
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
