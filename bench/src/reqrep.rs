//! Request/reply latency: one responder echoing payloads, one requester
//! sending requests one at a time, each with its own reply subject under a
//! wildcard inbox subscription (as modern clients do), timing every round
//! trip.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use nats_proto::{encode, Op};
use tokio::time::{timeout, Instant};

use super::client::{err, Conn, Result, CONNECT_TIMEOUT};
use super::report::{Latency, Report};
use super::throughput::payload;
use super::Config;

/// Runs the reqrep scenario.
pub(crate) async fn run(cfg: &Config) -> Result<Report> {
    let mut resp = Conn::connect(&cfg.dial, &cfg.sub_addrs[0], "tern-bench-responder").await?;
    resp.roundtrip(
        format!("SUB {} 1\r\n", cfg.subject).as_bytes(),
        Instant::now() + CONNECT_TIMEOUT,
    )
    .await?;
    let mut req = Conn::connect(&cfg.dial, &cfg.pub_addrs[0], "tern-bench-requester").await?;
    let inbox = format!("_INBOX.{:016x}", rand::random::<u64>());
    req.roundtrip(
        format!("SUB {inbox}.* 1\r\n").as_bytes(),
        Instant::now() + CONNECT_TIMEOUT,
    )
    .await?;

    let resp_err = Arc::new(Mutex::new(None::<String>));
    let responder_task = {
        let resp_err = resp_err.clone();
        tokio::spawn(async move {
            if let Err(e) = responder(resp).await {
                *resp_err.lock().unwrap() = Some(e.to_string());
            }
        })
    };

    let result = match sync(&mut req, cfg, &inbox).await {
        Ok(()) => requester(&mut req, cfg, &inbox).await,
        Err(e) => Err(e),
    };
    responder_task.abort();
    let (mut samples, elapsed) = match result {
        Ok(x) => x,
        Err(e) => {
            return Err(match resp_err.lock().unwrap().take() {
                Some(r) => super::client::BenchError(format!("responder: {r}")),
                None => e,
            })
        }
    };
    let mut r = Report::new(cfg);
    r.elapsed = elapsed.as_secs_f64().max(1e-9);
    r.msgs_per_sec = cfg.msgs as f64 / r.elapsed;
    r.pub_msgs_per_sec = r.msgs_per_sec;
    r.bytes_per_sec = r.msgs_per_sec * cfg.size as f64;
    r.expected = cfg.msgs;
    r.delivered = cfg.msgs;
    r.latency_us = Latency::from_nanos(&mut samples);
    Ok(r)
}

/// Across a cluster, waits until a request gets answered: the responder's
/// interest has reached the requester's server and the requester's inbox
/// interest the responder's. Each probe request has its own reply subject;
/// late answers to earlier probes are skipped by the requester like any
/// stray reply.
async fn sync(req: &mut Conn, cfg: &Config, inbox: &str) -> Result<()> {
    if !cfg.cross {
        return Ok(());
    }
    let limit = cfg.stall.max(CONNECT_TIMEOUT);
    let deadline = Instant::now() + limit;
    let mut out = BytesMut::new();
    for k in 0u64.. {
        if Instant::now() >= deadline {
            return err(format!(
                "no reply across the cluster within {:.1} s (interest did not propagate)",
                limit.as_secs_f64()
            ));
        }
        let reply = format!("{inbox}.sync{k}");
        out.clear();
        encode::write_pub(
            &mut out,
            cfg.subject.as_bytes(),
            Some(reply.as_bytes()),
            b"",
        );
        timeout(cfg.stall, req.stream.send(&out)).await??;
        let wait_until = Instant::now() + Duration::from_millis(25);
        while let Some(op) = req.poll_op(wait_until).await? {
            match op {
                Op::Msg { subject, .. } if subject == reply.as_bytes() => return Ok(()),
                Op::Ping => timeout(cfg.stall, req.stream.send(b"PONG\r\n")).await??,
                Op::Err(t) => return err(format!("server error: {}", String::from_utf8_lossy(&t))),
                _ => {}
            }
        }
    }
    unreachable!("the probe loop only ends by returning")
}

/// Sends warm-up then measured requests sequentially; returns the measured
/// round trips in nanoseconds and the time they took together.
async fn requester(req: &mut Conn, cfg: &Config, inbox: &str) -> Result<(Vec<u64>, Duration)> {
    let body = payload(cfg.size);
    let mut out = BytesMut::with_capacity(cfg.size + 128);
    let mut reply = String::with_capacity(inbox.len() + 24);
    let mut samples = Vec::with_capacity(cfg.msgs as usize);
    let total = cfg.warmup + cfg.msgs;
    let mut start = Instant::now();
    for i in 0..total {
        if i == cfg.warmup {
            start = Instant::now();
        }
        reply.clear();
        reply.push_str(inbox);
        reply.push('.');
        reply.push_str(&i.to_string());
        out.clear();
        encode::write_pub(
            &mut out,
            cfg.subject.as_bytes(),
            Some(reply.as_bytes()),
            &body,
        );
        let t0 = std::time::Instant::now();
        timeout(cfg.stall, req.stream.send(&out)).await??;
        let deadline = Instant::now() + cfg.stall;
        loop {
            match req
                .next_op(deadline)
                .await
                .map_err(|e| super::client::BenchError(format!("waiting for reply {i}: {e}")))?
            {
                Op::Msg {
                    subject, payload, ..
                } if subject == reply.as_bytes() => {
                    if payload.len() != cfg.size {
                        return err(format!(
                            "reply {i} has {} bytes, expected {}",
                            payload.len(),
                            cfg.size
                        ));
                    }
                    break;
                }
                Op::Ping => {
                    timeout(cfg.stall, req.stream.send(b"PONG\r\n")).await??;
                }
                Op::Err(t) => return err(format!("server error: {}", String::from_utf8_lossy(&t))),
                // A late reply to an earlier request, PONG, +OK, INFO.
                _ => {}
            }
        }
        if i >= cfg.warmup {
            samples.push(t0.elapsed().as_nanos() as u64);
        }
    }
    Ok((samples, start.elapsed()))
}

/// Echoes every request's payload to its reply subject, answering all
/// requests one read brought with a single write.
async fn responder(mut conn: Conn) -> Result<()> {
    let mut out = BytesMut::with_capacity(64 * 1024);
    loop {
        let far = Instant::now() + Duration::from_secs(24 * 3600);
        let mut op = Some(conn.next_op(far).await?);
        while let Some(o) = op {
            match o {
                Op::Msg {
                    reply: Some(reply),
                    payload,
                    ..
                } => encode::write_pub(&mut out, &reply, None, &payload),
                Op::Ping => out.extend_from_slice(b"PONG\r\n"),
                Op::Err(t) => return err(format!("server error: {}", String::from_utf8_lossy(&t))),
                _ => {}
            }
            op = conn.try_next_op()?;
        }
        if !out.is_empty() {
            conn.stream.send(&out).await?;
            out.clear();
        }
    }
}
