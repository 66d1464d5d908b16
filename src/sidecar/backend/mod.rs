//! Connections from the sidecar to one Redis instance.
//!
//! A [`Backend`] keeps a few long-lived *lanes* per instance. Each lane is one TCP (or TLS)
//! connection on which requests of many clients are pipelined: a writer coalesces whatever is
//! queued into one write, a reader matches replies to requests in order and hands each one
//! its reply as raw bytes (never decoded and re-encoded). A client always uses the same lane of
//! an instance, so its commands to that instance stay in order.
//!
//! Every connection is named after the oldest routing table any command on it was routed by
//! (`redisfleet:<policy>:<sidecar>:v<version>`, see `docs/protocol.md`): a request carries the
//! version of the table that routed it, and a lane renamed for a newer table refuses requests
//! of older ones ([`SendError::Stale`]; the session routes them again). A new connection reads
//! the fleet's fences at its handshake and carries nothing until a heartbeat round confirmed
//! them ([`FleetView::confirmed`]). Every reply is vouched for before it goes to the client
//! ([`FleetView::vouch`]): one that arrives when the instance's lease ran out, or after the
//! fleet fenced the instance, is withheld (`-TRYAGAIN … may or may not have run`), since the
//! instance may have been failed over while the command waited in it.
//!
//! A lane that cannot connect, or whose server stops answering for `request_timeout`, is
//! *down*: requests to it fail at once with `-UNAVAILABLE instance <name> …` instead of
//! hanging the client, while the lane reconnects with exponential backoff.
//!
//! Blocking commands and WATCHed transactions need a connection of their own
//! ([`Backend::dedicated`]), since they hold connection state for as long as they run.

mod dedicated;
mod lane;
mod stream;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tokio::sync::{mpsc, oneshot};

use super::fleet::{FleetView, Unvouched};
use super::latency_window::Counts;
use super::metrics::BackendMetrics;
use crate::redis::connect::Target;
use crate::redis::protocol::names;
use crate::redis::resp::encode_request;

pub use dedicated::Dedicated;
pub use stream::{Greeting, Stream, handshake, open};

/// How many scheduler turns a lane waits for more requests to join a write, at most. Each turn
/// only lasts while other connections have work ready, so an idle proxy adds no delay.
const YIELD_ROUNDS: usize = 4;

/// Tunables of a backend.
#[derive(Debug, Clone)]
pub struct BackendOptions {
    /// Pipelined connections per instance.
    pub lanes: usize,
    /// Time allowed to connect (TCP, TLS and AUTH).
    pub connect_timeout: Duration,
    /// A lane whose oldest request waits longer than this is considered dead.
    pub request_timeout: Duration,
    /// First reconnect delay; doubles up to `max_backoff`.
    pub min_backoff: Duration,
    /// Longest reconnect delay.
    pub max_backoff: Duration,
}

impl Default for BackendOptions {
    fn default() -> Self {
        Self {
            lanes: 1,
            connect_timeout: Duration::from_secs(1),
            request_timeout: Duration::from_secs(5),
            min_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(2),
        }
    }
}

/// How this sidecar names its connections.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Naming {
    /// `<namespace>/<name>` of the CachePolicy whose table is routed.
    pub policy: String,
    /// This sidecar's id.
    pub sidecar: String,
}

impl Naming {
    /// The connection name for commands routed by table `version`.
    pub fn connection(&self, version: u64) -> String {
        names::connection_name(&self.policy, &self.sidecar, version)
    }

    /// The name of the heartbeat connections (never fenced: they carry no application data).
    pub fn control(&self) -> String {
        format!("redisfleet-control:{}:{}", self.policy, self.sidecar).replace(' ', "_")
    }
}

/// Why a request was not sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendError {
    /// The lane carries commands of a newer table now: route the request again.
    Stale,
    /// The instance's fence is above the table that routed the request.
    Fenced {
        /// Instance name.
        instance: String,
        /// The fence.
        fence: u64,
        /// The table version that routed the request.
        version: u64,
    },
}

impl SendError {
    /// `Ok` when a request routed by table `version` may go to `instance`, whose fence cell is
    /// `fence`; `Fenced` when the instance is fenced above that version.
    pub fn check_fence(instance: &str, fence: &AtomicU64, version: u64) -> Result<(), Self> {
        let fence = fence.load(Ordering::Acquire);
        if version < fence {
            return Err(Self::Fenced {
                instance: instance.to_owned(),
                fence,
                version,
            });
        }
        Ok(())
    }

    /// The error reply for the client (for `Stale`, once retries ran out).
    pub fn reply(&self) -> Bytes {
        match self {
            Self::Stale => Bytes::from_static(
                b"-TRYAGAIN the routing table changed while the command was routed, retry\r\n",
            ),
            Self::Fenced {
                instance,
                fence,
                version,
            } => Bytes::from(format!(
                "-TRYAGAIN this sidecar's routing table v{version} is behind the fleet (instance {instance} needs v{fence} or later); retry once the sidecar has the new table\r\n"
            )),
        }
    }
}

/// Why a request got no reply from its instance.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BackendError {
    /// The instance is down or not connected yet.
    #[error("instance {instance} is unreachable: {reason}")]
    Unavailable {
        /// Instance name.
        instance: String,
        /// Last connection error (credentials redacted).
        reason: String,
    },
    /// The connection broke while the request was in flight; it may or may not have run.
    #[error("connection to instance {instance} lost: {reason}")]
    Lost {
        /// Instance name.
        instance: String,
        /// Cause.
        reason: String,
    },
    /// The request was not sent (see [`SendError`]); the text is the client's reply.
    #[error("{0}")]
    NotSent(String),
    /// The reply arrived, but the fleet fenced the instance meanwhile, or no heartbeat round
    /// confirmed it in time: the instance may have been failed over while the command waited
    /// in it, so the reply is withheld; the command may or may not have run.
    #[error("instance {instance} {reason}; the command may or may not have run, retry")]
    Unconfirmed {
        /// Instance name.
        instance: String,
        /// What the sidecar found.
        reason: String,
    },
}

impl From<SendError> for BackendError {
    /// A request refused unsent: the refusal is the client's reply.
    fn from(e: SendError) -> Self {
        Self::NotSent(String::from_utf8_lossy(&e.reply()).into_owned())
    }
}

impl BackendError {
    /// The error for a reply from `instance` that was not vouched for.
    pub fn unvouched(instance: &str, why: &Unvouched) -> Self {
        let reason = match why {
            Unvouched::Fenced(fence) => {
                format!("was fenced at routing table v{fence} (failed over) while the command ran")
            }
            Unvouched::Unconfirmed => {
                "was not confirmed by a heartbeat of the other instances in time".to_owned()
            }
        };
        Self::Unconfirmed {
            instance: instance.to_owned(),
            reason,
        }
    }
}

impl BackendError {
    /// The error reply sent to the client.
    pub fn reply(&self) -> Bytes {
        let (code, text) = match self {
            Self::Unavailable { .. } => ("UNAVAILABLE", self.to_string()),
            Self::Lost { .. } => ("UNAVAILABLE", self.to_string()),
            Self::Unconfirmed { .. } => ("TRYAGAIN", self.to_string()),
            Self::NotSent(reply) => {
                return Bytes::from(reply.clone());
            }
        };
        let clean: String = text
            .chars()
            .map(|c| if c == '\r' || c == '\n' { ' ' } else { c })
            .collect();
        Bytes::from(format!("-{code} {clean}\r\n"))
    }
}

/// The reply (or replies, for a bundle of several commands) to one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Replies {
    /// One command, one reply.
    One(Bytes),
    /// A bundle: the replies in order.
    Many(Vec<Bytes>),
}

impl Replies {
    /// The last reply (for a MULTI…EXEC bundle, EXEC's).
    pub fn last(self) -> Bytes {
        match self {
            Self::One(b) => b,
            Self::Many(mut v) => v.pop().unwrap_or_default(),
        }
    }

    /// The first reply.
    pub fn first(self) -> Bytes {
        match self {
            Self::One(b) => b,
            Self::Many(v) => v.into_iter().next().unwrap_or_default(),
        }
    }
}

/// The pending reply of a request.
pub type ReplyReceiver = oneshot::Receiver<Result<Replies, BackendError>>;

enum Job {
    Request {
        bytes: Bytes,
        replies: usize,
        /// The table version that routed it.
        version: u64,
        tx: oneshot::Sender<Result<Replies, BackendError>>,
    },
    /// Rename the connection for commands of this table version and later.
    Rename(u64),
}

struct Slot {
    tx: oneshot::Sender<Result<Replies, BackendError>>,
    /// The table version that routed the request (`None` for the lane's own commands).
    version: Option<u64>,
    expected: usize,
    collected: Vec<Bytes>,
    sent: Instant,
}

struct Lane {
    tx: mpsc::UnboundedSender<Job>,
    up: Arc<AtomicBool>,
    /// The version the lane is named for: requests of older tables are refused. Locked while a
    /// request is queued, so a rename and the requests around it are ordered.
    gate: Arc<Mutex<u64>>,
}

/// What a lane needs to (re)connect.
#[derive(Clone)]
struct LaneSetup {
    legacy: Arc<AtomicBool>,
    name: String,
    target: Target,
    options: BackendOptions,
    naming: Naming,
    view: Arc<FleetView>,
    last_error: Arc<Mutex<String>>,
    metrics: BackendMetrics,
}

/// The pipelined connections to one instance.
pub struct Backend {
    name: String,
    target: Target,
    options: BackendOptions,
    naming: Naming,
    view: Arc<FleetView>,
    fence: Arc<AtomicU64>,
    /// The server is older than Redis 7.0 (learnt at the lanes' handshakes).
    legacy: Arc<AtomicBool>,
    lanes: Vec<Lane>,
    last_error: Arc<Mutex<String>>,
    metrics: BackendMetrics,
}

impl std::fmt::Debug for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backend")
            .field("name", &self.name)
            .field("address", &self.target.address())
            .finish_non_exhaustive()
    }
}

impl Backend {
    /// Starts the lanes of instance `name`, named for table `version` (they connect in the
    /// background).
    pub fn start(
        name: &str,
        target: Target,
        options: BackendOptions,
        metrics: BackendMetrics,
        naming: Naming,
        view: Arc<FleetView>,
        version: u64,
    ) -> Arc<Self> {
        let last_error = Arc::new(Mutex::new("not connected yet".to_owned()));
        let legacy = Arc::new(AtomicBool::new(false));
        let setup = LaneSetup {
            legacy: legacy.clone(),
            name: name.to_owned(),
            target: target.clone(),
            options: options.clone(),
            naming: naming.clone(),
            view: view.clone(),
            last_error: last_error.clone(),
            metrics: metrics.clone(),
        };
        let lanes = (0..options.lanes.max(1))
            .map(|_| {
                let (tx, rx) = mpsc::unbounded_channel();
                // Requests queue while the first connection is being made; a failed attempt
                // marks the lane down, and requests then fail at once.
                let up = Arc::new(AtomicBool::new(true));
                let gate = Arc::new(Mutex::new(version));
                tokio::spawn(lane::run_lane(setup.clone(), rx, up.clone(), gate.clone()));
                Lane { tx, up, gate }
            })
            .collect();
        Arc::new(Self {
            name: name.to_owned(),
            fence: view.fence_cell(name),
            legacy,
            target,
            options,
            naming,
            view,
            lanes,
            last_error,
            metrics,
        })
    }

    /// Renames the lanes for table `version`: from now on they refuse requests routed by an
    /// older table.
    pub fn rename(&self, version: u64) {
        for lane in &self.lanes {
            let mut gate = lane.gate.lock().unwrap_or_else(|e| e.into_inner());
            if version > *gate {
                *gate = version;
                let _ = lane.tx.send(Job::Rename(version));
            }
        }
    }

    /// Whether the server is older than Redis 7.0 (see [`super::ttl::for_server`]).
    pub fn legacy(&self) -> bool {
        self.legacy.load(Ordering::Acquire)
    }

    /// How this sidecar names its connections.
    pub fn naming(&self) -> &Naming {
        &self.naming
    }

    /// Instance name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// How fast the instance answered since the last call (the heartbeat's, once a round).
    pub fn take_latency(&self) -> Counts {
        self.metrics.window.take_counts()
    }

    /// Returns latencies taken by [`Backend::take_latency`] whose report was not delivered.
    pub fn put_back_latency(&self, taken: &Counts) {
        self.metrics.window.put_back(taken);
    }

    /// What the lanes connect to.
    pub fn target(&self) -> &Target {
        &self.target
    }

    /// Whether any lane is connected.
    pub fn is_up(&self) -> bool {
        self.lanes.iter().any(|l| l.up.load(Ordering::Acquire))
    }

    fn unavailable(&self) -> BackendError {
        BackendError::Unavailable {
            instance: self.name.clone(),
            reason: self
                .last_error
                .lock()
                .map(|e| e.clone())
                .unwrap_or_default(),
        }
    }

    /// Whether a request routed by table `version` may go here: not when the instance is
    /// fenced above that version.
    pub fn admits(&self, version: u64) -> Result<(), SendError> {
        SendError::check_fence(&self.name, &self.fence, version)
    }

    /// Sends `bytes` (one or more encoded commands routed by table `version`, `replies`
    /// replies expected) on the lane chosen by `lane_hint`; the receiver yields the replies,
    /// or an error at once when the lane is down.
    pub fn send(
        &self,
        lane_hint: usize,
        version: u64,
        bytes: Bytes,
        replies: usize,
    ) -> Result<ReplyReceiver, SendError> {
        self.admits(version)?;
        let (tx, rx) = oneshot::channel();
        let lane = &self.lanes[lane_hint % self.lanes.len()];
        if !lane.up.load(Ordering::Acquire) {
            let _ = tx.send(Err(self.unavailable()));
            return Ok(rx);
        }
        let gate = lane.gate.lock().unwrap_or_else(|e| e.into_inner());
        if version < *gate {
            return Err(SendError::Stale);
        }
        if let Err(mpsc::error::SendError(Job::Request { tx, .. })) = lane.tx.send(Job::Request {
            bytes,
            replies,
            version,
            tx,
        }) {
            let _ = tx.send(Err(self.unavailable()));
        }
        drop(gate);
        Ok(rx)
    }

    /// Like [`Backend::send`], for requests whose refusal is an answer like any other (fan-out,
    /// introspection): a refused request yields its error reply.
    pub fn send_or_refuse(
        &self,
        lane_hint: usize,
        version: u64,
        bytes: Bytes,
        replies: usize,
    ) -> ReplyReceiver {
        match self.send(lane_hint, version, bytes, replies) {
            Ok(rx) => rx,
            Err(e) => {
                let (tx, rx) = oneshot::channel();
                let _ = tx.send(Err(e.into()));
                rx
            }
        }
    }

    /// Encodes and sends one command routed by table `version`.
    pub fn command<A: AsRef<[u8]>>(
        &self,
        lane_hint: usize,
        version: u64,
        args: &[A],
    ) -> Result<ReplyReceiver, SendError> {
        let mut buf = BytesMut::new();
        encode_request(args, &mut buf);
        self.send(lane_hint, version, buf.freeze(), 1)
    }

    /// A connection of its own for commands routed by table `version`, for blocking commands
    /// and WATCHed transactions: named, fenced and confirmed like a lane.
    pub async fn dedicated(&self, version: u64) -> Result<Dedicated, BackendError> {
        let unavailable = |reason: String| BackendError::Unavailable {
            instance: self.name.clone(),
            reason,
        };
        let mut stream = open(&self.target, self.options.connect_timeout)
            .await
            .map_err(unavailable)?;
        let greeting = handshake(
            &mut stream,
            &self.naming.connection(version),
            &self.naming.policy,
        )
        .await
        .map_err(unavailable)?;
        self.view.merge(&greeting.fences);
        let after = self.view.next_round();
        if !self
            .view
            .confirmed(&self.name, after, confirm_timeout(&self.options))
            .await
        {
            return Err(unavailable(unconfirmed()));
        }
        self.metrics.connections.inc();
        Ok(Dedicated::new(
            self.name.clone(),
            stream,
            version,
            self.naming.clone(),
            self.metrics.clone(),
            Some(self.view.clone()),
        ))
    }

    /// A connection for the heartbeat: named as a control connection, not fenced.
    pub async fn control(&self) -> Result<Dedicated, BackendError> {
        let unavailable = |reason: String| BackendError::Unavailable {
            instance: self.name.clone(),
            reason,
        };
        let mut stream = open(&self.target, self.options.connect_timeout)
            .await
            .map_err(unavailable)?;
        let greeting = handshake(&mut stream, &self.naming.control(), &self.naming.policy)
            .await
            .map_err(unavailable)?;
        self.view.merge(&greeting.fences);
        Ok(Dedicated::new(
            self.name.clone(),
            stream,
            0,
            self.naming.clone(),
            self.metrics.clone(),
            None,
        ))
    }
}

/// How long a new connection waits for a heartbeat round to confirm the fleet's fences.
fn confirm_timeout(options: &BackendOptions) -> Duration {
    options.connect_timeout.max(Duration::from_secs(2))
}

fn unconfirmed() -> String {
    "no other instance of the fleet answered a heartbeat, so the fleet's fences are unconfirmed"
        .to_owned()
}
