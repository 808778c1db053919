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
}

/// One entry of `authorization { users: [...] }`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserEntry {
    pub user: String,
    pub password: String,
}

impl Auth {
    /// Whether a client must authenticate before anything else.
    pub fn required(&self) -> bool {
        self.user.is_some() || self.token.is_some() || !self.users.is_empty()
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
    pub auth_timeout: Duration,
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
        Ok(())
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
            max_payload: nats_proto::DEFAULT_MAX_PAYLOAD,
            max_control_line: nats_proto::DEFAULT_MAX_CONTROL_LINE,
            max_connections: 64 * 1024,
            max_subscriptions: 0,
            max_pending: 64 * 1024 * 1024,
            write_deadline: Duration::from_secs(10),
            ping_interval: Duration::from_secs(120),
            ping_max: 2,
            auth: Auth::default(),
            auth_timeout: Duration::from_secs(2),
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
        }
    }
}
