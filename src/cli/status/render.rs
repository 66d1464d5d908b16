//! Render, the last step of `redis-fleet status`: a snapshot drawn as text for a terminal of a
//! given width (pure).

use std::collections::BTreeSet;
use std::fmt::Write as _;

use jiff::Timestamp;

use crate::api::cache_policy::{RebalanceBalance, RebalanceStatus, rebalance_step};
use crate::api::quantity::format_bytes_human;
use crate::api::redis_instance::InstancePhase;
use crate::routing::slots::SLOT_COUNT;

use super::snapshot::*;
use crate::cli::term::*;

fn phase_style(phase: InstancePhase) -> &'static str {
    match phase {
        InstancePhase::Ready => GREEN,
        InstancePhase::Degraded | InstancePhase::Draining => YELLOW,
        InstancePhase::Unreachable => RED,
        InstancePhase::Pending => CYAN,
    }
}

/// Draws the snapshot for a terminal `width` columns wide; ANSI colors when `color`.
pub fn render(snapshot: &Snapshot, width: usize, color: bool) -> String {
    let p = Painter { color };
    let width = width.max(60);
    let now = snapshot.generated_at;
    let mut out = String::new();

    let mut names: BTreeSet<&str> = BTreeSet::new();
    for policy in &snapshot.policies {
        names.extend(policy.instances.iter().map(|i| i.name.as_str()));
    }
    names.extend(
        snapshot
            .unselected_instances
            .iter()
            .map(|i| i.name.as_str()),
    );
    let plural =
        |n: usize, one: &str, many: &str| format!("{n} {}", if n == 1 { one } else { many });
    let _ = writeln!(
        out,
        "{} {} · {} · {}",
        p.paint("namespace", Some(DIM)),
        p.paint(&snapshot.namespace, Some(BOLD)),
        plural(snapshot.policies.len(), "policy", "policies"),
        plural(names.len(), "instance", "instances"),
    );
    if snapshot.policies.is_empty() && snapshot.unselected_instances.is_empty() {
        let _ = writeln!(
            out,
            "\nNo CachePolicy and no RedisInstance in namespace {}.",
            snapshot.namespace
        );
        return out;
    }

    for policy in &snapshot.policies {
        out.push('\n');
        render_policy(&mut out, policy, now, width, p);
    }

    if !snapshot.unselected_instances.is_empty() {
        out.push('\n');
        let _ = writeln!(
            out,
            "{}",
            p.paint("Instances no policy selects", Some(BOLD))
        );
        write_instances(&mut out, &snapshot.unselected_instances, None, width, p);
        let entries: Vec<(String, String)> =
            instance_condition_entries(&snapshot.unselected_instances, now);
        if !entries.is_empty() {
            out.push('\n');
            write_conditions(&mut out, &entries, width, p);
        }
    }
    out
}

fn render_policy(
    out: &mut String,
    policy: &PolicySnapshot,
    now: Timestamp,
    width: usize,
    p: Painter,
) {
    // Header: name, Ready, routing version, ConfigMap, strategy, threshold, sidecars.
    let mut parts: Vec<(String, Option<&str>)> = Vec::new();
    parts.push(match policy.ready {
        Some(true) => ("Ready".to_owned(), Some(GREEN)),
        Some(false) => ("Not ready".to_owned(), Some(RED)),
        None => ("not reconciled yet".to_owned(), Some(YELLOW)),
    });
    let routing = &policy.routing;
    parts.push(match routing.version {
        Some(v) => (
            match routing.published_at {
                Some(at) => format!("routing v{v} ({} ago)", age(now, at)),
                None => format!("routing v{v}"),
            },
            None,
        ),
        None => ("no routing table".to_owned(), Some(RED)),
    });
    parts.push((format!("ConfigMap {}", routing.config_map), None));
    parts.push((policy.strategy.as_str().to_owned(), None));
    parts.push((format!("threshold {}%", policy.capacity_threshold), None));
    parts.push(match &policy.sidecars {
        None => ("no sidecars".to_owned(), Some(DIM)),
        Some(s) if s.count == 0 => ("0 sidecars".to_owned(), Some(DIM)),
        Some(s) => {
            let count = if s.count == 1 {
                "1 sidecar".to_owned()
            } else {
                format!("{} sidecars", s.count)
            };
            match (s.min_version, s.behind) {
                (Some(min), true) => (
                    format!(
                        "{count}, oldest on v{min} — behind v{}",
                        routing.version.unwrap_or_default()
                    ),
                    Some(YELLOW),
                ),
                (Some(min), false) => (format!("{count} on v{min}"), None),
                (None, _) => (count, None),
            }
        }
    });
    let mut line = p.paint(&policy.name, Some(BOLD));
    let mut line_width = cols(&policy.name);
    let sep = " · ";
    for (i, (text, style)) in parts.iter().enumerate() {
        let glue = if i == 0 { "  " } else { sep };
        if line_width + cols(glue) + cols(text) > width && i > 0 {
            let _ = writeln!(out, "{line}");
            line = " ".repeat(cols(&policy.name) + 2);
            line_width = cols(&line);
        } else {
            line.push_str(glue);
            line_width += cols(glue);
        }
        line.push_str(&p.paint(text, *style));
        line_width += cols(text);
    }
    let _ = writeln!(out, "{line}");

    // Instances.
    if policy.instances.is_empty() {
        let _ = writeln!(
            out,
            "{}{}",
            " ".repeat(INDENT),
            p.paint("no RedisInstance is selected by this policy", Some(YELLOW))
        );
    } else {
        write_instances(
            out,
            &policy.instances,
            Some(policy.capacity_threshold),
            width,
            p,
        );
    }

    // What fills each instance.
    if !policy.memory.is_empty() {
        out.push('\n');
        let entries: Vec<String> = policy
            .memory
            .iter()
            .map(|m| {
                let cats: Vec<String> = m
                    .categories
                    .iter()
                    .map(|c| {
                        format!(
                            "{}{} {} {}",
                            c.category,
                            if c.replica { " (replica)" } else { "" },
                            format_bytes_human(c.bytes),
                            share(c.percent)
                        )
                    })
                    .collect();
                format!("{}: {}", m.instance, cats.join(" · "))
            })
            .collect();
        write_block(out, "memory", &entries, width, p, |_, n, l| {
            if n > 0 {
                return l.to_owned();
            }
            match l.split_once(':') {
                Some((name, rest)) => format!("{}:{rest}", p.paint(name, Some(BOLD))),
                None => l.to_owned(),
            }
        });
    }

    // Categories.
    if !policy.categories.is_empty() {
        out.push('\n');
        let phase_of = |name: &str| {
            policy
                .instances
                .iter()
                .find(|i| i.name == name)
                .map(|i| i.phase)
        };
        let mut rows = vec![
            ["CATEGORY", "PREFIXES", "TIER", "TTL", "SLOTS ON"]
                .iter()
                .map(|h| Cell::styled(h, Some(DIM), p))
                .collect::<Vec<_>>(),
        ];
        for c in &policy.categories {
            let prefixes = if c.prefixes.is_empty() {
                Cell::styled("(other keys)", Some(DIM), p)
            } else {
                Cell::plain(clean(&c.prefixes.join(" ")))
            };
            let placement = if c.placement.is_empty() {
                Cell::styled("not published", Some(RED), p)
            } else {
                let plain: Vec<String> = c
                    .placement
                    .iter()
                    .map(|s| format!("{} {}", s.instance, share(s.percent)))
                    .collect();
                let painted: Vec<String> = c
                    .placement
                    .iter()
                    .map(|s| {
                        let style = match phase_of(&s.instance) {
                            Some(InstancePhase::Unreachable) | None => Some(RED),
                            _ => None,
                        };
                        format!("{} {}", p.paint(&s.instance, style), share(s.percent))
                    })
                    .collect();
                let plain = plain.join(" · ");
                Cell {
                    width: cols(&plain),
                    text: painted.join(" · "),
                    right: false,
                }
            };
            rows.push(vec![
                Cell::styled(&c.name, Some(BOLD), p),
                prefixes,
                Cell::plain(c.tier.clone().unwrap_or_else(|| "any".to_owned())),
                Cell::plain(ttl_text(&c.ttl)),
                placement,
            ]);
        }
        write_table(out, &rows, INDENT);
    }

    // Failovers and migrations.
    let failovers: Vec<String> = policy
        .failovers
        .iter()
        .map(|f| {
            let state = match policy.instances.iter().find(|i| i.name == f.from) {
                Some(i) => i.phase.as_str().to_lowercase(),
                None => "gone".to_owned(),
            };
            let since = f
                .since
                .map(|s| format!(" since {}", age(now, s)))
                .unwrap_or_default();
            let part = if u32::from(SLOT_COUNT) == f.slots {
                String::new()
            } else {
                format!(", {} slots", f.slots)
            };
            format!(
                "{} → {} ({} {state}{since}{part})",
                f.category, f.to, f.from
            )
        })
        .collect();
    if !failovers.is_empty() {
        out.push('\n');
        write_block(out, "failover", &failovers, width, p, |_, _, l| {
            p.paint(l, Some(YELLOW))
        });
    }
    let replicas: Vec<String> = policy
        .replication
        .iter()
        .map(|r| {
            let mut parts = vec![format!("{} slots replicated", r.replicated_slots)];
            if r.handover_slots > 0 {
                parts.push(format!("{} moving to a new replica", r.handover_slots));
            }
            if r.seeding_slots > 0 {
                parts.push(format!("{} seeding", r.seeding_slots));
            }
            if r.unreplicated_slots > 0 {
                parts.push(format!("{} without a replica", r.unreplicated_slots));
            }
            let on = if r.replicas.is_empty() {
                String::new()
            } else {
                format!(" on {}", r.replicas.join(", "))
            };
            format!("{} {}{on}: {}", r.category, r.mode, parts.join(", "))
        })
        .collect();
    if !replicas.is_empty() {
        out.push('\n');
        // A category with slots seeding or without a replica is not yet safe from its
        // owner's death: yellow.
        let partial: Vec<bool> = policy
            .replication
            .iter()
            .map(|r| r.seeding_slots > 0 || r.unreplicated_slots > 0)
            .collect();
        write_block(out, "replicas", &replicas, width, p, |i, _, l| {
            p.paint(l, partial[i].then_some(YELLOW))
        });
    }
    let migrating: Vec<String> = policy
        .migrating
        .iter()
        .map(|m| {
            format!(
                "{} slots {}-{} {} → {} (since v{})",
                m.category, m.start, m.end, m.from, m.to, m.epoch
            )
        })
        .collect();
    if !migrating.is_empty() {
        if failovers.is_empty() {
            out.push('\n');
        }
        write_block(out, "migrating", &migrating, width, p, |_, _, l| {
            p.paint(l, Some(CYAN))
        });
    }

    // Rebalance.
    if let Some(r) = &policy.rebalance {
        out.push('\n');
        write_rebalance(out, r, now, width, p);
    }

    // Advice.
    if !policy.recommendations.is_empty() {
        out.push('\n');
        write_block(
            out,
            "advice",
            &policy.recommendations,
            width,
            p,
            |_, _, l| l.to_owned(),
        );
    }

    // Conditions that are not healthy: the policy's, then its instances'.
    let mut entries: Vec<(String, String)> = Vec::new();
    if let Some(e) = &routing.error {
        entries.push(("routing:".to_owned(), e.clone()));
    }
    for c in policy.conditions.iter().filter(|c| !c.healthy) {
        entries.push(condition_entry(None, c, now));
    }
    entries.extend(instance_condition_entries(&policy.instances, now));
    if !entries.is_empty() {
        out.push('\n');
        write_conditions(out, &entries, width, p);
    }
}

fn ttl_text(ttl: &TtlSnapshot) -> String {
    let mut parts = Vec::new();
    if let Some(d) = &ttl.default {
        parts.push(d.clone());
    }
    if let Some(m) = &ttl.max {
        parts.push(format!("max {m}"));
    }
    if ttl.adaptive {
        parts.push("adaptive".to_owned());
    }
    if parts.is_empty() {
        "none".to_owned()
    } else {
        parts.join(", ")
    }
}

fn write_instances(
    out: &mut String,
    instances: &[InstanceSnapshot],
    threshold: Option<i32>,
    width: usize,
    p: Painter,
) {
    struct Row<'a> {
        instance: &'a InstanceSnapshot,
        usage: String,
        hit: String,
        latency: String,
        keys: String,
    }
    let rows: Vec<Row<'_>> = instances
        .iter()
        .map(|i| {
            let usage = match (i.used_percent, i.capacity_bytes, i.used_bytes) {
                (Some(pct), Some(cap), _) => {
                    format!("{:>4} of {}", format!("{pct:.0}%"), format_bytes_human(cap))
                }
                (None, Some(cap), _) => format!("   — of {}", format_bytes_human(cap)),
                (None, None, Some(used)) => format!("{} used", format_bytes_human(used)),
                _ => "—".to_owned(),
            };
            let live = !matches!(i.phase, InstancePhase::Unreachable | InstancePhase::Pending);
            Row {
                instance: i,
                usage,
                hit: i
                    .hit_percent
                    .filter(|_| live)
                    .map_or_else(|| "—".to_owned(), |h| format!("{h}%")),
                latency: i
                    .latency
                    .clone()
                    .filter(|_| live)
                    .unwrap_or_else(|| "—".to_owned()),
                keys: i.keys.map_or_else(|| "—".to_owned(), compact),
            }
        })
        .collect();
    let headers = [
        "INSTANCE", "TIER", "PHASE", "MEMORY", "", "HIT", "LATENCY", "KEYS",
    ];
    let max = |f: &dyn Fn(&Row<'_>) -> usize, header: &str| {
        rows.iter().map(f).max().unwrap_or(0).max(cols(header))
    };
    let fixed = max(&|r| cols(&r.instance.name), headers[0])
        + max(&|r| r.instance.tier.as_deref().map_or(1, cols), headers[1])
        + max(&|r| cols(r.instance.phase.as_str()), headers[2])
        + max(&|r| cols(&r.usage), headers[4])
        + max(&|r| cols(&r.hit), headers[5])
        + max(&|r| cols(&r.latency), headers[6])
        + max(&|r| cols(&r.keys), headers[7]);
    // Eight columns, seven gaps of two, the bar's two brackets.
    let cells = width
        .saturating_sub(INDENT + fixed + 7 * 2 + 2)
        .clamp(10, 40);

    let mut table = vec![
        headers
            .iter()
            .enumerate()
            .map(|(n, h)| {
                let c = Cell::styled(h, Some(DIM), p);
                if matches!(n, 5 | 7) { c.right() } else { c }
            })
            .collect::<Vec<_>>(),
    ];
    for r in &rows {
        let i = r.instance;
        let bar = match (i.used_percent, i.capacity_bytes) {
            (Some(pct), Some(_)) => usage_bar(pct, threshold, cells, p),
            (None, Some(_)) => usage_bar(0.0, threshold, cells, p),
            _ => placeholder_bar("no capacity", cells, p),
        };
        let usage_style = i
            .used_percent
            .map(|pct| level(pct, threshold))
            .filter(|s| *s == RED);
        let phase = if i.drain && i.phase != InstancePhase::Draining {
            format!("{} (drain)", i.phase)
        } else {
            i.phase.to_string()
        };
        table.push(vec![
            Cell::styled(&i.name, Some(BOLD), p),
            Cell::plain(i.tier.clone().unwrap_or_else(|| "—".to_owned())),
            Cell::styled(&phase, Some(phase_style(i.phase)), p),
            bar,
            Cell::styled(&r.usage, usage_style, p),
            Cell::plain(r.hit.clone()).right(),
            Cell::plain(r.latency.clone()),
            Cell::plain(r.keys.clone()).right(),
        ]);
    }
    write_table(out, &table, INDENT);
}

/// A plan's balance: the estimate next to the measurement, and each instance before → after.
fn balance_lines(b: &RebalanceBalance) -> Vec<String> {
    let bytes = |n: i64| format_bytes_human(n.max(0) as u64);
    let band = format!(
        "band: every instance within ±{} points of the {:.0}% mean",
        b.band_points, b.mean_percent
    );
    let mut moved = format!("bytes: planned {}", bytes(b.estimated_bytes));
    let mut details = Vec::new();
    if b.estimated_keys > 0 {
        details.push(format!("{} keys", group(b.estimated_keys)));
    }
    if let Some(least) = b.least_bytes {
        details.push(format!("least to the band {}", bytes(least)));
    }
    if !details.is_empty() {
        let _ = write!(moved, " ({})", details.join("; "));
    }
    if let Some(measured) = b.measured_bytes {
        let _ = write!(moved, " · measured {}", bytes(measured));
    }
    let pct = |used: i64, cap: i64| {
        if cap > 0 {
            format!("{:.0}%", used as f64 * 100.0 / cap as f64)
        } else {
            bytes(used)
        }
    };
    let instances: Vec<String> = b
        .instances
        .iter()
        .map(|i| {
            let before = pct(i.used_bytes_before, i.capacity_bytes);
            let planned = pct(i.planned_bytes, i.capacity_bytes);
            match i.used_bytes_after {
                Some(after) => format!(
                    "{} {before} → {} (planned {planned})",
                    i.name,
                    pct(after, i.capacity_bytes)
                ),
                None => format!("{} {before} → {planned} planned", i.name),
            }
        })
        .collect();
    vec![band, moved, instances.join(" · ")]
}

fn write_rebalance(
    out: &mut String,
    r: &RebalanceStatus,
    now: Timestamp,
    width: usize,
    p: Painter,
) {
    let phase_style = match r.phase.as_str() {
        "Succeeded" => GREEN,
        "Failed" => RED,
        _ => CYAN,
    };
    let mut first = vec![match r.step.as_deref() {
        Some(step) if !matches!(r.phase.as_str(), "Succeeded" | "Failed") => {
            format!("{} ({step})", r.phase)
        }
        _ => r.phase.clone(),
    }];
    if let Some(job) = &r.job {
        first.push(format!("job {job}"));
    }
    if r.attempts > 1 {
        first.push(format!("attempt {}", r.attempts));
    }
    match (&r.finished_at, &r.started_at) {
        (Some(f), _) => first.push(format!("finished {} ago", age(now, f.0))),
        (None, Some(s)) => first.push(format!("started {} ago", age(now, s.0))),
        (None, None) => {}
    }
    let mut entries = vec![first.join(" · ")];
    if let Some(reason) = &r.reason {
        entries.push(reason.clone());
    }
    if !r.moves.is_empty() {
        const SHOWN: usize = 4;
        let mut moves: Vec<String> = r
            .moves
            .iter()
            .take(SHOWN)
            .map(|m| format!("{} {}-{} {} → {}", m.category, m.start, m.end, m.from, m.to))
            .collect();
        if r.moves.len() > SHOWN {
            moves.push(format!("and {} more", r.moves.len() - SHOWN));
        }
        entries.push(format!("moves: {}", moves.join("; ")));
    }
    if let Some(b) = &r.balance {
        entries.extend(balance_lines(b));
    }
    if let Some(note) = r.pacing.as_ref().filter(|_| r.finished_at.is_none()) {
        entries.push(format!("pacing: {note}"));
    }
    let avail = width.saturating_sub(INDENT + LABEL);
    let (keys_moved, keys_total, keys_per_second) = (
        r.keys_moved.unwrap_or(0),
        r.keys_total.unwrap_or(0),
        r.keys_per_second.unwrap_or(0),
    );
    let progress = if keys_total > 0 || keys_moved > 0 {
        let total = keys_total.max(keys_moved);
        let pct = if total > 0 {
            keys_moved as f64 * 100.0 / total as f64
        } else {
            0.0
        };
        let mut text = format!("{} / {} keys  {pct:.0}%", group(keys_moved), group(total));
        if keys_per_second > 0 {
            let _ = write!(text, " · {} keys/s", group(keys_per_second));
            let left = total - keys_moved;
            // A paused (or held back) plan moves nothing until it goes on: no time left to
            // promise.
            let paused = matches!(
                r.step.as_deref(),
                Some(rebalance_step::PAUSED | rebalance_step::SOURCE_EVICTING)
            );
            if left > 0 && r.finished_at.is_none() && !paused {
                let secs = (left + keys_per_second - 1) / keys_per_second;
                let _ = write!(text, " · ~{} left", human_secs(secs));
            }
        }
        let cells = avail.saturating_sub(cols(&text) + 4).clamp(10, 30);
        Some((progress_bar(pct, cells, p), text))
    } else {
        None
    };
    write_block(out, "rebalance", &entries, width, p, |index, n, l| {
        if index == 0 && n == 0 {
            l.replacen(&r.phase, &p.paint(&r.phase, Some(phase_style)), 1)
        } else {
            l.to_owned()
        }
    });
    let pad = " ".repeat(INDENT + LABEL);
    if let Some((bar, text)) = progress {
        let _ = writeln!(out, "{pad}{}  {text}", bar.text);
    }
    if let Some(m) = &r.message {
        for line in wrap(&clean(&format!("error: {m}")), avail) {
            let _ = writeln!(out, "{pad}{}", p.paint(&line, Some(RED)));
        }
    }
}

/// `(who, text)` where `text` starts with `Type=Status`.
fn condition_entry(who: Option<&str>, c: &ConditionSnapshot, now: Timestamp) -> (String, String) {
    let mut text = format!("{}={}", c.type_, c.status);
    if !c.reason.is_empty() {
        let _ = write!(text, " {}", c.reason);
    }
    if !c.message.is_empty() {
        let _ = write!(text, ": {}", c.message);
    }
    let _ = write!(text, " ({})", age(now, c.since));
    (who.map(|w| format!("{w}:")).unwrap_or_default(), text)
}

fn instance_condition_entries(
    instances: &[InstanceSnapshot],
    now: Timestamp,
) -> Vec<(String, String)> {
    instances
        .iter()
        .flat_map(|i| {
            i.conditions
                .iter()
                .filter(|c| !c.healthy)
                // Ready=False only repeats the cause of another condition when there is one.
                .filter(|c| {
                    c.type_ != "Ready"
                        || i.conditions.iter().all(|o| o.healthy || o.type_ == "Ready")
                })
                .map(move |c| condition_entry(Some(&i.name), c, now))
        })
        .collect()
}

fn write_conditions(out: &mut String, entries: &[(String, String)], width: usize, p: Painter) {
    let lines: Vec<String> = entries
        .iter()
        .map(|(who, text)| {
            if who.is_empty() {
                text.clone()
            } else {
                format!("{who} {text}")
            }
        })
        .collect();
    write_block(out, "conditions", &lines, width, p, |index, n, l| {
        let (who, text) = &entries[index];
        if n > 0 {
            return l.to_owned();
        }
        let token = text.split_whitespace().next().unwrap_or_default();
        let style = if token.ends_with("=Unknown") {
            YELLOW
        } else {
            RED
        };
        let l = if who.is_empty() {
            l.to_owned()
        } else {
            l.replacen(who.as_str(), &p.paint(who, Some(BOLD)), 1)
        };
        if who == "routing:" {
            return p.paint(&l, Some(RED));
        }
        l.replacen(token, &p.paint(token, Some(style)), 1)
    });
}

#[cfg(test)]
mod tests;
