//! Placement: which instance owns which slot of a category.
//!
//! - *Spread* (Smart and ConsistentHash): slots in proportion to each candidate's share
//!   (capacity × weight for Smart, equal shares for ConsistentHash).
//! - *Pinned*: the whole category on one instance, chosen by weighted rendezvous hashing.
//!
//! Placement is incremental and stable. It starts from the previous owners and the *basis*
//! (candidates and shares) they were computed for: when the basis has not changed, nothing
//! moves, so rebalance decisions recorded in the table are never undone behind the planner's
//! back. When it has changed, only the slots that must move do:
//! - slots of instances that left move, and nothing else is forced;
//! - instances over their quota give their highest-numbered slots, those under it receive;
//! - a slot never moves between two instances whose share did not change (an unchanged
//!   instance gives only to a new or changed one, and receives only from a departed or
//!   changed one).
//!
//! All of it is deterministic: the same inputs give the same owners on every replica.

use std::collections::BTreeMap;

use super::slots::SLOT_COUNT;

/// An instance that may own slots of a category, with its relative share.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// RedisInstance name.
    pub name: String,
    /// Relative share (> 0): capacity in MiB × weight for Smart, a constant otherwise.
    pub share: u64,
}

/// The previous placement of a category.
#[derive(Debug, Clone, Copy)]
pub struct Previous<'a> {
    /// Owner of every slot (16384 entries).
    pub owners: &'a [&'a str],
    /// Candidates and shares the owners were computed for.
    pub basis: &'a BTreeMap<String, u64>,
}

/// How a category is placed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// In proportion to shares.
    Spread,
    /// On one instance.
    Pinned,
}

/// The basis of a set of candidates (name → share).
pub fn basis_of(candidates: &[Candidate]) -> BTreeMap<String, u64> {
    candidates
        .iter()
        .map(|c| (c.name.clone(), c.share))
        .collect()
}

/// Places the slots of `category` on `candidates`. Returns the owner of every slot, or `None`
/// when there is no candidate.
pub fn place(
    category: &str,
    candidates: &[Candidate],
    previous: Option<Previous<'_>>,
    mode: Mode,
) -> Option<Vec<String>> {
    if candidates.is_empty() {
        return None;
    }
    let candidates = normalized(candidates);
    if let Some(prev) = previous
        && prev.owners.len() == usize::from(SLOT_COUNT)
        && unchanged(&candidates, prev.owners.iter().copied(), prev.basis)
    {
        return Some(prev.owners.iter().map(|o| (*o).to_owned()).collect());
    }

    match mode {
        Mode::Pinned => {
            let winner = rendezvous_winner(category, &candidates);
            Some(vec![winner.to_owned(); usize::from(SLOT_COUNT)])
        }
        Mode::Spread => Some(spread(&candidates, previous)),
    }
}

/// Whether placing on `candidates` keeps the previous owners (`owners`, slot by slot or as the
/// instances of runs) as they are: the candidates and shares are those the owners were
/// computed for (`basis`) and every owner is still a candidate. Cheap enough to run on every
/// reconcile of a large fleet (each distinct owner is looked up once, by binary search), so a
/// caller holding the owners as runs can skip [`place`] when nothing changed.
pub fn keeps_previous<'a>(
    candidates: &[Candidate],
    owners: impl IntoIterator<Item = &'a str>,
    basis: &BTreeMap<String, u64>,
) -> bool {
    !candidates.is_empty() && unchanged(&normalized(candidates), owners, basis)
}

/// Sorted by name, without duplicates, every share at least 1.
fn normalized(candidates: &[Candidate]) -> Vec<Candidate> {
    let mut out: Vec<Candidate> = candidates
        .iter()
        .map(|c| Candidate {
            name: c.name.clone(),
            share: c.share.max(1),
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out.dedup_by(|a, b| a.name == b.name);
    out
}

/// [`keeps_previous`] on normalized candidates.
fn unchanged<'a>(
    candidates: &[Candidate],
    owners: impl IntoIterator<Item = &'a str>,
    basis: &BTreeMap<String, u64>,
) -> bool {
    if basis.len() != candidates.len()
        || !candidates
            .iter()
            .all(|c| basis.get(&c.name) == Some(&c.share))
    {
        return false;
    }
    let mut last: Option<&str> = None;
    owners.into_iter().all(|o| {
        if last == Some(o) {
            return true;
        }
        last = Some(o);
        candidates
            .binary_search_by(|c| c.name.as_str().cmp(o))
            .is_ok()
    })
}

/// Quotas by the largest-remainder method: shares of `total`, summing to `total` exactly.
/// Ties in remainder go to the earlier name.
pub fn quotas(candidates: &[Candidate], total: u32) -> Vec<u32> {
    let sum: u128 = candidates.iter().map(|c| u128::from(c.share)).sum();
    if sum == 0 {
        return vec![0; candidates.len()];
    }
    let mut out = Vec::with_capacity(candidates.len());
    let mut remainders = Vec::with_capacity(candidates.len());
    for (i, c) in candidates.iter().enumerate() {
        let exact = u128::from(total) * u128::from(c.share);
        out.push((exact / sum) as u32);
        remainders.push((exact % sum, i));
    }
    let mut left = total - out.iter().sum::<u32>();
    remainders.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    for (_, i) in remainders {
        if left == 0 {
            break;
        }
        out[i] += 1;
        left -= 1;
    }
    out
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Change {
    Unchanged,
    Changed,
}

fn spread(candidates: &[Candidate], previous: Option<Previous<'_>>) -> Vec<String> {
    let n = usize::from(SLOT_COUNT);
    let quota = quotas(candidates, u32::from(SLOT_COUNT));
    let index_of = |name: &str| candidates.iter().position(|c| c.name == name);

    let Some(prev) = previous.filter(|p| p.owners.len() == n) else {
        // Fresh placement: contiguous blocks in name order.
        let mut owners = Vec::with_capacity(n);
        for (c, q) in candidates.iter().zip(&quota) {
            owners.extend(std::iter::repeat_n(c.name.clone(), *q as usize));
        }
        return owners;
    };

    // owner[slot] = Some(candidate index) or None for orphans (owner left).
    let mut owner: Vec<Option<usize>> = prev.owners.iter().map(|o| index_of(o)).collect();
    let mut count = vec![0u32; candidates.len()];
    for i in owner.iter().flatten() {
        count[*i] += 1;
    }
    let change: Vec<Change> = candidates
        .iter()
        .map(|c| match prev.basis.get(&c.name) {
            Some(s) if *s == c.share => Change::Unchanged,
            _ => Change::Changed,
        })
        .collect();

    // Slots each candidate could give up, highest first (kept contiguous at the low end).
    let mut excess: Vec<Vec<usize>> = vec![Vec::new(); candidates.len()];
    for (i, list) in excess.iter_mut().enumerate() {
        let surplus = count[i].saturating_sub(quota[i]) as usize;
        if surplus > 0 {
            list.extend((0..n).rev().filter(|s| owner[*s] == Some(i)).take(surplus));
            list.reverse(); // pop() yields the highest slot first
        }
    }
    let mut orphans: Vec<usize> = (0..n).filter(|s| owner[*s].is_none()).rev().collect();

    let givers_of = |kind: Change| -> Vec<usize> {
        (0..candidates.len())
            .filter(|i| change[*i] == kind)
            .collect()
    };
    let changed_givers = givers_of(Change::Changed);
    let unchanged_givers = givers_of(Change::Unchanged);

    let mut take = |receiver: usize,
                    allow_unchanged_givers: bool,
                    owner: &mut Vec<Option<usize>>,
                    count: &mut Vec<u32>| {
        while count[receiver] < quota[receiver] {
            let slot = if let Some(s) = orphans.pop() {
                s
            } else if let Some(s) = changed_givers
                .iter()
                .find_map(|g| excess[*g].pop().filter(|_| *g != receiver))
            {
                s
            } else if allow_unchanged_givers
                && let Some(s) = unchanged_givers
                    .iter()
                    .find_map(|g| excess[*g].pop().filter(|_| *g != receiver))
            {
                s
            } else {
                break;
            };
            if let Some(old) = owner[slot] {
                count[old] -= 1;
            }
            owner[slot] = Some(receiver);
            count[receiver] += 1;
        }
    };
    for r in changed_givers.iter().copied() {
        take(r, true, &mut owner, &mut count);
    }
    for r in unchanged_givers.iter().copied() {
        take(r, false, &mut owner, &mut count);
    }
    // Orphans nobody had room for (unchanged instances kept their surplus): give each to the
    // candidate furthest below its quota.
    while let Some(slot) = orphans.pop() {
        let best = (0..candidates.len())
            .max_by(|a, b| {
                let da = i64::from(quota[*a]) - i64::from(count[*a]);
                let db = i64::from(quota[*b]) - i64::from(count[*b]);
                da.cmp(&db).then(b.cmp(a))
            })
            .unwrap_or_default();
        owner[slot] = Some(best);
        count[best] += 1;
    }
    owner
        .into_iter()
        .map(|o| candidates[o.unwrap_or_default()].name.clone())
        .collect()
}

/// Weighted rendezvous (highest random weight) hashing: the candidate with the highest
/// `-share / ln(u)` where `u` is a hash of (category, name) mapped into (0, 1).
pub fn rendezvous_winner<'a>(key: &str, candidates: &'a [Candidate]) -> &'a str {
    let score = |c: &Candidate| {
        let mut bytes = Vec::with_capacity(key.len() + c.name.len() + 1);
        bytes.extend_from_slice(key.as_bytes());
        bytes.push(0);
        bytes.extend_from_slice(c.name.as_bytes());
        let h = mix64(super::table::fnv1a64(&bytes));
        // (h + 1) / (2^64 + 1) lies strictly inside (0, 1).
        let u = (h as f64 + 1.0) / (u64::MAX as f64 + 2.0);
        -(c.share.max(1) as f64) / u.ln()
    };
    candidates
        .iter()
        .map(|c| (score(c), c.name.as_str()))
        .max_by(|a, b| a.0.total_cmp(&b.0).then(b.1.cmp(a.1)))
        .map(|(_, n)| n)
        .unwrap_or_default()
}

/// A bit mixer (splitmix64 finaliser) so that similar names give unrelated scores.
fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn cands(spec: &[(&str, u64)]) -> Vec<Candidate> {
        spec.iter()
            .map(|(n, s)| Candidate {
                name: (*n).to_owned(),
                share: *s,
            })
            .collect()
    }

    fn counts(owners: &[String]) -> BTreeMap<String, u32> {
        let mut m = BTreeMap::new();
        for o in owners {
            *m.entry(o.clone()).or_insert(0) += 1;
        }
        m
    }

    fn replace(prev: &[String], basis: &BTreeMap<String, u64>, next: &[Candidate]) -> Vec<String> {
        let refs: Vec<&str> = prev.iter().map(String::as_str).collect();
        place(
            "cat",
            next,
            Some(Previous {
                owners: &refs,
                basis,
            }),
            Mode::Spread,
        )
        .unwrap()
    }

    #[test]
    fn fresh_spread_is_proportional_and_contiguous() {
        let c = cands(&[("a", 3000), ("b", 3000), ("c", 6000)]);
        let owners = place("cat", &c, None, Mode::Spread).unwrap();
        let n = counts(&owners);
        assert_eq!(n["a"], 4096);
        assert_eq!(n["b"], 4096);
        assert_eq!(n["c"], 8192);
        assert_eq!(crate::routing::slots::runs(&owners).len(), 3);
    }

    #[test]
    fn quotas_sum_exactly_and_break_ties_by_name() {
        let q = quotas(&cands(&[("a", 1), ("b", 1), ("c", 1)]), 16384);
        assert_eq!(q, vec![5462, 5461, 5461]);
        assert_eq!(quotas(&cands(&[("x", 7)]), 16384), vec![16384]);
    }

    #[test]
    fn no_candidates_means_no_placement() {
        assert_eq!(place("cat", &[], None, Mode::Spread), None);
    }

    #[test]
    fn unchanged_basis_keeps_an_unbalanced_assignment() {
        // A rebalance left a 10000/6384 split; re-placing with the same candidates keeps it.
        let c = cands(&[("a", 100), ("b", 100)]);
        let mut prev = vec!["a".to_owned(); 10000];
        prev.extend(vec!["b".to_owned(); 6384]);
        let next = replace(&prev, &basis_of(&c), &c);
        assert_eq!(next, prev);
    }

    #[test]
    fn pinned_puts_a_category_on_one_instance_and_moves_only_to_a_winning_newcomer() {
        let two = cands(&[("primary", 3000), ("secondary", 3000)]);
        let three = cands(&[("primary", 3000), ("secondary", 3000), ("tertiary", 3000)]);
        let mut moved = 0;
        for cat in [
            "auth",
            "order",
            "notification",
            "analytics-live",
            "user",
            "menu",
            "ml",
        ] {
            let before = place(cat, &two, None, Mode::Pinned).unwrap();
            assert_eq!(counts(&before).len(), 1);
            let after = place(cat, &three, None, Mode::Pinned).unwrap();
            if before != after {
                moved += 1;
                assert_eq!(
                    after[0], "tertiary",
                    "{cat} moved between unchanged instances"
                );
            }
        }
        assert!(moved < 7);
    }

    #[test]
    fn unchanged_instances_do_not_trade_slots_when_one_leaves() {
        // Start unbalanced (a holds more than its share) and remove c: only c's slots move.
        let before = cands(&[("a", 100), ("b", 100), ("c", 100)]);
        let mut prev = vec!["a".to_owned(); 10000];
        prev.extend(vec!["b".to_owned(); 2000]);
        prev.extend(vec!["c".to_owned(); 4384]);
        let after = cands(&[("a", 100), ("b", 100)]);
        let next = replace(&prev, &basis_of(&before), &after);
        for (p, n) in prev.iter().zip(&next) {
            if p != n {
                assert_eq!(p, "c", "a slot moved from {p} to {n}");
            }
        }
        // a keeps its surplus (it may only give to a new or changed instance); b takes c's.
        assert_eq!(counts(&next)["a"], 10000);
        assert_eq!(counts(&next)["b"], 6384);
    }

    fn shares() -> impl Strategy<Value = Vec<u64>> {
        prop::collection::vec(1u64..5000, 1..12)
    }

    fn named(shares: &[u64]) -> Vec<Candidate> {
        shares
            .iter()
            .enumerate()
            .map(|(i, s)| Candidate {
                name: format!("redis-{i:02}"),
                share: *s,
            })
            .collect()
    }

    /// Movements and the invariant checks shared by the properties below.
    fn check_transition(before: &[Candidate], after: &[Candidate]) -> Result<(), TestCaseError> {
        let prev = place("cat", before, None, Mode::Spread).unwrap();
        let next = replace(&prev, &basis_of(before), after);
        prop_assert_eq!(next.len(), 16384);
        let unchanged = |name: &str| {
            before.iter().any(|c| c.name == name)
                && after.iter().any(|c| c.name == name)
                && basis_of(before).get(name) == basis_of(after).get(name)
        };
        let mut moved = 0u32;
        for (p, n) in prev.iter().zip(&next) {
            prop_assert!(
                after.iter().any(|c| &c.name == n),
                "owner {} is not a candidate",
                n
            );
            if p != n {
                moved += 1;
                prop_assert!(
                    !(unchanged(p) && unchanged(n)),
                    "slot moved between unchanged {} and {}",
                    p,
                    n
                );
            }
        }
        // The optimum: slots that must leave each instance to reach its exact share.
        let prev_counts = counts(&prev);
        let total: u64 = after.iter().map(|c| c.share).sum();
        let mut optimum = 0f64;
        for (name, c) in &prev_counts {
            let ideal = after
                .iter()
                .find(|x| &x.name == name)
                .map_or(0.0, |x| 16384.0 * x.share as f64 / total as f64);
            optimum += (f64::from(*c) - ideal).max(0.0);
        }
        let slack = (before.len() + after.len()) as f64;
        prop_assert!(
            f64::from(moved) <= optimum.ceil() + slack,
            "moved {} slots, optimum {:.1} + slack {}",
            moved,
            optimum,
            slack
        );
        // Stable: placing again with the new basis moves nothing.
        let again = replace(&next, &basis_of(after), after);
        prop_assert_eq!(&again, &next);
        Ok(())
    }

    proptest! {
        #[test]
        fn fresh_placement_matches_quotas(s in shares()) {
            let c = named(&s);
            let owners = place("cat", &c, None, Mode::Spread).unwrap();
            let n = counts(&owners);
            let q = quotas(&c, 16384);
            for (cand, quota) in c.iter().zip(q) {
                prop_assert_eq!(n.get(&cand.name).copied().unwrap_or(0), quota);
            }
            prop_assert_eq!(place("cat", &c, None, Mode::Spread).unwrap(), owners);
        }

        #[test]
        fn joining_moves_only_to_the_newcomer(s in shares(), new_share in 1u64..5000) {
            let before = named(&s);
            let mut after = before.clone();
            after.push(Candidate { name: "redis-new".into(), share: new_share });
            check_transition(&before, &after)?;
            let prev = place("cat", &before, None, Mode::Spread).unwrap();
            let next = replace(&prev, &basis_of(&before), &after);
            for (p, n) in prev.iter().zip(&next) {
                if p != n {
                    prop_assert_eq!(n.as_str(), "redis-new");
                }
            }
        }

        #[test]
        fn leaving_moves_only_the_leavers_slots(s in shares(), pick in any::<prop::sample::Index>()) {
            prop_assume!(s.len() >= 2);
            let before = named(&s);
            let gone = pick.index(before.len());
            let mut after = before.clone();
            let leaver = after.remove(gone).name;
            check_transition(&before, &after)?;
            let prev = place("cat", &before, None, Mode::Spread).unwrap();
            let next = replace(&prev, &basis_of(&before), &after);
            for (p, n) in prev.iter().zip(&next) {
                if p != n {
                    prop_assert_eq!(p, &leaver);
                }
            }
        }

        #[test]
        fn weight_changes_move_little(s in shares(), pick in any::<prop::sample::Index>(), w in 1u64..5000) {
            let before = named(&s);
            let mut after = before.clone();
            let i = pick.index(after.len());
            after[i].share = w;
            check_transition(&before, &after)?;
        }
    }
}
