//! The fleet's keyspace as one: which instance serves which key (so stale copies are never
//! reported), the order in which SCAN walks the instances, and what moved while a walk was
//! under way (so the keys that moved behind it are found in a second pass).
//!
//! A SCAN cursor names instances by a 16-bit hash of their name, not by their position in a
//! table, so it stays valid when a table adds, removes or reorders instances. The sidecar
//! keeps the last [`HISTORY`] tables it loaded; a cursor carries the (low bits of the)
//! version its walk started on, and at the end of the walk the instances that were given
//! slots since then — by a migration, a new owner or a failover — are walked again for the
//! keys of those slots only. A key that exists throughout a walk is so reported at least once
//! unless it moves twice during the walk (into an instance the second pass already passed).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::routing::keyspace::{InstanceId, Resolver};
use crate::routing::slots::key_slot;
use crate::routing::table::RoutingTable;

/// Tables remembered (versions a cursor can refer to).
pub const HISTORY: usize = 128;

/// A stable small id of an instance name in SCAN cursors: 1 to 65534 (0 and 65535 are
/// never an instance's).
pub fn instance_hash(name: &str) -> u16 {
    let h = crate::routing::table::fnv1a64(name.as_bytes());
    (h % 65_534) as u16 + 1
}

/// Instances in the order a SCAN walks them: by [`instance_hash`], then name.
pub fn walk_order(resolver: &Resolver) -> Vec<(u16, InstanceId)> {
    let mut order: Vec<(u16, InstanceId, &str)> = resolver
        .instances()
        .iter()
        .enumerate()
        .map(|(i, n)| (instance_hash(n), i as InstanceId, n.as_str()))
        .collect();
    order.sort_by(|a, b| (a.0, a.2).cmp(&(b.0, b.2)));
    order.into_iter().map(|(h, i, _)| (h, i)).collect()
}

/// Whether instance `on` serves `key` in `resolver`'s table: it is the key's target, or the
/// source of its migrating slot. A key found anywhere else is a stale copy.
pub fn serves(resolver: &Resolver, on: InstanceId, key: &[u8]) -> bool {
    let route = resolver.resolve(key);
    route.target == on || route.migrating_from == Some(on)
}

/// The instances that serve slot `slot` of category `category` in a table.
fn serving(resolver: &Resolver, category: &str, slot: u16) -> Vec<String> {
    let Some(c) = resolver
        .categories()
        .iter()
        .position(|c| c.name == category)
    else {
        return Vec::new();
    };
    let route = resolver.route(c as u16, slot);
    let mut out = vec![resolver.instance_name(route.target).to_owned()];
    if let Some(from) = route.migrating_from {
        out.push(resolver.instance_name(from).to_owned());
    }
    out
}

/// Slots each instance was given between two tables: instance name → category name →
/// a bitmap of slots.
pub type Moved = HashMap<String, HashMap<String, Vec<bool>>>;

/// What `after` serves that `before` did not, per instance and category.
pub fn moved_into(before: &Resolver, after: &Resolver, into: &mut Moved) {
    for category in after.categories() {
        for slot in 0..16384u16 {
            let was = serving(before, &category.name, slot);
            for name in serving(after, &category.name, slot) {
                if !was.contains(&name) {
                    into.entry(name)
                        .or_default()
                        .entry(category.name.clone())
                        .or_insert_with(|| vec![false; 16384])[usize::from(slot)] = true;
                }
            }
        }
    }
}

/// Whether `key`, found on instance `name`, is in a slot `moved` says it was given.
pub fn was_moved_in(moved: &Moved, resolver: &Resolver, name: &str, key: &[u8]) -> bool {
    let Some(categories) = moved.get(name) else {
        return false;
    };
    let category = &resolver.categories()[usize::from(resolver.category_of(key))].name;
    categories
        .get(category)
        .is_some_and(|slots| slots[usize::from(key_slot(key))])
}

/// The tables this sidecar loaded lately, oldest first.
#[derive(Debug, Default)]
pub struct History {
    tables: Mutex<VecDeque<Arc<Resolver>>>,
    moved: Mutex<HashMap<(u64, u64), Arc<Moved>>>,
}

impl History {
    /// Records a table (once per version).
    pub fn record(&self, table: &RoutingTable) {
        let mut tables = self.tables.lock().unwrap_or_else(|e| e.into_inner());
        if tables.back().is_some_and(|t| t.version() == table.version) {
            return;
        }
        if let Ok(resolver) = Resolver::new(table.clone()) {
            tables.push_back(Arc::new(resolver));
            while tables.len() > HISTORY {
                tables.pop_front();
            }
        }
    }

    /// The full version of the remembered table whose version ends in `low` (7 bits), the
    /// most recent one not after `now`.
    pub fn find(&self, low: u8, now: u64) -> Option<u64> {
        let tables = self.tables.lock().unwrap_or_else(|e| e.into_inner());
        tables
            .iter()
            .rev()
            .map(|t| t.version())
            .find(|v| *v <= now && (*v % 128) as u8 == low)
    }

    /// What instances were given from version `from` to version `to` (`None`: unknown, the
    /// tables are not remembered).
    pub fn moved(&self, from: u64, to: u64) -> Option<Arc<Moved>> {
        if let Some(m) = self
            .moved
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&(from, to))
        {
            return Some(m.clone());
        }
        let tables: Vec<Arc<Resolver>> = {
            let t = self.tables.lock().unwrap_or_else(|e| e.into_inner());
            t.iter()
                .filter(|r| r.version() >= from && r.version() <= to)
                .cloned()
                .collect()
        };
        if tables.first().is_none_or(|t| t.version() != from) {
            return None;
        }
        let mut moved = Moved::new();
        for pair in tables.windows(2) {
            moved_into(&pair[0], &pair[1], &mut moved);
        }
        let moved = Arc::new(moved);
        let mut cache = self.moved.lock().unwrap_or_else(|e| e.into_inner());
        if cache.len() > 64 {
            cache.clear();
        }
        cache.insert((from, to), moved.clone());
        Some(moved)
    }
}

/// Records every table the sidecar swaps in (`current`).
pub async fn watch(
    history: Arc<History>,
    current: impl Fn() -> Option<Arc<super::router::Router>>,
) {
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if let Some(router) = current() {
            history.record(router.resolver.table());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routing::table::Migration;
    use crate::routing::table::tests::two_instance_table;

    #[test]
    fn hashes_are_stable_and_never_zero() {
        assert_eq!(instance_hash("primary"), instance_hash("primary"));
        assert_ne!(instance_hash("primary"), instance_hash("secondary"));
        for n in 0..1000 {
            assert_ne!(instance_hash(&format!("i{n}")), 0);
        }
    }

    #[test]
    fn a_migration_gives_its_target_the_slots() {
        let t1 = two_instance_table();
        let mut t2 = t1.clone();
        t2.version += 1;
        let category = t2.categories[0].name.clone();
        let from = t2.categories[0].slots[0].instance.clone();
        let to = t2
            .instances
            .keys()
            .find(|n| **n != from)
            .cloned()
            .unwrap_or_default();
        t2.migrating.push(Migration {
            category: category.clone(),
            start: 0,
            end: 99,
            from: from.clone(),
            to: to.clone(),
            epoch: t2.version,
            target_serves: None,
        });
        let history = History::default();
        history.record(&t1);
        history.record(&t2);
        let moved = history.moved(t1.version, t2.version).unwrap_or_default();
        let slots = &moved[&to][&category];
        assert!(slots[0] && slots[99] && !slots[100]);
        assert!(!moved.contains_key(&from));
        assert_eq!(
            history.find((t2.version % 128) as u8, t2.version),
            Some(t2.version)
        );
        assert!(history.moved(t1.version - 1, t2.version).is_none());
    }
}
