//! TLS for cluster links: every node's certificate is self-signed by its own
//! ed25519 nkey, and nodes trust each other by pinning those public keys (the
//! `N...` server ids operators already see), not through a certificate
//! authority. One verifier serves both directions, so a link is mutually
//! authenticated by the TLS 1.3 handshake itself.

use std::collections::BTreeSet;
use std::fmt;
use std::sync::Arc;

use ed25519_dalek::pkcs8::EncodePrivateKey;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::ParsedCertificate;
use rustls::{
    DigitallySignedStruct, DistinguishedName, OtherError, PeerMisbehaved, SignatureScheme,
};

use crate::{IdentityError, ServerIdentity};

/// The name a dialing node asks for and every certificate carries. Identity is
/// the pinned key, never a host name, so one fixed name keeps configs free of
/// DNS names that would add nothing.
pub const TLS_SERVER_NAME: &str = "tern-node";

/// DER prefix of an RFC 8410 ed25519 SubjectPublicKeyInfo; the 32-byte key
/// follows it. Anything else is not an nkey and is refused.
const ED25519_SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];

/// The nkey prefix byte of server keys (renders as `N`).
const SERVER_PREFIX_BYTE: u8 = 13 << 3;

/// The crypto provider for cluster links: ring, which builds fast here and
/// measured faster than aws-lc-rs (see shared notes on QUIC links).
pub fn crypto_provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A self-signed certificate and its private key, both from `identity`'s
/// ed25519 key, so the key a peer sees in TLS is the node's nkey.
pub fn certificate(
    identity: &ServerIdentity,
) -> Result<(CertificateDer<'static>, PrivateKeyDer<'static>), IdentityError> {
    let signing = ed25519_dalek::SigningKey::from_bytes(&identity.secret_bytes());
    let pkcs8 = signing
        .to_pkcs8_der()
        .map_err(|e| IdentityError(format!("cannot encode key as PKCS#8: {e}")))?;
    let key = PrivatePkcs8KeyDer::from(pkcs8.as_bytes().to_vec());
    let cert_err = |e: rcgen::Error| IdentityError(format!("cannot build certificate: {e}"));
    let key_pair = rcgen::KeyPair::from_pkcs8_der_and_sign_algo(&key, &rcgen::PKCS_ED25519)
        .map_err(cert_err)?;
    let mut params =
        rcgen::CertificateParams::new(vec![TLS_SERVER_NAME.to_string()]).map_err(cert_err)?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, identity.public_key());
    let cert = params.self_signed(&key_pair).map_err(cert_err)?;
    Ok((cert.der().clone(), PrivateKeyDer::Pkcs8(key)))
}

/// The nkey public form (`N...`) of the ed25519 key in a DER certificate, so
/// the transport can say which node is on the other side of a link. `None`
/// when the certificate does not parse or holds another kind of key.
pub fn peer_key_from_cert(cert_der: &[u8]) -> Option<String> {
    let der = CertificateDer::from(cert_der);
    let parsed = ParsedCertificate::try_from(&der).ok()?;
    let spki = parsed.subject_public_key_info();
    let raw = spki.as_ref().strip_prefix(&ED25519_SPKI_PREFIX[..])?;
    let raw: &[u8; 32] = raw.try_into().ok()?;
    Some(server_nkey(raw))
}

/// Encodes a raw ed25519 public key as a server nkey: base32 of the prefix
/// byte, the key and a CRC-16 (XMODEM polynomial) in little-endian order.
/// nkeys 0.4 has no public encoder for a bare public key.
fn server_nkey(raw: &[u8; 32]) -> String {
    let mut buf = Vec::with_capacity(35);
    buf.push(SERVER_PREFIX_BYTE);
    buf.extend_from_slice(raw);
    let crc = crc16(&buf);
    buf.extend_from_slice(&crc.to_le_bytes());
    data_encoding::BASE32_NOPAD.encode(&buf)
}

fn crc16(data: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &byte in data {
        crc ^= u16::from(byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

/// Why a peer's certificate was refused. It travels inside the rustls error,
/// so the handshake failure names the refused key in logs on this side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerRefused {
    /// The peer's key is valid but not in this node's allowed peers.
    NotAllowed(String),
    /// The certificate holds no ed25519 key, so it is not a Tern node.
    NotAnNkey,
}

impl fmt::Display for PeerRefused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PeerRefused::NotAllowed(key) => {
                write!(
                    f,
                    "peer key {key} is not among this node's allowed cluster peers"
                )
            }
            PeerRefused::NotAnNkey => write!(f, "peer certificate does not hold an ed25519 nkey"),
        }
    }
}

impl std::error::Error for PeerRefused {}

/// The cluster's trust rule, for both ends of a link: a peer is accepted when
/// its certificate's ed25519 key is in the allow-list, or when the list is
/// empty (an open cluster, every node with any key may join). Possession of
/// the key is proven by the TLS 1.3 handshake signature.
#[derive(Debug)]
pub struct PinnedPeers {
    /// Replaced as a whole by [`PinnedPeers::set_allowed`] (config reload).
    allowed: std::sync::RwLock<BTreeSet<String>>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl PinnedPeers {
    /// A verifier pinning `allowed` server public keys (`N...`). Keys that are
    /// not server nkeys are a configuration error, reported here rather than
    /// as a peer that silently never matches.
    pub fn new<I, S>(allowed: I) -> Result<Self, IdentityError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        Ok(PinnedPeers {
            allowed: std::sync::RwLock::new(Self::parse(allowed)?),
            algorithms: crypto_provider().signature_verification_algorithms,
        })
    }

    /// Replaces the allow-list (a config reload). Handshakes from then on use
    /// the new list; closing links that are no longer allowed is the caller's job.
    pub fn set_allowed<I, S>(&self, allowed: I) -> Result<(), IdentityError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let keys = Self::parse(allowed)?;
        *self.allowed.write().unwrap_or_else(|e| e.into_inner()) = keys;
        Ok(())
    }

    fn parse<I, S>(allowed: I) -> Result<BTreeSet<String>, IdentityError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut keys = BTreeSet::new();
        for key in allowed {
            let key = key.as_ref().trim();
            match nkeys::from_public_key(key) {
                Ok((prefix, _)) if prefix == SERVER_PREFIX_BYTE => {
                    keys.insert(key.to_string());
                }
                Ok(_) => {
                    return Err(IdentityError(format!(
                        "allowed peer {key} is not a server (N) public key"
                    )))
                }
                Err(e) => return Err(IdentityError(format!("allowed peer {key:?}: {e}"))),
            }
        }
        Ok(keys)
    }

    /// True when any node may connect (empty allow-list), so operators can be
    /// warned that the cluster is open.
    pub fn is_open(&self) -> bool {
        self.allowed
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .is_empty()
    }

    /// Whether a node with this public key would be accepted.
    pub fn allows(&self, key: &str) -> bool {
        let allowed = self.allowed.read().unwrap_or_else(|e| e.into_inner());
        allowed.is_empty() || allowed.contains(key)
    }

    /// Accepts or refuses a peer certificate, returning the peer's key. A
    /// refusal is a `rustls::Error::Other` holding a [`PeerRefused`], whose
    /// text names the refused key.
    pub fn check(&self, cert: &CertificateDer<'_>) -> Result<String, rustls::Error> {
        // `Error::Other` (not `InvalidCertificate`) so the error prints as
        // plain text naming the key; the peer gets a handshake_failure alert.
        let refuse = |why: PeerRefused| rustls::Error::Other(OtherError(Arc::new(why)));
        let key = peer_key_from_cert(cert).ok_or_else(|| refuse(PeerRefused::NotAnNkey))?;
        if self.allows(&key) {
            Ok(key)
        } else {
            Err(refuse(PeerRefused::NotAllowed(key)))
        }
    }

    fn verify_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        if dss.scheme != SignatureScheme::ED25519 {
            return Err(PeerMisbehaved::SignedHandshakeWithUnadvertisedSigScheme.into());
        }
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }
}

fn tls12_refused() -> rustls::Error {
    rustls::Error::General("TLS 1.2 is never used on cluster links".into())
}

impl ServerCertVerifier for PinnedPeers {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.check(end_entity)
            .map(|_| ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(tls12_refused())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.verify_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }
}

impl ClientCertVerifier for PinnedPeers {
    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.check(end_entity)
            .map(|_| ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(tls12_refused())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.verify_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }
}

fn tls_error(e: rustls::Error) -> IdentityError {
    IdentityError(format!("TLS configuration: {e}"))
}

/// The accepting side's TLS 1.3 config: presents `identity`'s certificate and
/// requires a client certificate that `pinned` accepts. Session resumption is
/// off: a resumed session skips certificate verification, so a peer removed
/// from the allow-list by a reload could come back with an old ticket.
pub fn server_config(
    identity: &ServerIdentity,
    pinned: Arc<PinnedPeers>,
) -> Result<rustls::ServerConfig, IdentityError> {
    let (cert, key) = certificate(identity)?;
    let mut config = rustls::ServerConfig::builder_with_provider(crypto_provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls_error)?
        .with_client_cert_verifier(pinned)
        .with_single_cert(vec![cert], key)
        .map_err(tls_error)?;
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    Ok(config)
}

/// The dialing side's TLS 1.3 config: presents `identity`'s certificate and
/// accepts a server only if `pinned` does. Dial with [`TLS_SERVER_NAME`].
pub fn client_config(
    identity: &ServerIdentity,
    pinned: Arc<PinnedPeers>,
) -> Result<rustls::ClientConfig, IdentityError> {
    let (cert, key) = certificate(identity)?;
    let mut config = rustls::ClientConfig::builder_with_provider(crypto_provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls_error)?
        .dangerous()
        .with_custom_certificate_verifier(pinned)
        .with_client_auth_cert(vec![cert], key)
        .map_err(tls_error)?;
    // Full handshakes only (see `server_config`).
    config.resumption = rustls::client::Resumption::disabled();
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::{ClientConnection, ServerConnection};

    fn cert_of(id: &ServerIdentity) -> CertificateDer<'static> {
        certificate(id).unwrap().0
    }

    #[test]
    fn certificate_carries_the_nkey() {
        let id = ServerIdentity::generate();
        let cert = cert_of(&id);
        assert_eq!(peer_key_from_cert(&cert), Some(id.public_key()));
        assert_eq!(peer_key_from_cert(b"not a certificate"), None);
    }

    #[test]
    fn nkey_encoding_matches_nkeys() {
        for _ in 0..32 {
            let id = ServerIdentity::generate();
            let (_, raw) = nkeys::from_public_key(&id.public_key()).unwrap();
            assert_eq!(server_nkey(&raw), id.public_key());
        }
    }

    #[test]
    fn verifier_accepts_pinned_key() {
        let a = ServerIdentity::generate();
        let b = ServerIdentity::generate();
        let pinned = PinnedPeers::new([a.public_key(), b.public_key()]).unwrap();
        assert!(!pinned.is_open());
        let cert = cert_of(&a);
        let name = ServerName::try_from(TLS_SERVER_NAME).unwrap();
        assert!(pinned
            .verify_server_cert(&cert, &[], &name, &[], UnixTime::now())
            .is_ok());
        assert!(pinned
            .verify_client_cert(&cert, &[], UnixTime::now())
            .is_ok());
    }

    #[test]
    fn verifier_refuses_unpinned_key_and_names_it() {
        let a = ServerIdentity::generate();
        let stranger = ServerIdentity::generate();
        let pinned = PinnedPeers::new([a.public_key()]).unwrap();
        let cert = cert_of(&stranger);
        let name = ServerName::try_from(TLS_SERVER_NAME).unwrap();
        let err = pinned
            .verify_server_cert(&cert, &[], &name, &[], UnixTime::now())
            .unwrap_err();
        assert!(err.to_string().contains(&stranger.public_key()), "{err}");
        let err = pinned
            .verify_client_cert(&cert, &[], UnixTime::now())
            .unwrap_err();
        assert!(err.to_string().contains(&stranger.public_key()), "{err}");
    }

    #[test]
    fn empty_allow_list_accepts_any_key() {
        let pinned = PinnedPeers::new(Vec::<String>::new()).unwrap();
        assert!(pinned.is_open());
        let cert = cert_of(&ServerIdentity::generate());
        assert!(pinned
            .verify_client_cert(&cert, &[], UnixTime::now())
            .is_ok());
    }

    #[test]
    fn allow_list_rejects_non_server_keys() {
        let user = nkeys::KeyPair::new_user().public_key();
        assert!(PinnedPeers::new([user]).is_err());
        assert!(PinnedPeers::new(["NOTAKEY"]).is_err());
    }

    /// Runs a TLS handshake in memory; returns the first error, if any.
    fn handshake(
        client_id: &ServerIdentity,
        client_pins: Vec<String>,
        server_id: &ServerIdentity,
        server_pins: Vec<String>,
    ) -> Result<(), rustls::Error> {
        let cc =
            client_config(client_id, Arc::new(PinnedPeers::new(client_pins).unwrap())).unwrap();
        let sc =
            server_config(server_id, Arc::new(PinnedPeers::new(server_pins).unwrap())).unwrap();
        let name = ServerName::try_from(TLS_SERVER_NAME).unwrap();
        let mut client = ClientConnection::new(Arc::new(cc), name).unwrap();
        let mut server = ServerConnection::new(Arc::new(sc)).unwrap();
        for _ in 0..10 {
            let mut buf = Vec::new();
            while client.wants_write() {
                client.write_tls(&mut buf).unwrap();
            }
            let mut rd = &buf[..];
            while !rd.is_empty() {
                server.read_tls(&mut rd).unwrap();
            }
            server.process_new_packets()?;
            let mut buf = Vec::new();
            while server.wants_write() {
                server.write_tls(&mut buf).unwrap();
            }
            let mut rd = &buf[..];
            while !rd.is_empty() {
                client.read_tls(&mut rd).unwrap();
            }
            client.process_new_packets()?;
            if !client.is_handshaking() && !server.is_handshaking() {
                let seen = server.peer_certificates().unwrap()[0].clone();
                assert_eq!(peer_key_from_cert(&seen), Some(client_id.public_key()));
                assert_eq!(
                    client.protocol_version(),
                    Some(rustls::ProtocolVersion::TLSv1_3)
                );
                return Ok(());
            }
        }
        panic!("handshake did not finish");
    }

    #[test]
    fn mutual_handshake_with_pinned_keys() {
        let a = ServerIdentity::generate();
        let b = ServerIdentity::generate();
        handshake(&a, vec![b.public_key()], &b, vec![a.public_key()]).unwrap();
        handshake(&a, vec![], &b, vec![]).unwrap();
    }

    #[test]
    fn handshake_fails_when_either_side_refuses() {
        let a = ServerIdentity::generate();
        let b = ServerIdentity::generate();
        let c = ServerIdentity::generate();
        let err = handshake(&a, vec![b.public_key()], &b, vec![c.public_key()]).unwrap_err();
        assert!(err.to_string().contains(&a.public_key()), "{err}");
        let err = handshake(&a, vec![c.public_key()], &b, vec![a.public_key()]).unwrap_err();
        assert!(err.to_string().contains(&b.public_key()), "{err}");
    }
}
