//! The server: accepts connections, owns the subscription trie and the
//! table of clients, and coordinates shutdown and lame-duck mode.

use parking_lot::{Mutex, RwLock};
use serde::Serialize;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use tokio::net::TcpListener;

use crate::client::{self, Client, CloseReason, SubRef};
use crate::options::Options;
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
    pub max_payload: usize,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub auth_required: bool,
}

/// The INFO a particular client is sent.
#[derive(Serialize)]
struct ClientInfo<'a> {
    #[serde(flatten)]
    base: &'a InfoBase,
    client_id: u64,
    client_ip: String,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    ldm: bool,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    connect_info: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    remote_account: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    connect_urls: Option<Vec<String>>,
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
    /// Becomes true when the server stops accepting clients.
    stop_accepting: tokio::sync::watch::Sender<bool>,
    /// Becomes true once the client listener is closed (new connections are
    /// refused by the kernel from then on).
    listener_closed: tokio::sync::watch::Sender<bool>,
    shutting_down: AtomicBool,
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
            max_payload: opts.max_payload,
            auth_required: opts.auth.required(),
        };
        Arc::new(Server {
            live: RwLock::new(Arc::new(opts.clone())),
            live_generation: AtomicU64::new(0),
            opts,
            info,
            sublist: Sublist::new(),
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
        *self.live.write() = Arc::new(opts);
        self.live_generation.fetch_add(1, Ordering::AcqRel);
    }

    /// A fresh subscription id.
    pub fn next_sub_id(&self) -> u64 {
        self.next_sub.fetch_add(1, Ordering::Relaxed)
    }

    /// Checks CONNECT credentials against the configured authorization.
    pub fn authenticate(
        &self,
        user: &Option<String>,
        pass: &Option<String>,
        token: &Option<String>,
    ) -> bool {
        let live = self.live();
        let auth = &live.auth;
        if !auth.required() {
            return true;
        }
        // Configured passwords and tokens may be bcrypt hashes.
        let secret_ok = |configured: &str, given: &Option<String>| {
            given
                .as_deref()
                .is_some_and(|g| peer::password::matches(configured, g))
        };
        if let Some(t) = &auth.token {
            if secret_ok(t, token) {
                return true;
            }
        }
        if let (Some(u), Some(p)) = (&auth.user, &auth.password) {
            if user.as_deref() == Some(u.as_str()) && secret_ok(p, pass) {
                return true;
            }
        }
        auth.users
            .iter()
            .any(|e| user.as_deref() == Some(e.user.as_str()) && secret_ok(&e.password, pass))
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
        base.auth_required = live.auth.required();
        let info = ClientInfo {
            base: &base,
            client_id: client.cid,
            client_ip: client.addr.ip().to_string(),
            ldm: self.lame_duck.load(Ordering::Relaxed),
            connect_info,
            remote_account: connect_info.then_some("$G"),
            connect_urls: self.cluster.get().map(|c| c.connect_urls()),
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
            name: meta.name,
            lang: meta.lang,
            version: meta.version,
            in_msgs: client.in_msgs.load(Ordering::Relaxed),
            in_bytes: client.in_bytes.load(Ordering::Relaxed),
            out_msgs: totals.msgs,
            out_bytes: totals.bytes,
            pending_bytes: client.out.pending_at_close(),
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

    fn start_client(self: Arc<Self>, stream: tokio::net::TcpStream, addr: SocketAddr) {
        if self.in_lame_duck() || self.shutting_down.load(Ordering::Relaxed) {
            return; // dropping the stream closes it
        }
        let cid = self.next_cid.fetch_add(1, Ordering::Relaxed);
        let live = self.live();
        let client = Arc::new(Client::new(cid, addr, live.max_pending));
        client.send_proto(&self.info_line(&client));
        {
            let mut clients = self.clients.lock();
            let max = live.max_connections;
            if max > 0 && clients.len() >= max {
                drop(clients);
                tracing::error!(%addr, "maximum connections exceeded");
                client.send_err("maximum connections exceeded");
                client.close(CloseReason::MaxConnectionsExceeded, false);
            } else {
                clients.insert(cid, client.clone());
                self.traffic
                    .total_connections
                    .fetch_add(1, Ordering::Relaxed);
            }
        }
        tracing::debug!(cid, %addr, "client connection created");
        let (reader, writer) = stream.into_split();
        tokio::spawn(client::serve(self, client, reader, writer));
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
