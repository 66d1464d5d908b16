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
    let mut out = BytesMut::with_capacity(body.len() + 700);
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
    // One line, so the script's own line numbers in errors are off by one only.
    out.put_slice(prologue().as_bytes());
    out.put_u8(b'\n');
    out.put_slice(rest);
    out.freeze()
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
