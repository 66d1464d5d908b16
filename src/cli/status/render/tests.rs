//! Tests of the terminal view: snapshots drawn at several widths, with and without color.

use super::*;
use crate::api::cache_policy::{InstanceBalanceStatus, MoveStatus, Strategy};
use crate::api::conditions::Time;
use crate::cli::status::SCHEMA_VERSION;
use crate::cli::status::build::{format_ms, is_healthy, round2};
use crate::cli::status::tests::{MIB, at};
use crate::routing::table::Migration;

fn cond(type_: &str, status: &str, reason: &str, message: &str, ago: i64) -> ConditionSnapshot {
    ConditionSnapshot {
        type_: type_.into(),
        status: status.into(),
        reason: reason.into(),
        message: message.into(),
        since: at(ago),
        healthy: is_healthy(type_, status),
    }
}

fn instance(name: &str, tier: &str, phase: InstancePhase, used_mib: f64) -> InstanceSnapshot {
    let used = (used_mib * MIB as f64) as u64;
    InstanceSnapshot {
        name: name.into(),
        tier: Some(tier.into()),
        phase,
        drain: false,
        endpoint: Some("127.0.0.1:7001".into()),
        used_bytes: Some(used),
        capacity_bytes: Some(30 * MIB),
        used_percent: Some(round2(used as f64 * 100.0 / (30 * MIB) as f64)),
        hit_percent: Some(93),
        ops_per_second: Some(850),
        keys: Some(10_234),
        latency: Some("420µs".into()),
        latency_micros: Some(420),
        last_probe_time: Some(at(1)),
        conditions: vec![
            cond("Reachable", "True", "Pong", "", 3600),
            cond("Ready", "True", "Serving", "", 3600),
        ],
    }
}

fn category(
    name: &str,
    prefixes: &[&str],
    tier: &str,
    ttl: (&str, &str, bool),
    on: &[(&str, u32)],
) -> CategorySnapshot {
    CategorySnapshot {
        name: name.into(),
        prefixes: prefixes.iter().map(|p| (*p).to_owned()).collect(),
        tier: Some(tier.into()),
        fallback_tier: None,
        ttl: TtlSnapshot {
            default: Some(ttl.0.into()).filter(|s: &String| !s.is_empty()),
            max: Some(ttl.1.into()).filter(|s: &String| !s.is_empty()),
            adaptive: ttl.2,
        },
        placement: on
            .iter()
            .map(|(i, slots)| SlotShare {
                instance: (*i).into(),
                slots: *slots,
                percent: round2(f64::from(*slots) * 100.0 / 16384.0),
            })
            .collect(),
    }
}

fn memory(instance: &str, cats: &[(&str, f64, f64)]) -> InstanceMemorySnapshot {
    InstanceMemorySnapshot {
        instance: instance.into(),
        categories: cats
            .iter()
            .map(|(c, mib, pct)| CategoryMemorySnapshot {
                category: (*c).into(),
                bytes: (mib * MIB as f64) as u64,
                keys: None,
                percent: *pct,
                replica: false,
            })
            .collect(),
    }
}

/// The user's fleet, healthy: primary (hot) at 52 %, secondary (warm) at 20 %.
fn healthy() -> Snapshot {
    Snapshot {
        schema_version: SCHEMA_VERSION,
        namespace: "shop".into(),
        policy: None,
        generated_at: at(0),
        policies: vec![PolicySnapshot {
            name: "shop".into(),
            ready: Some(true),
            strategy: Strategy::Smart,
            capacity_threshold: 80,
            routing: RoutingSnapshot {
                config_map: "shop-redis-routing".into(),
                version: Some(17),
                hash: Some("0123456789abcdef".into()),
                published_at: Some(at(125)),
                error: None,
            },
            sidecars: Some(SidecarsSnapshot {
                count: 12,
                min_version: Some(17),
                behind: false,
            }),
            instances: vec![
                instance("primary", "hot", InstancePhase::Ready, 15.6),
                instance("secondary", "warm", InstancePhase::Ready, 6.0),
            ],
            memory: vec![
                memory("primary", &[("auth", 11.7, 75.0), ("order", 3.9, 25.0)]),
                memory("secondary", &[("menu", 4.5, 75.0), ("default", 1.5, 25.0)]),
            ],
            categories: vec![
                category(
                    "auth",
                    &["auth:", "session:"],
                    "hot",
                    ("1h", "24h", true),
                    &[("primary", 16384)],
                ),
                category(
                    "menu",
                    &["menu:", "restaurant:"],
                    "warm",
                    ("6h", "24h", false),
                    &[("secondary", 16384)],
                ),
                category(
                    "default",
                    &[],
                    "warm",
                    ("1h", "", false),
                    &[("secondary", 16384)],
                ),
            ],
            failovers: vec![],
            migrating: vec![],
            replication: vec![],
            rebalance: None,
            recommendations: vec![],
            conditions: vec![
                cond("RoutingPublished", "True", "Published", "version 17", 125),
                cond("Degraded", "False", "AllServed", "", 3600),
                cond("Ready", "True", "Serving", "", 3600),
            ],
        }],
        unselected_instances: vec![],
    }
}

fn line_with<'a>(text: &'a str, needle: &str) -> &'a str {
    text.lines()
        .find(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("no line with {needle:?} in\n{text}"))
}

fn words(line: &str) -> Vec<&str> {
    line.split_whitespace().collect()
}

#[test]
fn the_bar_marks_the_threshold() {
    let p = Painter { color: false };
    assert_eq!(
        usage_bar(52.0, Some(80), 19, p).text,
        "[██████████░░░░░│░░░]"
    );
    assert_eq!(usage_bar(0.0, Some(80), 10, p).text, "[░░░░░░░░│░]");
    assert_eq!(usage_bar(95.0, Some(80), 10, p).text, "[████████│█]");
    assert_eq!(usage_bar(130.0, Some(100), 10, p).text, "[█████████│]");
    assert_eq!(usage_bar(50.0, None, 10, p).text, "[█████░░░░░]");
    assert_eq!(usage_bar(52.0, Some(80), 19, p).width, 21);
}

#[test]
fn renders_a_healthy_two_instance_fleet() {
    let text = render(&healthy(), 100, false);
    println!("{text}");
    assert!(!text.contains('\x1b'), "no color when asked for none");
    assert!(
        text.lines().all(|l| cols(l) <= 100),
        "fits 100 columns\n{text}"
    );
    assert_eq!(
        text.lines().next(),
        Some("namespace shop · 1 policy · 2 instances")
    );
    let header = line_with(&text, "ConfigMap");
    assert!(
        header.starts_with("shop  Ready · routing v17 (2m ago) · ConfigMap shop-redis-routing"),
        "{header}"
    );
    let rest = line_with(&text, "threshold");
    assert!(rest.contains("Smart · threshold 80%"), "{rest}");
    assert!(text.contains("12 sidecars on v17"), "{text}");

    assert_eq!(
        words(line_with(&text, "INSTANCE")),
        [
            "INSTANCE", "TIER", "PHASE", "MEMORY", "HIT", "LATENCY", "KEYS"
        ]
    );
    let primary = line_with(&text, "  primary ");
    let w = words(primary);
    assert_eq!(&w[..3], ["primary", "hot", "Ready"], "{primary}");
    assert!(
        w[3].starts_with('[') && w[3].ends_with(']') && w[3].contains('│'),
        "{primary}"
    );
    assert_eq!(
        &w[4..],
        ["52%", "of", "30.0Mi", "93%", "420µs", "10.2k"],
        "{primary}"
    );
    let bar = w[3];
    let filled = bar.matches('█').count();
    let cells = cols(bar) - 2;
    assert!(
        (cells * 52 / 100).abs_diff(filled) <= 1,
        "{bar}: 52% filled"
    );
    assert_eq!(
        bar.find('│').map(|i| cols(&bar[..i]) - 1),
        Some(cells * 80 / 100),
        "{bar}"
    );
    let secondary = words(line_with(&text, "  secondary "));
    assert_eq!(&secondary[4..7], ["20%", "of", "30.0Mi"]);

    assert_eq!(
        words(line_with(&text, "CATEGORY")),
        ["CATEGORY", "PREFIXES", "TIER", "TTL", "SLOTS", "ON"]
    );
    assert_eq!(
        words(line_with(&text, "  auth ")),
        [
            "auth", "auth:", "session:", "hot", "1h,", "max", "24h,", "adaptive", "primary", "100%"
        ]
    );
    assert_eq!(
        words(line_with(&text, "  menu ")),
        [
            "menu",
            "menu:",
            "restaurant:",
            "warm",
            "6h,",
            "max",
            "24h",
            "secondary",
            "100%"
        ]
    );
    assert_eq!(
        words(line_with(&text, "  default ")),
        [
            "default",
            "(other",
            "keys)",
            "warm",
            "1h",
            "secondary",
            "100%"
        ]
    );
    for absent in ["failover", "rebalance", "conditions", "advice", "behind"] {
        assert!(!text.contains(absent), "{absent} in\n{text}");
    }
}

#[test]
fn renders_an_unreachable_instance_and_its_failovers() {
    let mut s = healthy();
    let policy = &mut s.policies[0];
    policy.ready = Some(true);
    let primary = &mut policy.instances[0];
    primary.phase = InstancePhase::Unreachable;
    primary.conditions = vec![
        cond(
            "Reachable",
            "False",
            "ConnectionRefused",
            "connection refused",
            130,
        ),
        cond("Ready", "False", "ConnectionRefused", "unreachable", 130),
    ];
    policy.categories[0].placement = vec![SlotShare {
        instance: "primary".into(),
        slots: 16384,
        percent: 100.0,
    }];
    policy.failovers = vec![
        FailoverSnapshot {
            category: "auth".into(),
            from: "primary".into(),
            to: "secondary".into(),
            slots: 16384,
            since: Some(at(125)),
        },
        FailoverSnapshot {
            category: "order".into(),
            from: "primary".into(),
            to: "secondary".into(),
            slots: 4096,
            since: None,
        },
    ];
    policy.conditions[1] = cond(
        "Degraded",
        "True",
        "FailedOver",
        "served by a fallback: auth from primary to secondary",
        125,
    );
    let text = render(&s, 100, false);
    println!("{text}");
    assert!(
        text.lines().all(|l| cols(l) <= 100),
        "fits 100 columns\n{text}"
    );
    let primary = words(line_with(&text, "  primary "));
    assert_eq!(&primary[..3], ["primary", "hot", "Unreachable"]);
    assert_eq!(
        &primary[primary.len() - 3..],
        ["—", "—", "10.2k"],
        "no live hit or latency"
    );
    assert_eq!(
        line_with(&text, "failover").trim(),
        "failover    auth → secondary (primary unreachable since 2m)"
    );
    assert!(
        text.contains("order → secondary (primary unreachable, 4096 slots)"),
        "{text}"
    );
    assert!(
        line_with(&text, "conditions").contains(
            "Degraded=True FailedOver: served by a fallback: auth from primary to secondary (2m)"
        ),
        "{text}"
    );
    assert!(
        text.contains("primary: Reachable=False ConnectionRefused: connection refused (2m)"),
        "{text}"
    );
    assert!(
        !text.contains("primary: Ready=False"),
        "Ready=False repeats the cause already shown\n{text}"
    );
}

#[test]
fn renders_a_rebalance_in_progress_and_sidecars_behind() {
    let mut s = healthy();
    let policy = &mut s.policies[0];
    policy.instances[0].used_percent = Some(86.0);
    policy.sidecars = Some(SidecarsSnapshot {
        count: 12,
        min_version: Some(16),
        behind: true,
    });
    policy.migrating = vec![Migration {
        category: "auth".into(),
        start: 0,
        end: 4095,
        from: "primary".into(),
        to: "secondary".into(),
        epoch: 17,
        target_serves: None,
    }];
    policy.rebalance = Some(RebalanceStatus {
        phase: "Migrating".into(),
        job: Some("shop-rebalance-17".into()),
        reason: Some("primary is at 86% of 30Mi, over the 80% threshold".into()),
        moves: vec![MoveStatus {
            category: "auth".into(),
            start: 0,
            end: 4095,
            from: "primary".into(),
            to: "secondary".into(),
            target_serves: None,
        }],
        keys_moved: Some(81_234),
        keys_total: Some(120_000),
        keys_per_second: Some(12_000),
        pacing: Some(
            "slowed to 12000 keys/s: sidecar shop-7f9c sees p99 900 µs from primary (budget 375 µs)"
                .into(),
        ),
        attempts: 1,
        started_at: Some(Time(at(190))),
        step: Some("Copying".into()),
        balance: Some(RebalanceBalance {
            mean_percent: 53.4,
            band_points: 10,
            estimated_bytes: (9 * MIB) as i64,
            estimated_keys: 12_000,
            least_bytes: Some((8 * MIB) as i64),
            measured_bytes: None,
            instances: vec![
                InstanceBalanceStatus {
                    name: "primary".into(),
                    capacity_bytes: (30 * MIB) as i64,
                    used_bytes_before: (26 * MIB) as i64,
                    planned_bytes: (17 * MIB) as i64,
                    used_bytes_after: None,
                },
                InstanceBalanceStatus {
                    name: "secondary".into(),
                    capacity_bytes: (30 * MIB) as i64,
                    used_bytes_before: (6 * MIB) as i64,
                    planned_bytes: (15 * MIB) as i64,
                    used_bytes_after: None,
                },
            ],
        }),
        ..RebalanceStatus::default()
    });
    policy.recommendations = vec![
        "primary is at 86% of 30Mi and grows ~2Mi/day: add an instance or raise capacity".into(),
    ];
    let text = render(&s, 100, false);
    println!("{text}");
    assert!(
        text.lines().all(|l| cols(l) <= 100),
        "fits 100 columns\n{text}"
    );
    assert!(
        text.contains("12 sidecars, oldest on v16 — behind v17"),
        "{text}"
    );
    assert!(words(line_with(&text, "  primary ")).contains(&"86%"));
    assert!(
        text.contains("pacing: slowed to 12000 keys/s: sidecar shop-7f9c sees p99 900 µs from"),
        "{text}"
    );
    assert_eq!(
        line_with(&text, "migrating").trim(),
        "migrating   auth slots 0-4095 primary → secondary (since v17)"
    );
    assert_eq!(
        line_with(&text, "rebalance").trim(),
        "rebalance   Migrating (Copying) · job shop-rebalance-17 · started 3m ago"
    );
    assert!(text.contains("primary is at 86% of 30Mi, over the 80% threshold"));
    assert!(text.contains("moves: auth 0-4095 primary → secondary"));
    let progress = line_with(&text, "120,000 keys");
    assert!(
        progress.ends_with("]  81,234 / 120,000 keys  68% · 12,000 keys/s · ~4s left"),
        "{progress}"
    );
    assert!(progress.trim_start().starts_with("[███"), "{progress}");
    // Paused: the rate is the copy's before the pause, and no time left is promised.
    let mut paused = s.clone();
    paused.policies[0].rebalance.as_mut().unwrap().step = Some("Paused".into());
    let paused = render(&paused, 100, false);
    let progress = line_with(&paused, "120,000 keys");
    assert!(
        progress.ends_with("]  81,234 / 120,000 keys  68% · 12,000 keys/s"),
        "{progress}"
    );
    assert!(line_with(&text, "advice").contains("primary is at 86% of 30Mi"));
    // The planner's estimate, each instance before → planned.
    assert_eq!(
        line_with(&text, "band:").trim(),
        "band: every instance within ±10 points of the 53% mean"
    );
    assert_eq!(
        line_with(&text, "bytes:").trim(),
        "bytes: planned 9.0Mi (12,000 keys; least to the band 8.0Mi)"
    );
    assert!(
        text.contains("primary 87% → 57% planned · secondary 20% → 50% planned"),
        "{text}"
    );

    // Done and measured: before → after, next to the plan.
    let b = s.policies[0]
        .rebalance
        .as_mut()
        .unwrap()
        .balance
        .as_mut()
        .unwrap();
    b.measured_bytes = Some((8 * MIB + MIB / 2) as i64);
    b.instances[0].used_bytes_after = Some((17 * MIB + MIB / 3) as i64);
    b.instances[1].used_bytes_after = Some((15 * MIB) as i64);
    let text = render(&s, 100, false);
    assert!(
        line_with(&text, "bytes:").ends_with("· measured 8.5Mi"),
        "{text}"
    );
    assert!(
        text.contains("primary 87% → 58% (planned 57%) · secondary 20% → 50% (planned 50%)"),
        "{text}"
    );
}

#[test]
fn shows_what_fills_each_instance() {
    let text = render(&healthy(), 100, false);
    assert_eq!(
        line_with(&text, "memory").trim(),
        "memory      primary: auth 11.7Mi 75% · order 3.9Mi 25%"
    );
    assert_eq!(
        line_with(&text, "secondary: menu").trim(),
        "secondary: menu 4.5Mi 75% · default 1.5Mi 25%"
    );
}

#[test]
fn renders_an_instance_without_capacity_among_the_unselected() {
    let mut s = healthy();
    let mut legacy = instance("legacy", "", InstancePhase::Degraded, 12.0);
    legacy.tier = None;
    legacy.capacity_bytes = None;
    legacy.used_percent = None;
    legacy.conditions = vec![cond(
        "WithinCapacity",
        "Unknown",
        "NoCapacity",
        "maxmemory is 0 and spec.capacity is not set",
        60,
    )];
    s.unselected_instances = vec![legacy];
    let text = render(&s, 100, false);
    println!("{text}");
    assert!(text.starts_with("namespace shop · 1 policy · 3 instances\n"));
    let block = text.split("Instances no policy selects\n").nth(1).unwrap();
    let legacy = line_with(block, "  legacy ");
    assert_eq!(&words(legacy)[..3], ["legacy", "—", "Degraded"]);
    let (bar, usage) = legacy.split_once(']').unwrap();
    assert_eq!(
        bar.split_once('[').unwrap().1.trim(),
        "no capacity",
        "{legacy}"
    );
    assert!(usage.starts_with("  12.0Mi used  93%"), "{legacy}");
    assert!(
        block.contains("legacy: WithinCapacity=Unknown NoCapacity: maxmemory is 0"),
        "{block}"
    );
}

#[test]
fn color_changes_nothing_but_escapes() {
    let mut s = healthy();
    s.policies[0].instances[0].phase = InstancePhase::Unreachable;
    s.policies[0].instances[0].conditions =
        vec![cond("Reachable", "False", "Timeout", "no answer", 5)];
    let plain = render(&s, 100, false);
    let colored = render(&s, 100, true);
    assert!(colored.contains("\x1b[31mUnreachable\x1b[0m"), "{colored}");
    let mut stripped = String::new();
    let mut chars = colored.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            for c in chars.by_ref() {
                if c == 'm' {
                    break;
                }
            }
        } else {
            stripped.push(c);
        }
    }
    assert_eq!(stripped, plain);
}

#[test]
fn narrow_terminals_wrap_the_header() {
    let text = render(&healthy(), 60, false);
    let header: Vec<&str> = text.lines().skip(2).take(2).collect();
    assert!(header.iter().all(|l| cols(l) <= 60), "{header:?}");
    assert!(
        header[0].starts_with("shop  Ready · routing v17"),
        "{header:?}"
    );
    assert!(
        header[1].starts_with("      "),
        "continuation is indented: {header:?}"
    );
}

#[test]
fn empty_namespaces_say_so() {
    let mut s = healthy();
    s.policies.clear();
    let text = render(&s, 100, false);
    assert!(text.contains("No CachePolicy and no RedisInstance in namespace shop."));
}

#[test]
fn messages_cannot_reach_the_terminal_as_escapes() {
    let mut s = healthy();
    s.policies[0].recommendations = vec!["evil \x1b]0;title\x07 advice".into()];
    let text = render(&s, 100, false);
    assert!(!text.contains('\x1b') && !text.contains('\x07'), "{text:?}");
    assert!(text.contains("evil ]0;title advice"), "{text}");
}

#[test]
fn number_formats() {
    assert_eq!(group(81_234), "81,234");
    assert_eq!(group(120_000), "120,000");
    assert_eq!(group(999), "999");
    assert_eq!(group(1_234_567), "1,234,567");
    assert_eq!(compact(950), "950");
    assert_eq!(compact(10_234), "10.2k");
    assert_eq!(compact(2_500_000), "2.5M");
    assert_eq!(share(100.0), "100%");
    assert_eq!(share(61.04), "61%");
    assert_eq!(share(0.01), "<1%");
    assert_eq!(share(99.99), ">99%");
    assert_eq!(format_ms(3_600_000), "1h");
    assert_eq!(format_ms(5_400_000), "1h30m");
    assert_eq!(format_ms(1500), "1500ms");
    assert_eq!(human_secs(125), "2m");
    assert_eq!(human_secs(59), "59s");
    assert_eq!(human_secs(3 * 86400), "3d");
}

#[test]
fn shows_where_replicated_categories_stand() {
    let mut s = healthy();
    s.policies[0].replication = vec![
        crate::api::cache_policy::CategoryReplicationStatus {
            category: "auth".into(),
            mode: "Sync".into(),
            replicated_slots: 16384,
            seeding_slots: 0,
            handover_slots: 100,
            unreplicated_slots: 0,
            replicas: vec!["secondary".into(), "tertiary".into()],
        },
        crate::api::cache_policy::CategoryReplicationStatus {
            category: "order".into(),
            mode: "Async".into(),
            replicated_slots: 0,
            seeding_slots: 8192,
            handover_slots: 0,
            unreplicated_slots: 8192,
            replicas: vec!["secondary".into()],
        },
    ];
    let text = render(&s, 140, false);
    assert_eq!(
        line_with(&text, "replicas").trim(),
        "replicas    auth Sync on secondary, tertiary: 16384 slots replicated, 100 moving to a new replica"
    );
    assert!(
        text.contains(
            "order Async on secondary: 0 slots replicated, 8192 seeding, 8192 without a replica"
        ),
        "{text}"
    );
    let colored = render(&s, 100, true);
    assert!(
        line_with(&colored, "order Async").contains("\u{1b}["),
        "a category not yet safe is highlighted\n{colored}"
    );
}
