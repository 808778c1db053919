//! A three-node cluster driven by async-nats: cross-node pub/sub, wildcards,
//! queue groups exactly once cluster-wide, and request/reply. Runs against
//! Tern (QUIC links) or, with SERVER_UNDER_TEST=nats-server, a nats-server
//! cluster (TCP routes) started with the same flags.

mod common;

use common::Server;
use futures::StreamExt;
use std::net::{TcpListener, UdpSocket};
use std::time::Duration;

/// A port free for both TCP and UDP, since Tern's cluster port is UDP and
/// nats-server's is TCP.
fn free_port() -> u16 {
    loop {
        let tcp = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = tcp.local_addr().unwrap().port();
        if UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

struct Cluster {
    nodes: Vec<Server>,
}

impl Cluster {
    /// Starts `n` nodes, each given only node 1 as its seed route, and waits
    /// for the full mesh.
    fn start(n: usize) -> Cluster {
        let ports: Vec<u16> = (0..n).map(|_| free_port()).collect();
        let seed = format!("nats://127.0.0.1:{}", ports[0]);
        let nodes: Vec<Server> = ports
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let listen = format!("nats://127.0.0.1:{p}");
                let name = format!("n{}", i + 1);
                Server::start_with(
                    &[
                        "--cluster",
                        &listen,
                        "--routes",
                        &seed,
                        "--cluster_name",
                        "interop",
                        "-n",
                        &name,
                    ],
                    None,
                )
            })
            .collect();
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        for node in &nodes {
            loop {
                // Distinct peers: nats-server pools several routes per peer.
                let routez = node.monitor("/routez");
                let mut peers: Vec<&str> = routez["routes"]
                    .as_array()
                    .map(|r| r.iter().filter_map(|r| r["remote_id"].as_str()).collect())
                    .unwrap_or_default();
                peers.sort_unstable();
                peers.dedup();
                let routes = peers.len();
                if routes == n - 1 {
                    break;
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "mesh did not form: {routes} routes"
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        Cluster { nodes }
    }
}

async fn connect(server: &Server) -> async_nats::Client {
    async_nats::connect(server.url()).await.expect("connect")
}

/// Waits until `subscriber`'s interest is visible from `publisher`'s node:
/// subscribes a probe after the caller's subscriptions (interest travels in
/// order) and publishes to it from the other node until it arrives.
async fn await_interest(subscriber: &async_nats::Client, publisher: &async_nats::Client) {
    let probe = subscriber.new_inbox();
    let mut sub = subscriber.subscribe(probe.clone()).await.unwrap();
    subscriber.flush().await.unwrap();
    loop {
        publisher
            .publish(probe.clone(), "probe".into())
            .await
            .unwrap();
        publisher.flush().await.unwrap();
        if tokio::time::timeout(Duration::from_millis(100), sub.next())
            .await
            .is_ok()
        {
            return;
        }
    }
}

async fn collect(sub: &mut async_nats::Subscriber, quiet: Duration) -> Vec<async_nats::Message> {
    let mut out = Vec::new();
    while let Ok(Some(m)) = tokio::time::timeout(quiet, sub.next()).await {
        out.push(m);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_node_pub_sub_queues_and_requests() {
    tokio::time::timeout(Duration::from_secs(60), async {
        let cluster = Cluster::start(3);
        let [n1, n2, n3] = [&cluster.nodes[0], &cluster.nodes[1], &cluster.nodes[2]];
        let (a, b, c) = (connect(n1).await, connect(n2).await, connect(n3).await);

        let mut wide = b.subscribe("orders.>").await.unwrap();
        let mut star = c.subscribe("orders.*").await.unwrap();
        let mut qb = b.queue_subscribe("work", "workers".into()).await.unwrap();
        let mut qc = c.queue_subscribe("work", "workers".into()).await.unwrap();
        let mut service = c.subscribe("svc.echo").await.unwrap();
        tokio::spawn({
            let c = c.clone();
            async move {
                while let Some(m) = service.next().await {
                    if let Some(reply) = m.reply {
                        let _ = c.publish(reply, m.payload).await;
                    }
                }
            }
        });
        await_interest(&b, &a).await;
        await_interest(&c, &a).await;

        for i in 0..10 {
            a.publish("orders.new", format!("o{i}").into())
                .await
                .unwrap();
        }
        a.publish("orders.eu.new", "deep".into()).await.unwrap();
        for i in 0..200 {
            a.publish("work", format!("w{i}").into()).await.unwrap();
        }
        a.flush().await.unwrap();

        let reply = a
            .request("svc.echo", "ping".into())
            .await
            .expect("request across nodes");
        assert_eq!(&reply.payload[..], b"ping");

        let wide_got = collect(&mut wide, Duration::from_millis(500)).await;
        let star_got = collect(&mut star, Duration::from_millis(200)).await;
        assert_eq!(wide_got.len(), 11, "orders.> on node 2 gets all 11");
        assert_eq!(
            star_got.len(),
            10,
            "orders.* on node 3 gets the 10 one-token orders"
        );
        let ws: Vec<&[u8]> = wide_got.iter().map(|m| &m.payload[..]).collect();
        assert_eq!(ws[0], b"o0", "per-publisher order is kept across the link");
        assert_eq!(ws[9], b"o9");

        let from_b = collect(&mut qb, Duration::from_millis(300)).await.len();
        let from_c = collect(&mut qc, Duration::from_millis(200)).await.len();
        assert_eq!(
            from_b + from_c,
            200,
            "each queued message once cluster-wide ({from_b}+{from_c})"
        );
        assert!(
            from_b > 0 && from_c > 0,
            "both nodes' members served ({from_b}, {from_c})"
        );

        // No responders anywhere in the cluster: the requester learns at once.
        let err = a.request("svc.nobody", "x".into()).await.unwrap_err();
        assert_eq!(err.kind(), async_nats::RequestErrorKind::NoResponders);
    })
    .await
    .expect("test timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_queue_member_is_preferred() {
    if common::is_nats_server() {
        // nats-server picks uniformly among local members and routes for a
        // client's message (about 50/50 here); Tern prefers a local member,
        // as its cluster design asks (docs/DIFFERENCES.md).
        eprintln!("skipped: nats-server does not prefer local queue members");
        return;
    }
    tokio::time::timeout(Duration::from_secs(60), async {
        let cluster = Cluster::start(2);
        let (a, b) = (
            connect(&cluster.nodes[0]).await,
            connect(&cluster.nodes[1]).await,
        );
        let mut local = a.queue_subscribe("jobs", "g".into()).await.unwrap();
        let mut remote = b.queue_subscribe("jobs", "g".into()).await.unwrap();
        await_interest(&b, &a).await;
        for i in 0..100 {
            a.publish("jobs", format!("{i}").into()).await.unwrap();
        }
        a.flush().await.unwrap();
        let l = collect(&mut local, Duration::from_millis(500)).await.len();
        let r = collect(&mut remote, Duration::from_millis(200)).await.len();
        assert_eq!(
            (l, r),
            (100, 0),
            "a member on the publisher's node takes every message"
        );
    })
    .await
    .expect("test timed out");
}
