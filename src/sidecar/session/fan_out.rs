//! Keyless commands sent to every instance: SCRIPT LOAD/EXISTS/FLUSH here; the keyspace-wide
//! ones (SCAN, KEYS, DBSIZE, RANDOMKEY, FLUSHDB/FLUSHALL) in `scan.rs`.

use std::sync::Arc;

use bytes::Bytes;

use super::super::command::FanOut;
use super::super::router::Router;
use super::{Client, Pending, backend_reply, bundle, encode, lost, parse};
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
                let mut last = Frame::ok().to_bytes();
                for rx in call_all(args) {
                    let reply = backend_reply(rx.await.unwrap_or_else(|_| Err(lost())), true);
                    if reply.starts_with(b"-") {
                        return Pending::Ready(reply);
                    }
                    last = reply;
                }
                Pending::Ready(last)
            }
            FanOut::ScriptExists => {
                let mut all: Option<Vec<i64>> = None;
                for rx in call_all(args) {
                    let reply = backend_reply(rx.await.unwrap_or_else(|_| Err(lost())), true);
                    let Ok(Frame::Array(items)) = parse(&reply) else {
                        return Pending::Ready(reply);
                    };
                    let flags: Vec<i64> =
                        items.iter().map(|f| f.as_integer().unwrap_or(0)).collect();
                    all = Some(match all {
                        None => flags,
                        Some(prev) => prev
                            .iter()
                            .zip(&flags)
                            .map(|(a, b)| a.min(b))
                            .copied()
                            .collect(),
                    });
                }
                Pending::Ready(encode(&Frame::Array(
                    all.unwrap_or_default()
                        .into_iter()
                        .map(Frame::Integer)
                        .collect(),
                )))
            }
            FanOut::RandomKey => self.random_key(router).await,
            FanOut::Scan => self.scan(router, request).await,
        }
    }
}
