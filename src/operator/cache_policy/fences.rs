//! The operator's part of the data protocol (`docs/protocol.md`): fences it raises around
//! failovers, and how it stops a rebalance whose Job must not act any more.
//!
//! - Before it publishes a failover of an instance, it records the instance's fence — the
//!   version about to be published — on every other reachable instance (the *failover
//!   notice*), so a sidecar that missed the failover cannot write to the instance when it
//!   comes back: sidecars hear every instance's fences before they use a reconnected one.
//! - While a failed-over instance answers again, it raises the fence on the instance itself
//!   and closes the connections of older tables there.
//! - To stop a plan, it raises the policy's mover token on the instances the plan moves data
//!   between to the highest token of that plan: no attempt of it can change anything after.

use std::sync::Arc;
use std::time::Duration;

use kube::ResourceExt;
use kube::runtime::reflector::ObjectRef;
use tracing::{info, warn};

use crate::api::redis_instance::RedisInstance;
use crate::operator::context::Context;
use crate::redis::connect::redact;
use crate::redis::endpoint::{self, endpoint_of};
use crate::redis::keys::{in_ranges, prefix_pattern};
use crate::redis::protocol::mover::{self, MoveError};
use crate::redis::protocol::{fence, names};
use crate::redis::serial::SerialConnection;
use crate::routing::keyspace::{CategoryId, Resolver};
use crate::routing::slots::SlotRange;
use crate::routing::table::InstanceEndpoint;

/// How the operator reaches an instance: its name (which keys the kept connection), where it
/// is, and how long to wait for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Place {
    /// The RedisInstance's name.
    pub name: String,
    /// Host, port, TLS and credentials (Secret references).
    pub endpoint: InstanceEndpoint,
    /// How long to wait for it to connect and answer.
    pub timeout: Duration,
}

impl Place {
    /// Where `ri` of `namespace` is, as its spec says.
    pub fn of(ri: &RedisInstance, namespace: &str) -> Self {
        Self {
            name: ri.name_any(),
            endpoint: endpoint_of(ri, namespace),
            timeout: ri.spec.health.timeout.get().max(Duration::from_millis(500)),
        }
    }

    /// Where a routing table said instance `name` is (its RedisInstance may be gone).
    pub fn named_by(name: &str, endpoint: &InstanceEndpoint) -> Self {
        Self {
            name: name.to_owned(),
            endpoint: endpoint.clone(),
            timeout: Duration::from_secs(1),
        }
    }

    /// The key of its kept connection.
    pub fn reference(&self, namespace: &str) -> ObjectRef<RedisInstance> {
        ObjectRef::new(&self.name).within(namespace)
    }
}

/// A connection to `ri`, kept between reconciles; errors carry no credentials.
pub async fn connect(
    ctx: &Context,
    namespace: &str,
    ri: &RedisInstance,
) -> Result<SerialConnection, String> {
    connect_to(ctx, namespace, &Place::of(ri, namespace)).await
}

/// A connection to the instance at `place`, kept between reconciles; errors carry no
/// credentials.
pub async fn connect_to(
    ctx: &Context,
    namespace: &str,
    place: &Place,
) -> Result<SerialConnection, String> {
    let target = endpoint::target(&place.endpoint, &ctx.secrets.in_namespace(namespace))
        .await
        .map_err(|e| e.to_string())?;
    ctx.connections
        .connection(&place.reference(namespace), &target, place.timeout)
        .await
        .map_err(|e| redact(&e, &target.credentials))
}

/// Whether `ri` answers a PING within its health timeout, now.
pub async fn answers(ctx: &Context, namespace: &str, ri: &RedisInstance) -> bool {
    let Ok(mut conn) = connect(ctx, namespace, ri).await else {
        return false;
    };
    let timeout = ri.spec.health.timeout.get().max(Duration::from_millis(200));
    let cmd = redis::cmd("PING");
    let ping = cmd.query_async::<String>(&mut conn);
    match tokio::time::timeout(timeout, ping).await {
        Ok(Ok(_)) => true,
        _ => {
            ctx.connections.drop_connection(&ObjectRef::from_obj(ri));
            false
        }
    }
}

fn notices(ctx: &Context) -> std::sync::MutexGuard<'_, std::collections::BTreeMap<String, u64>> {
    ctx.notices
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Remembers that an instance of `policy` may be fenced at `version` ([`unpublished_notice`]);
/// returns the highest version remembered.
fn remember_notice(ctx: &Context, policy: &str, version: u64) -> u64 {
    let mut n = notices(ctx);
    let v = n.entry(policy.to_owned()).or_insert(0);
    *v = (*v).max(version);
    *v
}

/// The version a failover notice fenced an instance of `policy` at, when no table at that
/// version went out (`published` is below it): the reconcile that raised it stopped before its
/// table was written (an API error, the operator killed). Should that instance answer again,
/// the table it builds is the published one, and without a new version every sidecar stays
/// fenced off the instance. The first time this process asks for a policy, it reads the
/// fences on every instance of `selected` that answers (an earlier process's notice).
pub async fn unpublished_notice(
    ctx: &Context,
    namespace: &str,
    policy: &str,
    selected: &[Arc<RedisInstance>],
    published: u64,
) -> Option<u64> {
    let known = notices(ctx).get(policy).copied();
    let highest = match known {
        Some(v) => v,
        None => {
            let found = read_fences(ctx, namespace, policy, selected).await?;
            remember_notice(ctx, policy, found)
        }
    };
    (highest > published).then_some(highest)
}

/// Instances whose fences are read at once.
const FENCE_READS_AT_ONCE: usize = 16;

/// How long the read of every instance's fences may take.
const FENCE_READ_DEADLINE: Duration = Duration::from_secs(5);

/// The highest fence of `policy` on the instances of `selected` that answer (those found
/// unreachable are not asked), or `None` when none answered (the read is to be tried again).
async fn read_fences(
    ctx: &Context,
    namespace: &str,
    policy: &str,
    selected: &[Arc<RedisInstance>],
) -> Option<u64> {
    use futures::StreamExt;
    let mut reads: Vec<futures::future::BoxFuture<'_, Option<u64>>> = Vec::new();
    for ri in selected {
        let phase = ri.status.as_ref().and_then(|s| s.phase);
        if phase == Some(crate::api::redis_instance::InstancePhase::Unreachable) {
            continue;
        }
        let timeout = ri.spec.health.timeout.get().max(Duration::from_millis(500));
        reads.push(Box::pin(async move {
            let read = async {
                let mut conn = connect(ctx, namespace, ri).await?;
                fence::read(&mut conn, policy)
                    .await
                    .map_err(|e| e.to_string())
            };
            match tokio::time::timeout(timeout, read).await {
                Ok(Ok(fences)) => Some(fences.values().copied().max().unwrap_or(0)),
                _ => None,
            }
        }));
    }
    // What answered by the deadline counts; an instance that did not is left out.
    let answers: Vec<Option<u64>> = futures::stream::iter(reads)
        .buffer_unordered(FENCE_READS_AT_ONCE)
        .take_until(tokio::time::sleep(FENCE_READ_DEADLINE))
        .collect()
        .await;
    answers.into_iter().flatten().max()
}

/// Raises the fences `raise` (instance → version) of `policy` on every instance of
/// `selected` that answers; how many recorded them. The highest is remembered until a table
/// at that version goes out ([`unpublished_notice`]).
pub async fn notify(
    ctx: &Context,
    namespace: &str,
    policy: &str,
    selected: &[Arc<RedisInstance>],
    raise: &[(String, u64)],
) -> usize {
    if let Some(highest) = raise.iter().map(|(_, v)| *v).max() {
        remember_notice(ctx, policy, highest);
    }
    let mut recorded = 0;
    for ri in selected {
        let name = ri.name_any();
        // The instances being fenced are not asked: most are unreachable, and a frozen server
        // would hold the notice (and the failover) up for as long as it stays frozen. One that
        // lost its data answers; its own fence is raised once the table is out.
        if raise.iter().any(|(n, _)| *n == name) {
            continue;
        }
        let timeout = ri.spec.health.timeout.get().max(Duration::from_millis(500));
        let attempt = async {
            let mut conn = connect(ctx, namespace, ri).await?;
            fence::raise(&mut conn, policy, raise)
                .await
                .map_err(|e| e.to_string())
        };
        match tokio::time::timeout(timeout, attempt).await {
            Ok(Ok(_)) => recorded += 1,
            Ok(Err(e)) => {
                ctx.connections.drop_connection(&ObjectRef::from_obj(&**ri));
                warn!(instance = %name, error = %e, "could not record fences");
            }
            Err(_) => {
                ctx.connections.drop_connection(&ObjectRef::from_obj(&**ri));
                warn!(instance = %name, "could not record fences: no answer in time");
            }
        }
    }
    recorded
}

/// Raises `ri`'s own fence to `version` on it and closes the connections of older tables
/// there (a failed-over instance that answers again, an instance that left the policy).
pub async fn fence_returning(
    ctx: &Context,
    namespace: &str,
    policy: &str,
    ri: &RedisInstance,
    version: u64,
) -> Result<(), String> {
    fence_on_itself(ctx, namespace, policy, &Place::of(ri, namespace), version).await
}

/// Raises the fence of the instance at `place` to `version` on itself, and closes the
/// connections of older tables there.
pub async fn fence_on_itself(
    ctx: &Context,
    namespace: &str,
    policy: &str,
    place: &Place,
    version: u64,
) -> Result<(), String> {
    let mut conn = connect_to(ctx, namespace, place).await?;
    raise_own_fence(&mut conn, policy, &place.name, version).await
}

/// Raises the fence of instance `name` to `version` on it (`conn`), and closes the
/// connections of older tables there.
pub(super) async fn raise_own_fence(
    conn: &mut (impl redis::aio::ConnectionLike + Send),
    policy: &str,
    name: &str,
    version: u64,
) -> Result<(), String> {
    fence::raise(conn, policy, &[(name.to_owned(), version)])
        .await
        .map_err(|e| e.to_string())?;
    let closed = fence::close_older_connections(conn, policy, version)
        .await
        .map_err(|e| e.to_string())?;
    if closed > 0 {
        info!(instance = %name, closed, version, "closed connections of routing tables older than the instance's fence");
    }
    Ok(())
}

/// Fences the server of a failover that is about to end by swapping roles on itself at
/// `version`, the version the table that ends it will have at least
/// (`docs/replication.md`, "Failback by swapping roles"), within `ri`'s health timeout. Once
/// the instance is connected (the raise may reach it from then on), the fence is remembered as
/// a failover notice is ([`unpublished_notice`]): should that table not go out, the next one
/// goes out at that version, or every sidecar would stay fenced off the instance. One that
/// cannot be reached records nothing, so it does not make every later table a new version.
pub async fn fence_for_swap(
    ctx: &Context,
    namespace: &str,
    policy: &str,
    ri: &RedisInstance,
    version: u64,
) -> Result<(), String> {
    let place = Place::of(ri, namespace);
    let fence = async {
        let mut conn = connect_to(ctx, namespace, &place).await?;
        remember_notice(ctx, policy, version);
        raise_own_fence(&mut conn, policy, &place.name, version).await
    };
    match tokio::time::timeout(place.timeout, fence).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => {
            ctx.connections.drop_connection(&ObjectRef::from_obj(ri));
            Err(e)
        }
        Err(_) => {
            ctx.connections.drop_connection(&ObjectRef::from_obj(ri));
            Err(format!("no answer within {:?}", place.timeout))
        }
    }
}

/// The operator's mover for `plan`: the highest token of the plan, above every attempt.
pub fn operator_mover(policy: &str, plan: i64) -> mover::Mover {
    mover::Mover {
        policy: policy.to_owned(),
        token: names::mover_token(u64::try_from(plan).unwrap_or_default(), u32::MAX),
    }
}

/// The mover of attempt `attempt` of `plan`: claimed by the operator before that attempt's
/// Job starts, it fences every earlier attempt off and leaves that attempt (which claims the
/// same token) in charge.
pub fn attempt_mover(policy: &str, plan: i64, attempt: i32) -> mover::Mover {
    mover::Mover {
        policy: policy.to_owned(),
        token: names::mover_token(
            u64::try_from(plan).unwrap_or_default(),
            u32::try_from(attempt).unwrap_or_default(),
        ),
    }
}

/// Raises the mover token on `ri` to `mover`'s; a newer token already there is fine (older
/// attempts are fenced off either way).
pub async fn claim(
    ctx: &Context,
    namespace: &str,
    mover: &mover::Mover,
    ri: &RedisInstance,
) -> Result<(), String> {
    let mut conn = connect(ctx, namespace, ri).await?;
    match mover.claim(&mut conn).await {
        // A newer plan holds the token: this one's Jobs are fenced off already.
        Ok(()) | Err(MoveError::Fenced) => Ok(()),
        Err(e) => Err(e.to_string()),
    }
}

/// Whether the importing marker `marker` is set on `ri`.
pub async fn importing(
    ctx: &Context,
    namespace: &str,
    ri: &RedisInstance,
    marker: &str,
) -> Result<bool, String> {
    let mut conn = connect(ctx, namespace, ri).await?;
    redis::cmd("EXISTS")
        .arg(marker)
        .query_async::<i64>(&mut conn)
        .await
        .map(|n| n == 1)
        .map_err(|e| e.to_string())
}

/// Whether a move abandoned for its dead target gives its range back to its source, by the
/// source's importing marker (`None`: not importing yet, nothing moved).
fn source_takes_back(marker: Option<&str>) -> bool {
    marker.is_none_or(|v| !v.ends_with(mover::TARGET_SERVES))
}

/// Deletes a marker if it still holds the value read (KEYS: marker; ARGV: value).
const UNMARK_IF_SCRIPT: &str = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end\nreturn 0\n";
static UNMARK_IF: std::sync::LazyLock<redis::Script> =
    std::sync::LazyLock::new(|| redis::Script::new(UNMARK_IF_SCRIPT));

/// Removes the importing marker `marker` of a move whose range a published table gave back
/// to its source `ri` (its target died), so that the source serves the range again through
/// the guard too — unless the move went into a range its target served already
/// (`…:target-serves`): that source (a draining instance) never held the range's live data,
/// so its marker stays and the guard keeps sending the range's commands on rather than
/// answering from its old copies. `Ok(false)` then, or when there is no marker.
///
/// No mover token: the move is in no plan any more, and the attempt that had it was fenced
/// off every live end before the table was published (`abandon_dead_ends`), so nothing can
/// set the marker again.
pub async fn unmark(
    ctx: &Context,
    namespace: &str,
    ri: &RedisInstance,
    marker: &str,
) -> Result<bool, String> {
    let mut conn = connect(ctx, namespace, ri).await?;
    let value: Option<String> = redis::cmd("GET")
        .arg(marker)
        .query_async(&mut conn)
        .await
        .map_err(|e| e.to_string())?;
    let Some(value) = value.filter(|v| source_takes_back(Some(v))) else {
        return Ok(false);
    };
    let deleted: i64 = UNMARK_IF
        .key(marker)
        .arg(value)
        .invoke_async(&mut conn)
        .await
        .map_err(|e| e.to_string())?;
    Ok(deleted == 1)
}

/// One move given up for its dead target, as its source sees it: the importing marker, and the
/// category and range whose keys in transit go back.
#[derive(Debug, Clone)]
pub struct GivenBack {
    /// The move's importing marker on the source.
    pub marker: String,
    /// The range's category.
    pub category: CategoryId,
    /// The range.
    pub range: SlotRange,
}

/// Gives the keys that moves whose target died had in transit back to their source `ri`
/// (`docs/protocol.md`, "Failover and failback", step 2), before the table that gives the
/// ranges back is published: each tombstone of a key of a move's range is renamed back to its
/// key, or dropped if the key exists (`mover::GIVE_BACK_SCRIPT`). A first call per move raises
/// the mover token to `mover`'s, so no attempt takes a key out of the source after the scan
/// began, and reads the marker: nothing goes back to a source that never imported (nothing is
/// in transit) or whose move went into a range its target served already. One scan of the
/// source serves all its moves. Replies how many keys came back.
pub async fn give_back_transit(
    ctx: &Context,
    namespace: &str,
    ri: &RedisInstance,
    mover: &mover::Mover,
    resolver: &Resolver,
    moves: &[GivenBack],
) -> Result<u64, String> {
    let mut conn = connect(ctx, namespace, ri).await?;
    let failed = |e: MoveError| {
        ctx.connections.drop_connection(&ObjectRef::from_obj(ri));
        e.to_string()
    };
    let mut taking_back = Vec::new();
    for m in moves {
        if mover
            .give_back(&mut conn, &m.marker, &[])
            .await
            .map_err(failed)?
            .is_some()
        {
            taking_back.push(m);
        }
    }
    if taking_back.is_empty() {
        return Ok(0);
    }
    let pattern = prefix_pattern(names::TOMB_PREFIX);
    let (mut cursor, mut back) = (0u64, 0u64);
    loop {
        let (next, batch) = crate::redis::keys::scan_page(
            &mut conn,
            cursor,
            &pattern,
            crate::redis::keys::SCAN_COUNT,
        )
        .await
        .map_err(|e| failed(MoveError::Server(e.to_string())))?;
        let mut by_move: Vec<Vec<bytes::Bytes>> = vec![Vec::new(); taking_back.len()];
        for key in batch.iter().filter_map(|tomb| names::key_of_tomb(tomb)) {
            if let Some(i) = taking_back
                .iter()
                .position(|m| in_ranges(resolver, m.category, &[m.range], key))
            {
                by_move[i].push(bytes::Bytes::copy_from_slice(key));
            }
        }
        for (m, keys) in taking_back.iter().zip(&by_move) {
            for chunk in keys.chunks(500) {
                back += mover
                    .give_back(&mut conn, &m.marker, chunk)
                    .await
                    .map_err(failed)?
                    .unwrap_or(0);
            }
        }
        if next == 0 {
            return Ok(back);
        }
        cursor = next;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_source_that_held_the_live_data_takes_its_range_back() {
        // Chaos seed 10 (180 s): a draining instance's move into a range its target served
        // lost its target; the marker was removed and the guard answered from the draining
        // instance's old copies (Absent) until the failover was published.
        assert!(source_takes_back(None));
        assert!(source_takes_back(Some("1310721")));
        assert!(!source_takes_back(Some(&format!(
            "1310721{}",
            mover::TARGET_SERVES
        ))));
    }
}
