//! The connection under a lane or a dedicated connection: a [`Stream`] (TCP or TLS,
//! authenticated), named and checked against the fleet's fences (the handshake of
//! `docs/protocol.md`).

use bytes::BytesMut;

use crate::redis::protocol::fence::{self, Fences};
use crate::redis::protocol::names;
use crate::redis::protocol::replica;
use crate::redis::resp::{Limits, encode_request, parse_frame};
pub use crate::redis::stream::{Stream, open};
use crate::redis::stream::{read_replies, write_flushed};

/// What a handshake learnt.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Greeting {
    /// The policy's fences on the instance.
    pub fences: Fences,
    /// The server is older than Redis 7.0 (no `NX`/`GT` flags on `PEXPIRE`).
    pub legacy: bool,
}

/// The major version in `INFO server` (`redis_version:6.2.14` → 6).
fn major_version(info: &[u8]) -> Option<u32> {
    let text = std::str::from_utf8(info).ok()?;
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix("redis_version:"))?;
    line.trim().split('.').next()?.parse().ok()
}

/// Names a fresh connection and reads the policy's fences on it: `CLIENT SETNAME <name>`, then
/// the fences, then the server's version (and loads the replicas' scripts). The name goes first, so a fence raised after this
/// read finds the connection by its name and closes it (see `docs/protocol.md`).
pub async fn handshake(stream: &mut Stream, name: &str, policy: &str) -> Result<Greeting, String> {
    let mut buf = BytesMut::new();
    encode_request(
        &[b"CLIENT".as_slice(), b"SETNAME", name.as_bytes()],
        &mut buf,
    );
    let fences_key = names::fences(policy);
    encode_request(
        &[
            b"EVAL".as_slice(),
            fence::RAISE_SCRIPT.as_bytes(),
            b"1",
            fences_key.as_bytes(),
        ],
        &mut buf,
    );
    encode_request(&[b"INFO".as_slice(), b"server"], &mut buf);
    // The replicas' scripts, so that a replicated write goes out as `EVALSHA` in the client's
    // order (`sidecar/session/replicated.rs`). Their replies are not needed: an instance that
    // refuses them answers the writes `NOSCRIPT`, and they are refused.
    for script in [replica::WRITE_SCRIPT, replica::APPLY_SCRIPT] {
        encode_request(
            &[b"SCRIPT".as_slice(), b"LOAD", script.as_bytes()],
            &mut buf,
        );
    }
    write_flushed(stream, &buf)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let mut replies = read_replies(stream, 5)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    replies.truncate(3);
    let info = replies.pop().unwrap_or_default();
    let fences = replies.pop().unwrap_or_default();
    let named = replies.pop().unwrap_or_default();
    // Valkey and Redis 7+ report 7 or more; an unreadable INFO counts as current.
    let legacy = major_version(&info).is_some_and(|v| v < 7);
    if !named.starts_with(b"+OK") {
        return Err(format!(
            "the instance refused CLIENT SETNAME ({}); redis-fleet names its connections to fence them",
            String::from_utf8_lossy(&named).trim()
        ));
    }
    match parse_frame(&fences, &Limits::replies()) {
        Ok(Some((frame, _))) if !frame.is_error() => Ok(Greeting {
            fences: fence::parse(&frame),
            legacy,
        }),
        _ => Err(format!(
            "reading the fleet's fences: {}",
            String::from_utf8_lossy(&fences).trim()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_from_info() {
        assert_eq!(
            major_version(b"# Server\r\nredis_version:6.2.14\r\n"),
            Some(6)
        );
        assert_eq!(
            major_version(b"redis_version:7.0.15\r\nredis_mode:x"),
            Some(7)
        );
        assert_eq!(major_version(b"$12\r\nnothing here"), None);
    }
}
