//! The roster of a source drained into ranges its targets serve already (`docs/protocol.md`,
//! "The roster of a legacy Redis"): a Bloom filter of every key the source held when the Job
//! counted them, and the moves it vouches for. In such a move no command creates a key on the
//! source (its guard runs only reads there, and scripts wait for their slot groups to move),
//! so a key the roster lacks is not on the source — unless a pod wrote it there straight since
//! — and a sidecar sends a write that replaces such keys to the target in one round trip
//! instead of asking the guard first. A key the filter holds, or wrongly seems to hold (about
//! one in two thousand), goes through the guard as before: the filter's errors only cost time.
//!
//! Encoding (a string on the source, [`super::names::roster`]): `RFR1`, the number of hash
//! probes (one byte), the number of the filter's 64-bit words (`u32`, little-endian), the
//! number of moves (`u16`), each move as its category's length (`u16`), the category, its
//! first and last slot (`u16` each), then the filter's words (little-endian `u64`). The word
//! count makes a roster read in pieces whole or refused: a filter cut short would test other
//! bits, and could say "absent" of a key it holds. The hash is written out here (FNV-1a, then
//! a 64-bit finalizer), so that a sidecar and a Job of different builds agree on it.

use crate::routing::slots::SlotRange;

const MAGIC: &[u8; 4] = b"RFR1";

/// Bits per key the filter is sized for: about one false "maybe" in two thousand keys.
pub const BITS_PER_KEY: u64 = 16;

/// Hash probes per key (the best for [`BITS_PER_KEY`]).
const PROBES: u8 = 11;

/// The fewest keys a filter is sized for.
const MIN_KEYS: u64 = 1_024;

/// The most keys a roster is made for: past it (a filter of 16 MB) the Job keeps none.
pub const MAX_KEYS: u64 = 8_000_000;

/// One move a roster vouches for: its category and slots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Covered {
    pub category: String,
    pub range: SlotRange,
}

/// A roster: the moves it vouches for and the filter of the source's keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Roster {
    covers: Vec<Covered>,
    probes: u8,
    bits: Vec<u64>,
}

/// Why an encoded roster could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unreadable roster: {0}")]
pub struct Unreadable(&'static str);

/// What [`Roster::decode`] says of a roster whose filter is not as long as its header says:
/// one read while it was removed, which a later read may find whole.
const CUT_SHORT: &str = "the filter is not as long as its header says";

impl Unreadable {
    /// Whether the roster only seemed cut short (or too long): every other fault is in the
    /// roster itself, and reading it again finds it again.
    pub fn cut_short(&self) -> bool {
        self.0 == CUT_SHORT
    }
}

/// Whether `head`, the start of a string, may be a roster of this format (a newer format, or
/// something else, is not fetched further).
pub fn of_this_format(head: &[u8]) -> bool {
    let n = head.len().min(MAGIC.len());
    head[..n] == MAGIC[..n]
}

impl Roster {
    /// An empty roster for about `keys` keys, vouching for `covers`.
    pub fn with_capacity(keys: u64, covers: Vec<Covered>) -> Self {
        let words = (keys.max(MIN_KEYS) * BITS_PER_KEY).div_ceil(64);
        Self {
            covers,
            probes: PROBES,
            bits: vec![0; usize::try_from(words).unwrap_or(usize::MAX)],
        }
    }

    /// Records `key`.
    pub fn insert(&mut self, key: &[u8]) {
        let m = self.bit_count();
        for bit in probes(key, self.probes, m) {
            self.bits[(bit / 64) as usize] |= 1 << (bit % 64);
        }
    }

    /// Whether `key` may have been recorded: `false` only for a key never recorded.
    pub fn may_hold(&self, key: &[u8]) -> bool {
        let m = self.bit_count();
        probes(key, self.probes, m)
            .all(|bit| self.bits[(bit / 64) as usize] & (1 << (bit % 64)) != 0)
    }

    /// Whether it vouches for the move of `range` of `category`.
    pub fn covers(&self, category: &str, range: SlotRange) -> bool {
        self.covers
            .iter()
            .any(|c| c.category == category && c.range == range)
    }

    fn bit_count(&self) -> u64 {
        self.bits.len() as u64 * 64
    }

    /// The encoded roster (see the module's description).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(8 + self.bits.len() * 8);
        out.extend_from_slice(MAGIC);
        out.push(self.probes);
        out.extend_from_slice(&(self.bits.len() as u32).to_le_bytes());
        out.extend_from_slice(&(self.covers.len() as u16).to_le_bytes());
        for c in &self.covers {
            out.extend_from_slice(&(c.category.len() as u16).to_le_bytes());
            out.extend_from_slice(c.category.as_bytes());
            out.extend_from_slice(&c.range.start.to_le_bytes());
            out.extend_from_slice(&c.range.end.to_le_bytes());
        }
        for w in &self.bits {
            out.extend_from_slice(&w.to_le_bytes());
        }
        out
    }

    /// Reads an encoded roster.
    pub fn decode(bytes: &[u8]) -> Result<Self, Unreadable> {
        let mut r = Reader(bytes);
        if r.take(4)? != MAGIC {
            return Err(Unreadable("not a roster (or a newer format)"));
        }
        let probes = r.take(1)?[0];
        if probes == 0 || probes > 32 {
            return Err(Unreadable("probe count out of range"));
        }
        let words = r.take(4)?;
        let words = u32::from_le_bytes([words[0], words[1], words[2], words[3]]) as usize;
        let mut covers = Vec::new();
        for _ in 0..r.u16()? {
            let len = usize::from(r.u16()?);
            let category = std::str::from_utf8(r.take(len)?)
                .map_err(|_| Unreadable("category name is not UTF-8"))?
                .to_owned();
            let (start, end) = (r.u16()?, r.u16()?);
            if start > end || end > crate::routing::slots::MAX_SLOT {
                return Err(Unreadable("slot range out of bounds"));
            }
            covers.push(Covered {
                category,
                range: SlotRange::new(start, end),
            });
        }
        let rest = r.0;
        if words == 0 || rest.len() != words * 8 {
            return Err(Unreadable(CUT_SHORT));
        }
        let bits = rest
            .chunks_exact(8)
            .map(|w| u64::from_le_bytes(w.try_into().unwrap_or_default()))
            .collect();
        Ok(Self {
            covers,
            probes,
            bits,
        })
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], Unreadable> {
        if self.0.len() < n {
            return Err(Unreadable("truncated"));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn u16(&mut self) -> Result<u16, Unreadable> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }
}

/// The bits `key` sets in a filter of `m` bits: `probes` of them by double hashing.
fn probes(key: &[u8], probes: u8, m: u64) -> impl Iterator<Item = u64> {
    let h1 = finalize(fnv1a(key));
    let h2 = finalize(h1 ^ 0x9e37_79b9_7f4a_7c15) | 1;
    (0..u64::from(probes)).map(move |i| h1.wrapping_add(i.wrapping_mul(h2)) % m)
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// The finalizer of SplitMix64: spreads every input bit over the output.
fn finalize(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn covers() -> Vec<Covered> {
        vec![Covered {
            category: "auth".to_owned(),
            range: SlotRange::new(0, 8191),
        }]
    }

    #[test]
    fn a_recorded_key_is_always_held_and_few_others_seem_so() {
        let mut roster = Roster::with_capacity(100_000, covers());
        for i in 0..100_000 {
            roster.insert(format!("auth:user:{i}").as_bytes());
        }
        let roster = Roster::decode(&roster.encode()).unwrap();
        assert!((0..100_000).all(|i| roster.may_hold(format!("auth:user:{i}").as_bytes())));
        let wrong = (0..100_000)
            .filter(|i| roster.may_hold(format!("fg:{i}").as_bytes()))
            .count();
        // 16 bits and 11 probes per key: about 0.05 %; a tenth of a percent is the bound.
        assert!(
            wrong < 100,
            "{wrong} of 100 000 unrecorded keys seemed held"
        );
    }

    #[test]
    fn an_empty_roster_holds_nothing_and_a_full_one_still_answers() {
        let empty = Roster::with_capacity(0, covers());
        assert!(!empty.may_hold(b"anything"));
        // Ten times the keys it was sized for: more false "maybe"s, never a false "no".
        let mut over = Roster::with_capacity(1_000, covers());
        for i in 0..10_240 {
            over.insert(format!("k{i}").as_bytes());
        }
        assert!((0..10_240).all(|i| over.may_hold(format!("k{i}").as_bytes())));
    }

    #[test]
    fn it_vouches_only_for_the_moves_it_names() {
        let roster = Roster::decode(&Roster::with_capacity(10, covers()).encode()).unwrap();
        assert!(roster.covers("auth", SlotRange::new(0, 8191)));
        assert!(!roster.covers("auth", SlotRange::new(0, 100)));
        assert!(!roster.covers("cart", SlotRange::new(0, 8191)));
    }

    #[test]
    fn what_is_not_a_roster_is_refused() {
        let good = Roster::with_capacity(10, covers()).encode();
        let mut longer = good.clone();
        longer.extend_from_slice(&[0; 8]);
        assert!(
            Roster::decode(&good[..good.len() - 8])
                .unwrap_err()
                .cut_short()
        );
        assert!(!Roster::decode(b"RFR2").unwrap_err().cut_short());
        for bad in [
            &b""[..],
            b"RFR2\x0b\x00\x00",
            &good[..good.len() - 3],
            // Cut at a word: the bits left would be tested modulo another length.
            &good[..good.len() - 8],
            &longer,
            &good[..12],
            b"RFR1\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00",
        ] {
            assert!(Roster::decode(bad).is_err(), "{bad:?}");
        }
        let mut backwards = Roster::with_capacity(10, covers());
        backwards.covers[0].range = SlotRange::new(0, 16_384);
        assert!(Roster::decode(&backwards.encode()).is_err());
    }

    #[test]
    fn the_hash_is_fixed_across_builds() {
        // A Job and a sidecar of different releases must set and test the same bits.
        // Worked out apart from this code (FNV-1a 64, SplitMix64's finalizer).
        assert_eq!(fnv1a(b"auth:1"), 0x6d95_e5fa_4e84_309a);
        assert_eq!(finalize(0x6d95_e5fa_4e84_309a), 0x46ea_d909_c300_6892);
        assert_eq!(
            probes(b"auth:1", 3, 1024).collect::<Vec<_>>(),
            [146, 99, 52]
        );
    }
}
