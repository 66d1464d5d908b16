//! RESP3 for clients that ask for it with `HELLO 3` (pure: no I/O).
//!
//! The instances are spoken to in RESP2 — every Redis-compatible server speaks it, pipelined
//! lanes are shared by clients of both protocols, and a RESP2 client keeps getting the
//! instances' bytes unchanged. A RESP3 client gets each reply converted into the types Redis
//! would have sent it: [`shape`] reads from the command table ([`Resp3`]) and the arguments
//! (`WITHSCORES`, a count, `IDX`, ...) what the reply looks like, and [`convert`] rebuilds it —
//! maps for HGETALL and XREAD, sets for SMEMBERS, doubles for scores, verbatim strings for
//! INFO, nested pairs for `WITHSCORES`, and `_` for every null. A reply that already is RESP3
//! (from an instance spoken to in RESP3) converts to itself, so the same code serves either
//! kind of instance. Error replies pass unchanged.
//!
//! What cannot be known from a RESP2 reply: a Lua script that switched itself to RESP3
//! (`redis.setresp(3)`) and returns a map or a double is seen flattened, as a RESP2 client
//! would see it; only its nulls become `_`.

use bytes::Bytes;

use super::command::{self, Resp3};
use crate::redis::resp::{Limits, Value, parse_value};

/// How one reply is converted for a RESP3 client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Shape {
    /// A command's reply, with what its arguments say about it.
    Reply {
        /// The command's RESP3 form.
        resp3: Resp3,
        /// Whether the option that changes the reply is present (WITHSCORES, a count, INCR,
        /// IDX, FULL, WITHCOORD, WITHSCORE), as [`Resp3`] documents per variant.
        with: bool,
    },
    /// EXEC: an array with one reply per queued command, each converted by its own shape.
    Exec(Vec<Shape>),
}

impl Shape {
    /// The shape of a reply that keeps its structure.
    pub const SAME: Shape = Shape::Reply {
        resp3: Resp3::Same,
        with: false,
    };
}

fn has_arg<A: AsRef<[u8]>>(args: &[A], from: usize, word: &[u8]) -> bool {
    args.iter()
        .skip(from)
        .any(|a| a.as_ref().eq_ignore_ascii_case(word))
}

/// The shape of the reply to `args` (`args[0]` is the command name). Unknown commands keep
/// their shape (their reply is an error anyway).
pub fn shape<A: AsRef<[u8]>>(args: &[A]) -> Shape {
    let Some(name) = args.first() else {
        return Shape::SAME;
    };
    let Some(mut spec) = command::lookup(name.as_ref()) else {
        return Shape::SAME;
    };
    if let Some(sub) = args.get(1)
        && let Some(s) = spec.subcommand(sub.as_ref())
    {
        spec = s;
    }
    let mut resp3 = spec.resp3;
    if let Resp3::VSim { .. } = resp3 {
        resp3 = Resp3::VSim {
            scores: has_arg(args, 2, b"WITHSCORES"),
            attribs: has_arg(args, 2, b"WITHATTRIBS"),
        };
    }
    let with = match resp3 {
        Resp3::WithScores => has_arg(args, 2, b"WITHSCORES"),
        Resp3::RandPairs { double } => {
            args.len() > 3 && has_arg(args, 3, if double { b"WITHSCORES" } else { b"WITHVALUES" })
        }
        Resp3::ZPop => args.len() > 2,
        Resp3::RankWithScore => has_arg(args, 3, b"WITHSCORE"),
        Resp3::ZAdd => has_arg(args, 2, b"INCR"),
        Resp3::Lcs => has_arg(args, 3, b"IDX"),
        Resp3::Geo => spec.name == "geopos" || has_arg(args, 2, b"WITHCOORD"),
        Resp3::VEmb => !has_arg(args, 3, b"RAW"),
        Resp3::VSim { scores, attribs } => scores || attribs,
        Resp3::VLinks => has_arg(args, 3, b"WITHSCORES"),
        _ => true,
    };
    Shape::Reply { resp3, with }
}

/// [`convert`] for a reply the caller owns: a scalar whose shape keeps it (most replies:
/// GET, SET, INCR, …) goes through as it is, without being parsed and encoded again; a
/// RESP2 null becomes RESP3's `_`.
pub fn convert_owned(reply: Bytes, shape: &Shape) -> Bytes {
    match shape {
        Shape::Reply {
            resp3: Resp3::Raw, ..
        } => reply,
        Shape::Reply {
            resp3: Resp3::Same, ..
        } => match reply.first() {
            Some(b'+' | b'-' | b':') => reply,
            Some(b'$' | b'*') if &reply[..] == b"$-1\r\n" || &reply[..] == b"*-1\r\n" => {
                Bytes::from_static(b"_\r\n")
            }
            Some(b'$') => reply,
            _ => convert(&reply, shape),
        },
        Shape::Reply { .. } | Shape::Exec(_) => convert(&reply, shape),
    }
}

/// Converts one reply (RESP2 or RESP3 bytes, one complete frame) for a RESP3 client.
/// Bytes that do not parse are returned as they are.
pub fn convert(reply: &[u8], shape: &Shape) -> Bytes {
    if matches!(
        shape,
        Shape::Reply {
            resp3: Resp3::Raw,
            ..
        }
    ) {
        return Bytes::copy_from_slice(reply);
    }
    match parse_value(reply, &Limits::replies()) {
        Ok(Some((value, _))) => convert_value(value, shape).to_resp3(),
        _ => Bytes::copy_from_slice(reply),
    }
}

/// Converts one decoded reply for a RESP3 client.
pub fn convert_value(value: Value, shape: &Shape) -> Value {
    if value.is_error() || value.is_null() {
        return value;
    }
    match shape {
        Shape::Exec(shapes) => match value {
            Value::Array(items) => Value::Array(
                items
                    .into_iter()
                    .zip(shapes.iter().chain(std::iter::repeat(&Shape::SAME)))
                    .map(|(v, s)| convert_value(v, s))
                    .collect(),
            ),
            other => other,
        },
        // ZPOPMIN/ZPOPMAX: `[member, score]`, or with a count a list of pairs.
        Shape::Reply {
            resp3: Resp3::ZPop,
            with,
        } => {
            if *with {
                pairs(value, true)
            } else {
                map_at(value, 1, to_double)
            }
        }
        // VEMB … RAW: `[type, blob, norm, range]`, the last two doubles.
        Shape::Reply {
            resp3: Resp3::VEmb,
            with: false,
        } => match value {
            Value::Array(items) => Value::Array(
                items
                    .into_iter()
                    .enumerate()
                    .map(|(i, v)| if i >= 2 { to_double(v) } else { v })
                    .collect(),
            ),
            other => other,
        },
        Shape::Reply { with: false, .. } => value,
        Shape::Reply { resp3, with: true } => reply(value, *resp3),
    }
}

fn reply(value: Value, resp3: Resp3) -> Value {
    match resp3 {
        Resp3::Same | Resp3::Introspection | Resp3::Raw => value,
        Resp3::Map => to_map(value),
        Resp3::Set => match value {
            Value::Array(items) => Value::Set(items),
            other => other,
        },
        Resp3::Double | Resp3::ZAdd => to_double(value),
        Resp3::Doubles => map_items(value, to_double),
        Resp3::WithScores => pairs(value, true),
        Resp3::RandPairs { double } => pairs(value, double),
        Resp3::ZPop => pairs(value, true),
        Resp3::BzPop => map_at(value, 2, to_double),
        Resp3::ZMPop => map_at(value, 1, |list| {
            map_items(list, |pair| map_at(pair, 1, to_double))
        }),
        Resp3::RankWithScore => map_at(value, 1, to_double),
        Resp3::XRead => match value {
            // Already a map (an instance spoken to in RESP3): nothing to do.
            Value::Array(items) => Value::Map(
                items
                    .into_iter()
                    .map(|item| match item {
                        Value::Array(mut kv) if kv.len() == 2 => {
                            let entries = kv.pop().unwrap_or(Value::Null);
                            let key = kv.pop().unwrap_or(Value::Null);
                            (key, entries)
                        }
                        other => (other, Value::Null),
                    })
                    .collect(),
            ),
            other => other,
        },
        Resp3::XInfoStream => xinfo_stream(value),
        Resp3::XInfoList => map_items(value, to_map),
        Resp3::Lcs => to_map(value),
        Resp3::Geo => geo(value),
        Resp3::Verbatim => match value {
            Value::Bulk(text) => Value::Verbatim {
                format: *b"txt",
                text,
            },
            other => other,
        },
        Resp3::Boolean => match value {
            Value::Integer(n) => Value::Boolean(n != 0),
            other => other,
        },
        Resp3::VEmb => map_items(value, to_double),
        Resp3::VSim { scores, attribs } => vsim(value, scores, attribs),
        Resp3::VLinks => map_items(value, |level| match to_map(level) {
            Value::Map(pairs) => Value::Map(
                pairs
                    .into_iter()
                    .map(|(member, score)| (member, to_double(score)))
                    .collect(),
            ),
            other => other,
        }),
    }
}

/// VSIM with `WITHSCORES` and/or `WITHATTRIBS`: the flat list (two or three items per member)
/// as a map of member to score, attributes, or `[score, attributes]`. Already a map (an
/// instance spoken to in RESP3): unchanged.
fn vsim(value: Value, scores: bool, attribs: bool) -> Value {
    let per = if scores && attribs { 3 } else { 2 };
    match value {
        Value::Array(items) if items.len() % per == 0 => {
            let mut out = Vec::with_capacity(items.len() / per);
            let mut it = items.into_iter();
            while let Some(member) = it.next() {
                let first = it.next().unwrap_or(Value::Null);
                let v = if per == 3 {
                    Value::Array(vec![to_double(first), it.next().unwrap_or(Value::Null)])
                } else if scores {
                    to_double(first)
                } else {
                    first
                };
                out.push((member, v));
            }
            Value::Map(out)
        }
        other => other,
    }
}

/// A flat `[k1, v1, k2, v2, ...]` array as a map; anything else unchanged.
fn to_map(value: Value) -> Value {
    match value {
        Value::Array(items) if items.len() % 2 == 0 => {
            let mut pairs = Vec::with_capacity(items.len() / 2);
            let mut it = items.into_iter();
            while let (Some(k), Some(v)) = (it.next(), it.next()) {
                pairs.push((k, v));
            }
            Value::Map(pairs)
        }
        other => other,
    }
}

/// A bulk string holding a number as a double.
fn to_double(value: Value) -> Value {
    match value {
        Value::Bulk(text) => Value::Double(text),
        other => other,
    }
}

fn map_items(value: Value, f: impl Fn(Value) -> Value) -> Value {
    match value {
        Value::Array(items) => Value::Array(items.into_iter().map(f).collect()),
        other => other,
    }
}

fn map_at(value: Value, at: usize, f: impl FnOnce(Value) -> Value) -> Value {
    match value {
        Value::Array(mut items) if items.len() > at => {
            let item = std::mem::replace(&mut items[at], Value::Null);
            items[at] = f(item);
            Value::Array(items)
        }
        other => other,
    }
}

/// A flat `[a1, b1, a2, b2, ...]` array as `[[a1, b1], [a2, b2], ...]`, the `b`s as doubles
/// when `double`. Already nested (RESP3) input is left as it is, but for the doubles.
fn pairs(value: Value, double: bool) -> Value {
    let second = |v: Value| if double { to_double(v) } else { v };
    match value {
        Value::Array(items) if items.iter().all(|i| matches!(i, Value::Array(_))) => Value::Array(
            items
                .into_iter()
                .map(|pair| map_at(pair, 1, second))
                .collect(),
        ),
        Value::Array(items) if items.len() % 2 == 0 => {
            let mut out = Vec::with_capacity(items.len() / 2);
            let mut it = items.into_iter();
            while let (Some(a), Some(b)) = (it.next(), it.next()) {
                out.push(Value::Array(vec![a, second(b)]));
            }
            Value::Array(out)
        }
        other => other,
    }
}

/// XINFO STREAM [FULL]: the top level as a map; with FULL its groups (and their consumers)
/// as maps too. First and last entries and PEL entries keep their arrays.
fn xinfo_stream(value: Value) -> Value {
    let Value::Map(fields) = to_map(value) else {
        return Value::Null;
    };
    Value::Map(
        fields
            .into_iter()
            .map(|(k, v)| {
                let v = if k.as_bytes().is_some_and(|k| &k[..] == b"groups") {
                    map_items(v, |group| {
                        let Value::Map(g) = to_map(group) else {
                            return Value::Null;
                        };
                        Value::Map(
                            g.into_iter()
                                .map(|(gk, gv)| {
                                    let gv =
                                        if gk.as_bytes().is_some_and(|k| &k[..] == b"consumers") {
                                            map_items(gv, to_map)
                                        } else {
                                            gv
                                        };
                                    (gk, gv)
                                })
                                .collect(),
                        )
                    })
                } else {
                    v
                };
                (k, v)
            })
            .collect(),
    )
}

/// GEOPOS (`[[lon, lat] | nil, ...]`) and GEOSEARCH/GEORADIUS WITHCOORD items (coordinates
/// last): coordinates as doubles.
fn geo(value: Value) -> Value {
    let coords = |pair: Value| map_items(pair, to_double);
    map_items(value, |item| match item {
        // GEOPOS: the pair itself.
        Value::Array(inner) if inner.len() == 2 && inner.iter().all(|v| v.as_bytes().is_some()) => {
            coords(Value::Array(inner))
        }
        // An item whose last element is the coordinate pair.
        Value::Array(mut inner) => {
            if let Some(last) = inner.pop() {
                let last = match last {
                    Value::Array(pair) => coords(Value::Array(pair)),
                    other => other,
                };
                inner.push(last);
            }
            Value::Array(inner)
        }
        other => other,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_that_keep_their_shape_go_through_as_convert_would_make_them() {
        let replies: [&[u8]; 9] = [
            b"+OK\r\n",
            b"-ERR no\r\n",
            b":42\r\n",
            b"$3\r\nabc\r\n",
            b"$0\r\n\r\n",
            b"$-1\r\n",
            b"*-1\r\n",
            b"*2\r\n$1\r\na\r\n$-1\r\n",
            b"*0\r\n",
        ];
        for shape in [shape(&["GET", "k"]), shape(&["INCR", "k"]), Shape::SAME] {
            for reply in replies {
                assert_eq!(
                    convert_owned(Bytes::copy_from_slice(reply), &shape),
                    convert(reply, &shape),
                    "{:?}",
                    String::from_utf8_lossy(reply)
                );
            }
        }
    }

    fn conv(args: &str, reply: &[u8]) -> String {
        let args: Vec<&str> = args.split(' ').collect();
        String::from_utf8_lossy(&convert(reply, &shape(&args))).into_owned()
    }

    #[test]
    fn vector_set_links_read_as_redis_8_sends_them() {
        // Redis 8.2 in RESP3: one map per level with WITHSCORES, arrays without.
        assert_eq!(
            conv(
                "VLINKS v a WITHSCORES",
                b"*2\r\n*0\r\n*2\r\n$1\r\nb\r\n$3\r\n0.5\r\n"
            ),
            "*2\r\n%0\r\n%1\r\n$1\r\nb\r\n,0.5\r\n"
        );
        assert_eq!(
            conv("VLINKS v a", b"*1\r\n*1\r\n$1\r\nb\r\n"),
            "*1\r\n*1\r\n$1\r\nb\r\n"
        );
        assert_eq!(conv("VLINKS v nope", b"$-1\r\n"), "_\r\n");
    }

    #[test]
    fn shapes_follow_the_arguments() {
        assert!(matches!(
            shape(&["GET", "k"]),
            Shape::Reply {
                resp3: Resp3::Same,
                ..
            }
        ));
        assert_eq!(
            shape(&["zrange", "k", "0", "-1", "withscores"]),
            Shape::Reply {
                resp3: Resp3::WithScores,
                with: true
            }
        );
        assert!(matches!(
            shape(&["ZRANGE", "k", "0", "-1"]),
            Shape::Reply { with: false, .. }
        ));
        assert!(matches!(
            shape(&["HRANDFIELD", "k"]),
            Shape::Reply { with: false, .. }
        ));
        assert!(matches!(
            shape(&["xinfo", "stream", "s", "FULL"]),
            Shape::Reply {
                resp3: Resp3::XInfoStream,
                with: true
            }
        ));
        assert!(matches!(
            shape(&["nope"]),
            Shape::Reply {
                resp3: Resp3::Same,
                ..
            }
        ));
    }

    #[test]
    fn replies_become_their_resp3_types() {
        assert_eq!(
            conv(
                "HGETALL h",
                b"*4\r\n$1\r\na\r\n$1\r\n1\r\n$1\r\nb\r\n$1\r\n2\r\n"
            ),
            "%2\r\n$1\r\na\r\n$1\r\n1\r\n$1\r\nb\r\n$1\r\n2\r\n"
        );
        assert_eq!(conv("GET k", b"$-1\r\n"), "_\r\n");
        assert_eq!(conv("BLPOP k 1", b"*-1\r\n"), "_\r\n");
        assert_eq!(
            conv("SMEMBERS s", b"*1\r\n$1\r\nm\r\n"),
            "~1\r\n$1\r\nm\r\n"
        );
        assert_eq!(conv("ZSCORE z m", b"$3\r\n1.5\r\n"), ",1.5\r\n");
        assert_eq!(
            conv("ZRANGE z 0 -1 WITHSCORES", b"*2\r\n$1\r\nm\r\n$1\r\n1\r\n"),
            "*1\r\n*2\r\n$1\r\nm\r\n,1\r\n"
        );
        assert_eq!(
            conv("ZPOPMIN z", b"*2\r\n$1\r\nm\r\n$1\r\n1\r\n"),
            "*2\r\n$1\r\nm\r\n,1\r\n"
        );
        assert_eq!(
            conv("ZPOPMIN z 1", b"*2\r\n$1\r\nm\r\n$1\r\n1\r\n"),
            "*1\r\n*2\r\n$1\r\nm\r\n,1\r\n"
        );
        assert_eq!(
            conv(
                "XREAD STREAMS s 0",
                b"*1\r\n*2\r\n$1\r\ns\r\n*1\r\n*2\r\n$3\r\n1-1\r\n*2\r\n$1\r\nf\r\n$1\r\nv\r\n"
            ),
            "%1\r\n$1\r\ns\r\n*1\r\n*2\r\n$3\r\n1-1\r\n*2\r\n$1\r\nf\r\n$1\r\nv\r\n"
        );
        assert_eq!(conv("INFO", b"$4\r\na:1\n\r\n"), "=8\r\ntxt:a:1\n\r\n");
        assert_eq!(conv("GET k", b"-ERR x\r\n"), "-ERR x\r\n");
    }

    #[test]
    fn resp3_replies_convert_to_themselves() {
        for (args, reply) in [
            ("HGETALL h", &b"%1\r\n$1\r\na\r\n$1\r\n1\r\n"[..]),
            ("SMEMBERS s", b"~1\r\n$1\r\nm\r\n"),
            ("ZSCORE z m", b",1.5\r\n"),
            ("ZRANGE z 0 -1 WITHSCORES", b"*1\r\n*2\r\n$1\r\nm\r\n,1\r\n"),
            ("ZPOPMIN z 1", b"*1\r\n*2\r\n$1\r\nm\r\n,1\r\n"),
            ("ZPOPMIN z", b"*2\r\n$1\r\nm\r\n,1\r\n"),
            ("XREAD STREAMS s 0", b"%1\r\n$1\r\ns\r\n*0\r\n"),
            ("INFO", b"=8\r\ntxt:a:1\n\r\n"),
            ("GEOPOS g m", b"*1\r\n*2\r\n,1.5\r\n,2.5\r\n"),
        ] {
            assert_eq!(conv(args, reply).as_bytes(), reply, "{args}");
        }
    }

    #[test]
    fn exec_converts_each_reply_by_its_command() {
        let shape = Shape::Exec(vec![shape(&["SET", "k", "v"]), shape(&["HGETALL", "h"])]);
        let reply = b"*2\r\n+OK\r\n*2\r\n$1\r\na\r\n$1\r\n1\r\n";
        assert_eq!(
            &convert(reply, &shape)[..],
            b"*2\r\n+OK\r\n%1\r\n$1\r\na\r\n$1\r\n1\r\n"
        );
    }
}
