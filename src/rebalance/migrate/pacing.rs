//! Adaptive pacing: the copy yields to the application. Every second each sidecar reports, on
//! each instance it uses, the 99th percentile of that instance's answers to it since its last
//! heartbeat ([`LatencyReport`]). The Job reads those of its sources and targets once before
//! the copy and once a second during it:
//!
//! - no sidecar sends them traffic: the copy runs at `keysPerSecond`;
//! - some do: the copy starts at [`START_RATE`] (a burst would be felt before the first
//!   report could say so);
//! - a sidecar's p99 above its budget — [`RATIO`] × its baseline, or its baseline plus
//!   the headroom (`latencyHeadroomMicroseconds`, [`DEFAULT_HEADROOM_MICROS`]) if more —
//!   divides the rate by how far over it is (by 2 to 8), down to [`MIN_RATE`]. The baseline
//!   is what that instance answers it without the copy's load: the lowest p99 it reported
//!   during this Job, but a quiet second lowers it by a fifth at most (a p99 of one second is
//!   noisy), and a p99 over budget while the copy already runs at [`MIN_RATE`] raises it (the
//!   copy is not what the sidecar feels);
//! - every sidecar within budget: the rate grows by a quarter plus [`STEP`], up to
//!   `keysPerSecond`.
//!
//! Pure: the Job feeds the reports in and asks for the rate (`docs/protocol.md`, "Pacing").

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::redis::protocol::heartbeat::StampedReport;

/// A sidecar's p99 may rise to this multiple of its baseline before the copy slows.
pub const RATIO: f64 = 1.5;
/// What the copy may add to a sidecar's p99 in any case (µs), unless the policy says otherwise:
/// a move script holds the instance for a fraction of a millisecond, so any copy at all raises
/// the p99 of a busy instance by about that much, and a p99 of a few hundred µs moves with the
/// machine's noise.
pub const DEFAULT_HEADROOM_MICROS: u64 = 1_000;
/// A report of fewer replies says too little about the 99th percentile to act on.
pub const MIN_REQUESTS: u64 = 50;
/// The slowest the copy goes, keys per second (unless `keysPerSecond` is lower): it never
/// stops, so a plan ends.
pub const MIN_RATE: f64 = 200.0;
/// Where a copy that sidecars send traffic beside starts, keys per second.
pub const START_RATE: f64 = 2_000.0;
/// What a round within budget adds to the rate besides a quarter, keys per second.
pub const STEP: f64 = 1_000.0;
/// The most one round divides the rate by.
const MAX_CUT: f64 = 8.0;

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
}

/// The report furthest above its budget in a round.
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
}

/// One round's decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Adjustment {
    /// A sidecar's p99 is over its budget (twice in a row, or twice over once): the rate was
    /// cut.
    Slowed(Over),
    /// Every report is within budget (or none says enough): the rate grew, or stayed.
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

    /// The copy resumes after a pause: beside traffic it starts again gently.
    pub fn resume(&mut self) {
        if !self.pairs.is_empty() {
            self.rate = self.rate.min(self.start());
        }
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
        let mut worst: Option<Over> = None;
        let (mut fresh, mut stale, mut newcomer) = (0, 0, false);
        let at_floor = self.rate <= self.floor();
        let headroom = self.headroom_micros;
        self.hears_traffic = false;
        for (sidecar, instance, StampedReport { report, at_ms }) in reports {
            if report.requests < MIN_REQUESTS {
                continue;
            }
            self.hears_traffic = true;
            let key = (sidecar.to_owned(), instance.to_owned());
            let Some(pair) = self.pairs.get_mut(&key) else {
                // First seen: its report is its baseline; judged from its next one.
                self.pairs.insert(
                    key,
                    Pair {
                        baseline: report.p99_micros,
                        seen_at: at_ms,
                        strikes: 0,
                    },
                );
                fresh += 1;
                newcomer = true;
                continue;
            };
            if at_ms <= pair.seen_at {
                stale += 1;
                continue;
            }
            fresh += 1;
            pair.seen_at = at_ms;
            if report.p99_micros < pair.baseline {
                // One quiet second lowers it by a fifth at most.
                pair.baseline = report.p99_micros.max(pair.baseline * 4 / 5);
            }
            let mut allowed = budget(pair.baseline, headroom);
            if copying && at_floor && report.p99_micros > allowed {
                // Over budget with the copy at its slowest: the copy is not what this sidecar
                // feels, and what it sees now is what it gets without the copy.
                pair.baseline = (report.p99_micros as f64 / RATIO)
                    .min(report.p99_micros.saturating_sub(headroom) as f64)
                    .ceil() as u64;
                allowed = budget(pair.baseline, headroom);
            }
            if !copying || report.p99_micros <= allowed {
                pair.strikes = 0;
                continue;
            }
            pair.strikes += 1;
            let how_far = ratio(report.p99_micros, allowed);
            if (pair.strikes >= 2 || how_far >= 2.0)
                && worst.as_ref().is_none_or(|w| w.ratio() < how_far)
            {
                worst = Some(Over {
                    sidecar: sidecar.to_owned(),
                    instance: instance.to_owned(),
                    p99_micros: report.p99_micros,
                    budget_micros: allowed,
                });
            }
        }
        if !copying {
            if fresh > 0 {
                self.rate = self.start();
            }
            return Adjustment::Held;
        }
        if let Some(over) = worst {
            self.rate = (self.rate / over.ratio().clamp(2.0, MAX_CUT)).max(self.floor());
            // What comes next was measured partly before this cut.
            self.pairs.values_mut().for_each(|p| p.strikes = 0);
            return Adjustment::Slowed(over);
        }
        if newcomer {
            // A sidecar that just started sending traffic has no baseline without the copy.
            self.rate = self.rate.min(self.start());
        } else if fresh > 0 || stale == 0 {
            // Grows on news (or with no one to disturb), not on reports already weighed.
            self.rate = (self.rate * 1.25 + STEP).min(self.ceiling);
        }
        Adjustment::Held
    }
}

/// The budget of a (sidecar, instance) whose baseline is `baseline` µs: [`RATIO`] × it, or it
/// plus `headroom_micros` if more.
pub fn budget(baseline: u64, headroom_micros: u64) -> u64 {
    ((baseline as f64 * RATIO) as u64).max(baseline + headroom_micros)
}

fn ratio(p99_micros: u64, budget_micros: u64) -> f64 {
    p99_micros as f64 / budget_micros.max(1) as f64
}

impl Over {
    /// How many times its budget the p99 is.
    fn ratio(&self) -> f64 {
        ratio(self.p99_micros, self.budget_micros)
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
            Adjustment::Held => panic!("not slowed"),
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
    fn beside_traffic_the_copy_starts_gently_slows_by_how_far_over_and_grows_back() {
        let mut r = Rounds::new(60_000);
        // Before the copy: the baseline is learnt, and there is traffic to spare.
        assert_eq!(
            r.round(&[("s1", "a", 4_000, 2_000)], false),
            Adjustment::Held
        );
        assert_eq!(r.rate(), START_RATE);
        // Within 1.5×: grows by a quarter and a step each round, up to the ceiling.
        assert_eq!(
            r.round(&[("s1", "a", 6_000, 2_000)], true),
            Adjustment::Held
        );
        assert_eq!(r.rate(), 3_500.0);
        for _ in 0..30 {
            r.round(&[("s1", "a", 6_000, 2_000)], true);
        }
        assert_eq!(r.rate(), 60_000.0);
        // Just over on one instance of two: once may be noise; twice in a row halves.
        let slow = [("s1", "a", 6_001, 2_000), ("s1", "b", 100, 9)];
        assert_eq!(r.round(&slow, true), Adjustment::Held);
        let over = Over {
            sidecar: "s1".into(),
            instance: "a".into(),
            p99_micros: 6_001,
            budget_micros: 6_000,
        };
        assert_eq!(r.round(&slow, true), Adjustment::Slowed(over));
        assert_eq!(r.rate(), 30_000.0);
        // Three times over: cut by three at once; twenty times over: by eight at most.
        r.round(&[("s1", "a", 18_000, 2_000)], true);
        assert_eq!(r.rate(), 10_000.0);
        r.round(&[("s1", "a", 120_000, 2_000)], true);
        assert_eq!(r.rate(), 1_250.0);
        // Never below the floor.
        for _ in 0..3 {
            slowed(r.round(&[("s1", "a", 13_000, 2_000)], true));
        }
        assert_eq!(r.rate(), MIN_RATE);
        // Still over budget with the copy at the floor: the copy is not the cause. What the
        // sidecar sees now becomes its baseline's budget, and the copy grows again.
        assert_eq!(
            r.round(&[("s1", "a", 9_000, 2_000)], true),
            Adjustment::Held
        );
        assert_eq!(r.rate(), MIN_RATE * 1.25 + STEP);
        assert_eq!(
            r.round(&[("s1", "a", 9_000, 2_000)], true),
            Adjustment::Held
        );
        assert_eq!(
            slowed(r.round(&[("s1", "a", 18_000, 2_000)], true)).budget_micros,
            9_000
        );
    }

    #[test]
    fn a_small_baseline_gets_a_millisecond_of_headroom() {
        let mut r = Rounds::new(60_000);
        r.round(&[("s1", "a", 300, 2_000)], false);
        assert_eq!(budget(300, DEFAULT_HEADROOM_MICROS), 1_300);
        for _ in 0..3 {
            assert_eq!(
                r.round(&[("s1", "a", 1_300, 2_000)], true),
                Adjustment::Held
            );
        }
        assert_eq!(
            slowed(r.round(&[("s1", "a", 2_600, 2_000)], true)).budget_micros,
            1_300
        );
    }

    #[test]
    fn without_headroom_a_small_baseline_gets_half_of_itself() {
        // `latencyHeadroomMicroseconds: 0`: the p99 is held to 1.5× the baseline, which the
        // default's millisecond lets a copy beside a 300 µs instance exceed fourfold.
        let mut r = Rounds::with_headroom(60_000, 0);
        r.round(&[("s1", "a", 300, 2_000)], false);
        assert_eq!(budget(300, 0), 450);
        assert_eq!(r.round(&[("s1", "a", 450, 2_000)], true), Adjustment::Held);
        let start = r.rate();
        assert_eq!(r.round(&[("s1", "a", 700, 2_000)], true), Adjustment::Held);
        let over = slowed(r.round(&[("s1", "a", 700, 2_000)], true));
        assert_eq!(over.budget_micros, 450);
        assert!(r.rate() < start, "{} !< {start}", r.rate());
        // At the floor, a p99 the copy does not cause becomes the baseline: 1.5× under it.
        let mut rounds = 0;
        while r.rate() > MIN_RATE {
            slowed(r.round(&[("s1", "a", 1_000, 2_000)], true));
            rounds += 1;
            assert!(rounds < 8, "never at the floor: {}", r.rate());
        }
        assert_eq!(
            r.round(&[("s1", "a", 1_000, 2_000)], true),
            Adjustment::Held
        );
        assert_eq!(
            slowed(r.round(&[("s1", "a", 2_100, 2_000)], true)).budget_micros,
            1_000
        );
    }

    #[test]
    fn a_report_read_twice_counts_once() {
        let mut r = Rounds::new(60_000);
        r.round(&[("s1", "a", 4_000, 2_000)], false);
        r.round(&[("s1", "a", 7_000, 2_000)], true);
        let rate = r.rate();
        // The same report (same stamp) again: no second strike, and no growth on old news.
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
        for _ in 0..30 {
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
        // 1 100 µs is 11× near's baseline, but within its headroom; 5 900 µs within far's 1.5×.
        assert_eq!(
            r.round(&[("near", "a", 1_100, 500), ("far", "a", 5_900, 500)], true),
            Adjustment::Held
        );
        // Both twice over budget or more: the one furthest over it is named.
        let over = slowed(r.round(
            &[("near", "a", 3_300, 500), ("far", "a", 12_001, 500)],
            true,
        ));
        assert_eq!((over.sidecar.as_str(), over.budget_micros), ("near", 1_100));
        // A lower p99 seen later lowers the budget, by a fifth at most per report.
        r.round(&[("far", "a", 2_000, 500)], true);
        assert_eq!(r.round(&[("far", "a", 4_800, 500)], true), Adjustment::Held);
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
