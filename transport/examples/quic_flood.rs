//! Sends a flood of never-completed QUIC handshakes (real Initial packets)
//! to a cluster port: `quic_flood ADDR COUNT RATE` (RATE per second, 0 for
//! as fast as possible). Prints what was sent. Used by `scripts/flood-quic`.

use std::sync::atomic::{AtomicBool, AtomicU64};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() != 3 {
        eprintln!("usage: quic_flood HOST:PORT COUNT RATE_PER_SECOND");
        std::process::exit(2);
    }
    let target = args[0].parse().expect("HOST:PORT");
    let count = args[1].parse().expect("COUNT");
    let rate = args[2].parse().expect("RATE");
    let report = transport::flood::flood(
        target,
        count,
        rate,
        &AtomicBool::new(false),
        &AtomicU64::new(0),
    )
    .expect("flood failed");
    println!(
        "sent {} Initials in {:.2?} ({:.0}/s), {} answers",
        report.sent,
        report.elapsed,
        report.sent as f64 / report.elapsed.as_secs_f64().max(1e-9),
        report.answers
    );
}
