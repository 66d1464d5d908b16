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
