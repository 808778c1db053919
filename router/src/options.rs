//! Server options: every setting Tern supports, with nats-server's defaults.
//!
//! Flags and the config file both land here; the server reads nothing else.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Credentials a client must present in CONNECT, if any.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Auth {
    /// `user`/`pass`: a single user, as nats-server's `--user/--pass`.
    pub user: Option<String>,
    pub password: Option<String>,
    /// `auth_token`, as nats-server's `--auth`.
    pub token: Option<String>,
    /// A list of users from `authorization { users: [...] }`.
    pub users: Vec<UserEntry>,
    /// nkey users (`users: [ { nkey: "U..." } ]`).
    pub nkeys: Vec<NkeyUser>,
    /// The user (name or nkey) a client that presents no credentials is.
    pub no_auth_user: Option<String>,
    /// Operator mode: user JWTs chained to trusted operators.
    pub operator: Option<std::sync::Arc<crate::auth_jwt::OperatorTrust>>,
    /// Users without a password can only be certificate-mapped users, so
    /// their empty password must never match an empty one in CONNECT.
    pub tls_map_users: bool,
}

/// One entry of `authorization { users: [...] }`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserEntry {
    pub user: String,
    /// `None` for a user identified by its certificate (`verify_and_map`).
    pub password: Option<String>,
    /// The user's `permissions` (or the block's `default_permissions`).
    pub permissions: Option<std::sync::Arc<crate::auth::Permissions>>,
}

/// One nkey user: its public key and permissions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NkeyUser {
    pub nkey: String,
    pub permissions: Option<std::sync::Arc<crate::auth::Permissions>>,
}

impl Auth {
    /// Whether a client must authenticate before anything else.
    pub fn required(&self) -> bool {
        self.user.is_some()
            || self.token.is_some()
            || !self.users.is_empty()
            || !self.nkeys.is_empty()
            || self.operator.is_some()
    }

    /// Whether INFO carries a nonce for the client to sign: only when some
    /// user authenticates with a key, as in nats-server.
    pub fn nonce_required(&self) -> bool {
        !self.nkeys.is_empty() || self.operator.is_some()
    }

    /// What INFO says in `auth_required`: a `no_auth_user` lets clients in
    /// without credentials, so nats-server does not announce it then.
    pub fn announce_required(&self) -> bool {
        self.required() && self.no_auth_user.is_none()
    }
}

/// Everything the server is configured with.
#[derive(Debug, Clone)]
pub struct Options {
    pub host: IpAddr,
    /// Client port; 0 picks a random free port (`-p -1`).
    pub port: u16,
    pub server_name: Option<String>,
    /// Monitoring port; `None` disables monitoring, `Some(0)` picks a random port.
    pub http_port: Option<u16>,
    pub http_host: Option<IpAddr>,
    /// Monitoring over HTTPS (`https_port`), with the client `tls {}` certificate.
    pub https_port: Option<u16>,
    pub max_payload: usize,
    pub max_control_line: usize,
    /// 0 means unlimited.
    pub max_connections: usize,
    /// Per connection; 0 means unlimited.
    pub max_subscriptions: usize,
    /// Bytes buffered for one client before it is a slow consumer.
    pub max_pending: usize,
    pub write_deadline: Duration,
    pub ping_interval: Duration,
    pub ping_max: u32,
    pub auth: Auth,
    /// `authorization { timeout }`; unset, it is nats-server's default
    /// (see [`Options::auth_timeout`]).
    pub auth_timeout: Option<Duration>,
    pub lame_duck_duration: Duration,
    pub lame_duck_grace_period: Duration,
    pub debug: bool,
    pub trace: bool,
    pub log_file: Option<PathBuf>,
    pub pid_file: Option<PathBuf>,
    pub ports_file_dir: Option<PathBuf>,
    /// The config file given with `-c`, for logs and `-t`.
    pub config_file: Option<PathBuf>,
    /// Where the server's nkey seed lives; generated there on first start.
    /// Without it the server gets a fresh identity every start.
    pub server_key_file: Option<PathBuf>,
    /// `host:port` advertised to clients in INFO `connect_urls`.
    pub client_advertise: Option<String>,
    pub cluster: crate::cluster::ClusterOptions,
    /// TLS on the client port (`tls {}` or `--tls*`).
    pub tls: Option<ClientTls>,
    /// `allow_non_tls`: with TLS configured, plaintext clients are served too.
    pub allow_non_tls: bool,
}

/// TLS on the client listener.
#[derive(Debug, Clone, PartialEq)]
pub struct ClientTls {
    /// Certificates, keys and verification, as the transport builds them.
    pub settings: transport::tls::TlsSettings,
    /// `tls { timeout }`: how long a handshake may take.
    pub timeout: Duration,
    /// `handshake_first`: the TLS handshake comes before INFO.
    pub handshake_first: bool,
    /// With `handshake_first: "300ms"` / `auto`: plaintext clients that send
    /// nothing for this long get INFO in clear, as nats-server falls back.
    pub first_fallback: Option<Duration>,
    /// `verify_and_map`: the client certificate names the user.
    pub verify_and_map: bool,
}

impl Default for ClientTls {
    /// nats-server's defaults for a `tls {}` block that sets only files.
    fn default() -> Self {
        ClientTls {
            settings: Default::default(),
            timeout: transport::tls::DEFAULT_TLS_TIMEOUT,
            handshake_first: false,
            first_fallback: None,
            verify_and_map: false,
        }
    }
}

impl Options {
    /// Checks combinations nats-server refuses at start-up.
    pub fn validate(&self) -> Result<(), String> {
        if self.max_payload > self.max_pending {
            return Err(format!(
                "max_payload ({}) cannot be higher than max_pending ({})",
                self.max_payload, self.max_pending
            ));
        }
        if let Some(tls) = &self.tls {
            transport::tls::server_config(&tls.settings).map_err(|e| e.to_string())?;
        }
        if self.https_port.is_some() {
            if self.http_port.is_some() {
                return Err("can't specify both HTTP and HTTPS monitoring ports".into());
            }
            if self.tls.is_none() {
                return Err("TLS config required for HTTPS monitoring (https_port)".into());
            }
        }
        if let Some(u) = &self.auth.no_auth_user {
            let known = self.auth.users.iter().any(|e| &e.user == u)
                || self.auth.nkeys.iter().any(|k| &k.nkey == u);
            if !known {
                return Err(format!(
                    "no_auth_user: {u:?} not present as user or nkey in authorization block or account configuration"
                ));
            }
        }
        Ok(())
    }
}

impl Options {
    /// How long a client has to authenticate: as configured, else 2 s, or
    /// the TLS timeout plus one second on a TLS port, as nats-server.
    pub fn auth_timeout(&self) -> Duration {
        self.auth_timeout.unwrap_or_else(|| match &self.tls {
            Some(t) => t.timeout + Duration::from_secs(1),
            None => Duration::from_secs(2),
        })
    }

    /// The monitoring listener's TLS (`https_port`): the client port's
    /// certificate without client verification, as nats-server serves it.
    pub fn monitor_tls(&self) -> Option<Result<transport::tls::TlsAcceptor, String>> {
        self.https_port?;
        let tls = self.tls.as_ref()?;
        let mut settings = tls.settings.clone();
        settings.verify = false;
        settings.pinned_certs.clear();
        Some(
            transport::tls::server_config(&settings)
                .map(transport::tls::TlsAcceptor::from)
                .map_err(|e| e.to_string()),
        )
    }
}

/// nats-server's default client port.
pub const DEFAULT_PORT: u16 = 4222;

impl Default for Options {
    fn default() -> Self {
        Options {
            host: IpAddr::from([0, 0, 0, 0]),
            port: DEFAULT_PORT,
            server_name: None,
            http_port: None,
            http_host: None,
            https_port: None,
            max_payload: nats_proto::DEFAULT_MAX_PAYLOAD,
            max_control_line: nats_proto::DEFAULT_MAX_CONTROL_LINE,
            max_connections: 64 * 1024,
            max_subscriptions: 0,
            max_pending: 64 * 1024 * 1024,
            write_deadline: Duration::from_secs(10),
            ping_interval: Duration::from_secs(120),
            ping_max: 2,
            auth: Auth::default(),
            auth_timeout: None,
            lame_duck_duration: Duration::from_secs(120),
            lame_duck_grace_period: Duration::from_secs(10),
            debug: false,
            trace: false,
            log_file: None,
            pid_file: None,
            ports_file_dir: None,
            config_file: None,
            server_key_file: None,
            client_advertise: None,
            cluster: Default::default(),
            tls: None,
            allow_non_tls: false,
        }
    }
}
