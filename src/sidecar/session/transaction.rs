//! Transactions: MULTI queues commands here until EXEC sends them, with the TTL commands of
//! their keys, inside one `MULTI … EXEC` to the one instance their keys live on (else
//! `-CROSSINSTANCE`). Routes are decided at EXEC, by the table in use then. Keys of a migrating
//! range take the WATCH path (`guarded.rs`). WATCH holds a connection of its own.
//!
//! Inside MULTI, as in Redis, QUIT and RESET act at once; commands that only make sense on
//! the client's own connection (SELECT, AUTH, HELLO, CLIENT, …) or that span every instance
//! are refused and abort the transaction, never forwarded on a connection other clients share.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};

use super::super::backend::Dedicated;
use super::super::command::{Kind, LocalCommand, PubSub, Resolved, TxnCommand};
use super::super::router::Router;
use super::super::ttl::TtlAction;
use super::guarded::{Guarded, exec_prefix};
use super::keyed::ttl_action;
use super::replicated::{Capture, record_writes, recorded_set, replicated_writes};
use super::{Client, Dispatched, Interrupt, Pending, backend_reply, bundle, error_reply, lost};
use crate::redis::protocol::guard::{self, Decision};
use crate::redis::protocol::names;
use crate::redis::resp::{Frame, Request, encode_request};
use crate::routing::keyspace::{CategoryId, InstanceId, Route};

/// A transaction being queued (MULTI … EXEC).
#[derive(Default)]
pub(super) struct Transaction {
    queued: Vec<Vec<Bytes>>,
    /// Every key the queued commands touch.
    keys: Vec<Bytes>,
    /// The keys of the queued commands that may write: on a replicated category, EXEC reads
    /// their states for the replicas (`replicated.rs`).
    written: Vec<Bytes>,
    /// Category TTL commands for keys the transaction writes, run inside it after them.
    after: Vec<Vec<Bytes>>,
    /// A command failed to queue: EXEC answers EXECABORT.
    pub(super) aborted: bool,
    /// A script is queued: it may touch keys it does not declare, so a migrating range's
    /// transaction runs where its keys' whole slot groups are (`guarded.rs`).
    script: bool,
}

/// Where a transaction's keys live, decided at EXEC.
enum Place {
    /// No keys at all.
    Anywhere,
    /// On this instance.
    On(InstanceId),
    /// In this migrating range (all `guard_keys` in it; any others on its source).
    Migrating {
        m: u16,
        guard_keys: Vec<Bytes>,
        all: bool,
    },
}

fn cross() -> Interrupt {
    Interrupt::Reply(error_reply(
        "CROSSINSTANCE the keys of this transaction live on different instances",
    ))
}

/// Where keys routed as `routes` must run.
fn place(router: &Router, keys: &[Bytes], routes: &[Route]) -> Result<Place, Interrupt> {
    let Some(first) = routes.first() else {
        return Ok(Place::Anywhere);
    };
    if let Some(m) = routes.iter().find_map(|r| r.migration) {
        let source = router.migrations[usize::from(m)].source;
        if routes.iter().any(|r| {
            r.migration.is_some_and(|o| o != m) || (r.migration.is_none() && r.target != source)
        }) {
            return Err(cross());
        }
        let guard_keys: Vec<Bytes> = keys
            .iter()
            .zip(routes)
            .filter(|(_, r)| r.migration.is_some())
            .map(|(k, _)| k.clone())
            .collect();
        let all = guard_keys.len() == keys.len();
        return Ok(Place::Migrating { m, guard_keys, all });
    }
    if routes.iter().any(|r| r.target != first.target) {
        return Err(cross());
    }
    Ok(Place::On(first.target))
}

impl Client {
    pub(super) async fn queue(&mut self, request: &Request, resolved: &Resolved) -> Dispatched {
        let spec = resolved.spec;
        match spec.kind {
            Kind::SingleKey
            | Kind::MultiKey(_)
            | Kind::SameInstance
            | Kind::Script
            | Kind::Blocking => {}
            // Every instance is listened to (sidecar/pubsub.rs): a PUBLISH runs with the
            // transaction, on its instance.
            Kind::PubSub(PubSub::Publish) => {}
            // As in Redis: these act at once, inside MULTI too.
            Kind::Local(l @ (LocalCommand::Quit | LocalCommand::Reset)) => {
                return Ok(self.local(l, request).await);
            }
            _ => {
                if let Some(t) = self.transaction.as_mut() {
                    t.aborted = true;
                }
                return Ok(Pending::Ready(error_reply(&format!(
                    "ERR {} inside MULTI is not supported by redis-fleet (the transaction is discarded)",
                    spec.name.to_ascii_uppercase()
                ))));
            }
        }
        let router = self.shared.router.load_full();
        let Some(t) = self.transaction.as_mut() else {
            return Ok(Pending::Ready(error_reply("ERR no transaction")));
        };
        let keys: Vec<Bytes> = resolved
            .keys
            .iter()
            .map(|i| request.args[*i].clone())
            .collect();
        let mut args = request.args.clone();
        if let Some(router) = &router {
            // An early CROSSINSTANCE, as Redis Cluster answers CROSSSLOT while queueing; the
            // routes themselves are decided again at EXEC.
            let mut all = t.keys.clone();
            all.extend(keys.iter().cloned());
            let routes: Vec<Route> = all.iter().map(|k| router.resolver.resolve(k)).collect();
            if let Err(Interrupt::Reply(e)) = place(router, &all, &routes) {
                t.aborted = true;
                return Ok(Pending::Ready(e));
            }
            let categories = keys.iter().map(|k| router.resolver.category_of(k));
            match ttl_action(router, spec, &args, categories) {
                TtlAction::Unchanged => {}
                TtlAction::Replace(replaced) => args = replaced,
                TtlAction::Append(extra) => t.after.extend(extra),
                TtlAction::Refuse(text) => {
                    t.aborted = true;
                    return Ok(Pending::Ready(error_reply(&text)));
                }
            }
        }
        if spec.write || (spec.kind == Kind::Script && !spec.name.ends_with("_ro")) {
            t.written.extend(keys.iter().cloned());
        }
        t.script |= spec.kind == Kind::Script;
        t.keys.extend(keys);
        t.queued.push(args);
        Ok(Pending::Ready(Bytes::from_static(b"+QUEUED\r\n")))
    }

    pub(super) async fn transaction_command(
        &mut self,
        t: TxnCommand,
        request: &Request,
    ) -> Dispatched {
        match t {
            TxnCommand::Multi => {
                if self.transaction.is_some() {
                    return Ok(Pending::Ready(error_reply(
                        "ERR MULTI calls can not be nested",
                    )));
                }
                self.transaction = Some(Transaction::default());
                Ok(Pending::Ready(Frame::ok().to_bytes()))
            }
            TxnCommand::Discard => match self.transaction.take() {
                None => Ok(Pending::Ready(error_reply("ERR DISCARD without MULTI"))),
                Some(_) => {
                    self.unwatch().await;
                    Ok(Pending::Ready(Frame::ok().to_bytes()))
                }
            },
            TxnCommand::Exec => self.exec().await,
            TxnCommand::Watch => {
                let inside = self.transaction.is_some();
                let reply = self.watch(request).await;
                // Refused inside MULTI, as by Redis, the watches stand; any other failure may
                // have left the client's keys unwatched, while it may go on as if they were.
                let failed = match &reply {
                    Ok(Pending::Ready(b)) => b.starts_with(b"-"),
                    Err(Interrupt::Reply(_)) => true,
                    _ => false,
                };
                if failed && !inside {
                    self.watch_failed = true;
                }
                reply
            }
            TxnCommand::Unwatch => {
                self.unwatch().await;
                Ok(Pending::Ready(Frame::ok().to_bytes()))
            }
        }
    }

    async fn watch(&mut self, request: &Request) -> Dispatched {
        if self.transaction.is_some() {
            return Ok(Pending::Ready(error_reply(
                "ERR WATCH inside MULTI is not allowed",
            )));
        }
        let Some(router) = self.shared.router.load_full() else {
            return Ok(Pending::Ready(error_reply(
                "TRYAGAIN the routing table is not loaded yet",
            )));
        };
        let keys: Vec<Bytes> = request.args[1..].to_vec();
        if keys.is_empty() {
            return Ok(Pending::Ready(error_reply(
                "ERR wrong number of arguments for 'watch' command",
            )));
        }
        let routes: Vec<Route> = keys.iter().map(|k| router.resolver.resolve(k)).collect();
        let mut watch = request.args.clone();
        let instance = match place(&router, &keys, &routes).map_err(|_| {
            Interrupt::Reply(error_reply(
                "CROSSINSTANCE WATCHed keys live on different instances",
            ))
        })? {
            Place::On(t) => t,
            Place::Anywhere => 0,
            Place::Migrating { m, guard_keys, .. } => {
                // WATCH where the keys are now; on the source, moves must abort the
                // transaction too, so the marker and the tombstones are WATCHed as well.
                let mig = router.migrations[usize::from(m)].clone();
                let check = guard::check_command(router.range_names(m), &guard_keys);
                let mut waited = 0;
                loop {
                    let reply = self
                        .call(&router, mig.source, bundle(std::slice::from_ref(&check)), 1)
                        .await?
                        .first();
                    match guard::check_decision(&reply) {
                        Some(Decision::Ran) => {
                            watch.push(Bytes::from(mig.marker.clone()));
                            watch.extend(guard_keys.iter().map(|k| names::tomb(k)));
                            break mig.source;
                        }
                        Some(Decision::Ask) => break mig.target,
                        Some(_) if waited < 200 => {
                            waited += 1;
                            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                        }
                        Some(_) => {
                            return Ok(Pending::Ready(error_reply(
                                "TRYAGAIN the WATCHed keys are being migrated, retry",
                            )));
                        }
                        None => return Ok(Pending::Ready(reply)),
                    }
                }
            }
        };
        let name = router.backend(instance).name().to_owned();
        if self.watching.as_ref().is_some_and(|w| w.0 != name) {
            return Ok(Pending::Ready(error_reply(
                "CROSSINSTANCE WATCHed keys live on different instances",
            )));
        }
        if self.watching.is_none() {
            let conn = router
                .backend(instance)
                .dedicated(router.version())
                .await
                .map_err(|e| Interrupt::Reply(e.reply()))?;
            self.watching = Some(Box::new((name, conn)));
        }
        let Some((_, conn)) = self.watching.as_deref_mut() else {
            return Ok(Pending::Ready(error_reply("ERR no connection")));
        };
        match conn.call(&bundle(&[watch]), 1).await {
            Ok(r) => Ok(Pending::Ready(r.first())),
            Err(e) => {
                self.watching = None;
                Ok(Pending::Ready(e.reply()))
            }
        }
    }

    pub(super) async fn unwatch(&mut self) {
        self.watch_failed = false;
        if let Some((_, mut conn)) = self.watching.take().map(|w| *w) {
            let mut out = BytesMut::new();
            encode_request(&[b"UNWATCH".as_slice()], &mut out);
            let _ = conn.call(&out, 1).await;
        }
    }

    pub(super) async fn exec(&mut self) -> Dispatched {
        let Some(t) = self.transaction.take() else {
            return Ok(Pending::Ready(error_reply("ERR EXEC without MULTI")));
        };
        if self.watch_failed {
            self.unwatch().await;
            return Ok(Pending::Ready(error_reply(
                "EXECABORT Transaction discarded because a WATCH before it failed; WATCH and run it again",
            )));
        }
        if t.aborted {
            self.unwatch().await;
            return Ok(Pending::Ready(error_reply(
                "EXECABORT Transaction discarded because of previous errors.",
            )));
        }
        if t.queued.is_empty() {
            self.unwatch().await;
            return Ok(Pending::Ready(Bytes::from_static(b"*0\r\n")));
        }
        let Some(router) = self.shared.router.load_full() else {
            return Ok(Pending::Ready(error_reply(
                "TRYAGAIN the routing table is not loaded yet",
            )));
        };
        let n = t.queued.len();
        let mut cmds = t.queued.clone();
        // The sidecar's TTL commands, as scripts (they run on any Redis version, inside
        // MULTI as anywhere).
        cmds.extend(
            t.after
                .iter()
                .map(|c| super::super::ttl::for_server(c.clone(), true)),
        );
        let routes: Vec<Route> = t.keys.iter().map(|k| router.resolver.resolve(k)).collect();
        let place = match place(&router, &t.keys, &routes) {
            Ok(p) => p,
            Err(e) => {
                self.unwatch().await;
                return Err(e);
            }
        };
        let replicated = replicated_writes(&router, &t.written);
        let watched = self.watching.is_some();
        let result = if replicated.is_empty() {
            let watching = self.watching.take().map(|w| *w);
            let result = self
                .run_exec(&router, place, &cmds, t.script, watching)
                .await;
            result.map(|exec| Pending::Ready(exec_prefix(&exec, n)))
        } else {
            self.exec_replicated(&router, place, cmds, n, t.script, replicated)
                .await
        };
        if matches!(result, Err(Interrupt::Stale)) && !watched {
            // Refused unsent: a connection went over to a newer table. The EXEC is routed
            // again (`route`) and must find its transaction. (Under WATCH, the
            // watching connection is gone with the attempt: the retry answers as Redis does
            // without one, `EXEC without MULTI`.)
            self.transaction = Some(t);
        }
        result
    }

    /// EXEC of a transaction that writes keys of replicated categories: `MULTI … EXEC` then, in
    /// the same send, the write script reading the states of those keys for their replicas
    /// (`replicated.rs`). On a migrating range whose replica is named it is refused, as any
    /// replicated write there; one whose replica is not named yet takes the guarded path.
    async fn exec_replicated(
        &mut self,
        router: &Arc<Router>,
        place: Place,
        cmds: Vec<Vec<Bytes>>,
        n: usize,
        script: bool,
        written: Vec<(Bytes, Route)>,
    ) -> Dispatched {
        let target = match place {
            Place::On(target) => target,
            Place::Anywhere => 0,
            Place::Migrating { .. } => {
                let named = written
                    .iter()
                    .any(|(_, r)| matches!(router.resolver.replication(r), Some((_, Some(_)))));
                if named {
                    self.unwatch().await;
                    return Err(Interrupt::Reply(error_reply(
                        "TRYAGAIN redis-fleet: this transaction's range is being migrated, and \
                         replicated ranges move without their replica (docs/replication.md); retry",
                    )));
                }
                let watching = self.watching.take().map(|w| *w);
                let exec = self
                    .run_exec(router, place, &cmds, script, watching)
                    .await?;
                return Ok(Pending::Ready(exec_prefix(&exec, n)));
            }
        };
        let (keys, routes): (Vec<Bytes>, Vec<Route>) = written.into_iter().unzip();
        // The queued scripts record the keys they write (`replicated.rs`), also those queued
        // before the table replicated their keys.
        let recorded = recorded_set();
        let mut cmds = cmds;
        for c in cmds.iter_mut().take(n) {
            record_writes(c, &recorded);
        }
        let capture = Capture {
            keys,
            routes,
            recorded,
        };
        let mut all = Vec::with_capacity(cmds.len() + 3);
        all.push(vec![Bytes::from_static(b"MULTI")]);
        all.extend(cmds);
        all.push(vec![Bytes::from_static(b"EXEC")]);
        let exec_at = all.len() - 1;
        let sent = match self.watching.take().map(|w| *w) {
            Some((name, mut conn)) => {
                if router.backend(target).name() != name {
                    return Err(Interrupt::Reply(error_reply(
                        "CROSSINSTANCE the transaction's keys and the WATCHed keys live on different instances",
                    )));
                }
                all.push(capture.command(router)?);
                let sent = std::time::Instant::now();
                let replies = conn.call(&bundle(&all), all.len()).await;
                self.captured(router, target, capture, replies, exec_at, sent)
            }
            None => self.send_before_capture(router, target, capture, all, exec_at)?,
        };
        let category = (router.resolver.categories().len() - 1) as CategoryId;
        router.categories[usize::from(category)].commands.inc();
        let reply = sent.spawn();
        Ok(Pending::Future(Box::pin(async move {
            exec_prefix(&reply.await, n)
        })))
    }

    /// Whether every key of `keys` in migrating range `m` (with `script`, every key of their
    /// slot groups) is on the range's target, as the source's guard decides now (`Err` with
    /// its reply when it answers an error). Once so, it stays so: nothing of theirs goes back
    /// to the source. When they are all on the source, the Job is asked to move them (the
    /// keys, or a script's groups) first, so that a client starting over does not find them
    /// there again until the copy comes by.
    async fn all_on_target(
        &mut self,
        router: &Arc<Router>,
        m: u16,
        keys: &[Bytes],
        script: bool,
    ) -> Result<bool, Interrupt> {
        let range = router.range_names(m);
        let check = guard::decision_command(range, keys, script);
        let source = router.migrations[usize::from(m)].source;
        let reply = self
            .call(router, source, bundle(std::slice::from_ref(&check)), 1)
            .await?
            .first();
        match guard::check_decision(&reply) {
            Some(Decision::Ask) => Ok(true),
            Some(Decision::Ran) => {
                let mut ask = vec![Bytes::from_static(b"RPUSH")];
                if script {
                    ask.push(Bytes::from(range.urgent_groups.to_owned()));
                    ask.extend(guard::script_groups(range, keys));
                } else {
                    ask.push(Bytes::from(range.urgent.to_owned()));
                    ask.extend(keys.iter().cloned());
                }
                // Best effort: a full source refuses it, and the client starts over anyway.
                let _ = self.call(router, source, bundle(&[ask]), 1).await;
                Ok(false)
            }
            Some(Decision::Busy | Decision::TryAgain | Decision::Check) => Ok(false),
            None => Err(Interrupt::Reply(reply)),
        }
    }

    async fn run_exec(
        &mut self,
        router: &Arc<Router>,
        place: Place,
        cmds: &[Vec<Bytes>],
        script: bool,
        watching: Option<(String, Dedicated)>,
    ) -> Result<Bytes, Interrupt> {
        let multi_exec = || {
            let mut all = vec![vec![Bytes::from_static(b"MULTI")]];
            all.extend(cmds.iter().cloned());
            all.push(vec![Bytes::from_static(b"EXEC")]);
            bundle(&all)
        };
        let replies = cmds.len() + 2;
        let fail = |e: super::super::backend::BackendError| Interrupt::Reply(e.reply());
        match (place, watching) {
            (Place::Migrating { m, guard_keys, all }, Some((name, mut conn))) => {
                let mig = router.migrations[usize::from(m)].clone();
                if name == router.backend(mig.source).name() {
                    let keys = guard_keys.clone();
                    return self
                        .watched(
                            router,
                            m,
                            &keys,
                            cmds,
                            Guarded::transaction(all, script),
                            Some(&mut conn),
                        )
                        .await;
                }
                if name != router.backend(mig.target).name() {
                    return Err(cross());
                }
                // The WATCH went to the target because its keys had moved; the transaction's
                // keys (for a script, every key of their slot groups) must all be there too,
                // else it would read absent keys the source still holds and write beside them.
                if !all {
                    return Err(Interrupt::Reply(error_reply(
                        "TRYAGAIN the keys of this transaction are split by a migration in progress, retry",
                    )));
                }
                if !self.all_on_target(router, m, &guard_keys, script).await? {
                    // As if a WATCHed key had changed: the client starts over, and its next
                    // WATCH goes where the keys are.
                    return Ok(Bytes::from_static(b"*-1\r\n"));
                }
                conn.call(&multi_exec(), replies)
                    .await
                    .map(|r| r.last())
                    .map_err(fail)
            }
            (Place::Migrating { m, guard_keys, all }, None) => {
                self.watched(
                    router,
                    m,
                    &guard_keys,
                    cmds,
                    Guarded::transaction(all, script),
                    None,
                )
                .await
            }
            (place, Some((name, mut conn))) => {
                if let Place::On(target) = place
                    && router.backend(target).name() != name
                {
                    return Err(Interrupt::Reply(error_reply(
                        "CROSSINSTANCE the transaction's keys and the WATCHed keys live on different instances",
                    )));
                }
                conn.call(&multi_exec(), replies)
                    .await
                    .map(|r| r.last())
                    .map_err(fail)
            }
            (place, None) => {
                let target = match place {
                    Place::On(t) => t,
                    _ => 0,
                };
                let rx = router
                    .send(target, self.lane(), multi_exec(), replies)
                    .map_err(Interrupt::from)?;
                let category = (router.resolver.categories().len() - 1) as CategoryId;
                router.categories[usize::from(category)].commands.inc();
                Ok(backend_reply(
                    rx.await.unwrap_or_else(|_| Err(lost())),
                    false,
                ))
            }
        }
    }
}
