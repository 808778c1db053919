//! The INFO nonce challenge and the CONNECT `sig` that answers it.
//!
//! nkey and JWT users prove they hold their seed by signing the nonce the
//! server sent in INFO. nats-server draws 11 random bytes and sends them as
//! unpadded URL-safe base64 (15 characters); the client signs the *text* of
//! the nonce (its 15 ASCII bytes, not the raw 11) and sends the ed25519
//! signature as `sig`, in unpadded URL-safe base64, or in standard padded
//! base64, which nats-server accepts as a fallback.

use std::fmt;
use std::sync::LazyLock;

use data_encoding::{Encoding, Specification, BASE64URL_NOPAD};
use rand::RngCore;

/// Random bytes in a nonce (nats-server's `nonceRawLen`).
pub const NONCE_RAW_LEN: usize = 11;

/// Characters in the nonce as sent in INFO (nats-server's `nonceLen`).
pub const NONCE_LEN: usize = 15;

/// Go's `base64.RawURLEncoding` as a decoder: no padding, `\r`/`\n` skipped,
/// non-zero trailing bits accepted (Go is not strict by default).
pub(crate) static GO_RAW_URL: LazyLock<Encoding> = LazyLock::new(|| go_base64(true, false));

/// Go's `base64.StdEncoding` as a decoder: padding required, `\r`/`\n` skipped.
pub(crate) static GO_STD: LazyLock<Encoding> = LazyLock::new(|| go_base64(false, true));

fn go_base64(url: bool, padding: bool) -> Encoding {
    let mut spec = Specification::new();
    spec.symbols
        .push_str("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789");
    spec.symbols.push_str(if url { "-_" } else { "+/" });
    if padding {
        spec.padding = Some('=');
    }
    spec.ignore.push_str("\r\n");
    spec.check_trailing_bits = false;
    spec.encoding().expect("valid base64 specification")
}

/// Unpadded URL-safe base64, the encoding of nonces, signatures and JWT parts.
pub(crate) fn b64url(bytes: &[u8]) -> String {
    BASE64URL_NOPAD.encode(bytes)
}

/// A fresh nonce for one connection's INFO, from the OS random source, so a
/// signature captured on one connection cannot be replayed on another.
pub fn new_nonce() -> String {
    let mut raw = [0u8; NONCE_RAW_LEN];
    rand::rngs::OsRng.fill_bytes(&mut raw);
    b64url(&raw)
}

/// Signs a nonce the way a client does (`sig` in CONNECT), for tests and for
/// Tern's own outgoing connections (leaf remotes with credentials).
pub fn sign_nonce(keys: &nkeys::KeyPair, nonce: &[u8]) -> Result<String, SigError> {
    keys.sign(nonce)
        .map(|sig| b64url(&sig))
        .map_err(|e| SigError::BadKey(e.to_string()))
}

/// Why a CONNECT `sig` did not prove possession of the key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SigError {
    /// CONNECT carried no `sig` at all.
    Missing,
    /// `sig` is neither unpadded URL-safe nor standard base64.
    NotBase64,
    /// The public key (CONNECT `nkey` or the JWT subject) is not a valid nkey.
    BadKey(String),
    /// The signature does not verify against the nonce with that key.
    Mismatch,
}

impl fmt::Display for SigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SigError::Missing => {
                f.write_str("signature missing: CONNECT has no `sig` for the nonce")
            }
            SigError::NotBase64 => f.write_str("signature not valid base64"),
            SigError::BadKey(e) => write!(f, "user nkey not valid: {e}"),
            SigError::Mismatch => f.write_str(
                "signature not verified: `sig` is not this key's signature of the INFO nonce \
                 (wrong seed, or signed something other than the nonce text)",
            ),
        }
    }
}

impl std::error::Error for SigError {}

/// Decodes a CONNECT `sig`: unpadded URL-safe base64 first, then standard
/// base64, as nats-server does.
pub fn decode_sig(sig: &str) -> Result<Vec<u8>, SigError> {
    if sig.is_empty() {
        return Err(SigError::Missing);
    }
    GO_RAW_URL
        .decode(sig.as_bytes())
        .or_else(|_| GO_STD.decode(sig.as_bytes()))
        .map_err(|_| SigError::NotBase64)
}

/// Checks a CONNECT `sig` over `nonce` (the nonce text from INFO, as bytes)
/// against `public_key`, in nats-server's order: missing, base64, key, match.
pub fn verify_signature(public_key: &str, nonce: &[u8], sig: &str) -> Result<(), SigError> {
    let sig = decode_sig(sig)?;
    let key =
        nkeys::KeyPair::from_public_key(public_key).map_err(|e| SigError::BadKey(e.to_string()))?;
    key.verify(nonce, &sig).map_err(|_| SigError::Mismatch)
}

#[cfg(test)]
mod tests {
    use super::*;
    use data_encoding::BASE64;
    use std::collections::HashSet;

    #[test]
    fn nonce_is_15_url_safe_chars_of_11_random_bytes() {
        let mut seen = HashSet::new();
        for _ in 0..1000 {
            let n = new_nonce();
            assert_eq!(n.len(), NONCE_LEN);
            assert!(n
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
            assert_eq!(
                GO_RAW_URL.decode(n.as_bytes()).unwrap().len(),
                NONCE_RAW_LEN
            );
            assert!(seen.insert(n), "nonce repeated");
        }
    }

    #[test]
    fn both_base64_flavours_verify() {
        let user = nkeys::KeyPair::new_user();
        let nonce = new_nonce();
        let raw = user.sign(nonce.as_bytes()).unwrap();
        let url = sign_nonce(&user, nonce.as_bytes()).unwrap();
        assert_eq!(url.len(), 86);
        let std = BASE64.encode(&raw);
        assert!(std.ends_with("=="));
        verify_signature(&user.public_key(), nonce.as_bytes(), &url).unwrap();
        verify_signature(&user.public_key(), nonce.as_bytes(), &std).unwrap();
        // Go skips line breaks inside base64.
        let wrapped = format!("{}\r\n{}", &url[..40], &url[40..]);
        verify_signature(&user.public_key(), nonce.as_bytes(), &wrapped).unwrap();
    }

    #[test]
    fn every_failure_is_named() {
        let user = nkeys::KeyPair::new_user();
        let other = nkeys::KeyPair::new_user();
        let nonce = new_nonce();
        let sig = sign_nonce(&user, nonce.as_bytes()).unwrap();
        let pk = user.public_key();
        assert_eq!(
            verify_signature(&pk, nonce.as_bytes(), ""),
            Err(SigError::Missing)
        );
        assert_eq!(
            verify_signature(&pk, nonce.as_bytes(), "not base64!"),
            Err(SigError::NotBase64)
        );
        assert!(matches!(
            verify_signature("UBAD", nonce.as_bytes(), &sig),
            Err(SigError::BadKey(_))
        ));
        assert_eq!(
            verify_signature(&other.public_key(), nonce.as_bytes(), &sig),
            Err(SigError::Mismatch)
        );
        assert_eq!(
            verify_signature(&pk, b"other nonce", &sig),
            Err(SigError::Mismatch)
        );
        // A short (but valid base64) signature is a mismatch, not a panic.
        assert_eq!(
            verify_signature(&pk, nonce.as_bytes(), "AAAA"),
            Err(SigError::Mismatch)
        );
        // Signing the raw bytes instead of the nonce text does not verify.
        let raw = GO_RAW_URL.decode(nonce.as_bytes()).unwrap();
        let wrong = sign_nonce(&user, &raw).unwrap();
        assert_eq!(
            verify_signature(&pk, nonce.as_bytes(), &wrong),
            Err(SigError::Mismatch)
        );
        for e in [SigError::Missing, SigError::NotBase64, SigError::Mismatch] {
            assert!(e.to_string().starts_with("signature"));
        }
    }
}
