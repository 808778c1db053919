//! One client connection: its shared state, and the reader task that parses
//! what it sends and routes each message straight into subscribers' buffers.

use bytes::{Bytes, BytesMut};
use nats_proto::encode::{write_err, write_hmsg, write_msg};
use nats_proto::{Limits, Op, Parser, ProtoError};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::sync::Notify;

use crate::auth::{self, Presented};
use crate::outbound::{Outbound, PushError, WriteFailure};
use crate::server::{Server, Space};
use crate::subject::{valid_publish_subject, valid_subscribe_subject};
use crate::sublist::SubItem;
use nats_proto::gojson::{self, Value};

/// Why a connection ended, with nats-server's names (shown in /connz `reason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    ClientClosed,
    ReadError,
    WriteError,
    SlowConsumerPendingBytes,
    SlowConsumerWriteDeadline,
    ProtocolViolation,
    AuthenticationTimeout,
    AuthenticationViolation,
    MaxPayloadExceeded,
    MaxControlLineExceeded,
    MaxConnectionsExceeded,
    StaleConnection,
    ServerShutdown,
    TlsHandshakeError,
    AuthenticationExpired,
    AuthenticationRevoked,
}

impl CloseReason {
    /// The text nats-server reports for this reason.
    pub fn as_str(&self) -> &'static str {
        match self {
            CloseReason::ClientClosed => "Client Closed",
            CloseReason::ReadError => "Read Error",
            CloseReason::WriteError => "Write Error",
            CloseReason::SlowConsumerPendingBytes => "Slow Consumer (Pending Bytes)",
            CloseReason::SlowConsumerWriteDeadline => "Slow Consumer (Write Deadline)",
            CloseReason::ProtocolViolation => "Protocol Violation",
            CloseReason::AuthenticationTimeout => "Authentication Timeout",
            CloseReason::AuthenticationViolation => "Authentication Failure",
            CloseReason::MaxPayloadExceeded => "Maximum Payload Exceeded",
            CloseReason::MaxControlLineExceeded => "Maximum Control Line Exceeded",
            CloseReason::MaxConnectionsExceeded => "Maximum Connections Exceeded",
            CloseReason::StaleConnection => "Stale Connection",
            CloseReason::ServerShutdown => "Server Shutdown",
            CloseReason::TlsHandshakeError => "TLS Handshake Failure",
            CloseReason::AuthenticationExpired => "Authentication Expired",
            CloseReason::AuthenticationRevoked => "Authentication Revoked",
        }
    }
}

/// What a client said about itself in CONNECT, for monitoring.
#[derive(Debug, Clone, Default)]
pub struct ClientMeta {
    pub name: String,
    pub lang: String,
    pub version: String,
    pub user: Option<String>,
}

/// Reply subjects a client may answer (`allow_responses`): each received
/// request allows `max` publishes to its reply subject until `ttl` passes.
#[derive(Debug, Default)]
pub struct ReplyPermits {
    pub perm: Option<auth::ResponsePermission>,
    open: HashMap<Bytes, (u32, Instant)>,
}

impl ReplyPermits {
    /// Most outstanding permits kept per client; the oldest go first.
    const CAP: usize = 64 * 1024;

    /// A request with reply subject `reply` was delivered.
    pub fn grant(&mut self, reply: &[u8]) {
        let Some(perm) = self.perm else { return };
        let now = Instant::now();
        if self.open.len() >= Self::CAP {
            self.open.retain(|_, (_, until)| *until > now);
            if self.open.len() >= Self::CAP {
                // Still full of live permits: forget the one expiring first.
                if let Some(k) = self
                    .open
                    .iter()
                    .min_by_key(|(_, (_, u))| *u)
                    .map(|(k, _)| k.clone())
                {
                    self.open.remove(&k);
                }
            }
        }
        self.open
            .insert(Bytes::copy_from_slice(reply), (perm.max, now + perm.ttl));
    }

    /// Uses one permit to publish to `subject`, if there is a live one.
    pub fn take(&mut self, subject: &[u8]) -> bool {
        let now = Instant::now();
        let Some((left, until)) = self.open.get_mut(subject) else {
            return false;
        };
        if *until <= now || *left == 0 {
            self.open.remove(subject);
            return false;
        }
        *left -= 1;
        if *left == 0 {
            self.open.remove(subject);
        }
        true
    }
}

/// What the TLS handshake established, for /connz and `verify_and_map`.
#[derive(Debug, Clone)]
pub struct TlsInfo {
    /// "1.2" or "1.3".
    pub version: &'static str,
    pub cipher: String,
    /// Names from the client certificate, when one was presented.
    pub names: Option<peer::cert_names::CertNames>,
}

/// A subscription as the trie stores it.
pub struct Subscription {
    /// Unique across the server, the trie's key.
    pub id: u64,
    pub client: Arc<Client>,
    pub subject: Bytes,
    pub queue: Option<Bytes>,
    pub sid: Bytes,
    /// Auto-unsubscribe limit; 0 means none.
    pub max: AtomicU64,
    pub delivered: AtomicU64,
    /// The subject space of a JWT account the subscription lives in; `None`
    /// is the global account (the server's own trie, shared with the cluster).
    pub space: Option<Arc<Space>>,
}

/// Shared handle to a subscription.
pub type SubRef = Arc<Subscription>;

impl SubItem for SubRef {
    fn id(&self) -> u64 {
        self.id
    }
}

/// The part of a connection other tasks touch: its outbound buffer, its
/// subscriptions and its counters.
pub struct Client {
    pub cid: u64,
    pub addr: SocketAddr,
    pub start: SystemTime,
    pub out: Outbound,
    /// CONNECT `echo`: whether this client receives its own messages.
    pub echo: AtomicBool,
    /// CONNECT `headers`: whether HMSG may be sent, or headers must be stripped.
    pub headers: AtomicBool,
    /// CONNECT `protocol` >= 1: the client accepts INFO updates at any time.
    pub async_info: AtomicBool,
    pub subs: Mutex<HashMap<Bytes, SubRef>>,
    pub meta: Mutex<ClientMeta>,
    /// What CONNECT presented (kept so a config reload can check it again).
    pub credentials: Mutex<Option<Presented>>,
    /// The nonce INFO carried, for nkey and JWT signatures.
    pub nonce: Option<String>,
    /// Set once a TLS handshake completes.
    pub tls: OnceLock<TlsInfo>,
    /// The account an authenticated JWT user belongs to (`None`: global).
    pub account: Mutex<Option<String>>,
    /// Reply subjects this client may publish to once (`allow_responses`),
    /// recorded as requests are delivered to it. `tracks_replies` keeps the
    /// delivery path to one atomic load for everyone else.
    pub tracks_replies: AtomicBool,
    pub reply_permits: Mutex<ReplyPermits>,
    /// Subjects this client may not receive (its subscribe deny list), for
    /// wildcard subscriptions that overlap them; `filters_delivery` keeps
    /// the delivery path to one atomic load for everyone else.
    pub filters_delivery: AtomicBool,
    /// A JWT user's own payload limit (0: none), shown in its async INFO.
    pub user_max_payload: std::sync::atomic::AtomicUsize,
    pub delivery_deny: Mutex<Option<Arc<auth::Permissions>>>,
    pub in_msgs: AtomicU64,
    pub in_bytes: AtomicU64,
    /// Unix time in nanoseconds of the last read from this client.
    pub last_activity: AtomicU64,
    reason: OnceLock<CloseReason>,
    closed: Notify,
    is_closed: AtomicBool,
}

impl Client {
    /// A freshly accepted connection.
    pub fn new(cid: u64, addr: SocketAddr, max_pending: usize, nonce: Option<String>) -> Self {
        Client {
            cid,
            addr,
            start: SystemTime::now(),
            out: Outbound::new(max_pending),
            echo: AtomicBool::new(true),
            headers: AtomicBool::new(false),
            async_info: AtomicBool::new(false),
            subs: Mutex::new(HashMap::new()),
            meta: Mutex::new(ClientMeta::default()),
            credentials: Mutex::new(None),
            nonce,
            tls: OnceLock::new(),
            account: Mutex::new(None),
            tracks_replies: AtomicBool::new(false),
            reply_permits: Mutex::new(ReplyPermits::default()),
            filters_delivery: AtomicBool::new(false),
            user_max_payload: std::sync::atomic::AtomicUsize::new(0),
            delivery_deny: Mutex::new(None),
            in_msgs: AtomicU64::new(0),
            in_bytes: AtomicU64::new(0),
            last_activity: AtomicU64::new(unix_nanos(SystemTime::now())),
            reason: OnceLock::new(),
            closed: Notify::new(),
            is_closed: AtomicBool::new(false),
        }
    }

    /// Starts closing the connection: the writer flushes what is queued
    /// (unless `abort`), the reader stops. The first reason given wins.
    pub fn close(&self, reason: CloseReason, abort: bool) {
        let _ = self.reason.set(reason);
        self.is_closed.store(true, Ordering::Release);
        if abort {
            self.out.abort();
        } else {
            self.out.close();
        }
        self.closed.notify_waiters();
        self.closed.notify_one();
    }

    /// When the client last sent anything.
    pub fn last_activity(&self) -> SystemTime {
        std::time::UNIX_EPOCH + Duration::from_nanos(self.last_activity.load(Ordering::Relaxed))
    }

    /// Whether closing has started.
    pub fn is_closed(&self) -> bool {
        self.is_closed.load(Ordering::Acquire)
    }

    /// Why the connection closed, once it has.
    pub fn close_reason(&self) -> Option<CloseReason> {
        self.reason.get().copied()
    }

    /// What the connection itself contributes to authentication.
    pub fn auth_context<'a>(&'a self, opts: &crate::options::Options) -> auth::Context<'a> {
        auth::Context {
            nonce: self.nonce.as_deref(),
            cert: self.tls.get().and_then(|t| t.names.as_ref()),
            tls_map: opts.tls.as_ref().is_some_and(|t| t.verify_and_map)
                && self.tls.get().is_some(),
            ip: Some(self.addr.ip()),
        }
    }

    /// Queues a protocol line (not counted as a message).
    pub fn send_proto(&self, bytes: &[u8]) {
        let _ = self.out.push(None, |b| b.extend_from_slice(bytes));
    }

    /// Queues `-ERR 'text'`.
    pub fn send_err(&self, text: &str) {
        let _ = self.out.push(None, |b| write_err(b, text));
    }
}

/// CONNECT options, with nats-server's defaults for fields no CONNECT set.
/// Each CONNECT is decoded over the options the connection already has, as
/// nats-server does: a field a later CONNECT leaves out keeps its value.
#[derive(Debug, Clone)]
struct ConnectOpts {
    verbose: bool,
    pedantic: bool,
    echo: bool,
    headers: bool,
    no_responders: bool,
    protocol: i64,
    name: String,
    lang: String,
    version: String,
    user: Option<String>,
    pass: Option<String>,
    auth_token: Option<String>,
    nkey: Option<String>,
    sig: Option<String>,
    jwt: Option<String>,
    account: String,
    new_account: bool,
}

impl Default for ConnectOpts {
    fn default() -> Self {
        ConnectOpts {
            verbose: true,
            pedantic: true,
            echo: true,
            headers: false,
            no_responders: false,
            protocol: 0,
            name: String::new(),
            lang: String::new(),
            version: String::new(),
            user: None,
            pass: None,
            auth_token: None,
            nkey: None,
            sig: None,
            jwt: None,
            account: String::new(),
            new_account: false,
        }
    }
}

impl ConnectOpts {
    /// Decodes CONNECT JSON over these options with nats-server's rules (see
    /// [`gojson`]): keys in any case, the last duplicate wins, `null` keeps
    /// the current value, a wrong type for any known field is an error.
    fn update(&mut self, json: &[u8]) -> Result<(), String> {
        for (name, value) in gojson::decode(json, gojson::CONNECT_FIELDS)? {
            let flag = |v: &Value| matches!(v, Value::Bool(true));
            let text = |v: Value| match v {
                Value::Str(s) => s,
                _ => String::new(),
            };
            match name {
                "verbose" => self.verbose = flag(&value),
                "pedantic" => self.pedantic = flag(&value),
                "echo" => self.echo = flag(&value),
                "headers" => self.headers = flag(&value),
                "no_responders" => self.no_responders = flag(&value),
                "new_account" => self.new_account = flag(&value),
                "protocol" => {
                    if let Value::Int(n) = value {
                        self.protocol = n as i64;
                    }
                }
                "name" => self.name = text(value),
                "lang" => self.lang = text(value),
                "version" => self.version = text(value),
                "user" => self.user = Some(text(value)),
                "pass" => self.pass = Some(text(value)),
                "auth_token" => self.auth_token = Some(text(value)),
                "nkey" => self.nkey = Some(text(value)),
                "sig" => self.sig = Some(text(value)),
                "jwt" => self.jwt = Some(text(value)),
                "account" => self.account = text(value),
                _ => {}
            }
        }
        Ok(())
    }
}

/// Connection-local state owned by the reader task.
struct Session {
    server: Arc<Server>,
    /// The server's live options, refreshed when a reload changes them.
    cfg: Arc<crate::options::Options>,
    cfg_generation: u64,
    client: Arc<Client>,
    parser: Parser,
    connected: bool,
    /// Every CONNECT so far, decoded one over the other.
    opts: ConnectOpts,
    verbose: bool,
    pedantic: bool,
    no_responders: bool,
    /// CONNECT `protocol`: 1 means the client understands async INFO.
    protocol: i64,
    first_pong_sent: bool,
    /// Time this read batch spent waiting on slow subscribers.
    stalled: Duration,
    /// The cluster, if this node is in one (started before clients are accepted).
    cluster: Option<Arc<crate::cluster::Cluster>>,
    pings_out: u32,
    /// When the client last showed activity that makes a PING unnecessary:
    /// a message, SUB, UNSUB or PING (not CONNECT or PONG), as in nats-server.
    last_active: Option<Instant>,
    /// When the ping timer fires next.
    next_ping: tokio::time::Instant,
    /// When this connection last sent a PING. nats-server sends one whatever
    /// the client's activity when it has sent none for an hour (it measures
    /// the round-trip time with it), so the first one always goes out.
    last_ping_sent: Option<Instant>,
    /// Messages and bytes this read batch delivered, added to server totals per batch.
    out_msgs: u64,
    out_bytes: u64,
    /// The JWT account's subject space; `None` is the global account.
    space: Option<Arc<Space>>,
    /// Publish permission answers by subject (see `publish_allowed_cached`).
    pub_cache: HashMap<Bytes, bool>,
    /// The authenticated user's own limits and rules (JWT users).
    user_max_subs: Option<usize>,
    user_max_payload: Option<usize>,
    perms: Option<Arc<auth::Permissions>>,
    /// When the user's credentials expire (JWT `exp`).
    expires: Option<tokio::time::Instant>,
}

/// Serves one accepted connection until it closes.
pub async fn serve<R, W>(server: Arc<Server>, client: Arc<Client>, reader: R, writer: W)
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let writer_client = client.clone();
    let writer_server = server.clone();
    let write_task = tokio::spawn(async move {
        let deadline = writer_server.live().write_deadline;
        match writer_client.out.run_writer(writer, deadline).await {
            Ok(()) => {}
            Err(WriteFailure::Io) => writer_client.close(CloseReason::WriteError, true),
            Err(WriteFailure::Deadline) => {
                writer_server.count_slow_consumer(&writer_client);
                writer_client.close(CloseReason::SlowConsumerWriteDeadline, true);
            }
        }
    });

    let cfg_generation = server.live_generation();
    let cfg = server.live();
    let mut parser = Parser::new(Limits {
        max_control_line: cfg.max_control_line,
        max_payload: cfg.max_payload,
    });
    // HPUB is refused until a CONNECT announces headers.
    parser.set_hpub_allowed(false);
    let first_ping = tokio::time::Instant::now() + cfg.ping_interval;
    let mut session = Session {
        parser,
        cfg,
        cfg_generation,
        server: server.clone(),
        client: client.clone(),
        connected: false,
        opts: ConnectOpts::default(),
        // nats-server's defaults for a client that has not sent CONNECT.
        verbose: true,
        pedantic: true,
        no_responders: false,
        protocol: 0,
        first_pong_sent: false,
        stalled: Duration::ZERO,
        cluster: server.cluster.get().cloned(),
        pings_out: 0,
        last_active: None,
        // Before CONNECT the first PING waits a full interval.
        next_ping: first_ping,
        last_ping_sent: None,
        out_msgs: 0,
        out_bytes: 0,
        space: None,
        pub_cache: HashMap::new(),
        user_max_subs: None,
        user_max_payload: None,
        perms: None,
        expires: None,
    };
    session.read_loop(reader).await;
    session.cleanup();
    let _ = write_task.await;
    server.remove_client(&client);
}

impl Session {
    async fn read_loop<R: AsyncRead + Unpin>(&mut self, mut reader: R) {
        let opts = self.cfg.clone();
        let auth_deadline = opts
            .auth
            .required()
            .then(|| tokio::time::Instant::now() + opts.auth_timeout());
        let mut buf = BytesMut::with_capacity(32 * 1024);
        loop {
            let want = self.parser.bytes_wanted(buf.len()).max(16 * 1024);
            buf.reserve(want);
            let auth_sleep = async {
                match auth_deadline {
                    Some(d) => tokio::time::sleep_until(d).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                biased;
                _ = self.client.closed.notified() => return,
                res = reader.read_buf(&mut buf) => match res {
                    Ok(0) => { self.client.close(CloseReason::ClientClosed, false); return; }
                    Ok(_) => {
                        if !self.process(&mut buf).await { return; }
                        if self.client.is_closed() { return; }
                    }
                    Err(_) => { self.client.close(CloseReason::ReadError, true); return; }
                },
                _ = until(self.expires), if self.expires.is_some() => {
                    tracing::info!(cid = self.client.cid, "user credentials expired");
                    self.client.send_err("User Authentication Expired");
                    self.client.close(CloseReason::AuthenticationExpired, false);
                    return;
                }
                _ = auth_sleep, if !self.connected => {
                    self.client.send_err("Authentication Timeout");
                    self.client.close(CloseReason::AuthenticationTimeout, false);
                    return;
                }
                _ = tokio::time::sleep_until(self.next_ping) => {
                    self.refresh_cfg();
                    self.next_ping = tokio::time::Instant::now() + self.cfg.ping_interval;
                    // A reloaded interval applies from this tick on.
                    if !self.ping_tick() { return; }
                }
            }
        }
    }

    /// The subscription trie of this connection's account.
    fn sublist(&self) -> &crate::sublist::Sublist<SubRef> {
        match &self.space {
            Some(space) => &space.sublist,
            None => &self.server.sublist,
        }
    }

    /// Takes on what authentication granted: the account, and a JWT user's
    /// limits, permissions and expiry.
    fn apply_identity(&mut self, id: &auth::Identity) {
        *self.client.account.lock() = id.account.clone();
        self.space = id.account.as_deref().map(|a| self.server.account_space(a));
        // Only the global account is routed across the cluster for now.
        self.cluster = match self.space {
            Some(_) => None,
            None => self.server.cluster.get().cloned(),
        };
        let limit = |v: Option<i64>| v.filter(|n| *n >= 0).map(|n| n as usize);
        self.user_max_subs = limit(id.max_subs);
        self.user_max_payload = limit(id.max_payload);
        self.client
            .user_max_payload
            .store(self.user_max_payload.unwrap_or(0), Ordering::Relaxed);
        self.perms = id.permissions.clone();
        self.pub_cache.clear();
        let responses = id.permissions.as_ref().and_then(|p| p.responses);
        *self.client.reply_permits.lock() = ReplyPermits {
            perm: responses,
            ..ReplyPermits::default()
        };
        self.client
            .tracks_replies
            .store(responses.is_some(), Ordering::Release);
        let deny = id.permissions.clone().filter(|p| !p.sub_deny.is_empty());
        self.client
            .filters_delivery
            .store(deny.is_some(), Ordering::Release);
        *self.client.delivery_deny.lock() = deny;
        self.expires = id.expires.map(|t| {
            let left = t
                .duration_since(SystemTime::now())
                .unwrap_or(Duration::ZERO);
            tokio::time::Instant::now() + left
        });
        self.apply_limits();
    }

    /// The publish rules' answer for `subject`, from a small per-connection
    /// cache (as nats-server keeps one), so a user with many allow/deny
    /// patterns pays for the pattern scan once per subject, not per message.
    fn publish_allowed_cached(&mut self, p: &auth::Permissions, subject: &Bytes) -> bool {
        if let Some(&ok) = self.pub_cache.get(subject) {
            return ok;
        }
        let ok = p.can_publish(subject);
        if self.pub_cache.len() >= PUB_CACHE_MAX {
            // Dropped whole: cheap, and the working set refills it.
            self.pub_cache.clear();
        }
        self.pub_cache.insert(subject.clone(), ok);
        ok
    }

    /// Parser limits: the server's, lowered by the user's own payload limit.
    fn apply_limits(&mut self) {
        let mut max_payload = self.cfg.max_payload;
        if let Some(m) = self.user_max_payload {
            max_payload = max_payload.min(m);
        }
        self.parser.set_limits(Limits {
            max_control_line: self.cfg.max_control_line,
            max_payload,
        });
    }

    /// Picks up options changed by a config reload.
    fn refresh_cfg(&mut self) {
        let generation = self.server.live_generation();
        if generation != self.cfg_generation {
            self.cfg_generation = generation;
            self.cfg = self.server.live();
            self.apply_limits();
        }
    }

    /// Sends a keep-alive PING, or closes a connection that missed too many.
    fn ping_tick(&mut self) -> bool {
        const RTT_INTERVAL: Duration = Duration::from_secs(3600);
        let interval = self.cfg.ping_interval;
        let need_rtt = self
            .last_ping_sent
            .is_none_or(|t| t.elapsed() > RTT_INTERVAL);
        if !need_rtt && self.last_active.is_some_and(|t| t.elapsed() < interval) {
            return true;
        }
        if self.pings_out + 1 > self.cfg.ping_max {
            self.client.send_err("Stale Connection");
            self.client.close(CloseReason::StaleConnection, false);
            return false;
        }
        self.pings_out += 1;
        self.last_ping_sent = Some(Instant::now());
        self.client.send_proto(b"PING\r\n");
        true
    }

    /// Restarts the ping timer after a CONNECT the way nats-server does: it
    /// fires after the ping interval or 2 s, whichever is shorter, plus up to
    /// a fifth more at random. The first PING of a connection is never skipped
    /// (see `last_ping_sent`), so clients learn early that the server is alive
    /// and the server that the client is.
    fn schedule_first_ping(&mut self) {
        const FIRST_CLIENT_PING: Duration = Duration::from_secs(2);
        let base = self.cfg.ping_interval.min(FIRST_CLIENT_PING);
        let jitter = base.mul_f64(rand::random::<f64>() / 5.0);
        self.next_ping = tokio::time::Instant::now() + base + jitter;
    }

    /// Handles every complete operation in `buf`. Returns false once the
    /// connection must close.
    async fn process(&mut self, buf: &mut BytesMut) -> bool {
        self.refresh_cfg();
        self.stalled = Duration::ZERO;
        self.client
            .last_activity
            .store(unix_nanos(SystemTime::now()), Ordering::Relaxed);
        let mut in_msgs = 0u64;
        let mut in_bytes = 0u64;
        let ok = loop {
            match self.parser.parse(buf) {
                Ok(Some(op)) => {
                    if matches!(
                        op,
                        Op::Pub { .. }
                            | Op::HPub { .. }
                            | Op::Sub { .. }
                            | Op::Unsub { .. }
                            | Op::Ping
                    ) {
                        self.last_active = Some(Instant::now());
                    }
                    if let Op::Pub { payload, .. } | Op::HPub { payload, .. } = &op {
                        in_msgs += 1;
                        in_bytes += payload.len() as u64;
                    }
                    if let Op::HPub { headers, .. } = &op {
                        in_bytes += headers.len() as u64;
                    }
                    if !self.handle(op).await {
                        break false;
                    }
                }
                Ok(None) => break true,
                Err(e) => {
                    self.protocol_error(e);
                    break false;
                }
            }
        };
        self.client.in_msgs.fetch_add(in_msgs, Ordering::Relaxed);
        self.client.in_bytes.fetch_add(in_bytes, Ordering::Relaxed);
        self.server
            .add_traffic(in_msgs, in_bytes, self.out_msgs, self.out_bytes);
        self.out_msgs = 0;
        self.out_bytes = 0;
        ok
    }

    fn protocol_error(&mut self, e: ProtoError) {
        if !self.connected && self.cfg.auth.required() {
            // nats-server checks authentication before it parses anything else.
            self.auth_violation();
            return;
        }
        tracing::debug!(cid = self.client.cid, error = %e, "protocol error");
        if let Some(text) = e.client_error_text() {
            self.client.send_err(text);
        }
        let reason = match e {
            ProtoError::MaxPayload { .. } => CloseReason::MaxPayloadExceeded,
            ProtoError::MaxControlLine => CloseReason::MaxControlLineExceeded,
            _ => CloseReason::ProtocolViolation,
        };
        self.client.close(reason, false);
    }

    fn auth_violation(&mut self) {
        self.client.send_err("Authorization Violation");
        self.client
            .close(CloseReason::AuthenticationViolation, false);
    }

    fn ok(&self) {
        if self.verbose {
            self.client.send_proto(b"+OK\r\n");
        }
    }

    /// Handles one operation; false means the connection is closing.
    async fn handle(&mut self, op: Op) -> bool {
        if !self.connected && self.cfg.auth.required() && !matches!(op, Op::Connect(_)) {
            self.auth_violation();
            return false;
        }
        if self.cfg.trace {
            tracing::trace!(cid = self.client.cid, op = op.verb(), "<<-");
        }
        match op {
            Op::Pub {
                subject,
                reply,
                payload,
            } => {
                self.publish(subject, reply, None, payload).await;
                true
            }
            Op::HPub {
                subject,
                reply,
                headers,
                payload,
            } => {
                // (The parser refuses HPUB until CONNECT announces headers.)
                // An empty header block is delivered as a plain MSG, as nats-server does.
                let headers = (!headers.is_empty()).then_some(headers);
                self.publish(subject, reply, headers, payload).await;
                true
            }
            Op::Sub {
                subject,
                queue,
                sid,
            } => {
                self.subscribe(subject, queue, sid);
                true
            }
            Op::Unsub { sid, max } => {
                self.unsubscribe(sid, max);
                self.ok();
                true
            }
            Op::Ping => {
                self.client.send_proto(b"PONG\r\n");
                if self.connected && !self.first_pong_sent {
                    self.first_pong_sent = true;
                    if self.protocol >= 1 {
                        // Clients that understand async INFO learn their account.
                        let line = self.server.connect_info_line(&self.client);
                        self.client.send_proto(&line);
                    }
                }
                true
            }
            Op::Pong => {
                self.pings_out = 0;
                true
            }
            Op::Connect(json) => self.connect(&json),
            Op::Ok => true,
            Op::Info(json) => {
                // nats-server decodes a client's INFO (and then ignores it),
                // closing without an -ERR when that fails.
                match gojson::decode(&json, gojson::INFO_FIELDS) {
                    Ok(_) => true,
                    Err(e) => {
                        tracing::debug!(cid = self.client.cid, error = %e, "bad INFO");
                        self.client.close(CloseReason::ProtocolViolation, false);
                        false
                    }
                }
            }
            Op::Err(_) => {
                // nats-server closes a client that sends -ERR, without answering.
                self.client.close(CloseReason::ProtocolViolation, false);
                false
            }
            Op::Msg { .. } | Op::HMsg { .. } => {
                // Server-to-client verbs are not client operations.
                self.protocol_error(ProtoError::UnknownOp);
                false
            }
        }
    }

    /// Handles CONNECT, the first or a later one: nats-server checks every
    /// one in full (credentials included) over the options already given,
    /// and a later one drops the client's subscriptions.
    fn connect(&mut self, json: &[u8]) -> bool {
        let mut opts = self.opts.clone();
        if let Err(e) = opts.update(json) {
            tracing::debug!(cid = self.client.cid, error = %e, "bad CONNECT");
            self.client.close(CloseReason::ProtocolViolation, false);
            return false;
        }
        self.schedule_first_ping();
        if self.connected {
            // nats-server drops them because a CONNECT may switch accounts.
            self.cleanup();
        }
        // Recorded before the check: a reload that swaps the options between
        // the two then still finds (and re-checks) them.
        let presented = Presented {
            user: opts.user.clone(),
            pass: opts.pass.clone(),
            token: opts.auth_token.clone(),
            nkey: opts.nkey.clone(),
            sig: opts.sig.clone(),
            jwt: opts.jwt.clone(),
        };
        *self.client.credentials.lock() = Some(presented.clone());
        let identity = match self
            .server
            .authenticate(&presented, self.client.auth_context(&self.cfg))
        {
            Ok(id) => id,
            Err(why) => {
                tracing::error!(
                    cid = self.client.cid,
                    addr = %self.client.addr,
                    "authentication error: {why}"
                );
                self.auth_violation();
                return false;
            }
        };
        // Naming an account in CONNECT is refused, as in nats-server.
        if opts.new_account || !opts.account.is_empty() {
            self.auth_violation();
            return false;
        }
        self.apply_identity(&identity);
        if !(0..=1).contains(&opts.protocol) {
            self.client.send_err("invalid client protocol");
            self.client.close(CloseReason::ProtocolViolation, false);
            return false;
        }
        if opts.no_responders && !opts.headers {
            self.client
                .send_err("no responders requires headers support");
            self.client.close(CloseReason::ProtocolViolation, false);
            return false;
        }
        self.verbose = opts.verbose;
        self.pedantic = opts.pedantic;
        self.no_responders = opts.no_responders;
        self.protocol = opts.protocol;
        self.client
            .async_info
            .store(opts.protocol >= 1, Ordering::Relaxed);
        self.client.echo.store(opts.echo, Ordering::Relaxed);
        self.client.headers.store(opts.headers, Ordering::Relaxed);
        self.parser.set_hpub_allowed(opts.headers);
        {
            let mut meta = self.client.meta.lock();
            meta.name = opts.name.clone();
            meta.lang = opts.lang.clone();
            meta.version = opts.version.clone();
            meta.user = identity.user.clone().or_else(|| identity.nkey.clone());
        }
        self.opts = opts;
        self.connected = true;
        self.ok();
        true
    }

    fn subscribe(&mut self, subject: Bytes, queue: Option<Bytes>, sid: Bytes) {
        let server = &self.server;
        // The server's limit (0: none) and the user's own (JWT `subs`,
        // where 0 allows none), whichever is lower.
        let server_max = (self.cfg.max_subscriptions > 0).then_some(self.cfg.max_subscriptions);
        let max_subs = match (server_max, self.user_max_subs) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let valid = valid_subscribe_subject(&subject)
            && queue
                .as_deref()
                .is_none_or(crate::subject::valid_queue_name);
        if !valid {
            self.client.send_err("Invalid Subject");
            return;
        }
        if let Some(p) = &self.perms {
            if !p.can_subscribe(&subject, queue.as_deref()) {
                let subj = String::from_utf8_lossy(&subject);
                let text = match &queue {
                    Some(q) => format!(
                        "Permissions Violation for Subscription to {subj:?} using queue {:?}",
                        String::from_utf8_lossy(q)
                    ),
                    None => format!("Permissions Violation for Subscription to {subj:?}"),
                };
                tracing::error!(cid = self.client.cid, "{text}");
                self.client.send_err(&text);
                return;
            }
        }
        let mut subs = self.client.subs.lock();
        if subs.contains_key(&sid) {
            // nats-server keeps the existing subscription for a reused sid.
            drop(subs);
            self.ok();
            return;
        }
        if max_subs.is_some_and(|m| subs.len() >= m) {
            drop(subs);
            tracing::error!(cid = self.client.cid, "maximum subscriptions exceeded");
            self.client.send_err("maximum subscriptions exceeded");
            return;
        }
        let sub = Arc::new(Subscription {
            id: server.next_sub_id(),
            client: self.client.clone(),
            subject: subject.clone(),
            queue: queue.clone(),
            sid: sid.clone(),
            max: AtomicU64::new(0),
            delivered: AtomicU64::new(0),
            space: self.space.clone(),
        });
        if self
            .sublist()
            .insert(&subject, queue.as_deref(), sub.clone())
            .is_err()
        {
            drop(subs);
            self.client.send_err("Invalid Subject");
            return;
        }
        subs.insert(sid, sub.clone());
        drop(subs);
        if let Some(cluster) = &self.cluster {
            cluster.interest_changed(&sub.subject, sub.queue.as_ref(), 1);
        }
        self.ok();
    }

    fn unsubscribe(&mut self, sid: Bytes, max: Option<u64>) {
        let sub = match self.client.subs.lock().get(&sid) {
            Some(s) => s.clone(),
            None => return,
        };
        if let Some(max) = max {
            if max > sub.delivered.load(Ordering::Relaxed) {
                sub.max.store(max, Ordering::Relaxed);
                return;
            }
        }
        self.server.remove_subscription(&sub);
    }

    async fn publish(
        &mut self,
        subject: Bytes,
        reply: Option<Bytes>,
        headers: Option<Bytes>,
        payload: Bytes,
    ) {
        if self.pedantic && !valid_publish_subject(&subject) {
            self.client.send_err("Invalid Publish Subject");
        }
        if let Some(p) = self.perms.clone() {
            let allowed = self.publish_allowed_cached(&p, &subject)
                || (p.responses.is_some() && self.client.reply_permits.lock().take(&subject));
            if !allowed {
                let text = format!(
                    "Permissions Violation for Publish to {:?}",
                    String::from_utf8_lossy(&subject)
                );
                tracing::error!(cid = self.client.cid, "{text}");
                self.client.send_err(&text);
                return;
            }
        }
        // nats-server acknowledges before it delivers, so +OK precedes any MSG it causes.
        self.ok();
        let result = self.sublist().matches(&subject);
        let me = self.client.cid;
        let reply_ref = reply.as_deref();
        let headers_ref = headers.as_deref();
        let mut delivered = false;
        for sub in &result.plain {
            self.stall_if_behind(&sub.client).await;
            delivered |= self.deliver(sub, &subject, reply_ref, headers_ref, &payload);
        }
        let clustered = self.cluster.is_some();
        let mut served_queues: Vec<Bytes> = Vec::new();
        for (name, members) in &result.queues {
            // Start at a random member and take the first that can accept it.
            let n = members.len();
            let start = if n > 1 { fastrand(n) } else { 0 };
            for i in 0..n {
                let sub = &members[(start + i) % n];
                if sub.client.cid == me && !sub.client.echo.load(Ordering::Relaxed) {
                    continue;
                }
                self.stall_if_behind(&sub.client).await;
                if self.deliver(sub, &subject, reply_ref, headers_ref, &payload) {
                    delivered = true;
                    if clustered {
                        served_queues.push(name.clone());
                    }
                    break;
                }
            }
        }
        if let Some(cluster) = &self.cluster {
            let mut blocked = crate::cluster::Blocked::default();
            let fwd = cluster.forward(
                me,
                &subject,
                reply.as_ref(),
                headers.as_ref(),
                &payload,
                &served_queues,
                &mut blocked,
            );
            delivered |= fwd.any;
            self.out_msgs += fwd.msgs;
            self.out_bytes += fwd.bytes;
            if !blocked.is_empty() {
                // A busy link pushes back: this reader waits (and so does
                // the client, through TCP) rather than drop the message.
                let wait = self.server.live().write_deadline;
                let (msgs, bytes) = blocked.send(me, wait).await;
                self.out_msgs += msgs;
                self.out_bytes += bytes;
            }
        }
        if !delivered && self.no_responders {
            if let Some(reply) = &reply {
                self.send_no_responders(&subject, reply);
            }
        }
    }

    /// Fast-producer flow control, as nats-server does it: when a subscriber's
    /// buffer is over three quarters full, the publisher waits briefly for it
    /// to drain (2 ms, 5 ms once full, at most 10 ms per read) before adding
    /// more. Short waits slow a flood down without starving anyone.
    async fn stall_if_behind(&mut self, target: &Arc<Client>) {
        const MIN: Duration = Duration::from_millis(2);
        const MAX: Duration = Duration::from_millis(5);
        const TOTAL: Duration = Duration::from_millis(10);
        if target.cid == self.client.cid || self.stalled >= TOTAL {
            return;
        }
        let Some(full) = target.out.behind() else {
            return;
        };
        let ttl = if full { MAX } else { MIN }.min(TOTAL - self.stalled);
        let start = Instant::now();
        let _ = tokio::time::timeout(ttl, target.out.drained()).await;
        self.stalled += start.elapsed();
    }

    /// Writes one message into a subscriber's buffer; false if it did not take it.
    #[inline]
    fn deliver(
        &mut self,
        sub: &SubRef,
        subject: &[u8],
        reply: Option<&[u8]>,
        headers: Option<&[u8]>,
        payload: &[u8],
    ) -> bool {
        match deliver_to(
            &self.server,
            self.client.cid,
            sub,
            subject,
            reply,
            headers,
            payload,
        ) {
            Some(size) => {
                self.out_msgs += 1;
                self.out_bytes += size;
                true
            }
            None => false,
        }
    }

    /// Answers a request nobody can serve with a 503 status on the
    /// requester's own reply subscription, as nats-server does.
    fn send_no_responders(&mut self, subject: &[u8], reply: &Bytes) {
        let result = self.sublist().matches(reply);
        let mine = result
            .plain
            .iter()
            .chain(result.queues.iter().flat_map(|(_, m)| m.iter()))
            .find(|s| s.client.cid == self.client.cid)
            .cloned();
        if let Some(sub) = mine {
            let mut hdr = Vec::with_capacity(48 + subject.len());
            hdr.extend_from_slice(b"NATS/1.0 503\r\nNats-Subject: ");
            hdr.extend_from_slice(subject);
            hdr.extend_from_slice(b"\r\n\r\n");
            let _ = self.client.out.push(Some(hdr.len() as u64), |b| {
                write_hmsg(b, reply, &sub.sid, None, &hdr, b"")
            });
        }
    }

    /// Removes every subscription of a closing connection.
    fn cleanup(&mut self) {
        let subs: Vec<SubRef> = self.client.subs.lock().drain().map(|(_, s)| s).collect();
        for sub in subs {
            self.server.forget_subscription(&sub);
        }
    }
}

/// Subjects remembered in a connection's publish permission cache.
const PUB_CACHE_MAX: usize = 128;

/// Sleeps until `t`, or forever when there is none.
async fn until(t: Option<tokio::time::Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

fn unix_nanos(t: SystemTime) -> u64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// Writes one message into a subscriber's buffer, for local publishers and
/// for messages arriving over cluster links alike (`publisher` 0). Returns the
/// message's size for the server totals (payload and headers), or `None` if the subscription did not take it (echo off,
/// auto-unsubscribe limit reached). A subscriber whose buffer overflows is
/// closed as a slow consumer.
#[inline]
pub fn deliver_to(
    server: &Server,
    publisher: u64,
    sub: &SubRef,
    subject: &[u8],
    reply: Option<&[u8]>,
    headers: Option<&[u8]>,
    payload: &[u8],
) -> Option<u64> {
    let target = &sub.client;
    if target.cid == publisher && !target.echo.load(Ordering::Relaxed) {
        return None;
    }
    if target.filters_delivery.load(Ordering::Relaxed)
        && !crate::subject::subject_is_literal(&sub.subject)
    {
        // An allowed wildcard subscription never delivers a denied subject.
        let deny = target.delivery_deny.lock().clone();
        if deny.is_some_and(|p| p.denies_delivery(subject)) {
            return None;
        }
    }
    let max = sub.max.load(Ordering::Relaxed);
    let n = sub.delivered.fetch_add(1, Ordering::Relaxed) + 1;
    if max > 0 && n > max {
        return None;
    }
    let hdrs = headers.filter(|_| target.headers.load(Ordering::Relaxed));
    // nats-server counts what the connection receives (headers stripped for a
    // client without header support) in its /connz totals, but the message
    // as published (headers included) in the server-wide /varz totals.
    let sent = payload.len() + hdrs.map_or(0, |h| h.len());
    let size = payload.len() + headers.map_or(0, |h| h.len());
    if let Some(r) = reply {
        if target.tracks_replies.load(Ordering::Relaxed) {
            target.reply_permits.lock().grant(r);
        }
    }
    let res = target.out.push(Some(sent as u64), |b| match hdrs {
        Some(h) => write_hmsg(b, subject, &sub.sid, reply, h, payload),
        None => write_msg(b, subject, &sub.sid, reply, payload),
    });
    let delivered = match res {
        Ok(()) => Some(size as u64),
        Err(PushError::SlowConsumer) => {
            server.count_slow_consumer(target);
            tracing::warn!(
                cid = target.cid,
                "slow consumer detected: pending bytes over max_pending"
            );
            target.close(CloseReason::SlowConsumerPendingBytes, true);
            Some(0)
        }
        Err(PushError::Closed) => Some(0),
    };
    if max > 0 && n == max {
        server.remove_subscription(sub);
    }
    delivered
}

/// A cheap per-thread random index for queue member selection.
pub fn fastrand(n: usize) -> usize {
    use std::cell::Cell;
    thread_local! {
        static STATE: Cell<u64> = Cell::new(rand::random::<u64>() | 1);
    }
    STATE.with(|s| {
        let mut x = s.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        s.set(x);
        (x % n as u64) as usize
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_connect(json: &[u8]) -> Result<ConnectOpts, String> {
        let mut o = ConnectOpts::default();
        o.update(json).map(|()| o)
    }

    #[test]
    fn connect_nulls_keep_defaults() {
        let o =
            parse_connect(br#"{"verbose":null,"name":null,"lang":"rust","echo":false}"#).unwrap();
        assert!(o.verbose && o.pedantic && !o.echo);
        assert_eq!(o.name, "");
        assert_eq!(o.lang, "rust");
        assert!(parse_connect(br#"{"name":123}"#).is_err());
        assert!(parse_connect(br#"{"echo":"yes"}"#).is_err());
    }

    #[test]
    fn connect_decodes_over_earlier_options() {
        let mut o =
            parse_connect(br#"{"USER":"a","Pass":"b","verbose":false,"headers":true}"#).unwrap();
        o.update(br#"{"echo":false,"headers":null}"#).unwrap();
        assert_eq!(o.user.as_deref(), Some("a"));
        assert_eq!(o.pass.as_deref(), Some("b"));
        assert!(!o.verbose && o.headers && !o.echo);
        o.update(b"null").unwrap();
        assert!(o.headers);
    }
}
