//! Slots: CRC16-XMODEM of a key (or of its `{hash tag}`) modulo 16384, exactly as Redis
//! Cluster computes `CLUSTER KEYSLOT`, and helpers for inclusive slot ranges.

use serde::{Deserialize, Serialize};

/// Number of slots per category.
pub const SLOT_COUNT: u16 = 16384;

/// Highest slot number.
pub const MAX_SLOT: u16 = SLOT_COUNT - 1;

const CRC16_TABLE: [u16; 256] = build_crc16_table();

const fn build_crc16_table() -> [u16; 256] {
    // CRC16-CCITT (XMODEM): polynomial 0x1021, initial value 0, no reflection.
    let mut table = [0u16; 256];
    let mut i = 0;
    while i < 256 {
        let mut crc = (i as u16) << 8;
        let mut bit = 0;
        while bit < 8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
            bit += 1;
        }
        table[i] = crc;
        i += 1;
    }
    table
}

/// CRC16-XMODEM of `data`.
pub fn crc16(data: &[u8]) -> u16 {
    data.iter().fold(0u16, |crc, &b| {
        (crc << 8) ^ CRC16_TABLE[usize::from(((crc >> 8) as u8) ^ b)]
    })
}

/// The part of `key` that is hashed: the content of the first `{…}` if it is non-empty,
/// else the whole key (the Redis Cluster hash-tag rule).
pub fn hash_tag(key: &[u8]) -> &[u8] {
    if let Some(open) = key.iter().position(|&b| b == b'{')
        && let Some(len) = key[open + 1..].iter().position(|&b| b == b'}')
        && len > 0
    {
        return &key[open + 1..open + 1 + len];
    }
    key
}

/// The slot of `key`, as `CLUSTER KEYSLOT` computes it.
pub fn key_slot(key: &[u8]) -> u16 {
    crc16(hash_tag(key)) & MAX_SLOT
}

/// An inclusive range of slots.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SlotRange {
    /// First slot.
    pub start: u16,
    /// Last slot (inclusive).
    pub end: u16,
}

impl SlotRange {
    /// `start..=end`; callers guarantee `start <= end <= MAX_SLOT`.
    pub const fn new(start: u16, end: u16) -> Self {
        Self { start, end }
    }

    /// All slots.
    pub const ALL: SlotRange = SlotRange::new(0, MAX_SLOT);

    /// Whether `slot` lies in the range.
    pub fn contains(&self, slot: u16) -> bool {
        self.start <= slot && slot <= self.end
    }

    /// Number of slots in the range.
    pub fn len(&self) -> u32 {
        u32::from(self.end) - u32::from(self.start) + 1
    }

    /// Always false: a range holds at least one slot.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Whether the two ranges share a slot.
    pub fn overlaps(&self, other: &SlotRange) -> bool {
        self.start <= other.end && other.start <= self.end
    }

    /// The slots both ranges hold.
    pub fn intersection(&self, other: &SlotRange) -> Option<SlotRange> {
        self.overlaps(other)
            .then(|| SlotRange::new(self.start.max(other.start), self.end.min(other.end)))
    }

    /// The slots of this range that none of `others` holds, as ranges in slot order.
    pub fn minus(&self, others: &[SlotRange]) -> Vec<SlotRange> {
        let mut cut: Vec<SlotRange> = others.iter().filter_map(|o| o.intersection(self)).collect();
        cut.sort();
        let mut out = Vec::new();
        let mut next = Some(self.start);
        for c in cut {
            if let Some(n) = next
                && n < c.start
            {
                out.push(SlotRange::new(n, c.start - 1));
            }
            next = match next {
                Some(n) if c.end < n => Some(n),
                _ => c.end.checked_add(1).filter(|s| *s <= self.end),
            };
            if next.is_none() {
                break;
            }
        }
        if let Some(n) = next {
            out.push(SlotRange::new(n, self.end));
        }
        out
    }
}

impl std::fmt::Display for SlotRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.start == self.end {
            write!(f, "{}", self.start)
        } else {
            write!(f, "{}-{}", self.start, self.end)
        }
    }
}

/// Collapses a per-slot owner array into `(range, owner)` runs, in slot order.
pub fn runs<T: PartialEq + Clone>(owners: &[T]) -> Vec<(SlotRange, T)> {
    let mut out: Vec<(SlotRange, T)> = Vec::new();
    for (slot, owner) in owners.iter().enumerate() {
        let slot = slot as u16;
        match out.last_mut() {
            Some((range, last)) if *last == *owner && range.end + 1 == slot => range.end = slot,
            _ => out.push((SlotRange::new(slot, slot), owner.clone())),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc16_matches_the_redis_cluster_spec_vector() {
        assert_eq!(crc16(b"123456789"), 0x31C3);
        assert_eq!(crc16(b""), 0);
    }

    #[test]
    fn key_slots_match_known_values() {
        // Values from `CLUSTER KEYSLOT` on a real server.
        assert_eq!(key_slot(b"foo"), 12182);
        assert_eq!(key_slot(b"bar"), 5061);
        assert_eq!(key_slot(b"somekey"), 11058);
        assert_eq!(key_slot(b"user:1000"), 1649);
    }

    #[test]
    fn hash_tags_follow_the_cluster_rules() {
        assert_eq!(hash_tag(b"{user1000}.following"), b"user1000");
        assert_eq!(
            key_slot(b"{user1000}.following"),
            key_slot(b"{user1000}.followers")
        );
        // Only the first '{' counts, up to the first '}' after it.
        assert_eq!(hash_tag(b"foo{{bar}}zap"), b"{bar");
        assert_eq!(hash_tag(b"foo{bar}{zap}"), b"bar");
        // An empty tag or an unclosed brace hashes the whole key.
        assert_eq!(hash_tag(b"foo{}{bar}"), b"foo{}{bar}");
        assert_eq!(hash_tag(b"foo{bar"), b"foo{bar");
        assert_eq!(hash_tag(b"}foo{"), b"}foo{");
    }

    #[test]
    fn runs_collapse_owner_arrays() {
        let owners = ["a", "a", "b", "b", "b", "a"];
        assert_eq!(
            runs(&owners),
            vec![
                (SlotRange::new(0, 1), "a"),
                (SlotRange::new(2, 4), "b"),
                (SlotRange::new(5, 5), "a"),
            ]
        );
        assert!(runs::<u8>(&[]).is_empty());
    }

    #[test]
    fn ranges() {
        let r = SlotRange::new(10, 20);
        assert!(r.contains(10) && r.contains(20) && !r.contains(21));
        assert_eq!(r.len(), 11);
        assert!(r.overlaps(&SlotRange::new(20, 30)));
        assert!(!r.overlaps(&SlotRange::new(21, 30)));
        assert_eq!(SlotRange::ALL.len(), 16384);
        assert_eq!(r.to_string(), "10-20");
    }

    #[test]
    fn a_range_minus_others_keeps_exactly_the_slots_they_do_not_hold() {
        let r = SlotRange::new(0, 100);
        let cut = |others: &[(u16, u16)]| {
            let others: Vec<SlotRange> =
                others.iter().map(|(a, b)| SlotRange::new(*a, *b)).collect();
            r.minus(&others)
                .into_iter()
                .map(|x| (x.start, x.end))
                .collect::<Vec<_>>()
        };
        assert_eq!(cut(&[]), [(0, 100)]);
        assert_eq!(cut(&[(50, 200)]), [(0, 49)]);
        assert_eq!(cut(&[(0, 100)]), []);
        assert_eq!(
            cut(&[(60, 70), (10, 20), (15, 30)]),
            [(0, 9), (31, 59), (71, 100)]
        );
        assert_eq!(cut(&[(200, 300)]), [(0, 100)]);
        assert_eq!(cut(&[(0, 0), (100, 100)]), [(1, 99)]);
        assert_eq!(
            SlotRange::new(5, 9).intersection(&SlotRange::new(8, 20)),
            Some(SlotRange::new(8, 9))
        );
        assert_eq!(
            SlotRange::new(5, 9).intersection(&SlotRange::new(10, 20)),
            None
        );
        // Against a slot-by-slot reference.
        for (a, b, c, d) in [
            (0, 100, 3, 7),
            (20, 40, 0, 19),
            (20, 40, 41, 90),
            (20, 40, 30, 30),
        ] {
            let r = SlotRange::new(a, b);
            let o = SlotRange::new(c, d);
            let left: Vec<u16> = r.minus(&[o]).iter().flat_map(|x| x.start..=x.end).collect();
            let want: Vec<u16> = (a..=b).filter(|s| !o.contains(*s)).collect();
            assert_eq!(left, want);
        }
    }
}
