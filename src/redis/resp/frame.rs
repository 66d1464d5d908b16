//! One RESP2 value ([`Frame`]) and the encoders: replies, and requests in multibulk form.

use std::fmt;

use bytes::{BufMut, Bytes, BytesMut};

use super::limits::{MAX_DECIMAL_LEN, ProtocolError};

/// One RESP2 value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// `+OK`: a status line.
    Simple(Bytes),
    /// `-ERR ...`: the error code and message, without the `-`.
    Error(Bytes),
    /// `:42`.
    Integer(i64),
    /// `$3\r\nfoo`: a binary-safe string.
    Bulk(Bytes),
    /// `$-1`: the nil reply.
    Null,
    /// `*2\r\n...`.
    Array(Vec<Frame>),
    /// `*-1`: the nil array (a timed-out BLPOP, an aborted EXEC).
    NullArray,
}

impl Frame {
    /// `+OK`.
    pub fn ok() -> Frame {
        Frame::Simple(Bytes::from_static(b"OK"))
    }

    /// A status line.
    pub fn simple(text: impl Into<Bytes>) -> Frame {
        Frame::Simple(text.into())
    }

    /// An error reply with its code spelled out, e.g. `"WRONGTYPE Operation against ..."`.
    pub fn error(text: impl Into<Bytes>) -> Frame {
        Frame::Error(text.into())
    }

    /// The generic error reply `-ERR <detail>`, e.g. for a command error's Display.
    pub fn err(detail: impl fmt::Display) -> Frame {
        Frame::Error(Bytes::from(format!("ERR {detail}")))
    }

    /// `-ERR Protocol error: <error>`, which Redis sends before closing a connection.
    pub fn protocol_error(error: ProtocolError) -> Frame {
        Frame::err(format_args!("Protocol error: {error}"))
    }

    /// A bulk string.
    pub fn bulk(data: impl Into<Bytes>) -> Frame {
        Frame::Bulk(data.into())
    }

    /// An array.
    pub fn array(items: impl IntoIterator<Item = Frame>) -> Frame {
        Frame::Array(items.into_iter().collect())
    }

    /// Whether this is an error reply.
    pub fn is_error(&self) -> bool {
        matches!(self, Frame::Error(_))
    }

    /// The payload of a bulk string.
    pub fn as_bulk(&self) -> Option<&Bytes> {
        match self {
            Frame::Bulk(data) => Some(data),
            _ => None,
        }
    }

    /// The value of an integer reply.
    pub fn as_integer(&self) -> Option<i64> {
        match self {
            Frame::Integer(n) => Some(*n),
            _ => None,
        }
    }

    /// Appends the RESP2 encoding. CR and LF inside a simple string or error are replaced by
    /// spaces, as Redis does, so the output is always one valid frame.
    pub fn encode(&self, out: &mut BytesMut) {
        match self {
            Frame::Simple(text) => put_line(out, b'+', text),
            Frame::Error(text) => put_line(out, b'-', text),
            Frame::Integer(n) => put_header(out, b':', *n),
            Frame::Bulk(data) => put_bulk(out, data),
            Frame::Null => out.put_slice(b"$-1\r\n"),
            Frame::Array(items) => {
                put_header(out, b'*', len_i64(items.len()));
                for item in items {
                    item.encode(out);
                }
            }
            Frame::NullArray => out.put_slice(b"*-1\r\n"),
        }
    }

    /// The number of bytes [`Frame::encode`] appends.
    pub fn encoded_len(&self) -> usize {
        match self {
            Frame::Simple(text) | Frame::Error(text) => text.len() + 3,
            Frame::Integer(n) => decimal_len(*n) + 3,
            Frame::Bulk(data) => decimal_len(len_i64(data.len())) + data.len() + 5,
            Frame::Null | Frame::NullArray => 5,
            Frame::Array(items) => {
                decimal_len(len_i64(items.len()))
                    + 3
                    + items.iter().map(Frame::encoded_len).sum::<usize>()
            }
        }
    }

    /// The encoding as one buffer.
    pub fn to_bytes(&self) -> Bytes {
        let mut out = BytesMut::with_capacity(self.encoded_len());
        self.encode(&mut out);
        out.freeze()
    }
}

/// Appends a request in multibulk form (`*<n>` then one bulk per argument), the form the
/// sidecar uses to send commands to Redis.
pub fn encode_request<A: AsRef<[u8]>>(args: &[A], out: &mut BytesMut) {
    put_header(out, b'*', len_i64(args.len()));
    for arg in args {
        put_bulk(out, arg.as_ref());
    }
}

fn len_i64(len: usize) -> i64 {
    // A length beyond i64::MAX cannot exist in memory; saturate rather than panic.
    i64::try_from(len).unwrap_or(i64::MAX)
}

fn put_line(out: &mut BytesMut, tag: u8, text: &[u8]) {
    out.reserve(text.len() + 3);
    out.put_u8(tag);
    for chunk in text.split_inclusive(|b| *b == b'\r' || *b == b'\n') {
        match chunk.split_last() {
            Some((last, body)) if *last == b'\r' || *last == b'\n' => {
                out.put_slice(body);
                out.put_u8(b' ');
            }
            _ => out.put_slice(chunk),
        }
    }
    out.put_slice(b"\r\n");
}

fn put_bulk(out: &mut BytesMut, data: &[u8]) {
    put_header(out, b'$', len_i64(data.len()));
    out.reserve(data.len() + 2);
    out.put_slice(data);
    out.put_slice(b"\r\n");
}

fn put_header(out: &mut BytesMut, tag: u8, n: i64) {
    out.put_u8(tag);
    put_decimal(out, n);
    out.put_slice(b"\r\n");
}

fn put_decimal(out: &mut BytesMut, n: i64) {
    // Hand-rolled: fmt::Write would need an error path for a write that cannot fail.
    let mut digits = [0u8; MAX_DECIMAL_LEN];
    let mut start = digits.len();
    let mut rest = n.unsigned_abs();
    for slot in digits.iter_mut().rev() {
        *slot = b'0' + (rest % 10) as u8;
        start -= 1;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    if n < 0 {
        out.put_u8(b'-');
    }
    out.put_slice(digits.get(start..).unwrap_or_default());
}

fn decimal_len(n: i64) -> usize {
    let mut len = usize::from(n < 0) + 1;
    let mut rest = n.unsigned_abs() / 10;
    while rest > 0 {
        len += 1;
        rest /= 10;
    }
    len
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::redis::resp::tests::{encoded, request};

    #[test]
    fn encodes_every_type() {
        let cases: Vec<(Frame, &[u8])> = vec![
            (Frame::ok(), b"+OK\r\n"),
            (Frame::simple("PONG"), b"+PONG\r\n"),
            (Frame::error("WRONGTYPE bad"), b"-WRONGTYPE bad\r\n"),
            (Frame::err("unknown"), b"-ERR unknown\r\n"),
            (Frame::Integer(0), b":0\r\n"),
            (Frame::Integer(-42), b":-42\r\n"),
            (Frame::Integer(i64::MIN), b":-9223372036854775808\r\n"),
            (Frame::Integer(i64::MAX), b":9223372036854775807\r\n"),
            (Frame::bulk("foo"), b"$3\r\nfoo\r\n"),
            (Frame::bulk(""), b"$0\r\n\r\n"),
            (Frame::bulk(&b"a\r\nb"[..]), b"$4\r\na\r\nb\r\n"),
            (Frame::Null, b"$-1\r\n"),
            (Frame::NullArray, b"*-1\r\n"),
            (Frame::Array(vec![]), b"*0\r\n"),
            (
                Frame::array([
                    Frame::Integer(1),
                    Frame::array([Frame::bulk("x"), Frame::Null]),
                ]),
                b"*2\r\n:1\r\n*2\r\n$1\r\nx\r\n$-1\r\n",
            ),
        ];
        for (frame, bytes) in cases {
            assert_eq!(encoded(&frame), bytes, "{frame:?}");
            assert_eq!(frame.encoded_len(), bytes.len(), "{frame:?}");
            assert_eq!(frame.to_bytes(), bytes);
        }
    }

    #[test]
    fn encoding_replaces_line_breaks_in_lines_like_redis() {
        assert_eq!(encoded(&Frame::error("ERR a\r\nb\nc")), b"-ERR a  b c\r\n");
        assert_eq!(encoded(&Frame::simple("\r")), b"+ \r\n");
    }

    #[test]
    fn encodes_requests_as_multibulk() {
        assert_eq!(
            request(&[b"SET", b"k", b""]),
            b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$0\r\n\r\n"
        );
        assert_eq!(request(&[]), b"*0\r\n");
    }

    #[test]
    fn protocol_errors_read_like_redis_and_never_break_the_line() {
        assert_eq!(
            encoded(&Frame::protocol_error(ProtocolError::ExpectedBulk(b':'))),
            b"-ERR Protocol error: expected '$', got ':'\r\n"
        );
        assert_eq!(
            ProtocolError::ExpectedCrlf(b'\n').to_string(),
            "expected CRLF, got '\\x0a'"
        );
        assert_eq!(
            ProtocolError::InvalidTypeByte(0xff).to_string(),
            "got '\\xff' as reply type byte"
        );
        for (error, text) in [
            (
                ProtocolError::InvalidMultibulkLength,
                "invalid multibulk length",
            ),
            (ProtocolError::InvalidBulkLength, "invalid bulk length"),
            (ProtocolError::InvalidInteger, "invalid integer"),
            (ProtocolError::TooBigInlineRequest, "too big inline request"),
            (
                ProtocolError::UnbalancedQuotes,
                "unbalanced quotes in request",
            ),
            (ProtocolError::NestingTooDeep, "nesting too deep"),
        ] {
            assert_eq!(error.to_string(), text);
        }
    }

    #[test]
    fn accessors() {
        assert!(Frame::err("x").is_error());
        assert!(!Frame::ok().is_error());
        assert_eq!(Frame::Integer(5).as_integer(), Some(5));
        assert_eq!(Frame::Null.as_integer(), None);
        assert_eq!(Frame::Null.as_bulk(), None);
    }
}
