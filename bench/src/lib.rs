//! `tern bench`: a load generator for any NATS server, in the spirit of
//! `nats bench`.
//!
//! The clients are deliberately raw: plain tokio sockets speaking the
//! protocol through `nats_proto`, publishers writing pre-built 64 KiB batches
//! and subscribers counting `MSG` frames with a byte scanner, so that on a
//! small machine the load generator is not what limits the measurement.
//! The same binary drives Tern and nats-server, which is what makes the
//! comparison in `scripts/bench-compare` fair.

mod client;
mod connect;
mod counter;
mod hol;
mod report;
mod reqrep;
mod throughput;

use std::fmt;
use std::process::ExitCode;
use std::time::Duration;

pub use report::{HolPhase, HolReport, Latency, Report};

/// The traffic patterns `tern bench` can generate.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    /// Publishers only, no subscribers: raw ingest rate.
    Pub,
    /// Publishers plus `--subs` subscribers; reports the subscribers' rate.
    Sub,
    /// One publisher, one subscriber.
    Pubsub,
    /// One publisher, `--subs` subscribers (default 10) on the same subject.
    Fanout,
    /// One publisher, `--subs` queue subscribers (default 4) in one group;
    /// every message must be delivered exactly once in total.
    Queue,
    /// Sequential request/reply round trips; reports latency percentiles.
    Reqrep,
    /// Head-of-line demo: small timestamped messages (`--size`, default
    /// 16 B, one every `--interval-us`) on subject `small` from one
    /// connection, measured at a subscriber first alone, then while a
    /// second connection publishes `--big-size` messages (default 1 MiB)
    /// on subject `big` as fast as a subscriber takes them. Meant to run
    /// across a cluster: `--pub-server A --sub-server B`.
    Hol,
    /// Connection set-up rate: `--msgs` connections (default 2,000), each
    /// TCP connect (+ TLS) + INFO/CONNECT/PING/PONG and close, `--parallel`
    /// at a time; reports connections/s and set-up latency percentiles.
    Connect,
}

impl fmt::Display for Scenario {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Scenario::Pub => "pub",
            Scenario::Sub => "sub",
            Scenario::Pubsub => "pubsub",
            Scenario::Fanout => "fanout",
            Scenario::Queue => "queue",
            Scenario::Reqrep => "reqrep",
            Scenario::Hol => "hol",
            Scenario::Connect => "connect",
        })
    }
}

/// Command-line options of `tern bench`; the `tern` binary (router's `main.rs`) mounts them
/// into the `bench` subcommand. Long options only, so they never clash with
/// the server's short flags.
#[derive(clap::Args, Debug, Clone)]
pub struct BenchArgs {
    /// Scenario to run (positional form).
    #[arg(value_enum)]
    pub scenario: Option<Scenario>,

    /// Scenario to run (option form; same as the positional argument).
    #[arg(
        long = "scenario",
        value_enum,
        id = "scenario_opt",
        value_name = "SCENARIO",
        hide_possible_values = true
    )]
    pub scenario_opt: Option<Scenario>,

    /// Server to load, as nats://host:port, host:port or host.
    #[arg(long, default_value = "nats://127.0.0.1:4222")]
    pub server: String,

    /// Messages to publish in total (split across publishers), requests for
    /// reqrep, small messages per phase for hol, or connections for
    /// connect. Default: 1,000,000; 20,000 for reqrep; 2,000 for hol and
    /// connect.
    #[arg(long)]
    pub msgs: Option<u64>,

    /// Payload size: bytes, or with a K/KB/KiB/M/MB suffix (powers of 1024).
    /// Default 128, or 16 for hol's small messages (at least 16).
    #[arg(long, value_parser = parse_size)]
    pub size: Option<usize>,

    /// Publisher connections (pub and sub scenarios; others use one).
    #[arg(long)]
    pub pubs: Option<usize>,

    /// Subscriber connections (sub, pubsub, fanout, queue).
    #[arg(long)]
    pub subs: Option<usize>,

    /// Print one JSON object for the run instead of the human summary.
    #[arg(long)]
    pub json: bool,

    /// Subject to publish on.
    #[arg(long, default_value = "bench.subject")]
    pub subject: String,

    /// Queue group name for the queue scenario.
    #[arg(long, default_value = "bench-group")]
    pub queue: String,

    /// Messages each publisher sends between PING/PONG flushes (0 = about
    /// every 256 KiB). One PING stays in flight so the pipe never drains.
    #[arg(long, default_value_t = 0)]
    pub flush_every: u64,

    /// Most messages publishers may run ahead of the slowest subscriber
    /// (0 = about 4 MiB of frames), so the server never holds more than
    /// that per subscriber and slow-consumer limits are not what is measured.
    #[arg(long, default_value_t = 0)]
    pub max_lead: u64,

    /// Seconds without any progress before a run is abandoned and lost
    /// messages are reported.
    #[arg(long, default_value_t = 10.0)]
    pub timeout: f64,

    #[command(flatten)]
    pub more: Box<MoreArgs>,
}

/// The less common options: cross-node runs, hol, warm-up, threads (boxed
/// in [`BenchArgs`] to keep the CLI's command enum small).
#[derive(clap::Args, Debug, Clone)]
pub struct MoreArgs {
    /// Server(s) the publishers (and the reqrep requester) connect to,
    /// comma separated and used round-robin; default: --server. With
    /// --sub-server on another node of a cluster this measures cross-node
    /// traffic; runs then first wait until the subscribers' interest has
    /// reached every publisher's server.
    #[arg(long, value_name = "URLS")]
    pub pub_server: Option<String>,

    /// Server(s) the subscribers (and the reqrep responder) connect to,
    /// comma separated and used round-robin (e.g. fanout subscribers spread
    /// over two nodes); default: --server.
    #[arg(long, value_name = "URLS")]
    pub sub_server: Option<String>,

    /// hol: payload size of the big messages.
    #[arg(long, default_value = "1MiB", value_parser = parse_size)]
    pub big_size: usize,

    /// hol: microseconds between small messages.
    #[arg(long, default_value_t = 1000)]
    pub interval_us: u64,

    /// hol: most big messages published per second (0 = no pacing: as fast
    /// as the big subscriber takes them, within --max-lead). Pacing keeps
    /// the big traffic below what a slow or lossy link can carry, so what
    /// delays small messages is sharing the path, not a backlog.
    #[arg(long, default_value_t = 0.0)]
    pub big_rate: f64,

    /// Unmeasured requests before a reqrep run (default: 1,000, capped at
    /// msgs), unmeasured small messages before hol's first phase (default
    /// 100), or unmeasured connections before connect's (default 100).
    #[arg(long)]
    pub warmup: Option<u64>,

    /// Runtime worker threads for the client (default: available cores).
    #[arg(long)]
    pub threads: Option<usize>,

    /// Connect over TLS, trusting the CA certificate(s) in this PEM file;
    /// the server's certificate must name the host of the server URL.
    #[arg(long, value_name = "FILE")]
    pub tls_ca: Option<std::path::PathBuf>,

    /// With --tls-ca: TLS handshake before INFO, for servers configured
    /// with `handshake_first` (default: INFO in clear, then the handshake).
    #[arg(long, requires = "tls_ca")]
    pub tls_first: bool,

    /// connect: connections being set up at the same time.
    #[arg(long, default_value_t = 1)]
    pub parallel: usize,
}

/// Parses `16`, `1KB`, `4k`, `1MiB`... into bytes.
fn parse_size(s: &str) -> Result<usize, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: usize = num.parse().map_err(|_| format!("bad size {s:?}"))?;
    let mult = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1024,
        "m" | "mb" | "mib" => 1024 * 1024,
        _ => return Err(format!("bad size unit in {s:?}")),
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("size {s:?} too large"))
}

/// Resolved settings for one run, with per-scenario defaults applied.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub scenario: Scenario,
    pub server: String,
    /// As given (comma-separated URLs), for reports.
    pub pub_server: String,
    pub sub_server: String,
    pub pub_addrs: Vec<String>,
    pub sub_addrs: Vec<String>,
    /// Publishers and subscribers do not all share one server, so interest
    /// must be seen to propagate before publishing.
    pub cross: bool,
    pub msgs: u64,
    pub size: usize,
    pub pubs: usize,
    pub subs: usize,
    pub json: bool,
    pub subject: String,
    pub queue: Option<String>,
    pub flush_every: u64,
    pub max_lead: u64,
    pub stall: Duration,
    pub warmup: u64,
    pub threads: usize,
    pub big_size: usize,
    pub interval: Duration,
    /// hol: time between big messages, if paced.
    pub big_pace: Option<Duration>,
    /// Plain TCP or TLS, for every connection.
    pub dial: client::Dial,
    /// connect: connections set up at the same time.
    pub parallel: usize,
}

impl Config {
    fn from_args(a: &BenchArgs) -> Result<Config, String> {
        let scenario = match (a.scenario, a.scenario_opt) {
            (Some(x), Some(y)) if x != y => {
                return Err(format!("scenario given twice: {x} and {y}"));
            }
            (Some(x), _) | (None, Some(x)) => x,
            (None, None) => Scenario::Pubsub,
        };
        let (pubs, subs) = match scenario {
            Scenario::Pub => (a.pubs.unwrap_or(1), 0),
            Scenario::Sub => (a.pubs.unwrap_or(1), a.subs.unwrap_or(1)),
            Scenario::Pubsub => (1, a.subs.unwrap_or(1)),
            Scenario::Fanout => (1, a.subs.unwrap_or(10)),
            Scenario::Queue => (1, a.subs.unwrap_or(4)),
            Scenario::Reqrep => (1, 1),
            Scenario::Hol => (2, 2),
            Scenario::Connect => (1, 0),
        };
        if pubs == 0 {
            return Err("--pubs must be at least 1".into());
        }
        if subs == 0 && !matches!(scenario, Scenario::Pub | Scenario::Connect) {
            return Err("--subs must be at least 1".into());
        }
        let msgs = a.msgs.unwrap_or(match scenario {
            Scenario::Reqrep => 20_000,
            Scenario::Hol => 2_000,
            Scenario::Connect => 2_000,
            _ => 1_000_000,
        });
        if msgs == 0 {
            return Err("--msgs must be at least 1".into());
        }
        let hol = scenario == Scenario::Hol;
        let size = a.size.unwrap_or(if hol { 16 } else { 128 });
        for (name, v) in [("--size", size), ("--big-size", a.more.big_size)] {
            if v > nats_proto::DEFAULT_MAX_PAYLOAD {
                return Err(format!(
                    "{name} {v} exceeds the default max_payload of {} bytes",
                    nats_proto::DEFAULT_MAX_PAYLOAD
                ));
            }
        }
        if hol && size < hol::STAMP_LEN {
            return Err(format!(
                "hol needs --size of at least {} bytes for its timestamp",
                hol::STAMP_LEN
            ));
        }
        if hol && a.more.big_size == 0 {
            return Err("--big-size must be at least 1".into());
        }
        if hol && a.more.interval_us == 0 {
            return Err("--interval-us must be at least 1".into());
        }
        if !(a.more.big_rate >= 0.0 && a.more.big_rate.is_finite()) {
            return Err("--big-rate must be a non-negative number of messages per second".into());
        }
        let pub_server = a
            .more
            .pub_server
            .clone()
            .unwrap_or_else(|| a.server.clone());
        let sub_server = a
            .more
            .sub_server
            .clone()
            .unwrap_or_else(|| a.server.clone());
        let pub_addrs = client::server_addrs(&pub_server)?;
        let sub_addrs = client::server_addrs(&sub_server)?;
        let cross = pub_addrs
            .iter()
            .chain(&sub_addrs)
            .any(|x| *x != pub_addrs[0]);
        if a.subject.is_empty() || a.subject.contains(|c: char| c.is_whitespace()) {
            return Err("--subject must be a non-empty subject without spaces".into());
        }
        if !(a.timeout > 0.0 && a.timeout.is_finite()) {
            return Err("--timeout must be a positive number of seconds".into());
        }
        if a.more.parallel == 0 {
            return Err("--parallel must be at least 1".into());
        }
        let dial = match &a.more.tls_ca {
            Some(ca) => client::Dial::tls(ca, a.more.tls_first)?,
            None => client::Dial::default(),
        };
        let threads = a.more.threads.unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2)
        });
        Ok(Config {
            scenario,
            server: a.server.clone(),
            pub_server,
            sub_server,
            pub_addrs,
            sub_addrs,
            cross,
            msgs,
            size,
            pubs,
            subs,
            json: a.json,
            subject: a.subject.clone(),
            queue: (scenario == Scenario::Queue).then(|| a.queue.clone()),
            flush_every: a.flush_every,
            max_lead: a.max_lead,
            stall: Duration::from_secs_f64(a.timeout),
            warmup: if hol || scenario == Scenario::Connect {
                a.more.warmup.unwrap_or(100)
            } else {
                a.more.warmup.unwrap_or(1_000).min(msgs)
            },
            threads: threads.max(1),
            big_size: a.more.big_size,
            interval: Duration::from_micros(a.more.interval_us),
            big_pace: (a.more.big_rate > 0.0)
                .then(|| Duration::from_secs_f64(1.0 / a.more.big_rate)),
            dial,
            parallel: a.more.parallel,
        })
    }
}

/// Runs one benchmark and prints its result; builds its own tokio runtime so
/// the caller needs none. Exit codes: 0 success, 1 the run finished but
/// messages were lost, 2 the run could not be carried out.
pub fn run(args: BenchArgs) -> ExitCode {
    let cfg = match Config::from_args(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("tern bench: {e}");
            return ExitCode::from(2);
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cfg.threads)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tern bench: cannot start runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let result = rt.block_on(async {
        match cfg.scenario {
            Scenario::Reqrep => reqrep::run(&cfg).await,
            Scenario::Hol => hol::run(&cfg).await,
            Scenario::Connect => connect::run(&cfg).await,
            _ => throughput::run(&cfg).await,
        }
    });
    rt.shutdown_timeout(Duration::from_millis(200));
    match result {
        Ok(report) => {
            if cfg.json {
                println!("{}", report.to_json());
            } else {
                print!("{}", report.human());
            }
            if report.lost > 0 {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(e) => {
            eprintln!("tern bench: {e}");
            ExitCode::from(2)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("16"), Ok(16));
        assert_eq!(parse_size("1KB"), Ok(1024));
        assert_eq!(parse_size("4k"), Ok(4096));
        assert_eq!(parse_size("1MiB"), Ok(1024 * 1024));
        assert!(parse_size("1x").is_err());
        assert!(parse_size("").is_err());
    }
}
