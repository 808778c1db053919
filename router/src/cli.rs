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
    Bench(crate::bench::BenchArgs),
    /// Print a fresh server nkey seed and its public key.
    Keygen,
}

/// Server flags, named as nats-server names them.
#[derive(Args, Debug, Default)]
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
    /// Show version and exit.
    #[arg(short = 'v', long = "version")]
    pub version: bool,
}

/// Long flags nats-server (Go's flag package) also accepts with one dash.
const LONG_NAMES: &[&str] = &[
    "addr",
    "net",
    "port",
    "name",
    "server_name",
    "http_port",
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
        if let Some(u) = &self.user {
            opts.auth.user = Some(u.clone());
        }
        if let Some(p) = &self.pass {
            opts.auth.password = Some(p.clone());
        }
        if let Some(t) = &self.auth {
            opts.auth.token = Some(t.clone());
        }
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
    fn user_without_pass_is_refused() {
        let cli = parse(&["tern", "--user", "u"]).unwrap();
        assert!(cli.server.apply(&mut Options::default()).is_err());
    }
}
