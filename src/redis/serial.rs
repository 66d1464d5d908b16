//! A small connection for a caller that keeps many connections open and sends on each one
//! request (or one pipeline) at a time: the operator keeps one per instance for its probes,
//! sampling and purging. The `redis` crate's multiplexed connection holds a driver task, a
//! command channel and 8 KiB read and write buffers each, ~19.5 KiB: at 1 000 instances a
//! fifth of the operator's memory. Between requests this one holds the socket and nothing
//! else; a request encodes into the command's own buffer and reads into one that is dropped
//! once its replies are parsed. Clones share the socket and take turns on it.
//!
//! It implements the `redis` crate's `aio::ConnectionLike`, so commands, pipelines and scripts
//! are written as on any connection. A request that fails, times out or is dropped half-way (a
//! caller's own timeout) closes the socket, and the next request, from any clone, opens a new
//! one: it never reads a reply meant for an earlier request, and one user's failure (a slow
//! sampling pipeline) does not fail the next user's request (the probe) with it.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use redis::{Cmd, Pipeline, RedisError, RedisFuture, RedisResult, Value};
use tokio::sync::Mutex;

use super::connect::Target;
use super::stream::{OpenError, Stream, open_within, read_replies, write_flushed};

/// A connection with one request at a time (see the module's documentation).
#[derive(Clone)]
pub struct SerialConnection {
    /// What it connects to, again after a failed request.
    target: Arc<Target>,
    /// `None` once a request failed or was abandoned half-way, until the next one opens it.
    stream: Arc<Mutex<Option<Stream>>>,
    /// How long a request may take, from sending to its last reply.
    timeout: Duration,
}

impl std::fmt::Debug for SerialConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SerialConnection")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl SerialConnection {
    /// Connects to `target` (TLS and AUTH as it says); `timeout` bounds connecting and each
    /// request. Errors carry the kinds the `redis` crate gives (refused, timed out,
    /// authentication), and never credentials.
    pub async fn open(target: &Target, timeout: Duration) -> RedisResult<Self> {
        let stream = open_within(target, timeout)
            .await
            .map_err(|e| open_error(e, &target.address()))?;
        Ok(Self {
            target: Arc::new(target.clone()),
            stream: Arc::new(Mutex::new(Some(stream))),
            timeout,
        })
    }

    /// Sends `packed` and reads `skip + count` replies; returns the last `count`.
    async fn request(&self, packed: &[u8], skip: usize, count: usize) -> RedisResult<Vec<Value>> {
        let mut slot = self.stream.lock().await;
        // Taken out for the exchange, put back only after it: a request dropped half-way
        // (its future cancelled) leaves `None`, not a stream with replies still to read.
        let mut stream = match slot.take() {
            Some(stream) => stream,
            None => open_within(&self.target, self.timeout)
                .await
                .map_err(|e| open_error(e, &self.target.address()))?,
        };
        let exchange = async {
            write_flushed(&mut stream, packed).await?;
            read_replies(&mut stream, skip + count).await
        };
        let replies = match tokio::time::timeout(self.timeout, exchange).await {
            Ok(replies) => replies?,
            Err(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("no reply within {}ms", self.timeout.as_millis()),
                )
                .into());
            }
        };
        *slot = Some(stream);
        drop(slot);
        let values: Vec<Value> = replies
            .iter()
            .skip(skip)
            .map(|reply| redis::parse_redis_value(reply))
            .collect::<RedisResult<_>>()?;
        // A transaction whose EXEC was refused (`-EXECABORT`): its cause is the error one of
        // the skipped `QUEUED` replies carries, as the multiplexed connection reports it.
        if skip > 0 && values.iter().any(|v| matches!(v, Value::ServerError(_))) {
            for reply in replies.iter().take(skip) {
                if let Value::ServerError(cause) = redis::parse_redis_value(reply)? {
                    return Err(cause.into());
                }
            }
        }
        Ok(values)
    }
}

/// A connection error as the `redis` crate reports it, so that callers classify it alike.
fn open_error(e: OpenError, address: &str) -> RedisError {
    match e {
        OpenError::Connect(io) | OpenError::Io(io) => io.into(),
        OpenError::Timeout(_) => {
            io::Error::new(io::ErrorKind::TimedOut, e.describe(address)).into()
        }
        OpenError::Auth(_) => (
            redis::ErrorKind::AuthenticationFailed,
            "authentication failed",
            e.describe(address),
        )
            .into(),
        OpenError::Tls(_) => (redis::ErrorKind::Io, "TLS", e.describe(address)).into(),
    }
}

impl redis::aio::ConnectionLike for SerialConnection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        Box::pin(async move {
            let mut replies = self.request(&cmd.get_packed_command(), 0, 1).await?;
            replies
                .pop()
                .ok_or_else(|| (redis::ErrorKind::Parse, "no reply").into())
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        Box::pin(async move {
            self.request(&pipeline.get_packed_pipeline(), offset, count)
                .await
        })
    }

    fn get_db(&self) -> i64 {
        0
    }
}
