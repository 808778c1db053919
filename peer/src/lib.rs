//! Identities for Tern: every server is an ed25519 nkey.
//!
//! The public key of a server's nkey (`N...`) is its `server_id` everywhere a
//! client or operator can see it, the same form nats-server uses, so tools
//! that parse server ids keep working and cluster peers can later pin it.

use std::fmt;
use std::io::{self, Write};
use std::path::Path;

pub use nkeys::KeyPair;

pub mod cert_names;
pub mod creds;
pub mod jwt;
pub mod nonce;
pub mod password;
pub mod tls;
pub mod trust;
pub mod zone;

/// A server's signing identity. Cloning copies the secret: keep clones inside
/// the process (e.g. one per listener).
#[derive(Clone)]
pub struct ServerIdentity {
    keys: KeyPair,
}

impl ServerIdentity {
    /// A fresh random server identity.
    pub fn generate() -> Self {
        ServerIdentity {
            keys: KeyPair::new_server(),
        }
    }

    /// An identity from a server seed (`SN...`), e.g. read from a key file.
    pub fn from_seed(seed: &str) -> Result<Self, IdentityError> {
        let keys = KeyPair::from_seed(seed.trim()).map_err(|e| IdentityError(e.to_string()))?;
        if !keys.public_key().starts_with('N') {
            return Err(IdentityError("seed is not a server (N) nkey".into()));
        }
        Ok(ServerIdentity { keys })
    }

    /// Reads a key file holding a server seed (`SN...`), so a node keeps the
    /// same id, and the same pinned key in its peers' configs, across restarts.
    pub fn from_seed_file(path: impl AsRef<Path>) -> Result<Self, IdentityError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path)
            .map_err(|e| IdentityError(format!("{}: {e}", path.display())))?;
        Self::from_seed(&text).map_err(|e| IdentityError(format!("{}: {}", path.display(), e.0)))
    }

    /// Reads the key file at `path`, or, on first start, generates an identity
    /// and writes it there (owner-only, mode 0600, parent folders created), so
    /// an operator gets a stable identity without a manual key step. The flag
    /// is `true` when the key was generated, so the caller can log the new id.
    pub fn load_or_generate(path: impl AsRef<Path>) -> Result<(Self, bool), IdentityError> {
        let path = path.as_ref();
        match Self::from_seed_file(path) {
            Ok(id) => return Ok((id, false)),
            Err(_) if !path.exists() => {}
            Err(e) => return Err(e),
        }
        let err = |e: io::Error| IdentityError(format!("{}: {e}", path.display()));
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(err)?;
        }
        let id = Self::generate();
        let mut options = std::fs::OpenOptions::new();
        // `create_new`: never overwrite a key another process wrote meanwhile.
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = match options.open(path) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                return Self::from_seed_file(path).map(|id| (id, false));
            }
            Err(e) => return Err(err(e)),
        };
        file.write_all(format!("{}\n", id.seed()).as_bytes())
            .and_then(|()| file.sync_all())
            .map_err(err)?;
        Ok((id, true))
    }

    /// The public key, used as the server id (`N` + 55 base32 characters).
    pub fn public_key(&self) -> String {
        self.keys.public_key()
    }

    /// The seed, for writing a key file.
    pub fn seed(&self) -> String {
        self.keys.seed().expect("generated keys always have a seed")
    }

    /// Signs `data`, e.g. a nonce.
    pub fn sign(&self, data: &[u8]) -> Vec<u8> {
        self.keys.sign(data).expect("keys with a seed can sign")
    }

    /// The raw 32-byte ed25519 secret, from which the TLS certificate key is
    /// derived so the QUIC link key and the nkey are one and the same.
    fn secret_bytes(&self) -> [u8; 32] {
        let (_, raw) = nkeys::decode_seed(&self.seed()).expect("own seed always decodes");
        raw
    }
}

impl fmt::Debug for ServerIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the seed.
        f.debug_struct("ServerIdentity")
            .field("public_key", &self.public_key())
            .finish()
    }
}

/// A key that could not be loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityError(pub String);

impl fmt::Display for IdentityError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid server identity: {}", self.0)
    }
}

impl std::error::Error for IdentityError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_identity_is_a_server_nkey() {
        let id = ServerIdentity::generate();
        let pk = id.public_key();
        assert!(pk.starts_with('N'));
        assert_eq!(pk.len(), 56);
        let again = ServerIdentity::from_seed(&id.seed()).unwrap();
        assert_eq!(again.public_key(), pk);
        let sig = id.sign(b"nonce");
        assert!(KeyPair::from_public_key(&pk)
            .unwrap()
            .verify(b"nonce", &sig)
            .is_ok());
    }

    fn temp_dir(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "tern-peer-{name}-{}-{:?}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn key_file_round_trip() {
        let dir = temp_dir("keyfile");
        let path = dir.join("nested/deeper/server.nk");
        let (first, generated) = ServerIdentity::load_or_generate(&path).unwrap();
        assert!(generated);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.starts_with("SN"));
        assert_eq!(text.trim(), first.seed());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "key file must be owner-only");
        }
        let (second, generated) = ServerIdentity::load_or_generate(&path).unwrap();
        assert!(!generated);
        assert_eq!(second.public_key(), first.public_key());
        let third = ServerIdentity::from_seed_file(&path).unwrap();
        assert_eq!(third.public_key(), first.public_key());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn bad_key_file_is_an_error_not_overwritten() {
        let dir = temp_dir("badkey");
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("server.nk");
        std::fs::write(&path, "not a seed").unwrap();
        let err = ServerIdentity::load_or_generate(&path).unwrap_err();
        assert!(err.0.contains("server.nk"), "{err}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "not a seed");
        assert!(ServerIdentity::from_seed_file(dir.join("missing")).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn user_seed_is_refused() {
        let user = KeyPair::new_user();
        assert!(ServerIdentity::from_seed(&user.seed().unwrap()).is_err());
        assert!(ServerIdentity::from_seed("garbage").is_err());
    }
}
