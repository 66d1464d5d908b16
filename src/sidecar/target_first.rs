//! Whether a read in a migrating range asks the target first (`docs/protocol.md`, "Reading on
//! the target first"). Through the guard, a read of a key that already moved costs two round
//! trips: the guard on the source answers `ASK`, then the target runs it. Once the source
//! imports, a key the target holds is the range's live copy, so a read can go to the target
//! first and take one round trip; a key still on the source (or on neither) then costs one
//! round trip more than the guard alone. Early in a move most keys are on the source, late in
//! it most are on the target: each migrating range keeps a score of what the last reads found,
//! and reads go to the target first while that saves more round trips than it costs.

use std::sync::atomic::{AtomicI32, Ordering};

use prometheus_client::metrics::counter::Counter;

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

#[cfg(test)]
mod tests {
    use super::*;

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
