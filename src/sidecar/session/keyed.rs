//! Commands on keys: one key to its instance; MGET/MSET/DEL/UNLINK/EXISTS/TOUCH split per
//! instance and merged in the client's order; scripts and multi-key commands on one instance
//! (else `-CROSSINSTANCE`); blocking commands on a connection of their own. The category's TTL
//! rules apply to what they write.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};

use super::super::backend::ReplyReceiver;
use super::super::command::{CommandSpec, Split};
use super::super::router::Router;
use super::super::ttl::{self, TtlAction};
use super::{
    Client, Pending, ReadKind, backend_reply, bundle, encode, error_reply, lost, now_ms, parse,
    wire,
};
use crate::redis::resp::{Frame, Request};
use crate::routing::keyspace::{CategoryId, InstanceId};

/// The category TTL rules for a command whose keys belong to `categories`: each key gets the
/// rules of its own category (the keys of one command may span several categories).
pub(super) fn ttl_action(
    router: &Router,
    spec: &CommandSpec,
    args: &[Bytes],
    mut categories: impl Iterator<Item = CategoryId> + Clone,
) -> TtlAction {
    let resolver = &router.resolver;
    let rules_of = |c: CategoryId| resolver.categories()[usize::from(c)].ttl;
    let now = now_ms();
    let Some(first) = categories.clone().next() else {
        return TtlAction::Unchanged;
    };
    if categories.clone().all(|c| c == first) {
        return ttl::apply(&rules_of(first), spec, args, now);
    }
    let mut distinct: Vec<CategoryId> = categories.by_ref().collect();
    distinct.sort_unstable();
    distinct.dedup();
    let mut appended = Vec::new();
    for c in distinct {
        match ttl::apply(&rules_of(c), spec, args, now) {
            TtlAction::Unchanged => {}
            TtlAction::Append(cmds) => appended.extend(
                cmds.into_iter()
                    .filter(|cmd| cmd.get(1).is_some_and(|k| resolver.category_of(k) == c)),
            ),
            other => return other,
        }
    }
    if appended.is_empty() {
        TtlAction::Unchanged
    } else {
        TtlAction::Append(appended)
    }
}

impl Client {
    pub(super) async fn single(
        &mut self,
        router: Arc<Router>,
        request: Request,
        key_index: usize,
        spec: &CommandSpec,
    ) -> Pending {
        let key = request.args[key_index].clone();
        let route = match self.route(&router, &key).await {
            Ok(r) => r,
            Err(e) => return Pending::Ready(e),
        };
        let rules = router.resolver.categories()[usize::from(route.category)].ttl;
        let read = if spec.counts_hits {
            ReadKind::Single
        } else {
            ReadKind::None
        };
        let mut extra: Vec<Vec<Bytes>> = Vec::new();
        let mut args_override: Option<Vec<Bytes>> = None;
        match ttl::apply(&rules, spec, &request.args, now_ms()) {
            TtlAction::Unchanged => {}
            TtlAction::Replace(args) => args_override = Some(args),
            TtlAction::Append(cmds) => extra = cmds,
            TtlAction::Refuse(text) => return Pending::Ready(error_reply(&text)),
        }
        if rules.adaptive && spec.adaptive_read && self.sampled() {
            extra.extend(ttl::adaptive_extension(&rules, &key));
        }
        let bytes = match (args_override, extra.is_empty(), &request.raw) {
            (None, true, Some(raw)) => raw.clone(),
            (args, _, _) => {
                let mut cmds = vec![args.unwrap_or(request.args)];
                cmds.extend(extra.iter().cloned());
                bundle(&cmds)
            }
        };
        self.forward(
            router,
            route.target,
            route.category,
            bytes,
            1 + extra.len(),
            read,
        )
    }

    pub(super) async fn split(
        &mut self,
        router: Arc<Router>,
        request: Request,
        split: Split,
        keys: &[usize],
    ) -> Pending {
        let per_key = match split {
            Split::Mset => 2,
            _ => 1,
        };
        // Route every key (moving migrating ones first).
        let mut routes = Vec::with_capacity(keys.len());
        for i in keys {
            match self.route(&router, &request.args[*i]).await {
                Ok(r) => routes.push(r),
                Err(e) => return Pending::Ready(e),
            }
        }
        let name = request.args[0].clone();
        let category = routes[0].category;
        let default_ttl = |cat: CategoryId| {
            router.resolver.categories()[usize::from(cat)]
                .ttl
                .default_ms
        };
        // One instance and no TTL to add: forward as it is.
        let single_target = routes.iter().all(|r| r.target == routes[0].target);
        let needs_ttl =
            split == Split::Mset && routes.iter().any(|r| default_ttl(r.category).is_some());
        if single_target && !needs_ttl {
            let bytes = wire(&request);
            return self.forward(router, routes[0].target, category, bytes, 1, ReadKind::None);
        }
        // Group keys by target, keeping the client's order inside each group.
        let mut groups: Vec<(InstanceId, Vec<usize>)> = Vec::new();
        for (n, r) in routes.iter().enumerate() {
            match groups.iter_mut().find(|(t, _)| *t == r.target) {
                Some((_, v)) => v.push(n),
                None => groups.push((r.target, vec![n])),
            }
        }
        let mut parts = Vec::with_capacity(groups.len());
        for (target, members) in &groups {
            let mut cmd = vec![name.clone()];
            let mut extra = Vec::new();
            for n in members {
                let at = keys[*n];
                cmd.extend(request.args[at..at + per_key].iter().cloned());
                if split == Split::Mset {
                    let rules = &router.resolver.categories()[usize::from(routes[*n].category)].ttl;
                    extra.extend(ttl::default_expiry(rules, &request.args[at]));
                }
            }
            for n in members {
                router.categories[usize::from(routes[*n].category)]
                    .commands
                    .inc();
            }
            let mut cmds = vec![cmd];
            let replies = 1 + extra.len();
            cmds.extend(extra);
            let rx = router
                .backend(*target)
                .send(self.lane(), bundle(&cmds), replies);
            parts.push((members.clone(), rx));
        }
        let total = keys.len();
        let router2 = router.clone();
        let categories: Vec<CategoryId> = routes.iter().map(|r| r.category).collect();
        Pending::Future(Box::pin(async move {
            merge(split, parts, total, &router2, &categories).await
        }))
    }

    pub(super) async fn same_instance(
        &mut self,
        router: Arc<Router>,
        request: Request,
        keys: &[usize],
        spec: &CommandSpec,
    ) -> Pending {
        let mut routes = Vec::with_capacity(keys.len());
        for i in keys {
            match self.route(&router, &request.args[*i]).await {
                Ok(r) => routes.push(r),
                Err(e) => return Pending::Ready(e),
            }
        }
        let (target, category) = match routes.first() {
            Some(r) => (r.target, r.category),
            // A script without keys runs on the first instance of the table.
            None => (0, (router.resolver.categories().len() - 1) as CategoryId),
        };
        if routes.iter().any(|r| r.target != target) {
            return Pending::Ready(error_reply(&format!(
                "CROSSINSTANCE the keys of this {} command live on different instances",
                spec.name.to_ascii_uppercase()
            )));
        }
        // Destination keys (COPY, LMOVE, *STORE, MSETNX, …) get their category's TTL rules.
        let categories = routes.iter().map(|r| r.category);
        let (bytes, replies) = match ttl_action(&router, spec, &request.args, categories) {
            TtlAction::Unchanged => (wire(&request), 1),
            TtlAction::Replace(args) => (bundle(&[args]), 1),
            TtlAction::Append(extra) => {
                let mut cmds = vec![request.args];
                cmds.extend(extra);
                let n = cmds.len();
                (bundle(&cmds), n)
            }
            TtlAction::Refuse(text) => return Pending::Ready(error_reply(&text)),
        };
        self.forward(router, target, category, bytes, replies, ReadKind::None)
    }

    pub(super) async fn blocking(
        &mut self,
        router: Arc<Router>,
        request: Request,
        keys: &[usize],
    ) -> Pending {
        let mut target = None;
        for i in keys {
            let r = match self.route(&router, &request.args[*i]).await {
                Ok(r) => r,
                Err(e) => return Pending::Ready(e),
            };
            router.categories[usize::from(r.category)].commands.inc();
            if target.is_some_and(|t| t != r.target) {
                return Pending::Ready(error_reply(
                    "CROSSINSTANCE the keys of this blocking command live on different instances",
                ));
            }
            target = Some(r.target);
        }
        let Some(target) = target else {
            return Pending::Ready(error_reply("ERR blocking command without keys"));
        };
        let backend = router.backend(target).clone();
        let name = backend.name().to_owned();
        if !self.dedicated.contains_key(&name) {
            match backend.dedicated().await {
                Ok(conn) => {
                    self.dedicated.insert(name.clone(), conn);
                }
                Err(e) => return Pending::Ready(e.reply()),
            }
        }
        let bytes = wire(&request);
        let Some(conn) = self.dedicated.get_mut(&name) else {
            return Pending::Ready(error_reply("ERR no connection"));
        };
        match conn.call(&bytes, 1).await {
            Ok(r) => Pending::Ready(r.first()),
            Err(e) => {
                self.dedicated.remove(&name);
                Pending::Ready(e.reply())
            }
        }
    }
}

/// Merges the replies of a split command in the client's key order.
async fn merge(
    split: Split,
    parts: Vec<(Vec<usize>, ReplyReceiver)>,
    total: usize,
    router: &Router,
    categories: &[CategoryId],
) -> Bytes {
    let mut values: Vec<Frame> = vec![Frame::Null; total];
    let mut sum = 0i64;
    for (members, rx) in parts {
        let reply = backend_reply(rx.await.unwrap_or_else(|_| Err(lost())), true);
        let frame = match parse(&reply) {
            Ok(f) => f,
            Err(e) => return e,
        };
        match (split, frame) {
            (_, Frame::Error(e)) => {
                for n in &members {
                    router.categories[usize::from(categories[*n])].errors.inc();
                }
                let mut out = BytesMut::new();
                Frame::Error(e).encode(&mut out);
                return out.freeze();
            }
            (Split::Mget, Frame::Array(items)) => {
                for (n, item) in members.iter().zip(items) {
                    let m = &router.categories[usize::from(categories[*n])];
                    if matches!(item, Frame::Null) {
                        m.misses.inc();
                    } else {
                        m.hits.inc();
                    }
                    values[*n] = item;
                }
            }
            (Split::Mset, _) => {}
            (_, Frame::Integer(n)) => sum += n,
            (_, other) => return encode(&other),
        }
    }
    match split {
        Split::Mget => encode(&Frame::Array(values)),
        Split::Mset => Frame::ok().to_bytes(),
        _ => encode(&Frame::Integer(sum)),
    }
}
