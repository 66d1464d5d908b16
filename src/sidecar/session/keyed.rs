//! Commands on keys: one key to its instance; MGET/MSET/DEL/UNLINK/EXISTS/TOUCH split per
//! instance and merged in the client's order; scripts and multi-key commands on one instance
//! (else `-CROSSINSTANCE`); blocking commands on a connection of their own. Keys of a
//! migrating range go through the guard (`guarded.rs`). The category's TTL rules apply to
//! what they write.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};

use super::super::backend::ReplyReceiver;
use super::super::command::{CommandSpec, Kind, Split};
use super::super::router::Router;
use super::super::ttl::{self, TtlAction};
use super::guarded::Guarded;
use super::{
    Accounting, Client, Dispatched, Pending, ReadKind, account, backend_reply, bundle, encode,
    error_reply, lost, now_ms, parse, wire,
};
use crate::redis::resp::{Frame, Request};
use crate::routing::keyspace::{CategoryId, InstanceId, Route};
use crate::routing::table::TtlRules;

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
    let Some(first) = categories.clone().next() else {
        return TtlAction::Unchanged;
    };
    if categories.clone().all(|c| c == first) {
        let rules = rules_of(first);
        return ttl::apply(&rules, spec, args, now_if_ruled(&rules));
    }
    let now = now_ms();
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

/// The time for `ttl::apply`, read only when there are rules to apply (it is on every
/// command's path, and most categories have none).
fn now_if_ruled(rules: &TtlRules) -> u64 {
    if rules.is_empty() { 0 } else { now_ms() }
}

/// Where a group of keys goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dest {
    /// Straight to this instance.
    Plain(InstanceId),
    /// Through the guard of this migrating range.
    Guard(u16),
}

fn dest(route: &Route) -> Dest {
    match route.migration {
        Some(m) => Dest::Guard(m),
        None => Dest::Plain(route.target),
    }
}

/// The one instance every key of a split command goes to, when nothing migrates and no TTL
/// needs adding: the command is then forwarded as it is.
fn plain_destination(router: &Router, split: Split, routes: &[Route]) -> Option<InstanceId> {
    let Dest::Plain(target) = dest(routes.first()?) else {
        return None;
    };
    let default_ttl = |cat: CategoryId| {
        router.resolver.categories()[usize::from(cat)]
            .ttl
            .default_ms
    };
    let single = routes.iter().all(|r| dest(r) == Dest::Plain(target));
    let needs_ttl =
        split == Split::Mset && routes.iter().any(|r| default_ttl(r.category).is_some());
    (single && !needs_ttl).then_some(target)
}

/// What a command on one key sends ([`Client::single_commands`]).
struct SingleCommands {
    /// Its arguments as rewritten by the TTL rules, if they were.
    args_override: Option<Vec<Bytes>>,
    /// Commands sent after it (TTL rules, an adaptive extension).
    extra: Vec<Vec<Bytes>>,
    /// How its reply counts.
    read: ReadKind,
}

/// A part of a split command: sent and pending, or answered already (guarded parts).
enum Part {
    Sent(ReplyReceiver),
    Done(Bytes),
}

impl Client {
    /// A command on one key whose range is not migrating, sent as it is (with the writes its
    /// category's TTL rules add): no waiting, so the serve loop runs it in place.
    pub(super) fn single_plain(
        &mut self,
        router: Arc<Router>,
        request: &Request,
        key_index: usize,
        spec: &CommandSpec,
        route: Route,
    ) -> Dispatched {
        let commands = match self.single_commands(&router, request, key_index, spec, &route) {
            Ok(c) => c,
            Err(refused) => return Ok(refused),
        };
        let legacy = router.backend(route.target).legacy();
        let extra = &commands.extra;
        let bytes = match (commands.args_override, extra.is_empty(), &request.raw) {
            (None, true, Some(raw)) => raw.clone(),
            (args, _, _) => {
                let mut cmds = vec![args.unwrap_or_else(|| request.args.clone())];
                cmds.extend(extra.iter().map(|c| ttl::for_server(c.clone(), legacy)));
                bundle(&cmds)
            }
        };
        self.forward(
            router,
            route.target,
            route.category,
            bytes,
            1 + extra.len(),
            commands.read,
        )
    }

    /// A command on one key whose range migrates: through the guard (`guarded.rs`).
    pub(super) async fn single_moving(
        &mut self,
        router: Arc<Router>,
        request: &Request,
        key_index: usize,
        spec: &CommandSpec,
        route: Route,
        migration: u16,
    ) -> Dispatched {
        let commands = match self.single_commands(&router, request, key_index, spec, &route) {
            Ok(c) => c,
            Err(refused) => return Ok(refused),
        };
        let key = &request.args[key_index];
        // Unchanged by TTL rules (they only rewrite writes; `guarded` sees what they add).
        let read = !spec.write && commands.args_override.is_none();
        let mut cmds = vec![
            commands
                .args_override
                .unwrap_or_else(|| request.args.clone()),
        ];
        cmds.extend(commands.extra);
        let reply = self
            .guarded(
                &router,
                migration,
                std::slice::from_ref(key),
                cmds,
                Guarded::command(read),
            )
            .await?;
        router.categories[usize::from(route.category)]
            .commands
            .inc();
        account(
            &Accounting {
                router: router.clone(),
                category: route.category,
                read: commands.read,
                first: true,
            },
            &reply,
        );
        Ok(Pending::Ready(reply))
    }

    /// What a command on one key becomes under its category's TTL rules: its arguments
    /// replaced, or commands appended (an adaptive TTL's extension on one read in sixteen),
    /// and how its reply counts; or the refusal to answer.
    fn single_commands(
        &mut self,
        router: &Router,
        request: &Request,
        key_index: usize,
        spec: &CommandSpec,
        route: &Route,
    ) -> Result<SingleCommands, Pending> {
        let rules = router.resolver.categories()[usize::from(route.category)].ttl;
        let read = if spec.counts_hits {
            ReadKind::Single
        } else {
            ReadKind::None
        };
        let mut extra: Vec<Vec<Bytes>> = Vec::new();
        let mut args_override: Option<Vec<Bytes>> = None;
        match ttl::apply(&rules, spec, &request.args, now_if_ruled(&rules)) {
            TtlAction::Unchanged => {}
            TtlAction::Replace(args) => args_override = Some(args),
            TtlAction::Append(cmds) => extra = cmds,
            TtlAction::Refuse(text) => return Err(Pending::Ready(error_reply(&text))),
        }
        if rules.adaptive && spec.adaptive_read && self.sampled() {
            extra.extend(ttl::adaptive_extension(&rules, &request.args[key_index]));
        }
        Ok(SingleCommands {
            args_override,
            extra,
            read,
        })
    }

    /// MGET/MSET/DEL/… whose keys all go to one instance, nothing migrating and no TTL to
    /// add: forwarded as it is, in place. `None`: it is split (`split`).
    pub(super) fn split_plain(
        &mut self,
        router: &Arc<Router>,
        request: &Request,
        split: Split,
        keys: &[usize],
    ) -> Option<Dispatched> {
        let routes: Vec<Route> = keys
            .iter()
            .map(|i| router.resolver.resolve(&request.args[*i]))
            .collect();
        let target = plain_destination(router, split, &routes)?;
        let category = routes[0].category;
        Some(self.forward(
            router.clone(),
            target,
            category,
            wire(request),
            1,
            ReadKind::None,
        ))
    }

    pub(super) async fn split(
        &mut self,
        router: Arc<Router>,
        request: &Request,
        split: Split,
        keys: &[usize],
    ) -> Dispatched {
        let per_key = match split {
            Split::Mset => 2,
            _ => 1,
        };
        let routes: Vec<Route> = keys
            .iter()
            .map(|i| router.resolver.resolve(&request.args[*i]))
            .collect();
        let name = request.args[0].clone();
        if let Some(target) = plain_destination(&router, split, &routes) {
            let category = routes[0].category;
            return self.forward(router, target, category, wire(request), 1, ReadKind::None);
        }
        // Group keys by destination, keeping the client's order inside each group.
        let mut groups: Vec<(Dest, Vec<usize>)> = Vec::new();
        for (n, r) in routes.iter().enumerate() {
            let d = dest(r);
            match groups.iter_mut().find(|(t, _)| *t == d) {
                Some((_, v)) => v.push(n),
                None => groups.push((d, vec![n])),
            }
        }
        let mut parts = Vec::with_capacity(groups.len());
        for (d, members) in &groups {
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
            if let Dest::Plain(target) = d {
                let legacy = router.backend(*target).legacy();
                extra = extra
                    .into_iter()
                    .map(|c| ttl::for_server(c, legacy))
                    .collect();
            }
            let mut cmds = vec![cmd];
            let replies = 1 + extra.len();
            cmds.extend(extra);
            let part = match d {
                Dest::Plain(target) => {
                    Part::Sent(router.send(*target, self.lane(), bundle(&cmds), replies)?)
                }
                Dest::Guard(m) => {
                    let group_keys: Vec<Bytes> = members
                        .iter()
                        .map(|n| request.args[keys[*n]].clone())
                        .collect();
                    Part::Done(
                        Box::pin(self.guarded(
                            &router,
                            *m,
                            &group_keys,
                            cmds,
                            Guarded::command(matches!(split, Split::Mget | Split::Exists)),
                        ))
                        .await?,
                    )
                }
            };
            parts.push((members.clone(), part));
        }
        let total = keys.len();
        let router2 = router.clone();
        let categories: Vec<CategoryId> = routes.iter().map(|r| r.category).collect();
        Ok(Pending::Future(Box::pin(async move {
            merge(split, parts, total, &router2, &categories).await
        })))
    }

    pub(super) async fn same_instance(
        &mut self,
        router: Arc<Router>,
        request: &Request,
        keys: &[usize],
        spec: &CommandSpec,
    ) -> Dispatched {
        let routes: Vec<Route> = keys
            .iter()
            .map(|i| router.resolver.resolve(&request.args[*i]))
            .collect();
        let (target, category) = match routes.first() {
            Some(r) => (r.target, r.category),
            // A script without keys runs on the first instance of the table.
            None => (0, (router.resolver.categories().len() - 1) as CategoryId),
        };
        let cross = || {
            Ok(Pending::Ready(error_reply(&format!(
                "CROSSINSTANCE the keys of this {} command live on different instances",
                spec.name.to_ascii_uppercase()
            ))))
        };
        // Destination keys (COPY, LMOVE, *STORE, MSETNX, …) get their category's TTL rules.
        let categories = routes.iter().map(|r| r.category);
        let action = ttl_action(&router, spec, &request.args, categories);
        let migration = routes.iter().find_map(|r| r.migration);
        if let Some(m) = migration {
            let source = router.migrations[usize::from(m)].source;
            // Every key in this one migrating range, or (for the others) on its source.
            if routes.iter().any(|r| {
                r.migration.is_some_and(|o| o != m) || (r.migration.is_none() && r.target != source)
            }) {
                return cross();
            }
            // The client's command as it is, nothing added: a read may ask the target first.
            let unchanged = matches!(action, TtlAction::Unchanged);
            let mut cmds = match action {
                TtlAction::Unchanged => vec![request.args.clone()],
                TtlAction::Replace(args) => vec![args],
                TtlAction::Append(extra) => {
                    let mut c = vec![request.args.clone()];
                    c.extend(extra);
                    c
                }
                TtlAction::Refuse(text) => return Ok(Pending::Ready(error_reply(&text))),
            };
            // The guard decides by the migrating keys; the others must then stay here.
            let guard_keys: Vec<Bytes> = keys
                .iter()
                .zip(&routes)
                .filter(|(_, r)| r.migration.is_some())
                .map(|(i, _)| request.args[*i].clone())
                .collect();
            let all_migrating = guard_keys.len() == keys.len();
            let script = spec.kind == Kind::Script;
            let how = Guarded {
                ask: all_migrating,
                script,
                read: !spec.write && !script && unchanged,
            };
            let reply =
                Box::pin(self.guarded(&router, m, &guard_keys, std::mem::take(&mut cmds), how))
                    .await?;
            router.categories[usize::from(category)].commands.inc();
            return Ok(Pending::Ready(reply));
        }
        if routes.iter().any(|r| r.target != target) {
            return cross();
        }
        let legacy = router.backend(target).legacy();
        let (bytes, replies) = match action {
            TtlAction::Unchanged => (wire(request), 1),
            TtlAction::Replace(args) => (bundle(&[args]), 1),
            TtlAction::Append(extra) => {
                let mut cmds = vec![request.args.clone()];
                cmds.extend(extra.into_iter().map(|c| ttl::for_server(c, legacy)));
                let n = cmds.len();
                (bundle(&cmds), n)
            }
            TtlAction::Refuse(text) => return Ok(Pending::Ready(error_reply(&text))),
        };
        self.forward(router, target, category, bytes, replies, ReadKind::None)
    }
}

/// Merges the replies of a split command in the client's key order.
async fn merge(
    split: Split,
    parts: Vec<(Vec<usize>, Part)>,
    total: usize,
    router: &Router,
    categories: &[CategoryId],
) -> Bytes {
    let mut values: Vec<Frame> = vec![Frame::Null; total];
    let mut sum = 0i64;
    for (members, part) in parts {
        let reply = match part {
            Part::Sent(rx) => backend_reply(rx.await.unwrap_or_else(|_| Err(lost())), true),
            Part::Done(b) => b,
        };
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
