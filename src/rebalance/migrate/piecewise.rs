//! Values too large for one DUMP, or whose DUMP the target cannot load (another Redis
//! version), copied type by type in pieces into a temporary key of this Job attempt (named
//! after its mover token), which carries the key's remaining TTL from the first piece on and is
//! renamed into place only if the key is still absent on the target — by a script that checks
//! the mover token, so a replaced Job cannot place anything.

use bytes::Bytes;
use tracing::warn;

use crate::redis::protocol::mover::{MoveError, Placed};
use crate::redis::protocol::names;

use super::batch::move_error;
use super::{Error, Job};

/// A value without a TTL is assembled under this one (lifted when it is placed), so the
/// pieces of a Job that dies midway do not stay forever.
const ASSEMBLY_TTL_MS: u64 = 3_600_000;

/// Assemblies of one value before the move gives up on it (the attempt fails; the value waits
/// in its tombstone on the source for the next).
const ASSEMBLY_TRIES: u32 = 3;

/// The command that sizes a value of type `kind`, to tell a whole assembly from one that lost
/// pieces.
fn size_command(kind: &str) -> Option<&'static str> {
    Some(match kind {
        "string" => "STRLEN",
        "list" => "LLEN",
        "hash" => "HLEN",
        "set" => "SCARD",
        "zset" => "ZCARD",
        "stream" => "XLEN",
        _ => return None,
    })
}

impl Job {
    /// Copies the tombstone of `key` to the target type by type, in pieces. `expire_at` is
    /// the key's expiry (Unix ms by the source's clock; -1: none). The assembly is placed only
    /// whole: one that lost pieces (the target evicted or expired it mid-way, and the next
    /// piece started it again) is assembled again.
    pub(super) async fn copy_piecewise(
        &mut self,
        from: &str,
        to: &str,
        key: &[u8],
        expire_at: i64,
    ) -> Result<(), Error> {
        for tried in 1..=ASSEMBLY_TRIES {
            if matches!(
                self.assemble(from, to, key, expire_at).await?,
                Placed::Placed | Placed::TargetNewer
            ) || self.expired(from, to, key, expire_at).await?
            {
                return Ok(());
            }
            warn!(
                key = %String::from_utf8_lossy(key),
                tried,
                of = ASSEMBLY_TRIES,
                "a value copied piece by piece lost pieces on the target (evicted mid-way)"
            );
        }
        // What is left of the last assembly goes (it would expire within the hour anyway).
        let temp = names::restore_temp(self.mover.token, key);
        let target = self.instance(to)?;
        let _: redis::RedisResult<()> = redis::cmd("DEL")
            .arg(temp.as_ref())
            .query_async(&mut target.conn)
            .await;
        Err(move_error(
            key,
            MoveError::Server(format!(
                "the target lost pieces of the value {ASSEMBLY_TRIES} times (does it evict keys with a TTL while full?); it stays on the source"
            )),
        ))
    }

    /// Whether `key`, whose assembly came out missing or not whole, has expired meanwhile: its
    /// tombstone is gone from the source, or its expiry has passed by the target's clock (where
    /// the assembly carried it).
    async fn expired(
        &mut self,
        from: &str,
        to: &str,
        key: &[u8],
        expire_at: i64,
    ) -> Result<bool, Error> {
        let tomb = names::tomb(key);
        let source = self.instance(from)?;
        let alive: bool = redis::cmd("EXISTS")
            .arg(tomb.as_ref())
            .query_async(&mut source.conn)
            .await
            .map_err(|e| source.err(&e))?;
        if !alive || expire_at < 0 {
            return Ok(!alive);
        }
        let target = self.instance(to)?;
        let (secs, micros): (i64, i64) = redis::cmd("TIME")
            .query_async(&mut target.conn)
            .await
            .map_err(|e| target.err(&e))?;
        Ok(secs * 1000 + micros / 1000 >= expire_at)
    }

    /// One assembly of `key`'s value on the target, placed if whole: if the target holds as
    /// many bytes, items or entries as the assembly wrote (counted from the commands' own
    /// replies, so duplicates a scan returned twice count once).
    async fn assemble(
        &mut self,
        from: &str,
        to: &str,
        key: &[u8],
        expire_at: i64,
    ) -> Result<Placed, Error> {
        let tomb = names::tomb(key);
        let temp = names::restore_temp(self.mover.token, key);
        let kind: String = {
            let source = self.instance(from)?;
            redis::cmd("TYPE")
                .arg(tomb.as_ref())
                .query_async(&mut source.conn)
                .await
                .map_err(|e| source.err(&e))?
        };
        if kind == "none" {
            return Ok(Placed::Missing);
        }
        let Some(size) = size_command(&kind) else {
            return Err(move_error(
                key,
                MoveError::Server(format!("cannot copy a {kind} piece by piece")),
            ));
        };
        // What the pieces added: bytes of a string, else items or entries.
        let mut written: i64 = 0;
        {
            let target = self.instance(to)?;
            let _: () = redis::cmd("DEL")
                .arg(temp.as_ref())
                .query_async(&mut target.conn)
                .await
                .map_err(|e| target.err(&e))?;
        }
        let mut cursor: u64 = 0;
        let mut index: i64 = 0;
        let mut last_id = "-".to_owned();
        let mut first_piece = true;
        loop {
            // Each command, and what it adds: its reply (`HSET`, `SADD`, `ZADD` answer how many
            // were new) or a known count.
            let mut cmds: Vec<(redis::Cmd, Option<i64>)> = Vec::new();
            let done = match kind.as_str() {
                "none" => true,
                "string" => {
                    let source = self.instance(from)?;
                    let chunk: Vec<u8> = redis::cmd("GETRANGE")
                        .arg(tomb.as_ref())
                        .arg(index)
                        .arg(index + (1 << 20) - 1)
                        .query_async(&mut source.conn)
                        .await
                        .map_err(|e| source.err(&e))?;
                    index += chunk.len() as i64;
                    let done = chunk.len() < 1 << 20;
                    let added = chunk.len() as i64;
                    let mut c = redis::cmd("APPEND");
                    c.arg(temp.as_ref()).arg(chunk);
                    if added > 0 {
                        cmds.push((c, Some(added)));
                    }
                    done
                }
                "hash" | "set" | "zset" => {
                    let scan = match kind.as_str() {
                        "hash" => "HSCAN",
                        "set" => "SSCAN",
                        _ => "ZSCAN",
                    };
                    let source = self.instance(from)?;
                    let (next, items): (u64, Vec<Vec<u8>>) = redis::cmd(scan)
                        .arg(tomb.as_ref())
                        .arg(cursor)
                        .arg("COUNT")
                        .arg(1000)
                        .query_async(&mut source.conn)
                        .await
                        .map_err(|e| source.err(&e))?;
                    cursor = next;
                    if !items.is_empty() {
                        let mut c = match kind.as_str() {
                            "hash" => redis::cmd("HSET"),
                            "set" => redis::cmd("SADD"),
                            _ => redis::cmd("ZADD"),
                        };
                        c.arg(temp.as_ref());
                        if kind == "zset" {
                            // ZSCAN yields member, score; ZADD wants score, member.
                            for pair in items.chunks(2) {
                                if let [member, score] = pair {
                                    c.arg(score).arg(member);
                                }
                            }
                        } else {
                            for item in &items {
                                c.arg(item);
                            }
                        }
                        cmds.push((c, None));
                    }
                    next == 0
                }
                "list" => {
                    let source = self.instance(from)?;
                    let items: Vec<Vec<u8>> = redis::cmd("LRANGE")
                        .arg(tomb.as_ref())
                        .arg(index)
                        .arg(index + 999)
                        .query_async(&mut source.conn)
                        .await
                        .map_err(|e| source.err(&e))?;
                    index += items.len() as i64;
                    let done = items.len() < 1000;
                    if !items.is_empty() {
                        let added = items.len() as i64;
                        let mut c = redis::cmd("RPUSH");
                        c.arg(temp.as_ref()).arg(items);
                        cmds.push((c, Some(added)));
                    }
                    done
                }
                "stream" => {
                    let source = self.instance(from)?;
                    let start = if last_id == "-" {
                        "-".to_owned()
                    } else {
                        format!("({last_id}")
                    };
                    let entries: Vec<(String, Vec<Vec<u8>>)> = redis::cmd("XRANGE")
                        .arg(tomb.as_ref())
                        .arg(&start)
                        .arg("+")
                        .arg("COUNT")
                        .arg(500)
                        .query_async(&mut source.conn)
                        .await
                        .map_err(|e| source.err(&e))?;
                    let done = entries.len() < 500;
                    for (id, fields) in &entries {
                        let mut c = redis::cmd("XADD");
                        c.arg(temp.as_ref()).arg(id).arg(fields);
                        cmds.push((c, Some(1)));
                        last_id = id.clone();
                    }
                    if done && written == 0 && cmds.is_empty() {
                        // A stream without entries (all deleted, or made by `XGROUP CREATE …
                        // MKSTREAM`) still exists: make it so on the target too.
                        let mut c = redis::cmd("XGROUP");
                        c.arg("CREATE")
                            .arg(temp.as_ref())
                            .arg("redisfleet-assembly")
                            .arg("$")
                            .arg("MKSTREAM");
                        cmds.push((c, Some(0)));
                        let mut c = redis::cmd("XGROUP");
                        c.arg("DESTROY")
                            .arg(temp.as_ref())
                            .arg("redisfleet-assembly");
                        cmds.push((c, Some(0)));
                    }
                    done
                }
                other => {
                    return Err(move_error(
                        key,
                        MoveError::Server(format!("cannot copy a {other} piece by piece")),
                    ));
                }
            };
            if !cmds.is_empty() {
                let mut pipe = redis::pipe();
                for (c, _) in &cmds {
                    pipe.add_command(c.clone());
                }
                if first_piece {
                    // The key's expiry from the start, in the same transaction as the first
                    // piece (an assembly is never left without one): a key that runs out
                    // mid-copy runs out here too, and never comes back partly filled.
                    first_piece = false;
                    pipe.atomic();
                    if expire_at >= 0 {
                        pipe.cmd("PEXPIREAT").arg(temp.as_ref()).arg(expire_at);
                    } else {
                        pipe.cmd("PEXPIRE").arg(temp.as_ref()).arg(ASSEMBLY_TTL_MS);
                    }
                }
                let target = self.instance(to)?;
                let replies: Vec<redis::Value> = pipe
                    .query_async(&mut target.conn)
                    .await
                    .map_err(|e| target.err(&e))?;
                for ((_, count), reply) in cmds.iter().zip(&replies) {
                    written += match (count, reply) {
                        (Some(n), _) => *n,
                        (None, redis::Value::Int(n)) => *n,
                        (None, _) => 0,
                    };
                }
            }
            if done {
                break;
            }
        }
        let mover = self.mover.clone();
        let target = self.instance(to)?;
        mover
            .place(&mut target.conn, &temp, key, expire_at < 0, size, written)
            .await
            .map_err(|e| move_error(key, e))
    }

    /// Finishes the move of keys copied piece by piece.
    pub(super) async fn finish_keys(&mut self, from: &str, keys: &[Bytes]) -> Result<(), Error> {
        let mover = self.mover.clone();
        let source = self.instance(from)?;
        mover
            .finish(&mut source.conn, keys)
            .await
            .map_err(|e| move_error(keys.first().map_or(&[][..], |k| k), e))
    }
}
