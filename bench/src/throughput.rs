//! Throughput scenarios: pub, sub, pubsub, fanout and queue.
//!
//! Publishers write one pre-built batch of identical frames over and over,
//! so producing a message costs nothing but its share of a `write`. Two
//! brakes keep the run measuring forwarding rather than buffering:
//! every ~256 KiB a publisher sends PING and, before sending the next
//! PING, waits for the previous PONG (the server has then consumed
//! everything up to it; one PING stays in flight so the pipe never drains),
//! and publishers never run more than `max_lead` messages ahead of the
//! slowest subscriber, so the server's per-subscriber backlog stays far
//! below slow-consumer limits. Both brakes behave the same whichever server
//! is measured.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio::time::{timeout, Instant};

use super::client::{self, err, BenchError, Conn, Result, CONNECT_TIMEOUT};
use super::counter::MsgCounter;
use super::report::Report;
use super::Config;

/// Bytes of frames written per `write` call.
const BATCH_BYTES: usize = 64 * 1024;
/// Default distance between PINGs, in bytes of published frames.
const PING_BYTES: usize = 256 * 1024;
/// Default publisher lead over the slowest subscriber, in bytes of frames.
const LEAD_BYTES: usize = 4 * 1024 * 1024;
/// Subscriber read buffer.
const READ_BYTES: usize = 256 * 1024;

/// A counter on its own cache line, so subscribers on different cores do
/// not slow each other down.
#[repr(align(128))]
#[derive(Default)]
struct Padded(AtomicU64);

/// State shared by the publishers, subscribers and the coordinator.
struct Shared {
    /// Messages each subscriber has seen.
    sub_counts: Vec<Padded>,
    /// Messages seen by all subscribers together.
    total: Padded,
    /// Messages written by all publishers together.
    published: Padded,
    /// Deliveries that complete the run.
    target: u64,
    /// Queue subscribers share the messages, so progress is the total.
    queue: bool,
    /// When `total` reached `target`.
    finished: Mutex<Option<Instant>>,
    /// Signalled when the run completes or a subscriber fails.
    done: Notify,
    /// Signalled on subscriber progress while a publisher is waiting.
    progress: Notify,
    /// Publishers currently waiting for subscribers to catch up.
    waiters: AtomicUsize,
    failed: AtomicBool,
    failure: Mutex<Option<String>>,
}

impl Shared {
    fn new(subs: usize, target: u64, queue: bool) -> Shared {
        Shared {
            sub_counts: (0..subs).map(|_| Padded::default()).collect(),
            total: Padded::default(),
            published: Padded::default(),
            target,
            queue,
            finished: Mutex::new(None),
            done: Notify::new(),
            progress: Notify::new(),
            waiters: AtomicUsize::new(0),
            failed: AtomicBool::new(false),
            failure: Mutex::new(None),
        }
    }

    /// How many published messages every subscriber (or, for a queue
    /// group, the group) has received.
    fn progress(&self) -> u64 {
        if self.queue {
            self.total.0.load(Ordering::Acquire)
        } else {
            self.sub_counts
                .iter()
                .map(|c| c.0.load(Ordering::Acquire))
                .min()
                .unwrap_or(0)
        }
    }

    fn fail(&self, why: String) {
        self.failure.lock().unwrap().get_or_insert(why);
        self.failed.store(true, Ordering::Release);
        self.done.notify_one();
        self.progress.notify_waiters();
    }

    fn failure(&self) -> Option<String> {
        self.failure.lock().unwrap().clone()
    }
}

/// What every publisher sends: the same frame, batched.
struct Plan {
    batch: Vec<u8>,
    frame_len: usize,
    per_batch: u64,
    ping_every: u64,
    max_lead: u64,
    stall: Duration,
}

/// Runs a throughput scenario described by `cfg`.
pub(crate) async fn run(cfg: &Config) -> Result<Report> {
    let mut frame = bytes::BytesMut::new();
    nats_proto::encode::write_pub(&mut frame, cfg.subject.as_bytes(), None, &payload(cfg.size));
    let frame_len = frame.len();
    let per_batch = (BATCH_BYTES / frame_len).max(1);
    let mut batch = Vec::with_capacity(per_batch * frame_len);
    for _ in 0..per_batch {
        batch.extend_from_slice(&frame);
    }
    let ping_msgs = if cfg.flush_every > 0 {
        cfg.flush_every
    } else {
        (PING_BYTES / frame_len).max(1) as u64
    };
    let per_batch = per_batch as u64;
    let delivered_frame = format!("MSG {} 1 {}\r\n", cfg.subject, cfg.size).len() + cfg.size + 2;
    let max_lead = if cfg.max_lead > 0 {
        cfg.max_lead
    } else {
        (LEAD_BYTES / delivered_frame) as u64
    };
    let plan = Arc::new(Plan {
        batch,
        frame_len,
        per_batch,
        ping_every: ping_msgs.div_ceil(per_batch).max(1),
        max_lead: max_lead.max(2 * per_batch),
        stall: cfg.stall,
    });

    let queue = cfg.queue.is_some();
    let target = if queue {
        cfg.msgs
    } else {
        cfg.msgs * cfg.subs as u64
    };
    let shared = Arc::new(Shared::new(cfg.subs, target, queue));

    // Subscriptions first, each confirmed by a PONG, so none misses a message.
    // Across a cluster each subscriber also takes a probe subscription, and
    // publishing waits until the probes get through (`sync_interest`).
    let probe = client::probe_prefix();
    let mut sub_conns = Vec::with_capacity(cfg.subs);
    for i in 0..cfg.subs {
        let addr = &cfg.sub_addrs[i % cfg.sub_addrs.len()];
        let mut c = Conn::connect(&cfg.dial, addr, &format!("tern-bench-sub-{i}")).await?;
        let mut sub = match &cfg.queue {
            Some(q) => format!("SUB {} {q} 1\r\n", cfg.subject),
            None => format!("SUB {} 1\r\n", cfg.subject),
        };
        if cfg.cross {
            sub.push_str(&format!("SUB {probe}.{i} 2\r\n"));
        }
        c.roundtrip(sub.as_bytes(), Instant::now() + CONNECT_TIMEOUT)
            .await?;
        sub_conns.push(c);
    }
    let mut pub_conns = Vec::with_capacity(cfg.pubs);
    for i in 0..cfg.pubs {
        let addr = &cfg.pub_addrs[i % cfg.pub_addrs.len()];
        pub_conns.push(Conn::connect(&cfg.dial, addr, &format!("tern-bench-pub-{i}")).await?);
    }
    if cfg.cross && cfg.subs > 0 {
        // One probing publisher per distinct publisher server.
        let mut probers: Vec<&mut Conn> = Vec::new();
        let mut seen_addrs: Vec<&String> = Vec::new();
        for (i, c) in pub_conns.iter_mut().enumerate() {
            let addr = &cfg.pub_addrs[i % cfg.pub_addrs.len()];
            if !seen_addrs.contains(&addr) {
                seen_addrs.push(addr);
                probers.push(c);
            }
        }
        let mut subs: Vec<&mut Conn> = sub_conns.iter_mut().collect();
        let limit = cfg.stall.max(CONNECT_TIMEOUT);
        client::sync_interest(&mut probers, &mut subs, &probe, "2", limit).await?;
    }

    let sub_tasks: Vec<JoinHandle<()>> = sub_conns
        .into_iter()
        .enumerate()
        .map(|(i, c)| {
            let shared = shared.clone();
            let expected = if queue { u64::MAX } else { cfg.msgs };
            let counter = MsgCounter::new(&cfg.subject, "1", cfg.size);
            tokio::spawn(async move {
                if let Err(e) = subscriber(i, c, counter, expected, &shared).await {
                    shared.fail(format!("subscriber {i}: {e}"));
                }
            })
        })
        .collect();
    let abort_subs = || sub_tasks.iter().for_each(|t| t.abort());

    let start = Instant::now();
    let npubs = cfg.pubs as u64;
    let pub_tasks: Vec<JoinHandle<Result<Instant>>> = pub_conns
        .into_iter()
        .enumerate()
        .map(|(i, c)| {
            // Split like nats bench: the first publishers take the remainder.
            let count = cfg.msgs / npubs + u64::from((i as u64) < cfg.msgs % npubs);
            let plan = plan.clone();
            let shared = (cfg.subs > 0).then(|| shared.clone());
            tokio::spawn(async move { publisher(c, count, &plan, shared.as_deref()).await })
        })
        .collect();

    let mut pub_end = start;
    let mut pub_err: Option<BenchError> = None;
    for t in pub_tasks {
        match t.await {
            Ok(Ok(end)) => pub_end = pub_end.max(end),
            Ok(Err(e)) => {
                pub_err.get_or_insert(e);
            }
            Err(e) => {
                pub_err.get_or_insert(BenchError(format!("publisher task failed: {e}")));
            }
        }
    }
    if let Some(e) = pub_err {
        abort_subs();
        // A subscriber failure usually explains the publisher's.
        return Err(shared.failure().map(BenchError).unwrap_or(e));
    }

    let mut error = None;
    let mut last_total = 0;
    let mut last_change = Instant::now();
    if cfg.subs > 0 {
        loop {
            let total = shared.total.0.load(Ordering::Acquire);
            if total >= target {
                break;
            }
            if let Some(e) = shared.failure() {
                error = Some(e);
                break;
            }
            if total != last_total {
                last_total = total;
                last_change = Instant::now();
            } else if last_change.elapsed() >= cfg.stall {
                error = Some(format!(
                    "no message for {:.1} s, giving up",
                    cfg.stall.as_secs_f64()
                ));
                break;
            }
            let _ = timeout(Duration::from_millis(50), shared.done.notified()).await;
        }
    }
    abort_subs();

    let pub_secs = (pub_end - start).as_secs_f64().max(1e-9);
    let mut r = Report::new(cfg);
    r.pub_msgs_per_sec = cfg.msgs as f64 / pub_secs;
    if cfg.subs == 0 {
        r.elapsed = pub_secs;
        r.msgs_per_sec = r.pub_msgs_per_sec;
    } else {
        let delivered = shared.total.0.load(Ordering::Acquire).min(target);
        let end = shared.finished.lock().unwrap().unwrap_or(last_change);
        r.elapsed = (end - start).as_secs_f64().max(1e-9);
        r.expected = target;
        r.delivered = delivered;
        r.lost = target - delivered;
        r.msgs_per_sec = delivered as f64 / r.elapsed;
        if r.lost > 0 && error.is_none() {
            error = Some("messages lost".into());
        }
    }
    r.bytes_per_sec = r.msgs_per_sec * cfg.size as f64;
    r.error = error;
    Ok(r)
}

/// The benchmark payload: printable, so traces stay readable.
pub(crate) fn payload(size: usize) -> Vec<u8> {
    (0..size).map(|i| b'a' + (i % 26) as u8).collect()
}

/// Publishes `count` messages, pacing itself with PINGs and the lead limit;
/// returns when the server has acknowledged (PONG) the last of them.
async fn publisher(
    mut conn: Conn,
    count: u64,
    plan: &Plan,
    shared: Option<&Shared>,
) -> Result<Instant> {
    let stall = plan.stall;
    let mut sent = 0u64;
    let mut since_ping = 0u64;
    let mut pings_out = 0u32;
    while sent < count {
        let n = plan.per_batch.min(count - sent);
        if let Some(sh) = shared {
            wait_for_subscribers(sh, n, plan.max_lead, stall).await?;
        }
        let bytes = &plan.batch[..n as usize * plan.frame_len];
        timeout(stall, conn.stream.send(bytes)).await??;
        sent += n;
        if let Some(sh) = shared {
            sh.published.0.fetch_add(n, Ordering::AcqRel);
        }
        since_ping += 1;
        if since_ping == plan.ping_every {
            since_ping = 0;
            timeout(stall, conn.stream.send(b"PING\r\n")).await??;
            pings_out += 1;
            while pings_out > 1 {
                conn.wait_pong(Instant::now() + stall).await?;
                pings_out -= 1;
            }
        }
    }
    timeout(stall, conn.stream.send(b"PING\r\n")).await??;
    pings_out += 1;
    while pings_out > 0 {
        conn.wait_pong(Instant::now() + stall).await?;
        pings_out -= 1;
    }
    Ok(Instant::now())
}

/// Waits until sending `n` more messages keeps publishers within `max_lead`
/// of the slowest subscriber.
async fn wait_for_subscribers(sh: &Shared, n: u64, max_lead: u64, stall: Duration) -> Result<()> {
    let mut last = sh.progress();
    let mut last_change = Instant::now();
    loop {
        if sh.failed.load(Ordering::Acquire) {
            return err("a subscriber failed");
        }
        let published = sh.published.0.load(Ordering::Acquire);
        let progress = sh.progress();
        if published + n <= progress + max_lead {
            return Ok(());
        }
        if progress != last {
            last = progress;
            last_change = Instant::now();
        } else if last_change.elapsed() >= stall {
            return err(format!(
                "subscribers received nothing for {:.1} s",
                stall.as_secs_f64()
            ));
        }
        let notified = sh.progress.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        sh.waiters.fetch_add(1, Ordering::SeqCst);
        if published + n > sh.progress() + max_lead {
            // The timeout is only a backstop against a missed wake-up.
            let _ = timeout(Duration::from_millis(1), notified).await;
        }
        sh.waiters.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Counts messages on one subscription until it has seen `expected` of them
/// (queue subscribers run until aborted).
async fn subscriber(
    idx: usize,
    conn: Conn,
    mut counter: MsgCounter,
    expected: u64,
    sh: &Shared,
) -> Result<()> {
    let Conn {
        mut stream, rbuf, ..
    } = conn;
    let mut buf = vec![0u8; READ_BYTES.max(rbuf.len())];
    buf[..rbuf.len()].copy_from_slice(&rbuf);
    let mut filled = rbuf.len();
    let mut count = 0u64;
    loop {
        let fed = counter.feed(&buf[..filled]).map_err(BenchError)?;
        if fed.consumed > 0 {
            buf.copy_within(fed.consumed..filled, 0);
            filled -= fed.consumed;
        }
        for _ in 0..fed.pings {
            stream.send(b"PONG\r\n").await?;
        }
        if fed.msgs > 0 {
            count += fed.msgs;
            sh.sub_counts[idx].0.store(count, Ordering::Release);
            let before = sh.total.0.fetch_add(fed.msgs, Ordering::AcqRel);
            if before < sh.target && before + fed.msgs >= sh.target {
                *sh.finished.lock().unwrap() = Some(Instant::now());
                sh.done.notify_one();
            }
            if sh.waiters.load(Ordering::SeqCst) > 0 {
                sh.progress.notify_waiters();
            }
            if count >= expected {
                return Ok(());
            }
        }
        let n = stream.read(&mut buf[filled..]).await?;
        if n == 0 {
            return err("server closed the connection");
        }
        filled += n;
    }
}
