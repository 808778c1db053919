//! `.creds` files: a decorated user JWT followed by a decorated user seed,
//! as `nsc generate creds` writes them and NATS clients read them.
//!
//! Parsing follows the nkeys library the clients use: the first decorated
//! block is the JWT, the second the seed; without a second block, the first
//! line starting with `SO`, `SA` or `SU` is taken as the seed.

use std::fmt;

use nkeys::KeyPair;

use crate::jwt::decorated_blocks;
use crate::nonce::{sign_nonce, SigError};

/// The two secrets of a `.creds` file.
#[derive(Clone, PartialEq, Eq)]
pub struct Creds {
    /// The user JWT, sent as CONNECT `jwt`.
    pub jwt: String,
    /// The nkey seed (`SU...`), which signs the INFO nonce.
    pub seed: String,
}

impl Creds {
    /// The key pair of the seed.
    pub fn key_pair(&self) -> Result<KeyPair, CredsError> {
        KeyPair::from_seed(&self.seed).map_err(|e| CredsError::InvalidSeed(e.to_string()))
    }

    /// The CONNECT `sig` for `nonce` (the nonce text from INFO).
    pub fn sign_nonce(&self, nonce: &str) -> Result<String, CredsError> {
        sign_nonce(&self.key_pair()?, nonce.as_bytes())
            .map_err(|e: SigError| CredsError::InvalidSeed(e.to_string()))
    }
}

impl fmt::Debug for Creds {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the seed.
        f.debug_struct("Creds")
            .field("jwt", &self.jwt)
            .field("seed", &"<redacted>")
            .finish()
    }
}

/// Why a `.creds` file could not be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CredsError {
    /// No `-----BEGIN ...-----` block with a JWT.
    NoJwt,
    /// No seed block and no line starting with SO/SA/SU.
    NoSeed,
    /// The seed does not decode as an operator, account or user seed.
    InvalidSeed(String),
}

impl fmt::Display for CredsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CredsError::NoJwt => f.write_str("credentials contain no decorated JWT block"),
            CredsError::NoSeed => f.write_str("credentials contain no nkey seed"),
            CredsError::InvalidSeed(e) => write!(f, "credentials nkey seed is not valid: {e}"),
        }
    }
}

impl std::error::Error for CredsError {}

/// Parses the text of a `.creds` file. The JWT is not verified here (the
/// server does that); the seed must decode.
pub fn parse(text: &str) -> Result<Creds, CredsError> {
    let blocks = decorated_blocks(text);
    let jwt = blocks.first().ok_or(CredsError::NoJwt)?.to_string();
    let seed = match blocks.get(1) {
        Some(s) => s.to_string(),
        None => text
            .lines()
            .map(str::trim)
            .find(|l| l.starts_with("SO") || l.starts_with("SA") || l.starts_with("SU"))
            .ok_or(CredsError::NoSeed)?
            .to_string(),
    };
    if !(seed.starts_with("SO") || seed.starts_with("SA") || seed.starts_with("SU")) {
        return Err(CredsError::InvalidSeed(
            "doesn't contain a seed nkey".to_string(),
        ));
    }
    KeyPair::from_seed(&seed).map_err(|e| CredsError::InvalidSeed(e.to_string()))?;
    Ok(Creds { jwt, seed })
}

/// Writes a `.creds` file's text the way nsc does, for tests and tooling.
pub fn format(jwt: &str, seed: &str) -> String {
    format!(
        "-----BEGIN NATS USER JWT-----\n{jwt}\n------END NATS USER JWT------\n\n\
         ************************* IMPORTANT *************************\n\
         NKEY Seed printed below can be used to sign and prove identity.\n\
         NKEYs are sensitive and should be treated as secrets.\n\n\
         -----BEGIN USER NKEY SEED-----\n{seed}\n------END USER NKEY SEED------\n\n\
         *************************************************************\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jwt::{decode_user, encode, UserClaims};
    use crate::nonce::{new_nonce, verify_signature};

    #[test]
    fn nsc_creds_round_trip() {
        let account = KeyPair::new_account();
        let user = KeyPair::new_user();
        let jwt = encode(&UserClaims::new(&user.public_key()), &account);
        let seed = user.seed().unwrap();
        let creds = parse(&format(&jwt, &seed)).unwrap();
        assert_eq!(creds.jwt, jwt);
        assert_eq!(creds.seed, seed);
        assert_eq!(
            decode_user(&creds.jwt).unwrap().common.sub,
            user.public_key()
        );
        let nonce = new_nonce();
        let sig = creds.sign_nonce(&nonce).unwrap();
        verify_signature(&user.public_key(), nonce.as_bytes(), &sig).unwrap();
        assert!(!format!("{creds:?}").contains(&seed));
        // Windows line endings.
        let crlf = format(&jwt, &seed).replace('\n', "\r\n");
        assert_eq!(parse(&crlf).unwrap(), creds);
    }

    #[test]
    fn bare_seed_line_and_failures() {
        let user = KeyPair::new_user();
        let seed = user.seed().unwrap();
        let text = format!(
            "-----BEGIN NATS USER JWT-----\neyJx.y.z\n------END NATS USER JWT------\n\n  {seed}\n"
        );
        assert_eq!(parse(&text).unwrap().seed, seed);
        assert_eq!(parse("nothing here"), Err(CredsError::NoJwt));
        let no_seed = "-----BEGIN NATS USER JWT-----\neyJx.y.z\n------END NATS USER JWT------\n";
        assert_eq!(parse(no_seed), Err(CredsError::NoSeed));
        let bad = format("eyJx.y.z", "SUNOTASEED");
        assert!(matches!(parse(&bad), Err(CredsError::InvalidSeed(_))));
        let not_seed = format("eyJx.y.z", &user.public_key());
        assert!(matches!(parse(&not_seed), Err(CredsError::InvalidSeed(_))));
    }
}
