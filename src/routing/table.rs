//! The routing table (`routing.json` in the routing ConfigMap): the one contract between the
//! operator that writes it, the sidecars that route by it and the rebalance Jobs that move
//! data by it.
//!
//! Compatibility: readers refuse a `schemaVersion` they do not know; new optional fields may
//! be added without bumping it. This build writes schema 2 and reads 1 and 2 (the serialized
//! forms are in [`super::encoding`]; the type here is the same for both). The table never
//! contains credentials, only the *names* of the Secrets that hold them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::slots::{MAX_SLOT, SLOT_COUNT, SlotRange};

/// The `schemaVersion` this build writes (2: compact slot runs, gzip'ed in the ConfigMap). The
/// serialized forms, and the schemas this build reads, are in `routing/encoding.rs`, which
/// also implements [`RoutingTable::from_json`] and [`RoutingTable::to_json`].
pub const SCHEMA_VERSION: u32 = 2;

/// ConfigMap data key holding the table.
pub const TABLE_KEY: &str = "routing.json";

/// ConfigMap annotation carrying the table version.
pub const VERSION_ANNOTATION: &str = "redisfleet.io/routing-version";

/// The routing table of one CachePolicy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RoutingTable {
    /// Format of this document; see [`SCHEMA_VERSION`]: the schema it was read in, and the
    /// one [`RoutingTable::to_json`] writes.
    pub schema_version: u32,
    /// Increases by one on every change of the content; also the fencing token of the
    /// operator's decisions (a Job or sidecar acting on an older version is behind).
    pub version: u64,
    /// `<namespace>/<name>` of the CachePolicy.
    pub policy: String,
    /// Instances that own or serve slots, by RedisInstance name.
    pub instances: BTreeMap<String, InstanceEndpoint>,
    /// Categories in spec order; the default category (keys matching no prefix) is last and
    /// has no prefixes.
    pub categories: Vec<Category>,
    /// Slot ranges being moved by a rebalance (see the migration protocol).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub migrating: Vec<Migration>,
    /// Slot ranges served by a fallback instance while their owner is unreachable.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failover: Vec<Failover>,
    /// The distinct placement bases (candidate → share) categories were placed for; a
    /// category refers to one by index. Shared, because categories of one tier have the same.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub placement_bases: Vec<BTreeMap<String, u64>>,
    /// The balancing strategy the categories were placed by (`Smart`, `ConsistentHash`,
    /// `Pinned`); when the policy's changes, every category is placed afresh.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strategy: Option<String>,
}

/// How to reach an instance. Credentials are referenced, never embedded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InstanceEndpoint {
    /// Host name or IP.
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// TLS settings; absent means plain TCP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsSettings>,
    /// Secret key holding the ACL user name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username_secret: Option<SecretKeyName>,
    /// Secret key holding the password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_secret: Option<SecretKeyName>,
}

impl InstanceEndpoint {
    /// `host:port`.
    pub fn address(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

/// TLS settings of an instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TlsSettings {
    /// Secret key holding the PEM CA bundle; absent: system roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_secret: Option<SecretKeyName>,
    /// Skip certificate verification (testing only).
    #[serde(default)]
    pub insecure_skip_verify: bool,
}

/// A key of a Secret in the policy's namespace.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SecretKeyName {
    /// Secret name.
    pub name: String,
    /// Key within the Secret.
    pub key: String,
}

/// One category: its prefixes, TTL rules and who owns which slot.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Category {
    /// Category name (`default` for keys matching no prefix).
    pub name: String,
    /// Key prefixes; empty for the default category.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub prefixes: Vec<String>,
    /// TTL rules applied by the sidecar.
    #[serde(default, skip_serializing_if = "TtlRules::is_empty")]
    pub ttl: TtlRules,
    /// Owner of every slot, as `[start, end, instance]` runs covering 0..=16383 in order.
    pub slots: Vec<SlotOwner>,
    /// Index in [`RoutingTable::placement_bases`] of the candidates (name → share) this
    /// category's placement was computed for. The operator re-places slots only when these
    /// change, so rebalance decisions recorded in the table are not undone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub placement_basis: Option<usize>,
    /// Where the category's writes are replicated, if they are (`docs/replication.md`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replication: Option<CategoryReplication>,
}

/// How a category's writes reach a replica (`docs/replication.md`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CategoryReplication {
    /// When a write is acknowledged.
    pub mode: ReplicationMode,
    /// The replica of each slot that has one, as `[start, end, instance]` runs in slot order;
    /// slots outside every run have none.
    #[serde(default)]
    pub replicas: Vec<SlotOwner>,
    /// The runs of `replicas` whose replica is still being seeded (the operator copies what
    /// the writer held before the replica was named), in slot order. Sidecars write to them
    /// like to any replica; the operator reads this back to know what is left to seed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub seeding: Vec<SlotOwner>,
    /// The seeded replica that a run of `seeding` replaces (its instance drains, or stopped
    /// being a candidate), kept until the new one is seeded, in slot order: sidecars write to
    /// it as to `replicas`, and a failover meanwhile promotes it (never the half-seeded new
    /// one), so the range is never without a full copy (`docs/replication.md`, "Moving
    /// replicas").
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub outgoing: Vec<SlotOwner>,
}

impl CategoryReplication {
    /// The runs of `replicas` whose replica is seeded: named, and not listed as seeding.
    pub fn seeded(&self) -> Vec<(SlotRange, &str)> {
        self.replicas
            .iter()
            .flat_map(|run| {
                let busy: Vec<SlotRange> = self
                    .seeding
                    .iter()
                    .filter(|s| s.instance == run.instance)
                    .map(|s| s.range)
                    .collect();
                run.range
                    .minus(&busy)
                    .into_iter()
                    .map(move |range| (range, run.instance.as_str()))
            })
            .collect()
    }
}

/// When a replicated write is acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReplicationMode {
    /// Once the writer ran it; the replica follows.
    Async,
    /// Once the writer ran it and the replica has its result.
    Sync,
}

/// TTL rules of a category, in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TtlRules {
    /// Expiry given to writes that set none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_ms: Option<u64>,
    /// Longest expiry allowed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_ms: Option<u64>,
    /// Extend the TTL of frequently read keys up to `max_ms`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub adaptive: bool,
}

impl TtlRules {
    /// No rule at all.
    pub fn is_empty(&self) -> bool {
        self.default_ms.is_none() && self.max_ms.is_none() && !self.adaptive
    }
}

/// `[start, end, instance]`: slots `start..=end` live on `instance`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "(u16, u16, String)", into = "(u16, u16, String)")]
pub struct SlotOwner {
    /// The slots.
    pub range: SlotRange,
    /// RedisInstance name.
    pub instance: String,
}

impl From<(u16, u16, String)> for SlotOwner {
    fn from((start, end, instance): (u16, u16, String)) -> Self {
        Self {
            range: SlotRange::new(start, end),
            instance,
        }
    }
}

impl From<SlotOwner> for (u16, u16, String) {
    fn from(o: SlotOwner) -> Self {
        (o.range.start, o.range.end, o.instance)
    }
}

/// A slot range in flight from one instance to another.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Migration {
    /// Category name.
    pub category: String,
    /// First slot.
    pub start: u16,
    /// Last slot (inclusive).
    pub end: u16,
    /// Current owner (the source).
    pub from: String,
    /// Future owner (the target); commands go here once the range is migrating.
    pub to: String,
    /// Table version at which the migration was flipped on.
    pub epoch: u64,
    /// Whether the target served the range already in the table the plan started from (a
    /// draining instance emptied into the range's owner), as opposed to a failback (the
    /// owner takes its range back from the instance that served it while it was away),
    /// whose flip table looks the same. Absent in the tables of older operators.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_serves: Option<bool>,
}

impl Migration {
    /// The slots.
    pub fn range(&self) -> SlotRange {
        SlotRange::new(self.start, self.end)
    }

    /// Whether `other` is the same move of the same plan (what it records aside).
    pub fn same_move(&self, other: &Migration) -> bool {
        self.same_range_and_ends(other) && self.epoch == other.epoch
    }

    /// Whether `other` moves the same slots of the same category between the same instances,
    /// whatever plan it belongs to.
    pub fn same_range_and_ends(&self, other: &Migration) -> bool {
        (&self.category, self.start, self.end, &self.from, &self.to)
            == (
                &other.category,
                other.start,
                other.end,
                &other.from,
                &other.to,
            )
    }
}

/// A slot range served by a fallback instance while its owner is unreachable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Failover {
    /// Category name.
    pub category: String,
    /// First slot.
    pub start: u16,
    /// Last slot (inclusive).
    pub end: u16,
    /// The unreachable owner — or, for a handover, the range's new owner, being seeded.
    pub from: String,
    /// The instance serving the range meanwhile.
    pub to: String,
    /// Not an outage: a move of a replicated range from `to` to `from` that hands the
    /// range over by swapping roles (`docs/replication.md`, "Moves that hand over"). `to`
    /// serves the range as before, while `from`, its owner from now on, is seeded as a third
    /// copy; no sidecar was ever told to write the range to `from`, so no failover notice or
    /// fence of `from` goes with it. While one lasts, the table names its category's mode
    /// `sync`, whatever the policy says.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub handover: bool,
}

impl Failover {
    /// The slots.
    pub fn range(&self) -> SlotRange {
        SlotRange::new(self.start, self.end)
    }

    /// Whether a move of `range` of `category` from `from` to `to` gives some of these slots
    /// back: a failback, from the fallback to the instance that failed.
    pub fn given_back_by(&self, category: &str, range: SlotRange, from: &str, to: &str) -> bool {
        self.category == category
            && self.to == from
            && self.from == to
            && self.range().overlaps(&range)
    }
}

/// Why a table cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TableError {
    #[error("routing table schemaVersion {0} is not supported (this build reads 1 and 2)")]
    UnsupportedSchema(u32),
    #[error("routing table is not valid JSON: {0}")]
    Json(String),
    #[error("category {category:?}: slots do not cover 0..=16383 exactly once ({detail})")]
    SlotCoverage { category: String, detail: String },
    #[error("{context} refers to unknown instance {instance:?}")]
    UnknownInstance { context: String, instance: String },
    #[error("{context} refers to unknown category {category:?}")]
    UnknownCategory { context: String, category: String },
    #[error("category names must be unique: {0:?} appears twice")]
    DuplicateCategory(String),
    #[error("key prefix {prefix:?} belongs to both {first:?} and {second:?}")]
    SharedPrefix {
        prefix: String,
        first: String,
        second: String,
    },
    #[error("exactly one category (the default, last) must have no prefixes")]
    DefaultCategory,
    #[error("category {0:?} refers to a placement basis that does not exist")]
    UnknownBasis(String),
    #[error("{context}: slot range {start}-{end} is invalid")]
    BadRange {
        context: String,
        start: u16,
        end: u16,
    },
}

impl RoutingTable {
    /// Whether `instance` owns a slot of any category.
    pub fn owns_any(&self, instance: &str) -> bool {
        self.categories
            .iter()
            .any(|c| c.slots.iter().any(|o| o.instance == instance))
    }

    /// Whether any category names `instance` a replica (seeding, seeded or outgoing) of a slot.
    pub fn replicates_on(&self, instance: &str) -> bool {
        self.categories
            .iter()
            .filter_map(|c| c.replication.as_ref())
            .any(|r| {
                r.replicas
                    .iter()
                    .chain(&r.outgoing)
                    .any(|o| o.instance == instance)
            })
    }

    /// Whether the table gives `instance` nothing to serve or keep: no slot, no replica, no
    /// failover of a dead owner's ranges. A draining instance of which this holds is emptied by
    /// moving every key it holds into the owners (a legacy Redis).
    pub fn serves_nothing(&self, instance: &str) -> bool {
        !self.owns_any(instance)
            && !self.replicates_on(instance)
            && !self.failover.iter().any(|f| f.to == instance)
    }

    /// A hash of the content, ignoring `version` and the schema: equal content, equal hash.
    pub fn content_hash(&self) -> String {
        let mut unversioned = self.clone();
        unversioned.version = 0;
        unversioned.schema_version = SCHEMA_VERSION;
        format!("{:016x}", fnv1a64(unversioned.to_json().as_bytes()))
    }

    /// The category called `name`.
    pub fn category(&self, name: &str) -> Option<&Category> {
        self.categories.iter().find(|c| c.name == name)
    }

    /// The placement basis (candidate → share) of `category`; empty when unrecorded.
    pub fn basis(&self, category: &Category) -> BTreeMap<String, u64> {
        category
            .placement_basis
            .and_then(|i| self.placement_bases.get(i))
            .cloned()
            .unwrap_or_default()
    }

    /// Records `basis` for the category at `index`, sharing an identical basis if present.
    pub fn set_basis(&mut self, index: usize, basis: BTreeMap<String, u64>) {
        let position = match self.placement_bases.iter().position(|b| *b == basis) {
            Some(p) => p,
            None => {
                self.placement_bases.push(basis);
                self.placement_bases.len() - 1
            }
        };
        if let Some(c) = self.categories.get_mut(index) {
            c.placement_basis = Some(position);
        }
    }

    /// Checks the invariants every reader relies on.
    pub fn validate(&self) -> Result<(), TableError> {
        let mut seen_names = std::collections::HashSet::new();
        let mut prefix_owner: BTreeMap<&str, &str> = BTreeMap::new();
        let defaults = self
            .categories
            .iter()
            .filter(|c| c.prefixes.is_empty())
            .count();
        if defaults != 1
            || self
                .categories
                .last()
                .is_none_or(|c| !c.prefixes.is_empty())
        {
            return Err(TableError::DefaultCategory);
        }
        for cat in &self.categories {
            if cat
                .placement_basis
                .is_some_and(|i| i >= self.placement_bases.len())
            {
                return Err(TableError::UnknownBasis(cat.name.clone()));
            }
            if !seen_names.insert(cat.name.as_str()) {
                return Err(TableError::DuplicateCategory(cat.name.clone()));
            }
            for p in &cat.prefixes {
                if let Some(first) = prefix_owner.insert(p, &cat.name) {
                    return Err(TableError::SharedPrefix {
                        prefix: p.clone(),
                        first: first.to_owned(),
                        second: cat.name.clone(),
                    });
                }
            }
            let mut next: u32 = 0;
            for owner in &cat.slots {
                if u32::from(owner.range.start) != next || owner.range.end < owner.range.start {
                    return Err(TableError::SlotCoverage {
                        category: cat.name.clone(),
                        detail: format!("expected a run starting at {next}, found {}", owner.range),
                    });
                }
                self.check_instance(&owner.instance, || format!("category {:?}", cat.name))?;
                next = u32::from(owner.range.end) + 1;
            }
            if next != u32::from(SLOT_COUNT) {
                return Err(TableError::SlotCoverage {
                    category: cat.name.clone(),
                    detail: format!("runs end at {}", next.saturating_sub(1)),
                });
            }
            for (what, runs) in cat.replication.iter().flat_map(|r| {
                [
                    ("replicas", &r.replicas),
                    ("seeding", &r.seeding),
                    ("outgoing", &r.outgoing),
                ]
            }) {
                self.check_runs(&cat.name, what, runs)?;
            }
        }
        for m in &self.migrating {
            let context = || format!("migrating {} {}-{}", m.category, m.start, m.end);
            self.check_range(m.start, m.end, context)?;
            self.check_category(&m.category, context)?;
            self.check_instance(&m.from, context)?;
            self.check_instance(&m.to, context)?;
        }
        for f in &self.failover {
            let context = || format!("failover {} {}-{}", f.category, f.start, f.end);
            self.check_range(f.start, f.end, context)?;
            self.check_category(&f.category, context)?;
            self.check_instance(&f.from, context)?;
            self.check_instance(&f.to, context)?;
        }
        Ok(())
    }

    /// `runs` (a category's replicas, or the part of them being seeded): valid ranges in slot
    /// order, not overlapping, of instances the table names.
    fn check_runs(&self, category: &str, what: &str, runs: &[SlotOwner]) -> Result<(), TableError> {
        let mut after: Option<u16> = None;
        for run in runs {
            let context = || format!("{what} of category {category:?}");
            self.check_range(run.range.start, run.range.end, context)?;
            if after.is_some_and(|end| run.range.start <= end) {
                return Err(TableError::BadRange {
                    context: format!("{} (out of order or overlapping)", context()),
                    start: run.range.start,
                    end: run.range.end,
                });
            }
            self.check_instance(&run.instance, context)?;
            after = Some(run.range.end);
        }
        Ok(())
    }

    fn check_instance(&self, name: &str, context: impl Fn() -> String) -> Result<(), TableError> {
        if self.instances.contains_key(name) {
            Ok(())
        } else {
            Err(TableError::UnknownInstance {
                context: context(),
                instance: name.to_owned(),
            })
        }
    }

    fn check_category(&self, name: &str, context: impl Fn() -> String) -> Result<(), TableError> {
        if self.category(name).is_some() {
            Ok(())
        } else {
            Err(TableError::UnknownCategory {
                context: context(),
                category: name.to_owned(),
            })
        }
    }

    fn check_range(
        &self,
        start: u16,
        end: u16,
        context: impl Fn() -> String,
    ) -> Result<(), TableError> {
        if start <= end && end <= MAX_SLOT {
            Ok(())
        } else {
            Err(TableError::BadRange {
                context: context(),
                start,
                end,
            })
        }
    }
}

impl Category {
    /// The owner of `slot` (binary search over the runs).
    pub fn owner_of(&self, slot: u16) -> Option<&str> {
        let idx = self.slots.partition_point(|o| o.range.end < slot);
        self.slots
            .get(idx)
            .filter(|o| o.range.contains(slot))
            .map(|o| o.instance.as_str())
    }

    /// The owner of every slot, expanded.
    pub fn owners(&self) -> Vec<&str> {
        let mut out = Vec::with_capacity(usize::from(SLOT_COUNT));
        for o in &self.slots {
            for _ in 0..o.range.len() {
                out.push(o.instance.as_str());
            }
        }
        out
    }
}

/// FNV-1a, 64 bit: a small, stable, dependency-free content hash (not for security).
pub fn fnv1a64(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn endpoint(port: u16) -> InstanceEndpoint {
        InstanceEndpoint {
            host: "127.0.0.1".into(),
            port,
            tls: None,
            username_secret: None,
            password_secret: Some(SecretKeyName {
                name: "redis".into(),
                key: "password".into(),
            }),
        }
    }

    /// Table `version` naming `names` (on ports 7001, 7002, …) and no category: for code that
    /// looks at the instances only.
    pub(crate) fn naming(version: u64, names: &[&str]) -> RoutingTable {
        RoutingTable {
            schema_version: SCHEMA_VERSION,
            version,
            policy: "apps/shop".into(),
            instances: (7001..)
                .zip(names)
                .map(|(port, n)| ((*n).to_owned(), endpoint(port)))
                .collect(),
            categories: Vec::new(),
            migrating: Vec::new(),
            failover: Vec::new(),
            placement_bases: Vec::new(),
            strategy: None,
        }
    }

    pub(crate) fn two_instance_table() -> RoutingTable {
        RoutingTable {
            schema_version: SCHEMA_VERSION,
            version: 3,
            policy: "shop/shop".into(),
            instances: [
                ("primary".to_owned(), endpoint(7001)),
                ("secondary".to_owned(), endpoint(7002)),
            ]
            .into(),
            categories: vec![
                Category {
                    name: "auth".into(),
                    prefixes: vec!["auth:".into(), "session:".into()],
                    ttl: TtlRules {
                        default_ms: Some(3_600_000),
                        max_ms: Some(86_400_000),
                        adaptive: true,
                    },
                    slots: vec![
                        (0, 8191, "primary".to_owned()).into(),
                        (8192, 16383, "secondary".to_owned()).into(),
                    ],
                    placement_basis: None,
                    replication: None,
                },
                Category {
                    name: "default".into(),
                    prefixes: vec![],
                    ttl: TtlRules::default(),
                    slots: vec![(0, 16383, "secondary".to_owned()).into()],
                    placement_basis: None,
                    replication: None,
                },
            ],
            migrating: vec![],
            failover: vec![],
            placement_bases: vec![],
            strategy: None,
        }
    }

    #[test]
    fn round_trips_through_json_and_hashes_content_only() {
        let table = two_instance_table();
        let json = table.to_json();
        assert!(json.contains(r#""schemaVersion":2"#), "{json}");
        assert!(json.contains(r#""runs":[8192,0,8192,1]"#), "{json}");
        assert!(!json.contains("secret\":\"") || !json.contains("password\":\"p"));
        let back = RoutingTable::from_json(&json).unwrap();
        assert_eq!(back, table);

        let mut bumped = table.clone();
        bumped.version += 1;
        assert_eq!(bumped.content_hash(), table.content_hash());
        let mut changed = table.clone();
        changed.categories[0].ttl.max_ms = Some(1);
        assert_ne!(changed.content_hash(), table.content_hash());
        let mut v1 = table.clone();
        v1.schema_version = 1;
        assert_eq!(
            v1.content_hash(),
            table.content_hash(),
            "the schema is not content"
        );
    }

    #[test]
    fn refuses_unknown_schema_versions() {
        let json = two_instance_table()
            .to_json()
            .replace("\"schemaVersion\":2", "\"schemaVersion\":3");
        assert_eq!(
            RoutingTable::from_json(&json),
            Err(TableError::UnsupportedSchema(3))
        );
        assert!(matches!(
            RoutingTable::from_json("{"),
            Err(TableError::Json(_))
        ));
    }

    #[test]
    fn validation_catches_broken_tables() {
        let mut t = two_instance_table();
        t.categories[0].slots[1].range.start = 8193;
        assert!(matches!(t.validate(), Err(TableError::SlotCoverage { .. })));

        let mut t = two_instance_table();
        t.categories[0].slots.pop();
        assert!(matches!(t.validate(), Err(TableError::SlotCoverage { .. })));

        let mut t = two_instance_table();
        t.categories[0].slots[0].instance = "ghost".into();
        assert!(matches!(
            t.validate(),
            Err(TableError::UnknownInstance { .. })
        ));

        let mut t = two_instance_table();
        t.categories[1].prefixes = vec!["auth:".into()];
        assert!(matches!(t.validate(), Err(TableError::DefaultCategory)));

        let mut t = two_instance_table();
        t.categories.insert(1, t.categories[0].clone());
        t.categories[1].name = "auth2".into();
        assert!(matches!(t.validate(), Err(TableError::SharedPrefix { .. })));

        let mut t = two_instance_table();
        t.migrating.push(Migration {
            category: "auth".into(),
            start: 10,
            end: 5,
            from: "primary".into(),
            to: "secondary".into(),
            epoch: 1,
            target_serves: None,
        });
        assert!(matches!(t.validate(), Err(TableError::BadRange { .. })));

        let mut t = two_instance_table();
        t.failover.push(Failover {
            category: "nope".into(),
            start: 0,
            end: 5,
            from: "primary".into(),
            to: "secondary".into(),
            handover: false,
        });
        assert!(matches!(
            t.validate(),
            Err(TableError::UnknownCategory { .. })
        ));
    }

    #[test]
    fn owner_lookup_by_binary_search() {
        let t = two_instance_table();
        let auth = t.category("auth").unwrap();
        assert_eq!(auth.owner_of(0), Some("primary"));
        assert_eq!(auth.owner_of(8191), Some("primary"));
        assert_eq!(auth.owner_of(8192), Some("secondary"));
        assert_eq!(auth.owner_of(16383), Some("secondary"));
        assert_eq!(auth.owners().len(), 16384);
    }
}
