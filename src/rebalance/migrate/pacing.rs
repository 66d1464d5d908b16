//! Adaptive pacing: the copy yields to the application. Every second each sidecar reports, on
//! each instance it uses, the 99th percentile of that instance's answers to it since its last
//! heartbeat ([`LatencyReport`]). The Job reads those of its sources and targets once before
//! the copy and once a second during it:
//!
//! - no sidecar sends them traffic: the copy runs at `keysPerSecond`;
//! - some do: the copy starts at [`START_RATE`] (a burst would be felt before the first
//!   report could say so);
//! - each (sidecar, instance) has a budget — [`RATIO`] × its baseline, or its baseline plus
//!   the headroom (`latencyHeadroomMicroseconds`, [`DEFAULT_HEADROOM_MICROS`]) if more — and
//!   an aim halfway between the baseline and the budget (1.25× the baseline without
//!   headroom). The copy steers for the aim, so that its seconds above it, which one second's
//!   p99 cannot avoid, stay within the budget;
//! - a p99 over its budget twice in a row, or twice over once, divides the rate by how far
//!   over it is (by 2 to 8), down to [`MIN_RATE`]; a p99 over its aim (or over its budget
//!   once) eases the rate by a fifth; every p99 within its aim grows it by a tenth plus
//!   [`STEP`] (by a quarter plus [`FAST_STEP`] while no sidecar sends traffic), up to
//!   `keysPerSecond`;
//! - the baseline is what the instance answers the sidecar without the copy's load: the
//!   lowest p99 it reported during this Job, but a quiet second lowers it by a fifth at most
//!   (a p99 of one second is noisy), and a p99 over the aim while the copy already runs at
//!   [`MIN_RATE`] raises it so that p99 is the aim (the copy is not what the sidecar feels).
//!
//! Pure: the Job feeds the reports in and asks for the rate (`docs/protocol.md`, "Pacing").

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::api::cache_policy::DEFAULT_LATENCY_HEADROOM_MICROS;
use crate::redis::protocol::heartbeat::StampedReport;

/// A sidecar's p99 may rise to this multiple of its baseline before the copy slows down hard.
pub const RATIO: f64 = 1.5;
/// What the copy may add to a sidecar's p99 in any case (µs), where [`RATIO`] allows less,
/// unless the policy says otherwise: none, so that the p99 of a whole copy stays within 1.5×
/// what the application sees without it. A policy may allow some (a move script holds the
/// instance for a fraction of a millisecond, so a copy at thousands of keys per second adds
/// about that much to a fast instance's p99) for a faster copy beside traffic.
pub const DEFAULT_HEADROOM_MICROS: u64 = DEFAULT_LATENCY_HEADROOM_MICROS as u64;
/// A report of fewer replies says too little about the 99th percentile to act on.
pub const MIN_REQUESTS: u64 = 50;
/// The slowest the copy goes, keys per second (unless `keysPerSecond` is lower): it never
/// stops, so a plan ends.
pub const MIN_RATE: f64 = 200.0;
/// Where a copy that sidecars send traffic beside starts, keys per second.
pub const START_RATE: f64 = 1_000.0;
/// What a round with every p99 within its aim adds to the rate besides a tenth, keys per
/// second: gently, since each second above the aim is felt.
pub const STEP: f64 = 100.0;
/// What a round in which no sidecar sends traffic adds to the rate besides a quarter, keys
/// per second.
pub const FAST_STEP: f64 = 1_000.0;
/// What a round with a p99 over its aim (or over its budget once) multiplies the rate by.
const EASE: f64 = 0.8;
/// The most one round divides the rate by.
const MAX_CUT: f64 = 8.0;
/// The highest p99 taken from a report, µs (about 13 days; a sidecar reports 117 s at most):
/// a corrupt entry cannot overflow the arithmetic.
const MAX_P99_MICROS: u64 = 1 << 40;
/// A report this long after the pair's last one that counted starts its strikes afresh, ms:
/// "in a row" means in consecutive heartbeats, not across a pause or a quiet spell.
const STRIKES_LAPSE_MS: u64 = 2_500;

/// The copy's rate, adjusted by what the sidecars report.
#[derive(Debug)]
pub struct Pacing {
    ceiling: f64,
    rate: f64,
    /// What the copy may add to a sidecar's p99 where [`RATIO`] allows less, µs.
    headroom_micros: u64,
    /// What is known of each (sidecar, instance).
    pairs: HashMap<(String, String), Pair>,
    /// The newest round had a report that counts: some sidecar sends traffic now.
    hears_traffic: bool,
    /// The newest round of reports was read: false until one is, and after a round no moving
    /// instance answered.
    read: bool,
}

/// One sidecar's view of one instance.
#[derive(Debug)]
struct Pair {
    /// What it sees without the copy's load, µs: its lowest p99 during the Job, lowered by a
    /// fifth at most per report, and raised to what it sees while the copy runs at
    /// [`MIN_RATE`].
    baseline: u64,
    /// When its newest report used was written (the server's ms): a report read twice counts
    /// once.
    seen_at: u64,
    /// Its reports over budget in a row.
    strikes: u32,
    /// Its reports over its aim in a row.
    aim_strikes: u32,
}

impl Pair {
    /// Its next report over its aim or budget is a first strike.
    fn strikes_afresh(&mut self) {
        (self.strikes, self.aim_strikes) = (0, 0);
    }
}

/// The report furthest above its budget (or its aim) in a round.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Over {
    /// The sidecar's heartbeat id.
    pub sidecar: String,
    /// The instance it reported on.
    pub instance: String,
    /// Its p99, µs.
    pub p99_micros: u64,
    /// Its budget, µs.
    pub budget_micros: u64,
    /// Its aim, µs.
    pub aim_micros: u64,
}

/// One round's decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Adjustment {
    /// A sidecar's p99 is over its budget (twice in a row, or twice over once): the rate was
    /// cut by how far over it is.
    Slowed(Over),
    /// A sidecar's p99 is over its aim (or over its budget once): the rate eased by a fifth.
    Eased(Over),
    /// Every report is within its aim (or none says enough): the rate grew, or stayed.
    Held,
}

impl Pacing {
    /// Pacing up to `keys_per_second`, starting there, with `headroom_micros` of headroom.
    pub fn new(keys_per_second: u64, headroom_micros: u64) -> Self {
        let ceiling = keys_per_second.max(1) as f64;
        Self {
            ceiling,
            rate: ceiling,
            headroom_micros,
            pairs: HashMap::new(),
            hears_traffic: false,
            read: false,
        }
    }

    /// The rate, keys per second.
    pub fn rate(&self) -> f64 {
        self.rate
    }

    /// The slowest the copy goes.
    fn floor(&self) -> f64 {
        MIN_RATE.min(self.ceiling)
    }

    /// Where a copy beside traffic starts (again).
    fn start(&self) -> f64 {
        START_RATE.min(self.ceiling)
    }

    /// Whether some sidecar sent a moving instance traffic during this Job (enough of it for
    /// a report to count): then the Job's scans outside the copy yield to it too.
    pub fn beside_traffic(&self) -> bool {
        !self.pairs.is_empty()
    }

    /// Whether the newest round of reports had one that counts: some sidecar sends a moving
    /// instance traffic now (a sidecar that stops sending any reports nothing from its next
    /// heartbeat on). The copy's scripts are small while it does.
    pub fn hears_traffic(&self) -> bool {
        self.hears_traffic
    }

    /// Whether nobody is known to wait behind the copy: the newest round of reports was read,
    /// and no report that counts came during this Job. (Not known while no round was read, or
    /// after one no moving instance answered: an instance too slow to answer a read may be
    /// busy with clients.) Sidecars that send fewer requests than a report needs to count,
    /// and clients that bypass the sidecars, are not seen.
    pub fn known_quiet(&self) -> bool {
        self.read && self.pairs.is_empty()
    }

    /// No moving instance answered this round's read of the reports (before the copy too):
    /// the traffic is not known.
    pub fn unread(&mut self) {
        self.read = false;
    }

    /// The copy resumes after a pause: beside traffic it starts again gently.
    pub fn resume(&mut self) {
        if !self.pairs.is_empty() {
            self.rate = self.rate.min(self.start());
        }
        self.pairs.values_mut().for_each(Pair::strikes_afresh);
    }

    /// No moving instance answered this round's read of the reports in time. Nothing is known
    /// of what the sidecars see, but an instance too slow to answer one read is no place to go
    /// faster: the rate halves (to [`MIN_RATE`] at the least). Whether traffic is heard stays
    /// as the last round that was read said (its scripts stay small). (Before the copy, such a
    /// round teaches nothing and changes nothing.)
    pub fn unanswered(&mut self) {
        self.rate = (self.rate / 2.0).max(self.floor());
    }

    /// Takes one round of reports (sidecar id, instance, report) and adjusts the rate. With
    /// `copying` false (nothing of this Job's in flight before the round) the reports only
    /// teach the baselines (and, if some sidecar sends traffic, start the copy gently).
    pub fn adjust<'a>(
        &mut self,
        reports: impl IntoIterator<Item = (&'a str, &'a str, StampedReport)>,
        copying: bool,
    ) -> Adjustment {
        // The report furthest over its budget that counts, and the one furthest over its aim.
        let (mut worst, mut above_aim): (Option<Over>, Option<Over>) = (None, None);
        let (mut fresh, mut newcomer, mut held_back) = (0, false, false);
        let at_floor = self.rate <= self.floor();
        let headroom = self.headroom_micros;
        self.hears_traffic = false;
        self.read = true;
        for (sidecar, instance, StampedReport { report, at_ms }) in reports {
            if report.requests < MIN_REQUESTS {
                continue;
            }
            self.hears_traffic = true;
            let p99 = report.p99_micros.min(MAX_P99_MICROS);
            let key = (sidecar.to_owned(), instance.to_owned());
            let Some(pair) = self.pairs.get_mut(&key) else {
                // First seen: its report is its baseline; judged from its next one.
                self.pairs.insert(
                    key,
                    Pair {
                        baseline: p99,
                        seen_at: at_ms,
                        strikes: 0,
                        aim_strikes: 0,
                    },
                );
                fresh += 1;
                newcomer = true;
                continue;
            };
            if at_ms <= pair.seen_at && pair.seen_at - at_ms < 60_000 {
                // Already weighed (a stamp a minute older: the server's clock stepped back).
                continue;
            }
            fresh += 1;
            if at_ms.abs_diff(pair.seen_at) > STRIKES_LAPSE_MS {
                pair.strikes_afresh();
            }
            pair.seen_at = at_ms;
            if p99 < pair.baseline {
                // One quiet second lowers it by a fifth at most.
                pair.baseline = p99.max(pair.baseline - pair.baseline / 5);
            }
            if !copying {
                pair.strikes_afresh();
                continue;
            }
            if p99 > aim(pair.baseline, headroom) {
                pair.aim_strikes += 1;
                if at_floor && pair.aim_strikes >= 2 {
                    // Over the aim twice with the copy at its slowest: the copy is not what
                    // this sidecar feels, and what it sees now is what it gets without the
                    // copy.
                    pair.baseline = baseline_aiming_at(p99, headroom);
                    pair.aim_strikes = 0;
                }
            } else {
                pair.aim_strikes = 0;
            }
            let over = Over {
                sidecar: sidecar.to_owned(),
                instance: instance.to_owned(),
                p99_micros: p99,
                budget_micros: budget(pair.baseline, headroom),
                aim_micros: aim(pair.baseline, headroom),
            };
            if p99 <= over.budget_micros {
                pair.strikes = 0;
            } else {
                pair.strikes += 1;
                if (pair.strikes >= 2 || over.ratio() >= 2.0)
                    && worst.as_ref().is_none_or(|w| w.ratio() < over.ratio())
                {
                    worst = Some(over.clone());
                }
            }
            // Over the aim twice in a row (once may be the noise of one second's p99), or
            // over the budget once. Once over the aim: the copy does not grow.
            held_back |= p99 > over.aim_micros;
            let eases = pair.aim_strikes >= 2 || pair.strikes >= 1;
            if eases
                && above_aim
                    .as_ref()
                    .is_none_or(|w| w.aim_ratio() < over.aim_ratio())
            {
                above_aim = Some(over);
            }
        }
        if !copying {
            if fresh > 0 {
                self.rate = self.start();
            }
            return Adjustment::Held;
        }
        if newcomer {
            // A sidecar that just started sending traffic has no baseline without the copy.
            self.rate = self.rate.min(self.start());
        }
        if let Some(over) = worst {
            let before = self.rate;
            self.rate = (self.rate / over.ratio().clamp(2.0, MAX_CUT)).max(self.floor());
            if self.rate < before {
                // What comes next was measured partly before this cut.
                self.pairs.values_mut().for_each(Pair::strikes_afresh);
            }
            return Adjustment::Slowed(over);
        }
        if let Some(over) = above_aim {
            let before = self.rate;
            self.rate = (self.rate * EASE).max(self.floor());
            if self.rate < before {
                // What comes next was measured partly before this ease: it takes two reports
                // over the aim again (but one over the budget is still the first strike of a
                // cut).
                self.pairs.values_mut().for_each(|p| p.aim_strikes = 0);
            }
            return Adjustment::Eased(over);
        }
        if newcomer || (held_back && !at_floor) {
            // (At the floor a report over its aim once does not hold the copy there: with
            // several sidecars, one of them is over its aim most seconds by noise alone.)
            return Adjustment::Held;
        }
        if self.pairs.is_empty() {
            // No sidecar has sent traffic during this Job (a round no instance answered
            // halved the rate): no one to disturb.
            self.rate = (self.rate * 1.25 + FAST_STEP).min(self.ceiling);
        } else if fresh > 0 || !self.hears_traffic {
            // Gently, beside traffic, even while it pauses (a client the copy slowed may send
            // less for a while); on news, not on reports already weighed.
            self.rate = (self.rate * 1.1 + STEP).min(self.ceiling);
        }
        Adjustment::Held
    }
}

/// What the copy steers a sidecar's p99 to, as a multiple of its baseline: halfway to
/// [`RATIO`].
const AIM_RATIO: f64 = 1.0 + (RATIO - 1.0) / 2.0;

/// The budget of a (sidecar, instance) whose baseline is `baseline` µs: [`RATIO`] × it, or it
/// plus `headroom_micros` if more. The sidecar reports a p99 as the upper bound of a bucket,
/// one less than a power of two times 5/4, 6/4 or 7/4, so ratios are taken of the bounds
/// plus one: a baseline of 511 µs (512) has a budget of 767 µs (768).
pub fn budget(baseline: u64, headroom_micros: u64) -> u64 {
    times(baseline, RATIO).max(baseline.saturating_add(headroom_micros))
}

/// What the copy steers a (sidecar, instance) p99 to: halfway from its baseline to its budget
/// ([`AIM_RATIO`] × it, or it plus half the headroom if more).
pub fn aim(baseline: u64, headroom_micros: u64) -> u64 {
    times(baseline, AIM_RATIO).max(baseline.saturating_add(headroom_micros / 2))
}

/// `micros` × `factor`, taken on the bucket bound plus one.
fn times(micros: u64, factor: f64) -> u64 {
    (micros.saturating_add(1) as f64 * factor) as u64 - 1
}

/// The least baseline whose aim is `p99` µs or more.
fn baseline_aiming_at(p99: u64, headroom_micros: u64) -> u64 {
    let by_ratio = (p99.saturating_add(1) as f64 / AIM_RATIO).ceil() as u64 - 1;
    by_ratio.min(p99.saturating_sub(headroom_micros / 2))
}

fn ratio(p99_micros: u64, budget_micros: u64) -> f64 {
    p99_micros as f64 / budget_micros.max(1) as f64
}

/// "sidecar S sees p99 P µs from I": who holds the copy back, for its notes and logs.
impl std::fmt::Display for Over {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "sidecar {} sees p99 {} µs from {}",
            self.sidecar, self.p99_micros, self.instance
        )
    }
}

impl Over {
    /// How many times its budget the p99 is.
    fn ratio(&self) -> f64 {
        ratio(self.p99_micros, self.budget_micros)
    }

    /// How many times its aim the p99 is.
    fn aim_ratio(&self) -> f64 {
        ratio(self.p99_micros, self.aim_micros)
    }
}

/// When the next keys may go at a rate that changes: at a steady rate every key counts from
/// the start (a batch held back by a slow landing may catch up); a new rate counts from the
/// moment it was set, and a debt the copy ran up before is forgiven rather than sent in a
/// burst.
#[derive(Debug, Clone, Copy)]
pub struct RateClock {
    anchor: Instant,
    sent_at_anchor: u64,
    rate: f64,
}

impl RateClock {
    /// A clock at `rate` keys per second from `now`, nothing sent.
    pub fn new(rate: f64, now: Instant) -> Self {
        Self {
            anchor: now,
            sent_at_anchor: 0,
            rate,
        }
    }

    /// When the copy, having sent `sent` keys, may send more.
    fn due(&self, sent: u64) -> Instant {
        let ahead = sent.saturating_sub(self.sent_at_anchor) as f64 / self.rate;
        self.anchor + Duration::from_secs_f64(ahead)
    }

    /// The rate, keys per second.
    pub fn rate(&self) -> f64 {
        self.rate
    }

    /// How long to wait at `now` before sending more, having sent `sent`; `None`: go.
    pub fn wait(&self, sent: u64, now: Instant) -> Option<Duration> {
        self.due(sent)
            .checked_duration_since(now)
            .filter(|d| !d.is_zero())
    }

    /// Changes the rate at `now`, having sent `sent`.
    pub fn set_rate(&mut self, rate: f64, sent: u64, now: Instant) {
        if rate == self.rate {
            return;
        }
        self.anchor = self.due(sent).max(now);
        self.sent_at_anchor = sent;
        self.rate = rate;
    }

    /// The copy held for `held` (paused): that time does not count toward the rate.
    pub fn hold(&mut self, held: Duration) {
        self.anchor += held;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::redis::protocol::heartbeat::LatencyReport;

    /// Feeds one round of fresh reports (sidecar, instance, p99 µs, replies).
    struct Rounds {
        p: Pacing,
        at: u64,
    }

    impl Rounds {
        fn new(keys_per_second: u64) -> Self {
            Self::with_headroom(keys_per_second, DEFAULT_HEADROOM_MICROS)
        }

        fn with_headroom(keys_per_second: u64, headroom_micros: u64) -> Self {
            Self {
                p: Pacing::new(keys_per_second, headroom_micros),
                at: 0,
            }
        }

        fn round(&mut self, reports: &[(&str, &str, u64, u64)], copying: bool) -> Adjustment {
            self.at += 1_000;
            let at_ms = self.at;
            self.p.adjust(
                reports.iter().map(|(s, i, p99_micros, requests)| {
                    let report = LatencyReport {
                        p99_micros: *p99_micros,
                        requests: *requests,
                    };
                    (*s, *i, StampedReport { report, at_ms })
                }),
                copying,
            )
        }

        fn rate(&self) -> f64 {
            self.p.rate()
        }
    }

    #[test]
    fn traffic_is_heard_while_a_round_has_a_report_that_counts() {
        let mut r = Rounds::new(60_000);
        assert!(!r.p.hears_traffic());
        r.round(&[("s1", "a", 400, 2_000)], false);
        assert!(r.p.hears_traffic() && r.p.beside_traffic());
        // Too few replies to count.
        r.round(&[("s1", "a", 400, MIN_REQUESTS - 1)], true);
        assert!(!r.p.hears_traffic());
        r.round(&[("s1", "a", 400, 2_000)], true);
        assert!(r.p.hears_traffic());
        // The sidecar stopped sending traffic: its report went. The scans stay gentle for the
        // rest of the Job; the scripts need not.
        r.round(&[], true);
        assert!(!r.p.hears_traffic() && r.p.beside_traffic());
    }

    #[test]
    fn nobody_is_known_to_wait_only_after_a_quiet_round_was_read() {
        let mut r = Rounds::new(60_000);
        assert!(!r.p.known_quiet(), "no round read yet");
        r.round(&[("s1", "a", 400, 10)], false);
        assert!(r.p.known_quiet(), "a report too small to count");
        r.p.unread();
        assert!(!r.p.known_quiet(), "a round no instance answered");
        r.round(&[], true);
        assert!(r.p.known_quiet());
        r.round(&[("s1", "a", 400, 2_000)], true);
        assert!(!r.p.known_quiet());
        // Traffic seen once during the Job: never quiet again.
        r.round(&[], true);
        assert!(!r.p.known_quiet() && !r.p.hears_traffic());
    }

    #[test]
    fn a_round_no_instance_answered_slows_the_copy_and_keeps_its_scripts_small() {
        let mut r = Rounds::new(60_000);
        r.round(&[("s1", "a", 400, 2_000)], false);
        for _ in 0..3 {
            r.round(&[("s1", "a", 400, 2_000)], true);
        }
        let before = r.rate();
        r.p.unanswered();
        assert_eq!(r.rate(), before / 2.0);
        assert!(r.p.hears_traffic(), "the scripts stay small");
        for _ in 0..10 {
            r.p.unanswered();
        }
        assert_eq!(r.rate(), MIN_RATE);
    }

    fn slowed(a: Adjustment) -> Over {
        match a {
            Adjustment::Slowed(over) => over,
            other => panic!("not slowed: {other:?}"),
        }
    }

    fn eased(a: Adjustment) -> Over {
        match a {
            Adjustment::Eased(over) => over,
            other => panic!("not eased: {other:?}"),
        }
    }

    #[test]
    fn the_job_is_beside_traffic_once_a_report_counts() {
        let mut r = Rounds::new(60_000);
        assert!(!r.p.beside_traffic());
        r.round(&[("s1", "a", 900, MIN_REQUESTS - 1)], false);
        assert!(!r.p.beside_traffic(), "too few replies to count");
        r.round(&[("s1", "a", 900, MIN_REQUESTS)], false);
        assert!(r.p.beside_traffic());
    }

    #[test]
    fn with_no_one_to_disturb_the_copy_runs_at_keys_per_second() {
        let mut r = Rounds::new(60_000);
        assert_eq!(r.rate(), 60_000.0);
        // A sidecar that sent a handful of requests says nothing about its p99.
        let quiet = [("s1", "a", 90_000, MIN_REQUESTS - 1)];
        assert_eq!(r.round(&quiet, false), Adjustment::Held);
        assert_eq!(r.rate(), 60_000.0);
        assert_eq!(r.round(&[], true), Adjustment::Held);
        assert_eq!(r.round(&quiet, true), Adjustment::Held);
        assert_eq!(r.rate(), 60_000.0);
    }

    #[test]
    fn beside_traffic_the_copy_starts_gently_steers_for_its_aim_and_cuts_by_how_far_over() {
        let mut r = Rounds::new(60_000);
        // Before the copy: the baseline is learnt, and there is traffic to spare.
        assert_eq!(
            r.round(&[("s1", "a", 4_000, 2_000)], false),
            Adjustment::Held
        );
        assert_eq!(r.rate(), START_RATE);
        // The default has no headroom: the budget is 1.5× the baseline, the aim 1.25×.
        assert_eq!((budget(4_000, 0), aim(4_000, 0)), (6_000, 5_000));
        // Within the aim: grows by a tenth and a step each round, up to the ceiling.
        assert_eq!(
            r.round(&[("s1", "a", 5_000, 2_000)], true),
            Adjustment::Held
        );
        assert_eq!(r.rate(), START_RATE * 1.1 + STEP);
        for _ in 0..60 {
            r.round(&[("s1", "a", 5_000, 2_000)], true);
        }
        assert_eq!(r.rate(), 60_000.0);
        // Over the aim, within budget: once holds the rate (one second's p99 is noisy),
        // twice in a row eases it by a fifth; the next report was measured partly before the
        // ease, so it takes two again.
        let above = [("s1", "a", 5_500, 2_000)];
        assert_eq!(r.round(&above, true), Adjustment::Held);
        assert_eq!(r.rate(), 60_000.0);
        let over = eased(r.round(&above, true));
        assert_eq!((over.aim_micros, over.budget_micros), (5_000, 6_000));
        assert_eq!(r.rate(), 48_000.0);
        assert_eq!(r.round(&above, true), Adjustment::Held);
        assert_eq!(r.rate(), 48_000.0, "once over the aim: no growth");
        eased(r.round(&above, true));
        assert_eq!(r.rate(), 38_400.0);
        // Just over budget on one instance (the other sends too little to count): once eases,
        // twice in a row halves.
        let slow = [("s1", "a", 6_001, 2_000), ("s1", "b", 100, 9)];
        eased(r.round(&slow, true));
        assert_eq!(r.rate(), 30_720.0);
        let over = slowed(r.round(&slow, true));
        assert_eq!(
            (over.instance.as_str(), over.p99_micros, over.budget_micros),
            ("a", 6_001, 6_000)
        );
        assert_eq!(r.rate(), 15_360.0);
        // Three times over: cut by three at once; twenty times over: by eight at most.
        r.round(&[("s1", "a", 18_000, 2_000)], true);
        assert_eq!(r.rate(), 5_120.0);
        r.round(&[("s1", "a", 120_000, 2_000)], true);
        assert_eq!(r.rate(), 640.0);
        // Never below the floor.
        for _ in 0..2 {
            slowed(r.round(&[("s1", "a", 13_000, 2_000)], true));
        }
        assert_eq!(r.rate(), MIN_RATE);
        // Over its aim twice with the copy at the floor: the copy is not the cause. What the
        // sidecar sees now becomes its aim, and the copy grows again.
        assert_eq!(
            eased(r.round(&[("s1", "a", 9_000, 2_000)], true)).budget_micros,
            6_000
        );
        assert_eq!(r.rate(), MIN_RATE);
        assert_eq!(
            r.round(&[("s1", "a", 9_000, 2_000)], true),
            Adjustment::Held
        );
        assert_eq!(r.rate(), MIN_RATE * 1.1 + STEP);
        r.round(&[("s1", "a", 9_001, 2_000)], true);
        let over = eased(r.round(&[("s1", "a", 9_001, 2_000)], true));
        assert_eq!((over.aim_micros, over.budget_micros), (9_000, 10_800));
    }

    #[test]
    fn the_aim_and_budget_are_taken_on_the_bounds_of_the_sidecars_buckets() {
        // The sidecar reports the upper bound of a bucket: 511, 639, 767, 1 023 µs… From a
        // baseline of 511 µs, one bucket up (639) is within the aim and two (767) within the
        // budget.
        assert_eq!((aim(511, 0), budget(511, 0)), (639, 767));
        assert_eq!((aim(1_023, 0), budget(1_023, 0)), (1_279, 1_535));
        let mut r = Rounds::new(60_000);
        r.round(&[("s1", "a", 511, 2_000)], false);
        for _ in 0..3 {
            assert_eq!(r.round(&[("s1", "a", 639, 2_000)], true), Adjustment::Held);
        }
        assert_eq!(r.round(&[("s1", "a", 767, 2_000)], true), Adjustment::Held);
        eased(r.round(&[("s1", "a", 767, 2_000)], true));
        // The baseline a p99 at the floor becomes: the least whose aim reaches it.
        for headroom in [0, 1, 999, 1_000, 1_001] {
            for p99 in 1..20_000 {
                let b = baseline_aiming_at(p99, headroom);
                assert!(aim(b, headroom) >= p99, "{p99} {headroom}");
                assert!(b == 0 || aim(b - 1, headroom) < p99, "{p99} {headroom}");
            }
        }
    }

    #[test]
    fn a_newcomer_does_not_hide_another_sidecar_over_its_aim() {
        let mut r = Rounds::new(60_000);
        r.round(&[("s1", "a", 400, 2_000)], false);
        for _ in 0..10 {
            r.round(&[("s1", "a", 400, 2_000)], true);
        }
        assert!(r.rate() > START_RATE);
        r.round(&[("s1", "a", 600, 2_000)], true);
        // s2's first report starts the copy gently again, and s1 over its aim twice eases it.
        let over = eased(r.round(&[("s1", "a", 600, 2_000), ("s2", "a", 900, 2_000)], true));
        assert_eq!(over.sidecar, "s1");
        assert_eq!(r.rate(), START_RATE * EASE);
    }

    #[test]
    fn beside_traffic_the_copy_grows_gently_even_while_the_traffic_pauses() {
        let mut r = Rounds::new(60_000);
        r.round(&[("s1", "a", 400, 2_000)], false);
        r.round(&[("s1", "a", 400, 2_000)], true);
        let gentle = r.rate();
        assert_eq!(gentle, START_RATE * 1.1 + STEP);
        // The sidecar went quiet (a client the copy slowed may send less for a while).
        r.round(&[("s1", "a", 400, 10)], true);
        assert_eq!(r.rate(), gentle * 1.1 + STEP);
        // With no sidecar seen at all, a round no instance answered halved the rate: it grows
        // back fast.
        let mut r = Rounds::new(60_000);
        r.p.unanswered();
        r.round(&[], true);
        assert_eq!(r.rate(), 30_000.0 * 1.25 + FAST_STEP);
    }

    #[test]
    fn headroom_widens_the_budget_of_a_small_baseline_and_its_aim_by_half_as_much() {
        let mut r = Rounds::with_headroom(60_000, 1_000);
        r.round(&[("s1", "a", 300, 2_000)], false);
        assert_eq!((budget(300, 1_000), aim(300, 1_000)), (1_300, 800));
        for _ in 0..3 {
            assert_eq!(r.round(&[("s1", "a", 800, 2_000)], true), Adjustment::Held);
        }
        let over = eased(r.round(&[("s1", "a", 1_301, 2_000)], true));
        assert_eq!((over.aim_micros, over.budget_micros), (800, 1_300));
        assert_eq!(
            slowed(r.round(&[("s1", "a", 2_600, 2_000)], true)).budget_micros,
            1_300
        );
        // At the floor, a p99 the copy does not cause becomes the aim: the baseline is what
        // lies that headroom's half under it.
        while r.rate() > MIN_RATE {
            slowed(r.round(&[("s1", "a", 5_000, 2_000)], true));
        }
        r.round(&[("s1", "a", 1_600, 2_000)], true);
        assert_eq!(
            r.round(&[("s1", "a", 1_600, 2_000)], true),
            Adjustment::Held
        );
        r.round(&[("s1", "a", 1_601, 2_000)], true);
        let over = eased(r.round(&[("s1", "a", 1_601, 2_000)], true));
        assert_eq!((over.aim_micros, over.budget_micros), (1_600, 2_100));
    }

    #[test]
    fn at_the_floor_the_copy_grows_past_a_single_report_over_its_aim() {
        let mut r = Rounds::new(60_000);
        r.round(&[("s1", "a", 1_000, 2_000)], false);
        while r.rate() > MIN_RATE {
            r.round(&[("s1", "a", 9_000, 2_000)], true);
        }
        // Over the aim (1 250), within budget (1 500), once: the copy at the floor grows all
        // the same (with several sidecars one is over its aim most seconds by noise alone).
        assert_eq!(
            r.round(&[("s1", "a", 1_400, 2_000)], true),
            Adjustment::Held
        );
        assert_eq!(r.rate(), MIN_RATE * 1.1 + STEP);
    }

    #[test]
    fn strikes_count_in_consecutive_heartbeats_not_across_a_pause() {
        let mut r = Rounds::new(60_000);
        r.round(&[("s1", "a", 4_000, 2_000)], false);
        for _ in 0..10 {
            r.round(&[("s1", "a", 4_000, 2_000)], true);
        }
        eased(r.round(&[("s1", "a", 7_000, 2_000)], true));
        // A pause: the next report over budget is a first strike again.
        r.p.resume();
        eased(r.round(&[("s1", "a", 7_000, 2_000)], true));
        // And after a gap in the reports (the sidecar sent too little to count meanwhile).
        r.at += 5_000;
        eased(r.round(&[("s1", "a", 7_000, 2_000)], true));
        slowed(r.round(&[("s1", "a", 7_000, 2_000)], true));
    }

    #[test]
    fn a_corrupt_p99_neither_overflows_nor_blinds_the_pacing_for_long() {
        let mut r = Rounds::new(60_000);
        r.round(&[("s1", "a", u64::MAX, 2_000)], false);
        r.round(&[("s1", "a", 500, 2_000)], true);
        // No overflow however the rounds go, at the floor (a baseline raised) or not.
        for _ in 0..20 {
            r.round(&[("s1", "a", u64::MAX, 2_000)], true);
            r.round(&[("s1", "a", 1, 2_000)], true);
        }
        assert_eq!(budget(u64::MAX, 1_000), u64::MAX);
        assert!(aim(baseline_aiming_at(u64::MAX, 0), 0) >= MAX_P99_MICROS);
        // Quiet seconds bring the baseline back down a fifth at a time.
        for _ in 0..150 {
            r.round(&[("s1", "a", 500, 2_000)], true);
        }
        eased(r.round(&[("s1", "a", 1_000, 2_000)], true));
    }

    #[test]
    fn the_default_has_no_headroom() {
        assert_eq!(DEFAULT_HEADROOM_MICROS, 0);
        assert_eq!((aim(300, 0), budget(300, 0)), (375, 450));
    }

    #[test]
    fn a_report_read_twice_counts_once() {
        let mut r = Rounds::new(60_000);
        r.round(&[("s1", "a", 4_000, 2_000)], false);
        // Over budget once: eased, not cut.
        eased(r.round(&[("s1", "a", 7_000, 2_000)], true));
        let rate = r.rate();
        // The same report (same stamp) again: no second strike, and no change on old news.
        let same = StampedReport {
            report: LatencyReport {
                p99_micros: 7_000,
                requests: 2_000,
            },
            at_ms: r.at,
        };
        assert_eq!(r.p.adjust([("s1", "a", same)], true), Adjustment::Held);
        assert_eq!(r.rate(), rate);
        // A new one over budget is the second strike.
        slowed(r.round(&[("s1", "a", 7_000, 2_000)], true));
    }

    #[test]
    fn a_sidecar_first_seen_during_the_copy_or_a_resume_starts_it_gently_again() {
        let mut r = Rounds::new(60_000);
        assert_eq!(r.round(&[], false), Adjustment::Held);
        assert_eq!(r.rate(), 60_000.0);
        // Traffic appears mid-copy: its first report, taken under the copy's load, is not
        // judged, and the copy drops to where it starts beside traffic.
        assert_eq!(
            r.round(&[("s1", "a", 5_000, 2_000)], true),
            Adjustment::Held
        );
        assert_eq!(r.rate(), START_RATE);
        for _ in 0..60 {
            r.round(&[("s1", "a", 5_000, 2_000)], true);
        }
        assert_eq!(r.rate(), 60_000.0);
        r.p.resume();
        assert_eq!(r.rate(), START_RATE);
    }

    #[test]
    fn each_sidecar_is_judged_by_its_own_baseline() {
        let mut r = Rounds::new(10_000);
        r.round(&[("near", "a", 100, 500), ("far", "a", 4_000, 500)], false);
        // 124 µs and 5 000 µs: each at its aim (taken on the bucket bounds: 101 × 1.25 - 1).
        assert_eq!(
            r.round(&[("near", "a", 124, 500), ("far", "a", 5_000, 500)], true),
            Adjustment::Held
        );
        assert_eq!(r.rate(), START_RATE * 1.1 + STEP);
        // Both twice over budget or more: the one furthest over it is named.
        let over = slowed(r.round(&[("near", "a", 330, 500), ("far", "a", 12_001, 500)], true));
        assert_eq!((over.sidecar.as_str(), over.budget_micros), ("near", 150));
        // A lower p99 seen later lowers the budget, by a fifth at most per report.
        r.round(&[("far", "a", 2_000, 500)], true);
        assert_eq!(
            slowed(r.round(&[("far", "a", 9_601, 500)], true)).budget_micros,
            4_800
        );
        r.round(&[("far", "a", 2_000, 500)], true);
        r.round(&[("far", "a", 2_000, 500)], true);
        assert_eq!(
            slowed(r.round(&[("far", "a", 6_145, 500)], true)).budget_micros,
            3_072
        );
    }

    #[test]
    fn a_small_ceiling_is_its_own_floor_and_start() {
        let mut r = Rounds::new(50);
        r.round(&[("s", "a", 100, 500)], false);
        assert_eq!(r.rate(), 50.0);
        r.round(&[("s", "a", 100_000, 500)], true);
        assert_eq!(r.rate(), 50.0);
    }

    #[test]
    fn the_clock_keeps_a_steady_rate_exactly_and_forgives_a_debt_when_the_rate_changes() {
        let t0 = Instant::now();
        let mut c = RateClock::new(1_000.0, t0);
        assert_eq!(c.wait(0, t0), None);
        assert_eq!(c.wait(500, t0), Some(Duration::from_millis(500)));
        // Behind (the landing was slow): go at once, and catch up at a steady rate.
        assert_eq!(c.wait(500, t0 + Duration::from_secs(2)), None);
        assert_eq!(
            c.wait(2_500, t0 + Duration::from_secs(2)),
            Some(Duration::from_millis(500))
        );
        // Halved while 1 000 keys behind: the new rate counts from now.
        let t2 = t0 + Duration::from_secs(2);
        c.set_rate(500.0, 1_000, t2);
        assert_eq!(c.wait(1_000, t2), None);
        assert_eq!(c.wait(1_250, t2), Some(Duration::from_millis(500)));
        // Set while ahead: what was sent at the old rate is waited for first.
        c.set_rate(1_000.0, 1_500, t2);
        assert_eq!(c.wait(1_500, t2), Some(Duration::from_secs(1)));
        assert_eq!(c.wait(2_500, t2), Some(Duration::from_secs(2)));
        // A pause moves everything later.
        c.hold(Duration::from_secs(10));
        assert_eq!(c.wait(1_500, t2), Some(Duration::from_secs(11)));
    }
}
