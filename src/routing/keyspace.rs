//! Key → category → slot → instance: the one `resolve(key)` that the operator, the sidecar and
//! the rebalance Job all use, built once per table version so the per-key path stays cheap.

use std::collections::HashMap;

use super::slots::{SlotRange, key_slot};
use super::table::{ReplicationMode, RoutingTable, TableError, TtlRules};

/// Index of an instance in [`Resolver::instances`].
pub type InstanceId = u16;

/// Index of a category in [`Resolver::categories`]; the default category is last.
pub type CategoryId = u16;

/// Where one key goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    /// The key's category.
    pub category: CategoryId,
    /// The key's slot.
    pub slot: u16,
    /// The owner of the slot in the table.
    pub owner: InstanceId,
    /// Where commands for the key go now: the owner, its failover instance, or the target of
    /// a migration.
    pub target: InstanceId,
    /// Set while the slot migrates: the source, where commands on the key go through the
    /// guard (see `docs/protocol.md`); `target` is then the migration's target.
    pub migrating_from: Option<InstanceId>,
    /// Set while the slot migrates: the index of the migration in the table's `migrating`.
    pub migration: Option<u16>,
}

/// A category as the resolver sees it.
#[derive(Debug, Clone)]
pub struct ResolvedCategory {
    /// Category name.
    pub name: String,
    /// Key prefixes (empty for the default category).
    pub prefixes: Vec<String>,
    /// TTL rules.
    pub ttl: TtlRules,
    runs: Vec<(SlotRange, InstanceId)>,
    failover: Vec<(SlotRange, InstanceId, InstanceId, u16)>,
    migrating: Vec<(SlotRange, InstanceId, InstanceId, u16)>,
    /// Set when the category's writes are replicated: the mode and the replicas' runs.
    replication: Option<(ReplicationMode, Vec<(SlotRange, InstanceId)>)>,
    /// The outgoing replicas' runs: seeded copies kept, and written to, while the replica
    /// that replaces them is seeded.
    outgoing: Vec<(SlotRange, InstanceId)>,
}

impl ResolvedCategory {
    /// Slot runs and their owners.
    pub fn runs(&self) -> &[(SlotRange, InstanceId)] {
        &self.runs
    }
}

/// Prefixes of one length and their categories.
type PrefixBucket = HashMap<Box<[u8]>, CategoryId>;

/// Longest-prefix matching: prefixes bucketed by length, longest bucket first.
#[derive(Debug, Clone, Default)]
struct PrefixIndex {
    by_length: Vec<(usize, PrefixBucket)>,
}

impl PrefixIndex {
    fn insert(&mut self, prefix: &[u8], category: CategoryId) {
        let len = prefix.len();
        let pos = match self.by_length.binary_search_by(|(l, _)| len.cmp(l)) {
            Ok(pos) => pos,
            Err(pos) => {
                self.by_length.insert(pos, (len, HashMap::new()));
                pos
            }
        };
        self.by_length[pos].1.insert(prefix.into(), category);
    }

    fn lookup(&self, key: &[u8]) -> Option<CategoryId> {
        self.by_length
            .iter()
            .filter(|(len, _)| *len <= key.len())
            .find_map(|(len, map)| map.get(&key[..*len]).copied())
    }
}

/// A routing table compiled for fast lookups.
#[derive(Debug, Clone)]
pub struct Resolver {
    table: RoutingTable,
    instances: Vec<String>,
    categories: Vec<ResolvedCategory>,
    prefixes: PrefixIndex,
    replicates: bool,
}

impl Resolver {
    /// Validates and compiles `table`.
    pub fn new(table: RoutingTable) -> Result<Self, TableError> {
        table.validate()?;
        let instances: Vec<String> = table.instances.keys().cloned().collect();
        let id_of = |name: &str| -> InstanceId {
            // validate() guarantees every referenced instance exists.
            instances
                .binary_search_by(|n| n.as_str().cmp(name))
                .map(|i| i as InstanceId)
                .unwrap_or_default()
        };
        let mut prefixes = PrefixIndex::default();
        let mut categories = Vec::with_capacity(table.categories.len());
        for (idx, cat) in table.categories.iter().enumerate() {
            let id = idx as CategoryId;
            for p in &cat.prefixes {
                prefixes.insert(p.as_bytes(), id);
            }
            let ranges = |items: Vec<(SlotRange, &str, &str, usize)>| {
                let mut v: Vec<_> = items
                    .into_iter()
                    .map(|(r, from, to, i)| (r, id_of(from), id_of(to), i as u16))
                    .collect();
                v.sort_by_key(|(r, _, _, _)| r.start);
                v
            };
            categories.push(ResolvedCategory {
                name: cat.name.clone(),
                prefixes: cat.prefixes.clone(),
                ttl: cat.ttl,
                runs: cat
                    .slots
                    .iter()
                    .map(|o| (o.range, id_of(&o.instance)))
                    .collect(),
                failover: ranges(
                    table
                        .failover
                        .iter()
                        .enumerate()
                        .filter(|(_, f)| f.category == cat.name)
                        .map(|(i, f)| (f.range(), f.from.as_str(), f.to.as_str(), i))
                        .collect(),
                ),
                migrating: ranges(
                    table
                        .migrating
                        .iter()
                        .enumerate()
                        .filter(|(_, m)| m.category == cat.name)
                        .map(|(i, m)| (m.range(), m.from.as_str(), m.to.as_str(), i))
                        .collect(),
                ),
                replication: cat.replication.as_ref().map(|r| {
                    let runs = r
                        .replicas
                        .iter()
                        .map(|o| (o.range, id_of(&o.instance)))
                        .collect();
                    (r.mode, runs)
                }),
                outgoing: cat
                    .replication
                    .iter()
                    .flat_map(|r| &r.outgoing)
                    .map(|o| (o.range, id_of(&o.instance)))
                    .collect(),
            });
        }
        let replicates = categories.iter().any(|c| c.replication.is_some());
        Ok(Self {
            table,
            instances,
            categories,
            prefixes,
            replicates,
        })
    }

    /// The table this resolver was built from.
    pub fn table(&self) -> &RoutingTable {
        &self.table
    }

    /// Table version.
    pub fn version(&self) -> u64 {
        self.table.version
    }

    /// Instance names, indexed by [`InstanceId`].
    pub fn instances(&self) -> &[String] {
        &self.instances
    }

    /// The name of instance `id`.
    pub fn instance_name(&self, id: InstanceId) -> &str {
        &self.instances[usize::from(id)]
    }

    /// The id of the instance called `name`.
    pub fn instance_id(&self, name: &str) -> Option<InstanceId> {
        self.instances
            .binary_search_by(|n| n.as_str().cmp(name))
            .ok()
            .map(|i| i as InstanceId)
    }

    /// Categories, indexed by [`CategoryId`]; the default category is last.
    pub fn categories(&self) -> &[ResolvedCategory] {
        &self.categories
    }

    /// The id of the category named `name`, if the table has it.
    pub fn category_id(&self, name: &str) -> Option<CategoryId> {
        self.categories
            .iter()
            .position(|c| c.name == name)
            .and_then(|i| CategoryId::try_from(i).ok())
    }

    /// The category of `key`: the longest matching prefix, else the default category.
    pub fn category_of(&self, key: &[u8]) -> CategoryId {
        self.prefixes
            .lookup(key)
            .unwrap_or((self.categories.len() - 1) as CategoryId)
    }

    /// Whether any category's writes are replicated.
    pub fn replicates(&self) -> bool {
        self.replicates
    }

    /// For a key of a replicated category: the mode, and the replica of its slot if it has one
    /// (`None` for the keys of other categories). Every write of such a key runs through the
    /// write script on its target (`redis::protocol::replica`), also where no replica is to be
    /// written — the target may be the replica itself, promoted in an outage.
    pub fn replication(&self, route: &Route) -> Option<(ReplicationMode, Option<InstanceId>)> {
        let (mode, runs) = self.categories[usize::from(route.category)]
            .replication
            .as_ref()?;
        let i = runs.partition_point(|(r, _)| r.end < route.slot);
        let replica = runs
            .get(i)
            .filter(|(r, _)| r.contains(route.slot))
            .map(|(_, id)| *id);
        Some((*mode, replica))
    }

    /// For a key of a replicated category whose replica moves: the outgoing replica of its
    /// slot, which takes every write beside [`Self::replication`]'s until the new one is
    /// seeded (`docs/replication.md`, "Moving replicas").
    pub fn outgoing(&self, route: &Route) -> Option<InstanceId> {
        let runs = &self.categories[usize::from(route.category)].outgoing;
        let i = runs.partition_point(|(r, _)| r.end < route.slot);
        runs.get(i)
            .filter(|(r, _)| r.contains(route.slot))
            .map(|(_, id)| *id)
    }

    /// The instances that take a replicated write's result for a key routed as `route`: its
    /// replica, then its outgoing replica, if any.
    pub fn replica_targets(&self, route: &Route) -> impl Iterator<Item = InstanceId> + use<> {
        let replica = self.replication(route).and_then(|(_, r)| r);
        replica.into_iter().chain(self.outgoing(route))
    }

    /// Where `key` goes now.
    pub fn resolve(&self, key: &[u8]) -> Route {
        let category = self.category_of(key);
        self.route(category, key_slot(key))
    }

    /// Where slot `slot` of `category` goes now.
    pub fn route(&self, category: CategoryId, slot: u16) -> Route {
        let cat = &self.categories[usize::from(category)];
        let idx = cat.runs.partition_point(|(r, _)| r.end < slot);
        let owner = cat.runs.get(idx).map(|(_, o)| *o).unwrap_or_default();
        // An entry that does not involve the owner is stale and ignored. A migration either
        // moves the owner's data away (from == owner) or brings a failed-over range back to its
        // recovered owner (to == owner).
        let find = |list: &[(SlotRange, InstanceId, InstanceId, u16)], to_owner_too: bool| {
            let i = list.partition_point(|(r, _, _, _)| r.end < slot);
            list.get(i)
                .filter(|(r, from, to, _)| {
                    r.contains(slot) && (*from == owner || (to_owner_too && *to == owner))
                })
                .map(|(_, from, to, index)| (*from, *to, *index))
        };
        if let Some((_, to, _)) = find(&cat.failover, false) {
            return Route {
                category,
                slot,
                owner,
                target: to,
                migrating_from: None,
                migration: None,
            };
        }
        if let Some((from, to, index)) = find(&cat.migrating, true) {
            return Route {
                category,
                slot,
                owner,
                target: to,
                migrating_from: Some(from),
                migration: Some(index),
            };
        }
        Route {
            category,
            slot,
            owner,
            target: owner,
            migrating_from: None,
            migration: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routing::table::tests::two_instance_table;
    use crate::routing::table::{Category, Failover, Migration};

    fn resolver() -> Resolver {
        let mut t = two_instance_table();
        t.categories.insert(
            1,
            Category {
                name: "auth-admin".into(),
                prefixes: vec!["auth:admin:".into()],
                ttl: TtlRules::default(),
                slots: vec![(0, 16383, "secondary".to_owned()).into()],
                placement_basis: None,
                replication: None,
            },
        );
        Resolver::new(t).unwrap()
    }

    #[test]
    fn longest_prefix_wins_and_unmatched_keys_are_default() {
        let r = resolver();
        let name = |key: &[u8]| &r.categories()[usize::from(r.category_of(key))].name;
        assert_eq!(name(b"auth:token:1"), "auth");
        assert_eq!(name(b"session:abc"), "auth");
        assert_eq!(name(b"auth:admin:root"), "auth-admin");
        assert_eq!(name(b"auth:"), "auth");
        assert_eq!(name(b"auth"), "default");
        assert_eq!(name(b"menu:1"), "default");
        assert_eq!(name(b""), "default");
    }

    #[test]
    fn routes_follow_slot_owners() {
        let r = resolver();
        for key in ["auth:1", "auth:2", "session:x", "auth:{tag}a", "menu:9"] {
            let route = r.resolve(key.as_bytes());
            let cat = &r.table().categories[usize::from(route.category)];
            let slot = key_slot(key.as_bytes());
            assert_eq!(route.slot, slot);
            assert_eq!(r.instance_name(route.owner), cat.owner_of(slot).unwrap());
            assert_eq!(route.target, route.owner);
            assert_eq!(route.migrating_from, None);
        }
    }

    #[test]
    fn failover_and_migration_redirect_the_target() {
        let mut t = two_instance_table();
        t.failover.push(Failover {
            category: "auth".into(),
            start: 0,
            end: 99,
            from: "primary".into(),
            to: "secondary".into(),
            handover: false,
        });
        t.migrating.push(Migration {
            category: "auth".into(),
            start: 100,
            end: 199,
            from: "primary".into(),
            to: "secondary".into(),
            epoch: 7,
            target_serves: None,
        });
        // An entry whose `from` is not the owner is ignored (stale entry).
        t.failover.push(Failover {
            category: "auth".into(),
            start: 9000,
            end: 9001,
            from: "primary".into(),
            to: "primary".into(),
            handover: false,
        });
        let r = Resolver::new(t).unwrap();
        let (p, s) = (
            r.instance_id("primary").unwrap(),
            r.instance_id("secondary").unwrap(),
        );
        let auth = 0;
        assert_eq!(r.route(auth, 50).target, s);
        assert_eq!(r.route(auth, 50).migrating_from, None);
        assert_eq!(r.route(auth, 150).target, s);
        assert_eq!(r.route(auth, 150).migrating_from, Some(p));
        assert_eq!(r.route(auth, 150).migration, Some(0));
        assert_eq!(r.route(auth, 250).target, p);
        assert_eq!(r.route(auth, 9000).target, s);
    }

    #[test]
    fn a_replicated_categorys_slots_name_their_replica() {
        use crate::routing::table::{CategoryReplication, ReplicationMode};
        let mut t = two_instance_table();
        assert!(!Resolver::new(t.clone()).unwrap().replicates());
        // Slots 0-8191 (owned by primary) replicate on secondary; the rest have no replica.
        t.categories[0].replication = Some(CategoryReplication {
            mode: ReplicationMode::Sync,
            replicas: vec![(0, 8191, "secondary".to_owned()).into()],
            seeding: Vec::new(),
            outgoing: Vec::new(),
        });
        let json = t.to_json();
        let back = RoutingTable::from_json(&json).unwrap();
        assert_eq!(back, t, "the replicas survive the table's JSON");
        let r = Resolver::new(t.clone()).unwrap();
        assert!(r.replicates());
        let s = r.instance_id("secondary").unwrap();
        assert_eq!(
            r.replication(&r.route(0, 100)),
            Some((ReplicationMode::Sync, Some(s)))
        );
        assert_eq!(
            r.replication(&r.route(0, 9000)),
            Some((ReplicationMode::Sync, None))
        );
        assert_eq!(
            r.replication(&r.route(1, 100)),
            None,
            "default replicates nothing"
        );

        // Runs out of order, overlapping, or naming an unknown instance are refused.
        for bad in [
            vec![(10, 20, "secondary"), (0, 5, "secondary")],
            vec![(0, 20, "secondary"), (20, 30, "primary")],
            vec![(0, 20, "tertiary")],
            vec![(0, 16384, "secondary")],
        ] {
            let mut t = t.clone();
            t.categories[0].replication = Some(CategoryReplication {
                mode: ReplicationMode::Async,
                replicas: bad
                    .iter()
                    .map(|(a, b, n)| (*a, *b, (*n).to_owned()).into())
                    .collect(),
                seeding: Vec::new(),
                outgoing: Vec::new(),
            });
            assert!(Resolver::new(t).is_err(), "{bad:?}");
        }
    }
}
