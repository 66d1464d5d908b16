//! The rosters of sources drained into ranges their targets serve already (`roster.rs` in the
//! data protocol; `docs/protocol.md`, "The roster of a legacy Redis"). The count walks every
//! key of each source after the fence; for such a source it records them, and writes the
//! roster there once the walk is over, so that sidecars send writes that replace keys the
//! source never had straight to the target. A roster is an optimisation only: a source without room
//! for it, or one that refuses it, goes without, and its commands take the guard as before.

use tracing::{info, warn};

use crate::redis::info::{Info, parse_info};
use crate::redis::protocol::mover::MoveError;
use crate::redis::protocol::roster::{Covered, MAX_KEYS, Roster};
use crate::redis::protocol::{heartbeat, names};

use super::batch::move_error;
use super::{Error, Job};

/// Whether a source whose memory `info` describes has room for a roster of `bytes`: no limit,
/// or the roster and as much again fit under nine tenths of it (a source near its limit may
/// evict, and a key it evicted before the Job moved it would be lost).
fn room_for(info: &Info, bytes: u64) -> bool {
    match (info.maxmemory_limit(), info.used_memory) {
        (None, _) => true,
        (Some(limit), Some(used)) => used.saturating_add(bytes.saturating_mul(2)) <= limit / 10 * 9,
        (Some(_), None) => false,
    }
}

impl Job {
    /// The moves out of `from` a roster of it vouches for: those into ranges their targets
    /// serve already, whose guard runs nothing but reads on the source.
    fn roster_covers(&self, from: &str) -> Vec<Covered> {
        let categories = self.resolver.categories();
        self.steps
            .iter()
            .filter(|s| s.from == from && s.target_serves)
            .map(|s| Covered {
                category: categories[usize::from(s.category)].name.clone(),
                range: s.range,
            })
            .collect()
    }

    /// The name of this plan's rosters on its sources.
    fn roster_name(&self) -> String {
        names::roster(
            &self.mover.policy,
            u64::try_from(self.config.plan_id).unwrap_or_default(),
        )
    }

    /// An empty roster for `from`, sized by its keys now, when it is the source of a move into
    /// a range its target serves already, holds no more than [`MAX_KEYS`] keys, and every live
    /// sidecar there speaks [`heartbeat::SERVED_FEATURE`] (one of an earlier release may run a
    /// script on the source, creating a key the roster would lack). `None` otherwise, or when
    /// the source does not say (logged: the roster only saves time), or when an earlier
    /// attempt of the plan wrote one (it stays: [`Job::keep_roster`]).
    pub(super) async fn start_roster(&mut self, from: &str) -> Option<Roster> {
        let covers = self.roster_covers(from);
        if covers.is_empty() {
            return None;
        }
        let policy = self.mover.policy.clone();
        let name = self.roster_name();
        let source = self.instance(from).ok()?;
        let kept: redis::RedisResult<bool> = redis::cmd("EXISTS")
            .arg(&name)
            .query_async(&mut source.conn)
            .await;
        if kept == Ok(true) {
            info!(instance = %from, "an earlier attempt of the plan wrote the source's roster: it stays");
            return None;
        }
        let keys: redis::RedisResult<u64> =
            redis::cmd("DBSIZE").query_async(&mut source.conn).await;
        let older =
            heartbeat::live_without(&mut source.conn, &policy, heartbeat::SERVED_FEATURE).await;
        match (keys, older) {
            (Ok(keys), Ok(older)) if older.is_empty() && keys <= MAX_KEYS => {
                Some(Roster::with_capacity(keys, covers))
            }
            (Ok(keys), Ok(older)) if older.is_empty() => {
                info!(instance = %from, keys, "too many keys for a roster: sidecars ask the guard for every write");
                None
            }
            (Ok(_), Ok(older)) => {
                info!(instance = %from, count = older.len(), first = %older[0], "sidecars of an earlier release route here: no roster");
                None
            }
            (Err(e), _) | (_, Err(e)) => {
                warn!(instance = %from, error = %source.err(&e), "could not size a roster: sidecars ask the guard for every write");
                None
            }
        }
    }

    /// Writes `roster` on `from` where it has room ([`room_for`]), unless an earlier attempt
    /// of the plan wrote one (as good: no key came to the source since); logs why not
    /// otherwise. Only a newer attempt in charge is an error.
    pub(super) async fn keep_roster(&mut self, from: &str, roster: &Roster) -> Result<(), Error> {
        let encoded = roster.encode();
        let name = self.roster_name();
        let mover = self.mover.clone();
        let source = self.instance(from)?;
        let bytes = encoded.len() as u64;
        let text: redis::RedisResult<String> = redis::cmd("INFO")
            .arg("memory")
            .query_async(&mut source.conn)
            .await;
        let room = match text.map(|t| parse_info(&t)) {
            Ok(Ok(info)) => room_for(&info, bytes),
            Ok(Err(e)) => {
                warn!(instance = %from, error = %e, "unreadable INFO memory: no roster, sidecars ask the guard for every write");
                return Ok(());
            }
            Err(e) => {
                warn!(instance = %from, error = %source.err(&e), "could not read the source's memory: no roster, sidecars ask the guard for every write");
                return Ok(());
            }
        };
        if !room {
            warn!(instance = %from, bytes, "no room for a roster on the source: sidecars ask the guard for every write");
            return Ok(());
        }
        match mover.set_roster(&mut source.conn, &name, &encoded).await {
            Ok(()) => {
                info!(instance = %from, bytes, "wrote the source's roster: sidecars send blind writes of keys it lacks to the target");
                Ok(())
            }
            Err(MoveError::Fenced) => Err(move_error(name.as_bytes(), MoveError::Fenced)),
            Err(e) => {
                warn!(instance = %from, error = %e, "could not write the source's roster: sidecars ask the guard for every write");
                Ok(())
            }
        }
    }

    /// Removes the plan's rosters from the sources (once no sidecar routes by the migrating
    /// table).
    pub(super) async fn remove_rosters(&mut self) -> Result<(), Error> {
        let name = bytes::Bytes::from(self.roster_name());
        let mover = self.mover.clone();
        for from in self.sources() {
            let source = self.instance(&from)?;
            mover
                .delete(&mut source.conn, std::slice::from_ref(&name))
                .await
                .map_err(|e| move_error(&name, e))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(used: u64, max: u64) -> Info {
        parse_info(&format!(
            "# Memory\r\nused_memory:{used}\r\nmaxmemory:{max}\r\n"
        ))
        .unwrap()
    }

    #[test]
    fn a_roster_goes_only_where_it_leaves_room() {
        assert!(room_for(&info(900_000_000, 0), 50_000_000));
        assert!(room_for(&info(20_000_000, 30_000_000), 200_000));
        // Nine tenths of 30 MB is 27 MB: the roster and as much again fit up to it.
        assert!(room_for(&info(26_600_000, 30_000_000), 200_000));
        assert!(!room_for(&info(26_700_000, 30_000_000), 200_000));
        assert!(!room_for(&info(29_000_000, 30_000_000), 1));
    }
}
