"""TLS for client connections, as nats-server v2.15.1 does it.

Configured by a `tls { cert_file, key_file, ca_file, verify, verify_and_map,
timeout, handshake_first }` block, top-level `allow_non_tls`, or the flags
`--tls --tlscert --tlskey --tlscacert --tlsverify`.  Certificates are made
per test by authkit (nothing is committed).  The expectations were read off
nats-server:

- A TLS port sends the plaintext INFO line first (`"tls_required":true`, plus
  `"tls_verify":true` with `verify`), then expects a ClientHello.  A client
  that sends protocol text instead gets no byte more and is closed at once.
- `handshake_first`: the server sends nothing until the handshake is done
  (INFO comes over TLS); a plaintext client gets no byte and is closed when
  it sends anything, or when the TLS `timeout` runs out.
- `timeout` (seconds, default 2) bounds the handshake: a client that never
  starts one is closed then, with no bytes after INFO.
- `allow_non_tls`: INFO says `"tls_available":true` (no `tls_required`); the
  client may upgrade (ClientHello right after INFO) or talk plaintext.
- Mutual TLS: no certificate, or one from another CA, fails the handshake.
- `verify_and_map`: the user is taken from the certificate, checked in this
  order: e-mail SANs, DNS SANs, URI SANs, then the subject DN (RFC 2253 form
  `CN=..,OU=..,O=..`, any RDN order).  The first candidate that names a
  configured user wins.  No match: `-ERR 'Authorization Violation'`.  A
  `user` sent in CONNECT is ignored.
- With TLS and no `authorization { timeout }`, the auth timeout is the TLS
  timeout + 1 s (not the plain 2 s).

Observed differently from what one might expect (kept as nats-server does
it): with `allow_non_tls`, a client that says nothing is not closed by the TLS
timeout (the server only waits that long to sniff for a ClientHello, then
carries on in plaintext); nats-py never upgrades on `tls_available`, so the
TLS side of `allow_non_tls` is checked with a raw ssl socket.
"""

from __future__ import annotations

import asyncio
import glob
import json
import ssl
import time
import urllib.request
from pathlib import Path

import pytest

import authkit
import harness

TIMEOUT = 5
EOF = b"<EOF>"


@pytest.fixture
def pki(tmp_path: Path) -> authkit.TLSFiles:
    return authkit.make_tls(tmp_path / "pki")


@pytest.fixture
def other_ca(tmp_path: Path) -> authkit.CA:
    return authkit.CA(tmp_path / "other-pki", "other", cn="Unrelated CA")


def tls_raw(srv: harness.Server, ctx: ssl.SSLContext, *, first: bool = False,
            timeout: float = TIMEOUT) -> harness.RawConn:
    """A RawConn whose socket is upgraded to TLS: after the plaintext INFO
    line, or (`first`) before anything, reading INFO over TLS."""
    c = harness.RawConn(srv.host, srv.port, timeout=timeout, read_info=not first)
    c.sock = ctx.wrap_socket(c.sock, server_hostname="127.0.0.1")
    if first:
        c.info_line = c.readline()
        assert c.info_line.startswith(b"INFO ") and c.info_line.endswith(b"\r\n"), c.info_line
        c.info = json.loads(c.info_line[5:-2])
    return c


def tls_attempt(srv: harness.Server, ctx: ssl.SSLContext, *, first: bool = False,
                **connect) -> bytes:
    """Handshake, CONNECT, PING: the bytes up to PONG; or, when the server
    refuses, what arrived before the close followed by `<EOF>` (a clean
    close) or `<ErrorName: text>` (a failed handshake).  Never raises."""
    c = None
    try:
        c = tls_raw(srv, ctx, first=first)
        c.connect(**connect)
        return c.ping_pong()
    except (EOFError, ssl.SSLZeroReturnError, ssl.SSLEOFError):
        return (c.buf if c is not None else b"") + EOF
    except (ssl.SSLError, OSError, TimeoutError) as e:
        buf = c.buf if c is not None else b""
        return buf + f"<{type(e).__name__}: {e}>".encode()
    finally:
        if c is not None:
            c.close()


def assert_refused_in_handshake(result: bytes) -> None:
    """Not one protocol byte over TLS: the handshake (or, with TLS 1.3, the
    first read after it, where the client learns of the server's alert)
    failed."""
    print("refused with:", result)
    assert result.startswith(b"<"), result
    assert b"PONG" not in result, result


def read_until_closed(c: harness.RawConn, limit: float) -> tuple[bytes, float]:
    """Everything until the server closes; (bytes, seconds it took)."""
    t0 = time.monotonic()
    try:
        data = c.read_until_close(timeout=limit)
    except (ssl.SSLError, ConnectionError) as e:
        data = c.buf + f"<{type(e).__name__}>".encode()
    return data, time.monotonic() - t0


async def roundtrip(nc, subject: str = "tls.rt") -> None:
    sub = await nc.subscribe(subject)
    await nc.publish(subject, b"over-tls")
    assert (await sub.next_msg(timeout=TIMEOUT)).data == b"over-tls"
    await sub.unsubscribe()


def tls_config(pki: authkit.TLSFiles, **opts) -> str:
    return pki.block(**opts)


# -- server-verified TLS -------------------------------------------------------

async def test_tls_config_info_and_roundtrip(server_factory, nats_connect, pki, other_ca):
    srv = server_factory(config=tls_config(pki))
    c = srv.raw()  # the INFO line is plaintext
    assert c.info["tls_required"] is True
    assert "tls_verify" not in c.info
    assert "tls_available" not in c.info
    c.close()
    nc = await nats_connect(srv, tls=authkit.client_context(pki.ca))
    await roundtrip(nc)
    # Another client on a second connection sees the first one's messages.
    sub = await nc.subscribe("tls.fanout")
    await harness.sync_point(nc)
    nc2 = await nats_connect(srv, tls=authkit.client_context(pki.ca))
    await nc2.publish("tls.fanout", b"x" * 100_000)
    assert (await sub.next_msg(timeout=TIMEOUT)).data == b"x" * 100_000
    # The certificate the server presents is the configured one: a client
    # that trusts another CA refuses it.
    with pytest.raises(Exception):
        await nats_connect(srv, tls=authkit.client_context(other_ca))


def test_tls_raw_after_info(server_factory, pki):
    srv = server_factory(config=tls_config(pki))
    c = tls_raw(srv, authkit.client_context(pki.ca))
    c.send(b'CONNECT {"verbose":true}\r\nSUB a 1\r\nPUB a 2\r\nhi\r\n')
    assert c.ping_pong() == b"+OK\r\n+OK\r\n+OK\r\nMSG a 1 2\r\nhi\r\nPONG\r\n"


@pytest.mark.parametrize("verify", [False, True], ids=["tls", "tlsverify"])
async def test_tls_cli_flags(server_factory, nats_connect, pki, verify):
    args = ["--tlsverify" if verify else "--tls",
            "--tlscert", str(pki.server.cert_file), "--tlskey", str(pki.server.key_file),
            "--tlscacert", str(pki.ca.ca_file)]
    srv = server_factory(args=args)
    c = srv.raw()
    assert c.info["tls_required"] is True
    assert c.info.get("tls_verify", False) is verify
    c.close()
    cert = pki.ca.client_cert("cli-client", "cli") if verify else None
    nc = await nats_connect(srv, tls=authkit.client_context(pki.ca, cert))
    await roundtrip(nc)
    if verify:
        refused = tls_attempt(srv, authkit.client_context(pki.ca))
        assert_refused_in_handshake(refused)


def test_plaintext_connect_on_tls_port(server_factory, pki):
    """A client that ignores tls_required and sends CONNECT in plaintext:
    the server reads it as a broken handshake, sends nothing, closes."""
    srv = server_factory(config=tls_config(pki))
    c = srv.raw()
    assert c.info["tls_required"] is True
    c.send(b'CONNECT {"verbose":false}\r\nPING\r\n')
    data, _ = read_until_closed(c, 5)
    assert data == b"", data


async def test_nats_py_without_trusted_ca_fails(server_factory, nats_connect, pki):
    """nats-py upgrades on tls_required with the system trust store, which
    does not know the test CA."""
    srv = server_factory(config=tls_config(pki))
    with pytest.raises(Exception):
        await nats_connect(srv)


# -- mutual TLS ------------------------------------------------------------------

async def test_mutual_tls_client_cert_from_ca(server_factory, nats_connect, pki):
    srv = server_factory(config=tls_config(pki, verify=True))
    c = srv.raw()
    assert c.info["tls_required"] is True
    assert c.info["tls_verify"] is True
    c.close()
    cert = pki.ca.client_cert("alice", "alice")
    nc = await nats_connect(srv, tls=authkit.client_context(pki.ca, cert))
    await roundtrip(nc)
    assert tls_attempt(srv, authkit.client_context(pki.ca, cert)) == b"PONG\r\n"


async def test_mutual_tls_no_client_cert_refused(server_factory, nats_connect, pki):
    srv = server_factory(config=tls_config(pki, verify=True))
    refused = tls_attempt(srv, authkit.client_context(pki.ca))
    assert_refused_in_handshake(refused)
    with pytest.raises(Exception):
        await nats_connect(srv, tls=authkit.client_context(pki.ca))
    # The server is fine afterwards.
    ok = tls_attempt(srv, authkit.client_context(pki.ca, pki.ca.client_cert("ok", "ok")))
    assert ok == b"PONG\r\n"


async def test_mutual_tls_cert_from_other_ca_refused(server_factory, nats_connect, pki,
                                                     other_ca):
    srv = server_factory(config=tls_config(pki, verify=True))
    foreign = other_ca.client_cert("mallory", "mallory")
    refused = tls_attempt(srv, authkit.client_context(pki.ca, foreign))
    assert_refused_in_handshake(refused)
    with pytest.raises(Exception):
        await nats_connect(srv, tls=authkit.client_context(pki.ca, foreign))


# -- TLS first -------------------------------------------------------------------

async def test_tls_first_nats_py(server_factory, nats_connect, pki):
    srv = server_factory(config=tls_config(pki, handshake_first=True, timeout=1))
    nc = await nats_connect(srv, tls=authkit.client_context(pki.ca), tls_handshake_first=True)
    await roundtrip(nc)
    c = tls_raw(srv, authkit.client_context(pki.ca), first=True)
    assert c.info["tls_required"] is True
    c.connect()
    assert c.ping_pong() == b"PONG\r\n"


def test_tls_first_plaintext_client_gets_nothing(server_factory, pki):
    srv = server_factory(config=tls_config(pki, handshake_first=True, timeout=1))
    # Says nothing: no INFO, closed by the 1 s TLS timeout.
    idle = srv.raw(read_info=False)
    data, took = read_until_closed(idle, 10)
    assert data == b"", data
    assert took >= 0.5, f"closed after {took:.2f}s, before the 1 s TLS timeout"
    # Sends plaintext protocol: not a ClientHello, closed with nothing sent.
    talker = srv.raw(read_info=False)
    talker.send(b'CONNECT {"verbose":false}\r\nPING\r\n')
    data, _ = read_until_closed(talker, 5)
    assert data == b"", data


async def test_tls_first_server_with_info_first_client(server_factory, nats_connect, pki):
    """nats-py without tls_handshake_first waits for an INFO that never
    comes in plaintext: it fails (connect timeout or the server's close)."""
    srv = server_factory(config=tls_config(pki, handshake_first=True, timeout=1))
    with pytest.raises(Exception):
        await nats_connect(srv, tls=authkit.client_context(pki.ca), connect_timeout=3)


# -- TLS timeout -----------------------------------------------------------------

@pytest.mark.parametrize("timeout", [1, None], ids=["timeout1", "default2"])
def test_tls_handshake_timeout(server_factory, pki, timeout):
    opts = {} if timeout is None else {"timeout": timeout}
    srv = server_factory(config=tls_config(pki, **opts))
    secs = timeout or 2
    idle = srv.raw()  # reads the INFO, then never starts the handshake
    data, took = read_until_closed(idle, secs + 8)
    assert data == b"", data
    assert took >= secs * 0.5, f"closed after {took:.2f}s, TLS timeout is {secs}s"
    # A stalled handshake (half a record header) is cut off the same way.
    stalled = srv.raw()
    stalled.send(b"\x16\x03\x01")
    data, took = read_until_closed(stalled, secs + 8)
    assert data == b"", data
    assert took >= secs * 0.5, f"closed after {took:.2f}s, TLS timeout is {secs}s"


def test_auth_timeout_with_tls_defaults_to_tls_timeout_plus_one(server_factory, pki):
    """No authorization timeout configured: with TLS it is timeout + 1 s
    (here 4 s), not the plain 2 s."""
    conf = tls_config(pki, timeout=3) + "authorization { user: a, password: b }\n"
    srv = server_factory(config=conf)
    c = tls_raw(srv, authkit.client_context(pki.ca))
    assert c.info["auth_required"] is True
    t0 = time.monotonic()
    data = c.read_until_close(timeout=12)
    took = time.monotonic() - t0
    assert data == b"-ERR 'Authentication Timeout'\r\n", data
    assert took >= 3.5, f"auth timeout fired after {took:.2f}s, expected about 4s"


# -- allow_non_tls ---------------------------------------------------------------

async def test_allow_non_tls(server_factory, nats_connect, pki):
    srv = server_factory(config="allow_non_tls: true\n" + tls_config(pki, timeout=1))
    c = srv.raw()
    assert c.info["tls_available"] is True
    assert "tls_required" not in c.info
    c.close()
    # Plaintext with nats-py.
    plain = await nats_connect(srv)
    await roundtrip(plain, "mixed.plain")
    # TLS: the client starts its handshake right after the plaintext INFO.
    tls = tls_raw(srv, authkit.client_context(pki.ca))
    tls.send(b'CONNECT {"verbose":false}\r\nSUB mixed 1\r\n')
    assert tls.ping_pong() == b"PONG\r\n"
    # Both kinds share one server: plaintext publishes reach the TLS client.
    await plain.publish("mixed", b"from-plain")
    await harness.sync_point(plain)
    assert tls.read_until(b"from-plain\r\n") == b"MSG mixed 1 10\r\nfrom-plain\r\n"


def test_allow_non_tls_slow_plaintext_client_not_closed(server_factory, pki):
    """The TLS timeout only bounds the sniffing for a ClientHello: a quiet
    plaintext client is served afterwards."""
    srv = server_factory(config="allow_non_tls: true\n" + tls_config(pki, timeout=1))
    c = srv.raw()
    assert c.info["tls_available"] is True
    data, closed = c.read_for(1.6)  # past the 1 s TLS timeout
    assert (data, closed) == (b"", False)
    c.connect()
    assert c.ping_pong() == b"PONG\r\n"


# -- reconnect -------------------------------------------------------------------

async def test_reconnect_over_tls(server_factory, nats_connect, pki):
    srv = server_factory(config=tls_config(pki))
    with srv.raw() as c:
        assert c.info["tls_required"] is True
    reconnected = asyncio.Event()
    disconnected = asyncio.Event()

    async def on_reconnect():
        reconnected.set()

    async def on_disconnect():
        disconnected.set()

    ctx = authkit.client_context(pki.ca)
    nc = await nats_connect(srv, tls=ctx, allow_reconnect=True, max_reconnect_attempts=100,
                            reconnect_time_wait=0.1, reconnected_cb=on_reconnect,
                            disconnected_cb=on_disconnect, connect_timeout=2)
    sub = await nc.subscribe("tls.restart")
    await nc.publish("tls.restart", b"before")
    assert (await sub.next_msg(timeout=TIMEOUT)).data == b"before"
    port = srv.port
    srv.restart()  # SIGKILL, then the same config on the same port
    assert srv.port == port
    with srv.raw() as c:
        assert c.info["tls_required"] is True
    await asyncio.wait_for(disconnected.wait(), 10)
    await asyncio.wait_for(reconnected.wait(), 15)
    await nc.publish("tls.restart", b"after")
    assert (await sub.next_msg(timeout=TIMEOUT)).data == b"after"
    other = await nats_connect(srv, tls=ctx)
    await other.publish("tls.restart", b"other")
    assert (await sub.next_msg(timeout=TIMEOUT)).data == b"other"


# -- verify_and_map --------------------------------------------------------------

def users_block(users: list[str | tuple[str, str]]) -> str:
    """`authorization { users = [...] }`; a (name, publish-subject) pair
    restricts that user's publish permission to the subject."""
    items = []
    for u in users:
        if isinstance(u, tuple):
            items.append('{ user: "%s", permissions: { publish: ["%s"], '
                         'subscribe: [">"] } }' % u)
        else:
            items.append('{ user: "%s" }' % u)
    return "authorization {\n  users = [\n    " + "\n    ".join(items) + "\n  ]\n}\n"


def map_server(server_factory, pki, users) -> harness.Server:
    return server_factory(config=tls_config(pki, verify_and_map=True) + users_block(users))


AV = b"-ERR 'Authorization Violation'\r\n" + EOF  # and closed


async def test_verify_and_map_email(server_factory, nats_connect, pki):
    srv = map_server(server_factory, pki, ["alice@example.com"])
    c = srv.raw()
    assert c.info["auth_required"] is True and c.info["tls_verify"] is True
    c.close()
    ca = pki.ca
    mapped = ca.client_cert("alice", "alice-cn", emails=["alice@example.com"])
    nc = await nats_connect(srv, tls=authkit.client_context(ca, mapped))
    await roundtrip(nc)
    unmapped = ca.client_cert("zed", "zed", emails=["zed@example.com"])
    assert tls_attempt(srv, authkit.client_context(ca, unmapped)) == AV
    # Without a certificate there is nothing to map (the handshake fails).
    assert b"PONG" not in tls_attempt(srv, authkit.client_context(ca))


async def test_verify_and_map_subject_dn(server_factory, nats_connect, pki):
    # Users name the subject in RFC 2253 order (CN first), or any RDN order.
    srv = map_server(server_factory, pki, ["CN=bob,OU=eng,O=Acme",
                                           "O=Acme,OU=ops,CN=carol"])
    ca = pki.ca
    bob = ca.client_cert("bob", "bob", o="Acme", ou="eng")
    carol = ca.client_cert("carol", "carol", o="Acme", ou="ops")
    nc = await nats_connect(srv, tls=authkit.client_context(ca, bob))
    await roundtrip(nc)
    assert tls_attempt(srv, authkit.client_context(ca, carol)) == b"PONG\r\n"
    # Same attributes, other CN; and a subset of the DN: no match.
    grace = ca.client_cert("grace", "grace", o="Acme", ou="eng")
    assert tls_attempt(srv, authkit.client_context(ca, grace)) == AV
    partial = ca.client_cert("partial", "bob", o="Acme", ou=None)
    assert tls_attempt(srv, authkit.client_context(ca, partial)) == AV
    # A user named in CONNECT does not override the certificate.
    assert tls_attempt(srv, authkit.client_context(ca, grace), user="CN=bob,OU=eng,O=Acme") == AV
    assert tls_attempt(srv, authkit.client_context(ca, bob), user="nobody") == b"PONG\r\n"


def test_verify_and_map_dns_and_uri_sans(server_factory, pki):
    srv = map_server(server_factory, pki, ["dave.example.com", "spiffe://example.org/erin"])
    ca = pki.ca
    dave = ca.client_cert("dave", "dave-cn", dns=["dave.example.com"])
    erin = ca.client_cert("erin", "erin-cn", uris=["spiffe://example.org/erin"])
    other = ca.client_cert("other", "other-cn", dns=["other.example.com"],
                           uris=["spiffe://example.org/other"])
    assert tls_attempt(srv, authkit.client_context(ca, dave)) == b"PONG\r\n"
    assert tls_attempt(srv, authkit.client_context(ca, erin)) == b"PONG\r\n"
    assert tls_attempt(srv, authkit.client_context(ca, other)) == AV


def test_verify_and_map_order_email_before_subject(server_factory, pki):
    """A certificate whose e-mail and subject both name users maps to the
    e-mail user; an unmapped e-mail falls through to the subject."""
    srv = map_server(server_factory, pki, [("alice@example.com", "alice.>"),
                                           ("CN=bob,O=Acme", "bob.>")])
    ca = pki.ca

    def publish_result(cert: authkit.KeyCert, subject: str) -> bytes:
        c = tls_raw(srv, authkit.client_context(ca, cert))
        try:
            c.connect()
            c.send(f"PUB {subject} 0\r\n\r\n".encode())
            return c.ping_pong()
        finally:
            c.close()

    both = ca.client_cert("both", "bob", o="Acme", emails=["alice@example.com"])
    assert publish_result(both, "alice.x") == b"PONG\r\n"
    assert publish_result(both, "bob.x") == \
        b"-ERR 'Permissions Violation for Publish to \"bob.x\"'\r\nPONG\r\n"
    fallthrough = ca.client_cert("ft", "bob", o="Acme", emails=["nobody@example.com"])
    assert publish_result(fallthrough, "bob.x") == b"PONG\r\n"
    assert publish_result(fallthrough, "alice.x") == \
        b"-ERR 'Permissions Violation for Publish to \"alice.x\"'\r\nPONG\r\n"


# -- monitoring over https ---------------------------------------------------------

def test_monitoring_over_https(server_factory, pki):
    srv = server_factory(config="https_port: -1\n" + tls_config(pki), monitor=False)
    files = glob.glob(str(srv.workdir / f"{srv.name}-ports-*" / f"*_{srv.pid}.ports"))
    assert files, "no ports file"
    ports = json.loads(Path(files[0]).read_text())
    mon = ports.get("monitoring") or []
    assert mon and mon[0].startswith("https://"), ports
    https_port = int(mon[0].rstrip("/").rsplit(":", 1)[1])
    ctx = authkit.client_context(pki.ca)
    url = f"https://127.0.0.1:{https_port}/varz"
    with urllib.request.urlopen(url, context=ctx, timeout=TIMEOUT) as r:
        assert r.status == 200
        varz = json.loads(r.read())
    # nats-server reports the configured value, not the bound port.
    assert varz["https_port"] == -1
    assert varz["tls_required"] is True
    # The monitor does not answer plain HTTP with a page.
    with pytest.raises(Exception):
        with urllib.request.urlopen(f"http://127.0.0.1:{https_port}/varz", timeout=TIMEOUT) as r:
            json.loads(r.read())
