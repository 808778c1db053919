//! Connection set-up rate: many short-lived connections, each doing what a
//! client does before its first message (TCP connect, the TLS handshake if
//! asked for, INFO, CONNECT, PING, PONG) and then closing. What a server
//! spends on accepting clients matters when many reconnect at once, e.g.
//! after a restart, and TLS makes it far more expensive.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use super::client::{BenchError, Conn, Result};
use super::report::{Latency, Report};
use super::Config;

/// What one phase of connections produced.
#[derive(Default)]
struct Outcome {
    /// Set-up times of the connections that succeeded, in nanoseconds.
    samples: Vec<u64>,
    failed: u64,
    first_error: Option<String>,
}

/// Runs the connect scenario: `cfg.warmup` unmeasured connections, then
/// `cfg.msgs` measured ones, `cfg.parallel` at a time.
pub(crate) async fn run(cfg: &Config) -> Result<Report> {
    if cfg.warmup > 0 {
        let (warm, _) = phase(cfg, cfg.warmup).await;
        if warm.samples.is_empty() {
            return Err(BenchError(warm.first_error.unwrap_or_default()));
        }
    }
    let (mut out, elapsed) = phase(cfg, cfg.msgs).await;
    let ok = out.samples.len() as u64;
    let mut r = Report::new(cfg);
    r.elapsed = elapsed.as_secs_f64().max(1e-9);
    r.msgs_per_sec = ok as f64 / r.elapsed;
    r.pub_msgs_per_sec = r.msgs_per_sec;
    r.expected = cfg.msgs;
    r.delivered = ok;
    r.lost = out.failed;
    r.latency_us = Latency::from_nanos(&mut out.samples);
    if out.failed > 0 {
        r.error = Some(format!(
            "{} of {} connections failed (first: {})",
            out.failed,
            cfg.msgs,
            out.first_error.unwrap_or_default()
        ));
    }
    Ok(r)
}

/// Sets up and closes `n` connections with `cfg.parallel` workers; returns
/// what happened and how long it took in all.
async fn phase(cfg: &Config, n: u64) -> (Outcome, Duration) {
    let next = Arc::new(AtomicU64::new(0));
    let outcome = Arc::new(Mutex::new(Outcome::default()));
    let start = Instant::now();
    let workers: Vec<_> = (0..cfg.parallel)
        .map(|w| {
            let (next, outcome) = (next.clone(), outcome.clone());
            let dial = cfg.dial.clone();
            let addrs = cfg.pub_addrs.clone();
            tokio::spawn(async move {
                let name = format!("tern-bench-connect-{w}");
                let mut samples = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= n {
                        break;
                    }
                    let addr = &addrs[i as usize % addrs.len()];
                    let t0 = std::time::Instant::now();
                    match Conn::connect(&dial, addr, &name).await {
                        Ok(conn) => {
                            samples.push(t0.elapsed().as_nanos() as u64);
                            drop(conn);
                        }
                        Err(e) => {
                            let mut o = outcome.lock().unwrap();
                            o.failed += 1;
                            o.first_error.get_or_insert(e.to_string());
                        }
                    }
                }
                outcome.lock().unwrap().samples.extend(samples);
            })
        })
        .collect();
    for w in workers {
        if let Err(e) = w.await {
            let mut o = outcome.lock().unwrap();
            o.first_error
                .get_or_insert(format!("connect worker failed: {e}"));
        }
    }
    let elapsed = start.elapsed();
    let out = std::mem::take(&mut *outcome.lock().unwrap());
    (out, elapsed)
}
