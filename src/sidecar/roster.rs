//! A sidecar's copy of the roster of a source drained into ranges its targets serve already
//! (`crate::redis::protocol::roster`; `docs/protocol.md`, "The roster of a legacy Redis"). The
//! Job writes it on the source once it has counted the source's keys; the first command of
//! such a move after that fetches it, in a task of its own, and from then on a write that
//! replaces keys it lacks ([`blind_write`]) goes straight to the target. Until it is there (or when the source has none)
//! commands take the guard, as they did before rosters.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::backend::{Backend, Replies};
use crate::redis::protocol::roster::{Roster, of_this_format};
use crate::redis::resp::{Frame, Limits, parse_frame};
use crate::routing::slots::SlotRange;

/// How long a sidecar waits before it looks for a roster again that was not there (or not
/// whole).
pub const ROSTER_RETRY: Duration = Duration::from_secs(1);

/// How long a sidecar waits before it looks again at a roster it cannot read: in effect until
/// the next table version, which starts afresh.
const GIVE_UP: Duration = Duration::from_secs(24 * 3600);

/// Bytes a sidecar reads of a roster at a time (`GETRANGE`): each reply holds the source's
/// output buffer for that much only, and the lane's other requests wait behind no more.
const PIECE: usize = 64 * 1024;

/// What a look for the roster found.
#[derive(Debug)]
enum Fetched {
    /// The roster's bytes, whole as far as the reads could tell.
    Bytes(Vec<u8>),
    /// No roster there, or the source did not answer: look again later.
    Nothing,
    /// Something not of this format (a newer Job's): this sidecar does without.
    Foreign,
}

/// One source's roster in one plan, shared by the moves out of it in a routing table.
#[derive(Debug)]
pub struct SourceRoster {
    /// Its name on the source.
    name: Bytes,
    loaded: OnceLock<Roster>,
    /// When to look again, while it is not loaded.
    next_try: Mutex<Instant>,
    fetching: AtomicBool,
}

impl SourceRoster {
    pub fn new(name: String) -> Self {
        Self {
            name: Bytes::from(name),
            loaded: OnceLock::new(),
            next_try: Mutex::new(Instant::now()),
            fetching: AtomicBool::new(false),
        }
    }

    /// The roster, once loaded.
    pub fn get(&self) -> Option<&Roster> {
        self.loaded.get()
    }

    /// Fetches the roster from `source` (routed by table `version`, on lane `lane`) in a task
    /// of its own, piece by piece, unless it is loaded, a fetch is under way, or the last one
    /// found none less than [`ROSTER_RETRY`] ago.
    pub fn fetch_if_due(self: &Arc<Self>, source: &Arc<Backend>, lane: usize, version: u64) {
        if self.loaded.get().is_some() || self.fetching.swap(true, Ordering::AcqRel) {
            return;
        }
        // (Loaded again: a fetch may have settled since the first look.)
        let due = Instant::now() >= *self.next_try.lock().unwrap_or_else(|e| e.into_inner());
        if !due || self.loaded.get().is_some() {
            self.fetching.store(false, Ordering::Release);
            return;
        }
        let this = self.clone();
        let source = source.clone();
        tokio::spawn(async move {
            let fetched = this.read(&source, lane, version).await;
            this.settle(fetched);
        });
    }

    /// Reads the roster in pieces of [`PIECE`] bytes. It never changes while it exists (the
    /// Job writes it once per plan); one removed meanwhile reads short, and its header's
    /// length then refuses it.
    async fn read(&self, source: &Backend, lane: usize, version: u64) -> Fetched {
        let mut data = Vec::new();
        loop {
            let from = data.len().to_string();
            let to = (data.len() + PIECE - 1).to_string();
            let asked = source.command(
                lane,
                version,
                &[&b"GETRANGE"[..], &self.name, from.as_bytes(), to.as_bytes()],
            );
            let piece = match asked {
                Ok(rx) => match rx.await {
                    Ok(Ok(Replies::One(reply))) => bulk(&reply),
                    _ => None,
                },
                Err(_) => None,
            };
            let Some(piece) = piece else {
                return Fetched::Nothing;
            };
            if data.is_empty() && !of_this_format(&piece) {
                return Fetched::Foreign;
            }
            data.extend_from_slice(&piece);
            if piece.len() < PIECE {
                break;
            }
        }
        if data.is_empty() {
            Fetched::Nothing
        } else {
            Fetched::Bytes(data)
        }
    }

    /// Keeps the roster fetched, or schedules the next look (never, for a foreign one).
    fn settle(&self, fetched: Fetched) {
        let retry = match fetched {
            Fetched::Bytes(data) => match Roster::decode(&data) {
                Ok(roster) => {
                    let _ = self.loaded.set(roster);
                    None
                }
                // Removed while it was read: a later look may find a new one whole.
                Err(e) if e.cut_short() => Some(ROSTER_RETRY),
                // Whole and unreadable: reading it again (up to 16 MB) finds the same.
                Err(e) => {
                    tracing::warn!(roster = %String::from_utf8_lossy(&self.name), error = %e, "ignoring the source's roster: blind writes of its moves take the guard");
                    Some(GIVE_UP)
                }
            },
            Fetched::Nothing => Some(ROSTER_RETRY),
            Fetched::Foreign => {
                tracing::warn!(roster = %String::from_utf8_lossy(&self.name), "the source's roster is of another format: blind writes of its moves take the guard");
                Some(GIVE_UP)
            }
        };
        if let Some(after) = retry {
            *self.next_try.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now() + after;
        }
        self.fetching.store(false, Ordering::Release);
    }
}

/// The bytes of a bulk string reply.
fn bulk(reply: &[u8]) -> Option<Bytes> {
    match parse_frame(reply, &Limits::replies()) {
        Ok(Some((Frame::Bulk(data), _))) => Some(data),
        _ => None,
    }
}

/// Whether `cmd` replaces its keys' values whatever they were: `SET` with no option but a
/// relative expiry (`EX`, `PX`; an `EXAT` or `PXAT` in the past deletes), `SETEX`, `PSETEX`,
/// `MSET`. Only such a write goes past the guard on a roster's word:
/// a key a pod wrote to the legacy Redis straight after the Job's count is missing from the
/// roster, and a write that reads it first (`INCR`, `SET … NX`, `HSET`), or a delete, must
/// see it; one that replaces it wins over it anyway (the move keeps the target's copy).
pub fn blind_write(cmd: &[Bytes]) -> bool {
    let Some(name) = cmd.first() else {
        return false;
    };
    if name.eq_ignore_ascii_case(b"SETEX") || name.eq_ignore_ascii_case(b"PSETEX") {
        return cmd.len() == 4;
    }
    if name.eq_ignore_ascii_case(b"MSET") {
        return cmd.len() >= 3 && cmd.len() % 2 == 1;
    }
    if !name.eq_ignore_ascii_case(b"SET") || cmd.len() < 3 {
        return false;
    }
    let mut options = cmd[3..].iter();
    while let Some(option) = options.next() {
        let expiry = option.eq_ignore_ascii_case(b"EX") || option.eq_ignore_ascii_case(b"PX");
        if !expiry || options.next().is_none() {
            return false;
        }
    }
    true
}

/// How a move into a range its target served already uses its source's roster.
#[derive(Debug, Clone)]
pub struct RosterUse {
    /// The source's roster in the move's plan.
    pub roster: Arc<SourceRoster>,
    /// The move's category and slots: a roster vouches only for the moves it names.
    pub category: String,
    pub range: SlotRange,
}

impl RosterUse {
    /// Whether the loaded roster vouches for this move and lacks every one of `keys` (they
    /// are not on the source: their commands belong on the target).
    pub fn lacks_all(&self, keys: &[Bytes]) -> bool {
        self.roster.get().is_some_and(|r| {
            r.covers(&self.category, self.range) && keys.iter().all(|k| !r.may_hold(k))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::redis::protocol::roster::Covered;

    fn usage(covers: SlotRange) -> (RosterUse, Roster) {
        let mut roster = Roster::with_capacity(
            10,
            vec![Covered {
                category: "auth".to_owned(),
                range: covers,
            }],
        );
        roster.insert(b"auth:legacy");
        let shared = Arc::new(SourceRoster::new("redisfleet:roster:p:1".to_owned()));
        (
            RosterUse {
                roster: shared,
                category: "auth".to_owned(),
                range: SlotRange::new(0, 100),
            },
            roster,
        )
    }

    fn cmd(words: &str) -> Vec<Bytes> {
        words
            .split(' ')
            .map(|w| Bytes::copy_from_slice(w.as_bytes()))
            .collect()
    }

    #[test]
    fn only_writes_that_replace_what_was_there_are_blind() {
        for blind in [
            "SET k v",
            "set k v EX 10",
            "SET k v px 10 ",
            "SETEX k 10 v",
            "psetex k 10 v",
            "MSET a 1 b 2",
        ] {
            assert!(blind_write(&cmd(blind.trim())), "{blind}");
        }
        for reads_first in [
            "SET k v NX",
            "SET k v XX",
            "SET k v GET",
            "SET k v KEEPTTL",
            "SET k v IFEQ old",
            "SET k v EXAT 10",
            "SET k v PXAT 10",
            "SET k v EX",
            "SET k",
            "MSETNX a 1",
            "MSET a 1 b",
            "INCR k",
            "DEL k",
            "HSET h f v",
            "APPEND k v",
            "GETSET k v",
        ] {
            assert!(!blind_write(&cmd(reads_first)), "{reads_first}");
        }
    }

    #[test]
    fn a_loaded_roster_sends_on_only_keys_it_lacks() {
        let (usage, roster) = usage(SlotRange::new(0, 100));
        assert!(
            !usage.lacks_all(&[Bytes::from_static(b"auth:new")]),
            "nothing loaded yet"
        );
        usage.roster.settle(Fetched::Bytes(roster.encode()));
        assert!(usage.lacks_all(&[Bytes::from_static(b"auth:new")]));
        assert!(!usage.lacks_all(&[
            Bytes::from_static(b"auth:new"),
            Bytes::from_static(b"auth:legacy")
        ]));
    }

    #[test]
    fn a_roster_of_other_moves_or_none_at_all_sends_nothing_on() {
        let (other, roster) = usage(SlotRange::new(0, 200));
        other.roster.settle(Fetched::Bytes(roster.encode()));
        assert!(!other.lacks_all(&[Bytes::from_static(b"auth:new")]));
        let mut cut = roster.encode();
        cut.truncate(cut.len() - 8);
        for fetched in [
            Fetched::Nothing,
            Fetched::Foreign,
            Fetched::Bytes(b"RFR1 garbage".to_vec()),
            Fetched::Bytes(cut),
        ] {
            let (usage, _) = usage(SlotRange::new(0, 100));
            usage.roster.settle(fetched);
            assert!(usage.roster.get().is_none());
            assert!(!usage.lacks_all(&[Bytes::from_static(b"auth:new")]));
            assert!(*usage.roster.next_try.lock().unwrap() > Instant::now());
        }
    }

    #[test]
    fn only_a_bulk_reply_is_a_piece() {
        assert_eq!(bulk(b"$3\r\nRFR\r\n").as_deref(), Some(&b"RFR"[..]));
        assert_eq!(bulk(b"$0\r\n\r\n").as_deref(), Some(&b""[..]));
        assert_eq!(bulk(b"-ERR wrong kind\r\n"), None);
        assert_eq!(bulk(b"$5\r\nRF"), None);
    }
}
