//! Fuzzes NATS JWT, decorated-file and `.creds` parsing, and the operator
//! mode decision, with arbitrary text.
//!
//! The input is used three ways:
//! * as a token, a decorated file and a `.creds` file, as read from CONNECT
//!   or from disk (most inputs fail the signature check, so this covers the
//!   header, base64 and JSON layers);
//! * as the claims JSON of a user JWT signed by a trusted account, then
//!   decoded, validated and run through `trust::authorize` (so claims
//!   typing, validation, `src`/`times` checks and revocations are reached);
//! * as the claims JSON of an account JWT signed by the trusted operator,
//!   then used to authorize a fixed scoped user (so signing-key scopes and
//!   permission templates are reached).
//!
//! Invariants checked:
//! * nothing panics;
//! * typed claims are a fixed point of encode/decode after one round trip
//!   (what Tern writes, it reads back unchanged).
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use nkeys::{KeyPair, KeyPairType};
use peer::jwt::{self, Claims, OperatorClaims, UserClaims};
use peer::trust::{authorize_with_zones, ConnectAttempt, TrustedOperators};
use peer::zone::FixedOffset;

const NOW: i64 = 1_700_000_000;
const HEADER: &str = r#"{"typ":"JWT","alg":"ed25519-nkey"}"#;

struct Fixture {
    operator: KeyPair,
    account: KeyPair,
    scoped: KeyPair,
    trusted: TrustedOperators,
    account_jwt: String,
    scoped_user_jwt: String,
}

fn key(kind: KeyPairType, seed: u8) -> KeyPair {
    KeyPair::new_from_raw(kind, [seed; 32]).expect("raw key")
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let operator = key(KeyPairType::Operator, 1);
        let account = key(KeyPairType::Account, 2);
        let scoped = key(KeyPairType::Account, 3);
        let user = key(KeyPairType::User, 4);
        let oc = OperatorClaims::new(&operator.public_key());
        let trusted = TrustedOperators::new(&[jwt::encode(&oc, &operator)]).expect("trusted");
        let ac = jwt::AccountClaims::new(&account.public_key());
        let account_jwt = jwt::encode(&ac, &operator);
        let mut u = UserClaims::new_scoped(&user.public_key(), &account.public_key());
        u.common.name = "fuzz".into();
        u.common.iat = NOW - 1;
        u.nats.generic.tags = vec!["team:a".into(), "team:b".into()];
        let scoped_user_jwt = jwt::encode(&u, &scoped);
        Fixture {
            operator,
            account,
            scoped,
            trusted,
            account_jwt,
            scoped_user_jwt,
        }
    })
}

/// Encoding typed claims and decoding them again changes nothing after the
/// first round trip.
fn check_fixed_point(claims: &Claims, f: &Fixture) {
    fn trip(c: &Claims, f: &Fixture) -> Claims {
        let token = match c {
            Claims::User(u) => jwt::encode(u, &f.account),
            Claims::Account(a) => jwt::encode(a.as_ref(), &f.operator),
            Claims::Operator(o) => jwt::encode(o, &f.operator),
            Claims::Other(_) => return c.clone(),
        };
        jwt::decode(&token).expect("own token decodes").claims
    }
    if claims.common().sub.is_empty() {
        return;
    }
    let once = trip(claims, f);
    let twice = trip(&once, f);
    let same = match (&once, &twice) {
        (Claims::User(a), Claims::User(b)) => a.nats == b.nats,
        (Claims::Account(a), Claims::Account(b)) => a.nats == b.nats,
        (Claims::Operator(a), Claims::Operator(b)) => a.nats == b.nats,
        (Claims::Other(_), Claims::Other(_)) => true,
        _ => false,
    };
    assert!(same, "not a fixed point:\n{once:?}\n{twice:?}");
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let f = fixture();

    // As a token / decorated file / creds file.
    let _ = jwt::decode(text);
    let _ = jwt::decorated_blocks(text);
    let _ = jwt::read_operator_jwt(text);
    let _ = peer::creds::parse(text);
    let _ = peer::nonce::verify_signature(&f.account.public_key(), b"nonce", text);

    // As the claims of a user JWT signed by the trusted account.
    let token = jwt::encode_raw(HEADER, text, &f.account);
    if let Ok(decoded) = jwt::decode(&token) {
        check_fixed_point(&decoded.claims, f);
        if let Claims::User(u) = &decoded.claims {
            let _ = u.validate(NOW, &FixedOffset(3600));
        }
    }
    let lookup = |k: &str| (k == f.account.public_key()).then(|| f.account_jwt.clone());
    let mut attempt = ConnectAttempt::new(&token, b"nonce", "c2ln", NOW);
    attempt.client_ip = Some([10, 0, 0, 1].into());
    let _ = authorize_with_zones(&f.trusted, &lookup, &attempt, &FixedOffset(3600)).map(|u| {
        let _ = u.permissions();
    });

    // As the claims of an account JWT signed by the trusted operator.
    let account_token = jwt::encode_raw(HEADER, text, &f.operator);
    let _ = f.trusted.verify_account(&account_token, NOW);
    let lookup = |_: &str| Some(account_token.clone());
    let attempt = ConnectAttempt::new(&f.scoped_user_jwt, b"nonce", "c2ln", NOW);
    let _ = authorize_with_zones(&f.trusted, &lookup, &attempt, &FixedOffset(0));
    let _ = &f.scoped;
});
