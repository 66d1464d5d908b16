//! Commands on the whole keyspace, answered across the instances as if they were one:
//! SCAN (a cursor that stays valid across instances and table changes, see
//! `sidecar/keyspace.rs`), KEYS, DBSIZE and RANDOMKEY without the fleet's bookkeeping keys or
//! stale copies, and FLUSHDB/FLUSHALL when the sidecar was started with `--allow-flush`.
//!
//! The SCAN cursor is one unsigned 64-bit number, as clients expect:
//! `phase (1 bit) | version (7 bits) | instance hash (16 bits) | the instance's cursor (40 bits)`.
//! Phase 0 walks every instance in hash order; phase 1 walks again, for the keys of the slots
//! they were given since the walk began, the instances that were.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;

use super::super::keyspace::{self, Moved, walk_order};
use super::super::router::Router;
use super::{Client, Pending, backend_reply, bundle, encode, error_reply, lost, parse};
use crate::redis::keys::RESERVED_PREFIX;
use crate::redis::protocol::names::TOMB_PREFIX;
use crate::redis::resp::{Frame, Request};
use crate::routing::keyspace::InstanceId;

const INNER_BITS: u32 = 40;
const INNER_MASK: u64 = (1 << INNER_BITS) - 1;

/// A decoded fleet-wide SCAN cursor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Cursor {
    second_pass: bool,
    version: u8,
    instance: u16,
    inner: u64,
}

impl Cursor {
    fn decode(c: u64) -> Cursor {
        Cursor {
            second_pass: c >> 63 == 1,
            version: ((c >> 56) & 0x7f) as u8,
            instance: ((c >> INNER_BITS) & 0xffff) as u16,
            inner: c & INNER_MASK,
        }
    }

    fn encode(self) -> u64 {
        (u64::from(self.second_pass) << 63)
            | (u64::from(self.version & 0x7f) << 56)
            | (u64::from(self.instance) << INNER_BITS)
            | (self.inner & INNER_MASK)
    }
}

fn bookkeeping(key: &[u8]) -> bool {
    key.starts_with(RESERVED_PREFIX)
}

/// DBSIZE less the fleet's bookkeeping keys (a key in transit between two instances, held
/// under its tombstone, still counts: it exists).
const DBSIZE_SCRIPT: &str = "local n = 0 \
    for _, k in ipairs(redis.call('KEYS', 'redisfleet:*')) do \
      if string.sub(k, 1, 16) ~= 'redisfleet:tomb:' then n = n + 1 end \
    end \
    return redis.call('DBSIZE') - n";

impl Client {
    async fn ask(&self, router: &Router, on: InstanceId, args: &[Bytes]) -> Result<Frame, Bytes> {
        let rx = router.backend(on).send_or_refuse(
            self.lane(),
            router.version(),
            bundle(&[args.to_vec()]),
            1,
        );
        let reply = backend_reply(rx.await.unwrap_or_else(|_| Err(lost())), true);
        match parse(&reply)? {
            Frame::Error(_) => Err(reply),
            other => Ok(other),
        }
    }

    pub(super) async fn dbsize(&mut self, router: Arc<Router>) -> Pending {
        let script = [
            Bytes::from_static(b"EVAL"),
            Bytes::from_static(DBSIZE_SCRIPT.as_bytes()),
            Bytes::from_static(b"0"),
        ];
        let mut total = 0i64;
        for on in 0..router.backends.len() {
            match self.ask(&router, on as InstanceId, &script).await {
                Ok(Frame::Integer(n)) => total += n,
                Ok(_) => {}
                Err(e) => return Pending::Ready(e),
            }
        }
        Pending::Ready(encode(&Frame::Integer(total)))
    }

    pub(super) async fn keys(&mut self, router: Arc<Router>, request: Request) -> Pending {
        let resolver = &router.resolver;
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        // Sources before targets does not matter here: KEYS runs on all of them at once, and
        // a key in transit (under its tombstone on the source) is reported by its name.
        let tomb_pattern = {
            let mut p = TOMB_PREFIX.to_vec();
            p.extend_from_slice(&request.args[1]);
            Bytes::from(p)
        };
        for (_, on) in walk_order(resolver) {
            for pattern in [&request.args[1], &tomb_pattern] {
                let args = [Bytes::from_static(b"KEYS"), pattern.clone()];
                let found = match self.ask(&router, on, &args).await {
                    Ok(Frame::Array(found)) => found,
                    Ok(_) => continue,
                    Err(e) => return Pending::Ready(e),
                };
                for key in found {
                    let Some(name) = key.as_bulk() else { continue };
                    let name = match name.strip_prefix(TOMB_PREFIX) {
                        Some(k) if pattern == &tomb_pattern => Bytes::copy_from_slice(k),
                        _ if pattern == &tomb_pattern => continue,
                        _ => name.clone(),
                    };
                    if bookkeeping(&name)
                        || !keyspace::serves(resolver, on, &name)
                        || !seen.insert(name.clone())
                    {
                        continue;
                    }
                    out.push(Frame::Bulk(name));
                }
            }
        }
        Pending::Ready(encode(&Frame::Array(out)))
    }

    pub(super) async fn random_key(&mut self, router: Arc<Router>) -> Pending {
        let n = router.backends.len();
        let start = (self.id as usize).wrapping_add(self.sample as usize);
        let _ = self.sampled();
        // A few tries per instance: a bookkeeping key or a stale copy is drawn again.
        for attempt in 0..n * 4 {
            let on = ((start + attempt) % n.max(1)) as InstanceId;
            match self
                .ask(&router, on, &[Bytes::from_static(b"RANDOMKEY")])
                .await
            {
                Ok(Frame::Bulk(key)) => {
                    if !bookkeeping(&key) && keyspace::serves(&router.resolver, on, &key) {
                        return Pending::Ready(encode(&Frame::Bulk(key)));
                    }
                }
                Ok(_) => {}
                Err(e) if attempt + 1 == n * 4 => return Pending::Ready(e),
                Err(_) => {}
            }
        }
        Pending::Ready(Bytes::from_static(b"$-1\r\n"))
    }

    pub(super) async fn flush(&mut self, router: Arc<Router>, request: Request) -> Pending {
        if !self.shared.allow_flush.load(Ordering::Relaxed) {
            return Pending::Ready(error_reply(&format!(
                "ERR '{}' is not available through the redis-fleet sidecar: it would erase every instance of the fleet; start the sidecar with --allow-flush to allow it",
                String::from_utf8_lossy(&request.args[0]).to_ascii_lowercase()
            )));
        }
        // Every application key goes; the fleet's bookkeeping (heartbeats, fences, keys in
        // transit) stays, or the data protocol would lose its footing.
        for on in 0..router.backends.len() as InstanceId {
            let mut cursor = Bytes::from_static(b"0");
            loop {
                let args = [
                    Bytes::from_static(b"SCAN"),
                    cursor.clone(),
                    Bytes::from_static(b"COUNT"),
                    Bytes::from_static(b"1000"),
                ];
                let (next, keys) = match self.ask(&router, on, &args).await {
                    Ok(Frame::Array(parts)) if parts.len() == 2 => {
                        let next = parts[0].as_bulk().cloned().unwrap_or_default();
                        let keys: Vec<Bytes> = match &parts[1] {
                            Frame::Array(k) => {
                                k.iter().filter_map(|f| f.as_bulk().cloned()).collect()
                            }
                            _ => Vec::new(),
                        };
                        (next, keys)
                    }
                    Ok(_) => break,
                    Err(e) => return Pending::Ready(e),
                };
                let mut unlink = vec![Bytes::from_static(b"UNLINK")];
                unlink.extend(keys.into_iter().filter(|k| !bookkeeping(k)));
                if unlink.len() > 1
                    && let Err(e) = self.ask(&router, on, &unlink).await
                {
                    return Pending::Ready(e);
                }
                if &next[..] == b"0" {
                    break;
                }
                cursor = next;
            }
        }
        Pending::Ready(Frame::ok().to_bytes())
    }

    /// SCAN across the fleet (see the module docs for the cursor).
    pub(super) async fn scan(&mut self, router: Arc<Router>, request: Request) -> Pending {
        let args = &request.args;
        let Some(raw) = std::str::from_utf8(&args[1])
            .ok()
            .and_then(|s| s.parse::<u64>().ok())
        else {
            return Pending::Ready(error_reply("ERR invalid cursor"));
        };
        let resolver = &router.resolver;
        let now = resolver.version();
        let order = walk_order(resolver);
        let mut cursor = if raw == 0 {
            Cursor {
                second_pass: false,
                version: (now % 128) as u8,
                instance: order.first().map_or(0, |(h, _)| *h),
                inner: 0,
            }
        } else {
            Cursor::decode(raw)
        };
        // What moved since the walk began: keys of those slots are looked for again.
        let moved = |cursor: &Cursor| -> Option<Arc<Moved>> {
            let history = &self.shared.keyspace;
            let from = history.find(cursor.version, now)?;
            history.moved(from, now)
        };
        let mut keys = Vec::new();
        loop {
            let moved_now = if cursor.second_pass {
                moved(&cursor)
            } else {
                None
            };
            // The instances this pass walks, from the cursor's on.
            let candidates: Vec<(u16, InstanceId)> = order
                .iter()
                .copied()
                .filter(|(_, on)| {
                    !cursor.second_pass
                        || moved_now
                            .as_ref()
                            .is_none_or(|m| m.contains_key(resolver.instance_name(*on)))
                })
                .collect();
            let Some(&(hash, on)) = candidates.iter().find(|(h, _)| *h >= cursor.instance) else {
                // This pass is over.
                if cursor.second_pass {
                    return scan_reply(0, keys);
                }
                let again = moved(&cursor).is_none_or(|m| !m.is_empty());
                let first = order.first().map_or(0, |(h, _)| *h);
                if !again || order.is_empty() {
                    return scan_reply(0, keys);
                }
                cursor = Cursor {
                    second_pass: true,
                    instance: first,
                    inner: 0,
                    ..cursor
                };
                if keys.is_empty() {
                    continue;
                }
                return scan_reply(cursor.encode(), keys);
            };
            if hash != cursor.instance {
                // The instance of the cursor left the table: the next one, from its start.
                cursor.instance = hash;
                cursor.inner = 0;
            }
            let mut cmd = args.clone();
            cmd[1] = Bytes::from(cursor.inner.to_string());
            let frame = match self.ask(&router, on, &cmd).await {
                Ok(f) => f,
                Err(e) => return Pending::Ready(e),
            };
            let Frame::Array(parts) = frame else {
                return Pending::Ready(error_reply("ERR unexpected SCAN reply from an instance"));
            };
            let next: u64 = parts
                .first()
                .and_then(|f| f.as_bulk())
                .and_then(|b| std::str::from_utf8(b).ok()?.parse().ok())
                .unwrap_or(0);
            if next > INNER_MASK {
                return Pending::Ready(error_reply("ERR SCAN cursor overflow"));
            }
            let name = resolver.instance_name(on);
            if let Some(Frame::Array(found)) = parts.get(1) {
                for key in found {
                    let Some(k) = key.as_bulk() else { continue };
                    if bookkeeping(k) || !keyspace::serves(resolver, on, k) {
                        continue;
                    }
                    if cursor.second_pass
                        && let Some(m) = &moved_now
                        && !keyspace::was_moved_in(m, resolver, name, k)
                    {
                        continue;
                    }
                    keys.push(key.clone());
                }
            }
            if next != 0 {
                cursor.inner = next;
                return scan_reply(cursor.encode(), keys);
            }
            // This instance is done: on to the next one (within this call while nothing was
            // found, so a client is not handed many empty pages).
            match candidates.iter().find(|(h, _)| *h > hash) {
                Some(&(h, _)) => {
                    cursor.instance = h;
                    cursor.inner = 0;
                }
                None => cursor.instance = u16::MAX,
            }
            if !keys.is_empty() && cursor.instance != u16::MAX {
                return scan_reply(cursor.encode(), keys);
            }
        }
    }
}

fn scan_reply(cursor: u64, keys: Vec<Frame>) -> Pending {
    Pending::Ready(encode(&Frame::Array(vec![
        Frame::Bulk(Bytes::from(cursor.to_string())),
        Frame::Array(keys),
    ])))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip() {
        for c in [
            Cursor {
                second_pass: false,
                version: 5,
                instance: 1,
                inner: 0,
            },
            Cursor {
                second_pass: true,
                version: 127,
                instance: u16::MAX,
                inner: INNER_MASK,
            },
        ] {
            assert_eq!(Cursor::decode(c.encode()), c);
            assert_ne!(c.encode(), 0);
        }
    }
}
