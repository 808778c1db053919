//! Command line: nats-server's flags for what Tern supports, plus Tern's
//! own subcommands. Official client test harnesses start the server with
//! these flags, so they must be accepted exactly as nats-server spells them.

use clap::{Args, Parser, Subcommand};
use std::ffi::OsString;
use std::net::IpAddr;
use std::path::PathBuf;

use crate::options::Options;

/// Tern: a NATS-compatible message router. Start it in place of nats-server.
#[derive(Parser, Debug)]
#[command(
    name = "tern",
    version = crate::server::VERSION,
    args_conflicts_with_subcommands = true,
    disable_version_flag = true,
    after_help = "Flags follow nats-server's: single-dash long names (-port 4222) work too.\n\
                  Config file keys: see docs/CONFIG.md."
)]
pub struct Cli {
    #[command(flatten)]
    pub server: ServerArgs,
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Tern's own tools.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Measure a running server (Tern or nats-server), like `nats bench`.
    Bench(tern_bench::BenchArgs),
    /// Print a fresh server nkey seed and its public key, as two labelled
    /// lines: `seed: SN...` then `public key: N...` (scripts can take the
    /// text after `: `, e.g. `tern keygen | sed -n 's/^seed: //p' > node.seed`).
    Keygen,
}

/// Server flags, named as nats-server names them.
#[derive(Args, Debug, Default, Clone)]
pub struct ServerArgs {
    /// Bind to host address (default: 0.0.0.0).
    #[arg(short = 'a', long = "addr", visible_alias = "net", value_name = "HOST")]
    pub addr: Option<IpAddr>,
    /// Use port for clients (default: 4222; -1 for a random port).
    #[arg(
        short = 'p',
        long = "port",
        allow_negative_numbers = true,
        value_name = "PORT"
    )]
    pub port: Option<i32>,
    /// Server name (default: the server id).
    #[arg(
        short = 'n',
        long = "name",
        visible_alias = "server_name",
        value_name = "NAME"
    )]
    pub name: Option<String>,
    /// Use port for HTTP monitoring (-1 for a random port).
    #[arg(
        short = 'm',
        long = "http_port",
        allow_negative_numbers = true,
        value_name = "PORT"
    )]
    pub http_port: Option<i32>,
    /// Use port for HTTPS monitoring (-1 for a random port).
    #[arg(
        long = "https_port",
        visible_alias = "ms",
        allow_negative_numbers = true,
        value_name = "PORT"
    )]
    pub https_port: Option<i32>,
    /// Configuration file.
    #[arg(short = 'c', long = "config", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Test the configuration file and exit.
    #[arg(short = 't')]
    pub test_config: bool,
    /// User required for connections.
    #[arg(long = "user", value_name = "USER")]
    pub user: Option<String>,
    /// Password required for connections.
    #[arg(long = "pass", value_name = "PASSWORD")]
    pub pass: Option<String>,
    /// Authorization token required for connections.
    #[arg(long = "auth", value_name = "TOKEN")]
    pub auth: Option<String>,
    /// Enable debugging output.
    #[arg(short = 'D', long = "debug")]
    pub debug: bool,
    /// Trace the raw protocol.
    #[arg(short = 'V', long = "trace")]
    pub trace: bool,
    /// File to redirect log output to.
    #[arg(
        short = 'l',
        long = "log",
        visible_alias = "log_file",
        value_name = "FILE"
    )]
    pub log: Option<PathBuf>,
    /// File to store the process id in.
    #[arg(short = 'P', long = "pid", value_name = "FILE")]
    pub pid: Option<PathBuf>,
    /// Directory to write `<exe>_<pid>.ports` to, listing the bound ports.
    #[arg(long = "ports_file_dir", value_name = "DIR")]
    pub ports_file_dir: Option<PathBuf>,
    /// Maximum message payload in bytes.
    #[arg(long = "max_payload", value_name = "BYTES")]
    pub max_payload: Option<usize>,
    /// Cluster URL to listen on for other nodes (QUIC over UDP), e.g. nats://0.0.0.0:6222.
    #[arg(long = "cluster", visible_alias = "cluster_listen", value_name = "URL")]
    pub cluster: Option<String>,
    /// Seed routes to other nodes, comma separated (nats://host:6222,quic://host2:6222).
    #[arg(long = "routes", value_name = "URLS")]
    pub routes: Option<String>,
    /// Cluster name; every node of a cluster must use the same one.
    #[arg(long = "cluster_name", value_name = "NAME")]
    pub cluster_name: Option<String>,
    /// Cluster URL to advertise to other nodes.
    #[arg(long = "cluster_advertise", value_name = "HOST:PORT")]
    pub cluster_advertise: Option<String>,
    /// Do not advertise this node's client URL to clients of other nodes.
    #[arg(long = "no_advertise")]
    pub no_advertise: bool,
    /// Client URL to advertise in INFO connect_urls.
    #[arg(long = "client_advertise", value_name = "HOST:PORT")]
    pub client_advertise: Option<String>,
    /// Enable TLS on the client port, without verifying clients.
    #[arg(long = "tls")]
    pub tls: bool,
    /// Server certificate file (PEM).
    #[arg(long = "tlscert", value_name = "FILE")]
    pub tlscert: Option<PathBuf>,
    /// Private key for the server certificate (PEM).
    #[arg(long = "tlskey", value_name = "FILE")]
    pub tlskey: Option<PathBuf>,
    /// Enable TLS and require and verify client certificates.
    #[arg(long = "tlsverify")]
    pub tlsverify: bool,
    /// CA certificates client certificates are checked against.
    #[arg(long = "tlscacert", value_name = "FILE")]
    pub tlscacert: Option<PathBuf>,
    /// File holding the server's nkey seed (created on first start).
    #[arg(long = "server_key_file", value_name = "FILE")]
    pub server_key_file: Option<PathBuf>,
    /// Send a signal to a running server and exit: ldm, stop, quit, term,
    /// reopen or reload, optionally `=PID` or `=/path/to/pid_file`.
    #[arg(long = "signal", visible_alias = "sl", value_name = "SIGNAL[=PID]")]
    pub signal: Option<String>,
    /// Show version and exit.
    #[arg(short = 'v', long = "version")]
    pub version: bool,
}

/// `nats://user:pass@host:port` (or `quic://`, `nats-route://`) to `host:port`.
pub fn host_port(url: &str) -> Result<String, String> {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let rest = rest.rsplit_once('@').map_or(rest, |(_, r)| r);
    let rest = rest.trim_end_matches('/');
    if !rest.contains(':') {
        return Err(format!("route URL {url:?} has no port"));
    }
    Ok(rest.to_owned())
}

/// A listen URL to a socket address; `localhost` allowed.
pub fn listen_addr(url: &str) -> Result<std::net::SocketAddr, String> {
    let hp = host_port(url)?;
    let (h, p) = hp
        .rsplit_once(':')
        .ok_or_else(|| format!("invalid cluster URL {url:?}"))?;
    let h = h.trim_start_matches('[').trim_end_matches(']');
    let ip: IpAddr = match h {
        "" => IpAddr::from([0, 0, 0, 0]),
        "localhost" => IpAddr::from([127, 0, 0, 1]),
        h => h
            .parse()
            .map_err(|_| format!("invalid cluster host {h:?}"))?,
    };
    let port = match p.parse::<i32>() {
        Ok(-1) => 0,
        Ok(n) if (0..=65535).contains(&n) => n as u16,
        _ => return Err(format!("invalid cluster port {p:?}")),
    };
    Ok(std::net::SocketAddr::new(ip, port))
}

/// Long flags nats-server (Go's flag package) also accepts with one dash.
const LONG_NAMES: &[&str] = &[
    "addr",
    "net",
    "port",
    "name",
    "server_name",
    "http_port",
    "https_port",
    "ms",
    "config",
    "user",
    "pass",
    "auth",
    "debug",
    "trace",
    "log",
    "log_file",
    "pid",
    "ports_file_dir",
    "max_payload",
    "cluster",
    "cluster_listen",
    "routes",
    "cluster_name",
    "cluster_advertise",
    "no_advertise",
    "client_advertise",
    "server_key_file",
    "tls",
    "tlscert",
    "tlskey",
    "tlsverify",
    "tlscacert",
    "signal",
    "sl",
    "version",
    "help",
];

/// Rewrites Go-style arguments into what clap parses: `-port 1` becomes
/// `--port 1`, and `-DV` stays the two short flags it already is.
pub fn normalize_args(args: impl IntoIterator<Item = OsString>) -> Vec<OsString> {
    args.into_iter()
        .map(|a| {
            let s = a.to_string_lossy();
            if let Some(rest) = s.strip_prefix('-') {
                if !rest.starts_with('-') {
                    let name = rest.split('=').next().unwrap_or(rest);
                    if name.len() > 1 && LONG_NAMES.contains(&name) {
                        return OsString::from(format!("-{s}"));
                    }
                }
            }
            a
        })
        .collect()
}

/// Port flag semantics shared by `-p` and `-m`: -1 means "any free port".
fn port_value(p: i32, flag: &str) -> Result<u16, String> {
    match p {
        -1 => Ok(0),
        0..=65535 => Ok(p as u16),
        _ => Err(format!("invalid {flag} port: {p}")),
    }
}

impl ServerArgs {
    /// `--tls*` flags, over any `tls {}` block, as nats-server merges them:
    /// a flag replaces the block's value; `--tlsverify` implies `--tls`.
    fn apply_tls(&self, opts: &mut Options) -> Result<(), String> {
        // The file flags alone do not turn TLS on, as in nats-server.
        if !(self.tls || self.tlsverify) && opts.tls.is_none() {
            return Ok(());
        }
        let mut t = opts.tls.clone().unwrap_or_default();
        if let Some(c) = &self.tlscert {
            t.settings.cert_file = c.clone();
        }
        if let Some(k) = &self.tlskey {
            t.settings.key_file = k.clone();
        }
        if let Some(ca) = &self.tlscacert {
            t.settings.ca_file = Some(ca.clone());
        }
        t.settings.verify |= self.tlsverify;
        if t.settings.cert_file.as_os_str().is_empty() {
            return Err("TLS Server certificate must be present and valid".into());
        }
        if t.settings.key_file.as_os_str().is_empty() {
            return Err("TLS Server private key must be present and valid".into());
        }
        opts.tls = Some(t);
        Ok(())
    }

    /// Applies the flags on top of `opts` (flags override the config file, as in nats-server).
    pub fn apply(&self, opts: &mut Options) -> Result<(), String> {
        if let Some(a) = self.addr {
            opts.host = a;
        }
        if let Some(p) = self.port {
            opts.port = port_value(p, "client")?;
        }
        if let Some(n) = &self.name {
            opts.server_name = Some(n.clone());
        }
        if let Some(p) = self.http_port {
            opts.http_port = Some(port_value(p, "monitoring")?);
        }
        if let Some(p) = self.https_port {
            opts.https_port = Some(port_value(p, "https monitoring")?);
        }
        if let Some(u) = &self.user {
            opts.auth.user = Some(u.clone());
        }
        if let Some(p) = &self.pass {
            opts.auth.password = Some(p.clone());
        }
        if let Some(t) = &self.auth {
            opts.auth.token = Some(t.clone());
        }
        self.apply_tls(opts)?;
        if opts.auth.user.is_some() != opts.auth.password.is_some() {
            return Err("--user and --pass must be given together".into());
        }
        opts.debug |= self.debug;
        opts.trace |= self.trace;
        if let Some(l) = &self.log {
            opts.log_file = Some(l.clone());
        }
        if let Some(p) = &self.pid {
            opts.pid_file = Some(p.clone());
        }
        if let Some(d) = &self.ports_file_dir {
            opts.ports_file_dir = Some(d.clone());
        }
        if let Some(m) = self.max_payload {
            opts.max_payload = m;
        }
        if let Some(c) = &self.cluster {
            opts.cluster.listen = Some(listen_addr(c)?);
        }
        if let Some(r) = &self.routes {
            opts.cluster.routes = r
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(host_port)
                .collect::<Result<_, _>>()?;
        }
        if let Some(n) = &self.cluster_name {
            opts.cluster.name = n.clone();
        }
        if let Some(a) = &self.cluster_advertise {
            opts.cluster.advertise = Some(host_port(a)?);
        }
        opts.cluster.no_advertise |= self.no_advertise;
        if let Some(a) = &self.client_advertise {
            opts.client_advertise = Some(host_port(a)?);
        }
        if let Some(k) = &self.server_key_file {
            opts.server_key_file = Some(k.clone());
        }
        if opts.cluster.name.is_empty() {
            opts.cluster.name = crate::cluster::DEFAULT_CLUSTER_NAME.to_owned();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(normalize_args(args.iter().map(OsString::from)))
    }

    #[test]
    fn nats_server_flags() {
        let cli = parse(&[
            "tern",
            "-a",
            "127.0.0.1",
            "-p",
            "-1",
            "-m",
            "8222",
            "-DV",
            "--user",
            "u",
            "--pass",
            "p",
        ])
        .unwrap();
        let mut o = Options::default();
        cli.server.apply(&mut o).unwrap();
        assert_eq!(o.port, 0);
        assert_eq!(o.http_port, Some(8222));
        assert!(o.debug && o.trace);
        assert_eq!(o.auth.user.as_deref(), Some("u"));
    }

    #[test]
    fn go_style_single_dash_long_flags() {
        let cli = parse(&[
            "tern",
            "-port",
            "4333",
            "-ports_file_dir",
            "/tmp",
            "--net=127.0.0.1",
        ])
        .unwrap();
        assert_eq!(cli.server.port, Some(4333));
        assert_eq!(cli.server.addr, Some("127.0.0.1".parse().unwrap()));
        assert_eq!(cli.server.ports_file_dir, Some(PathBuf::from("/tmp")));
    }

    #[test]
    fn unknown_flags_are_refused() {
        let e = parse(&["tern", "--no-such-flag"]).unwrap_err();
        assert!(e.to_string().contains("--no-such-flag"));
        assert!(parse(&["tern", "-p", "70000"])
            .map(|c| c.server.apply(&mut Options::default()))
            .unwrap()
            .is_err());
    }

    #[test]
    fn cluster_flags() {
        let cli = parse(&[
            "tern",
            "--cluster",
            "nats://127.0.0.1:6222",
            "--routes",
            "nats://a:6222, quic://u:p@b:6223",
            "--cluster_name",
            "C1",
        ])
        .unwrap();
        let mut o = Options::default();
        cli.server.apply(&mut o).unwrap();
        assert_eq!(o.cluster.listen, Some("127.0.0.1:6222".parse().unwrap()));
        assert_eq!(
            o.cluster.routes,
            vec!["a:6222".to_owned(), "b:6223".to_owned()]
        );
        assert_eq!(o.cluster.name, "C1");
        assert!(parse(&["tern", "--routes", "nats://nohost"])
            .unwrap()
            .server
            .apply(&mut o)
            .is_err());
    }

    #[test]
    fn user_without_pass_is_refused() {
        let cli = parse(&["tern", "--user", "u"]).unwrap();
        assert!(cli.server.apply(&mut Options::default()).is_err());
    }
}
