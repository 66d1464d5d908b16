//! When the controllers write a status: at once when it changed materially (each controller
//! says what is material for its kind), else at most once per refresh interval. Live figures
//! go to the metrics at every probe or reconcile; status is what a human, `kubectl wait` or
//! another controller acts on, and every write costs the API server and every watcher of the
//! kind. With 1 000 instances probed every 10 s, one write per probe would be 100 writes/s.

use std::time::Duration;

/// An unchanged status is rewritten about this often (see [`refresh_interval`] and
/// [`fleet_refresh`]), so its timestamps show the operator is alive.
pub const DEFAULT_REFRESH: Duration = Duration::from_secs(300);

/// Whether a status is written to the API, and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Write {
    /// Nothing material changed since the last write, which is recent: metrics only.
    Skip,
    /// Something material changed (or nothing was written yet): written at once.
    Changed,
    /// Nothing material changed, but the last write is older than the refresh interval.
    Refresh,
}

impl Write {
    /// Decides from whether the status changed `materially`, whether it changed at all
    /// (`changed`), and the `age` of the last write (`None`: unknown, treated as due).
    pub fn decide(
        materially: bool,
        changed: bool,
        age: Option<Duration>,
        refresh: Duration,
    ) -> Self {
        if materially {
            Self::Changed
        } else if changed && age.is_none_or(|a| a >= refresh) {
            Self::Refresh
        } else {
            Self::Skip
        }
    }

    /// Whether the status is written.
    pub fn writes(self) -> bool {
        self != Self::Skip
    }

    /// The variant's name, for metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Skip => "Skip",
            Self::Changed => "Changed",
            Self::Refresh => "Refresh",
        }
    }
}

/// Refreshes of a kind, spread over its objects, come at most this often: a fleet of more
/// objects than the refresh interval has seconds refreshes each less often (1 000 instances:
/// every ~17 minutes instead of every 5), so refreshes alone never cost more than about one
/// write a second. Anything material is still written at once.
pub const REFRESH_SPACING: Duration = Duration::from_secs(1);

/// The refresh interval of a kind with `objects` objects: `base`, or the objects times
/// [`REFRESH_SPACING`] when that is longer.
pub fn fleet_refresh(base: Duration, objects: usize) -> Duration {
    let spaced = REFRESH_SPACING.saturating_mul(u32::try_from(objects).unwrap_or(u32::MAX));
    base.max(spaced)
}

/// The refresh interval of one object: `base` stretched by up to a quarter, by a hash of its
/// name, so that objects started together do not refresh together.
pub fn refresh_interval(base: Duration, name: &str) -> Duration {
    let spread = crate::routing::table::fnv1a64(name.as_bytes()) % 1000;
    base + base.mul_f64(spread as f64 / 4000.0)
}

/// Whether `used` moved by at least one point of `capacity` from `written` (1 MiB while the
/// capacity is unknown).
pub fn moved_a_point(written: u64, used: u64, capacity: Option<u64>) -> bool {
    let moved = u128::from(written.abs_diff(used));
    match capacity.filter(|c| *c > 0) {
        Some(c) => moved * 100 >= u128::from(c),
        None => moved >= 1 << 20,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const REFRESH: Duration = Duration::from_secs(300);

    #[test]
    fn material_changes_are_written_at_once_others_with_the_refresh() {
        let recent = Some(Duration::from_secs(10));
        assert_eq!(Write::decide(true, true, recent, REFRESH), Write::Changed);
        assert_eq!(Write::decide(false, true, recent, REFRESH), Write::Skip);
        assert_eq!(
            Write::decide(false, true, Some(Duration::from_secs(299)), REFRESH),
            Write::Skip
        );
        assert_eq!(
            Write::decide(false, true, Some(REFRESH), REFRESH),
            Write::Refresh
        );
        assert_eq!(Write::decide(false, true, None, REFRESH), Write::Refresh);
        assert_eq!(
            Write::decide(false, false, None, REFRESH),
            Write::Skip,
            "an identical status is never rewritten"
        );
    }

    #[test]
    fn refresh_intervals_are_spread_over_a_quarter() {
        let all: Vec<Duration> = (0..1000)
            .map(|i| refresh_interval(REFRESH, &format!("redis-{i:04}")))
            .collect();
        assert!(
            all.iter()
                .all(|d| *d >= REFRESH && *d < REFRESH.mul_f64(1.25))
        );
        let distinct: std::collections::BTreeSet<_> = all.iter().collect();
        assert!(distinct.len() > 500, "{}", distinct.len());
        assert_eq!(
            refresh_interval(REFRESH, "a"),
            refresh_interval(REFRESH, "a")
        );
    }

    #[test]
    fn a_large_fleet_refreshes_about_once_a_second_in_all() {
        assert_eq!(fleet_refresh(REFRESH, 0), REFRESH);
        assert_eq!(fleet_refresh(REFRESH, 300), REFRESH);
        assert_eq!(fleet_refresh(REFRESH, 1000), Duration::from_secs(1000));
        assert_eq!(fleet_refresh(REFRESH, 5000), Duration::from_secs(5000));
        // The whole fleet's refreshes per second, each object at its own spread interval.
        for objects in [10usize, 300, 1000, 5000] {
            let base = fleet_refresh(REFRESH, objects);
            let rate: f64 = (0..objects)
                .map(|i| 1.0 / refresh_interval(base, &format!("redis-{i:04}")).as_secs_f64())
                .sum();
            assert!(rate <= 1.0, "{objects} objects: {rate:.2} refreshes/s");
        }
    }

    #[test]
    fn a_point_of_capacity() {
        let cap = Some(30 << 20); // one point: 314 573 bytes
        assert!(!moved_a_point(10 << 20, (10 << 20) + 314_000, cap));
        assert!(moved_a_point(10 << 20, (10 << 20) + 314_573, cap));
        assert!(moved_a_point(10 << 20, (10 << 20) - 400_000, cap));
        assert!(!moved_a_point(0, 1 << 19, None));
        assert!(moved_a_point(0, 1 << 20, Some(0)));
    }
}
