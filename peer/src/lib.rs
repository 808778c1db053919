//! Identities for Tern: every server is an ed25519 nkey.
//!
//! The public key of a server's nkey (`N...`) is its `server_id` everywhere a
//! client or operator can see it, the same form nats-server uses, so tools
//! that parse server ids keep working and cluster peers can later pin it.

use std::fmt;

pub use nkeys::KeyPair;

/// A server's signing identity.
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

    #[test]
    fn user_seed_is_refused() {
        let user = KeyPair::new_user();
        assert!(ServerIdentity::from_seed(&user.seed().unwrap()).is_err());
        assert!(ServerIdentity::from_seed("garbage").is_err());
    }
}
