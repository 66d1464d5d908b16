//! The health probe of one instance: a PING round trip and `INFO`, over a connection kept
//! between probes (so the latency is the server's, not the TCP/TLS handshake's) and dropped
//! on any error or when the credentials change.

use std::time::{Duration, Instant};

use redis::aio::ConnectionLike;

use super::connect::{Target, redact};
use super::info::{Info, parse_info};
use super::serial::SerialConnection;

/// What one successful probe saw.
#[derive(Debug, Clone)]
pub struct Probe {
    /// PING round trip.
    pub latency: Duration,
    /// Parsed `INFO`.
    pub info: Info,
}

/// Why a probe failed, as a condition reason and metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProbeFailure {
    /// Nothing listens on the port.
    ConnectionRefused,
    /// No answer within `health.timeout`.
    Timeout,
    /// The host name does not resolve.
    NameResolution,
    /// Wrong or missing password / ACL user.
    AuthenticationFailed,
    /// TLS handshake or certificate verification failed.
    Tls,
    /// The server answered something that is not Redis, or an error.
    Protocol,
    /// `INFO` could not be read.
    InfoUnreadable,
    /// Anything else (network errors).
    Network,
}

impl ProbeFailure {
    /// CamelCase reason for conditions and events; snake_case-free label for metrics.
    pub fn reason(self) -> &'static str {
        match self {
            Self::ConnectionRefused => "ConnectionRefused",
            Self::Timeout => "Timeout",
            Self::NameResolution => "NameResolution",
            Self::AuthenticationFailed => "AuthenticationFailed",
            Self::Tls => "TLSError",
            Self::Protocol => "ProtocolError",
            Self::InfoUnreadable => "InfoUnreadable",
            Self::Network => "NetworkError",
        }
    }
}

/// A failed probe: the reason and a message fit for status (credentials redacted).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ProbeError {
    /// Classified reason.
    pub failure: ProbeFailure,
    /// Human-readable detail.
    pub message: String,
}

/// Probes one instance, reusing its connection between probes.
#[derive(Default)]
pub struct Prober {
    connection: Option<(u64, SerialConnection)>,
}

impl std::fmt::Debug for Prober {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prober")
            .field("connected", &self.connection.is_some())
            .finish()
    }
}

impl Prober {
    /// PING and INFO within `timeout` (in total).
    pub async fn probe(&mut self, target: &Target, timeout: Duration) -> Result<Probe, ProbeError> {
        let result = tokio::time::timeout(timeout, self.probe_inner(target, timeout)).await;
        let outcome = match result {
            Ok(r) => r,
            Err(_) => Err(timed_out(target, timeout)),
        };
        if outcome.is_err() {
            // A connection that saw an error may be half-broken; start afresh next time.
            self.connection = None;
        }
        outcome
    }

    async fn probe_inner(
        &mut self,
        target: &Target,
        timeout: Duration,
    ) -> Result<Probe, ProbeError> {
        let fingerprint = target.fingerprint();
        if self
            .connection
            .as_ref()
            .is_some_and(|(f, _)| *f != fingerprint)
        {
            self.connection = None; // credentials or address changed
        }
        let conn = match &mut self.connection {
            Some((_, conn)) => conn,
            slot @ None => {
                let conn = SerialConnection::open(target, timeout)
                    .await
                    .map_err(|e| classify(&e, target))?;
                &mut slot.insert((fingerprint, conn)).1
            }
        };
        probe_on(conn, target).await
    }
}

/// PING and INFO on `conn`, an open connection to `target` (the caller bounds the time and
/// drops the connection after an error).
pub async fn probe_on(
    conn: &mut (impl ConnectionLike + Send),
    target: &Target,
) -> Result<Probe, ProbeError> {
    let started = Instant::now();
    let pong: String = redis::cmd("PING")
        .query_async(conn)
        .await
        .map_err(|e| classify(&e, target))?;
    let latency = started.elapsed();
    if pong != "PONG" {
        return Err(ProbeError {
            failure: ProbeFailure::Protocol,
            message: format!("PING answered {pong:?} instead of PONG"),
        });
    }
    // Plain INFO (the default sections) works on every Redis version and on Valkey.
    let text: String = redis::cmd("INFO")
        .query_async(conn)
        .await
        .map_err(|e| classify(&e, target))?;
    let info = parse_info(&text).map_err(|e| ProbeError {
        failure: ProbeFailure::InfoUnreadable,
        message: e.to_string(),
    })?;
    Ok(Probe { latency, info })
}

/// The error of a probe that got no answer from `target` within `timeout`.
pub fn timed_out(target: &Target, timeout: Duration) -> ProbeError {
    ProbeError {
        failure: ProbeFailure::Timeout,
        message: format!(
            "no answer from {} within {}ms",
            target.address(),
            timeout.as_millis()
        ),
    }
}

/// Maps a `redis` crate error to a reason and a status-safe message.
pub fn classify(err: &redis::RedisError, target: &Target) -> ProbeError {
    let text = redact(&err.to_string(), &target.credentials);
    let lower = text.to_ascii_lowercase();
    let failure = if err.kind() == redis::ErrorKind::AuthenticationFailed
        || lower.contains("wrongpass")
        || lower.contains("noauth")
        || lower.contains("invalid password")
        || lower.contains("invalid username-password")
    {
        ProbeFailure::AuthenticationFailed
    } else if err.is_connection_refusal() || lower.contains("connection refused") {
        ProbeFailure::ConnectionRefused
    } else if err.is_timeout() || lower.contains("timed out") {
        ProbeFailure::Timeout
    } else if lower.contains("certificate")
        || lower.contains("tls")
        || lower.contains("handshake")
        || lower.contains("invalid peer")
    {
        ProbeFailure::Tls
    } else if lower.contains("failed to lookup")
        || lower.contains("name or service not known")
        || lower.contains("no such host")
        || lower.contains("dns")
    {
        ProbeFailure::NameResolution
    } else if err.is_io_error() {
        ProbeFailure::Network
    } else {
        ProbeFailure::Protocol
    };
    ProbeError {
        failure,
        message: format!("{}: {text}", target.address()),
    }
}
