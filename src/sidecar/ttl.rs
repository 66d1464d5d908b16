//! Category TTL rules applied to writes (pure).
//!
//! - `ttl.default`: a write that creates or overwrites a key without giving it an expiry gets
//!   one. `SET` gains `PX <default>`; other writers (HSET, LPUSH, INCR, …) are followed in the
//!   same pipelined bundle by `PEXPIRE key <default> NX`, which leaves an existing TTL alone.
//! - `ttl.max`: expiries above it (EX, PX, EXAT, PXAT, EXPIRE, SETEX, RESTORE, …) are capped;
//!   PERSIST (and GETEX PERSIST) would lift the cap and are refused.
//! - `ttl.adaptive`: reads of hot keys extend their TTL up to `max` — see
//!   [`adaptive_extension`]; the caller samples, so only a fraction of reads pay for it.
//!
//! Which writes create keys, and which reads count as adaptive, are flags of the command table
//! (`creates` and `adaptive_read` of [`CommandSpec`]).

use bytes::Bytes;

use crate::routing::table::TtlRules;

use crate::redis::resp::parse_i64;

use super::command::{self, CommandSpec};

/// What to do with a write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TtlAction {
    /// Forward as it is.
    Unchanged,
    /// Forward these arguments instead.
    Replace(Vec<Bytes>),
    /// Forward the command, followed by these commands in the same bundle; the client gets
    /// the first reply.
    Append(Vec<Vec<Bytes>>),
    /// Refuse with this error text (without the leading `-`).
    Refuse(String),
}

fn upper(arg: &[u8]) -> Vec<u8> {
    arg.to_ascii_uppercase()
}

fn ms_bytes(ms: u64) -> Bytes {
    Bytes::from(ms.to_string())
}

fn pexpire_nx(key: &Bytes, ms: u64) -> Vec<Bytes> {
    vec![
        Bytes::from_static(b"PEXPIRE"),
        key.clone(),
        ms_bytes(ms),
        Bytes::from_static(b"NX"),
    ]
}

/// `PEXPIRE key <default> NX` for a key just written without an expiry (the default capped by
/// `max`), or `None` when the category has no default.
pub fn default_expiry(rules: &TtlRules, key: &Bytes) -> Option<Vec<Bytes>> {
    let default = rules.default_ms?;
    Some(pexpire_nx(
        key,
        rules.max_ms.map_or(default, |max| default.min(max)),
    ))
}

/// Applies `rules` to a command; `spec` is its entry in the command table (whose lower-case
/// name spares the per-command path an allocation, and which says the keys a write creates),
/// `args[0]` the name as sent, `now_ms` the Unix time.
pub fn apply(rules: &TtlRules, spec: &CommandSpec, args: &[Bytes], now_ms: u64) -> TtlAction {
    if rules.is_empty() || args.is_empty() {
        return TtlAction::Unchanged;
    }
    let name = spec.name;
    let cap = |ms: u64| rules.max_ms.map_or(ms, |max| ms.min(max));
    match name {
        "set" => set(rules, args, now_ms),
        "setex" | "psetex" if args.len() == 4 => {
            let Some(max) = rules.max_ms else {
                return TtlAction::Unchanged;
            };
            let unit = if name == "setex" { 1000 } else { 1 };
            match parse_i64(&args[2]) {
                Some(v) if v > 0 && (v as u64).saturating_mul(unit) > max => {
                    let mut out = args.to_vec();
                    out[0] = Bytes::from_static(b"PSETEX");
                    out[2] = ms_bytes(max);
                    TtlAction::Replace(out)
                }
                _ => TtlAction::Unchanged,
            }
        }
        "expire" | "pexpire" | "expireat" | "pexpireat" if args.len() >= 3 => {
            let Some(max) = rules.max_ms else {
                return TtlAction::Unchanged;
            };
            let Some(v) = parse_i64(&args[2]) else {
                return TtlAction::Unchanged;
            };
            let ms: i128 = match name {
                "expire" => i128::from(v) * 1000,
                "pexpire" => i128::from(v),
                "expireat" => i128::from(v) * 1000 - i128::from(now_ms),
                _ => i128::from(v) - i128::from(now_ms),
            };
            if ms <= i128::from(max) {
                return TtlAction::Unchanged;
            }
            let mut out = args.to_vec();
            out[0] = Bytes::from_static(b"PEXPIRE");
            out[2] = ms_bytes(max);
            TtlAction::Replace(out)
        }
        "getex" if args.len() >= 3 => {
            let Some(max) = rules.max_ms else {
                return TtlAction::Unchanged;
            };
            let opt = upper(&args[2]);
            if opt == b"PERSIST" {
                return TtlAction::Refuse(format!(
                    "ERR GETEX PERSIST would lift the {}ms TTL cap of this key's category",
                    max
                ));
            }
            if args.len() < 4 {
                return TtlAction::Unchanged;
            }
            capped_option(&opt, &args[3], max, now_ms).map_or(TtlAction::Unchanged, |ms| {
                let mut out = args.to_vec();
                out[2] = Bytes::from_static(b"PX");
                out[3] = ms_bytes(ms);
                TtlAction::Replace(out)
            })
        }
        "persist" if rules.max_ms.is_some() => TtlAction::Refuse(format!(
            "ERR PERSIST would lift the {}ms TTL cap of this key's category",
            rules.max_ms.unwrap_or_default()
        )),
        "restore" if args.len() >= 4 => match parse_i64(&args[2]) {
            Some(0) => match rules.default_ms {
                Some(d) => {
                    let mut out = args.to_vec();
                    out[2] = ms_bytes(cap(d));
                    TtlAction::Replace(out)
                }
                None => TtlAction::Unchanged,
            },
            Some(v) if v > 0 => {
                // With ABSTTL the TTL is a Unix time in ms, not a duration.
                let absolute = args[4..].iter().any(|a| a.eq_ignore_ascii_case(b"ABSTTL"));
                let ms = if absolute {
                    (v as u64).saturating_sub(now_ms)
                } else {
                    v as u64
                };
                match rules.max_ms {
                    Some(m) if ms > m => {
                        let mut out = args[..4].to_vec();
                        out[2] = ms_bytes(cap(ms));
                        // Capped as a duration: the flag goes.
                        out.extend(
                            args[4..]
                                .iter()
                                .filter(|a| !a.eq_ignore_ascii_case(b"ABSTTL"))
                                .cloned(),
                        );
                        TtlAction::Replace(out)
                    }
                    _ => TtlAction::Unchanged,
                }
            }
            _ => TtlAction::Unchanged,
        },
        _ => {
            if rules.default_ms.is_none() {
                return TtlAction::Unchanged;
            }
            let keys = spec.creates.keys(args.len());
            if keys.is_empty() {
                return TtlAction::Unchanged;
            }
            TtlAction::Append(
                keys.iter()
                    .filter_map(|i| default_expiry(rules, &args[*i]))
                    .collect(),
            )
        }
    }
}

/// `EX s` / `PX ms` / `EXAT t` / `PXAT t` capped to `max`: the capped relative PX, or `None`
/// when no cap is needed.
fn capped_option(opt: &[u8], value: &[u8], max: u64, now_ms: u64) -> Option<u64> {
    let v = i128::from(parse_i64(value)?);
    let ms = match opt {
        b"EX" => v * 1000,
        b"PX" => v,
        b"EXAT" => v * 1000 - i128::from(now_ms),
        b"PXAT" => v - i128::from(now_ms),
        _ => return None,
    };
    (ms > i128::from(max)).then_some(max)
}

fn set(rules: &TtlRules, args: &[Bytes], now_ms: u64) -> TtlAction {
    // SET key value [NX|XX] [GET] [EX s|PX ms|EXAT t|PXAT t|KEEPTTL]
    let mut expiry_at: Option<usize> = None;
    let mut keepttl = false;
    let mut i = 3;
    while i < args.len() {
        let opt = upper(&args[i]);
        match opt.as_slice() {
            b"EX" | b"PX" | b"EXAT" | b"PXAT" => {
                expiry_at = Some(i);
                i += 2;
                continue;
            }
            b"KEEPTTL" => keepttl = true,
            _ => {}
        }
        i += 1;
    }
    match (expiry_at, keepttl) {
        (Some(at), _) => {
            let (Some(max), Some(value)) = (rules.max_ms, args.get(at + 1)) else {
                return TtlAction::Unchanged;
            };
            match capped_option(&upper(&args[at]), value, max, now_ms) {
                Some(ms) => {
                    let mut out = args.to_vec();
                    out[at] = Bytes::from_static(b"PX");
                    out[at + 1] = ms_bytes(ms);
                    TtlAction::Replace(out)
                }
                None => TtlAction::Unchanged,
            }
        }
        (None, true) => TtlAction::Unchanged,
        (None, false) => match rules.default_ms {
            Some(d) if args.len() >= 3 => {
                let mut out = args.to_vec();
                out.push(Bytes::from_static(b"PX"));
                out.push(ms_bytes(rules.max_ms.map_or(d, |m| d.min(m))));
                TtlAction::Replace(out)
            }
            _ => TtlAction::Unchanged,
        },
    }
}

/// `PEXPIRE key ms NX` without the NX flag (Redis before 7.0 lacks it): only a key without a
/// TTL gets one.
pub const EXPIRE_NX_SCRIPT: &str = "if redis.call('PTTL', KEYS[1]) == -1 then return redis.call('PEXPIRE', KEYS[1], ARGV[1]) end return 0";

/// `PEXPIRE key ms GT` without the GT flag: only a TTL shorter than `ms` grows (a key without
/// a TTL counts as one that never expires, as with GT).
pub const EXPIRE_GT_SCRIPT: &str = "local t = redis.call('PTTL', KEYS[1]) if t > 0 and t < tonumber(ARGV[1]) then return redis.call('PEXPIRE', KEYS[1], ARGV[1]) end return 0";

/// The sidecar's own TTL commands (from [`default_expiry`] and [`adaptive_extension`]) as an
/// instance runs them: unchanged on Redis 7.0 and later; on older servers, which have no
/// `NX`/`GT` flags, as the equivalent scripts (they would otherwise fail, unseen, since the
/// client never reads their replies).
pub fn for_server(cmd: Vec<Bytes>, legacy: bool) -> Vec<Bytes> {
    if !legacy || cmd.len() != 4 || !cmd[0].eq_ignore_ascii_case(b"PEXPIRE") {
        return cmd;
    }
    let script = if cmd[3].eq_ignore_ascii_case(b"NX") {
        EXPIRE_NX_SCRIPT
    } else if cmd[3].eq_ignore_ascii_case(b"GT") {
        EXPIRE_GT_SCRIPT
    } else {
        return cmd;
    };
    vec![
        Bytes::from_static(b"EVAL"),
        Bytes::from_static(script.as_bytes()),
        Bytes::from_static(b"1"),
        cmd[1].clone(),
        cmd[2].clone(),
    ]
}

/// Whether the command named `name` is a read whose hits may extend a key's TTL in an adaptive
/// category (its [`CommandSpec::adaptive_read`] flag).
pub fn is_adaptive_read(name: &[u8]) -> bool {
    command::lookup(name).is_some_and(|spec| spec.adaptive_read)
}

/// The command that extends a frequently read key's TTL to `max` (never shortening it, and
/// leaving keys without a TTL alone).
pub fn adaptive_extension(rules: &TtlRules, key: &Bytes) -> Option<Vec<Bytes>> {
    if !rules.adaptive {
        return None;
    }
    let max = rules.max_ms?;
    Some(vec![
        Bytes::from_static(b"PEXPIRE"),
        key.clone(),
        ms_bytes(max),
        Bytes::from_static(b"GT"),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<Bytes> {
        s.split(' ').map(|a| Bytes::from(a.to_owned())).collect()
    }

    fn rules(default: Option<u64>, max: Option<u64>) -> TtlRules {
        TtlRules {
            default_ms: default,
            max_ms: max,
            adaptive: false,
        }
    }

    const NOW: u64 = 1_700_000_000_000;

    fn call(r: &TtlRules, a: &[Bytes]) -> TtlAction {
        apply(r, command::lookup(&a[0]).unwrap(), a, NOW)
    }

    #[test]
    fn set_without_expiry_gets_the_default() {
        let r = rules(Some(3_600_000), Some(86_400_000));
        assert_eq!(
            call(&r, &args("SET k v")),
            TtlAction::Replace(args("SET k v PX 3600000"))
        );
        assert_eq!(
            call(&r, &args("set k v NX GET")),
            TtlAction::Replace(args("set k v NX GET PX 3600000"))
        );
        assert_eq!(call(&r, &args("SET k v KEEPTTL")), TtlAction::Unchanged);
        assert_eq!(call(&r, &args("SET k v EX 10")), TtlAction::Unchanged);
        assert_eq!(
            call(&rules(None, None), &args("SET k v")),
            TtlAction::Unchanged
        );
    }

    #[test]
    fn expiries_are_capped() {
        let r = rules(None, Some(60_000));
        assert_eq!(
            call(&r, &args("SET k v EX 3600")),
            TtlAction::Replace(args("SET k v PX 60000"))
        );
        assert_eq!(call(&r, &args("SET k v px 30000")), TtlAction::Unchanged);
        assert_eq!(
            call(&r, &args(&format!("SET k v PXAT {}", NOW + 120_000))),
            TtlAction::Replace(args("SET k v PX 60000"))
        );
        assert_eq!(
            call(&r, &args("EXPIRE k 3600")),
            TtlAction::Replace(args("PEXPIRE k 60000"))
        );
        assert_eq!(
            call(&r, &args("EXPIRE k 3600 GT")),
            TtlAction::Replace(args("PEXPIRE k 60000 GT"))
        );
        assert_eq!(call(&r, &args("PEXPIRE k 100")), TtlAction::Unchanged);
        assert_eq!(
            call(&r, &args(&format!("EXPIREAT k {}", NOW / 1000 + 3600))),
            TtlAction::Replace(args("PEXPIRE k 60000"))
        );
        assert_eq!(
            call(&r, &args("SETEX k 3600 v")),
            TtlAction::Replace(args("PSETEX k 60000 v"))
        );
        assert_eq!(
            call(&r, &args("GETEX k EX 3600")),
            TtlAction::Replace(args("GETEX k PX 60000"))
        );
        assert!(matches!(call(&r, &args("PERSIST k")), TtlAction::Refuse(_)));
        assert!(matches!(
            call(&r, &args("GETEX k PERSIST")),
            TtlAction::Refuse(_)
        ));
        assert_eq!(
            call(&r, &args("RESTORE k 3600000 payload")),
            TtlAction::Replace(args("RESTORE k 60000 payload"))
        );
    }

    #[test]
    fn other_writers_get_a_pipelined_pexpire_nx() {
        let r = rules(Some(1000), None);
        assert_eq!(
            call(&r, &args("HSET h f v")),
            TtlAction::Append(vec![args("PEXPIRE h 1000 NX")])
        );
        assert_eq!(
            call(&r, &args("INCR c")),
            TtlAction::Append(vec![args("PEXPIRE c 1000 NX")])
        );
        assert_eq!(
            call(&r, &args("MSET a 1 b 2")),
            TtlAction::Append(vec![args("PEXPIRE a 1000 NX"), args("PEXPIRE b 1000 NX")])
        );
        assert_eq!(call(&r, &args("GET k")), TtlAction::Unchanged);
        assert_eq!(call(&r, &args("DEL k")), TtlAction::Unchanged);
        assert_eq!(
            call(&r, &args("RESTORE k 0 payload")),
            TtlAction::Replace(args("RESTORE k 1000 payload"))
        );
    }

    #[test]
    fn restore_with_an_absolute_expiry_is_capped_as_a_duration() {
        let r = rules(None, Some(60_000));
        let spec = command::lookup(b"restore").unwrap();
        let now = 1_000_000_000;
        // An hour from now, given as a Unix time: capped to a minute from now.
        let far = args(&format!("RESTORE k {} payload ABSTTL", now + 3_600_000));
        assert_eq!(
            apply(&r, spec, &far, now),
            TtlAction::Replace(args("RESTORE k 60000 payload"))
        );
        // Ten seconds from now: within the cap, untouched (the old rule read it as 31 years).
        let near = args(&format!(
            "RESTORE k {} payload ABSTTL REPLACE",
            now + 10_000
        ));
        assert_eq!(apply(&r, spec, &near, now), TtlAction::Unchanged);
        assert_eq!(
            apply(&r, spec, &args("RESTORE k 3600000 payload REPLACE"), now),
            TtlAction::Replace(args("RESTORE k 60000 payload REPLACE"))
        );
    }

    #[test]
    fn ttl_commands_become_scripts_on_servers_before_7() {
        let nx = args("PEXPIRE k 1000 NX");
        assert_eq!(for_server(nx.clone(), false), nx);
        let old = for_server(nx, true);
        assert_eq!(old[0], Bytes::from_static(b"EVAL"));
        assert_eq!(old[1], Bytes::from_static(EXPIRE_NX_SCRIPT.as_bytes()));
        assert_eq!(&old[2..], &args("1 k 1000")[..]);
        let gt = for_server(args("PEXPIRE k 5000 GT"), true);
        assert_eq!(gt[1], Bytes::from_static(EXPIRE_GT_SCRIPT.as_bytes()));
        // Anything else is left alone.
        assert_eq!(for_server(args("SET k v"), true), args("SET k v"));
    }

    #[test]
    fn adaptive_extension_needs_adaptive_and_max() {
        let mut r = rules(Some(1000), Some(5000));
        assert_eq!(adaptive_extension(&r, &Bytes::from("k")), None);
        r.adaptive = true;
        assert_eq!(
            adaptive_extension(&r, &Bytes::from("k")),
            Some(args("PEXPIRE k 5000 GT"))
        );
        assert!(is_adaptive_read(b"get"));
        assert!(!is_adaptive_read(b"SET"));
    }
}
