//! The test clock and units shared by the build and render tests.

use jiff::Timestamp;

pub(super) const MIB: u64 = 1 << 20;
/// "Now" in every test: 2025-06-01T12:00:00Z.
pub(super) const NOW: i64 = 1_748_779_200;

pub(super) fn at(secs_before_now: i64) -> Timestamp {
    Timestamp::from_second(NOW - secs_before_now).unwrap()
}
