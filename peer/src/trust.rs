//! Operator mode: whether a client presenting a user JWT may connect, and
//! as whom, decided the way nats-server v2 decides it.
//!
//! The chain is operator -> account -> user. The server trusts operator
//! JWTs from its config; an account JWT (found by the account resolver) is
//! trusted when signed by a trusted operator key (the operator's own key,
//! unless the operator demands strict signing-key usage, or one of its
//! signing keys); a user JWT is trusted when signed by its account's key
//! (again not under strict usage) or one of the account's signing keys,
//! and the client proves it holds the user's seed by signing the INFO nonce
//! (bearer tokens skip that, unless the account forbids bearer tokens).
//!
//! Every check runs in nats-server's order (`processClientOrLeafAuthentication`
//! in server/auth.go), and each failure is its own [`Refusal`] whose text
//! names the keys involved: nats-server only tells the client
//! "Authorization Violation" and logs the reason at debug level.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::net::IpAddr;

use crate::jwt::{
    cidr_contains, decode_account, decode_user, is_account_key, is_operator_key, parse_cidr,
    parse_decorated_jwt, read_operator_jwt as read_operator_text, AccountClaims, JwtError,
    OperatorClaims, TimeRange, UserClaims, UserPermissionLimits,
};
use crate::nonce::{verify_signature, SigError};
use crate::zone::{parse_clock, rfc3339, SystemZones, Zones};

/// Upper bound on subjects one template entry list may expand to (nats-server's
/// `maxPermTemplateSubjectExpansions`).
pub const MAX_TEMPLATE_EXPANSIONS: usize = 4096;

/// An operator JWT that could not be trusted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TrustError {
    /// The `operator` value is neither a readable file nor an inline JWT.
    Read {
        /// The configured value.
        source: String,
        /// The I/O error.
        error: String,
    },
    /// Not a valid operator JWT.
    Jwt {
        /// The configured value (path or start of the JWT).
        source: String,
        /// Why.
        error: JwtError,
    },
    /// A key it names is not an operator public key.
    BadKey {
        /// The key.
        key: String,
    },
    /// No operator at all.
    Empty,
}

impl fmt::Display for TrustError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TrustError::Read { source, error } => {
                write!(f, "error parsing operator JWT: {source}: {error}")
            }
            TrustError::Jwt { source, error } => {
                write!(f, "error parsing operator JWT {source}: {error}")
            }
            TrustError::BadKey { key } => write!(
                f,
                "trusted Keys {key:?} are required to be a valid public operator nkey"
            ),
            TrustError::Empty => f.write_str("operator mode needs at least one operator JWT"),
        }
    }
}

impl std::error::Error for TrustError {}

/// Reads the value of nats-server's `operator` option: a path to a
/// (possibly decorated) operator JWT file, or, when no such file can be
/// read and the value starts with `eyJ`, the JWT itself. Returns the raw
/// JWT and its claims.
pub fn load_operator_jwt(path_or_jwt: &str) -> Result<(String, OperatorClaims), TrustError> {
    let text = match std::fs::read_to_string(path_or_jwt) {
        Ok(text) => text,
        Err(_) if path_or_jwt.starts_with("eyJ") => path_or_jwt.to_string(),
        Err(e) => {
            return Err(TrustError::Read {
                source: path_or_jwt.into(),
                error: e.to_string(),
            })
        }
    };
    read_operator_text(&text).map_err(|error| TrustError::Jwt {
        source: short(path_or_jwt),
        error,
    })
}

fn short(s: &str) -> String {
    if s.len() > 40 && s.is_char_boundary(40) {
        format!("{}...", &s[..40])
    } else {
        s.to_string()
    }
}

/// The trusted operators and the keys they vouch with.
#[derive(Debug, Clone)]
pub struct TrustedOperators {
    operators: Vec<OperatorClaims>,
    trusted_keys: Vec<String>,
    strict_keys: HashSet<String>,
    pinned: Option<HashSet<String>>,
}

impl TrustedOperators {
    /// Trust the given operator JWTs (raw or decorated text; see
    /// [`load_operator_jwt`] for files). Each must decode and verify; its
    /// expiry is not checked, as in nats-server.
    pub fn new<S: AsRef<str>>(jwts: &[S]) -> Result<Self, TrustError> {
        let mut ops = Vec::with_capacity(jwts.len());
        for j in jwts {
            let text = j.as_ref();
            let (_, claims) = read_operator_text(text).map_err(|error| TrustError::Jwt {
                source: short(parse_decorated_jwt(text).trim()),
                error,
            })?;
            ops.push(claims);
        }
        Self::from_claims(ops)
    }

    /// Trust already decoded operator claims (e.g. from [`load_operator_jwt`]).
    /// The trusted keys are each operator's key (unless it demands strict
    /// signing-key usage) and its signing keys; all must be operator keys.
    pub fn from_claims(operators: Vec<OperatorClaims>) -> Result<Self, TrustError> {
        if operators.is_empty() {
            return Err(TrustError::Empty);
        }
        let mut trusted_keys = Vec::new();
        let mut strict_keys = HashSet::new();
        for op in &operators {
            if !op.nats.strict_signing_key_usage {
                trusted_keys.push(op.common.sub.clone());
            } else {
                strict_keys.extend(op.nats.signing_keys.iter().cloned());
            }
            trusted_keys.extend(op.nats.signing_keys.iter().cloned());
        }
        if let Some(bad) = trusted_keys.iter().find(|k| !is_operator_key(k)) {
            return Err(TrustError::BadKey { key: bad.clone() });
        }
        Ok(TrustedOperators {
            operators,
            trusted_keys,
            strict_keys,
            pinned: None,
        })
    }

    /// Only these accounts may have users connect (nats-server's resolver
    /// `pinned_accounts`); the system account is always added.
    pub fn pin_accounts<I: IntoIterator<Item = String>>(&mut self, accounts: I) {
        let mut set: HashSet<String> = accounts.into_iter().collect();
        if let Some(sys) = self.system_account() {
            set.insert(sys.to_string());
        }
        self.pinned = Some(set);
    }

    /// The operators, in configuration order.
    pub fn operators(&self) -> &[OperatorClaims] {
        &self.operators
    }

    /// Keys whose signature makes an account JWT trusted.
    pub fn trusted_keys(&self) -> &[String] {
        &self.trusted_keys
    }

    /// Whether `key` may sign account JWTs.
    pub fn is_trusted_issuer(&self, key: &str) -> bool {
        self.trusted_keys.iter().any(|k| k == key)
    }

    /// The first operator's system account, which nats-server uses when the
    /// config names none.
    pub fn system_account(&self) -> Option<&str> {
        let sys = self.operators.first()?.nats.system_account.as_str();
        (!sys.is_empty()).then_some(sys)
    }

    /// Verifies an account JWT on its own, as when the resolver loads it:
    /// decodes, is signed by a trusted operator key, has no blocking
    /// validation error, has not expired and is valid already.
    pub fn verify_account(
        &self,
        account_jwt: &str,
        now: i64,
    ) -> Result<AccountClaims, AccountError> {
        let claims = decode_account(account_jwt).map_err(AccountError::Malformed)?;
        if !self.is_trusted_issuer(&claims.common.iss) {
            return Err(AccountError::NotTrusted {
                issuer: claims.common.iss,
            });
        }
        let vr = claims.validate(now);
        let errors = vr.errors();
        if !errors.is_empty() {
            return Err(AccountError::Invalid(errors));
        }
        // Fetching refuses `now > exp`; nats-server's expiry timer already
        // counts `exp <= now` as expired, and refuses users for it.
        if claims.common.exp > 0 && claims.common.exp <= now {
            return Err(AccountError::Expired {
                exp: claims.common.exp,
            });
        }
        if claims.common.nbf > 0 && claims.common.nbf > now {
            return Err(AccountError::NotYetValid {
                nbf: claims.common.nbf,
            });
        }
        Ok(claims)
    }

    /// [`verify_account`](Self::verify_account) for the JWT the resolver
    /// returned for `account`: its subject must be that account.
    pub fn verify_account_for(
        &self,
        account: &str,
        account_jwt: &str,
        now: i64,
    ) -> Result<AccountClaims, AccountError> {
        let claims = self.verify_account(account_jwt, now)?;
        if claims.common.sub != account {
            return Err(AccountError::SubjectMismatch {
                found: claims.common.sub,
            });
        }
        Ok(claims)
    }

    /// Whether `issuer` may sign users of `account`, and with which scope:
    /// `None` = may not; `Some(None)` = plain key; `Some(Some(_))` = scoped.
    /// The account's own key counts unless its issuer is a signing key of an
    /// operator with strict signing-key usage.
    pub fn user_signer<'a>(
        &self,
        account: &'a AccountClaims,
        issuer: &str,
    ) -> Option<Option<&'a crate::jwt::UserScope>> {
        if let Some(scope) = account.nats.signing_keys.get(issuer) {
            return Some(scope);
        }
        let strict = self.strict_keys.contains(&account.common.iss);
        (!strict && issuer == account.common.sub).then_some(None)
    }

    fn account_is_strict(&self, account: &AccountClaims) -> bool {
        self.strict_keys.contains(&account.common.iss)
    }
}

/// Why an account JWT is not usable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccountError {
    /// Does not decode as an account JWT.
    Malformed(JwtError),
    /// Not signed by a trusted operator key.
    NotTrusted {
        /// Who signed it.
        issuer: String,
    },
    /// The resolver returned a JWT for another account.
    SubjectMismatch {
        /// The JWT's subject.
        found: String,
    },
    /// Blocking validation errors.
    Invalid(Vec<String>),
    /// Expired.
    Expired {
        /// Its `exp`.
        exp: i64,
    },
    /// Not valid yet.
    NotYetValid {
        /// Its `nbf`.
        nbf: i64,
    },
}

impl fmt::Display for AccountError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AccountError::Malformed(e) => write!(f, "account JWT not valid: {e}"),
            AccountError::NotTrusted { issuer } => write!(
                f,
                "account JWT not signed by a trusted operator (issuer {issuer} is neither a \
                 trusted operator key nor one of its signing keys)"
            ),
            AccountError::SubjectMismatch { found } => {
                write!(f, "account resolver returned the JWT of account {found}")
            }
            AccountError::Invalid(errors) => {
                write!(f, "account JWT failed validation: {}", errors.join("; "))
            }
            AccountError::Expired { exp } => {
                write!(f, "account JWT expired at {} ({exp})", rfc3339(*exp))
            }
            AccountError::NotYetValid { nbf } => {
                write!(f, "account JWT not valid before {} ({nbf})", rfc3339(*nbf))
            }
        }
    }
}

impl std::error::Error for AccountError {}

/// Finds account JWTs by account public key (a MEMORY resolver's preload,
/// a directory resolver...). Closures `Fn(&str) -> Option<String>` and maps
/// from key to JWT implement it.
pub trait AccountLookup {
    /// The account's JWT, if the resolver has one.
    fn account_jwt(&self, account: &str) -> Option<String>;
}

impl<F: Fn(&str) -> Option<String>> AccountLookup for F {
    fn account_jwt(&self, account: &str) -> Option<String> {
        self(account)
    }
}

impl AccountLookup for HashMap<String, String> {
    fn account_jwt(&self, account: &str) -> Option<String> {
        self.get(account).cloned()
    }
}

impl AccountLookup for BTreeMap<String, String> {
    fn account_jwt(&self, account: &str) -> Option<String> {
        self.get(account).cloned()
    }
}

/// How the client connected, matched against `allowed_connection_types`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ConnectionType {
    /// Plain NATS client (TCP, TLS).
    Standard,
    /// Client over WebSocket.
    Websocket,
    /// Leaf node.
    Leafnode,
    /// Leaf node over WebSocket.
    LeafnodeWs,
    /// MQTT client.
    Mqtt,
    /// MQTT over WebSocket.
    MqttWs,
    /// In-process connection.
    InProcess,
}

impl ConnectionType {
    /// The name used in JWTs.
    pub fn as_str(self) -> &'static str {
        match self {
            ConnectionType::Standard => "STANDARD",
            ConnectionType::Websocket => "WEBSOCKET",
            ConnectionType::Leafnode => "LEAFNODE",
            ConnectionType::LeafnodeWs => "LEAFNODE_WS",
            ConnectionType::Mqtt => "MQTT",
            ConnectionType::MqttWs => "MQTT_WS",
            ConnectionType::InProcess => "IN_PROCESS",
        }
    }

    /// Parses a JWT name, case-insensitively as nats-server does.
    pub fn parse(name: &str) -> Option<Self> {
        let all = [
            ConnectionType::Standard,
            ConnectionType::Websocket,
            ConnectionType::Leafnode,
            ConnectionType::LeafnodeWs,
            ConnectionType::Mqtt,
            ConnectionType::MqttWs,
            ConnectionType::InProcess,
        ];
        let upper = name.to_uppercase();
        all.into_iter().find(|t| t.as_str() == upper)
    }
}

impl fmt::Display for ConnectionType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a client presented, and when.
#[derive(Debug, Clone)]
pub struct ConnectAttempt<'a> {
    /// CONNECT `jwt` ("" if absent).
    pub jwt: &'a str,
    /// The nonce sent in INFO, as the text's bytes.
    pub nonce: &'a [u8],
    /// CONNECT `sig` ("" if absent).
    pub sig: &'a str,
    /// How the client connected.
    pub connection_type: ConnectionType,
    /// The client's address, for `src` limits.
    pub client_ip: Option<IpAddr>,
    /// Now, Unix seconds.
    pub now: i64,
    /// Came through a trusted proxy (for `proxy_required` users).
    pub via_trusted_proxy: bool,
}

impl<'a> ConnectAttempt<'a> {
    /// A plain client connection without a known address or proxy.
    pub fn new(jwt: &'a str, nonce: &'a [u8], sig: &'a str, now: i64) -> Self {
        ConnectAttempt {
            jwt,
            nonce,
            sig,
            connection_type: ConnectionType::Standard,
            client_ip: None,
            now,
            via_trusted_proxy: false,
        }
    }
}

/// A user allowed in, with what nats-server would bind to the connection.
#[derive(Debug, Clone)]
pub struct AuthorizedUser {
    /// The user's public key (JWT `sub`).
    pub user_key: String,
    /// The account the connection belongs to.
    pub account_key: String,
    /// The user JWT's `name`.
    pub name: String,
    /// The account JWT's `name`.
    pub account_name: String,
    /// The signing key that issued the user, when `issuer_account` is set.
    pub signing_key: Option<String>,
    /// Whether that signing key is scoped (its template replaced the user's
    /// permissions and limits in `claims`).
    pub scoped: bool,
    /// The user claims, with a scoped key's template applied.
    pub claims: UserClaims,
    /// The account claims (limits, default permissions, revocations...).
    pub account: AccountClaims,
    /// When the connection must be closed with "User Authentication
    /// Expired": the user JWT's `exp` or the end of the current `times`
    /// window, whichever is first (Unix seconds).
    pub expires_at: Option<i64>,
}

impl AuthorizedUser {
    /// The permissions nats-server applies: the user's own, or, when the
    /// user JWT sets none, the account's `default_permissions` (`None` when
    /// neither sets any). nats-server then treats a `resp` with max 0 as 1
    /// and ttl 0 as two minutes, and a `resp` without publish allow as
    /// "publish only responses".
    pub fn permissions(&self) -> Option<&crate::jwt::Permissions> {
        let own = &self.claims.nats.permission_limits.permissions;
        if !own.is_empty() {
            return Some(own);
        }
        let default = &self.account.nats.default_permissions;
        (!default.is_empty()).then_some(default)
    }
}

/// Why a JWT user was refused. `Display` is a log line naming the keys
/// involved; the client itself only gets "Authorization Violation".
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// Operator mode needs a user JWT and CONNECT carried none.
    NoUserJwt,
    /// CONNECT `jwt` is not a valid user JWT (shape, signature, issuer kind).
    BadUserJwt(JwtError),
    /// The user may only connect through a trusted proxy.
    ProxyRequired {
        /// User key.
        user: String,
    },
    /// The user JWT has blocking validation errors.
    UserJwtInvalid {
        /// User key.
        user: String,
        /// The errors.
        errors: Vec<String>,
    },
    /// The user JWT has expired.
    UserJwtExpired {
        /// User key.
        user: String,
        /// Its `exp`.
        exp: i64,
    },
    /// The user JWT is not valid yet.
    UserJwtNotYetValid {
        /// User key.
        user: String,
        /// Its `nbf`.
        nbf: i64,
    },
    /// The account is not among the resolver's pinned accounts.
    AccountNotPinned {
        /// User key.
        user: String,
        /// Account key.
        account: String,
    },
    /// The resolver has no JWT for the account (or the key is not an
    /// account key).
    UnknownAccount {
        /// User key.
        user: String,
        /// The account key looked up.
        account: String,
    },
    /// The account's JWT is not usable.
    Account {
        /// User key.
        user: String,
        /// Account key.
        account: String,
        /// Why.
        error: AccountError,
    },
    /// The user JWT was signed by a key that is neither the account key nor
    /// one of its signing keys.
    UnknownIssuer {
        /// User key.
        user: String,
        /// Account key.
        account: String,
        /// The JWT's `iss`.
        issuer: String,
        /// The account key itself may not sign users (strict operator).
        strict: bool,
    },
    /// A user signed with a scoped key sets permissions or limits itself.
    ScopedUserHasPermissions {
        /// User key.
        user: String,
        /// The scoped signing key.
        signing_key: String,
    },
    /// The scoped key's template could not be applied to this user.
    Template {
        /// User key.
        user: String,
        /// The scoped signing key.
        signing_key: String,
        /// Why.
        error: String,
    },
    /// A bearer token user, but the account disallows bearer tokens.
    BearerNotAllowed {
        /// User key.
        user: String,
        /// Account key.
        account: String,
    },
    /// `allowed_connection_types` names only types unknown to the server.
    UnknownConnectionTypes {
        /// User key.
        user: String,
        /// The unknown names.
        types: Vec<String>,
    },
    /// This kind of connection is not in `allowed_connection_types`.
    ConnectionTypeNotAllowed {
        /// User key.
        user: String,
        /// How the client connected.
        connection_type: ConnectionType,
        /// What the JWT allows.
        allowed: Vec<String>,
    },
    /// The nonce signature is missing or wrong.
    Signature {
        /// User key.
        user: String,
        /// Why.
        error: SigError,
    },
    /// The account revoked this user (or all users) at or after the JWT's
    /// `iat`.
    Revoked {
        /// User key.
        user: String,
        /// Account key.
        account: String,
        /// The revocation time.
        revoked_at: i64,
        /// The JWT's `iat`.
        issued_at: i64,
    },
    /// The client address is outside the JWT's `src` networks.
    SourceNotAllowed {
        /// User key.
        user: String,
        /// The client address, if known.
        ip: Option<IpAddr>,
        /// The allowed networks.
        src: Vec<String>,
    },
    /// The account delegates authentication to an auth callout service
    /// (`authorization.auth_users` set) and this user is not one of the
    /// callout's own users: nats-server would ask the callout, which Tern
    /// does not support.
    AuthCallout {
        /// User key.
        user: String,
        /// Account key.
        account: String,
    },
    /// Now is outside every `times` window.
    OutsideConnectTimes {
        /// User key.
        user: String,
        /// The windows.
        times: Vec<TimeRange>,
        /// Their zone ("" = local).
        location: String,
    },
}

impl Refusal {
    /// The user key concerned, when the JWT got far enough to name one.
    pub fn user(&self) -> Option<&str> {
        match self {
            Refusal::NoUserJwt | Refusal::BadUserJwt(_) => None,
            Refusal::ProxyRequired { user }
            | Refusal::UserJwtInvalid { user, .. }
            | Refusal::UserJwtExpired { user, .. }
            | Refusal::UserJwtNotYetValid { user, .. }
            | Refusal::AccountNotPinned { user, .. }
            | Refusal::UnknownAccount { user, .. }
            | Refusal::Account { user, .. }
            | Refusal::UnknownIssuer { user, .. }
            | Refusal::ScopedUserHasPermissions { user, .. }
            | Refusal::Template { user, .. }
            | Refusal::BearerNotAllowed { user, .. }
            | Refusal::UnknownConnectionTypes { user, .. }
            | Refusal::ConnectionTypeNotAllowed { user, .. }
            | Refusal::Signature { user, .. }
            | Refusal::Revoked { user, .. }
            | Refusal::SourceNotAllowed { user, .. }
            | Refusal::AuthCallout { user, .. }
            | Refusal::OutsideConnectTimes { user, .. } => Some(user),
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::NoUserJwt => f.write_str(
                "authentication requires a user JWT (operator mode): CONNECT has no `jwt`",
            ),
            Refusal::BadUserJwt(e) => write!(f, "user JWT not valid: {e}"),
            Refusal::ProxyRequired { user } => write!(
                f,
                "user {user}: JWT requires connecting through a trusted proxy (proxy_required)"
            ),
            Refusal::UserJwtInvalid { user, errors } => {
                write!(f, "user {user}: JWT failed validation: {}", errors.join("; "))
            }
            Refusal::UserJwtExpired { user, exp } => {
                write!(f, "user {user}: JWT expired at {} ({exp})", rfc3339(*exp))
            }
            Refusal::UserJwtNotYetValid { user, nbf } => {
                write!(f, "user {user}: JWT not valid before {} ({nbf})", rfc3339(*nbf))
            }
            Refusal::AccountNotPinned { user, account } => write!(
                f,
                "user {user}: account {account} is not listed as an operator pinned account"
            ),
            Refusal::UnknownAccount { user, account } => {
                write!(f, "user {user}: account {account} not found by the account resolver")
            }
            Refusal::Account {
                user,
                account,
                error,
            } => write!(f, "user {user}: account {account}: {error}"),
            Refusal::UnknownIssuer {
                user,
                account,
                issuer,
                strict,
            } => {
                write!(
                    f,
                    "user {user}: JWT issuer {issuer} is not a signing key of account {account}"
                )?;
                if *strict {
                    f.write_str(" (strict signing key usage: the account key itself may not sign users)")?;
                }
                Ok(())
            }
            Refusal::ScopedUserHasPermissions { user, signing_key } => write!(
                f,
                "user {user}: signed with scoped signing key {signing_key}, so the JWT must not \
                 set permissions or limits (scoped users require no permissions or limits set)"
            ),
            Refusal::Template {
                user,
                signing_key,
                error,
            } => write!(
                f,
                "user {user}: template of scoped signing key {signing_key} generated invalid \
                 permissions: {error}"
            ),
            Refusal::BearerNotAllowed { user, account } => write!(
                f,
                "user {user}: JWT is a bearer token but account {account} disallows bearer tokens"
            ),
            Refusal::UnknownConnectionTypes { user, types } => write!(
                f,
                "user {user}: allowed_connection_types {types:?} names no connection type this \
                 server knows"
            ),
            Refusal::ConnectionTypeNotAllowed {
                user,
                connection_type,
                allowed,
            } => write!(
                f,
                "user {user}: connection type {connection_type} not allowed (JWT allows {allowed:?})"
            ),
            Refusal::Signature { user, error } => write!(f, "user {user}: {error}"),
            Refusal::Revoked {
                user,
                account,
                revoked_at,
                issued_at,
            } => write!(
                f,
                "user {user}: authentication revoked by account {account} (revocation at {} \
                 covers JWTs issued up to then; this one was issued at {})",
                rfc3339(*revoked_at),
                rfc3339(*issued_at)
            ),
            Refusal::SourceNotAllowed { user, ip, src } => {
                let ip = ip.map_or_else(|| "an unknown address".to_string(), |i| i.to_string());
                write!(f, "user {user}: bad src IP {ip}, JWT allows only {src:?}")
            }
            Refusal::AuthCallout { user, account } => write!(
                f,
                "user {user}: account {account} delegates authentication to an auth callout \
                 service (authorization.auth_users), which this server does not support"
            ),
            Refusal::OutsideConnectTimes {
                user,
                times,
                location,
            } => {
                let windows: Vec<String> =
                    times.iter().map(|t| format!("{}-{}", t.start, t.end)).collect();
                let zone = if location.is_empty() { "local time" } else { location };
                write!(
                    f,
                    "user {user}: outside connect times ({} {zone})",
                    windows.join(", ")
                )
            }
        }
    }
}

impl std::error::Error for Refusal {}

/// Decides whether the client may connect as the user in its JWT, with the
/// system tz database for `times` limits.
pub fn authorize(
    trusted: &TrustedOperators,
    accounts: &dyn AccountLookup,
    attempt: &ConnectAttempt<'_>,
) -> Result<AuthorizedUser, Refusal> {
    authorize_with_zones(trusted, accounts, attempt, &SystemZones)
}

/// [`authorize`] with a chosen time-zone source.
pub fn authorize_with_zones(
    trusted: &TrustedOperators,
    accounts: &dyn AccountLookup,
    attempt: &ConnectAttempt<'_>,
    zones: &dyn Zones,
) -> Result<AuthorizedUser, Refusal> {
    let now = attempt.now;
    if attempt.jwt.is_empty() {
        return Err(Refusal::NoUserJwt);
    }
    let mut juc = decode_user(attempt.jwt).map_err(Refusal::BadUserJwt)?;
    let user = juc.common.sub.clone();
    if juc.nats.permission_limits.proxy_required && !attempt.via_trusted_proxy {
        return Err(Refusal::ProxyRequired { user });
    }
    let vr = juc.validate(now, zones);
    let errors = vr.errors();
    if !errors.is_empty() {
        return Err(Refusal::UserJwtInvalid { user, errors });
    }
    if juc.common.exp > 0 && now > juc.common.exp {
        return Err(Refusal::UserJwtExpired {
            user,
            exp: juc.common.exp,
        });
    }
    if juc.common.nbf > 0 && juc.common.nbf > now {
        return Err(Refusal::UserJwtNotYetValid {
            user,
            nbf: juc.common.nbf,
        });
    }

    let issuer = juc.common.iss.clone();
    let account_key = if juc.nats.issuer_account.is_empty() {
        issuer.clone()
    } else {
        juc.nats.issuer_account.clone()
    };
    if let Some(pinned) = &trusted.pinned {
        if !pinned.contains(&account_key) {
            return Err(Refusal::AccountNotPinned {
                user,
                account: account_key,
            });
        }
    }
    let account_jwt = is_account_key(&account_key)
        .then(|| accounts.account_jwt(&account_key))
        .flatten();
    let Some(account_jwt) = account_jwt else {
        return Err(Refusal::UnknownAccount {
            user,
            account: account_key,
        });
    };
    let account = trusted
        .verify_account_for(&account_key, &account_jwt, now)
        .map_err(|error| Refusal::Account {
            user: user.clone(),
            account: account_key.clone(),
            error,
        })?;

    let Some(scope) = trusted.user_signer(&account, &issuer) else {
        return Err(Refusal::UnknownIssuer {
            user,
            account: account_key,
            issuer,
            strict: trusted.account_is_strict(&account),
        });
    };
    let scoped = scope.is_some();
    if let Some(scope) = scope {
        if !juc.has_empty_permissions() {
            return Err(Refusal::ScopedUserHasPermissions {
                user,
                signing_key: issuer,
            });
        }
        juc.nats.permission_limits =
            apply_template(&scope.template, &juc, &account).map_err(|error| Refusal::Template {
                user: user.clone(),
                signing_key: issuer.clone(),
                error,
            })?;
    }

    let pl = &juc.nats.permission_limits;
    if pl.bearer_token && account.nats.limits.account.disallow_bearer {
        return Err(Refusal::BearerNotAllowed {
            user,
            account: account_key,
        });
    }
    let known: Vec<ConnectionType> = pl
        .allowed_connection_types
        .iter()
        .filter_map(|t| ConnectionType::parse(t))
        .collect();
    if known.is_empty() && !pl.allowed_connection_types.is_empty() {
        return Err(Refusal::UnknownConnectionTypes {
            user,
            types: pl.allowed_connection_types.clone(),
        });
    }
    if !known.is_empty() && !known.contains(&attempt.connection_type) {
        return Err(Refusal::ConnectionTypeNotAllowed {
            user,
            connection_type: attempt.connection_type,
            allowed: pl.allowed_connection_types.clone(),
        });
    }
    if !pl.bearer_token {
        verify_signature(&user, attempt.nonce, attempt.sig).map_err(|error| {
            Refusal::Signature {
                user: user.clone(),
                error,
            }
        })?;
    }
    if let Some(revoked_at) = account.is_revoked(&user, juc.common.iat) {
        return Err(Refusal::Revoked {
            user,
            account: account_key,
            revoked_at,
            issued_at: juc.common.iat,
        });
    }
    let src = &pl.limits.user.src;
    if !src_allows(src, attempt.client_ip) {
        return Err(Refusal::SourceNotAllowed {
            user,
            ip: attempt.client_ip,
            src: src.clone(),
        });
    }
    let (allowed_now, valid_for) =
        connect_window(&pl.limits.user.times, &pl.limits.user.locale, now, zones);
    if !allowed_now {
        return Err(Refusal::OutsideConnectTimes {
            user,
            times: pl.limits.user.times.clone(),
            location: pl.limits.user.locale.clone(),
        });
    }

    let ext = &account.nats.authorization;
    if !ext.auth_users.is_empty() && !ext.auth_users.contains(&user) {
        return Err(Refusal::AuthCallout {
            user,
            account: account_key,
        });
    }

    let exp = juc.common.exp;
    let expires_at = if exp == 0 {
        valid_for.map(|v| now + v)
    } else {
        let left = exp.saturating_sub(now).max(0);
        Some(now + valid_for.filter(|&v| v < left).unwrap_or(left))
    };
    Ok(AuthorizedUser {
        user_key: user,
        account_key,
        name: juc.common.name.clone(),
        account_name: account.common.name.clone(),
        signing_key: (!juc.nats.issuer_account.is_empty()).then_some(issuer),
        scoped,
        claims: juc,
        account,
        expires_at,
    })
}

/// `validateSrc`: no networks = anywhere; else the address must be known
/// and inside one; an unparsable network fails the check outright.
fn src_allows(src: &[String], ip: Option<IpAddr>) -> bool {
    if src.is_empty() {
        return true;
    }
    let Some(ip) = ip else {
        return false;
    };
    for cidr in src {
        match parse_cidr(cidr) {
            None => return false,
            Some(net) if cidr_contains(net, ip) => return true,
            Some(_) => {}
        }
    }
    false
}

/// `validateTimes`: whether `now` falls in a window (strictly after its
/// start, strictly before its end; a window ending before it starts crosses
/// midnight), and for how many seconds more (`None` without windows).
/// Windows are compared on the wall clock of `location` at `now`.
fn connect_window(
    times: &[TimeRange],
    location: &str,
    now: i64,
    zones: &dyn Zones,
) -> (bool, Option<i64>) {
    if times.is_empty() {
        return (true, None);
    }
    let Some(offset) = zones.offset_at(location, now) else {
        return (false, None);
    };
    let local = now + offset;
    let midnight = local.div_euclid(86400) * 86400;
    let mut best: Option<i64> = None;
    for t in times {
        let (Some(s), Some(e)) = (parse_clock(&t.start), parse_clock(&t.end)) else {
            return (false, None);
        };
        let (start, mut end) = (midnight + s, midnight + e);
        let left = if start < local && end > local {
            Some(end - local)
        } else if start > end {
            if end > local {
                Some(end - local)
            } else {
                end += 86400;
                (start < local && end > local).then(|| end - local)
            }
        } else {
            None
        };
        match (left, best) {
            (Some(l), Some(b)) if l <= b => {}
            (Some(l), _) => best = Some(l),
            (None, _) => {}
        }
    }
    (best.is_some(), best)
}

/// Go's `strings.EqualFold` against an ASCII name, including the two
/// non-ASCII letters that fold onto ASCII ones (long s, Kelvin sign).
fn eq_fold(s: &str, ascii: &str) -> bool {
    let fold = |c: char| match c {
        '\u{17F}' => 's',
        '\u{212A}' => 'k',
        c => c.to_ascii_lowercase(),
    };
    s.chars()
        .map(fold)
        .eq(ascii.chars().map(|c| c.to_ascii_lowercase()))
}

/// The `{{...}}` placeholders of an entry, as nats-server's `{{2}([^}]+)}{2}`
/// finds them (leftmost, non-overlapping).
fn mustaches(s: &str) -> Vec<&str> {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i + 1 < b.len() {
        if b[i] == b'{' && b[i + 1] == b'{' {
            if let Some(k) = b[i + 2..]
                .iter()
                .position(|&c| c == b'}')
                .map(|k| i + 2 + k)
            {
                if k > i + 2 && b.get(k + 1) == Some(&b'}') {
                    out.push(&s[i..k + 2]);
                    i = k + 2;
                    continue;
                }
            }
        }
        i += 1;
    }
    out
}

/// nats-server's `IsValidSubject` (no rune check).
fn is_valid_subject(s: &str) -> bool {
    if s.is_empty() {
        return false;
    }
    let mut after_fwc = false;
    for t in s.split('.') {
        if t.is_empty() || after_fwc {
            return false;
        }
        if t.len() > 1 {
            if t.bytes()
                .any(|c| matches!(c, b'\t' | b'\n' | b'\x0c' | b'\r' | b' '))
            {
                return false;
            }
            continue;
        }
        match t.as_bytes()[0] {
            b'>' => after_fwc = true,
            b' ' | b'\t' | b'\n' | b'\r' | b'\x0c' => return false,
            _ => {}
        }
    }
    true
}

/// `tag(x)` / `account-tag(x)` placeholders: which tag list, and the name
/// (nats-server trims the prefix case-sensitively after a case-insensitive
/// match; mirrored).
fn tag_op(op: &str) -> Option<(bool, &str)> {
    let b = op.as_bytes();
    let strip = |prefix: &str| -> &str {
        let v = op.strip_prefix(prefix).unwrap_or(op);
        v.strip_suffix(')').unwrap_or(v)
    };
    if b.len() >= 4 && b[..4].eq_ignore_ascii_case(b"tag(") && op.ends_with(')') {
        Some((false, strip("tag(")))
    } else if b.len() >= 12 && b[..12].eq_ignore_ascii_case(b"account-tag(") && op.ends_with(')') {
        Some((true, strip("account-tag(")))
    } else {
        None
    }
}

fn expansion_limit() -> String {
    format!("template expansion exceeds limit: {MAX_TEMPLATE_EXPANSIONS}")
}

fn apply_list(
    list: &[String],
    fail_on_bad: bool,
    user: &UserClaims,
    account: &AccountClaims,
) -> Result<Vec<String>, String> {
    if !list.iter().any(|e| !mustaches(e).is_empty()) {
        return Ok(list.to_vec());
    }
    let mut out: Vec<String> = Vec::new();
    for entry in list {
        let tokens = mustaches(entry);
        let mut values: Vec<Vec<String>> = Vec::with_capacity(tokens.len());
        let mut has_tags = false;
        for tk in &tokens {
            let inner = tk.strip_prefix("{{").unwrap_or(tk);
            let op = inner.strip_suffix("}}").unwrap_or(inner).trim();
            let v = if eq_fold(op, "name()") {
                vec![user.common.name.clone()]
            } else if eq_fold(op, "subject()") {
                vec![user.common.sub.clone()]
            } else if eq_fold(op, "account-name()") {
                vec![account.common.name.clone()]
            } else if eq_fold(op, "account-subject()") {
                vec![user.nats.issuer_account.clone()]
            } else if let Some((of_account, name)) = tag_op(op) {
                has_tags = true;
                let tags = if of_account {
                    &account.nats.generic.tags
                } else {
                    &user.nats.generic.tags
                };
                let prefix = format!("{}:", name.to_lowercase());
                let found: Vec<String> = tags
                    .iter()
                    .filter_map(|t| t.strip_prefix(&prefix).map(str::to_string))
                    .collect();
                if !found.is_empty() {
                    found
                } else if fail_on_bad {
                    return Err(format!(
                        "generated invalid subject {entry:?}: {name:?} is not defined"
                    ));
                } else {
                    vec![" ".to_string()]
                }
            } else {
                return Err(format!(
                    "template operation in {entry:?}: {op:?} is not defined"
                ));
            };
            values.push(v);
        }
        if !has_tags {
            let mut subject = entry.clone();
            for (tk, v) in tokens.iter().zip(&values) {
                subject = subject.replace(tk, &v[0]);
            }
            if is_valid_subject(&subject) {
                out.push(subject);
            } else if fail_on_bad {
                return Err("generated invalid subject".into());
            }
            continue;
        }
        let mut count = 1usize;
        for v in &values {
            if v.is_empty() {
                count = 0;
                break;
            }
            if count > MAX_TEMPLATE_EXPANSIONS / v.len() {
                return Err(expansion_limit());
            }
            count *= v.len();
        }
        if out.len() > MAX_TEMPLATE_EXPANSIONS - count {
            return Err(expansion_limit());
        }
        // Odometer order, the last placeholder varying fastest.
        let mut idx = vec![0usize; values.len()];
        for _ in 0..count {
            let mut subject = entry.clone();
            for (j, tk) in tokens.iter().enumerate() {
                subject = subject.replace(tk, &values[j][idx[j]]);
            }
            if is_valid_subject(&subject) {
                out.push(subject);
            } else if fail_on_bad {
                return Err("generated invalid subject".into());
            }
            for j in (0..idx.len()).rev() {
                idx[j] += 1;
                if idx[j] < values[j].len() {
                    break;
                }
                idx[j] = 0;
            }
        }
    }
    Ok(out)
}

/// `processUserPermissionsTemplate`: the scoped key's template with its
/// placeholders expanded for this user. An allow list that expands to
/// nothing becomes "deny >", so a template never widens access.
pub fn apply_template(
    template: &UserPermissionLimits,
    user: &UserClaims,
    account: &AccountClaims,
) -> Result<UserPermissionLimits, String> {
    let mut lim = template.clone();
    let p = &mut lim.permissions;
    let sub_allow_set = !p.subscribe.allow.is_empty();
    let pub_allow_set = !p.publish.allow.is_empty();
    p.subscribe.allow = apply_list(&p.subscribe.allow, false, user, account)?;
    p.subscribe.deny = apply_list(&p.subscribe.deny, true, user, account)?;
    p.publish.allow = apply_list(&p.publish.allow, false, user, account)?;
    p.publish.deny = apply_list(&p.publish.deny, true, user, account)?;
    let deny_all = |deny: &mut Vec<String>| {
        if !deny.iter().any(|d| d == ">") {
            deny.push(">".into());
        }
    };
    if sub_allow_set && p.subscribe.allow.is_empty() {
        deny_all(&mut p.subscribe.deny);
    }
    if pub_allow_set && p.publish.allow.is_empty() {
        deny_all(&mut p.publish.deny);
    }
    Ok(lim)
}

#[cfg(test)]
mod tests;
