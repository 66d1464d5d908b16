//! What older plans left behind on this plan's instances. A plan rolled back or abandoned
//! (its target died), or one whose cleanup ran out of time to converge, leaves its importing
//! markers, slot group states and rosters on its sources and its imported markers on its targets:
//! a few hundred bytes each, up to a thousand group states per source, with no TTL (a roster,
//! up to 2 bytes per key of the source), on instances that may hold 30 MB in all. Nothing else removes them while the policy lives.
//!
//! A finished plan's cleanup removes them from its sources and targets once it may
//! (`Job::cleanup`): every live sidecar routes by the final table. No plan starts while the
//! published table carries migrations, so every table that carried an older plan's is older
//! than this plan's flip, which fenced its sources and targets: no straggler on such a table
//! reaches them any more. Markers of a migration the published table still carries (a move
//! given back whose marker is not removed yet) are kept whatever their plan.

use std::collections::BTreeSet;

use bytes::Bytes;
use tracing::{info, warn};

use crate::redis::keys::{prefix_pattern, scan_page};

use super::batch::move_error;
use super::{Error, Job};

/// The kinds of key a plan leaves, by the word in their names.
const KINDS: [&str; 4] = ["importing", "group", "imported", "roster"];

/// Whether `key`, named under `prefix` (`redisfleet:<kind>:<policy>:<plan>:…`), belongs to a
/// plan older than `plan` whose migrations the published table no longer carries (`live`:
/// the plans of its migrations).
pub(super) fn of_an_older_plan(key: &[u8], prefix: &[u8], plan: u64, live: &BTreeSet<u64>) -> bool {
    let Some(rest) = key.strip_prefix(prefix) else {
        return false;
    };
    let Some(epoch) = rest
        .split(|b| *b == b':')
        .next()
        .and_then(|e| std::str::from_utf8(e).ok())
        .and_then(|e| e.parse::<u64>().ok())
    else {
        return false;
    };
    epoch < plan && !live.contains(&epoch)
}

impl Job {
    /// The plans whose migrations the published routing table carries; `None` when it cannot
    /// be read (then nothing is removed).
    async fn live_plans(&self) -> Option<BTreeSet<u64>> {
        let table = self.routing.published().await.ok()?;
        Some(table.migrating.iter().map(|m| m.epoch).collect())
    }

    /// Deletes the markers and slot group states of older plans (above) from this plan's
    /// sources and targets: one walk of each instance's `redisfleet:` keys, which beside
    /// traffic waits after each page as long as it took. Best effort: what it cannot remove
    /// now is only garbage, which the next plan's cleanup finds again, so only a newer attempt
    /// in charge fails the cleanup. Call once every live sidecar routes by the final table.
    pub(super) async fn remove_older_plans_keys(&mut self) -> Result<(), Error> {
        let Some(live) = self.live_plans().await else {
            warn!("could not read the routing table: older plans' markers stay for now");
            return Ok(());
        };
        let mut instances = self.sources();
        instances.extend(self.steps.iter().map(|s| s.to.clone()));
        instances.sort();
        instances.dedup();
        for name in instances {
            match self.remove_older_plans_keys_on(&name, &live).await {
                Ok(0) => {}
                Ok(removed) => info!(
                    instance = %name,
                    removed,
                    "removed the markers, slot group states and rosters older plans left"
                ),
                Err(Error::Superseded) => return Err(Error::Superseded),
                Err(e) => {
                    warn!(instance = %name, error = %e, "could not remove what older plans left; the next plan's cleanup tries again")
                }
            }
        }
        Ok(())
    }

    /// [`Job::remove_older_plans_keys`] on one instance: how many keys it removed.
    async fn remove_older_plans_keys_on(
        &mut self,
        name: &str,
        live: &BTreeSet<u64>,
    ) -> Result<u64, Error> {
        let plan = u64::try_from(self.config.plan_id).unwrap_or_default();
        let prefixes: Vec<String> = KINDS
            .iter()
            .map(|kind| format!("redisfleet:{kind}:{}:", self.mover.policy))
            .collect();
        let pattern = prefix_pattern(b"redisfleet:");
        let count = self.scan_count();
        let gentle = self.beside_traffic();
        let mover = self.mover.clone();
        let instance = self.instance(name)?;
        let mut cursor = 0u64;
        let mut removed = 0u64;
        loop {
            let started = std::time::Instant::now();
            let (next, page) = scan_page(&mut instance.conn, cursor, &pattern, count)
                .await
                .map_err(|e| instance.err(&e))?;
            let old: Vec<Bytes> = page
                .into_iter()
                .filter(|k| {
                    prefixes
                        .iter()
                        .any(|prefix| of_an_older_plan(k, prefix.as_bytes(), plan, live))
                })
                .map(Bytes::from)
                .collect();
            if !old.is_empty() {
                removed += mover
                    .delete(&mut instance.conn, &old)
                    .await
                    .map_err(|e| move_error(&old[0], e))?;
            }
            if next == 0 {
                return Ok(removed);
            }
            cursor = next;
            if gentle {
                tokio::time::sleep(started.elapsed()).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_keys_of_older_plans_no_migration_carries_are_garbage() {
        let prefix = b"redisfleet:group:ns/shop:";
        let live: BTreeSet<u64> = [12].into();
        let older = |key: &str| of_an_older_plan(key.as_bytes(), prefix, 20, &live);
        assert!(older("redisfleet:group:ns/shop:7:12"));
        assert!(older("redisfleet:group:ns/shop:7:all"));
        assert!(older("redisfleet:group:ns/shop:19:3"));
        // This plan, a newer one, one the table still migrates, a key not of this policy or
        // not named by a plan.
        assert!(!older("redisfleet:group:ns/shop:20:3"));
        assert!(!older("redisfleet:group:ns/shop:21:3"));
        assert!(!older("redisfleet:group:ns/shop:12:3"));
        assert!(!older("redisfleet:group:ns/shopping:7:3"));
        assert!(!older("redisfleet:group:ns/shop:x7:3"));
        assert!(!older("redisfleet:group:ns/shop:"));
        let importing = b"redisfleet:importing:ns/shop:";
        assert!(of_an_older_plan(
            b"redisfleet:importing:ns/shop:7:user:0-8191",
            importing,
            20,
            &live
        ));
        let roster = crate::redis::protocol::names::roster("ns/shop", 7);
        assert!(of_an_older_plan(
            roster.as_bytes(),
            b"redisfleet:roster:ns/shop:",
            20,
            &live
        ));
    }
}
