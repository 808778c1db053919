//! QUIC links between cluster nodes.
//!
//! One UDP endpoint per node both accepts and dials. Every link is mutually
//! authenticated by TLS 1.3 with each node's ed25519 nkey (see `peer::tls`),
//! then confirmed by a signed hello from the accepting node, because a dialer
//! whose key the other side refuses still sees its QUIC handshake complete.
//! A [`QuicLink`] is handed out only after that hello, so holding one means the
//! remote node is who [`QuicLink::peer_key`] says and has accepted this node.
//!
//! Links move length-prefixed frames (a 4-byte big-endian length, then the
//! bytes) on bidirectional control streams and unidirectional message
//! streams. What a frame means is the router's business, not this module's.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use peer::tls::{self, PinnedPeers};
use peer::ServerIdentity;
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{AckFrequencyConfig, ConnectionError, IdleTimeout, TransportConfig, VarInt};
use rustls::pki_types::CertificateDer;
use tokio::sync::{mpsc, Mutex};
use tokio::task::JoinHandle;

/// ALPN protocol id of cluster links; bump the version when frames change
/// incompatibly, so mismatched nodes fail at the handshake, not mid-stream.
pub const ALPN: &[u8] = b"tern-cluster/1";

/// Default largest frame accepted or sent (16 MiB): above NATS' largest
/// configurable payload plus headroom, small enough that a broken length
/// prefix cannot make a node allocate gigabytes.
pub const DEFAULT_MAX_FRAME: usize = 16 * 1024 * 1024;

/// Receive window of each stream (see `transport_config`).
pub const STREAM_WINDOW: u32 = 512 * 1024;

/// Default keep-alive ping interval: keeps NAT bindings and idle links alive,
/// and makes a dead peer's silence visible on an idle link within one
/// interval (see [`QuicLink::is_suspect`]).
pub const DEFAULT_KEEP_ALIVE: Duration = Duration::from_millis(250);

/// Default idle timeout: a link with no packet from the peer for this long
/// is declared dead (four missed keep-alives). Suited to a LAN; raise it for
/// links over lossy or congested networks.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(1);

/// How often a link's watcher samples the connection's packet counters to
/// decide whether the peer has gone silent.
const WATCH_INTERVAL: Duration = Duration::from_millis(10);

/// Shortest silence after a sent packet that makes a peer suspect: the
/// peer's ACK may legitimately take its `max_ack_delay` (25 ms by default)
/// plus a round trip, plus one watcher interval of sampling slack.
const MIN_SUSPECT_AFTER: Duration = Duration::from_millis(50);

/// The peer's default `max_ack_delay` (RFC 9000, 25 ms), part of how long an
/// answer may take.
const PEER_ACK_DELAY: Duration = Duration::from_millis(25);

/// Handshakes in progress above which a dialer must first prove it owns its
/// address with a Retry round trip (stateless for this node), so a flood of
/// Initials from spoofed or never-answering sources creates no connections.
/// Below it, peers connect without the extra round trip.
pub const RETRY_ABOVE_HANDSHAKES: usize = 16;

/// Hard cap on handshakes in progress: beyond it new connection attempts are
/// dropped unanswered, so even dialers that do prove their address cannot
/// make the node hold more than this many half-made connections.
pub const MAX_HANDSHAKES: usize = 128;

/// Connection attempts quinn may queue before the acceptor takes them, and
/// the bytes it may buffer for them: far below quinn's defaults (65,536
/// attempts, 100 MiB), which are sized for public servers, not a cluster port.
const MAX_INCOMING: usize = 2 * MAX_HANDSHAKES;
const INCOMING_BUFFER: u64 = 64 * 1024;
const INCOMING_BUFFER_TOTAL: u64 = 4 * 1024 * 1024;

/// At most one log line per this interval summarises failed and refused
/// handshakes, so a flood cannot turn into a flood of log lines.
const HANDSHAKE_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// Streams a peer may have open at once. The router uses one control stream
/// and a few message streams per direction; quinn sets up bookkeeping for
/// every allowed stream when a connection is created, handshake or not, so
/// these are kept small (1,024 cost ~40 KB per half-open handshake).
const MAX_BIDI_STREAMS: u32 = 8;
const MAX_UNI_STREAMS: u32 = 64;

/// Timing of an endpoint's links: how often idle links ping and how long a
/// silent peer is given before its link is declared lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkConfig {
    /// Interval of keep-alive pings on idle links.
    pub keep_alive: Duration,
    /// Silence from the peer after which a link (or a handshake) is lost.
    pub idle_timeout: Duration,
}

impl Default for LinkConfig {
    fn default() -> Self {
        LinkConfig {
            keep_alive: DEFAULT_KEEP_ALIVE,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
        }
    }
}

impl LinkConfig {
    /// Checks the settings: both non-zero, keep-alive shorter than the idle
    /// timeout (else idle links time out between pings).
    pub fn validate(&self) -> Result<(), String> {
        if self.keep_alive.is_zero() || self.idle_timeout.is_zero() {
            return Err("keepalive and idle_timeout must be above zero".into());
        }
        if self.keep_alive >= self.idle_timeout {
            return Err(format!(
                "keepalive ({:?}) must be shorter than idle_timeout ({:?})",
                self.keep_alive, self.idle_timeout
            ));
        }
        IdleTimeout::try_from(self.idle_timeout)
            .map_err(|_| format!("idle_timeout {:?} is too large", self.idle_timeout))?;
        Ok(())
    }
}

/// Longest wait for a handshake plus hello, so a half-open dial or a peer that
/// never says hello cannot hang a caller.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// UDP socket buffer size asked for; measured to remove losses under load
/// (the kernel may cap it at `net.core.{r,w}mem_max`).
const SOCKET_BUFFER: usize = 4 * 1024 * 1024;

/// Magic at the start of the hello frame.
const HELLO_MAGIC: &[u8] = b"TERN-HELLO/1";
/// RFC 5705 exporter label: the hello signs secret material of this very TLS
/// session, so it cannot be replayed on another link.
const HELLO_LABEL: &[u8] = b"EXPORTER-tern-cluster-hello";
const HELLO_SECRET_LEN: usize = 32;
const ED25519_SIGNATURE_LEN: usize = 64;

/// Priority of control streams' send halves: above message streams (0) so
/// control frames are not queued behind bulk traffic on the same link.
const CONTROL_PRIORITY: i32 = 1;

/// Why a link could not be set up, or failed.
#[derive(Debug)]
pub enum LinkError {
    /// The UDP socket could not be set up.
    Io(io::Error),
    /// The TLS/QUIC configuration was rejected (e.g. a bad allow-list key).
    Config(String),
    /// Dialing could not start (bad address, endpoint closed).
    Connect(quinn::ConnectError),
    /// This node refused the peer during TLS; `reason` names the peer's key
    /// when the cause is that it is not among the allowed peers.
    RefusedPeer {
        /// The remote UDP address.
        addr: SocketAddr,
        /// The TLS error, e.g. "peer key N... is not among ...".
        reason: String,
    },
    /// The peer refused this node during TLS (usually: this node's key is not
    /// in the peer's allow-list, or the ALPN does not match).
    RefusedByPeer {
        /// The remote UDP address.
        addr: SocketAddr,
        /// The close reason the peer sent, if any.
        reason: String,
    },
    /// The handshake failed for another reason (timeout, unreachable, reset).
    Handshake {
        /// The remote UDP address.
        addr: SocketAddr,
        /// What quinn reported.
        source: ConnectionError,
    },
    /// The accepting side's hello was missing, malformed or badly signed.
    BadHello {
        /// The remote UDP address.
        addr: SocketAddr,
        /// What was wrong.
        reason: String,
    },
    /// Handshake plus hello took longer than [`HANDSHAKE_TIMEOUT`].
    Timeout {
        /// The remote UDP address.
        addr: SocketAddr,
    },
    /// An established link is gone (closed by either side, timed out, reset).
    Lost(ConnectionError),
    /// One stream ended abnormally (reset or stopped by the peer).
    Stream(String),
    /// A frame longer than the configured maximum was sent or announced.
    FrameTooLarge {
        /// The frame length.
        len: usize,
        /// The limit in force.
        max: usize,
    },
    /// The stream ended in the middle of a frame.
    Truncated,
}

impl fmt::Display for LinkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LinkError::Io(e) => write!(f, "cluster socket: {e}"),
            LinkError::Config(e) => write!(f, "cluster link configuration: {e}"),
            LinkError::Connect(e) => write!(f, "cannot dial: {e}"),
            LinkError::RefusedPeer { addr, reason } => {
                write!(f, "refused cluster peer at {addr}: {reason}")
            }
            LinkError::RefusedByPeer { addr, reason } => write!(
                f,
                "cluster peer at {addr} refused this node (is this node's key in its allowed \
                 peers?): {reason}"
            ),
            LinkError::Handshake { addr, source } => {
                write!(f, "cluster link handshake with {addr} failed: {source}")
            }
            LinkError::BadHello { addr, reason } => {
                write!(f, "cluster peer at {addr} sent a bad hello: {reason}")
            }
            LinkError::Timeout { addr } => {
                write!(
                    f,
                    "cluster link with {addr} not established within {HANDSHAKE_TIMEOUT:?}"
                )
            }
            LinkError::Lost(e) => write!(f, "cluster link lost: {e}"),
            LinkError::Stream(e) => write!(f, "cluster link stream: {e}"),
            LinkError::FrameTooLarge { len, max } => {
                write!(f, "frame of {len} bytes exceeds the {max}-byte limit")
            }
            LinkError::Truncated => write!(f, "stream ended inside a frame"),
        }
    }
}

impl std::error::Error for LinkError {}

impl From<quinn::WriteError> for LinkError {
    fn from(e: quinn::WriteError) -> Self {
        match e {
            quinn::WriteError::ConnectionLost(e) => LinkError::Lost(e),
            other => LinkError::Stream(other.to_string()),
        }
    }
}

impl From<quinn::ReadError> for LinkError {
    fn from(e: quinn::ReadError) -> Self {
        match e {
            quinn::ReadError::ConnectionLost(e) => LinkError::Lost(e),
            other => LinkError::Stream(other.to_string()),
        }
    }
}

impl From<quinn::ClosedStream> for LinkError {
    fn from(e: quinn::ClosedStream) -> Self {
        LinkError::Stream(e.to_string())
    }
}

/// TLS alerts travel as QUIC "crypto" error codes 0x100..=0x1ff.
fn is_tls_alert(code: quinn::TransportErrorCode) -> bool {
    (0x100..0x200).contains(&u64::from(code))
}

/// Names who refused whom while a link is being set up, so logs say which
/// side's allow-list to fix.
fn setup_error(addr: SocketAddr, e: ConnectionError) -> LinkError {
    match e {
        ConnectionError::TransportError(t) if is_tls_alert(t.code) => LinkError::RefusedPeer {
            addr,
            reason: t.reason,
        },
        ConnectionError::ConnectionClosed(c) if is_tls_alert(c.error_code) => {
            LinkError::RefusedByPeer {
                addr,
                reason: if c.reason.is_empty() {
                    c.error_code.to_string()
                } else {
                    String::from_utf8_lossy(&c.reason).into_owned()
                },
            }
        }
        source => LinkError::Handshake { addr, source },
    }
}

fn setup_stream_error(addr: SocketAddr, e: LinkError) -> LinkError {
    match e {
        LinkError::Lost(e) => setup_error(addr, e),
        other => other,
    }
}

/// The verified peer key of a finished handshake.
fn verified_peer_key(conn: &quinn::Connection) -> Option<String> {
    let certs = conn
        .peer_identity()?
        .downcast::<Vec<CertificateDer<'static>>>()
        .ok()?;
    tls::peer_key_from_cert(certs.first()?)
}

fn hello_secret(conn: &quinn::Connection) -> Result<[u8; HELLO_SECRET_LEN], String> {
    let mut secret = [0u8; HELLO_SECRET_LEN];
    conn.export_keying_material(&mut secret, HELLO_LABEL, &[])
        .map_err(|_| "cannot export TLS keying material".to_string())?;
    Ok(secret)
}

/// Result of one accepted handshake, handed from the background acceptor.
type Accepted = Result<(quinn::Connection, String), LinkError>;

/// Counts of handshakes that did not become links, logged as one summary
/// line per [`HANDSHAKE_LOG_INTERVAL`] instead of a line per attempt.
#[derive(Default)]
struct HandshakeLog {
    failed: AtomicU64,
    dropped: AtomicU64,
    retried: AtomicU64,
    last_error: std::sync::Mutex<Option<String>>,
    /// Nothing was logged in the last interval: the next failure is logged
    /// at once (a misconfigured peer shows up without delay).
    quiet: AtomicBool,
}

impl HandshakeLog {
    fn failed(&self, e: &LinkError) {
        self.failed.fetch_add(1, Ordering::Relaxed);
        if self.quiet.swap(false, Ordering::Relaxed) {
            tracing::warn!("cluster link handshake failed: {e}");
            self.failed.fetch_sub(1, Ordering::Relaxed);
        } else {
            *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(e.to_string());
        }
    }

    /// Logs what happened since the last call, if anything did.
    fn flush(&self) {
        let failed = self.failed.swap(0, Ordering::Relaxed);
        let dropped = self.dropped.swap(0, Ordering::Relaxed);
        let retried = self.retried.swap(0, Ordering::Relaxed);
        let last = self
            .last_error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if failed == 0 && dropped == 0 && retried == 0 {
            self.quiet.store(true, Ordering::Relaxed);
            return;
        }
        tracing::warn!(
            "cluster port in the last {}s: {failed} handshakes failed{}, {dropped} dropped \
             (over {MAX_HANDSHAKES} in progress), {retried} asked to validate their address",
            HANDSHAKE_LOG_INTERVAL.as_secs(),
            last.map(|e| format!(" (last: {e})")).unwrap_or_default()
        );
    }
}

/// One node's UDP endpoint for cluster links: accepts links from peers and
/// dials peers, with the same identity and allow-list both ways.
pub struct QuicEndpoint {
    endpoint: quinn::Endpoint,
    /// Shared with both TLS configs, so a new allow-list applies to the next handshake.
    pinned: Arc<PinnedPeers>,
    accepted: Mutex<mpsc::Receiver<Accepted>>,
    acceptor: JoinHandle<()>,
    logger: JoinHandle<()>,
    local_key: String,
    max_frame: usize,
    keep_alive: Duration,
}

impl fmt::Debug for QuicEndpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QuicEndpoint")
            .field("local_addr", &self.endpoint.local_addr().ok())
            .field("local_key", &self.local_key)
            .finish()
    }
}

impl QuicEndpoint {
    /// Binds a UDP endpoint at `addr` for `identity`. Peers are accepted, and
    /// dialed peers trusted, only if their key is in `allowed_peers` (server
    /// public keys, `N...`); an empty list lets any node in (open cluster).
    /// `config` sets keep-alive and idle timeout of every link.
    /// Must be called inside a Tokio runtime: a background task starts
    /// accepting at once, so handshakes run concurrently.
    pub fn bind(
        addr: SocketAddr,
        identity: &ServerIdentity,
        allowed_peers: Vec<String>,
        config: LinkConfig,
    ) -> Result<QuicEndpoint, LinkError> {
        config.validate().map_err(LinkError::Config)?;
        let pinned = Arc::new(
            PinnedPeers::new(&allowed_peers).map_err(|e| LinkError::Config(e.to_string()))?,
        );
        let transport = Arc::new(transport_config(&config));

        let mut server_tls =
            tls::server_config(identity, pinned.clone()).map_err(|e| LinkError::Config(e.0))?;
        server_tls.alpn_protocols = vec![ALPN.to_vec()];
        let server_crypto =
            QuicServerConfig::try_from(server_tls).map_err(|e| LinkError::Config(e.to_string()))?;
        let mut server = quinn::ServerConfig::with_crypto(Arc::new(server_crypto));
        server
            .transport_config(transport.clone())
            .max_incoming(MAX_INCOMING)
            .incoming_buffer_size(INCOMING_BUFFER)
            .incoming_buffer_size_total(INCOMING_BUFFER_TOTAL);

        let mut client_tls =
            tls::client_config(identity, pinned.clone()).map_err(|e| LinkError::Config(e.0))?;
        client_tls.alpn_protocols = vec![ALPN.to_vec()];
        let client_crypto =
            QuicClientConfig::try_from(client_tls).map_err(|e| LinkError::Config(e.to_string()))?;
        let mut client = quinn::ClientConfig::new(Arc::new(client_crypto));
        client.transport_config(transport);

        let socket = udp_socket(addr).map_err(LinkError::Io)?;
        let mut endpoint = quinn::Endpoint::new(
            quinn::EndpointConfig::default(),
            Some(server),
            socket,
            Arc::new(quinn::TokioRuntime),
        )
        .map_err(LinkError::Io)?;
        endpoint.set_default_client_config(client);

        let (tx, rx) = mpsc::channel(16);
        let log = Arc::new(HandshakeLog::default());
        log.quiet.store(true, Ordering::Relaxed);
        let acceptor = tokio::spawn(accept_loop(
            endpoint.clone(),
            identity.clone(),
            tx,
            log.clone(),
        ));
        let logger = tokio::spawn(async move {
            let mut tick = tokio::time::interval(HANDSHAKE_LOG_INTERVAL);
            tick.tick().await;
            loop {
                tick.tick().await;
                log.flush();
            }
        });
        Ok(QuicEndpoint {
            endpoint,
            pinned,
            accepted: Mutex::new(rx),
            acceptor,
            logger,
            local_key: identity.public_key(),
            max_frame: DEFAULT_MAX_FRAME,
            keep_alive: config.keep_alive,
        })
    }

    /// Replaces the allowed peer keys (config reload); an empty list opens the
    /// cluster. Links already up are not checked here: see [`PinnedPeers::allows`].
    pub fn set_allowed_peers(&self, allowed_peers: &[String]) -> Result<(), LinkError> {
        self.pinned
            .set_allowed(allowed_peers)
            .map_err(|e| LinkError::Config(e.to_string()))
    }

    /// Whether a node with this key may link (after the latest allow-list change).
    pub fn allows_peer(&self, key: &str) -> bool {
        self.pinned.allows(key)
    }

    /// The bound UDP address, e.g. to learn the port after binding port 0.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.endpoint.local_addr()
    }

    /// This node's public key, so callers can skip links to themselves.
    pub fn local_key(&self) -> &str {
        &self.local_key
    }

    /// Sets the largest frame links made from now on will send or accept.
    /// Both nodes should agree; the receiver's limit is the one enforced.
    pub fn set_max_frame(&mut self, max: usize) {
        self.max_frame = max.min(u32::MAX as usize);
    }

    /// Dials a peer. Returns only once the peer is authenticated and has
    /// confirmed, with a hello signed over this session, that it accepted
    /// this node; refusals by either side come back as
    /// [`LinkError::RefusedPeer`] or [`LinkError::RefusedByPeer`].
    pub async fn connect(&self, addr: SocketAddr) -> Result<QuicLink, LinkError> {
        let connecting = self
            .endpoint
            .connect(addr, tls::TLS_SERVER_NAME)
            .map_err(LinkError::Connect)?;
        let setup = async {
            let conn = connecting.await.map_err(|e| setup_error(addr, e))?;
            let peer_key = verified_peer_key(&conn).ok_or_else(|| LinkError::BadHello {
                addr,
                reason: "no verified peer certificate".into(),
            })?;
            let result = receive_hello(&conn, &peer_key, self.max_frame).await;
            if let Err(e) = result {
                let e = setup_stream_error(addr, e);
                conn.close(VarInt::from_u32(1), b"bad hello");
                return Err(e);
            }
            Ok(QuicLink::new(
                conn,
                peer_key,
                self.max_frame,
                self.keep_alive,
            ))
        };
        tokio::time::timeout(HANDSHAKE_TIMEOUT, setup)
            .await
            .map_err(|_| LinkError::Timeout { addr })?
    }

    /// The next link a peer dialed, already authenticated; `Some(Err(..))`
    /// for a dial that failed (e.g. a refused key), `None` once the endpoint
    /// is closed. Failures are also summarised in the log by the endpoint
    /// (at most one line per interval), and dropped rather than queued when
    /// nobody is taking them, so callers need not log them again.
    pub async fn accept(&self) -> Option<Result<QuicLink, LinkError>> {
        let next = self.accepted.lock().await.recv().await?;
        Some(
            next.map(|(conn, peer_key)| {
                QuicLink::new(conn, peer_key, self.max_frame, self.keep_alive)
            }),
        )
    }

    /// Closes every link with `reason` and stops accepting, for shutdown.
    pub fn close(&self, reason: &str) {
        self.acceptor.abort();
        self.logger.abort();
        self.endpoint.close(VarInt::from_u32(0), reason.as_bytes());
    }

    /// Waits until closed links have told their peers, so a shutdown does
    /// not leave peers waiting for the idle timeout.
    pub async fn wait_idle(&self) {
        self.endpoint.wait_idle().await;
    }
}

impl Drop for QuicEndpoint {
    fn drop(&mut self) {
        self.acceptor.abort();
        self.logger.abort();
    }
}

fn transport_config(config: &LinkConfig) -> TransportConfig {
    let mut t = TransportConfig::default();
    t.max_idle_timeout(Some(
        IdleTimeout::try_from(config.idle_timeout).expect("validated idle timeout"),
    ))
    .keep_alive_interval(Some(config.keep_alive))
    // The connection windows are large (64 MiB in flight per link is
    // affordable for a handful of peers; a connection window as small as one
    // big message starves the other streams). Each stream's window is small,
    // so one stream of large messages cannot fill the connection with bytes
    // that every other stream's frames then queue behind: the backlog stays
    // with the sender, which takes the streams in turn (measured with
    // `tern bench hol`: small-message p50 under 1 MiB traffic fell from
    // 5 ms to 2 ms, throughput unchanged on loopback).
    .stream_receive_window(VarInt::from_u32(STREAM_WINDOW))
    .receive_window(VarInt::from_u32(64 * 1024 * 1024))
    .send_window(64 * 1024 * 1024)
    .max_concurrent_bidi_streams(VarInt::from_u32(MAX_BIDI_STREAMS))
    .max_concurrent_uni_streams(VarInt::from_u32(MAX_UNI_STREAMS));
    let mut ack = AckFrequencyConfig::default();
    ack.ack_eliciting_threshold(VarInt::from_u32(32));
    t.ack_frequency_config(Some(ack));
    t
}

fn udp_socket(addr: SocketAddr) -> io::Result<std::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    // Best effort: the kernel caps these at its maxima, which is still fine.
    if let Err(e) = socket.set_recv_buffer_size(SOCKET_BUFFER) {
        tracing::debug!("cluster socket receive buffer: {e}");
    }
    if let Err(e) = socket.set_send_buffer_size(SOCKET_BUFFER) {
        tracing::debug!("cluster socket send buffer: {e}");
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    tracing::debug!(
        recv = socket.recv_buffer_size().ok(),
        send = socket.send_buffer_size().ok(),
        "cluster socket buffers"
    );
    Ok(socket.into())
}

/// Takes connection attempts off the endpoint and decides each at once:
/// handshake (below [`RETRY_ABOVE_HANDSHAKES`] in progress, or from a dialer
/// that proved its address), Retry (stateless: costs one packet), or drop
/// (at [`MAX_HANDSHAKES`]). Every handshake runs in its own task.
async fn accept_loop(
    endpoint: quinn::Endpoint,
    identity: ServerIdentity,
    tx: mpsc::Sender<Accepted>,
    log: Arc<HandshakeLog>,
) {
    let identity = Arc::new(identity);
    let in_progress = Arc::new(AtomicUsize::new(0));
    while let Some(incoming) = endpoint.accept().await {
        let busy = in_progress.load(Ordering::Relaxed);
        if busy >= MAX_HANDSHAKES {
            log.dropped.fetch_add(1, Ordering::Relaxed);
            incoming.ignore();
            continue;
        }
        if busy >= RETRY_ABOVE_HANDSHAKES
            && !incoming.remote_address_validated()
            && incoming.may_retry()
        {
            log.retried.fetch_add(1, Ordering::Relaxed);
            if let Err(e) = incoming.retry() {
                e.into_incoming().ignore();
            }
            continue;
        }
        in_progress.fetch_add(1, Ordering::Relaxed);
        let slot = HandshakeSlot(in_progress.clone());
        let tx = tx.clone();
        let identity = identity.clone();
        let log = log.clone();
        tokio::spawn(async move {
            let addr = incoming.remote_address();
            let result = tokio::time::timeout(HANDSHAKE_TIMEOUT, async {
                let conn = incoming.await.map_err(|e| setup_error(addr, e))?;
                let peer_key = verified_peer_key(&conn).ok_or_else(|| LinkError::BadHello {
                    addr,
                    reason: "no verified peer certificate".into(),
                })?;
                send_hello(&conn, &identity)
                    .await
                    .map_err(|e| setup_stream_error(addr, e))?;
                Ok((conn, peer_key))
            })
            .await
            .unwrap_or(Err(LinkError::Timeout { addr }));
            drop(slot);
            match &result {
                Ok(_) => {
                    // A link is rare and precious: wait for room to hand it over.
                    let _ = tx.send(result).await;
                }
                Err(e) => {
                    tracing::debug!("cluster link from {addr} failed: {e}");
                    log.failed(e);
                    // Failures are dropped when nobody takes them in time.
                    let _ = tx.try_send(result);
                }
            }
        });
    }
}

/// One handshake in progress, counted until dropped.
struct HandshakeSlot(Arc<AtomicUsize>);

impl Drop for HandshakeSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Accepting side: prove, on this session, that this node accepted the
/// dialer. Sent on the first unidirectional stream, which the dialer reads
/// before handing out the link, so it never reaches the router.
async fn send_hello(conn: &quinn::Connection, identity: &ServerIdentity) -> Result<(), LinkError> {
    let secret = hello_secret(conn).map_err(LinkError::Stream)?;
    let mut hello = HELLO_MAGIC.to_vec();
    hello.extend_from_slice(&identity.sign(&secret));
    let mut stream = FrameSender::new(
        conn.open_uni().await.map_err(LinkError::Lost)?,
        DEFAULT_MAX_FRAME,
    );
    stream.send_frame(&hello).await?;
    stream.finish()
}

/// Dialing side: wait for the accepting node's hello and check its signature
/// with the key TLS verified. A refusal of this node shows up here.
async fn receive_hello(
    conn: &quinn::Connection,
    peer_key: &str,
    max_frame: usize,
) -> Result<(), LinkError> {
    let addr = conn.remote_address();
    let bad = |reason: &str| LinkError::BadHello {
        addr,
        reason: reason.to_string(),
    };
    let mut stream =
        FrameReceiver::new(conn.accept_uni().await.map_err(LinkError::Lost)?, max_frame);
    let hello = stream
        .recv_frame()
        .await?
        .ok_or_else(|| bad("empty hello stream"))?;
    let signature = hello
        .strip_prefix(HELLO_MAGIC)
        .filter(|s| s.len() == ED25519_SIGNATURE_LEN)
        .ok_or_else(|| bad("not a Tern hello"))?;
    let secret = hello_secret(conn).map_err(|e| bad(&e))?;
    let key = nkeys_verify(peer_key, &secret, signature);
    key.map_err(|e| bad(&e))
}

fn nkeys_verify(peer_key: &str, data: &[u8], signature: &[u8]) -> Result<(), String> {
    peer::KeyPair::from_public_key(peer_key)
        .and_then(|k| k.verify(data, signature))
        .map_err(|e| format!("hello signature does not verify: {e}"))
}

/// An authenticated link to one peer node. Cheap to clone (all clones share
/// the connection), so reader and writer tasks can each hold one. Dropping
/// the last clone closes the connection.
#[derive(Clone)]
pub struct QuicLink {
    shared: Arc<LinkShared>,
    peer_key: String,
    max_frame: usize,
}

/// What all clones of a link share; a watcher task holds it only weakly, so
/// it never keeps a dropped link open.
struct LinkShared {
    conn: quinn::Connection,
    suspect: AtomicBool,
    /// The first half of the suspicion rule alone (see [`QuicLink::is_unanswered`]).
    unanswered: AtomicBool,
}

/// Watches one link's packet counters: the peer is suspect while something
/// this node sent (a packet that asks for an acknowledgement: data, a ping,
/// a retransmission) has gone unanswered for longer than an answer can take
/// (`patience`), and nothing at all has arrived from the peer for longer
/// than one keep-alive interval plus that. The second condition is needed
/// because quinn's peers, asked to acknowledge only every 32 packets, were
/// measured answering a lone packet or keep-alive ping after 60 ms to 250 ms
/// (often only with their own next ping): the first rule alone made healthy
/// idle links suspect about 3 % of the time. A live peer sends something at
/// least once per keep-alive interval, so silence beyond it means trouble.
/// Ends when the link is closed or dropped.
async fn watch_link(shared: Weak<LinkShared>, keep_alive: Duration) {
    let mut tick = tokio::time::interval(WATCH_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_rx = 0;
    let mut last_sent = 0;
    let mut waiting_since: Option<Instant> = None;
    let mut last_rx_at = Instant::now();
    loop {
        tick.tick().await;
        let Some(link) = shared.upgrade() else { return };
        if link.conn.close_reason().is_some() {
            link.suspect.store(true, Ordering::Relaxed);
            link.unanswered.store(true, Ordering::Relaxed);
            return;
        }
        let stats = link.conn.stats();
        let now = Instant::now();
        let rx = stats.udp_rx.datagrams;
        let sent = ack_eliciting_frames(&stats.frame_tx);
        if rx != last_rx {
            last_rx = rx;
            last_rx_at = now;
            waiting_since = None;
        }
        if sent != last_sent {
            last_sent = sent;
            waiting_since.get_or_insert(now);
        }
        let patience =
            (stats.path.rtt * 3 + PEER_ACK_DELAY + WATCH_INTERVAL * 2).max(MIN_SUSPECT_AFTER);
        let unanswered = waiting_since.is_some_and(|t| now.duration_since(t) > patience);
        link.unanswered.store(unanswered, Ordering::Relaxed);
        let suspect = unanswered && now.duration_since(last_rx_at) > keep_alive + patience;
        if link.suspect.swap(suspect, Ordering::Relaxed) != suspect {
            tracing::debug!(
                peer = %link.conn.remote_address(),
                "cluster peer {}",
                if suspect { "silent: suspect" } else { "answering again" }
            );
        }
    }
}

/// Frames sent that the peer must acknowledge (all but ACK, PADDING and
/// CONNECTION_CLOSE), so their count moving means an answer is due.
fn ack_eliciting_frames(f: &quinn::FrameStats) -> u64 {
    f.ack_frequency
        + f.crypto
        + f.data_blocked
        + f.datagram
        + u64::from(f.handshake_done)
        + f.immediate_ack
        + f.max_data
        + f.max_stream_data
        + f.max_streams_bidi
        + f.max_streams_uni
        + f.new_connection_id
        + f.new_token
        + f.path_challenge
        + f.path_response
        + f.ping
        + f.reset_stream
        + f.retire_connection_id
        + f.stream_data_blocked
        + f.streams_blocked_bidi
        + f.streams_blocked_uni
        + f.stop_sending
        + f.stream
}

impl fmt::Debug for QuicLink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QuicLink")
            .field("peer_key", &self.peer_key)
            .field("remote_addr", &self.remote_addr())
            .finish()
    }
}

impl QuicLink {
    /// Wraps an authenticated connection and starts its watcher (inside a
    /// Tokio runtime).
    fn new(
        conn: quinn::Connection,
        peer_key: String,
        max_frame: usize,
        keep_alive: Duration,
    ) -> QuicLink {
        let shared = Arc::new(LinkShared {
            conn,
            suspect: AtomicBool::new(false),
            unanswered: AtomicBool::new(false),
        });
        tokio::spawn(watch_link(Arc::downgrade(&shared), keep_alive));
        QuicLink {
            shared,
            peer_key,
            max_frame,
        }
    }

    /// Whether the peer looks dead: something sent to it has gone unanswered
    /// for longer than max(3 × RTT + 45 ms, 50 ms) and nothing has arrived
    /// from it for a keep-alive interval plus that (about 300 ms with the
    /// defaults), or the link is closed. Clears as soon as anything arrives
    /// from the peer. Long before
    /// the idle timeout declares the link lost, a router can stop choosing
    /// this peer (e.g. for queue delivery). Cheap: one atomic load, fine on
    /// the publish path. Sampled every 10 ms; a node starved of CPU may see
    /// its peers briefly suspect.
    pub fn is_suspect(&self) -> bool {
        self.shared.suspect.load(Ordering::Relaxed)
    }

    /// The quick, noisy half of [`QuicLink::is_suspect`]: something sent has
    /// gone unanswered for longer than an answer takes (max(3 × RTT + the
    /// peer's ACK delay, 50 ms)). A dead peer shows this within about 50 ms
    /// of the next packet sent to it; a healthy idle one also now and then
    /// (its acknowledgements can lag by up to a keep-alive interval). Good for
    /// preferring another peer when any will do (a queue group member
    /// elsewhere), never for acting against this one. One atomic load.
    pub fn is_unanswered(&self) -> bool {
        self.shared.unanswered.load(Ordering::Relaxed)
    }

    /// The remote node's public key (`N...`), verified by TLS and the hello:
    /// the identity routing should use, never the address.
    pub fn peer_key(&self) -> &str {
        &self.peer_key
    }

    /// The remote UDP address (may change if the peer migrates).
    pub fn remote_addr(&self) -> SocketAddr {
        self.shared.conn.remote_address()
    }

    /// Current smoothed round-trip time, for monitoring and route choice.
    pub fn rtt(&self) -> Duration {
        self.shared.conn.rtt()
    }

    /// Opens a bidirectional control stream. The peer's
    /// [`accept_control`](Self::accept_control) sees it only once the first
    /// frame is sent. Its sends take priority over message streams.
    pub async fn open_control(&self) -> Result<ControlStream, LinkError> {
        let (send, recv) = self.shared.conn.open_bi().await.map_err(LinkError::Lost)?;
        Ok(self.control(send, recv))
    }

    /// Waits for the peer to open a control stream.
    pub async fn accept_control(&self) -> Result<ControlStream, LinkError> {
        let (send, recv) = self
            .shared
            .conn
            .accept_bi()
            .await
            .map_err(LinkError::Lost)?;
        Ok(self.control(send, recv))
    }

    fn control(&self, send: quinn::SendStream, recv: quinn::RecvStream) -> ControlStream {
        let _ = send.set_priority(CONTROL_PRIORITY);
        ControlStream {
            send: FrameSender::new(send, self.max_frame),
            recv: FrameReceiver::new(recv, self.max_frame),
        }
    }

    /// Opens a one-way message stream. Frames on different streams do not
    /// wait for each other, so a large message on one stream does not delay
    /// small ones on another. The peer sees it once the first frame is sent.
    pub async fn open_uni(&self) -> Result<FrameSender, LinkError> {
        let send = self.shared.conn.open_uni().await.map_err(LinkError::Lost)?;
        Ok(FrameSender::new(send, self.max_frame))
    }

    /// Waits for the peer to open a message stream (in the order opened).
    pub async fn accept_uni(&self) -> Result<FrameReceiver, LinkError> {
        let recv = self
            .shared
            .conn
            .accept_uni()
            .await
            .map_err(LinkError::Lost)?;
        Ok(FrameReceiver::new(recv, self.max_frame))
    }

    /// Closes the link at once; the peer sees [`LinkError::Lost`] with
    /// `reason`. Unacknowledged data in flight is dropped.
    pub fn close(&self, reason: &str) {
        self.shared
            .conn
            .close(VarInt::from_u32(0), reason.as_bytes());
    }

    /// Resolves when the link is gone, with why, so a supervisor can redial.
    pub async fn closed(&self) -> LinkError {
        LinkError::Lost(self.shared.conn.closed().await)
    }

    /// Why the link is gone, or `None` while it is up.
    pub fn close_reason(&self) -> Option<LinkError> {
        self.shared.conn.close_reason().map(LinkError::Lost)
    }
}

/// A bidirectional control stream: frames both ways, in order.
#[derive(Debug)]
pub struct ControlStream {
    send: FrameSender,
    recv: FrameReceiver,
}

impl ControlStream {
    /// Sends one frame.
    pub async fn send_frame(&mut self, frame: &[u8]) -> Result<(), LinkError> {
        self.send.send_frame(frame).await
    }

    /// Receives the next frame; `None` when the peer finished its side.
    pub async fn recv_frame(&mut self) -> Result<Option<Bytes>, LinkError> {
        self.recv.recv_frame().await
    }

    /// Splits into halves so one task can read while another writes.
    pub fn split(self) -> (FrameSender, FrameReceiver) {
        (self.send, self.recv)
    }
}

/// The sending half of a framed stream.
#[derive(Debug)]
pub struct FrameSender {
    send: quinn::SendStream,
    max_frame: usize,
}

impl FrameSender {
    fn new(send: quinn::SendStream, max_frame: usize) -> Self {
        FrameSender { send, max_frame }
    }

    fn check_len(&self, len: usize) -> Result<(), LinkError> {
        if len > self.max_frame {
            return Err(LinkError::FrameTooLarge {
                len,
                max: self.max_frame,
            });
        }
        Ok(())
    }

    /// Sends one frame (copied once, with its length prefix, into a single
    /// buffer handed to QUIC). Batch small messages into one frame for speed.
    pub async fn send_frame(&mut self, frame: &[u8]) -> Result<(), LinkError> {
        self.check_len(frame.len())?;
        let mut buf = BytesMut::with_capacity(4 + frame.len());
        buf.put_u32(frame.len() as u32);
        buf.extend_from_slice(frame);
        self.send.write_chunk(buf.freeze()).await?;
        Ok(())
    }

    /// Sends one frame already held in `Bytes` without copying it.
    pub async fn send_frame_bytes(&mut self, frame: Bytes) -> Result<(), LinkError> {
        self.check_len(frame.len())?;
        let header = Bytes::copy_from_slice(&(frame.len() as u32).to_be_bytes());
        self.send.write_all_chunks(&mut [header, frame]).await?;
        Ok(())
    }

    /// Sets this stream's send priority (higher goes first; default 0,
    /// control streams 1).
    pub fn set_priority(&self, priority: i32) -> Result<(), LinkError> {
        Ok(self.send.set_priority(priority)?)
    }

    /// Ends the stream cleanly; the reader gets `None` after the last frame.
    pub fn finish(&mut self) -> Result<(), LinkError> {
        Ok(self.send.finish()?)
    }
}

/// The receiving half of a framed stream.
#[derive(Debug)]
pub struct FrameReceiver {
    recv: quinn::RecvStream,
    buf: BytesMut,
    max_frame: usize,
}

impl FrameReceiver {
    fn new(recv: quinn::RecvStream, max_frame: usize) -> Self {
        FrameReceiver {
            recv,
            buf: BytesMut::new(),
            max_frame,
        }
    }

    /// Receives the next frame; `None` when the peer finished the stream at
    /// a frame boundary. Reads whole chunks, so many small frames cost one
    /// read.
    pub async fn recv_frame(&mut self) -> Result<Option<Bytes>, LinkError> {
        loop {
            if self.buf.len() >= 4 {
                let len = u32::from_be_bytes(self.buf[..4].try_into().expect("4 bytes")) as usize;
                if len > self.max_frame {
                    return Err(LinkError::FrameTooLarge {
                        len,
                        max: self.max_frame,
                    });
                }
                if self.buf.len() >= 4 + len {
                    self.buf.advance(4);
                    return Ok(Some(self.buf.split_to(len).freeze()));
                }
                self.buf.reserve(4 + len - self.buf.len());
            }
            match self.recv.read_chunk(usize::MAX, true).await? {
                Some(chunk) => self.buf.extend_from_slice(&chunk.bytes),
                None if self.buf.is_empty() => return Ok(None),
                None => return Err(LinkError::Truncated),
            }
        }
    }
}
