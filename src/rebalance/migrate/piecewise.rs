//! Values too large for one DUMP, or whose DUMP the target cannot load (another Redis
//! version), copied type by type in pieces into a temporary key that is renamed into place
//! only if the target has no newer value.

use crate::redis::keymove::{self, LEASE_MS, MoveError};

use super::{Error, Job};

impl Job {
    /// Copies the tombstone of `key` to the target type by type, in pieces, into a temporary
    /// key renamed into place only if the target has no newer value.
    pub(super) async fn copy_piecewise(
        &mut self,
        from: &str,
        to: &str,
        key: &[u8],
        pttl: i64,
    ) -> Result<(), Error> {
        let tomb = keymove::tomb_key(key);
        let lease = keymove::lease_key(key);
        let temp = [b"redisfleet:restore:".as_slice(), key].concat();
        let owner = self.config.owner.clone();
        let kind: String = {
            let source = self.instance(from)?;
            redis::cmd("TYPE")
                .arg(tomb.as_ref())
                .query_async(&mut source.conn)
                .await
                .map_err(|e| source.err(&e))?
        };
        {
            let target = self.instance(to)?;
            let _: () = redis::cmd("DEL")
                .arg(&temp)
                .query_async(&mut target.conn)
                .await
                .map_err(|e| target.err(&e))?;
        }
        let mut cursor: u64 = 0;
        let mut index: i64 = 0;
        let mut last_id = "-".to_owned();
        loop {
            // Keep the lease while a long copy runs.
            {
                let source = self.instance(from)?;
                let _: () = redis::cmd("SET")
                    .arg(lease.as_ref())
                    .arg(&owner)
                    .arg("PX")
                    .arg(LEASE_MS)
                    .arg("XX")
                    .query_async(&mut source.conn)
                    .await
                    .map_err(|e| source.err(&e))?;
            }
            let (cmd, done): (Option<redis::Cmd>, bool) = match kind.as_str() {
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
                    let mut c = redis::cmd("APPEND");
                    c.arg(&temp).arg(chunk);
                    (Some(c), done)
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
                    let c = if items.is_empty() {
                        None
                    } else {
                        let mut c = match kind.as_str() {
                            "hash" => redis::cmd("HSET"),
                            "set" => redis::cmd("SADD"),
                            _ => redis::cmd("ZADD"),
                        };
                        c.arg(&temp);
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
                        Some(c)
                    };
                    (c, next == 0)
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
                    let c = (!items.is_empty()).then(|| {
                        let mut c = redis::cmd("RPUSH");
                        c.arg(&temp).arg(items);
                        c
                    });
                    (c, done)
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
                    let mut pipe_cmds = Vec::new();
                    for (id, fields) in &entries {
                        let mut c = redis::cmd("XADD");
                        c.arg(&temp).arg(id).arg(fields);
                        pipe_cmds.push(c);
                        last_id = id.clone();
                    }
                    let target = self.instance(to)?;
                    for c in pipe_cmds {
                        let _: redis::Value = c
                            .query_async(&mut target.conn)
                            .await
                            .map_err(|e| target.err(&e))?;
                    }
                    (None, done)
                }
                other => {
                    return Err(Error::Move {
                        key: String::from_utf8_lossy(key).into_owned(),
                        source: MoveError::NotPortable(format!(
                            "cannot copy a {other} piece by piece"
                        )),
                    });
                }
            };
            if let Some(c) = cmd {
                let target = self.instance(to)?;
                let _: redis::Value = c
                    .query_async(&mut target.conn)
                    .await
                    .map_err(|e| target.err(&e))?;
            }
            if done {
                break;
            }
        }
        let target = self.instance(to)?;
        if pttl > 0 {
            let _: i64 = redis::cmd("PEXPIRE")
                .arg(&temp)
                .arg(pttl)
                .query_async(&mut target.conn)
                .await
                .map_err(|e| target.err(&e))?;
        }
        let placed: i64 = redis::cmd("RENAMENX")
            .arg(&temp)
            .arg(key)
            .query_async(&mut target.conn)
            .await
            .unwrap_or(0);
        if placed == 0 {
            // The target already had a newer value; or nothing was copied (empty).
            let _: () = redis::cmd("DEL")
                .arg(&temp)
                .query_async(&mut target.conn)
                .await
                .map_err(|e| target.err(&e))?;
        }
        Ok(())
    }
}
