//! The per-seed table `make chaos` prints (the README's Chaos section shows one), and the
//! details of each seed: errors by kind, faults by kind, examples of what went wrong.

use std::fmt::Write as _;

use crate::fleet::ASYNC_CATEGORY;
use crate::run::Row;

/// The table's header.
pub fn header() -> String {
    "| seed | faults s | ops | acked writes | reads checked | lost writes | resurrected deletes | stale reads | phantoms | TTL violations | unexpected errors | expected errors | plans (succeeded) | Job pods (failed) | faults | failovers |\n\
     |---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
        .to_owned()
}

/// One seed's line of the table.
pub fn line(row: &Row) -> String {
    let h = &row.history;
    format!(
        "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} ({}) | {} ({}) | {} | {} |",
        row.seed,
        row.seconds,
        row.ops,
        h.acknowledged,
        h.reads,
        h.lost_writes,
        h.resurrected_deletes,
        h.stale_reads,
        h.phantom_values,
        h.expired_served + row.ttl.violations(),
        row.fatal + row.unreadable.len() as u64,
        row.retryable(),
        row.plans.0,
        row.plans.1,
        row.pods.0,
        row.pods.1,
        row.faults.values().sum::<u64>(),
        row.failovers,
    )
}

/// The totals line.
pub fn totals(rows: &[Row]) -> String {
    let sum = |f: &dyn Fn(&Row) -> u64| rows.iter().map(f).sum::<u64>();
    format!(
        "| **all** | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} ({}) | {} ({}) | {} | {} |",
        sum(&|r| r.seconds),
        sum(&|r| r.ops),
        sum(&|r| r.history.acknowledged),
        sum(&|r| r.history.reads),
        sum(&|r| r.history.lost_writes),
        sum(&|r| r.history.resurrected_deletes),
        sum(&|r| r.history.stale_reads),
        sum(&|r| r.history.phantom_values),
        sum(&|r| r.history.expired_served + r.ttl.violations()),
        sum(&|r| r.fatal + r.unreadable.len() as u64),
        sum(&|r| r.retryable()),
        sum(&|r| r.plans.0),
        sum(&|r| r.plans.1),
        sum(&|r| r.pods.0),
        sum(&|r| r.pods.1),
        sum(&|r| r.faults.values().sum()),
        sum(&|r| r.failovers),
    )
}

/// What one seed did, in detail, and what went wrong.
pub fn details(row: &Row) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "seed {}: {} — settled {}",
        row.seed,
        if row.clean() { "clean" } else { "FAILED" },
        match &row.settled {
            Ok(d) => format!("in {} s", d.as_secs()),
            Err(e) => format!("NEVER: {e}"),
        }
    );
    let _ = writeln!(out, "  history: {}", row.history);
    let _ = writeln!(
        out,
        "  TTLs: {} checked at the end: {} lost, {} extended, {} shortened; {} expired values served",
        row.ttl.checked,
        row.ttl.lost,
        row.ttl.extended,
        row.ttl.shortened,
        row.history.expired_served
    );
    let _ = writeln!(
        out,
        "  {} operations, {} answered after more than 5 s; errors by kind: {:?}",
        row.ops, row.slow, row.errors
    );
    let _ = writeln!(out, "  faults: {:?}", row.faults);
    let _ = writeln!(
        out,
        "  {ASYNC_CATEGORY} (async): {} keys taken over by their replica, {} of their acknowledged writes at risk by the sidecars' reports",
        row.async_takeovers.0, row.async_takeovers.1
    );
    let _ = writeln!(
        out,
        "  replicas moved seed-first: {} (category, outgoing instance) pairs named by the tables",
        row.replica_moves
    );
    let _ = writeln!(
        out,
        "  failovers ended by swapping roles: {}; replicated moves handed over: {} ({} of {ASYNC_CATEGORY}; {} swapped, the rest given back)",
        row.swaps, row.handed_over.0, row.async_handed_over, row.handed_over.1
    );
    for e in row
        .history
        .examples
        .iter()
        .chain(&row.ttl.examples)
        .chain(&row.fatal_examples)
        .chain(row.unreadable.iter().take(10))
    {
        let _ = writeln!(out, "  ! {e}");
    }
    for d in &row.diagnosis {
        let _ = writeln!(out, "  | {d}");
    }
    for e in &row.slow_examples {
        let _ = writeln!(out, "  slow: {e}");
    }
    if let Some(dir) = &row.logs {
        let _ = writeln!(out, "  logs kept in {}", dir.display());
    }
    if !row.clean() {
        let _ = writeln!(
            out,
            "  reproduce: make chaos CHAOS_SEED={} CHAOS_SEEDS=1 CHAOS_SECONDS={}",
            row.seed, row.seconds
        );
    }
    out
}
