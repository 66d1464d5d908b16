//! Keyless commands sent to every instance: DBSIZE (summed), SCRIPT LOAD/EXISTS/FLUSH,
//! RANDOMKEY and SCAN (the instances one after the other, the instance kept in the cursor).

use std::sync::Arc;

use bytes::Bytes;

use super::super::command::FanOut;
use super::super::router::Router;
use super::{Client, Pending, backend_reply, bundle, encode, error_reply, lost, parse, wire};
use crate::redis::keys::RESERVED_PREFIX;
use crate::redis::resp::{Frame, Request};

impl Client {
    pub(super) async fn fan_out(
        &mut self,
        router: Arc<Router>,
        f: FanOut,
        request: Request,
    ) -> Pending {
        let args = &request.args;
        let lane = self.lane();
        let call_all = |cmd: &[Bytes]| {
            let bytes = bundle(&[cmd.to_vec()]);
            router
                .backends
                .iter()
                .map(|b| b.send_or_refuse(lane, router.version(), bytes.clone(), 1))
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
                // Instances keep the wrapped script (see `scripts.rs`); the client gets the
                // SHA1 of its own.
                let mut cmd = args.clone();
                let mut sha = None;
                if f == FanOut::ScriptLoad
                    && let Some(body) = args.get(2)
                {
                    let (s, wrapped) = self.shared.scripts.learn(body);
                    cmd[2] = wrapped;
                    sha = Some(s);
                } else {
                    self.shared.scripts.clear();
                }
                let mut last = Frame::ok().to_bytes();
                for rx in call_all(&cmd) {
                    let reply = backend_reply(rx.await.unwrap_or_else(|_| Err(lost())), true);
                    if reply.starts_with(b"-") {
                        return Pending::Ready(reply);
                    }
                    last = reply;
                }
                match sha {
                    Some(s) => Pending::Ready(encode(&Frame::Bulk(Bytes::from(s)))),
                    None => Pending::Ready(last),
                }
            }
            FanOut::ScriptExists => {
                // The scripts this sidecar can run by SHA1: it knows their bodies, and sends
                // them wrapped (see `scripts.rs`).
                let known = args[2..]
                    .iter()
                    .map(|sha| {
                        Frame::Integer(i64::from(self.shared.scripts.wrapped(sha).is_some()))
                    })
                    .collect();
                Pending::Ready(encode(&Frame::Array(known)))
            }
            FanOut::RandomKey => {
                let n = router.backends.len();
                let start = (self.id as usize).wrapping_add(self.sample as usize) % n.max(1);
                for k in 0..n {
                    let b = &router.backends[(start + k) % n];
                    let rx = b.send_or_refuse(lane, router.version(), wire(&request), 1);
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
            let rx = b.send_or_refuse(self.lane(), router.version(), bundle(&[cmd]), 1);
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
