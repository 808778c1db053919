//! The minimal client connection the benchmark roles share: connect, read
//! `INFO`, send `CONNECT` and prove it with a PING/PONG round trip.

use std::fmt;
use std::time::Duration;

use bytes::BytesMut;
use nats_proto::{Limits, Op, Parser, ProtoError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{timeout_at, Instant};

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

/// A connected, handshaken client socket with a protocol parser for the
/// low-volume traffic (INFO, PONG, replies); hot paths take the socket out.
pub(crate) struct Conn {
    pub stream: TcpStream,
    pub rbuf: BytesMut,
    parser: Parser,
}

impl Conn {
    /// Connects and completes the handshake: INFO, CONNECT, PING, PONG.
    pub async fn connect(addr: &str, name: &str) -> Result<Conn> {
        let deadline = Instant::now() + CONNECT_TIMEOUT;
        let stream = timeout_at(deadline, TcpStream::connect(addr))
            .await?
            .map_err(|e| BenchError(format!("cannot connect to {addr}: {e}")))?;
        stream.set_nodelay(true)?;
        let mut conn = Conn {
            stream,
            rbuf: BytesMut::with_capacity(64 * 1024),
            parser: Parser::new(Limits::default()),
        };
        match conn.next_op(deadline).await? {
            Op::Info(_) => {}
            op => return err(format!("expected INFO from server, got {}", op.verb())),
        }
        let connect = format!(
            "CONNECT {{\"verbose\":false,\"pedantic\":false,\"tls_required\":false,\
             \"name\":\"{name}\",\"lang\":\"rust\",\"version\":\"{}\",\"protocol\":1,\
             \"echo\":true}}\r\nPING\r\n",
            env!("CARGO_PKG_VERSION")
        );
        conn.stream.write_all(connect.as_bytes()).await?;
        conn.wait_pong(deadline).await?;
        Ok(conn)
    }

    /// Sends `cmd` followed by PING and waits for the PONG, which proves the
    /// server has processed `cmd` (e.g. a SUB is in place).
    pub async fn roundtrip(&mut self, cmd: &[u8], deadline: Instant) -> Result<()> {
        let mut out = Vec::with_capacity(cmd.len() + 6);
        out.extend_from_slice(cmd);
        out.extend_from_slice(b"PING\r\n");
        timeout_at(deadline, self.stream.write_all(&out)).await??;
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
                    timeout_at(deadline, self.stream.write_all(b"PONG\r\n")).await??;
                }
                Op::Err(text) => {
                    return err(format!("server error: {}", String::from_utf8_lossy(&text)))
                }
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::server_addr;

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
    }
}
