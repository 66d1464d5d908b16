//! Adaptive pacing: the copy yields to the application. Every second each sidecar reports, on
//! each instance it uses, the 99th percentile of that instance's answers to it since its last
//! heartbeat ([`LatencyReport`]). The Job reads those of its sources and targets once before
//! the copy and once a second during it:
//!
//! - no sidecar sends them traffic: the copy runs at `keysPerSecond`;
//! - some do: the copy starts at [`START_RATE`] (a burst would be felt before the first
//!   report could say so);
//! - a sidecar's p99 above its budget — [`RATIO`] × its baseline, at least [`FLOOR_MICROS`] —
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

use crate::redis::protocol::heartbeat::LatencyReport;

/// A sidecar's p99 may rise to this multiple of its baseline before the copy slows.
pub const RATIO: f64 = 1.5;
/// Budgets below this are raised to it (µs): a p99 this small moves with the machine's noise.
pub const FLOOR_MICROS: u64 = 250;
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
    /// What each (sidecar, instance) sees without the copy's load, µs: its lowest p99 during
    /// the Job, lowered by a fifth at most per report, and raised to what it sees while the
    /// copy runs at [`MIN_RATE`].
    baseline: HashMap<(String, String), u64>,
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
    /// A sidecar's p99 is above its budget: the rate was halved.
    Slowed(Over),
    /// Every report is within budget (or none says enough): the rate grew, or stayed at the
    /// ceiling.
    Held,
}

impl Pacing {
    /// Pacing up to `keys_per_second`, starting there.
    pub fn new(keys_per_second: u64) -> Self {
        let ceiling = keys_per_second.max(1) as f64;
        Self {
            ceiling,
            rate: ceiling,
            baseline: HashMap::new(),
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

    /// The budget of a (sidecar, instance) whose baseline is `baseline` µs.
    pub fn budget(baseline: u64) -> u64 {
        ((baseline as f64 * RATIO) as u64).max(FLOOR_MICROS)
    }

    /// Takes one round of reports (sidecar id, instance, report) and adjusts the rate. With
    /// `copying` false (nothing of this Job's in flight before the round) the reports only
    /// teach the baselines (and, if some sidecar sends traffic, start the copy gently).
    pub fn adjust<'a>(
        &mut self,
        reports: impl IntoIterator<Item = (&'a str, &'a str, LatencyReport)>,
        copying: bool,
    ) -> Adjustment {
        let mut worst: Option<Over> = None;
        let mut traffic = false;
        let at_floor = self.rate <= self.floor();
        for (sidecar, instance, report) in reports {
            if report.requests < MIN_REQUESTS {
                continue;
            }
            traffic = true;
            let baseline = self
                .baseline
                .entry((sidecar.to_owned(), instance.to_owned()))
                .or_insert(report.p99_micros);
            if report.p99_micros < *baseline {
                // One quiet second lowers it by a fifth at most.
                *baseline = report.p99_micros.max(*baseline * 4 / 5);
            }
            let mut budget = Self::budget(*baseline);
            if copying && at_floor && report.p99_micros > budget {
                // Over budget with the copy at its slowest: the copy is not what this sidecar
                // feels, and what it sees now is what it gets without the copy.
                *baseline = (report.p99_micros as f64 / RATIO).ceil() as u64;
                budget = Self::budget(*baseline);
            }
            if copying
                && report.p99_micros > budget
                && worst
                    .as_ref()
                    .is_none_or(|w| w.ratio() < ratio(report.p99_micros, budget))
            {
                worst = Some(Over {
                    sidecar: sidecar.to_owned(),
                    instance: instance.to_owned(),
                    p99_micros: report.p99_micros,
                    budget_micros: budget,
                });
            }
        }
        if !copying {
            if traffic {
                self.rate = START_RATE.min(self.ceiling);
            }
            return Adjustment::Held;
        }
        if let Some(over) = worst {
            self.rate = (self.rate / over.ratio().clamp(2.0, MAX_CUT)).max(self.floor());
            Adjustment::Slowed(over)
        } else {
            self.rate = (self.rate * 1.25 + STEP).min(self.ceiling);
            Adjustment::Held
        }
    }
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

    fn report(p99_micros: u64, requests: u64) -> LatencyReport {
        LatencyReport {
            p99_micros,
            requests,
        }
    }

    #[test]
    fn with_no_one_to_disturb_the_copy_runs_at_keys_per_second() {
        let mut p = Pacing::new(60_000);
        assert_eq!(p.rate(), 60_000.0);
        // A sidecar that sent a handful of requests says nothing about its p99.
        let quiet = [("s1", "a", report(90_000, MIN_REQUESTS - 1))];
        assert_eq!(p.adjust(quiet, false), Adjustment::Held);
        assert_eq!(p.rate(), 60_000.0);
        assert_eq!(p.adjust([], true), Adjustment::Held);
        assert_eq!(p.adjust(quiet, true), Adjustment::Held);
        assert_eq!(p.rate(), 60_000.0);
    }

    #[test]
    fn beside_traffic_the_copy_starts_gently_slows_by_how_far_over_and_grows_back() {
        let mut p = Pacing::new(60_000);
        // Before the copy: the baseline is learnt, and there is traffic to spare.
        assert_eq!(
            p.adjust([("s1", "a", report(400, 2_000))], false),
            Adjustment::Held
        );
        assert_eq!(p.rate(), START_RATE);
        // Within 1.5×: grows by a quarter and a step each round, up to the ceiling.
        assert_eq!(
            p.adjust([("s1", "a", report(600, 2_000))], true),
            Adjustment::Held
        );
        assert_eq!(p.rate(), 3_500.0);
        for _ in 0..30 {
            p.adjust([("s1", "a", report(600, 2_000))], true);
        }
        assert_eq!(p.rate(), 60_000.0);
        // Just above on one instance of two: halved.
        let slow = [("s1", "a", report(601, 2_000)), ("s1", "b", report(100, 9))];
        let over = Over {
            sidecar: "s1".into(),
            instance: "a".into(),
            p99_micros: 601,
            budget_micros: 600,
        };
        assert_eq!(p.adjust(slow, true), Adjustment::Slowed(over));
        assert_eq!(p.rate(), 30_000.0);
        // Three times over: divided by three; twenty times over: by eight at most.
        p.adjust([("s1", "a", report(1_800, 2_000))], true);
        assert_eq!(p.rate(), 10_000.0);
        p.adjust([("s1", "a", report(12_000, 2_000))], true);
        assert_eq!(p.rate(), 1_250.0);
        // Never below the floor.
        for _ in 0..3 {
            assert!(matches!(p.adjust(slow, true), Adjustment::Slowed(_)));
        }
        assert_eq!(p.rate(), MIN_RATE);
        // Still over budget with the copy at the floor: the copy is not the cause. What the
        // sidecar sees now becomes its baseline, and the copy grows again.
        assert_eq!(
            p.adjust([("s1", "a", report(900, 2_000))], true),
            Adjustment::Held
        );
        assert_eq!(p.rate(), MIN_RATE * 1.25 + STEP);
        assert_eq!(
            p.adjust([("s1", "a", report(900, 2_000))], true),
            Adjustment::Held
        );
        assert!(matches!(
            p.adjust([("s1", "a", report(1_351, 2_000))], true),
            Adjustment::Slowed(Over {
                budget_micros: 900,
                ..
            })
        ));
    }

    #[test]
    fn each_sidecar_is_judged_by_its_own_baseline_and_small_ones_by_the_floor() {
        let mut p = Pacing::new(10_000);
        p.adjust(
            [
                ("near", "a", report(100, 500)),
                ("far", "a", report(2_000, 500)),
            ],
            false,
        );
        // 250 µs is 2.5× near's baseline, but not over the floor; 2 900 µs is within far's 1.5×.
        assert_eq!(
            p.adjust(
                [
                    ("near", "a", report(FLOOR_MICROS, 500)),
                    ("far", "a", report(2_900, 500)),
                ],
                true
            ),
            Adjustment::Held
        );
        // Both above budget: the one furthest above it is named.
        let Adjustment::Slowed(over) = p.adjust(
            [
                ("near", "a", report(FLOOR_MICROS * 2, 500)),
                ("far", "a", report(3_001, 500)),
            ],
            true,
        ) else {
            panic!("not slowed");
        };
        assert_eq!(
            (over.sidecar.as_str(), over.budget_micros),
            ("near", FLOOR_MICROS)
        );
        // A lower p99 seen later lowers the budget, by a fifth at most per report.
        p.adjust([("far", "a", report(1_000, 500))], true);
        assert_eq!(
            p.adjust([("far", "a", report(2_400, 500))], true),
            Adjustment::Held
        );
        assert!(matches!(
            p.adjust([("far", "a", report(2_401, 500))], true),
            Adjustment::Slowed(Over {
                budget_micros: 2_400,
                ..
            })
        ));
        p.adjust([("far", "a", report(1_000, 500))], true);
        p.adjust([("far", "a", report(1_000, 500))], true);
        assert!(matches!(
            p.adjust([("far", "a", report(1_600, 500))], true),
            Adjustment::Slowed(Over {
                budget_micros: 1_536,
                ..
            })
        ));
    }

    #[test]
    fn a_small_ceiling_is_its_own_floor_and_start() {
        let mut p = Pacing::new(50);
        p.adjust([("s", "a", report(100, 500))], false);
        assert_eq!(p.rate(), 50.0);
        p.adjust([("s", "a", report(100_000, 500))], true);
        assert_eq!(p.rate(), 50.0);
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
