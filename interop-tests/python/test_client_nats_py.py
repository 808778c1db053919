"""Core messaging driven by the real nats-py client.

Waiting rule: never sleep and hope.  Each test waits for something the server
must already have processed, e.g. a message the test sent to itself after the
commands it depends on (one connection's commands are handled in order).
"""

from __future__ import annotations

import asyncio

import nats
import nats.errors
import pytest

from harness import sync_point

TIMEOUT = 5.0


async def test_pub_sub(server, nats_connect):
    nc = await nats_connect(server)
    sub = await nc.subscribe("greet.joe")
    await nc.publish("greet.joe", b"hello")
    msg = await sub.next_msg(timeout=TIMEOUT)
    assert msg.subject == "greet.joe"
    assert msg.data == b"hello"
    assert msg.reply == ""


async def test_pub_sub_between_connections(server, nats_connect):
    sub_nc = await nats_connect(server)
    pub_nc = await nats_connect(server)
    sub = await sub_nc.subscribe("a.b")
    await sync_point(sub_nc)  # SUB is in place before anyone publishes
    for i in range(100):
        await pub_nc.publish("a.b", str(i).encode())
    got = [(await sub.next_msg(timeout=TIMEOUT)).data for _ in range(100)]
    # Messages from one publisher arrive in publish order.
    assert got == [str(i).encode() for i in range(100)]


async def test_wildcards(server, nats_connect):
    nc = await nats_connect(server)
    star = await nc.subscribe("w.*.x")
    gt = await nc.subscribe("w.>")
    exact = await nc.subscribe("w.a.x")
    subjects = ["w.a.x", "w.b.x", "w.a.y", "w.a.x.z", "w", "v.a.x"]
    for s in subjects:
        await nc.publish(s, s.encode())
    await nc.publish("w.end.x", b"end")  # matches all but exact: marks the end

    async def drain(sub, until):
        seen = []
        while True:
            m = await sub.next_msg(timeout=TIMEOUT)
            seen.append(m.subject)
            if m.subject == until:
                return seen

    assert await drain(star, "w.end.x") == ["w.a.x", "w.b.x", "w.end.x"]
    assert await drain(gt, "w.end.x") == ["w.a.x", "w.b.x", "w.a.y", "w.a.x.z", "w.end.x"]
    m = await exact.next_msg(timeout=TIMEOUT)
    assert m.subject == "w.a.x"
    with pytest.raises(nats.errors.TimeoutError):
        # gt and star saw the end marker, so nothing else can still be on its
        # way to `exact` (same connection, in-order delivery).
        await exact.next_msg(timeout=0.05)


async def test_queue_group_delivers_each_message_once(server, nats_connect):
    n = 300
    members = []
    for _ in range(3):
        nc = await nats_connect(server)
        q = await nc.subscribe("jobs", queue="workers")
        ctl = await nc.subscribe("jobs.done")
        await sync_point(nc)
        members.append((q, ctl))
    plain_nc = await nats_connect(server)
    plain = await plain_nc.subscribe("jobs")  # not in the group: gets all
    await sync_point(plain_nc)

    pub = await nats_connect(server)
    for i in range(n):
        await pub.publish("jobs", str(i).encode())
    await pub.publish("jobs.done", b"")

    counts, seen = [], []
    for q, ctl in members:
        # jobs.done was published after every job, by the same publisher to
        # the same connection, so once it arrived all jobs for this member did.
        await ctl.next_msg(timeout=TIMEOUT)
        c = 0
        while True:
            try:
                m = await q.next_msg(timeout=0.01)
            except nats.errors.TimeoutError:
                break
            seen.append(m.data)
            c += 1
        counts.append(c)
    assert sum(counts) == n, counts
    assert sorted(seen, key=int) == [str(i).encode() for i in range(n)]
    assert all(c > 0 for c in counts), counts
    for i in range(n):
        assert (await plain.next_msg(timeout=TIMEOUT)).data == str(i).encode()


async def test_request_reply(server, nats_connect):
    svc = await nats_connect(server)
    cli = await nats_connect(server)

    async def handler(msg):
        await msg.respond(b"re:" + msg.data)

    await svc.subscribe("svc.echo", cb=handler)
    await sync_point(svc)
    for i in range(5):
        rep = await cli.request("svc.echo", f"q{i}".encode(), timeout=TIMEOUT)
        assert rep.data == f"re:q{i}".encode()


async def test_no_responders(server, nats_connect):
    nc = await nats_connect(server)
    # The server answers at once with a 503 status message; a timeout here
    # (TimeoutError) would mean no-responders is not implemented.
    with pytest.raises(nats.errors.NoRespondersError):
        await nc.request("nobody.home", b"?", timeout=TIMEOUT)


async def test_headers_round_trip(server, nats_connect):
    nc = await nats_connect(server)
    sub = await nc.subscribe("hdr")
    hdrs = {"X-Trace": "abc-123", "Content-Type": "text/plain", "Empty-Ish": "v"}
    await nc.publish("hdr", b"body", headers=hdrs)
    msg = await sub.next_msg(timeout=TIMEOUT)
    assert msg.data == b"body"
    assert msg.headers == hdrs
    # Headers with an empty body, and a plain message after a headers one.
    await nc.publish("hdr", b"", headers={"Only": "headers"})
    await nc.publish("hdr", b"plain")
    m1 = await sub.next_msg(timeout=TIMEOUT)
    m2 = await sub.next_msg(timeout=TIMEOUT)
    assert (m1.data, m1.headers) == (b"", {"Only": "headers"})
    assert (m2.data, m2.headers) == (b"plain", None)


async def test_request_reply_with_headers(server, nats_connect):
    svc = await nats_connect(server)
    cli = await nats_connect(server)

    async def handler(msg):
        await svc.publish(msg.reply, msg.data[::-1], headers={"Seen": msg.headers["Ask"]})

    await svc.subscribe("svc.rev", cb=handler)
    await sync_point(svc)
    rep = await cli.request("svc.rev", b"abc", timeout=TIMEOUT, headers={"Ask": "1"})
    assert rep.data == b"cba"
    assert rep.headers == {"Seen": "1"}


async def test_no_echo(server, nats_connect):
    quiet = await nats_connect(server, no_echo=True)
    other = await nats_connect(server)
    marker = await other.subscribe("echo.marker")
    await sync_point(other)
    sub = await quiet.subscribe("echo.t")
    await quiet.publish("echo.t", b"self")
    # `other` sees the marker only after the server handled quiet's SUB and
    # its "self" message (a no_echo client cannot round-trip to itself).
    await quiet.publish("echo.marker", b"")
    await marker.next_msg(timeout=TIMEOUT)
    await other.publish("echo.t", b"other")
    first = await sub.next_msg(timeout=TIMEOUT)
    assert first.data == b"other"
    # Echo on (the default) for comparison: the own message comes back.
    loud = await nats_connect(server)
    lsub = await loud.subscribe("echo.t")
    await loud.publish("echo.t", b"mine")
    assert (await lsub.next_msg(timeout=TIMEOUT)).data == b"mine"


async def test_auto_unsubscribe(server, nats_connect):
    nc = await nats_connect(server)
    pub = await nats_connect(server)
    sub = await nc.subscribe("auto")
    await sub.unsubscribe(limit=3)
    ctl = await nc.subscribe("auto.ctl")
    await sync_point(nc)
    for i in range(10):
        await pub.publish("auto", str(i).encode())
    await pub.publish("auto.ctl", b"")
    await ctl.next_msg(timeout=TIMEOUT)
    got = []
    while True:
        try:
            got.append((await sub.next_msg(timeout=0.05)).data)
        except (nats.errors.TimeoutError, nats.errors.BadSubscriptionError):
            break
    assert got == [b"0", b"1", b"2"]


async def test_max_msgs_subscribe_option(server, nats_connect):
    nc = await nats_connect(server)
    sub = await nc.subscribe("mm", max_msgs=2)
    tail = await nc.subscribe("mm.tail")
    for i in range(5):
        await nc.publish("mm", str(i).encode())
    await nc.publish("mm.tail", b"")
    await tail.next_msg(timeout=TIMEOUT)
    assert (await sub.next_msg(timeout=TIMEOUT)).data == b"0"
    assert (await sub.next_msg(timeout=TIMEOUT)).data == b"1"
    with pytest.raises((nats.errors.TimeoutError, nats.errors.BadSubscriptionError)):
        await sub.next_msg(timeout=0.05)


async def test_one_mebibyte_payload(server, nats_connect):
    nc = await nats_connect(server)
    assert nc.max_payload == 1048576
    sub = await nc.subscribe("big")
    payload = bytes(range(256)) * 4096  # exactly 1 MiB
    assert len(payload) == 1048576
    await nc.publish("big", payload)
    msg = await sub.next_msg(timeout=TIMEOUT)
    assert msg.data == payload
    with pytest.raises(nats.errors.MaxPayloadError):
        await nc.publish("big", payload + b"!")


async def test_reconnect_after_server_restart(server, nats_connect):
    reconnected = asyncio.Event()
    disconnected = asyncio.Event()

    async def on_reconnect():
        reconnected.set()

    async def on_disconnect():
        disconnected.set()

    nc = await nats_connect(server, allow_reconnect=True, max_reconnect_attempts=100,
                            reconnect_time_wait=0.1, reconnected_cb=on_reconnect,
                            disconnected_cb=on_disconnect, connect_timeout=2)
    sub = await nc.subscribe("after.restart")
    await nc.publish("after.restart", b"before")
    assert (await sub.next_msg(timeout=TIMEOUT)).data == b"before"
    old_port = server.port

    server.restart()  # SIGKILL, then start again on the same ports
    assert server.port == old_port
    await asyncio.wait_for(disconnected.wait(), 10)
    await asyncio.wait_for(reconnected.wait(), 15)
    # The client re-sent its SUB on reconnect; publish to self proves it.
    await nc.publish("after.restart", b"after")
    assert (await sub.next_msg(timeout=TIMEOUT)).data == b"after"
    other = await nats_connect(server)
    await other.publish("after.restart", b"from-other")
    assert (await sub.next_msg(timeout=TIMEOUT)).data == b"from-other"
