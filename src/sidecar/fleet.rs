//! What this sidecar knows of the fleet beyond its routing table: the fences every instance
//! answers with (the lowest table version allowed to use each instance), and the heartbeat
//! rounds that confirm them. See `docs/protocol.md`.
//!
//! A connection to an instance carries commands only after a heartbeat round that began after
//! the connection was opened has been answered by another instance of the table: a sidecar that
//! missed a failover learns the failover's fence from the other instances before it can write
//! to the owner that comes back.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, watch};

use crate::redis::protocol::fence::Fences;

/// One completed heartbeat round.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Round {
    /// Rounds are numbered as they begin.
    pub id: u64,
    /// The instances that answered it.
    pub answered: Vec<String>,
}

/// Fences and heartbeat rounds, shared by the backends, the heartbeat task and the sessions.
#[derive(Debug)]
pub struct FleetView {
    fences: Mutex<BTreeMap<String, Arc<AtomicU64>>>,
    instances: Mutex<Vec<String>>,
    next_round: AtomicU64,
    rounds: watch::Sender<Round>,
    wake: Notify,
}

impl Default for FleetView {
    fn default() -> Self {
        Self {
            fences: Mutex::new(BTreeMap::new()),
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

    /// Records a completed round.
    pub fn end_round(&self, round: Round) {
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

    /// Whether `round` confirms the fences for a connection to `instance`: another instance of
    /// the table answered it (or `instance` is the table's only one and answered).
    pub fn confirms(&self, round: &Round, instance: &str) -> bool {
        if round.answered.iter().any(|a| a != instance) {
            return true;
        }
        let instances = self.instances.lock().unwrap_or_else(|e| e.into_inner());
        instances.len() <= 1 && round.answered.iter().any(|a| a == instance)
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
    fn a_round_confirms_an_instance_when_another_answered() {
        let v = FleetView::default();
        v.set_instances(&["a".to_owned(), "b".to_owned()]);
        let only_a = Round {
            id: 3,
            answered: vec!["a".to_owned()],
        };
        assert!(!v.confirms(&only_a, "a"), "a cannot vouch for itself");
        assert!(v.confirms(&only_a, "b"));
        v.set_instances(&["a".to_owned()]);
        assert!(v.confirms(&only_a, "a"), "unless it is the only instance");
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
        });
        assert!(task.await.unwrap());
    }
}
