//! The minimal client connection the benchmark roles share: connect, read
//! `INFO`, send `CONNECT` and prove it with a PING/PONG round trip.

use std::fmt;
use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::BytesMut;
use nats_proto::{Limits, Op, Parser, ProtoError};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{timeout_at, Instant};
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

/// How long connecting and the handshake may take.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a run could not be carried out.
#[derive(Debug)]
pub(crate) struct BenchError(pub String);

impl fmt::Display for BenchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<std::io::Error> for BenchError {
    fn from(e: std::io::Error) -> Self {
        BenchError(e.to_string())
    }
}

impl From<ProtoError> for BenchError {
    fn from(e: ProtoError) -> Self {
        BenchError(format!("protocol error from server: {e}"))
    }
}

impl From<tokio::time::error::Elapsed> for BenchError {
    fn from(_: tokio::time::error::Elapsed) -> Self {
        BenchError("timed out waiting for the server".into())
    }
}

pub(crate) type Result<T> = std::result::Result<T, BenchError>;

/// Shorthand for an error with a message.
pub(crate) fn err<T>(msg: impl Into<String>) -> Result<T> {
    Err(BenchError(msg.into()))
}

/// Turns `nats://host:port`, `tcp://host:port`, `host:port` or `host` into a
/// socket address string; user info and paths are ignored.
pub(crate) fn server_addr(url: &str) -> std::result::Result<String, String> {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let rest = rest.rsplit_once('@').map_or(rest, |(_, r)| r);
    let host_port = rest.split('/').next().unwrap_or("");
    if host_port.is_empty() {
        return Err(format!("bad server URL {url:?}"));
    }
    // A bracketed IPv6 literal, with or without a port.
    if host_port.starts_with('[') {
        return Ok(if host_port.contains("]:") {
            host_port.to_string()
        } else {
            format!("{host_port}:4222")
        });
    }
    Ok(match host_port.rsplit_once(':') {
        Some((h, p)) if !h.is_empty() && p.parse::<u16>().is_ok() => host_port.to_string(),
        Some(_) => return Err(format!("bad server URL {url:?}")),
        None => format!("{host_port}:4222"),
    })
}

/// How clients reach the server: plain TCP, or TLS trusting one CA (INFO in
/// clear then the upgrade, as NATS clients do, or the handshake first).
#[derive(Clone, Default)]
pub(crate) struct Dial {
    tls: Option<TlsDial>,
}

#[derive(Clone)]
struct TlsDial {
    connector: TlsConnector,
    first: bool,
    /// Version and suite of the first handshake, for the report.
    negotiated: Arc<OnceLock<String>>,
}

impl fmt::Debug for Dial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.tls {
            None => f.write_str("Dial(tcp)"),
            Some(t) => write!(f, "Dial(tls, first: {})", t.first),
        }
    }
}

impl Dial {
    /// TLS trusting only the CA certificates in `ca_file`. Every connection
    /// makes a full handshake (no session resumption, as a fresh client
    /// process would), and AES-128-GCM is offered first so that rustls
    /// (which follows the client's order) and Go (which prefers it on AES
    /// hardware) negotiate the same suite.
    pub fn tls(ca_file: &Path, first: bool) -> std::result::Result<Dial, String> {
        let what = |e: &dyn fmt::Display| format!("--tls-ca {}: {e}", ca_file.display());
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(ca_file).map_err(|e| what(&e))? {
            roots
                .add(cert.map_err(|e| what(&e))?)
                .map_err(|e| what(&e))?;
        }
        if roots.is_empty() {
            return Err(what(&"no certificate found"));
        }
        let mut provider = rustls::crypto::ring::default_provider();
        provider
            .cipher_suites
            .sort_by_key(|s| s.suite() != rustls::CipherSuite::TLS13_AES_128_GCM_SHA256);
        let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
            .with_safe_default_protocol_versions()
            .map_err(|e| what(&e))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.resumption = rustls::client::Resumption::disabled();
        Ok(Dial {
            tls: Some(TlsDial {
                connector: TlsConnector::from(Arc::new(config)),
                first,
                negotiated: Arc::default(),
            }),
        })
    }

    /// Whether connections use TLS.
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// "TLSv1_3 TLS13_AES_128_GCM_SHA256" once a handshake has completed.
    pub fn negotiated(&self) -> Option<String> {
        self.tls.as_ref()?.negotiated.get().cloned()
    }
}

/// A client socket, plain or TLS. An enum rather than a trait object keeps
/// the plain path to one predictable branch per call.
pub(crate) enum Stream {
    Tcp(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl Stream {
    /// Writes all of `buf` and, over TLS, pushes out the records rustls may
    /// still hold, so a reply can be awaited afterwards.
    pub async fn send(&mut self, buf: &[u8]) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.write_all(buf).await,
            Stream::Tls(s) => {
                s.write_all(buf).await?;
                s.flush().await
            }
        }
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// The name the server's certificate must carry: the host part of `addr`
/// (an IP address or a DNS name), else `localhost`.
fn server_name(addr: &str) -> ServerName<'static> {
    let host = match addr.rsplit_once(':') {
        Some((h, _)) => h.trim_start_matches('[').trim_end_matches(']'),
        None => addr,
    };
    ServerName::try_from(host.to_string())
        .unwrap_or_else(|_| ServerName::try_from("localhost").expect("a valid DNS name"))
}

/// A connected, handshaken client socket with a protocol parser for the
/// low-volume traffic (INFO, PONG, replies); hot paths take the socket out.
pub(crate) struct Conn {
    pub stream: Stream,
    pub rbuf: BytesMut,
    parser: Parser,
    /// `client_id` from the server's INFO, if it sent one.
    pub client_id: Option<u64>,
}

impl Conn {
    /// Connects and completes the handshake: INFO, CONNECT, PING, PONG, with
    /// the TLS handshake after INFO (or first) when `dial` asks for TLS.
    pub async fn connect(dial: &Dial, addr: &str, name: &str) -> Result<Conn> {
        let deadline = Instant::now() + CONNECT_TIMEOUT;
        let tcp = timeout_at(deadline, TcpStream::connect(addr))
            .await?
            .map_err(|e| BenchError(format!("cannot connect to {addr}: {e}")))?;
        tcp.set_nodelay(true)?;
        let stream = match &dial.tls {
            Some(t) if t.first => Stream::Tls(Box::new(handshake(t, addr, tcp, deadline).await?)),
            _ => Stream::Tcp(tcp),
        };
        let mut conn = Conn {
            stream,
            rbuf: BytesMut::with_capacity(64 * 1024),
            parser: Parser::new(Limits::default()),
            client_id: None,
        };
        let info = match conn.next_op(deadline).await? {
            Op::Info(json) => serde_json::from_slice::<serde_json::Value>(&json).ok(),
            op => return err(format!("expected INFO from server, got {}", op.verb())),
        };
        let flag = |k: &str| info.as_ref().and_then(|v| v.get(k)?.as_bool()) == Some(true);
        conn.client_id = info
            .as_ref()
            .and_then(|v| v.get("client_id").and_then(|c| c.as_u64()));
        if dial.tls.is_none() && flag("tls_required") {
            return err(format!(
                "{addr} requires TLS (INFO says tls_required); pass --tls-ca"
            ));
        }
        if let (Some(t), Stream::Tcp(_)) = (&dial.tls, &conn.stream) {
            if !conn.rbuf.is_empty() {
                return err("server sent more than INFO before the TLS handshake");
            }
            let Conn {
                stream: Stream::Tcp(tcp),
                rbuf,
                parser,
                client_id,
            } = conn
            else {
                unreachable!("matched Stream::Tcp above")
            };
            conn = Conn {
                stream: Stream::Tls(Box::new(handshake(t, addr, tcp, deadline).await?)),
                rbuf,
                parser,
                client_id,
            };
        }
        let connect = format!(
            "CONNECT {{\"verbose\":false,\"pedantic\":false,\"tls_required\":{},\
             \"name\":\"{name}\",\"lang\":\"rust\",\"version\":\"{}\",\"protocol\":1,\
             \"echo\":true}}\r\nPING\r\n",
            dial.is_tls(),
            env!("CARGO_PKG_VERSION")
        );
        timeout_at(deadline, conn.stream.send(connect.as_bytes())).await??;
        conn.wait_pong(deadline).await?;
        Ok(conn)
    }

    /// Sends `cmd` followed by PING and waits for the PONG, which proves the
    /// server has processed `cmd` (e.g. a SUB is in place).
    pub async fn roundtrip(&mut self, cmd: &[u8], deadline: Instant) -> Result<()> {
        let mut out = Vec::with_capacity(cmd.len() + 6);
        out.extend_from_slice(cmd);
        out.extend_from_slice(b"PING\r\n");
        timeout_at(deadline, self.stream.send(&out)).await??;
        self.wait_pong(deadline).await
    }

    /// The next operation from the server, reading as needed.
    pub async fn next_op(&mut self, deadline: Instant) -> Result<Op> {
        loop {
            if let Some(op) = self.parser.parse(&mut self.rbuf)? {
                return Ok(op);
            }
            self.rbuf.reserve(64 * 1024);
            let n = timeout_at(deadline, self.stream.read_buf(&mut self.rbuf)).await??;
            if n == 0 {
                return err("server closed the connection");
            }
        }
    }

    /// Like [`Conn::next_op`], but `None` when `deadline` passes first.
    pub async fn poll_op(&mut self, deadline: Instant) -> Result<Option<Op>> {
        loop {
            if let Some(op) = self.parser.parse(&mut self.rbuf)? {
                return Ok(Some(op));
            }
            self.rbuf.reserve(64 * 1024);
            match timeout_at(deadline, self.stream.read_buf(&mut self.rbuf)).await {
                Err(_) => return Ok(None),
                Ok(Ok(0)) => return err("server closed the connection"),
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(e.into()),
            }
        }
    }

    /// The next operation already buffered, without reading; lets a
    /// responder answer everything one read brought before writing once.
    pub fn try_next_op(&mut self) -> Result<Option<Op>> {
        Ok(self.parser.parse(&mut self.rbuf)?)
    }

    /// Reads until a PONG, answering server PINGs and failing on `-ERR`.
    pub async fn wait_pong(&mut self, deadline: Instant) -> Result<()> {
        loop {
            match self.next_op(deadline).await? {
                Op::Pong => return Ok(()),
                Op::Ping => {
                    timeout_at(deadline, self.stream.send(b"PONG\r\n")).await??;
                }
                Op::Err(text) => {
                    return err(format!("server error: {}", String::from_utf8_lossy(&text)))
                }
                _ => {}
            }
        }
    }
}

/// The client side of a TLS handshake on `tcp`, within `deadline`.
async fn handshake(
    t: &TlsDial,
    addr: &str,
    tcp: TcpStream,
    deadline: Instant,
) -> Result<TlsStream<TcpStream>> {
    let tls = timeout_at(deadline, t.connector.connect(server_name(addr), tcp))
        .await?
        .map_err(|e| BenchError(format!("TLS handshake with {addr}: {e}")))?;
    if t.negotiated.get().is_none() {
        let c = tls.get_ref().1;
        let version = c.protocol_version().map(|v| format!("{v:?}"));
        let suite = c
            .negotiated_cipher_suite()
            .map(|s| format!("{:?}", s.suite()));
        let kx = c
            .negotiated_key_exchange_group()
            .map(|g| format!("{:?}", g.name()));
        let parts: Vec<String> = [version, suite, kx].into_iter().flatten().collect();
        let _ = t.negotiated.set(parts.join(" "));
    }
    Ok(tls)
}

/// Splits a comma-separated list of server URLs into socket addresses.
pub(crate) fn server_addrs(urls: &str) -> std::result::Result<Vec<String>, String> {
    let addrs = urls
        .split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(server_addr)
        .collect::<std::result::Result<Vec<_>, _>>()?;
    if addrs.is_empty() {
        return Err(format!("bad server list {urls:?}"));
    }
    Ok(addrs)
}

/// A subject no one else uses, for interest probes.
pub(crate) fn probe_prefix() -> String {
    format!("_TERN_BENCH.{:016x}", rand::random::<u64>())
}

/// How long to wait for each probe before sending the next round.
const PROBE_WAIT: Duration = Duration::from_millis(25);

/// Waits until every subscriber's interest has reached every publisher's
/// server, which in a cluster takes a moment after the subscriber's own
/// server confirmed the SUB.
///
/// Subscriber `i` must already be subscribed to `{prefix}.{i}` with sid
/// `probe_sid`, after its real subscriptions on the same connection (servers
/// propagate a connection's interest in order, so the probe arriving proves
/// the earlier ones arrived too). Each publisher publishes probes carrying
/// its index until every subscriber has received one from every publisher;
/// then the probe subscriptions are removed (UNSUB confirmed by PONG, so no
/// probe reaches the measured stream afterwards).
pub(crate) async fn sync_interest(
    pubs: &mut [&mut Conn],
    subs: &mut [&mut Conn],
    prefix: &str,
    probe_sid: &str,
    limit: Duration,
) -> Result<()> {
    let deadline = Instant::now() + limit;
    let np = pubs.len();
    // seen[i][j]: subscriber i got a probe from publisher j.
    let mut seen = vec![vec![false; np]; subs.len()];
    let mut out = BytesMut::new();
    while seen.iter().any(|s| s.iter().any(|x| !x)) {
        if Instant::now() >= deadline {
            let missing = seen.iter().filter(|s| s.iter().any(|x| !x)).count();
            return err(format!(
                "interest of {missing} subscriber(s) did not reach the publishers' \
                 server(s) within {:.1} s",
                limit.as_secs_f64()
            ));
        }
        for (j, p) in pubs.iter_mut().enumerate() {
            out.clear();
            for (i, s) in seen.iter().enumerate() {
                if !s[j] {
                    let subject = format!("{prefix}.{i}");
                    nats_proto::encode::write_pub(
                        &mut out,
                        subject.as_bytes(),
                        None,
                        j.to_string().as_bytes(),
                    );
                }
            }
            if !out.is_empty() {
                timeout_at(deadline, p.stream.send(&out)).await??;
            }
        }
        let wait_until = Instant::now() + PROBE_WAIT;
        for (i, s) in subs.iter_mut().enumerate() {
            if seen[i].iter().all(|&x| x) {
                continue;
            }
            while let Some(op) = s.poll_op(wait_until).await? {
                match op {
                    Op::Msg { sid, payload, .. } if sid == probe_sid.as_bytes() => {
                        if let Some(j) = std::str::from_utf8(&payload)
                            .ok()
                            .and_then(|t| t.parse::<usize>().ok())
                            .filter(|&j| j < np)
                        {
                            seen[i][j] = true;
                        }
                    }
                    Op::Ping => {
                        timeout_at(deadline, s.stream.send(b"PONG\r\n")).await??;
                    }
                    Op::Err(t) => {
                        return err(format!("server error: {}", String::from_utf8_lossy(&t)))
                    }
                    _ => {}
                }
                if seen[i].iter().all(|&x| x) {
                    break;
                }
            }
        }
    }
    let unsub = format!("UNSUB {probe_sid}\r\n");
    for s in subs.iter_mut() {
        s.roundtrip(unsub.as_bytes(), deadline + CONNECT_TIMEOUT)
            .await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{server_addr, server_addrs, server_name, Dial};
    use rustls::pki_types::ServerName;

    #[test]
    fn tls_names() {
        let ip = |s: &str| ServerName::IpAddress(s.parse::<std::net::IpAddr>().unwrap().into());
        assert_eq!(server_name("127.0.0.1:4222"), ip("127.0.0.1"));
        assert_eq!(server_name("[::1]:4222"), ip("::1"));
        assert_eq!(
            server_name("nats.example:4222"),
            ServerName::try_from("nats.example").unwrap()
        );
        assert_eq!(
            server_name("bad_name!:1"),
            ServerName::try_from("localhost").unwrap()
        );
        let e = Dial::tls(std::path::Path::new("/nonexistent/ca.pem"), false).unwrap_err();
        assert!(e.contains("/nonexistent/ca.pem"), "{e}");
    }

    #[test]
    fn urls() {
        assert_eq!(
            server_addr("nats://127.0.0.1:4222").unwrap(),
            "127.0.0.1:4222"
        );
        assert_eq!(server_addr("127.0.0.1:5000").unwrap(), "127.0.0.1:5000");
        assert_eq!(server_addr("localhost").unwrap(), "localhost:4222");
        assert_eq!(server_addr("nats://u:p@h:1/").unwrap(), "h:1");
        assert_eq!(server_addr("[::1]:7").unwrap(), "[::1]:7");
        assert_eq!(server_addr("nats://[::1]").unwrap(), "[::1]:4222");
        assert!(server_addr("nats://").is_err());
        assert!(server_addr("h:notaport").is_err());
        assert_eq!(server_addrs("a:1, b:2").unwrap(), vec!["a:1", "b:2"]);
        assert!(server_addrs(",").is_err());
    }
}
