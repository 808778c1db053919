"""Cluster links under stress: nothing lost that nats-server would deliver.

- A burst published as fast as a raw socket can write it, to a subscriber on
  another node, arrives whole: a busy link pushes back on the publisher
  instead of dropping (nats-server's TCP routes deliver all of it).
- A second process started with a copy of a node's key does not disturb the
  established link: it is refused, with one clear error naming the key, and
  backs off.
- A node killed with SIGKILL while it holds queue members costs at most a
  sliver of the messages published meanwhile.

The burst test runs against nats-server too; the other two are Tern's (node
keys are Tern's; nats-server's route failure detection is TCP's).
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import threading
import time

import nats
import pytest

import harness
from test_cluster import IS_TERN, KIND, cluster, keygen, tern_only, until, wait_mesh  # noqa: F401


class ByteCounter(threading.Thread):
    """Reads a raw connection's socket on a thread and counts bytes; the
    frames of one subscription to one subject have a fixed size, so the byte
    count says exactly how many messages arrived.  Server PINGs (the first
    comes 2 s after CONNECT) are answered and not counted."""

    PING = b"PING\r\n"

    def __init__(self, sock: socket.socket, already: int = 0):
        super().__init__(daemon=True)
        self.sock = sock
        self.raw = already
        self.pings = 0
        self.tail = b""
        self.stop = False

    @property
    def count(self) -> int:
        return self.raw - len(self.PING) * self.pings

    def run(self):
        self.sock.settimeout(0.2)
        while not self.stop:
            try:
                chunk = self.sock.recv(1 << 20)
            except socket.timeout:
                continue
            except OSError:
                return
            if not chunk:
                return
            # Payloads are all "x", so a PING can only be the server's; one
            # split across reads is found through the kept tail.
            data = self.tail + chunk
            seen = data.count(self.PING)
            if seen:
                self.pings += seen
                self.sock.sendall(b"PONG\r\n" * seen)
            self.tail = data[-(len(self.PING) - 1):]
            self.raw += len(chunk)


def fence_raw(sub: harness.RawConn, pub: harness.RawConn, timeout: float = 15.0) -> None:
    """Until a marker published on `pub`'s node reaches `sub` (so the
    subscriber's interest is known where the publisher is)."""
    sub.send(b"SUB fence 99\r\n")
    sub.ping_pong()
    deadline = time.monotonic() + timeout
    while True:
        pub.send(b"PUB fence 1\r\nx\r\n")
        try:
            sub.read_until(b"MSG fence 99 1\r\nx\r\n", timeout=0.2)
            break
        except TimeoutError:
            if time.monotonic() > deadline:
                raise AssertionError("interest never reached the publisher's node") from None
    sub.send(b"UNSUB 99\r\n")
    sub.ping_pong()
    # Late duplicates of the marker are told apart from the burst by size.
    pub.ping_pong()


@pytest.mark.parametrize("size", [16, 1024])
async def test_burst_across_link_loses_nothing(cluster, size):
    """500,000 messages written as fast as a socket takes them on node A,
    one subscriber on node B: every one arrives."""
    total = 500_000
    a = cluster.add()
    b = cluster.add(routes=[a.cluster_port])
    await wait_mesh(cluster, [a, b])
    sub = b.raw(timeout=10)
    sub.connect()
    sub.send(b"SUB burst 1\r\n")
    pub = a.raw(timeout=10)
    pub.connect()
    fence_raw(sub, pub)
    payload = b"x" * size
    frame = b"MSG burst 1 %d\r\n%s\r\n" % (size, payload)
    counter = ByteCounter(sub.sock, already=len(sub.buf))
    sub.buf = b""
    counter.start()
    chunk = (b"PUB burst %d\r\n%s\r\n" % (size, payload)) * 2000
    try:
        for _ in range(total // 2000):
            pub.sock.sendall(chunk)
        pub.sock.settimeout(60)
        pub.ping_pong(timeout=60)  # node A has read (and routed) every message
        want = total * len(frame)
        last, stalled_since = -1, time.monotonic()
        while counter.count < want:
            if counter.count != last:
                last, stalled_since = counter.count, time.monotonic()
            elif time.monotonic() - stalled_since > 10:
                break
            await asyncio.sleep(0.05)
    finally:
        counter.stop = True
        counter.join(5)
    got = counter.count
    assert got % len(frame) == 0, f"{got} bytes is not a whole number of frames"
    lost = total - got // len(frame)
    assert lost == 0, f"{lost} of {total} messages of {size} B lost across the link"
    if IS_TERN:
        routes = a.routez()["routes"]
        assert all(r.get("dropped_msgs", 0) == 0 for r in routes), routes
    sub.close()
    pub.close()


class Sequence:
    """Publishes 0, 1, 2, ... on `subject` from one connection at about
    `rate` per second until stopped; a subscriber records what arrives."""

    def __init__(self, pub_nc, subject: str, rate: int):
        self.nc, self.subject, self.rate = pub_nc, subject, rate
        self.sent = 0
        self.stopped = asyncio.Event()
        self.task: asyncio.Task | None = None

    async def _run(self):
        batch = max(1, self.rate // 100)
        while not self.stopped.is_set():
            for _ in range(batch):
                await self.nc.publish(self.subject, str(self.sent).encode())
                self.sent += 1
            await asyncio.sleep(0.01)

    def start(self):
        self.task = asyncio.ensure_future(self._run())

    async def stop(self):
        self.stopped.set()
        await self.task
        await self.nc.flush()


async def sync_sub(sub_nc, pub_nc, subject: str):
    """A recording subscription whose interest is known at the publisher's node."""
    got: list[int] = []

    async def cb(msg):
        try:
            got.append(int(msg.data))
        except ValueError:
            pass  # a fence marker

    await sub_nc.subscribe(subject, cb=cb)
    deadline = time.monotonic() + 15
    while not got or got[-1] != -1:
        if time.monotonic() > deadline:
            raise AssertionError("the subscription never became known at the publisher's node")
        await pub_nc.publish(subject, b"-1")
        await asyncio.sleep(0.05)
    got.clear()
    return got


@tern_only("node keys and their conflicts are Tern's")
async def test_second_process_with_same_key_is_refused(cluster, nats_connect):
    """A copied seed: the impostor is refused with one clear error on both
    sides, and the established link neither flaps nor loses a message."""
    a = cluster.add(log_to_file=True)
    b = cluster.add(routes=[a.cluster_port], log_to_file=True)
    await wait_mesh(cluster, [a, b])
    a_id = a.server_id
    seed = a.key_file.read_text().strip()
    assert seed.startswith("SN"), seed

    sub_nc = await nats_connect(b)
    pub_nc = await nats_connect(a)
    got = await sync_sub(sub_nc, pub_nc, "seq")
    seq = Sequence(pub_nc, "seq", rate=2000)
    seq.start()
    created_before = b.log_text().count("Route connection created")

    impostor = cluster.add(routes=[b.cluster_port, a.cluster_port], key_seed=seed,
                           log_to_file=True)
    assert impostor.server_id == a_id
    # Both sides of the refusal say what happened, naming the key.
    await until(lambda: "duplicate" in b.log_text().lower() and a_id in b.log_text(), 15,
                what=lambda: "node B to log the duplicate key:\n" + b.log_tail(20))
    await until(lambda: "duplicate" in impostor.log_text().lower(), 15,
                what=lambda: "the impostor to log the refusal:\n" + impostor.log_tail(20))
    await asyncio.sleep(3)  # a window for flapping to show (it did ~480 times a second)
    await seq.stop()
    await until(lambda: len(got) >= seq.sent, 10,
                what=lambda: f"all {seq.sent} messages (got {len(got)})")

    assert sorted(got) == list(range(seq.sent)), \
        f"lost {seq.sent - len(set(got))} of {seq.sent} on the established link"
    # The established link stayed: created once, never replaced.
    assert b.log_text().count("Route connection created") == created_before, b.log_tail(30)
    peers = b.route_peers()
    assert list(peers) == [a_id], peers
    text = b.log_text()
    addr_a, addr_i = f"127.0.0.1:{a.cluster_port}", f"127.0.0.1:{impostor.cluster_port}"
    dup_lines = [ln for ln in text.splitlines() if "duplicate" in ln.lower()]
    assert any(addr_a in ln and addr_i in ln for ln in dup_lines), dup_lines[:5]
    # One clear error, not one per attempt.
    assert len(dup_lines) <= 5, dup_lines[:10]
    assert len(text.splitlines()) < 200, f"{len(text.splitlines())} log lines on node B"


async def test_kill9_of_queue_member_node_loses_little(cluster):
    """Queue members on B and C, a publisher on A at 20,000 msg/s for 20 s;
    C is killed with SIGKILL after 5 s.  Messages C had taken but not yet
    delivered are lost with it (on nats-server too); everything else must
    reach B.  The brief's bound: under 0.5 % of the 400,000."""
    rate, seconds, kill_at = 20_000, 20.0, 5.0
    a = cluster.add()
    b = cluster.add(routes=[a.cluster_port])
    c = cluster.add(routes=[a.cluster_port])
    await wait_mesh(cluster, [a, b, c])
    pub = a.raw(timeout=10)
    pub.connect()
    subs = []
    for node in (b, c):
        s = node.raw(timeout=10)
        s.connect()
        s.send(b"SUB work q 1\r\n")
        s.ping_pong()
        subs.append(s)
    # Both members must be known at A before the clock starts: probe until
    # each has received at least one message, then drain the probes.
    for s in subs:
        fence_raw(s, pub)
    probes = subs  # the fence used another subject; the queue saw nothing yet
    frame_len = len(b"MSG work 1 8\r\n00000000\r\n")
    counters = [ByteCounter(s.sock, already=len(s.buf)) for s in probes]
    for s in probes:
        s.buf = b""
    for ct in counters:
        ct.start()
    per_tick = rate // 100
    sent = 0
    start = time.monotonic()
    killed = False
    try:
        while True:
            now = time.monotonic() - start
            if now >= seconds:
                break
            if not killed and now >= kill_at:
                os.kill(c.pid, signal.SIGKILL)
                killed = True
            due = int(now * rate)
            if due > sent:
                n = min(due - sent, per_tick * 5)
                pub.sock.sendall(b"".join(b"PUB work 8\r\n%08d\r\n" % (sent + i)
                                          for i in range(n)))
                sent += n
            await asyncio.sleep(0.005)
        pub.ping_pong(timeout=30)
        want = lambda: counters[0].count // frame_len + counters[1].count // frame_len  # noqa: E731
        last, since = -1, time.monotonic()
        while want() < sent and time.monotonic() - since < 5:
            if want() != last:
                last, since = want(), time.monotonic()
            await asyncio.sleep(0.05)
    finally:
        for ct in counters:
            ct.stop = True
    got_b, got_c = (ct.count // frame_len for ct in counters)
    lost = sent - got_b - got_c
    print(f"kill -9 of a queue member's node: published {sent}, B got {got_b}, "
          f"C got {got_c} before it died, lost {lost} ({100 * lost / sent:.3f} %)")
    assert got_b > 0 and got_c > 0, (got_b, got_c)
    assert lost <= sent * 0.005, f"lost {lost} of {sent} ({100 * lost / sent:.2f} %)"
