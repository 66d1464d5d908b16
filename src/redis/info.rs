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
mod tests;
