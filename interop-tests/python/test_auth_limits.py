"""Authorization and configured limits, over raw sockets.

The error texts and close/keep-open behaviour were read off nats-server.
Timer-driven cases (auth timeout, stale connection) wait for the server to act
and only bound the wait; they never assert how fast it was.
"""

from __future__ import annotations

import json
import time

import pytest

QUIET = b'CONNECT {"verbose":false,"pedantic":false}\r\n'


@pytest.fixture
def auth_server(server_factory):
    return server_factory(args=["--user", "a", "--pass", "b"])


def test_auth_required_in_info(auth_server):
    c = auth_server.raw()
    assert c.info["auth_required"] is True


@pytest.mark.parametrize("connect", [
    b'CONNECT {"verbose":false}\r\n',
    b'CONNECT {"verbose":false,"user":"a","pass":"x"}\r\n',
    b'CONNECT {"verbose":false,"user":"x","pass":"b"}\r\n',
    b'CONNECT {"verbose":false,"auth_token":"b"}\r\n',
])
def test_auth_bad_credentials(auth_server, connect):
    c = auth_server.raw()
    c.send(connect)
    assert c.read_until_close(timeout=5) == b"-ERR 'Authorization Violation'\r\n"


@pytest.mark.parametrize("first", [b"PING\r\n", b"SUB foo 1\r\n", b"PUB foo 0\r\n\r\n", b"FOO\r\n"])
def test_auth_anything_before_connect_is_violation(auth_server, first):
    c = auth_server.raw()
    c.send(first)
    assert c.read_until_close(timeout=5) == b"-ERR 'Authorization Violation'\r\n"


def test_auth_good_credentials(auth_server):
    c = auth_server.raw()
    c.send(b'CONNECT {"verbose":true,"user":"a","pass":"b"}\r\nPING\r\n')
    assert c.read_exact(len(b"+OK\r\nPONG\r\n")) == b"+OK\r\nPONG\r\n"
    c.send(b"SUB foo 1\r\nPUB foo 2\r\nok\r\n")
    assert c.ping_pong() == b"+OK\r\n+OK\r\nMSG foo 1 2\r\nok\r\nPONG\r\n"


async def test_auth_with_nats_py(auth_server, nats_connect):
    import nats.errors
    nc = await nats_connect(auth_server, user="a", password="b")
    sub = await nc.subscribe("x")
    await nc.publish("x", b"1")
    assert (await sub.next_msg(timeout=5)).data == b"1"
    with pytest.raises(Exception):
        await nats_connect(auth_server, user="a", password="wrong")


def test_auth_from_config_and_timeout(server_factory):
    srv = server_factory(config="authorization { user: a, password: b, timeout: 1 }\n")
    ok = srv.raw()
    ok.send(b'CONNECT {"verbose":false,"user":"a","pass":"b"}\r\n')
    assert ok.ping_pong() == b"PONG\r\n"
    idle = srv.raw()
    assert idle.info["auth_required"] is True
    # Never sends CONNECT: closed after the 1 s authorization timeout.
    assert idle.read_until_close(timeout=10) == b"-ERR 'Authentication Timeout'\r\n"
    # The authenticated client is not affected.
    assert ok.ping_pong() == b"PONG\r\n"


def test_max_connections(server_factory):
    srv = server_factory(config="max_connections: 2\n")
    a, b = srv.raw(), srv.raw()
    for c in (a, b):
        c.send(QUIET)
        assert c.ping_pong() == b"PONG\r\n"
    third = srv.raw(read_info=False)
    data = third.read_until_close(timeout=5)
    # The refused client still gets an INFO line first, then the error.
    info_line, rest = data.split(b"\r\n", 1)
    assert info_line.startswith(b"INFO ")
    json.loads(info_line[5:])
    assert rest == b"-ERR 'maximum connections exceeded'\r\n"
    # Once a slot frees up, a new client is accepted (poll: the server
    # notices the close asynchronously).
    a.close()
    deadline = time.monotonic() + 10
    while True:
        c = srv.raw()
        c.send(QUIET + b"PING\r\n")
        try:
            if c.read_exact(6, timeout=5) == b"PONG\r\n":
                break
        except EOFError:
            pass
        c.close()
        if time.monotonic() > deadline:
            pytest.fail("no slot freed within 10s after a client disconnected")
        time.sleep(0.02)
    assert b.ping_pong() == b"PONG\r\n"


def test_max_subscriptions(server_factory):
    srv = server_factory(config="max_subscriptions: 2\n")
    c = srv.raw()
    c.send(b'CONNECT {"verbose":true}\r\nSUB a 1\r\nSUB b 2\r\nSUB c 3\r\n')
    # No +OK for the refused SUB; the connection stays open.
    assert c.ping_pong() == (b"+OK\r\n+OK\r\n+OK\r\n"
                             b"-ERR 'maximum subscriptions exceeded'\r\nPONG\r\n")
    c.send(b"PUB a 1\r\nx\r\nPUB c 1\r\ny\r\n")
    assert c.ping_pong() == b"+OK\r\nMSG a 1 1\r\nx\r\n+OK\r\nPONG\r\n"
    # Freeing one makes room again.
    c.send(b"UNSUB 1\r\nSUB d 4\r\nPUB d 0\r\n\r\n")
    # A verbose PUB's +OK precedes the MSG it causes on the same connection.
    assert c.ping_pong() == b"+OK\r\n+OK\r\n+OK\r\nMSG d 4 0\r\n\r\nPONG\r\n"


def test_stale_connection(server_factory):
    srv = server_factory(config='ping_interval: "1s"\nping_max: 1\n')
    c = srv.raw()
    c.send(QUIET)
    # The server PINGs; we never answer, so it gives up on us.
    assert c.read_until_close(timeout=15) == b"PING\r\n-ERR 'Stale Connection'\r\n"


def test_answered_pings_keep_connection(server_factory):
    srv = server_factory(config='ping_interval: "1s"\nping_max: 1\n')
    c = srv.raw()
    c.send(QUIET)
    for _ in range(3):
        assert c.readline(timeout=10) == b"PING\r\n"
        c.send(b"PONG\r\n")
    assert c.ping_pong() == b"PONG\r\n"


def test_config_max_payload(server_factory):
    # NATS config sizes take binary suffixes ("1MB" = 1048576); a plain
    # number is bytes.
    srv = server_factory(config="max_payload: 512\n")
    c = srv.raw()
    assert c.info["max_payload"] == 512
    c.send(QUIET + b"SUB foo 1\r\nPUB foo 512\r\n" + b"p" * 512 + b"\r\n")
    assert c.read_until(b"\r\n") == b"MSG foo 1 512\r\n"
    c.read_exact(514)
    c.send(b"PUB foo 513\r\n")
    assert c.read_until_close(timeout=5) == b"-ERR 'Maximum Payload Violation'\r\n"


def test_config_max_control_line(server_factory):
    srv = server_factory(config="max_control_line: 100\n")
    c = srv.raw()
    c.send(QUIET + b"SUB " + b"s" * 80 + b" 1\r\n")  # 88 bytes: fine
    assert c.ping_pong() == b"PONG\r\n"
    c.send(b"SUB " + b"t" * 200 + b" 2\r\n")
    assert c.read_until_close(timeout=5) == b"-ERR 'maximum control line exceeded'\r\n"


def test_config_aliases_and_units(server_factory):
    srv = server_factory(config='max_subs: 1\nmax_conn: 5\nping_interval: "1m"\n'
                                'write_deadline: "3s"\nmax_pending: 2MB\n')
    v = srv.varz()
    assert v["max_subscriptions"] == 1
    assert v["max_connections"] == 5
    assert v["max_pending"] == 2 * 1024 * 1024
    # Durations are nanoseconds in /varz, like nats-server's JSON.
    assert v["ping_interval"] == 60 * 10**9
    assert v["write_deadline"] == 3 * 10**9
