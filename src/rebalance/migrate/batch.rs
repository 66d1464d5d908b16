//! Moving keys in batches (see `docs/protocol.md`, "Moving a key"): take scripts on the
//! source (a few dozen keys per call, a memory budget per call), one restore script per call
//! on the target, one finish script; several batches in flight at once.

use bytes::Bytes;
use futures::future::join_all;

use crate::redis::protocol::mover::{self, MoveError, Restore, Restored, Taken};
use crate::redis::protocol::names;

use super::{BIG_VALUE_BYTES, Error, Instance};

/// Keys per take or restore script call: a call holds its Redis for about this many keys' work
/// (a few hundred microseconds for small values).
const KEYS_PER_SCRIPT: usize = 64;

/// Keys per take or restore script call once some sidecar sends the moving instances traffic
/// (`pacing: Adaptive`, [`Share::Gentle`]): an application command that arrives during a call
/// waits until it ends, so beside traffic a call holds its Redis a quarter as long.
const GENTLE_KEYS_PER_SCRIPT: usize = 16;

/// Keys per batch of the copy while its scripts are gentle: a gentle batch's calls run one
/// after another, and its first keys stay in transit (their clients wait) until its last
/// restore lands, so it holds four calls, not a `batchSize` of them.
pub(super) const GENTLE_BATCH_KEYS: usize = 4 * GENTLE_KEYS_PER_SCRIPT;

/// Tombstones one finish script call deletes, per key of a take or restore call.
const FINISHED_PER_KEY_TAKEN: usize = 4;

/// DUMP bytes one take call may return: with [`BATCHES_IN_FLIGHT`] batches of a few calls
/// each, the Job holds at most a few dozen MiB of values at a time, whatever their size.
const TAKE_BUDGET: u64 = 2 << 20;

/// Turns of take and restore scripts on one instance: the bulk copy's calls each take
/// [`Share::turns`] of them. While nobody is known to wait behind the copy all of them run at
/// once; otherwise an application's command there waits behind at most two calls (each a few
/// hundred microseconds of the server's time), not behind every batch in flight, and a gentle
/// call takes every turn: beside traffic a command waits behind one take or restore call at
/// most (finish calls, and the calls of keys a sidecar waits for, wait for no turn). A batch's
/// share is set when it is launched: calls of batches launched before traffic was heard run
/// out under theirs.
pub(super) const SCRIPTS_AT_ONCE: usize = 4;

/// How much of an instance the copy's take and restore calls may hold, by what the Job knows
/// of the moving instances' traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Share {
    /// Some sidecar sends the moving instances traffic now (`pacing: Adaptive`): calls of
    /// [`GENTLE_KEYS_PER_SCRIPT`] keys, one at a time.
    Gentle,
    /// The traffic is not known (`pacing: Fixed`), or some sidecar sent some during this Job:
    /// calls of [`KEYS_PER_SCRIPT`] keys, two at a time.
    Bulk,
    /// Nobody is known to wait behind the copy (`pacing: Adaptive`: the newest round of the
    /// sidecars' reports was read, and none that counts came during this Job,
    /// [`Pacing::known_quiet`](super::pacing::Pacing::known_quiet)): [`SCRIPTS_AT_ONCE`] calls
    /// keep each instance busy while the Job's round trips for the others are under way.
    Idle,
}

impl Share {
    /// The turns one take or restore call of the bulk copy waits for.
    fn turns(self) -> u32 {
        match self {
            Share::Gentle => SCRIPTS_AT_ONCE as u32,
            Share::Bulk => (SCRIPTS_AT_ONCE / 2) as u32,
            Share::Idle => 1,
        }
    }

    /// Keys per take or restore script call.
    fn keys_per_script(self) -> usize {
        match self {
            Share::Gentle => GENTLE_KEYS_PER_SCRIPT,
            Share::Bulk | Share::Idle => KEYS_PER_SCRIPT,
        }
    }
}

/// Batches moving at once: the source takes the next ones while the target restores earlier
/// ones, and neither waits for the other's round trips.
pub(super) const BATCHES_IN_FLIGHT: usize = 8;

/// What a batch needs, cloned into each batch in flight (connections are multiplexed).
#[derive(Clone)]
pub(super) struct Batcher {
    pub(super) from: Instance,
    pub(super) to: Instance,
    pub(super) mover: mover::Mover,
    /// Keys of the copy's batches in flight (registered by the copy when it launches one,
    /// [`InTransit`]): the Job's other moves leave them to their batch.
    pub(super) in_transit: InTransit,
    /// The plan's slot group states ([`names::slot_group_prefix`](crate::redis::protocol::names::slot_group_prefix)): a take marks its keys' groups moving.
    pub(super) groups: String,
    /// Takes and restores wait for their turns ([`SCRIPTS_AT_ONCE`]): the bulk copy. Keys a
    /// sidecar waits for, and the few left over, go past the queue.
    pub(super) queued: bool,
    /// How much of the instances the calls may hold ([`Share`]).
    pub(super) share: Share,
}

/// A set of names the Job's tasks share.
#[derive(Clone, Default)]
struct SharedSet(std::sync::Arc<std::sync::Mutex<std::collections::HashSet<Bytes>>>);

impl SharedSet {
    fn lock(&self) -> std::sync::MutexGuard<'_, std::collections::HashSet<Bytes>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The slot group states this attempt's take calls have marked moving on one source: a later
/// take leaves them out ([`mover::Mover::take_marking`]). Without it a take of 64 keys named
/// some 60 groups, marked again by every call after the first: about one call in seven of the
/// take script's. Sound because a state only moves forward and this plan's are deleted only at
/// its own cleanup, and because the Job's connections never reconnect: a source that restarts
/// (or fails over) breaks them and ends the attempt, and the cache with it. A connection that
/// reconnected would have to clear it.
#[derive(Clone, Default)]
pub(super) struct MarkedGroups(SharedSet);

impl MarkedGroups {
    /// Those of `states` no take of this attempt has marked.
    fn unmarked(&self, mut states: Vec<Bytes>) -> Vec<Bytes> {
        let set = self.0.lock();
        states.retain(|s| !set.contains(s));
        states
    }

    /// A take that marked `states` succeeded.
    fn mark(&self, states: Vec<Bytes>) {
        self.0.lock().extend(states);
    }
}

/// The keys the copy's batches have under way. Another move of the same key meanwhile (the
/// urgent keys, which the Job moves while batches are in flight) would take its tombstone as
/// an earlier attempt's and restore it a second time: after the first copy landed and a client
/// deleted the key on the target, that second restore would bring it back. A batch's keys are
/// registered when the copy launches it and leave when the batch ends, except those left in
/// their tombstones for a piecewise copy, which leave once it is done (`Job::settle`).
#[derive(Clone, Default)]
pub(super) struct InTransit(SharedSet);

impl InTransit {
    /// Registers the keys of `keys` that no batch has under way yet (a batch about to be
    /// launched), and returns them: a key a scan returned twice (`SCAN` may, while the
    /// source's table rehashes) stays with the batch that has it.
    pub(super) fn claim(&self, keys: &[Bytes]) -> Vec<Bytes> {
        let mut set = self.0.lock();
        keys.iter()
            .filter(|k| set.insert((*k).clone()))
            .cloned()
            .collect()
    }

    /// `keys` are no longer under way.
    pub(super) fn leave<'a>(&self, keys: impl IntoIterator<Item = &'a Bytes>) {
        let mut set = self.0.lock();
        for k in keys {
            set.remove(k);
        }
    }

    /// `keys` without those under way.
    pub(super) fn not_under_way(&self, keys: &[Bytes]) -> Vec<Bytes> {
        let set = self.0.lock();
        keys.iter().filter(|k| !set.contains(*k)).cloned().collect()
    }

    /// Whether no key is under way.
    pub(super) fn is_empty(&self) -> bool {
        self.0.lock().is_empty()
    }
}

/// What a batch left to the Job.
#[derive(Default)]
pub(super) struct BatchOutcome {
    /// Keys moved and finished.
    pub(super) moved: u64,
    /// Keys now in their tombstones, to copy piece by piece (too big for one DUMP, or a
    /// payload the target refuses), with their expiry (Unix ms, -1: none).
    pub(super) piecewise: Vec<(Bytes, i64)>,
    /// Keys left alone (the take's memory budget was spent): to take again.
    pub(super) later: Vec<Bytes>,
}

pub(super) fn move_error(key: &[u8], source: MoveError) -> Error {
    match source {
        MoveError::Fenced => Error::Superseded,
        source => Error::Move {
            key: String::from_utf8_lossy(key).into_owned(),
            source,
        },
    }
}

impl Batcher {
    /// Moves a batch: takes every key out of the source (into its tombstone), restores them
    /// on the target (a key the target has already stays as it is there), finishes the moves.
    pub(super) async fn move_batch(self, keys: Vec<Bytes>) -> Result<BatchOutcome, Error> {
        let in_transit = self.in_transit.clone();
        let outcome = self.run(&keys).await;
        // Whatever happened, the batch is over; a key left in its tombstone for the piecewise
        // copy stays under way until that copy is done.
        let piecewise: std::collections::HashSet<&Bytes> = match &outcome {
            Ok(o) => o.piecewise.iter().map(|(k, _)| k).collect(),
            Err(_) => Default::default(),
        };
        in_transit.leave(keys.iter().filter(|k| !piecewise.contains(k)));
        outcome
    }

    async fn run(&self, keys: &[Bytes]) -> Result<BatchOutcome, Error> {
        let first = keys.first().cloned().unwrap_or_default();
        let (per_call, turns) = (self.share.keys_per_script(), self.share.turns());
        // 1. Take them out of the source: concurrent calls, pipelined on the connection.
        let calls = keys.chunks(per_call).map(|chunk| {
            let mut conn = self.from.data.clone();
            let scripts = self.queued.then(|| self.from.scripts.clone());
            let mover = self.mover.clone();
            let groups = self.groups.clone();
            let marked = self.from.marked.clone();
            async move {
                let _turn = match &scripts {
                    Some(s) => s.acquire_many(turns).await.ok(),
                    None => None,
                };
                let states = marked.unmarked(names::slot_group_states_of(&groups, chunk));
                let taken = mover
                    .take_marking(&mut conn, chunk, &states, BIG_VALUE_BYTES, TAKE_BUDGET)
                    .await;
                if taken.is_ok() {
                    marked.mark(states);
                }
                taken
            }
        });
        let mut taken = Vec::with_capacity(keys.len());
        for answer in join_all(calls).await {
            taken.extend(answer.map_err(|e| move_error(&first, e))?);
        }
        let mut outcome = BatchOutcome::default();
        let mut restores: Vec<Restore> = Vec::new();
        let mut finish: Vec<Bytes> = Vec::new();
        for (key, t) in keys.iter().zip(taken) {
            match t {
                Taken::None => {}
                Taken::Later => outcome.later.push(key.clone()),
                // An expiry in the past: RESTORE … ABSTTL leaves nothing behind.
                Taken::Value { dump, expire_at } => restores.push(Restore {
                    key: key.clone(),
                    expire_at: u64::try_from(expire_at).unwrap_or(0),
                    dump,
                }),
                Taken::Big { expire_at, .. } => outcome.piecewise.push((key.clone(), expire_at)),
            }
        }
        // 2. Restore on the target.
        let calls = restores.chunks(per_call).map(|group| {
            let mut conn = self.to.data.clone();
            let scripts = self.queued.then(|| self.to.scripts.clone());
            let mover = self.mover.clone();
            async move {
                let _turn = match &scripts {
                    Some(s) => s.acquire_many(turns).await.ok(),
                    None => None,
                };
                (group, mover.restore(&mut conn, group).await)
            }
        });
        for (group, answers) in join_all(calls).await {
            let answers = answers.map_err(|e| move_error(&group[0].key, e))?;
            for (r, a) in group.iter().zip(answers) {
                match a {
                    Restored::Done | Restored::Present => finish.push(r.key.clone()),
                    // Another Redis version on the target: copy it type by type.
                    Restored::Failed(e) if e.contains("DUMP payload") => {
                        let at = if r.expire_at == 0 {
                            -1
                        } else {
                            r.expire_at as i64
                        };
                        outcome.piecewise.push((r.key.clone(), at));
                    }
                    Restored::Failed(e) => {
                        return Err(move_error(&r.key, MoveError::Server(e)));
                    }
                }
            }
        }
        let mut conn = self.from.data.clone();
        // 3. Finish on the source, without waiting for a turn: deleting tombstones is cheap,
        //    and the keys are in transit (commands on them wait) until it is done.
        for group in finish.chunks(per_call * FINISHED_PER_KEY_TAKEN) {
            self.mover
                .finish(&mut conn, group)
                .await
                .map_err(|e| move_error(&group[0], e))?;
        }
        outcome.moved = finish.len() as u64;
        Ok(outcome)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// How many calls of one share hold an instance's turns at once.
    fn side_by_side(share: Share) -> usize {
        let turns = tokio::sync::Semaphore::new(SCRIPTS_AT_ONCE);
        // (Each call holds its turns until the end: the permits are kept, not dropped.)
        let held: Vec<_> = std::iter::from_fn(|| turns.try_acquire_many(share.turns()).ok())
            .take(SCRIPTS_AT_ONCE + 1)
            .collect();
        held.len()
    }

    #[test]
    fn beside_traffic_a_command_waits_behind_one_call_and_otherwise_behind_two_at_most() {
        assert_eq!(side_by_side(Share::Gentle), 1);
        assert_eq!(side_by_side(Share::Bulk), 2);
        // Nobody waits: every turn is the copy's.
        assert_eq!(side_by_side(Share::Idle), SCRIPTS_AT_ONCE);
        assert!(Share::Gentle.keys_per_script() < Share::Bulk.keys_per_script());
        // A bulk call running beside idle ones waits until two turns are free.
        let turns = tokio::sync::Semaphore::new(SCRIPTS_AT_ONCE);
        let idle: Vec<_> = (0..3)
            .map(|_| turns.try_acquire_many(Share::Idle.turns()).unwrap())
            .collect();
        assert!(turns.try_acquire_many(Share::Bulk.turns()).is_err());
        drop(idle);
        assert!(turns.try_acquire_many(Share::Bulk.turns()).is_ok());
    }
}
