//! TCP listeners for client connections.

use std::io;
use std::net::SocketAddr;
use tokio::net::{TcpListener, TcpSocket, TcpStream};

/// Binds a listener with address reuse, so a restarted server can take its
/// port back at once (clients reconnect to the same port after a restart).
pub async fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

/// Accepts one connection and applies the options every NATS connection
/// wants: no Nagle delay, since the router batches writes itself.
pub async fn accept(listener: &TcpListener) -> io::Result<(TcpStream, SocketAddr)> {
    let (stream, peer) = listener.accept().await?;
    // A peer that already reset makes this fail; that is the connection's
    // problem, not the listener's, and its first read will say so.
    let _ = stream.set_nodelay(true);
    Ok((stream, peer))
}

/// What an accept loop does after a failed accept, so that running out of
/// file descriptors (EMFILE/ENFILE) neither spins the loop nor floods the
/// log: it sleeps with a back-off doubling from 5 ms to 1 s (reset by the
/// next successful accept) and logs the first error, then at most one
/// summary line per [`AcceptBackoff::LOG_INTERVAL`]. Existing connections
/// live on other tasks and keep being served meanwhile.
#[derive(Debug)]
pub struct AcceptBackoff {
    /// Which listener, for the log ("client", "monitoring", ...).
    what: &'static str,
    delay: std::time::Duration,
    last_log: Option<std::time::Instant>,
    suppressed: u64,
}

impl AcceptBackoff {
    const MIN: std::time::Duration = std::time::Duration::from_millis(5);
    const MAX: std::time::Duration = std::time::Duration::from_secs(1);
    /// At most one accept-error log line per listener per this interval.
    pub const LOG_INTERVAL: std::time::Duration = std::time::Duration::from_secs(10);

    /// A back-off for the listener named `what`.
    pub fn new(what: &'static str) -> Self {
        AcceptBackoff {
            what,
            delay: Self::MIN,
            last_log: None,
            suppressed: 0,
        }
    }

    /// Call after a successful accept: the next error starts from the shortest delay.
    pub fn succeeded(&mut self) {
        self.delay = Self::MIN;
    }

    /// Logs (rate-limited) and sleeps after a failed accept. Errors that only
    /// concern the one connection being accepted (reset before accept) are
    /// neither logged nor waited on.
    pub async fn failed(&mut self, e: &io::Error) {
        if is_connection_error(e) {
            return;
        }
        let now = std::time::Instant::now();
        match self.last_log {
            Some(t) if now.duration_since(t) < Self::LOG_INTERVAL => self.suppressed += 1,
            _ => {
                if self.suppressed > 0 {
                    tracing::error!(
                        listener = self.what,
                        error = %e,
                        repeated = self.suppressed,
                        "accept failed (repeatedly; backing off up to 1s)"
                    );
                } else {
                    tracing::error!(listener = self.what, error = %e, "accept failed; backing off");
                }
                self.last_log = Some(now);
                self.suppressed = 0;
            }
        }
        tokio::time::sleep(self.delay).await;
        self.delay = (self.delay * 2).min(Self::MAX);
    }
}

/// Errors about the connection being accepted rather than the listener.
fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}
