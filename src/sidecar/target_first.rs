//! Whether a read in a migrating range asks the target first (`docs/protocol.md`, "Reading on
//! the target first"). Through the guard, a read of a key that already moved costs two round
//! trips: the guard on the source answers `ASK`, then the target runs it. Once the source
//! imports, a key the target holds is the range's live copy, so a read can go to the target
//! first and take one round trip; a key still on the source (or on neither) then costs one
//! round trip more than the guard alone. Early in a move most keys are on the source, late in
//! it most are on the target: each migrating range keeps a score of what the last reads found,
//! and reads go to the target first while that saves more round trips than it costs.
//!
//! Whatever the score says, a read of keys the sidecar already knows are off the source for
//! good ([`KnownMoved`]) goes to the target alone.

use std::collections::HashSet;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI32, AtomicU8, Ordering};

use bytes::Bytes;
use prometheus_client::metrics::counter::Counter;

use crate::redis::protocol::mover::TARGET_SERVES;

/// What one read of a migrating range found. Each counts what asking the target first gains
/// against asking the guard first: a key on the target takes one round trip instead of two; a
/// key on the source two instead of one (the target, then the guard); a key on neither side
/// three instead of two (the target, the guard's `ASK`, the target again). So the score rises
/// while more reads find their keys moved than not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadFound {
    /// Asked first, the target held every key and answered: a round trip saved.
    OnTarget,
    /// Asked first, the target did not hold every key: a round trip spent before the guard
    /// (whose answer is then not recorded: it adds nothing).
    NotOnTarget,
    /// The guard, asked first, ran it on the source: asking the target first would have cost
    /// a round trip.
    OnSource,
    /// Asked first, the target could not serve reads of the range at all: it has no imported
    /// marker (not yet, or never: a move into a range the target served already) or did not
    /// answer. The score drops to its floor, so reads take the guard first until as many again
    /// have found their keys moved.
    Unusable,
    /// The guard, asked first, answered `ASK` and the target found the keys: asking the
    /// target first would have saved a round trip. (When the target found nothing either, the
    /// read is not recorded: the keys are on neither side, and asking the target first would
    /// have cost a round trip only while it is tried.)
    Asked,
}

impl ReadFound {
    fn weight(self) -> i32 {
        match self {
            Self::OnTarget | Self::Asked => 1,
            Self::NotOnTarget | Self::OnSource => -1,
            Self::Unusable => -2 * LIMIT,
        }
    }
}

/// The score of one migrating range in one table version, shared by the sidecar's clients.
#[derive(Debug, Default)]
pub struct TargetFirst {
    score: AtomicI32,
    served: Counter,
    missed: Counter,
}

/// How far the score goes either way: about as many reads as it takes to change course.
const LIMIT: i32 = 16;

impl TargetFirst {
    /// A score at zero (the guard first), counting reads the target served in `served` and
    /// those it did not in `missed`.
    pub fn new(served: Counter, missed: Counter) -> Self {
        Self {
            score: AtomicI32::new(0),
            served,
            missed,
        }
    }

    /// Whether the next read asks the target first.
    pub fn ask_target(&self) -> bool {
        self.score.load(Ordering::Relaxed) > 0
    }

    /// Records what a read found.
    pub fn record(&self, found: ReadFound) {
        match found {
            ReadFound::OnTarget => {
                self.served.inc();
            }
            ReadFound::NotOnTarget | ReadFound::Unusable => {
                self.missed.inc();
            }
            ReadFound::OnSource | ReadFound::Asked => {}
        }
        let w = found.weight();
        let _ = self
            .score
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |s| {
                Some((s + w).clamp(-LIMIT, LIMIT))
            });
    }
}

/// Keys of a table version's migrating ranges that the sidecar knows have left the source for
/// good (`docs/protocol.md`, "Reading on the target first"): a read of such keys goes to the
/// target alone and takes one round trip, with no check, whatever the range's score says.
/// A key is known moved when
/// - the target, asked first, held it beside the range's imported marker ([`ReadFound::OnTarget`]):
///   a key of the range on the target is then its live copy, and the source never gets it back;
/// - the guard answered `ASK` to a command that may write it, in a move where that proves it
///   ([`AskProves`]): the source had neither the key nor its tombstone, and the `ASK` marked
///   its slot group moving, so no script creates it on the source again, and no other command
///   does (the guard runs a command there only where all its keys are present; older tables
///   are fenced off).
///
/// An `ASK` to a read proves nothing for later: it marks no slot group, so a script of the
/// group may still create the key on the source. Nor does a read that found the key on a
/// target without the marker: a move into a range the target served already trusts the
/// source's copy.
///
/// The facts hold for as long as the table version that routed the commands: a new version
/// starts with nothing known. The set is bounded: two generations of at most
/// [`GENERATION_BYTES`] each; when the newer fills up, the older is dropped, and a key found
/// in the older one is carried into the newer, so keys read often stay known. Keys longer than
/// [`LONGEST_KEY`] are not kept.
#[derive(Debug, Default)]
pub struct KnownMoved(Mutex<Generations>);

#[derive(Debug, Default)]
struct Generations {
    newer: HashSet<(u16, Bytes)>,
    older: HashSet<(u16, Bytes)>,
    /// What [`Generations::newer`] holds, by [`footprint`].
    newer_bytes: usize,
}

/// Whether the guard's `ASK` to a write proves its keys off a move's source for good: only
/// where scripts of the move are decided by slot groups, which the `ASK` marks. Not in a move
/// into a range its target served already (its importing marker ends with
/// [`TARGET_SERVES`]: scripts there are decided by their declared keys and may create any
/// other key on the source), nor in a plan whose Job keeps no group states (its own state
/// absent on the source: a Job of an older release). Asked of the source once per move and
/// table version ([`ask_proves`]), after the first such `ASK`.
#[derive(Debug, Default)]
pub struct AskProves(AtomicU8);

impl AskProves {
    /// `None` until the source was asked.
    pub fn get(&self) -> Option<bool> {
        match self.0.load(Ordering::Relaxed) {
            1 => Some(true),
            2 => Some(false),
            _ => None,
        }
    }

    /// What the source answered.
    pub fn set(&self, proves: bool) {
        self.0.store(if proves { 1 } else { 2 }, Ordering::Relaxed);
    }
}

/// [`AskProves`] from the source's replies to `GET <importing marker>` and `GET <the plan's
/// own slot group state>`, after an `ASK`: `true` for a marker that is not a served range's and
/// a state that is there, `false` for a served range's marker or no state; `None` when a reply
/// is neither a value nor nil, or the marker is gone (the move's cleanup removed it: nothing
/// to keep).
pub fn ask_proves(marker: &[u8], plan_state: &[u8]) -> Option<bool> {
    let nil = |reply: &[u8]| reply == b"$-1\r\n" || reply == b"_\r\n";
    let value = |reply: &[u8]| reply.starts_with(b"$") && !nil(reply);
    if !value(marker) || !(value(plan_state) || nil(plan_state)) {
        return None;
    }
    Some(!marker.ends_with(format!("{TARGET_SERVES}\r\n").as_bytes()) && value(plan_state))
}

/// The most one generation of [`KnownMoved`] holds, counting [`footprint`].
const GENERATION_BYTES: usize = 512 * 1024;
/// The longest key [`KnownMoved`] keeps.
const LONGEST_KEY: usize = 512;

/// What one known key costs: its bytes and about as much again for the set's entry.
fn footprint(key: &[u8]) -> usize {
    key.len() + 64
}

impl KnownMoved {
    /// Records that `keys` of migrating range `m` are off its source for good (see the type's
    /// rules: the caller vouches for them). The keys are copied: they often point into a
    /// client's read buffer, which must not stay alive with them.
    pub fn remember(&self, m: u16, keys: &[Bytes]) {
        let mut g = self.0.lock().unwrap_or_else(|e| e.into_inner());
        for key in keys {
            if key.len() > LONGEST_KEY {
                continue;
            }
            g.insert((m, Bytes::copy_from_slice(key)));
        }
    }

    /// Whether every one of `keys` of migrating range `m` is known off the source.
    pub fn all(&self, m: u16, keys: &[Bytes]) -> bool {
        if keys.is_empty() {
            return false;
        }
        let mut g = self.0.lock().unwrap_or_else(|e| e.into_inner());
        for key in keys {
            let entry = (m, key.clone());
            if g.newer.contains(&entry) {
                continue;
            }
            match g.older.take(&entry) {
                Some(known) => g.insert(known),
                None => return false,
            }
        }
        true
    }
}

impl Generations {
    fn insert(&mut self, entry: (u16, Bytes)) {
        if self.newer.contains(&entry) {
            return;
        }
        let size = footprint(&entry.1);
        if self.newer_bytes + size > GENERATION_BYTES {
            self.older = std::mem::take(&mut self.newer);
            self.newer_bytes = 0;
        }
        self.newer_bytes += size;
        self.newer.insert(entry);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ask_proves_keys_moved_only_where_scripts_go_by_slot_groups() {
        let marker = b"$6\r\n655361\r\n";
        let served = format!("${}\r\n655361{TARGET_SERVES}\r\n", 6 + TARGET_SERVES.len());
        let open = b"$4\r\nopen\r\n";
        assert_eq!(ask_proves(marker, open), Some(true));
        assert_eq!(ask_proves(marker, b"$7\r\nclosing\r\n"), Some(true));
        assert_eq!(
            ask_proves(served.as_bytes(), open),
            Some(false),
            "a served range's move"
        );
        assert_eq!(
            ask_proves(marker, b"$-1\r\n"),
            Some(false),
            "a Job that keeps no group states"
        );
        assert_eq!(
            ask_proves(marker, b"_\r\n"),
            Some(false),
            "the same in RESP3"
        );
        assert_eq!(ask_proves(b"$-1\r\n", open), None, "no longer importing");
        assert_eq!(ask_proves(marker, b"-BUSY a script runs\r\n"), None);
        assert_eq!(ask_proves(b"-LOADING\r\n", open), None);
        let a = AskProves::default();
        assert_eq!(a.get(), None);
        a.set(false);
        assert_eq!(a.get(), Some(false));
        a.set(true);
        assert_eq!(a.get(), Some(true));
    }

    #[test]
    fn known_keys_are_per_range_and_all_must_be_known() {
        let k = KnownMoved::default();
        let keys = [Bytes::from_static(b"user:1"), Bytes::from_static(b"user:2")];
        assert!(!k.all(0, &keys[..1]));
        k.remember(0, &keys[..1]);
        assert!(k.all(0, &keys[..1]));
        assert!(
            !k.all(1, &keys[..1]),
            "another range's key of the same name"
        );
        assert!(!k.all(0, &keys), "one of two known");
        k.remember(0, &keys[1..]);
        assert!(k.all(0, &keys));
        assert!(!k.all(0, &[]), "no key, nothing to read on the target");
        let long = Bytes::from(vec![b'x'; LONGEST_KEY + 1]);
        k.remember(0, std::slice::from_ref(&long));
        assert!(!k.all(0, &[long]), "too long to keep");
    }

    #[test]
    fn a_full_memory_forgets_the_keys_not_read_since_the_last_turn() {
        let k = KnownMoved::default();
        let key = |i: usize| Bytes::from(format!("user:{i:08}"));
        let per_generation = GENERATION_BYTES / footprint(&key(0));
        let hot = Bytes::from_static(b"hot");
        k.remember(3, std::slice::from_ref(&hot));
        for i in 0..per_generation * 3 {
            k.remember(3, &[key(i)]);
            // The hot key is read now and then: it stays known.
            if i % (per_generation / 4) == 0 {
                assert!(k.all(3, std::slice::from_ref(&hot)), "after {i} keys");
            }
        }
        let g = k.0.lock().unwrap();
        let held: usize = g
            .newer
            .iter()
            .chain(&g.older)
            .map(|e| footprint(&e.1))
            .sum();
        assert!(held <= 2 * GENERATION_BYTES, "{held} bytes");
        assert_eq!(
            g.newer_bytes,
            g.newer.iter().map(|e| footprint(&e.1)).sum::<usize>()
        );
        drop(g);
        assert!(
            k.all(3, &[key(per_generation * 3 - 1)]),
            "the latest is known"
        );
        assert!(!k.all(3, &[key(0)]), "the oldest was forgotten");
    }

    #[test]
    fn known_keys_do_not_hold_the_buffer_they_came_from() {
        let k = KnownMoved::default();
        let buffer = Bytes::from(vec![b'k'; 16 * 1024]);
        k.remember(0, &[buffer.slice(0..8)]);
        let g = k.0.lock().unwrap();
        let (_, kept) = g.newer.iter().next().unwrap();
        assert_eq!(kept.len(), 8);
        assert!(
            !std::ptr::eq(kept.as_ptr(), buffer.as_ptr()),
            "the key was copied out of the buffer"
        );
    }

    #[test]
    fn reads_start_through_the_guard_and_turn_to_the_target_as_keys_move() {
        let t = TargetFirst::default();
        assert!(!t.ask_target(), "nothing moved yet: the guard first");
        t.record(ReadFound::OnSource);
        assert!(!t.ask_target());
        // Keys found moved, read by read, tip it.
        t.record(ReadFound::Asked);
        assert!(!t.ask_target());
        t.record(ReadFound::Asked);
        assert!(t.ask_target());
        for _ in 0..100 {
            t.record(ReadFound::OnTarget);
        }
        assert_eq!(t.served.get(), 100);
        // Capped: a long run of hits does not make it deaf to a change.
        for _ in 0..16 {
            t.record(ReadFound::NotOnTarget);
        }
        assert!(!t.ask_target(), "{:?}", t.score);
        assert_eq!(t.missed.get(), 16);
    }

    #[test]
    fn reads_of_keys_on_neither_side_turn_back_to_the_guard() {
        let t = TargetFirst::default();
        for _ in 0..4 {
            t.record(ReadFound::Asked);
        }
        assert!(t.ask_target());
        // Misses everywhere: each target-first try is a round trip spent.
        for _ in 0..4 {
            t.record(ReadFound::NotOnTarget);
        }
        assert!(!t.ask_target());
        // As many round trips saved as spent: the guard first.
        t.record(ReadFound::OnTarget);
        t.record(ReadFound::NotOnTarget);
        assert!(!t.ask_target());
    }

    #[test]
    fn a_target_without_its_marker_is_asked_again_only_after_a_full_swing() {
        let t = TargetFirst::default();
        for _ in 0..LIMIT {
            t.record(ReadFound::Asked);
        }
        assert!(t.ask_target());
        t.record(ReadFound::Unusable);
        assert!(!t.ask_target());
        for _ in 0..LIMIT {
            t.record(ReadFound::Asked);
        }
        assert!(!t.ask_target(), "the floor is {LIMIT} below zero");
        t.record(ReadFound::Asked);
        assert!(t.ask_target());
        assert_eq!(t.missed.get(), 1);
    }
}
