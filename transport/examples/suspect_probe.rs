//! Measures false suspicion (`QuicLink::is_suspect` on a healthy link) with
//! the default link timing: two endpoints on loopback, 10 s each of sparse
//! traffic (a frame every 100 ms), an idle link, and busy traffic, sampling
//! both sides' flag every 2 ms. Prints figures; asserts nothing. Run it with
//! `cargo run --release -p transport --example suspect_probe`, alongside
//! whatever CPU load is of interest.

use peer::ServerIdentity;
use std::time::{Duration, Instant};
use transport::quic::{LinkConfig, QuicEndpoint};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let a_id = ServerIdentity::generate();
    let b_id = ServerIdentity::generate();
    let lo = "127.0.0.1:0".parse().unwrap();
    let a = QuicEndpoint::bind(lo, &a_id, vec![], LinkConfig::default()).unwrap();
    let b = QuicEndpoint::bind(lo, &b_id, vec![], LinkConfig::default()).unwrap();
    let (ab, ba) = tokio::join!(a.connect(b.local_addr().unwrap()), b.accept());
    let (ab, ba) = (ab.unwrap(), ba.unwrap().unwrap());
    for phase in ["sparse", "idle", "busy"] {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let t = if phase != "idle" {
            let ab = ab.clone();
            let ba = ba.clone();
            let stop = stop.clone();
            Some(tokio::spawn(async move {
                let mut out = ab.open_uni().await.unwrap();
                let mut inb = None;
                let mut n = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    out.send_frame(&[0u8; 200]).await.unwrap();
                    if inb.is_none() {
                        inb = Some(ba.accept_uni().await.unwrap());
                    }
                    inb.as_mut().unwrap().recv_frame().await.unwrap();
                    n += 1;
                    // Sparse: one frame per 100 ms; busy: a 1 ms pause per 100.
                    if phase == "sparse" {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    } else if n.is_multiple_of(100) {
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                }
                n
            }))
        } else {
            None
        };
        let start = Instant::now();
        let (mut samples, mut suspect, mut flips, mut prev) = (0u64, 0u64, 0u64, false);
        while start.elapsed() < Duration::from_secs(10) {
            let s = ab.is_suspect() || ba.is_suspect();
            samples += 1;
            if s {
                suspect += 1;
            }
            if s && !prev {
                flips += 1;
            }
            prev = s;
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let n = match t {
            Some(t) => t.await.unwrap(),
            None => 0,
        };
        eprintln!(
            "{phase}: {suspect}/{samples} samples suspect, {flips} episodes, {n} msgs, lost: {:?}",
            ab.close_reason()
        );
    }
}
