//! `redisfleet.io/rebalance: pause` as the Job sees it. The copy holds between batches —
//! every batch in flight has landed, so no key is in transit — and stays there, moving only
//! the keys sidecars ask for (a client waits on them), until the annotation says `resume` or
//! goes. Before the flip the operator holds the plan itself (it publishes no migrating
//! ranges), and the Job's wait for the flip does not time out meanwhile.

use std::time::{Duration, Instant};

use tracing::info;

use crate::api::CachePolicy;
use crate::api::cache_policy::{REBALANCE_CONTROL_ANNOTATION, RebalanceControl, rebalance_step};

use super::{Error, Job, current_plan};

/// How often the copy reads the policy's annotation.
const CONTROL_EVERY: Duration = Duration::from_secs(1);
/// How often, at most, a paused Job reports the keys sidecars asked it to move. With none
/// moved it writes nothing: every write of the policy's `status.rebalance` wakes the operator's
/// reconcile, and a plan may stay paused for days. (A newer attempt is noticed by reading the
/// policy every [`CONTROL_EVERY`].)
const REPORT_EVERY: Duration = Duration::from_secs(5);
/// How often a paused Job moves the keys sidecars ask for (as often as the copy would).
pub(super) const URGENT_EVERY: Duration = Duration::from_millis(20);

/// Whether `policy` asks the plan to hold.
pub(super) fn paused(policy: &CachePolicy) -> bool {
    RebalanceControl::of(policy) == RebalanceControl::Pause
}

impl Job {
    /// Whether the policy asks the copy to pause: the annotation is read at most once per
    /// [`CONTROL_EVERY`]; once seen, the request stands until [`Job::hold`] ran.
    pub(super) async fn pause_requested(&mut self) -> Result<bool, Error> {
        if !self.pausing && self.control_read.elapsed() >= CONTROL_EVERY {
            self.control_read = Instant::now();
            let policy = self.policies.get(&self.config.policy).await?;
            self.pausing = paused(&policy);
        }
        Ok(self.pausing)
    }

    /// Holds the copy while the policy says pause (call with no batch in flight). Keys that
    /// sidecars ask for still move, the list emptied every [`URGENT_EVERY`] (a client waits on
    /// them, and its sidecar gives up after a couple of seconds); the time held does not count
    /// toward the copy's rate, so the copy does not burst to catch up when it resumes. A plan
    /// that ended meanwhile (abandoned, rolled back) or a newer attempt stops the Job.
    pub(super) async fn hold(&mut self) -> Result<(), Error> {
        let since = Instant::now();
        // Held, the copy is not paced: the note returns with the next reading after it resumes.
        self.pacing_note = None;
        info!(
            moved = self.moved,
            total = self.total,
            annotation = REBALANCE_CONTROL_ANNOTATION,
            "paused"
        );
        // What the status says the Job moved; `None` until a report went through (`report`
        // gives up, without an error, after repeated write conflicts).
        let mut reported = None;
        if self.report(rebalance_step::PAUSED, &[]).await? {
            reported = Some(self.moved);
        }
        let mut read = Instant::now();
        loop {
            tokio::time::sleep(URGENT_EVERY).await;
            self.urgent().await?;
            if read.elapsed() < CONTROL_EVERY {
                continue;
            }
            read = Instant::now();
            let policy = self.policies.get(&self.config.policy).await?;
            if current_plan(&policy, self.config.plan_id).is_none_or(|r| r.attempts != self.attempt)
            {
                return Err(Error::Superseded);
            }
            if !paused(&policy) {
                break;
            }
            if reported != Some(self.moved)
                && self.last_report.elapsed() >= REPORT_EVERY
                && self.report(rebalance_step::PAUSED, &[]).await?
            {
                reported = Some(self.moved);
            }
        }
        let held = since.elapsed();
        self.started += held;
        self.clock.hold(held);
        if let Some(pacing) = self.pacing.as_mut() {
            pacing.resume();
            self.clock
                .set_rate(pacing.rate(), self.launched, Instant::now());
        }
        self.pausing = false;
        self.control_read = Instant::now();
        info!(
            seconds = held.as_secs_f64(),
            policy = %self.config.policy,
            "resumed"
        );
        self.report(rebalance_step::COPYING, &[]).await?;
        Ok(())
    }
}
