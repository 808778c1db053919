//! `tern`: start it where you would start nats-server.

use clap::Parser as _;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;

use router::cli::{normalize_args, Cli, Command};
use router::logging;
use router::options::Options;
use router::reload::Reloader;
use router::server::{Server, VERSION};
use router::web::monitor;

/// mimalloc, when built with `--features mimalloc` (see docs/BENCHMARKS.md).
#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// jemalloc, when built with `--features jemalloc` (and not mimalloc).
#[cfg(all(feature = "jemalloc", not(feature = "mimalloc")))]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    let cli = match Cli::try_parse_from(normalize_args(std::env::args_os())) {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    match cli.command {
        Some(Command::Bench(args)) => return tern_bench::run(args),
        Some(Command::Keygen) => {
            let id = peer::ServerIdentity::generate();
            println!("seed: {}\npublic key: {}", id.seed(), id.public_key());
            return ExitCode::SUCCESS;
        }
        None => {}
    }
    if cli.server.version {
        println!("tern: v{VERSION}");
        return ExitCode::SUCCESS;
    }
    let mut opts = Options::default();
    let warnings = match router::config_file::load(&cli.server, &mut opts) {
        Ok(w) => w,
        Err(e) => {
            eprintln!("tern: {e}");
            return ExitCode::from(1);
        }
    };
    if let Some(spec) = &cli.server.signal {
        let pid_file = cli.server.pid.as_deref().or(opts.pid_file.as_deref());
        return match router::control::send(spec, pid_file) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("tern: {e}");
                ExitCode::from(1)
            }
        };
    }
    if cli.server.test_config {
        // Certificate and key files are loaded, as nats-server's -t does.
        if let Err(e) = opts.validate() {
            eprintln!("tern: {e}");
            return ExitCode::from(1);
        }
        // A key Tern ignores fails the test (the server would start without
        // that setting), as an unknown key fails nats-server's -t.
        if !warnings.is_empty() {
            for w in &warnings {
                eprintln!("tern: {w}");
            }
            eprintln!(
                "tern: configuration file {} test failed: {} option(s) Tern does not apply",
                opts.config_file
                    .as_ref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default(),
                warnings.len()
            );
            return ExitCode::from(1);
        }
        println!(
            "tern: configuration file {} test is successful",
            opts.config_file
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_default()
        );
        return ExitCode::SUCCESS;
    }
    for w in &warnings {
        eprintln!("tern: warning: {w}");
    }
    if let Err(e) = cli.server.apply(&mut opts).and_then(|()| opts.validate()) {
        eprintln!("tern: {e}");
        return ExitCode::from(1);
    }
    let reloader = Reloader::new(cli.server.clone(), opts.clone());
    if let Err(e) = logging::init(opts.debug, opts.trace, opts.log_file.as_deref()) {
        eprintln!("tern: cannot open log file: {e}");
        return ExitCode::from(1);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(run(opts, reloader))
}

async fn run(mut opts: Options, reloader: Reloader) -> ExitCode {
    // Handlers first: a harness may signal as soon as the ports file exists,
    // and SIGHUP/SIGUSR1 kill a process that has no handler yet.
    let signals = Signals::install();
    let identity = match &opts.server_key_file {
        Some(path) => match peer::ServerIdentity::load_or_generate(path) {
            Ok((id, generated)) => {
                if generated {
                    tracing::info!("Generated a new server key in {}", path.display());
                }
                id
            }
            Err(e) => {
                eprintln!("tern: cannot load server key {}: {e}", path.display());
                return ExitCode::from(1);
            }
        },
        None => peer::ServerIdentity::generate(),
    };
    let addr = SocketAddr::new(opts.host, opts.port);
    let listener = match transport::tcp::bind(addr).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("tern: error listening on port: {addr}, {e}");
            return ExitCode::from(1);
        }
    };
    let bound = listener.local_addr().expect("bound address");
    // INFO and /varz report the port actually bound (`-p -1` picks one).
    opts.port = bound.port();
    let server = Server::new(opts.clone(), identity.public_key());
    *server.client_addr.lock() = Some(bound);
    tracing::info!("Starting tern");
    tracing::info!("  Version:  {VERSION}");
    tracing::info!("  ID:       {}", server.info.server_id);
    tracing::info!("  Name:     {}", server.info.server_name);
    if let Some(cfg) = &opts.config_file {
        tracing::info!("Using configuration file: {}", cfg.display());
    }
    if let Some(pid) = &opts.pid_file {
        if let Err(e) = std::fs::write(pid, std::process::id().to_string()) {
            tracing::error!("cannot write pid file {}: {e}", pid.display());
            return ExitCode::from(1);
        }
    }
    let mut monitoring = None;
    let monitor_tls = match opts.monitor_tls().transpose() {
        Ok(t) => t,
        Err(e) => {
            tracing::error!("monitoring TLS: {e}");
            return ExitCode::from(1);
        }
    };
    if let Some(port) = opts.http_port.or(opts.https_port) {
        let addr = SocketAddr::new(opts.http_host.unwrap_or(opts.host), port);
        match transport::tcp::bind(addr).await {
            Ok(l) => {
                let bound = l.local_addr().expect("bound address");
                let scheme = if monitor_tls.is_some() {
                    "https"
                } else {
                    "http"
                };
                tracing::info!("Starting {scheme} monitor on {scheme}://{bound}");
                *server.http_addr.lock() = Some(bound);
                monitoring = Some(tokio::spawn(monitor::serve(server.clone(), l, monitor_tls)));
            }
            Err(e) => {
                tracing::error!("cannot listen for monitoring on {addr}: {e}");
                return ExitCode::from(1);
            }
        }
    }
    tracing::info!("Listening for client connections on {bound}");
    if let Some(dir) = &opts.ports_file_dir {
        let scheme = if opts.https_port.is_some() {
            "https"
        } else {
            "http"
        };
        if let Err(e) = write_ports_file(dir, bound, *server.http_addr.lock(), scheme) {
            tracing::error!("cannot write ports file: {e}");
        }
    }
    if opts.cluster.enabled() {
        let client_url = opts
            .client_advertise
            .clone()
            .unwrap_or_else(|| router::cluster::advertise_addr(bound));
        match router::cluster::Cluster::start(&server, opts.cluster.clone(), &identity, client_url)
        {
            Ok(c) => {
                let _ = server.cluster.set(c);
            }
            Err(e) => {
                tracing::error!("cannot start cluster: {e}");
                return ExitCode::from(1);
            }
        }
    }
    tracing::info!("Server is ready");
    let accept = tokio::spawn(server.clone().accept_loop(listener));
    router::memtrim::spawn(&server);
    wait_for_signals(&server, signals, reloader).await;
    accept.abort();
    if let Some(c) = server.cluster.get() {
        c.shutdown();
    }
    if let Some(m) = monitoring {
        m.abort();
    }
    // nats-server leaves the pid file in place and removes the ports file.
    if let Some(dir) = &opts.ports_file_dir {
        let _ = std::fs::remove_file(ports_file_path(dir));
    }
    tracing::info!("Server Exiting..");
    ExitCode::SUCCESS
}

/// The signals the server handles, registered at start-up.
struct Signals {
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
    usr2: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
    usr1: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> Signals {
        use tokio::signal::unix::{signal, SignalKind};
        Signals {
            int: signal(SignalKind::interrupt()).expect("SIGINT handler"),
            term: signal(SignalKind::terminate()).expect("SIGTERM handler"),
            usr2: signal(SignalKind::user_defined2()).expect("SIGUSR2 handler"),
            hup: signal(SignalKind::hangup()).expect("SIGHUP handler"),
            usr1: signal(SignalKind::user_defined1()).expect("SIGUSR1 handler"),
        }
    }
}

/// Handles signals as nats-server does until the server is to stop:
/// SIGINT/SIGTERM shut down gracefully, SIGUSR2 enters lame-duck mode (the
/// server exits when it ends), SIGHUP reloads the config file, SIGUSR1
/// reopens the log file (logrotate).
async fn wait_for_signals(server: &Arc<Server>, signals: Signals, mut reloader: Reloader) {
    let Signals {
        mut int,
        mut term,
        mut usr2,
        mut hup,
        mut usr1,
    } = signals;
    let (ldm_done_tx, mut ldm_done) = tokio::sync::mpsc::channel::<()>(1);
    let mut in_ldm = false;
    loop {
        tokio::select! {
            _ = int.recv() => {
                tracing::info!("Trapped \"interrupt\" signal");
                break;
            }
            _ = term.recv() => {
                tracing::info!("Trapped \"terminated\" signal");
                break;
            }
            _ = usr2.recv(), if !in_ldm => {
                tracing::info!("Trapped \"user defined signal 2\" signal");
                in_ldm = true;
                let s = server.clone();
                let done = ldm_done_tx.clone();
                tokio::spawn(async move {
                    s.lame_duck().await;
                    let _ = done.send(()).await;
                });
            }
            _ = ldm_done.recv() => return,
            _ = hup.recv() => {
                tracing::info!("Trapped \"hangup\" signal");
                if let Err(e) = reloader.reload(server) {
                    tracing::error!("Failed to reload server configuration: {e}");
                }
            }
            _ = usr1.recv() => {
                tracing::info!("Trapped \"user defined signal 1\" signal");
                match logging::reopen(None) {
                    Ok(true) => tracing::info!("File log re-opened"),
                    Ok(false) => tracing::info!("File log re-open ignored, not a file logger"),
                    Err(e) => eprintln!("tern: cannot reopen log file: {e}"),
                }
            }
        }
    }
    server.shutdown().await;
}

/// `<dir>/<exe>_<pid>.ports`, named as nats-server names it.
fn ports_file_path(dir: &std::path::Path) -> std::path::PathBuf {
    let exe = std::env::args()
        .next()
        .and_then(|a| {
            std::path::Path::new(&a)
                .file_name()
                .map(|f| f.to_string_lossy().into_owned())
        })
        .unwrap_or_else(|| "tern".into());
    dir.join(format!("{exe}_{}.ports", std::process::id()))
}

/// Writes `<exe>_<pid>.ports` as nats-server does, for harnesses using `-p -1`.
fn write_ports_file(
    dir: &std::path::Path,
    client: SocketAddr,
    http: Option<SocketAddr>,
    http_scheme: &str,
) -> std::io::Result<()> {
    let host = |a: SocketAddr| {
        if a.ip().is_unspecified() {
            "127.0.0.1".to_owned()
        } else {
            a.ip().to_string()
        }
    };
    let mut doc =
        serde_json::json!({ "nats": [format!("nats://{}:{}", host(client), client.port())] });
    if let Some(h) = http {
        doc["monitoring"] =
            serde_json::json!([format!("{http_scheme}://{}:{}", host(h), h.port())]);
    }
    let path = ports_file_path(dir);
    let tmp = path.with_extension("ports.tmp");
    std::fs::write(&tmp, serde_json::to_vec(&doc)?)?;
    std::fs::rename(tmp, path)
}
