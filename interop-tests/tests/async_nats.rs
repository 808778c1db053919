//! Interop tests driving the server under test with the real async-nats
//! client (plus raw sockets for misbehaving clients).
//!
//! Run against Tern (build it first: `cargo build --release -p router`):
//!     cargo test -p interop-tests --release -- --test-threads=2
//! and against the specification, the real nats-server:
//!     SERVER_UNDER_TEST=nats-server cargo test -p interop-tests --release -- --test-threads=2
//!
//! Every test is bounded by a timeout; none asserts on timing.

mod common;

use std::collections::HashSet;
use std::future::Future;
use std::time::Duration;

use async_nats::{ConnectOptions, HeaderMap, Message, Subscriber};
use bytes::Bytes;
use common::{RawConn, Server};
use futures::{FutureExt, StreamExt};

/// Runs a test body with a deadline, so a hang fails instead of blocking.
async fn bounded<F: Future<Output = ()>>(secs: u64, body: F) {
    tokio::time::timeout(Duration::from_secs(secs), body)
        .await
        .unwrap_or_else(|_| panic!("test did not finish within {secs}s"));
}

async fn connect(server: &Server) -> async_nats::Client {
    async_nats::connect(server.url())
        .await
        .unwrap_or_else(|e| panic!("connect to {}: {e}", server.url()))
}

async fn next(sub: &mut Subscriber) -> Message {
    sub.next().await.expect("subscription ended unexpectedly")
}

/// Waits until the server has processed everything `client` sent so far.
///
/// async-nats's `flush` only writes the socket buffer (no PING round trip),
/// so it does not prove a SUB is in place before another connection
/// publishes. A message to a fresh subject that this connection itself
/// subscribes to comes back only after the server has handled all of the
/// connection's earlier operations. Needs echo (the default).
async fn sync(client: &async_nats::Client) {
    let probe_subject = client.new_inbox();
    let mut probe = client.subscribe(probe_subject.clone()).await.unwrap();
    client.publish(probe_subject, "sync".into()).await.unwrap();
    client.flush().await.unwrap();
    next(&mut probe).await;
}

/// [`sync`] for a connection with echo off: `other` publishes to the probe
/// until it arrives.
async fn sync_no_echo(client: &async_nats::Client, other: &async_nats::Client) {
    let probe_subject = client.new_inbox();
    let mut probe = client.subscribe(probe_subject.clone()).await.unwrap();
    client.flush().await.unwrap();
    loop {
        other
            .publish(probe_subject.clone(), "sync".into())
            .await
            .unwrap();
        other.flush().await.unwrap();
        if tokio::time::timeout(Duration::from_millis(100), probe.next())
            .await
            .is_ok()
        {
            return;
        }
    }
}

/// Messages already delivered to `sub`, without waiting for more.
/// (Unconstrained: tokio's cooperative budget would otherwise make the
/// channel report "pending" after ~128 messages.)
fn drain_ready(sub: &mut Subscriber) -> Vec<Message> {
    let mut out = Vec::new();
    while let Some(Some(m)) = tokio::task::unconstrained(sub.next()).now_or_never() {
        out.push(m);
    }
    out
}

#[tokio::test]
async fn pub_sub() {
    let server = Server::start();
    bounded(20, async {
        let client = connect(&server).await;
        let mut sub = client.subscribe("greet.joe").await.unwrap();
        client.flush().await.unwrap();
        for i in 0..10 {
            client
                .publish("greet.joe", format!("hello {i}").into())
                .await
                .unwrap();
        }
        client.flush().await.unwrap();
        for i in 0..10 {
            let m = next(&mut sub).await;
            assert_eq!(m.subject.as_str(), "greet.joe");
            assert_eq!(m.payload, Bytes::from(format!("hello {i}")));
            assert!(m.reply.is_none());
            assert!(m.headers.is_none());
        }
    })
    .await;
}

#[tokio::test]
async fn wildcards() {
    let server = Server::start();
    bounded(20, async {
        let client = connect(&server).await;
        let mut star = client.subscribe("a.*").await.unwrap();
        let mut gt = client.subscribe("a.>").await.unwrap();
        let mut mid = client.subscribe("a.*.c").await.unwrap();
        client.flush().await.unwrap();
        for subject in ["a", "a.b", "a.b.c", "b.c", "a.x.y.z", "a.b.d", "a.q.c"] {
            client.publish(subject, subject.into()).await.unwrap();
        }
        // A last message every subscription matches marks the end: messages
        // from one publisher arrive in order, so anything missing or extra
        // shows up before it.
        client.publish("a.end", "end".into()).await.unwrap();
        client.flush().await.unwrap();
        client.publish("a.end.c", "end".into()).await.unwrap();
        client.flush().await.unwrap();

        async fn until_end(sub: &mut Subscriber) -> Vec<String> {
            let mut seen = Vec::new();
            loop {
                let m = next(sub).await;
                if m.payload == "end" {
                    return seen;
                }
                seen.push(m.subject.to_string());
            }
        }
        assert_eq!(until_end(&mut star).await, ["a.b"]);
        assert_eq!(
            until_end(&mut gt).await,
            ["a.b", "a.b.c", "a.x.y.z", "a.b.d", "a.q.c"]
        );
        // `a.end` is not matched by `a.*.c`; `a.end.c` is.
        assert_eq!(until_end(&mut mid).await, ["a.b.c", "a.q.c"]);
        // `>` also ended on `a.end.c`; `*` must not have got it.
        assert_eq!(next(&mut gt).await.subject.as_str(), "a.end.c");
        assert!(drain_ready(&mut star).is_empty());
    })
    .await;
}

#[tokio::test]
async fn queue_group_delivers_exactly_once() {
    const N: usize = 300;
    const MEMBERS: usize = 3;
    let server = Server::start();
    bounded(30, async {
        let publisher = connect(&server).await;
        let mut plain = publisher.subscribe("work").await.unwrap();
        let mut members = Vec::new();
        for _ in 0..MEMBERS {
            let c = connect(&server).await;
            let q = c.queue_subscribe("work", "workers".into()).await.unwrap();
            let done = c.subscribe("work.done").await.unwrap();
            sync(&c).await;
            members.push((c, q, done));
        }
        publisher.flush().await.unwrap();
        for i in 0..N {
            publisher
                .publish("work", i.to_string().into())
                .await
                .unwrap();
        }
        // Every member connection gets this after all its queue messages.
        publisher.publish("work.done", "".into()).await.unwrap();
        publisher.flush().await.unwrap();

        let mut per_member = Vec::new();
        for (_c, mut q, mut done) in members {
            next(&mut done).await;
            let got: Vec<usize> = drain_ready(&mut q)
                .iter()
                .map(|m| std::str::from_utf8(&m.payload).unwrap().parse().unwrap())
                .collect();
            per_member.push(got);
        }
        let total: usize = per_member.iter().map(Vec::len).sum();
        let unique: HashSet<usize> = per_member.iter().flatten().copied().collect();
        assert_eq!(
            total,
            N,
            "deliveries per member: {:?}",
            per_member.iter().map(Vec::len).collect::<Vec<_>>()
        );
        assert_eq!(unique.len(), N, "some message was delivered twice");
        assert!(
            per_member.iter().all(|m| !m.is_empty()),
            "a member got nothing: {:?}",
            per_member.iter().map(Vec::len).collect::<Vec<_>>()
        );
        // A plain subscriber on the same subject still sees everything.
        for i in 0..N {
            assert_eq!(next(&mut plain).await.payload, i.to_string());
        }
    })
    .await;
}

#[tokio::test]
async fn request_reply() {
    let server = Server::start();
    bounded(20, async {
        let responder = connect(&server).await;
        let mut svc = responder.subscribe("svc.upper").await.unwrap();
        sync(&responder).await;
        let task = tokio::spawn(async move {
            while let Some(m) = svc.next().await {
                let reply = m.reply.expect("request has a reply subject");
                let text = std::str::from_utf8(&m.payload).unwrap().to_uppercase();
                responder.publish(reply, text.into()).await.unwrap();
            }
        });
        let client = connect(&server).await;
        for word in ["alpha", "beta", "gamma"] {
            let resp = client.request("svc.upper", word.into()).await.unwrap();
            assert_eq!(resp.payload, word.to_uppercase());
        }
        // Concurrent requests on one connection share its reply inbox.
        let answers = futures::future::join_all((0..20).map(|i| {
            let client = client.clone();
            async move { client.request("svc.upper", format!("r{i}").into()).await }
        }))
        .await;
        for (i, a) in answers.into_iter().enumerate() {
            assert_eq!(a.unwrap().payload, format!("R{i}"));
        }
        task.abort();
    })
    .await;
}

#[tokio::test]
async fn no_responders() {
    let server = Server::start();
    bounded(20, async {
        let client = connect(&server).await;
        let err = client
            .request("nobody.listens.here", "?".into())
            .await
            .expect_err("a request nobody serves must fail");
        assert_eq!(
            err.kind(),
            async_nats::RequestErrorKind::NoResponders,
            "{err}"
        );
    })
    .await;
}

#[tokio::test]
async fn headers_round_trip() {
    let server = Server::start();
    bounded(20, async {
        let client = connect(&server).await;
        let mut sub = client.subscribe("hdr").await.unwrap();
        client.flush().await.unwrap();

        let mut headers = HeaderMap::new();
        headers.insert("X-Single", "one");
        headers.append("X-Multi", "first");
        headers.append("X-Multi", "second value");
        headers.append("X-Multi", "third");
        headers.insert("Nats-Msg-Id", "abc-123");
        client
            .publish_with_headers("hdr", headers.clone(), "body".into())
            .await
            .unwrap();
        // Headers with an empty payload, and a reply subject.
        let mut only = HeaderMap::new();
        only.insert("K", "v");
        client
            .publish_with_reply_and_headers("hdr", "reply.here", only, Bytes::new())
            .await
            .unwrap();
        client.flush().await.unwrap();

        let m = next(&mut sub).await;
        assert_eq!(m.payload, "body");
        let got = m.headers.expect("headers arrive");
        assert_eq!(got.get("X-Single").map(|v| v.as_str()), Some("one"));
        assert_eq!(got.get("Nats-Msg-Id").map(|v| v.as_str()), Some("abc-123"));
        let multi: Vec<&str> = got.get_all("X-Multi").map(|v| v.as_str()).collect();
        assert_eq!(multi, ["first", "second value", "third"]);
        assert!(m.status.is_none());

        let m = next(&mut sub).await;
        assert!(m.payload.is_empty());
        assert_eq!(m.reply.as_deref(), Some("reply.here"));
        assert_eq!(
            m.headers
                .expect("headers arrive")
                .get("K")
                .map(|v| v.as_str()),
            Some("v")
        );
    })
    .await;
}

#[tokio::test]
async fn echo_off() {
    let server = Server::start();
    bounded(20, async {
        let quiet = ConnectOptions::new()
            .no_echo()
            .connect(server.url())
            .await
            .unwrap();
        let normal = connect(&server).await;
        let mut q_sub = quiet.subscribe("echo").await.unwrap();
        let mut n_sub = normal.subscribe("echo").await.unwrap();
        sync_no_echo(&quiet, &normal).await;
        sync(&normal).await;

        quiet.publish("echo", "from quiet".into()).await.unwrap();
        quiet.flush().await.unwrap();
        // Once the other connection has it, the server has handled it...
        assert_eq!(next(&mut n_sub).await.payload, "from quiet");
        normal.publish("echo", "from normal".into()).await.unwrap();
        normal.flush().await.unwrap();
        // ...so an echo would reach the no-echo connection before this.
        assert_eq!(next(&mut q_sub).await.payload, "from normal");
        // An echoing connection sees its own message.
        assert_eq!(next(&mut n_sub).await.payload, "from normal");
        assert!(drain_ready(&mut q_sub).is_empty());
    })
    .await;
}

#[tokio::test]
async fn auto_unsubscribe() {
    let server = Server::start();
    bounded(20, async {
        let client = connect(&server).await;
        let mut sub = client.subscribe("limited").await.unwrap();
        sub.unsubscribe_after(5).await.unwrap();
        client.flush().await.unwrap();

        // The server's side, seen on a raw connection: UNSUB sid 3.
        let mut raw = RawConn::connect_and_handshake(server.addr());
        raw.send(b"SUB limited 7\r\nUNSUB 7 3\r\nPING\r\n");
        assert_eq!(raw.next_line(), "PONG");

        for i in 0..10 {
            client
                .publish("limited", i.to_string().into())
                .await
                .unwrap();
        }
        client.flush().await.unwrap();

        let mut got = Vec::new();
        while let Some(m) = sub.next().await {
            got.push(m.payload);
        }
        assert_eq!(got, ["0", "1", "2", "3", "4"]);

        // Published messages reached the raw connection before this PONG.
        raw.send(b"PING\r\n");
        let mut msgs = Vec::new();
        loop {
            let line = raw.next_line();
            if line == "PONG" {
                break;
            }
            assert!(line.starts_with("MSG limited 7 "), "{line:?}");
            msgs.push(raw.next_line());
        }
        assert_eq!(msgs, ["0", "1", "2"]);
    })
    .await;
}

#[tokio::test]
async fn one_mib_payload() {
    let server = Server::start();
    bounded(30, async {
        let client = connect(&server).await;
        let max = client.server_info().max_payload;
        assert_eq!(max, 1024 * 1024, "default max_payload");
        let mut sub = client.subscribe("big").await.unwrap();
        client.flush().await.unwrap();

        let payload: Bytes = (0..max)
            .map(|i| (i % 251) as u8)
            .collect::<Vec<u8>>()
            .into();
        client.publish("big", payload.clone()).await.unwrap();
        client.flush().await.unwrap();
        let m = next(&mut sub).await;
        assert_eq!(m.payload.len(), max);
        assert!(m.payload == payload, "1 MiB payload corrupted");

        // One byte more is refused by the client before it reaches the wire.
        let too_big = Bytes::from(vec![b'x'; max + 1]);
        let err = client
            .publish("big", too_big)
            .await
            .expect_err("max_payload + 1 must be refused");
        assert_eq!(
            err.kind(),
            async_nats::client::PublishErrorKind::MaxPayloadExceeded
        );
        // The connection is unaffected.
        client.publish("big", "small".into()).await.unwrap();
        client.flush().await.unwrap();
        assert_eq!(next(&mut sub).await.payload, "small");

        // A raw client that sends it anyway gets the server's verdict.
        let mut raw = RawConn::connect_and_handshake(server.addr());
        raw.send(format!("PUB big {}\r\n", max + 1).as_bytes());
        let rest = raw.read_until_closed(Duration::from_secs(10));
        let text = String::from_utf8_lossy(&rest);
        assert!(
            text.contains("-ERR 'Maximum Payload Violation'"),
            "got {text:?}"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnect_after_server_restart() {
    let mut server = Server::start();
    let (events_tx, mut events) = tokio::sync::mpsc::unbounded_channel();
    let client = ConnectOptions::new()
        .reconnect_delay_callback(|_| Duration::from_millis(50))
        .event_callback(move |e| {
            let tx = events_tx.clone();
            async move {
                let _ = tx.send(e);
            }
        })
        .connect(server.url())
        .await
        .unwrap();
    let mut sub = client.subscribe("survives").await.unwrap();
    client.flush().await.unwrap();
    client.publish("survives", "before".into()).await.unwrap();
    bounded(10, async {
        assert_eq!(next(&mut sub).await.payload, "before");
    })
    .await;

    let old_port = server.port;
    let old_pid = server.pid();
    tokio::task::block_in_place(|| server.restart());
    assert_eq!(server.port, old_port);
    assert_ne!(server.pid(), old_pid);

    bounded(30, async {
        // The subscription is restored on the new server process.
        common::await_reconnect_and_delivery(&mut events, &client, &mut sub, "survives").await;
        // A fresh client on the restarted server interoperates with the old one.
        let other = connect(&server).await;
        other.publish("survives", "fresh".into()).await.unwrap();
        other.flush().await.unwrap();
        loop {
            let m = next(&mut sub).await;
            if m.payload == "fresh" {
                break;
            }
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_connections() {
    const N: usize = 1000;
    let limit = common::raise_fd_limit();
    assert!(
        limit >= (2 * N + 200) as libc::rlim_t,
        "open-files limit {limit} too low for {N} connections"
    );
    let server = Server::start();
    bounded(90, async {
        let mut subs = Vec::with_capacity(N);
        let url = server.url();
        let mut clients = Vec::with_capacity(N);
        // Connect in waves so the listen backlog never overflows.
        for wave in 0..N / 100 {
            let batch = futures::future::join_all((0..100).map(|i| {
                let url = url.clone();
                async move {
                    let c = ConnectOptions::new()
                        .name(format!("conn-{}", wave * 100 + i))
                        .connect(url)
                        .await
                        .expect("connect");
                    let s = c.subscribe("fanout").await.expect("subscribe");
                    sync(&c).await;
                    (c, s)
                }
            }))
            .await;
            for (c, s) in batch {
                clients.push(c);
                subs.push(s);
            }
        }
        let varz = server.varz();
        assert!(
            varz["connections"].as_u64().unwrap_or(0) >= N as u64,
            "/varz connections: {}",
            varz["connections"]
        );
        clients[0]
            .publish("fanout", "to everyone".into())
            .await
            .unwrap();
        clients[0].flush().await.unwrap();
        let received = futures::future::join_all(subs.iter_mut().map(next)).await;
        assert_eq!(received.len(), N);
        assert!(received.iter().all(|m| m.payload == "to everyone"));
    })
    .await;
}

#[tokio::test]
async fn ten_thousand_subscriptions_on_one_connection() {
    const N: usize = 10_000;
    let server = Server::start();
    bounded(60, async {
        let client = connect(&server).await;
        let mut subs = Vec::with_capacity(N);
        for i in 0..N {
            subs.push(client.subscribe(format!("many.{i}")).await.unwrap());
        }
        sync(&client).await;
        let varz = server.varz();
        assert!(
            varz["subscriptions"].as_u64().unwrap_or(0) >= N as u64,
            "/varz subscriptions: {}",
            varz["subscriptions"]
        );
        let publisher = connect(&server).await;
        for i in 0..N {
            publisher
                .publish(format!("many.{i}"), i.to_string().into())
                .await
                .unwrap();
        }
        publisher.flush().await.unwrap();
        for (i, sub) in subs.iter_mut().enumerate() {
            let m = next(sub).await;
            assert_eq!(m.subject.as_str(), format!("many.{i}"));
            assert_eq!(m.payload, i.to_string());
        }
        // Unsubscribing them all leaves nothing behind.
        for sub in subs.iter_mut() {
            sub.unsubscribe().await.unwrap();
        }
        sync(&client).await;
        let varz = server.varz();
        assert!(
            varz["subscriptions"].as_u64().unwrap_or(u64::MAX) < N as u64,
            "/varz subscriptions after unsubscribing: {}",
            varz["subscriptions"]
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_consumer_is_isolated() {
    const MSG: usize = 16 * 1024;
    const BATCH: usize = 8; // 128 KiB in flight to the healthy subscriber
    const MAX_BYTES: usize = 256 * 1024 * 1024;
    let server = Server::start_with_config("max_pending: 262144\nmax_payload: 65536\n");
    bounded(90, async {
        // The slow consumer: subscribes, then never reads.
        let mut slow = tokio::task::block_in_place(|| {
            let mut raw = RawConn::connect_and_handshake(server.addr());
            raw.send(b"SUB flood 1\r\nPING\r\n");
            assert_eq!(raw.next_line(), "PONG");
            raw
        });
        let healthy = connect(&server).await;
        let mut sub = healthy.subscribe("flood").await.unwrap();
        sync(&healthy).await;
        let publisher = connect(&server).await;

        let payload = Bytes::from(vec![b'z'; MSG]);
        let mut sent = 0usize;
        let mut received = 0usize;
        let slow_consumers = |server: &Server| {
            tokio::task::block_in_place(|| server.varz()["slow_consumers"].as_u64().unwrap_or(0))
        };
        // Publish in batches paced by the healthy subscriber, so only the
        // raw connection falls behind, until the server has cut it off.
        while slow_consumers(&server) == 0 {
            assert!(
                sent * MSG < MAX_BYTES,
                "no slow consumer detected after {} MiB",
                (sent * MSG) >> 20
            );
            for _ in 0..64 {
                for _ in 0..BATCH {
                    let mut p = sent.to_be_bytes().to_vec();
                    p.extend_from_slice(&payload[8..]);
                    publisher.publish("flood", p.into()).await.unwrap();
                    sent += 1;
                }
                publisher.flush().await.unwrap();
                while received < sent {
                    let m = next(&mut sub).await;
                    assert_eq!(m.payload.len(), MSG);
                    let seq = usize::from_be_bytes(m.payload[..8].try_into().unwrap());
                    assert_eq!(seq, received, "healthy subscriber lost or reordered");
                    received += 1;
                }
            }
        }
        assert_eq!(received, sent);
        eprintln!("slow consumer detected after {} MiB", (sent * MSG) >> 20);
        // The healthy subscriber and the publisher are still connected.
        healthy.flush().await.unwrap();
        publisher.publish("flood", "last".into()).await.unwrap();
        publisher.flush().await.unwrap();
        assert_eq!(next(&mut sub).await.payload, "last");
        // And the slow one was disconnected.
        tokio::task::block_in_place(|| slow.read_until_closed(Duration::from_secs(30)));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_gets_unknown_protocol_error_and_close() {
    let server = Server::start();
    bounded(20, async {
        let client = connect(&server).await;
        let mut sub = client.subscribe("still.works").await.unwrap();
        client.flush().await.unwrap();

        let cases: [&[u8]; 3] = [
            b"GARBAGE\r\n",
            b"CONNECT {\"verbose\":false}\r\nHELLO WORLD\r\n",
            b"CONNECT {\"verbose\":false}\r\nPUB foo 3\r\nabcdef\r\n",
        ];
        let mut closing = Vec::new();
        for case in cases {
            let out = tokio::task::block_in_place(|| {
                let mut raw = RawConn::connect(server.addr());
                raw.send(case);
                raw.read_until_closed(Duration::from_secs(10))
            });
            closing.push((String::from_utf8_lossy(case).to_string(), out));
        }
        for (case, out) in &closing {
            let text = String::from_utf8_lossy(out);
            assert!(
                text.contains("-ERR 'Unknown Protocol Operation'"),
                "{case:?} got {text:?}"
            );
        }

        client.publish("still.works", "yes".into()).await.unwrap();
        client.flush().await.unwrap();
        assert_eq!(next(&mut sub).await.payload, "yes");
    })
    .await;
}
