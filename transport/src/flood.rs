//! A handshake-flood generator for the cluster port, used by tests and by
//! `scripts/flood-quic` to check that a node stays bounded under it.
//!
//! Each attempt is a real QUIC Initial packet (a fresh connection id and a
//! TLS ClientHello from a Tern-like node identity, padded to 1200 bytes), sent
//! once from one UDP socket and never followed up: whatever the node answers
//! (its handshake, a Retry) is read and counted but not acted on. That is
//! what an attacker who cannot or will not finish handshakes sends, and it
//! costs the sender far less than the receiver unless the receiver defends
//! itself.

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use peer::tls::{self, PinnedPeers};
use peer::ServerIdentity;
use quinn_proto::crypto::rustls::QuicClientConfig;

/// What a flood sent and got back.
#[derive(Debug, Clone, Copy, Default)]
pub struct FloodReport {
    /// Initial packets sent.
    pub sent: u64,
    /// Datagrams received from the target (handshake packets, Retries,
    /// refusals), read so they do not pile up in this socket.
    pub answers: u64,
    /// How long sending took.
    pub elapsed: Duration,
}

/// Sends `count` QUIC Initial packets to `target` at about `rate` per
/// second (0: as fast as possible), each the start of a new connection that
/// is never continued. Blocks the calling thread; `stop` ends it early and
/// `progress` counts packets sent so far, for callers watching from another
/// thread.
pub fn flood(
    target: SocketAddr,
    count: u64,
    rate: u64,
    stop: &AtomicBool,
    progress: &AtomicU64,
) -> io::Result<FloodReport> {
    let bind: SocketAddr = if target.is_ipv4() {
        "0.0.0.0:0".parse().expect("address")
    } else {
        "[::]:0".parse().expect("address")
    };
    let socket = UdpSocket::bind(bind)?;
    socket.set_nonblocking(true)?;
    let client = client_config().map_err(io::Error::other)?;
    let mut endpoint = quinn_proto::Endpoint::new(
        Arc::new(quinn_proto::EndpointConfig::default()),
        None,
        false,
        None,
    );
    let mut report = FloodReport::default();
    let mut buf = Vec::with_capacity(1500);
    let mut inbox = [0u8; 2048];
    let started = Instant::now();
    while report.sent < count && !stop.load(Ordering::Relaxed) {
        if rate > 0 {
            // Pace to the rate; sleep only when ahead of schedule.
            let due = started + Duration::from_secs_f64(report.sent as f64 / rate as f64);
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
        }
        let now = Instant::now();
        let (_, mut conn) = endpoint
            .connect(now, client.clone(), target, tls::TLS_SERVER_NAME)
            .map_err(io::Error::other)?;
        buf.clear();
        if let Some(t) = conn.poll_transmit(now, 1, &mut buf) {
            match socket.send_to(&buf[..t.size], target) {
                Ok(_) => {
                    report.sent += 1;
                    progress.store(report.sent, Ordering::Relaxed);
                }
                // A full socket buffer: the packet is lost, like on a wire.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
        // The connection is abandoned: no retransmission, no reply.
        drop(conn);
        while socket.recv_from(&mut inbox).is_ok() {
            report.answers += 1;
        }
        if endpoint.open_connections() > 10_000 {
            // Forget abandoned connections so the generator stays small.
            endpoint = quinn_proto::Endpoint::new(
                Arc::new(quinn_proto::EndpointConfig::default()),
                None,
                false,
                None,
            );
        }
    }
    report.elapsed = started.elapsed();
    Ok(report)
}

fn client_config() -> Result<quinn_proto::ClientConfig, String> {
    let identity = ServerIdentity::generate();
    let open = Arc::new(PinnedPeers::new(Vec::<String>::new()).map_err(|e| e.to_string())?);
    let mut tls = tls::client_config(&identity, open).map_err(|e| e.0)?;
    tls.alpn_protocols = vec![crate::quic::ALPN.to_vec()];
    let crypto = QuicClientConfig::try_from(tls).map_err(|e| e.to_string())?;
    Ok(quinn_proto::ClientConfig::new(Arc::new(crypto)))
}
