//! The cluster: a full mesh of nodes linked over authenticated QUIC.
//!
//! Each node tells every peer which subjects its local clients are
//! interested in (a full sync when a link comes up, deltas after), and a
//! message crosses a link only when the far node has matching interest.
//! Messages that arrive over a link are delivered to local clients only, so
//! nothing travels more than one hop and nothing loops. A queue group gets
//! each message once cluster-wide: a local member is preferred, otherwise one
//! node with a member is chosen.

mod reload;
pub mod wire;

use bytes::Bytes;
use parking_lot::{Mutex, RwLock};
use prost::Message;
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime};
use tokio::sync::mpsc;
use transport::quic::{FrameReceiver, FrameSender, LinkConfig, LinkError, QuicEndpoint, QuicLink};

use crate::outbound::{Outbound, PushError};
use crate::server::Server;
use crate::sublist::{SubItem, Sublist};
use wire::{control::Kind, RoutedMsg};

/// Message streams per link direction: a publisher's messages always use the
/// same stream (order kept), different publishers spread over several, so a
/// large message delays only the publishers that share its stream.
const MESSAGE_STREAMS: usize = 4;

/// Bytes buffered per message stream before messages for a peer are dropped
/// (a peer that is away or too slow must not make this node grow without
/// bound); raised to twice `max_payload` when that is larger.
const STREAM_MAX_PENDING: usize = 8 * 1024 * 1024;

/// A batch at least this large marks its stream as carrying bulk data.
const BULK_BATCH: usize = 64 * 1024;

/// How long a replaced link stays open to deliver what it already carries.
const RETIRE_GRACE: Duration = Duration::from_secs(2);

/// Failed dials in a row after which a route learned by gossip is dropped.
const IMPLICIT_ATTEMPTS: u32 = 10;

/// How refusals of a second process with the same node key begin, on the
/// refusing node's log and in the close reason the refused node logs.
const DUPLICATE_KEY: &str = "duplicate node key";

/// Cluster name used when none is configured, so nodes started without
/// `--cluster_name` still agree.
pub const DEFAULT_CLUSTER_NAME: &str = "tern";

/// Cluster settings, as nats-server's `cluster {}` block and flags give them.
#[derive(Debug, Clone, Default)]
pub struct ClusterOptions {
    pub name: String,
    /// UDP address of the QUIC endpoint.
    pub listen: Option<SocketAddr>,
    /// Seed routes, `host:port` (schemes already stripped).
    pub routes: Vec<String>,
    /// `host:port` other nodes should dial to reach this one.
    pub advertise: Option<String>,
    /// Keep this node's client URL out of other nodes' `connect_urls`.
    pub no_advertise: bool,
    /// Public keys (`N...`) allowed to link; empty means any node.
    pub peers: Vec<String>,
    /// Keep-alive and idle timeout of links (`cluster { keepalive,
    /// idle_timeout }`): how fast a dead peer is declared dead.
    pub link: LinkConfig,
}

impl ClusterOptions {
    /// Whether clustering is configured at all.
    pub fn enabled(&self) -> bool {
        self.listen.is_some()
    }
}

/// A peer's interest as the trie stores it.
#[derive(Clone)]
struct RemoteInterest {
    id: u64,
}

impl SubItem for RemoteInterest {
    fn id(&self) -> u64 {
        self.id
    }
}

/// One live link to a peer.
pub struct Link {
    pub node_id: String,
    pub server_name: String,
    pub cluster_url: String,
    pub client_url: String,
    pub quic: QuicLink,
    pub dialed_by_me: bool,
    /// The dialer's nonce from the hello, the tie-breaker between racing links.
    pub nonce: u64,
    /// The peer process's boot id (see `Hello::boot_id`).
    pub boot_id: u64,
    pub started: SystemTime,
    remote: Sublist<RemoteInterest>,
    remote_ids: Mutex<HashMap<(Bytes, Bytes), u64>>,
    next_id: AtomicU64,
    control: mpsc::UnboundedSender<Vec<u8>>,
    streams: Vec<Outbound>,
    pub in_msgs: AtomicU64,
    pub in_bytes: AtomicU64,
    pub out_msgs: AtomicU64,
    pub out_bytes: AtomicU64,
    /// Messages dropped because the peer fell too far behind.
    pub dropped: AtomicU64,
    /// Interest frames queued to the peer so far.
    interest_sent: AtomicU64,
    /// Interest frames received from the peer and applied so far.
    interest_applied: AtomicU64,
    interest_progress: tokio::sync::Notify,
}

impl Link {
    /// Number of interests (subject, queue) the peer has announced.
    pub fn remote_subscriptions(&self) -> usize {
        self.remote.count()
    }

    /// The subjects (with queue groups as `subject queue`) the peer announced.
    pub fn remote_subjects(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .remote_ids
            .lock()
            .keys()
            .map(|(s, q)| {
                let s = String::from_utf8_lossy(s);
                if q.is_empty() {
                    s.into_owned()
                } else {
                    format!("{s} {}", String::from_utf8_lossy(q))
                }
            })
            .collect();
        v.sort();
        v
    }

    fn send_control(&self, kind: Kind) {
        if matches!(kind, Kind::Interest(_)) {
            self.interest_sent.fetch_add(1, Ordering::Release);
        }
        let _ = self.control.send(wire::encode_control(kind));
    }

    /// Copies the interest `other` (a link to the same peer) has learned.
    fn adopt_interest(&self, other: &Link) {
        let theirs: Vec<(Bytes, Bytes)> = other.remote_ids.lock().keys().cloned().collect();
        let items = theirs
            .into_iter()
            .map(|(subject, queue)| wire::Interest {
                subject,
                queue,
                weight: 1,
                remove: false,
            })
            .collect();
        self.apply_interest_items(wire::InterestBatch { items, full: false });
    }

    /// Takes the link out of service without losing what it carries: the
    /// caller has stopped routing to it; buffered batches are flushed and the
    /// streams finished, and the connection closes after a grace period.
    fn retire(self: &Arc<Self>, reason: &'static str) {
        for s in &self.streams {
            s.close();
        }
        let link = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(RETIRE_GRACE).await;
            link.quic.close(reason);
        });
    }

    /// Waits until the peer's interest frames up to `version` are applied, so
    /// a message is not delivered ahead of interest changes sent before it.
    /// Bounded: a control stream that stalls this long is a dead link anyway.
    async fn await_interest(&self, version: u64) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let progressed = self.interest_progress.notified();
            if self.interest_applied.load(Ordering::Acquire) >= version {
                return;
            }
            if tokio::time::timeout_at(deadline, progressed).await.is_err() {
                return;
            }
        }
    }

    fn stream_for(&self, publisher: u64) -> &Outbound {
        &self.streams[publisher as usize % self.streams.len()]
    }

    /// Queues a message on the publisher's stream without waiting.
    fn send_msg(&self, publisher: u64, msg: &RoutedMsg) -> SendStatus {
        let size = (msg.payload.len() + msg.headers.as_ref().map_or(0, |h| h.len())) as u64;
        match self
            .stream_for(publisher)
            .push(Some(size), |b| wire::append_to_batch(b, msg))
        {
            Ok(()) => {
                self.out_msgs.fetch_add(1, Ordering::Relaxed);
                self.out_bytes.fetch_add(size, Ordering::Relaxed);
                SendStatus::Sent(size)
            }
            Err(PushError::SlowConsumer) => SendStatus::Full,
            Err(PushError::Closed) => {
                self.count_dropped("link closed");
                SendStatus::Closed
            }
        }
    }

    /// Queues a message once the publisher's stream has room: a busy link
    /// pushes back on the publisher (its reader waits, so TCP pushes back on
    /// the client) instead of dropping, as a TCP route does on nats-server.
    /// Only a link that takes nothing for `wait` (the write deadline) loses
    /// the message, and is closed as a slow consumer; a closed link drops it.
    /// Returns the bytes queued, `None` if the message was dropped.
    async fn send_waiting(&self, publisher: u64, msg: &RoutedMsg, wait: Duration) -> Option<u64> {
        let deadline = tokio::time::Instant::now() + wait;
        let stream = self.stream_for(publisher);
        loop {
            let drained = stream.drained_signal();
            tokio::pin!(drained);
            drained.as_mut().enable();
            match self.send_msg(publisher, msg) {
                SendStatus::Sent(size) => return Some(size),
                SendStatus::Closed => return None,
                SendStatus::Full => {}
            }
            if self.quic.close_reason().is_some() {
                self.count_dropped("link closed");
                return None;
            }
            if tokio::time::timeout_at(deadline, drained).await.is_err() {
                tracing::error!(
                    peer = %self.node_id,
                    "cluster link took nothing for {wait:?} (write deadline): closing it as a slow consumer"
                );
                self.count_dropped("slow link");
                self.quic.close("slow consumer: write deadline exceeded");
                return None;
            }
        }
    }

    fn count_dropped(&self, why: &str) {
        if self.dropped.fetch_add(1, Ordering::Relaxed) == 0 {
            tracing::warn!(peer = %self.node_id, "dropping messages for cluster peer: {why}");
        }
    }

    fn apply_interest(&self, batch: wire::InterestBatch) {
        self.apply_interest_items(batch);
        self.interest_applied.fetch_add(1, Ordering::Release);
        self.interest_progress.notify_waiters();
    }

    fn apply_interest_items(&self, batch: wire::InterestBatch) {
        let mut ids = self.remote_ids.lock();
        if batch.full {
            for ((subject, queue), id) in ids.drain() {
                self.remote.remove(&subject, queue_of(&queue), id);
            }
        }
        for item in batch.items {
            let key = (item.subject.clone(), item.queue.clone());
            if item.remove {
                if let Some(id) = ids.remove(&key) {
                    self.remote.remove(&item.subject, queue_of(&item.queue), id);
                }
            } else if let std::collections::hash_map::Entry::Vacant(slot) = ids.entry(key) {
                let id = self.next_id.fetch_add(1, Ordering::Relaxed);
                let q = queue_of(&item.queue);
                if self
                    .remote
                    .insert(&item.subject, q, RemoteInterest { id })
                    .is_ok()
                {
                    slot.insert(id);
                }
            }
        }
    }
}

/// What became of a message handed to a link.
enum SendStatus {
    /// Queued; its payload-and-header bytes.
    Sent(u64),
    /// The stream is at its limit: wait for it to drain (`Link::send_waiting`).
    Full,
    /// The link is closing; the message was dropped and counted.
    Closed,
}

/// Messages a publisher must wait to hand to busy links (see
/// [`Cluster::forward`]).
#[derive(Default)]
pub struct Blocked(Vec<(Arc<Link>, RoutedMsg)>);

impl Blocked {
    /// Whether no link pushed back.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Hands every message over once its link has room, waiting at most the
    /// write deadline `wait` per link. Returns the messages and bytes queued.
    pub async fn send(self, publisher: u64, wait: Duration) -> (u64, u64) {
        let (mut msgs, mut bytes) = (0, 0);
        for (link, msg) in self.0 {
            if let Some(size) = link.send_waiting(publisher, &msg, wait).await {
                msgs += 1;
                bytes += size;
            }
        }
        (msgs, bytes)
    }
}

fn queue_of(q: &Bytes) -> Option<&[u8]> {
    (!q.is_empty()).then_some(&q[..])
}

/// The cluster state of one node.
pub struct Cluster {
    pub opts: ClusterOptions,
    pub node_id: String,
    server: Weak<Server>,
    endpoint: QuicEndpoint,
    /// Snapshot of live links for the publish path.
    links: RwLock<Vec<Arc<Link>>>,
    by_node: Mutex<HashMap<String, Arc<Link>>>,
    /// Local interest counts, (subject, queue) -> subscriptions.
    local: Mutex<HashMap<(Bytes, Bytes), u32>>,
    /// Cluster URLs with a dial loop running.
    dialing: Mutex<HashSet<String>>,
    /// When each (key, address) refused as a duplicate key was last logged.
    conflicts_logged: Mutex<HashMap<(String, SocketAddr), std::time::Instant>>,
    /// The configured routes now (a config reload may change them); a dial
    /// loop for a route no longer listed ends.
    routes: Mutex<Vec<String>>,
    /// The link each configured route's dial loop is running, to close it
    /// when the route is removed.
    route_links: Mutex<HashMap<String, QuicLink>>,
    /// The allowed peer keys now, sorted (a config reload may change them).
    current_peers: Mutex<Vec<String>>,
    my_cluster_url: String,
    my_client_url: String,
    stopping: AtomicBool,
    /// Bytes a message stream may buffer for a peer.
    stream_max: usize,
    /// Random per process start, announced in hellos and gossip.
    boot_id: u64,
}

impl Cluster {
    /// Binds the QUIC endpoint and starts accepting and dialing.
    pub fn start(
        server: &Arc<Server>,
        opts: ClusterOptions,
        identity: &peer::ServerIdentity,
        client_url: String,
    ) -> Result<Arc<Cluster>, LinkError> {
        let listen = opts.listen.expect("cluster listen address");
        let mut endpoint = QuicEndpoint::bind(listen, identity, opts.peers.clone(), opts.link)?;
        // A batch frame holds up to a stream's pending bytes plus one message.
        let stream_max = STREAM_MAX_PENDING.max(2 * server.opts.max_payload);
        endpoint.set_max_frame(stream_max + server.opts.max_payload + 64 * 1024);
        let bound = endpoint.local_addr().map_err(LinkError::Io)?;
        let my_cluster_url = opts
            .advertise
            .clone()
            .unwrap_or_else(|| advertise_addr(bound));
        let cluster = Arc::new(Cluster {
            node_id: identity.public_key(),
            server: Arc::downgrade(server),
            endpoint,
            links: RwLock::new(Vec::new()),
            by_node: Mutex::new(HashMap::new()),
            local: Mutex::new(HashMap::new()),
            dialing: Mutex::new(HashSet::new()),
            conflicts_logged: Mutex::new(HashMap::new()),
            routes: Mutex::new(opts.routes.clone()),
            route_links: Mutex::new(HashMap::new()),
            current_peers: Mutex::new({
                let mut p = opts.peers.clone();
                p.sort();
                p
            }),
            my_cluster_url,
            my_client_url: if opts.no_advertise {
                String::new()
            } else {
                client_url
            },
            stopping: AtomicBool::new(false),
            stream_max,
            boot_id: rand::random(),
            opts,
        });
        tracing::info!("Cluster name is {}", cluster.opts.name);
        tracing::info!("Listening for route connections on {bound} (QUIC)");
        if cluster.opts.peers.is_empty() {
            warn_open(bound);
        }
        tokio::spawn(cluster.clone().accept_loop());
        for route in cluster.opts.routes.clone() {
            cluster.spawn_dialer(route, None);
        }
        Ok(cluster)
    }

    /// The UDP address the endpoint is bound to.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.endpoint.local_addr().ok()
    }

    /// Live links, for monitoring.
    pub fn links(&self) -> Vec<Arc<Link>> {
        self.links.read().clone()
    }

    /// Client URLs of this node and every linked node, for INFO `connect_urls`.
    pub fn connect_urls(&self) -> Vec<String> {
        let mut urls: Vec<String> = std::iter::once(self.my_client_url.clone())
            .chain(self.links.read().iter().map(|l| l.client_url.clone()))
            .filter(|u| !u.is_empty())
            .collect();
        urls.sort();
        urls.dedup();
        urls
    }

    /// Stops dialing and closes every link.
    pub fn shutdown(&self) {
        self.stopping.store(true, Ordering::Relaxed);
        for link in self.links.read().iter() {
            link.quic.close("shutdown");
        }
        self.endpoint.close("shutdown");
    }

    /// Records a change in local interest and tells every peer about transitions.
    pub fn interest_changed(&self, subject: &Bytes, queue: Option<&Bytes>, delta: i32) {
        let queue = queue.cloned().unwrap_or_default();
        let key = (subject.clone(), queue.clone());
        let mut local = self.local.lock();
        let count = local.entry(key.clone()).or_insert(0);
        let before = *count;
        *count = (before as i64 + delta as i64).max(0) as u32;
        let after = *count;
        if after == 0 {
            local.remove(&key);
        }
        // Plain interest only changes at 0 <-> 1; queue weights change with every member.
        let announce = (before == 0) != (after == 0) || (!queue.is_empty() && before != after);
        if !announce {
            return;
        }
        let item = wire::Interest {
            subject: subject.clone(),
            queue,
            weight: after,
            remove: after == 0,
        };
        // Sent while `local` is held, so a link's full sync and later deltas stay in order.
        for link in self.links.read().iter() {
            link.send_control(Kind::Interest(wire::InterestBatch {
                items: vec![item.clone()],
                full: false,
            }));
        }
    }

    /// Sends a locally published message to every peer with matching interest.
    /// `local_queues` are the queue groups already served on this node.
    /// Returns whether any peer was sent the message, and what was queued
    /// (the server totals count messages sent to peers, as nats-server's
    /// /varz counts messages sent on routes). Messages for links that are
    /// full land in `blocked`, which the publisher must then
    /// [`Blocked::send`] before it reads on.
    #[allow(clippy::too_many_arguments)]
    pub fn forward(
        &self,
        publisher: u64,
        subject: &Bytes,
        reply: Option<&Bytes>,
        headers: Option<&Bytes>,
        payload: &Bytes,
        local_queues: &[Bytes],
        blocked: &mut Blocked,
    ) -> Forwarded {
        let mut forwarded = Forwarded::default();
        let links = self.links.read();
        if links.is_empty() {
            return forwarded;
        }
        let n = links.len();
        let start = crate::client::fastrand(n);
        let mut served: Vec<Bytes> = Vec::new();
        // Healthy links first: a queue group is served by a suspect peer
        // (one that went silent, likely dead; see `QuicLink::is_suspect`)
        // only when no other peer has a member, so a killed node costs a
        // fraction of a second of its share instead of everything until the
        // idle timeout. A false alarm only moves a message to another member.
        let mut send = |link: &Arc<Link>| {
            self.forward_to(
                link,
                publisher,
                subject,
                reply,
                headers,
                payload,
                local_queues,
                &mut served,
                &mut forwarded,
                blocked,
            )
        };
        let mut suspects: Vec<&Arc<Link>> = Vec::new();
        for i in 0..n {
            let link = &links[(start + i) % n];
            if link.quic.is_suspect() {
                suspects.push(link);
            } else {
                send(link);
            }
        }
        suspects.into_iter().for_each(send);
        forwarded
    }

    /// One link's part of [`Cluster::forward`]: the message goes if the peer
    /// has plain interest or a member of a queue group not yet served.
    #[allow(clippy::too_many_arguments)]
    fn forward_to(
        &self,
        link: &Arc<Link>,
        publisher: u64,
        subject: &Bytes,
        reply: Option<&Bytes>,
        headers: Option<&Bytes>,
        payload: &Bytes,
        local_queues: &[Bytes],
        served: &mut Vec<Bytes>,
        forwarded: &mut Forwarded,
        blocked: &mut Blocked,
    ) {
        let result = link.remote.matches(subject);
        let plain = !result.plain.is_empty();
        let mut queues = Vec::new();
        for (q, _) in &result.queues {
            if !local_queues.contains(q) && !served.contains(q) {
                served.push(q.clone());
                queues.push(q.clone());
            }
        }
        if !plain && queues.is_empty() {
            return;
        }
        let msg = RoutedMsg {
            subject: subject.clone(),
            reply: reply.cloned().unwrap_or_default(),
            headers: headers.cloned(),
            payload: payload.clone(),
            plain,
            queues,
            interest_version: link.interest_sent.load(Ordering::Acquire),
        };
        match link.send_msg(publisher, &msg) {
            SendStatus::Sent(size) => {
                forwarded.msgs += 1;
                forwarded.bytes += size;
            }
            SendStatus::Full => blocked.0.push((link.clone(), msg)),
            SendStatus::Closed => {}
        }
        forwarded.any = true;
    }

    /// Why a link announced by `hello` from `addr` must be refused because
    /// another live process holds the same node key: this node's own key, or
    /// a peer already linked from another address with another boot id (a
    /// copied seed). Letting such a newcomer replace the established link
    /// made both flap hundreds of times a second and lose messages. A peer
    /// that restarted at the same address replaces its old link; one that
    /// restarted elsewhere is linked once the old link is found dead.
    fn key_conflict(&self, hello: &wire::Hello, addr: SocketAddr) -> Option<String> {
        if hello.node_id == self.node_id {
            return Some(format!(
                "{DUPLICATE_KEY} {}: it is this node's own key (this node is at {}), \
                 refusing {addr}",
                hello.node_id, self.my_cluster_url
            ));
        }
        let existing = self.link_to(&hello.node_id)?;
        let established = existing.quic.remote_addr();
        let alive = existing.quic.close_reason().is_none();
        (alive && existing.boot_id != hello.boot_id && established != addr).then(|| {
            format!(
                "{DUPLICATE_KEY} {}: already linked from {established}, refusing {addr}",
                hello.node_id
            )
        })
    }

    /// One error line per conflicting address a minute; repeats go to debug.
    fn log_key_conflict(&self, quic: &QuicLink, reason: &str) {
        let now = std::time::Instant::now();
        let mut logged = self.conflicts_logged.lock();
        logged.retain(|_, t| now.duration_since(*t) < Duration::from_secs(60));
        let key = (quic.peer_key().to_owned(), quic.remote_addr());
        match logged.entry(key) {
            std::collections::hash_map::Entry::Occupied(_) => tracing::debug!("{reason}"),
            std::collections::hash_map::Entry::Vacant(slot) => {
                slot.insert(now);
                tracing::error!("{reason}");
            }
        }
    }

    fn has_link(&self, node_id: &str) -> bool {
        self.by_node.lock().contains_key(node_id)
    }

    fn link_to(&self, node_id: &str) -> Option<Arc<Link>> {
        self.by_node.lock().get(node_id).cloned()
    }

    /// Accepts peers' QUIC connections. A refused handshake concerns only
    /// that peer, so there is nothing to back off from (QUIC connections do
    /// not take file descriptors); the endpoint summarises them in the log.
    async fn accept_loop(self: Arc<Self>) {
        while let Some(res) = self.endpoint.accept().await {
            match res {
                Ok(quic) => {
                    let me = self.clone();
                    tokio::spawn(async move {
                        let _ = me.run_link(quic, false).await;
                    });
                }
                // The endpoint logs failed handshakes itself, summarised per
                // interval (a flood of them must not become a flood of lines).
                Err(e) => tracing::debug!("cluster link refused: {e}"),
            }
        }
    }

    /// Starts keeping a link to `url`. `learned` is the node id when the URL
    /// came from gossip (an implicit route) rather than the configuration.
    fn spawn_dialer(self: &Arc<Self>, url: String, learned: Option<String>) {
        if url == self.my_cluster_url || !self.dialing.lock().insert(url.clone()) {
            return;
        }
        tokio::spawn(self.clone().dial_loop(url, learned));
    }

    /// Keeps a link to `url` up: dials, runs the link, redials with
    /// exponential backoff and jitter while no link to that node exists.
    /// Configured routes are dialed for as long as the node runs, like
    /// nats-server's; a route learned by gossip is given up after
    /// [`IMPLICIT_ATTEMPTS`] failures in a row (gossip restarts it if the node
    /// is still around).
    async fn dial_loop(self: Arc<Self>, url: String, learned: Option<String>) {
        let implicit = learned.is_some();
        let mut backoff = Duration::from_millis(100);
        let mut node: Option<String> = learned;
        let mut logged_failure = false;
        let mut failures = 0;
        while !self.stopping.load(Ordering::Relaxed) {
            if !implicit && !self.routes.lock().contains(&url) {
                tracing::debug!("route {url} removed from the configuration, not dialing it");
                break;
            }
            if let Some(id) = &node {
                if self.has_link(id) {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
            }
            let dialed_at = tokio::time::Instant::now();
            let attempt = match self.dial(&url).await {
                Ok(quic) => {
                    tracing::debug!("QUIC handshake with {url} took {:?}", dialed_at.elapsed());
                    if quic.peer_key() == self.node_id {
                        // A seed route that points at this very node.
                        quic.close("self");
                        tracing::debug!("route {url} is this node, not dialing it");
                        break;
                    }
                    node = Some(quic.peer_key().to_owned());
                    if self
                        .link_to(quic.peer_key())
                        .is_some_and(|l| l.quic.close_reason().is_none())
                    {
                        // Linked already (the peer dialed us): keep that link.
                        quic.close("already linked");
                        continue;
                    }
                    // A link refused after the handshake (cluster name, bad
                    // hello) is a failure like any other: back off.
                    if !implicit {
                        self.route_links.lock().insert(url.clone(), quic.clone());
                    }
                    let result = self.clone().run_link(quic, true).await;
                    if !implicit {
                        self.route_links.lock().remove(&url);
                    }
                    result
                }
                Err(e) => Err(e),
            };
            match attempt {
                Ok(_) => {
                    logged_failure = false;
                    failures = 0;
                    backoff = Duration::from_millis(100);
                    continue;
                }
                Err(e) => {
                    failures += 1;
                    if implicit && failures >= IMPLICIT_ATTEMPTS {
                        tracing::debug!("giving up implicit route {url}: {e}");
                        break;
                    }
                    if !logged_failure {
                        if e.contains(DUPLICATE_KEY) {
                            // This process shares its key with a running node.
                            tracing::error!("cannot link to route {url}: {e}");
                        } else {
                            tracing::warn!("cannot link to route {url}: {e}");
                        }
                        logged_failure = true;
                    } else {
                        tracing::debug!("cannot link to route {url}: {e}");
                    }
                }
            }
            let jitter =
                Duration::from_millis(rand::random::<u64>() % (backoff.as_millis() as u64 / 2 + 1));
            tokio::time::sleep(backoff + jitter).await;
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
        self.dialing.lock().remove(&url);
    }

    async fn dial(&self, url: &str) -> Result<QuicLink, String> {
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host(url)
            .await
            .map_err(|e| format!("resolve {url}: {e}"))?
            .collect();
        let mut last = format!("{url} resolved to no address");
        for addr in addrs {
            match self.endpoint.connect(addr).await {
                Ok(q) => return Ok(q),
                Err(e) => last = e.to_string(),
            }
        }
        Err(last)
    }

    /// Runs one authenticated link until it ends. Returns the peer's node id.
    async fn run_link(self: Arc<Self>, quic: QuicLink, dialed: bool) -> Result<String, String> {
        let server = self.server.upgrade().ok_or("server gone")?;
        if !self.endpoint.allows_peer(quic.peer_key()) {
            // Authenticated before a reload removed it from the allow-list.
            quic.close("peer not allowed");
            return Err(format!("peer {} is not allowed", quic.peer_key()));
        }
        let mut hello = wire::Hello {
            node_id: self.node_id.clone(),
            cluster_name: self.opts.name.clone(),
            server_name: server.info.server_name.clone(),
            cluster_url: self.my_cluster_url.clone(),
            client_url: self.my_client_url.clone(),
            version: wire::PROTOCOL_VERSION,
            link_nonce: if dialed { rand::random() } else { 0 },
            boot_id: self.boot_id,
        };
        let exchange = async {
            let mut control = if dialed {
                quic.open_control().await?
            } else {
                quic.accept_control().await?
            };
            if dialed {
                control
                    .send_frame(&wire::encode_control(Kind::Hello(hello.clone())))
                    .await?;
            }
            let theirs = control.recv_frame().await?;
            let mut refusal = None;
            if !dialed {
                // The acceptor echoes the dialer's nonce so both ends agree on it.
                if let Some(Ok(wire::Control {
                    kind: Some(Kind::Hello(h)),
                })) = theirs.clone().map(wire::Control::decode)
                {
                    hello.link_nonce = h.link_nonce;
                    // Refused before answering, so the dialer's setup fails
                    // (and backs off) instead of forming a link that closes.
                    refusal = self.key_conflict(&h, quic.remote_addr());
                }
                if refusal.is_none() {
                    control
                        .send_frame(&wire::encode_control(Kind::Hello(hello.clone())))
                        .await?;
                }
            }
            Ok::<_, LinkError>((control, theirs, refusal))
        };
        let hello_at = tokio::time::Instant::now();
        let (control, theirs, refusal) = tokio::time::timeout(Duration::from_secs(10), exchange)
            .await
            .map_err(|_| "hello timed out".to_owned())?
            .map_err(|e| e.to_string())?;
        if let Some(reason) = refusal {
            self.log_key_conflict(&quic, &reason);
            quic.close(&reason);
            return Err(reason);
        }
        let theirs = match theirs.map(wire::Control::decode) {
            Some(Ok(wire::Control {
                kind: Some(Kind::Hello(h)),
            })) => h,
            _ => {
                quic.close("expected hello");
                return Err("peer did not say hello".into());
            }
        };
        if theirs.node_id != quic.peer_key() {
            quic.close("hello does not match key");
            return Err(format!(
                "peer claims {} but authenticated as {}",
                theirs.node_id,
                quic.peer_key()
            ));
        }
        if theirs.cluster_name != self.opts.name {
            tracing::error!(
                "rejecting link from {}: cluster name {:?} does not match {:?}",
                theirs.node_id,
                theirs.cluster_name,
                self.opts.name
            );
            quic.close("cluster name mismatch");
            return Err("cluster name mismatch".into());
        }
        tracing::debug!(
            "cluster hello with {} took {:?}",
            theirs.server_name,
            hello_at.elapsed()
        );
        let node_id = theirs.node_id.clone();
        let (control_tx, control_rx) = mpsc::unbounded_channel();
        let link = Arc::new(Link {
            node_id: node_id.clone(),
            server_name: theirs.server_name.clone(),
            cluster_url: theirs.cluster_url.clone(),
            client_url: theirs.client_url.clone(),
            quic: quic.clone(),
            dialed_by_me: dialed,
            nonce: theirs.link_nonce.max(hello.link_nonce),
            boot_id: theirs.boot_id,
            started: SystemTime::now(),
            remote: Sublist::new(),
            remote_ids: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            control: control_tx,
            streams: (0..MESSAGE_STREAMS)
                .map(|_| Outbound::new(self.stream_max))
                .collect(),
            in_msgs: AtomicU64::new(0),
            in_bytes: AtomicU64::new(0),
            out_msgs: AtomicU64::new(0),
            out_bytes: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            interest_sent: AtomicU64::new(0),
            interest_applied: AtomicU64::new(0),
            interest_progress: tokio::sync::Notify::new(),
        });
        let (send, recv) = control.split();
        if !self.register(&link) {
            if let Some(reason) = self.key_conflict(&theirs, quic.remote_addr()) {
                self.log_key_conflict(&quic, &reason);
                quic.close(&reason);
                return Err(reason);
            }
            quic.close("duplicate link");
            return Ok(node_id);
        }
        tracing::info!(
            "Route connection created for {} ({}) at {}",
            link.server_name,
            node_id,
            quic.remote_addr()
        );
        let writer = tokio::spawn(control_writer(send, control_rx));
        for (i, _) in link.streams.iter().enumerate() {
            tokio::spawn(stream_writer(link.clone(), i));
        }
        tokio::spawn(stream_acceptor(server.clone(), link.clone()));
        self.announce_link(&link);
        server.connect_urls_changed();
        let reason = self.control_reader(&link, recv).await;
        self.unregister(&link);
        for s in &link.streams {
            s.abort();
        }
        writer.abort();
        quic.close("link closed");
        tracing::info!("Route connection to {} closed: {reason}", link.server_name);
        server.connect_urls_changed();
        Ok(node_id)
    }

    /// Adds a link, resolving two live links to the same node the same way
    /// on both ends: the one dialed by the node with the smaller id wins, and
    /// between links dialed by the same node, the smaller nonce.
    fn register(&self, link: &Arc<Link>) -> bool {
        let local = self.local.lock();
        let mut by = self.by_node.lock();
        let rank = |l: &Link| (l.dialed_by_me != (self.node_id < l.node_id), l.nonce);
        if let Some(existing) = by.get(&link.node_id) {
            let closed = existing.quic.close_reason().is_some();
            let restarted = existing.boot_id != link.boot_id
                && existing.quic.remote_addr() == link.quic.remote_addr();
            if closed || restarted {
                existing.quic.close("peer restarted");
            } else if existing.boot_id != link.boot_id {
                // Another process with the same key (see `key_conflict`).
                return false;
            } else if rank(existing) <= rank(link) {
                return false;
            } else {
                // The peer's interest is the same on both links: keep routing
                // by it until the peer's full sync arrives on the new one.
                link.adopt_interest(existing);
                existing.retire("duplicate link");
            }
        }
        by.insert(link.node_id.clone(), link.clone());
        *self.links.write() = by.values().cloned().collect();
        // Full interest sync, queued under `local` so later deltas follow it.
        let items = local
            .iter()
            .map(|((s, q), n)| wire::Interest {
                subject: s.clone(),
                queue: q.clone(),
                weight: *n,
                remove: false,
            })
            .collect();
        link.send_control(Kind::Interest(wire::InterestBatch { items, full: true }));
        true
    }

    fn unregister(&self, link: &Arc<Link>) {
        let mut by = self.by_node.lock();
        if by.get(&link.node_id).is_some_and(|l| Arc::ptr_eq(l, link)) {
            by.remove(&link.node_id);
            *self.links.write() = by.values().cloned().collect();
        }
    }

    /// Gossip for a link that just came up, so every member ends up linked
    /// to every other: the new peer hears of every member this node knows,
    /// and every other peer hears of the new one. Both snapshots are taken
    /// after `link` registered, so of two links registering at once the
    /// later one's gossip covers the pair. Only the new member goes to the
    /// old peers: re-sending the whole list on every link made gossip grow
    /// with the cube of the cluster size (at 64 nodes, about 5.6 million
    /// member entries, over half a gigabyte, while the mesh formed).
    fn announce_link(&self, link: &Arc<Link>) {
        let links = self.links.read().clone();
        let info = |l: &Link| wire::NodeInfo {
            node_id: l.node_id.clone(),
            cluster_url: l.cluster_url.clone(),
            client_url: l.client_url.clone(),
            boot_id: l.boot_id,
        };
        let mut nodes: Vec<wire::NodeInfo> = links
            .iter()
            .filter(|l| !Arc::ptr_eq(l, link))
            .map(|l| info(l))
            .collect();
        nodes.push(wire::NodeInfo {
            node_id: self.node_id.clone(),
            cluster_url: self.my_cluster_url.clone(),
            client_url: self.my_client_url.clone(),
            boot_id: self.boot_id,
        });
        link.send_control(Kind::Gossip(wire::Gossip { nodes }));
        let newcomer = wire::Gossip {
            nodes: vec![info(link)],
        };
        for l in links.iter().filter(|l| !Arc::ptr_eq(l, link)) {
            l.send_control(Kind::Gossip(newcomer.clone()));
        }
    }

    async fn control_reader(self: &Arc<Self>, link: &Arc<Link>, mut recv: FrameReceiver) -> String {
        loop {
            let frame = match recv.recv_frame().await {
                Ok(Some(f)) => f,
                Ok(None) => return "control stream ended".into(),
                Err(e) => return e.to_string(),
            };
            let kind = match wire::Control::decode(frame) {
                Ok(wire::Control { kind: Some(k) }) => k,
                _ => return "undecodable control frame".into(),
            };
            match kind {
                Kind::Interest(batch) => link.apply_interest(batch),
                Kind::Gossip(g) => {
                    let mut learned = false;
                    for n in g.nodes {
                        if n.node_id == self.node_id || n.cluster_url.is_empty() {
                            continue;
                        }
                        if let Some(l) = self.link_to(&n.node_id) {
                            if l.boot_id == n.boot_id || l.cluster_url != n.cluster_url {
                                // Known; or another process with the same key
                                // elsewhere, which must not cost us the link.
                                continue;
                            }
                            // The node restarted; our link to it is a leftover
                            // the idle timeout has not noticed yet.
                            tracing::info!("{} restarted, dropping the old link", l.server_name);
                            l.quic.close("peer restarted");
                        }
                        learned = true;
                        // Of two nodes that learn of each other, the smaller id dials.
                        if self.node_id < n.node_id {
                            self.spawn_dialer(n.cluster_url, Some(n.node_id));
                        }
                    }
                    if learned {
                        tracing::debug!("learned cluster members from {}", link.node_id);
                    }
                }
                Kind::Ping(p) if !p.pong => link.send_control(Kind::Ping(wire::Ping {
                    nonce: p.nonce,
                    pong: true,
                })),
                Kind::Ping(_) => {}
                Kind::Hello(_) => return "unexpected second hello".into(),
            }
        }
    }
}

async fn control_writer(mut send: FrameSender, mut rx: mpsc::UnboundedReceiver<Vec<u8>>) {
    while let Some(frame) = rx.recv().await {
        if send.send_frame(&frame).await.is_err() {
            return;
        }
    }
}

/// Ships one message stream's buffered batch as frames.
async fn stream_writer(link: Arc<Link>, index: usize) {
    let out = &link.streams[index];
    let mut sender: Option<FrameSender> = None;
    let mut bulk_priority = false;
    while let Some(batch) = out.next_batch().await {
        if sender.is_none() {
            match link.quic.open_uni().await {
                Ok(s) => sender = Some(s),
                Err(_) => return,
            }
        }
        if let Some(s) = sender.as_mut() {
            // A stream busy with bulk data yields to streams carrying small
            // messages: QUIC sends higher-priority streams' data first, so a
            // small message does not queue behind megabytes of another
            // publisher's payloads (order within a stream is unaffected).
            let bulk = batch.len() >= BULK_BATCH;
            if bulk != bulk_priority {
                let _ = s.set_priority(if bulk { -1 } else { 0 });
                bulk_priority = bulk;
            }
            if s.send_frame_bytes(batch.freeze()).await.is_err() {
                return;
            }
        }
    }
    // Closed (retired link): end the stream cleanly after the last batch.
    if let Some(mut s) = sender {
        let _ = s.finish();
    }
}

/// Accepts the peer's message streams and delivers what arrives locally.
async fn stream_acceptor(server: Arc<Server>, link: Arc<Link>) {
    while let Ok(recv) = link.quic.accept_uni().await {
        tokio::spawn(stream_reader(server.clone(), link.clone(), recv));
    }
}

async fn stream_reader(server: Arc<Server>, link: Arc<Link>, mut recv: FrameReceiver) {
    while let Ok(Some(frame)) = recv.recv_frame().await {
        let batch = match wire::MessageBatch::decode(frame) {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(peer = %link.node_id, "undecodable message batch: {e}");
                link.quic.close("undecodable message batch");
                return;
            }
        };
        let mut msgs = 0u64;
        let mut bytes = 0u64;
        for m in &batch.msgs {
            if m.interest_version > link.interest_applied.load(Ordering::Acquire) {
                link.await_interest(m.interest_version).await;
            }
            msgs += 1;
            bytes += (m.payload.len() + m.headers.as_ref().map_or(0, |h| h.len())) as u64;
            server.deliver_routed(m);
        }
        link.in_msgs.fetch_add(msgs, Ordering::Relaxed);
        link.in_bytes.fetch_add(bytes, Ordering::Relaxed);
        // nats-server's /varz counts messages received on routes as input.
        server.add_traffic(msgs, bytes, 0, 0);
    }
}

/// The one warning for a cluster without pinned peer keys.
fn warn_open(bound: SocketAddr) {
    tracing::warn!(
        "cluster has no `authorization {{ peers }}` list: any node that reaches {bound} may join"
    );
}

/// What [`Cluster::forward`] did with one message.
#[derive(Debug, Default, Clone, Copy)]
pub struct Forwarded {
    /// A peer had interest (even if its link dropped the message).
    pub any: bool,
    /// Copies queued on links, and their payload-and-header bytes.
    pub msgs: u64,
    pub bytes: u64,
}

/// A `host:port` peers can dial for a bound address: the address itself, or
/// this host's outbound address when bound to all interfaces.
pub fn advertise_addr(bound: SocketAddr) -> String {
    if !bound.ip().is_unspecified() {
        return bound.to_string();
    }
    let ip = outbound_ip().unwrap_or_else(|| "127.0.0.1".parse().expect("loopback"));
    SocketAddr::new(ip, bound.port()).to_string()
}

/// The address this host uses to reach other hosts (a UDP "connect" sends nothing).
fn outbound_ip() -> Option<std::net::IpAddr> {
    let s = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    s.connect("10.255.255.255:9").ok()?;
    s.local_addr().ok().map(|a| a.ip())
}
