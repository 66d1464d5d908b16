//! Where keys live (pure): each key through the routing table's [`Resolver`] — the one the
//! sidecar routes by — to its category, slot, the instance serving it now (the owner, its
//! failover instance, or the target of a migration) and the migration it is part of; drawn as
//! a short table or written as the `-o json` document.

use serde::{Deserialize, Serialize};

use crate::routing::slots::hash_tag;
use crate::routing::{Resolver, Route};

use crate::cli::term::{Cell, clean, write_table};

/// `schemaVersion` of the `-o json` document. New optional fields may be added without
/// bumping it; renaming or removing one bumps it.
pub const SCHEMA_VERSION: u32 = 1;

/// Where keys live by one policy's published routing table (the `-o json` document).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Answer {
    /// Format of this document; see [`SCHEMA_VERSION`].
    pub schema_version: u32,
    /// Namespace of the policy.
    pub namespace: String,
    /// The CachePolicy whose table was read.
    pub policy: String,
    /// Its routing ConfigMap.
    pub config_map: String,
    /// Version of the routing table read.
    pub routing_version: u64,
    /// One entry per key asked for, in the order asked.
    pub keys: Vec<KeyLocation>,
}

/// Where one key lives.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KeyLocation {
    /// The key.
    pub key: String,
    /// Its category: the longest matching key prefix, else the default category.
    pub category: String,
    /// Its slot (CRC16 of the key or of its hash tag, modulo 16384, as `CLUSTER KEYSLOT`).
    pub slot: u16,
    /// The part of the key that was hashed, when the key has a `{hash tag}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash_tag: Option<String>,
    /// The instance commands on the key go to now.
    pub instance: String,
    /// Its `host:port`, from the table.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// The owner of the slot in the table.
    pub owner: String,
    /// Why `instance` serves the key.
    pub state: KeyState,
    /// Set when the owner is failed over: its range is served by `instance` meanwhile.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failover: Option<Hop>,
    /// Set while the key's slot range migrates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub migrating: Option<Move>,
}

/// Why an instance serves a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum KeyState {
    /// The slot's owner serves it.
    Owner,
    /// The owner is unavailable; its failover instance serves the slot.
    FailedOver,
    /// The slot's range moves; commands go to the target (through the guard on the source).
    Migrating,
}

/// A failover: the unavailable owner and the instance serving its range meanwhile — or a
/// handover: the range's new owner, being seeded, and the instance serving it until the two
/// swap roles (`docs/replication.md`, "Moves that hand over").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hop {
    /// The owner.
    pub from: String,
    /// The instance serving meanwhile.
    pub to: String,
    /// A handover, not an outage.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub handover: bool,
}

/// A slot range in flight.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Move {
    /// The source.
    pub from: String,
    /// The target, which serves the key meanwhile.
    pub to: String,
    /// First slot of the range.
    pub start: u16,
    /// Last slot of the range (inclusive).
    pub end: u16,
    /// Table version at which the migration started.
    pub epoch: u64,
}

/// Where `key` lives by `resolver`'s table.
pub fn locate(resolver: &Resolver, key: &str) -> KeyLocation {
    let route: Route = resolver.resolve(key.as_bytes());
    let table = resolver.table();
    let name = |id| resolver.instance_name(id).to_owned();
    let (instance, owner) = (name(route.target), name(route.owner));
    let migrating = route
        .migration
        .and_then(|i| table.migrating.get(usize::from(i)))
        .map(|m| Move {
            from: m.from.clone(),
            to: m.to.clone(),
            start: m.start,
            end: m.end,
            epoch: m.epoch,
        });
    // The resolver sends a key elsewhere than its owner for a migration or a failover only.
    let category = &resolver.categories()[usize::from(route.category)].name;
    let failover = (migrating.is_none() && route.target != route.owner).then(|| Hop {
        from: owner.clone(),
        to: instance.clone(),
        handover: table.failover.iter().any(|f| {
            f.handover
                && f.category == *category
                && f.from == owner
                && (f.start..=f.end).contains(&route.slot)
        }),
    });
    let state = match (&failover, &migrating) {
        (_, Some(_)) => KeyState::Migrating,
        (Some(_), None) => KeyState::FailedOver,
        (None, None) => KeyState::Owner,
    };
    let hashed = hash_tag(key.as_bytes());
    KeyLocation {
        key: key.to_owned(),
        category: category.clone(),
        slot: route.slot,
        hash_tag: (hashed.len() != key.len()).then(|| String::from_utf8_lossy(hashed).into_owned()),
        address: table.instances.get(&instance).map(|e| e.address()),
        instance,
        owner,
        state,
        failover,
        migrating,
    }
}

/// The answer for `keys` by `resolver`'s table.
pub fn answer(
    resolver: &Resolver,
    namespace: &str,
    policy: &str,
    config_map: &str,
    keys: &[String],
) -> Answer {
    Answer {
        schema_version: SCHEMA_VERSION,
        namespace: namespace.to_owned(),
        policy: policy.to_owned(),
        config_map: config_map.to_owned(),
        routing_version: resolver.version(),
        keys: keys.iter().map(|k| locate(resolver, k)).collect(),
    }
}

/// The short table for people: a line naming the table read, then one row per key.
pub fn render(answer: &Answer) -> String {
    let mut out = format!(
        "policy {}/{} · routing v{} · ConfigMap {}\n",
        clean(&answer.namespace),
        clean(&answer.policy),
        answer.routing_version,
        clean(&answer.config_map),
    );
    let mut rows = vec![
        ["KEY", "CATEGORY", "SLOT", "INSTANCE", "STATE"]
            .map(Cell::plain)
            .to_vec(),
    ];
    for k in &answer.keys {
        let slot = match &k.hash_tag {
            Some(tag) => format!("{} {{{}}}", k.slot, clean(tag)),
            None => k.slot.to_string(),
        };
        let state = match (&k.failover, &k.migrating) {
            (_, Some(m)) => format!(
                "migrating {} → {} (slots {}-{}, since v{})",
                m.from, m.to, m.start, m.end, m.epoch
            ),
            (Some(f), None) if f.handover => {
                format!(
                    "handing over to {} (seeded, then the two swap roles)",
                    f.from
                )
            }
            (Some(f), None) => format!("failed over: {} unavailable", f.from),
            (None, None) => "owner".to_owned(),
        };
        rows.push(vec![
            Cell::plain(clean(&k.key)),
            Cell::plain(k.category.clone()),
            Cell::plain(slot),
            Cell::plain(k.instance.clone()),
            Cell::plain(state),
        ]);
    }
    write_table(&mut out, &rows, 0);
    out
}
