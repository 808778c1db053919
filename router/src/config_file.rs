//! Maps a nats-server style config file onto [`Options`].
//!
//! Every option Tern supports can be set here; keys Tern does not know are
//! warned about (nats-server would reject some of them, Tern accepts the
//! file so it can start in place of nats-server), and bad values fail with
//! their line and column. docs/CONFIG.md lists the keys.

use std::net::IpAddr;
use std::time::Duration;

use crate::auth::{Permissions, ResponsePermission};
use crate::auth_jwt::Resolver;
use crate::cli::ServerArgs;
use crate::config::{parse_file, ConfigError, Map, Value};
use crate::options::{ClientTls, NkeyUser, Options, UserEntry};

/// Loads `-c FILE` (if given) into `opts`. Returns a warning per key Tern
/// ignores, each starting `file:line:col:` (the caller prints them: at start
/// up they are warnings, for `-t` they fail the test, on reload they are logged).
pub fn load(args: &ServerArgs, opts: &mut Options) -> Result<Vec<String>, ConfigError> {
    let Some(path) = &args.config else {
        return Ok(Vec::new());
    };
    let map = parse_file(path)?;
    opts.config_file = Some(path.clone());
    apply(&map, opts)
}

/// `file:line:col: text` for a key that is ignored.
fn ignored(pos: &crate::config::Pos, text: String) -> String {
    ConfigError::at(pos, text).to_string()
}

fn port_of(v: &Value) -> Result<u16, ConfigError> {
    port(v)
}

fn port(v: &Value) -> Result<u16, ConfigError> {
    match v.as_i64()? {
        -1 => Ok(0),
        p @ 0..=65535 => Ok(p as u16),
        p => Err(v.error(format!("invalid port {p}"))),
    }
}

fn ip(v: &Value) -> Result<IpAddr, ConfigError> {
    let s = v.as_str()?;
    let s = if s == "localhost" { "127.0.0.1" } else { s };
    s.parse()
        .map_err(|_| v.error(format!("invalid host address {s:?}")))
}

fn usize_of(v: &Value) -> Result<usize, ConfigError> {
    let n = v.as_size_bytes()?;
    usize::try_from(n).map_err(|_| v.error("value must not be negative"))
}

/// Splits `host:port` (the `listen` forms nats-server accepts).
fn listen(v: &Value, host: &mut IpAddr, p: &mut u16) -> Result<(), ConfigError> {
    if let Ok(n) = v.as_i64() {
        *p = port(v).map_err(|_| v.error(format!("invalid port {n}")))?;
        return Ok(());
    }
    let s = v.as_str()?;
    let (h, ps) = s
        .rsplit_once(':')
        .ok_or_else(|| v.error(format!("listen needs host:port, got {s:?}")))?;
    if !h.is_empty() {
        let h = if h == "localhost" { "127.0.0.1" } else { h };
        *host = h
            .parse()
            .map_err(|_| v.error(format!("invalid host {h:?}")))?;
    }
    *p = match ps.parse::<i32>() {
        Ok(-1) => 0,
        Ok(n) if (0..=65535).contains(&n) => n as u16,
        _ => return Err(v.error(format!("invalid port {ps:?}"))),
    };
    Ok(())
}

fn authorization(
    m: &Map,
    opts: &mut Options,
    warnings: &mut Vec<String>,
) -> Result<(), ConfigError> {
    let mut default_perms = None;
    for e in m.iter() {
        let v = &e.value;
        match e.key.to_ascii_lowercase().as_str() {
            "user" | "username" => opts.auth.user = Some(v.as_str()?.to_owned()),
            "password" | "pass" => opts.auth.password = Some(v.as_str()?.to_owned()),
            "token" => opts.auth.token = Some(v.as_str()?.to_owned()),
            "timeout" => opts.auth_timeout = Some(seconds(v)?),
            "users" => users(v, opts, warnings)?,
            "default_permissions" => default_perms = Some(permissions(v, warnings)?),
            "no_auth_user" => opts.auth.no_auth_user = Some(v.as_str()?.to_owned()),
            _ if e.used_as_variable => {}
            other => warnings.push(ignored(
                &e.key_pos,
                format!("authorization option {other:?} is not supported by Tern and is ignored"),
            )),
        }
    }
    if let Some(d) = default_perms {
        // Users without their own permissions get the block's defaults.
        for u in &mut opts.auth.users {
            u.permissions.get_or_insert_with(|| d.clone());
        }
        for k in &mut opts.auth.nkeys {
            k.permissions.get_or_insert_with(|| d.clone());
        }
    }
    Ok(())
}

/// `users: [ { user, password } | { nkey } ]`, as nats-server reads it: an
/// entry with an nkey is an nkey user; one with a user and no password is a
/// certificate-mapped user (`verify_and_map`).
fn users(v: &Value, opts: &mut Options, warnings: &mut Vec<String>) -> Result<(), ConfigError> {
    for u in v.as_array()? {
        let um = u.as_map()?;
        let mut user = None;
        let mut password = None;
        let mut nkey = None;
        let mut perms = None;
        for e in um.iter() {
            let v = &e.value;
            match e.key.to_ascii_lowercase().as_str() {
                "user" | "username" => user = Some(v.as_str()?.to_owned()),
                "pass" | "password" => password = Some(v.as_str()?.to_owned()),
                "nkey" => nkey = Some((v.as_str()?.to_owned(), v)),
                "permission" | "permissions" | "authorization" => {
                    perms = Some(permissions(v, warnings)?)
                }
                _ if e.used_as_variable => {}
                other => warnings.push(ignored(
                    &e.key_pos,
                    format!("user option {other:?} is not supported by Tern and is ignored"),
                )),
            }
        }
        if let Some((key, at)) = nkey {
            if !peer::jwt::is_user_key(&key) {
                return Err(at.error(format!("not a valid public user nkey: {key:?}")));
            }
            opts.auth.nkeys.push(NkeyUser {
                nkey: key,
                permissions: perms,
            });
            continue;
        }
        let Some(user) = user else {
            return Err(u.error("user entry without `user` or `nkey`"));
        };
        if password.is_none() {
            opts.auth.tls_map_users = true;
        }
        opts.auth.users.push(UserEntry {
            user,
            password,
            permissions: perms,
        });
    }
    Ok(())
}

/// `permissions { publish, subscribe }`, each a subject, a list, or
/// `{ allow, deny }`, as nats-server reads them.
fn permissions(
    v: &Value,
    warnings: &mut Vec<String>,
) -> Result<std::sync::Arc<Permissions>, ConfigError> {
    fn list(v: &Value) -> Result<Vec<String>, ConfigError> {
        match v.as_array() {
            Ok(a) => a.iter().map(|x| Ok(x.as_str()?.to_owned())).collect(),
            Err(_) => Ok(vec![v.as_str()?.to_owned()]),
        }
    }
    fn rule(v: &Value) -> Result<(Vec<String>, Vec<String>), ConfigError> {
        let Ok(m) = v.as_map() else {
            return Ok((list(v)?, Vec::new()));
        };
        let (mut allow, mut deny) = (Vec::new(), Vec::new());
        for e in m.iter() {
            match e.key.to_ascii_lowercase().as_str() {
                "allow" => allow = list(&e.value)?,
                "deny" => deny = list(&e.value)?,
                other => {
                    return Err(e
                        .value
                        .error(format!("unknown field {other:?} in permissions")))
                }
            }
        }
        Ok((allow, deny))
    }
    let mut p = Permissions::default();
    for e in v.as_map()?.iter() {
        match e.key.to_ascii_lowercase().as_str() {
            "pub" | "publish" | "import" => (p.pub_allow, p.pub_deny) = rule(&e.value)?,
            "sub" | "subscribe" | "export" => (p.sub_allow, p.sub_deny) = rule(&e.value)?,
            "allow_responses" | "allowed_responses" => p.responses = responses(&e.value)?,
            _ if e.used_as_variable => {}
            other => warnings.push(ignored(
                &e.key_pos,
                format!("permissions option {other:?} is not supported by Tern yet and is ignored"),
            )),
        }
    }
    Ok(std::sync::Arc::new(p))
}

/// `allow_responses: true | false | { max, expires }`.
fn responses(v: &Value) -> Result<Option<ResponsePermission>, ConfigError> {
    if let Ok(b) = v.as_bool() {
        return Ok(b.then(|| ResponsePermission::new(0, Duration::ZERO)));
    }
    let (mut max, mut ttl) = (0, Duration::ZERO);
    for e in v.as_map()?.iter() {
        match e.key.to_ascii_lowercase().as_str() {
            "max" | "max_msgs" | "max_messages" | "max_responses" => max = e.value.as_i64()?,
            "expires" | "expiration" | "ttl" => ttl = seconds(&e.value)?,
            other => {
                return Err(e
                    .value
                    .error(format!("unknown field {other:?} in allow_responses")))
            }
        }
    }
    Ok(Some(ResponsePermission::new(max, ttl)))
}

/// Operator-mode settings, gathered before the trust is built from them.
#[derive(Default)]
struct OperatorConfig {
    operators: Vec<String>,
    system_account: Option<String>,
    resolver: Option<Resolver>,
    preload: std::collections::BTreeMap<String, String>,
    /// Where `operator` was set, for errors.
    at: Option<Value>,
}

/// `resolver: MEMORY` or `resolver: { type: full|cache, dir: "..." }`.
fn resolver(v: &Value) -> Result<Resolver, ConfigError> {
    if let Ok(s) = v.as_str() {
        return match s.trim().to_ascii_uppercase().as_str() {
            "MEMORY" => Ok(Resolver::Memory),
            _ => Err(v.error(format!(
                "resolver {s:?} is not supported by Tern (MEMORY or a directory: {{ type: full, dir: ... }})"
            ))),
        };
    }
    let m = v.as_map()?;
    let mut dir = None;
    for e in m.iter() {
        match e.key.to_ascii_lowercase().as_str() {
            "type" => {
                let t = e.value.as_str()?.to_ascii_lowercase();
                if t != "full" && t != "cache" {
                    return Err(e
                        .value
                        .error(format!("resolver type {t:?} is not supported")));
                }
            }
            "dir" => dir = Some(e.value.as_str()?.to_owned()),
            // nats-server's other resolver settings (allow_delete, interval,
            // limit, timeout, ttl, ...) do not apply to a read-only directory.
            _ => {}
        }
    }
    let dir = dir.ok_or_else(|| v.error("resolver needs a `dir`"))?;
    Ok(Resolver::Dir(dir.into()))
}

/// `tls {}` for the client port, with nats-server's keys and defaults.
fn client_tls(block: &Value, warnings: &mut Vec<String>) -> Result<ClientTls, ConfigError> {
    let m = block.as_map()?;
    let mut t = ClientTls::default();
    let strings = |v: &Value| -> Result<Vec<String>, ConfigError> {
        match v.as_array() {
            Ok(a) => a.iter().map(|x| Ok(x.as_str()?.to_owned())).collect(),
            Err(_) => Ok(vec![v.as_str()?.to_owned()]),
        }
    };
    let mut has_cert = false;
    let mut has_key = false;
    for e in m.iter() {
        let v = &e.value;
        match e.key.to_ascii_lowercase().as_str() {
            "cert_file" => {
                t.settings.cert_file = v.as_str()?.into();
                has_cert = true;
            }
            "key_file" => {
                t.settings.key_file = v.as_str()?.into();
                has_key = true;
            }
            "ca_file" => t.settings.ca_file = Some(v.as_str()?.into()),
            "verify" => t.settings.verify = v.as_bool()?,
            "verify_and_map" => {
                t.verify_and_map = v.as_bool()?;
                t.settings.verify |= t.verify_and_map;
            }
            "timeout" => t.timeout = seconds(v)?,
            "pinned_certs" => {
                t.settings.pinned_certs = strings(v)?;
                for p in &t.settings.pinned_certs {
                    if p.len() != 64 || !p.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
                        return Err(v.error(format!(
                            "error parsing 'pinned_certs' key {p} does not look like lower case hex-encoded sha256 of DER encoded SubjectPublicKeyInfo"
                        )));
                    }
                }
            }
            "cipher_suites" => t.settings.cipher_suites = strings(v)?,
            "curve_preferences" => t.settings.curve_preferences = strings(v)?,
            "handshake_first" | "first" | "immediate" => {
                if let Ok(b) = v.as_bool() {
                    t.handshake_first = b;
                } else {
                    let s = v.as_str()?.to_ascii_lowercase();
                    match s.as_str() {
                        "true" | "on" => t.handshake_first = true,
                        "false" | "off" => t.handshake_first = false,
                        "auto" | "auto_fallback" => {
                            t.handshake_first = true;
                            t.first_fallback = Some(Duration::from_millis(50));
                        }
                        _ => {
                            t.handshake_first = true;
                            t.first_fallback = Some(v.as_duration().map_err(|_| {
                                v.error(format!("field {:?}'s value {s:?} is invalid", e.key))
                            })?);
                        }
                    }
                }
            }
            _ if e.used_as_variable => {}
            other => warnings.push(ignored(
                &e.key_pos,
                format!("tls option {other:?} is not supported by Tern and is ignored"),
            )),
        }
    }
    if !has_cert || !has_key {
        let what = if has_cert { "key_file" } else { "cert_file" };
        return Err(block.error(format!("missing '{what}' in TLS configuration")));
    }
    Ok(t)
}

fn cluster(m: &Map, opts: &mut Options, warnings: &mut Vec<String>) -> Result<(), ConfigError> {
    let c = &mut opts.cluster;
    let mut host: Option<IpAddr> = None;
    let mut port: Option<u16> = None;
    for e in m.iter() {
        let v = &e.value;
        match e.key.to_ascii_lowercase().as_str() {
            "name" => c.name = v.as_str()?.to_owned(),
            "listen" => {
                let s = match v.as_i64() {
                    Ok(n) => format!(":{n}"),
                    Err(_) => v.as_str()?.to_owned(),
                };
                c.listen = Some(crate::cli::listen_addr(&s).map_err(|m| v.error(m))?);
            }
            "host" => host = Some(ip(v)?),
            "port" => port = Some(port_of(v)?),
            "routes" => {
                c.routes = v
                    .as_array()?
                    .iter()
                    .map(|r| crate::cli::host_port(r.as_str()?).map_err(|m| r.error(m)))
                    .collect::<Result<_, _>>()?;
            }
            "advertise" | "cluster_advertise" => {
                c.advertise = Some(crate::cli::host_port(v.as_str()?).map_err(|m| v.error(m))?)
            }
            "no_advertise" => c.no_advertise = v.as_bool()?,
            "keepalive" | "keep_alive" => c.link.keep_alive = seconds(v)?,
            "idle_timeout" => c.link.idle_timeout = seconds(v)?,
            "authorization" => {
                for a in v.as_map()?.iter() {
                    match a.key.to_ascii_lowercase().as_str() {
                        "peers" => {
                            c.peers = a
                                .value
                                .as_array()?
                                .iter()
                                .map(|p| {
                                    let k = p.as_str()?;
                                    if k.len() == 56 && k.starts_with('N') {
                                        Ok(k.to_owned())
                                    } else {
                                        Err(p.error(format!("{k:?} is not a server public key (N...)")))
                                    }
                                })
                                .collect::<Result<_, _>>()?;
                        }
                        other => warnings.push(ignored(
                            &a.key_pos,
                            format!("cluster authorization option {other:?} is not supported by Tern (peers are authenticated by their nkeys)"),
                        )),
                    }
                }
            }
            _ if e.used_as_variable => {}
            other => warnings.push(ignored(
                &e.key_pos,
                format!("cluster option {other:?} is not supported by Tern and is ignored"),
            )),
        }
    }
    if let Err(msg) = c.link.validate() {
        let at = m
            .get("keepalive")
            .or_else(|| m.get("keep_alive"))
            .or_else(|| m.get("idle_timeout"));
        return Err(match at {
            Some(v) => v.error(msg),
            None => ConfigError::at(&Default::default(), msg),
        });
    }
    if host.is_some() || port.is_some() {
        let base = c
            .listen
            .unwrap_or_else(|| std::net::SocketAddr::new(IpAddr::from([0, 0, 0, 0]), 6222));
        c.listen = Some(std::net::SocketAddr::new(
            host.unwrap_or(base.ip()),
            port.unwrap_or(base.port()),
        ));
    }
    Ok(())
}

/// Durations given as a bare number mean seconds, as in nats-server;
/// fractional seconds (`auth timeout: 0.5`) are allowed.
fn seconds(v: &Value) -> Result<Duration, ConfigError> {
    if let Ok(f) = v.as_f64() {
        if f < 0.0 {
            return Err(v.error("duration must not be negative"));
        }
        return Ok(Duration::from_secs_f64(f));
    }
    v.as_duration()
}

/// Applies every key of `map`; returns warnings for keys Tern ignores.
pub fn apply(map: &Map, opts: &mut Options) -> Result<Vec<String>, ConfigError> {
    let mut warnings = Vec::new();
    let mut operator = OperatorConfig::default();
    for e in map.iter() {
        let v = &e.value;
        match e.key.to_ascii_lowercase().as_str() {
            "listen" => listen(v, &mut opts.host, &mut opts.port)?,
            "host" | "net" => opts.host = ip(v)?,
            "port" => opts.port = port(v)?,
            "server_name" => opts.server_name = Some(v.as_str()?.to_owned()),
            "http_port" | "monitor_port" => opts.http_port = Some(port(v)?),
            "http" => {
                let mut host = opts.http_host.unwrap_or(opts.host);
                let mut p = opts.http_port.unwrap_or(0);
                listen(v, &mut host, &mut p)?;
                opts.http_host = Some(host);
                opts.http_port = Some(p);
            }
            "http_host" => opts.http_host = Some(ip(v)?),
            "https_port" => opts.https_port = Some(port(v)?),
            "https" => {
                let mut host = opts.http_host.unwrap_or(opts.host);
                let mut p = opts.https_port.unwrap_or(0);
                listen(v, &mut host, &mut p)?;
                opts.http_host = Some(host);
                opts.https_port = Some(p);
            }
            "max_payload" => opts.max_payload = usize_of(v)?,
            "max_control_line" => opts.max_control_line = usize_of(v)?,
            "max_connections" | "max_conn" => opts.max_connections = usize_of(v)?,
            "max_subscriptions" | "max_subs" => opts.max_subscriptions = usize_of(v)?,
            "max_pending" => opts.max_pending = usize_of(v)?,
            "write_deadline" => opts.write_deadline = seconds(v)?,
            "ping_interval" => opts.ping_interval = seconds(v)?,
            "ping_max" => opts.ping_max = usize_of(v)? as u32,
            "lame_duck_duration" => opts.lame_duck_duration = seconds(v)?,
            "lame_duck_grace_period" => opts.lame_duck_grace_period = seconds(v)?,
            "debug" => opts.debug = v.as_bool()?,
            "trace" => opts.trace = v.as_bool()?,
            "log_file" => opts.log_file = Some(v.as_str()?.into()),
            "pid_file" => opts.pid_file = Some(v.as_str()?.into()),
            "ports_file_dir" => opts.ports_file_dir = Some(v.as_str()?.into()),
            "authorization" => authorization(v.as_map()?, opts, &mut warnings)?,
            "no_auth_user" => opts.auth.no_auth_user = Some(v.as_str()?.to_owned()),
            "tls" => opts.tls = Some(client_tls(v, &mut warnings)?),
            "allow_non_tls" => opts.allow_non_tls = v.as_bool()?,
            "operator" | "operators" | "root" | "roots" | "root_operators" | "root_operator" => {
                match v.as_array() {
                    Ok(list) => {
                        for o in list {
                            operator.operators.push(o.as_str()?.to_owned());
                        }
                    }
                    Err(_) => operator.operators.push(v.as_str()?.to_owned()),
                }
                operator.at.get_or_insert_with(|| v.clone());
            }
            "system_account" | "system" => operator.system_account = Some(v.as_str()?.to_owned()),
            "resolver" | "account_resolver" | "accounts_resolver" => {
                operator.resolver = Some(resolver(v)?)
            }
            "resolver_preload" => {
                for e in v.as_map()?.iter() {
                    operator
                        .preload
                        .insert(e.key.clone(), e.value.as_str()?.trim().to_owned());
                }
            }
            "cluster" => cluster(v.as_map()?, opts, &mut warnings)?,
            "server_key_file" => opts.server_key_file = Some(v.as_str()?.into()),
            "client_advertise" => opts.client_advertise = Some(v.as_str()?.to_owned()),
            _ if e.used_as_variable => {}
            other => warnings.push(ignored(
                &e.key_pos,
                format!("option {other:?} is not supported by Tern and is ignored"),
            )),
        }
    }
    if let Some(at) = &operator.at {
        let trust = crate::auth_jwt::OperatorTrust::new(
            &operator.operators,
            operator.system_account.clone(),
            operator.resolver.clone().unwrap_or(Resolver::Memory),
            operator.preload.clone(),
        )
        .map_err(|e| at.error(e))?;
        opts.auth.operator = Some(std::sync::Arc::new(trust));
    } else if operator.resolver.is_some() || !operator.preload.is_empty() {
        warnings.push("resolver settings without `operator` are ignored".to_owned());
    }
    if opts.max_payload > 64 * 1024 * 1024 {
        return Err(map
            .get("max_payload")
            .map(|v| v.error("max_payload cannot exceed 64MB"))
            .unwrap_or_else(|| {
                ConfigError::at(&Default::default(), "max_payload cannot exceed 64MB")
            }));
    }
    Ok(warnings)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_str;

    fn opts(text: &str) -> (Options, Vec<String>) {
        let mut o = Options::default();
        let w = apply(&parse_str(text).unwrap(), &mut o).unwrap();
        (o, w)
    }

    #[test]
    fn common_keys() {
        let (o, w) = opts(
            "port: 4333\nhttp_port = 8333\nserver_name n1\nmax_payload: 2MB\nping_interval: \"30s\"\n\
             ping_max: 3\nmax_pending: 1MB\nwrite_deadline: \"2s\"\n\
             authorization { user: derek, password: \"s3cr3t\", timeout: 0.5 }\n",
        );
        assert!(w.is_empty(), "{w:?}");
        assert_eq!(o.port, 4333);
        assert_eq!(o.http_port, Some(8333));
        assert_eq!(o.server_name.as_deref(), Some("n1"));
        assert_eq!(o.max_payload, 2 * 1024 * 1024);
        assert_eq!(o.ping_interval, Duration::from_secs(30));
        assert_eq!(o.ping_max, 3);
        assert_eq!(o.write_deadline, Duration::from_secs(2));
        assert_eq!(o.auth.user.as_deref(), Some("derek"));
        assert_eq!(o.auth_timeout, Some(Duration::from_millis(500)));
    }

    #[test]
    fn listen_and_unknown_keys() {
        let (o, w) = opts("listen: 127.0.0.1:4555\njetstream: {}\n");
        assert_eq!(o.port, 4555);
        assert_eq!(o.host, "127.0.0.1".parse::<IpAddr>().unwrap());
        assert_eq!(w.len(), 1);
        assert!(w[0].contains("jetstream"), "{w:?}");
    }

    #[test]
    fn cluster_block() {
        let (o, w) = opts(
            "cluster { name: C1, listen: 0.0.0.0:6222, routes = [ nats://a:6222, quic://b:6222 ]\n\
             authorization { peers: [\"NB7KIJ6FK2MNVZFFRAO3NP73PWJ2SIQFLTS6PM7ZGSQB5N4VHNLZYCPZ\"] } }\n\
             server_key_file: \"/tmp/k.seed\"\n",
        );
        assert!(w.is_empty(), "{w:?}");
        assert_eq!(o.cluster.name, "C1");
        assert_eq!(o.cluster.listen, Some("0.0.0.0:6222".parse().unwrap()));
        assert_eq!(
            o.cluster.routes,
            vec!["a:6222".to_owned(), "b:6222".to_owned()]
        );
        assert_eq!(o.cluster.peers.len(), 1);
        assert_eq!(o.cluster.link, transport::quic::LinkConfig::default());
        let (o, w) = opts("cluster { keepalive: \"100ms\", idle_timeout: 3 }\n");
        assert!(w.is_empty(), "{w:?}");
        assert_eq!(o.cluster.link.keep_alive, Duration::from_millis(100));
        assert_eq!(o.cluster.link.idle_timeout, Duration::from_secs(3));
        let mut o = Options::default();
        let e = apply(
            &parse_str("cluster {\n  keepalive: \"2s\"\n  idle_timeout: \"1s\"\n}\n").unwrap(),
            &mut o,
        )
        .unwrap_err();
        assert!(e.to_string().contains("shorter"), "{e}");
        let mut o = Options::default();
        let e = apply(
            &parse_str("cluster { authorization { peers: [\"UABC\"] } }").unwrap(),
            &mut o,
        )
        .unwrap_err();
        assert_eq!(e.line, 1, "{e}");
    }

    #[test]
    fn bad_values_report_position() {
        let mut o = Options::default();
        let e = apply(
            &parse_str("port: 4222\nmax_payload: \"lots\"\n").unwrap(),
            &mut o,
        )
        .unwrap_err();
        assert_eq!(e.line, 2, "{e}");
        let e = apply(&parse_str("port: 70000\n").unwrap(), &mut o).unwrap_err();
        assert_eq!(e.line, 1, "{e}");
    }
}
