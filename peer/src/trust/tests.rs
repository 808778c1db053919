use super::*;
use crate::jwt::{encode, OperatorClaims, UserScope};
use crate::nonce::{new_nonce, sign_nonce};
use crate::zone::{FixedOffset, Utc};
use data_encoding::BASE64;
use nkeys::KeyPair;

const NOW: i64 = 1_700_000_000; // 2023-11-14T22:13:20Z

struct Fx {
    op: KeyPair,
    op_sk: KeyPair,
    acc: KeyPair,
    acc_sk: KeyPair,
    scoped_sk: KeyPair,
    user: KeyPair,
    trusted: TrustedOperators,
    account: AccountClaims,
    accounts: HashMap<String, String>,
    nonce: String,
}

impl Fx {
    fn new() -> Fx {
        Fx::with_operator(|_| {})
    }

    fn with_operator(f: impl FnOnce(&mut OperatorClaims)) -> Fx {
        let op = KeyPair::new_operator();
        let op_sk = KeyPair::new_operator();
        let mut oc = OperatorClaims::new(&op.public_key());
        oc.common.name = "OP".into();
        oc.nats.signing_keys.push(op_sk.public_key());
        f(&mut oc);
        let trusted = TrustedOperators::new(&[encode(&oc, &op)]).unwrap();
        let acc = KeyPair::new_account();
        let acc_sk = KeyPair::new_account();
        let scoped_sk = KeyPair::new_account();
        let mut account = AccountClaims::new(&acc.public_key());
        account.common.name = "ACME".into();
        account.nats.generic.tags = vec!["region:eu".into(), "region:us".into()];
        account.nats.signing_keys.add(&acc_sk.public_key());
        let mut scope = UserScope::new(&scoped_sk.public_key());
        scope.template.permissions.publish.allow = vec![
            "u.{{name()}}.>".into(),
            "id.{{subject()}}".into(),
            "acc.{{account-name()}}.{{account-subject()}}".into(),
        ];
        scope.template.permissions.subscribe.allow =
            vec!["r.{{account-tag(region)}}.{{tag(team)}}".into()];
        scope.template.limits.nats.subs = 7;
        account.nats.signing_keys.add_scoped(scope);
        let mut fx = Fx {
            op,
            op_sk,
            acc,
            acc_sk,
            scoped_sk,
            user: KeyPair::new_user(),
            trusted,
            account,
            accounts: HashMap::new(),
            nonce: new_nonce(),
        };
        fx.publish_account(|_| {});
        fx
    }

    /// (Re)signs the account JWT with the operator signing key after `f`.
    fn publish_account(&mut self, f: impl FnOnce(&mut AccountClaims)) {
        let mut a = self.account.clone();
        a.common.iat = NOW - 100;
        f(&mut a);
        let jwt = encode(&a, &self.op_sk);
        self.accounts.insert(self.acc.public_key(), jwt);
    }

    fn user_claims(&self) -> UserClaims {
        let mut u = UserClaims::new(&self.user.public_key());
        u.common.name = "alice".into();
        u.common.iat = NOW - 10;
        u
    }

    fn user_jwt(&self, f: impl FnOnce(&mut UserClaims)) -> String {
        let mut u = self.user_claims();
        f(&mut u);
        encode(&u, &self.acc)
    }

    fn sig(&self) -> String {
        sign_nonce(&self.user, self.nonce.as_bytes()).unwrap()
    }

    fn auth(&self, jwt: &str) -> Result<AuthorizedUser, Refusal> {
        let sig = self.sig();
        self.auth_with(jwt, &sig, |_| {})
    }

    fn auth_with(
        &self,
        jwt: &str,
        sig: &str,
        f: impl FnOnce(&mut ConnectAttempt<'_>),
    ) -> Result<AuthorizedUser, Refusal> {
        let mut at = ConnectAttempt::new(jwt, self.nonce.as_bytes(), sig, NOW);
        f(&mut at);
        authorize_with_zones(&self.trusted, &self.accounts, &at, &Utc)
    }
}

#[test]
fn plain_user_signed_by_account_key() {
    let fx = Fx::new();
    let ok = fx.auth(&fx.user_jwt(|_| {})).unwrap();
    assert_eq!(ok.user_key, fx.user.public_key());
    assert_eq!(ok.account_key, fx.acc.public_key());
    assert_eq!(ok.name, "alice");
    assert_eq!(ok.account_name, "ACME");
    assert_eq!(ok.signing_key, None);
    assert!(!ok.scoped);
    assert_eq!(ok.expires_at, None);
    assert!(ok.permissions().is_none());
    // Standard base64 signatures are accepted too.
    let raw = fx.user.sign(fx.nonce.as_bytes()).unwrap();
    fx.auth_with(&fx.user_jwt(|_| {}), &BASE64.encode(&raw), |_| {})
        .unwrap();
}

#[test]
fn account_default_permissions_apply_when_user_sets_none() {
    let mut fx = Fx::new();
    fx.publish_account(|a| a.nats.default_permissions.publish.deny = vec!["secret".into()]);
    let ok = fx.auth(&fx.user_jwt(|_| {})).unwrap();
    assert_eq!(ok.permissions().unwrap().publish.deny, ["secret"]);
    let own = fx
        .auth(&fx.user_jwt(|u| {
            u.nats.permission_limits.permissions.subscribe.allow = vec!["mine".into()]
        }))
        .unwrap();
    assert_eq!(own.permissions().unwrap().subscribe.allow, ["mine"]);
    assert!(own.permissions().unwrap().publish.deny.is_empty());
}

#[test]
fn user_signed_by_account_signing_key() {
    let fx = Fx::new();
    let mut u = fx.user_claims();
    u.nats.issuer_account = fx.acc.public_key();
    let jwt = encode(&u, &fx.acc_sk);
    let ok = fx.auth(&jwt).unwrap();
    assert_eq!(ok.account_key, fx.acc.public_key());
    assert_eq!(ok.signing_key, Some(fx.acc_sk.public_key()));
    // Without issuer_account the signing key is looked up as an account.
    let mut u = fx.user_claims();
    u.nats.issuer_account.clear();
    let err = fx.auth(&encode(&u, &fx.acc_sk)).unwrap_err();
    assert_eq!(
        err,
        Refusal::UnknownAccount {
            user: fx.user.public_key(),
            account: fx.acc_sk.public_key()
        }
    );
}

#[test]
fn scoped_signing_key_template_replaces_permissions() {
    let fx = Fx::new();
    let mut u = UserClaims::new_scoped(&fx.user.public_key(), &fx.acc.public_key());
    u.common.name = "alice".into();
    u.common.iat = NOW - 10;
    u.nats.generic.tags = vec!["team:red".into(), "team:blue".into()];
    let jwt = encode(&u, &fx.scoped_sk);
    let ok = fx.auth(&jwt).unwrap();
    assert!(ok.scoped);
    assert_eq!(ok.signing_key, Some(fx.scoped_sk.public_key()));
    let pl = ok.claims.limits();
    let acc = fx.acc.public_key();
    let user = fx.user.public_key();
    assert_eq!(
        pl.permissions.publish.allow,
        [
            "u.alice.>".to_string(),
            format!("id.{user}"),
            format!("acc.ACME.{acc}")
        ]
    );
    assert_eq!(
        pl.permissions.subscribe.allow,
        ["r.eu.red", "r.eu.blue", "r.us.red", "r.us.blue"]
    );
    assert_eq!(pl.limits.nats.subs, 7);
    assert_eq!(pl.limits.nats.payload, crate::jwt::NO_LIMIT);

    // A scoped user must not carry its own permissions or limits.
    let mut u2 = u.clone();
    u2.nats.permission_limits.limits.nats.subs = -1;
    let err = fx.auth(&encode(&u2, &fx.scoped_sk)).unwrap_err();
    assert!(
        matches!(err, Refusal::ScopedUserHasPermissions { .. }),
        "{err}"
    );
}

#[test]
fn template_edge_cases() {
    let fx = Fx::new();
    let user = fx.user_claims();
    let acc = fx.account.clone();
    let mut t = UserPermissionLimits::default();
    // A missing tag in an allow list yields nothing, which becomes deny >.
    t.permissions.publish.allow = vec!["x.{{tag(none)}}".into()];
    t.permissions.subscribe.allow = vec!["a b".into(), "ok.{{name()}}".into(), "plain".into()];
    let out = apply_template(&t, &user, &acc).unwrap();
    assert!(out.permissions.publish.allow.is_empty());
    assert_eq!(out.permissions.publish.deny, [">"]);
    // Queue entries are dropped from allow lists once templates are in play.
    assert_eq!(out.permissions.subscribe.allow, ["ok.alice", "plain"]);
    // ...but fail the whole template in deny lists.
    let mut t = UserPermissionLimits::default();
    t.permissions.publish.deny = vec!["x.{{tag(none)}}".into()];
    let e = apply_template(&t, &user, &acc).unwrap_err();
    assert!(e.contains("is not defined"), "{e}");
    t.permissions.publish.deny = vec!["{{name()}}..x".into()];
    assert_eq!(
        apply_template(&t, &user, &acc).unwrap_err(),
        "generated invalid subject"
    );
    let mut t = UserPermissionLimits::default();
    t.permissions.publish.allow = vec!["{{bogus()}}".into()];
    assert!(apply_template(&t, &user, &acc)
        .unwrap_err()
        .contains("\"bogus()\" is not defined"));
    // Lists without placeholders are kept verbatim, even invalid entries.
    let mut t = UserPermissionLimits::default();
    t.permissions.subscribe.allow = vec!["a q".into()];
    assert_eq!(
        apply_template(&t, &user, &acc)
            .unwrap()
            .permissions
            .subscribe
            .allow,
        ["a q"]
    );
    // Case-insensitive operations, spaces inside the braces.
    let mut t = UserPermissionLimits::default();
    t.permissions.publish.allow = vec!["{{ NAME() }}.{{Subject()}}".into()];
    let out = apply_template(&t, &user, &acc).unwrap();
    assert_eq!(
        out.permissions.publish.allow,
        [format!("alice.{}", fx.user.public_key())]
    );
    // Expansion limit.
    let mut big = fx.user_claims();
    big.nats.generic.tags = (0..100).map(|i| format!("a:{i}")).collect();
    let mut t = UserPermissionLimits::default();
    t.permissions.publish.allow = vec!["{{tag(a)}}.{{tag(a)}}".into()];
    let e = apply_template(&t, &big, &acc).unwrap_err();
    assert!(e.contains("template expansion exceeds limit"), "{e}");
    big.nats.generic.tags.truncate(64);
    assert_eq!(
        apply_template(&t, &big, &acc)
            .unwrap()
            .permissions
            .publish
            .allow
            .len(),
        4096
    );
}

#[test]
fn placeholders_are_found_like_the_regex() {
    assert_eq!(mustaches("a.{{name()}}.{{ x }}"), ["{{name()}}", "{{ x }}"]);
    assert_eq!(mustaches("{{{name()}}"), ["{{{name()}}"]);
    assert!(mustaches("{{}}").is_empty());
    assert!(mustaches("{{a}").is_empty());
    assert!(mustaches("{{a}x}}").is_empty());
    assert!(mustaches("é{{").is_empty());
    assert!(eq_fold("\u{17F}ubject()", "subject()"));
    assert!(!eq_fold("subjects()", "subject()"));
    assert!(is_valid_subject("a.*.>"));
    assert!(!is_valid_subject("a.>.b"));
    assert!(!is_valid_subject("a..b"));
    assert!(!is_valid_subject("a. "));
}

#[test]
fn no_and_bad_user_jwt() {
    let fx = Fx::new();
    assert_eq!(fx.auth("").unwrap_err(), Refusal::NoUserJwt);
    assert!(matches!(
        fx.auth("garbage").unwrap_err(),
        Refusal::BadUserJwt(JwtError::Chunks(1))
    ));
    // An account JWT is not a user JWT.
    let acc_jwt = fx.accounts[&fx.acc.public_key()].clone();
    assert!(matches!(
        fx.auth(&acc_jwt).unwrap_err(),
        Refusal::BadUserJwt(JwtError::WrongKind { .. })
    ));
    // Signed by an operator: not a kind of key that issues users.
    let u = encode(&fx.user_claims(), &fx.op);
    assert!(matches!(
        fx.auth(&u).unwrap_err(),
        Refusal::BadUserJwt(JwtError::IssuerKind { .. })
    ));
    // Tampered.
    let good = fx.user_jwt(|_| {});
    // Change the signature's first character: it carries six full bits, so
    // the signature always changes (the last one carries padding bits, and
    // may already be the replacement).
    let at = good.rfind('.').unwrap() + 1;
    let swap = if &good[at..at + 1] == "A" { "B" } else { "A" };
    let bad = format!("{}{swap}{}", &good[..at], &good[at + 1..]);
    let err = fx.auth(&bad).unwrap_err();
    assert!(matches!(err, Refusal::BadUserJwt(_)), "{err}");
    assert!(err.to_string().starts_with("user JWT not valid"));
}

#[test]
fn user_jwt_times_and_validation() {
    let fx = Fx::new();
    let user = fx.user.public_key();
    let err = fx
        .auth(&fx.user_jwt(|u| u.common.exp = NOW - 1))
        .unwrap_err();
    assert_eq!(
        err,
        Refusal::UserJwtExpired {
            user: user.clone(),
            exp: NOW - 1
        }
    );
    assert!(err.to_string().contains(&user) && err.to_string().contains("2023-11-14T22:13:19Z"));
    // Valid through the second of exp; the connection then expires at once.
    let ok = fx.auth(&fx.user_jwt(|u| u.common.exp = NOW)).unwrap();
    assert_eq!(ok.expires_at, Some(NOW));
    let ok = fx.auth(&fx.user_jwt(|u| u.common.exp = NOW + 60)).unwrap();
    assert_eq!(ok.expires_at, Some(NOW + 60));
    // A negative exp never "expires" in validation, but the connection's
    // expiry timer fires at once (nats-server: setExpiration with exp <= now).
    let ok = fx.auth(&fx.user_jwt(|u| u.common.exp = -5)).unwrap();
    assert_eq!(ok.expires_at, Some(NOW));
    let err = fx
        .auth(&fx.user_jwt(|u| u.common.nbf = NOW + 1))
        .unwrap_err();
    assert_eq!(
        err,
        Refusal::UserJwtNotYetValid {
            user: user.clone(),
            nbf: NOW + 1
        }
    );
    fx.auth(&fx.user_jwt(|u| u.common.nbf = NOW)).unwrap();
    let err = fx
        .auth(&fx.user_jwt(|u| u.nats.permission_limits.limits.user.src = vec!["nope".into()]))
        .unwrap_err();
    assert!(
        matches!(err, Refusal::UserJwtInvalid { ref errors, .. } if errors[0].contains("invalid cidr")),
        "{err}"
    );
    let err = fx
        .auth(&fx.user_jwt(|u| u.nats.permission_limits.proxy_required = true))
        .unwrap_err();
    assert_eq!(err, Refusal::ProxyRequired { user: user.clone() });
    let jwt = fx.user_jwt(|u| u.nats.permission_limits.proxy_required = true);
    fx.auth_with(&jwt, &fx.sig(), |a| a.via_trusted_proxy = true)
        .unwrap();
}

#[test]
fn account_lookup_and_trust() {
    let mut fx = Fx::new();
    let user = fx.user.public_key();
    let acc = fx.acc.public_key();
    let jwt = fx.user_jwt(|_| {});

    let empty: HashMap<String, String> = HashMap::new();
    let at = ConnectAttempt::new(&jwt, fx.nonce.as_bytes(), "", NOW);
    assert_eq!(
        authorize_with_zones(&fx.trusted, &empty, &at, &Utc).unwrap_err(),
        Refusal::UnknownAccount {
            user: user.clone(),
            account: acc.clone()
        }
    );
    // issuer_account that is not an account key is never looked up.
    let lookups = std::cell::Cell::new(0);
    let counting = |_: &str| {
        lookups.set(lookups.get() + 1);
        None
    };
    let odd = fx.user_jwt(|u| u.nats.issuer_account = fx.op.public_key());
    let at = ConnectAttempt::new(&odd, fx.nonce.as_bytes(), "", NOW);
    let err = authorize_with_zones(&fx.trusted, &counting, &at, &Utc).unwrap_err();
    // (issuer_account must be an account key: a validation error first)
    assert!(matches!(err, Refusal::UserJwtInvalid { .. }), "{err}");
    assert_eq!(lookups.get(), 0);

    // Signed by an untrusted operator.
    let stranger = KeyPair::new_operator();
    let foreign = encode(&fx.account, &stranger);
    fx.accounts.insert(acc.clone(), foreign);
    let err = fx.auth(&jwt).unwrap_err();
    assert_eq!(
        err,
        Refusal::Account {
            user: user.clone(),
            account: acc.clone(),
            error: AccountError::NotTrusted {
                issuer: stranger.public_key()
            }
        }
    );
    assert!(err.to_string().contains(&stranger.public_key()));
    // Self-signed account.
    fx.accounts
        .insert(acc.clone(), encode(&fx.account, &fx.acc));
    assert!(matches!(
        fx.auth(&jwt).unwrap_err(),
        Refusal::Account {
            error: AccountError::NotTrusted { .. },
            ..
        }
    ));
    // Signed by the operator's own key: trusted.
    fx.accounts.insert(acc.clone(), encode(&fx.account, &fx.op));
    fx.auth(&jwt).unwrap();
    // The resolver returned another account's JWT.
    let other = AccountClaims::new(&KeyPair::new_account().public_key());
    fx.accounts.insert(acc.clone(), encode(&other, &fx.op));
    assert!(matches!(
        fx.auth(&jwt).unwrap_err(),
        Refusal::Account {
            error: AccountError::SubjectMismatch { .. },
            ..
        }
    ));
    fx.accounts.insert(acc.clone(), "junk".into());
    assert!(matches!(
        fx.auth(&jwt).unwrap_err(),
        Refusal::Account {
            error: AccountError::Malformed(_),
            ..
        }
    ));
    // Expired at exactly now (nats-server's account timer uses exp <= now).
    fx.publish_account(|a| a.common.exp = NOW);
    assert!(matches!(
        fx.auth(&jwt).unwrap_err(),
        Refusal::Account {
            error: AccountError::Expired { exp: NOW },
            ..
        }
    ));
    fx.publish_account(|a| a.common.exp = NOW + 1);
    fx.auth(&jwt).unwrap();
    fx.publish_account(|a| a.common.nbf = NOW + 5);
    assert!(matches!(
        fx.auth(&jwt).unwrap_err(),
        Refusal::Account {
            error: AccountError::NotYetValid { .. },
            ..
        }
    ));
    fx.publish_account(|a| a.nats.signing_keys.add("bogus"));
    assert!(matches!(
        fx.auth(&jwt).unwrap_err(),
        Refusal::Account {
            error: AccountError::Invalid(_),
            ..
        }
    ));
}

#[test]
fn pinned_accounts() {
    let mut fx = Fx::new();
    let jwt = fx.user_jwt(|_| {});
    fx.trusted
        .pin_accounts([KeyPair::new_account().public_key()]);
    assert!(matches!(
        fx.auth(&jwt).unwrap_err(),
        Refusal::AccountNotPinned { .. }
    ));
    fx.trusted.pin_accounts([fx.acc.public_key()]);
    fx.auth(&jwt).unwrap();
}

#[test]
fn unknown_issuer() {
    let fx = Fx::new();
    let rogue = KeyPair::new_account();
    let mut u = fx.user_claims();
    u.nats.issuer_account = fx.acc.public_key();
    let err = fx.auth(&encode(&u, &rogue)).unwrap_err();
    assert_eq!(
        err,
        Refusal::UnknownIssuer {
            user: fx.user.public_key(),
            account: fx.acc.public_key(),
            issuer: rogue.public_key(),
            strict: false
        }
    );
    assert!(err.to_string().contains(&rogue.public_key()));
}

#[test]
fn strict_signing_key_usage() {
    let mut fx = Fx::with_operator(|o| o.nats.strict_signing_key_usage = true);
    assert!(!fx.trusted.is_trusted_issuer(&fx.op.public_key()));
    assert!(fx.trusted.is_trusted_issuer(&fx.op_sk.public_key()));
    // The account is signed with the operator signing key (strict), so the
    // account key itself may not sign users...
    let err = fx.auth(&fx.user_jwt(|_| {})).unwrap_err();
    assert!(
        matches!(err, Refusal::UnknownIssuer { strict: true, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("strict"));
    // ...but its signing keys may.
    let mut u = fx.user_claims();
    u.nats.issuer_account = fx.acc.public_key();
    fx.auth(&encode(&u, &fx.acc_sk)).unwrap();
    // Accounts signed with the operator key are not trusted.
    fx.accounts
        .insert(fx.acc.public_key(), encode(&fx.account, &fx.op));
    assert!(matches!(
        fx.auth(&encode(&u, &fx.acc_sk)).unwrap_err(),
        Refusal::Account {
            error: AccountError::NotTrusted { .. },
            ..
        }
    ));
}

#[test]
fn bearer_tokens() {
    let mut fx = Fx::new();
    let jwt = fx.user_jwt(|u| u.nats.permission_limits.bearer_token = true);
    fx.auth_with(&jwt, "", |_| {}).unwrap();
    fx.auth_with(&jwt, "garbage!", |_| {}).unwrap();
    fx.publish_account(|a| a.nats.limits.account.disallow_bearer = true);
    let err = fx.auth_with(&jwt, "", |_| {}).unwrap_err();
    assert!(matches!(err, Refusal::BearerNotAllowed { .. }), "{err}");
    // Non-bearer users are unaffected.
    fx.auth(&fx.user_jwt(|_| {})).unwrap();
}

#[test]
fn nonce_signatures() {
    let fx = Fx::new();
    let jwt = fx.user_jwt(|_| {});
    let user = fx.user.public_key();
    let refusal = |sig: &str| fx.auth_with(&jwt, sig, |_| {}).unwrap_err();
    assert_eq!(
        refusal(""),
        Refusal::Signature {
            user: user.clone(),
            error: SigError::Missing
        }
    );
    assert_eq!(
        refusal("%%"),
        Refusal::Signature {
            user: user.clone(),
            error: SigError::NotBase64
        }
    );
    let other = sign_nonce(&KeyPair::new_user(), fx.nonce.as_bytes()).unwrap();
    let err = refusal(&other);
    assert_eq!(
        err,
        Refusal::Signature {
            user: user.clone(),
            error: SigError::Mismatch
        }
    );
    assert!(err.to_string().contains(&user));
    let stale = sign_nonce(&fx.user, b"previous-nonce!").unwrap();
    assert_eq!(
        refusal(&stale),
        Refusal::Signature {
            user,
            error: SigError::Mismatch
        }
    );
}

#[test]
fn connection_types() {
    let fx = Fx::new();
    let set = |types: &[&str]| {
        fx.user_jwt(|u| {
            u.nats.permission_limits.allowed_connection_types =
                types.iter().map(|s| s.to_string()).collect()
        })
    };
    let jwt = set(&["websocket"]);
    let err = fx.auth(&jwt).unwrap_err();
    assert!(matches!(
        err,
        Refusal::ConnectionTypeNotAllowed {
            connection_type: ConnectionType::Standard,
            ..
        }
    ));
    fx.auth_with(&jwt, &fx.sig(), |a| {
        a.connection_type = ConnectionType::Websocket
    })
    .unwrap();
    // Unknown names are ignored while a known one remains.
    fx.auth(&set(&["STANDARD", "FUTURE"])).unwrap();
    let err = fx.auth(&set(&["FUTURE"])).unwrap_err();
    assert!(
        matches!(err, Refusal::UnknownConnectionTypes { .. }),
        "{err}"
    );
    let leaf = set(&["LEAFNODE"]);
    fx.auth_with(&leaf, &fx.sig(), |a| {
        a.connection_type = ConnectionType::Leafnode
    })
    .unwrap();
    assert_eq!(
        ConnectionType::parse("mqtt_ws"),
        Some(ConnectionType::MqttWs)
    );
    assert_eq!(ConnectionType::parse("nope"), None);
}

#[test]
fn revocations() {
    let mut fx = Fx::new();
    let user = fx.user.public_key();
    let jwt = fx.user_jwt(|_| {}); // iat = NOW - 10
    fx.publish_account(|a| {
        a.nats.revocations.insert(user.clone(), NOW - 10);
    });
    let err = fx.auth(&jwt).unwrap_err();
    assert_eq!(
        err,
        Refusal::Revoked {
            user: user.clone(),
            account: fx.acc.public_key(),
            revoked_at: NOW - 10,
            issued_at: NOW - 10
        }
    );
    assert!(err.to_string().contains("revoked"));
    // A JWT issued after the revocation is fine.
    fx.auth(&fx.user_jwt(|u| u.common.iat = NOW - 9)).unwrap();
    fx.publish_account(|a| {
        a.nats.revocations.insert("*".into(), NOW - 5);
    });
    assert!(
        matches!(fx.auth(&fx.user_jwt(|u| u.common.iat = NOW - 9)).unwrap_err(), Refusal::Revoked { revoked_at, .. } if revoked_at == NOW - 5)
    );
    fx.auth(&fx.user_jwt(|u| u.common.iat = NOW - 4)).unwrap();
    // Another user's revocation does not matter.
    fx.publish_account(|a| {
        a.nats.revocations.clear();
        a.nats
            .revocations
            .insert(KeyPair::new_user().public_key(), NOW);
    });
    fx.auth(&jwt).unwrap();
}

#[test]
fn source_networks() {
    let fx = Fx::new();
    let jwt = fx.user_jwt(|u| {
        u.nats.permission_limits.limits.user.src = vec!["192.168.0.0/16".into(), "::1/128".into()]
    });
    let from = |ip: Option<&str>| {
        fx.auth_with(&jwt, &fx.sig(), |a| {
            a.client_ip = ip.map(|i| i.parse().unwrap())
        })
    };
    from(Some("192.168.4.5")).unwrap();
    from(Some("::1")).unwrap();
    from(Some("::ffff:192.168.4.5")).unwrap();
    let err = from(Some("10.0.0.1")).unwrap_err();
    assert!(matches!(err, Refusal::SourceNotAllowed { .. }));
    assert!(err.to_string().contains("10.0.0.1"));
    assert!(matches!(
        from(None).unwrap_err(),
        Refusal::SourceNotAllowed { ip: None, .. }
    ));
}

#[test]
fn connect_times() {
    let fx = Fx::new();
    // NOW is 22:13:20 UTC.
    let window = |start: &str, end: &str| {
        let (s, e) = (start.to_string(), end.to_string());
        fx.user_jwt(move |u| {
            u.nats.permission_limits.limits.user.times = vec![TimeRange { start: s, end: e }]
        })
    };
    let ok = fx.auth(&window("22:00:00", "23:00:00")).unwrap();
    assert_eq!(ok.expires_at, Some(NOW + 46 * 60 + 40));
    let err = fx.auth(&window("08:00:00", "17:00:00")).unwrap_err();
    assert!(matches!(err, Refusal::OutsideConnectTimes { .. }));
    assert!(err.to_string().contains("08:00:00-17:00:00 local time"));
    // Crossing midnight.
    let ok = fx.auth(&window("21:00:00", "02:00:00")).unwrap();
    assert_eq!(ok.expires_at, Some(NOW + 3 * 3600 + 46 * 60 + 40));
    assert!(fx.auth(&window("23:00:00", "02:00:00")).is_err());
    // The window end caps an earlier JWT expiry only when sooner.
    let jwt = fx.user_jwt(|u| {
        u.common.exp = NOW + 60;
        u.nats.permission_limits.limits.user.times = vec![TimeRange {
            start: "22:00:00".into(),
            end: "23:00:00".into(),
        }];
    });
    assert_eq!(fx.auth(&jwt).unwrap().expires_at, Some(NOW + 60));
    // In another zone: 22:13 UTC is 07:13 the next day at UTC+9.
    let jwt = fx.user_jwt(|u| {
        let l = &mut u.nats.permission_limits.limits.user;
        l.times = vec![TimeRange {
            start: "07:00:00".into(),
            end: "08:00:00".into(),
        }];
        l.locale = "Asia/Tokyo".into();
    });
    let at = ConnectAttempt::new(&jwt, fx.nonce.as_bytes(), "", NOW);
    let sig = fx.sig();
    let at = ConnectAttempt { sig: &sig, ..at };
    let ok = authorize_with_zones(&fx.trusted, &fx.accounts, &at, &FixedOffset(9 * 3600)).unwrap();
    assert_eq!(ok.expires_at, Some(NOW + 46 * 60 + 40));
    // Unknown zone: a validation error.
    assert!(matches!(
        authorize_with_zones(&fx.trusted, &fx.accounts, &at, &Utc).unwrap_err(),
        Refusal::UserJwtInvalid { .. }
    ));
    if std::path::Path::new("/usr/share/zoneinfo/Asia/Tokyo").exists() {
        authorize(&fx.trusted, &fx.accounts, &at).unwrap();
    }
}

#[test]
fn verify_account_on_its_own() {
    let fx = Fx::new();
    let jwt = &fx.accounts[&fx.acc.public_key()];
    let claims = fx.trusted.verify_account(jwt, NOW).unwrap();
    assert_eq!(claims.common.sub, fx.acc.public_key());
    assert!(fx
        .trusted
        .verify_account_for(&fx.acc.public_key(), jwt, NOW)
        .is_ok());
    assert!(matches!(
        fx.trusted
            .verify_account_for(&KeyPair::new_account().public_key(), jwt, NOW),
        Err(AccountError::SubjectMismatch { .. })
    ));
    let lookup = |k: &str| fx.accounts.get(k).cloned();
    let at = ConnectAttempt::new("", b"", "", NOW);
    assert_eq!(
        authorize(&fx.trusted, &lookup, &at).unwrap_err(),
        Refusal::NoUserJwt
    );
}

#[test]
fn operators_from_files_and_text() {
    let op = KeyPair::new_operator();
    let mut oc = OperatorClaims::new(&op.public_key());
    oc.nats.system_account = KeyPair::new_account().public_key();
    let jwt = encode(&oc, &op);
    let decorated =
        format!("-----BEGIN NATS OPERATOR JWT-----\n{jwt}\n------END NATS OPERATOR JWT------\n");
    let dir = std::env::temp_dir().join(format!("tern-peer-op-{}-{NOW}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("op.jwt");
    std::fs::write(&path, &decorated).unwrap();
    let (raw, claims) = load_operator_jwt(path.to_str().unwrap()).unwrap();
    assert_eq!(raw, jwt);
    assert_eq!(claims.common.sub, op.public_key());
    assert_eq!(load_operator_jwt(&jwt).unwrap().0, jwt);
    assert!(matches!(
        load_operator_jwt(dir.join("missing.jwt").to_str().unwrap()),
        Err(TrustError::Read { .. })
    ));
    std::fs::write(&path, "not a jwt").unwrap();
    assert!(matches!(
        load_operator_jwt(path.to_str().unwrap()),
        Err(TrustError::Jwt { .. })
    ));
    std::fs::remove_dir_all(&dir).unwrap();

    let t = TrustedOperators::new(&[decorated]).unwrap();
    assert_eq!(t.system_account(), Some(oc.nats.system_account.as_str()));
    assert_eq!(t.trusted_keys(), [op.public_key()]);
    assert_eq!(t.operators().len(), 1);
    // A user JWT is not an operator.
    let u = encode(
        &UserClaims::new(&KeyPair::new_user().public_key()),
        &KeyPair::new_account(),
    );
    assert!(matches!(
        TrustedOperators::new(&[u]),
        Err(TrustError::Jwt { .. })
    ));
    let none: [&str; 0] = [];
    assert_eq!(TrustedOperators::new(&none).unwrap_err(), TrustError::Empty);
    // Signing keys must be operator keys.
    let mut bad = OperatorClaims::new(&op.public_key());
    bad.nats
        .signing_keys
        .push(KeyPair::new_account().public_key());
    let err = TrustedOperators::new(&[encode(&bad, &op)]).unwrap_err();
    assert!(matches!(err, TrustError::BadKey { .. }), "{err}");
}

#[test]
fn accounts_with_an_auth_callout() {
    let mut fx = Fx::new();
    let me = fx.user.public_key();
    let other = KeyPair::new_user().public_key();
    fx.publish_account(|a| a.nats.authorization.auth_users = vec![other.clone()]);
    let err = fx.auth(&fx.user_jwt(|_| {})).unwrap_err();
    assert!(matches!(err, Refusal::AuthCallout { .. }), "{err}");
    // The callout's own users authenticate with their JWT as usual.
    fx.publish_account(|a| a.nats.authorization.auth_users = vec![other.clone(), me.clone()]);
    fx.auth(&fx.user_jwt(|_| {})).unwrap();
}

#[test]
fn refusal_lines_name_the_user() {
    let fx = Fx::new();
    let user = fx.user.public_key();
    let e = fx.auth(&fx.user_jwt(|u| u.common.exp = 1)).unwrap_err();
    assert_eq!(e.user(), Some(user.as_str()));
    assert!(e.to_string().starts_with(&format!("user {user}: ")), "{e}");
    assert_eq!(Refusal::NoUserJwt.user(), None);
}
