//! Head-of-line demo: does bulk traffic delay small messages that share its
//! path (in a cluster: the link between two nodes)?
//!
//! One connection publishes small messages on `small` at a steady pace,
//! each stamped with its send time; a subscriber (normally on another node)
//! measures how long each took. First alone (`idle`), then while a second,
//! separate publisher connection sends big messages on `big` as fast as a
//! second subscriber connection takes them (`loaded`). The two subscribers
//! use separate connections so a big message never sits in front of a small
//! one on the way to the client: what is shared is the publishers' server,
//! the path between the servers, and the subscribers' server.
//!
//! The small side runs on its own thread and single-threaded runtime, so
//! its timestamps are not taken behind the big subscriber's reads in the
//! same task queue; the clock is one `std::time::Instant` shared by both.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use nats_proto::{encode, Op};
use tokio::io::AsyncReadExt;
use tokio::sync::{mpsc, Notify};
use tokio::time::{sleep_until, timeout, Instant, MissedTickBehavior};

use super::client::{self, err, BenchError, Conn, Result, CONNECT_TIMEOUT};
use super::counter::MsgCounter;
use super::report::{HolPhase, HolReport, Latency, Report};
use super::throughput::payload;
use super::Config;

/// Bytes at the front of a small payload: a phase tag and 15 hex digits of
/// nanoseconds since the run's clock started.
pub(crate) const STAMP_LEN: usize = 16;
const SMALL_SUBJECT: &str = "small";
const BIG_SUBJECT: &str = "big";
/// Phase tags.
const WARMUP: u8 = b'w';
const IDLE: u8 = b'i';
const LOADED: u8 = b'l';
/// How long after a phase's last send its stragglers are still awaited.
const GRACE: Duration = Duration::from_secs(3);
/// Default big messages in flight beyond the big subscriber (bytes).
const LEAD_BYTES: usize = 4 * 1024 * 1024;
/// Big subscriber read buffer.
const READ_BYTES: usize = 1024 * 1024;

/// What the small side tells the coordinator.
enum Event {
    Ready(Option<u64>),
    Phase(PhaseResult),
    Failed(String),
}

struct PhaseResult {
    sent: u64,
    samples: Vec<u64>,
    secs: f64,
}

impl PhaseResult {
    fn summary(mut self) -> HolPhase {
        let received = self.samples.len() as u64;
        HolPhase {
            sent: self.sent,
            received,
            lost: self.sent.saturating_sub(received),
            secs: self.secs,
            latency_us: Latency::from_nanos(&mut self.samples),
        }
    }
}

/// Counters shared by the big publisher, the big subscriber and the
/// coordinator.
#[derive(Default)]
struct Big {
    published: AtomicU64,
    received: AtomicU64,
    progress: Notify,
    stop: AtomicBool,
    failure: Mutex<Option<String>>,
}

impl Big {
    fn fail(&self, why: String) {
        self.failure.lock().unwrap().get_or_insert(why);
        self.progress.notify_waiters();
    }

    fn failure(&self) -> Option<String> {
        self.failure.lock().unwrap().clone()
    }
}

/// Runs the hol scenario.
pub(crate) async fn run(cfg: &Config) -> Result<Report> {
    let clock = std::time::Instant::now();
    let (go_tx, go_rx) = mpsc::unbounded_channel::<()>();
    let (ev_tx, mut ev_rx) = mpsc::unbounded_channel::<Event>();
    let small_cfg = cfg.clone();
    let small = std::thread::Builder::new()
        .name("hol-small".into())
        .spawn(move || small_side(small_cfg, clock, go_rx, ev_tx))
        .map_err(|e| BenchError(format!("cannot start a thread: {e}")))?;
    let result = coordinate(cfg, &go_tx, &mut ev_rx).await;
    drop(go_tx);
    let _ = small.join();
    result
}

/// Waits for the small side's next event.
async fn next_event(ev: &mut mpsc::UnboundedReceiver<Event>, limit: Duration) -> Result<Event> {
    match timeout(limit, ev.recv()).await {
        Ok(Some(Event::Failed(e))) => err(format!("small messages: {e}")),
        Ok(Some(e)) => Ok(e),
        Ok(None) => err("small-message side ended early"),
        Err(_) => err("small-message side did not report in time"),
    }
}

async fn coordinate(
    cfg: &Config,
    go: &mpsc::UnboundedSender<()>,
    ev: &mut mpsc::UnboundedReceiver<Event>,
) -> Result<Report> {
    let setup_limit = cfg.stall.max(CONNECT_TIMEOUT) * 2;
    // The small side connects first, so its publisher is the first client on
    // its server, then the big side: connection order (and so client ids)
    // is the same on every run.
    let small_cid = match next_event(ev, setup_limit).await? {
        Event::Ready(cid) => cid,
        _ => return err("small-message side out of order"),
    };

    let probe = client::probe_prefix();
    let mut big_sub = Conn::connect(
        &cfg.dial,
        &cfg.sub_addrs[1 % cfg.sub_addrs.len()],
        "tern-bench-hol-big-sub",
    )
    .await?;
    let mut sub = format!("SUB {BIG_SUBJECT} 1\r\n");
    if cfg.cross {
        sub.push_str(&format!("SUB {probe}.0 2\r\n"));
    }
    big_sub
        .roundtrip(sub.as_bytes(), Instant::now() + CONNECT_TIMEOUT)
        .await?;
    let mut big_pub = Conn::connect(
        &cfg.dial,
        &cfg.pub_addrs[1 % cfg.pub_addrs.len()],
        "tern-bench-hol-big-pub",
    )
    .await?;
    if cfg.cross {
        let limit = cfg.stall.max(CONNECT_TIMEOUT);
        client::sync_interest(&mut [&mut big_pub], &mut [&mut big_sub], &probe, "2", limit).await?;
    }
    let big_cid = big_pub.client_id;

    // Idle phase: small messages alone (after the warm-up).
    let phase_limit = cfg.interval * (cfg.msgs + cfg.warmup) as u32 + GRACE + cfg.stall;
    let _ = go.send(());
    let idle = match next_event(ev, phase_limit).await? {
        Event::Phase(p) => p,
        _ => return err("small-message side out of order"),
    };

    // Loaded phase: start the big traffic, wait until it flows, measure.
    let big = Arc::new(Big::default());
    let sub_task = {
        let big = big.clone();
        let counter = MsgCounter::new(BIG_SUBJECT, "1", cfg.big_size);
        tokio::spawn(async move {
            if let Err(e) = big_subscriber(big_sub, counter, &big).await {
                big.fail(format!("big subscriber: {e}"));
            }
        })
    };
    let pub_task = {
        let big = big.clone();
        let mut frame = BytesMut::new();
        encode::write_pub(
            &mut frame,
            BIG_SUBJECT.as_bytes(),
            None,
            &payload(cfg.big_size),
        );
        let frame = frame.freeze();
        let lead = if cfg.max_lead > 0 {
            cfg.max_lead
        } else {
            (LEAD_BYTES / cfg.big_size.max(1)).max(2) as u64
        };
        let stall = cfg.stall;
        let pace = cfg.big_pace;
        tokio::spawn(async move {
            let r = big_publisher(big_pub, frame, &big, lead, stall, pace).await;
            if let Err(e) = &r {
                big.fail(format!("big publisher: {e}"));
            }
            r
        })
    };
    let outcome = loaded_phase(cfg, go, ev, &big, phase_limit).await;
    big.stop.store(true, Ordering::Release);
    big.progress.notify_waiters();
    let pub_result = match pub_task.await {
        Ok(r) => r,
        Err(e) => Err(BenchError(format!("big publisher task failed: {e}"))),
    };
    // Let the big messages still on their way arrive, to count losses.
    let published = big.published.load(Ordering::Acquire);
    let mut last = big.received.load(Ordering::Acquire);
    let mut last_change = Instant::now();
    while last < published && big.failure().is_none() && last_change.elapsed() < cfg.stall {
        let _ = timeout(Duration::from_millis(20), big.progress.notified()).await;
        let now = big.received.load(Ordering::Acquire);
        if now != last {
            last = now;
            last_change = Instant::now();
        }
    }
    sub_task.abort();
    let (loaded, big_msgs, big_secs) = outcome?;
    if let Some(f) = big.failure() {
        return err(f);
    }
    pub_result?;

    let received = big.received.load(Ordering::Acquire).min(published);
    let big_rate = big_msgs as f64 / big_secs.max(1e-9);
    let hol = HolReport {
        small_size: cfg.size,
        big_size: cfg.big_size,
        interval_us: cfg.interval.as_micros() as u64,
        idle: idle.summary(),
        loaded: loaded.summary(),
        big_msgs,
        big_msgs_per_sec: big_rate,
        big_bytes_per_sec: big_rate * cfg.big_size as f64,
        big_published: published,
        big_lost: published - received,
        big_rate_limit: cfg.big_pace.map(|p| 1.0 / p.as_secs_f64()),
        small_pub_client_id: small_cid,
        big_pub_client_id: big_cid,
    };
    let mut r = Report::new(cfg);
    r.elapsed = big_secs;
    r.msgs_per_sec = hol.big_msgs_per_sec;
    r.bytes_per_sec = hol.big_bytes_per_sec;
    r.pub_msgs_per_sec = hol.big_msgs_per_sec;
    r.expected = hol.idle.sent + hol.loaded.sent + published;
    r.lost = hol.idle.lost + hol.loaded.lost + hol.big_lost;
    r.delivered = r.expected - r.lost;
    r.latency_us = hol.loaded.latency_us.clone();
    if r.lost > 0 {
        r.error = Some(format!(
            "messages lost: {} small idle, {} small loaded, {} big",
            hol.idle.lost, hol.loaded.lost, hol.big_lost
        ));
    }
    r.hol = Some(hol);
    Ok(r)
}

/// Waits for big traffic to flow, then has the small side measure; returns
/// the small results and the big messages delivered meanwhile.
async fn loaded_phase(
    cfg: &Config,
    go: &mpsc::UnboundedSender<()>,
    ev: &mut mpsc::UnboundedReceiver<Event>,
    big: &Big,
    limit: Duration,
) -> Result<(PhaseResult, u64, f64)> {
    let started = Instant::now();
    while big.received.load(Ordering::Acquire) < 2 {
        if let Some(f) = big.failure() {
            return err(f);
        }
        if started.elapsed() >= cfg.stall {
            return err("big messages did not get through");
        }
        let _ = timeout(Duration::from_millis(5), big.progress.notified()).await;
    }
    let r0 = big.received.load(Ordering::Acquire);
    let t0 = Instant::now();
    let _ = go.send(());
    let result = tokio::select! {
        e = next_event(ev, limit) => e?,
        _ = wait_failure(big) => return err(big.failure().unwrap_or_default()),
    };
    let r1 = big.received.load(Ordering::Acquire);
    let secs = t0.elapsed().as_secs_f64();
    match result {
        Event::Phase(p) => Ok((p, r1 - r0, secs)),
        _ => err("small-message side out of order"),
    }
}

async fn wait_failure(big: &Big) {
    loop {
        if big.failure().is_some() {
            return;
        }
        let _ = timeout(Duration::from_millis(20), big.progress.notified()).await;
    }
}

/// Publishes big messages until told to stop, at most `lead` ahead of the
/// big subscriber and, if `pace` is given, at most one per `pace`, with a
/// PING after each one and one PING in flight.
async fn big_publisher(
    mut conn: Conn,
    frame: Bytes,
    big: &Big,
    lead: u64,
    stall: Duration,
    pace: Option<Duration>,
) -> Result<()> {
    // A message held back by the lead limit is sent as soon as it may be,
    // but never in a burst to catch up.
    let mut pacer = pace.map(|p| {
        let mut t = tokio::time::interval(p);
        t.set_missed_tick_behavior(MissedTickBehavior::Delay);
        t
    });
    let mut pings_out = 0u32;
    let mut last_recv = big.received.load(Ordering::Acquire);
    let mut last_change = Instant::now();
    while !big.stop.load(Ordering::Acquire) {
        if big.failure().is_some() {
            return err("stopped");
        }
        let published = big.published.load(Ordering::Acquire);
        let received = big.received.load(Ordering::Acquire);
        if received != last_recv {
            last_recv = received;
            last_change = Instant::now();
        }
        if published >= received + lead {
            if last_change.elapsed() >= stall {
                return err(format!(
                    "big subscriber received nothing for {:.1} s",
                    stall.as_secs_f64()
                ));
            }
            let notified = big.progress.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if big.published.load(Ordering::Acquire) >= big.received.load(Ordering::Acquire) + lead
                && !big.stop.load(Ordering::Acquire)
            {
                let _ = timeout(Duration::from_millis(1), notified).await;
            }
            continue;
        }
        if let Some(p) = pacer.as_mut() {
            let tick = p.tick();
            tokio::pin!(tick);
            // Wake up now and then to notice `stop` during long pauses.
            loop {
                if timeout(Duration::from_millis(50), &mut tick).await.is_ok() {
                    break;
                }
                if big.stop.load(Ordering::Acquire) {
                    break;
                }
            }
            if big.stop.load(Ordering::Acquire) {
                break;
            }
        }
        timeout(stall, conn.stream.send(&frame)).await??;
        timeout(stall, conn.stream.send(b"PING\r\n")).await??;
        big.published.fetch_add(1, Ordering::AcqRel);
        pings_out += 1;
        while pings_out > 1 {
            conn.wait_pong(Instant::now() + stall).await?;
            pings_out -= 1;
        }
    }
    while pings_out > 0 {
        conn.wait_pong(Instant::now() + stall).await?;
        pings_out -= 1;
    }
    Ok(())
}

/// Counts big messages until aborted.
async fn big_subscriber(conn: Conn, mut counter: MsgCounter, big: &Big) -> Result<()> {
    let Conn {
        mut stream, rbuf, ..
    } = conn;
    let mut buf = vec![0u8; READ_BYTES.max(rbuf.len())];
    buf[..rbuf.len()].copy_from_slice(&rbuf);
    let mut filled = rbuf.len();
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
            big.received.fetch_add(fed.msgs, Ordering::AcqRel);
            big.progress.notify_waiters();
        }
        let n = stream.read(&mut buf[filled..]).await?;
        if n == 0 {
            return err("server closed the connection");
        }
        filled += n;
    }
}

/// The small side's thread: its own runtime, its own two connections.
fn small_side(
    cfg: Config,
    clock: std::time::Instant,
    mut go: mpsc::UnboundedReceiver<()>,
    ev: mpsc::UnboundedSender<Event>,
) {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            let _ = ev.send(Event::Failed(format!("cannot start runtime: {e}")));
            return;
        }
    };
    rt.block_on(async {
        if let Err(e) = small_main(&cfg, clock, &mut go, &ev).await {
            let _ = ev.send(Event::Failed(e.to_string()));
        }
    });
}

async fn small_main(
    cfg: &Config,
    clock: std::time::Instant,
    go: &mut mpsc::UnboundedReceiver<()>,
    ev: &mpsc::UnboundedSender<Event>,
) -> Result<()> {
    let probe = client::probe_prefix();
    let mut sub = Conn::connect(&cfg.dial, &cfg.sub_addrs[0], "tern-bench-hol-small-sub").await?;
    let mut cmd = format!("SUB {SMALL_SUBJECT} 1\r\n");
    if cfg.cross {
        cmd.push_str(&format!("SUB {probe}.0 2\r\n"));
    }
    sub.roundtrip(cmd.as_bytes(), Instant::now() + CONNECT_TIMEOUT)
        .await?;
    let mut publ = Conn::connect(&cfg.dial, &cfg.pub_addrs[0], "tern-bench-hol-small-pub").await?;
    if cfg.cross {
        let limit = cfg.stall.max(CONNECT_TIMEOUT);
        client::sync_interest(&mut [&mut publ], &mut [&mut sub], &probe, "2", limit).await?;
    }
    let _ = ev.send(Event::Ready(publ.client_id));
    for tag in [IDLE, LOADED] {
        if go.recv().await.is_none() {
            return Ok(());
        }
        if tag == IDLE && cfg.warmup > 0 {
            small_phase(cfg, &mut publ, &mut sub, clock, WARMUP, cfg.warmup).await?;
        }
        let p = small_phase(cfg, &mut publ, &mut sub, clock, tag, cfg.msgs).await?;
        let _ = ev.send(Event::Phase(p));
    }
    Ok(())
}

/// Writes the phase tag and the send time into the front of `body`.
fn stamp(body: &mut [u8], tag: u8, nanos: u64) {
    body[0] = tag;
    let hex = format!("{:015x}", nanos & 0x0fff_ffff_ffff_ffff);
    body[1..STAMP_LEN].copy_from_slice(hex.as_bytes());
}

/// Reads a stamp back: the phase tag and the send time.
fn read_stamp(payload: &[u8]) -> Option<(u8, u64)> {
    let hex = std::str::from_utf8(payload.get(1..STAMP_LEN)?).ok()?;
    Some((payload[0], u64::from_str_radix(hex, 16).ok()?))
}

/// Sends `n` stamped messages one interval apart while collecting their
/// latencies; ends when all came back or `GRACE` after the last send.
async fn small_phase(
    cfg: &Config,
    publ: &mut Conn,
    sub: &mut Conn,
    clock: std::time::Instant,
    tag: u8,
    n: u64,
) -> Result<PhaseResult> {
    let mut body = payload(cfg.size);
    let mut frame = BytesMut::with_capacity(cfg.size + 64);
    let mut samples = Vec::with_capacity(n as usize);
    let mut ticker = tokio::time::interval(cfg.interval);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let far = Instant::now() + Duration::from_secs(24 * 3600);
    let mut grace_end = far;
    let mut sent = 0u64;
    let started = Instant::now();
    while sent < n || (samples.len() as u64) < n {
        tokio::select! {
            biased;
            op = sub.next_op(far) => match op? {
                Op::Msg { sid, payload, .. } if &sid[..] == b"1" => {
                    let now = clock.elapsed().as_nanos() as u64;
                    if let Some((t, at)) = read_stamp(&payload) {
                        // Stragglers from an earlier phase are not counted.
                        if t == tag {
                            samples.push(now.saturating_sub(at));
                        }
                    }
                }
                Op::Ping => {
                    timeout(cfg.stall, sub.stream.send(b"PONG\r\n")).await??;
                }
                Op::Err(t) => {
                    return err(format!("server error: {}", String::from_utf8_lossy(&t)))
                }
                _ => {}
            },
            _ = ticker.tick(), if sent < n => {
                stamp(&mut body, tag, clock.elapsed().as_nanos() as u64);
                frame.clear();
                encode::write_pub(&mut frame, SMALL_SUBJECT.as_bytes(), None, &body);
                timeout(cfg.stall, publ.stream.send(&frame)).await??;
                sent += 1;
                if sent == n {
                    grace_end = Instant::now() + GRACE;
                }
            },
            _ = sleep_until(grace_end), if sent == n => break,
        }
    }
    Ok(PhaseResult {
        sent,
        samples,
        secs: started.elapsed().as_secs_f64(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_round_trip() {
        let mut body = payload(16);
        stamp(&mut body, IDLE, 123_456_789_012);
        assert_eq!(read_stamp(&body), Some((IDLE, 123_456_789_012)));
        assert_eq!(body.len(), 16);
        assert_eq!(read_stamp(b"short"), None);
    }
}
