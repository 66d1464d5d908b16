//! Instances leaving a live policy (`docs/protocol.md`, "Cleanup"): the list of what is left to
//! do on them, kept with the table.
//!
//! An instance that leaves a policy (no longer selected, or its RedisInstance deleted) must be
//! fenced on itself at the first table without it, then lose the policy's other keys: a
//! sidecar still on an older table would otherwise write there, where no table reads. An
//! instance that does not answer when that table is published cannot be fenced then; the work
//! waits for it, in the background. So that an operator restarted meanwhile (a new leader, a
//! node lost) does not forget it, the list is written to an annotation of the routing
//! ConfigMap in the same request as the table without the instance, with what it takes to
//! reach it — the endpoint the last table named it at, which sidecars on older tables still
//! connect to (no credentials: Secret references only, as in the table). Entries leave the
//! list once the instance was fenced and cleaned, once a table names it again, or when it has
//! not answered [`GIVE_UP_AFTER`] after it left. While the policy selects it again (but no
//! table names it yet) its entry stays and nothing is done on it: deselected again before a
//! table named it, it is still to be fenced at the version it first left at.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::routing::table::{InstanceEndpoint, RoutingTable};

/// The routing ConfigMap's annotation with the instances leaving the policy (JSON: instance
/// → [`Departure`]).
pub const DEPARTURES_ANNOTATION: &str = "redisfleet.io/departures";

/// How long an instance that left is waited for while it does not answer.
pub const GIVE_UP_AFTER: Duration = Duration::from_secs(3600);

/// One instance leaving the policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Departure {
    /// The first table version without it: it is fenced on itself at this version.
    pub version: u64,
    /// Where the last table that named it said it is.
    pub endpoint: InstanceEndpoint,
    /// When that table was published.
    pub since: Timestamp,
}

impl Departure {
    /// Whether it is past waiting for at `now`.
    pub fn given_up(&self, now: Timestamp) -> bool {
        now.duration_since(self.since)
            .try_into()
            .is_ok_and(|waited: Duration| waited >= GIVE_UP_AFTER)
    }
}

/// The instances leaving the policy, by name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Departures(BTreeMap<String, Departure>);

impl Departures {
    /// The list in an annotation's value; an error names what is wrong.
    pub fn parse(value: &str) -> Result<Self, String> {
        serde_json::from_str(value)
            .map(Self)
            .map_err(|e| e.to_string())
    }

    /// The annotation's value; `None` when no instance is leaving.
    pub fn render(&self) -> Option<String> {
        if self.0.is_empty() {
            return None;
        }
        serde_json::to_string(&self.0).ok()
    }

    /// The list once `table` replaces `previous`: the instances `previous` named that are
    /// neither selected nor named by `table` left at `table`'s version ([`departed`]); the
    /// ones `table` names again are no longer leaving.
    pub fn after(
        &self,
        previous: Option<&RoutingTable>,
        selected: &BTreeSet<String>,
        table: &RoutingTable,
        now: Timestamp,
    ) -> Self {
        let mut out = self.clone();
        out.retain_leaving(table);
        if let Some(previous) = previous {
            for name in departed(previous, selected, table) {
                let Some(endpoint) = previous.instances.get(&name) else {
                    continue;
                };
                out.0.entry(name).or_insert_with(|| Departure {
                    version: table.version,
                    endpoint: endpoint.clone(),
                    since: now,
                });
            }
        }
        out
    }

    /// Drops the instances `table` names again.
    pub fn retain_leaving(&mut self, table: &RoutingTable) {
        self.0.retain(|name, _| !table.instances.contains_key(name));
    }

    /// Drops `name`'s entry (done, or given up) when it is still the one left at `version`.
    pub fn finished(&mut self, name: &str, version: u64) {
        if self.0.get(name).is_some_and(|d| d.version == version) {
            self.0.remove(name);
        }
    }

    /// The instances leaving, with what is left to do on each.
    pub fn iter(&self) -> impl Iterator<Item = (&String, &Departure)> {
        self.0.iter()
    }

    /// Whether no instance is leaving.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Instances the previous table named that are neither selected nor in the table published
/// now: they left the policy.
pub fn departed(
    previous: &RoutingTable,
    selected: &BTreeSet<String>,
    published: &RoutingTable,
) -> Vec<String> {
    previous
        .instances
        .keys()
        .filter(|n| !selected.contains(*n) && !published.instances.contains_key(*n))
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routing::table::tests::naming;

    fn table(version: u64, names: &[&str]) -> RoutingTable {
        naming(version, names)
    }

    /// Where `table(_, names)` puts `name`.
    fn endpoint(names: &[&str], name: &str) -> InstanceEndpoint {
        naming(0, names).instances[name].clone()
    }

    fn set(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|s| (*s).to_owned()).collect()
    }

    fn at(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn instances_that_left_are_those_neither_selected_nor_published() {
        let previous = table(1, &["a", "b", "c"]);
        // c deselected (or deleted) and no longer published: it left.
        assert_eq!(
            departed(&previous, &set(&["a", "b"]), &table(2, &["a", "b"])),
            ["c"]
        );
        // Still published (the new table could not drop it yet): it has not left.
        assert!(departed(&previous, &set(&["a", "b"]), &table(2, &["a", "b", "c"])).is_empty());
        // Selected again: not left. Nothing changed: nothing left.
        assert!(departed(&previous, &set(&["a", "b", "c"]), &table(2, &["a", "b"])).is_empty());
        assert!(departed(&previous, &set(&["a", "b", "c"]), &previous).is_empty());
    }

    #[test]
    fn a_departure_is_recorded_with_the_table_without_it_and_where_it_was() {
        let now = at("2026-12-01T10:00:00Z");
        let list = Departures::default().after(
            Some(&table(4, &["a", "b", "c"])),
            &set(&["a", "b"]),
            &table(5, &["a", "b"]),
            now,
        );
        let expected = Departure {
            version: 5,
            endpoint: endpoint(&["a", "b", "c"], "c"),
            since: now,
        };
        assert_eq!(list.iter().collect::<Vec<_>>(), [(&"c".into(), &expected)]);
        // The annotation reads back the same.
        assert_eq!(Departures::parse(&list.render().unwrap()).unwrap(), list);
        // A later table keeps it, at the version it left at.
        let later = list.after(
            Some(&table(5, &["a", "b"])),
            &set(&["a", "b"]),
            &table(6, &["a", "b"]),
            at("2026-12-01T10:05:00Z"),
        );
        assert_eq!(later, list);
        // Selected again while no table names it yet (it is down, or not Ready): still to be
        // fenced at v5 if it is deselected before a table names it.
        let selected = list.after(
            Some(&table(6, &["a", "b"])),
            &set(&["a", "b", "c"]),
            &table(7, &["a", "b"]),
            now,
        );
        assert_eq!(selected, list);
        // Named again: no longer leaving.
        let back = list.after(
            Some(&table(7, &["a", "b"])),
            &set(&["a", "b", "c"]),
            &table(8, &["a", "b", "c"]),
            now,
        );
        assert!(back.is_empty() && back.render().is_none());
    }

    #[test]
    fn only_the_departure_that_finished_leaves_the_list() {
        let now = at("2026-12-01T10:00:00Z");
        let list = Departures::default().after(
            Some(&table(4, &["a", "c"])),
            &set(&["a"]),
            &table(5, &["a"]),
            now,
        );
        // A task of an earlier departure (left at v3, selected again, left again at v5).
        let mut l = list.clone();
        l.finished("c", 3);
        assert_eq!(l, list);
        l.finished("c", 5);
        assert!(l.is_empty());
    }

    #[test]
    fn a_departure_is_given_up_an_hour_after_it_began() {
        let d = Departure {
            version: 5,
            endpoint: endpoint(&["c"], "c"),
            since: at("2026-12-01T10:00:00Z"),
        };
        assert!(!d.given_up(at("2026-12-01T10:59:59Z")));
        assert!(d.given_up(at("2026-12-01T11:00:00Z")));
    }

    #[test]
    fn an_unreadable_list_is_an_error() {
        assert!(Departures::parse("not json").is_err());
        assert!(Departures::parse(r#"{"c": {"version": 5}}"#).is_err());
    }
}
