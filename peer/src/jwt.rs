//! NATS JWTs (the nats-io/jwt v2 format nsc writes and nats-server trusts).
//!
//! A token is `header.payload.signature`, each part unpadded URL-safe
//! base64; the header must say `typ` "JWT" (any case) and `alg`
//! "ed25519-nkey" (or the v1 "ed25519", any case); the signature is the
//! ed25519 signature, by the nkey named in the payload's `iss`, of
//! `header.payload` (v2) or of the payload part alone (v1 claims). Decoding
//! here applies the same checks as the Go library nats-server uses
//! (`jwt.Decode`): size, shape, header, claim type and version, signature,
//! and which kind of key may issue which claim. Trust (which operator, which
//! account) is decided in [`crate::trust`].
//!
//! Go's JSON decoding is mirrored where it matters: `null` means "absent",
//! unknown fields are ignored, a field of the wrong JSON type rejects the
//! token. Unlike Go, field names are matched case-sensitively (nsc and every
//! NATS library write them in lower case).

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

use nkeys::{KeyPair, KeyPairType};
use rand::RngCore;
use serde::de::{self, Deserializer};
use serde::ser::Serializer;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::nonce::{b64url, GO_RAW_URL};
use crate::zone::{parse_clock, Zones};

/// Largest token nats-server decodes (`jwt.MaxTokenSize`).
pub const MAX_TOKEN_SIZE: usize = 1024 * 1024;
/// The header `typ` Tern writes (compared case-insensitively on decode).
pub const TOKEN_TYPE: &str = "JWT";
/// The header `alg` of v2 tokens.
pub const ALGORITHM: &str = "ed25519-nkey";
/// The header `alg` of v1 tokens, still accepted on decode.
pub const ALGORITHM_V1: &str = "ed25519";
/// A limit of -1 means unlimited (`jwt.NoLimit`).
pub const NO_LIMIT: i64 = -1;
/// The revocations key that revokes every user issued up to its time.
pub const ALL_USERS: &str = "*";
/// The newest claim version this code (and nats-server's library) reads.
pub const LIB_VERSION: i64 = 2;
/// Longest account description or info URL nats-server accepts.
const MAX_INFO_LENGTH: usize = 8 * 1024;

/// The kind of a valid public nkey, `None` if it is not one (bad base32,
/// checksum, length or prefix).
pub fn public_key_type(key: &str) -> Option<KeyPairType> {
    nkeys::from_public_key(key)
        .ok()
        .map(|(prefix, _)| KeyPairType::from(prefix))
}

/// Whether `key` is a valid operator public key (`O...`).
pub fn is_operator_key(key: &str) -> bool {
    public_key_type(key) == Some(KeyPairType::Operator)
}

/// Whether `key` is a valid account public key (`A...`).
pub fn is_account_key(key: &str) -> bool {
    public_key_type(key) == Some(KeyPairType::Account)
}

/// Whether `key` is a valid user public key (`U...`).
pub fn is_user_key(key: &str) -> bool {
    public_key_type(key) == Some(KeyPairType::User)
}

/// Whether `key` is a valid server public key (`N...`).
pub fn is_server_key(key: &str) -> bool {
    public_key_type(key) == Some(KeyPairType::Server)
}

/// Why a token could not be decoded; messages follow the Go library's, so
/// they can be compared with nats-server's debug logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JwtError {
    /// Longer than [`MAX_TOKEN_SIZE`].
    TooLarge(usize),
    /// Not three `.`-separated parts (the count found).
    Chunks(usize),
    /// A part is not unpadded URL-safe base64 (which part).
    Base64(&'static str),
    /// The header is not the expected JSON object.
    Header(String),
    /// The header `typ` is not "JWT".
    UnsupportedType(String),
    /// The header `alg` is not "ed25519-nkey" or "ed25519".
    UnsupportedAlgorithm(String),
    /// The payload is not JSON claims of the expected shape.
    Payload(String),
    /// The claims say a version newer than [`LIB_VERSION`].
    NewerVersion(i64),
    /// A known claim type with a version this library never wrote (e.g. 0).
    UnsupportedVersion(i64),
    /// Cluster and server claims, which nats-server does not support.
    UnsupportedClaim(String),
    /// The signature does not verify with the key in `iss` (claim version).
    Signature(i64),
    /// The issuer is not a kind of key that may issue this claim.
    IssuerKind {
        /// The claim type.
        claim: String,
        /// The `iss` of the token.
        issuer: String,
    },
    /// Decoded fine, but is not the claim type the caller needs.
    WrongKind {
        /// The claim type wanted.
        expected: &'static str,
        /// The claim type found.
        found: String,
    },
    /// The claims could not be encoded (no subject, signer without seed...).
    Encode(String),
}

impl fmt::Display for JwtError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JwtError::TooLarge(n) => {
                write!(
                    f,
                    "token size {n} exceeds maximum of {MAX_TOKEN_SIZE} bytes"
                )
            }
            JwtError::Chunks(n) => write!(f, "expected 3 chunks, found {n}"),
            JwtError::Base64(part) => write!(f, "{part} is not valid base64url"),
            JwtError::Header(e) => write!(f, "header: {e}"),
            JwtError::UnsupportedType(t) => write!(f, "not supported type {t:?}"),
            JwtError::UnsupportedAlgorithm(a) => write!(f, "unexpected {a:?} algorithm"),
            JwtError::Payload(e) => write!(f, "claims: {e}"),
            JwtError::NewerVersion(v) => {
                write!(
                    f,
                    "JWT was generated by a newer version ({v} > {LIB_VERSION})"
                )
            }
            JwtError::UnsupportedVersion(v) => {
                write!(
                    f,
                    "library supports version {LIB_VERSION} or less - received {v}"
                )
            }
            JwtError::UnsupportedClaim(t) => write!(f, "{t} claims are not supported"),
            JwtError::Signature(v) => {
                let v = if *v >= 2 { 2 } else { 1 };
                write!(f, "claim failed V{v} signature verification")
            }
            JwtError::IssuerKind { claim, issuer } => {
                write!(f, "{claim} claim may not be issued by {issuer:?}")
            }
            JwtError::WrongKind { expected, found } => {
                write!(f, "not {expected} claim (found {found:?})")
            }
            JwtError::Encode(e) => write!(f, "cannot encode JWT: {e}"),
        }
    }
}

impl std::error::Error for JwtError {}

fn is_zero(v: &i64) -> bool {
    *v == 0
}

fn is_false(v: &bool) -> bool {
    !*v
}

/// The JOSE header.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    /// "JWT".
    #[serde(default)]
    pub typ: String,
    /// "ed25519-nkey" (v2) or "ed25519" (v1).
    #[serde(default)]
    pub alg: String,
}

impl Header {
    /// nats-server's acceptance rule: `typ` "JWT" and `alg` "ed25519" or
    /// "ed25519-nkey", both case-insensitive.
    fn check(&self) -> Result<(), JwtError> {
        if self.typ.to_uppercase() != TOKEN_TYPE {
            return Err(JwtError::UnsupportedType(self.typ.clone()));
        }
        let alg = self.alg.to_lowercase();
        if alg != ALGORITHM && alg != ALGORITHM_V1 {
            return Err(JwtError::UnsupportedAlgorithm(self.alg.clone()));
        }
        Ok(())
    }
}

/// Fields every claim has.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClaimsData {
    /// Audience (unused by nats-server for users).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub aud: String,
    /// Expiry, Unix seconds; 0 = never.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub exp: i64,
    /// Token id (nsc: a hash of these fields).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub jti: String,
    /// Issued at, Unix seconds; revocations compare against it.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub iat: i64,
    /// Public nkey that signed the token.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub iss: String,
    /// Human-readable name.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// Not valid before, Unix seconds; 0 = always.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub nbf: i64,
    /// Public nkey the token is about.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub sub: String,
}

impl ClaimsData {
    /// The time checks of `ClaimsData.Validate`: expired once `now > exp`,
    /// premature while `nbf > now`.
    pub fn validate(&self, now: i64, vr: &mut Validation) {
        if self.exp > 0 && now > self.exp {
            vr.time("claim is expired");
        }
        if self.nbf > 0 && self.nbf > now {
            vr.time("claim is not yet valid");
        }
    }
}

/// Fields inside `nats` common to all claim types.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GenericFields {
    /// Tags (nsc lower-cases them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    /// Claim type: "operator", "account", "user"...
    #[serde(rename = "type", default, skip_serializing_if = "String::is_empty")]
    pub kind: String,
    /// Claim format version (2; 1 for migrated v1 tokens).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub version: i64,
}

impl GenericFields {
    fn v2(kind: &str) -> Self {
        GenericFields {
            tags: Vec::new(),
            kind: kind.into(),
            version: LIB_VERSION,
        }
    }
}

/// Allow and deny subject lists (a subscribe entry may carry a queue:
/// `"subject queue"`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Permission {
    /// Subjects allowed; empty = everything not denied.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow: Vec<String>,
    /// Subjects denied.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deny: Vec<String>,
}

impl Permission {
    /// No allow and no deny entries.
    pub fn is_empty(&self) -> bool {
        self.allow.is_empty() && self.deny.is_empty()
    }

    fn validate(&self, vr: &mut Validation, permit_queue: bool) {
        for s in self.allow.iter().chain(&self.deny) {
            let parts: Vec<&str> = s.split(' ').collect();
            match parts.len() {
                1 => validate_subject(parts[0], vr),
                2 => {
                    validate_subject(parts[0], vr);
                    validate_subject(parts[1], vr);
                    if !permit_queue {
                        vr.error(format!(
                            "Permission Subject \"{s}\" is not allowed to contain queue"
                        ));
                    }
                }
                _ => vr.error(format!(
                    "Permission Subject \"{s}\" contains too many spaces"
                )),
            }
        }
    }
}

/// Permission to publish to reply subjects of received requests.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResponsePermission {
    /// Responses allowed per request (nats-server: 0 means 1).
    #[serde(default)]
    pub max: i64,
    /// How long the permission lasts, in nanoseconds (nats-server: 0 means
    /// two minutes).
    #[serde(default)]
    pub ttl: i64,
}

/// Publish, subscribe and response permissions.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Permissions {
    /// `pub`.
    #[serde(rename = "pub", default, skip_serializing_if = "Permission::is_empty")]
    pub publish: Permission,
    /// `sub`.
    #[serde(rename = "sub", default, skip_serializing_if = "Permission::is_empty")]
    pub subscribe: Permission,
    /// `resp`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resp: Option<ResponsePermission>,
}

impl Permissions {
    /// Nothing set: nats-server then applies the account's default
    /// permissions instead.
    pub fn is_empty(&self) -> bool {
        self.publish.is_empty() && self.subscribe.is_empty() && self.resp.is_none()
    }

    /// `Permissions.Validate`: subjects well formed, queues only on `sub`.
    pub fn validate(&self, vr: &mut Validation) {
        self.subscribe.validate(vr, true);
        self.publish.validate(vr, false);
    }
}

/// A daily connect window in `times_location` (Go layout "15:04:05").
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimeRange {
    /// Window start.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub start: String,
    /// Window end (before start = the window crosses midnight).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub end: String,
}

/// Source and time restrictions of a user.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserLimits {
    /// CIDRs the client must connect from; a JSON array, or one
    /// comma-separated string as older tools wrote.
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "de_cidr_list"
    )]
    pub src: Vec<String>,
    /// Daily windows in which the user may connect.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub times: Vec<TimeRange>,
    /// IANA zone of `times`; empty = the server's local zone.
    #[serde(
        rename = "times_location",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub locale: String,
}

fn de_cidr_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum ListOrString {
        List(Vec<String>),
        One(String),
    }
    Ok(match ListOrString::deserialize(d)? {
        ListOrString::List(list) => list,
        ListOrString::One(s) => {
            let mut out: Vec<String> = Vec::new();
            for part in s.to_lowercase().split(',') {
                let part = part.trim().to_string();
                if !part.is_empty() && !out.contains(&part) {
                    out.push(part);
                }
            }
            out
        }
    })
}

/// Per-connection resource limits; -1 = unlimited, 0 = zero (nats-server
/// applies 0 literally: a user JWT without `subs` may not subscribe).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NatsLimits {
    /// Subscriptions.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub subs: i64,
    /// Bytes (not enforced by nats-server for users).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub data: i64,
    /// Message payload bytes.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub payload: i64,
}

impl NatsLimits {
    /// All three unlimited, as new claims start.
    pub fn unlimited() -> Self {
        NatsLimits {
            subs: NO_LIMIT,
            data: NO_LIMIT,
            payload: NO_LIMIT,
        }
    }
}

/// A user's limits.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// src, times, times_location.
    #[serde(flatten)]
    pub user: UserLimits,
    /// subs, data, payload.
    #[serde(flatten)]
    pub nats: NatsLimits,
}

impl Limits {
    fn validate(&self, now: i64, zones: &dyn Zones, vr: &mut Validation) {
        for cidr in &self.user.src {
            if parse_cidr(cidr).is_none() {
                vr.error(format!("invalid cidr {cidr:?} in user src limits"));
            }
        }
        for t in &self.user.times {
            for (what, v) in [("start", &t.start), ("end", &t.end)] {
                if v.is_empty() {
                    let article = if what == "start" { "a" } else { "an" };
                    vr.error(format!("time ranges {what} must contain {article} {what}"));
                } else if parse_clock(v).is_none() {
                    vr.error(format!("{what} in time range is invalid {v:?}"));
                }
            }
        }
        if !self.user.locale.is_empty() && zones.offset_at(&self.user.locale, now).is_none() {
            vr.error(format!(
                "could not parse iana time zone by name: unknown time zone {}",
                self.user.locale
            ));
        }
    }
}

/// Everything that decides what a user may do: replaced wholesale by a
/// scoped signing key's template.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserPermissionLimits {
    /// pub, sub, resp.
    #[serde(flatten)]
    pub permissions: Permissions,
    /// src, times, times_location, subs, data, payload.
    #[serde(flatten)]
    pub limits: Limits,
    /// The user need not sign the nonce (the JWT alone authenticates).
    #[serde(default, skip_serializing_if = "is_false")]
    pub bearer_token: bool,
    /// Only accepted through a trusted proxy (Tern has none: always refused).
    #[serde(default, skip_serializing_if = "is_false")]
    pub proxy_required: bool,
    /// STANDARD, WEBSOCKET, LEAFNODE, LEAFNODE_WS, MQTT, MQTT_WS, IN_PROCESS;
    /// empty = all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_connection_types: Vec<String>,
}

/// The `nats` part of a user JWT.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    /// Permissions and limits.
    #[serde(flatten)]
    pub permission_limits: UserPermissionLimits,
    /// The account, when `iss` is one of its signing keys.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub issuer_account: String,
    /// tags, type, version.
    #[serde(flatten)]
    pub generic: GenericFields,
}

/// A user JWT.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserClaims {
    /// jti, iat, iss, sub, name, exp, nbf.
    #[serde(flatten)]
    pub common: ClaimsData,
    /// User specifics.
    #[serde(default)]
    pub nats: User,
    /// Whether the decoded `nats` held no permission or limit field at all
    /// (Go compares with the zero value, so `"allow": []` counts as set).
    #[serde(skip)]
    decoded_empty: Option<bool>,
}

impl UserClaims {
    /// A v2 user claim for `subject` with unlimited subs/data/payload, as
    /// `jwt.NewUserClaims` starts.
    pub fn new(subject: &str) -> Self {
        let mut nats = User {
            generic: GenericFields::v2("user"),
            ..User::default()
        };
        nats.permission_limits.limits.nats = NatsLimits::unlimited();
        UserClaims {
            common: ClaimsData {
                sub: subject.into(),
                ..ClaimsData::default()
            },
            nats,
            decoded_empty: None,
        }
    }

    /// A user for a scoped signing key: no permissions or limits at all
    /// (`SetScoped(true)`), so the key's template applies.
    pub fn new_scoped(subject: &str, account: &str) -> Self {
        let mut u = UserClaims::new(subject);
        u.nats.permission_limits = UserPermissionLimits::default();
        u.nats.issuer_account = account.into();
        u
    }

    /// Shortcut to the permissions and limits.
    pub fn limits(&self) -> &UserPermissionLimits {
        &self.nats.permission_limits
    }

    /// `HasEmptyPermissions`: no permission or limit set, which a user
    /// issued by a scoped signing key must satisfy.
    pub fn has_empty_permissions(&self) -> bool {
        self.decoded_empty
            .unwrap_or_else(|| self.nats.permission_limits == UserPermissionLimits::default())
    }

    /// `UserClaims.Validate` at `now`.
    pub fn validate(&self, now: i64, zones: &dyn Zones) -> Validation {
        let mut vr = Validation::default();
        self.common.validate(now, &mut vr);
        let pl = &self.nats.permission_limits;
        pl.permissions.validate(&mut vr);
        pl.limits.validate(now, zones, &mut vr);
        if !self.nats.issuer_account.is_empty() && !is_account_key(&self.nats.issuer_account) {
            vr.error("account_id is not an account public key");
        }
        vr
    }
}

/// Key fields of a user whose presence makes it "not empty".
const USER_PERMISSION_FIELDS: [&str; 12] = [
    "pub",
    "sub",
    "resp",
    "src",
    "times",
    "times_location",
    "subs",
    "data",
    "payload",
    "bearer_token",
    "proxy_required",
    "allowed_connection_types",
];

/// Go's zero-value test on the (null-stripped) `nats` object.
fn nats_permissions_empty(nats: &Map<String, Value>) -> bool {
    USER_PERMISSION_FIELDS.iter().all(|k| match nats.get(*k) {
        None => true,
        Some(Value::Object(m)) if *k == "pub" || *k == "sub" => m.is_empty(),
        Some(Value::String(s)) if *k == "times_location" => s.is_empty(),
        Some(Value::Number(n)) => n.as_i64() == Some(0),
        Some(Value::Bool(b)) => !b,
        Some(_) => false,
    })
}

/// A scoped signing key: users it signs get `template` as their
/// permissions and limits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserScope {
    /// Always "user_scope".
    pub kind: String,
    /// The signing key (an account public key).
    pub key: String,
    /// Free-form role name.
    #[serde(default)]
    pub role: String,
    /// Permissions and limits of users signed with this key; `{{name()}}`,
    /// `{{subject()}}`, `{{account-name()}}`, `{{account-subject()}}`,
    /// `{{tag(x)}}` and `{{account-tag(x)}}` are expanded per user.
    #[serde(default)]
    pub template: UserPermissionLimits,
    /// Free-form description.
    #[serde(default)]
    pub description: String,
}

impl UserScope {
    /// A scope for `key` with unlimited subs/data/payload (`NewUserScope`).
    pub fn new(key: &str) -> Self {
        let mut template = UserPermissionLimits::default();
        template.limits.nats = NatsLimits::unlimited();
        UserScope {
            kind: "user_scope".into(),
            key: key.into(),
            role: String::new(),
            template,
            description: String::new(),
        }
    }
}

/// An account's signing keys: plain keys, or scoped keys with a template.
/// JSON: an array of key strings and scope objects.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SigningKeys(pub BTreeMap<String, Option<UserScope>>);

impl SigningKeys {
    /// No signing keys.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    /// Whether `key` is one of them.
    pub fn contains(&self, key: &str) -> bool {
        self.0.contains_key(key)
    }
    /// `Some(None)` for a plain key, `Some(Some(scope))` for a scoped one.
    pub fn get(&self, key: &str) -> Option<Option<&UserScope>> {
        self.0.get(key).map(Option::as_ref)
    }
    /// Adds a plain signing key.
    pub fn add(&mut self, key: &str) {
        self.0.insert(key.into(), None);
    }
    /// Adds a scoped signing key.
    pub fn add_scoped(&mut self, scope: UserScope) {
        self.0.insert(scope.key.clone(), Some(scope));
    }
    /// The keys.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.0.keys().map(String::as_str)
    }

    fn validate(&self, vr: &mut Validation) {
        for (k, scope) in &self.0 {
            match scope {
                Some(s) if !is_account_key(&s.key) => {
                    vr.error(format!("{} is not an account public key", s.key))
                }
                None if !is_account_key(k) => {
                    vr.error(format!("{k:?} is not a valid account signing key"))
                }
                _ => {}
            }
        }
    }
}

impl Serialize for SigningKeys {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let items: Vec<Value> = self
            .0
            .iter()
            .map(|(k, scope)| match scope {
                None => Value::String(k.clone()),
                Some(sc) => serde_json::to_value(sc).unwrap_or(Value::Null),
            })
            .collect();
        items.serialize(s)
    }
}

impl<'de> Deserialize<'de> for SigningKeys {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let items = Vec::<Value>::deserialize(d)?;
        let mut keys = SigningKeys::default();
        for item in items {
            match item {
                Value::String(k) => keys.add(&k),
                Value::Object(mut m) => {
                    if m.get("kind").and_then(Value::as_str) != Some("user_scope") {
                        return Err(de::Error::custom(format!(
                            "unknown signing key scope {:?}",
                            m.get("kind").cloned().unwrap_or(Value::Null)
                        )));
                    }
                    // Absent template limits stay unlimited (NewUserScope).
                    let template = m
                        .entry("template")
                        .or_insert_with(|| Value::Object(Map::new()));
                    if let Value::Object(t) = template {
                        for k in ["subs", "data", "payload"] {
                            t.entry(k).or_insert(Value::from(NO_LIMIT));
                        }
                    }
                    let scope: UserScope =
                        serde_json::from_value(Value::Object(m)).map_err(de::Error::custom)?;
                    keys.add_scoped(scope);
                }
                // Go's decoder skips anything else in the array.
                _ => {}
            }
        }
        Ok(keys)
    }
}

/// Account-level limits set by the operator.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountLimits {
    /// Max imports (-1 unlimited).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub imports: i64,
    /// Max exports (-1 unlimited).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub exports: i64,
    /// Whether exports may use wildcards.
    #[serde(rename = "wildcards", default, skip_serializing_if = "is_false")]
    pub wildcard_exports: bool,
    /// Users of this account may not be bearer tokens.
    #[serde(default, skip_serializing_if = "is_false")]
    pub disallow_bearer: bool,
    /// Max client connections (-1 unlimited).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub conn: i64,
    /// Max leaf node connections (-1 unlimited).
    #[serde(rename = "leaf", default, skip_serializing_if = "is_zero")]
    pub leaf_node_conn: i64,
}

/// JetStream limits (kept for completeness; Tern has no JetStream yet).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JetStreamLimits {
    /// Bytes in memory streams.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub mem_storage: i64,
    /// Bytes in file streams.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub disk_storage: i64,
    /// Streams.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub streams: i64,
    /// Consumers.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub consumer: i64,
    /// Max ack pending.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub max_ack_pending: i64,
    /// Max bytes of one memory stream.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub mem_max_stream_bytes: i64,
    /// Max bytes of one file stream.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub disk_max_stream_bytes: i64,
    /// Streams must set max bytes.
    #[serde(default, skip_serializing_if = "is_false")]
    pub max_bytes_required: bool,
}

/// All limits in an account JWT's `limits`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OperatorLimits {
    /// subs, data, payload (per account).
    #[serde(flatten)]
    pub nats: NatsLimits,
    /// imports, exports, wildcards, disallow_bearer, conn, leaf.
    #[serde(flatten)]
    pub account: AccountLimits,
    /// JetStream (untiered).
    #[serde(flatten)]
    pub jetstream: JetStreamLimits,
    /// JetStream per tier.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tiered_limits: BTreeMap<String, JetStreamLimits>,
}

impl OperatorLimits {
    /// All zero: `IsEmpty` in Go.
    pub fn is_empty(&self) -> bool {
        *self == OperatorLimits::default()
    }
}

/// External authorization (auth callout) settings of an account.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExternalAuthorization {
    /// Users that bypass the callout.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub auth_users: Vec<String>,
    /// Accounts the callout may place users in.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_accounts: Vec<String>,
    /// Curve key for encrypted requests.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub xkey: String,
}

impl ExternalAuthorization {
    /// Nothing configured.
    pub fn is_empty(&self) -> bool {
        *self == ExternalAuthorization::default()
    }
}

/// Message tracing destination of an account.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MsgTrace {
    /// Subject traces go to.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub dest: String,
    /// Percentage sampled (0 = 100).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub sampling: i64,
}

fn value_is_null(v: &Value) -> bool {
    v.is_null()
}

/// The `nats` part of an account JWT.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Account {
    /// Imports, raw (typed later).
    #[serde(default, skip_serializing_if = "value_is_null")]
    pub imports: Value,
    /// Exports, raw (typed later).
    #[serde(default, skip_serializing_if = "value_is_null")]
    pub exports: Value,
    /// Limits set by the operator.
    #[serde(default)]
    pub limits: OperatorLimits,
    /// Keys that may sign users of this account besides the account key.
    #[serde(default, skip_serializing_if = "SigningKeys::is_empty")]
    pub signing_keys: SigningKeys,
    /// User public key (or "*") -> Unix time: users issued (`iat`) at or
    /// before that time are revoked.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub revocations: BTreeMap<String, i64>,
    /// Permissions of users whose JWT sets none.
    #[serde(default, skip_serializing_if = "Permissions::is_empty")]
    pub default_permissions: Permissions,
    /// Subject mappings, raw (typed later).
    #[serde(default, skip_serializing_if = "value_is_null")]
    pub mappings: Value,
    /// Auth callout settings.
    #[serde(default, skip_serializing_if = "ExternalAuthorization::is_empty")]
    pub authorization: ExternalAuthorization,
    /// Message tracing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace: Option<MsgTrace>,
    /// "", "system" or "owner".
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub cluster_traffic: String,
    /// Description.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    /// Info URL.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub info_url: String,
    /// tags, type, version.
    #[serde(flatten)]
    pub generic: GenericFields,
}

/// An account JWT.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AccountClaims {
    /// jti, iat, iss, sub, name, exp, nbf.
    #[serde(flatten)]
    pub common: ClaimsData,
    /// Account specifics.
    #[serde(default)]
    pub nats: Account,
}

impl AccountClaims {
    /// A v2 account claim for `subject`, unlimited except JetStream (off),
    /// as `jwt.NewAccountClaims` starts.
    pub fn new(subject: &str) -> Self {
        let mut nats = Account {
            generic: GenericFields::v2("account"),
            ..Account::default()
        };
        nats.limits.nats = NatsLimits::unlimited();
        nats.limits.account = AccountLimits {
            imports: NO_LIMIT,
            exports: NO_LIMIT,
            wildcard_exports: true,
            disallow_bearer: false,
            conn: NO_LIMIT,
            leaf_node_conn: NO_LIMIT,
        };
        AccountClaims {
            common: ClaimsData {
                sub: subject.into(),
                ..ClaimsData::default()
            },
            nats,
        }
    }

    /// Whether `user` issued at `issued_at` is revoked: a revocation for the
    /// user's key or for "*" at or after `issued_at` (nats-server's
    /// `isRevoked`: revoked unless every matching time is `< iat`).
    pub fn is_revoked(&self, user: &str, issued_at: i64) -> Option<i64> {
        let r = &self.nats.revocations;
        r.get(user)
            .filter(|&&t| t >= issued_at)
            .or_else(|| r.get(ALL_USERS).filter(|&&t| t >= issued_at))
            .copied()
    }

    /// `AccountClaims.Validate` at `now`. Not yet checked here: the
    /// subjects and tokens inside `imports`/`exports` (their counts and
    /// export wildcards are).
    pub fn validate(&self, now: i64) -> Validation {
        let mut vr = Validation::default();
        self.common.validate(now, &mut vr);
        let a = &self.nats;
        let l = &a.limits;
        if !l.tiered_limits.is_empty() {
            if l.jetstream != JetStreamLimits::default() {
                vr.error("JetStream Limits and tiered JetStream Limits are mutually exclusive");
            }
            if l.tiered_limits.contains_key("") {
                vr.error("Tiered JetStream Limits can not contain a blank \"\" tier name");
            }
        }
        a.default_permissions.validate(&mut vr);
        validate_mappings(&a.mappings, &mut vr);
        validate_authorization(&a.authorization, &mut vr);
        if let Some(t) = &a.trace {
            let mut tvr = Validation::default();
            validate_subject(&t.dest, &mut tvr);
            if let Some(first) = tvr.issues.first() {
                vr.error(format!(
                    "the account Trace.Destination {}",
                    first.description
                ));
            }
            if has_wildcards(&t.dest) {
                vr.error(format!(
                    "the account Trace.Destination subject {:?} is not a valid publish subject",
                    t.dest
                ));
            }
            if t.sampling < 0 || t.sampling > 100 {
                vr.error(format!(
                    "the account Trace.Sampling value '{}' is not valid, should be in the range [1..100]",
                    t.sampling
                ));
            }
        }
        let imports = a.imports.as_array().map_or(0, Vec::len) as i64;
        let exports = a.exports.as_array().map(Vec::as_slice).unwrap_or(&[]);
        let too_many_imports = "the account contains more imports than allowed by the operator";
        if !l.is_empty() && l.account.imports >= 0 && imports > l.account.imports {
            vr.error(too_many_imports);
        }
        if l.account.imports != NO_LIMIT && imports > l.account.imports {
            vr.error(too_many_imports);
        }
        if l.account.exports != NO_LIMIT {
            if exports.len() as i64 > l.account.exports {
                vr.error("the account contains more exports than allowed by the operator");
            }
            if !l.account.wildcard_exports {
                for e in exports {
                    let subject = e.get("subject").and_then(Value::as_str).unwrap_or("");
                    if has_wildcards(subject) {
                        vr.error(
                            "the account contains wildcard exports that are not allowed by the operator",
                        );
                    }
                }
            }
        }
        a.signing_keys.validate(&mut vr);
        if a.description.len() > MAX_INFO_LENGTH {
            vr.error("Description is too long");
        }
        if !a.info_url.is_empty() {
            if a.info_url.len() > MAX_INFO_LENGTH {
                vr.error("Info URL is too long");
            }
            if !url_has_scheme_and_host(&a.info_url) {
                vr.error("error parsing info url: no hostname or scheme");
            }
        }
        if !matches!(a.cluster_traffic.as_str(), "" | "system" | "owner") {
            vr.error(format!(
                "unknown cluster traffic option: {:?}",
                a.cluster_traffic
            ));
        }
        if is_account_key(&self.common.iss) && !l.is_empty() {
            vr.warning("self-signed account JWTs shouldn't contain operator limits");
        }
        vr
    }
}

fn url_has_scheme_and_host(u: &str) -> bool {
    let Some((scheme, rest)) = u.split_once("://") else {
        return false;
    };
    let host = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host = host.rsplit('@').next().unwrap_or("");
    !scheme.is_empty()
        && scheme
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'+' | b'-' | b'.'))
        && !host.is_empty()
        && !host.starts_with(':')
}

fn validate_authorization(a: &ExternalAuthorization, vr: &mut Validation) {
    if !a.allowed_accounts.is_empty() && a.auth_users.is_empty() {
        vr.error("External authorization cannot have accounts without users specified");
    }
    for u in &a.auth_users {
        if !is_user_key(u) {
            vr.error(format!("AuthUser {u:?} is not a valid user public key"));
        }
    }
    for acc in &a.allowed_accounts {
        if acc == "*" {
            if a.allowed_accounts.len() > 1 {
                vr.error("AllowedAccounts can only be a list of accounts or \"*\"");
            }
        } else if !is_account_key(acc) {
            vr.error(format!("Account {acc:?} is not a valid account public key"));
        }
    }
    if !a.xkey.is_empty() && public_key_type(&a.xkey) != Some(KeyPairType::Curve) {
        vr.error(format!("XKey {:?} is not a valid public xkey", a.xkey));
    }
}

#[derive(Deserialize)]
struct WeightedMapping {
    #[serde(default)]
    subject: String,
    #[serde(default)]
    weight: u8,
    #[serde(default)]
    cluster: String,
}

fn typed_mappings(v: &Value) -> Result<BTreeMap<String, Vec<WeightedMapping>>, serde_json::Error> {
    if v.is_null() {
        return Ok(BTreeMap::new());
    }
    BTreeMap::deserialize(v)
}

fn validate_mappings(v: &Value, vr: &mut Validation) {
    let Ok(mappings) = typed_mappings(v) else {
        return; // rejected at decode time
    };
    for (from, to) in &mappings {
        validate_subject(from, vr);
        let mut per_cluster: BTreeMap<&str, u32> = BTreeMap::new();
        let mut total = 0u32;
        for e in to {
            validate_subject(&e.subject, vr);
            let w = if e.weight == 0 { 100 } else { e.weight } as u32;
            if w > 100 {
                vr.error(format!(
                    "Mapping {from:?} has a weight {w} that exceeds 100"
                ));
            }
            if e.cluster.is_empty() {
                total += w;
            } else {
                let t = per_cluster.entry(&e.cluster).or_default();
                *t += w;
                if *t > 100 {
                    vr.error(format!(
                        "Mapping {from:?} in cluster {:?} exceeds 100% among all of it's weighted to mappings",
                        e.cluster
                    ));
                }
            }
        }
        if total > 100 {
            vr.error(format!(
                "Mapping {from:?} exceeds 100% among all of it's weighted to mappings"
            ));
        }
    }
}

/// The `nats` part of an operator JWT.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Operator {
    /// Operator keys that may sign accounts besides the operator key.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub signing_keys: Vec<String>,
    /// Account server (nats-server derives a URL resolver from it).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub account_server_url: String,
    /// Where tools can reach the servers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub operator_service_urls: Vec<String>,
    /// The system account's public key.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub system_account: String,
    /// Minimum server version ("major.minor.update").
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub assert_server_version: String,
    /// Accounts must be signed by signing keys, not the operator key, and
    /// users by account signing keys, not the account key.
    #[serde(default, skip_serializing_if = "is_false")]
    pub strict_signing_key_usage: bool,
    /// tags, type, version.
    #[serde(flatten)]
    pub generic: GenericFields,
}

/// An operator JWT.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OperatorClaims {
    /// jti, iat, iss, sub, name, exp, nbf.
    #[serde(flatten)]
    pub common: ClaimsData,
    /// Operator specifics.
    #[serde(default)]
    pub nats: Operator,
}

impl OperatorClaims {
    /// A v2 operator claim for `subject` (self-issued).
    pub fn new(subject: &str) -> Self {
        OperatorClaims {
            common: ClaimsData {
                sub: subject.into(),
                iss: subject.into(),
                ..ClaimsData::default()
            },
            nats: Operator {
                generic: GenericFields::v2("operator"),
                ..Operator::default()
            },
        }
    }

    /// `OperatorClaims.DidSign`: whether this operator vouches for a claim
    /// issued by `issuer` about `subject`.
    pub fn did_sign(&self, issuer: &str, subject: &str) -> bool {
        if issuer == self.common.sub {
            return !self.nats.strict_signing_key_usage || subject == self.common.sub;
        }
        self.nats.signing_keys.iter().any(|k| k == issuer)
    }

    /// `OperatorClaims.Validate` at `now` (URLs are only checked for a
    /// scheme). nats-server does not run this on its trusted operators.
    pub fn validate(&self, now: i64) -> Validation {
        let mut vr = Validation::default();
        self.common.validate(now, &mut vr);
        let o = &self.nats;
        if !o.account_server_url.is_empty() && !o.account_server_url.contains("://") {
            vr.error(format!(
                "account server url {:?} requires a protocol",
                o.account_server_url
            ));
        }
        for k in &o.signing_keys {
            if !is_operator_key(k) {
                vr.error(format!("{k} is not an operator public key"));
            }
        }
        if !o.system_account.is_empty() && !is_account_key(&o.system_account) {
            vr.error(format!("{} is not an account public key", o.system_account));
        }
        if let Err(e) = parse_server_version(&o.assert_server_version) {
            vr.error(format!("assert server version error: {e}"));
        }
        vr
    }
}

/// `jwt.ParseServerVersion`: "" is 0.0.0, else three non-negative integers.
pub fn parse_server_version(v: &str) -> Result<(u64, u64, u64), String> {
    if v.is_empty() {
        return Ok((0, 0, 0));
    }
    let parts: Vec<&str> = v.split('.').collect();
    if parts.len() != 3 {
        return Err("asserted server version must be of the form <major>.<minor>.<update>".into());
    }
    let mut out = [0u64; 3];
    for (o, p) in out.iter_mut().zip(&parts) {
        let n: i64 = p
            .parse()
            .map_err(|_| format!("asserted server version cant parse {p} to int"))?;
        *o = u64::try_from(n)
            .map_err(|_| format!("asserted server version can'b contain negative values: {v}"))?;
    }
    Ok((out[0], out[1], out[2]))
}

/// A claim of another type (activation, authorization request/response, or
/// an unknown type), kept raw.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GenericClaims {
    /// jti, iat, iss, sub, name, exp, nbf.
    pub common: ClaimsData,
    /// The claim type ("" if none).
    pub kind: String,
    /// The `nats` object.
    pub nats: Value,
}

/// Decoded claims by type.
#[derive(Debug, Clone, PartialEq)]
pub enum Claims {
    /// An operator.
    Operator(OperatorClaims),
    /// An account (boxed: by far the largest).
    Account(Box<AccountClaims>),
    /// A user.
    User(UserClaims),
    /// Anything else.
    Other(GenericClaims),
}

impl Claims {
    /// The common fields.
    pub fn common(&self) -> &ClaimsData {
        match self {
            Claims::Operator(c) => &c.common,
            Claims::Account(c) => &c.common,
            Claims::User(c) => &c.common,
            Claims::Other(c) => &c.common,
        }
    }

    /// The claim type.
    pub fn kind(&self) -> &str {
        match self {
            Claims::Operator(_) => "operator",
            Claims::Account(_) => "account",
            Claims::User(_) => "user",
            Claims::Other(c) => &c.kind,
        }
    }
}

/// A decoded, signature-checked token.
#[derive(Debug, Clone, PartialEq)]
pub struct Decoded {
    /// The header.
    pub header: Header,
    /// Claim version: 2, 1 (v1 token, migrated), or -1 (unknown type).
    pub version: i64,
    /// The claims.
    pub claims: Claims,
}

/// Go treats JSON `null` as "leave the field alone": drop null members so
/// serde sees them as absent.
fn strip_nulls(v: Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.into_iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k, strip_nulls(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.into_iter().map(strip_nulls).collect()),
        other => other,
    }
}

fn payload_err(e: impl fmt::Display) -> JwtError {
    JwtError::Payload(e.to_string())
}

fn parse_header(part: &str) -> Result<Header, JwtError> {
    let bytes = GO_RAW_URL
        .decode(part.as_bytes())
        .map_err(|_| JwtError::Base64("header"))?;
    let v: Value = serde_json::from_slice(&bytes).map_err(|e| JwtError::Header(e.to_string()))?;
    let header: Header =
        serde_json::from_value(strip_nulls(v)).map_err(|e| JwtError::Header(e.to_string()))?;
    header.check()?;
    Ok(header)
}

/// Decodes and verifies a token: its signature must verify with the key in
/// `iss`, and `iss` must be a kind of key that may issue the claim (users:
/// accounts; accounts: operators or accounts; operators: operators). Says
/// nothing about whether the issuer is trusted, nor about expiry.
pub fn decode(token: &str) -> Result<Decoded, JwtError> {
    if token.len() > MAX_TOKEN_SIZE {
        return Err(JwtError::TooLarge(token.len()));
    }
    let chunks: Vec<&str> = token.split('.').collect();
    if chunks.len() != 3 {
        return Err(JwtError::Chunks(chunks.len()));
    }
    let header = parse_header(chunks[0])?;
    let payload = GO_RAW_URL
        .decode(chunks[1].as_bytes())
        .map_err(|_| JwtError::Base64("payload"))?;
    let (version, claims) = load_claims(&payload)?;
    let sig = GO_RAW_URL
        .decode(chunks[2].as_bytes())
        .map_err(|_| JwtError::Base64("signature"))?;
    let signed = if version <= 1 {
        chunks[1]
    } else {
        &token[..chunks[0].len() + chunks[1].len() + 1]
    };
    let issuer = &claims.common().iss;
    let verified = nkeys::KeyPair::from_public_key(issuer)
        .map(|k| k.verify(signed.as_bytes(), &sig).is_ok())
        .unwrap_or(false);
    if !verified {
        return Err(JwtError::Signature(version));
    }
    let issuer_ok = match claims.kind() {
        "user" | "activation" | "authorization_response" => is_account_key(issuer),
        "account" => is_account_key(issuer) || is_operator_key(issuer),
        "operator" => is_operator_key(issuer),
        "authorization_request" => is_server_key(issuer),
        _ => true,
    };
    if !issuer_ok {
        return Err(JwtError::IssuerKind {
            claim: claims.kind().into(),
            issuer: issuer.clone(),
        });
    }
    Ok(Decoded {
        header,
        version,
        claims,
    })
}

fn wrong_kind(expected: &'static str, found: &Claims) -> JwtError {
    JwtError::WrongKind {
        expected,
        found: found.kind().into(),
    }
}

/// Decodes a user JWT (`jwt.DecodeUserClaims`).
pub fn decode_user(token: &str) -> Result<UserClaims, JwtError> {
    match decode(token)?.claims {
        Claims::User(u) => Ok(u),
        other => Err(wrong_kind("user", &other)),
    }
}

/// Decodes an account JWT (`jwt.DecodeAccountClaims`).
pub fn decode_account(token: &str) -> Result<AccountClaims, JwtError> {
    match decode(token)?.claims {
        Claims::Account(a) => Ok(*a),
        other => Err(wrong_kind("account", &other)),
    }
}

/// Decodes an operator JWT (`jwt.DecodeOperatorClaims`).
pub fn decode_operator(token: &str) -> Result<OperatorClaims, JwtError> {
    match decode(token)?.claims {
        Claims::Operator(o) => Ok(o),
        other => Err(wrong_kind("operator", &other)),
    }
}

fn get_str<'a>(m: &'a Map<String, Value>, k: &str) -> Result<&'a str, JwtError> {
    match m.get(k) {
        None => Ok(""),
        Some(Value::String(s)) => Ok(s),
        Some(_) => Err(payload_err(format!("{k} is not a string"))),
    }
}

fn load_claims(data: &[u8]) -> Result<(i64, Claims), JwtError> {
    let v: Value = serde_json::from_slice(data).map_err(payload_err)?;
    let Value::Object(mut top) = strip_nulls(v) else {
        return Err(payload_err("claims are not a JSON object"));
    };
    let mut nats = match top.remove("nats") {
        None => Map::new(),
        Some(Value::Object(m)) => m,
        Some(_) => return Err(payload_err("nats is not an object")),
    };
    let top_kind = get_str(&top, "type")?.to_string();
    let nats_kind = get_str(&nats, "type")?.to_string();
    let nats_version = match nats.get("version") {
        None => 0,
        Some(v) => v
            .as_i64()
            .ok_or_else(|| payload_err("version is not an integer"))?,
    };
    if let Some(tags) = nats.get("tags") {
        Vec::<String>::deserialize(tags).map_err(payload_err)?;
    }
    let (kind, version) = if top_kind.is_empty() {
        (nats_kind, nats_version)
    } else {
        (top_kind, 1)
    };
    if version > LIB_VERSION {
        return Err(JwtError::NewerVersion(version));
    }
    let known = |version: i64| {
        if version == 1 || version == 2 {
            Ok(version)
        } else {
            Err(JwtError::UnsupportedVersion(version))
        }
    };
    let common = |top: &Map<String, Value>| -> Result<ClaimsData, JwtError> {
        ClaimsData::deserialize(&Value::Object(top.clone())).map_err(payload_err)
    };
    match kind.as_str() {
        "operator" | "account" | "user" => {
            let version = known(version)?;
            if version == 1 {
                nats = migrate_v1(&kind, &mut top, nats)?;
            }
            let empty = nats_permissions_empty(&nats);
            if kind == "account" {
                if let Some(m) = nats.get("mappings") {
                    typed_mappings(m).map_err(payload_err)?;
                }
                for k in ["imports", "exports"] {
                    if nats.get(k).is_some_and(|v| !v.is_array()) {
                        return Err(payload_err(format!("{k} is not an array")));
                    }
                }
            }
            top.insert("nats".into(), Value::Object(nats));
            let obj = Value::Object(top);
            let claims = match kind.as_str() {
                "operator" => {
                    Claims::Operator(OperatorClaims::deserialize(&obj).map_err(payload_err)?)
                }
                "account" => Claims::Account(Box::new(
                    AccountClaims::deserialize(&obj).map_err(payload_err)?,
                )),
                _ => {
                    let mut u = UserClaims::deserialize(&obj).map_err(payload_err)?;
                    u.decoded_empty = Some(empty);
                    Claims::User(u)
                }
            };
            Ok((version, claims))
        }
        "activation" | "authorization_request" | "authorization_response" => {
            let version = known(version)?;
            Ok((
                version,
                Claims::Other(GenericClaims {
                    common: common(&top)?,
                    kind,
                    nats: Value::Object(nats),
                }),
            ))
        }
        "cluster" | "server" => Err(JwtError::UnsupportedClaim(kind)),
        _ => Ok((
            -1,
            Claims::Other(GenericClaims {
                common: common(&top)?,
                kind,
                nats: Value::Object(nats),
            }),
        )),
    }
}

/// Reshapes a v1 claim (type, tags and issuer_account at the top level,
/// fewer `nats` fields) into the v2 layout, as the Go library migrates it.
fn migrate_v1(
    kind: &str,
    top: &mut Map<String, Value>,
    old: Map<String, Value>,
) -> Result<Map<String, Value>, JwtError> {
    let pick = |keys: &[&str], from: &Map<String, Value>| -> Map<String, Value> {
        keys.iter()
            .filter_map(|k| from.get(*k).map(|v| (k.to_string(), v.clone())))
            .collect()
    };
    let mut nats = match kind {
        "user" => {
            // v1 knew the permission fields up to `bearer_token`.
            let mut n = pick(&USER_PERMISSION_FIELDS[..10], &old);
            for k in ["subs", "data", "payload"] {
                n.entry(k).or_insert(Value::from(NO_LIMIT));
            }
            if let Some(ia) = top.remove("issuer_account") {
                n.insert("issuer_account".into(), ia);
            }
            n
        }
        "account" => {
            let mut n = pick(&["imports", "exports", "signing_keys", "revocations"], &old);
            if let Some(Value::Object(l)) = old.get("limits") {
                let keep = [
                    "subs",
                    "data",
                    "payload",
                    "imports",
                    "exports",
                    "wildcards",
                    "disallow_bearer",
                    "conn",
                    "leaf",
                ];
                n.insert("limits".into(), Value::Object(pick(&keep, l)));
            }
            if let Some(keys) = n.get("signing_keys") {
                Vec::<String>::deserialize(keys).map_err(payload_err)?;
            }
            n
        }
        _ => pick(
            &[
                "signing_keys",
                "account_server_url",
                "operator_service_urls",
                "system_account",
            ],
            &old,
        ),
    };
    if let Some(t) = top.remove("type") {
        nats.insert("type".into(), t);
    }
    if let Some(t) = top.remove("tags") {
        nats.insert("tags".into(), t);
    }
    nats.insert("version".into(), Value::from(1));
    Ok(nats)
}

/// Encodes and signs claims with `signer`, the way nsc does: v2 header,
/// `iss` set to the signer, `iat` set to now unless already set, a random
/// `jti` unless set, `nats.version` 2 unless set. It does not police who
/// may sign what, so tests can build tokens nats-server would refuse.
pub fn try_encode<C: Serialize + ?Sized>(claims: &C, signer: &KeyPair) -> Result<String, JwtError> {
    let v = serde_json::to_value(claims).map_err(|e| JwtError::Encode(e.to_string()))?;
    let Value::Object(mut m) = v else {
        return Err(JwtError::Encode("claims are not a JSON object".into()));
    };
    if m.get("sub")
        .and_then(Value::as_str)
        .unwrap_or("")
        .is_empty()
    {
        return Err(JwtError::Encode("subject is not set".into()));
    }
    m.insert("iss".into(), Value::String(signer.public_key()));
    if m.get("iat").and_then(Value::as_i64).unwrap_or(0) == 0 {
        m.insert("iat".into(), Value::from(unix_now()));
    }
    if m.get("jti")
        .and_then(Value::as_str)
        .unwrap_or("")
        .is_empty()
    {
        let mut raw = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut raw);
        m.insert(
            "jti".into(),
            Value::String(data_encoding::BASE32_NOPAD.encode(&raw)),
        );
    }
    if let Some(Value::Object(nats)) = m.get_mut("nats") {
        nats.entry("version").or_insert(Value::from(LIB_VERSION));
    }
    let header = serde_json::to_string(&Header {
        typ: TOKEN_TYPE.into(),
        alg: ALGORITHM.into(),
    })
    .map_err(|e| JwtError::Encode(e.to_string()))?;
    let payload = Value::Object(m).to_string();
    try_encode_raw(&header, &payload, signer)
}

/// [`try_encode`] for tests and tools: panics when the claims have no
/// subject or the signer has no seed.
pub fn encode<C: Serialize + ?Sized>(claims: &C, signer: &KeyPair) -> String {
    try_encode(claims, signer).unwrap_or_else(|e| panic!("{e}"))
}

/// Signs arbitrary header and payload JSON text as a v2 token (signature
/// over `header.payload`), for tests that need odd tokens.
pub fn try_encode_raw(
    header_json: &str,
    payload_json: &str,
    signer: &KeyPair,
) -> Result<String, JwtError> {
    let signed = format!(
        "{}.{}",
        b64url(header_json.as_bytes()),
        b64url(payload_json.as_bytes())
    );
    let sig = signer
        .sign(signed.as_bytes())
        .map_err(|e| JwtError::Encode(format!("signer has no seed: {e}")))?;
    Ok(format!("{signed}.{}", b64url(&sig)))
}

/// [`try_encode_raw`] for tests: panics when the signer has no seed.
pub fn encode_raw(header_json: &str, payload_json: &str, signer: &KeyPair) -> String {
    try_encode_raw(header_json, payload_json, signer).unwrap_or_else(|e| panic!("{e}"))
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Finds the blocks of a decorated file (`-----BEGIN ...-----`, one line of
/// token, `------END ...------`) with the same rule as the Go library's
/// `userConfigRE`, and returns the token of each, in order.
pub fn decorated_blocks(text: &str) -> Vec<&str> {
    let b = text.as_bytes();
    let dashes = |s: &[u8]| s.len() >= 6 && s.starts_with(b"---") && s.ends_with(b"---");
    let strip_cr = |s: &'_ [u8]| -> usize { s.len() - usize::from(s.last() == Some(&b'\r')) };
    let is_token = |c: u8| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'-' | b'.' | b'=');
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < b.len() {
        let Some(start) = b[pos..]
            .windows(3)
            .position(|w| w == b"---")
            .map(|i| pos + i)
        else {
            break;
        };
        let line_end = b[start..]
            .iter()
            .position(|&c| c == b'\n')
            .map(|i| start + i);
        let next_line = line_end.map_or(b.len(), |e| e + 1);
        let found = (|| {
            let header_end = line_end?;
            let header = &b[start..header_end];
            if !dashes(&header[..strip_cr(header)]) {
                return None;
            }
            let t_start = header_end + 1;
            let t_end = t_start + b[t_start..].iter().take_while(|&&c| is_token(c)).count();
            if t_end == t_start {
                return None;
            }
            let mut f_start = t_end;
            if b.get(f_start) == Some(&b'\r') {
                f_start += 1;
            }
            if b.get(f_start) != Some(&b'\n') {
                return None;
            }
            f_start += 1;
            let (footer, end) = match b[f_start..].iter().position(|&c| c == b'\n') {
                Some(i) => {
                    let f = &b[f_start..f_start + i];
                    (&f[..strip_cr(f)], f_start + i + 1)
                }
                None => (&b[f_start..], b.len()),
            };
            dashes(footer).then_some((t_start, t_end, end))
        })();
        match found {
            Some((t_start, t_end, end)) => {
                out.push(&text[t_start..t_end]);
                pos = end;
            }
            None => pos = next_line,
        }
    }
    out
}

/// The JWT in possibly decorated text: the first block's token, or the
/// whole text when there is no block (`jwt.ParseDecoratedJWT`).
pub fn parse_decorated_jwt(text: &str) -> &str {
    decorated_blocks(text).first().copied().unwrap_or(text)
}

/// Reads an operator JWT from text as nsc writes it (decorated with
/// `-----BEGIN NATS OPERATOR JWT-----`) or raw, and decodes it.
pub fn read_operator_jwt(text: &str) -> Result<(String, OperatorClaims), JwtError> {
    let token = parse_decorated_jwt(text);
    let claims = decode_operator(token)?;
    Ok((token.to_string(), claims))
}

/// One finding of a validation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issue {
    /// What is wrong (the Go library's wording).
    pub description: String,
    /// Makes the claim unusable.
    pub blocking: bool,
    /// Expired or not yet valid (blocking when times are checked).
    pub time_check: bool,
}

/// Findings of a claim validation (`jwt.ValidationResults`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Validation {
    /// All findings, in the order found.
    pub issues: Vec<Issue>,
}

impl Validation {
    fn push(&mut self, d: impl Into<String>, blocking: bool, time_check: bool) {
        self.issues.push(Issue {
            description: d.into(),
            blocking,
            time_check,
        });
    }
    fn error(&mut self, d: impl Into<String>) {
        self.push(d, true, false);
    }
    fn time(&mut self, d: impl Into<String>) {
        self.push(d, false, true);
    }
    fn warning(&mut self, d: impl Into<String>) {
        self.push(d, false, false);
    }

    /// Whether a finding makes the claim unusable (nats-server always
    /// includes time checks).
    pub fn is_blocking(&self, include_time_checks: bool) -> bool {
        self.issues
            .iter()
            .any(|i| i.blocking || (include_time_checks && i.time_check))
    }

    /// Descriptions of the blocking, non-time findings.
    pub fn errors(&self) -> Vec<String> {
        self.issues
            .iter()
            .filter(|i| i.blocking)
            .map(|i| i.description.clone())
            .collect()
    }
}

/// `Subject.Validate` of the JWT library: not empty, no spaces, no empty
/// token.
fn validate_subject(v: &str, vr: &mut Validation) {
    if v.is_empty() {
        vr.error("subject cannot be empty");
        return;
    }
    if v.contains(' ') {
        vr.error(format!("subject {v:?} cannot have spaces"));
    }
    if v.starts_with('.') || v.ends_with('.') {
        vr.error(format!("subject {v:?} cannot start or end with a `.`"));
    }
    if v.contains("..") {
        vr.error(format!("subject {v:?} cannot contain consecutive `.`"));
    }
}

/// `Subject.HasWildCards` of the JWT library.
pub(crate) fn has_wildcards(v: &str) -> bool {
    v.ends_with(".>")
        || v.contains(".*.")
        || v.ends_with(".*")
        || v.starts_with("*.")
        || v == "*"
        || v == ">"
}

/// Go's `net.ParseCIDR`, normalised for `Contains`: an address and prefix,
/// IPv4-mapped networks turned into IPv4 ones as Go compares them.
pub(crate) fn parse_cidr(s: &str) -> Option<(IpAddr, u32)> {
    let (addr, bits) = s.split_once('/')?;
    if bits.is_empty() || !bits.bytes().all(|c| c.is_ascii_digit()) || bits.len() > 4 {
        return None;
    }
    let bits: u32 = bits.parse().ok()?;
    let ip: IpAddr = addr.parse().ok()?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    if bits > max {
        return None;
    }
    Some(match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => (IpAddr::V4(v4), bits.saturating_sub(96)),
            None => (ip, bits),
        },
        v4 => (v4, bits),
    })
}

/// Whether `ip` is inside the network `(net, bits)` from [`parse_cidr`].
pub(crate) fn cidr_contains(net: (IpAddr, u32), ip: IpAddr) -> bool {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    };
    match (net.0, ip) {
        (IpAddr::V4(n), IpAddr::V4(i)) => {
            let mask = u32::MAX.checked_shl(32 - net.1).unwrap_or(0);
            u32::from(n) & mask == u32::from(i) & mask
        }
        (IpAddr::V6(n), IpAddr::V6(i)) => {
            let mask = u128::MAX.checked_shl(128 - net.1).unwrap_or(0);
            u128::from(n) & mask == u128::from(i) & mask
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::zone::Utc;

    fn op() -> KeyPair {
        KeyPair::new_operator()
    }

    #[test]
    fn round_trip_user_account_operator() {
        let o = op();
        let a = KeyPair::new_account();
        let u = KeyPair::new_user();
        let mut oc = OperatorClaims::new(&o.public_key());
        oc.common.name = "O".into();
        oc.nats.signing_keys.push(op().public_key());
        let ot = encode(&oc, &o);
        let back = decode_operator(&ot).unwrap();
        assert_eq!(back.nats, oc.nats);
        assert_eq!(back.common.iss, o.public_key());
        assert!(back.common.iat > 0);
        assert_eq!(back.common.jti.len(), 52);

        let mut ac = AccountClaims::new(&a.public_key());
        ac.nats
            .signing_keys
            .add(&KeyPair::new_account().public_key());
        let mut scope = UserScope::new(&KeyPair::new_account().public_key());
        scope.template.permissions.publish.allow = vec!["a.{{name()}}".into()];
        ac.nats.signing_keys.add_scoped(scope.clone());
        ac.nats.revocations.insert("*".into(), 5);
        let at = encode(&ac, &o);
        let back = decode_account(&at).unwrap();
        assert_eq!(back.nats.signing_keys, ac.nats.signing_keys);
        assert_eq!(back.nats.limits, ac.nats.limits);
        assert_eq!(back.nats.revocations, ac.nats.revocations);
        assert_eq!(back.nats.signing_keys.get(&scope.key), Some(Some(&scope)));

        let mut uc = UserClaims::new(&u.public_key());
        uc.nats.permission_limits.permissions.subscribe.deny = vec!["x".into()];
        uc.nats.permission_limits.bearer_token = true;
        let ut = encode(&uc, &a);
        let d = decode(&ut).unwrap();
        assert_eq!(d.version, 2);
        assert_eq!(d.header.alg, ALGORITHM);
        let Claims::User(back) = d.claims else {
            panic!()
        };
        assert_eq!(back.nats, uc.nats);
        assert!(!back.has_empty_permissions());
        assert!(matches!(
            decode_account(&ut),
            Err(JwtError::WrongKind { .. })
        ));
    }

    /// A user JWT shaped exactly like nsc 2.x output, signed here.
    #[test]
    fn nsc_shaped_user() {
        let a = KeyPair::new_account();
        let u = KeyPair::new_user();
        let payload = format!(
            r#"{{"jti":"X","iat":1700000000,"iss":"{}","name":"bob","sub":"{}",
            "nats":{{"pub":{{}},"sub":{{}},"subs":-1,"data":-1,"payload":-1,
            "src":"10.0.0.0/8, 192.168.1.0/24","type":"user","version":2}}}}"#,
            a.public_key(),
            u.public_key()
        );
        let t = encode_raw(r#"{"typ":"JWT","alg":"ed25519-nkey"}"#, &payload, &a);
        let uc = decode_user(&t).unwrap();
        assert_eq!(uc.common.name, "bob");
        assert_eq!(uc.limits().limits.nats, NatsLimits::unlimited());
        assert_eq!(
            uc.limits().limits.user.src,
            ["10.0.0.0/8", "192.168.1.0/24"]
        );
        assert!(uc.limits().permissions.is_empty());
        assert!(!uc.has_empty_permissions());
    }

    #[test]
    fn header_rules() {
        let a = KeyPair::new_account();
        let u = KeyPair::new_user();
        let payload = serde_json::to_string(&UserClaims::new(&u.public_key())).unwrap();
        let payload = payload.replacen('{', &format!(r#"{{"iss":"{}","#, a.public_key()), 1);
        for ok in [
            r#"{"typ":"JWT","alg":"ed25519-nkey"}"#,
            r#"{"typ":"jwt","alg":"ED25519-NKEY"}"#,
            r#"{"typ":"JWT","alg":"ed25519","extra":1}"#,
        ] {
            decode_user(&encode_raw(ok, &payload, &a)).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        for (bad, want) in [
            (
                r#"{"typ":"JWS","alg":"ed25519-nkey"}"#,
                "not supported type",
            ),
            (r#"{"alg":"ed25519-nkey"}"#, "not supported type"),
            (r#"{"typ":"JWT","alg":"ed25519-nkeys"}"#, "unexpected"),
            (r#"{"typ":"JWT","alg":"HS256"}"#, "unexpected"),
            (r#"{"typ":1,"alg":"ed25519"}"#, "header"),
            (r#"[]"#, ""),
        ] {
            let e = decode(&encode_raw(bad, &payload, &a)).unwrap_err();
            assert!(e.to_string().contains(want), "{bad}: {e}");
        }
    }

    #[test]
    fn structural_failures() {
        let a = KeyPair::new_account();
        let good = encode(&UserClaims::new(&KeyPair::new_user().public_key()), &a);
        assert_eq!(decode("a.b").unwrap_err(), JwtError::Chunks(2));
        assert_eq!(decode("a.b.c.d").unwrap_err(), JwtError::Chunks(4));
        assert_eq!(decode("!.b.c").unwrap_err(), JwtError::Base64("header"));
        let parts: Vec<&str> = good.split('.').collect();
        let bad_sig = format!("{}.{}.{}", parts[0], parts[1], &parts[2][..10]);
        assert_eq!(decode(&bad_sig).unwrap_err(), JwtError::Signature(2));
        let bad_b64 = format!("{}.{}.{}=", parts[0], parts[1], parts[2]);
        assert_eq!(decode(&bad_b64).unwrap_err(), JwtError::Base64("signature"));
        // Go's base64 skips line breaks, so a trailing newline in a file is fine.
        decode(&format!("{good}\n")).unwrap();
        let huge = "a".repeat(MAX_TOKEN_SIZE + 1);
        assert!(matches!(decode(&huge), Err(JwtError::TooLarge(_))));
        // Tampered payload.
        let mut uc = UserClaims::new(&KeyPair::new_user().public_key());
        uc.common.iss = a.public_key();
        uc.common.iat = 1;
        let forged = format!(
            "{}.{}.{}",
            parts[0],
            b64url(serde_json::to_string(&uc).unwrap().as_bytes()),
            parts[2]
        );
        assert_eq!(decode(&forged).unwrap_err(), JwtError::Signature(2));
    }

    #[test]
    fn claim_type_and_version_rules() {
        let a = KeyPair::new_account();
        let u = KeyPair::new_user().public_key();
        let h = r#"{"typ":"JWT","alg":"ed25519-nkey"}"#;
        let mk = |nats: &str| {
            let p = format!(
                r#"{{"iss":"{}","sub":"{u}","nats":{nats}}}"#,
                a.public_key()
            );
            decode(&encode_raw(h, &p, &a))
        };
        assert_eq!(
            mk(r#"{"type":"user","version":3}"#).unwrap_err(),
            JwtError::NewerVersion(3)
        );
        assert_eq!(
            mk(r#"{"type":"user"}"#).unwrap_err(),
            JwtError::UnsupportedVersion(0)
        );
        assert!(matches!(
            mk(r#"{"type":"server","version":2}"#),
            Err(JwtError::UnsupportedClaim(_))
        ));
        assert!(matches!(
            mk(r#"{"type":"user","version":2,"subs":"x"}"#),
            Err(JwtError::Payload(_))
        ));
        assert!(matches!(
            mk(r#"{"type":"user","version":"2"}"#),
            Err(JwtError::Payload(_))
        ));
        assert!(matches!(mk(r#"[1]"#), Err(JwtError::Payload(_))));
        // null means absent, as in Go.
        let d = mk(r#"{"type":"user","version":2,"subs":null,"pub":null}"#).unwrap();
        assert!(matches!(d.claims, Claims::User(ref c) if c.has_empty_permissions()));
        // Unknown types decode as generic claims, signed over the payload only (v1 rule).
        assert_eq!(
            mk(r#"{"type":"thing","version":2}"#).unwrap_err(),
            JwtError::Signature(-1)
        );
        // Users must be issued by accounts.
        let o = op();
        let p = format!(
            r#"{{"iss":"{}","sub":"{u}","nats":{{"type":"user","version":2}}}}"#,
            o.public_key()
        );
        assert!(matches!(
            decode(&encode_raw(h, &p, &o)),
            Err(JwtError::IssuerKind { .. })
        ));
        // Operators may not be issued by accounts.
        let p = format!(
            r#"{{"iss":"{}","sub":"{}","nats":{{"type":"operator","version":2}}}}"#,
            a.public_key(),
            o.public_key()
        );
        assert!(matches!(
            decode(&encode_raw(h, &p, &a)),
            Err(JwtError::IssuerKind { .. })
        ));
    }

    #[test]
    fn v1_tokens_are_migrated() {
        let a = KeyPair::new_account();
        let u = KeyPair::new_user().public_key();
        // v1: type at the top level, signature over the payload part only.
        let payload = format!(
            r#"{{"iss":"{}","sub":"{u}","type":"user","tags":["t"],"issuer_account":"{}",
            "nats":{{"pub":{{"allow":["a"]}},"max":3,"allowed_connection_types":["MQTT"]}}}}"#,
            a.public_key(),
            a.public_key()
        );
        let h = b64url(br#"{"typ":"JWT","alg":"ed25519"}"#);
        let p = b64url(payload.as_bytes());
        let sig = b64url(&a.sign(p.as_bytes()).unwrap());
        let d = decode(&format!("{h}.{p}.{sig}")).unwrap();
        assert_eq!(d.version, 1);
        let Claims::User(uc) = d.claims else { panic!() };
        assert_eq!(uc.nats.generic.tags, ["t"]);
        assert_eq!(uc.nats.issuer_account, a.public_key());
        assert_eq!(uc.limits().permissions.publish.allow, ["a"]);
        assert_eq!(uc.limits().limits.nats, NatsLimits::unlimited());
        // v1 users had no connection types: the field is ignored.
        assert!(uc.limits().allowed_connection_types.is_empty());
        // The v2 signing rule fails for a v1 token.
        let sig2 = b64url(&a.sign(format!("{h}.{p}").as_bytes()).unwrap());
        assert_eq!(
            decode(&format!("{h}.{p}.{sig2}")).unwrap_err(),
            JwtError::Signature(1)
        );
    }

    #[test]
    fn signing_keys_json_shapes() {
        let sk = KeyPair::new_account().public_key();
        let plain = KeyPair::new_account().public_key();
        let json = format!(
            r#"[ "{plain}", {{"kind":"user_scope","key":"{sk}","role":"r",
                "template":{{"pub":{{"allow":["x"]}},"subs":10}}}}, 7, true ]"#
        );
        let keys: SigningKeys = serde_json::from_str(&json).unwrap();
        assert_eq!(keys.get(&plain), Some(None));
        let scope = keys.get(&sk).unwrap().unwrap();
        assert_eq!(scope.role, "r");
        assert_eq!(scope.template.limits.nats.subs, 10);
        // Template limits not written stay unlimited.
        assert_eq!(scope.template.limits.nats.data, NO_LIMIT);
        assert_eq!(scope.template.limits.nats.payload, NO_LIMIT);
        let bad = r#"[{"kind":"other","key":"x"}]"#;
        assert!(serde_json::from_str::<SigningKeys>(bad).is_err());
        assert!(serde_json::from_str::<SigningKeys>(r#""x""#).is_err());
    }

    #[test]
    fn empty_permissions_follow_go_zero_value() {
        let m = |s: &str| -> Map<String, Value> { serde_json::from_str(s).unwrap() };
        assert!(nats_permissions_empty(&m(
            r#"{"type":"user","pub":{},"sub":{}}"#
        )));
        assert!(nats_permissions_empty(&m(
            r#"{"subs":0,"bearer_token":false,"times_location":""}"#
        )));
        assert!(!nats_permissions_empty(&m(r#"{"pub":{"allow":[]}}"#)));
        assert!(!nats_permissions_empty(&m(r#"{"src":""}"#)));
        assert!(!nats_permissions_empty(&m(r#"{"subs":-1}"#)));
        assert!(!nats_permissions_empty(&m(r#"{"resp":{}}"#)));
        assert!(!nats_permissions_empty(&m(
            r#"{"allowed_connection_types":[]}"#
        )));
        let u = UserClaims::new_scoped("U", "A");
        assert!(u.has_empty_permissions());
        assert!(!UserClaims::new("U").has_empty_permissions());
    }

    #[test]
    fn user_validation() {
        let mut u = UserClaims::new(&KeyPair::new_user().public_key());
        assert!(!u.validate(100, &Utc).is_blocking(true));
        u.common.exp = 99;
        let vr = u.validate(100, &Utc);
        assert!(vr.is_blocking(true) && !vr.is_blocking(false));
        u.common.exp = 100; // valid through the second of exp
        assert!(!u.validate(100, &Utc).is_blocking(true));
        u.common.nbf = 101;
        assert_eq!(
            u.validate(100, &Utc).issues[0].description,
            "claim is not yet valid"
        );
        u.common.nbf = 0;
        let pl = &mut u.nats.permission_limits;
        pl.permissions.publish.allow = vec!["a b".into(), "".into(), "a..b".into(), ".a".into()];
        pl.permissions.subscribe.allow = vec!["a q".into(), "a b c".into()];
        pl.limits.user.src = vec!["10.0.0.0/8".into(), "10.0.0.1".into(), "::1/129".into()];
        pl.limits.user.times = vec![TimeRange {
            start: "25:00:00".into(),
            end: String::new(),
        }];
        pl.limits.user.locale = "Mars/Base".into();
        u.nats.issuer_account = "nope".into();
        let errors = u.validate(100, &Utc).errors();
        for want in [
            "\"a b\" is not allowed to contain queue",
            "subject cannot be empty",
            "cannot contain consecutive",
            "cannot start or end",
            "\"a b c\" contains too many spaces",
            "invalid cidr \"10.0.0.1\"",
            "invalid cidr \"::1/129\"",
            "start in time range is invalid",
            "time ranges end must contain an end",
            "could not parse iana time zone",
            "account_id is not an account public key",
        ] {
            assert!(
                errors.iter().any(|e| e.contains(want)),
                "{want} not in {errors:#?}"
            );
        }
        assert_eq!(errors.len(), 11, "{errors:#?}");
    }

    #[test]
    fn account_validation() {
        let a = KeyPair::new_account().public_key();
        let mut ac = AccountClaims::new(&a);
        ac.common.iss = op().public_key();
        assert!(ac.validate(0).issues.is_empty());
        ac.nats.limits.account.exports = 1;
        ac.nats.limits.account.wildcard_exports = false;
        ac.nats.exports = serde_json::json!([{"subject":"a.*"},{"subject":"b"}]);
        ac.nats.limits.account.imports = 0;
        ac.nats.imports = serde_json::json!([{"subject":"c"}]);
        ac.nats.signing_keys.add("bogus");
        ac.nats.default_permissions.publish.deny = vec!["a b".into()];
        ac.nats.mappings =
            serde_json::json!({"a": [{"subject":"b","weight":60},{"subject":"c","weight":60}]});
        ac.nats.cluster_traffic = "everyone".into();
        ac.nats.info_url = "nohost".into();
        let errors = ac.validate(0).errors();
        for want in [
            "more exports",
            "wildcard exports",
            "more imports",
            "not a valid account signing key",
            "not allowed to contain queue",
            "exceeds 100%",
            "unknown cluster traffic",
            "info url",
        ] {
            assert!(
                errors.iter().any(|e| e.contains(want)),
                "{want} not in {errors:#?}"
            );
        }
        assert_eq!(ac.is_revoked("U1", 10), None);
        ac.nats.revocations.insert("U1".into(), 10);
        assert_eq!(ac.is_revoked("U1", 10), Some(10));
        assert_eq!(ac.is_revoked("U1", 11), None);
        ac.nats.revocations.insert("*".into(), 20);
        assert_eq!(ac.is_revoked("U1", 11), Some(20));
        assert_eq!(ac.is_revoked("U2", 21), None);
    }

    #[test]
    fn decorated_files() {
        let jwt = "eyJhbGciOiJlZDI1NTE5LW5rZXkiLCJ0eXAiOiJKV1QifQ.eyJzdWIiOiJ4In0.c2ln";
        // A fresh seed: no private key lives in the repository.
        let seed = KeyPair::new_user().seed().expect("seed");
        let seed = seed.as_str();
        let creds = format!(
            "-----BEGIN NATS USER JWT-----\n{jwt}\n------END NATS USER JWT------\n\n\
             ************************* IMPORTANT *************************\n\
             NKEY Seed printed below can be used to sign and prove identity.\n\n\
             -----BEGIN USER NKEY SEED-----\n{seed}\n------END USER NKEY SEED------\n\n\
             *************************************************************\n"
        );
        assert_eq!(decorated_blocks(&creds), [jwt, seed]);
        let crlf = creds.replace('\n', "\r\n");
        assert_eq!(decorated_blocks(&crlf), [jwt, seed]);
        // Footer at end of file without newline; indented header.
        let op = format!(
            "  -----BEGIN NATS OPERATOR JWT-----\n{jwt}\n------END NATS OPERATOR JWT------"
        );
        assert_eq!(parse_decorated_jwt(&op), jwt);
        // Raw text passes through untouched.
        assert_eq!(parse_decorated_jwt("eyJraw\n"), "eyJraw\n");
        // Too few dashes, a token line with spaces: not blocks.
        assert!(decorated_blocks(&format!("--BEGIN--\n{jwt}\n--END--\n")).is_empty());
        assert!(decorated_blocks(&format!("-----BEGIN-----\n{jwt} x\n-----END-----\n")).is_empty());
        assert!(decorated_blocks("------\n").is_empty());
        assert!(decorated_blocks("").is_empty());
    }

    #[test]
    fn operator_decorated_round_trip() {
        let o = op();
        let mut oc = OperatorClaims::new(&o.public_key());
        oc.nats.system_account = KeyPair::new_account().public_key();
        let t = encode(&oc, &o);
        let file =
            format!("-----BEGIN NATS OPERATOR JWT-----\n{t}\n------END NATS OPERATOR JWT------\n");
        let (raw, claims) = read_operator_jwt(&file).unwrap();
        assert_eq!(raw, t);
        assert_eq!(claims.nats.system_account, oc.nats.system_account);
        assert_eq!(read_operator_jwt(&t).unwrap().0, t);
        assert!(claims.validate(0).issues.is_empty());
        assert!(claims.did_sign(&o.public_key(), "A"));
    }

    #[test]
    fn cidrs_follow_go() {
        let n = parse_cidr("10.1.0.0/16").unwrap();
        assert!(cidr_contains(n, "10.1.2.3".parse().unwrap()));
        assert!(cidr_contains(n, "::ffff:10.1.2.3".parse().unwrap()));
        assert!(!cidr_contains(n, "10.2.0.1".parse().unwrap()));
        assert!(!cidr_contains(n, "::1".parse().unwrap()));
        let all = parse_cidr("0.0.0.0/0").unwrap();
        assert!(cidr_contains(all, "1.2.3.4".parse().unwrap()));
        let v6 = parse_cidr("2001:db8::/32").unwrap();
        assert!(cidr_contains(v6, "2001:db8::5".parse().unwrap()));
        assert!(parse_cidr("010.0.0.0/8").is_none());
        assert!(parse_cidr("10.0.0.0/08").is_some());
        assert!(parse_cidr("10.0.0.0/").is_none());
        assert!(parse_cidr("10.0.0.0/33").is_none());
        assert!(parse_cidr("10.0.0.0/+8").is_none());
    }

    #[test]
    fn server_versions() {
        assert_eq!(parse_server_version(""), Ok((0, 0, 0)));
        assert_eq!(parse_server_version("2.10.1"), Ok((2, 10, 1)));
        assert!(parse_server_version("2.10").is_err());
        assert!(parse_server_version("2.-1.0").is_err());
    }
}
