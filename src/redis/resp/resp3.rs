//! RESP3 values ([`Value`]): every RESP2 type plus maps, sets, doubles, booleans, big numbers,
//! verbatim strings, blob errors, push frames and attributes, parsed with the same
//! [`Limits`] as RESP2 and encoded in either protocol.
//!
//! The sidecar speaks RESP2 to its instances (every Redis-compatible server does, and RESP2
//! clients get the instances' bytes unchanged); a RESP3 client gets each reply converted to the
//! RESP3 types Redis would have sent it (`sidecar/resp3.rs` knows which command answers
//! what). The parser accepts both protocols, so a reply that already is RESP3 — a
//! `HELLO 3` connection's, a push frame — reads the same way, and [`Value::encode2`] turns a
//! RESP3 value back into what a RESP2 client expects (maps flattened, doubles and big numbers
//! as bulk strings, booleans as 1/0, attributes dropped), as Redis does.
//!
//! Parsing restarts from the first byte on every call (`Ok(None)` while incomplete): it is
//! meant for replies known to be complete or short (pub/sub and invalidation messages), not
//! for a large reply arriving in many reads — [`FrameScanner`](super::FrameScanner) is for that.
//! Streamed strings and aggregates (`$?`, `*?`, `;`, `.`), which Redis never sends, are refused.

use bytes::{BufMut, Bytes, BytesMut};

use super::frame::Frame;
use super::limits::{Limits, PREALLOC_ARGS, ProtocolError};
use super::number::{checked_len, crlf_at, number_line};

/// One RESP3 value (a superset of RESP2's).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    /// `+OK`.
    Simple(Bytes),
    /// `-ERR ...`, without the `-`.
    Error(Bytes),
    /// `:42`.
    Integer(i64),
    /// `$3\r\nfoo`.
    Bulk(Bytes),
    /// `_` (RESP3), `$-1` (RESP2).
    Null,
    /// RESP2's nil array `*-1`; RESP3 has one null, `_`.
    NullArray,
    /// `*2\r\n...`.
    Array(Vec<Value>),
    /// `%1\r\n` key, value.
    Map(Vec<(Value, Value)>),
    /// `~2\r\n...`.
    Set(Vec<Value>),
    /// `,1.5`: the text as sent (`inf`, `-inf` and `nan` included), so nothing is rounded.
    Double(Bytes),
    /// `#t` / `#f`.
    Boolean(bool),
    /// `(12345678901234567890`: the digits as sent.
    BigNumber(Bytes),
    /// `=15\r\ntxt:Some string`: a three-letter format and the text.
    Verbatim {
        /// `txt` or `mkd`.
        format: [u8; 3],
        /// The text.
        text: Bytes,
    },
    /// `!21\r\nSYNTAX invalid syntax`: a binary-safe error.
    BlobError(Bytes),
    /// `>3\r\n...`: out-of-band data (pub/sub messages, invalidations).
    Push(Vec<Value>),
    /// `|1\r\n` key, value, then the value the attributes describe.
    Attribute {
        /// The attribute map.
        attributes: Vec<(Value, Value)>,
        /// The reply itself.
        value: Box<Value>,
    },
}

impl Value {
    /// A bulk string.
    pub fn bulk(data: impl Into<Bytes>) -> Value {
        Value::Bulk(data.into())
    }

    /// Whether this is an error reply (simple or blob).
    pub fn is_error(&self) -> bool {
        matches!(self, Value::Error(_) | Value::BlobError(_))
    }

    /// Whether this is a null of either protocol.
    pub fn is_null(&self) -> bool {
        matches!(self, Value::Null | Value::NullArray)
    }

    /// The payload of a bulk, simple or verbatim string.
    pub fn as_bytes(&self) -> Option<&Bytes> {
        match self {
            Value::Bulk(b) | Value::Simple(b) | Value::Verbatim { text: b, .. } => Some(b),
            _ => None,
        }
    }

    /// The value of an integer reply.
    pub fn as_integer(&self) -> Option<i64> {
        match self {
            Value::Integer(n) => Some(*n),
            _ => None,
        }
    }

    /// The elements of an array, set or push frame.
    pub fn as_items(&self) -> Option<&[Value]> {
        match self {
            Value::Array(items) | Value::Set(items) | Value::Push(items) => Some(items),
            _ => None,
        }
    }

    /// Appends the RESP3 encoding.
    pub fn encode3(&self, out: &mut BytesMut) {
        match self {
            Value::Simple(t) => put_line(out, b'+', t),
            Value::Error(t) => put_line(out, b'-', t),
            Value::Integer(n) => put_header(out, b':', *n),
            Value::Bulk(b) => put_blob(out, b'$', b),
            Value::Null | Value::NullArray => out.put_slice(b"_\r\n"),
            Value::Array(items) => put_items(out, b'*', items, Value::encode3),
            Value::Set(items) => put_items(out, b'~', items, Value::encode3),
            Value::Push(items) => put_items(out, b'>', items, Value::encode3),
            Value::Map(pairs) => put_pairs(out, b'%', pairs, Value::encode3),
            Value::Double(t) => put_line(out, b',', t),
            Value::Boolean(b) => out.put_slice(if *b { b"#t\r\n" } else { b"#f\r\n" }),
            Value::BigNumber(t) => put_line(out, b'(', t),
            Value::Verbatim { format, text } => {
                put_header(out, b'=', len_i64(text.len() + 4));
                out.put_slice(format);
                out.put_u8(b':');
                out.put_slice(text);
                out.put_slice(b"\r\n");
            }
            Value::BlobError(t) => put_blob(out, b'!', t),
            Value::Attribute { attributes, value } => {
                put_pairs(out, b'|', attributes, Value::encode3);
                value.encode3(out);
            }
        }
    }

    /// Appends the RESP2 encoding, converting as Redis does for a RESP2 client: maps become
    /// flat arrays, sets and push frames arrays, doubles and big numbers bulk strings,
    /// booleans 1 / 0, verbatim strings their text, blob errors error lines; attributes are
    /// dropped.
    pub fn encode2(&self, out: &mut BytesMut) {
        match self {
            Value::Simple(t) => put_line(out, b'+', t),
            Value::Error(t) | Value::BlobError(t) => put_line(out, b'-', t),
            Value::Integer(n) => put_header(out, b':', *n),
            Value::Bulk(b) | Value::Double(b) | Value::BigNumber(b) => put_blob(out, b'$', b),
            Value::Verbatim { text, .. } => put_blob(out, b'$', text),
            Value::Null => out.put_slice(b"$-1\r\n"),
            Value::NullArray => out.put_slice(b"*-1\r\n"),
            Value::Array(items) | Value::Set(items) | Value::Push(items) => {
                put_items(out, b'*', items, Value::encode2)
            }
            Value::Map(pairs) => {
                put_header(out, b'*', len_i64(pairs.len().saturating_mul(2)));
                for (k, v) in pairs {
                    k.encode2(out);
                    v.encode2(out);
                }
            }
            Value::Boolean(b) => out.put_slice(if *b { b":1\r\n" } else { b":0\r\n" }),
            Value::Attribute { value, .. } => value.encode2(out),
        }
    }

    /// The RESP3 encoding as one buffer.
    pub fn to_resp3(&self) -> Bytes {
        let mut out = BytesMut::new();
        self.encode3(&mut out);
        out.freeze()
    }

    /// The RESP2 encoding as one buffer.
    pub fn to_resp2(&self) -> Bytes {
        let mut out = BytesMut::new();
        self.encode2(&mut out);
        out.freeze()
    }
}

impl From<Frame> for Value {
    fn from(frame: Frame) -> Value {
        match frame {
            Frame::Simple(t) => Value::Simple(t),
            Frame::Error(t) => Value::Error(t),
            Frame::Integer(n) => Value::Integer(n),
            Frame::Bulk(b) => Value::Bulk(b),
            Frame::Null => Value::Null,
            Frame::NullArray => Value::NullArray,
            Frame::Array(items) => Value::Array(items.into_iter().map(Value::from).collect()),
        }
    }
}

fn len_i64(len: usize) -> i64 {
    i64::try_from(len).unwrap_or(i64::MAX)
}

fn put_header(out: &mut BytesMut, tag: u8, n: i64) {
    out.put_u8(tag);
    out.put_slice(n.to_string().as_bytes());
    out.put_slice(b"\r\n");
}

/// A line-type value: CR and LF inside become spaces, as Redis does, so the frame stays valid.
fn put_line(out: &mut BytesMut, tag: u8, text: &[u8]) {
    out.reserve(text.len() + 3);
    out.put_u8(tag);
    out.extend(
        text.iter()
            .map(|&b| if b == b'\r' || b == b'\n' { b' ' } else { b }),
    );
    out.put_slice(b"\r\n");
}

fn put_blob(out: &mut BytesMut, tag: u8, data: &[u8]) {
    put_header(out, tag, len_i64(data.len()));
    out.reserve(data.len() + 2);
    out.put_slice(data);
    out.put_slice(b"\r\n");
}

fn put_items(out: &mut BytesMut, tag: u8, items: &[Value], encode: fn(&Value, &mut BytesMut)) {
    put_header(out, tag, len_i64(items.len()));
    for item in items {
        encode(item, out);
    }
}

fn put_pairs(
    out: &mut BytesMut,
    tag: u8,
    pairs: &[(Value, Value)],
    encode: fn(&Value, &mut BytesMut),
) {
    put_header(out, tag, len_i64(pairs.len()));
    for (k, v) in pairs {
        encode(k, out);
        encode(v, out);
    }
}

/// Decodes the first value of `buf` (RESP2 or RESP3) and the number of bytes it used, or
/// `Ok(None)` if it has not fully arrived.
pub fn parse_value(buf: &[u8], limits: &Limits) -> Result<Option<(Value, usize)>, ProtocolError> {
    let mut pos = 0;
    match parse_at(buf, &mut pos, limits, 0) {
        Ok(value) => Ok(Some((value, pos))),
        Err(Incomplete::No(e)) => Err(e),
        Err(Incomplete::Yes) => Ok(None),
    }
}

/// The byte length of the first complete RESP2 or RESP3 value of `buf`, or `Ok(None)`.
pub fn value_len(buf: &[u8], limits: &Limits) -> Result<Option<usize>, ProtocolError> {
    Ok(parse_value(buf, limits)?.map(|(_, len)| len))
}

/// Why parsing stopped: not all bytes are there yet, or they are wrong.
enum Incomplete {
    Yes,
    No(ProtocolError),
}

impl From<ProtocolError> for Incomplete {
    fn from(e: ProtocolError) -> Self {
        Incomplete::No(e)
    }
}

fn need<T>(found: Option<T>) -> Result<T, Incomplete> {
    found.ok_or(Incomplete::Yes)
}

/// The text of a line-type value at `start` (tag included in `start`), and the offset after it.
fn line(buf: &[u8], start: usize, limits: &Limits) -> Result<(Bytes, usize), Incomplete> {
    let body = start + 1;
    let rest = buf.get(body..).unwrap_or_default();
    match memchr::memchr(b'\r', rest) {
        Some(cr) => {
            if cr > limits.max_bulk_len {
                return Err(ProtocolError::TooBigReplyLine.into());
            }
            need(crlf_at(buf, body + cr)?)?;
            Ok((
                Bytes::copy_from_slice(rest.get(..cr).unwrap_or_default()),
                body + cr + 2,
            ))
        }
        None if rest.len() > limits.max_bulk_len => Err(ProtocolError::TooBigReplyLine.into()),
        None => Err(Incomplete::Yes),
    }
}

/// A length header (`$`, `=`, `!`, `*`, `%`, `~`, `>`, `|`): `None` for RESP2's `-1`.
fn length(
    buf: &[u8],
    start: usize,
    max: usize,
    error: ProtocolError,
) -> Result<(Option<usize>, usize), Incomplete> {
    if buf.get(start + 1) == Some(&b'?') {
        // Streamed strings and aggregates: Redis never sends them.
        return Err(error.into());
    }
    let (n, body) = need(number_line(buf, start, error)?)?;
    if n == -1 {
        return Ok((None, body));
    }
    Ok((Some(checked_len(n, max, error)?), body))
}

fn blob(buf: &[u8], body: usize, len: usize) -> Result<(Bytes, usize), Incomplete> {
    let end = body
        .checked_add(len)
        .ok_or(ProtocolError::InvalidBulkLength)?;
    need(crlf_at(buf, end)?)?;
    Ok((
        Bytes::copy_from_slice(buf.get(body..end).unwrap_or_default()),
        end + 2,
    ))
}

fn is_double(text: &[u8]) -> bool {
    matches!(text, b"inf" | b"-inf" | b"nan" | b"-nan")
        || (!text.is_empty()
            && text.iter().any(u8::is_ascii_digit)
            && text
                .iter()
                .all(|b| b.is_ascii_digit() || matches!(b, b'-' | b'+' | b'.' | b'e' | b'E')))
}

fn is_big_number(text: &[u8]) -> bool {
    let digits = text.strip_prefix(b"-").unwrap_or(text);
    !digits.is_empty() && digits.iter().all(u8::is_ascii_digit)
}

fn parse_at(
    buf: &[u8],
    pos: &mut usize,
    limits: &Limits,
    depth: usize,
) -> Result<Value, Incomplete> {
    let start = *pos;
    let tag = *need(buf.get(start))?;
    let aggregate_limit = |what| {
        if depth >= limits.depth() {
            Err(Incomplete::No(ProtocolError::NestingTooDeep))
        } else {
            Ok(what)
        }
    };
    let value = match tag {
        b'+' | b'-' | b',' | b'(' => {
            let (text, end) = line(buf, start, limits)?;
            *pos = end;
            match tag {
                b'+' => Value::Simple(text),
                b'-' => Value::Error(text),
                b',' if is_double(&text) => Value::Double(text),
                b'(' if is_big_number(&text) => Value::BigNumber(text),
                _ => return Err(ProtocolError::InvalidInteger.into()),
            }
        }
        b':' => {
            let (n, end) = need(number_line(buf, start, ProtocolError::InvalidInteger)?)?;
            *pos = end;
            Value::Integer(n)
        }
        b'_' => {
            need(crlf_at(buf, start + 1)?)?;
            *pos = start + 3;
            Value::Null
        }
        b'#' => {
            let b = match *need(buf.get(start + 1))? {
                b't' => true,
                b'f' => false,
                other => return Err(ProtocolError::InvalidTypeByte(other).into()),
            };
            need(crlf_at(buf, start + 2)?)?;
            *pos = start + 4;
            Value::Boolean(b)
        }
        b'$' | b'=' | b'!' => {
            let (len, body) = length(
                buf,
                start,
                limits.max_bulk_len,
                ProtocolError::InvalidBulkLength,
            )?;
            let Some(len) = len else {
                if tag != b'$' {
                    return Err(ProtocolError::InvalidBulkLength.into());
                }
                *pos = body;
                return Ok(Value::Null);
            };
            let (data, end) = blob(buf, body, len)?;
            *pos = end;
            match tag {
                b'$' => Value::Bulk(data),
                b'!' => Value::BlobError(data),
                _ => {
                    let (format, text) = match data.get(..4) {
                        Some([a, b, c, b':']) => ([*a, *b, *c], data.slice(4..)),
                        _ => return Err(ProtocolError::InvalidBulkLength.into()),
                    };
                    Value::Verbatim { format, text }
                }
            }
        }
        b'*' | b'~' | b'>' => {
            aggregate_limit(())?;
            let (count, body) = length(
                buf,
                start,
                limits.max_array_len,
                ProtocolError::InvalidMultibulkLength,
            )?;
            *pos = body;
            let Some(count) = count else {
                if tag != b'*' {
                    return Err(ProtocolError::InvalidMultibulkLength.into());
                }
                return Ok(Value::NullArray);
            };
            let mut items = Vec::with_capacity(count.min(PREALLOC_ARGS));
            for _ in 0..count {
                items.push(parse_at(buf, pos, limits, depth + 1)?);
            }
            match tag {
                b'*' => Value::Array(items),
                b'~' => Value::Set(items),
                _ => Value::Push(items),
            }
        }
        b'%' | b'|' => {
            aggregate_limit(())?;
            let (count, body) = length(
                buf,
                start,
                limits.max_array_len / 2,
                ProtocolError::InvalidMultibulkLength,
            )?;
            let count = count.ok_or(ProtocolError::InvalidMultibulkLength)?;
            *pos = body;
            let mut pairs = Vec::with_capacity(count.min(PREALLOC_ARGS));
            for _ in 0..count {
                let k = parse_at(buf, pos, limits, depth + 1)?;
                let v = parse_at(buf, pos, limits, depth + 1)?;
                pairs.push((k, v));
            }
            if tag == b'%' {
                Value::Map(pairs)
            } else {
                // An attribute describes the value after it; that value cannot be another
                // attribute (nothing would be described).
                if buf.get(*pos) == Some(&b'|') {
                    return Err(ProtocolError::InvalidTypeByte(b'|').into());
                }
                let value = parse_at(buf, pos, limits, depth)?;
                Value::Attribute {
                    attributes: pairs,
                    value: Box::new(value),
                }
            }
        }
        other => return Err(ProtocolError::InvalidTypeByte(other).into()),
    };
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits::replies()
    }

    fn parse(bytes: &[u8]) -> Value {
        let (value, used) = parse_value(bytes, &limits()).unwrap().unwrap();
        assert_eq!(used, bytes.len(), "{:?}", String::from_utf8_lossy(bytes));
        value
    }

    /// Every type, as Redis sends it; each must re-encode to the same bytes.
    const SAMPLES: &[&[u8]] = &[
        b"+OK\r\n",
        b"-ERR no\r\n",
        b":-42\r\n",
        b"$3\r\nfoo\r\n",
        b"$0\r\n\r\n",
        b"_\r\n",
        b"*0\r\n",
        b",1.5\r\n",
        b",inf\r\n",
        b",-inf\r\n",
        b",nan\r\n",
        b",3\r\n",
        b",1.2e-07\r\n",
        b"#t\r\n",
        b"#f\r\n",
        b"(3492890328409238509324850943850943825024385\r\n",
        b"(-3\r\n",
        b"=15\r\ntxt:Some string\r\n",
        b"!21\r\nSYNTAX invalid syntax\r\n",
        b"%2\r\n+first\r\n:1\r\n$6\r\nsecond\r\n~1\r\n:2\r\n",
        b"~2\r\n$1\r\na\r\n_\r\n",
        b">3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$3\r\nhi!\r\n",
        b"|1\r\n+key-popularity\r\n%1\r\n$1\r\na\r\n,0.1923\r\n*1\r\n:2\r\n",
        b"*2\r\n%0\r\n*1\r\n|1\r\n+k\r\n:1\r\n:5\r\n",
    ];

    #[test]
    fn every_type_parses_and_reencodes_identically() {
        for bytes in SAMPLES {
            let value = parse(bytes);
            assert_eq!(&value.to_resp3()[..], *bytes, "{value:?}");
        }
    }

    #[test]
    fn incomplete_at_every_offset() {
        for bytes in SAMPLES {
            for cut in 0..bytes.len() {
                assert_eq!(
                    parse_value(&bytes[..cut], &limits()),
                    Ok(None),
                    "{:?} cut at {cut}",
                    String::from_utf8_lossy(bytes)
                );
            }
        }
    }

    #[test]
    fn resp2_bytes_parse_as_their_resp2_types() {
        assert_eq!(parse(b"$-1\r\n"), Value::Null);
        assert_eq!(parse(b"*-1\r\n"), Value::NullArray);
        assert_eq!(parse(b"$-1\r\n").to_resp2(), &b"$-1\r\n"[..]);
        assert_eq!(parse(b"*-1\r\n").to_resp2(), &b"*-1\r\n"[..]);
        assert_eq!(parse(b"*-1\r\n").to_resp3(), &b"_\r\n"[..]);
    }

    #[test]
    fn resp2_encoding_converts_like_redis() {
        let cases: &[(&[u8], &[u8])] = &[
            (b"%1\r\n$1\r\nk\r\n:1\r\n", b"*2\r\n$1\r\nk\r\n:1\r\n"),
            (b"~1\r\n$1\r\nm\r\n", b"*1\r\n$1\r\nm\r\n"),
            (b",1.5\r\n", b"$3\r\n1.5\r\n"),
            (b"#t\r\n", b":1\r\n"),
            (b"#f\r\n", b":0\r\n"),
            (b"(123\r\n", b"$3\r\n123\r\n"),
            (b"=8\r\ntxt:abcd\r\n", b"$4\r\nabcd\r\n"),
            (b"!5\r\nERR x\r\n", b"-ERR x\r\n"),
            (b"_\r\n", b"$-1\r\n"),
            (b">1\r\n:1\r\n", b"*1\r\n:1\r\n"),
            (b"|1\r\n+a\r\n:1\r\n+OK\r\n", b"+OK\r\n"),
        ];
        for (resp3, resp2) in cases {
            assert_eq!(&parse(resp3).to_resp2()[..], *resp2);
        }
    }

    #[test]
    fn malformed_values_are_refused() {
        use ProtocolError::*;
        let cases: &[(&[u8], ProtocolError)] = &[
            (b",1.5x\r\n", InvalidInteger),
            (b",\r\n", InvalidInteger),
            (b"(12a\r\n", InvalidInteger),
            (b"#x\r\n", InvalidTypeByte(b'x')),
            (b"#tt\r\n", ExpectedCrlf(b't')),
            (b"_x\r\n", ExpectedCrlf(b'x')),
            (b"=3\r\ntxt\r\n", InvalidBulkLength),
            (b"=2\r\nab\r\n", InvalidBulkLength),
            (b"=-1\r\n", InvalidBulkLength),
            (b"!-1\r\n", InvalidBulkLength),
            (b"%-1\r\n", InvalidMultibulkLength),
            (b"~-1\r\n", InvalidMultibulkLength),
            (b">-1\r\n", InvalidMultibulkLength),
            (b"$?\r\n", InvalidBulkLength),
            (b"*?\r\n", InvalidMultibulkLength),
            (b";4\r\n", InvalidTypeByte(b';')),
            (b"|1\r\n+a\r\n:1\r\n|0\r\n+OK\r\n", InvalidTypeByte(b'|')),
            (b"%1\r\n:1\r\n@\r\n", InvalidTypeByte(b'@')),
        ];
        for (bytes, error) in cases {
            assert_eq!(
                parse_value(bytes, &limits()),
                Err(*error),
                "{:?}",
                String::from_utf8_lossy(bytes)
            );
        }
    }

    #[test]
    fn nesting_and_sizes_are_limited() {
        let mut deep = b"%1\r\n:1\r\n".repeat(40);
        deep.extend_from_slice(b":1\r\n");
        assert_eq!(
            parse_value(&deep, &limits()),
            Err(ProtocolError::NestingTooDeep)
        );
        let small = Limits {
            max_bulk_len: 4,
            max_array_len: 4,
            ..Limits::default()
        };
        assert_eq!(
            parse_value(b"=9\r\ntxt:abcde\r\n", &small),
            Err(ProtocolError::InvalidBulkLength)
        );
        assert_eq!(
            parse_value(b"~5\r\n", &small),
            Err(ProtocolError::InvalidMultibulkLength)
        );
        assert_eq!(
            parse_value(b"%3\r\n", &small),
            Err(ProtocolError::InvalidMultibulkLength)
        );
        assert_eq!(
            parse_value(b",123456\r\n", &small),
            Err(ProtocolError::TooBigReplyLine)
        );
    }

    #[test]
    fn frames_convert_to_values() {
        let frame = Frame::Array(vec![Frame::Null, Frame::NullArray, Frame::Integer(1)]);
        let value = Value::from(frame.clone());
        assert_eq!(value.to_resp2(), frame.to_bytes());
        assert_eq!(&value.to_resp3()[..], b"*3\r\n_\r\n_\r\n:1\r\n");
    }
}
