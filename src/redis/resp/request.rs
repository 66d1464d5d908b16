//! Requests, client → sidecar: the resumable [`RequestDecoder`], the one-shot
//! [`parse_request`] and inline commands split exactly like Redis' `sdssplitargs`.

use std::ops::Range;

use bytes::{Buf, Bytes, BytesMut};

use super::limits::{Limits, PREALLOC_ARGS, ProtocolError};
use super::number::{checked_len, crlf_at, number_line};

/// Where a request stands between two calls. Offsets are from the start of the buffer, which
/// always begins with the request being parsed.
#[derive(Debug, Clone, Default)]
enum RequestState {
    /// Nothing of the next request has been examined.
    #[default]
    Start,
    /// An inline line without its `\n` yet; `scanned` bytes hold no `\n`.
    Inline { scanned: usize },
    /// A multibulk request: `remaining` arguments still to come after `pos`.
    Multibulk {
        remaining: usize,
        pos: usize,
        args: Vec<Range<usize>>,
        /// Buffer length at which the bulk being received will be complete.
        needed: Option<usize>,
    },
}

impl RequestState {
    /// The buffer length the state relies on: a shorter buffer means the caller broke the
    /// append-only contract, and the request is parsed again from the start.
    fn examined(&self) -> usize {
        match self {
            RequestState::Start => 0,
            RequestState::Inline { scanned } => *scanned,
            RequestState::Multibulk { pos, .. } => *pos,
        }
    }
}

/// The longest argument list a decoder keeps for its next request (most have two or three).
const SPARE_ARGS: usize = 8;

/// One parsed request, before its bytes are turned into arguments.
enum Parsed {
    /// A multibulk request: the byte ranges of its arguments.
    Ranges(Vec<Range<usize>>),
    /// An inline request, unescaped (so copied).
    Inline(Vec<Bytes>),
    /// `*0`, `*-1` or a blank inline line: Redis ignores these, and so do we.
    Empty,
}

/// Advances `state` over `buf`: the request and the bytes it used, or `None` if incomplete.
/// A multibulk request's argument list starts from `spare` (emptied), so that a decoder that
/// hands its lists back allocates none per request.
fn advance_request(
    state: &mut RequestState,
    buf: &[u8],
    limits: &Limits,
    spare: &mut Vec<Range<usize>>,
) -> Result<Option<(Parsed, usize)>, ProtocolError> {
    loop {
        match state {
            RequestState::Start => match buf.first() {
                None => return Ok(None),
                Some(b'*') => {
                    let Some((count, pos)) =
                        number_line(buf, 0, ProtocolError::InvalidMultibulkLength)?
                    else {
                        return Ok(None);
                    };
                    // Redis skips `*0` and any negative count alike.
                    if count <= 0 {
                        return Ok(Some((Parsed::Empty, pos)));
                    }
                    let count = checked_len(
                        count,
                        limits.max_array_len,
                        ProtocolError::InvalidMultibulkLength,
                    )?;
                    let mut args = std::mem::take(spare);
                    args.clear();
                    args.reserve(count.min(PREALLOC_ARGS));
                    *state = RequestState::Multibulk {
                        remaining: count,
                        pos,
                        args,
                        needed: None,
                    };
                }
                Some(_) => *state = RequestState::Inline { scanned: 0 },
            },
            RequestState::Inline { scanned } => {
                let unscanned = buf.get(*scanned..).unwrap_or_default();
                let Some(offset) = memchr::memchr(b'\n', unscanned) else {
                    *scanned = buf.len();
                    // The line is at least this long, less a CR that may turn out to end it.
                    let at_least = buf.len() - usize::from(buf.last() == Some(&b'\r'));
                    if at_least > limits.max_inline_len {
                        return Err(ProtocolError::TooBigInlineRequest);
                    }
                    return Ok(None);
                };
                let newline = *scanned + offset;
                let line = buf.get(..newline).unwrap_or_default();
                let line = line.strip_suffix(b"\r").unwrap_or(line);
                if line.len() > limits.max_inline_len {
                    return Err(ProtocolError::TooBigInlineRequest);
                }
                let args = split_inline(line)?;
                let parsed = if args.is_empty() {
                    Parsed::Empty
                } else {
                    Parsed::Inline(args)
                };
                return Ok(Some((parsed, newline + 1)));
            }
            RequestState::Multibulk {
                remaining,
                pos,
                args,
                needed,
            } => {
                while *remaining > 0 {
                    let Some(&tag) = buf.get(*pos) else {
                        return Ok(None);
                    };
                    if tag != b'$' {
                        return Err(ProtocolError::ExpectedBulk(tag));
                    }
                    let Some((len, body)) =
                        number_line(buf, *pos, ProtocolError::InvalidBulkLength)?
                    else {
                        return Ok(None);
                    };
                    let len =
                        checked_len(len, limits.max_bulk_len, ProtocolError::InvalidBulkLength)?;
                    let end = body
                        .checked_add(len)
                        .ok_or(ProtocolError::InvalidBulkLength)?;
                    if crlf_at(buf, end)?.is_none() {
                        *needed = end.checked_add(2);
                        return Ok(None);
                    }
                    args.push(body..end);
                    *pos = end + 2;
                    *remaining -= 1;
                    *needed = None;
                }
                return Ok(Some((Parsed::Ranges(std::mem::take(args)), *pos)));
            }
        }
    }
}

/// Parses one request from the start of `buf`: its arguments (`args[0]` is the command name)
/// and the number of bytes it used, or `Ok(None)` if `buf` holds only part of it.
///
/// Requests Redis ignores (`*0\r\n`, a negative count, a blank inline line) come back as an
/// empty argument list with their length, so the caller can drop those bytes and go on.
///
/// One-shot: it copies the arguments and starts over on every call (see the module docs for the
/// cost); the server's read loop should use [`RequestDecoder`] instead.
pub fn parse_request(
    buf: &[u8],
    limits: &Limits,
) -> Result<Option<(Vec<Bytes>, usize)>, ProtocolError> {
    let mut state = RequestState::Start;
    Ok(
        advance_request(&mut state, buf, limits, &mut Vec::new())?.map(|(parsed, used)| {
            let args = match parsed {
                Parsed::Ranges(ranges) => ranges
                    .into_iter()
                    .map(|range| Bytes::copy_from_slice(buf.get(range).unwrap_or_default()))
                    .collect(),
                Parsed::Inline(args) => args,
                Parsed::Empty => Vec::new(),
            };
            (args, used)
        }),
    )
}

/// One decoded client request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// Arguments; `args[0]` is the command name.
    pub args: Vec<Bytes>,
    /// The bytes of a multibulk request as received (the arguments are slices of them);
    /// `None` for an inline command, which must be encoded to be forwarded.
    pub raw: Option<Bytes>,
}

/// The request parser of one client connection: feed it the connection's read buffer after
/// every read, like a `tokio_util` codec.
///
/// It remembers how far it got, so a big request arriving in many reads is examined once, and
/// it splits each complete request off the buffer: the multibulk arguments it returns are
/// zero-copy slices of the bytes read (which stay allocated while any argument is alive).
///
/// Contract: between two calls the buffer may only grow at its end; after an error, the
/// connection is to be closed (the decoder starts afresh if used again).
#[derive(Debug, Clone, Default)]
pub struct RequestDecoder {
    limits: Limits,
    state: RequestState,
    /// The last request's argument ranges, kept for the next one.
    spare: Vec<Range<usize>>,
}

impl RequestDecoder {
    /// A decoder enforcing `limits`.
    pub fn new(limits: Limits) -> Self {
        RequestDecoder {
            limits,
            state: RequestState::Start,
            spare: Vec::new(),
        }
    }

    /// The next request's arguments (never empty; `args[0]` is the command name), removed from
    /// the front of `buf`, or `Ok(None)` until it has fully arrived. Requests Redis ignores
    /// (`*0`, blank inline lines) are dropped from `buf` silently.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Vec<Bytes>>, ProtocolError> {
        Ok(self.decode_request(buf)?.map(|r| r.args))
    }

    /// Like [`decode`](Self::decode), also returning the exact bytes of a multibulk request,
    /// so a proxy can forward it without encoding it again.
    pub fn decode_request(&mut self, buf: &mut BytesMut) -> Result<Option<Request>, ProtocolError> {
        loop {
            if buf.len() < self.state.examined() {
                self.state = RequestState::Start;
            }
            let (parsed, used) =
                match advance_request(&mut self.state, buf, &self.limits, &mut self.spare) {
                    Ok(Some(done)) => done,
                    Ok(None) => return Ok(None),
                    Err(error) => {
                        self.state = RequestState::Start;
                        return Err(error);
                    }
                };
            self.state = RequestState::Start;
            match parsed {
                Parsed::Empty => buf.advance(used),
                Parsed::Inline(args) => {
                    buf.advance(used);
                    return Ok(Some(Request { args, raw: None }));
                }
                Parsed::Ranges(ranges) => {
                    let request = buf.split_to(used).freeze();
                    let mut args = Vec::with_capacity(ranges.len());
                    for range in &ranges {
                        // Ranges always lie within the request; checked rather than trusted.
                        if range.end > request.len() || range.start > range.end {
                            return Err(ProtocolError::InvalidBulkLength);
                        }
                        args.push(request.slice(range.clone()));
                    }
                    // Kept for the next request unless this one was long: an idle connection
                    // holds at most this little.
                    if ranges.capacity() <= SPARE_ARGS {
                        self.spare = ranges;
                    }
                    return Ok(Some(Request {
                        args,
                        raw: Some(request),
                    }));
                }
            }
        }
    }

    /// The buffer length at which the next [`decode`](Self::decode) can make progress, when it
    /// is known: inside a bulk string, its end. Lets the caller reserve room for a large value
    /// once, and skip decoding until that many bytes have arrived.
    pub fn needed(&self) -> Option<usize> {
        match &self.state {
            RequestState::Multibulk { needed, .. } => *needed,
            _ => None,
        }
    }
}

/// C's `isspace` in the "C" locale, which `sdssplitargs` uses to skip blanks.
fn is_c_space(byte: u8) -> bool {
    matches!(byte, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c)
}

fn hex_value(byte: u8) -> Option<u8> {
    char::from(byte)
        .to_digit(16)
        .and_then(|d| u8::try_from(d).ok())
}

/// Splits an inline command line into arguments exactly like Redis' `sdssplitargs`: blanks
/// separate arguments; "double quotes" understand `\n \r \t \b \a \xHH` and `\<any>`;
/// 'single quotes' only `\'`; a closing quote must be followed by a blank or the end; a quote
/// may open in the middle of an argument (`a"b c"` is `ab c`). The line is a C string to
/// `sdssplitargs`, so the arguments end at the first NUL byte. (Redis 7.0 even looks for the
/// `\n` with `strchr`, so a NUL stalls its connection until the inline limit; we end the line
/// at the `\n` as intended.)
fn split_inline(line: &[u8]) -> Result<Vec<Bytes>, ProtocolError> {
    let line = match memchr::memchr(0, line) {
        Some(nul) => line.get(..nul).unwrap_or_default(),
        None => line,
    };
    // The C code reads the terminating NUL past the end; so does `at`.
    let at = |i: usize| line.get(i).copied().unwrap_or(0);
    let mut args = Vec::new();
    let mut p = 0;
    loop {
        while p < line.len() && is_c_space(at(p)) {
            p += 1;
        }
        if p >= line.len() {
            return Ok(args);
        }
        let mut current = Vec::new();
        let (mut in_double, mut in_single, mut done) = (false, false, false);
        while !done {
            let c = at(p);
            if in_double {
                if let (b'\\', b'x', Some(hi), Some(lo)) =
                    (c, at(p + 1), hex_value(at(p + 2)), hex_value(at(p + 3)))
                {
                    current.push(hi * 16 + lo);
                    p += 3;
                } else if c == b'\\' && at(p + 1) != 0 {
                    p += 1;
                    current.push(match at(p) {
                        b'n' => b'\n',
                        b'r' => b'\r',
                        b't' => b'\t',
                        b'b' => 0x08,
                        b'a' => 0x07,
                        other => other,
                    });
                } else if c == b'"' {
                    if at(p + 1) != 0 && !is_c_space(at(p + 1)) {
                        return Err(ProtocolError::UnbalancedQuotes);
                    }
                    done = true;
                } else if c == 0 {
                    return Err(ProtocolError::UnbalancedQuotes);
                } else {
                    current.push(c);
                }
            } else if in_single {
                if c == b'\\' && at(p + 1) == b'\'' {
                    p += 1;
                    current.push(b'\'');
                } else if c == b'\'' {
                    if at(p + 1) != 0 && !is_c_space(at(p + 1)) {
                        return Err(ProtocolError::UnbalancedQuotes);
                    }
                    done = true;
                } else if c == 0 {
                    return Err(ProtocolError::UnbalancedQuotes);
                } else {
                    current.push(c);
                }
            } else {
                match c {
                    b' ' | b'\n' | b'\r' | b'\t' | 0 => done = true,
                    b'"' => in_double = true,
                    b'\'' => in_single = true,
                    other => current.push(other),
                }
            }
            // `if (*p) p++;` in the C code, read after the moves above.
            if at(p) != 0 {
                p += 1;
            }
        }
        args.push(Bytes::from(current));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::redis::resp::frame_len;
    use crate::redis::resp::tests::{args, limits, request};

    fn inline(line: &[u8]) -> Result<Vec<Bytes>, ProtocolError> {
        split_inline(line)
    }

    // --- requests -----------------------------------------------------------------------------

    #[test]
    fn parses_a_multibulk_request_and_leaves_the_next_one() {
        let mut buf = request(&[b"GET", b"key"]);
        let first = buf.len();
        buf.extend_from_slice(&request(&[b"PING"]));
        let (got, used) = parse_request(&buf, &limits()).unwrap().unwrap();
        assert_eq!(got, args(&[b"GET", b"key"]));
        assert_eq!(used, first);
        let (got, used) = parse_request(&buf[first..], &limits()).unwrap().unwrap();
        assert_eq!((got, used), (args(&[b"PING"]), buf.len() - first));
    }

    #[test]
    fn binary_arguments_survive() {
        let value: &[u8] = b"\r\n\0*$\xff";
        let buf = request(&[b"SET", b"k", value]);
        let (got, _) = parse_request(&buf, &limits()).unwrap().unwrap();
        assert_eq!(got[2], value);
    }

    #[test]
    fn requests_redis_ignores_come_back_empty_with_their_length() {
        for (buf, used) in [
            (&b"*0\r\n"[..], 4),
            (b"*-1\r\n", 5),
            (b"*-100\r\n", 7),
            (b"\r\n", 2),
            (b"\n", 1),
            (b" \t \r\n", 5),
            (b"\0PING\n", 6),
        ] {
            assert_eq!(
                parse_request(buf, &limits()).unwrap(),
                Some((vec![], used)),
                "{buf:?}"
            );
        }
    }

    #[test]
    fn malformed_requests_are_refused_with_redis_texts() {
        use ProtocolError::*;
        let cases: &[(&[u8], ProtocolError)] = &[
            (b"*abc\r\n", InvalidMultibulkLength),
            (b"*1x", InvalidMultibulkLength),
            (b"*01\r\n", InvalidMultibulkLength),
            (b"*-0\r\n", InvalidMultibulkLength),
            (b"*+1\r\n", InvalidMultibulkLength),
            (b"* 1\r\n", InvalidMultibulkLength),
            (b"*\r\n", InvalidMultibulkLength),
            (b"*1\r\n:1\r\n", ExpectedBulk(b':')),
            (b"*2\r\n$1\r\na\r\n*1\r\n", ExpectedBulk(b'*')),
            (b"*1\r\n$-1\r\n", InvalidBulkLength),
            (b"*1\r\n$\r\n", InvalidBulkLength),
            (b"*1\r\n$3x", InvalidBulkLength),
            (b"*1\r\n$3\r\nGETxx", ExpectedCrlf(b'x')),
            (b"*1\r\n$3\r\nGET\rx", ExpectedCrlf(b'x')),
            (b"*1\r\n$3\r\nGET\n\r", ExpectedCrlf(b'\n')),
            (b"*1\rx", ExpectedCrlf(b'x')),
            (b"*1\n$3\r\n", InvalidMultibulkLength),
            (b"GET \"k\n", UnbalancedQuotes),
            (b"GET 'k\r\n", UnbalancedQuotes),
            (b"GET \"k\"x\n", UnbalancedQuotes),
        ];
        for (buf, error) in cases {
            assert_eq!(parse_request(buf, &limits()), Err(*error), "{buf:?}");
        }
    }

    #[test]
    fn over_long_length_lines_fail_without_waiting_for_a_crlf() {
        // 21 digits cannot be an i64: no need to wait for the CR.
        let buf = b"*111111111111111111111";
        assert_eq!(
            parse_request(buf, &limits()),
            Err(ProtocolError::InvalidMultibulkLength)
        );
        // 20 digits still might be (until the value is known).
        assert_eq!(parse_request(&buf[..21], &limits()), Ok(None));
        assert_eq!(
            frame_len(b"$99999999999999999999999", &limits()),
            Err(ProtocolError::InvalidBulkLength)
        );
    }

    #[test]
    fn declared_lengths_beyond_the_limits_are_refused_before_any_payload() {
        // 10 GB declared: refused on the header, not awaited.
        let buf = b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$10000000000\r\n";
        assert_eq!(
            parse_request(buf, &limits()),
            Err(ProtocolError::InvalidBulkLength)
        );
        let small = Limits {
            max_bulk_len: 3,
            max_array_len: 2,
            ..Limits::default()
        };
        assert!(parse_request(&request(&[b"abc", b"def"]), &small).is_ok());
        assert_eq!(
            parse_request(b"*1\r\n$4\r\n", &small),
            Err(ProtocolError::InvalidBulkLength)
        );
        assert_eq!(
            parse_request(b"*3\r\n", &small),
            Err(ProtocolError::InvalidMultibulkLength)
        );
        assert_eq!(
            parse_request(b"*2147483648\r\n", &limits()),
            Err(ProtocolError::InvalidMultibulkLength)
        );
        assert_eq!(
            frame_len(b"$4\r\n", &small),
            Err(ProtocolError::InvalidBulkLength)
        );
        assert_eq!(
            frame_len(b"*3\r\n", &small),
            Err(ProtocolError::InvalidMultibulkLength)
        );
        assert_eq!(frame_len(b"*3\r\n", &Limits::replies()), Ok(None));
    }

    #[test]
    fn inline_line_length_is_limited_whatever_the_read_sizes() {
        let small = Limits {
            max_inline_len: 8,
            ..Limits::default()
        };
        assert_eq!(parse_request(b"12345678", &small), Ok(None));
        // A trailing CR may still be the end of an 8-byte line.
        assert_eq!(parse_request(b"12345678\r", &small), Ok(None));
        assert_eq!(
            parse_request(b"12345678\r\n", &small).unwrap().unwrap().1,
            10
        );
        assert_eq!(
            parse_request(b"123456789", &small),
            Err(ProtocolError::TooBigInlineRequest)
        );
        assert_eq!(
            parse_request(b"123456789\n", &small),
            Err(ProtocolError::TooBigInlineRequest)
        );
        let big = vec![b'a'; 64 * 1024 + 1];
        assert_eq!(
            parse_request(&big, &limits()),
            Err(ProtocolError::TooBigInlineRequest)
        );
    }

    #[test]
    fn inline_commands_end_at_lf_with_optional_cr() {
        assert_eq!(
            parse_request(b"PING\r\n", &limits()).unwrap(),
            Some((args(&[b"PING"]), 6))
        );
        assert_eq!(
            parse_request(b"set k v\nGET k\n", &limits()).unwrap(),
            Some((args(&[b"set", b"k", b"v"]), 8))
        );
        assert_eq!(parse_request(b"PING\r", &limits()).unwrap(), None);
        assert_eq!(parse_request(b"PING", &limits()).unwrap(), None);
    }

    #[test]
    fn inline_arguments_are_split_like_sdssplitargs() {
        let cases: &[(&[u8], &[&[u8]])] = &[
            (b"set foo bar", &[b"set", b"foo", b"bar"]),
            (b"  set   foo\tbar  ", &[b"set", b"foo", b"bar"]),
            (b"set \"foo bar\" baz", &[b"set", b"foo bar", b"baz"]),
            (
                b"\"\\x41\\x4a\" 'it\\'s' \"a\\nb\"",
                &[b"AJ", b"it's", b"a\nb"],
            ),
            (b"\"\\n\\r\\t\\b\\a\\\\\\\"\\q\"", &[b"\n\r\t\x08\x07\\\"q"]),
            (b"\"\\xZZ\"", &[b"xZZ"]),
            (b"\"\\x4\"", &[b"x4"]),
            (b"'a\\nb' 'c\\\\d'", &[b"a\\nb", b"c\\\\d"]),
            (b"a\"b c\"", &[b"ab c"]),
            (b"a'b c'", &[b"ab c"]),
            (b"\"\"", &[b""]),
            (b"'' x", &[b"", b"x"]),
            (b"\"a\"\t\"b\"", &[b"a", b"b"]),
            (b"\x0bfoo", &[b"foo"]),
            (b"a\x0bb", &[b"a\x0bb"]),
            (b"foo\0bar baz", &[b"foo"]),
            (b"\xff\xfe", &[b"\xff\xfe"]),
            (b"", &[]),
            (b"   ", &[]),
        ];
        for (line, expected) in cases {
            assert_eq!(
                inline(line),
                Ok(args(expected)),
                "{:?}",
                String::from_utf8_lossy(line)
            );
        }
        for line in [
            &b"\"foo"[..],
            b"'foo",
            b"\"foo\"bar",
            b"'foo'bar",
            b"\"foo\\\"",
            b"\"foo\0\"",
            b"a\"b",
            b"'c\\\\'", // `\'` escapes the quote that would have closed it
        ] {
            assert_eq!(
                inline(line),
                Err(ProtocolError::UnbalancedQuotes),
                "{:?}",
                String::from_utf8_lossy(line)
            );
        }
    }

    /// Valid requests: every proper prefix is incomplete, the whole is one request.
    #[test]
    fn requests_are_incomplete_at_every_split_offset() {
        let samples: Vec<Vec<u8>> = vec![
            request(&[b"SET", b"key", b"a\r\nvalue"]),
            request(&[b""]),
            request(&[b"PING"]),
            b"SET \"a b\" 'c d'\r\n".to_vec(),
            b"PING\n".to_vec(),
        ];
        for sample in samples {
            for cut in 0..sample.len() {
                assert_eq!(
                    parse_request(&sample[..cut], &limits()),
                    Ok(None),
                    "{sample:?} cut at {cut}"
                );
            }
            let (_, used) = parse_request(&sample, &limits()).unwrap().unwrap();
            assert_eq!(used, sample.len());
        }
    }

    #[test]
    fn decoder_splits_requests_off_without_copying() {
        let mut decoder = RequestDecoder::new(Limits::default());
        let mut buf = BytesMut::new();
        buf.extend_from_slice(b"*0\r\n\r\n");
        buf.extend_from_slice(&request(&[b"SET", b"key", b"value"]));
        buf.extend_from_slice(b"PING\r\n*1\r\n$4\r\nECHO");
        let set = decoder.decode(&mut buf).unwrap().unwrap();
        assert_eq!(set, args(&[b"SET", b"key", b"value"]));
        // Slices of one frozen buffer: "key" sits 9 bytes after "SET" ("SET\r\n$3\r\n").
        assert_eq!(set[1].as_ptr() as usize - set[0].as_ptr() as usize, 9);
        assert_eq!(decoder.decode(&mut buf).unwrap().unwrap(), args(&[b"PING"]));
        assert_eq!(decoder.decode(&mut buf).unwrap(), None);
        buf.extend_from_slice(b"\r\n");
        assert_eq!(decoder.decode(&mut buf).unwrap().unwrap(), args(&[b"ECHO"]));
        assert!(buf.is_empty());
        assert_eq!(decoder.decode(&mut buf).unwrap(), None);
    }

    #[test]
    fn decoder_drains_requests_redis_ignores() {
        let mut decoder = RequestDecoder::default();
        let mut buf = BytesMut::from(&b"*0\r\n*0\r\n\n  \r\n*-1\r\n"[..]);
        assert_eq!(decoder.decode(&mut buf), Ok(None));
        assert!(buf.is_empty());
    }

    #[test]
    fn decoder_tells_how_many_bytes_a_big_value_needs() {
        let mut decoder = RequestDecoder::default();
        let mut buf = BytesMut::from(&b"*2\r\n$3\r\nSET\r\n$1000\r\nab"[..]);
        assert_eq!(decoder.decode(&mut buf), Ok(None));
        let header_end = buf.len() - 2;
        assert_eq!(decoder.needed(), Some(header_end + 1002));
        buf.extend_from_slice(&vec![b'x'; 998]);
        assert_eq!(decoder.decode(&mut buf), Ok(None));
        buf.extend_from_slice(b"\r\n");
        let got = decoder.decode(&mut buf).unwrap().unwrap();
        assert_eq!(got[1].len(), 1000);
        assert_eq!(decoder.needed(), None);
    }

    #[test]
    fn decoder_fed_byte_by_byte_matches_one_shot_parsing() {
        let mut stream = Vec::new();
        stream.extend_from_slice(&request(&[b"MSET", b"a", b"1", b"b", b"2"]));
        stream.extend_from_slice(b"GET \"a\"\r\n");
        stream.extend_from_slice(b"*0\r\n");
        stream.extend_from_slice(&request(&[b"DEL", b"a"]));
        let mut decoder = RequestDecoder::default();
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for byte in &stream {
            buf.extend_from_slice(&[*byte]);
            while let Some(request) = decoder.decode(&mut buf).unwrap() {
                got.push(request);
            }
        }
        assert_eq!(
            got,
            vec![
                args(&[b"MSET", b"a", b"1", b"b", b"2"]),
                args(&[b"GET", b"a"]),
                args(&[b"DEL", b"a"]),
            ]
        );
        assert!(buf.is_empty());
    }

    #[test]
    fn decoder_survives_a_buffer_that_shrank() {
        let mut decoder = RequestDecoder::default();
        let mut buf = BytesMut::from(&b"*2\r\n$3\r\nGET\r\n$1\r"[..]);
        assert_eq!(decoder.decode(&mut buf), Ok(None));
        buf.clear(); // contract broken: the decoder starts over instead of panicking
        buf.extend_from_slice(b"PING\r\n");
        assert_eq!(decoder.decode(&mut buf).unwrap().unwrap(), args(&[b"PING"]));
    }

    #[test]
    fn decoder_errors_then_starts_afresh() {
        let mut decoder = RequestDecoder::default();
        let mut buf = BytesMut::from(&b"*1\r\n:1\r\n"[..]);
        assert_eq!(
            decoder.decode(&mut buf),
            Err(ProtocolError::ExpectedBulk(b':'))
        );
        let mut buf = BytesMut::from(&b"PING\r\n"[..]);
        assert_eq!(decoder.decode(&mut buf).unwrap().unwrap(), args(&[b"PING"]));
    }
}
