"""Monitoring answers compared with nats-server started in the same test:
query parameters and HTTP methods, byte counters after a known workload, and
what a closed slow consumer's /connz entry keeps.

The reference is always the real nats-server; with SERVER_UNDER_TEST=nats-server
these tests compare nats-server with itself (a check of the tests).
"""

from __future__ import annotations

import http.client
import json
import socket
import time

import pytest

import harness

KIND = harness.server_kind()
TIMEOUT = 10.0
QUIET_HDRS = b'CONNECT {"verbose":false,"pedantic":false,"headers":true,"name":"%s"}\r\n'
QUIET_PLAIN = b'CONNECT {"verbose":false,"pedantic":false,"name":"%s"}\r\n'


@pytest.fixture
def pair(tmp_path):
    """(server under test, reference nats-server)."""
    started = []
    try:
        for kind in (KIND, "nats-server"):
            srv = harness.Server(harness.binary_for(kind), tmp_path / f"{kind}-{len(started)}",
                                 name=kind)
            started.append(srv)
            srv.start()
        yield started[0], started[1]
    finally:
        for srv in started:
            srv.stop()


def request(srv: harness.Server, method: str, path: str):
    """(status, content type without parameters, Location, body) of one request."""
    conn = http.client.HTTPConnection(srv.host, srv.http_port, timeout=TIMEOUT)
    try:
        conn.request(method, path)
        r = conn.getresponse()
        body = r.read()
        ctype = (r.getheader("Content-Type") or "").split(";")[0].strip()
        return r.status, ctype, r.getheader("Location"), body
    finally:
        conn.close()


# (method, path).  Paths are sent as written (no client-side normalisation).
CASES = [
    ("GET", "/varz"),
    ("GET", "//varz"),
    ("GET", "//connz?limit=2"),
    ("GET", "/./healthz"),
    ("GET", "/varz/"),
    ("GET", "/nope"),
    ("GET", "/varz?x=%zz"),
    ("GET", "/connz?limit=-1"),
    ("GET", "/connz?offset=-5"),
    ("GET", "/connz?limit=0"),
    ("GET", "/connz?limit=5&offset=3"),
    ("GET", "/connz?limit=%2B5"),
    ("GET", "/connz?limit=+5"),
    ("GET", "/connz?limit=abc"),
    ("GET", "/connz?limit=1_0"),
    ("GET", "/connz?limit=99999999999999999999"),
    ("GET", "/connz?limit=abc&limit=2"),
    ("GET", "/connz?offset=1&offset=abc"),
    ("GET", "/connz?limit="),
    ("GET", "/connz?sort=rtt"),
    ("GET", "/connz?sort=idle"),
    ("GET", "/connz?sort=bogus"),
    ("GET", "/connz?sort=CID"),
    ("GET", "/connz?sort=stop"),
    ("GET", "/connz?state=closed&sort=stop"),
    ("GET", "/connz?state=any&sort=reason"),
    ("GET", "/connz?subs=weird"),
    ("GET", "/connz?subs=detail"),
    ("GET", "/connz?subs=T"),
    ("GET", "/connz?subs=yes"),
    ("GET", "/connz?state=bogus"),
    ("GET", "/connz?state=ALL"),
    ("GET", "/connz?state=Closed"),
    ("GET", "/connz?cid=abc"),
    ("GET", "/connz?cid=-1"),
    ("GET", "/connz?cid=%2B3"),
    ("GET", "/connz?auth=weird"),
    ("GET", "/subsz?subs=weird"),
    ("GET", "/subsz?subs=detail"),
    ("GET", "/subsz?limit=-1&offset=-3"),
    ("GET", "/subsz?offset=x"),
    ("GET", "/subsz?test=foo.bar"),
    ("GET", "/subsz?test=foo.*"),
    ("GET", "/routez?subs=weird"),
    ("GET", "/routez?subs=detail"),
    ("GET", "/healthz?js-enabled-only=weird"),
    ("GET", "/healthz?js-enabled-only=true"),
    ("GET", "/healthz?details=x"),
    ("GET", "/healthz?foo=bar"),
    ("HEAD", "/varz"),
    ("HEAD", "/connz?subs=weird"),
    ("HEAD", "/nope"),
    ("POST", "/varz"),
    ("POST", "/connz?limit=-1"),
    ("PUT", "/healthz"),
    ("DELETE", "/routez"),
    ("OPTIONS", "/varz"),
    ("PATCH", "/subsz"),
    ("POST", "//varz"),
    ("POST", "/nope"),
]

# Keys whose values must agree for a 200 JSON answer to the same query.
PAGE_KEYS = ("offset", "limit")


def answer_shape(status, ctype, location, body, method):
    shape = {"status": status, "type": ctype, "location": location}
    if method == "HEAD":
        shape["empty"] = body == b""
    elif status == 200 and ctype == "application/json":
        doc = json.loads(body)
        shape["page"] = {k: doc.get(k) for k in PAGE_KEYS if k in doc}
    elif status == 400:
        shape["has_reason"] = len(body.strip()) > 0
    return shape


@pytest.mark.timeout(90)
def test_monitoring_queries_and_methods_as_nats_server(pair):
    tested, ref = pair
    diffs = []
    for method, path in CASES:
        want = answer_shape(*request(ref, method, path), method)
        got = answer_shape(*request(tested, method, path), method)
        if got != want:
            diffs.append(f"{method} {path}: nats-server {want}, {KIND} {got}")
    assert not diffs, "\n".join(diffs)


def raw_client(srv, name: str, headers: bool = True) -> harness.RawConn:
    c = srv.raw(timeout=TIMEOUT)
    c.send((QUIET_HDRS if headers else QUIET_PLAIN) % name.encode())
    return c


def pong(c: harness.RawConn) -> None:
    got = c.ping_pong(timeout=TIMEOUT)
    assert got.endswith(b"PONG\r\n"), got


def conns_by_name(srv) -> dict[str, dict]:
    _, doc = srv.http_get("/connz")
    return {c.get("name", ""): c for c in doc["connections"] if c.get("name")}


COUNTERS = ("in_msgs", "in_bytes", "out_msgs", "out_bytes")
HDR = b"NATS/1.0\r\nA: B\r\n\r\n"  # 18 bytes


def workload(srv) -> tuple[dict, dict]:
    """A fixed workload; returns (/varz deltas, /connz counters by name)."""
    before = srv.varz()
    sub_h = raw_client(srv, "sub-headers")
    sub_p = raw_client(srv, "sub-plain", headers=False)
    pub = raw_client(srv, "pub")
    for c in (sub_h, sub_p):
        c.send(b"SUB w.> 1\r\n")
        pong(c)
    pub.send(b"PUB w.a 5\r\nhello\r\n")
    pub.send(b"PUB w.b reply.x 11\r\nhello world\r\n")
    pub.send(b"HPUB w.c %d %d\r\n%spayload\r\n" % (len(HDR), len(HDR) + 7, HDR))
    pub.send(b"PUB w.d 0\r\n\r\n")
    pub.send(b"PUB nobody.here 3\r\nabc\r\n")
    pong(pub)
    for c in (sub_h, sub_p):
        pong(c)  # each has received its copies
    # Poll until the counters settle (they are updated per read batch).
    deadline = time.monotonic() + TIMEOUT
    while True:
        conns = {n: {k: c[k] for k in COUNTERS} for n, c in conns_by_name(srv).items()}
        after = srv.varz()
        deltas = {k: after[k] - before[k] for k in COUNTERS}
        if conns.get("pub", {}).get("in_msgs") == 5 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    for c in (sub_h, sub_p, pub):
        c.close()
    return deltas, conns


@pytest.mark.timeout(60)
def test_byte_counters_as_nats_server(pair):
    tested, ref = pair
    want_varz, want_conns = workload(ref)
    got_varz, got_conns = workload(tested)
    assert got_conns == want_conns
    assert got_varz == want_varz


def closed_slow_consumer(srv) -> dict:
    """Makes a subscriber that never reads a slow consumer; its closed entry."""
    stalled = socket.socket()
    stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stalled.settimeout(TIMEOUT)
    stalled.connect((srv.host, srv.port))
    info = b""
    while not info.endswith(b"\r\n"):
        info += stalled.recv(1)
    cid = json.loads(info[5:-2])["client_id"]
    stalled.sendall(QUIET_PLAIN % b"stalled" + b"SUB flood 1\r\nPING\r\n")
    buf = b""
    while not buf.endswith(b"PONG\r\n"):
        chunk = stalled.recv(4096)
        assert chunk, "closed before PONG"
        buf += chunk
    pub = raw_client(srv, "flooder")
    payload = b"x" * 65536
    entry = None
    try:
        for batch in range(40):  # at most 40 x 8 x 64 KiB = 20 MiB
            for _ in range(8):
                pub.send(b"PUB flood %d\r\n%s\r\n" % (len(payload), payload))
            pong(pub)
            _, doc = srv.http_get(f"/connz?state=closed&cid={cid}")
            if doc["connections"]:
                entry = doc["connections"][0]
                break
        assert entry is not None, "the stalled subscriber was never closed"
    finally:
        stalled.close()
        pub.close()
    return entry


@pytest.mark.timeout(90)
def test_closed_slow_consumer_keeps_pending_bytes(pair):
    tested, ref = pair
    # Restart both with a small pending limit and a long write deadline, so
    # the pending-bytes limit is what trips.
    for srv in (tested, ref):
        srv.stop()
        srv.config_path = srv.workdir / "sc.conf"
        srv.config_path.write_text('max_pending: 1MB\nwrite_deadline: "30s"\n')
        srv.start()
    want = closed_slow_consumer(ref)
    got = closed_slow_consumer(tested)
    assert want["reason"] == "Slow Consumer (Pending Bytes)", want
    assert got["reason"] == want["reason"], got
    assert want["pending_bytes"] > 0, want
    # What was queued when it was cut off: more than a message, at most the limit.
    assert 65536 < got["pending_bytes"] <= 1024 * 1024, got
