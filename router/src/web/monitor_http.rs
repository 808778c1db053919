//! HTTP plumbing for the monitoring port: a listener that bounds how many
//! monitoring connections exist and how long each may sit idle, and query
//! parameter decoding that accepts and refuses what nats-server does.
//!
//! The monitoring port faces the same network as clients; without limits, a
//! few hundred connections that never finish a request hold file descriptors
//! forever and, once the process runs out, nothing can be accepted anywhere.

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};
use transport::tcp::AcceptBackoff;

/// Time a connection has to send a complete request, counted from accept or
/// from the first byte of a later request on a kept-alive connection (as
/// nats-server's 5 s header read timeout).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Time a kept-alive connection may wait for its next request.
pub const KEEP_ALIVE_IDLE: Duration = Duration::from_secs(30);
/// Time a response write may make no progress (a client that does not read).
pub const WRITE_STALL: Duration = Duration::from_secs(10);

/// How many monitoring connections may be open at once: a quarter of the
/// process's file descriptor limit, between 16 and 1024. Connections beyond
/// it wait in the kernel's listen backlog (no descriptor) until one closes.
pub fn connection_cap() -> usize {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes into the struct we pass.
    let soft = if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0 {
        lim.rlim_cur
    } else {
        1024
    };
    (soft / 4).clamp(16, 1024) as usize
}

/// The monitoring listener: accepts only while under the connection cap,
/// backs off (with rate-limited logging) when accept fails, and hands out
/// connections that close themselves when idle or too slow.
pub struct MonitorListener {
    inner: TcpListener,
    permits: Arc<Semaphore>,
    backoff: AcceptBackoff,
    /// Set for `https_port`: each connection starts with a TLS handshake.
    tls: Option<transport::tls::TlsAcceptor>,
}

impl MonitorListener {
    /// Wraps `inner`, allowing `cap` open connections.
    pub fn new(inner: TcpListener, cap: usize, tls: Option<transport::tls::TlsAcceptor>) -> Self {
        MonitorListener {
            inner,
            permits: Arc::new(Semaphore::new(cap)),
            backoff: AcceptBackoff::new("monitoring"),
            tls,
        }
    }
}

impl axum::serve::Listener for MonitorListener {
    type Io = GuardedIo;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (GuardedIo, SocketAddr) {
        loop {
            let permit = self
                .permits
                .clone()
                .acquire_owned()
                .await
                .expect("the semaphore is never closed");
            match self.inner.accept().await {
                Ok((stream, addr)) => {
                    self.backoff.succeeded();
                    let _ = stream.set_nodelay(true);
                    let stream = match &self.tls {
                        // The handshake runs on the connection's own task
                        // (on first use), never in this accept loop.
                        Some(acceptor) => Stream::Accepting(Box::new(acceptor.accept(stream))),
                        None => Stream::Plain(stream),
                    };
                    return (GuardedIo::new(stream, permit), addr);
                }
                Err(e) => {
                    drop(permit);
                    self.backoff.failed(&e).await;
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }
}

/// Where a monitoring connection is in its request cycle, for its deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Reading a request: it must be complete before the header deadline.
    Request,
    /// A response has been written; waiting for the next request.
    KeptAlive,
}

/// A monitoring connection with a deadline: reads and writes fail with
/// `TimedOut` once it passes, and the HTTP server then drops the connection.
/// Holds its slot under the connection cap until dropped.
pub struct GuardedIo {
    stream: Stream,
    deadline: Pin<Box<Sleep>>,
    phase: Phase,
    _permit: OwnedSemaphorePermit,
}

/// A monitoring connection's byte stream: plain HTTP, or HTTPS before and
/// after its handshake.
enum Stream {
    Plain(TcpStream),
    Accepting(Box<transport::tls::Accept<TcpStream>>),
    Tls(Box<transport::tls::TlsStream<TcpStream>>),
    Failed,
}

impl Stream {
    /// Drives a pending TLS handshake; ready once bytes can flow.
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if let Stream::Accepting(accept) = self {
            match Pin::new(accept.as_mut()).poll(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(tls)) => *self = Stream::Tls(Box::new(tls)),
                Poll::Ready(Err(e)) => {
                    tracing::debug!("monitoring TLS handshake error: {e}");
                    *self = Stream::Failed;
                    return Poll::Ready(Err(e));
                }
            }
        }
        match self {
            Stream::Failed => Poll::Ready(Err(io::ErrorKind::NotConnected.into())),
            _ => Poll::Ready(Ok(())),
        }
    }
}

macro_rules! io_call {
    ($self:expr, $cx:expr, $s:ident => $call:expr) => {
        match $self.poll_ready($cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Ready(Ok(())) => match $self {
                Stream::Plain($s) => $call,
                Stream::Tls(t) => {
                    let $s = t.as_mut();
                    $call
                }
                _ => unreachable!("poll_ready leaves a usable stream"),
            },
        }
    };
}

impl AsyncRead for Stream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        io_call!(this, cx, s => Pin::new(s).poll_read(cx, buf))
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        io_call!(this, cx, s => Pin::new(s).poll_write(cx, data))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        io_call!(this, cx, s => Pin::new(s).poll_flush(cx))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        io_call!(this, cx, s => Pin::new(s).poll_shutdown(cx))
    }
}

impl GuardedIo {
    fn new(stream: Stream, permit: OwnedSemaphorePermit) -> Self {
        GuardedIo {
            stream,
            deadline: Box::pin(tokio::time::sleep(HEADER_READ_TIMEOUT)),
            phase: Phase::Request,
            _permit: permit,
        }
    }

    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        self.deadline.as_mut().poll(cx).is_ready()
    }

    fn timed_out() -> io::Error {
        io::Error::new(io::ErrorKind::TimedOut, "monitoring connection timed out")
    }
}

impl AsyncRead for GuardedIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.stream).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before && self.phase == Phase::KeptAlive {
                    // A new request starts: it gets the header deadline.
                    self.phase = Phase::Request;
                    self.deadline
                        .as_mut()
                        .reset(Instant::now() + HEADER_READ_TIMEOUT);
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending if self.expired(cx) => Poll::Ready(Err(Self::timed_out())),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl AsyncWrite for GuardedIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        match Pin::new(&mut self.stream).poll_write(cx, data) {
            Poll::Ready(Ok(n)) => {
                // Progress: the request was answered; from now on the
                // connection is idle until the next one, or the rest of the
                // response has the stall allowance.
                self.phase = Phase::KeptAlive;
                let allow = KEEP_ALIVE_IDLE.max(WRITE_STALL);
                self.deadline.as_mut().reset(Instant::now() + allow);
                Poll::Ready(Ok(n))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending if self.expired(cx) => Poll::Ready(Err(Self::timed_out())),
            Poll::Pending => Poll::Pending,
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match Pin::new(&mut self.stream).poll_flush(cx) {
            Poll::Pending if self.expired(cx) => Poll::Ready(Err(Self::timed_out())),
            other => other,
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// Query parameters as nats-server reads them: the first value of each key
/// counts, an empty value is the same as an absent one.
#[derive(Debug, Default)]
pub struct Params(Vec<(String, String)>);

impl Params {
    /// Decodes a raw query string (`a=1&b=2`, `+` as space, %-escapes).
    pub fn parse(raw: Option<&str>) -> Self {
        let pairs = raw
            .map(|q| serde_urlencoded::from_str::<Vec<(String, String)>>(q).unwrap_or_default())
            .unwrap_or_default();
        Params(pairs)
    }

    /// The first value given for `key`, if not empty.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .filter(|v| !v.is_empty())
    }

    /// A boolean in the spellings nats-server accepts (1/t/true/0/f/false in
    /// a few cases); absent is false.
    pub fn bool(&self, key: &str) -> Result<bool, String> {
        match self.get(key) {
            None => Ok(false),
            Some(v) => parse_bool(v).ok_or_else(|| bad(key, "boolean", v)),
        }
    }

    /// A signed decimal integer (optional sign, no spaces); absent is 0.
    pub fn int(&self, key: &str) -> Result<i64, String> {
        match self.get(key) {
            None => Ok(0),
            Some(v) => v.parse::<i64>().map_err(|_| bad(key, "integer", v)),
        }
    }

    /// An unsigned decimal integer (no sign at all); absent is 0.
    pub fn uint(&self, key: &str) -> Result<u64, String> {
        match self.get(key) {
            None => Ok(0),
            Some(v) if v.starts_with('+') => Err(bad(key, "unsigned integer", v)),
            Some(v) => v
                .parse::<u64>()
                .map_err(|_| bad(key, "unsigned integer", v)),
        }
    }
}

fn parse_bool(v: &str) -> Option<bool> {
    match v {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Some(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Some(false),
        _ => None,
    }
}

fn bad(key: &str, what: &str, value: &str) -> String {
    format!("invalid {what} for '{key}': {value:?}")
}

/// A 400 answer with a plain-text reason, as nats-server gives for a bad parameter.
pub fn bad_request(reason: String) -> Response {
    (
        StatusCode::BAD_REQUEST,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        reason,
    )
        .into_response()
}

/// Requests no route matched: a path that is not in canonical form (`//varz`,
/// `/./connz`) is redirected to its canonical form with 307, as Go's HTTP
/// server (and so nats-server) does; anything else is 404.
pub async fn fallback(method: axum::http::Method, uri: axum::http::Uri) -> Response {
    let path = uri.path();
    let clean = clean_path(path);
    if clean != path {
        let mut location = clean;
        if let Some(q) = uri.query() {
            location.push('?');
            location.push_str(q);
        }
        // Only GET and HEAD get a (HTML) body, as from Go's redirect helper.
        if method != axum::http::Method::GET && method != axum::http::Method::HEAD {
            return (
                StatusCode::TEMPORARY_REDIRECT,
                [(header::LOCATION, location)],
            )
                .into_response();
        }
        let body = format!("<a href=\"{location}\">Temporary Redirect</a>.\n\n");
        return (
            StatusCode::TEMPORARY_REDIRECT,
            [
                (header::LOCATION, location),
                (header::CONTENT_TYPE, "text/html; charset=utf-8".to_owned()),
            ],
            body,
        )
            .into_response();
    }
    (
        StatusCode::NOT_FOUND,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        "404 page not found\n",
    )
        .into_response()
}

/// The canonical form of a URL path: no empty, `.` or `..` segments; a
/// trailing slash is kept.
fn clean_path(path: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    for seg in path.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            s => out.push(s),
        }
    }
    let mut clean = format!("/{}", out.join("/"));
    let trailing = path.ends_with('/') || path.ends_with("/.") || path.ends_with("/..");
    if trailing && clean != "/" {
        clean.push('/');
    }
    clean
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean_paths() {
        assert_eq!(clean_path("/varz"), "/varz");
        assert_eq!(clean_path("//varz"), "/varz");
        assert_eq!(clean_path("/./connz"), "/connz");
        assert_eq!(clean_path("/a/../varz"), "/varz");
        assert_eq!(clean_path("/varz/"), "/varz/");
        assert_eq!(clean_path("/"), "/");
        assert_eq!(clean_path("/.."), "/");
    }

    #[test]
    fn params_decode_like_nats_server() {
        let p = Params::parse(Some(
            "limit=-1&offset=%2B5&cid=%2B3&subs=T&x=&limit=9&n=1_0",
        ));
        assert_eq!(p.int("limit"), Ok(-1));
        assert_eq!(p.int("offset"), Ok(5));
        assert!(p.uint("cid").is_err());
        assert_eq!(p.bool("subs"), Ok(true));
        assert_eq!(p.get("x"), None);
        assert!(p.int("n").is_err());
        assert!(Params::parse(Some("limit=+5")).int("limit").is_err());
        assert!(Params::parse(Some("limit=%2B-5")).int("limit").is_err());
        assert!(Params::parse(Some("subs=yes")).bool("subs").is_err());
        assert!(Params::parse(Some("limit=99999999999999999999"))
            .int("limit")
            .is_err());
    }
}
