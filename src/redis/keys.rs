//! Finding and deleting the keys of given slot ranges of a category on one instance: the
//! "purge the target first" step that keeps stale copies from being read when a range starts
//! being served by an instance that held it before (failover, failback, reassignment).
//!
//! Keys are found with SCAN (MATCH on each prefix of the category, or everything for the
//! default category) and filtered by category and slot with the routing resolver itself, so
//! the purge removes exactly what routing would send there.

use redis::aio::ConnectionLike;

use crate::routing::keyspace::{CategoryId, Resolver};
use crate::routing::slots::{SlotRange, key_slot};

/// Keys under this prefix belong to redis-fleet itself (sidecar heartbeats, migration
/// tombstones and checkpoints) and are never purged or moved as application data.
pub const RESERVED_PREFIX: &[u8] = b"redisfleet:";

/// SCAN page size: large enough to keep round trips few, small enough not to block Redis for
/// long (about a millisecond on a million keys).
pub const SCAN_COUNT: usize = 1000;

/// SCAN page size beside an application's traffic: a tenth of [`SCAN_COUNT`], so that a page
/// holds the instance for about a tenth of a millisecond (a command that arrives meanwhile
/// waits behind it).
pub const GENTLE_SCAN_COUNT: usize = 100;

/// One SCAN round trip over the keys matching `pattern`, `count` of them asked for: the next
/// cursor (0 at the end) and the keys of this page.
pub async fn scan_page(
    conn: &mut (impl ConnectionLike + Send),
    cursor: u64,
    pattern: &[u8],
    count: usize,
) -> redis::RedisResult<(u64, Vec<Vec<u8>>)> {
    redis::cmd("SCAN")
        .arg(cursor)
        .arg("MATCH")
        .arg(pattern)
        .arg("COUNT")
        .arg(count)
        .query_async(conn)
        .await
}

/// A glob pattern matching keys that start with `prefix` (glob metacharacters escaped).
pub fn prefix_pattern(prefix: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(prefix.len() + 2);
    for &b in prefix {
        if matches!(b, b'*' | b'?' | b'[' | b']' | b'\\') {
            out.push(b'\\');
        }
        out.push(b);
    }
    out.push(b'*');
    out
}

/// Whether `key` of the resolver's `category` lies in one of `ranges` (and is application
/// data).
pub fn in_ranges(
    resolver: &Resolver,
    category: CategoryId,
    ranges: &[SlotRange],
    key: &[u8],
) -> bool {
    !key.starts_with(RESERVED_PREFIX)
        && resolver.category_of(key) == category
        && ranges.iter().any(|r| r.contains(key_slot(key)))
}

/// A resumable SCAN over the keys of some slot ranges of some categories on one instance.
///
/// Each call to [`RangeScan::next_batch`] runs one SCAN round trip and returns the matching
/// keys (possibly none); [`RangeScan::checkpoint`] says where to resume after a crash.
///
/// Ranges of one category are scanned with `MATCH` on each of its prefixes (one walk per
/// prefix: two for a category of two); ranges of several categories in one walk of the whole
/// keyspace, each key sorted here: `MATCH` saves only reply bytes (SCAN visits every key either
/// way), so that walk costs the instance about what one of the per-prefix walks does, not
/// their sum.
#[derive(Debug, Clone)]
pub struct RangeScan<'r> {
    resolver: &'r Resolver,
    /// The category and range of each set of keys scanned for.
    wanted: Vec<(CategoryId, SlotRange)>,
    patterns: Vec<Option<Vec<u8>>>,
    pattern: usize,
    cursor: u64,
    count: usize,
}

/// Where a [`RangeScan`] stands: which prefix pattern, and the SCAN cursor within it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ScanCheckpoint {
    /// Index of the prefix pattern being scanned.
    pub pattern: usize,
    /// SCAN cursor (0 = start of that pattern).
    pub cursor: u64,
}

/// Which of `ranges` (a category and a slot range each) holds `key`, by position: `None` for
/// the fleet's own bookkeeping keys and for keys of no range. The one rule by which a scan
/// keeps a key and the rebalance Job finds the move a scanned key belongs to.
pub fn range_holding(
    resolver: &Resolver,
    ranges: impl IntoIterator<Item = (CategoryId, SlotRange)>,
    key: &[u8],
) -> Option<usize> {
    if key.starts_with(RESERVED_PREFIX) {
        return None;
    }
    let (category, slot) = (resolver.category_of(key), key_slot(key));
    ranges
        .into_iter()
        .position(|(c, r)| c == category && r.contains(slot))
}

impl<'r> RangeScan<'r> {
    /// A scan from the beginning.
    pub fn new(resolver: &'r Resolver, category: CategoryId, ranges: &[SlotRange]) -> Self {
        Self::resume(resolver, category, ranges, ScanCheckpoint::default())
    }

    /// A scan resuming at `checkpoint`.
    pub fn resume(
        resolver: &'r Resolver,
        category: CategoryId,
        ranges: &[SlotRange],
        checkpoint: ScanCheckpoint,
    ) -> Self {
        let wanted: Vec<(CategoryId, SlotRange)> = ranges.iter().map(|r| (category, *r)).collect();
        Self::resume_wanted(resolver, &wanted, checkpoint)
    }

    /// A scan of the keys of each category and range of `wanted`, resuming at `checkpoint`:
    /// a checkpoint of a scan of the same `wanted` only (its pattern index and cursor mean
    /// something for the same patterns alone; a scan of a part of it may walk with `MATCH`
    /// where this one walks everything).
    pub fn resume_wanted(
        resolver: &'r Resolver,
        wanted: &[(CategoryId, SlotRange)],
        checkpoint: ScanCheckpoint,
    ) -> Self {
        let one_category = match wanted {
            [(first, _), rest @ ..] if rest.iter().all(|(c, _)| c == first) => Some(*first),
            _ => None,
        };
        let prefixes = one_category.map_or(&[][..], |c| {
            resolver.categories()[usize::from(c)].prefixes.as_slice()
        });
        let patterns = if prefixes.is_empty() {
            vec![None]
        } else {
            prefixes
                .iter()
                .map(|p| Some(prefix_pattern(p.as_bytes())))
                .collect()
        };
        Self {
            resolver,
            wanted: wanted.to_vec(),
            patterns,
            pattern: checkpoint.pattern,
            cursor: checkpoint.cursor,
            count: SCAN_COUNT,
        }
    }

    /// Asks SCAN for `count` keys per page from now on ([`SCAN_COUNT`] at first).
    pub fn set_count(&mut self, count: usize) {
        self.count = count.max(1);
    }

    /// Where to resume.
    pub fn checkpoint(&self) -> ScanCheckpoint {
        ScanCheckpoint {
            pattern: self.pattern,
            cursor: self.cursor,
        }
    }

    /// Whether `key` is application data of one of the categories and ranges scanned for.
    fn wants(&self, key: &[u8]) -> bool {
        range_holding(self.resolver, self.wanted.iter().copied(), key).is_some()
    }

    /// Whether the scan has covered everything.
    pub fn is_done(&self) -> bool {
        self.pattern >= self.patterns.len()
    }

    /// One SCAN round trip: the keys of the category in the ranges it returned, or `None`
    /// when the scan is complete.
    pub async fn next_batch(
        &mut self,
        conn: &mut (impl ConnectionLike + Send),
    ) -> redis::RedisResult<Option<Vec<Vec<u8>>>> {
        let Some(pattern) = self.patterns.get(self.pattern) else {
            return Ok(None);
        };
        let mut cmd = redis::cmd("SCAN");
        cmd.arg(self.cursor);
        if let Some(p) = pattern {
            cmd.arg("MATCH").arg(p);
        }
        cmd.arg("COUNT").arg(self.count);
        let (next, keys): (u64, Vec<Vec<u8>>) = cmd.query_async(conn).await?;
        if next == 0 {
            self.pattern += 1;
        }
        self.cursor = next;
        Ok(Some(keys.into_iter().filter(|k| self.wants(k)).collect()))
    }
}

/// Deletes the keys of `category` in `ranges`; returns how many were deleted.
pub async fn delete_ranges(
    conn: &mut (impl ConnectionLike + Send),
    resolver: &Resolver,
    category: CategoryId,
    ranges: &[SlotRange],
) -> redis::RedisResult<u64> {
    let mut deleted = 0u64;
    let mut scan = RangeScan::new(resolver, category, ranges);
    while let Some(batch) = scan.next_batch(conn).await? {
        if !batch.is_empty() {
            let n: u64 = redis::cmd("UNLINK").arg(&batch).query_async(conn).await?;
            deleted += n;
        }
    }
    Ok(deleted)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_escape_glob_characters() {
        assert_eq!(prefix_pattern(b"user:"), b"user:*");
        assert_eq!(prefix_pattern(b"a*b?[c]\\"), b"a\\*b\\?\\[c\\]\\\\*");
    }

    #[test]
    fn reserved_keys_are_never_in_range() {
        let table = crate::routing::table::tests::two_instance_table();
        let r = Resolver::new(table).unwrap();
        let default = r.category_of(b"anything");
        assert!(in_ranges(&r, default, &[SlotRange::ALL], b"anything"));
        assert!(!in_ranges(
            &r,
            default,
            &[SlotRange::ALL],
            b"redisfleet:sidecar:abc"
        ));
        let auth = r.category_of(b"auth:1");
        assert!(!in_ranges(&r, auth, &[SlotRange::ALL], b"menu:1"));
        let slot = key_slot(b"auth:1");
        assert!(!in_ranges(
            &r,
            auth,
            &[SlotRange::new(slot + 1, slot + 1)],
            b"auth:1"
        ));
    }

    #[test]
    fn a_scan_for_several_categories_walks_the_keyspace_once_and_sorts_the_keys() {
        let table = crate::routing::table::tests::two_instance_table();
        let r = Resolver::new(table).unwrap();
        let (auth, default) = (r.category_of(b"auth:1"), r.category_of(b"anything"));
        // One category: MATCH on each of its prefixes, one walk per prefix.
        let one =
            RangeScan::resume_wanted(&r, &[(auth, SlotRange::ALL)], ScanCheckpoint::default());
        assert_eq!(
            one.patterns,
            vec![Some(b"auth:*".to_vec()), Some(b"session:*".to_vec())]
        );
        // Several: one walk of everything, however many prefixes they have.
        let slot = key_slot(b"menu:1");
        let both = RangeScan::resume_wanted(
            &r,
            &[
                (auth, SlotRange::ALL),
                (default, SlotRange::new(slot, slot)),
            ],
            ScanCheckpoint::default(),
        );
        assert_eq!(both.patterns, vec![None]);
        assert!(both.wants(b"auth:1") && both.wants(b"session:9") && both.wants(b"menu:1"));
        // The default category's other slots, and the fleet's own keys, are not asked for.
        let elsewhere = (0..)
            .map(|n| format!("menu:{n}"))
            .find(|k| key_slot(k.as_bytes()) != slot)
            .unwrap();
        assert!(!both.wants(elsewhere.as_bytes()));
        assert!(!both.wants(b"redisfleet:tomb:auth:1"));
        // A scan of one category's ranges is what it was.
        let ranges = RangeScan::new(&r, auth, &[SlotRange::new(0, 99), SlotRange::new(200, 299)]);
        assert_eq!(ranges.patterns.len(), 2);
        assert_eq!(
            ranges.wanted,
            vec![
                (auth, SlotRange::new(0, 99)),
                (auth, SlotRange::new(200, 299))
            ]
        );
    }
}
