//! Reading decimals, length lines and line ends: shared by the request and reply parsers.

use super::limits::{MAX_DECIMAL_LEN, ProtocolError};

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
pub(super) fn number_line(
    buf: &[u8],
    start: usize,
    error: ProtocolError,
) -> Result<Option<(i64, usize)>, ProtocolError> {
    let body = start + 1;
    let rest = buf.get(body..).unwrap_or_default();
    match short_length_line(rest) {
        Some((value, cr)) => line_end(rest, cr, value, body),
        None => any_number_line(rest, body, error),
    }
}

/// [`number_line`] for any line: a sign, a long number, a malformed or unfinished line.
fn any_number_line(
    rest: &[u8],
    body: usize,
    error: ProtocolError,
) -> Result<Option<(i64, usize)>, ProtocolError> {
    let window = rest.get(..=MAX_DECIMAL_LEN).unwrap_or(rest);
    match memchr::memchr(b'\r', window) {
        Some(cr) => {
            let value = parse_i64(window.get(..cr).unwrap_or_default()).ok_or(error)?;
            line_end(rest, cr, value, body)
        }
        None if window.len() > MAX_DECIMAL_LEN => Err(error),
        None if window.iter().all(|b| b.is_ascii_digit() || *b == b'-') => Ok(None),
        None => Err(error),
    }
}

/// The common line, read in one pass: up to [`SHORT_DIGITS`] digits in canonical form (no
/// leading zero but a lone `0`) up to a CR, as in nearly every length and count on the wire:
/// the value and where the CR is. `None` for anything else, which [`any_number_line`] reads;
/// where this answers, that answers the same. (Measured under `-P 16` GETs, its `memchr`
/// setup on these short lines cost more than the whole scan.)
#[inline]
fn short_length_line(rest: &[u8]) -> Option<(i64, usize)> {
    let mut value: i64 = 0;
    let mut digits = 0;
    while digits < SHORT_DIGITS {
        match *rest.get(digits)? {
            d @ b'0'..=b'9' => {
                value = value * 10 + i64::from(d - b'0');
                digits += 1;
            }
            b'\r' => break,
            _ => return None,
        }
    }
    let canonical = digits == 1 || (digits > 1 && rest[0] != b'0');
    (canonical && rest.get(digits) == Some(&b'\r')).then_some((value, digits))
}

/// The most digits [`short_length_line`] reads: any 18 digits fit in an `i64`.
const SHORT_DIGITS: usize = 18;

/// After a number line's CR at `rest[cr]`: its value and the offset after the LF, `Ok(None)`
/// while the LF has not arrived.
fn line_end(
    rest: &[u8],
    cr: usize,
    value: i64,
    body: usize,
) -> Result<Option<(i64, usize)>, ProtocolError> {
    match rest.get(cr + 1) {
        None => Ok(None),
        Some(b'\n') => Ok(Some((value, body + cr + 2))),
        Some(&other) => Err(ProtocolError::ExpectedCrlf(other)),
    }
}

/// Checks for `\r\n` at `at`: `Ok(None)` while it has not fully arrived.
pub(super) fn crlf_at(buf: &[u8], at: usize) -> Result<Option<()>, ProtocolError> {
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
pub(super) fn checked_len(
    len: i64,
    max: usize,
    error: ProtocolError,
) -> Result<usize, ProtocolError> {
    usize::try_from(len)
        .ok()
        .filter(|len| *len <= max)
        .ok_or(error)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `number_line` without its one-pass shortcut.
    fn general(buf: &[u8]) -> Result<Option<(i64, usize)>, ProtocolError> {
        any_number_line(&buf[1..], 1, ProtocolError::InvalidBulkLength)
    }

    #[test]
    fn the_short_line_shortcut_answers_as_the_general_way() {
        let mut lines: Vec<Vec<u8>> = Vec::new();
        for body in [
            "0",
            "7",
            "16",
            "00",
            "01",
            "-1",
            "-0",
            "123456789012345678",
            "1234567890123456789",
            "9223372036854775807",
            "9223372036854775808",
            "99999999999999999999999",
            "1a",
            "",
            "+1",
            " 1",
        ] {
            for end in ["", "\r", "\r\n", "\rx", "\n", "\r\nrest"] {
                lines.push(format!("${body}{end}").into_bytes());
            }
        }
        for line in lines {
            let text = String::from_utf8_lossy(&line).into_owned();
            // Every prefix too: a line arrives in pieces. And behind other bytes, as a line
            // after the first of a request is read, so offsets count from the buffer's start.
            for cut in 1..=line.len() {
                let part = &line[..cut];
                let expected = general(part);
                assert_eq!(
                    number_line(part, 0, ProtocolError::InvalidBulkLength),
                    expected,
                    "{text:?} cut at {cut}"
                );
                let behind = [b"*2\r\n".as_slice(), part].concat();
                assert_eq!(
                    number_line(&behind, 4, ProtocolError::InvalidBulkLength),
                    expected.map(|line| line.map(|(value, end)| (value, end + 4))),
                    "{text:?} cut at {cut}, at offset 4"
                );
            }
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
}
