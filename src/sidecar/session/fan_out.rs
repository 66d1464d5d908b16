//! Keyless commands sent to every instance: SCRIPT LOAD/EXISTS/FLUSH here; the keyspace-wide
//! ones (SCAN, KEYS, DBSIZE, RANDOMKEY, FLUSHDB/FLUSHALL) in `scan.rs`.

use std::sync::Arc;

use bytes::Bytes;

use super::super::command::FanOut;
use super::super::router::Router;
use super::{Client, Pending, backend_reply, bundle, encode, lost};
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
            FanOut::DbSize => self.dbsize(router).await,
            FanOut::Keys => self.keys(router, request).await,
            FanOut::Flush => self.flush(router, request).await,
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
            FanOut::RandomKey => self.random_key(router).await,
            FanOut::Scan => self.scan(router, request).await,
        }
    }
}
