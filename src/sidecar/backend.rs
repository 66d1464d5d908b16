//! Connections from the sidecar to one Redis instance.
//!
//! A [`Backend`] keeps a few long-lived *lanes* per instance. Each lane is one TCP (or TLS)
//! connection on which requests of many clients are pipelined: a writer coalesces whatever is
//! queued into one write, a reader matches replies to requests in order and hands each one
//! its reply as raw bytes (never decoded and re-encoded). A client always uses the same lane of
//! an instance, so its commands to that instance stay in order.
//!
//! A lane that cannot connect, or whose server stops answering for `request_timeout`, is
//! *down*: requests to it fail at once with `-UNAVAILABLE instance <name> …` instead of
//! hanging the client, while the lane reconnects with exponential backoff.
//!
//! Blocking commands and WATCHed transactions need a connection of their own
//! ([`Backend::dedicated`]), since they hold connection state for as long as they run.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, warn};

use super::metrics::BackendMetrics;
use crate::redis::connect::Target;
use crate::redis::resp::{FrameScanner, Limits, encode_request};

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
}

impl BackendError {
    /// The error reply sent to the client.
    pub fn reply(&self) -> Bytes {
        let (code, text) = match self {
            Self::Unavailable { .. } => ("UNAVAILABLE", self.to_string()),
            Self::Lost { .. } => ("UNAVAILABLE", self.to_string()),
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

struct Job {
    bytes: Bytes,
    replies: usize,
    tx: oneshot::Sender<Result<Replies, BackendError>>,
}

struct Slot {
    tx: oneshot::Sender<Result<Replies, BackendError>>,
    expected: usize,
    collected: Vec<Bytes>,
    sent: Instant,
}

struct Lane {
    tx: mpsc::UnboundedSender<Job>,
    up: Arc<AtomicBool>,
}

/// The pipelined connections to one instance.
pub struct Backend {
    name: String,
    target: Target,
    options: BackendOptions,
    lanes: Vec<Lane>,
    last_error: Arc<std::sync::Mutex<String>>,
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
    /// Starts the lanes of instance `name` (they connect in the background).
    pub fn start(
        name: &str,
        target: Target,
        options: BackendOptions,
        metrics: BackendMetrics,
    ) -> Arc<Self> {
        let last_error = Arc::new(std::sync::Mutex::new("not connected yet".to_owned()));
        let lanes = (0..options.lanes.max(1))
            .map(|_| {
                let (tx, rx) = mpsc::unbounded_channel();
                let up = Arc::new(AtomicBool::new(false));
                tokio::spawn(run_lane(
                    name.to_owned(),
                    target.clone(),
                    options.clone(),
                    rx,
                    up.clone(),
                    last_error.clone(),
                    metrics.clone(),
                ));
                Lane { tx, up }
            })
            .collect();
        Arc::new(Self {
            name: name.to_owned(),
            target,
            options,
            lanes,
            last_error,
            metrics,
        })
    }

    /// Instance name.
    pub fn name(&self) -> &str {
        &self.name
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

    /// Sends `bytes` (one or more encoded commands, `replies` replies expected) on the lane
    /// chosen by `lane_hint`; the receiver yields the replies, or an error at once when the
    /// lane is down.
    pub fn send(&self, lane_hint: usize, bytes: Bytes, replies: usize) -> ReplyReceiver {
        let (tx, rx) = oneshot::channel();
        let lane = &self.lanes[lane_hint % self.lanes.len()];
        if !lane.up.load(Ordering::Acquire) {
            let _ = tx.send(Err(self.unavailable()));
            return rx;
        }
        if let Err(mpsc::error::SendError(job)) = lane.tx.send(Job { bytes, replies, tx }) {
            let _ = job.tx.send(Err(self.unavailable()));
        }
        rx
    }

    /// Encodes and sends one command.
    pub fn command<A: AsRef<[u8]>>(&self, lane_hint: usize, args: &[A]) -> ReplyReceiver {
        let mut buf = BytesMut::new();
        encode_request(args, &mut buf);
        self.send(lane_hint, buf.freeze(), 1)
    }

    /// A connection of its own, for blocking commands and WATCHed transactions.
    pub async fn dedicated(&self) -> Result<Dedicated, BackendError> {
        let stream = open(&self.target, self.options.connect_timeout)
            .await
            .map_err(|reason| BackendError::Unavailable {
                instance: self.name.clone(),
                reason,
            })?;
        self.metrics.connections.inc();
        Ok(Dedicated {
            name: self.name.clone(),
            stream,
            buf: BytesMut::with_capacity(16 * 1024),
            scanner: FrameScanner::new(),
            metrics: self.metrics.clone(),
        })
    }
}

/// A connection used by one client only.
pub struct Dedicated {
    name: String,
    stream: Stream,
    buf: BytesMut,
    scanner: FrameScanner,
    metrics: BackendMetrics,
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
    /// Writes `bytes` and waits (without a deadline: blocking commands may wait long) for
    /// `replies` replies.
    pub async fn call(&mut self, bytes: &[u8], replies: usize) -> Result<Replies, BackendError> {
        let lost = |e: io::Error| BackendError::Lost {
            instance: self.name.clone(),
            reason: e.to_string(),
        };
        self.stream.write_all(bytes).await.map_err(lost)?;
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

async fn run_lane(
    name: String,
    target: Target,
    options: BackendOptions,
    mut rx: mpsc::UnboundedReceiver<Job>,
    up: Arc<AtomicBool>,
    last_error: Arc<std::sync::Mutex<String>>,
    metrics: BackendMetrics,
) {
    let mut backoff = options.min_backoff;
    loop {
        let attempt = tokio::select! {
            r = open(&target, options.connect_timeout) => r,
            // The backend was dropped (table changed): stop.
            () = wait_closed(&rx) => return,
        };
        match attempt {
            Ok(stream) => {
                backoff = options.min_backoff;
                up.store(true, Ordering::Release);
                metrics.connections.inc();
                debug!(instance = %name, "connected");
                let outcome = pipeline(&name, stream, &mut rx, &options, &metrics).await;
                up.store(false, Ordering::Release);
                metrics.connections.dec();
                match outcome {
                    Ok(()) => return,
                    Err(reason) => {
                        warn!(instance = %name, %reason, "connection lost; reconnecting");
                        if let Ok(mut e) = last_error.lock() {
                            *e = reason;
                        }
                    }
                }
            }
            Err(reason) => {
                if let Ok(mut e) = last_error.lock() {
                    if *e != reason {
                        warn!(instance = %name, %reason, "cannot connect");
                    }
                    *e = reason;
                }
            }
        }
        // Fail what was queued meanwhile, then wait before the next attempt.
        let reason = last_error.lock().map(|e| e.clone()).unwrap_or_default();
        let deadline = tokio::time::Instant::now() + backoff;
        loop {
            tokio::select! {
                job = rx.recv() => match job {
                    Some(job) => {
                        let _ = job.tx.send(Err(BackendError::Unavailable {
                            instance: name.clone(),
                            reason: reason.clone(),
                        }));
                    }
                    None => return,
                },
                () = tokio::time::sleep_until(deadline) => break,
            }
        }
        backoff = (backoff * 2).min(options.max_backoff);
    }
}

/// Resolves when every sender of `rx` is gone.
async fn wait_closed(rx: &mpsc::UnboundedReceiver<Job>) {
    while !rx.is_closed() {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Runs one connected lane until the connection fails (`Err`) or the backend is dropped.
async fn pipeline(
    name: &str,
    stream: Stream,
    rx: &mut mpsc::UnboundedReceiver<Job>,
    options: &BackendOptions,
    metrics: &BackendMetrics,
) -> Result<(), String> {
    let (mut reader, mut writer) = tokio::io::split(stream);
    let (slot_tx, mut slot_rx) = mpsc::unbounded_channel::<Slot>();
    let in_flight = AtomicUsize::new(0);
    let limits = Limits::replies();

    let write = async {
        let mut buf = BytesMut::with_capacity(64 * 1024);
        while let Some(job) = rx.recv().await {
            // Let the other clients that are ready run first, so that their requests join this
            // write: one write (and one read on the server) for many requests is what makes
            // the proxy cheap for Redis. Like twemproxy, which writes on the next event-loop turn.
            let mut queued = rx.len();
            for _ in 0..YIELD_ROUNDS {
                tokio::task::yield_now().await;
                let now = rx.len();
                if now == queued {
                    break;
                }
                queued = now;
            }
            buf.clear();
            let push = |job: Job, buf: &mut BytesMut| {
                buf.extend_from_slice(&job.bytes);
                in_flight.fetch_add(1, Ordering::AcqRel);
                metrics.in_flight.inc();
                // The reader owns the slot before the bytes leave, so no reply can beat it.
                let _ = slot_tx.send(Slot {
                    tx: job.tx,
                    expected: job.replies.max(1),
                    collected: Vec::new(),
                    sent: Instant::now(),
                });
            };
            push(job, &mut buf);
            while buf.len() < 64 * 1024 {
                match rx.try_recv() {
                    Ok(job) => push(job, &mut buf),
                    Err(_) => break,
                }
            }
            metrics.writes.inc();
            writer
                .write_all(&buf)
                .await
                .map_err(|e| format!("write failed: {e}"))?;
        }
        Ok::<(), String>(())
    };

    let read = async {
        let mut buf = BytesMut::with_capacity(64 * 1024);
        let mut scanner = FrameScanner::new();
        let mut current: Option<Slot> = None;
        loop {
            // Hand out every complete reply in the buffer.
            loop {
                match scanner.scan(&buf, &limits) {
                    Ok(Some(n)) => {
                        scanner.reset();
                        let frame = buf.split_to(n).freeze();
                        let mut slot = match current.take() {
                            Some(s) => s,
                            None => slot_rx
                                .try_recv()
                                .map_err(|_| "a reply arrived that nobody asked for".to_owned())?,
                        };
                        slot.collected.push(frame);
                        if slot.collected.len() >= slot.expected {
                            in_flight.fetch_sub(1, Ordering::AcqRel);
                            metrics.in_flight.dec();
                            metrics.observe(slot.sent.elapsed());
                            let replies = if slot.expected == 1 {
                                Replies::One(slot.collected.pop().unwrap_or_default())
                            } else {
                                Replies::Many(slot.collected)
                            };
                            let _ = slot.tx.send(Ok(replies));
                        } else {
                            current = Some(slot);
                        }
                    }
                    Ok(None) => break,
                    Err(e) => return Err(format!("protocol error from the server: {e}")),
                }
            }
            if buf.capacity() - buf.len() < 4096 {
                buf.reserve(64 * 1024);
            }
            let n = if in_flight.load(Ordering::Acquire) > 0 {
                match tokio::time::timeout(options.request_timeout, reader.read_buf(&mut buf)).await
                {
                    Ok(r) => r,
                    Err(_) => {
                        return Err(format!(
                            "no reply within {}ms",
                            options.request_timeout.as_millis()
                        ));
                    }
                }
            } else {
                reader.read_buf(&mut buf).await
            }
            .map_err(|e| format!("read failed: {e}"))?;
            if n == 0 {
                return Err("the server closed the connection".to_owned());
            }
        }
    };

    let result = tokio::select! {
        r = write => r,
        r = read => r,
    };
    // Everything in flight gets an error: it may or may not have run.
    let reason = match &result {
        Ok(()) => "the sidecar dropped the connection".to_owned(),
        Err(e) => e.clone(),
    };
    drop(slot_tx);
    while let Ok(slot) = slot_rx.try_recv() {
        metrics.in_flight.dec();
        let _ = slot.tx.send(Err(BackendError::Lost {
            instance: name.to_owned(),
            reason: reason.clone(),
        }));
    }
    result
}

/// A TCP or TLS connection.
#[allow(missing_debug_implementations)]
pub enum Stream {
    /// Plain TCP.
    Tcp(TcpStream),
    /// TLS over TCP.
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Tcp(s) => Pin::new(s).poll_flush(cx),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// Connects, upgrades to TLS when asked, and authenticates, within `timeout`. The error text
/// never contains credentials.
pub async fn open(target: &Target, timeout: Duration) -> Result<Stream, String> {
    match tokio::time::timeout(timeout, open_inner(target)).await {
        Ok(r) => r,
        Err(_) => Err(format!(
            "{}: no connection within {}ms",
            target.address(),
            timeout.as_millis()
        )),
    }
}

async fn open_inner(target: &Target) -> Result<Stream, String> {
    let address = target.address();
    let tcp = TcpStream::connect((target.host.as_str(), target.port))
        .await
        .map_err(|e| format!("{address}: {e}"))?;
    let _ = tcp.set_nodelay(true);
    let mut stream = match &target.tls {
        None => Stream::Tcp(tcp),
        Some(tls) => {
            let config = tls_config(tls.ca_pem.as_deref(), tls.insecure_skip_verify)
                .map_err(|e| format!("{address}: TLS configuration: {e}"))?;
            let server_name = rustls::pki_types::ServerName::try_from(target.host.clone())
                .map_err(|e| format!("{address}: invalid TLS server name: {e}"))?;
            let connector = tokio_rustls::TlsConnector::from(config);
            let tls = connector
                .connect(server_name, tcp)
                .await
                .map_err(|e| format!("{address}: TLS handshake: {e}"))?;
            Stream::Tls(Box::new(tls))
        }
    };
    if let Some(password) = &target.credentials.password {
        let mut args: Vec<&[u8]> = vec![b"AUTH"];
        if let Some(user) = &target.credentials.username {
            args.push(user.as_bytes());
        }
        args.push(password.expose().as_bytes());
        let mut buf = BytesMut::new();
        encode_request(&args, &mut buf);
        stream
            .write_all(&buf)
            .await
            .map_err(|e| format!("{address}: {e}"))?;
        let reply = read_one(&mut stream)
            .await
            .map_err(|e| format!("{address}: {e}"))?;
        if !reply.starts_with(b"+OK") {
            let text = String::from_utf8_lossy(&reply).trim().to_owned();
            let text = crate::redis::connect::redact(&text, &target.credentials);
            return Err(format!(
                "{address}: authentication failed: {}",
                text.trim_start_matches('-')
            ));
        }
    }
    Ok(stream)
}

async fn read_one(stream: &mut Stream) -> io::Result<Bytes> {
    let mut buf = BytesMut::with_capacity(256);
    let mut scanner = FrameScanner::new();
    loop {
        if let Some(n) = scanner
            .scan(&buf, &Limits::replies())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?
        {
            return Ok(buf.split_to(n).freeze());
        }
        if stream.read_buf(&mut buf).await? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed",
            ));
        }
    }
}

/// The rustls client configuration for a CA (or the system roots) and verification mode.
fn tls_config(ca_pem: Option<&[u8]>, insecure: bool) -> Result<Arc<rustls::ClientConfig>, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let config = if insecure {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate(provider)))
            .with_no_client_auth()
    } else {
        let mut roots = rustls::RootCertStore::empty();
        match ca_pem {
            Some(pem) => {
                use rustls::pki_types::pem::PemObject;
                for cert in rustls::pki_types::CertificateDer::pem_slice_iter(pem) {
                    let cert = cert.map_err(|e| format!("CA bundle: {e}"))?;
                    roots.add(cert).map_err(|e| format!("CA bundle: {e}"))?;
                }
            }
            None => {
                static SYSTEM: OnceLock<Vec<rustls::pki_types::CertificateDer<'static>>> =
                    OnceLock::new();
                let system = SYSTEM.get_or_init(|| rustls_native_certs::load_native_certs().certs);
                for cert in system {
                    let _ = roots.add(cert.clone());
                }
            }
        }
        builder.with_root_certificates(roots).with_no_client_auth()
    };
    Ok(Arc::new(config))
}

/// `tls.insecureSkipVerify`: any certificate is accepted (signatures are still checked, so
/// the handshake is well-formed). For testing only; the CRD says so.
#[derive(Debug)]
struct AcceptAnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
