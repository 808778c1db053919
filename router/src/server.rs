//! The server: accepts connections, owns the subscription trie and the
//! table of clients, and coordinates shutdown and lame-duck mode.

use parking_lot::{Mutex, RwLock};
use serde::Serialize;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use tokio::net::{TcpListener, TcpStream};
use transport::tls::TlsAcceptor;

use crate::auth::{self, Presented};
use crate::client::{self, Client, CloseReason, SubRef};
use crate::options::{ClientTls, Options};
use crate::sublist::Sublist;

/// The version Tern reports in INFO and /varz.
///
/// Clients gate features (headers, no-responders) on the nats-server version
/// they see, so Tern reports the nats-server release whose client protocol
/// it implements, with its own version as semver build metadata.
pub const VERSION: &str = concat!("2.10.0+tern.", env!("CARGO_PKG_VERSION"));

/// Closed clients remembered for /connz `state=closed`.
const CLOSED_RING: usize = 1000;

/// The INFO fields every client sees, fixed at start-up.
#[derive(Debug, Clone, Serialize)]
pub struct InfoBase {
    pub server_id: String,
    pub server_name: String,
    pub version: String,
    pub proto: u8,
    pub go: String,
    pub host: String,
    pub port: u16,
    pub headers: bool,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub auth_required: bool,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub tls_required: bool,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub tls_verify: bool,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub tls_available: bool,
    pub max_payload: usize,
}

/// The INFO a particular client is sent.
#[derive(Serialize)]
struct ClientInfo<'a> {
    #[serde(flatten)]
    base: &'a InfoBase,
    client_id: u64,
    client_ip: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    nonce: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    connect_urls: Option<Vec<String>>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    ldm: bool,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    connect_info: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    remote_account: Option<&'a str>,
}

/// A connection that has closed, as /connz reports it.
#[derive(Debug, Clone)]
pub struct ClosedClient {
    pub cid: u64,
    pub addr: SocketAddr,
    pub start: SystemTime,
    pub stop: SystemTime,
    pub reason: &'static str,
    pub name: String,
    pub lang: String,
    pub version: String,
    pub in_msgs: u64,
    pub in_bytes: u64,
    pub out_msgs: u64,
    pub out_bytes: u64,
    /// Bytes still queued for it when it closed (dropped, for a slow consumer).
    pub pending_bytes: usize,
    pub user: Option<String>,
    pub account: Option<String>,
    pub tls_version: &'static str,
    pub tls_cipher: String,
}

/// The subject space of one JWT account: its clients publish and subscribe
/// here and never see another account's subjects.
pub struct Space {
    pub account: String,
    pub sublist: Sublist<SubRef>,
}

/// Server-wide message totals.
#[derive(Debug, Default)]
pub struct Traffic {
    pub in_msgs: AtomicU64,
    pub in_bytes: AtomicU64,
    pub out_msgs: AtomicU64,
    pub out_bytes: AtomicU64,
    pub slow_consumers: AtomicU64,
    pub total_connections: AtomicU64,
}

/// Shared server state.
pub struct Server {
    /// The options the server started with. Settings a config reload can
    /// change are read through [`Server::live`] instead.
    pub opts: Options,
    /// The current options, replaced as a whole by a config reload (SIGHUP).
    live: RwLock<Arc<Options>>,
    /// Bumped by every reload, so a connection notices with one atomic load.
    live_generation: AtomicU64,
    pub info: InfoBase,
    pub sublist: Sublist<SubRef>,
    /// Subject spaces of JWT accounts, created on their first user.
    pub spaces: Mutex<HashMap<String, Arc<Space>>>,
    /// Set once clustering has started.
    pub cluster: std::sync::OnceLock<Arc<crate::cluster::Cluster>>,
    pub clients: Mutex<HashMap<u64, Arc<Client>>>,
    pub closed: Mutex<std::collections::VecDeque<ClosedClient>>,
    pub traffic: Traffic,
    pub start: SystemTime,
    pub started: Instant,
    /// Bound addresses, known once listening.
    pub client_addr: Mutex<Option<SocketAddr>>,
    pub http_addr: Mutex<Option<SocketAddr>>,
    next_cid: AtomicU64,
    next_sub: AtomicU64,
    lame_duck: AtomicBool,
    /// The client port's TLS, rebuilt by a reload (new certificates apply
    /// to new connections).
    tls: RwLock<Option<TlsAcceptor>>,
    /// Becomes true when the server stops accepting clients.
    stop_accepting: tokio::sync::watch::Sender<bool>,
    /// Becomes true once the client listener is closed (new connections are
    /// refused by the kernel from then on).
    listener_closed: tokio::sync::watch::Sender<bool>,
    shutting_down: AtomicBool,
}

/// Builds the client port's TLS acceptor; options were validated, so a
/// failure here means files changed since, and is logged.
fn tls_acceptor(opts: &Options) -> Option<TlsAcceptor> {
    let tls = opts.tls.as_ref()?;
    match transport::tls::server_config(&tls.settings) {
        Ok(c) => Some(TlsAcceptor::from(c)),
        Err(e) => {
            tracing::error!("client TLS: {e}");
            None
        }
    }
}

/// nats-server's answer to a connection over `max_connections`.
fn refuse_max_connections(client: &Client, addr: SocketAddr) {
    tracing::error!(%addr, "maximum connections exceeded");
    client.send_err("maximum connections exceeded");
    client.close(CloseReason::MaxConnectionsExceeded, false);
}

impl Server {
    /// A server for `opts` with the identity `server_id`.
    pub fn new(opts: Options, server_id: String) -> Arc<Self> {
        let name = opts
            .server_name
            .clone()
            .unwrap_or_else(|| server_id.clone());
        let info = InfoBase {
            server_id,
            server_name: name,
            version: VERSION.to_owned(),
            proto: 1,
            go: "rust".to_owned(),
            host: opts.host.to_string(),
            port: opts.port,
            headers: true,
            auth_required: opts.auth.announce_required(),
            tls_required: false,
            tls_verify: false,
            tls_available: false,
            max_payload: opts.max_payload,
        };
        let tls = tls_acceptor(&opts);
        Arc::new(Server {
            live: RwLock::new(Arc::new(opts.clone())),
            tls: RwLock::new(tls),
            live_generation: AtomicU64::new(0),
            opts,
            info,
            sublist: Sublist::new(),
            spaces: Mutex::new(HashMap::new()),
            cluster: std::sync::OnceLock::new(),
            clients: Mutex::new(HashMap::new()),
            closed: Mutex::new(Default::default()),
            traffic: Traffic::default(),
            start: SystemTime::now(),
            started: Instant::now(),
            client_addr: Mutex::new(None),
            http_addr: Mutex::new(None),
            next_cid: AtomicU64::new(1),
            next_sub: AtomicU64::new(1),
            lame_duck: AtomicBool::new(false),
            stop_accepting: tokio::sync::watch::Sender::new(false),
            listener_closed: tokio::sync::watch::Sender::new(false),
            shutting_down: AtomicBool::new(false),
        })
    }

    /// The current options: those started with, as changed by config reloads.
    pub fn live(&self) -> Arc<Options> {
        self.live.read().clone()
    }

    /// Changes with every config reload; cheap to poll.
    pub fn live_generation(&self) -> u64 {
        self.live_generation.load(Ordering::Acquire)
    }

    /// Installs reloaded options (see `crate::reload`).
    pub(crate) fn set_live(&self, opts: Options) {
        *self.tls.write() = tls_acceptor(&opts);
        *self.live.write() = Arc::new(opts);
        self.live_generation.fetch_add(1, Ordering::AcqRel);
    }

    /// The subject space of JWT account `account`, made on first use.
    pub fn account_space(&self, account: &str) -> Arc<Space> {
        self.spaces
            .lock()
            .entry(account.to_owned())
            .or_insert_with(|| {
                Arc::new(Space {
                    account: account.to_owned(),
                    sublist: Sublist::new(),
                })
            })
            .clone()
    }

    /// A fresh subscription id.
    pub fn next_sub_id(&self) -> u64 {
        self.next_sub.fetch_add(1, Ordering::Relaxed)
    }

    /// Checks CONNECT credentials against the current authorization.
    pub fn authenticate(
        &self,
        presented: &Presented,
        cx: auth::Context<'_>,
    ) -> Result<auth::Identity, auth::Refusal> {
        auth::authenticate(&self.live().auth, presented, cx)
    }

    /// Adds one read batch's traffic to the server totals.
    #[inline]
    pub fn add_traffic(&self, in_msgs: u64, in_bytes: u64, out_msgs: u64, out_bytes: u64) {
        let t = &self.traffic;
        if in_msgs > 0 {
            t.in_msgs.fetch_add(in_msgs, Ordering::Relaxed);
            t.in_bytes.fetch_add(in_bytes, Ordering::Relaxed);
        }
        if out_msgs > 0 {
            t.out_msgs.fetch_add(out_msgs, Ordering::Relaxed);
            t.out_bytes.fetch_add(out_bytes, Ordering::Relaxed);
        }
    }

    /// Counts a slow consumer once per connection.
    pub fn count_slow_consumer(&self, client: &Client) {
        if !client.is_closed() {
            self.traffic.slow_consumers.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Removes a subscription from the trie and from its client.
    pub fn remove_subscription(&self, sub: &SubRef) {
        let removed = {
            let mut subs = sub.client.subs.lock();
            match subs.get(&sub.sid) {
                Some(s) if s.id == sub.id => subs.remove(&sub.sid).is_some(),
                _ => false,
            }
        };
        if removed {
            self.forget_subscription(sub);
        }
    }

    /// Takes a subscription out of the trie (its client has already let go of
    /// it) and tells the cluster.
    pub fn forget_subscription(&self, sub: &SubRef) {
        if let Some(space) = &sub.space {
            space
                .sublist
                .remove(&sub.subject, sub.queue.as_deref(), sub.id);
            return;
        }
        if self
            .sublist
            .remove(&sub.subject, sub.queue.as_deref(), sub.id)
        {
            if let Some(cluster) = self.cluster.get() {
                cluster.interest_changed(&sub.subject, sub.queue.as_ref(), -1);
            }
        }
    }

    /// Delivers a message that arrived over a cluster link to local clients
    /// only: plain subscribers if asked, and one member of each named queue group.
    pub fn deliver_routed(&self, msg: &crate::cluster::wire::RoutedMsg) {
        let result = self.sublist.matches(&msg.subject);
        let reply = (!msg.reply.is_empty()).then_some(&msg.reply[..]);
        let headers = msg.headers.as_deref();
        let (mut n, mut bytes) = (0u64, 0u64);
        let mut count = |d: Option<u64>| {
            if let Some(b) = d {
                n += 1;
                bytes += b;
            }
            d.is_some()
        };
        let mut deliver = |sub: &SubRef| {
            count(client::deliver_to(
                self,
                0,
                sub,
                &msg.subject,
                reply,
                headers,
                &msg.payload,
            ))
        };
        if msg.plain {
            for sub in &result.plain {
                deliver(sub);
            }
        }
        for q in &msg.queues {
            let Some((_, members)) = result.queues.iter().find(|(name, _)| name == q) else {
                continue;
            };
            let len = members.len();
            let start = client::fastrand(len.max(1));
            for i in 0..len {
                if deliver(&members[(start + i) % len]) {
                    break;
                }
            }
        }
        self.add_traffic(0, 0, n, bytes);
    }

    /// Pushes an INFO with the new `connect_urls` to clients that accept async INFO.
    pub fn connect_urls_changed(&self) {
        let clients: Vec<Arc<Client>> = self.clients.lock().values().cloned().collect();
        for c in clients {
            if c.async_info.load(Ordering::Relaxed) {
                c.send_proto(&self.info_line(&c));
            }
        }
    }

    /// The INFO line for a client.
    pub fn info_line(&self, client: &Client) -> Vec<u8> {
        self.render_info(client, false)
    }

    /// The async INFO nats-server sends after the first PONG to clients that
    /// speak protocol 1, confirming the connection and naming its account.
    pub fn connect_info_line(&self, client: &Client) -> Vec<u8> {
        self.render_info(client, true)
    }

    fn render_info(&self, client: &Client, connect_info: bool) -> Vec<u8> {
        // A reload may have changed what the start-up INFO said.
        let live = self.live();
        let mut base = self.info.clone();
        base.max_payload = live.max_payload;
        if connect_info {
            // The INFO confirming CONNECT shows the user's own, lower limit.
            let user = client.user_max_payload.load(Ordering::Relaxed);
            if user > 0 {
                base.max_payload = base.max_payload.min(user);
            }
        }
        base.auth_required = live.auth.announce_required();
        if let Some(tls) = &live.tls {
            base.tls_required = !live.allow_non_tls || tls.handshake_first;
            base.tls_verify = tls.settings.verify;
            base.tls_available = !base.tls_required;
        }
        let account = client.account.lock().clone();
        let account = account.as_deref().unwrap_or("$G");
        let info = ClientInfo {
            base: &base,
            client_id: client.cid,
            client_ip: client.addr.ip().to_string(),
            nonce: client.nonce.as_deref(),
            connect_urls: self.cluster.get().map(|c| c.connect_urls()),
            ldm: self.lame_duck.load(Ordering::Relaxed),
            connect_info,
            remote_account: connect_info.then_some(account),
        };
        let mut line = b"INFO ".to_vec();
        serde_json::to_writer(&mut line, &info).expect("INFO serializes");
        // nats-server ends INFO with a space before CRLF; some tools match it.
        line.extend_from_slice(b" \r\n");
        line
    }

    /// Forgets a finished connection, keeping a summary for /connz.
    pub fn remove_client(&self, client: &Arc<Client>) {
        self.clients.lock().remove(&client.cid);
        let meta = client.meta.lock().clone();
        let totals = client.out.totals();
        let closed = ClosedClient {
            cid: client.cid,
            addr: client.addr,
            start: client.start,
            stop: SystemTime::now(),
            reason: client
                .close_reason()
                .unwrap_or(CloseReason::ClientClosed)
                .as_str(),
            name: meta.name.clone(),
            lang: meta.lang.clone(),
            version: meta.version.clone(),
            in_msgs: client.in_msgs.load(Ordering::Relaxed),
            in_bytes: client.in_bytes.load(Ordering::Relaxed),
            out_msgs: totals.msgs,
            out_bytes: totals.bytes,
            pending_bytes: client.out.pending_at_close(),
            user: meta.user,
            account: client.account.lock().clone(),
            tls_version: client.tls.get().map_or("", |t| t.version),
            tls_cipher: client
                .tls
                .get()
                .map(|t| t.cipher.clone())
                .unwrap_or_default(),
        };
        let mut ring = self.closed.lock();
        if ring.len() >= CLOSED_RING {
            ring.pop_front();
        }
        ring.push_back(closed);
    }

    /// Client connections closed since the server started.
    pub fn closed_connections(&self) -> u64 {
        let live = self.clients.lock().len() as u64;
        self.traffic
            .total_connections
            .load(Ordering::Relaxed)
            .saturating_sub(live)
    }

    /// Whether lame-duck mode has started.
    pub fn in_lame_duck(&self) -> bool {
        self.lame_duck.load(Ordering::Relaxed)
    }

    /// Accepts clients on `listener` until shutdown, then closes it.
    pub async fn accept_loop(self: Arc<Self>, listener: TcpListener) {
        self.clone().accept_until_stopped(&listener).await;
        drop(listener);
        self.listener_closed.send_replace(true);
    }

    async fn accept_until_stopped(self: Arc<Self>, listener: &TcpListener) {
        let mut stop = self.stop_accepting.subscribe();
        let mut backoff = transport::tcp::AcceptBackoff::new("client");
        loop {
            if *stop.borrow_and_update() {
                return;
            }
            tokio::select! {
                _ = stop.changed() => return,
                res = transport::tcp::accept(listener) => match res {
                    Ok((stream, addr)) => {
                        backoff.succeeded();
                        self.clone().start_client(stream, addr);
                    }
                    // Out of descriptors: back off instead of spinning, and
                    // keep the log readable.
                    Err(e) => backoff.failed(&e).await,
                }
            }
        }
    }

    fn start_client(self: Arc<Self>, stream: TcpStream, addr: SocketAddr) {
        if self.in_lame_duck() || self.shutting_down.load(Ordering::Relaxed) {
            return; // dropping the stream closes it
        }
        let cid = self.next_cid.fetch_add(1, Ordering::Relaxed);
        let live = self.live();
        let nonce = live.auth.nonce_required().then(peer::nonce::new_nonce);
        let client = Arc::new(Client::new(cid, addr, live.max_pending, nonce));
        let tls = match (&live.tls, self.tls.read().clone()) {
            (Some(t), Some(acceptor)) => Some((t.clone(), acceptor)),
            _ => None,
        };
        let admitted = {
            let mut clients = self.clients.lock();
            let max = live.max_connections;
            if max > 0 && clients.len() >= max {
                false
            } else {
                clients.insert(cid, client.clone());
                self.traffic
                    .total_connections
                    .fetch_add(1, Ordering::Relaxed);
                true
            }
        };
        tracing::debug!(cid, %addr, "client connection created");
        let Some((tls, acceptor)) = tls else {
            client.send_proto(&self.info_line(&client));
            if !admitted {
                refuse_max_connections(&client, addr);
            }
            let (reader, writer) = stream.into_split();
            tokio::spawn(client::serve(self, client, reader, writer));
            return;
        };
        tokio::spawn(async move {
            self.serve_tls(client, stream, tls, acceptor, live.allow_non_tls, admitted)
                .await
        });
    }

    /// A connection on a TLS port: INFO in clear then the handshake, or the
    /// handshake first (`handshake_first`), or either when `allow_non_tls`
    /// lets the client's first byte decide, as nats-server does.
    async fn serve_tls(
        self: Arc<Self>,
        client: Arc<Client>,
        mut stream: TcpStream,
        tls: ClientTls,
        acceptor: TlsAcceptor,
        allow_non_tls: bool,
        admitted: bool,
    ) {
        use tokio::io::AsyncWriteExt;
        let addr = client.addr;
        let mut first = tls.handshake_first;
        if first {
            if let Some(wait) = tls.first_fallback {
                // Nothing within the fallback delay: a plaintext client.
                if transport::tls::sniff_tls(&stream, wait).await.is_none() {
                    first = false;
                }
            }
        }
        if !first {
            // INFO goes out in clear before the handshake.
            let info = self.info_line(&client);
            if stream.write_all(&info).await.is_err() {
                client.close(CloseReason::WriteError, true);
                self.remove_client(&client);
                return;
            }
            if allow_non_tls {
                let is_tls = transport::tls::sniff_tls(&stream, tls.timeout).await;
                if is_tls != Some(true) {
                    // A plaintext client (or a silent one, which the auth
                    // timeout or the ping timer will deal with).
                    if !admitted {
                        refuse_max_connections(&client, addr);
                    }
                    let (reader, writer) = stream.into_split();
                    client::serve(self, client, reader, writer).await;
                    return;
                }
            }
        }
        // A client that talks plaintext where TLS is required is closed
        // without a word (rustls would answer with an alert; Go does not).
        let started = tokio::time::Instant::now();
        match transport::tls::sniff_tls(&stream, tls.timeout).await {
            Some(true) => {}
            sniffed => {
                let why = if sniffed.is_some() {
                    "first record does not look like a TLS handshake"
                } else {
                    "timeout"
                };
                tracing::error!(cid = client.cid, %addr, "TLS handshake error: {why}");
                client.close(CloseReason::TlsHandshakeError, true);
                self.remove_client(&client);
                return;
            }
        }
        let left = tls.timeout.saturating_sub(started.elapsed());
        let tls_stream =
            match transport::tls::accept(&acceptor, stream, left, &tls.settings.pinned_certs).await
            {
                Ok(s) => s,
                Err(e) => {
                    match e {
                        transport::tls::HandshakeError::Timeout => {
                            tracing::error!(cid = client.cid, %addr, "TLS handshake timeout")
                        }
                        e => tracing::error!(cid = client.cid, %addr, "TLS handshake error: {e}"),
                    }
                    client.close(CloseReason::TlsHandshakeError, true);
                    self.remove_client(&client);
                    return;
                }
            };
        {
            let (version, cipher) = transport::tls::negotiated(&tls_stream);
            let _ = client.tls.set(client::TlsInfo {
                version,
                cipher,
                names: transport::tls::peer_certificate(&tls_stream)
                    .and_then(|c| peer::cert_names::CertNames::from_der(&c)),
            });
            tracing::debug!(cid = client.cid, version, "TLS handshake complete");
        }
        if first {
            client.send_proto(&self.info_line(&client));
        }
        if !admitted {
            refuse_max_connections(&client, addr);
        }
        let (reader, writer) = tokio::io::split(tls_stream);
        client::serve(self, client, reader, writer).await;
    }

    /// Stops accepting and closes every client after flushing what it has queued.
    pub async fn shutdown(&self) {
        self.shutting_down.store(true, Ordering::Relaxed);
        self.stop_accepting.send_replace(true);
        let clients: Vec<Arc<Client>> = self.clients.lock().values().cloned().collect();
        for c in &clients {
            c.close(CloseReason::ServerShutdown, false);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while !self.clients.lock().is_empty() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Lame-duck mode: stop accepting, tell clients (INFO `ldm`), then close
    /// them spread over the lame-duck duration after a grace period.
    pub async fn lame_duck(&self) {
        if self.lame_duck.swap(true, Ordering::Relaxed) {
            return;
        }
        tracing::info!("Entering lame duck mode, stop accepting new clients");
        self.stop_accepting.send_replace(true);
        // Clients told about lame duck mode must find the port closed, as on
        // nats-server: wait for the listener to go before announcing it.
        let mut closed = self.listener_closed.subscribe();
        let _ = tokio::time::timeout(Duration::from_secs(2), closed.wait_for(|c| *c)).await;
        let clients: Vec<Arc<Client>> = self.clients.lock().values().cloned().collect();
        if clients.is_empty() {
            // Nobody to warn or drain: shut down at once, as nats-server does.
            self.shutdown().await;
            return;
        }
        // Only clients that accept async INFO are told; the others just get closed.
        for c in clients
            .iter()
            .filter(|c| c.async_info.load(Ordering::Relaxed))
        {
            c.send_proto(&self.info_line(c));
        }
        let live = self.live();
        tokio::time::sleep(live.lame_duck_grace_period).await;
        let clients: Vec<Arc<Client>> = self.clients.lock().values().cloned().collect();
        let span = live
            .lame_duck_duration
            .saturating_sub(live.lame_duck_grace_period);
        let step = (span / clients.len().max(1) as u32).min(Duration::from_secs(1));
        let last = clients.len().saturating_sub(1);
        for (i, c) in clients.into_iter().enumerate() {
            c.close(CloseReason::ServerShutdown, false);
            if i < last && !step.is_zero() {
                tokio::time::sleep(step).await;
            }
        }
        self.shutdown().await;
    }
}
