//! QUIC cluster links on loopback: authentication, refusal, framing.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use peer::ServerIdentity;
use transport::quic::{LinkConfig, LinkError, QuicEndpoint, QuicLink};

const LIMIT: Duration = Duration::from_secs(15);

fn loopback() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

async fn bounded<T>(f: impl Future<Output = T>) -> T {
    tokio::time::timeout(LIMIT, f)
        .await
        .expect("test step timed out")
}

fn node(id: &ServerIdentity, allowed: &[&ServerIdentity]) -> QuicEndpoint {
    QuicEndpoint::bind(
        loopback(),
        id,
        allowed.iter().map(|p| p.public_key()).collect(),
        LinkConfig::default(),
    )
    .unwrap()
}

#[tokio::test]
async fn pinned_nodes_exchange_frames_both_ways() {
    bounded(async {
        let a_id = ServerIdentity::generate();
        let b_id = ServerIdentity::generate();
        let a = node(&a_id, &[&b_id]);
        let b = node(&b_id, &[&a_id]);
        let b_addr = b.local_addr().unwrap();

        let (dialed, accepted) = tokio::join!(a.connect(b_addr), b.accept());
        let ab = dialed.unwrap();
        let ba = accepted.unwrap().unwrap();
        assert_eq!(ab.peer_key(), b_id.public_key());
        assert_eq!(ba.peer_key(), a_id.public_key());
        assert_eq!(ab.remote_addr(), b_addr);
        assert_eq!(ba.remote_addr(), a.local_addr().unwrap());
        assert!(ab.rtt() > Duration::ZERO);

        // Control stream: request from A, reply from B.
        let mut a_ctl = ab.open_control().await.unwrap();
        a_ctl.send_frame(b"ping").await.unwrap();
        let mut b_ctl = ba.accept_control().await.unwrap();
        assert_eq!(&b_ctl.recv_frame().await.unwrap().unwrap()[..], b"ping");
        b_ctl.send_frame(b"pong").await.unwrap();
        b_ctl.send_frame(b"").await.unwrap();
        assert_eq!(&a_ctl.recv_frame().await.unwrap().unwrap()[..], b"pong");
        assert_eq!(&a_ctl.recv_frame().await.unwrap().unwrap()[..], b"");

        // Message streams both ways, ending cleanly.
        let mut a_out = ab.open_uni().await.unwrap();
        let mut b_out = ba.open_uni().await.unwrap();
        for i in 0..100u32 {
            a_out.send_frame(&i.to_be_bytes()).await.unwrap();
            b_out
                .send_frame_bytes(bytes::Bytes::from(format!("msg {i}")))
                .await
                .unwrap();
        }
        a_out.finish().unwrap();
        b_out.finish().unwrap();
        let mut b_in = ba.accept_uni().await.unwrap();
        let mut a_in = ab.accept_uni().await.unwrap();
        for i in 0..100u32 {
            assert_eq!(
                &b_in.recv_frame().await.unwrap().unwrap()[..],
                i.to_be_bytes()
            );
            assert_eq!(
                a_in.recv_frame().await.unwrap().unwrap(),
                format!("msg {i}").as_bytes()
            );
        }
        assert!(b_in.recv_frame().await.unwrap().is_none());
        assert!(a_in.recv_frame().await.unwrap().is_none());

        // Closing is seen by the other side, with the reason.
        ab.close("shutting down");
        let lost = ba.closed().await;
        assert!(lost.to_string().contains("shutting down"), "{lost}");
        assert!(matches!(ba.accept_uni().await, Err(LinkError::Lost(_))));
    })
    .await;
}

#[tokio::test]
async fn dialer_not_pinned_by_acceptor_is_refused() {
    bounded(async {
        let a_id = ServerIdentity::generate();
        let b_id = ServerIdentity::generate();
        let other = ServerIdentity::generate();
        let a = node(&a_id, &[&b_id]);
        let b = node(&b_id, &[&other]); // B does not know A.
        let (dialed, accepted) = tokio::join!(a.connect(b.local_addr().unwrap()), b.accept());

        let err = dialed.expect_err("a refused dialer must never get a link");
        assert!(matches!(err, LinkError::RefusedByPeer { .. }), "{err:?}");
        eprintln!("dialer sees: {err}");

        let err = accepted
            .unwrap()
            .expect_err("acceptor must not hand out the link");
        assert!(matches!(err, LinkError::RefusedPeer { .. }), "{err:?}");
        assert!(err.to_string().contains(&a_id.public_key()), "{err}");
        eprintln!("acceptor sees: {err}");
    })
    .await;
}

#[tokio::test]
async fn acceptor_not_pinned_by_dialer_is_refused() {
    bounded(async {
        let a_id = ServerIdentity::generate();
        let b_id = ServerIdentity::generate();
        let other = ServerIdentity::generate();
        let a = node(&a_id, &[&other]); // A does not trust B.
        let b = node(&b_id, &[&a_id]);
        let (dialed, accepted) = tokio::join!(a.connect(b.local_addr().unwrap()), b.accept());

        let err = dialed.expect_err("dialer must refuse an unpinned server");
        assert!(matches!(err, LinkError::RefusedPeer { .. }), "{err:?}");
        assert!(err.to_string().contains(&b_id.public_key()), "{err}");
        eprintln!("dialer sees: {err}");

        let err = accepted
            .unwrap()
            .expect_err("acceptor must not hand out the link");
        assert!(matches!(err, LinkError::RefusedByPeer { .. }), "{err:?}");
        eprintln!("acceptor sees: {err}");
    })
    .await;
}

#[tokio::test]
async fn open_cluster_accepts_any_node() {
    bounded(async {
        let a_id = ServerIdentity::generate();
        let b_id = ServerIdentity::generate();
        let a = node(&a_id, &[]);
        let b = node(&b_id, &[]);
        let (dialed, accepted) = tokio::join!(a.connect(b.local_addr().unwrap()), b.accept());
        assert_eq!(dialed.unwrap().peer_key(), b_id.public_key());
        assert_eq!(accepted.unwrap().unwrap().peer_key(), a_id.public_key());
    })
    .await;
}

#[tokio::test]
async fn large_frame_does_not_hold_back_another_stream() {
    bounded(async {
        let a_id = ServerIdentity::generate();
        let b_id = ServerIdentity::generate();
        let a = node(&a_id, &[&b_id]);
        let b = node(&b_id, &[&a_id]);
        let (dialed, accepted) = tokio::join!(a.connect(b.local_addr().unwrap()), b.accept());
        let ab = dialed.unwrap();
        let ba = accepted.unwrap().unwrap();

        let big = vec![0xA5u8; 1024 * 1024];
        let mut bulk = ab.open_uni().await.unwrap();
        let mut small = ab.open_uni().await.unwrap();
        // One task per stream, as the router runs them: the bulk write waits
        // for stream credit (the per-stream window is smaller than the frame)
        // while the small stream goes on.
        let bulk_sender = tokio::spawn(async move {
            bulk.send_frame(&big).await.unwrap();
            bulk.finish().unwrap();
        });
        let sender = tokio::spawn(async move {
            for i in 0..50u32 {
                small.send_frame(&i.to_be_bytes()).await.unwrap();
            }
            small.finish().unwrap();
        });

        // Read the small stream to its end before touching the bulk stream:
        // this only completes if the unread 1 MiB frame does not block it.
        let mut bulk_in = ba.accept_uni().await.unwrap();
        let mut small_in = ba.accept_uni().await.unwrap();
        for i in 0..50u32 {
            assert_eq!(
                &small_in.recv_frame().await.unwrap().unwrap()[..],
                i.to_be_bytes()
            );
        }
        assert!(small_in.recv_frame().await.unwrap().is_none());
        let frame = bulk_in.recv_frame().await.unwrap().unwrap();
        assert_eq!(frame.len(), 1024 * 1024);
        assert!(frame.iter().all(|&b| b == 0xA5));
        assert!(bulk_in.recv_frame().await.unwrap().is_none());
        sender.await.unwrap();
        bulk_sender.await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn oversized_frames_are_refused() {
    bounded(async {
        let a_id = ServerIdentity::generate();
        let b_id = ServerIdentity::generate();
        let mut a = node(&a_id, &[&b_id]);
        let mut b = node(&b_id, &[&a_id]);
        a.set_max_frame(4096);
        b.set_max_frame(1024);
        let (dialed, accepted) = tokio::join!(a.connect(b.local_addr().unwrap()), b.accept());
        let ab = dialed.unwrap();
        let ba = accepted.unwrap().unwrap();

        let mut out = ab.open_uni().await.unwrap();
        let err = out.send_frame(&[0u8; 4097]).await.unwrap_err();
        assert!(
            matches!(
                err,
                LinkError::FrameTooLarge {
                    len: 4097,
                    max: 4096
                }
            ),
            "{err:?}"
        );
        out.send_frame(&[0u8; 2048]).await.unwrap();
        let mut inp = ba.accept_uni().await.unwrap();
        let err = inp.recv_frame().await.unwrap_err();
        assert!(
            matches!(
                err,
                LinkError::FrameTooLarge {
                    len: 2048,
                    max: 1024
                }
            ),
            "{err:?}"
        );
    })
    .await;
}

#[tokio::test]
async fn bad_allow_list_is_a_config_error() {
    let id = ServerIdentity::generate();
    let err = QuicEndpoint::bind(loopback(), &id, vec!["NOPE".into()], LinkConfig::default())
        .unwrap_err();
    assert!(matches!(err, LinkError::Config(_)), "{err:?}");
}

#[tokio::test]
async fn dialing_nobody_fails_within_the_timeout() {
    bounded(async {
        let a_id = ServerIdentity::generate();
        let a = node(&a_id, &[]);
        // A bound but silent UDP socket: nothing answers the handshake.
        let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let err = a
            .connect(silent.local_addr().unwrap())
            .await
            .expect_err("nobody answered");
        assert!(
            matches!(err, LinkError::Handshake { .. } | LinkError::Timeout { .. }),
            "{err:?}"
        );
    })
    .await;
}

/// Link timing of the silence tests: an idle timeout long enough that
/// "suspect before lost" is an ordering no loaded machine can invert.
const SLOW_IDLE: LinkConfig = LinkConfig {
    keep_alive: Duration::from_millis(250),
    idle_timeout: Duration::from_secs(5),
};

/// Waits (bounded by the test's limit) until `link.is_suspect()` is `want`.
async fn until_suspect(link: &QuicLink, want: bool) {
    while link.is_suspect() != want {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A runtime of its own for node B, with one worker, so that B can be made
/// silent (the worker blocked or the runtime stopped) while A keeps running.
fn b_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap()
}

/// Binds B on `rt` and links A to it; returns B's endpoint, B's side of the
/// link, and A's side.
async fn link_to_b(
    rt: &tokio::runtime::Runtime,
    a: &QuicEndpoint,
    a_id: &ServerIdentity,
    b_id: &ServerIdentity,
    config: LinkConfig,
) -> (std::sync::Arc<QuicEndpoint>, QuicLink, QuicLink) {
    let b_id2 = b_id.clone();
    let a_key = a_id.public_key();
    let (b, b_addr) = rt
        .spawn(async move {
            let b = QuicEndpoint::bind(loopback(), &b_id2, vec![a_key], config).unwrap();
            let addr = b.local_addr().unwrap();
            (b, addr)
        })
        .await
        .unwrap();
    let b = std::sync::Arc::new(b);
    let b2 = b.clone();
    let accepted = rt.spawn(async move { b2.accept().await.unwrap().unwrap() });
    let ab = a.connect(b_addr).await.unwrap();
    let ba = accepted.await.unwrap();
    (b, ba, ab)
}

#[tokio::test]
async fn silent_peer_is_suspect_at_once_and_lost_after_the_idle_timeout() {
    bounded(async {
        let a_id = ServerIdentity::generate();
        let b_id = ServerIdentity::generate();
        let a = QuicEndpoint::bind(loopback(), &a_id, vec![b_id.public_key()], SLOW_IDLE).unwrap();
        let rt = b_runtime();
        let (b, ba, ab) = link_to_b(&rt, &a, &a_id, &b_id, SLOW_IDLE).await;
        // A healthy idle link, pinging both ways, is not suspect.
        let mut ctl = ab.open_control().await.unwrap();
        ctl.send_frame(b"hi").await.unwrap();
        until_suspect(&ab, false).await;

        // B's runtime is stopped without any goodbye: to A, B's machine
        // just went silent (like `kill -9` or a pulled cable).
        std::mem::forget(ba);
        std::mem::forget(b);
        rt.shutdown_background();
        let started = std::time::Instant::now();

        // Keep sending, as a publisher would: the quick signal comes first.
        while !ab.is_unanswered() {
            let _ = ctl.send_frame(b"anyone?").await;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let unanswered_after = started.elapsed();
        until_suspect(&ab, true).await;
        let suspect_after = started.elapsed();
        assert!(unanswered_after <= suspect_after);
        assert!(
            ab.close_reason().is_none(),
            "suspect before the idle timeout declares the link lost"
        );
        let lost = ab.closed().await;
        let lost_after = started.elapsed();
        eprintln!(
            "silent peer: unanswered after {unanswered_after:?}, suspect after \
             {suspect_after:?}, lost after {lost_after:?}: {lost}"
        );
        assert!(matches!(lost, LinkError::Lost(_)), "{lost:?}");
        assert!(lost.to_string().ends_with("timed out"), "{lost}");
        assert!(ab.is_suspect(), "a lost link stays suspect");
        assert!(ab.is_unanswered(), "and unanswered");
    })
    .await;
}

#[tokio::test]
async fn stalled_peer_is_suspect_until_it_answers_again() {
    bounded(async {
        let a_id = ServerIdentity::generate();
        let b_id = ServerIdentity::generate();
        let a = QuicEndpoint::bind(loopback(), &a_id, vec![b_id.public_key()], SLOW_IDLE).unwrap();
        let rt = b_runtime();
        let (_b, ba, ab) = link_to_b(&rt, &a, &a_id, &b_id, SLOW_IDLE).await;
        let mut a_out = ab.open_uni().await.unwrap();
        a_out.send_frame(b"before").await.unwrap();
        let mut b_in = rt
            .spawn({
                let ba = ba.clone();
                async move { ba.accept_uni().await.unwrap() }
            })
            .await
            .unwrap();
        until_suspect(&ab, false).await;

        // B's only worker blocks until told to go on: B reads nothing and
        // answers nothing meanwhile, while A keeps sending.
        let (resume, wait) = std::sync::mpsc::channel::<()>();
        rt.spawn(async move {
            let _ = wait.recv_timeout(LIMIT);
        });
        a_out.send_frame(b"during").await.unwrap();
        let sent = std::time::Instant::now();
        until_suspect(&ab, true).await;
        eprintln!(
            "stalled peer: suspect {:?} after a frame went unanswered",
            sent.elapsed()
        );
        assert!(ab.close_reason().is_none());

        resume.send(()).unwrap();
        until_suspect(&ab, false).await;
        let got = rt
            .spawn(async move {
                let first = b_in.recv_frame().await.unwrap().unwrap();
                let second = b_in.recv_frame().await.unwrap().unwrap();
                (first, second)
            })
            .await
            .unwrap();
        assert_eq!((&got.0[..], &got.1[..]), (&b"before"[..], &b"during"[..]));
        assert!(
            ab.close_reason().is_none(),
            "a stall shorter than the idle timeout keeps the link"
        );
        rt.shutdown_background();
    })
    .await;
}

#[test]
fn link_config_is_checked() {
    let id = ServerIdentity::generate();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let _guard = rt.enter();
    for bad in [
        LinkConfig {
            keep_alive: Duration::from_secs(2),
            idle_timeout: Duration::from_secs(1),
        },
        LinkConfig {
            keep_alive: Duration::ZERO,
            idle_timeout: Duration::from_secs(1),
        },
    ] {
        let err = QuicEndpoint::bind(loopback(), &id, vec![], bad).unwrap_err();
        assert!(matches!(err, LinkError::Config(_)), "{err:?}");
    }
    let d = LinkConfig::default();
    assert!(d.keep_alive < d.idle_timeout && d.idle_timeout <= Duration::from_secs(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_links_during_a_handshake_flood() {
    bounded(async {
        let a_id = ServerIdentity::generate();
        let b_id = ServerIdentity::generate();
        let a = node(&a_id, &[&b_id]);
        let b = node(&b_id, &[&a_id]);
        let b_addr = b.local_addr().unwrap();
        use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let sent = std::sync::Arc::new(AtomicU64::new(0));
        let flood = std::thread::spawn({
            let (stop, sent) = (stop.clone(), sent.clone());
            move || transport::flood::flood(b_addr, 1_000_000, 0, &stop, &sent)
        });
        // Once the flood has pushed B past its limits, A, which completes
        // the address validation, still links and exchanges data.
        while sent.load(Ordering::Relaxed) < 2_000 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let accept_link = async {
            loop {
                match b.accept().await.expect("endpoint open") {
                    Ok(link) => return link,
                    Err(e) => assert!(!matches!(e, LinkError::RefusedPeer { .. }), "{e}"),
                }
            }
        };
        let (dialed, ba) = tokio::join!(a.connect(b_addr), accept_link);
        stop.store(true, Ordering::Relaxed);
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let report = flood.join().unwrap().unwrap();
        eprintln!("flood while linking: {report:?}");
        let ab = dialed.unwrap();
        let mut out = ab.open_uni().await.unwrap();
        out.send_frame(b"through").await.unwrap();
        let mut inb = ba.accept_uni().await.unwrap();
        assert_eq!(&inb.recv_frame().await.unwrap().unwrap()[..], b"through");
        assert!(report.sent > 0 && report.answers > 0, "{report:?}");
    })
    .await;
}
