//! Commands on keys of a migrating range (see `docs/protocol.md`, "Guarded commands"). They go
//! to the range's source inside the guard script, which runs them there or answers where they
//! belong; scripts and transactions, which cannot run inside another script, take the WATCH
//! path on a connection of their own: WATCH the keys, their tombstones and the importing
//! marker (for a script, its slot groups' states too), ask the guard's decision, then
//! `MULTI … EXEC` — if the Job touched anything meanwhile, EXEC fails and the decision is
//! asked again.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::super::backend::{BackendError, Dedicated, Replies};
use super::super::roster::blind_write;
use super::super::router::Router;
use super::super::target_first::{ReadFound, ask_proves};
use super::super::ttl;
use super::{Client, Interrupt, backend_reply, bundle, encode, lost, parse, stop};
use crate::redis::protocol::guard::{self, Decision, Seen};
use crate::redis::protocol::names;
use crate::redis::resp::Frame;
use crate::routing::keyspace::InstanceId;

/// How long a command waits for keys in transit (or split by a move) before the client is
/// told to retry.
const TRANSIT_WAIT: Duration = Duration::from_secs(2);

/// How a guarded command may run.
#[derive(Debug, Clone, Copy)]
pub(super) struct Guarded {
    /// It may run on the target when its keys are there (not when some of its keys are outside
    /// the migrating range, on the source).
    pub ask: bool,
    /// It is a script: it cannot run inside the guard.
    pub script: bool,
    /// It changes nothing (no `write` flag, not a script, nothing added by TTL rules): it may
    /// ask the target first (`target_first.rs`).
    pub read: bool,
}

impl Guarded {
    /// A transaction (a script among its commands with `script`); `ask` as [`Guarded::ask`].
    pub fn transaction(ask: bool, script: bool) -> Self {
        Self {
            ask,
            script,
            read: false,
        }
    }

    /// An ordinary command whose keys all migrate; `read` as [`Guarded::read`].
    pub fn command(read: bool) -> Self {
        Self {
            ask: true,
            script: false,
            read,
        }
    }
}

/// Waits between retries while keys are in transit.
struct Backoff {
    started: Instant,
    pause: Duration,
}

impl Backoff {
    fn new() -> Self {
        Self {
            started: Instant::now(),
            pause: Duration::from_millis(1),
        }
    }

    /// Sleeps before the next try, or `Err` with the client's reply when waited long enough.
    async fn wait(&mut self) -> Result<(), Interrupt> {
        if self.started.elapsed() > TRANSIT_WAIT {
            return Err(stop(
                "TRYAGAIN the keys of this command are being migrated, retry",
            ));
        }
        tokio::time::sleep(self.pause).await;
        // The Job looks for the keys sidecars ask it to move every 5 ms: the first tries
        // follow closely; a longer wait (a big value in transit, a walk for slot groups)
        // retries less often.
        let most = if self.started.elapsed() < Duration::from_millis(100) {
            Duration::from_millis(8)
        } else {
            Duration::from_millis(50)
        };
        self.pause = (self.pause * 2).min(most);
        Ok(())
    }
}

/// `EXISTS <keys…>`.
fn exists_command(keys: &[Bytes]) -> Vec<Bytes> {
    let mut exists = Vec::with_capacity(keys.len() + 1);
    exists.push(Bytes::from_static(b"EXISTS"));
    exists.extend(keys.iter().cloned());
    exists
}

/// Whether `reply` to [`exists_command`] says every one of `keys` is there (`EXISTS` counts a
/// key named twice twice).
fn all_exist(reply: &[u8], keys: &[Bytes]) -> bool {
    reply == format!(":{}\r\n", keys.len()).as_bytes()
}

/// Whether a read's reply says its keys were absent: a nil (GET, HGET, …), an array of nils
/// only (MGET), an empty array where a missing key has none, a zero count (EXISTS, STRLEN,
/// …), or an error (it says nothing). A guess, for [`ReadFound`] only.
fn found_nothing(reply: &[u8]) -> bool {
    if matches!(reply, b"$-1\r\n" | b"*-1\r\n" | b"*0\r\n" | b":0\r\n") || reply.starts_with(b"-") {
        return true;
    }
    let Some(rest) = reply.strip_prefix(b"*") else {
        return false;
    };
    let Some(header) = rest.iter().position(|&b| b == b'\n') else {
        return false;
    };
    let items = &rest[header + 1..];
    !items.is_empty() && items.len() % 5 == 0 && items.chunks(5).all(|c| c == b"$-1\r\n")
}

/// `cmds` (a command, then the sidecar's TTL commands for it) with the TTL commands as the
/// server runs them ([`ttl::for_server`]; `legacy`: as scripts).
fn ttl_for_server(cmds: Vec<Vec<Bytes>>, legacy: bool) -> Vec<Vec<Bytes>> {
    cmds.into_iter()
        .enumerate()
        .map(|(i, c)| {
            if i == 0 {
                c
            } else {
                ttl::for_server(c, legacy)
            }
        })
        .collect()
}

fn split_by_move() -> Interrupt {
    stop("TRYAGAIN the keys of this command are split by a migration in progress, retry")
}

/// The first element of an EXEC reply (a command run alone inside MULTI … EXEC).
fn first_of_exec(exec: &Bytes) -> Bytes {
    match parse(exec) {
        Ok(Frame::Array(mut items)) if !items.is_empty() => encode(&items.swap_remove(0)),
        Ok(_) => exec.clone(),
        Err(e) => e,
    }
}

/// The first `n` elements of an EXEC reply (a transaction followed by the sidecar's own
/// commands).
pub(super) fn exec_prefix(exec: &Bytes, n: usize) -> Bytes {
    match parse(exec) {
        Ok(Frame::Array(mut items)) if items.len() > n => {
            items.truncate(n);
            encode(&Frame::Array(items))
        }
        _ => exec.clone(),
    }
}

fn multi_exec(cmds: &[Vec<Bytes>]) -> Bytes {
    let mut all = Vec::with_capacity(cmds.len() + 2);
    all.push(vec![Bytes::from_static(b"MULTI")]);
    all.extend(cmds.iter().cloned());
    all.push(vec![Bytes::from_static(b"EXEC")]);
    bundle(&all)
}

impl Client {
    /// Runs `cmds` (a command, then the sidecar's TTL commands for it) on keys `keys` of
    /// migrating range `m`; the reply is the first command's.
    pub(super) async fn guarded(
        &mut self,
        router: &Arc<Router>,
        m: u16,
        keys: &[Bytes],
        cmds: Vec<Vec<Bytes>>,
        how: Guarded,
    ) -> Result<Bytes, Interrupt> {
        if how.script || guard::guarded_args(keys.len(), &cmds) > guard::MAX_GUARDED_ARGS {
            // The sidecar's TTL commands as scripts: MULTI runs them on any Redis version.
            let cmds = ttl_for_server(cmds, true);
            let exec = self.watched(router, m, keys, &cmds, how, None).await?;
            return Ok(first_of_exec(&exec));
        }
        let read = how.read && how.ask && cmds.len() == 1;
        let mig = &router.migrations[usize::from(m)];
        if how.ask
            && let Some(roster) = &mig.roster
        {
            if !how.read && blind_write(&cmds[0]) && roster.lacks_all(keys) {
                // Not on the source when the Job counted its keys, and no command puts them
                // there in this move; a write that replaces them wins over a copy a pod put
                // there straight since (`roster.rs`).
                self.shared.metrics.blind_writes_to_target.inc();
                return self.run_on_target(router, m, cmds).await;
            }
            roster
                .roster
                .fetch_if_due(router.backend(mig.source), self.lane(), router.version());
        }
        let hint = &mig.target_first;
        if read && router.known_moved.all(m, keys) {
            // Off the source for good (`target_first::KnownMoved`): the target's answer is the
            // answer, a missing key's included.
            match self.call(router, mig.target, bundle(&cmds), 1).await {
                Ok(replies) => {
                    self.shared.metrics.reads_known_moved.inc();
                    return Ok(replies.first());
                }
                Err(Interrupt::Stale) => return Err(Interrupt::Stale),
                // The target fenced, stopped or gone: the guard answers (after a failover
                // of the target, the source serves the range again), and reads take it
                // first until the target serves again.
                Err(Interrupt::Reply(_)) => hint.record(ReadFound::Unusable),
            }
        }
        let tried_target = read && hint.ask_target();
        if tried_target {
            let (found, reply) = self.read_on_target(router, m, keys, &cmds[0]).await?;
            hint.record(found);
            if found == ReadFound::OnTarget {
                router.known_moved.remember(m, keys);
            }
            if let Some(reply) = reply {
                return Ok(reply);
            }
        }
        // What the guard found, when the target was not asked first.
        let record = |found| {
            if read && !tried_target {
                hint.record(found);
            }
        };
        match self
            .guard_decide(router, m, keys, &cmds, how.read, how.ask)
            .await?
        {
            Some(reply) => {
                record(ReadFound::OnSource);
                Ok(reply)
            }
            None if how.ask => {
                if !how.read && self.ask_proves(router, m).await {
                    // The `ASK` marked the keys' slot groups moving: none of them comes back
                    // to the source (`target_first::KnownMoved`).
                    router.known_moved.remember(m, keys);
                }
                let reply = self.run_on_target(router, m, cmds).await?;
                // A read of keys on neither side would not have been served by the target
                // first either.
                if !found_nothing(&reply) {
                    record(ReadFound::Asked);
                }
                Ok(reply)
            }
            None => Err(split_by_move()),
        }
    }

    /// Runs `cmds` (a command, then the sidecar's TTL commands for it) on the target of
    /// migrating range `m`; the reply is the first command's.
    async fn run_on_target(
        &mut self,
        router: &Arc<Router>,
        m: u16,
        cmds: Vec<Vec<Bytes>>,
    ) -> Result<Bytes, Interrupt> {
        let target = router.migrations[usize::from(m)].target;
        let cmds = ttl_for_server(cmds, router.backend(target).legacy());
        let n = cmds.len();
        Ok(self.call(router, target, bundle(&cmds), n).await?.first())
    }

    /// Whether the guard's `ASK` to a write in migrating range `m` proves its keys off the
    /// source for good (`target_first::AskProves`). The source is asked once per table version,
    /// after the first such `ASK`: its answer counts for the `ASK`s after it, not for that one
    /// (a plan state seen after an `ASK` may have been set after it, by a newer Job attempt
    /// taking over from one that kept none). An answer that is not a value or nil (an error, a
    /// connection that failed or moved on to a newer table) is not kept; the command goes on
    /// to the target either way.
    async fn ask_proves(&mut self, router: &Arc<Router>, m: u16) -> bool {
        let mig = &router.migrations[usize::from(m)];
        if let Some(proves) = mig.ask_proves.get() {
            return proves;
        }
        let get = |key: String| vec![Bytes::from_static(b"GET"), Bytes::from(key)];
        let asked = self
            .call(
                router,
                mig.source,
                bundle(&[
                    get(mig.marker.clone()),
                    get(names::slot_groups_in(&mig.groups)),
                ]),
                2,
            )
            .await;
        if let Ok(Replies::Many(replies)) = asked
            && let [marker, plan_state] = replies.as_slice()
            && let Some(proves) = ask_proves(marker, plan_state)
        {
            mig.ask_proves.set(proves);
        }
        false
    }

    /// Asks the target of migrating range `m` first for read `cmd` on `keys`: its reply when
    /// the target has the range's imported marker and every key (they are then the range's
    /// live copies: `docs/protocol.md`, "Reading on the target first"). The checks and the
    /// read go in one round trip; a read that was not wanted is simply dropped. No marker, or
    /// an error (the target fenced, stopped, unreachable), is [`ReadFound::Unusable`]: the
    /// guard may find the keys on the source.
    async fn read_on_target(
        &mut self,
        router: &Arc<Router>,
        m: u16,
        keys: &[Bytes],
        cmd: &[Bytes],
    ) -> Result<(ReadFound, Option<Bytes>), Interrupt> {
        let mig = &router.migrations[usize::from(m)];
        let marker = vec![Bytes::from_static(b"EXISTS"), mig.imported.clone()];
        let exists = exists_command(keys);
        let sent = self
            .call(
                router,
                mig.target,
                bundle(&[marker, exists, cmd.to_vec()]),
                3,
            )
            .await;
        let mut replies = match sent {
            Ok(Replies::Many(replies)) if replies.len() == 3 => replies,
            Err(Interrupt::Stale) => return Err(Interrupt::Stale),
            Ok(_) | Err(Interrupt::Reply(_)) => return Ok((ReadFound::Unusable, None)),
        };
        if replies[0].as_ref() != b":1\r\n" {
            return Ok((ReadFound::Unusable, None));
        }
        if all_exist(&replies[1], keys) {
            Ok((ReadFound::OnTarget, Some(replies.swap_remove(2))))
        } else {
            Ok((ReadFound::NotOnTarget, None))
        }
    }

    /// Runs `cmds` through the guard of migrating range `m`, waiting while keys are in
    /// transit: `Some(reply)` when they ran on the source (or, for a read in a move into a
    /// range its target served already, the target answered it), `None` when the keys are on
    /// the target (nothing ran). `read`: they create no key (a command without the `write`
    /// flag, with at most the TTL rules' expiry changes of keys that exist), and a decision to
    /// send them to the target marks no slot group moving; `ask`: the command may run on the
    /// target (all its keys are in the range).
    pub(super) async fn guard_decide(
        &mut self,
        router: &Arc<Router>,
        m: u16,
        keys: &[Bytes],
        cmds: &[Vec<Bytes>],
        read: bool,
        ask: bool,
    ) -> Result<Option<Bytes>, Interrupt> {
        let mig = &router.migrations[usize::from(m)];
        let mut backoff = Backoff::new();
        let mut by_body = false;
        // A read the target may answer: all its keys migrate, and nothing is added to it.
        let on_target = (read && ask && cmds.len() == 1).then(|| cmds[0].as_slice());
        let mut seen = Seen::Unknown;
        loop {
            if read && seen == Seen::Unknown && mig.served.load(Ordering::Relaxed) {
                // A move into a range its target served already (the guard answered `CHECK`
                // once): the guard would answer it again unless no key is on the source.
                let (found, reply) = self.check_target(router, m, keys, on_target).await?;
                if reply.is_some() {
                    return Ok(reply);
                }
                seen = found;
            }
            let args = guard::guard_command(router.range_names(m), keys, cmds, by_body, read, seen);
            let reply = self
                .call(router, mig.source, bundle(&[args]), 1)
                .await?
                .first();
            if reply.starts_with(b"-NOSCRIPT") && !by_body {
                by_body = true;
                continue;
            }
            match guard::decision(&reply) {
                Decision::Ran => return Ok(Some(reply)),
                Decision::Ask => return Ok(None),
                // Only a read with nothing seen gets it: the target is asked at the top.
                Decision::Check => mig.served.store(true, Ordering::Relaxed),
                Decision::Busy | Decision::TryAgain => {
                    // What the target lacked may have moved there meanwhile: ask again.
                    seen = Seen::Unknown;
                    backoff.wait().await?;
                }
            }
        }
    }

    /// Asks the target of migrating range `m` (a move into a range it served already) whether
    /// it holds `keys`, with `read` after the check in the same round trip when there is one.
    /// Every key there: the read's reply (the target's copies are the newer ones) or, without
    /// a read, [`Seen::Held`]. Otherwise what the guard is to know: [`Seen::Lacked`] when none
    /// is there, else [`Seen::Held`]. A key the source holds does not reach the target while
    /// the source holds it, so what the target lacks now it still lacks when the guard runs,
    /// unless the source lost the key meanwhile (`docs/protocol.md`, "Draining into a served
    /// range").
    async fn check_target(
        &mut self,
        router: &Arc<Router>,
        m: u16,
        keys: &[Bytes],
        read: Option<&[Bytes]>,
    ) -> Result<(Seen, Option<Bytes>), Interrupt> {
        let mig = &router.migrations[usize::from(m)];
        let mut sent = vec![exists_command(keys)];
        sent.extend(read.map(<[Bytes]>::to_vec));
        let n = sent.len();
        let mut replies = match self.call(router, mig.target, bundle(&sent), n).await? {
            Replies::Many(replies) if replies.len() == n => replies,
            Replies::One(reply) if n == 1 => vec![reply],
            _ => {
                return Err(Interrupt::Reply(super::error_reply(
                    "ERR unreadable reply from the instance",
                )));
            }
        };
        self.shared.metrics.reads_checked_on_target.inc();
        if replies[0].as_ref() == b":0\r\n" {
            Ok((Seen::Lacked, None))
        } else if n == 2 && all_exist(&replies[0], keys) {
            Ok((Seen::Held, replies.pop()))
        } else {
            Ok((Seen::Held, None))
        }
    }

    /// The client's connection of its own to `instance`, named for `router`'s table.
    pub(super) async fn dedicated_for(
        &mut self,
        router: &Router,
        instance: InstanceId,
    ) -> Result<&mut Dedicated, Interrupt> {
        let backend = router.backend(instance).clone();
        backend.admits(router.version()).map_err(Interrupt::from)?;
        let name = backend.name().to_owned();
        let reusable = match self.dedicated.get_mut(&name) {
            Some(conn) => match conn.rename(router.version()).await {
                Ok(true) => true,
                // Named for a newer table: this request must be routed by it.
                Ok(false) => return Err(Interrupt::Stale),
                Err(_) => false,
            },
            None => false,
        };
        if !reusable {
            self.dedicated.remove(&name);
            let conn = backend
                .dedicated(router.version())
                .await
                .map_err(|e| Interrupt::Reply(e.reply()))?;
            self.dedicated.insert(name.clone(), conn);
        }
        self.dedicated
            .get_mut(&name)
            .ok_or_else(|| stop("ERR no connection"))
    }

    /// The WATCH path: runs `cmds` atomically (`MULTI … EXEC`) where the keys of migrating
    /// range `m` live, and returns EXEC's reply; on the target only with `how.ask`. With
    /// `how.script` (a script, or a transaction that holds one: it may touch keys it does not
    /// declare), where all the keys of their slot groups live (`docs/protocol.md`, "Scripts").
    /// With `watching`, the client's own WATCHed
    /// connection to the source is used (taken out of the client by the caller): its WATCH
    /// stays in force, and a move of the keys to the target aborts the transaction, as a
    /// change of a WATCHed key would.
    pub(super) async fn watched(
        &mut self,
        router: &Arc<Router>,
        m: u16,
        keys: &[Bytes],
        cmds: &[Vec<Bytes>],
        how: Guarded,
        mut watching: Option<&mut Dedicated>,
    ) -> Result<Bytes, Interrupt> {
        let (ask, script) = (how.ask, how.script);
        enum Next {
            Done(Bytes),
            Target,
            Retry,
        }
        let mig = router.migrations[usize::from(m)].clone();
        let range = router.range_names(m);
        let mut watch = vec![
            Bytes::from_static(b"WATCH"),
            Bytes::from(mig.marker.clone()),
        ];
        watch.extend(keys.iter().cloned());
        watch.extend(keys.iter().map(|k| names::tomb(k)));
        if script {
            watch.extend(guard::script_watch_keys(range, keys));
        }
        let check = guard::decision_command(range, keys, script);
        let probe = bundle(&[watch, check]);
        let unwatch = bundle(&[vec![Bytes::from_static(b"UNWATCH")]]);
        let client_watch = watching.is_some();
        let fail = |e: BackendError| Interrupt::Reply(e.reply());
        let mut backoff = Backoff::new();
        // Counted once per call.
        let waits = self.shared.metrics.scripts_waited_for_groups.clone();
        let mut waited = false;
        loop {
            let next = {
                let conn: &mut Dedicated = match watching.as_deref_mut() {
                    Some(c) => c,
                    None => self.dedicated_for(router, mig.source).await?,
                };
                let decided = conn.call(&probe, 2).await.map_err(fail)?.last();
                match guard::check_decision(&decided) {
                    Some(Decision::Ran) => {
                        let exec = conn
                            .call(&multi_exec(cmds), cmds.len() + 2)
                            .await
                            .map_err(fail)?
                            .last();
                        if exec.starts_with(b"*-1") && !client_watch {
                            // The Job touched a key meanwhile: decide again.
                            Next::Retry
                        } else {
                            Next::Done(exec)
                        }
                    }
                    Some(Decision::Ask) => {
                        conn.call(&unwatch, 1).await.map_err(fail)?;
                        if client_watch {
                            // The WATCHed keys moved: as if they had changed.
                            Next::Done(Bytes::from_static(b"*-1\r\n"))
                        } else if ask {
                            Next::Target
                        } else {
                            return Err(split_by_move());
                        }
                    }
                    // (A check never answers `CHECK`: only a read's guard does.)
                    Some(Decision::Busy | Decision::TryAgain | Decision::Check) => {
                        if decided.as_ref() == guard::WAIT_FOR_GROUPS && !waited {
                            waited = true;
                            waits.inc();
                        }
                        if !client_watch {
                            conn.call(&unwatch, 1).await.map_err(fail)?;
                        }
                        Next::Retry
                    }
                    None => Next::Done(decided),
                }
            };
            match next {
                Next::Done(b) => return Ok(b),
                Next::Target => {
                    let n = cmds.len() + 2;
                    return Ok(self
                        .call(router, mig.target, multi_exec(cmds), n)
                        .await?
                        .last());
                }
                Next::Retry => backoff.wait().await?,
            }
        }
    }

    /// Runs one command on one key wherever the key lives now (guarded when it migrates), and
    /// returns its reply: for the sidecar's own reads, e.g. resolving `XREAD … $`.
    pub(super) async fn run_on_key(
        &mut self,
        router: &Arc<Router>,
        key: &Bytes,
        cmd: Vec<Bytes>,
    ) -> Result<Bytes, Interrupt> {
        let route = router.resolver.resolve(key);
        match route.migration {
            Some(m) => {
                self.guarded(
                    router,
                    m,
                    std::slice::from_ref(key),
                    vec![cmd],
                    Guarded::command(false),
                )
                .await
            }
            None => {
                let rx = router
                    .send(route.target, self.lane(), bundle(&[cmd]), 1)
                    .map_err(Interrupt::from)?;
                Ok(backend_reply(
                    rx.await.unwrap_or_else(|_| Err(lost())),
                    true,
                ))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::found_nothing;

    #[test]
    fn replies_that_found_nothing() {
        for nothing in [
            &b"$-1\r\n"[..],
            b"*-1\r\n",
            b"*0\r\n",
            b":0\r\n",
            b"*2\r\n$-1\r\n$-1\r\n",
            b"-WRONGTYPE Operation against a key holding the wrong kind of value\r\n",
        ] {
            assert!(
                found_nothing(nothing),
                "{}",
                String::from_utf8_lossy(nothing)
            );
        }
        for something in [
            &b"$1\r\nx\r\n"[..],
            b":3\r\n",
            b"*2\r\n$-1\r\n$1\r\nx\r\n",
            b"*1\r\n$3\r\n$-1\r\n",
            b"+OK\r\n",
        ] {
            assert!(
                !found_nothing(something),
                "{}",
                String::from_utf8_lossy(something)
            );
        }
    }
}
