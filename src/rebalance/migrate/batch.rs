//! Moving keys in batches: one take script call per batch of keys on the source, the RESTOREs
//! pipelined on the target, one finish call; several batches in flight at once.

use bytes::Bytes;
use tracing::warn;

use crate::redis::keymove::{self, LEASE_MS, MoveError, Restored, Taken};
use crate::redis::resp::Frame;

use super::{BIG_VALUE_BYTES, Error, Instance};

/// Keys per take or finish script call: a call holds its Redis for about this many keys' work
/// (well under a millisecond for small values) and saves a script call per key.
const KEYS_PER_SCRIPT: usize = 64;

/// Batches moving at once: the source takes the next ones while the target restores earlier
/// ones, and neither waits for the other's round trips.
pub(super) const BATCHES_IN_FLIGHT: usize = 8;

/// What a batch needs, cloned into each batch in flight (connections are multiplexed).
#[derive(Clone)]
pub(super) struct Mover {
    pub(super) from: Instance,
    pub(super) to: Instance,
    pub(super) take_sha: String,
    pub(super) finish_sha: String,
    pub(super) owner: String,
}

/// What a batch left to the Job.
#[derive(Default)]
pub(super) struct BatchOutcome {
    /// Keys moved and finished.
    pub(super) moved: u64,
    /// Keys now in their tombstones, to copy piece by piece (too big for one DUMP, or a
    /// payload the target refuses), with their remaining TTL.
    pub(super) piecewise: Vec<(Vec<u8>, i64)>,
}

impl Mover {
    /// Moves a batch: takes every key out of the source (tombstone + lease), RESTOREs them on
    /// the target (BUSYKEY: the target's value is newer and stays), finishes the moves.
    /// Keys another mover holds are left for the sweep.
    pub(super) async fn move_batch(mut self, keys: Vec<Vec<u8>>) -> Result<BatchOutcome, Error> {
        // 1. Take them out of the source: one pipeline of many-key script calls.
        let mut pipe = redis::pipe();
        for group in keys.chunks(KEYS_PER_SCRIPT) {
            let call = pipe.cmd("EVALSHA").arg(&self.take_sha).arg(group.len() * 3);
            for k in group {
                call.arg(k)
                    .arg(keymove::tomb_key(k).as_ref())
                    .arg(keymove::lease_key(k).as_ref());
            }
            call.arg(&self.owner).arg(LEASE_MS).arg(BIG_VALUE_BYTES);
        }
        let replies: Vec<redis::Value> = pipe
            .query_async(&mut self.from.conn)
            .await
            .map_err(|e| self.from.err(&e))?;
        let taken: Vec<Frame> = replies
            .iter()
            .flat_map(|r| match to_frame(r) {
                Frame::Array(items) => items,
                other => vec![other],
            })
            .collect();
        if taken.len() != keys.len() {
            return Err(Error::Redis {
                instance: self.from.name.clone(),
                message: format!(
                    "the take script answered for {} of {} keys",
                    taken.len(),
                    keys.len()
                ),
            });
        }
        let mut outcome = BatchOutcome::default();
        let mut restores: Vec<(usize, Vec<Bytes>)> = Vec::new();
        let mut finish: Vec<usize> = Vec::new();
        for (i, reply) in taken.iter().enumerate() {
            let key = Bytes::copy_from_slice(&keys[i]);
            match keymove::parse_taken(reply).map_err(|source| Error::Move {
                key: String::from_utf8_lossy(&keys[i]).into_owned(),
                source,
            })? {
                Taken::None | Taken::Busy => {}
                Taken::Value { dump, pttl } => match keymove::restore_command(&key, &dump, pttl) {
                    Some(cmd) => restores.push((i, cmd)),
                    None => finish.push(i),
                },
                Taken::Big { pttl, .. } => outcome.piecewise.push((keys[i].clone(), pttl)),
            }
        }
        // 2. Restore on the target (one pipeline); BUSYKEY: the target's value is newer.
        if !restores.is_empty() {
            let mut pipe = redis::pipe();
            for (_, cmd) in &restores {
                let c = pipe.cmd("RESTORE");
                for a in &cmd[1..] {
                    c.arg(a.as_ref());
                }
            }
            // A per-command error must not fail the pipeline: read each reply as a value.
            let replies: Vec<redis::Value> = match pipe.query_async(&mut self.to.conn).await {
                Ok(r) => r,
                Err(e) if e.kind() == redis::ErrorKind::Extension || e.code().is_some() => {
                    // Fall back to one by one to learn which failed.
                    let mut out = Vec::with_capacity(restores.len());
                    for (_, cmd) in &restores {
                        let mut c = redis::cmd("RESTORE");
                        for a in &cmd[1..] {
                            c.arg(a.as_ref());
                        }
                        out.push(
                            match c.query_async::<redis::Value>(&mut self.to.conn).await {
                                Ok(v) => v,
                                Err(e) => redis::Value::SimpleString(format!("ERR:{e}")),
                            },
                        );
                    }
                    out
                }
                Err(e) => return Err(self.to.err(&e)),
            };
            for ((i, _), reply) in restores.iter().zip(replies) {
                let frame = match reply {
                    redis::Value::SimpleString(s) if s.starts_with("ERR:") => {
                        let text = s.trim_start_matches("ERR:").to_owned();
                        let code = if text.contains("BUSYKEY") || text.contains("already exists") {
                            "BUSYKEY Target key name already exists."
                        } else {
                            text.as_str()
                        };
                        Frame::Error(Bytes::from(code.to_owned()))
                    }
                    other => to_frame(&other),
                };
                match keymove::parse_restored(&frame) {
                    Ok(Restored::Done | Restored::TargetNewer) => finish.push(*i),
                    Err(MoveError::NotPortable(_)) => {
                        let pttl: i64 = redis::cmd("PTTL")
                            .arg(keymove::tomb_key(&keys[*i]).as_ref())
                            .query_async(&mut self.from.conn)
                            .await
                            .map_err(|e| self.from.err(&e))?;
                        outcome.piecewise.push((keys[*i].clone(), pttl));
                    }
                    Err(source) => {
                        return Err(Error::Move {
                            key: String::from_utf8_lossy(&keys[*i]).into_owned(),
                            source,
                        });
                    }
                }
            }
        }
        // 3. Finish on the source.
        let done: Vec<Vec<u8>> = finish.iter().map(|i| keys[*i].clone()).collect();
        self.finish(&done).await?;
        outcome.moved = done.len() as u64;
        Ok(outcome)
    }

    /// Ends the moves of `keys` on the source (tombstones and leases that are still ours).
    pub(super) async fn finish(&self, keys: &[Vec<u8>]) -> Result<(), Error> {
        if keys.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        for group in keys.chunks(KEYS_PER_SCRIPT) {
            let call = pipe
                .cmd("EVALSHA")
                .arg(&self.finish_sha)
                .arg(group.len() * 2);
            for k in group {
                call.arg(keymove::tomb_key(k).as_ref())
                    .arg(keymove::lease_key(k).as_ref());
            }
            call.arg(&self.owner).ignore();
        }
        let mut conn = self.from.conn.clone();
        let () = pipe
            .query_async(&mut conn)
            .await
            .map_err(|e| self.from.err(&e))?;
        Ok(())
    }
}

/// A `redis` crate value as a RESP frame, so the move protocol's parsers serve both the
/// sidecar and the Job.
fn to_frame(value: &redis::Value) -> Frame {
    match value {
        redis::Value::Nil => Frame::Null,
        redis::Value::Int(i) => Frame::Integer(*i),
        redis::Value::BulkString(b) => Frame::Bulk(Bytes::copy_from_slice(b)),
        redis::Value::SimpleString(s) => Frame::Simple(Bytes::from(s.clone())),
        redis::Value::Okay => Frame::ok(),
        redis::Value::Array(items) => Frame::Array(items.iter().map(to_frame).collect()),
        redis::Value::ServerError(e) => Frame::Error(Bytes::from(format!(
            "{} {}",
            e.code(),
            e.details().unwrap_or_default()
        ))),
        other => {
            warn!(?other, "unexpected reply type");
            Frame::Null
        }
    }
}
