//! Config reload (SIGHUP, `tern --signal reload`), as nats-server does it:
//! the file is read again and the command-line flags applied on top; if it
//! does not parse, or changes a setting that cannot change while running,
//! nothing changes and the reason is logged. Otherwise the new settings are
//! installed as [`Server::live`] and enforced on existing connections
//! (credentials checked again, connections over `max_connections` closed,
//! cluster routes and allowed peers updated).

use std::fmt::Debug;
use std::sync::Arc;

use crate::cli::ServerArgs;
use crate::client::{Client, CloseReason};
use crate::options::Options;
use crate::server::Server;

/// What a reload needs to rebuild the options: the flags, and the options
/// the running server was configured with (before `-p -1` was resolved).
pub struct Reloader {
    args: ServerArgs,
    configured: Options,
}

/// A value as the log shows it: `Some(x)` as `x`, `None` as nothing.
fn show<T: Debug>(v: &T) -> String {
    let s = format!("{v:?}");
    let s = match s.strip_prefix("Some(").and_then(|r| r.strip_suffix(')')) {
        Some(inner) => inner.to_owned(),
        None if s == "None" => String::new(),
        None => s,
    };
    s.trim_matches('"').to_owned()
}

/// Refuses a change to anything that is fixed once the server runs, with
/// nats-server's wording (`config reload not supported for X: old=.., new=..`).
fn check_fixed(old: &Options, new: &Options) -> Result<(), String> {
    macro_rules! fixed {
        ($($name:literal => $($field:ident).+),* $(,)?) => {$(
            if format!("{:?}", old.$($field).+) != format!("{:?}", new.$($field).+) {
                return Err(format!(
                    "config reload not supported for {}: old={}, new={}",
                    $name,
                    show(&old.$($field).+),
                    show(&new.$($field).+)
                ));
            }
        )*};
    }
    fixed!(
        "host" => host,
        "port" => port,
        "server_name" => server_name,
        "http_port" => http_port,
        "http_host" => http_host,
        "log_file" => log_file,
        "pid_file" => pid_file,
        "ports_file_dir" => ports_file_dir,
        "server_key_file" => server_key_file,
        "client_advertise" => client_advertise,
        "cluster name" => cluster.name,
        "cluster listen" => cluster.listen,
        "cluster advertise" => cluster.advertise,
        "cluster no_advertise" => cluster.no_advertise,
    );
    Ok(())
}

/// Copies every setting a reload may change from `new` into `live`, and
/// lists the changes for the log (secrets are named, not shown).
fn apply_changeable(live: &mut Options, old: &Options, new: &Options) -> Vec<String> {
    let mut changes = Vec::new();
    if old.auth != new.auth {
        changes.push("authorization".to_owned());
    }
    live.auth = new.auth.clone();
    if old.tls != new.tls || old.allow_non_tls != new.allow_non_tls {
        changes.push("tls".to_owned());
    }
    // Certificates are read again even when the paths stay the same, so a
    // renewed certificate applies to new connections.
    live.tls = new.tls.clone();
    live.allow_non_tls = new.allow_non_tls;
    macro_rules! changeable {
        ($($name:literal => $field:ident),* $(,)?) => {$(
            if old.$field != new.$field {
                changes.push(format!("{} = {}", $name, show(&new.$field)));
            }
            live.$field = new.$field;
        )*};
    }
    changeable!(
        "authorization timeout" => auth_timeout,
        "max_payload" => max_payload,
        "max_control_line" => max_control_line,
        "max_connections" => max_connections,
        "max_subscriptions" => max_subscriptions,
        "max_pending" => max_pending,
        "write_deadline" => write_deadline,
        "ping_interval" => ping_interval,
        "ping_max" => ping_max,
        "lame_duck_duration" => lame_duck_duration,
        "lame_duck_grace_period" => lame_duck_grace_period,
        "debug" => debug,
        "trace" => trace,
    );
    live.cluster.routes = new.cluster.routes.clone();
    live.cluster.peers = new.cluster.peers.clone();
    changes
}

impl Reloader {
    /// `configured`: the options as built from the file and `args` at start.
    pub fn new(args: ServerArgs, configured: Options) -> Self {
        Reloader { args, configured }
    }

    /// Reads the config file again and applies it, or changes nothing and
    /// says why. Logs each change and "Reloaded server configuration".
    pub fn reload(&mut self, server: &Arc<Server>) -> Result<(), String> {
        if self.args.config.is_none() {
            return Err(
                "can only reload config when a file is provided using -c or --config".into(),
            );
        }
        let mut new = Options::default();
        let warnings = crate::config_file::load(&self.args, &mut new).map_err(|e| e.to_string())?;
        self.args.apply(&mut new)?;
        new.validate()?;
        check_fixed(&self.configured, &new)?;
        if server.cluster.get().is_some() && new.max_payload > server.opts.max_payload {
            // Cluster frames were sized for the start-up max_payload.
            return Err(format!(
                "config reload not supported for max_payload above its start-up value on a \
                 cluster node: old={}, new={}",
                server.opts.max_payload, new.max_payload
            ));
        }
        if new.cluster.enabled() {
            // Refuse bad keys before anything changes.
            peer::tls::PinnedPeers::new(&new.cluster.peers).map_err(|e| e.to_string())?;
        }
        for w in &warnings {
            tracing::warn!("{w}");
        }
        let auth_changed = self.configured.auth != new.auth;
        let mut live = (*server.live()).clone();
        let mut changes = apply_changeable(&mut live, &self.configured, &new);
        server.set_live(live);
        crate::logging::set_level(new.debug, new.trace);
        if let Some(cluster) = server.cluster.get() {
            changes.extend(cluster.reload(&new.cluster)?);
        }
        enforce(server, auth_changed);
        for c in &changes {
            tracing::info!("Reloaded: {c}");
        }
        tracing::info!("Reloaded server configuration");
        self.configured = new;
        Ok(())
    }
}

/// Applies reloaded limits and credentials to existing connections: a client
/// whose CONNECT credentials no longer pass gets nats-server's
/// `-ERR 'Authorization Violation'` and is closed; connections over a lowered
/// `max_connections` are closed, newest first.
///
/// When the authorization changed, a client whose user or nkey is no longer
/// configured at all is closed without a word, as nats-server closes a
/// client that "moved accounts" (its client reconnects and is refused then).
fn enforce(server: &Arc<Server>, auth_changed: bool) {
    let mut clients: Vec<Arc<Client>> = server.clients.lock().values().cloned().collect();
    clients.sort_by_key(|c| c.cid);
    let mut kept = Vec::with_capacity(clients.len());
    let live = server.live();
    for c in clients {
        let creds = c.credentials.lock().clone();
        if let Some(cr) = creds {
            if auth_changed && live.auth.operator.is_none() && user_removed(&live.auth, &cr) {
                tracing::info!(cid = c.cid, "user no longer configured after reload");
                c.close(CloseReason::ClientClosed, false);
                continue;
            }
            if let Err(why) = server.authenticate(&cr, c.auth_context(&server.live())) {
                tracing::info!(
                    cid = c.cid,
                    "credentials no longer accepted after reload: {why}"
                );
                if why.revoked {
                    c.send_err("User Authentication Revoked");
                    c.close(CloseReason::AuthenticationRevoked, false);
                } else {
                    c.send_err("Authorization Violation");
                    c.close(CloseReason::AuthenticationViolation, false);
                }
                continue;
            }
        }
        kept.push(c);
    }
    let max = server.live().max_connections;
    if max > 0 && kept.len() > max {
        let extra = kept.len() - max;
        for c in kept.iter().rev().take(extra) {
            c.send_err("maximum connections exceeded");
            c.close(CloseReason::MaxConnectionsExceeded, false);
        }
        tracing::info!("Closed {extra} connections to fall within max_connections");
    }
}

/// Whether the nkey or user name a client logged in with is gone from the
/// configuration (nats-server's `clientHasMovedToDifferentAccount`).
fn user_removed(auth: &crate::options::Auth, cr: &crate::auth::Presented) -> bool {
    let given = |s: &Option<String>| s.as_deref().filter(|v| !v.is_empty()).map(str::to_owned);
    if let Some(nkey) = given(&cr.nkey) {
        return !auth.nkeys.iter().any(|k| k.nkey == nkey);
    }
    if let Some(user) = given(&cr.user) {
        return !auth.users.iter().any(|u| u.user == user);
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_settings_are_named() {
        let old = Options::default();
        let mut new = Options::default();
        assert!(check_fixed(&old, &new).is_ok());
        new.server_name = Some("two".into());
        assert_eq!(
            check_fixed(&old, &new).unwrap_err(),
            "config reload not supported for server_name: old=, new=two"
        );
    }

    #[test]
    fn changes_are_listed_without_secrets() {
        let old = Options::default();
        let mut new = Options {
            max_payload: 2048,
            ..Default::default()
        };
        new.auth.password = Some("secret".into());
        let mut live = Options::default();
        let changes = apply_changeable(&mut live, &old, &new);
        assert_eq!(live.max_payload, 2048);
        assert_eq!(live.auth.password.as_deref(), Some("secret"));
        assert!(
            changes.contains(&"max_payload = 2048".to_owned()),
            "{changes:?}"
        );
        assert!(changes.contains(&"authorization".to_owned()), "{changes:?}");
        assert!(!changes.iter().any(|c| c.contains("secret")), "{changes:?}");
    }
}
