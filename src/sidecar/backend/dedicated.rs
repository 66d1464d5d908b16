//! A connection used by one client only: blocking commands, WATCHed transactions, guarded
//! commands that cannot run inside the guard script, and the heartbeat.

use std::io;

use bytes::BytesMut;
use tokio::io::AsyncReadExt;

use std::sync::Arc;

use std::sync::atomic::AtomicU64;

use super::super::fleet::{FleetView, Lease};
use super::super::metrics::BackendMetrics;
use super::{BackendError, Naming, Replies, SendError, Stream};
use crate::redis::resp::{FrameScanner, Limits, encode_request};
use crate::redis::stream::write_flushed;

/// A connection used by one client only.
pub struct Dedicated {
    name: String,
    stream: Stream,
    buf: BytesMut,
    scanner: FrameScanner,
    /// The table version the connection is named for.
    version: u64,
    naming: Naming,
    metrics: BackendMetrics,
    /// Vouches for replies (`None` for the heartbeat's control connections).
    vouching: Option<Vouching>,
}

/// The fleet view and this instance's fence and lease cells, looked up once per connection
/// (not per command).
struct Vouching {
    view: Arc<FleetView>,
    fence: Arc<AtomicU64>,
    lease: Lease,
}

impl std::fmt::Debug for Dedicated {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dedicated")
            .field("instance", &self.name)
            .finish()
    }
}

impl Drop for Dedicated {
    fn drop(&mut self) {
        self.metrics.connections.dec();
    }
}

impl Dedicated {
    pub(super) fn new(
        name: String,
        stream: Stream,
        version: u64,
        naming: Naming,
        metrics: BackendMetrics,
        view: Option<Arc<FleetView>>,
    ) -> Self {
        let vouching = view.map(|view| Vouching {
            fence: view.fence_cell(&name),
            lease: view.lease_cell(&name),
            view,
        });
        Self {
            name,
            stream,
            buf: BytesMut::with_capacity(16 * 1024),
            scanner: FrameScanner::new(),
            version,
            vouching,
            naming,
            metrics,
        }
    }

    /// The instance.
    pub fn instance(&self) -> &str {
        &self.name
    }

    /// The table version the connection is named for.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Renames the connection for commands routed by table `version` (never back to an older
    /// one: `false` then, and the caller must route by a newer table or open another).
    pub async fn rename(&mut self, version: u64) -> Result<bool, BackendError> {
        if version < self.version {
            return Ok(false);
        }
        if version > self.version {
            let mut buf = BytesMut::new();
            let name = self.naming.connection(version);
            encode_request(
                &[b"CLIENT".as_slice(), b"SETNAME", name.as_bytes()],
                &mut buf,
            );
            self.call_as(&buf, 1, version).await?;
            self.version = version;
        }
        Ok(true)
    }

    /// Writes `bytes` and waits (without a deadline: blocking commands may wait long) for
    /// `replies` replies, which the fleet vouches for (see [`FleetView::vouch`]).
    pub async fn call(&mut self, bytes: &[u8], replies: usize) -> Result<Replies, BackendError> {
        self.call_as(bytes, replies, self.version).await
    }

    /// [`Dedicated::call`] for commands routed by table `version`: refused unsent when the
    /// instance is fenced above it (a fence heard since the caller was admitted: the greeting
    /// of this very connection, say).
    async fn call_as(
        &mut self,
        bytes: &[u8],
        replies: usize,
        version: u64,
    ) -> Result<Replies, BackendError> {
        if let Some(v) = &self.vouching {
            SendError::check_fence(&self.name, &v.fence, version)?;
        }
        let out = self.call_unvouched(bytes, replies).await?;
        if let Some(v) = &self.vouching {
            let verdict = match v.view.check(&v.fence, &v.lease, version) {
                Some(verdict) => verdict,
                None => v.view.vouch(&self.name, version).await,
            };
            verdict.map_err(|why| BackendError::unvouched(&self.name, &why))?;
        }
        Ok(out)
    }

    async fn call_unvouched(
        &mut self,
        bytes: &[u8],
        replies: usize,
    ) -> Result<Replies, BackendError> {
        let lost = |e: io::Error| BackendError::Lost {
            instance: self.name.clone(),
            reason: e.to_string(),
        };
        write_flushed(&mut self.stream, bytes).await.map_err(lost)?;
        let mut out = Vec::with_capacity(replies);
        let limits = Limits::replies();
        while out.len() < replies {
            match self.scanner.scan(&self.buf, &limits) {
                Ok(Some(n)) => {
                    out.push(self.buf.split_to(n).freeze());
                    self.scanner.reset();
                    continue;
                }
                Ok(None) => {}
                Err(e) => {
                    return Err(BackendError::Lost {
                        instance: self.name.clone(),
                        reason: format!("protocol error from the server: {e}"),
                    });
                }
            }
            self.buf.reserve(16 * 1024);
            let n = self
                .stream
                .read_buf(&mut self.buf)
                .await
                .map_err(|e| BackendError::Lost {
                    instance: self.name.clone(),
                    reason: e.to_string(),
                })?;
            if n == 0 {
                return Err(BackendError::Lost {
                    instance: self.name.clone(),
                    reason: "the server closed the connection".to_owned(),
                });
            }
        }
        Ok(if replies == 1 {
            Replies::One(out.pop().unwrap_or_default())
        } else {
            Replies::Many(out)
        })
    }
}
