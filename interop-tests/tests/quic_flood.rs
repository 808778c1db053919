//! A flood of never-completed QUIC handshakes against a node's cluster port
//! (real Initial packets from `transport::flood`) must neither blow up the
//! node's memory nor its log, and must not stop an established link from
//! delivering. Tern only: nats-server's cluster port is TCP.

mod common;

use common::Server;
use futures::StreamExt;
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Initials sent, and their rate per second: the old code grew to about
/// 900 MB RSS under this.
const FLOOD_COUNT: u64 = 10_000;
const FLOOD_RATE: u64 = 2_000;

/// Generous bound on the target's resident memory during and after the flood
/// (a node idles at ~15 MB; the defended node stays well under 100 MB).
const RSS_LIMIT_KB: u64 = 200 * 1024;

/// At most this many log lines about failed or refused handshakes: the node
/// summarises them per interval instead of logging one per packet.
const LOG_LINES_LIMIT: usize = 10;

fn free_port() -> u16 {
    loop {
        let tcp = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = tcp.local_addr().unwrap().port();
        if UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

fn node(name: &str, cluster_port: u16, seed: u16) -> Server {
    Server::start_with(
        &[
            "--cluster",
            &format!("nats://127.0.0.1:{cluster_port}"),
            "--routes",
            &format!("nats://127.0.0.1:{seed}"),
            "--cluster_name",
            "flood",
            "-n",
            name,
        ],
        None,
    )
}

fn rss_kb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("process alive");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/PID/status")
}

async fn await_link(a: &Server, b: &Server) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    for node in [a, b] {
        while node.monitor("/routez")["num_routes"].as_u64() != Some(1) {
            assert!(std::time::Instant::now() < deadline, "link did not form");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshake_flood_keeps_node_bounded_and_link_delivering() {
    if common::is_nats_server() {
        eprintln!("skipped: Tern-only (QUIC cluster port)");
        return;
    }
    tokio::time::timeout(Duration::from_secs(120), async {
        let (pa, pb) = (free_port(), free_port());
        let a = node("a", pa, pb);
        let b = node("b", pb, pa);
        await_link(&a, &b).await;
        let b_pid = b.pid().unwrap();

        let pub_client = async_nats::connect(a.url()).await.unwrap();
        let sub_client = async_nats::connect(b.url()).await.unwrap();
        let mut sub = sub_client.subscribe("flood.check").await.unwrap();
        sub_client.flush().await.unwrap();
        // Interest reaches A once a probe published there arrives at B.
        loop {
            pub_client
                .publish("flood.check", "probe".into())
                .await
                .unwrap();
            pub_client.flush().await.unwrap();
            if tokio::time::timeout(Duration::from_millis(100), sub.next())
                .await
                .is_ok()
            {
                break;
            }
        }
        while tokio::time::timeout(Duration::from_millis(200), sub.next())
            .await
            .is_ok()
        {}
        let before = rss_kb(b_pid);

        // The flood, against B's cluster port, on its own thread.
        let done = Arc::new(AtomicBool::new(false));
        let target: SocketAddr = ([127, 0, 0, 1], pb).into();
        let flood = tokio::task::spawn_blocking({
            let done = done.clone();
            move || {
                let r = transport::flood::flood(
                    target,
                    FLOOD_COUNT,
                    FLOOD_RATE,
                    &AtomicBool::new(false),
                    &AtomicU64::new(0),
                );
                done.store(true, Ordering::Relaxed);
                r
            }
        });

        // Meanwhile: publish on A, sample B's memory.
        let published = Arc::new(AtomicU64::new(0));
        let mut peak = before;
        while !done.load(Ordering::Relaxed) {
            let n = published.fetch_add(1, Ordering::Relaxed);
            pub_client
                .publish("flood.check", n.to_string().into())
                .await
                .unwrap();
            peak = peak.max(rss_kb(b_pid));
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let report = flood.await.unwrap().expect("flood ran");
        pub_client.flush().await.unwrap();
        let published = published.load(Ordering::Relaxed);

        // Every message published during the flood crossed the link.
        let mut received = 0u64;
        while received < published {
            match tokio::time::timeout(Duration::from_secs(10), sub.next()).await {
                Ok(Some(m)) => {
                    assert_eq!(m.payload, received.to_string(), "in order, none lost");
                    received += 1;
                }
                _ => panic!("only {received} of {published} messages crossed the link"),
            }
        }

        // After the flood: handshakes left over time out; sample for a while.
        for _ in 0..30 {
            peak = peak.max(rss_kb(b_pid));
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let after = rss_kb(b_pid);
        eprintln!(
            "flood: {report:?}; B RSS before {before} kB, peak {peak} kB, after {after} kB; \
             {published} messages delivered during it"
        );
        assert!(
            report.sent >= FLOOD_COUNT / 2,
            "the flood was mostly sent: {report:?}"
        );
        assert!(
            peak < RSS_LIMIT_KB,
            "B grew to {peak} kB under the flood (limit {RSS_LIMIT_KB} kB)"
        );
        assert!(
            after < RSS_LIMIT_KB,
            "B kept {after} kB after the flood (limit {RSS_LIMIT_KB} kB)"
        );

        // Handshake failures are summarised, not logged one per packet.
        let log = b.log_tail(1_000_000);
        let lines = log
            .lines()
            .filter(|l| l.contains("handshake") || l.contains("cluster link refused"))
            .count();
        assert!(
            lines <= LOG_LINES_LIMIT,
            "{lines} log lines about failed handshakes, e.g.:\n{}",
            log.lines().rev().take(3).collect::<Vec<_>>().join("\n")
        );
        // The link survived: still one route on each side.
        assert_eq!(a.monitor("/routez")["num_routes"].as_u64(), Some(1));
        assert_eq!(b.monitor("/routez")["num_routes"].as_u64(), Some(1));
    })
    .await
    .expect("test timed out");
}
