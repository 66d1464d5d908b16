//! Copies to free: the ranges whose keys an instance still holds although no table routes them
//! to it any more (`docs/protocol.md`, "Copies no instance serves").
//!
//! When a table stops routing a range to an instance — a move finished, a failover ended, a
//! move's dead source handed its range to the target — or stops naming it the range's replica
//! (`docs/replication.md`), the instance's keys of that range are garbage: the range's data is
//! elsewhere. They must go before anything could take them for data: a draining instance that
//! owns no slot is emptied by moving *every* key it holds into the owners (the legacy-Redis path), and a stale copy moved that way would answer reads and
//! take writes meant for the owner's newer value. An instance that is down when its ranges are
//! handed off cannot be cleaned then, so the list is kept with the table, in an annotation of
//! the routing ConfigMap written in the same request as the table: an operator restarted
//! between the two cannot forget it. Entries leave the list once their keys are deleted.

use std::collections::{BTreeMap, BTreeSet};

use crate::routing::slots::{SLOT_COUNT, SlotRange, runs};
use crate::routing::table::RoutingTable;

use super::build;

/// The routing ConfigMap's annotation with the copies to free (JSON: instance → category →
/// comma-separated slot ranges).
pub const UNFREED_ANNOTATION: &str = "redisfleet.io/unfreed-copies";

/// Per instance and category, the slots whose keys are to be deleted there.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Unfreed(BTreeMap<String, BTreeMap<String, Vec<bool>>>);

impl Unfreed {
    /// The list in an annotation's value; an error names what is wrong.
    pub fn parse(value: &str) -> Result<Self, String> {
        let raw: BTreeMap<String, BTreeMap<String, String>> =
            serde_json::from_str(value).map_err(|e| e.to_string())?;
        let mut out = Self::default();
        for (instance, categories) in raw {
            for (category, ranges) in categories {
                for part in ranges.split(',').filter(|p| !p.is_empty()) {
                    let range = parse_range(part)
                        .ok_or_else(|| format!("{instance}/{category}: bad slot range {part:?}"))?;
                    out.add(&instance, &category, range);
                }
            }
        }
        Ok(out)
    }

    /// The annotation's value; `None` when nothing is left to free.
    pub fn render(&self) -> Option<String> {
        if self.0.is_empty() {
            return None;
        }
        let raw: BTreeMap<&str, BTreeMap<&str, String>> = self
            .0
            .iter()
            .map(|(instance, categories)| {
                let cats = categories
                    .iter()
                    .map(|(cat, bits)| {
                        let ranges: Vec<String> = set_runs(bits)
                            .into_iter()
                            .map(|r| format!("{}-{}", r.start, r.end))
                            .collect();
                        (cat.as_str(), ranges.join(","))
                    })
                    .collect();
                (instance.as_str(), cats)
            })
            .collect();
        serde_json::to_string(&raw).ok()
    }

    /// Whether nothing is left to free.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The instances with copies to free.
    pub fn instances(&self) -> BTreeSet<String> {
        self.0.keys().cloned().collect()
    }

    /// The (category, range) pairs to free on `instance`.
    pub fn ranges_of(&self, instance: &str) -> Vec<(String, SlotRange)> {
        self.0
            .get(instance)
            .into_iter()
            .flatten()
            .flat_map(|(cat, bits)| set_runs(bits).into_iter().map(|r| (cat.clone(), r)))
            .collect()
    }

    /// Marks `range` of `category` on `instance` as to be freed.
    pub fn add(&mut self, instance: &str, category: &str, range: SlotRange) {
        let bits = self
            .0
            .entry(instance.to_owned())
            .or_default()
            .entry(category.to_owned())
            .or_insert_with(|| vec![false; usize::from(SLOT_COUNT)]);
        for slot in range.start..=range.end {
            bits[usize::from(slot)] = true;
        }
    }

    /// The copies are gone: nothing is left to free on `instance`.
    pub fn freed(&mut self, instance: &str) {
        self.0.remove(instance);
    }

    /// Keeps only the instances in `names` (one no longer in the fleet is nobody's concern).
    pub fn retain_instances(&mut self, names: &BTreeSet<String>) {
        self.0.retain(|instance, _| names.contains(instance));
    }

    /// Drops what `table` routes to an instance or names it the replica of: those keys are its
    /// live data again (the instance's stale copies were deleted before the table gave it the
    /// range).
    pub fn without_held(&mut self, table: &RoutingTable) {
        // Nothing to drop (the steady state): skip working out what `table` holds.
        if self.0.is_empty() {
            return;
        }
        for (instance, ranges) in build::held_ranges(table) {
            let Some(categories) = self.0.get_mut(&instance) else {
                continue;
            };
            for (cat, range) in ranges {
                if let Some(bits) = categories.get_mut(&cat) {
                    for slot in range.start..=range.end {
                        bits[usize::from(slot)] = false;
                    }
                }
            }
        }
        for categories in self.0.values_mut() {
            categories.retain(|_, bits| bits.iter().any(|b| *b));
        }
        self.0.retain(|_, categories| !categories.is_empty());
    }

    /// The list once `next` replaces `previous`: what was to be freed, plus every range an
    /// instance held in `previous` (served, or replicated) and does not hold in `next`, less
    /// what `next` gives it.
    pub fn after(&self, previous: Option<&RoutingTable>, next: &RoutingTable) -> Self {
        let mut out = self.clone();
        if let Some(previous) = previous {
            for (instance, ranges) in build::newly_held(Some(next), previous) {
                for (cat, range) in ranges {
                    out.add(&instance, &cat, range);
                }
            }
        }
        out.without_held(next);
        out
    }
}

/// The runs of set slots.
fn set_runs(bits: &[bool]) -> Vec<SlotRange> {
    runs(bits)
        .into_iter()
        .filter(|(_, on)| *on)
        .map(|(r, _)| r)
        .collect()
}

/// `a-b` or `a`, within the slot space.
fn parse_range(s: &str) -> Option<SlotRange> {
    let (a, b) = s.split_once('-').unwrap_or((s, s));
    let (a, b): (u16, u16) = (a.trim().parse().ok()?, b.trim().parse().ok()?);
    (a <= b && b < SLOT_COUNT).then(|| SlotRange::new(a, b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routing::table::{Category, Migration, SCHEMA_VERSION, SlotOwner, TtlRules};

    fn table(owner: &str, migrating: Option<(&str, &str)>) -> RoutingTable {
        let mut t = RoutingTable {
            schema_version: SCHEMA_VERSION,
            version: 1,
            policy: "ns/p".to_owned(),
            instances: BTreeMap::new(),
            categories: vec![Category {
                name: "user".to_owned(),
                prefixes: vec!["user:".to_owned()],
                ttl: TtlRules::default(),
                slots: vec![SlotOwner {
                    range: SlotRange::ALL,
                    instance: owner.to_owned(),
                }],
                placement_basis: None,
                replication: None,
            }],
            migrating: Vec::new(),
            failover: Vec::new(),
            placement_bases: Vec::new(),
            strategy: None,
        };
        if let Some((from, to)) = migrating {
            t.migrating.push(Migration {
                category: "user".to_owned(),
                start: 0,
                end: 100,
                from: from.to_owned(),
                to: to.to_owned(),
                epoch: 1,
                target_serves: None,
            });
        }
        t
    }

    #[test]
    fn a_dead_sources_handed_off_range_stays_to_free_until_its_keys_are_deleted() {
        // Chaos seed 4 (180 s): `b` died as the source of a move to `a`; the move was resolved
        // toward `a`. `b`'s keys of the range are stale from then on.
        let previous = table("b", Some(("b", "a")));
        let next = table("a", None);
        let list = Unfreed::default().after(Some(&previous), &next);
        assert_eq!(
            list.ranges_of("b"),
            vec![("user".to_owned(), SlotRange::ALL)]
        );
        assert!(list.ranges_of("a").is_empty());
        // It survives a restart: the annotation reads back the same.
        let again = Unfreed::parse(&list.render().unwrap()).unwrap();
        assert_eq!(again, list);
        // Later tables keep it until it is freed.
        let later = again.after(Some(&next), &next);
        assert_eq!(later, list);
        let mut freed = later;
        freed.freed("b");
        assert!(freed.is_empty());
        assert_eq!(freed.render(), None);
    }

    #[test]
    fn a_range_routed_to_the_instance_again_is_no_longer_to_free() {
        let mut list = Unfreed::default();
        list.add("b", "user", SlotRange::new(0, 200));
        let next = table("a", Some(("a", "b")));
        let after = list.after(None, &next);
        assert_eq!(
            after.ranges_of("b"),
            vec![("user".to_owned(), SlotRange::new(101, 200))]
        );
    }

    #[test]
    fn instances_no_longer_selected_are_dropped_and_bad_annotations_are_refused() {
        let mut list = Unfreed::default();
        list.add("b", "user", SlotRange::new(5, 5));
        list.add("gone", "user", SlotRange::new(5, 9));
        list.retain_instances(&["b".to_owned()].into());
        assert_eq!(list.instances(), ["b".to_owned()].into());
        assert_eq!(list.render().unwrap(), r#"{"b":{"user":"5-5"}}"#);
        assert!(Unfreed::parse(r#"{"b":{"user":"9-5"}}"#).is_err());
        assert!(Unfreed::parse(r#"{"b":{"user":"0-16384"}}"#).is_err());
        assert!(Unfreed::parse("not json").is_err());
    }
}
