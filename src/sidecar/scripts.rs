//! Application scripts, wrapped (pure). `EVAL` bodies go to the instances behind a prologue
//! that replaces `redis.call` and `redis.pcall` for the script: a call of an administrative
//! command (FLUSHALL, FLUSHDB, SWAPDB, MIGRATE, …) or with an argument under the fleet's
//! reserved `redisfleet:` prefix fails as it would through the sidecar, instead of running
//! on the instance. Clients keep using the SHA1 of their own script: the sidecar remembers
//! which wrapped body each one stands for.
//!
//! A script that reaches the real API another way (through `_G`) is not stopped: the check is
//! a guard against mistakes in the application's scripts, not a sandbox.

use std::collections::HashMap;
use std::sync::Mutex;

use bytes::{BufMut, Bytes, BytesMut};

/// Commands a script may not run through the sidecar (those Redis allows in scripts at all).
const REFUSED: &[&str] = &[
    "flushall",
    "flushdb",
    "swapdb",
    "move",
    "migrate",
    "select",
    "restore-asking",
    "pfdebug",
    "pfselftest",
    "object",
    "lastsave",
    "waitaof",
    "wait",
];

/// The prologue put before every application script.
fn prologue() -> String {
    let refused: Vec<String> = REFUSED.iter().map(|c| format!("[\"{c}\"]=true")).collect();
    format!(
        "local redis = (function(real) \
local refused = {{{}}} \
local function check(...) \
local name = string.lower(tostring((select(1, ...)))) \
if refused[name] then return 'ERR redis-fleet does not run ' .. name .. ' from scripts' end \
for i = 1, select('#', ...) do \
local a = select(i, ...) \
if type(a) == 'string' and string.sub(a, 1, 11) == 'redisfleet:' then \
return \"ERR keys starting with 'redisfleet:' are reserved for redis-fleet\" end \
end \
return nil end \
local t = setmetatable({{}}, {{__index = real}}) \
t.call = function(...) local e = check(...) if e then error({{err = e}}) end return real.call(...) end \
t.pcall = function(...) local e = check(...) if e then return {{err = e}} end return real.pcall(...) end \
return t end)(redis) ",
        refused.join(",")
    )
}

/// `body` behind the prologue; a first line `#!lua …` (script flags) stays first.
pub fn wrap(body: &[u8]) -> Bytes {
    behind(body, &prologue())
}

/// `body` behind `prologue` (one line, so the script's own line numbers in errors are off by
/// one per prologue: one, or two behind the recorder); a first line `#!lua …` (script flags)
/// stays first.
fn behind(body: &[u8], prologue: &str) -> Bytes {
    let mut out = BytesMut::with_capacity(body.len() + prologue.len() + 1);
    let rest = if body.starts_with(b"#!") {
        let end = body
            .iter()
            .position(|&b| b == b'\n')
            .map_or(body.len(), |i| i + 1);
        out.put_slice(&body[..end]);
        if end == body.len() {
            out.put_u8(b'\n');
        }
        &body[end..]
    } else {
        body
    };
    out.put_slice(prologue.as_bytes());
    out.put_u8(b'\n');
    out.put_slice(rest);
    out.freeze()
}

/// Whether `body` declares with its flags that it writes nothing (`#!lua flags=no-writes`).
pub fn declares_no_writes(body: &[u8]) -> bool {
    body.starts_with(b"#!")
        && body
            .split(|&b| b == b'\n')
            .next()
            .is_some_and(|line| line.windows(9).any(|w| w == b"no-writes"))
}

/// The recorder put before a (wrapped) script that writes a replicated category: it takes the
/// last argument off `ARGV` — the name of a set the sidecar appended — and adds to that set
/// every key a write command of the script named (`COMMAND GETKEYS`), declared in `KEYS` or
/// not: queues such as BullMQ build job keys from a prefix inside their scripts. The write
/// script that runs right after the script reads the set (`redis::protocol::replica`). The set
/// is written only after the script's first write: a script that has written nothing yet can
/// still be stopped with `SCRIPT KILL`.
fn recorder() -> &'static str {
    static RECORDER: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    RECORDER.get_or_init(|| {
        let mut writes: Vec<String> = super::command::commands()
            .iter()
            .filter(|c| c.write || c.subcommands.iter().any(|s| s.write))
            .map(|c| format!("[\"{}\"]=true", c.name))
            .collect();
        writes.sort();
        format!(
            "local __redisfleet_written = table.remove(ARGV) \
local redis = (function(real) \
local writes = {{{}}} \
local expiring = false \
local function record(...) \
if not writes[string.lower(tostring((select(1, ...))))] then return end \
local ok, keys = pcall(real.call, 'COMMAND', 'GETKEYS', ...) \
if not ok or type(keys) ~= 'table' then return end \
for i = 1, #keys do real.call('SADD', __redisfleet_written, keys[i]) end \
if not expiring then expiring = true real.call('PEXPIRE', __redisfleet_written, 120000) end \
end \
local t = setmetatable({{}}, {{__index = real}}) \
t.call = function(...) local r = real.call(...) record(...) return r end \
t.pcall = function(...) local r = real.pcall(...) record(...) return r end \
return t end)(redis)",
            writes.join(",")
        )
    })
}

/// A wrapped script's body with the [`recorder`] before it.
pub fn recording(wrapped: &[u8]) -> Bytes {
    behind(wrapped, recorder())
}

/// The SHA1 of `body` in lower-case hex, as Redis names scripts.
pub fn sha1_hex(body: &[u8]) -> String {
    sha1_smol::Sha1::from(body).digest().to_string()
}

/// How many scripts a sidecar remembers (an application has a handful).
const CAPACITY: usize = 10_000;

/// The scripts this sidecar has seen: the client's SHA1 → the wrapped body.
#[derive(Debug, Default)]
pub struct ScriptCache {
    scripts: Mutex<HashMap<String, Bytes>>,
}

impl ScriptCache {
    /// Remembers `body` and returns its SHA1 and its wrapped form.
    pub fn learn(&self, body: &[u8]) -> (String, Bytes) {
        let sha = sha1_hex(body);
        let wrapped = wrap(body);
        let mut map = self.scripts.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= CAPACITY && !map.contains_key(&sha) {
            map.clear();
        }
        map.insert(sha.clone(), wrapped.clone());
        (sha, wrapped)
    }

    /// The wrapped body of the script with SHA1 `sha` (any case), if this sidecar saw it.
    pub fn wrapped(&self, sha: &[u8]) -> Option<Bytes> {
        let key = String::from_utf8_lossy(sha).to_ascii_lowercase();
        let map = self.scripts.lock().unwrap_or_else(|e| e.into_inner());
        map.get(&key).cloned()
    }

    /// Forgets every script (`SCRIPT FLUSH`).
    pub fn clear(&self) {
        let mut map = self.scripts.lock().unwrap_or_else(|e| e.into_inner());
        map.clear();
    }
}

/// An `EVAL`/`EVALSHA` (and their `_RO` forms) as it goes to an instance: the body wrapped,
/// an `EVALSHA` of a known script turned into an `EVAL` of its wrapped body; `None` for an
/// `EVALSHA` of a script this sidecar never saw (answer `NOSCRIPT`: clients then send the
/// body). Other commands are returned unchanged.
pub fn rewrite(cache: &ScriptCache, args: &[Bytes]) -> Option<Vec<Bytes>> {
    let Some(name) = args.first() else {
        return Some(args.to_vec());
    };
    let upper = name.to_ascii_uppercase();
    let ro = upper.ends_with(b"_RO");
    let mut out = args.to_vec();
    match upper.as_slice() {
        b"EVAL" | b"EVAL_RO" if args.len() > 1 => {
            out[1] = cache.learn(&args[1]).1;
        }
        b"EVALSHA" | b"EVALSHA_RO" if args.len() > 1 => {
            let wrapped = cache.wrapped(&args[1])?;
            out[0] = Bytes::from_static(if ro { b"EVAL_RO" } else { b"EVAL" });
            out[1] = wrapped;
        }
        _ => {}
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &[&str]) -> Vec<Bytes> {
        s.iter().map(|a| Bytes::from(a.to_string())).collect()
    }

    #[test]
    fn flags_stay_on_the_first_line() {
        let w = wrap(b"#!lua flags=no-writes\nreturn 1");
        assert!(w.starts_with(b"#!lua flags=no-writes\nlocal redis"));
        assert!(w.ends_with(b"\nreturn 1"));
        let w = wrap(b"return 1");
        assert!(w.starts_with(b"local redis"));
    }

    #[test]
    fn the_recorder_goes_first_after_the_flags() {
        let wrapped = wrap(b"#!lua flags=allow-oom\nreturn 1");
        let r = recording(&wrapped);
        assert!(r.starts_with(b"#!lua flags=allow-oom\nlocal __redisfleet_written"));
        // The application's guard wraps the recorder: its checks run first.
        let text = String::from_utf8_lossy(&r);
        let recorder_at = text.find("__redisfleet_written").unwrap();
        let guard_at = text.find("local refused").unwrap();
        assert!(recorder_at < guard_at);
        assert!(r.ends_with(b"\nreturn 1"));
        // Every write command is listed, no read.
        assert!(text.contains("[\"hset\"]=true") && text.contains("[\"lmove\"]=true"));
        assert!(!text.contains("[\"get\"]=true"));
    }

    #[test]
    fn no_writes_is_read_from_the_flags_line_only() {
        assert!(declares_no_writes(
            b"#!lua flags=no-writes,allow-stale\nreturn 1"
        ));
        assert!(!declares_no_writes(b"#!lua\n-- no-writes\nreturn 1"));
        assert!(!declares_no_writes(b"return 'no-writes'"));
    }

    #[test]
    fn clients_keep_their_sha() {
        let cache = ScriptCache::default();
        assert_eq!(sha1_hex(b""), "da39a3ee5e6b4b0d3255bfef95601890afd80709");
        let eval = rewrite(&cache, &args(&["EVAL", "return 1", "0"])).unwrap();
        assert!(eval[1].ends_with(b"return 1"));
        let sha = sha1_hex(b"return 1");
        let evalsha = rewrite(&cache, &args(&["evalsha", &sha.to_uppercase(), "0"])).unwrap();
        assert_eq!(evalsha[0], Bytes::from_static(b"EVAL"));
        assert_eq!(evalsha[1], eval[1]);
        assert_eq!(rewrite(&cache, &args(&["EVALSHA", "ffff", "0"])), None);
        cache.clear();
        assert_eq!(rewrite(&cache, &args(&["EVALSHA", &sha, "0"])), None);
    }
}
