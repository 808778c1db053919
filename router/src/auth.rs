//! Who a connection is: the one place every door (client, and later leaf and
//! web) asks whether presented credentials pass, with nats-server's order of
//! checks, and why not when they do not.
//!
//! The order mirrors nats-server: operator mode (a user JWT) first, then an
//! nkey, then the users list (or the certificate with `verify_and_map`),
//! then the token, then the single user/password. `no_auth_user` stands in
//! for a client that presents nothing. Every refusal carries a reason for
//! the server log, since clients only ever see "Authorization Violation".

use std::fmt;
use std::sync::Arc;
use std::time::SystemTime;

use peer::cert_names::CertNames;

use crate::options::Auth;

/// Credentials as a client presented them in CONNECT.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Presented {
    pub user: Option<String>,
    pub pass: Option<String>,
    pub token: Option<String>,
    pub nkey: Option<String>,
    pub sig: Option<String>,
    pub jwt: Option<String>,
}

impl Presented {
    /// True when the client offered nothing that identifies it, which is
    /// when `no_auth_user` applies.
    fn is_anonymous(&self) -> bool {
        let empty = |s: &Option<String>| s.as_deref().unwrap_or("").is_empty();
        empty(&self.user) && empty(&self.pass) && empty(&self.token) && empty(&self.nkey)
    }
}

/// What the transport knows about the connection that bears on identity.
#[derive(Debug, Clone, Copy, Default)]
pub struct Context<'a> {
    /// The nonce this connection's INFO carried, if any.
    pub nonce: Option<&'a str>,
    /// Names from the verified client certificate, on a TLS connection.
    pub cert: Option<&'a CertNames>,
    /// `verify_and_map`: the certificate, not CONNECT, names the user.
    pub tls_map: bool,
    /// The client's address (JWT `src` limits).
    pub ip: Option<std::net::IpAddr>,
}

/// The identity a connection was granted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Identity {
    /// The configured user name (or mapped certificate name), for /connz
    /// `authorized_user` and logs.
    pub user: Option<String>,
    /// The user's public nkey (nkey users and JWT users).
    pub nkey: Option<String>,
    /// The account public key of a JWT user; `None` is the global account.
    pub account: Option<String>,
    /// When a JWT user's credentials stop being valid.
    pub expires: Option<SystemTime>,
    /// Limits from a user JWT (`subs`, `payload`; -1 is unlimited).
    pub max_subs: Option<i64>,
    pub max_payload: Option<i64>,
    /// Publish/subscribe rules (configured user or JWT), enforced by the
    /// client door.
    pub permissions: Option<Arc<Permissions>>,
}

/// What a user may publish and subscribe to: `permissions {}` of a
/// configured user, or a user JWT's `pub`/`sub` allow and deny lists.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Permissions {
    pub pub_allow: Vec<String>,
    pub pub_deny: Vec<String>,
    pub sub_allow: Vec<String>,
    pub sub_deny: Vec<String>,
    /// `allow_responses` (JWT `resp`): the user may publish to the reply
    /// subject of each request it receives, `max` times within `ttl`.
    pub responses: Option<ResponsePermission>,
}

/// How many replies a received request permits, and for how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResponsePermission {
    pub max: u32,
    pub ttl: std::time::Duration,
}

impl ResponsePermission {
    /// nats-server's defaults: one reply within two minutes; 0 means default.
    pub fn new(max: i64, ttl: std::time::Duration) -> Self {
        ResponsePermission {
            max: if max <= 0 {
                1
            } else {
                max.min(i64::from(u32::MAX)) as u32
            },
            ttl: if ttl.is_zero() {
                std::time::Duration::from_secs(120)
            } else {
                ttl
            },
        }
    }
}

impl Permissions {
    /// nats-server's rule: an allow list (when present) must match and no
    /// deny entry may.
    fn allows(allow: &[String], deny: &[String], subject: &[u8]) -> bool {
        let hit = |list: &[String]| {
            list.iter()
                .any(|p| crate::subject::subject_matches(p.as_bytes(), subject))
        };
        (allow.is_empty() || hit(allow)) && !hit(deny)
    }

    /// Whether the user may publish to `subject` by its publish rules (reply
    /// permits from `responses` are checked by the connection). With
    /// `responses` and no publish rules at all, only replies may be
    /// published, as nats-server rules.
    pub fn can_publish(&self, subject: &[u8]) -> bool {
        if self.responses.is_some() && self.pub_allow.is_empty() && self.pub_deny.is_empty() {
            return false;
        }
        Self::allows(&self.pub_allow, &self.pub_deny, subject)
    }

    /// Whether a message on `subject` must not reach this user through a
    /// wildcard subscription: it matches a subscribe deny entry (queue
    /// entries aside).
    pub fn denies_delivery(&self, subject: &[u8]) -> bool {
        self.sub_deny.iter().any(|entry| {
            !entry.contains(' ') && crate::subject::subject_matches(entry.as_bytes(), subject)
        })
    }

    /// Whether the user may subscribe to `subject` (its tokens, wildcards
    /// included, are matched as they are written, as nats-server does). An
    /// entry `"subject queue"` applies only to queue subscriptions whose
    /// group matches `queue`.
    pub fn can_subscribe(&self, subject: &[u8], queue: Option<&[u8]>) -> bool {
        let hit = |list: &[String]| {
            list.iter().any(|entry| {
                let (pattern, q) = match entry.split_once(' ') {
                    Some((p, q)) => (p, Some(q.trim())),
                    None => (entry.as_str(), None),
                };
                let subject_ok = crate::subject::subject_matches(pattern.as_bytes(), subject);
                match (q, queue) {
                    (None, _) => subject_ok,
                    (Some(qp), Some(qn)) => {
                        subject_ok && crate::subject::subject_matches(qp.as_bytes(), qn)
                    }
                    (Some(_), None) => false,
                }
            })
        };
        (self.sub_allow.is_empty() || hit(&self.sub_allow)) && !hit(&self.sub_deny)
    }
}

/// Why credentials were refused, written to the server log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub reason: String,
    /// The user was revoked by its account: a live connection is told
    /// "User Authentication Revoked" rather than "Authorization Violation".
    pub revoked: bool,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.reason)
    }
}

fn refuse<T>(why: impl Into<String>) -> Result<T, Refusal> {
    Err(Refusal {
        reason: why.into(),
        revoked: false,
    })
}

/// Decides whether `p` passes `auth`, in nats-server's order of checks.
pub fn authenticate(auth: &Auth, p: &Presented, cx: Context<'_>) -> Result<Identity, Refusal> {
    if !auth.required() {
        return Ok(Identity::default());
    }
    if let Some(trust) = &auth.operator {
        return crate::auth_jwt::authenticate(trust, p, cx);
    }
    let secret_ok = |configured: &str, given: &Option<String>| {
        peer::password::matches(configured, given.as_deref().unwrap_or(""))
    };
    let no_auth = auth.no_auth_user.as_deref().filter(|_| p.is_anonymous());

    // An nkey user: by the CONNECT nkey, or as the no_auth_user.
    let nkey = p
        .nkey
        .as_deref()
        .filter(|k| !k.is_empty())
        .or_else(|| no_auth.filter(|u| auth.nkeys.iter().any(|k| k.nkey == *u)));
    if !auth.nkeys.is_empty() {
        if let Some(key) = nkey {
            let Some(entry) = auth.nkeys.iter().find(|k| k.nkey == key) else {
                return refuse(format!("nkey {key} is not a configured user"));
            };
            if no_auth != Some(key) {
                let Some(sig) = p.sig.as_deref().filter(|s| !s.is_empty()) else {
                    return refuse(format!("nkey {key}: signature missing"));
                };
                let nonce = cx.nonce.unwrap_or("");
                if let Err(e) = peer::nonce::verify_signature(key, nonce.as_bytes(), sig) {
                    return refuse(format!("nkey {key}: {e}"));
                }
            }
            return Ok(Identity {
                nkey: Some(key.to_owned()),
                permissions: entry.permissions.clone(),
                ..Identity::default()
            });
        }
    }

    if !auth.users.is_empty() {
        if cx.tls_map {
            let Some(cert) = cx.cert else {
                return refuse("verify_and_map: no client certificate");
            };
            let names = auth.users.iter().map(|u| u.user.as_str());
            let Some(mapped) = cert.map_user(names) else {
                return refuse(format!(
                    "verify_and_map: certificate {:?} (emails {:?}, DNS {:?}) maps to no configured user",
                    cert.subject_string(),
                    cert.emails,
                    cert.dns
                ));
            };
            if let Some(u) = p.user.as_deref().filter(|u| !u.is_empty()) {
                tracing::warn!("User {u:?} found in connect proto, but user required from cert");
            }
            let permissions = auth
                .users
                .iter()
                .find(|u| u.user == mapped)
                .and_then(|u| u.permissions.clone());
            return Ok(Identity {
                user: Some(mapped),
                permissions,
                ..Identity::default()
            });
        }
        let wanted = match no_auth {
            Some(u) if auth.users.iter().any(|e| e.user == u) => Some(u),
            _ => p.user.as_deref().filter(|u| !u.is_empty()),
        };
        if let Some(name) = wanted {
            let Some(entry) = auth.users.iter().find(|e| e.user == name) else {
                return refuse(format!("user {name:?} is not a configured user"));
            };
            if no_auth == Some(name) {
                return Ok(Identity {
                    user: Some(name.to_owned()),
                    permissions: entry.permissions.clone(),
                    ..Identity::default()
                });
            }
            let configured = entry.password.as_deref().unwrap_or("");
            if configured.is_empty() && auth.tls_map_users {
                return refuse(format!("user {name:?} requires a client certificate"));
            }
            if !secret_ok(configured, &p.pass) {
                return refuse(format!("user {name:?}: wrong password"));
            }
            return Ok(Identity {
                user: Some(name.to_owned()),
                permissions: entry.permissions.clone(),
                ..Identity::default()
            });
        }
    }

    if let Some(t) = &auth.token {
        if secret_ok(t, &p.token) {
            return Ok(Identity::default());
        }
        return refuse(if p.token.is_some() {
            "wrong token"
        } else {
            "no token presented"
        });
    }
    if let (Some(u), Some(pw)) = (&auth.user, &auth.password) {
        if p.user.as_deref() != Some(u.as_str()) {
            return refuse(match p.user.as_deref() {
                Some(given) => format!("user {given:?} is not the configured user"),
                None => "no user presented".to_owned(),
            });
        }
        if secret_ok(pw, &p.pass) {
            return Ok(Identity {
                user: Some(u.clone()),
                ..Identity::default()
            });
        }
        return refuse(format!("user {u:?}: wrong password"));
    }
    refuse(if p.is_anonymous() {
        "no credentials presented"
    } else {
        "credentials match no configured user"
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::options::UserEntry;

    fn users(list: &[(&str, Option<&str>)]) -> Auth {
        Auth {
            users: list
                .iter()
                .map(|(u, p)| UserEntry {
                    user: u.to_string(),
                    password: p.map(str::to_owned),
                    permissions: None,
                })
                .collect(),
            ..Auth::default()
        }
    }

    fn up(u: &str, p: &str) -> Presented {
        Presented {
            user: Some(u.into()),
            pass: Some(p.into()),
            ..Presented::default()
        }
    }

    #[test]
    fn open_server_lets_anyone_in() {
        assert!(authenticate(&Auth::default(), &Presented::default(), Context::default()).is_ok());
    }

    #[test]
    fn users_list_checks_password() {
        let a = users(&[("alice", Some("pw"))]);
        let ok = authenticate(&a, &up("alice", "pw"), Context::default()).unwrap();
        assert_eq!(ok.user.as_deref(), Some("alice"));
        let e = authenticate(&a, &up("alice", "no"), Context::default()).unwrap_err();
        assert!(e.reason.contains("wrong password"), "{e}");
        let e = authenticate(&a, &up("bob", "pw"), Context::default()).unwrap_err();
        assert!(e.reason.contains("not a configured user"), "{e}");
        assert!(authenticate(&a, &Presented::default(), Context::default()).is_err());
    }

    #[test]
    fn no_auth_user_stands_in_for_anonymous_clients_only() {
        let mut a = users(&[("alice", Some("pw")), ("guest", Some("x"))]);
        a.no_auth_user = Some("guest".into());
        let id = authenticate(&a, &Presented::default(), Context::default()).unwrap();
        assert_eq!(id.user.as_deref(), Some("guest"));
        assert!(authenticate(&a, &up("alice", "bad"), Context::default()).is_err());
        assert!(authenticate(&a, &up("alice", "pw"), Context::default()).is_ok());
    }

    #[test]
    fn nkey_user_needs_a_valid_signature() {
        let kp = peer::KeyPair::new_user();
        let a = Auth {
            nkeys: vec![crate::options::NkeyUser {
                nkey: kp.public_key(),
                permissions: None,
            }],
            ..Auth::default()
        };
        let nonce = peer::nonce::new_nonce();
        let sig = peer::nonce::sign_nonce(&kp, nonce.as_bytes()).unwrap();
        let cx = Context {
            nonce: Some(&nonce),
            ..Context::default()
        };
        let p = Presented {
            nkey: Some(kp.public_key()),
            sig: Some(sig.clone()),
            ..Presented::default()
        };
        assert_eq!(
            authenticate(&a, &p, cx).unwrap().nkey,
            Some(kp.public_key())
        );
        let missing = Presented {
            sig: None,
            ..p.clone()
        };
        assert!(authenticate(&a, &missing, cx)
            .unwrap_err()
            .reason
            .contains("signature missing"));
        let other = peer::KeyPair::new_user();
        let stranger = Presented {
            nkey: Some(other.public_key()),
            ..p.clone()
        };
        assert!(authenticate(&a, &stranger, cx).is_err());
        let other_nonce = Context {
            nonce: Some("somethingelse"),
            ..cx
        };
        assert!(authenticate(&a, &p, other_nonce).is_err());
    }

    #[test]
    fn token_and_single_user() {
        let a = Auth {
            token: Some("t0k".into()),
            ..Auth::default()
        };
        let p = Presented {
            token: Some("t0k".into()),
            ..Presented::default()
        };
        assert!(authenticate(&a, &p, Context::default()).is_ok());
        assert!(authenticate(&a, &Presented::default(), Context::default()).is_err());
        let a = Auth {
            user: Some("u".into()),
            password: Some("p".into()),
            ..Auth::default()
        };
        assert!(authenticate(&a, &up("u", "p"), Context::default()).is_ok());
        assert!(authenticate(&a, &up("u", "x"), Context::default()).is_err());
    }
}
