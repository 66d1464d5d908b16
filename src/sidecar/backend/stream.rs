//! The connection under a lane or a dedicated connection: TCP or TLS, authenticated, named
//! and checked against the fleet's fences (the handshake of `docs/protocol.md`).

use std::io;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

use crate::redis::connect::Target;
use crate::redis::protocol::fence::{self, Fences};
use crate::redis::protocol::names;
use crate::redis::resp::{FrameScanner, Limits, encode_request, parse_frame};

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

/// Reads `n` replies (one buffer for all: the server may send them in one packet).
async fn read_replies(stream: &mut Stream, n: usize) -> io::Result<Vec<Bytes>> {
    let mut buf = BytesMut::with_capacity(256);
    let mut scanner = FrameScanner::new();
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        if let Some(len) = scanner
            .scan(&buf, &Limits::replies())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?
        {
            out.push(buf.split_to(len).freeze());
            scanner.reset();
            continue;
        }
        if stream.read_buf(&mut buf).await? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed",
            ));
        }
    }
    Ok(out)
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
/// the fences, then the server's version. The name goes first, so a fence raised after this
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
    stream
        .write_all(&buf)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let mut replies = read_replies(stream, 3)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
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
