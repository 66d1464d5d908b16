//! The applications: writers and readers speaking plain Redis (the `redis` crate) to the
//! sidecars, each operation through a random sidecar, every operation recorded for the checker.
//!
//! Each key has one writer, which runs its operations on it in sequence, so what a key held at
//! any moment is known exactly, up to operations whose outcome is unknown (an error or a
//! timeout: they may or may not have happened). Three kinds of keys, named after the user's
//! categories so that they spread over the tiers:
//! - **values** (`<prefix>w<writer>:v<n>`): `SET` (unique values; some with `GET`, some with
//!   `EX`), `DEL`, `EXPIRE`, `GET`; TTLs of 20 minutes or more, or the category's default, so
//!   that nothing expires during a run — the final reads check each TTL against what the
//!   writer set (`PEXPIRETIME`);
//! - **counters** (`<prefix>w<writer>:c<n>`): `SET` of a unique base, `INCR`, `DEL`, `GET`;
//! - **short** keys (`<prefix>w<writer>:t<n>`): `SET … PX` of 1.5–15 s, `GET`, `DEL`: the
//!   history checks that a value is gone once its TTL has run out, wherever it moved.
//!
//! After an operation with an unknown outcome (other than `-TRYAGAIN`, which the sidecar
//! answers for commands it did not send, or whose reply it had in hand and withheld) its
//! writer leaves the key alone for [`QUIET`]: the command may still sit in a stopped Redis's
//! input buffer, and run after a later write of the same key sent on another connection (any
//! client that retries after a timeout sees that reordering, with or without a sidecar). The
//! checker still counts every error as an unknown outcome.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use redis::Value;
use redis::aio::MultiplexedConnection;
use redis_fleet::routing::Resolver;
use redis_fleet::routing::table::TtlRules;

use crate::fleet::{Clock, wall_ms};
use crate::history::{Expiry, Outcome, Read, State, Write};
use crate::rng::Rng;

/// How long a writer leaves a key alone after an operation with an unknown outcome: longer
/// than the longest pause of a redis-server plus the sidecars' request timeouts.
pub const QUIET: Duration = Duration::from_secs(15);
/// A value may be served this long after its expiry (clock granularity), or expire this much
/// earlier (the protocol allows one round trip of a move).
pub const TTL_LATE_MS: u64 = 10;
/// See [`TTL_LATE_MS`].
pub const TTL_EARLY_MS: u64 = 1_000;
/// An answer slower than this is counted (a sidecar should answer within its request timeout,
/// 1–2 s here, plus the guard's 2 s wait for keys in transit).
pub const SLOW: Duration = Duration::from_secs(5);

const VALUE_PREFIXES: &[&str] = &[
    "auth:",
    "session:",
    "order:",
    "user:",
    "menu:",
    "restaurant:",
    "ml:",
    "analytics:history:",
    "misc:",
];
const COUNTER_PREFIXES: &[&str] = &["auth:", "order:", "user:", "ml:", "misc:"];
const SHORT_PREFIXES: &[&str] = &["analytics:live:", "notification:", "menu:"];

/// What a key is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// SET / DEL / EXPIRE / GET with long TTLs.
    Value,
    /// SET base / INCR / DEL / GET.
    Counter,
    /// SET PX (seconds) / DEL / GET.
    Short,
}

/// One key of the run.
#[derive(Debug, Clone)]
pub struct KeySpec {
    /// The key.
    pub name: String,
    /// What it is for.
    pub kind: Kind,
    /// Its category's TTL rules.
    pub rules: TtlRules,
    /// The writer that owns it.
    pub owner: usize,
}

/// The keys of `writers` writers, with their categories' TTL rules from `resolver`.
pub fn keyspace(writers: usize, resolver: &Resolver) -> Vec<KeySpec> {
    let mut keys = Vec::new();
    for w in 0..writers {
        let mut add = |prefixes: &[&str], tag: &str, per: usize, kind: Kind| {
            for p in prefixes {
                for n in 0..per {
                    let name = format!("{p}w{w}:{tag}{n}");
                    let category = resolver.category_of(name.as_bytes());
                    keys.push(KeySpec {
                        rules: resolver.categories()[usize::from(category)].ttl,
                        name,
                        kind,
                        owner: w,
                    });
                }
            }
        };
        add(VALUE_PREFIXES, "v", 10, Kind::Value);
        add(COUNTER_PREFIXES, "c", 3, Kind::Counter);
        add(SHORT_PREFIXES, "t", 5, Kind::Short);
    }
    keys
}

/// What the writer knows a key holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Known {
    /// Exactly this.
    Certain(State),
    /// An operation with an unknown outcome came last.
    Uncertain,
}

/// When the writer expects a key to expire (Unix ms).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TtlExpect {
    /// Not known (an operation with an unknown outcome), or not checked (short keys).
    Unknown,
    /// The key is absent.
    Absent,
    /// No expiry.
    Persistent,
    /// Between `lo` and `hi`.
    Window {
        /// Earliest.
        lo: u64,
        /// Latest.
        hi: u64,
    },
    /// At `lo` or later, extended by reads toward `max` ms after the latest read (an
    /// adaptive category).
    Adaptive {
        /// Earliest.
        lo: u64,
        /// The category's `ttl.max`.
        max: u64,
    },
}

/// What a failed operation said.
#[derive(Debug, Clone)]
pub struct Failure {
    /// The error code (`TRYAGAIN`, `UNAVAILABLE`, …), `timeout` or `connection`.
    pub kind: String,
    /// The whole message.
    pub text: String,
}

impl Failure {
    /// Errors a client is expected to retry.
    pub fn retryable(&self) -> bool {
        matches!(
            self.kind.as_str(),
            "TRYAGAIN" | "UNAVAILABLE" | "LOADING" | "timeout" | "connection"
        )
    }

    /// Errors the faults may cause that a client must not retry blindly: a retryable one, or
    /// `-NOREPLICA` (a `sync` write ran on its owner, but its replica — stopped longer than
    /// the request timeout, before the operator declared it unreachable — did not take it;
    /// `docs/replication.md`). Its outcome counts as unknown: the owner may die before the
    /// replica has it.
    pub fn expected(&self) -> bool {
        self.retryable() || self.kind == "NOREPLICA"
    }

    fn of(e: &redis::RedisError) -> Failure {
        let kind = if e.is_timeout() {
            "timeout".to_owned()
        } else if e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal() {
            "connection".to_owned()
        } else {
            e.code().unwrap_or("other").to_owned()
        };
        Failure {
            kind,
            text: e.to_string(),
        }
    }
}

/// One client connection to one sidecar, opened again after a timeout or a broken connection.
pub struct Client {
    port: u16,
    conn: Option<MultiplexedConnection>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Client({})", self.port)
    }
}

impl Client {
    /// A client of the sidecar on `port` (connects on first use).
    pub fn new(port: u16) -> Client {
        Client { port, conn: None }
    }

    async fn connection(&mut self) -> Result<&mut MultiplexedConnection, Failure> {
        if self.conn.is_none() {
            let client = redis::Client::open(format!("redis://127.0.0.1:{}", self.port))
                .map_err(|e| Failure::of(&e))?;
            let config = redis::AsyncConnectionConfig::new()
                .set_connection_timeout(Some(Duration::from_secs(2)))
                .set_response_timeout(Some(Duration::from_secs(10)));
            let conn = client
                .get_multiplexed_async_connection_with_config(&config)
                .await
                .map_err(|e| Failure {
                    kind: "connection".into(),
                    text: e.to_string(),
                })?;
            self.conn = Some(conn);
        }
        self.conn.as_mut().ok_or_else(|| Failure {
            kind: "connection".into(),
            text: "no connection".into(),
        })
    }

    fn failed(&mut self, e: &redis::RedisError) -> Failure {
        let f = Failure::of(e);
        if matches!(f.kind.as_str(), "timeout" | "connection") {
            // A late reply must never be taken for the next request's.
            self.conn = None;
        }
        f
    }

    /// Runs one command.
    pub async fn run(&mut self, cmd: &redis::Cmd) -> Result<Value, Failure> {
        let conn = self.connection().await?;
        match cmd.query_async::<Value>(conn).await {
            Ok(v) => Ok(v),
            Err(e) => Err(self.failed(&e)),
        }
    }

    /// Runs a pipeline; each reply may be an error.
    pub async fn pipeline(&mut self, pipe: &redis::Pipeline) -> Result<Vec<Value>, Failure> {
        let conn = self.connection().await?;
        match pipe.query_async::<Vec<Value>>(conn).await {
            Ok(v) => Ok(v),
            Err(e) => Err(self.failed(&e)),
        }
    }
}

/// What a bulk reply holds, as the history's state.
pub fn state_of(v: &Value) -> Option<State> {
    match v {
        Value::Nil => Some(State::Absent),
        Value::BulkString(b) => Some(State::Value(String::from_utf8_lossy(b).into_owned())),
        Value::SimpleString(s) => Some(State::Value(s.clone())),
        Value::Int(n) => Some(State::Value(n.to_string())),
        _ => None,
    }
}

/// What one client task recorded.
#[derive(Debug, Default)]
pub struct Log {
    /// Writes, by key index, in the writer's order.
    pub writes: Vec<(usize, Write)>,
    /// Reads, by key index.
    pub reads: Vec<(usize, Read)>,
    /// For each key a writer owns: what it knows the key holds and when it should expire.
    pub last: Vec<(usize, Known, TtlExpect)>,
    /// Operations sent.
    pub ops: u64,
    /// Operations that took longer than [`SLOW`] to be answered (or to time out).
    pub slow: u64,
    /// Examples of those (the writers' only): operation, key, path, sidecar, time, reply.
    pub slow_examples: Vec<String>,
    /// Errors by kind.
    pub errors: BTreeMap<String, u64>,
    /// Errors no client should see (neither retryable, nor a timeout, nor `-NOREPLICA`).
    pub fatal: u64,
    /// Examples of those.
    pub fatal_examples: Vec<String>,
}

impl Log {
    fn error(&mut self, key: &str, op: &str, via: usize, f: &Failure) {
        *self.errors.entry(f.kind.clone()).or_default() += 1;
        if !f.expected() {
            self.fatal += 1;
            if self.fatal_examples.len() < 10 {
                self.fatal_examples
                    .push(format!("{op} {key} via sidecar {via}: {}", f.text));
            }
        }
    }

    /// Adds another task's log.
    pub fn merge(&mut self, other: Log) {
        self.writes.extend(other.writes);
        self.reads.extend(other.reads);
        self.last.extend(other.last);
        self.ops += other.ops;
        self.slow += other.slow;
        for e in other.slow_examples {
            if self.slow_examples.len() < 10 {
                self.slow_examples.push(e);
            }
        }
        for (k, n) in other.errors {
            *self.errors.entry(k).or_default() += n;
        }
        self.fatal += other.fatal;
        for e in other.fatal_examples {
            if self.fatal_examples.len() < 10 {
                self.fatal_examples.push(e);
            }
        }
    }
}

/// What the clients share.
#[derive(Debug)]
pub struct Shared {
    /// The keys.
    pub keys: Vec<KeySpec>,
    /// The sidecars' ports.
    pub ports: Vec<u16>,
    /// The test's clock.
    pub clock: Clock,
    /// Set to end the run.
    pub stop: AtomicBool,
}

/// One timed operation.
struct Timed {
    start: u64,
    end: u64,
    wall_start: u64,
    wall_end: u64,
    reply: Result<Value, Failure>,
}

/// Runs `cmd` through `client`, counting it in `log` (and as slow when it was).
async fn timed(clock: &Clock, log: &mut Log, client: &mut Client, cmd: &redis::Cmd) -> Timed {
    timed_reply(clock, log, client.run(cmd)).await
}

/// Awaits `reply`, timed and counted in `log` (and as slow when it was).
async fn timed_reply(
    clock: &Clock,
    log: &mut Log,
    reply: impl Future<Output = Result<Value, Failure>>,
) -> Timed {
    let (start, wall_start) = (clock.now(), wall_ms());
    let reply = reply.await;
    let end = clock.now();
    log.ops += 1;
    if end - start > SLOW.as_nanos() as u64 {
        log.slow += 1;
    }
    Timed {
        start,
        end,
        wall_start,
        wall_end: wall_ms(),
        reply,
    }
}

/// A writer's view of one of its keys.
#[derive(Debug)]
struct Owned {
    known: Known,
    ttl: TtlExpect,
    quiet_until: u64,
}

/// The TTL a write gives the key, `ms` asked (`None`: none asked, so the default).
fn expect(rules: &TtlRules, ms: Option<u64>, t: &Timed) -> TtlExpect {
    let cap = |v: u64| rules.max_ms.map_or(v, |m| v.min(m));
    let Some(ttl) = ms.or(rules.default_ms).map(cap) else {
        return TtlExpect::Persistent;
    };
    match (rules.adaptive, rules.max_ms) {
        (true, Some(max)) => TtlExpect::Adaptive {
            lo: t.wall_start + ttl,
            max,
        },
        _ => TtlExpect::Window {
            lo: t.wall_start + ttl,
            hi: t.wall_end + ttl,
        },
    }
}

/// Runs writer `w` until the run stops: each operation on one of its keys, through a random
/// sidecar.
pub async fn writer(shared: Arc<Shared>, w: usize, mut rng: Rng) -> Log {
    let clock = shared.clock;
    let mine: Vec<usize> = (0..shared.keys.len())
        .filter(|k| shared.keys[*k].owner == w)
        .collect();
    let mut own: BTreeMap<usize, Owned> = mine
        .iter()
        .map(|k| {
            (
                *k,
                Owned {
                    known: Known::Certain(State::Absent),
                    ttl: TtlExpect::Absent,
                    quiet_until: 0,
                },
            )
        })
        .collect();
    let mut clients: Vec<Client> = shared.ports.iter().map(|p| Client::new(*p)).collect();
    let mut log = Log::default();
    let mut seq: u64 = 0;
    while !shared.stop.load(Ordering::SeqCst) {
        seq += 1;
        let k = *rng.pick(&mine);
        let via = rng.range(0, clients.len() as u64) as usize;
        let spec = &shared.keys[k];
        let key = spec.name.as_str();
        let st = own.get_mut(&k).expect("an owned key");
        let client = &mut clients[via];
        let quiet = st.quiet_until > clock.now();
        let roll = rng.range(0, 100);
        if quiet || roll < 40 {
            // GET: a read like any other.
            let t = timed(&clock, &mut log, client, redis::cmd("GET").arg(key)).await;
            record_read(&mut log, k, key, via, &t, None);
        } else {
            let value = format!("w{w}-{seq}");
            let op = match (spec.kind, &st.known) {
                (Kind::Value, _) => match roll {
                    40..60 => Op::Set {
                        ex: None,
                        get: false,
                    },
                    60..70 => Op::Set {
                        ex: None,
                        get: true,
                    },
                    70..80 => Op::Set {
                        ex: Some(rng.range(1_200, 7_200)),
                        get: rng.chance(50),
                    },
                    80..90 => Op::Expire(rng.range(1_200, 7_200)),
                    _ => Op::Del,
                },
                (Kind::Counter, Known::Certain(State::Value(n))) if roll < 90 => {
                    Op::Incr(n.parse().unwrap_or_default())
                }
                (Kind::Counter, _) if roll < 95 => Op::Base,
                (Kind::Counter, _) => Op::Del,
                (Kind::Short, _) if roll < 92 => Op::Short(rng.range(1_500, 15_000)),
                (Kind::Short, _) => Op::Del,
            };
            let mut cmd = redis::cmd(op.name());
            cmd.arg(key);
            let after = match op {
                Op::Set { ex, get } => {
                    cmd.arg(&value);
                    if let Some(s) = ex {
                        cmd.arg("EX").arg(s);
                    }
                    if get {
                        cmd.arg("GET");
                    }
                    Some(State::Value(value.clone()))
                }
                Op::Base => {
                    let base = (w as u64 + 1) * 1_000_000_000_000 + seq * 1_000_000;
                    cmd.arg(base);
                    Some(State::Value(base.to_string()))
                }
                Op::Short(ms) => {
                    cmd.arg(&value).arg("PX").arg(ms);
                    Some(State::Value(value.clone()))
                }
                Op::Incr(n) => Some(State::Value((n + 1).to_string())),
                Op::Del => Some(State::Absent),
                Op::Expire(s) => {
                    cmd.arg(s);
                    None
                }
            };
            // The same write as a plain command, inside MULTI … EXEC, or from a script (the
            // ones whose TTL rules the sidecar leaves to Redis: scripts get no default TTL):
            // on the replicated `auth` category each takes another path to the replica.
            let transport = match rng.range(0, 100) {
                0..15 => Transport::Multi,
                15..30 if matches!(op, Op::Del | Op::Expire(_) | Op::Incr(_)) => Transport::Script,
                _ => Transport::Plain,
            };
            let t = match transport {
                Transport::Plain => timed(&clock, &mut log, client, &cmd).await,
                Transport::Multi => {
                    // Sent by hand: redis-rs reads an EXEC answered with an error (a
                    // -TRYAGAIN, an unavailable instance) as a reply of the wrong type.
                    let mut pipe = redis::pipe();
                    pipe.cmd("MULTI")
                        .add_command(cmd.clone())
                        .cmd("EXEC")
                        .ignore_errors();
                    let reply = client.pipeline(&pipe);
                    let mut t =
                        timed_reply(&clock, &mut log, async { reply.await.map(Value::Array) })
                            .await;
                    t.reply = t.reply.and_then(|v| {
                        let exec = match v {
                            Value::Array(mut replies) if replies.len() == 3 => replies.pop(),
                            _ => None,
                        };
                        match exec.map(Value::extract_error) {
                            Some(Ok(Value::Array(mut items))) if items.len() == 1 => {
                                Ok(items.remove(0))
                            }
                            Some(Err(e)) => Err(Failure::of(&e)),
                            other => Err(Failure {
                                kind: "bad reply".into(),
                                text: format!("EXEC answered {other:?}"),
                            }),
                        }
                    });
                    t
                }
                Transport::Script => {
                    let mut script = redis::cmd("EVAL");
                    script
                        .arg("return redis.call(ARGV[1], KEYS[1], unpack(ARGV, 2))")
                        .arg(1)
                        .arg(key)
                        .arg(op.name());
                    if let Op::Expire(s) = op {
                        script.arg(s);
                    }
                    timed(&clock, &mut log, client, &script).await
                }
            };
            if t.end - t.start > SLOW.as_nanos() as u64 && log.slow_examples.len() < 10 {
                log.slow_examples.push(format!(
                    "{} {key} ({transport:?}) via sidecar {via}: answered after {} ms: {:?}",
                    op.name(),
                    (t.end - t.start) / 1_000_000,
                    t.reply
                ));
            }
            let outcome = if t.reply.is_ok() {
                Outcome::Ok
            } else {
                Outcome::Unknown
            };
            // What the reply says about the key before the operation.
            let before: Option<State> = match (&op, &t.reply) {
                (Op::Set { get: true, .. }, Ok(v)) => state_of(v),
                // INCR of an absent key answers 1 (a counter's base is never 0).
                (Op::Incr(_), Ok(Value::Int(1))) => Some(State::Absent),
                (Op::Incr(_), Ok(Value::Int(m))) => Some(State::Value((m - 1).to_string())),
                (Op::Del | Op::Expire(_), Ok(Value::Int(n))) => Some(if *n > 0 {
                    State::Present
                } else {
                    State::Absent
                }),
                _ => None,
            };
            if let Some(saw) = before {
                log.reads.push((
                    k,
                    Read {
                        start: t.start,
                        end: t.end,
                        saw,
                        via,
                        last: false,
                        before: Some(t.start),
                    },
                ));
            }
            // What it left: an INCR's reply says exactly.
            let after = match (&op, &t.reply) {
                (Op::Incr(_), Ok(Value::Int(m))) => Some(State::Value(m.to_string())),
                _ => after,
            };
            if let Some(after) = after.clone() {
                let quiet = QUIET.as_nanos() as u64;
                let expires = match op {
                    Op::Short(ms) => Some(Expiry {
                        earliest: t.start + ms * 1_000_000,
                        // An unknown outcome may still run until the key's quiet time ends.
                        latest: t.end
                            + ms * 1_000_000
                            + if outcome == Outcome::Ok { 0 } else { quiet },
                    }),
                    _ => None,
                };
                log.writes.push((
                    k,
                    Write {
                        start: t.start,
                        end: t.end,
                        after,
                        outcome,
                        via,
                        expires,
                        dropped: false,
                    },
                ));
            }
            match &t.reply {
                Ok(reply) => {
                    if let Some(after) = after {
                        st.known = Known::Certain(after);
                    }
                    st.ttl = match op {
                        Op::Set { ex, .. } => expect(&spec.rules, ex.map(|s| s * 1000), &t),
                        Op::Base => expect(&spec.rules, None, &t),
                        Op::Short(_) => TtlExpect::Unknown,
                        Op::Del => TtlExpect::Absent,
                        // An INCR that created the key: the category's default, set with it.
                        Op::Incr(_) if matches!(reply, Value::Int(1)) => {
                            expect(&spec.rules, None, &t)
                        }
                        Op::Incr(_) => st.ttl,
                        Op::Expire(s) => {
                            if matches!(reply, Value::Int(1)) {
                                expect(&spec.rules, Some(s * 1000), &t)
                            } else {
                                st.ttl
                            }
                        }
                    };
                    // A reply of the wrong shape (the sidecar answering for another command).
                    let shape = match op {
                        Op::Set { get: false, .. } | Op::Base | Op::Short(_) => {
                            matches!(reply, Value::Okay)
                        }
                        Op::Set { get: true, .. } => {
                            matches!(reply, Value::Nil | Value::BulkString(_))
                        }
                        _ => matches!(reply, Value::Int(_)),
                    };
                    if !shape {
                        let f = Failure {
                            kind: "bad reply".into(),
                            text: format!("{reply:?}"),
                        };
                        log.error(key, op.name(), via, &f);
                    }
                }
                Err(f) => {
                    log.error(key, op.name(), via, f);
                    st.known = Known::Uncertain;
                    st.ttl = TtlExpect::Unknown;
                    // A command answered -TRYAGAIN was not sent, ran nowhere (the guard's
                    // answer), or ran already (a reply the sidecar withheld): nothing of it
                    // can run later.
                    if f.kind != "TRYAGAIN" {
                        st.quiet_until = t.end + QUIET.as_nanos() as u64;
                    }
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(rng.range(2, 6))).await;
    }
    for (k, st) in own {
        log.last.push((k, st.known, st.ttl));
    }
    log
}

/// How a writer's operation travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Transport {
    Plain,
    /// Alone inside `MULTI … EXEC`.
    Multi,
    /// From `EVAL`.
    Script,
}

/// A writer's operation.
#[derive(Debug, Clone, Copy)]
enum Op {
    /// SET of a unique value, with `EX` seconds, with `GET`.
    Set { ex: Option<u64>, get: bool },
    /// SET of a counter's unique base.
    Base,
    /// SET … PX ms.
    Short(u64),
    /// INCR of a counter known to hold this.
    Incr(i64),
    /// DEL.
    Del,
    /// EXPIRE seconds.
    Expire(u64),
}

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::Set { .. } | Op::Base | Op::Short(_) => "SET",
            Op::Incr(_) => "INCR",
            Op::Del => "DEL",
            Op::Expire(_) => "EXPIRE",
        }
    }
}

fn record_read(log: &mut Log, k: usize, key: &str, via: usize, t: &Timed, before: Option<u64>) {
    match &t.reply {
        Ok(v) => match state_of(v) {
            Some(saw) => log.reads.push((
                k,
                Read {
                    start: t.start,
                    end: t.end,
                    saw,
                    via,
                    last: false,
                    before,
                },
            )),
            None => log.error(
                key,
                "GET",
                via,
                &Failure {
                    kind: "bad reply".into(),
                    text: format!("{v:?}"),
                },
            ),
        },
        Err(f) => log.error(key, "GET", via, f),
    }
}

/// Runs a reader until the run stops: GETs of any key through any sidecar.
pub async fn reader(shared: Arc<Shared>, mut rng: Rng) -> Log {
    let clock = shared.clock;
    let mut clients: Vec<Client> = shared.ports.iter().map(|p| Client::new(*p)).collect();
    let mut log = Log::default();
    while !shared.stop.load(Ordering::SeqCst) {
        let k = rng.range(0, shared.keys.len() as u64) as usize;
        let via = rng.range(0, clients.len() as u64) as usize;
        let key = shared.keys[k].name.as_str();
        let t = timed(
            &clock,
            &mut log,
            &mut clients[via],
            redis::cmd("GET").arg(key),
        )
        .await;
        record_read(&mut log, k, key, via, &t, None);
        tokio::time::sleep(Duration::from_millis(rng.range(3, 8))).await;
    }
    log
}

/// A final read of one key through one sidecar: what it held and its expiry (Unix ms; -1 none).
#[derive(Debug, Clone)]
pub struct FinalRead {
    /// Key index.
    pub key: usize,
    /// Sidecar.
    pub via: usize,
    /// The value.
    pub saw: State,
    /// `PEXPIRETIME`.
    pub expire_at: i64,
    /// When the read ended (Unix ms).
    pub wall: u64,
}

/// Reads every key through every sidecar (GET + PEXPIRETIME), after the faults; keys that a
/// sidecar could not read within ten tries are returned as unreadable (with the last error).
pub async fn final_reads(shared: &Shared) -> (Vec<(usize, Read)>, Vec<FinalRead>, Vec<String>) {
    let clock = shared.clock;
    let mut reads = Vec::new();
    let mut finals = Vec::new();
    let mut unreadable = Vec::new();
    let indices: Vec<usize> = (0..shared.keys.len()).collect();
    for (via, port) in shared.ports.iter().enumerate() {
        let mut client = Client::new(*port);
        for chunk in indices.chunks(50) {
            let mut tries = 0;
            loop {
                tries += 1;
                let mut pipe = redis::pipe();
                pipe.ignore_errors();
                for k in chunk {
                    let key = &shared.keys[*k].name;
                    pipe.cmd("GET").arg(key).cmd("PEXPIRETIME").arg(key);
                }
                let start = clock.now();
                let replies = client.pipeline(&pipe).await;
                let end = clock.now();
                let wall = wall_ms();
                let parsed: Result<Vec<(State, i64)>, String> = match replies {
                    Ok(values) => values
                        .chunks(2)
                        .map(|pair| match (state_of(&pair[0]), &pair[1]) {
                            (Some(s), Value::Int(at)) => Ok((s, *at)),
                            (_, other) => Err(format!("{:?} / {other:?}", pair[0])),
                        })
                        .collect(),
                    Err(f) => Err(f.text),
                };
                match parsed {
                    Ok(items) => {
                        for (k, (saw, at)) in chunk.iter().zip(items) {
                            reads.push((
                                *k,
                                Read {
                                    start,
                                    end,
                                    saw: saw.clone(),
                                    via,
                                    last: true,
                                    before: None,
                                },
                            ));
                            finals.push(FinalRead {
                                key: *k,
                                via,
                                saw,
                                expire_at: at,
                                wall,
                            });
                        }
                        break;
                    }
                    Err(e) if tries >= 10 => {
                        unreadable.extend(
                            chunk.iter().map(|k| {
                                format!("{} via sidecar {via}: {e}", shared.keys[*k].name)
                            }),
                        );
                        break;
                    }
                    Err(_) => tokio::time::sleep(Duration::from_secs(1)).await,
                }
            }
        }
    }
    (reads, finals, unreadable)
}

/// TTLs that the final reads contradict.
#[derive(Debug, Default)]
pub struct TtlReport {
    /// Keys read with the value their writer left whose expiry could be checked.
    pub checked: u64,
    /// No expiry where one was set.
    pub lost: u64,
    /// Expiring later than set (beyond [`TTL_LATE_MS`]).
    pub extended: u64,
    /// Expiring earlier than set (beyond [`TTL_EARLY_MS`]).
    pub shortened: u64,
    /// Examples.
    pub examples: Vec<String>,
}

impl TtlReport {
    /// Violations.
    pub fn violations(&self) -> u64 {
        self.lost + self.extended + self.shortened
    }
}

/// Checks each final read of a key holding what its writer last left against the expiry the
/// writer set.
pub fn check_ttls(
    keys: &[KeySpec],
    last: &BTreeMap<usize, (Known, TtlExpect)>,
    finals: &[FinalRead],
) -> TtlReport {
    let mut report = TtlReport::default();
    for f in finals {
        let Some((Known::Certain(state), expect)) = last.get(&f.key) else {
            continue;
        };
        if *state != f.saw || f.saw == State::Absent {
            continue;
        }
        let (lo, hi) = match *expect {
            TtlExpect::Window { lo, hi } => (lo, hi),
            TtlExpect::Adaptive { lo, max } => (lo, f.wall + max),
            // Every category of the shop policy has a default TTL: nothing to check here.
            TtlExpect::Persistent | TtlExpect::Unknown | TtlExpect::Absent => continue,
        };
        report.checked += 1;
        let at = f.expire_at;
        let what = if at < 0 {
            report.lost += 1;
            "no expiry"
        } else if at as u64 > hi + TTL_LATE_MS {
            report.extended += 1;
            "extended"
        } else if (at as u64) + TTL_EARLY_MS < lo {
            report.shortened += 1;
            "shortened"
        } else {
            continue;
        };
        if report.examples.len() < 10 {
            report.examples.push(format!(
                "{} via sidecar {}: expires at {at}, expected {lo}..{hi}: {what}",
                keys[f.key].name, f.via
            ));
        }
    }
    report
}
