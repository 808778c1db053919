//! TLS for client-facing listeners (rustls): building a server config from
//! nats-server's `tls {}` settings, the handshake with its deadline, telling
//! a TLS ClientHello from plaintext on a mixed port, and certificate pinning.
//!
//! Whether a connection must, may or must not use TLS is the router's
//! decision; this module only does what it is told on one socket.

use std::fmt;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ParsedCertificate, WebPkiClientVerifier};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

pub use tokio_rustls::server::TlsStream;
pub use tokio_rustls::{Accept, TlsAcceptor};

/// The first byte of a TLS record carrying a handshake: how a mixed
/// (`allow_non_tls`) port tells a TLS client from a plaintext one.
pub const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// nats-server's default TLS handshake deadline.
pub const DEFAULT_TLS_TIMEOUT: Duration = Duration::from_secs(2);

/// A listener's TLS settings as nats-server's `tls {}` block names them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsSettings {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    /// CA bundle client certificates are checked against (`verify`).
    pub ca_file: Option<PathBuf>,
    /// Require and verify a client certificate.
    pub verify: bool,
    /// Lower-case hex SHA-256 of accepted peers' DER SubjectPublicKeyInfo;
    /// empty means no pinning.
    pub pinned_certs: Vec<String>,
    /// TLS 1.2 suites by their IANA names (Go's names); empty keeps the
    /// defaults. TLS 1.3 suites are always on, as in Go.
    pub cipher_suites: Vec<String>,
    /// Key-exchange groups by Go's names (`X25519`, `CurveP256`, ...).
    pub curve_preferences: Vec<String>,
}

/// A TLS settings problem worded for the operator (which file, what is wrong).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsConfigError(pub String);

impl fmt::Display for TlsConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for TlsConfigError {}

fn provider(settings: &TlsSettings) -> Result<CryptoProvider, TlsConfigError> {
    let mut p = rustls::crypto::ring::default_provider();
    if !settings.cipher_suites.is_empty() {
        let mut chosen = Vec::new();
        for name in &settings.cipher_suites {
            let suite = p
                .cipher_suites
                .iter()
                .find(|s| format!("{:?}", s.suite()).eq_ignore_ascii_case(name))
                .ok_or_else(|| TlsConfigError(format!("unsupported cipher suite {name:?}")))?;
            if !chosen.contains(suite) {
                chosen.push(*suite);
            }
        }
        // Go applies the list to TLS 1.2 only; TLS 1.3 suites stay enabled.
        for s in &p.cipher_suites {
            if s.version() == &rustls::version::TLS13 && !chosen.contains(s) {
                chosen.push(*s);
            }
        }
        p.cipher_suites = chosen;
    }
    if !settings.curve_preferences.is_empty() {
        let mut groups = Vec::new();
        for name in &settings.curve_preferences {
            let wanted = match name.to_ascii_lowercase().as_str() {
                "x25519" => rustls::NamedGroup::X25519,
                "curvep256" | "p256" | "p-256" => rustls::NamedGroup::secp256r1,
                "curvep384" | "p384" | "p-384" => rustls::NamedGroup::secp384r1,
                _ => {
                    return Err(TlsConfigError(format!(
                        "unsupported curve preference {name:?} (supported: X25519, CurveP256, CurveP384)"
                    )))
                }
            };
            if let Some(g) = p.kx_groups.iter().find(|g| g.name() == wanted) {
                groups.push(*g);
            }
        }
        p.kx_groups = groups;
    }
    Ok(p)
}

fn read_certs(path: &PathBuf) -> Result<Vec<CertificateDer<'static>>, TlsConfigError> {
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .map_err(|e| TlsConfigError(format!("cannot read certificate {}: {e}", path.display())))?
        .collect::<Result<_, _>>()
        .map_err(|e| TlsConfigError(format!("bad certificate in {}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(TlsConfigError(format!(
            "no certificate found in {}",
            path.display()
        )));
    }
    Ok(certs)
}

/// Builds the server side of a listener from its settings; errors name the
/// file at fault, so a typo stops the server at start-up, not at the first
/// client.
pub fn server_config(settings: &TlsSettings) -> Result<Arc<rustls::ServerConfig>, TlsConfigError> {
    let certs = read_certs(&settings.cert_file)?;
    let key = PrivateKeyDer::from_pem_file(&settings.key_file).map_err(|e| {
        TlsConfigError(format!(
            "cannot read private key {}: {e}",
            settings.key_file.display()
        ))
    })?;
    let provider = Arc::new(provider(settings)?);
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS12, &rustls::version::TLS13])
        .map_err(|e| TlsConfigError(format!("TLS settings: {e}")))?;
    let builder = if settings.verify {
        let ca = settings.ca_file.as_ref().ok_or_else(|| {
            TlsConfigError(
                "tls verify requires ca_file (the CA client certificates are checked against)"
                    .into(),
            )
        })?;
        let mut roots = rustls::RootCertStore::empty();
        for c in read_certs(ca)? {
            roots.add(c).map_err(|e| {
                TlsConfigError(format!("bad CA certificate in {}: {e}", ca.display()))
            })?;
        }
        let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
            .build()
            .map_err(|e| TlsConfigError(format!("client verification: {e}")))?;
        builder.with_client_cert_verifier(verifier)
    } else {
        builder.with_no_client_auth()
    };
    let config = builder.with_single_cert(certs, key).map_err(|e| {
        TlsConfigError(format!(
            "certificate {} and key {} do not form a pair: {e}",
            settings.cert_file.display(),
            settings.key_file.display()
        ))
    })?;
    Ok(Arc::new(config))
}

/// Why a handshake failed, for the log line nats-server writes
/// ("TLS handshake error: ...").
#[derive(Debug)]
pub enum HandshakeError {
    /// The client did not finish within the TLS timeout.
    Timeout,
    /// The TLS layer refused (bad certificate, plaintext, protocol error).
    Tls(io::Error),
    /// The client's certificate is not among `pinned_certs`.
    NotPinned,
}

impl fmt::Display for HandshakeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HandshakeError::Timeout => f.write_str("timeout"),
            HandshakeError::Tls(e) => write!(f, "{e}"),
            HandshakeError::NotPinned => f.write_str("peer certificate not in pinned_certs"),
        }
    }
}

/// Runs the server side of the handshake on `stream` within `timeout`, and
/// checks the client certificate against `pinned` (hex SPKI hashes) when
/// the set is not empty.
pub async fn accept<S>(
    acceptor: &TlsAcceptor,
    stream: S,
    timeout: Duration,
    pinned: &[String],
) -> Result<TlsStream<S>, HandshakeError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let tls = match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
        Err(_) => return Err(HandshakeError::Timeout),
        Ok(Err(e)) => return Err(HandshakeError::Tls(e)),
        Ok(Ok(s)) => s,
    };
    if !pinned.is_empty() {
        let ok = peer_certificate(&tls)
            .and_then(|c| spki_sha256_hex(&c))
            .is_some_and(|h| pinned.iter().any(|p| p.eq_ignore_ascii_case(&h)));
        if !ok {
            return Err(HandshakeError::NotPinned);
        }
    }
    Ok(tls)
}

/// The negotiated protocol version ("1.2"/"1.3") and cipher suite name, as
/// /connz shows them.
pub fn negotiated<S>(tls: &TlsStream<S>) -> (&'static str, String) {
    let conn = tls.get_ref().1;
    let version = match conn.protocol_version() {
        Some(rustls::ProtocolVersion::TLSv1_3) => "1.3",
        Some(rustls::ProtocolVersion::TLSv1_2) => "1.2",
        _ => "",
    };
    let cipher = conn
        .negotiated_cipher_suite()
        .map(|c| format!("{:?}", c.suite()))
        .unwrap_or_default();
    (version, cipher)
}

/// The client's leaf certificate, if it sent one.
pub fn peer_certificate<S>(tls: &TlsStream<S>) -> Option<CertificateDer<'static>> {
    tls.get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| c.clone().into_owned())
}

/// Lower-case hex SHA-256 of a certificate's DER SubjectPublicKeyInfo: the
/// form `pinned_certs` lists (as `openssl x509 -pubkey | openssl pkey -pubin
/// -outform der | sha256sum` prints it).
pub fn spki_sha256_hex(cert: &CertificateDer<'_>) -> Option<String> {
    let parsed = ParsedCertificate::try_from(cert).ok()?;
    // rustls hands out the whole DER SEQUENCE, which is what is hashed.
    let spki = parsed.subject_public_key_info();
    let digest = ring::digest::digest(&ring::digest::SHA256, spki.as_ref());
    Some(digest.as_ref().iter().map(|b| format!("{b:02x}")).collect())
}

/// Waits up to `timeout` for the client's first byte without consuming it:
/// `Some(true)` for a TLS handshake record, `Some(false)` for anything else,
/// `None` when nothing arrived (or the peer closed) in time.
pub async fn sniff_tls(stream: &TcpStream, timeout: Duration) -> Option<bool> {
    let mut first = [0u8; 1];
    match tokio::time::timeout(timeout, stream.peek(&mut first)).await {
        Ok(Ok(1)) => Some(first[0] == TLS_HANDSHAKE_RECORD),
        _ => None,
    }
}
