//! Replies, Redis → sidecar: find where a reply ends without allocating ([`FrameScanner`],
//! [`frame_len`]) and decode one when the proxy must look inside ([`parse_frame`],
//! [`split_frame`]).

use std::ops::Range;

use bytes::{Bytes, BytesMut};

use super::frame::Frame;
use super::limits::{Limits, MAX_DEPTH_CAP, PREALLOC_ARGS, ProtocolError};
use super::number::{checked_len, crlf_at, number_line};

/// Finds where one reply ends, resuming where the previous call stopped: the reply-side
/// counterpart of [`RequestDecoder`](super::RequestDecoder) for a proxy that forwards replies as raw bytes.
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
    use crate::redis::resp::tests::{encoded, limits};

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
}
