//! Blocking commands (BLPOP, BLMOVE, BZPOPMIN, XREAD … BLOCK, …). They wait on a connection of
//! their own, at most one second at a time: before each second the keys are routed afresh, so
//! a client waiting on a list that moves (a migration, a failover) waits where the list is now.
//! A client that hangs up while it waits ends the wait (the serve loop drops this future and
//! its connection), so nothing is popped for a socket nobody reads.
//!
//! In a migrating range, a wait on the source is a poll through the guard (a blocking command
//! inside a script does not block): popping into a destination key must not happen outside the
//! guard. On the target, or outside any migration, it is a real blocking call.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::super::command::CommandSpec;
use super::{Client, Dispatched, Interrupt, Pending, bundle, stop};
use crate::redis::resp::{Request, parse_i64};
use crate::routing::keyspace::Route;

/// The longest one blocking call lasts before the keys are routed again.
const SLICE: Duration = Duration::from_secs(1);

/// How often a wait in a migrating range asks the guard again.
const POLL: Duration = Duration::from_millis(20);

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
                let conn = self.dedicated_for(&router, r0.target).await?;
                match conn.call(&bundle(&[cmd]), 1).await {
                    Ok(r) => r.first(),
                    Err(e) => {
                        let name = conn.instance().to_owned();
                        self.dedicated.remove(&name);
                        return Ok(Pending::Ready(e.reply()));
                    }
                }
            };
            if !is_nil(&reply) || last {
                return Ok(Pending::Ready(reply));
            }
        }
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
        loop {
            match self
                .guard_decide(router, m, &key_args, &[cmd.to_vec()])
                .await?
            {
                Some(reply) if !is_nil(&reply) => return Ok(reply),
                Some(nil) => {
                    if Instant::now() + POLL >= ends {
                        return Ok(nil);
                    }
                    tokio::time::sleep(POLL).await;
                }
                None => {
                    // Every key is on the target now: a real wait there.
                    let left = ends
                        .saturating_duration_since(Instant::now())
                        .max(Duration::from_millis(1));
                    let name = String::from_utf8_lossy(&cmd[0]).to_ascii_lowercase();
                    let on_target = match timeout_at(&name, cmd) {
                        Some(at) => with_timeout(at, cmd, left),
                        None => cmd.to_vec(),
                    };
                    let conn = self.dedicated_for(router, mig.target).await?;
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
