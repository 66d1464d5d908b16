//! RESP2 and RESP3 framing (pure: no I/O), spoken by the sidecar to clients and instances and by the
//! rebalance Job's move scripts.
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
//!
//! Files: `limits.rs` (sizes and protocol errors), `frame.rs` (values and their encoding),
//! `number.rs` (the decimal and line readers both directions share), `request.rs` (client →
//! sidecar), `reply.rs` (Redis → sidecar) and `resp3.rs` (RESP3 values: parsed from either
//! protocol, encoded in either). Everything is re-exported here: callers name
//! `resp::Frame`, `resp::RequestDecoder`, … (and the fuzz target includes this directory as
//! a module of its own, so nothing here may name the rest of the crate).

mod frame;
mod limits;
mod number;
mod reply;
mod request;
mod resp3;

pub use frame::{Frame, encode_request};
pub use limits::{Limits, MAX_DEPTH_CAP, ProtocolError};
pub use number::parse_i64;
pub use reply::{FrameScanner, frame_len, parse_frame, split_frame};
pub use request::{Request, RequestDecoder, parse_request};
pub use resp3::{Value, parse_value, value_len};

#[cfg(test)]
mod tests;
