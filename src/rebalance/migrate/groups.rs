//! Slot groups: the unit a script's keys move in (`docs/protocol.md`, "Scripts"). A script may
//! touch keys it does not declare (BullMQ builds its job keys from a declared one), so a
//! sidecar runs one on a migrating range only where every key of its declared keys' slot
//! groups is: on the source while the move has touched none of them, on the target once all
//! of them moved. In between it asks the Job to move those groups whole, here. At the end of
//! the copy every group counts as moving until the sweep found the sources empty; then all
//! of them count as moved.

use std::collections::{BTreeSet, HashSet};

use bytes::Bytes;
use tracing::{debug, warn};

use crate::redis::keys::SCAN_COUNT;
use crate::redis::protocol::heartbeat;
use crate::redis::protocol::names::{
    self, GROUP_MOVED, GROUP_MOVING, GROUPS_CLOSING, GROUPS_OPEN, KEEP_ANY,
};
use crate::routing::slots::key_slot;

use super::batch::move_error;
use super::copy::move_of;
use super::{Error, Job};

/// Group numbers named by `requests` ([`names::slot_group`] keys) under `prefix`: requests of
/// other plans (an older one's sidecars) and the plan's own state are left out.
fn requested_groups(prefix: &str, requests: &[Vec<u8>]) -> BTreeSet<u16> {
    requests
        .iter()
        .filter_map(|r| r.strip_prefix(prefix.as_bytes()))
        .filter_map(|g| std::str::from_utf8(g).ok()?.parse::<u16>().ok())
        .collect()
}

impl Job {
    /// What the names of this plan's group states start with.
    pub(super) fn group_prefix(&self) -> String {
        names::slot_group_prefix(
            &self.mover.policy,
            u64::try_from(self.config.plan_id).unwrap_or_default(),
        )
    }

    /// Takes the slot groups that sidecars asked for (a script waits on them) off the urgent
    /// group lists, to move with [`Job::move_asked_groups`].
    pub(super) async fn ask_groups(&mut self) -> Result<(), Error> {
        let list = names::urgent_groups(&self.mover.policy);
        let prefix = self.group_prefix();
        for from in self.sources() {
            let source = self.instance(&from)?;
            let popped: Option<Vec<Vec<u8>>> = redis::cmd("LPOP")
                .arg(&list)
                .arg(1_000)
                .query_async(&mut source.conn)
                .await
                .map_err(|e| source.err(&e))?;
            let groups = requested_groups(&prefix, &popped.unwrap_or_default());
            if !groups.is_empty() {
                self.groups_asked.entry(from).or_default().extend(groups);
            }
        }
        Ok(())
    }

    /// Moves whole the slot groups asked for that have not moved yet. Call with no batch of
    /// the copy in flight: one could rename a key of theirs while the walk passes it (the walk
    /// would see neither name), or land after the group counts as moved.
    pub(super) async fn move_asked_groups(&mut self) -> Result<(), Error> {
        debug_assert!(self.in_transit.is_empty());
        let prefix = self.group_prefix();
        for (from, groups) in std::mem::take(&mut self.groups_asked) {
            // A request repeated while its groups moved (a script retries every few
            // milliseconds) costs no second walk.
            let states: Vec<String> = groups
                .iter()
                .map(|g| names::slot_group_in(&prefix, *g))
                .collect();
            let source = self.instance(&from)?;
            let now: Vec<Option<String>> = redis::cmd("MGET")
                .arg(&states)
                .query_async(&mut source.conn)
                .await
                .map_err(|e| source.err(&e))?;
            let left: BTreeSet<u16> = groups
                .into_iter()
                .zip(now)
                .filter(|(_, state)| state.as_deref() != Some(GROUP_MOVED))
                .map(|(g, _)| g)
                .collect();
            if !left.is_empty() {
                self.move_groups(&from, &left).await?;
            }
        }
        Ok(())
    }

    /// Moves every key of `groups` in this plan's moves out of `from`, then marks them moved.
    /// They are marked moving first: from then on no script of theirs runs on the source and
    /// the guard creates no key there (it runs a command on the source only where all its keys
    /// are), so the one walk below finds every key of theirs the source will ever hold.
    async fn move_groups(&mut self, from: &str, groups: &BTreeSet<u16>) -> Result<(), Error> {
        let prefix = self.group_prefix();
        let states: Vec<String> = groups
            .iter()
            .map(|g| names::slot_group_in(&prefix, *g))
            .collect();
        let mover = self.mover.clone();
        let source = self.instance(from)?;
        mover
            .set_group_states(&mut source.conn, &states, GROUP_MOVING, KEEP_ANY)
            .await
            .map_err(|e| move_error(prefix.as_bytes(), e))?;
        let resolver = self.resolver.clone();
        let moves = self.moves_from(from);
        let mut keys: Vec<Vec<Bytes>> = vec![Vec::new(); moves.len()];
        let mut seen: HashSet<Vec<u8>> = HashSet::new();
        let mut cursor = 0u64;
        // Not yielded: a client waits on these keys.
        loop {
            let source = self.instance(from)?;
            let (next, page) =
                crate::redis::keys::scan_page(&mut source.conn, cursor, b"*", SCAN_COUNT)
                    .await
                    .map_err(|e| source.err(&e))?;
            for name in page {
                let key = names::key_of_tomb(&name).unwrap_or(&name);
                if !groups.contains(&names::group_of(key_slot(key))) {
                    continue;
                }
                if let Some(m) = move_of(&resolver, &moves, key)
                    && seen.insert(key.to_vec())
                {
                    keys[m].push(Bytes::copy_from_slice(key));
                }
            }
            if next == 0 {
                break;
            }
            cursor = next;
            // Commands split by the move wait on the urgent keys meanwhile. Moved here, in
            // this task, they are moved and finished before the group counts as moved (only
            // batches launched alongside could rename a key under the walk).
            if self.urgent_read.elapsed() >= super::control::URGENT_EVERY {
                self.urgent_keys().await?;
            }
        }
        let found: usize = keys.iter().map(Vec::len).sum();
        for ((_, _, to), keys) in moves.iter().zip(keys) {
            self.move_keys(from, to, &keys).await?;
        }
        let source = self.instance(from)?;
        mover
            .set_group_states(&mut source.conn, &states, GROUP_MOVED, "")
            .await
            .map_err(|e| move_error(prefix.as_bytes(), e))?;
        debug!(instance = %from, groups = groups.len(), keys = found, "moved slot groups whole for scripts");
        Ok(())
    }

    /// Sets the plan's own group state on `from` to `state`, leaving it as it is when it is
    /// `keep` ([`KEEP_ANY`]: any state).
    async fn set_plan_groups(&mut self, from: &str, state: &str, keep: &str) -> Result<(), Error> {
        let all = vec![names::slot_groups(
            &self.mover.policy,
            u64::try_from(self.config.plan_id).unwrap_or_default(),
        )];
        let mover = self.mover.clone();
        let source = self.instance(from)?;
        mover
            .set_group_states(&mut source.conn, &all, state, keep)
            .await
            .map_err(|e| move_error(all[0].as_bytes(), e))
    }

    /// Tells the sidecars that this Job keeps the plan's group states, before the sources
    /// import (until then every script runs on the source): `open`, unless a state is there
    /// already. A source that imports already had an attempt of an older version, which kept
    /// no states while keys moved: its groups are `closing` (every one counts as moving). So
    /// are those of a source where a live sidecar does not report the `groups` feature: its
    /// guard sends commands to the target without marking their groups, so an absent state
    /// would not mean that nothing of the group left.
    pub(super) async fn open_groups(&mut self) -> Result<(), Error> {
        let mut markers: std::collections::BTreeMap<String, Vec<String>> = Default::default();
        // Not the markers of moves into ranges their targets serve already: those are set
        // before the flip. Their sources get a state all the same: it tells the sidecars that
        // this Job moves slot groups, which their scripts wait for (`docs/protocol.md`,
        // "Draining into a served range"); with none (a Job of an earlier release) they go by
        // their keys.
        for (from, m, serves) in self.migrations() {
            let markers = markers.entry(from).or_default();
            if !serves {
                markers.push(names::importing(&self.mover.policy, &m));
            }
        }
        let policy = self.mover.policy.clone();
        for (from, markers) in markers {
            let source = self.instance(&from)?;
            let importing: u64 = if markers.is_empty() {
                0
            } else {
                redis::cmd("EXISTS")
                    .arg(&markers)
                    .query_async(&mut source.conn)
                    .await
                    .map_err(|e| source.err(&e))?
            };
            let older =
                heartbeat::live_without(&mut source.conn, &policy, heartbeat::GROUPS_FEATURE)
                    .await
                    .map_err(|e| source.err(&e))?;
            if !older.is_empty() {
                warn!(
                    instance = %from,
                    count = older.len(),
                    first = %older.iter().take(10).cloned().collect::<Vec<_>>().join(", "),
                    "sidecars of an older release route here: every slot group counts as moving (scripts of the moving ranges wait for theirs to move whole)"
                );
                // Also over an `open` an earlier attempt set (never over `moved`).
                self.set_plan_groups(&from, GROUPS_CLOSING, GROUP_MOVED)
                    .await?;
                continue;
            }
            let state = if importing > 0 {
                GROUPS_CLOSING
            } else {
                GROUPS_OPEN
            };
            self.set_plan_groups(&from, state, KEEP_ANY).await?;
        }
        Ok(())
    }

    /// Every group counts as moving from now on (the copy is over).
    pub(super) async fn close_groups(&mut self) -> Result<(), Error> {
        for from in self.sources() {
            self.set_plan_groups(&from, GROUPS_CLOSING, GROUP_MOVED)
                .await?;
        }
        Ok(())
    }

    /// Every group moved (a sweep pass that started after [`Job::close_groups`] found
    /// nothing).
    pub(super) async fn groups_moved(&mut self) -> Result<(), Error> {
        for from in self.sources() {
            self.set_plan_groups(&from, GROUP_MOVED, "").await?;
        }
        Ok(())
    }

    /// Removes the plan's group states from the sources (once no sidecar routes by the
    /// migrating table).
    pub(super) async fn remove_group_states(&mut self) -> Result<(), Error> {
        let prefix = self.group_prefix();
        let mut states: Vec<Bytes> = (0..=names::group_of(crate::routing::slots::MAX_SLOT))
            .map(|g| Bytes::from(names::slot_group_in(&prefix, g)))
            .collect();
        states.push(Bytes::from(names::slot_groups_in(&prefix)));
        let mover = self.mover.clone();
        for from in self.sources() {
            let source = self.instance(&from)?;
            for chunk in states.chunks(1_000) {
                mover
                    .delete(&mut source.conn, chunk)
                    .await
                    .map_err(|e| move_error(prefix.as_bytes(), e))?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::requested_groups;

    #[test]
    fn requests_of_other_plans_are_left_out() {
        let requests: Vec<Vec<u8>> = [
            "redisfleet:group:a/b:7:12",
            "redisfleet:group:a/b:7:12",
            "redisfleet:group:a/b:7:1023",
            "redisfleet:group:a/b:6:3",
            "redisfleet:group:a/b:7:all",
            "redisfleet:group:a/b:70:4",
        ]
        .iter()
        .map(|s| s.as_bytes().to_vec())
        .collect();
        let got: Vec<u16> = requested_groups("redisfleet:group:a/b:7:", &requests)
            .into_iter()
            .collect();
        assert_eq!(got, vec![12, 1023]);
    }
}
