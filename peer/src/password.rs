//! Password and token checks for client authentication.
//!
//! Operators keep bcrypt hashes in config files so a leaked file does not
//! leak credentials; nats-server treats any configured password or token
//! that looks like a bcrypt hash (`$2a$`, `$2b$`, `$2x$` or `$2y$`, then a
//! two-digit cost) that way, and everything else as plain text. Plain text is
//! compared in constant time so response timing does not reveal how much of
//! a guess was right.

/// Whether `configured` is a bcrypt hash (nats-server's rule).
pub fn is_bcrypt(configured: &str) -> bool {
    let b = configured.as_bytes();
    b.len() > 7
        && b.starts_with(b"$2")
        && matches!(b[2], b'a' | b'b' | b'x' | b'y')
        && b[3] == b'$'
        && b[4].is_ascii_digit()
        && b[5].is_ascii_digit()
        && b[6] == b'$'
}

/// Whether the client's `given` secret matches the `configured` one.
pub fn matches(configured: &str, given: &str) -> bool {
    if is_bcrypt(configured) {
        return bcrypt::verify(given, configured).unwrap_or(false);
    }
    constant_time_eq(configured.as_bytes(), given.as_bytes())
}

/// Compares without stopping at the first difference (the length still
/// shows, as it does in nats-server's comparison).
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    // bcrypt of "s3cret", cost 10 (made with Python's crypt module).
    const HASH: &str = "$2b$10$t/S0SWsNietw5m6H/yNwXemOc9iRKOtuCNbA0BkKM7vTLt0pr/9NG";

    #[test]
    fn recognises_bcrypt_like_nats_server() {
        assert!(is_bcrypt(HASH));
        assert!(is_bcrypt("$2a$11$abc"));
        assert!(is_bcrypt("$2y$04$x"));
        assert!(!is_bcrypt("$2c$10$abc"));
        assert!(!is_bcrypt("$2a$1$abc"));
        assert!(!is_bcrypt("$notbcrypt"));
        assert!(!is_bcrypt("plain"));
    }

    #[test]
    fn bcrypt_and_plain() {
        assert!(matches(HASH, "s3cret"));
        assert!(!matches(HASH, "s3cre"));
        assert!(!matches(HASH, HASH));
        assert!(matches("plain", "plain"));
        assert!(!matches("plain", "plaim"));
        assert!(!matches("plain", "plain2"));
        assert!(
            !matches("$2b$10$garbage", "x"),
            "a malformed hash matches nothing"
        );
    }
}
