//! RESP2 framing for the sidecar (pure: no I/O).
//!
//! Two directions, two shapes of work:
//! - client → sidecar: [`RequestDecoder`] (and the one-shot [`parse_request`]) turns the bytes an
//!   application sends into command arguments, both for multibulk requests and for the *inline*
//!   commands that `redis-cli`/telnet users type, with the same rules and error texts as Redis.
//! - Redis → sidecar: replies are forwarded as raw bytes, so [`FrameScanner`] / [`frame_len`]
//!   only find where a reply ends, without allocating; [`parse_frame`] decodes one reply into a
//!   [`Frame`] when the proxy must look inside (merging MGET parts, say).
//!
//! As in mini-redis, "not all bytes arrived yet" is `Ok(None)`, never an error. Errors are
//! [`ProtocolError`]s whose Display reads like Redis' own, so the server can answer
//! `-ERR Protocol error: <Display>` and close the connection. Declared lengths are checked
//! against [`Limits`] as soon as they are read, before anything is buffered for them.
//!
//! Where we are stricter than Redis, on purpose: a bulk or length line must end in `\r\n`
//! (Redis skips two bytes unseen, so a client that miscounts gets its next command garbled);
//! a length line is refused as soon as it cannot be a number, instead of after 64 KiB; and the
//! inline limit applies to the line, whatever the read sizes. Requests otherwise parse exactly
//! as Redis 7.0 parses them, which `tests/command_table.rs` checks against a real server.
//!
//! Cost: the stateful [`RequestDecoder`] and [`FrameScanner`] resume where the previous call
//! stopped, so a request or reply that arrives in many small reads costs O(total bytes) overall
//! (bulk payloads are skipped by length, never scanned). The one-shot functions restart from the
//! beginning on every call: O(headers so far, or inline line length) per call, quadratic only for
//! a caller that calls them again after every small read.

use std::fmt;
use std::ops::Range;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use thiserror::Error;

/// Hard ceiling on [`Limits::max_depth`]: [`FrameScanner`] keeps one counter per open array in a
/// fixed array so that [`frame_len`] never allocates. Redis' own replies nest a handful of
/// levels (COMMAND DOCS is the deepest, about 7); only Lua scripts could go deeper.
pub const MAX_DEPTH_CAP: usize = 64;

/// The longest valid decimal of an i64 ("-9223372036854775808"): a length line that has not
/// ended after that many characters is invalid, so we never wait for more of it.
const MAX_DECIMAL_LEN: usize = 20;

/// How many argument slots a multibulk header may reserve before its arguments arrive, so a
/// header declaring a million arguments costs nothing until they are really sent (Redis caps
/// its preallocation the same way).
const PREALLOC_ARGS: usize = 1024;

/// Size limits enforced while parsing: every declared length is checked when its header is
/// read, so a hostile or broken peer cannot make the sidecar wait for, or buffer, more than this.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Longest bulk string (and, in replies, simple string or error line).
    pub max_bulk_len: usize,
    /// Most elements in one array (arguments in one request).
    pub max_array_len: usize,
    /// Deepest array nesting in a reply; a top-level array is depth 1. Capped at
    /// [`MAX_DEPTH_CAP`].
    pub max_depth: usize,
    /// Longest inline command line (without its line terminator).
    pub max_inline_len: usize,
}

impl Default for Limits {
    /// Limits for requests from applications, modelled on Redis' defaults:
    /// - bulk: 512 MiB, Redis' `proto-max-bulk-len`, so every value Redis accepts passes;
    /// - array: 1 Mi elements: an MSET of half a million pairs still fits, while the argument
    ///   vector of one request stays bounded (~32 MiB of `Bytes` handles);
    /// - depth: 32, far above anything Redis sends, far below a stack risk;
    /// - inline: 64 KiB, Redis' `PROTO_INLINE_MAX_SIZE`.
    fn default() -> Self {
        Limits {
            max_bulk_len: 512 * 1024 * 1024,
            max_array_len: 1024 * 1024,
            max_depth: 32,
            max_inline_len: 64 * 1024,
        }
    }
}

impl Limits {
    /// Limits for replies from our own Redis instances: like the defaults, but arrays are not
    /// limited in length, since a legitimate LRANGE or HGETALL reply can be long and scanning
    /// it allocates nothing (decoding reserves at most [`PREALLOC_ARGS`] slots ahead).
    pub fn replies() -> Self {
        Limits {
            max_array_len: usize::MAX,
            ..Limits::default()
        }
    }

    fn depth(&self) -> usize {
        self.max_depth.min(MAX_DEPTH_CAP)
    }
}

/// A malformed request or reply. The Display texts follow Redis' wording (`networking.c`) where
/// Redis has one; the server sends `-ERR Protocol error: <Display>` and closes the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum ProtocolError {
    /// An array header with a malformed, negative (in replies, other than -1) or too large count.
    #[error("invalid multibulk length")]
    InvalidMultibulkLength,
    /// A bulk header with a malformed, negative (in replies, other than -1) or too large length.
    #[error("invalid bulk length")]
    InvalidBulkLength,
    /// A `:` line that is not a canonical 64-bit integer.
    #[error("invalid integer")]
    InvalidInteger,
    /// A multibulk request holding something other than a bulk string.
    #[error("expected '$', got '{}'", EscapedByte(*.0))]
    ExpectedBulk(u8),
    /// A line or bulk payload not followed by `\r\n`. Redis skips two bytes without looking; we
    /// refuse, because a client that miscounts would otherwise have its next command garbled.
    #[error("expected CRLF, got '{}'", EscapedByte(*.0))]
    ExpectedCrlf(u8),
    /// An inline command line longer than [`Limits::max_inline_len`].
    #[error("too big inline request")]
    TooBigInlineRequest,
    /// A simple string or error line in a reply longer than [`Limits::max_bulk_len`].
    #[error("too big reply line")]
    TooBigReplyLine,
    /// An inline command with an unterminated quote, or a closing quote followed by a non-space.
    #[error("unbalanced quotes in request")]
    UnbalancedQuotes,
    /// A reply nesting arrays deeper than [`Limits::max_depth`].
    #[error("nesting too deep")]
    NestingTooDeep,
    /// A reply starting with a byte that is no RESP2 type (hiredis' wording).
    #[error("got '{}' as reply type byte", EscapedByte(*.0))]
    InvalidTypeByte(u8),
}

/// Shows a byte inside an error text: printable ASCII as is, anything else as `\xHH`, so the
/// text never carries a CR or LF into the `-ERR` line that reports it.
struct EscapedByte(u8);

impl fmt::Display for EscapedByte {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_ascii_graphic() || self.0 == b' ' {
            write!(f, "{}", char::from(self.0))
        } else {
            write!(f, "\\x{:02x}", self.0)
        }
    }
}

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

/// Parses a decimal exactly like Redis' `string2ll`: optional `-`, no `+`, no spaces, no
/// leading zeros, no `-0`, within i64. Canonical numbers only, so what we accept Redis accepts.
pub fn parse_i64(text: &[u8]) -> Option<i64> {
    let (negative, digits) = match text {
        [b'-', rest @ ..] => (true, rest),
        _ => (false, text),
    };
    match digits {
        [] => return None,
        [b'0'] => return (!negative).then_some(0),
        [b'0', ..] => return None,
        _ => {}
    }
    let mut value: i64 = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return None;
        }
        let d = i64::from(d - b'0');
        value = value.checked_mul(10)?;
        value = if negative {
            value.checked_sub(d)?
        } else {
            value.checked_add(d)?
        };
    }
    Some(value)
}

/// Reads `<tag><decimal>\r\n` whose tag is at `start`: the value and the offset after the line.
/// Gives up early (with `error`) on a character that cannot belong to a number, or once the
/// line is longer than any valid number, so garbage is refused without waiting for a CR.
fn number_line(
    buf: &[u8],
    start: usize,
    error: ProtocolError,
) -> Result<Option<(i64, usize)>, ProtocolError> {
    let body = start + 1;
    let rest = buf.get(body..).unwrap_or_default();
    let window = rest.get(..=MAX_DECIMAL_LEN).unwrap_or(rest);
    match memchr::memchr(b'\r', window) {
        Some(cr) => {
            let value = parse_i64(window.get(..cr).unwrap_or_default()).ok_or(error)?;
            match rest.get(cr + 1) {
                None => Ok(None),
                Some(b'\n') => Ok(Some((value, body + cr + 2))),
                Some(&other) => Err(ProtocolError::ExpectedCrlf(other)),
            }
        }
        None if window.len() > MAX_DECIMAL_LEN => Err(error),
        None if window.iter().all(|b| b.is_ascii_digit() || *b == b'-') => Ok(None),
        None => Err(error),
    }
}

/// Checks for `\r\n` at `at`: `Ok(None)` while it has not fully arrived.
fn crlf_at(buf: &[u8], at: usize) -> Result<Option<()>, ProtocolError> {
    match buf.get(at) {
        None => Ok(None),
        Some(b'\r') => match buf.get(at + 1) {
            None => Ok(None),
            Some(b'\n') => Ok(Some(())),
            Some(&other) => Err(ProtocolError::ExpectedCrlf(other)),
        },
        Some(&other) => Err(ProtocolError::ExpectedCrlf(other)),
    }
}

/// Validates a non-negative length against a limit.
fn checked_len(len: i64, max: usize, error: ProtocolError) -> Result<usize, ProtocolError> {
    usize::try_from(len)
        .ok()
        .filter(|len| *len <= max)
        .ok_or(error)
}

// ---------------------------------------------------------------------------------------------
// Requests (client → sidecar)
// ---------------------------------------------------------------------------------------------

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
fn advance_request(
    state: &mut RequestState,
    buf: &[u8],
    limits: &Limits,
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
                    *state = RequestState::Multibulk {
                        remaining: count,
                        pos,
                        args: Vec::with_capacity(count.min(PREALLOC_ARGS)),
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
        advance_request(&mut state, buf, limits)?.map(|(parsed, used)| {
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
}

impl RequestDecoder {
    /// A decoder enforcing `limits`.
    pub fn new(limits: Limits) -> Self {
        RequestDecoder {
            limits,
            state: RequestState::Start,
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
            let (parsed, used) = match advance_request(&mut self.state, buf, &self.limits) {
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
                    for range in ranges {
                        // Ranges always lie within the request; checked rather than trusted.
                        if range.end > request.len() || range.start > range.end {
                            return Err(ProtocolError::InvalidBulkLength);
                        }
                        args.push(request.slice(range));
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

// ---------------------------------------------------------------------------------------------
// Replies (Redis → sidecar)
// ---------------------------------------------------------------------------------------------

/// Finds where one reply ends, resuming where the previous call stopped: the reply-side
/// counterpart of [`RequestDecoder`] for a proxy that forwards replies as raw bytes.
///
/// It never allocates (open arrays are counted in a fixed array of [`MAX_DEPTH_CAP`] slots) and
/// examines each byte at most once across calls, except a bulk header re-read while its
/// payload arrives. Contract: between two calls the buffer may only grow at its end, until a
/// length is returned; the scanner is then ready for the next frame at the buffer's start.
#[derive(Debug, Clone)]
pub struct FrameScanner {
    /// Offset of the next element to examine.
    pos: usize,
    /// For a simple line not yet ended: bytes after `pos` already known to hold no CR.
    line_scanned: usize,
    /// Open arrays.
    depth: usize,
    /// Elements still expected by each open array, outermost first.
    remaining: [usize; MAX_DEPTH_CAP],
}

impl Default for FrameScanner {
    fn default() -> Self {
        FrameScanner::new()
    }
}

impl FrameScanner {
    /// A scanner at the start of a frame.
    pub fn new() -> Self {
        FrameScanner {
            pos: 0,
            line_scanned: 0,
            depth: 0,
            remaining: [0; MAX_DEPTH_CAP],
        }
    }

    /// Forgets any progress: the next call scans from the buffer's start.
    pub fn reset(&mut self) {
        self.pos = 0;
        self.line_scanned = 0;
        self.depth = 0;
    }

    /// The byte length of the first complete frame in `buf`, or `Ok(None)` if it has not fully
    /// arrived.
    pub fn scan(&mut self, buf: &[u8], limits: &Limits) -> Result<Option<usize>, ProtocolError> {
        if buf.len() < self.pos + self.line_scanned {
            self.reset();
        }
        let result = self.scan_inner(buf, limits);
        if !matches!(result, Ok(None)) {
            self.reset();
        }
        result
    }

    fn scan_inner(&mut self, buf: &[u8], limits: &Limits) -> Result<Option<usize>, ProtocolError> {
        loop {
            let start = self.pos;
            let Some(&tag) = buf.get(start) else {
                return Ok(None);
            };
            let end = match tag {
                b'+' | b'-' => {
                    let from = start + 1 + self.line_scanned;
                    let unscanned = buf.get(from..).unwrap_or_default();
                    match memchr::memchr(b'\r', unscanned) {
                        Some(offset) => {
                            if self.line_scanned + offset > limits.max_bulk_len {
                                return Err(ProtocolError::TooBigReplyLine);
                            }
                            let cr = from + offset;
                            if crlf_at(buf, cr)?.is_none() {
                                self.line_scanned += offset;
                                return Ok(None);
                            }
                            cr + 2
                        }
                        None => {
                            self.line_scanned += unscanned.len();
                            if self.line_scanned > limits.max_bulk_len {
                                return Err(ProtocolError::TooBigReplyLine);
                            }
                            return Ok(None);
                        }
                    }
                }
                b':' => match number_line(buf, start, ProtocolError::InvalidInteger)? {
                    Some((_, end)) => end,
                    None => return Ok(None),
                },
                b'$' => {
                    let Some((len, body)) =
                        number_line(buf, start, ProtocolError::InvalidBulkLength)?
                    else {
                        return Ok(None);
                    };
                    if len == -1 {
                        body
                    } else {
                        let len = checked_len(
                            len,
                            limits.max_bulk_len,
                            ProtocolError::InvalidBulkLength,
                        )?;
                        let end = body
                            .checked_add(len)
                            .ok_or(ProtocolError::InvalidBulkLength)?;
                        if crlf_at(buf, end)?.is_none() {
                            return Ok(None);
                        }
                        end + 2
                    }
                }
                b'*' => {
                    let Some((count, body)) =
                        number_line(buf, start, ProtocolError::InvalidMultibulkLength)?
                    else {
                        return Ok(None);
                    };
                    if self.depth >= limits.depth() {
                        return Err(ProtocolError::NestingTooDeep);
                    }
                    if count > 0 {
                        let count = checked_len(
                            count,
                            limits.max_array_len,
                            ProtocolError::InvalidMultibulkLength,
                        )?;
                        let slot = self
                            .remaining
                            .get_mut(self.depth)
                            .ok_or(ProtocolError::NestingTooDeep)?;
                        *slot = count;
                        self.depth += 1;
                        self.pos = body;
                        continue;
                    }
                    if count < -1 {
                        return Err(ProtocolError::InvalidMultibulkLength);
                    }
                    body
                }
                other => return Err(ProtocolError::InvalidTypeByte(other)),
            };
            // One element is complete: count it in its array, closing every array it ends.
            self.pos = end;
            self.line_scanned = 0;
            loop {
                let Some(open) = self.depth.checked_sub(1) else {
                    return Ok(Some(end));
                };
                let Some(left) = self.remaining.get_mut(open) else {
                    return Err(ProtocolError::NestingTooDeep);
                };
                *left = left.saturating_sub(1);
                if *left > 0 {
                    break;
                }
                self.depth = open;
            }
        }
    }
}

/// The byte length of the first complete RESP2 frame in `buf`, or `Ok(None)` if it has not
/// fully arrived. Allocates nothing. One-shot: see [`FrameScanner`] to resume across reads.
pub fn frame_len(buf: &[u8], limits: &Limits) -> Result<Option<usize>, ProtocolError> {
    FrameScanner::new().scan(buf, limits)
}

/// Decodes the first frame of `buf` and the number of bytes it used, or `Ok(None)` if it has
/// not fully arrived. Bulk payloads are copied; [`split_frame`] avoids that.
///
/// The frame is first checked complete with [`frame_len`] (no allocation), then decoded in one
/// pass: O(frame size). For a large reply arriving in many reads, wait for a [`FrameScanner`]
/// to report it complete before decoding.
pub fn parse_frame(buf: &[u8], limits: &Limits) -> Result<Option<(Frame, usize)>, ProtocolError> {
    let Some(len) = frame_len(buf, limits)? else {
        return Ok(None);
    };
    let frame_bytes = buf.get(..len).unwrap_or_default();
    let mut pos = 0;
    let frame = decode_frame(frame_bytes, &mut pos, &mut |range| {
        Bytes::copy_from_slice(frame_bytes.get(range).unwrap_or_default())
    })?;
    Ok(Some((frame, len)))
}

/// Like [`parse_frame`], but removes the frame's bytes from `buf` and returns bulk payloads and
/// lines as zero-copy slices of them.
pub fn split_frame(buf: &mut BytesMut, limits: &Limits) -> Result<Option<Frame>, ProtocolError> {
    let Some(len) = frame_len(buf, limits)? else {
        return Ok(None);
    };
    let frame_bytes = buf.split_to(len).freeze();
    let mut pos = 0;
    let frame = decode_frame(&frame_bytes, &mut pos, &mut |range| {
        if range.start <= range.end && range.end <= frame_bytes.len() {
            frame_bytes.slice(range)
        } else {
            Bytes::new()
        }
    })?;
    Ok(Some(frame))
}

/// Decodes the frame at `*pos` of a buffer already validated by [`frame_len`] (so recursion is
/// bounded by the depth limit and nothing is incomplete). `take` turns a byte range into
/// [`Bytes`], copying or slicing. Errors cannot happen on validated input; they are reported
/// rather than unwrapped only so that no input can panic.
fn decode_frame(
    buf: &[u8],
    pos: &mut usize,
    take: &mut dyn FnMut(Range<usize>) -> Bytes,
) -> Result<Frame, ProtocolError> {
    let start = *pos;
    let tag = *buf.get(start).ok_or(ProtocolError::InvalidTypeByte(0))?;
    let truncated = ProtocolError::ExpectedCrlf(0);
    match tag {
        b'+' | b'-' => {
            let body = start + 1;
            let cr = body
                + memchr::memchr(b'\r', buf.get(body..).unwrap_or_default()).ok_or(truncated)?;
            *pos = cr + 2;
            let text = take(body..cr);
            Ok(if tag == b'+' {
                Frame::Simple(text)
            } else {
                Frame::Error(text)
            })
        }
        b':' => {
            let (value, end) =
                number_line(buf, start, ProtocolError::InvalidInteger)?.ok_or(truncated)?;
            *pos = end;
            Ok(Frame::Integer(value))
        }
        b'$' => {
            let (len, body) =
                number_line(buf, start, ProtocolError::InvalidBulkLength)?.ok_or(truncated)?;
            if len == -1 {
                *pos = body;
                return Ok(Frame::Null);
            }
            let len = usize::try_from(len).map_err(|_| ProtocolError::InvalidBulkLength)?;
            *pos = body + len + 2;
            Ok(Frame::Bulk(take(body..body + len)))
        }
        b'*' => {
            let (count, body) =
                number_line(buf, start, ProtocolError::InvalidMultibulkLength)?.ok_or(truncated)?;
            *pos = body;
            if count == -1 {
                return Ok(Frame::NullArray);
            }
            let count =
                usize::try_from(count).map_err(|_| ProtocolError::InvalidMultibulkLength)?;
            let mut items = Vec::with_capacity(count.min(PREALLOC_ARGS));
            for _ in 0..count {
                items.push(decode_frame(buf, pos, take)?);
            }
            Ok(Frame::Array(items))
        }
        other => Err(ProtocolError::InvalidTypeByte(other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn limits() -> Limits {
        Limits::default()
    }

    fn args(list: &[&[u8]]) -> Vec<Bytes> {
        list.iter().map(|a| Bytes::copy_from_slice(a)).collect()
    }

    fn encoded(frame: &Frame) -> Vec<u8> {
        let mut out = BytesMut::new();
        frame.encode(&mut out);
        out.to_vec()
    }

    fn request(list: &[&[u8]]) -> Vec<u8> {
        let mut out = BytesMut::new();
        encode_request(list, &mut out);
        out.to_vec()
    }

    fn inline(line: &[u8]) -> Result<Vec<Bytes>, ProtocolError> {
        split_inline(line)
    }

    // --- encoding -----------------------------------------------------------------------------

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
    fn integers_are_parsed_like_string2ll() {
        for (text, value) in [
            (&b"0"[..], Some(0)),
            (b"7", Some(7)),
            (b"-7", Some(-7)),
            (b"9223372036854775807", Some(i64::MAX)),
            (b"-9223372036854775808", Some(i64::MIN)),
            (b"9223372036854775808", None),
            (b"-9223372036854775809", None),
            (b"", None),
            (b"-", None),
            (b"-0", None),
            (b"01", None),
            (b"+1", None),
            (b" 1", None),
            (b"1 ", None),
            (b"1.0", None),
            (b"0x10", None),
        ] {
            assert_eq!(
                parse_i64(text),
                value,
                "{:?}",
                String::from_utf8_lossy(text)
            );
        }
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

    // --- replies ------------------------------------------------------------------------------

    fn sample_frames() -> Vec<Frame> {
        vec![
            Frame::ok(),
            Frame::error("ERR no"),
            Frame::simple(""),
            Frame::Integer(-1),
            Frame::bulk("hello"),
            Frame::bulk(&b"\r\n\r\n"[..]),
            Frame::Null,
            Frame::NullArray,
            Frame::Array(vec![]),
            Frame::array([
                Frame::bulk("a"),
                Frame::Array(vec![]),
                Frame::array([Frame::NullArray, Frame::Integer(3), Frame::error("E")]),
                Frame::Null,
            ]),
        ]
    }

    #[test]
    fn replies_of_every_type_are_scanned_and_decoded() {
        for frame in sample_frames() {
            let mut bytes = encoded(&frame);
            let len = bytes.len();
            bytes.extend_from_slice(b":1\r\n");
            assert_eq!(frame_len(&bytes, &limits()), Ok(Some(len)), "{frame:?}");
            assert_eq!(
                parse_frame(&bytes, &limits()),
                Ok(Some((frame.clone(), len)))
            );
            let mut buf = BytesMut::from(&bytes[..]);
            assert_eq!(split_frame(&mut buf, &limits()), Ok(Some(frame)));
            assert_eq!(&buf[..], b":1\r\n");
        }
    }

    #[test]
    fn replies_are_incomplete_at_every_split_offset() {
        for frame in sample_frames() {
            let bytes = encoded(&frame);
            for cut in 0..bytes.len() {
                assert_eq!(
                    frame_len(&bytes[..cut], &limits()),
                    Ok(None),
                    "{frame:?} {cut}"
                );
                assert_eq!(parse_frame(&bytes[..cut], &limits()), Ok(None));
            }
            // Byte by byte through one scanner.
            let mut scanner = FrameScanner::new();
            for cut in 0..bytes.len() {
                assert_eq!(scanner.scan(&bytes[..cut], &limits()), Ok(None));
            }
            assert_eq!(scanner.scan(&bytes, &limits()), Ok(Some(bytes.len())));
        }
    }

    #[test]
    fn malformed_replies_are_refused() {
        use ProtocolError::*;
        let cases: &[(&[u8], ProtocolError)] = &[
            (b"$-2\r\n", InvalidBulkLength),
            (b"*-2\r\n", InvalidMultibulkLength),
            (b":1.5\r\n", InvalidInteger),
            (b":\r\n", InvalidInteger),
            (b":99999999999999999999\r\n", InvalidInteger),
            (b"%1\r\n", InvalidTypeByte(b'%')),
            (b"\r\n", InvalidTypeByte(b'\r')),
            (b"$3\r\nfoox\r\n", ExpectedCrlf(b'x')),
            (b"+OK\rx", ExpectedCrlf(b'x')),
            (b"*2\r\n:1\r\n#t\r\n", InvalidTypeByte(b'#')),
        ];
        for (buf, error) in cases {
            assert_eq!(frame_len(buf, &limits()), Err(*error), "{buf:?}");
            assert_eq!(parse_frame(buf, &limits()), Err(*error), "{buf:?}");
        }
    }

    #[test]
    fn nesting_is_limited() {
        let nested = |depth: usize| {
            let mut bytes = b"*1\r\n".repeat(depth);
            bytes.extend_from_slice(b":1\r\n");
            bytes
        };
        assert!(frame_len(&nested(32), &limits()).unwrap().is_some());
        assert_eq!(
            frame_len(&nested(33), &limits()),
            Err(ProtocolError::NestingTooDeep)
        );
        assert_eq!(
            parse_frame(&nested(33), &limits()),
            Err(ProtocolError::NestingTooDeep)
        );
        // Empty and nil arrays count as a level too, so the limit does not depend on content.
        let mut empty_at_33 = b"*1\r\n".repeat(32);
        empty_at_33.extend_from_slice(b"*0\r\n");
        assert_eq!(
            frame_len(&empty_at_33, &limits()),
            Err(ProtocolError::NestingTooDeep)
        );
        // A limit above the cap is the cap.
        let deep = Limits {
            max_depth: 1000,
            ..Limits::default()
        };
        assert!(frame_len(&nested(MAX_DEPTH_CAP), &deep).unwrap().is_some());
        assert_eq!(
            frame_len(&nested(MAX_DEPTH_CAP + 1), &deep),
            Err(ProtocolError::NestingTooDeep)
        );
        // A refused nesting fails as soon as the header arrives, whatever follows.
        assert_eq!(
            frame_len(&b"*1\r\n".repeat(33), &limits()),
            Err(ProtocolError::NestingTooDeep)
        );
    }

    #[test]
    fn long_simple_lines_are_scanned_once_and_limited() {
        let small = Limits {
            max_bulk_len: 10,
            ..Limits::default()
        };
        let mut scanner = FrameScanner::new();
        assert_eq!(scanner.scan(b"+0123456789", &small), Ok(None));
        assert_eq!(scanner.scan(b"+0123456789\r", &small), Ok(None));
        assert_eq!(scanner.scan(b"+0123456789\r\n", &small), Ok(Some(13)));
        assert_eq!(
            frame_len(b"+01234567890", &small),
            Err(ProtocolError::TooBigReplyLine)
        );
        assert_eq!(
            frame_len(b"-01234567890\r\n", &small),
            Err(ProtocolError::TooBigReplyLine)
        );
    }

    #[test]
    fn split_frame_slices_without_copying() {
        let mut buf = BytesMut::from(&b"*2\r\n$5\r\nhello\r\n+OK\r\nrest"[..]);
        let base = buf.as_ptr() as usize;
        let frame = split_frame(&mut buf, &limits()).unwrap().unwrap();
        let Frame::Array(items) = &frame else {
            panic!("not an array: {frame:?}")
        };
        assert_eq!(items[0].as_bulk().unwrap().as_ptr() as usize, base + 8);
        assert_eq!(items[1], Frame::ok());
        assert_eq!(&buf[..], b"rest");
    }

    #[test]
    fn accessors() {
        assert!(Frame::err("x").is_error());
        assert!(!Frame::ok().is_error());
        assert_eq!(Frame::Integer(5).as_integer(), Some(5));
        assert_eq!(Frame::Null.as_integer(), None);
        assert_eq!(Frame::Null.as_bulk(), None);
    }

    // --- properties ---------------------------------------------------------------------------

    fn line_text() -> impl Strategy<Value = Bytes> {
        proptest::collection::vec(any::<u8>(), 0..24).prop_map(|mut bytes| {
            for b in &mut bytes {
                if *b == b'\r' || *b == b'\n' {
                    *b = b' ';
                }
            }
            Bytes::from(bytes)
        })
    }

    fn arb_frame() -> impl Strategy<Value = Frame> {
        let leaf = prop_oneof![
            line_text().prop_map(Frame::Simple),
            line_text().prop_map(Frame::Error),
            any::<i64>().prop_map(Frame::Integer),
            proptest::collection::vec(any::<u8>(), 0..40).prop_map(|b| Frame::Bulk(b.into())),
            Just(Frame::Null),
            Just(Frame::NullArray),
        ];
        leaf.prop_recursive(5, 64, 6, |inner| {
            proptest::collection::vec(inner, 0..6).prop_map(Frame::Array)
        })
    }

    fn chunks(bytes: &[u8], sizes: &[usize]) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        let mut rest = bytes;
        let mut sizes = sizes.iter().cycle();
        while !rest.is_empty() {
            let size = sizes.next().copied().unwrap_or(1).clamp(1, rest.len());
            let (head, tail) = rest.split_at(size);
            out.push(head.to_vec());
            rest = tail;
        }
        out
    }

    /// Quotes an argument for an inline command with the escapes `sdssplitargs` understands.
    fn quote(arg: &[u8]) -> String {
        let mut out = String::from("\"");
        for &b in arg {
            match b {
                b'"' => out.push_str("\\\""),
                b'\\' => out.push_str("\\\\"),
                b'\n' => out.push_str("\\n"),
                0x21..=0x7e | b' ' => out.push(char::from(b)),
                _ => out.push_str(&format!("\\x{b:02x}")),
            }
        }
        out.push('"');
        out
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn frames_round_trip(frame in arb_frame(), sizes in proptest::collection::vec(1usize..16, 1..4)) {
            let bytes = encoded(&frame);
            prop_assert_eq!(bytes.len(), frame.encoded_len());
            prop_assert_eq!(frame_len(&bytes, &limits()), Ok(Some(bytes.len())));
            prop_assert_eq!(parse_frame(&bytes, &limits()), Ok(Some((frame.clone(), bytes.len()))));
            let mut scanner = FrameScanner::new();
            let mut buf = Vec::new();
            let mut result = Ok(None);
            for chunk in chunks(&bytes, &sizes) {
                prop_assert_eq!(result, Ok(None));
                buf.extend_from_slice(&chunk);
                result = scanner.scan(&buf, &limits());
            }
            prop_assert_eq!(result, Ok(Some(bytes.len())));
        }

        #[test]
        fn requests_round_trip(
            requests in proptest::collection::vec(
                proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..20), 1..6), 1..4),
            sizes in proptest::collection::vec(1usize..32, 1..4),
        ) {
            let mut stream = Vec::new();
            for request in &requests {
                encode_request(request, &mut BytesMut::new());
                let mut out = BytesMut::new();
                encode_request(request, &mut out);
                stream.extend_from_slice(&out);
            }
            // One shot, request by request.
            let mut rest = &stream[..];
            for request in &requests {
                let (got, used) = parse_request(rest, &limits()).unwrap().unwrap();
                prop_assert_eq!(&got, request);
                rest = &rest[used..];
            }
            prop_assert!(rest.is_empty());
            // Incrementally, in chunks.
            let mut decoder = RequestDecoder::default();
            let mut buf = BytesMut::new();
            let mut got = Vec::new();
            for chunk in chunks(&stream, &sizes) {
                buf.extend_from_slice(&chunk);
                while let Some(request) = decoder.decode(&mut buf).unwrap() {
                    got.push(request.iter().map(|a| a.to_vec()).collect::<Vec<_>>());
                }
            }
            prop_assert_eq!(got, requests);
        }

        #[test]
        fn quoted_inline_arguments_round_trip(args in proptest::collection::vec(
            proptest::collection::vec(any::<u8>(), 0..12), 1..5)
        ) {
            let line: Vec<String> = args.iter().map(|a| quote(a)).collect();
            let line = format!("{}\r\n", line.join(" "));
            let (got, used) = parse_request(line.as_bytes(), &limits()).unwrap().unwrap();
            prop_assert_eq!(used, line.len());
            prop_assert_eq!(got.iter().map(|a| a.to_vec()).collect::<Vec<_>>(), args);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let small = Limits { max_bulk_len: 16, max_array_len: 8, max_depth: 3, max_inline_len: 16 };
            for limits in [limits(), small] {
                if let Ok(Some((_, used))) = parse_request(&bytes, &limits) {
                    prop_assert!(used <= bytes.len());
                }
                let len = frame_len(&bytes, &limits);
                if let Ok(Some(used)) = len {
                    prop_assert!(used <= bytes.len());
                }
                // parse_frame decides exactly as frame_len does.
                prop_assert_eq!(parse_frame(&bytes, &limits).map(|f| f.map(|(_, n)| n)), len);
                let mut buf = BytesMut::from(&bytes[..]);
                let _ = RequestDecoder::new(limits).decode(&mut buf);
            }
        }
    }
}
