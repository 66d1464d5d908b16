//! What holds a running copy: `redisfleet.io/rebalance: pause` as the Job sees it, and a
//! source whose `maxmemory-policy` was switched to one that may evict keys without a TTL after
//! the plan was made. The copy holds between batches — every batch in flight has landed, so
//! no key is in transit — and stays there, moving only the keys sidecars ask for (a client
//! waits on them), until the annotation says `resume` or goes and no source evicts such keys.
//! Before the flip the operator holds a paused plan itself (it publishes no migrating
//! ranges), and the Job's wait for the flip does not time out meanwhile. The policy is read
//! during the copy only: a switch made before it is caught at its first batch, and the sweeps
//! and the cleanup after it do not hold. Every source of the plan counts, also one whose
//! moves are done.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use tracing::{info, warn};

use crate::api::CachePolicy;
use crate::api::cache_policy::{REBALANCE_CONTROL_ANNOTATION, RebalanceControl, rebalance_step};
use crate::api::redis_instance::evicts_keys_without_ttl;
use crate::redis::connect::redact;
use crate::redis::info::parse_info;

use super::{Error, Job, api_calls, current_plan};

/// How often the copy reads the policy's annotation, and its sources' `maxmemory-policy`.
const CONTROL_EVERY: Duration = Duration::from_secs(1);
/// How long the copy waits for the sources' `INFO memory`. One that does not answer keeps its
/// last verdict: its batches fail on their own.
const EVICTION_READ_TIMEOUT: Duration = Duration::from_millis(250);
/// How often, at most, a paused Job reports the keys sidecars asked it to move (with none
/// moved it writes nothing: every write of the policy's `status.rebalance` is API work, and a
/// plan may stay paused for days), and the longest between two reports of a copy's count
/// ([`count_every`]). (A newer attempt is noticed by reading the policy every
/// [`CONTROL_EVERY`].)
const REPORT_EVERY: Duration = Duration::from_secs(5);
/// The least time between two reports of the copy's count, and the time to its first one
/// after it starts or resumes.
pub(super) const COUNT_EVERY_MIN: Duration = Duration::from_secs(1);

/// How long after its last report the copy reports its count again: [`COUNT_EVERY_MIN`] for
/// the first count since it started or resumed (`first`), then a quarter of the time it has
/// left at its rate so far (`moved` of `total` keys in `copying`), between
/// [`COUNT_EVERY_MIN`] and [`REPORT_EVERY`]. A short copy shows its count about every second;
/// a long one, where writing it each second would be most of its API work for minutes, every
/// few. Each report is a write of the policy's status: API server and etcd work that, on a
/// small node, the application's requests wait for (`bench/rebalance_speed.rs`: a copy held
/// to 200 keys/s cost the foreground's p99 1.14× the paused minutes without its reports in
/// the window, 1.68× with one a second when each also woke the operator).
pub(super) fn count_every(first: bool, moved: u64, total: u64, copying: Duration) -> Duration {
    if first || moved == 0 {
        return COUNT_EVERY_MIN;
    }
    let rate = moved as f64 / copying.as_secs_f64().max(0.001);
    let left = total.saturating_sub(moved) as f64 / rate;
    Duration::try_from_secs_f64(left / 4.0)
        .unwrap_or(REPORT_EVERY)
        .clamp(COUNT_EVERY_MIN, REPORT_EVERY)
}

/// What a progress report says once only: the copy's first count since it started or resumed
/// ([`count_every`]), and the first note that it slowed for the sidecars' latency. A report
/// that does not land (the status kept changing, the call failed) leaves both due again.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(super) struct Once {
    pub first_count: bool,
    pub slowed: bool,
}

impl Once {
    /// The report that said `self` has finished, `landed` or not: the copy's `first_count`
    /// and `slowed_sent` as they are now.
    pub(super) fn settle(self, landed: bool, first_count: &mut bool, slowed_sent: &mut bool) {
        if landed {
            return;
        }
        *first_count |= self.first_count;
        if self.slowed {
            *slowed_sent = false;
        }
    }
}

/// How long the copy waits for its first read of the policy before its first batch (an API
/// server that does not answer sooner delays the pause, not the copy).
const FIRST_READ_WAIT: Duration = Duration::from_secs(2);
/// How often the Job moves the keys sidecars ask for (copying, paused or walking a source):
/// a client's command waits for it, a write of a key still on a drained legacy Redis among
/// them (`docs/protocol.md`, "Draining into a served range"). An `LPOP` of an empty list per
/// source each time is all it costs while nobody asks.
pub(super) const URGENT_EVERY: Duration = Duration::from_millis(5);

/// Whether `policy` asks the plan to hold.
pub(super) fn paused(policy: &CachePolicy) -> bool {
    RebalanceControl::of(policy) == RebalanceControl::Pause
}

/// `status.rebalance.pacing` while sources may evict keys without a TTL (`(instance, policy)`
/// pairs); `None` when none does.
pub(super) fn evicting_note(evicting: &[(String, String)]) -> Option<String> {
    if evicting.is_empty() {
        return None;
    }
    let named: Vec<String> = evicting
        .iter()
        .map(|(instance, policy)| format!("{instance} (maxmemory-policy {policy})"))
        .collect();
    Some(format!(
        "held: {} may evict keys without a TTL, this move's markers and slot group states among them; \
         the copy goes on once it runs a volatile-* policy or noeviction",
        named.join(", ")
    ))
}

/// The step a held copy reports.
fn held_step(evicting: &[(String, String)]) -> &'static str {
    if evicting.is_empty() {
        rebalance_step::PAUSED
    } else {
        rebalance_step::SOURCE_EVICTING
    }
}

/// What the copy last read of its sources' `maxmemory-policy`.
#[derive(Debug, Default)]
pub(super) struct EvictionWatch {
    /// When (`None`: not yet).
    read: Option<Instant>,
    /// Sources on a policy that may evict keys without a TTL, with that policy.
    evicting: Vec<(String, String)>,
    /// Sources whose last read failed (warned once, until one succeeds).
    unreadable: BTreeSet<String>,
}

impl EvictionWatch {
    /// Whether some source may evict keys without a TTL.
    fn holds(&self) -> bool {
        !self.evicting.is_empty()
    }
}

impl Job {
    /// Whether the copy must hold: the policy asks for a pause (the annotation is read at most
    /// once per [`CONTROL_EVERY`]; once seen, the request stands until [`Job::hold`] ran), or a
    /// source may evict keys without a TTL (read as often).
    pub(super) async fn pause_requested(&mut self) -> Result<bool, Error> {
        if !self.pausing
            && let Some(policy) = self.read_policy_beside()
        {
            self.pausing = paused(&policy);
        }
        if self
            .eviction
            .read
            .is_none_or(|read| read.elapsed() >= CONTROL_EVERY)
        {
            self.read_evicting().await;
        }
        Ok(self.pausing || self.eviction.holds())
    }

    /// The policy as the last read of it beside the copy found it, once that read has finished
    /// (`None` until then, and when it failed: logged); starts the next read once
    /// [`CONTROL_EVERY`] has passed since the last one started. The copy never waits on the
    /// API server for it.
    fn read_policy_beside(&mut self) -> Option<CachePolicy> {
        let read = self.policy_read();
        if self.control.idle() && self.control_read.elapsed() >= CONTROL_EVERY {
            self.start_policy_read();
        }
        read
    }

    /// The policy, if the read of it under way has finished (a failed read is logged, and
    /// taken too).
    fn policy_read(&mut self) -> Option<CachePolicy> {
        self.control
            .finished()?
            .inspect_err(
                |e| warn!(error = %e, "reading the policy failed; tried again in a second"),
            )
            .ok()
    }

    /// Starts a read of the policy beside the copy (none may be under way).
    fn start_policy_read(&mut self) {
        self.control_read = Instant::now();
        self.control.start(api_calls::read_policy(
            self.policies.clone(),
            self.config.policy.clone(),
        ));
    }

    /// Before the copy's first batch: a pause asked for while the Job prepared (the operator
    /// holds a plan not flipped yet itself, so one asked for since the flip) holds the copy
    /// before any key moves, as long as the API server answers within [`FIRST_READ_WAIT`].
    /// The keys sidecars ask for move meanwhile, and the wait does not count toward the
    /// copy's rate.
    pub(super) async fn read_control_first(&mut self) -> Result<(), Error> {
        let since = Instant::now();
        if self.control.idle() {
            self.start_policy_read();
        }
        while since.elapsed() < FIRST_READ_WAIT {
            if let Some(policy) = self.policy_read() {
                self.pausing = paused(&policy);
            }
            if self.control.idle() {
                // The read finished (a failed one was logged).
                break;
            }
            tokio::time::sleep(URGENT_EVERY).await;
            self.urgent().await?;
        }
        self.clock.hold(since.elapsed());
        Ok(())
    }

    /// Reads every source's `maxmemory_policy` from `INFO memory` at once (each waits
    /// [`EVICTION_READ_TIMEOUT`] at most: the copy loop and the hold's urgent keys wait on it).
    /// The planner left out every move whose source evicted keys without a TTL when the plan
    /// was made; this catches a policy switched by hand since (or a spec change the instance
    /// controller applied before it saw the plan). An `INFO` that names no policy counts as
    /// safe; a source that does not answer, or whose `INFO` cannot be read, keeps its last
    /// verdict (and is warned of once).
    async fn read_evicting(&mut self) {
        let sources = self.sources();
        let reads = sources.iter().map(|name| {
            let source = self
                .instances
                .get(name)
                .map(|i| (i.conn.clone(), i.credentials.clone()));
            async move {
                let (mut conn, credentials) = source.ok_or_else(|| "not connected".to_owned())?;
                let mut info = redis::cmd("INFO");
                info.arg("memory");
                match tokio::time::timeout(
                    EVICTION_READ_TIMEOUT,
                    info.query_async::<String>(&mut conn),
                )
                .await
                {
                    Ok(Ok(text)) => parse_info(&text)
                        .map(|i| i.maxmemory_policy)
                        .map_err(|e| format!("INFO memory: {e}")),
                    Ok(Err(e)) => Err(format!(
                        "INFO memory: {}",
                        redact(&e.to_string(), &credentials)
                    )),
                    Err(_) => Err("INFO memory timed out".to_owned()),
                }
            }
        });
        let results = futures::future::join_all(reads).await;
        self.eviction.read = Some(Instant::now());
        let mut found = Vec::new();
        for (name, result) in sources.into_iter().zip(results) {
            match result {
                Ok(policy) => {
                    self.eviction.unreadable.remove(&name);
                    if let Some(policy) = policy.filter(|p| evicts_keys_without_ttl(p)) {
                        found.push((name, policy));
                    }
                }
                Err(why) => {
                    if self.eviction.unreadable.insert(name.clone()) {
                        warn!(instance = %name, %why, "could not read the source's maxmemory-policy: its last verdict stands");
                    }
                    found.extend(
                        self.eviction
                            .evicting
                            .iter()
                            .find(|(n, _)| *n == name)
                            .cloned(),
                    );
                }
            }
        }
        if found != self.eviction.evicting {
            if found.is_empty() {
                info!("no source may evict keys without a TTL any more");
            } else {
                warn!(
                    sources = ?found,
                    "a source may evict keys without a TTL (the move's own keys have none): the copy holds until its maxmemory-policy is fixed"
                );
            }
            self.eviction.evicting = found;
        }
    }

    /// Holds the copy while the policy says pause or a source may evict keys without a TTL
    /// (call with no batch in flight). Keys that sidecars ask for still move, the list emptied
    /// every [`URGENT_EVERY`] (a client waits on them, and its sidecar gives up after a couple
    /// of seconds); the time held does not count toward the copy's rate, so the copy does not
    /// burst to catch up when it resumes. A plan that ended meanwhile (abandoned, rolled back)
    /// or a newer attempt stops the Job.
    pub(super) async fn hold(&mut self) -> Result<(), Error> {
        let since = Instant::now();
        let mut step = held_step(&self.eviction.evicting);
        // Held, the copy is not paced: the note names the evicting sources, if any, and the
        // pacing note returns with the next reading after it resumes.
        self.pacing_note = evicting_note(&self.eviction.evicting);
        if self.eviction.holds() {
            info!(moved = self.moved, total = self.total, sources = ?self.eviction.evicting, "held: a source may evict keys without a TTL");
        } else {
            info!(
                moved = self.moved,
                total = self.total,
                annotation = REBALANCE_CONTROL_ANNOTATION,
                "paused"
            );
        }
        // What the status says: the step, the keys the Job moved and the note of the last
        // report that landed (`None` until one did), and what the one under way says. Reports
        // go beside the hold, one at a time, so that the keys sidecars ask for never wait on
        // the API server: a new step or note goes as soon as the last report is done, a new
        // count every [`REPORT_EVERY`] at most, and a report that did not land (the status
        // kept changing, or the call failed) is sent again as often.
        type Said = (&'static str, u64, Option<String>);
        let mut reported: Option<Said> = None;
        let mut sent: Option<Said> = None;
        let mut tried: (&str, Option<String>) = ("", None);
        loop {
            match self.report_landed()? {
                Some(true) => reported = sent.take(),
                // Not written, or not known to be (an answer that timed out may follow a
                // write that landed): what the status says is not known.
                Some(false) => {
                    sent = None;
                    reported = None;
                }
                None => {}
            }
            let now = (step, self.moved, self.pacing_note.clone());
            let changed = (step, self.pacing_note.clone()) != tried;
            if self.reporting.idle()
                && reported.as_ref() != Some(&now)
                && (changed || self.last_report.elapsed() >= REPORT_EVERY)
            {
                tried = (step, self.pacing_note.clone());
                if self.report_beside(step)? {
                    sent = Some(now);
                }
            }
            tokio::time::sleep(URGENT_EVERY).await;
            self.urgent().await?;
            // The keys sidecars ask for move while the API server takes its time.
            let Some(policy) = self.read_policy_beside() else {
                continue;
            };
            if current_plan(&policy, self.config.plan_id).is_none_or(|r| r.attempts != self.attempt)
            {
                return Err(Error::Superseded);
            }
            self.read_evicting().await;
            if !paused(&policy) && !self.eviction.holds() {
                break;
            }
            step = held_step(&self.eviction.evicting);
            self.pacing_note = evicting_note(&self.eviction.evicting);
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
        self.pacing_note = None;
        self.slowed = false;
        self.count_afresh();
        // A read under way may have been asked before the resume: the next one counts.
        self.control.forget();
        self.control_read = Instant::now();
        info!(
            seconds = held.as_secs_f64(),
            policy = %self.config.policy,
            "resumed"
        );
        // Beside the copy too; after the hold's last report, if that is still under way (the
        // copy sends it once that one is done).
        self.copying_owed = !self.report_beside(rebalance_step::COPYING)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_that_did_not_land_leaves_its_first_count_and_slowed_note_due() {
        // The copy's state as the Job keeps it: the first count and a slowed note go out in
        // one report (the copy clears `first_count` once the report is on its way).
        let said = Once {
            first_count: true,
            slowed: true,
        };
        let (mut first_count, mut slowed_sent) = (false, true);
        said.settle(true, &mut first_count, &mut slowed_sent);
        assert_eq!((first_count, slowed_sent), (false, true), "landed: said");
        said.settle(false, &mut first_count, &mut slowed_sent);
        assert_eq!((first_count, slowed_sent), (true, false), "lost: due again");
        // A report that said neither changes neither, landed or not (a slowed note sent by
        // an earlier report that landed stays sent).
        let (mut first_count, mut slowed_sent) = (false, true);
        Once::default().settle(false, &mut first_count, &mut slowed_sent);
        assert_eq!((first_count, slowed_sent), (false, true));
    }

    #[test]
    fn a_long_copy_reports_its_count_less_often_than_a_short_one() {
        let secs = Duration::from_secs;
        // The first count after a start or resume, and one with nothing moved yet: soon.
        assert_eq!(count_every(true, 50_000, 1_000_000, secs(10)), secs(1));
        assert_eq!(count_every(false, 0, 1_000_000, secs(3)), secs(1));
        // 14 000 keys at 2 000 keys/s, 2 000 moved: 6 s left, a count every 1.5 s.
        assert_eq!(
            count_every(false, 2_000, 14_000, secs(1)),
            Duration::from_millis(1_500)
        );
        // Near its end, every second; a long copy, every REPORT_EVERY.
        assert_eq!(count_every(false, 13_000, 14_000, secs(6)), secs(1));
        assert_eq!(count_every(false, 10_000, 1_000_000, secs(2)), REPORT_EVERY);
        // Counts past the total (keys written meanwhile) or an instant copy do not break it.
        assert_eq!(count_every(false, 20_000, 14_000, secs(6)), secs(1));
        assert_eq!(
            count_every(false, 5, 1_000_000, Duration::ZERO),
            REPORT_EVERY
        );
    }

    #[test]
    fn a_copy_held_for_an_evicting_source_says_which_and_how_to_go_on() {
        assert_eq!(evicting_note(&[]), None);
        assert_eq!(held_step(&[]), rebalance_step::PAUSED);
        let found = vec![
            ("primary".to_owned(), "allkeys-lru".to_owned()),
            ("legacy".to_owned(), "allkeys-random".to_owned()),
        ];
        let note = evicting_note(&found).unwrap();
        assert!(note.starts_with("held: primary (maxmemory-policy allkeys-lru), legacy (maxmemory-policy allkeys-random) may evict keys without a TTL"), "{note}");
        assert!(note.contains("volatile-* policy or noeviction"), "{note}");
        assert_eq!(held_step(&found), rebalance_step::SOURCE_EVICTING);
    }
}
