//! `tern`: start it where you would start nats-server.

use clap::Parser as _;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;

use router::cli::{normalize_args, Cli, Command};
use router::options::Options;
use router::server::{Server, VERSION};
use router::{logging, monitor};

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
        Some(Command::Bench(args)) => return router::bench::run(args),
        Some(Command::Keygen) => {
            let id = peer::ServerIdentity::generate();
            println!("{}\n{}", id.seed(), id.public_key());
            return ExitCode::SUCCESS;
        }
        None => {}
    }
    if cli.server.version {
        println!("tern: v{VERSION}");
        return ExitCode::SUCCESS;
    }
    let mut opts = Options::default();
    if let Err(e) = router::config_file::load(&cli.server, &mut opts) {
        eprintln!("tern: {e}");
        return ExitCode::from(1);
    }
    if cli.server.test_config {
        println!(
            "tern: configuration file {} test is successful",
            opts.config_file
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_default()
        );
        return ExitCode::SUCCESS;
    }
    if let Err(e) = cli.server.apply(&mut opts).and_then(|()| opts.validate()) {
        eprintln!("tern: {e}");
        return ExitCode::from(1);
    }
    if let Err(e) = logging::init(opts.debug, opts.trace, opts.log_file.as_deref()) {
        eprintln!("tern: cannot open log file: {e}");
        return ExitCode::from(1);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(run(opts))
}

async fn run(mut opts: Options) -> ExitCode {
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
    if let Some(port) = opts.http_port {
        let addr = SocketAddr::new(opts.http_host.unwrap_or(opts.host), port);
        match transport::tcp::bind(addr).await {
            Ok(l) => {
                let bound = l.local_addr().expect("bound address");
                tracing::info!("Starting http monitor on http://{bound}");
                *server.http_addr.lock() = Some(bound);
                monitoring = Some(tokio::spawn(monitor::serve(server.clone(), l)));
            }
            Err(e) => {
                tracing::error!("cannot listen for monitoring on {addr}: {e}");
                return ExitCode::from(1);
            }
        }
    }
    tracing::info!("Listening for client connections on {bound}");
    if let Some(dir) = &opts.ports_file_dir {
        if let Err(e) = write_ports_file(dir, bound, *server.http_addr.lock()) {
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
    wait_for_signals(&server).await;
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

/// Waits for SIGINT/SIGTERM (graceful shutdown) or SIGUSR2 (lame duck).
async fn wait_for_signals(server: &Arc<Server>) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut usr2 = signal(SignalKind::user_defined2()).expect("SIGUSR2 handler");
    tokio::select! {
        _ = int.recv() => tracing::info!("Trapped \"interrupt\" signal"),
        _ = term.recv() => tracing::info!("Trapped \"terminated\" signal"),
        _ = usr2.recv() => {
            tracing::info!("Trapped \"user defined signal 2\" signal");
            let s = server.clone();
            let ldm = tokio::spawn(async move { s.lame_duck().await });
            tokio::select! {
                _ = ldm => return,
                _ = int.recv() => {}
                _ = term.recv() => {}
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
        doc["monitoring"] = serde_json::json!([format!("http://{}:{}", host(h), h.port())]);
    }
    let path = ports_file_path(dir);
    let tmp = path.with_extension("ports.tmp");
    std::fs::write(&tmp, serde_json::to_vec(&doc)?)?;
    std::fs::rename(tmp, path)
}
