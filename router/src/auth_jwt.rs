//! Operator mode (decentralized JWT auth): the configured trust (operator
//! JWTs, system account, account resolver) and the decision for a client
//! that presents a user JWT. The JWT rules themselves live in
//! `peer::trust`; this module supplies the accounts and maps the outcome
//! onto the connection's identity.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use peer::trust::{ConnectAttempt, TrustedOperators};

use crate::auth::{Context, Identity, Permissions, Presented, Refusal};

/// Where account JWTs come from (`resolver`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolver {
    /// `resolver: MEMORY`: only the accounts in `resolver_preload`.
    Memory,
    /// `resolver: { type: full | cache, dir }`: `<dir>/<ACCOUNT>.jwt` files,
    /// read at each connect, so an account added (or changed) in the
    /// directory applies to new connections without a restart.
    Dir(PathBuf),
}

/// The operator-mode configuration.
pub struct OperatorTrust {
    /// The operator JWTs as configured (raw text), for reload comparisons.
    pub operator_jwts: Vec<String>,
    pub trusted: TrustedOperators,
    pub system_account: Option<String>,
    pub resolver: Resolver,
    /// `resolver_preload { ACCOUNT: JWT }`.
    pub preload: BTreeMap<String, String>,
}

impl fmt::Debug for OperatorTrust {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OperatorTrust")
            .field("operators", &self.trusted.trusted_keys())
            .field("system_account", &self.system_account)
            .field("resolver", &self.resolver)
            .field("preloaded", &self.preload.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl PartialEq for OperatorTrust {
    fn eq(&self, other: &Self) -> bool {
        self.operator_jwts == other.operator_jwts
            && self.system_account == other.system_account
            && self.resolver == other.resolver
            && self.preload == other.preload
    }
}

impl Eq for OperatorTrust {}

impl OperatorTrust {
    /// Builds the trust from config values: each operator is a path to a
    /// (possibly decorated) JWT file or the JWT itself. Preloaded accounts
    /// must be signed by a trusted operator, as nats-server checks at start.
    pub fn new(
        operators: &[String],
        system_account: Option<String>,
        resolver: Resolver,
        preload: BTreeMap<String, String>,
    ) -> Result<Self, String> {
        let mut texts = Vec::new();
        let mut claims = Vec::new();
        for o in operators {
            let (jwt, c) = peer::trust::load_operator_jwt(o).map_err(|e| e.to_string())?;
            texts.push(jwt);
            claims.push(c);
        }
        let trusted = TrustedOperators::from_claims(claims).map_err(|e| e.to_string())?;
        let system_account = system_account.or_else(|| trusted.system_account().map(str::to_owned));
        for (key, jwt) in &preload {
            // nats-server starts anyway; users of such an account are refused.
            if let Err(e) = trusted.verify_account_for(key, jwt, peer::jwt::unix_now()) {
                tracing::warn!("resolver_preload account {key}: {e}");
            }
        }
        if let Resolver::Dir(dir) = &resolver {
            if !dir.is_dir() {
                return Err(format!(
                    "resolver directory {} does not exist",
                    dir.display()
                ));
            }
        }
        Ok(OperatorTrust {
            operator_jwts: texts,
            trusted,
            system_account,
            resolver,
            preload,
        })
    }

    /// The JWT of `account`: preloaded, else from the resolver directory.
    fn account_jwt(&self, account: &str) -> Option<String> {
        if let Some(j) = self.preload.get(account) {
            return Some(j.clone());
        }
        match &self.resolver {
            Resolver::Memory => None,
            Resolver::Dir(dir) => {
                // Account keys are base32; anything else never names a file.
                if !peer::jwt::is_account_key(account) {
                    return None;
                }
                let text = std::fs::read_to_string(dir.join(format!("{account}.jwt"))).ok()?;
                Some(peer::jwt::parse_decorated_jwt(&text).trim().to_owned())
            }
        }
    }
}

/// Decides a client in operator mode: it must present a user JWT that
/// chains to a trusted operator, and sign the nonce with the user's key.
pub fn authenticate(
    trust: &Arc<OperatorTrust>,
    p: &Presented,
    cx: Context<'_>,
) -> Result<Identity, Refusal> {
    let lookup = |account: &str| trust.account_jwt(account);
    let mut attempt = ConnectAttempt::new(
        p.jwt.as_deref().unwrap_or(""),
        cx.nonce.unwrap_or("").as_bytes(),
        p.sig.as_deref().unwrap_or(""),
        peer::jwt::unix_now(),
    );
    attempt.client_ip = cx.ip;
    let user = peer::trust::authorize(&trust.trusted, &lookup, &attempt).map_err(|r| Refusal {
        revoked: matches!(r, peer::trust::Refusal::Revoked { .. }),
        reason: r.to_string(),
    })?;
    let permissions = user.permissions().map(|p| {
        Arc::new(Permissions {
            pub_allow: p.publish.allow.clone(),
            pub_deny: p.publish.deny.clone(),
            sub_allow: p.subscribe.allow.clone(),
            sub_deny: p.subscribe.deny.clone(),
            responses: p.resp.as_ref().map(|r| {
                crate::auth::ResponsePermission::new(
                    r.max,
                    Duration::from_nanos(r.ttl.max(0) as u64),
                )
            }),
        })
    });
    let limits = &user.claims.nats.permission_limits.limits.nats;
    Ok(Identity {
        user: (!user.name.is_empty()).then(|| user.name.clone()),
        nkey: Some(user.user_key.clone()),
        account: Some(user.account_key.clone()),
        expires: user
            .expires_at
            .map(|t| UNIX_EPOCH + Duration::from_secs(t.max(0) as u64)),
        max_subs: Some(limits.subs),
        max_payload: Some(limits.payload),
        permissions,
    })
}
