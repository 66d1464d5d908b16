//! A connection to an instance as bytes: TCP or TLS, authenticated. The sidecar's lanes and
//! dedicated connections run on it (after their handshake, `sidecar::backend`), and so does
//! the operator's [`super::serial::SerialConnection`].

use std::io;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

use super::connect::Target;
use super::resp::{FrameScanner, Limits, encode_request};

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

/// Writes `bytes` and flushes them. Over TLS the flush matters: tokio-rustls counts bytes as
/// written once the TLS session holds them, and what the socket could not take yet stays in
/// the session until a flush (or a later write, which may never come) pushes it out.
pub async fn write_flushed<W: AsyncWrite + Unpin>(writer: &mut W, bytes: &[u8]) -> io::Result<()> {
    writer.write_all(bytes).await?;
    writer.flush().await
}

/// Why a connection could not be opened. No text in it contains credentials.
#[derive(Debug)]
pub enum OpenError {
    /// The TCP connection: refused, unreachable, a name that does not resolve, ….
    Connect(io::Error),
    /// The TLS configuration or handshake.
    Tls(String),
    /// The server refused the credentials (its reply, credentials redacted).
    Auth(String),
    /// Reading or writing the authentication.
    Io(io::Error),
    /// Nothing of the above finished within the time allowed.
    Timeout(Duration),
}

impl OpenError {
    /// The error as one line about `address`.
    pub fn describe(&self, address: &str) -> String {
        match self {
            Self::Connect(e) | Self::Io(e) => format!("{address}: {e}"),
            Self::Tls(text) => format!("{address}: {text}"),
            Self::Auth(text) => format!("{address}: authentication failed: {text}"),
            Self::Timeout(t) => format!("{address}: no connection within {}ms", t.as_millis()),
        }
    }
}

/// Connects, upgrades to TLS when asked, and authenticates, within `timeout`. The error text
/// never contains credentials.
pub async fn open(target: &Target, timeout: Duration) -> Result<Stream, String> {
    open_within(target, timeout)
        .await
        .map_err(|e| e.describe(&target.address()))
}

/// [`open`], with the error as it is.
pub async fn open_within(target: &Target, timeout: Duration) -> Result<Stream, OpenError> {
    match tokio::time::timeout(timeout, open_inner(target)).await {
        Ok(r) => r,
        Err(_) => Err(OpenError::Timeout(timeout)),
    }
}

async fn open_inner(target: &Target) -> Result<Stream, OpenError> {
    let tcp = TcpStream::connect((target.host.as_str(), target.port))
        .await
        .map_err(OpenError::Connect)?;
    let _ = tcp.set_nodelay(true);
    let mut stream = match &target.tls {
        None => Stream::Tcp(tcp),
        Some(tls) => {
            let config = tls_config(tls.ca_pem.as_deref(), tls.insecure_skip_verify)
                .map_err(|e| OpenError::Tls(format!("TLS configuration: {e}")))?;
            let server_name = rustls::pki_types::ServerName::try_from(target.host.clone())
                .map_err(|e| OpenError::Tls(format!("invalid TLS server name: {e}")))?;
            let connector = tokio_rustls::TlsConnector::from(config);
            let tls = connector
                .connect(server_name, tcp)
                .await
                .map_err(|e| OpenError::Tls(format!("TLS handshake: {e}")))?;
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
        write_flushed(&mut stream, &buf)
            .await
            .map_err(OpenError::Io)?;
        let reply = read_one(&mut stream).await.map_err(OpenError::Io)?;
        if !reply.starts_with(b"+OK") {
            let text = String::from_utf8_lossy(&reply).trim().to_owned();
            let text = super::connect::redact(&text, &target.credentials);
            return Err(OpenError::Auth(text.trim_start_matches('-').to_owned()));
        }
    }
    Ok(stream)
}

/// Reads `n` replies (one buffer for all: the server may send them in one packet).
pub async fn read_replies(stream: &mut Stream, n: usize) -> io::Result<Vec<Bytes>> {
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
