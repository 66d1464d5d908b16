//! What this sidecar knows of the fleet beyond its routing table: the fences every instance
//! answers with (the lowest table version allowed to use each instance), and the heartbeat
//! rounds that confirm them. See `docs/protocol.md`.
//!
//! A connection to an instance carries commands only after a heartbeat round that began after
//! the connection was opened has been answered (every answer carries the answering instance's
//! fences): a sidecar that missed a failover learns the failover's fence from the other
//! instances before it can write to the owner that comes back.
//!
//! A connection that stays open is not enough either: a paused instance (or one behind a
//! partition) keeps its connections through a failover and answers what was queued when it
//! resumes. So every reply is vouched for before the client gets it ([`FleetView::vouch`]):
//! the instance is not fenced above the table that routed the command, and an answered round
//! began less than [`LEASE`] ago. The operator waits longer than
//! the lease between the failover notice and the failover.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, watch};
use tokio::time::Instant;

use crate::redis::protocol::fence::Fences;
use crate::redis::protocol::heartbeat::LEASE;

/// One completed heartbeat round.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Round {
    /// Rounds are numbered as they begin.
    pub id: u64,
    /// The instances that answered it.
    pub answered: Vec<String>,
    /// When it began ([`FleetView::clock`]).
    pub began: u64,
}

/// Why a reply was not vouched for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unvouched {
    /// The instance is fenced above the table that routed the command.
    Fenced(u64),
    /// No heartbeat round confirmed the instance in time.
    Unconfirmed,
}

/// The lease of one instance: when the latest round that confirmed it began (`clock() + 1`;
/// 0 for never).
pub type Lease = Arc<AtomicU64>;

/// Fences and heartbeat rounds, shared by the backends, the heartbeat task and the sessions.
#[derive(Debug)]
pub struct FleetView {
    epoch: Instant,
    fences: Mutex<BTreeMap<String, Arc<AtomicU64>>>,
    leases: Mutex<BTreeMap<String, Lease>>,
    instances: Mutex<Vec<String>>,
    next_round: AtomicU64,
    rounds: watch::Sender<Round>,
    wake: Notify,
}

impl Default for FleetView {
    fn default() -> Self {
        Self {
            epoch: Instant::now(),
            fences: Mutex::new(BTreeMap::new()),
            leases: Mutex::new(BTreeMap::new()),
            instances: Mutex::new(Vec::new()),
            next_round: AtomicU64::new(1),
            rounds: watch::Sender::new(Round::default()),
            wake: Notify::new(),
        }
    }
}

impl FleetView {
    /// A view that knows nothing yet.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// The fence of `instance` (shared with its backend: updated in place).
    pub fn fence_cell(&self, instance: &str) -> Arc<AtomicU64> {
        let mut map = self.fences.lock().unwrap_or_else(|e| e.into_inner());
        map.entry(instance.to_owned())
            .or_insert_with(|| Arc::new(AtomicU64::new(0)))
            .clone()
    }

    /// The fence of `instance` now.
    pub fn fence(&self, instance: &str) -> u64 {
        self.fence_cell(instance).load(Ordering::Acquire)
    }

    /// Takes in fences an instance answered with (fences only grow).
    pub fn merge(&self, fences: &Fences) {
        for (name, &v) in fences {
            self.fence_cell(name).fetch_max(v, Ordering::AcqRel);
        }
    }

    /// The lease of `instance` (shared with its lanes: updated in place).
    pub fn lease_cell(&self, instance: &str) -> Lease {
        let mut map = self.leases.lock().unwrap_or_else(|e| e.into_inner());
        map.entry(instance.to_owned())
            .or_insert_with(|| Arc::new(AtomicU64::new(0)))
            .clone()
    }

    /// Nanoseconds since this view was made (a monotonic clock).
    pub fn clock(&self) -> u64 {
        self.clock_at(Instant::now())
    }

    /// [`Self::clock`] at `at`: a lane reads the clock once per read from its instance and
    /// judges every reply of that read by it — the time the replies were in hand.
    pub fn clock_at(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.epoch).as_nanos()).unwrap_or(u64::MAX)
    }

    /// Whether `lease` is fresh now: the round behind it began less than [`LEASE`] ago.
    pub fn fresh(&self, lease: &AtomicU64) -> bool {
        self.fresh_at(lease, self.clock())
    }

    /// Whether `lease` is fresh at `clock` (a reading of [`Self::clock`]).
    fn fresh_at(&self, lease: &AtomicU64, clock: u64) -> bool {
        let began = lease.load(Ordering::Acquire);
        began > 0 && clock.saturating_sub(began - 1) < lease_nanos()
    }

    /// Whether a reply from `instance` (whose fence and lease cells are given) to a command
    /// routed by table `version` may go to the client right now; `None` when only a new
    /// round can tell.
    pub fn check(
        &self,
        fence: &AtomicU64,
        lease: &AtomicU64,
        version: u64,
    ) -> Option<Result<(), Unvouched>> {
        self.check_at(fence, lease, version, self.clock())
    }

    /// [`Self::check`] for replies that were in hand at `clock` (a reading of
    /// [`Self::clock`] taken when they arrived).
    pub fn check_at(
        &self,
        fence: &AtomicU64,
        lease: &AtomicU64,
        version: u64,
        clock: u64,
    ) -> Option<Result<(), Unvouched>> {
        let f = fence.load(Ordering::Acquire);
        if version < f {
            return Some(Err(Unvouched::Fenced(f)));
        }
        self.fresh_at(lease, clock).then_some(Ok(()))
    }

    /// Vouches for a reply from `instance` to a command routed by table `version`: at once
    /// when its lease is fresh, else after a round that begins now confirmed it (waiting up
    /// to [`LEASE`]).
    pub async fn vouch(&self, instance: &str, version: u64) -> Result<(), Unvouched> {
        let fence = self.fence_cell(instance);
        let lease = self.lease_cell(instance);
        if let Some(verdict) = self.check(&fence, &lease, version) {
            return verdict;
        }
        let after = self.next_round();
        if !self.confirmed(instance, after, LEASE).await {
            return Err(Unvouched::Unconfirmed);
        }
        let f = fence.load(Ordering::Acquire);
        if version < f {
            return Err(Unvouched::Fenced(f));
        }
        Ok(())
    }

    /// The instances of the table in use.
    pub fn set_instances(&self, names: &[String]) {
        let mut i = self.instances.lock().unwrap_or_else(|e| e.into_inner());
        *i = names.to_vec();
    }

    /// Starts a round: its id.
    pub fn begin_round(&self) -> u64 {
        self.next_round.fetch_add(1, Ordering::AcqRel)
    }

    /// The id the next round will have: rounds with this id or later begin after now.
    pub fn next_round(&self) -> u64 {
        self.next_round.load(Ordering::Acquire)
    }

    /// Records a completed round, and renews the lease of every instance it confirms.
    pub fn end_round(&self, round: Round) {
        let instances = self
            .instances
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        for name in &instances {
            if self.confirms(&round, name) {
                self.lease_cell(name)
                    .fetch_max(round.began + 1, Ordering::AcqRel);
            }
        }
        self.rounds.send_if_modified(|r| {
            if round.id > r.id {
                *r = round;
                true
            } else {
                false
            }
        });
    }

    /// Asks the heartbeat task for a round now.
    pub fn request_round(&self) {
        self.wake.notify_one();
    }

    /// Resolves when a round is requested (or at once if one was requested meanwhile).
    pub async fn round_requested(&self) {
        self.wake.notified().await;
    }

    /// Whether `round` confirms the fences for `instance`: some instance of the table answered
    /// it. The other instances hold the failover notices about `instance`, and a round merges
    /// the fences of every instance that answered; when none of the others answered (they are
    /// down: nothing can be failed over to them), the instance's own fences are all there is,
    /// and the survivor of a two-instance fleet keeps serving.
    pub fn confirms(&self, round: &Round, _instance: &str) -> bool {
        !round.answered.is_empty()
    }

    /// Waits up to `timeout` for a round numbered `after` or later that confirms the fences
    /// for `instance`; asks for rounds meanwhile.
    pub async fn confirmed(&self, instance: &str, after: u64, timeout: Duration) -> bool {
        let mut rx = self.rounds.subscribe();
        let wait = async {
            loop {
                {
                    let r = rx.borrow_and_update();
                    if r.id >= after && self.confirms(&r, instance) {
                        return true;
                    }
                }
                self.request_round();
                if rx.changed().await.is_err() {
                    return false;
                }
            }
        };
        tokio::time::timeout(timeout, wait).await.unwrap_or(false)
    }
}

fn lease_nanos() -> u64 {
    u64::try_from(LEASE.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fences_only_grow_and_are_shared_with_backends() {
        let v = FleetView::default();
        let cell = v.fence_cell("primary");
        v.merge(&[("primary".to_owned(), 7)].into());
        v.merge(&[("primary".to_owned(), 3)].into());
        assert_eq!(cell.load(Ordering::Acquire), 7);
        assert_eq!(v.fence("secondary"), 0);
    }

    #[test]
    fn a_round_confirms_the_instances_when_any_answered() {
        let v = FleetView::default();
        v.set_instances(&["a".to_owned(), "b".to_owned()]);
        let only_a = Round {
            id: 3,
            answered: vec!["a".to_owned()],
            began: 0,
        };
        assert!(v.confirms(&only_a, "b"), "a holds the notices about b");
        assert!(
            v.confirms(&only_a, "a"),
            "b is down: a's own fences are all there is"
        );
        let nobody = Round {
            id: 4,
            answered: vec![],
            began: 0,
        };
        assert!(!v.confirms(&nobody, "a"));
    }

    #[tokio::test]
    async fn confirmation_waits_for_a_round_that_began_later() {
        let v = FleetView::new();
        v.set_instances(&["a".to_owned(), "b".to_owned()]);
        let old = v.begin_round();
        let after = v.next_round();
        v.end_round(Round {
            id: old,
            answered: vec!["b".to_owned()],
            began: v.clock(),
        });
        assert!(
            !v.confirmed("a", after, Duration::from_millis(50)).await,
            "a round begun before the connection does not count"
        );
        let v2 = v.clone();
        let task =
            tokio::spawn(async move { v2.confirmed("a", after, Duration::from_secs(5)).await });
        v.round_requested().await;
        let id = v.begin_round();
        v.end_round(Round {
            id,
            answered: vec!["b".to_owned()],
            began: v.clock(),
        });
        assert!(task.await.unwrap());
    }

    #[tokio::test]
    async fn a_reply_is_vouched_for_by_a_fresh_round() {
        let v = FleetView::new();
        v.set_instances(&["a".to_owned(), "b".to_owned()]);
        let (fence, lease) = (v.fence_cell("a"), v.lease_cell("a"));
        assert_eq!(v.check(&fence, &lease, 1), None, "no round yet");
        let id = v.begin_round();
        v.end_round(Round {
            id,
            answered: vec![],
            began: v.clock(),
        });
        assert_eq!(v.check(&fence, &lease, 1), None, "nobody answered");
        let id = v.begin_round();
        v.end_round(Round {
            id,
            answered: vec!["b".to_owned()],
            began: v.clock(),
        });
        assert_eq!(v.check(&fence, &lease, 1), Some(Ok(())));
        v.merge(&[("a".to_owned(), 2)].into());
        assert_eq!(
            v.check(&fence, &lease, 1),
            Some(Err(Unvouched::Fenced(2))),
            "a failover notice outranks the lease"
        );
        assert_eq!(v.vouch("a", 2).await, Ok(()));
    }

    #[tokio::test(start_paused = true)]
    async fn a_lease_runs_out_and_a_new_round_renews_it() {
        let v = FleetView::new();
        v.set_instances(&["a".to_owned(), "b".to_owned()]);
        let lease = v.lease_cell("a");
        let id = v.begin_round();
        v.end_round(Round {
            id,
            answered: vec!["b".to_owned()],
            began: v.clock(),
        });
        assert!(v.fresh(&lease));
        tokio::time::advance(LEASE).await;
        assert!(
            !v.fresh(&lease),
            "a round that began a lease ago vouches no more"
        );
        let v2 = v.clone();
        let task = tokio::spawn(async move { v2.vouch("a", 1).await });
        v.round_requested().await;
        let id = v.begin_round();
        v.end_round(Round {
            id,
            answered: vec!["b".to_owned()],
            began: v.clock(),
        });
        assert_eq!(task.await.unwrap(), Ok(()));
        assert!(v.fresh(&lease));
        // Nobody answers: the reply is not vouched for.
        let v3 = FleetView::new();
        v3.set_instances(&["a".to_owned(), "b".to_owned()]);
        assert_eq!(v3.vouch("a", 1).await, Err(Unvouched::Unconfirmed));
    }
}
