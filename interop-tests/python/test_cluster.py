"""Clustering: nodes that form a full mesh from one seed route and behave,
to clients, like one server.

Tern links nodes over QUIC (the cluster port is UDP) and authenticates them by
nkey; nats-server links them over TCP routes.  Both take the same flags
(`--cluster`, `--routes`, `--cluster_name`), so most tests here run against
either (`SERVER_UNDER_TEST=nats-server` checks the expectations).  Where
nats-server pools several TCP routes per peer, tests count distinct peers
(`remote_id`) rather than /routez entries; Tern keeps exactly one link per
peer, which is checked on Tern only.

Waiting rule: nothing sleeps and hopes.  `fence()` is the round trip every
test waits on: each subscriber connection subscribes a fresh marker subject
and each publisher connection publishes it until every subscriber has one
from every publisher.  A connection's commands are handled in order and one
publisher's messages stay in order on their way to one subscriber, so when a
fence returns (a) the interest the subscribers' servers had before is known
wherever the publishers are, and (b) everything the publishers sent before has
been delivered (and, with `recs=`, has run through the callbacks).
"""

from __future__ import annotations

import asyncio
import collections
import random
import subprocess
import time
import uuid

import nats
import nats.errors
import pytest

import harness

KIND = harness.server_kind()
IS_TERN = KIND == "tern"
TIMEOUT = 10.0


def tern_only(reason: str):
    return pytest.mark.skipif(not IS_TERN, reason=reason)


# -- helpers ------------------------------------------------------------------

async def until(pred, timeout: float = TIMEOUT, what="condition", interval: float = 0.05):
    """Poll `pred` (sync or async) until truthy; AssertionError naming `what`
    (a string or a callable giving one) after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last_err = None
    while True:
        try:
            r = pred()
            if asyncio.iscoroutine(r):
                r = await r
        except OSError as e:  # monitoring port of a node that is going away
            r, last_err = False, e
        if r:
            return r
        if time.monotonic() > deadline:
            desc = what() if callable(what) else what
            raise AssertionError(f"timed out after {timeout}s waiting for {desc}"
                                 + (f" (last error: {last_err})" if last_err else ""))
        await asyncio.sleep(interval)


async def wait_mesh(cluster: harness.Cluster, nodes, timeout: float = 20.0):
    """Until every node's /routez lists exactly the other nodes."""
    problems: list[str] = []

    def ok():
        problems[:] = cluster.mesh_problems(nodes)
        return not problems

    await until(ok, timeout, what=lambda: "a full mesh: " + "; ".join(problems))
    if IS_TERN:
        for n in nodes:
            rz = n.routez()
            assert rz["num_routes"] == len(nodes) - 1, rz  # one link per peer


class Rec:
    """A subscription that records (subject, payload) of what it receives."""

    def __init__(self):
        self.msgs: list[tuple[str, bytes]] = []
        self.sub = None
        self.nc = None

    @classmethod
    async def make(cls, nc, subject: str, queue: str = "") -> "Rec":
        r = cls()
        r.nc = nc

        async def cb(msg):
            r.msgs.append((msg.subject, msg.data))

        r.sub = await nc.subscribe(subject, queue=queue, cb=cb)
        return r

    @property
    def payloads(self) -> list[bytes]:
        return [p for _, p in self.msgs]


async def fence(sub_ncs, pub_ncs, recs=(), timeout: float = TIMEOUT):
    """See the module docstring.  Returns the number of marker rounds sent."""
    subject = "fence." + uuid.uuid4().hex
    got = [set() for _ in sub_ncs]
    subs = []
    for i, nc in enumerate(sub_ncs):
        async def cb(msg, i=i):
            got[i].add(msg.data)
        subs.append(await nc.subscribe(subject, cb=cb))
    want = {str(j).encode() for j in range(len(pub_ncs))}
    deadline = time.monotonic() + timeout
    rounds = 0
    while not all(g >= want for g in got):
        if time.monotonic() > deadline:
            missing = [(i, sorted(want - g)) for i, g in enumerate(got) if not g >= want]
            raise AssertionError(f"fence: after {timeout}s (subscriber, publishers) still "
                                 f"without a marker: {missing}")
        for j, p in enumerate(pub_ncs):
            await p.publish(subject, str(j).encode())
        rounds += 1
        await asyncio.sleep(0.05 if rounds < 10 else 0.2)
    for s in subs:
        await s.unsubscribe()
    # Messages that arrived before the markers are queued for their callbacks.
    await asyncio.wait_for(asyncio.gather(*(r.sub._pending_queue.join() for r in recs)), 5)
    return rounds


def remote_subjects(node: harness.ClusterNode, peer_id: str) -> tuple[list[str], int]:
    """(subjects, count) node's /routez says the peer has interest in."""
    subjects: list[str] = []
    count = 0
    for r in node.route_peers(subs=True).get(peer_id, []):
        subjects += r.get("subscriptions_list") or []
        count += r.get("subscriptions", 0)
    return subjects, count


@pytest.fixture
def cluster(tmp_path):
    c = harness.Cluster(KIND, tmp_path)
    yield c
    c.stop_all()
    for n in c.nodes:  # shown by pytest only when the test failed
        print(f"--- log of {n.workdir.name} ({n.url}, cluster port {n.cluster_port}) ---\n"
              f"{n.log_tail(40)}")


@pytest.fixture
def start_cluster(cluster):
    """`await start_cluster(n)`: n nodes, each with a route to node 1 only,
    returned once every /routez lists the n-1 others."""

    async def start(n: int):
        nodes = cluster.start(n)
        await wait_mesh(cluster, nodes)
        return nodes

    return start


# -- one cluster, steady state ------------------------------------------------

async def test_cross_node_pub_sub(start_cluster, nats_connect):
    n1, n2, n3 = await start_cluster(3)
    pub = await nats_connect(n1)
    c1, c2, c3 = [await nats_connect(n) for n in (n1, n2, n3)]
    recs = [await Rec.make(c, "xn.greet") for c in (c1, c2, c3)]
    await fence([c1, c2, c3], [pub])
    before = sum(r["out_msgs"] for r in n1.route_peers()[n2.server_id])
    n = 50
    for i in range(n):
        await pub.publish("xn.greet", str(i).encode())
    await fence([c1, c2, c3], [pub], recs)
    want = [str(i).encode() for i in range(n)]
    for node, r in zip(("node1", "node2", "node3"), recs):
        # Every subscriber once, and one publisher's messages in order.
        assert r.payloads == want, node
        assert {s for s, _ in r.msgs} == {"xn.greet"}
    # The link counters saw the traffic (nats-server counts more on its routes).
    assert sum(r["out_msgs"] for r in n1.route_peers()[n2.server_id]) - before >= n
    assert sum(r["in_msgs"] for r in n2.route_peers()[n1.server_id]) >= n
    # Headers cross too.
    hsub = await c3.subscribe("xn.headers")
    await fence([c3], [pub])
    await pub.publish("xn.headers", b"with headers", headers={"X-Trace": "abc", "X-N": "1"})
    m = await hsub.next_msg(timeout=TIMEOUT)
    assert m.data == b"with headers"
    assert m.headers == {"X-Trace": "abc", "X-N": "1"}


async def test_wildcards_across_nodes(start_cluster, nats_connect):
    n1, n2, n3 = await start_cluster(3)
    pub = await nats_connect(n1)
    c2, c3 = await nats_connect(n2), await nats_connect(n3)
    star = await Rec.make(c2, "wc.*.x")
    tail = await Rec.make(c2, "wc.>")
    exact = await Rec.make(c3, "wc.a.x")
    mid = await Rec.make(c3, "wc.*.*.z")
    await fence([c2, c3], [pub])
    subjects = ["wc.a.x", "wc.b.x", "wc.a.y", "wc.a.x.z", "wc", "v.a.x", "wc.b.c.z", "wc.a"]
    for s in subjects:
        await pub.publish(s, s.encode())
    await fence([c2, c3], [pub], [star, tail, exact, mid])
    assert [s for s, _ in star.msgs] == ["wc.a.x", "wc.b.x"]
    assert [s for s, _ in tail.msgs] == ["wc.a.x", "wc.b.x", "wc.a.y", "wc.a.x.z",
                                         "wc.b.c.z", "wc.a"]
    assert [s for s, _ in exact.msgs] == ["wc.a.x"]
    assert [s for s, _ in mid.msgs] == ["wc.a.x.z", "wc.b.c.z"]
    for r in (star, tail, exact, mid):
        assert all(s.encode() == p for s, p in r.msgs)


async def test_varz_counts_cluster_traffic(start_cluster, nats_connect):
    # nats-server's /varz totals include messages sent to and received from
    # routes: a message published on node 1 for a subscriber on node 2 is
    # out on node 1 and in (and out again) on node 2.
    n1, n2 = await start_cluster(2)
    pub = await nats_connect(n1)
    c2 = await nats_connect(n2)
    rec = await Rec.make(c2, "vz.count")
    await fence([c2], [pub])
    v1, v2 = n1.varz(), n2.varz()
    n, size = 20, 100
    for i in range(n):
        await pub.publish("vz.count", b"%0100d" % i)
    await fence([c2], [pub], [rec])
    assert len(rec.msgs) == n
    w1, w2 = n1.varz(), n2.varz()
    # Fence markers add a little on top; the workload must be there.
    assert w1["out_msgs"] - v1["out_msgs"] >= n, (v1, w1)
    assert w1["out_bytes"] - v1["out_bytes"] >= n * size, (v1, w1)
    assert w2["in_msgs"] - v2["in_msgs"] >= n, (v2, w2)
    assert w2["in_bytes"] - v2["in_bytes"] >= n * size, (v2, w2)
    assert w2["out_msgs"] - v2["out_msgs"] >= n, (v2, w2)


async def test_request_reply_across_nodes(start_cluster, nats_connect):
    n1, n2, n3 = await start_cluster(3)
    c2 = await nats_connect(n2)

    async def echo(msg):
        await c2.publish(msg.reply, msg.data.upper())

    await c2.subscribe("svc.echo", cb=echo)
    reqs = [await nats_connect(n1), await nats_connect(n3)]
    for req in reqs:
        # nats-py makes its reply subscription (`_INBOX.<id>.*`) at the first
        # request; made here, the fence puts it on node2 before any request
        # (test_request_right_after_subscribing covers the first request).
        await req._init_request_sub()
    await fence([c2] + reqs, [c2] + reqs)
    for i in range(20):
        m = await reqs[i % 2].request("svc.echo", f"hi {i}".encode(), timeout=5)
        assert m.data == f"HI {i}".encode()


async def test_request_right_after_subscribing(start_cluster, nats_connect):
    """One connection's commands take effect in order, also cluster-wide:
    the reply subscription a request depends on is known on the responder's
    node before the request is (nats-server's routes carry both in one TCP
    stream)."""
    n1, n2, n3 = await start_cluster(3)
    c2 = await nats_connect(n2)

    async def echo(msg):
        await c2.publish(msg.reply, msg.data.upper())

    await c2.subscribe("svc.first", cb=echo)
    probe = await nats_connect(n1)
    await fence([c2], [probe])
    for attempt in range(20):
        nc = await nats_connect(n1)
        for j in range(2000):
            await nc.subscribe(f"busy.{attempt}.{j}")
        try:
            # A reply lost to misordering never comes; a slow one (loaded
            # machine, 2000 SUBs to propagate first) is fine: wait long.
            m = await nc.request("svc.first", f"r{attempt}".encode(), timeout=TIMEOUT)
        except nats.errors.TimeoutError:
            pytest.fail(f"attempt {attempt}: request made right after 2000 SUBs on node1, "
                        f"served on node2, got no reply within {TIMEOUT}s")
        assert m.data == f"R{attempt}".encode()
        await nc.close()


async def test_no_responders_across_cluster(start_cluster, nats_connect):
    n1, n2, n3 = await start_cluster(3)
    c1 = await nats_connect(n1)
    with pytest.raises(nats.errors.NoRespondersError):
        await c1.request("nr.nobody", b"?", timeout=5)
    # Served only on node 3: the request crosses the cluster, no 503.
    c3 = await nats_connect(n3)

    async def answer(msg):
        await c3.publish(msg.reply, b"served by node3")

    sub = await c3.subscribe("nr.svc", cb=answer)
    # Both ways: node1 knows the responder, node3 knows c1's reply inbox.
    await fence([c1, c3], [c1, c3])
    m = await c1.request("nr.svc", b"?", timeout=5)
    assert m.data == b"served by node3"
    # Once the responder is gone (and node 1 knows it), no responders again
    # rather than a timeout.
    await sub.unsubscribe()
    await c3.flush()
    await until(lambda: "nr.svc" not in remote_subjects(n1, n3.server_id)[0],
                what="node1 to forget node3's interest in nr.svc")
    with pytest.raises(nats.errors.NoRespondersError):
        await c1.request("nr.svc", b"?", timeout=5)


async def _queue_members(start_cluster, nats_connect):
    """3 nodes; members of `workers` on nodes 2 and 3, none on node 1."""
    n1, n2, n3 = await start_cluster(3)
    pub = await nats_connect(n1)
    c1, c2, c3 = [await nats_connect(n) for n in (n1, n2, n3)]
    m2 = await Rec.make(c2, "qg.job", queue="workers")
    m3 = await Rec.make(c3, "qg.job", queue="workers")
    await fence([c2, c3], [pub])
    return pub, (c1, c2, c3), (m2, m3)


async def test_queue_group_once_cluster_wide(start_cluster, nats_connect):
    pub, (c1, c2, c3), (m2, m3) = await _queue_members(start_cluster, nats_connect)
    n = 60
    for i in range(n):
        await pub.publish("qg.job", f"a{i}".encode())
    await fence([c2, c3], [pub], [m2, m3])
    got = m2.payloads + m3.payloads
    assert sorted(got) == sorted(f"a{i}".encode() for i in range(n))  # each exactly once
    assert m2.payloads and m3.payloads, (len(m2.payloads), len(m3.payloads))
    # With a member on the publisher's node too: still once per message.
    m1 = await Rec.make(c1, "qg.job", queue="workers")
    await fence([c1, c2, c3], [pub])
    marks = len(m2.msgs), len(m3.msgs)
    for i in range(n):
        await pub.publish("qg.job", f"b{i}".encode())
    await fence([c1, c2, c3], [pub], [m1, m2, m3])
    got = m1.payloads + m2.payloads[marks[0]:] + m3.payloads[marks[1]:]
    assert sorted(got) == sorted(f"b{i}".encode() for i in range(n))


@tern_only("intended difference (docs/DIFFERENCES.md, Cluster): Tern gives a queue group's "
           "message to a member on the publisher's node when there is one; nats-server "
           "picks uniformly among local members and routes")
async def test_queue_group_prefers_local_member(start_cluster, nats_connect):
    pub, (c1, c2, c3), (m2, m3) = await _queue_members(start_cluster, nats_connect)
    m1 = await Rec.make(c1, "qg.job", queue="workers")
    await fence([c1, c2, c3], [pub])
    n = 60
    for i in range(n):
        await pub.publish("qg.job", f"b{i}".encode())
    await fence([c1, c2, c3], [pub], [m1, m2, m3])
    assert m1.payloads == [f"b{i}".encode() for i in range(n)]
    assert (len(m2.msgs), len(m3.msgs)) == (0, 0)


async def test_late_subscription_is_seen_cluster_wide(start_cluster, nats_connect):
    n1, n2, n3 = await start_cluster(3)
    pub = await nats_connect(n1)
    c3 = await nats_connect(n3)
    late = await c3.subscribe("late.sub")
    deadline = time.monotonic() + TIMEOUT
    k = 0
    while True:
        await pub.publish("late.sub", str(k).encode())
        k += 1
        try:
            m = await late.next_msg(timeout=0.1)
            break
        except nats.errors.TimeoutError:
            assert time.monotonic() < deadline, "node3's late subscription never got a message"
    assert m.subject == "late.sub"


async def test_unsubscribe_propagates(start_cluster, nats_connect):
    n1, n2, n3 = await start_cluster(3)
    c2 = await nats_connect(n2)
    keep = await c2.subscribe("unsub.keep")
    gone = await c2.subscribe("unsub.gone")
    await c2.flush()
    await until(lambda: {"unsub.keep", "unsub.gone"} <= set(remote_subjects(n1, n2.server_id)[0]),
                what=lambda: f"node1 to list node2's subscriptions: {remote_subjects(n1, n2.server_id)}")
    _, before = remote_subjects(n1, n2.server_id)
    await gone.unsubscribe()
    await c2.flush()
    await until(lambda: "unsub.gone" not in remote_subjects(n1, n2.server_id)[0],
                what=lambda: f"node1 to drop unsub.gone: {remote_subjects(n1, n2.server_id)}")
    subjects, after = remote_subjects(n1, n2.server_id)
    assert after == before - 1, (before, after, subjects)
    assert "unsub.keep" in subjects
    if IS_TERN:
        # Interest-based forwarding: node1 no longer sends node2 anything for it.
        pub = await nats_connect(n1)
        out = lambda: sum(r["out_msgs"] for r in n1.route_peers()[n2.server_id])  # noqa: E731
        before_out = out()
        for i in range(10):
            await pub.publish("unsub.gone", b"x")
        await harness.sync_point(pub)  # node1 has handled the publishes
        assert out() == before_out
    # Auto-unsubscribe (UNSUB sid max) and a closed connection end interest too.
    pub = await nats_connect(n1)
    auto = await Rec.make(c2, "unsub.auto")
    await auto.sub.unsubscribe(limit=3)
    closing = await nats_connect(n2)
    await closing.subscribe("unsub.closed")
    await fence([c2, closing], [pub])
    for i in range(5):
        await pub.publish("unsub.auto", str(i).encode())
    await fence([c2], [pub], [auto])
    assert auto.payloads == [b"0", b"1", b"2"]
    await closing.close()
    await until(lambda: not {"unsub.auto", "unsub.closed"} & set(remote_subjects(n1, n2.server_id)[0]),
                what=lambda: f"node1 to drop unsub.auto and unsub.closed: "
                             f"{remote_subjects(n1, n2.server_id)}")
    assert "unsub.keep" in remote_subjects(n1, n2.server_id)[0]
    await keep.unsubscribe()


# -- nodes going away and coming back -----------------------------------------

async def test_failover_to_another_node(start_cluster, nats_connect):
    n1, n2, n3 = await start_cluster(3)
    # INFO tells clients of every node's client URL.
    urls = {f"127.0.0.1:{n.port}" for n in (n1, n2, n3)}
    with n2.raw() as raw:
        assert set(raw.info.get("connect_urls") or []) == urls, raw.info
    reconnected = asyncio.Event()

    async def on_reconnect():
        reconnected.set()

    # Only node2 is given: the others come from INFO connect_urls.
    c = await nats_connect(n2, allow_reconnect=True, max_reconnect_attempts=60,
                           reconnect_time_wait=0.1, connect_timeout=2,
                           reconnected_cb=on_reconnect)
    assert {f"{u.hostname}:{u.port}" for u in c.servers} == urls
    rec = await Rec.make(c, "fo.x")
    pub = await nats_connect(n1)
    await fence([c], [pub])
    await pub.publish("fo.x", b"before")
    await fence([c], [pub], [rec])
    assert rec.payloads == [b"before"]

    n2.stop()  # SIGKILL
    k = 0

    async def received_after():
        nonlocal k
        await pub.publish("fo.x", f"after{k}".encode())
        k += 1
        return any(p.startswith(b"after") for p in rec.payloads)

    await until(received_after, 20, what="a message published on node1 after node2 died",
                interval=0.1)
    # nats-py calls reconnected_cb only after a PING round trip that follows
    # the re-sent SUBs, so messages can arrive before it: wait, bounded.
    await asyncio.wait_for(reconnected.wait(), TIMEOUT)
    assert c.connected_url.port in (n1.port, n3.port)


async def test_restart_rejoins_and_resyncs(cluster, start_cluster, nats_connect):
    n1, n2, n3 = await start_cluster(3)
    old_id = n3.server_id
    old_starts = {r["start"] for r in n1.route_peers()[old_id]}
    n3.stop()  # SIGKILL
    n3.start(same_ports=True)
    if IS_TERN:
        assert n3.server_id == old_id  # same key file, same node id

    def rejoined():
        routes = n1.route_peers().get(n3.server_id, [])
        return routes and not ({r["start"] for r in routes} & old_starts)

    await until(rejoined, 20, what="node1 to list a new route to the restarted node3")
    await wait_mesh(cluster, [n1, n2, n3])
    c3 = await nats_connect(n3)
    rec = await Rec.make(c3, "rs.x")
    p1, p2 = await nats_connect(n1), await nats_connect(n2)
    # Both node1 and node2 (linked to node3 by gossip) reach it again.
    await fence([c3], [p1, p2], timeout=20)
    for i in range(10):
        await p1.publish("rs.x", f"1-{i}".encode())
        await p2.publish("rs.x", f"2-{i}".encode())
    await fence([c3], [p1, p2], [rec])
    assert [p for p in rec.payloads if p.startswith(b"1-")] == [f"1-{i}".encode() for i in range(10)]
    assert [p for p in rec.payloads if p.startswith(b"2-")] == [f"2-{i}".encode() for i in range(10)]
    assert len(rec.payloads) == 20


# -- forming the mesh -----------------------------------------------------------

async def test_five_nodes_full_mesh_from_one_seed(start_cluster, nats_connect):
    nodes = await start_cluster(5)  # wait_mesh: each lists the 4 others
    subs = [await nats_connect(n) for n in nodes[:4]]
    recs = [await Rec.make(c, "five.x") for c in subs]
    pub = await nats_connect(nodes[4])
    await fence(subs, [pub])
    for i in range(20):
        await pub.publish("five.x", str(i).encode())
    await fence(subs, [pub], recs)
    for i, r in enumerate(recs):
        assert r.payloads == [str(k).encode() for k in range(20)], f"node{i + 1}"


async def test_late_joiner_links_with_every_member(cluster, start_cluster, nats_connect):
    """Nodes that join a formed mesh through different seeds are linked
    with every member: the seed tells its peers about the newcomer (they
    have no other way to learn of it) and the newcomer about the members."""
    nodes = await start_cluster(4)
    late = cluster.add(routes=[nodes[2].cluster_port])  # seeded by node 3
    later = cluster.add(routes=[late.cluster_port])  # seeded by the newcomer
    everyone = nodes + [late, later]
    await wait_mesh(cluster, everyone)
    sub = await nats_connect(later)
    rec = await Rec.make(sub, "late.x")
    pubs = [await nats_connect(n) for n in nodes]
    await fence([sub], pubs)
    for i, p in enumerate(pubs):
        await p.publish("late.x", str(i).encode())
    await fence([sub], pubs, [rec])
    assert sorted(rec.payloads) == [str(i).encode() for i in range(len(pubs))]


async def test_twelve_nodes_full_mesh_from_one_seed(start_cluster):
    """Every pair of twelve nodes started at once, each with only node 1 as
    a route, ends up with exactly one link (wait_mesh checks both)."""
    await start_cluster(12)


async def test_simultaneous_dial_no_duplicate_links(cluster, nats_connect):
    """a and b each have the other as a route, so both dial: whichever links
    come up, exactly one survives, the same one on both ends."""
    pa, pb = harness.free_cluster_port(), harness.free_cluster_port()
    a = cluster.add(routes=[pb], cluster_port=pa)
    b = cluster.add(routes=[pa], cluster_port=pb)
    await wait_mesh(cluster, [a, b])
    if IS_TERN:
        # An observation window, not a wait: a second dial (a's retransmitted
        # Initial) may land late and must be resolved like the first.
        await asyncio.sleep(1.5)
        await wait_mesh(cluster, [a, b])

        def agreed():
            ra, rb = a.routez()["routes"], b.routez()["routes"]
            # Both ends kept the same link: one dialed it, the other accepted
            # it.  Polled: until a late link is registered on both ends, each
            # may still list a different one.
            return len(ra) == len(rb) == 1 and ra[0]["did_solicit"] != rb[0]["did_solicit"]

        await until(agreed, what=lambda: "both ends to keep the same single link: "
                    f"{a.routez()['routes']} / {b.routez()['routes']}")
    ca, cb = await nats_connect(a), await nats_connect(b)
    ra_, rb_ = await Rec.make(ca, "dup.x"), await Rec.make(cb, "dup.x")
    pa_, pb_ = await nats_connect(a), await nats_connect(b)
    await fence([ca, cb], [pa_, pb_])
    for i in range(20):
        await pa_.publish("dup.x", f"a{i}".encode())
        await pb_.publish("dup.x", f"b{i}".encode())
    await fence([ca, cb], [pa_, pb_], [ra_, rb_])
    want = sorted([f"a{i}".encode() for i in range(20)] + [f"b{i}".encode() for i in range(20)])
    assert sorted(ra_.payloads) == want
    assert sorted(rb_.payloads) == want
    if IS_TERN:
        assert a.routez()["num_routes"] == b.routez()["num_routes"] == 1


async def _stranger(cluster, start_cluster):
    """2 nodes of cluster `tc`, and a node of cluster `other` whose route
    points at node 1; returns once node 1 logged refusing it."""
    n1, n2 = await start_cluster(2)
    x = cluster.add(routes=[n1.cluster_port], cluster_name="other")
    await until(lambda: "does not match" in n1.log_text(), 15,
                what="node1 to log the cluster name mismatch")
    return n1, n2, x


async def test_cluster_name_mismatch_never_joins(cluster, start_cluster):
    n1, n2, x = await _stranger(cluster, start_cluster)
    deadline = time.monotonic() + 1.5
    while time.monotonic() < deadline:
        for n in (n1, n2):
            assert x.server_id not in n.route_peers()
        assert x.routez()["num_routes"] == 0
        await asyncio.sleep(0.1)
    assert not cluster.mesh_problems([n1, n2])


async def test_refused_node_backs_off(cluster, start_cluster):
    n1, n2, x = await _stranger(cluster, start_cluster)
    start = n1.log_text().count("does not match")
    deadline = time.monotonic() + 1.5
    while time.monotonic() < deadline:  # an observation window, not a wait
        await asyncio.sleep(0.1)
    attempts = n1.log_text().count("does not match") - start
    # Exponential backoff from 100 ms gives about 4 in 1.5 s; allow far more.
    assert attempts <= 30, f"{attempts} refused attempts in 1.5 s"


# -- trust -----------------------------------------------------------------------

def keygen() -> tuple[str, str]:
    out = subprocess.run([harness.tern_bin(), "keygen"], capture_output=True, text=True,
                         timeout=10, check=True).stdout.split()
    seed = next(w for w in out if w.startswith("SN"))
    public = next(w for w in out if w.startswith("N"))
    return seed, public


@tern_only("nkey-pinned cluster peers (`cluster { authorization { peers } }`, "
           "`tern keygen`) are Tern's; nats-server routes authenticate otherwise")
async def test_pinned_peers_refuse_unknown_key(cluster, tmp_path):
    keys = [keygen() for _ in range(4)]
    seeds = []
    for i, (seed, _) in enumerate(keys):
        p = tmp_path / f"k{i + 1}.seed"
        p.write_text(seed + "\n")
        seeds.append(p)
    pinned = [pub for _, pub in keys[:3]]

    def conf(i: int, seed_port: int | None, peers: list[str]) -> str:
        routes = f'routes: ["nats://127.0.0.1:{seed_port}"]' if seed_port else ""
        plist = ", ".join(f'"{p}"' for p in peers)
        return (f'server_key_file: "{seeds[i]}"\n'
                'cluster {\n  name: trust\n  listen: "127.0.0.1:{cluster_port}"\n'
                f"  {routes}\n  authorization {{ peers: [{plist}] }}\n}}\n")

    n1 = cluster.add(config=conf(0, None, pinned), flags=False, log_to_file=True)
    n2 = cluster.add(config=conf(1, n1.cluster_port, pinned), flags=False)
    n3 = cluster.add(config=conf(2, n1.cluster_port, pinned), flags=False)
    assert [n.server_id for n in (n1, n2, n3)] == pinned  # the key files are used
    await wait_mesh(cluster, [n1, n2, n3])

    stranger = keys[3][1]
    n4 = cluster.add(config=conf(3, n1.cluster_port, pinned + [stranger]), flags=False)
    assert n4.server_id == stranger
    await until(lambda: stranger in n1.log_text(), 15,
                what=lambda: f"node1's log to name the refused key {stranger}")
    deadline = time.monotonic() + 1.5
    while time.monotonic() < deadline:
        for n in (n1, n2, n3):
            assert stranger not in n.route_peers()
        assert n4.routez()["num_routes"] == 0
        await asyncio.sleep(0.1)
    assert not cluster.mesh_problems([n1, n2, n3])


@tern_only("pinned peer keys are Tern's; reloading them (SIGHUP) closes links to "
           "nodes no longer allowed")
async def test_reload_routes_and_peers(cluster, tmp_path):
    import os
    import signal
    keys = [keygen() for _ in range(2)]
    seeds = []
    for i, (seed, _) in enumerate(keys):
        p = tmp_path / f"k{i + 1}.seed"
        p.write_text(seed + "\n")
        seeds.append(p)
    both = [pub for _, pub in keys]

    def conf(i: int, seed_port: int | None, peers: list[str]) -> str:
        routes = f'routes: ["nats://127.0.0.1:{seed_port}"]' if seed_port else ""
        plist = ", ".join(f'"{p}"' for p in peers)
        return (f'server_key_file: "{seeds[i]}"\n'
                'cluster {\n  name: trust\n  listen: "127.0.0.1:{cluster_port}"\n'
                f"  {routes}\n  authorization {{ peers: [{plist}] }}\n}}\n")

    def reload(node, text: str) -> None:
        before = node.log_text().count("Reloaded server configuration")
        node.config_path.write_text(text.replace("{cluster_port}", str(node.cluster_port)))
        os.kill(node.pid, signal.SIGHUP)
        deadline = time.monotonic() + TIMEOUT
        while node.log_text().count("Reloaded server configuration") <= before:
            assert time.monotonic() < deadline, f"no reload; log:\n{node.log_tail()}"
            time.sleep(0.02)

    n1 = cluster.add(config=conf(0, None, both), flags=False)
    n2 = cluster.add(config=conf(1, None, both), flags=False)
    assert n1.routez()["num_routes"] == 0
    # A route added by a reload is dialled.
    reload(n2, conf(1, n1.cluster_port, both))
    await wait_mesh(cluster, [n1, n2])
    # Unpinning node 2 on node 1 closes their link, and it stays closed
    # although node 2 keeps dialling its configured route.
    reload(n1, conf(0, None, both[:1]))
    await until(lambda: n1.routez()["num_routes"] == 0 and n2.routez()["num_routes"] == 0,
                15, what="the link to the unpinned node to close")
    deadline = time.monotonic() + 1.5
    while time.monotonic() < deadline:
        assert n1.routez()["num_routes"] == 0
        await asyncio.sleep(0.1)
    # Pinned again: node 2's dial loop links again.
    reload(n1, conf(0, None, both))
    await wait_mesh(cluster, [n1, n2])
    # A route removed by a reload is closed and no longer dialled.
    reload(n2, conf(1, None, both))
    await until(lambda: n1.routez()["num_routes"] == 0 and n2.routez()["num_routes"] == 0,
                15, what="the removed route's link to close")
    deadline = time.monotonic() + 1.5
    while time.monotonic() < deadline:
        assert n2.routez()["num_routes"] == 0
        await asyncio.sleep(0.1)


# -- randomized: a cluster delivers what one server delivers ------------------

TOKENS = ["a", "b", "c"]


def _pattern(rng: random.Random) -> str:
    n = rng.randint(1, 3)
    toks = [rng.choice(TOKENS + ["*"]) for _ in range(n)]
    if rng.random() < 0.2:
        toks[-1] = ">"
    return "w." + ".".join(toks)


def _literal(rng: random.Random) -> str:
    return "w." + ".".join(rng.choice(TOKENS) for _ in range(rng.randint(1, 3)))


def matches(pattern: str, subject: str) -> bool:
    p, s = pattern.split("."), subject.split(".")
    for i, tok in enumerate(p):
        if tok == ">":
            return len(s) > i
        if i >= len(s) or (tok != "*" and tok != s[i]):
            return False
    return len(p) == len(s)


def make_workload(seed: int):
    rng = random.Random(seed)
    subs = []
    for _ in range(rng.randint(10, 20)):
        queue = rng.choice(["", "", "", "q1", "q2"])
        subs.append((rng.randrange(3), _pattern(rng), queue))
    pubs = [(rng.randrange(3), _literal(rng), f"m{i}".encode()) for i in range(200)]
    return subs, pubs


def model(subs, pubs):
    """What a single server must deliver: per plain subscription, every
    matching message; per queue group (by name), every message that matches
    any member, once."""
    plain = {}
    groups = collections.defaultdict(list)
    for i, (_, pattern, queue) in enumerate(subs):
        if queue:
            groups[queue].append(pattern)
        else:
            plain[i] = sorted((s, p) for _, s, p in pubs if matches(pattern, s))
    queues = {q: sorted((s, p) for _, s, p in pubs if any(matches(pt, s) for pt in pats))
              for q, pats in groups.items()}
    return plain, queues


async def run_workload(servers, subs, pubs, nats_connect):
    """Subscribers and three publishers on servers[node]; returns what was
    received, per plain subscription and per queue group (all members)."""
    recs, sub_ncs = [], []
    for node, pattern, queue in subs:
        nc = await nats_connect(servers[node])
        recs.append(await Rec.make(nc, pattern, queue=queue))
        sub_ncs.append(nc)
    pub_ncs = [await nats_connect(s) for s in servers]
    await fence(sub_ncs, pub_ncs, timeout=20)  # all interest known everywhere
    for node, subject, payload in pubs:
        await pub_ncs[node].publish(subject, payload)
    await fence(sub_ncs, pub_ncs, recs, timeout=20)
    plain, queues = {}, collections.defaultdict(list)
    for i, ((_, pattern, queue), r) in enumerate(zip(subs, recs)):
        assert all(matches(pattern, s) for s, _ in r.msgs), (pattern, r.msgs)
        if queue:
            queues[queue] += r.msgs
        else:
            plain[i] = sorted(r.msgs)
    for nc in sub_ncs + pub_ncs:
        await nc.close()
    return plain, {q: sorted(v) for q, v in queues.items()}


@pytest.mark.parametrize("seed", [20240611, 7, 1234])
async def test_randomized_cluster_equals_single_server(seed, server_factory, start_cluster,
                                                       nats_connect):
    subs, pubs = make_workload(seed)
    want_plain, want_queues = model(subs, pubs)
    # The workload is not degenerate.
    assert want_queues and sum(map(len, want_queues.values())) > 20
    assert sum(map(len, want_plain.values())) > 100

    single = server_factory()
    got_single = await run_workload([single] * 3, subs, pubs, nats_connect)
    nodes = await start_cluster(3)
    got_cluster = await run_workload(nodes, subs, pubs, nats_connect)

    def diff(got, want):
        return {k: (len(got.get(k, [])), len(want.get(k, [])))
                for k in set(got) | set(want) if got.get(k) != want.get(k)}

    assert got_single[0] == want_plain, diff(got_single[0], want_plain)
    assert got_single[1] == want_queues, diff(got_single[1], want_queues)
    assert got_cluster[0] == got_single[0], diff(got_cluster[0], got_single[0])
    assert got_cluster[1] == got_single[1], diff(got_cluster[1], got_single[1])
