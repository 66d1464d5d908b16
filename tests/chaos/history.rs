//! A history checker for the chaos test: every operation a client ran through a sidecar —
//! when it started, when it ended, what it did and what came back — and the rules a cache
//! that loses nothing must obey.
//!
//! Each key has one writer that runs its writes in sequence (through any sidecar), and every
//! write leaves a value no other write leaves, so a read tells exactly which write it saw. A
//! read is then right when the write it saw is not older than the last write acknowledged
//! before the read began, nor than what an earlier read (ended before this one began) saw, and
//! when that write had begun before the read ended. Writes that failed or timed out may or
//! may not have happened; the checker allows both.

use std::collections::BTreeMap;
use std::fmt;

/// What a write leaves behind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    /// The key holds this value.
    Value(String),
    /// The key is absent (deleted, or never written).
    Absent,
}

/// How an operation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Acknowledged.
    Ok,
    /// Failed with a retryable error, or timed out: it may or may not have happened.
    Unknown,
}

/// One write (SET, INCR, DEL, …) of a key, in its writer's order.
#[derive(Debug, Clone)]
pub struct Write {
    /// When it was sent (ns since the test began).
    pub start: u64,
    /// When its reply came (or it gave up).
    pub end: u64,
    /// The key's state after it.
    pub after: State,
    /// How it ended.
    pub outcome: Outcome,
    /// Which sidecar it went through (for the report).
    pub via: usize,
}

/// One read (GET) of a key.
#[derive(Debug, Clone)]
pub struct Read {
    /// When it was sent.
    pub start: u64,
    /// When its reply came.
    pub end: u64,
    /// What it returned.
    pub saw: State,
    /// Which sidecar it went through.
    pub via: usize,
    /// A read at the end of the run, after the faults stopped.
    pub last: bool,
}

/// Everything that happened to one key.
#[derive(Debug, Clone, Default)]
pub struct KeyHistory {
    /// Writes in the writer's order.
    pub writes: Vec<Write>,
    /// Reads in any order.
    pub reads: Vec<Read>,
}

/// What went wrong, counted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// Reads that missed an acknowledged write (older value or nothing), including final reads.
    pub lost_writes: u64,
    /// Reads that saw a value an acknowledged delete had removed.
    pub resurrected_deletes: u64,
    /// Reads that saw a value older than an earlier read had seen (no write was lost).
    pub stale_reads: u64,
    /// Reads that saw a value no write ever left.
    pub phantom_values: u64,
    /// Reads checked.
    pub reads: u64,
    /// Writes acknowledged.
    pub acknowledged: u64,
    /// Examples, for the failure message.
    pub examples: Vec<String>,
}

impl Report {
    /// No rule broken.
    pub fn clean(&self) -> bool {
        self.lost_writes == 0
            && self.resurrected_deletes == 0
            && self.stale_reads == 0
            && self.phantom_values == 0
    }

    fn note(&mut self, example: String) {
        if self.examples.len() < 20 {
            self.examples.push(example);
        }
    }

    /// Adds another report's counts.
    pub fn add(&mut self, other: &Report) {
        self.lost_writes += other.lost_writes;
        self.resurrected_deletes += other.resurrected_deletes;
        self.stale_reads += other.stale_reads;
        self.phantom_values += other.phantom_values;
        self.reads += other.reads;
        self.acknowledged += other.acknowledged;
        for e in &other.examples {
            self.note(e.clone());
        }
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} writes acknowledged, {} reads checked: {} lost writes, {} resurrected deletes, {} stale reads, {} phantom values",
            self.acknowledged,
            self.reads,
            self.lost_writes,
            self.resurrected_deletes,
            self.stale_reads,
            self.phantom_values
        )
    }
}

/// Index of the write that left what `saw` shows: `Some(-1)`-like `None` for the initial
/// absence, `Some(i)` for write i; the candidates when several writes left the same state
/// (only absence repeats).
fn candidates(writes: &[Write], saw: &State) -> Vec<i64> {
    let mut out = Vec::new();
    if *saw == State::Absent {
        out.push(-1);
    }
    for (i, w) in writes.iter().enumerate() {
        if w.after == *saw {
            out.push(i as i64);
        }
    }
    out
}

/// Checks one key's history.
pub fn check_key(key: &str, h: &KeyHistory) -> Report {
    let mut report = Report {
        acknowledged: h.writes.iter().filter(|w| w.outcome == Outcome::Ok).count() as u64,
        ..Report::default()
    };
    // Reads in order of their start, so "what earlier reads saw" is known.
    let mut reads: Vec<&Read> = h.reads.iter().collect();
    reads.sort_by_key(|r| r.start);
    // (end time, index seen) of the reads checked so far.
    let mut seen: Vec<(u64, i64)> = Vec::new();
    for r in reads {
        report.reads += 1;
        // The last write acknowledged before the read began.
        let floor_ack = h
            .writes
            .iter()
            .enumerate()
            .filter(|(_, w)| w.outcome == Outcome::Ok && w.end < r.start)
            .map(|(i, _)| i as i64)
            .max()
            .unwrap_or(-1);
        let floor_seen = seen
            .iter()
            .filter(|(end, _)| *end < r.start)
            .map(|(_, i)| *i)
            .max()
            .unwrap_or(-1);
        let cands = candidates(&h.writes, &r.saw);
        let allowed = |i: i64| i == -1 || h.writes[i as usize].start < r.end;
        let valid: Vec<i64> = cands
            .iter()
            .copied()
            .filter(|&i| allowed(i) && i >= floor_ack && i >= floor_seen)
            .collect();
        if let Some(&i) = valid.first() {
            seen.push((r.end, i));
            continue;
        }
        let describe = |i: i64| {
            if i < 0 {
                "nothing written yet".to_owned()
            } else {
                let w = &h.writes[i as usize];
                format!("write #{i} ({:?}, {:?}, via sidecar {})", w.after, w.outcome, w.via)
            }
        };
        let example = format!(
            "{key}: read via sidecar {}{} saw {:?}; last acknowledged before it: {}; an earlier read saw: {}",
            r.via,
            if r.last { " (final)" } else { "" },
            r.saw,
            describe(floor_ack),
            describe(floor_seen),
        );
        if cands.iter().all(|&i| !allowed(i)) || cands.is_empty() {
            report.phantom_values += 1;
        } else if cands.iter().any(|&i| allowed(i) && i >= floor_ack) {
            // Not older than the acknowledged floor: only older than an earlier read.
            report.stale_reads += 1;
        } else if floor_ack >= 0 && h.writes[floor_ack as usize].after == State::Absent {
            report.resurrected_deletes += 1;
        } else {
            report.lost_writes += 1;
        }
        report.note(example);
        // Count it as seen at its best candidate, so one lost write is not counted again and
        // again by every later read.
        if let Some(&i) = cands.iter().filter(|&&i| allowed(i)).max() {
            seen.push((r.end, i));
        }
    }
    report
}

/// Checks every key.
pub fn check(histories: &BTreeMap<String, KeyHistory>) -> Report {
    let mut total = Report::default();
    for (key, h) in histories {
        total.add(&check_key(key, h));
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(start: u64, end: u64, after: &str, outcome: Outcome) -> Write {
        Write {
            start,
            end,
            after: if after.is_empty() {
                State::Absent
            } else {
                State::Value(after.to_owned())
            },
            outcome,
            via: 0,
        }
    }

    fn r(start: u64, end: u64, saw: &str) -> Read {
        Read {
            start,
            end,
            saw: if saw.is_empty() {
                State::Absent
            } else {
                State::Value(saw.to_owned())
            },
            via: 1,
            last: false,
        }
    }

    #[test]
    fn a_read_of_the_latest_acknowledged_write_is_fine() {
        let h = KeyHistory {
            writes: vec![w(0, 10, "a", Outcome::Ok), w(20, 30, "b", Outcome::Ok)],
            reads: vec![r(40, 50, "b"), r(25, 28, "a"), r(25, 35, "b")],
        };
        assert!(check_key("k", &h).clean(), "{:?}", check_key("k", &h));
    }

    #[test]
    fn the_cross_sidecar_loss_of_issue_10_is_a_lost_write() {
        // SET v2 via A, SET v3 via B (acknowledged), then a read through A sees v2.
        let h = KeyHistory {
            writes: vec![w(0, 10, "v2", Outcome::Ok), w(20, 30, "v3", Outcome::Ok)],
            reads: vec![r(40, 50, "v2")],
        };
        let rep = check_key("user:k", &h);
        assert_eq!(rep.lost_writes, 1, "{rep:?}");
        // Nothing at all is a lost write too.
        let h = KeyHistory {
            writes: vec![w(0, 10, "v2", Outcome::Ok)],
            reads: vec![r(40, 50, "")],
        };
        assert_eq!(check_key("k", &h).lost_writes, 1);
    }

    #[test]
    fn a_logout_that_comes_back_is_a_resurrected_delete() {
        let h = KeyHistory {
            writes: vec![w(0, 10, "s", Outcome::Ok), w(20, 30, "", Outcome::Ok)],
            reads: vec![r(40, 50, "s")],
        };
        assert_eq!(check_key("session:s", &h).resurrected_deletes, 1);
    }

    #[test]
    fn unacknowledged_writes_may_or_may_not_have_happened() {
        let h = KeyHistory {
            writes: vec![w(0, 10, "a", Outcome::Ok), w(20, 30, "b", Outcome::Unknown)],
            reads: vec![r(40, 50, "a"), r(60, 70, "b"), r(80, 90, "b")],
        };
        assert!(check_key("k", &h).clean());
        // But once b was seen, going back to a is stale.
        let h = KeyHistory {
            writes: vec![w(0, 10, "a", Outcome::Ok), w(20, 30, "b", Outcome::Unknown)],
            reads: vec![r(40, 50, "b"), r(60, 70, "a")],
        };
        assert_eq!(check_key("k", &h).stale_reads, 1);
    }

    #[test]
    fn a_value_from_the_future_or_nowhere_is_a_phantom() {
        let h = KeyHistory {
            writes: vec![w(100, 110, "later", Outcome::Ok)],
            reads: vec![r(0, 10, "later"), r(0, 10, "never")],
        };
        assert_eq!(check_key("k", &h).phantom_values, 2);
    }
}
