"""Client protocol corners that stock clients and their test suites run into.

Every expected answer was read off the real nats-server (run this file with
SERVER_UNDER_TEST=nats-server): where nats-server's behaviour is surprising,
a comment says so, because it is still the specification.
"""

from __future__ import annotations

import time

import pytest

QUIET = b'CONNECT {"verbose":false,"pedantic":false}\r\n'
HDRS = b'CONNECT {"verbose":false,"pedantic":false,"headers":true}\r\n'
AUTH_ARGS = ["--user", "a", "--pass", "b"]
GOOD = b'CONNECT {"verbose":false,"user":"a","pass":"b"}\r\n'
VIOLATION = b"-ERR 'Authorization Violation'\r\n"
UNKNOWN = b"-ERR 'Unknown Protocol Operation'\r\n"


def closed_silently(conn) -> None:
    """The server closes the connection without sending anything."""
    assert conn.read_until_close(timeout=5) == b""


# --- 1. A second CONNECT is checked again ----------------------------------

@pytest.fixture
def auth_server(server_factory):
    return server_factory(args=AUTH_ARGS)


def test_second_connect_wrong_password_is_an_auth_violation(auth_server):
    c = auth_server.raw()
    c.send(GOOD)
    assert c.ping_pong() == b"PONG\r\n"
    c.send(b'CONNECT {"verbose":false,"user":"a","pass":"x"}\r\n')
    assert c.read_until_close() == VIOLATION


def test_second_connect_in_the_same_write_is_checked_too(auth_server):
    c = auth_server.raw()
    c.send(GOOD + b'CONNECT {"verbose":false,"user":"a","pass":"x"}\r\nPING\r\n')
    assert c.read_until_close() == VIOLATION


def test_second_connect_right_password_keeps_the_connection(auth_server):
    c = auth_server.raw()
    c.send(GOOD)
    c.send(b'CONNECT {"verbose":true,"user":"a","pass":"b"}\r\n')
    assert c.ping_pong() == b"+OK\r\nPONG\r\n"
    c.send(b"SUB foo 1\r\nPUB foo 1\r\nx\r\n")
    assert c.ping_pong() == b"+OK\r\n+OK\r\nMSG foo 1 1\r\nx\r\nPONG\r\n"


def test_second_connect_without_credentials_keeps_the_first_ones(auth_server):
    # nats-server decodes each CONNECT over the options it already has, so
    # fields a later CONNECT leaves out (here user and pass) keep their values.
    c = auth_server.raw()
    c.send(GOOD)
    c.send(b'CONNECT {"verbose":true}\r\n')
    assert c.ping_pong() == b"+OK\r\nPONG\r\n"


def test_second_connect_keeps_options_it_leaves_out(server):
    c = server.raw()
    c.send(b'CONNECT {"verbose":true,"echo":false,"headers":true,"pedantic":false}\r\n')
    c.send(b"CONNECT {}\r\n")
    # Still verbose (two +OK), still without echo (no MSG of our own).
    assert c.ping_pong() == b"+OK\r\n+OK\r\nPONG\r\n"
    c.send(b"SUB foo 1\r\nPUB foo 1\r\nx\r\n")
    assert c.ping_pong() == b"+OK\r\n+OK\r\nPONG\r\n"
    # Still allowed to publish headers; a null leaves the option as it was.
    # (Every CONNECT after the first drops the subscriptions: subscribe anew.)
    c.send(b'CONNECT {"verbose":false,"echo":true,"headers":null}\r\n')
    c.send(b"SUB foo 1\r\nHPUB foo 12 13\r\nNATS/1.0\r\n\r\nx\r\n")
    assert c.ping_pong() == b"HMSG foo 1 12 13\r\nNATS/1.0\r\n\r\nx\r\nPONG\r\n"


def test_second_connect_drops_subscriptions(server):
    # nats-server clears a client's subscriptions on every CONNECT after the
    # first (it may move the client to another account); the sids are free.
    c = server.raw()
    c.send(QUIET + b"SUB foo 1\r\nSUB foo q 2\r\nPUB foo 1\r\nx\r\n")
    assert c.ping_pong() == b"MSG foo 1 1\r\nx\r\nMSG foo 2 1\r\nx\r\nPONG\r\n"
    c.send(QUIET + b"PUB foo 1\r\ny\r\n")
    assert c.ping_pong() == b"PONG\r\n"
    c.send(b"SUB foo 1\r\nPUB foo 1\r\nz\r\n")
    assert c.ping_pong() == b"MSG foo 1 1\r\nz\r\nPONG\r\n"
    # ...and another client no longer reaches them either.
    other = server.raw()
    other.send(QUIET + b"PUB foo 1\r\nw\r\n")
    assert other.ping_pong() == b"PONG\r\n"
    assert c.ping_pong() == b"MSG foo 1 1\r\nw\r\nPONG\r\n"


@pytest.mark.parametrize("connect", [
    b'CONNECT {"account":"x"}\r\n',
    b'CONNECT {"new_account":true}\r\n',
])
def test_connect_account_designation_is_an_auth_violation(server, connect):
    # Even without authentication configured.
    c = server.raw()
    c.send(connect)
    assert c.read_until_close() == VIOLATION


def test_connect_empty_account_is_fine(server):
    c = server.raw()
    c.send(b'CONNECT {"verbose":false,"account":"","new_account":false}\r\n')
    assert c.ping_pong() == b"PONG\r\n"


# --- 2. CONNECT keys are matched without regard to case ---------------------

def test_connect_upper_case_credentials(auth_server):
    c = auth_server.raw()
    c.send(b'CONNECT {"USER":"a","PASS":"b","Verbose":false}\r\n')
    assert c.ping_pong() == b"PONG\r\n"


def test_connect_mixed_case_verbose(server):
    c = server.raw()
    c.send(b'CONNECT {"Verbose":true,"PEDANTIC":false}\r\n')
    assert c.ping_pong() == b"+OK\r\nPONG\r\n"


@pytest.mark.parametrize("connect,want", [
    # The last of two keys that name the same option wins, whatever their case.
    (b'CONNECT {"VERBOSE":false,"verbose":true}\r\n', b"+OK\r\nPONG\r\n"),
    (b'CONNECT {"verbose":true,"VERBOSE":false}\r\n', b"PONG\r\n"),
    (b'CONNECT {"verbose":true,"verbose":false}\r\n', b"PONG\r\n"),
    # Go's case folding: the long s (U+017F) folds to "s".
    ('CONNECT {"verbo\u017fe":false}\r\n'.encode(), b"PONG\r\n"),
    # ...but the Kelvin sign only to "k": an unknown key, ignored.
    ('CONNECT {"verbose":false,"\u212aeep":1}\r\n'.encode(), b"PONG\r\n"),
])
def test_connect_duplicate_keys_last_wins(server, connect, want):
    c = server.raw()
    c.send(connect)
    assert c.ping_pong() == want


@pytest.mark.parametrize("connect,ok", [
    (b'CONNECT {"verbose":false,"user":"a","USER":"z","pass":"b"}\r\n', False),
    (b'CONNECT {"verbose":false,"USER":"z","user":"a","pass":"b"}\r\n', True),
    (b'CONNECT {"verbose":false,"user":"a","pass":"x","Pass":"b"}\r\n', True),
    (b'CONNECT {"verbose":false,"user":"a","pass":"b","pass":"x"}\r\n', False),
])
def test_connect_duplicate_credentials_last_wins(auth_server, connect, ok):
    c = auth_server.raw()
    c.send(connect + b"PING\r\n")
    if ok:
        assert c.read_until(b"PONG\r\n") == b"PONG\r\n"
    else:
        assert c.read_until_close() == VIOLATION


@pytest.mark.parametrize("connect,want", [
    # The verb needs no separator before its argument...
    (b'CONNECT{"verbose":true}\r\n', b"+OK\r\nPONG\r\n"),
    (b'connect{"verbose":true}\r\n', b"+OK\r\nPONG\r\n"),
    # ...and a JSON null leaves every option at its default (verbose on).
    (b"CONNECT null\r\n", b"+OK\r\nPONG\r\n"),
    # Strings are taken as they come, invalid UTF-8 included.
    (b'CONNECT {"verbose":false,"name":"\xff"}\r\n', b"PONG\r\n"),
    # Options Tern has no use for are still checked for their type.
    (b'CONNECT {"verbose":false,"import":{"allow":["a",null]}}\r\n', b"PONG\r\n"),
])
def test_connect_accepted_forms(server, connect, want):
    c = server.raw()
    c.send(connect)
    assert c.ping_pong() == want


@pytest.mark.parametrize("connect", [
    b"CONNECTX {}\r\n",                      # "X {}" is the argument: not JSON
    b"CONNECT {} x\r\n",                     # trailing garbage
    b"CONNECT 5\r\n",
    b'CONNECT {"protocol":1.0}\r\n',          # not an integer
    b'CONNECT {"protocol":1e0}\r\n',
    b'CONNECT {"protocol":99999999999999999999}\r\n',
    b'CONNECT {"VERBOSE":"yes"}\r\n',         # wrong type under any case
    b'CONNECT {"verbose":"yes","verbose":true}\r\n',  # a later good value does not undo it
    b'CONNECT {"tls_required":"x"}\r\n',
    b'CONNECT {"jwt":5}\r\n',
    b'CONNECT {"import":5}\r\n',
    b'CONNECT {"import":{"allow":"a"}}\r\n',
])
def test_connect_bad_json_closes_silently(server, connect):
    c = server.raw()
    c.send(connect + b"PING\r\n")
    closed_silently(c)


# --- 3. The first server PING comes about 2 s after CONNECT -----------------

def read_ping(conn, timeout: float) -> float:
    """Waits for the server's PING; returns how long it took."""
    start = time.monotonic()
    assert conn.readline(timeout=timeout) == b"PING\r\n"
    return time.monotonic() - start


def test_first_ping_comes_soon_after_connect(server_factory):
    srv = server_factory(config='ping_interval: "60s"\n')
    c = srv.raw()
    c.send(QUIET)
    # nats-server: min(2 s, ping_interval) plus up to 20 %; generous bound.
    read_ping(c, timeout=6)
    c.send(b"PONG\r\n")
    assert c.ping_pong() == b"PONG\r\n"


def test_first_ping_is_sent_even_to_a_busy_client(server_factory):
    srv = server_factory(config='ping_interval: "60s"\n')
    c = srv.raw()
    c.send(QUIET + b"SUB foo 1\r\nPUB foo 1\r\nx\r\n")
    assert c.ping_pong() == b"MSG foo 1 1\r\nx\r\nPONG\r\n"
    read_ping(c, timeout=6)


def test_no_early_ping_before_connect(server_factory):
    # Before CONNECT the connection waits a full ping_interval.
    srv = server_factory(config='ping_interval: "60s"\n')
    c = srv.raw()
    assert c.read_for(3.0) == (b"", False)
    c.send(QUIET)
    read_ping(c, timeout=6)


def test_pongs_alone_do_not_delay_pings(server_factory):
    # Only messages, SUB/UNSUB and PING count as client activity that lets
    # the server skip a PING; answering PINGs with PONG does not.
    srv = server_factory(config='ping_interval: "3s"\n')
    c = srv.raw()
    c.send(QUIET)
    read_ping(c, timeout=6)
    c.send(b"PONG\r\n")
    # The next one a ping_interval later (it would be two if the PONG counted).
    read_ping(c, timeout=5)


def test_later_connect_does_not_force_a_ping_on_an_active_client(server_factory):
    # Once a PING has gone out, a new CONNECT restarts the short first-ping
    # timer, but an active client is then not pinged.
    srv = server_factory(config='ping_interval: "60s"\n')
    c = srv.raw()
    c.send(QUIET)
    read_ping(c, timeout=6)
    c.send(b"PONG\r\nSUB foo 1\r\n" + QUIET)
    assert c.read_for(3.5) == (b"", False)


# --- 4. INFO from a client --------------------------------------------------

@pytest.mark.parametrize("line", [
    b"INFO {}\r\n",
    b"INFO{}\r\n",                 # the verb is a prefix: no separator needed
    b"info\t{}\r\n",
    b"INFO {}  \r\n",
    b"INFO null\r\n",
    b'INFO {"server_id":"x","connect_urls":["a:1"],"auth_required":true}\r\n',
    b'INFO {"gateway_cmd_payload":"aGk="}\r\n',
])
def test_client_info_accepted(server, line):
    c = server.raw()
    c.send(QUIET + line)
    assert c.ping_pong() == b"PONG\r\n"


@pytest.mark.parametrize("line", [
    b"INFO [1,2]\r\n",
    b"INFO {bad\r\n",
    b"INFO {} x\r\n",
    b"INFO {}{}\r\n",
    b"INFO\r\n",
    b"INFO \r\n",
    b"INFOX {}\r\n",
    b"INFO 5\r\n",
    b'INFO "x"\r\n',
    b'INFO {"port":"x"}\r\n',
    b'INFO {"PORT":"x"}\r\n',
    b'INFO {"port":"x","port":1}\r\n',
    b'INFO {"connect_urls":[1]}\r\n',
    b'INFO {"max_payload":3000000000}\r\n',
    b'INFO {"client_id":-1}\r\n',
    b'INFO {"gateway_cmd":256}\r\n',
    b'INFO {"gateway_cmd_payload":"a"}\r\n',
])
def test_client_info_bad_json_closes_silently(server, line):
    c = server.raw()
    c.send(QUIET + line + b"PING\r\n")
    closed_silently(c)


def test_client_info_before_connect_with_auth(auth_server):
    c = auth_server.raw()
    c.send(b"INFO {}\r\n")
    assert c.read_until_close() == VIOLATION


# --- 5. HPUB from a client that did not ask for headers ---------------------

@pytest.mark.parametrize("line", [
    b"HPUB foo 12 12\r\n",
    b"HPUB foo x y\r\n",
    b"HPUB foo\r\n",
    b"HPUB foo 30 10\r\n",
    b"HPUB foo 12 2000000\r\n",     # over max_payload: still no -ERR
])
def test_hpub_without_headers_closes_silently(server, line):
    c = server.raw()
    c.send(QUIET + line)
    closed_silently(c)


def test_hpub_before_connect_closes_silently(server):
    c = server.raw()
    c.send(b"HPUB foo 12 2000000\r\n")
    closed_silently(c)


def test_hpub_with_headers_too_big_gets_max_payload(server):
    c = server.raw()
    c.send(HDRS + b"HPUB foo 12 2000000\r\n")
    assert c.read_until_close() == b"-ERR 'Maximum Payload Violation'\r\n"


# --- 6. The payload terminator is checked byte by byte ----------------------

@pytest.mark.parametrize("chunks", [
    [b"PUB a 3\r\nab\r\n"],               # payload "ab\r", then LF instead of CR
    [b"PUB a 2\r\nabX"],                   # wrong first byte
    [b"PUB a 2\r\nab\rX"],                 # wrong second byte
    [b"PUB a 2\r\nab", b"X"],              # split reads
    [b"PUB a 2\r\nab", b"\r", b"X"],
    [b"PUB a 4\r\nab", b"cdX"],
    [b"PUB a 0\r\n\n"],
    [b"PUB a 2\r\nab\n"],
    [b"PUB a 5000\r\n" + b"x" * 5000 + b"X"],
    [b"PUB a 5000\r\n" + b"x" * 2000, b"x" * 3000 + b"\rX"],
], ids=lambda chunks: repr(b"|".join(chunks)[:24]))
def test_bad_payload_terminator_fails_at_once(server, chunks):
    c = server.raw()
    c.send(QUIET + b"SUB a 1\r\n")
    assert c.ping_pong() == b"PONG\r\n"
    for ch in chunks:
        c.send(ch)
    # Nothing more is sent: the server must not wait for a full CRLF.
    assert c.read_until_close() == UNKNOWN


def test_bad_hpub_terminator_fails_at_once(server):
    c = server.raw()
    c.send(HDRS + b"SUB a 1\r\n")
    assert c.ping_pong() == b"PONG\r\n"
    c.send(b"HPUB a 12 12\r\nNATS/1.0\r\n\r\nX")
    assert c.read_until_close() == UNKNOWN


def test_terminator_split_across_reads_is_fine(server):
    c = server.raw()
    c.send(QUIET + b"SUB a 1\r\n")
    assert c.ping_pong() == b"PONG\r\n"
    c.send(b"PUB a 2\r\nab")
    assert c.read_for(0.1) == (b"", False)
    c.send(b"\r")
    assert c.read_for(0.1) == (b"", False)
    c.send(b"\n")
    assert c.ping_pong() == b"MSG a 1 2\r\nab\r\nPONG\r\n"
