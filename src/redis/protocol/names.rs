//! The names redis-fleet gives its own keys and connections on an instance. Every key starts
//! with [`RESERVED_PREFIX`](crate::redis::keys::RESERVED_PREFIX); applications cannot touch
//! them through a sidecar. `<policy>` is the CachePolicy's `namespace/name`: one instance may
//! serve several policies, whose table versions are unrelated.

use bytes::Bytes;

use crate::routing::table::Migration;

/// Prefix of tombstones: a key in transit between two instances (renamed from `<key>`).
pub const TOMB_PREFIX: &[u8] = b"redisfleet:tomb:";

/// `redisfleet:tomb:<key>`.
pub fn tomb(key: &[u8]) -> Bytes {
    [TOMB_PREFIX, key].concat().into()
}

/// The key a tombstone stands for, if `tomb` is one.
pub fn key_of_tomb(tomb: &[u8]) -> Option<&[u8]> {
    tomb.strip_prefix(TOMB_PREFIX)
}

/// Hash: instance name → lowest table version allowed to use that instance.
pub fn fences(policy: &str) -> String {
    format!("redisfleet:fences:{policy}")
}

/// Sorted set: sidecar id → its last heartbeat (ms, the server's clock).
pub fn sidecars(policy: &str) -> String {
    format!("redisfleet:sidecars:{policy}")
}

/// Hash: sidecar id → the table version it routes by.
pub fn sidecar_versions(policy: &str) -> String {
    format!("redisfleet:sidecar-versions:{policy}")
}

/// Hash: sidecar id → how fast the instance answered it since its previous heartbeat there
/// (see [`LatencyReport`](super::heartbeat::LatencyReport)).
pub fn sidecar_latencies(policy: &str) -> String {
    format!("redisfleet:sidecar-latencies:{policy}")
}

/// Hash: sidecar id → the protocol features it speaks, space-separated (see
/// [`FEATURES`](super::heartbeat::FEATURES)); a sidecar of a release before features were
/// reported has no entry.
pub fn sidecar_features(policy: &str) -> String {
    format!("redisfleet:sidecar-features:{policy}")
}

/// String: the mover token of the Job attempt allowed to move keys (see
/// [`mover_token`]).
pub fn mover(policy: &str) -> String {
    format!("redisfleet:mover:{policy}")
}

/// List: keys a sidecar needs moved now (a command touched some moved and some unmoved keys).
pub fn urgent(policy: &str) -> String {
    format!("redisfleet:urgent:{policy}")
}

/// List: slot groups a sidecar needs moved whole now, named by their [`slot_group`] keys (a
/// script of a migrating range waits for them: `docs/protocol.md`, "Scripts").
pub fn urgent_groups(policy: &str) -> String {
    format!("redisfleet:urgent-groups:{policy}")
}

/// Slots per *slot group*: the unit a script's keys move in (`docs/protocol.md`, "Scripts").
/// A group state key per group that a plan touched, on its source: at most 1 024 per plan.
pub const SLOTS_PER_GROUP: u16 = 16;

/// The group of `slot`.
pub fn group_of(slot: u16) -> u16 {
    slot / SLOTS_PER_GROUP
}

/// What the names of plan `epoch`'s group states start with (`<prefix><group>`, and
/// `<prefix>all` for the plan's own state).
pub fn slot_group_prefix(policy: &str, epoch: u64) -> String {
    format!("redisfleet:group:{policy}:{epoch}:")
}

/// String, on a move's source: the state of slot group `group` in plan `epoch`'s moves out of
/// it. Absent: no key of the group's moving slots has left the source, or been written on a
/// target (scripts on it run on the source); [`GROUP_MOVING`]; [`GROUP_MOVED`]: every such key
/// is on its target, and none can come back.
pub fn slot_group(policy: &str, epoch: u64, group: u16) -> String {
    slot_group_in(&slot_group_prefix(policy, epoch), group)
}

/// [`slot_group`] from its plan's [`slot_group_prefix`].
pub fn slot_group_in(prefix: &str, group: u16) -> String {
    format!("{prefix}{group}")
}

/// [`slot_groups`] from its plan's [`slot_group_prefix`].
pub fn slot_groups_in(prefix: &str) -> String {
    format!("{prefix}all")
}

/// The group state key of `key`'s slot, from [`slot_group_prefix`].
pub fn slot_group_of_key(prefix: &str, key: &[u8]) -> Bytes {
    let slot = crate::routing::slots::key_slot(key);
    Bytes::from(format!("{prefix}{}", group_of(slot)))
}

/// The group state keys of `keys`' slots, from [`slot_group_prefix`]: each once, sorted by
/// group.
pub fn slot_group_states_of(prefix: &str, keys: &[Bytes]) -> Vec<Bytes> {
    let mut groups: Vec<u16> = keys
        .iter()
        .map(|k| group_of(crate::routing::slots::key_slot(k)))
        .collect();
    groups.sort_unstable();
    groups.dedup();
    groups
        .into_iter()
        .map(|g| Bytes::from(format!("{prefix}{g}")))
        .collect()
}

/// String, on a move's source: the state of every group of plan `epoch` at once —
/// [`GROUPS_OPEN`] (the Job keeps the groups' states: set before the source imports; absent,
/// a script decides by its declared keys, as a Job of an older version leaves it),
/// [`GROUPS_CLOSING`] (the copy is over: a group with no state counts as moving) or
/// [`GROUP_MOVED`] (every group moved).
pub fn slot_groups(policy: &str, epoch: u64) -> String {
    slot_groups_in(&slot_group_prefix(policy, epoch))
}

/// A group some of whose keys moved (or were written on the target). The guard's scripts spell
/// the three states out (`guard.rs`, `mover.rs`).
pub const GROUP_MOVING: &str = "moving";
/// A group all of whose keys moved.
pub const GROUP_MOVED: &str = "moved";
/// The Job keeps the states of the plan's groups.
pub const GROUPS_OPEN: &str = "open";
/// State that a group state (or the plan's) leaves as it is: any.
pub const KEEP_ANY: &str = "*";
/// The copy is over and the sweep runs: every group without a state counts as moving.
pub const GROUPS_CLOSING: &str = "closing";

/// The importing marker of one migrating range, on its source: once set, absent keys of the
/// range live on the target.
pub fn importing(policy: &str, m: &Migration) -> String {
    format!(
        "redisfleet:importing:{policy}:{}:{}:{}-{}",
        m.epoch, m.category, m.start, m.end
    )
}

/// The imported marker of one migrating range, on its target: set by the Job once the source
/// imports (and never for a move into a range the target served already), so a key the
/// target holds is the range's live copy of it. Sidecars read such keys there first.
pub fn imported(policy: &str, m: &Migration) -> String {
    format!(
        "redisfleet:imported:{policy}:{}:{}:{}-{}",
        m.epoch, m.category, m.start, m.end
    )
}

/// Where a big value is assembled on the target, piece by piece, before it is renamed into
/// place: one per mover token, so two movers never write into the same one.
pub fn restore_temp(token: u64, key: &[u8]) -> Bytes {
    [format!("redisfleet:restore:{token}:").as_bytes(), key]
        .concat()
        .into()
}

/// The mover token of a Job attempt: later plans and later attempts get larger tokens.
pub fn mover_token(plan: u64, attempt: u32) -> u64 {
    plan.saturating_mul(65_536)
        .saturating_add(u64::from(attempt.min(65_535)))
}

/// Prefix of the scan checkpoints a rebalance Job of `policy` keeps
/// (`redisfleet:checkpoint:<policy>:<plan>:…`, written by the Job's copy step).
pub fn checkpoint_prefix(policy: &str) -> String {
    format!("redisfleet:checkpoint:{policy}:")
}

/// Hash: slot → the writer epoch of an instance for that slot of `policy`'s replicated
/// categories — the highest table version a sidecar wrote the slot to it with (see
/// `replica.rs`).
pub fn writer_epoch(policy: &str) -> String {
    format!("redisfleet:writer-epoch:{policy}")
}

/// String: the counter a writer numbers its results with (see `replica.rs`).
pub fn version_counter(policy: &str) -> String {
    format!("redisfleet:version-counter:{policy}")
}

/// Set: the keys an application's script wrote on a replicated category, as its recorder
/// (`sidecar/scripts.rs`) lists them for the write script that runs after it (see
/// `replica.rs`); `token` is unique per script run.
pub fn script_writes(token: &str) -> String {
    debug_assert!(!token.is_empty());
    format!("redisfleet:script-writes:{token}")
}

/// Hash, one per slot: key → version of the last result applied to (or written on) this
/// instance for that key (see `replica.rs`).
pub fn applied_versions(policy: &str, slot: u16) -> String {
    format!("{}{slot}", applied_versions_prefix(policy))
}

/// [`applied_versions`] without its slot: a script that computes slots itself (the capture,
/// `replica.rs`) appends them.
pub fn applied_versions_prefix(policy: &str) -> String {
    format!("redisfleet:applied:{policy}:")
}

/// String: set on an instance when it starts to hold replicated data of `policy` (the seeding
/// of a replica, on the writer and the replica). An instance that should hold it and answers
/// without it lost what it held — it restarted empty or was flushed — and its replicated
/// ranges fail over to their replicas (`docs/replication.md`, "An instance that lost its
/// data").
pub fn holds(policy: &str) -> String {
    format!("redisfleet:holds:{policy}")
}

/// String, on the source of plan `epoch`'s moves into ranges their targets served already:
/// the source's roster (`roster.rs`), written once the Job counted its keys.
pub fn roster(policy: &str, epoch: u64) -> String {
    format!("redisfleet:roster:{policy}:{epoch}")
}

/// The keys of `policy` with fixed names, on each instance it uses: fences, sidecar
/// heartbeats, versions, latencies and features, the mover token, the urgent queue, a replicating writer's epoch
/// and counter, and the marker of replicated data.
pub fn policy_keys(policy: &str) -> Vec<String> {
    vec![
        fences(policy),
        sidecars(policy),
        sidecar_versions(policy),
        sidecar_latencies(policy),
        sidecar_features(policy),
        mover(policy),
        urgent(policy),
        urgent_groups(policy),
        writer_epoch(policy),
        version_counter(policy),
        holds(policy),
    ]
}

/// SCAN MATCH patterns of the other keys of `policy`: importing and imported markers, slot group states, rosters, the Jobs' scan
/// checkpoints and the replicas' applied versions. Each ends with `<policy>:*`, so it matches no other policy's keys (names hold
/// no `:`) and, under the reserved prefix, no application key. Tombstones and restore
/// temporaries are named after application keys, not policies: they are not among these.
pub fn policy_key_patterns(policy: &str) -> Vec<Vec<u8>> {
    [
        format!("redisfleet:importing:{policy}:"),
        format!("redisfleet:imported:{policy}:"),
        format!("redisfleet:group:{policy}:"),
        format!("redisfleet:roster:{policy}:"),
        checkpoint_prefix(policy),
        format!("redisfleet:applied:{policy}:"),
    ]
    .iter()
    .map(|p| crate::redis::keys::prefix_pattern(p.as_bytes()))
    .collect()
}

/// Prefix of the names of sidecar connections.
pub const CONNECTION_PREFIX: &str = "redisfleet:";

/// The name of a sidecar's connection: `redisfleet:<policy>:<sidecar id>:v<version>`. Names
/// may not contain spaces; any in the id are replaced.
pub fn connection_name(policy: &str, sidecar: &str, version: u64) -> String {
    let clean = |s: &str| s.replace([' ', '\n', '\r'], "_");
    format!(
        "{CONNECTION_PREFIX}{}:{}:v{version}",
        clean(policy),
        clean(sidecar)
    )
}

/// `(policy, version)` of a sidecar connection's name.
pub fn parse_connection_name(name: &str) -> Option<(&str, u64)> {
    let rest = name.strip_prefix(CONNECTION_PREFIX)?;
    let (head, version) = rest.rsplit_once(":v")?;
    let version = version.parse().ok()?;
    // `<namespace>/<name>:<sidecar id>`: the policy holds no ':' (Kubernetes names cannot).
    let (policy, _sidecar) = head.split_once(':')?;
    Some((policy, version))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_group_states_of_keys_name_each_group_once() {
        let prefix = "redisfleet:group:shop/shop:7:";
        // `{a}x` and `{a}y` share a slot; `b` lies in another group.
        let keys: Vec<Bytes> = ["{a}x", "b", "{a}y"]
            .iter()
            .map(|k| Bytes::from_static(k.as_bytes()))
            .collect();
        let mut each: Vec<Bytes> = keys.iter().map(|k| slot_group_of_key(prefix, k)).collect();
        each.sort_by_key(|s| {
            std::str::from_utf8(&s[prefix.len()..])
                .unwrap()
                .parse::<u16>()
                .unwrap()
        });
        each.dedup();
        assert_eq!(each.len(), 2);
        assert_eq!(slot_group_states_of(prefix, &keys), each);
        assert!(slot_group_states_of(prefix, &[]).is_empty());
    }

    #[test]
    fn connection_names_round_trip() {
        let n = connection_name("shop/shop", "app-7d9 c", 42);
        assert_eq!(n, "redisfleet:shop/shop:app-7d9_c:v42");
        assert_eq!(parse_connection_name(&n), Some(("shop/shop", 42)));
        // Sidecar ids may hold ':' and 'v'.
        let n = connection_name("a/b", "pod:v1", 7);
        assert_eq!(parse_connection_name(&n), Some(("a/b", 7)));
        assert_eq!(parse_connection_name("redisfleet-operator"), None);
        assert_eq!(parse_connection_name("redisfleet:a/b:x:vNaN"), None);
    }

    #[test]
    fn policy_keys_are_the_policys_own_and_nobody_elses() {
        let m = Migration {
            epoch: 3,
            category: "user".into(),
            start: 0,
            end: 99,
            from: "x".into(),
            to: "y".into(),
            target_serves: None,
        };
        let own = [
            fences("a/b"),
            sidecars("a/b"),
            sidecar_versions("a/b"),
            sidecar_latencies("a/b"),
            sidecar_features("a/b"),
            mover("a/b"),
            urgent("a/b"),
            urgent_groups("a/b"),
            writer_epoch("a/b"),
            version_counter("a/b"),
            holds("a/b"),
        ];
        assert_eq!(policy_keys("a/b"), own);
        let patterns = policy_key_patterns("a/b");
        let matches = |key: &str| {
            patterns.iter().any(|p| {
                let prefix = p.strip_suffix(b"*").unwrap();
                key.as_bytes().starts_with(prefix)
            })
        };
        assert!(matches(&importing("a/b", &m)));
        assert!(matches(&imported("a/b", &m)));
        assert!(!matches(&imported("a/bc", &m)));
        assert!(matches("redisfleet:checkpoint:a/b:7:user:0-99:x:y"));
        assert!(matches(&applied_versions("a/b", 16383)));
        assert!(matches(&slot_group("a/b", 7, 1023)));
        assert!(matches(&slot_groups("a/b", 7)));
        assert!(!matches(&slot_group("a/bc", 7, 0)));
        assert!(matches(&roster("a/b", 7)));
        assert!(!matches(&roster("a/bc", 7)));
        assert!(!matches(&applied_versions("a/bc", 0)));
        // Another policy whose name extends this one's, and application keys, never match.
        assert!(!matches(&importing("a/bc", &m)));
        assert!(!matches("redisfleet:checkpoint:a/bc:7:user:0-99:x:y"));
        assert!(!matches("importing:a/b:1"));
        assert!(!matches(&String::from_utf8_lossy(&tomb(b"a/b:1"))));
        assert!(policy_keys("a/bc").iter().all(|k| !own.contains(k)));
        for p in &patterns {
            assert!(p.starts_with(crate::redis::keys::RESERVED_PREFIX));
        }
    }

    #[test]
    fn tokens_grow_with_plan_and_attempt() {
        assert!(mover_token(10, 2) > mover_token(10, 1));
        assert!(mover_token(11, 1) > mover_token(10, 4));
        assert_eq!(key_of_tomb(&tomb(b"user:1")), Some(b"user:1".as_slice()));
        assert!(tomb(b"k").starts_with(crate::redis::keys::RESERVED_PREFIX));
    }
}
