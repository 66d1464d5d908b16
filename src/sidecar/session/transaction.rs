//! Transactions: MULTI queues commands here until EXEC sends them to the one instance their
//! keys live on (else `-CROSSINSTANCE`); WATCH holds a connection of its own.

use bytes::{Bytes, BytesMut};

use super::super::command::{CommandSpec, TxnCommand};
use super::super::ttl::TtlAction;
use super::keyed::ttl_action;
use super::{Client, Pending, ReadKind, bundle, error_reply, wire};
use crate::redis::resp::{Frame, Request, encode_request};
use crate::routing::keyspace::{CategoryId, InstanceId};

/// A transaction being queued (MULTI … EXEC).
#[derive(Default)]
pub(super) struct Transaction {
    queued: Vec<Vec<Bytes>>,
    /// Category TTL commands for keys the transaction writes, sent after EXEC.
    after: Vec<Vec<Bytes>>,
    target: Option<InstanceId>,
    /// A command failed to queue: EXEC answers EXECABORT.
    pub(super) aborted: bool,
}

impl Client {
    pub(super) fn queue(
        &mut self,
        request: Request,
        keys: &[usize],
        spec: &CommandSpec,
    ) -> Pending {
        let router = self.shared.router.load_full();
        let Some(t) = self.transaction.as_mut() else {
            return Pending::Ready(error_reply("ERR no transaction"));
        };
        if let Some(router) = &router {
            for i in keys {
                let route = router.resolver.resolve(&request.args[*i]);
                if route.migrating_from.is_some() {
                    t.aborted = true;
                    return Pending::Ready(error_reply(
                        "TRYAGAIN a key of this transaction is being migrated, retry the transaction",
                    ));
                }
                match t.target {
                    Some(existing) if existing != route.target => {
                        t.aborted = true;
                        return Pending::Ready(error_reply(
                            "CROSSINSTANCE the keys of this transaction live on different instances",
                        ));
                    }
                    _ => t.target = Some(route.target),
                }
            }
        }
        let mut args = request.args;
        if let Some(router) = &router {
            let categories = keys.iter().map(|i| router.resolver.category_of(&args[*i]));
            match ttl_action(router, spec, &args, categories) {
                TtlAction::Unchanged => {}
                TtlAction::Replace(replaced) => args = replaced,
                // Sent right after EXEC on the same connection (NX: never shortens a TTL).
                TtlAction::Append(extra) => t.after.extend(extra),
                TtlAction::Refuse(text) => {
                    t.aborted = true;
                    return Pending::Ready(error_reply(&text));
                }
            }
        }
        t.queued.push(args);
        Pending::Ready(Bytes::from_static(b"+QUEUED\r\n"))
    }

    pub(super) async fn transaction_command(&mut self, t: TxnCommand, request: Request) -> Pending {
        match t {
            TxnCommand::Multi => {
                if self.transaction.is_some() {
                    return Pending::Ready(error_reply("ERR MULTI calls can not be nested"));
                }
                self.transaction = Some(Transaction::default());
                Pending::Ready(Frame::ok().to_bytes())
            }
            TxnCommand::Discard => match self.transaction.take() {
                None => Pending::Ready(error_reply("ERR DISCARD without MULTI")),
                Some(_) => {
                    self.unwatch().await;
                    Pending::Ready(Frame::ok().to_bytes())
                }
            },
            TxnCommand::Exec => self.exec().await,
            TxnCommand::Watch => {
                if self.transaction.is_some() {
                    return Pending::Ready(error_reply("ERR WATCH inside MULTI is not allowed"));
                }
                let Some(router) = self.shared.router.load_full() else {
                    return Pending::Ready(error_reply(
                        "TRYAGAIN the routing table is not loaded yet",
                    ));
                };
                let mut target = None;
                for key in &request.args[1..] {
                    let r = match self.route(&router, key).await {
                        Ok(r) => r,
                        Err(e) => return Pending::Ready(e),
                    };
                    if target.is_some_and(|t| t != r.target) {
                        return Pending::Ready(error_reply(
                            "CROSSINSTANCE WATCHed keys live on different instances",
                        ));
                    }
                    target = Some(r.target);
                }
                let Some(target) = target else {
                    return Pending::Ready(error_reply(
                        "ERR wrong number of arguments for 'watch' command",
                    ));
                };
                let backend = router.backend(target).clone();
                if self
                    .watching
                    .as_ref()
                    .is_some_and(|(n, _)| n != backend.name())
                {
                    return Pending::Ready(error_reply(
                        "CROSSINSTANCE WATCHed keys live on different instances",
                    ));
                }
                if self.watching.is_none() {
                    match backend.dedicated().await {
                        Ok(conn) => self.watching = Some((backend.name().to_owned(), conn)),
                        Err(e) => return Pending::Ready(e.reply()),
                    }
                }
                let bytes = wire(&request);
                let Some((_, conn)) = self.watching.as_mut() else {
                    return Pending::Ready(error_reply("ERR no connection"));
                };
                match conn.call(&bytes, 1).await {
                    Ok(r) => Pending::Ready(r.first()),
                    Err(e) => {
                        self.watching = None;
                        Pending::Ready(e.reply())
                    }
                }
            }
            TxnCommand::Unwatch => {
                self.unwatch().await;
                Pending::Ready(Frame::ok().to_bytes())
            }
        }
    }

    pub(super) async fn unwatch(&mut self) {
        if let Some((_, mut conn)) = self.watching.take() {
            let mut out = BytesMut::new();
            encode_request(&[b"UNWATCH".as_slice()], &mut out);
            let _ = conn.call(&out, 1).await;
        }
    }

    pub(super) async fn exec(&mut self) -> Pending {
        let Some(t) = self.transaction.take() else {
            return Pending::Ready(error_reply("ERR EXEC without MULTI"));
        };
        if t.aborted {
            self.unwatch().await;
            return Pending::Ready(error_reply(
                "EXECABORT Transaction discarded because of previous errors.",
            ));
        }
        let Some(router) = self.shared.router.load_full() else {
            return Pending::Ready(error_reply("TRYAGAIN the routing table is not loaded yet"));
        };
        let mut cmds = vec![vec![Bytes::from_static(b"MULTI")]];
        cmds.extend(t.queued);
        cmds.push(vec![Bytes::from_static(b"EXEC")]);
        let replies = cmds.len();
        let bytes = bundle(&cmds);
        let after = (!t.after.is_empty()).then(|| (bundle(&t.after), t.after.len()));
        if let Some((name, mut conn)) = self.watching.take() {
            if t.target.is_some_and(|tg| router.backend(tg).name() != name) {
                return Pending::Ready(error_reply(
                    "CROSSINSTANCE the transaction's keys and the WATCHed keys live on different instances",
                ));
            }
            let reply = match conn.call(&bytes, replies).await {
                Ok(r) => r.last(),
                Err(e) => return Pending::Ready(e.reply()),
            };
            if let Some((after, n)) = after {
                let _ = conn.call(&after, n).await;
            }
            return Pending::Ready(reply);
        }
        if replies == 2 {
            return Pending::Ready(Bytes::from_static(b"*0\r\n"));
        }
        let target = t.target.unwrap_or(0);
        let category = (router.resolver.categories().len() - 1) as CategoryId;
        let lane = self.lane();
        let backend = router.backend(target).clone();
        let mut pending = self.forward(router, target, category, bytes, replies, ReadKind::None);
        if let Pending::Backend { accounting, .. } = &mut pending {
            accounting.first = false;
        }
        if let Some((after, n)) = after {
            // Pipelined behind EXEC on the same connection; the client does not wait for it.
            drop(backend.send(lane, after, n));
        }
        pending
    }
}
