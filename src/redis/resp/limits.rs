//! Size limits enforced while parsing, and the protocol errors (worded like Redis').

use std::fmt;

use thiserror::Error;

/// Hard ceiling on [`Limits::max_depth`]: [`FrameScanner`](super::FrameScanner) keeps one counter per open array in a
/// fixed array so that [`frame_len`](super::frame_len) never allocates. Redis' own replies nest a handful of
/// levels (COMMAND DOCS is the deepest, about 7); only Lua scripts could go deeper.
pub const MAX_DEPTH_CAP: usize = 64;

/// The longest valid decimal of an i64 ("-9223372036854775808"): a length line that has not
/// ended after that many characters is invalid, so we never wait for more of it.
pub(super) const MAX_DECIMAL_LEN: usize = 20;

/// How many argument slots a multibulk header may reserve before its arguments arrive, so a
/// header declaring a million arguments costs nothing until they are really sent (Redis caps
/// its preallocation the same way).
pub(super) const PREALLOC_ARGS: usize = 1024;

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
    /// it allocates nothing (decoding reserves at most `PREALLOC_ARGS` slots ahead).
    pub fn replies() -> Self {
        Limits {
            max_array_len: usize::MAX,
            ..Limits::default()
        }
    }

    pub(super) fn depth(&self) -> usize {
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
