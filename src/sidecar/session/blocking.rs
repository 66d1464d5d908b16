//! Blocking commands (BLPOP, BLMOVE, BZPOPMIN, XREAD … BLOCK, …). They wait on a connection of
//! their own, at most one second at a time: before each second the keys are routed afresh, so
//! a client waiting on a list that moves (a migration, a failover) waits where the list is now.
//! A client that hangs up while it waits, or half-closes its stream, ends the wait (the serve
//! loop drops this future and its connection), so nothing is popped for a socket nobody reads.
//!
//! In a migrating range, a wait on the source is a poll through the guard (a blocking command
//! inside a script does not block): popping into a destination key must not happen outside the
//! guard. On the target, or outside any migration, it is a real blocking call.
//!
//! On a replicated category a pop must be versioned with the state it leaves, so the wait is a
//! poll too: a cheap `EXISTS` of the source keys every [`POLL`], and the non-blocking form
//! inside the write script (`replicated.rs`) once one of them holds something. A wait there
//! wakes up to [`POLL`] later than a real blocking call would.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::super::command::CommandSpec;
use super::super::router::Router;
use super::replicated::LOST_WRITE_SCRIPT;
use super::{Client, Dispatched, Interrupt, Pending, bundle, stop};
use crate::redis::resp::{Frame, Request, parse_i64};
use crate::routing::keyspace::{InstanceId, Route};

/// The longest one blocking call lasts before the keys are routed again.
const SLICE: Duration = Duration::from_secs(1);

/// How often a wait in a migrating range asks the guard again.
const POLL: Duration = Duration::from_millis(20);

/// How often a blocking `XREADGROUP` on a replicated category polls: with no cheap probe of
/// "new entries for this group", each poll runs inside the write script, which hands the
/// stream's whole state to the replica.
const GROUP_POLL: Duration = Duration::from_millis(100);

/// Where a blocking command carries its timeout, and in which unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Timeout {
    /// Seconds (a decimal), at this argument.
    Seconds(usize),
    /// Milliseconds (an integer), at this argument (XREAD … BLOCK ms).
    Millis(usize),
}

/// Where `args` of blocking command `name` hold the timeout.
pub(super) fn timeout_at(name: &str, args: &[Bytes]) -> Option<Timeout> {
    match name {
        "blpop" | "brpop" | "bzpopmin" | "bzpopmax" | "brpoplpush" | "blmove" => {
            Some(Timeout::Seconds(args.len().checked_sub(1)?))
        }
        "blmpop" | "bzmpop" => Some(Timeout::Seconds(1)),
        "xread" | "xreadgroup" => {
            let start = if name == "xreadgroup" { 4 } else { 1 };
            let mut i = start;
            while i < args.len() {
                let a = &args[i];
                if a.eq_ignore_ascii_case(b"BLOCK") {
                    return Some(Timeout::Millis(i + 1)).filter(|_| i + 1 < args.len());
                }
                if a.eq_ignore_ascii_case(b"STREAMS") {
                    return None;
                }
                i += if a.eq_ignore_ascii_case(b"COUNT") {
                    2
                } else {
                    1
                };
            }
            None
        }
        _ => None,
    }
}

/// The timeout as a duration (`None`: wait forever), or an error text.
fn read_timeout(t: Timeout, args: &[Bytes]) -> Result<Option<Duration>, &'static str> {
    match t {
        Timeout::Seconds(i) => {
            let s: f64 = std::str::from_utf8(&args[i])
                .ok()
                .and_then(|s| s.parse().ok())
                .filter(|v: &f64| v.is_finite())
                .ok_or("ERR timeout is not a float or out of range")?;
            if s < 0.0 {
                return Err("ERR timeout is negative");
            }
            Ok((s > 0.0).then(|| Duration::from_secs_f64(s)))
        }
        Timeout::Millis(i) => {
            let ms = parse_i64(&args[i]).ok_or("ERR timeout is not an integer or out of range")?;
            if ms < 0 {
                return Err("ERR timeout is negative");
            }
            Ok((ms > 0).then(|| Duration::from_millis(ms as u64)))
        }
    }
}

/// `args` with the timeout set to `d` (never 0: that would mean forever).
fn with_timeout(t: Timeout, args: &[Bytes], d: Duration) -> Vec<Bytes> {
    let mut out = args.to_vec();
    match t {
        Timeout::Seconds(i) => {
            let secs = d.as_secs_f64().max(0.001);
            out[i] = Bytes::from(format!("{secs:.3}"));
        }
        Timeout::Millis(i) => {
            out[i] = Bytes::from(d.as_millis().max(1).to_string());
        }
    }
    out
}

/// How the reply of a blocking command's non-blocking form becomes the blocking command's.
#[derive(Debug, Clone, PartialEq, Eq)]
enum PollReply {
    /// The same shape (RPOPLPUSH, LMOVE, LMPOP, ZMPOP, XREAD without BLOCK).
    Same,
    /// LPOP/RPOP of this key: an element or nil, as BLPOP's `[key, element]` or nil array.
    ListPop(Bytes),
    /// ZPOPMIN/ZPOPMAX of this key: `[member, score]` or empty, as BZPOPMIN's
    /// `[key, member, score]` or nil array.
    ZSetPop(Bytes),
    /// LMPOP … COUNT 1 for a multi-key BLPOP/BRPOP: `[key, [element]]` as `[key, element]`.
    FirstOfLmpop,
    /// ZMPOP … COUNT 1 for a multi-key BZPOPMIN/BZPOPMAX: `[key, [[member, score]]]` as
    /// `[key, member, score]`.
    FirstOfZmpop,
}

/// The non-blocking form of blocking command `cmd` (named `name`, its timeout at `at`), for
/// one poll of a migrating range's source through the guard: Redis refuses blocking commands
/// inside scripts (since 7.0), and the guard is a script.
fn non_blocking(name: &str, cmd: &[Bytes], at: Timeout) -> (Vec<Bytes>, PollReply) {
    let word = |w: &'static str| Bytes::from_static(w.as_bytes());
    // The keys of the BLPOP family: everything between the name and the timeout.
    let keys = || cmd[1..cmd.len().saturating_sub(1).max(1)].to_vec();
    match name {
        "blpop" | "brpop" => {
            let keys = keys();
            if let [key] = keys.as_slice() {
                let pop = if name == "blpop" { "LPOP" } else { "RPOP" };
                return (
                    vec![word(pop), key.clone()],
                    PollReply::ListPop(key.clone()),
                );
            }
            let mut out = vec![word("LMPOP"), Bytes::from(keys.len().to_string())];
            out.extend(keys);
            out.push(word(if name == "blpop" { "LEFT" } else { "RIGHT" }));
            (out, PollReply::FirstOfLmpop)
        }
        "bzpopmin" | "bzpopmax" => {
            let keys = keys();
            if let [key] = keys.as_slice() {
                let pop = if name == "bzpopmin" {
                    "ZPOPMIN"
                } else {
                    "ZPOPMAX"
                };
                return (
                    vec![word(pop), key.clone()],
                    PollReply::ZSetPop(key.clone()),
                );
            }
            let mut out = vec![word("ZMPOP"), Bytes::from(keys.len().to_string())];
            out.extend(keys);
            out.push(word(if name == "bzpopmin" { "MIN" } else { "MAX" }));
            (out, PollReply::FirstOfZmpop)
        }
        "brpoplpush" => {
            let mut out = vec![word("RPOPLPUSH")];
            out.extend(cmd[1..cmd.len().saturating_sub(1).max(1)].iter().cloned());
            (out, PollReply::Same)
        }
        "blmove" => {
            let mut out = vec![word("LMOVE")];
            out.extend(cmd[1..cmd.len().saturating_sub(1).max(1)].iter().cloned());
            (out, PollReply::Same)
        }
        "blmpop" | "bzmpop" => {
            let mut out = vec![word(if name == "blmpop" { "LMPOP" } else { "ZMPOP" })];
            out.extend(cmd.iter().skip(2).cloned());
            (out, PollReply::Same)
        }
        _ => {
            // XREAD / XREADGROUP: without `BLOCK ms`.
            let mut out = cmd.to_vec();
            if let Timeout::Millis(i) = at
                && i >= 1
                && i < out.len()
            {
                out.drain(i - 1..=i);
            }
            (out, PollReply::Same)
        }
    }
}

/// The reply of a poll (`reply`, from the non-blocking form) as the blocking command's.
fn as_blocking_reply(shape: &PollReply, reply: Bytes) -> Bytes {
    if matches!(shape, PollReply::Same) {
        return reply;
    }
    let Ok(frame) = super::parse(&reply) else {
        return reply;
    };
    let converted = match (shape, frame) {
        (_, Frame::Error(_)) => return reply,
        (PollReply::ListPop(key), Frame::Bulk(element)) => {
            Frame::array([Frame::Bulk(key.clone()), Frame::Bulk(element)])
        }
        (PollReply::ZSetPop(key), Frame::Array(pair)) if pair.len() == 2 => {
            let mut items = vec![Frame::Bulk(key.clone())];
            items.extend(pair);
            Frame::Array(items)
        }
        (PollReply::FirstOfLmpop, Frame::Array(parts)) => match parts.as_slice() {
            [key, Frame::Array(elements)] if !elements.is_empty() => {
                Frame::array([key.clone(), elements[0].clone()])
            }
            _ => Frame::NullArray,
        },
        (PollReply::FirstOfZmpop, Frame::Array(parts)) => match parts.as_slice() {
            [key, Frame::Array(pairs)] => match pairs.first() {
                Some(Frame::Array(pair)) if pair.len() == 2 => {
                    Frame::array([key.clone(), pair[0].clone(), pair[1].clone()])
                }
                _ => Frame::NullArray,
            },
            _ => Frame::NullArray,
        },
        // Nothing popped (nil, an empty array).
        _ => Frame::NullArray,
    };
    converted.to_bytes()
}

/// The one instance a replicated wait on keys routed as `routes` polls with `poll`, or why
/// there is none: keys on several instances, a move under way (replicated ranges move without
/// their replica), a multi-key pop on a server before Redis 7 (no `LMPOP` / `ZMPOP`).
fn where_to_poll(
    router: &Router,
    routes: &[Route],
    poll: &[Bytes],
) -> Result<InstanceId, &'static str> {
    let target = routes
        .first()
        .ok_or("ERR blocking command without keys")?
        .target;
    if routes.iter().any(|r| r.target != target) {
        return Err("CROSSINSTANCE the keys of this blocking command live on different instances");
    }
    if routes.iter().any(|r| r.migration.is_some()) {
        return Err(
            "TRYAGAIN redis-fleet: this key's range is being migrated, and replicated ranges \
             move without their replica (docs/replication.md); retry",
        );
    }
    let multi_key_pop = poll
        .first()
        .is_some_and(|c| c.eq_ignore_ascii_case(b"LMPOP") || c.eq_ignore_ascii_case(b"ZMPOP"));
    if multi_key_pop && router.backend(target).legacy() {
        return Err(
            "ERR redis-fleet: a blocking pop on several keys of a replicated category needs \
             Redis 7 or later on the instance (LMPOP / ZMPOP); wait on one key",
        );
    }
    Ok(target)
}

/// Whether a blocking write on keys routed as `routes` must wait the replicated way: a key's
/// category replicates, and the keys are not in a move without a replica named (those take
/// the guarded path, as any category's; the replica is seeded once the move landed).
fn waits_replicated(router: &Router, routes: &[Route]) -> bool {
    let resolver = &router.resolver;
    if !resolver.replicates() || !routes.iter().any(|r| resolver.replication(r).is_some()) {
        return false;
    }
    let moving = routes.iter().any(|r| r.migration.is_some());
    !moving
        || routes
            .iter()
            .any(|r| matches!(resolver.replication(r), Some((_, Some(_)))))
}

/// A nil reply: the wait ended without data.
fn is_nil(reply: &[u8]) -> bool {
    reply.starts_with(b"*-1") || reply.starts_with(b"$-1") || reply.starts_with(b"_")
}

impl Client {
    pub(super) async fn blocking(
        &mut self,
        router: Arc<super::super::router::Router>,
        request: &Request,
        keys: &[usize],
        spec: &CommandSpec,
    ) -> Dispatched {
        let Some(at) = timeout_at(spec.name, &request.args) else {
            // XREAD without BLOCK: an ordinary command on its keys.
            return self.same_instance(router, request, keys, spec).await;
        };
        let timeout = match read_timeout(at, &request.args) {
            Ok(t) => t,
            Err(e) => return Ok(Pending::Ready(super::error_reply(e))),
        };
        let mut args = request.args.clone();
        if matches!(spec.name, "xread" | "xreadgroup") {
            args = self.resolve_last_ids(&router, args, keys).await?;
        }
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut first = true;
        loop {
            // A client whose stream ended before (or between) the slices of its wait is gone
            // for Redis too: nothing is popped for it. One that hangs up while it waits ends
            // the wait (`serve`).
            if self.liveness.hung_up() {
                return Ok(Pending::Close(Bytes::new()));
            }
            // Routed afresh every slice, by the newest table.
            let router = if first {
                router.clone()
            } else {
                match self.shared.router.load_full() {
                    Some(r) => r,
                    None => router.clone(),
                }
            };
            first = false;
            let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            let slice = left.map_or(SLICE, |l| l.min(SLICE));
            let last = left.is_some_and(|l| l <= SLICE);
            let routes: Vec<Route> = keys
                .iter()
                .map(|i| router.resolver.resolve(&request.args[*i]))
                .collect();
            if spec.write && waits_replicated(&router, &routes) {
                // The newest table replicates these keys (a move landed and named a replica):
                // what is popped from now on must be versioned.
                let args = match left {
                    Some(l) => with_timeout(at, &args, l.max(Duration::from_millis(1))),
                    None => args.clone(),
                };
                let rest = Request { args, raw: None };
                return Box::pin(self.blocking_replicated(router, &rest, keys, spec)).await;
            }
            for r in &routes {
                router.categories[usize::from(r.category)].commands.inc();
            }
            let Some(r0) = routes.first() else {
                return Ok(Pending::Ready(super::error_reply(
                    "ERR blocking command without keys",
                )));
            };
            let cmd = with_timeout(at, &args, slice);
            let reply = if let Some(m) = r0.migration {
                if routes.iter().any(|r| r.migration != Some(m)) {
                    return Ok(Pending::Ready(super::error_reply(
                        "CROSSINSTANCE the keys of this blocking command live on different instances",
                    )));
                }
                self.wait_guarded(&router, m, keys, request, &cmd, slice)
                    .await?
            } else {
                if routes
                    .iter()
                    .any(|r| r.target != r0.target || r.migration.is_some())
                {
                    return Ok(Pending::Ready(super::error_reply(
                        "CROSSINSTANCE the keys of this blocking command live on different instances",
                    )));
                }
                // The real blocking call ends with the client (`serve`).
                let liveness = self.liveness.clone();
                let conn = self.dedicated_for(&router, r0.target).await?;
                let _blocked = liveness.block();
                match conn.call(&bundle(&[cmd]), 1).await {
                    Ok(r) => r.first(),
                    Err(e) => {
                        let name = conn.instance().to_owned();
                        self.dedicated.remove(&name);
                        return Ok(Pending::Ready(e.reply()));
                    }
                }
            };
            if !is_nil(&reply) {
                return Ok(Pending::Ready(reply));
            }
            if self.liveness.hung_up() {
                return Ok(Pending::Close(Bytes::new()));
            }
            if last {
                return Ok(Pending::Ready(reply));
            }
        }
    }

    /// A blocking command on keys of a replicated category (see the module's docs): polled,
    /// each poll that may find something run inside the write script. Falls back to the
    /// ordinary wait (for the time left) once the newest table no longer replicates the keys,
    /// or moves them without a replica named (the guarded path).
    pub(super) async fn blocking_replicated(
        &mut self,
        router: Arc<Router>,
        request: &Request,
        keys: &[usize],
        spec: &CommandSpec,
    ) -> Dispatched {
        let Some(at) = timeout_at(spec.name, &request.args) else {
            // XREADGROUP without BLOCK: one write, as any other.
            let routes: Vec<Route> = keys
                .iter()
                .map(|i| router.resolver.resolve(&request.args[*i]))
                .collect();
            let target = where_to_poll(&router, &routes, &request.args).map_err(stop)?;
            return self
                .poll_replicated(&router, request, keys, (target, routes), &request.args)
                .await
                .map(|r| Pending::Ready(r.unwrap_or_else(|| Frame::NullArray.to_bytes())));
        };
        let timeout = match read_timeout(at, &request.args) {
            Ok(t) => t,
            Err(e) => return Ok(Pending::Ready(super::error_reply(e))),
        };
        let deadline = timeout.map(|t| Instant::now() + t);
        let (poll, shape) = non_blocking(spec.name, &request.args, at);
        // The keys that must hold something for a pop to find it: the sources.
        let sources = match spec.name {
            "blmove" | "brpoplpush" => &keys[..1],
            _ => keys,
        };
        let probe = spec.name != "xreadgroup";
        let mut router = router;
        loop {
            if self.liveness.hung_up() {
                return Ok(Pending::Close(Bytes::new()));
            }
            let routes: Vec<Route> = keys
                .iter()
                .map(|i| router.resolver.resolve(&request.args[*i]))
                .collect();
            if !waits_replicated(&router, &routes) {
                let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
                if left.is_some_and(|l| l.is_zero()) {
                    return Ok(Pending::Ready(Frame::NullArray.to_bytes()));
                }
                let args = match left {
                    Some(l) => with_timeout(at, &request.args, l),
                    None => request.args.clone(),
                };
                let rest = Request { args, raw: None };
                return self.blocking(router, &rest, keys, spec).await;
            }
            // Before each probe: the probe asks one instance, which must hold every key.
            let target = match where_to_poll(&router, &routes, &poll) {
                Ok(t) => t,
                Err(text) => return Ok(Pending::Ready(super::error_reply(text))),
            };
            let found = if probe {
                let mut exists = vec![Bytes::from_static(b"EXISTS")];
                exists.extend(sources.iter().map(|i| request.args[*i].clone()));
                let reply = self.call(&router, target, bundle(&[exists]), 1).await;
                match reply {
                    Ok(r) => !r.first().starts_with(b":0"),
                    Err(Interrupt::Stale) => {
                        router = self.shared.router.load_full().unwrap_or(router);
                        continue;
                    }
                    Err(e) => return Err(e),
                }
            } else {
                true
            };
            // A client gone before the pop is popped nothing for (what it would take is lost
            // with its socket).
            if self.liveness.hung_up() {
                return Ok(Pending::Close(Bytes::new()));
            }
            if found {
                match self
                    .poll_replicated(&router, request, keys, (target, routes), &poll)
                    .await
                {
                    Ok(Some(reply)) => return Ok(Pending::Ready(as_blocking_reply(&shape, reply))),
                    Ok(None) => {}
                    Err(Interrupt::Stale) => {
                        router = self.shared.router.load_full().unwrap_or(router);
                        continue;
                    }
                    Err(e) => return Err(e),
                }
            }
            let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            if left.is_some_and(|l| l.is_zero()) || self.liveness.hung_up() {
                return Ok(Pending::Ready(Frame::NullArray.to_bytes()));
            }
            {
                let _blocked = self.liveness.block();
                let every = if probe { POLL } else { GROUP_POLL };
                tokio::time::sleep(left.map_or(every, |l| l.min(every))).await;
            }
            router = self.shared.router.load_full().unwrap_or(router);
        }
    }

    /// One poll (`poll`, the non-blocking form) of a blocking command on replicated keys, routed
    /// as `routes` to `target` ([`where_to_poll`]), inside the write script: its reply, `None`
    /// when it found nothing.
    async fn poll_replicated(
        &mut self,
        router: &Arc<Router>,
        request: &Request,
        keys: &[usize],
        (target, routes): (InstanceId, Vec<Route>),
        poll: &[Bytes],
    ) -> Result<Option<Bytes>, Interrupt> {
        let key_args: Vec<Bytes> = keys.iter().map(|i| request.args[*i].clone()).collect();
        let category = routes[0].category;
        let sent = self
            .send_write(router, target, key_args, routes, vec![poll.to_vec()])?
            .handing_over_what_it_took();
        let reply = sent.spawn().await;
        if reply.starts_with(LOST_WRITE_SCRIPT) {
            // Nothing ran (the instance had lost the write script, now loaded again): the
            // next poll tries again.
            return Ok(None);
        }
        router.categories[usize::from(category)].commands.inc();
        Ok((!is_nil(&reply)).then_some(reply))
    }

    /// One slice of waiting on keys of migrating range `m`: the guard is asked (a blocking
    /// command inside it does not block) until it returns data, or the keys turn out to be on
    /// the target (then a real blocking call there), or the slice is over (a nil reply).
    async fn wait_guarded(
        &mut self,
        router: &Arc<super::super::router::Router>,
        m: u16,
        keys: &[usize],
        request: &Request,
        cmd: &[Bytes],
        slice: Duration,
    ) -> Result<Bytes, Interrupt> {
        let ends = Instant::now() + slice;
        let key_args: Vec<Bytes> = keys.iter().map(|i| request.args[*i].clone()).collect();
        let mig = router.migrations[usize::from(m)].clone();
        let name = String::from_utf8_lossy(&cmd[0]).to_ascii_lowercase();
        let at = timeout_at(&name, cmd);
        let (poll, shape) = match at {
            Some(at) => non_blocking(&name, cmd, at),
            None => (cmd.to_vec(), PollReply::Same),
        };
        loop {
            match self
                .guard_decide(
                    router,
                    m,
                    &key_args,
                    std::slice::from_ref(&poll),
                    false,
                    true,
                )
                .await?
                .map(|reply| as_blocking_reply(&shape, reply))
            {
                Some(reply) if !is_nil(&reply) => return Ok(reply),
                Some(nil) => {
                    // A poll runs to its end (what it popped goes to the client, which may
                    // still read after a half-close); only the pause between polls ends
                    // with the client.
                    if Instant::now() + POLL >= ends || self.liveness.hung_up() {
                        return Ok(nil);
                    }
                    let _blocked = self.liveness.block();
                    tokio::time::sleep(POLL).await;
                }
                None => {
                    // Every key is on the target now: a real wait there.
                    let left = ends
                        .saturating_duration_since(Instant::now())
                        .max(Duration::from_millis(1));
                    let on_target = match at {
                        Some(at) => with_timeout(at, cmd, left),
                        None => cmd.to_vec(),
                    };
                    let liveness = self.liveness.clone();
                    let conn = self.dedicated_for(router, mig.target).await?;
                    let _blocked = liveness.block();
                    return match conn.call(&bundle(&[on_target]), 1).await {
                        Ok(r) => Ok(r.first()),
                        Err(e) => {
                            let name = conn.instance().to_owned();
                            self.dedicated.remove(&name);
                            Err(Interrupt::Reply(e.reply()))
                        }
                    };
                }
            }
        }
    }

    /// `XREAD … STREAMS k… $…`: each `$` (only entries added from now on) becomes the stream's
    /// last id now, so a wait cut into slices misses nothing added between them.
    async fn resolve_last_ids(
        &mut self,
        router: &Arc<super::super::router::Router>,
        mut args: Vec<Bytes>,
        keys: &[usize],
    ) -> Result<Vec<Bytes>, Interrupt> {
        let n = keys.len();
        for k in keys {
            let id_at = k + n;
            if args.get(id_at).is_some_and(|a| a.as_ref() == b"$") {
                let key = args[*k].clone();
                let cmd = vec![
                    Bytes::from_static(b"XREVRANGE"),
                    key.clone(),
                    Bytes::from_static(b"+"),
                    Bytes::from_static(b"-"),
                    Bytes::from_static(b"COUNT"),
                    Bytes::from_static(b"1"),
                ];
                let reply = self.run_on_key(router, &key, cmd).await?;
                let last = match super::parse(&reply) {
                    Ok(crate::redis::resp::Frame::Array(items)) => items
                        .first()
                        .and_then(|e| match e {
                            crate::redis::resp::Frame::Array(parts) => {
                                parts.first().and_then(|p| p.as_bulk().cloned())
                            }
                            _ => None,
                        })
                        .unwrap_or_else(|| Bytes::from_static(b"0-0")),
                    Ok(crate::redis::resp::Frame::Error(e)) => {
                        return Err(stop(&String::from_utf8_lossy(&e)));
                    }
                    _ => Bytes::from_static(b"0-0"),
                };
                args[id_at] = last;
            }
        }
        Ok(args)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<Bytes> {
        s.split(' ').map(|a| Bytes::from(a.to_owned())).collect()
    }

    fn poll_of(s: &str) -> (String, PollReply) {
        let cmd = args(s);
        let name = String::from_utf8_lossy(&cmd[0]).to_ascii_lowercase();
        let at = timeout_at(&name, &cmd).unwrap();
        let (poll, shape) = non_blocking(&name, &cmd, at);
        let text: Vec<String> = poll
            .iter()
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        (text.join(" "), shape)
    }

    #[test]
    fn each_blocking_command_polls_with_its_non_blocking_form() {
        let key = |k: &'static str| Bytes::from_static(k.as_bytes());
        assert_eq!(
            poll_of("BLPOP q 0"),
            ("LPOP q".into(), PollReply::ListPop(key("q")))
        );
        assert_eq!(
            poll_of("BRPOP a b 1.5"),
            ("LMPOP 2 a b RIGHT".into(), PollReply::FirstOfLmpop)
        );
        assert_eq!(
            poll_of("BZPOPMAX z 0"),
            ("ZPOPMAX z".into(), PollReply::ZSetPop(key("z")))
        );
        assert_eq!(
            poll_of("BZPOPMIN a b 0"),
            ("ZMPOP 2 a b MIN".into(), PollReply::FirstOfZmpop)
        );
        assert_eq!(
            poll_of("BRPOPLPUSH s d 0"),
            ("RPOPLPUSH s d".into(), PollReply::Same)
        );
        assert_eq!(
            poll_of("BLMOVE s d LEFT RIGHT 0"),
            ("LMOVE s d LEFT RIGHT".into(), PollReply::Same)
        );
        assert_eq!(
            poll_of("BLMPOP 0 2 a b LEFT COUNT 3"),
            ("LMPOP 2 a b LEFT COUNT 3".into(), PollReply::Same)
        );
        assert_eq!(
            poll_of("BZMPOP 1 1 z MAX"),
            ("ZMPOP 1 z MAX".into(), PollReply::Same)
        );
        assert_eq!(
            poll_of("XREAD COUNT 2 BLOCK 100 STREAMS s 0-0"),
            ("XREAD COUNT 2 STREAMS s 0-0".into(), PollReply::Same)
        );
        assert_eq!(
            poll_of("XREADGROUP GROUP g c BLOCK 0 STREAMS s >"),
            ("XREADGROUP GROUP g c STREAMS s >".into(), PollReply::Same)
        );
    }

    #[test]
    fn poll_replies_read_as_the_blocking_commands_replies() {
        let key = Bytes::from_static(b"q");
        let reply = |s: &'static str| Bytes::from_static(s.as_bytes());
        let list = PollReply::ListPop(key.clone());
        assert_eq!(
            as_blocking_reply(&list, reply("$1\r\nx\r\n")),
            reply("*2\r\n$1\r\nq\r\n$1\r\nx\r\n")
        );
        assert_eq!(as_blocking_reply(&list, reply("$-1\r\n")), reply("*-1\r\n"));
        let zset = PollReply::ZSetPop(key);
        assert_eq!(
            as_blocking_reply(&zset, reply("*2\r\n$1\r\nm\r\n$3\r\n2.5\r\n")),
            reply("*3\r\n$1\r\nq\r\n$1\r\nm\r\n$3\r\n2.5\r\n")
        );
        assert_eq!(as_blocking_reply(&zset, reply("*0\r\n")), reply("*-1\r\n"));
        assert_eq!(
            as_blocking_reply(
                &PollReply::FirstOfLmpop,
                reply("*2\r\n$1\r\nb\r\n*1\r\n$1\r\nx\r\n")
            ),
            reply("*2\r\n$1\r\nb\r\n$1\r\nx\r\n")
        );
        assert_eq!(
            as_blocking_reply(
                &PollReply::FirstOfZmpop,
                reply("*2\r\n$1\r\nb\r\n*1\r\n*2\r\n$1\r\nm\r\n$1\r\n1\r\n")
            ),
            reply("*3\r\n$1\r\nb\r\n$1\r\nm\r\n$1\r\n1\r\n")
        );
        assert_eq!(
            as_blocking_reply(&PollReply::FirstOfZmpop, reply("*-1\r\n")),
            reply("*-1\r\n")
        );
        // Errors pass as they are.
        let wrong = reply("-WRONGTYPE Operation against a key holding the wrong kind of value\r\n");
        assert_eq!(
            as_blocking_reply(&PollReply::ListPop(Bytes::new()), wrong.clone()),
            wrong
        );
    }

    #[test]
    fn timeouts_are_found_where_each_command_keeps_them() {
        assert_eq!(
            timeout_at("blpop", &args("BLPOP a b 5")),
            Some(Timeout::Seconds(3))
        );
        assert_eq!(
            timeout_at("blmpop", &args("BLMPOP 0.5 2 a b LEFT")),
            Some(Timeout::Seconds(1))
        );
        assert_eq!(
            timeout_at("xread", &args("XREAD COUNT 2 BLOCK 100 STREAMS s $")),
            Some(Timeout::Millis(4))
        );
        assert_eq!(timeout_at("xread", &args("XREAD STREAMS s 0")), None);
        assert_eq!(
            timeout_at(
                "xreadgroup",
                &args("XREADGROUP GROUP g c BLOCK 0 STREAMS s >")
            ),
            Some(Timeout::Millis(5))
        );
    }

    #[test]
    fn slices_never_ask_to_wait_forever() {
        let a = args("BLPOP q 0");
        let t = timeout_at("blpop", &a).unwrap();
        assert_eq!(read_timeout(t, &a), Ok(None));
        let sliced = with_timeout(t, &a, Duration::from_secs(1));
        assert_eq!(sliced[2], Bytes::from_static(b"1.000"));
        let sliced = with_timeout(t, &a, Duration::ZERO);
        assert_eq!(sliced[2], Bytes::from_static(b"0.001"));
        assert!(read_timeout(t, &args("BLPOP q -1")).is_err());
        let x = args("XREAD BLOCK 0 STREAMS s $");
        let tx = timeout_at("xread", &x).unwrap();
        assert_eq!(
            with_timeout(tx, &x, Duration::from_millis(250))[2],
            Bytes::from_static(b"250")
        );
    }
}
