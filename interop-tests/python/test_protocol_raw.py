"""Byte-exact client protocol checks over raw sockets.

Every expected byte string here was read off the real nats-server (run this
file with SERVER_UNDER_TEST=nats-server).  Where nats-server's behaviour is
surprising it is said so in a comment, because it is still the specification.
"""

from __future__ import annotations

import json
import re
import time

import pytest

QUIET = b'CONNECT {"verbose":false,"pedantic":false}\r\n'
HDRS = b'CONNECT {"verbose":false,"pedantic":false,"headers":true}\r\n'


def expect_exact(conn, want: bytes, timeout: float = 5.0) -> None:
    got = conn.read_exact(len(want), timeout=timeout)
    assert got == want


def expect_closed(conn, timeout: float = 5.0) -> bytes:
    """The server must close the connection; returns any bytes before EOF."""
    return conn.read_until_close(timeout=timeout)


# --- INFO -------------------------------------------------------------------

def test_info_line_on_connect(server):
    c = server.raw(read_info=False)
    line = c.readline()
    # nats-server writes `INFO <json> \r\n`: note the space before CRLF.
    assert line.startswith(b"INFO {") and line.endswith(b"} \r\n"), line
    assert line.count(b"\r\n") == 1
    info = json.loads(line[5:-2])
    assert re.fullmatch(r"N[A-Z2-7]{55}", info["server_id"]), info["server_id"]
    assert isinstance(info["server_name"], str) and info["server_name"]
    assert isinstance(info["version"], str) and re.match(r"\d+\.\d+\.\d+", info["version"])
    assert info["proto"] == 1
    assert info["host"] == "127.0.0.1"
    assert info["port"] == server.port
    assert info["headers"] is True
    assert info["max_payload"] == 1048576
    assert isinstance(info["client_id"], int) and info["client_id"] > 0
    assert info["client_ip"] == "127.0.0.1"
    assert "auth_required" not in info or info["auth_required"] is False
    # Nothing else is sent until the client speaks.
    data, closed = c.read_for(0.2)
    assert (data, closed) == (b"", False)


def test_info_client_ids_are_distinct(server):
    a, b = server.raw(), server.raw()
    assert a.info["client_id"] != b.info["client_id"]
    assert a.info["server_id"] == b.info["server_id"]


# --- CONNECT / PING / verbose / pedantic ------------------------------------

def test_connect_verbose_ok_and_ping_pong(server):
    c = server.raw()
    c.send(b'CONNECT {"verbose":true}\r\n')
    expect_exact(c, b"+OK\r\n")
    c.send(b"PING\r\n")
    expect_exact(c, b"PONG\r\n")
    c.send(b"SUB foo 1\r\nPUB foo 2\r\nhi\r\nUNSUB 1\r\n")
    expect_exact(c, b"+OK\r\n+OK\r\nMSG foo 1 2\r\nhi\r\n+OK\r\n")


def test_connect_defaults_are_verbose_and_pedantic(server):
    # Fields absent from CONNECT take nats-server's defaults: verbose and
    # pedantic are ON unless the client turns them off.
    c = server.raw()
    c.send(b"CONNECT {}\r\nPUB foo..bar 0\r\n\r\nPING\r\n")
    # Surprise kept as specification: after the pedantic -ERR the PUB still
    # gets its verbose +OK.
    expect_exact(c, b"+OK\r\n-ERR 'Invalid Publish Subject'\r\n+OK\r\nPONG\r\n")


def test_before_connect_ping_and_pub_are_served(server):
    c = server.raw()
    c.send(b"PING\r\n")
    expect_exact(c, b"PONG\r\n")
    c.send(b"PUB foo 0\r\n\r\n")  # verbose defaults to on before CONNECT
    expect_exact(c, b"+OK\r\n")


def test_connect_unknown_fields_are_ignored(server):
    c = server.raw()
    c.send(b'CONNECT {"verbose":true,"no_such_field":[1,{"a":2}],"lang":"x"}\r\nPING\r\n')
    expect_exact(c, b"+OK\r\nPONG\r\n")


def test_connect_bad_json_closes_without_err(server):
    c = server.raw()
    c.send(b"CONNECT {bad\r\n")
    assert expect_closed(c) == b""


def test_connect_invalid_protocol_version(server):
    c = server.raw()
    c.send(b'CONNECT {"verbose":false,"protocol":2}\r\n')
    assert expect_closed(c) == b"-ERR 'invalid client protocol'\r\n"


def test_pedantic_invalid_publish_subject(server):
    c = server.raw()
    c.send(b'CONNECT {"verbose":false,"pedantic":true}\r\n')
    for subj in (b"foo..bar", b"foo.*", b"foo.>", b".foo", b"foo."):
        c.send(b"PUB " + subj + b" 0\r\n\r\n")
        assert c.ping_pong() == b"-ERR 'Invalid Publish Subject'\r\nPONG\r\n", subj
    # The connection stays usable.
    c.send(b"SUB ok 1\r\nPUB ok 1\r\nx\r\n")
    assert c.ping_pong() == b"MSG ok 1 1\r\nx\r\nPONG\r\n"


def test_non_pedantic_publish_subject_not_checked(server):
    c = server.raw()
    c.send(QUIET + b"SUB foo.* 1\r\nPUB foo..bar 0\r\n\r\nPUB foo.* 1\r\nw\r\n")
    assert c.ping_pong() == b"MSG foo.* 1 1\r\nw\r\nPONG\r\n"


@pytest.mark.parametrize("pedantic", [False, True])
def test_sub_invalid_subject(server, pedantic):
    c = server.raw()
    c.connect(pedantic=pedantic)
    for subj in (b"foo..bar", b"foo.", b".foo", b">.a", b"a.>.b", b"."):
        c.send(b"SUB " + subj + b" 1\r\n")
        assert c.ping_pong() == b"-ERR 'Invalid Subject'\r\nPONG\r\n", subj
    # Wildcard characters inside a longer token are plain literals.
    c.send(b"SUB a.b* 2\r\nSUB *a 3\r\nSUB x>y 4\r\nPUB a.b* 0\r\n\r\nPUB x>y 0\r\n\r\n")
    assert c.ping_pong() == b"MSG a.b* 2 0\r\n\r\nMSG x>y 4 0\r\n\r\nPONG\r\n"
    c.send(b"SUB good 9\r\nPUB good 0\r\n\r\n")
    assert c.ping_pong() == b"MSG good 9 0\r\n\r\nPONG\r\n"


# --- parsing leniency -------------------------------------------------------

def test_verbs_case_insensitive(server):
    c = server.raw()
    c.send(b'connect {"verbose":false}\r\nsub foo 1\r\npub foo 5\r\nhello\r\n'
           b"Sub bar 2\r\nPuB bar 0\r\n\r\nuNsUb 2\r\npUb bar 0\r\n\r\nPiNg\r\n")
    expect_exact(c, b"MSG foo 1 5\r\nhello\r\nMSG bar 2 0\r\n\r\nPONG\r\n")
    c.send(b"ping\r\n")
    expect_exact(c, b"PONG\r\n")


def test_tabs_and_multiple_spaces(server):
    c = server.raw()
    c.send(QUIET + b"SUB\tfoo \t 1\r\nPUB  foo\t\tbar   5\r\nhello\r\n"
           b"SUB  baz  2 \r\nPUB baz 0 \r\n\r\n")
    assert c.ping_pong() == (b"MSG foo 1 bar 5\r\nhello\r\n"
                             b"MSG baz 2 0\r\n\r\nPONG\r\n")


def test_bare_lf_line_ending_accepted(server):
    c = server.raw()
    c.send(QUIET + b"PING\n")
    expect_exact(c, b"PONG\r\n")


def test_split_byte_by_byte(server):
    c = server.raw()
    stream = (HDRS + b"SUB foo 1\r\nPUB foo rep 5\r\nhello\r\n"
              b"HPUB foo 12 14\r\nNATS/1.0\r\n\r\nhi\r\nPING\r\n")
    for i in range(len(stream)):
        c.send(stream[i:i + 1])
        if i % 8 == 0:
            time.sleep(0.001)  # give the server separate reads
    expect_exact(c, b"MSG foo 1 rep 5\r\nhello\r\nHMSG foo 1 12 14\r\nNATS/1.0\r\n\r\nhi\r\nPONG\r\n")


# --- MSG / HMSG exact bytes ---------------------------------------------------

def test_msg_exact_bytes(server):
    c = server.raw()
    c.send(QUIET + b"SUB foo 1\r\nPUB foo 5\r\nhello\r\n")
    expect_exact(c, b"MSG foo 1 5\r\nhello\r\n")
    c.send(b"PUB foo bar 5\r\nhello\r\n")
    expect_exact(c, b"MSG foo 1 bar 5\r\nhello\r\n")
    c.send(b"PUB foo 0\r\n\r\n")
    expect_exact(c, b"MSG foo 1 0\r\n\r\n")
    # Payload bytes are opaque: CRLF and binary inside pass through.
    body = b"a\r\nb\x00\xff"
    c.send(b"PUB foo %d\r\n" % len(body) + body + b"\r\n")
    expect_exact(c, b"MSG foo 1 %d\r\n" % len(body) + body + b"\r\n")


def test_msg_sid_per_subscription(server):
    c = server.raw()
    c.send(QUIET + b"SUB a.b 7\r\nSUB a.* xyz\r\nSUB nomatch 9\r\nPUB a.b 1\r\nq\r\n")
    out = c.ping_pong()
    msgs = sorted(re.findall(rb"MSG a\.b (\S+) 1\r\nq\r\n", out))
    assert msgs == [b"7", b"xyz"], out
    assert out.endswith(b"PONG\r\n")


def test_hpub_hmsg_exact_bytes(server):
    c = server.raw()
    hdr = b"NATS/1.0\r\nA: B\r\n\r\n"  # 18 bytes
    c.send(HDRS + b"SUB foo 1\r\nHPUB foo 18 23\r\n" + hdr + b"hello\r\n")
    expect_exact(c, b"HMSG foo 1 18 23\r\n" + hdr + b"hello\r\n")
    c.send(b"HPUB foo rep 18 23\r\n" + hdr + b"hello\r\n")
    expect_exact(c, b"HMSG foo 1 rep 18 23\r\n" + hdr + b"hello\r\n")
    # Repeated keys and odd spacing pass through untouched.
    hdr2 = b"NATS/1.0\r\nA: 1\r\nA: 2\r\nB:  x y \r\n\r\n"
    c.send(b"HPUB foo %d %d\r\n" % (len(hdr2), len(hdr2)) + hdr2 + b"\r\n")
    expect_exact(c, b"HMSG foo 1 %d %d\r\n" % (len(hdr2), len(hdr2)) + hdr2 + b"\r\n")
    # A plain PUB to the same sub still arrives as MSG.
    c.send(b"PUB foo 2\r\nok\r\n")
    expect_exact(c, b"MSG foo 1 2\r\nok\r\n")


def test_hpub_to_plain_subscriber_without_headers_support(server):
    # A subscriber that did not announce headers gets only the payload.
    sub = server.raw()
    sub.send(QUIET + b"SUB foo 1\r\n")
    sub.ping_pong()
    pub = server.raw()
    pub.send(HDRS + b"HPUB foo 12 17\r\nNATS/1.0\r\n\r\nhello\r\n")
    pub.ping_pong()
    assert sub.ping_pong() == b"MSG foo 1 5\r\nhello\r\nPONG\r\n"


def test_hpub_without_headers_in_connect_closes_silently(server):
    c = server.raw()
    c.send(QUIET + b"SUB foo 1\r\nHPUB foo 12 12\r\nNATS/1.0\r\n\r\n\r\n")
    assert expect_closed(c) == b""


def test_hpub_header_size_larger_than_total_closes_silently(server):
    c = server.raw()
    c.send(HDRS + b"HPUB foo 30 10\r\n")
    assert expect_closed(c) == b""


def test_no_responders_status_message(server):
    c = server.raw()
    c.send(b'CONNECT {"verbose":false,"headers":true,"no_responders":true}\r\n'
           b"SUB inbox 1\r\nPUB svc inbox 2\r\nhi\r\n")
    hdr = b"NATS/1.0 503\r\nNats-Subject: svc\r\n\r\n"
    assert c.ping_pong() == (b"HMSG inbox 1 %d %d\r\n" % (len(hdr), len(hdr))
                             + hdr + b"\r\nPONG\r\n")


def test_no_responders_requires_headers(server):
    c = server.raw()
    c.send(b'CONNECT {"verbose":false,"no_responders":true}\r\n')
    assert expect_closed(c) == b"-ERR 'no responders requires headers support'\r\n"


# --- subscription handling ----------------------------------------------------

def test_unsub_with_max_delivers_exactly_n(server):
    c = server.raw()
    c.send(QUIET + b"SUB foo 1\r\nUNSUB 1 3\r\n" + b"PUB foo 1\r\nx\r\n" * 6)
    assert c.ping_pong() == b"MSG foo 1 1\r\nx\r\n" * 3 + b"PONG\r\n"
    c.send(b"PUB foo 1\r\nx\r\n")
    assert c.ping_pong() == b"PONG\r\n"


def test_unsub_unknown_sid_is_ignored(server):
    c = server.raw()
    c.send(b'CONNECT {"verbose":true}\r\nUNSUB 99\r\n')
    assert c.ping_pong() == b"+OK\r\n+OK\r\nPONG\r\n"


def test_echo_false_raw(server):
    c = server.raw()
    c.send(b'CONNECT {"verbose":false,"echo":false}\r\nSUB foo 1\r\nPUB foo 2\r\nhi\r\n')
    assert c.ping_pong() == b"PONG\r\n"
    other = server.raw()
    other.send(QUIET + b"PUB foo 2\r\nyo\r\n")
    other.ping_pong()
    assert c.ping_pong() == b"MSG foo 1 2\r\nyo\r\nPONG\r\n"


def test_queue_group_raw(server):
    c = server.raw()
    c.send(QUIET + b"SUB foo q1 1\r\nSUB foo q1 2\r\n" + b"PUB foo 1\r\nx\r\n" * 10)
    out = c.ping_pong()
    assert len(re.findall(rb"MSG foo [12] 1\r\nx\r\n", out)) == 10, out


# --- errors that close the connection ----------------------------------------

def test_unknown_verb_closes(server):
    c = server.raw()
    c.send(QUIET + b"FOO bar\r\n")
    assert expect_closed(c) == b"-ERR 'Unknown Protocol Operation'\r\n"


def test_unknown_verb_before_connect_closes(server):
    c = server.raw()
    c.send(b"HELLO\r\n")
    assert expect_closed(c) == b"-ERR 'Unknown Protocol Operation'\r\n"


@pytest.mark.parametrize("line", [
    b"PUB foo " + b"x" * 5000 + b" 5\r\n",   # long line with its CRLF
    b"SUB foo " + b"x" * 10000,              # long line, no CRLF yet
])
def test_control_line_too_long(server, line):
    c = server.raw()
    c.send(QUIET + line)
    # Note the lowercase text: nats-server's wording.
    assert expect_closed(c) == b"-ERR 'maximum control line exceeded'\r\n"


def test_max_payload_violation_raw(server):
    c = server.raw()
    c.send(QUIET + b"PUB foo 1048577\r\n")
    assert expect_closed(c) == b"-ERR 'Maximum Payload Violation'\r\n"


def test_exact_max_payload_raw(server):
    c = server.raw()
    body = b"z" * 1048576
    c.send(QUIET + b"SUB foo 1\r\nPUB foo 1048576\r\n" + body + b"\r\n")
    expect_exact(c, b"MSG foo 1 1048576\r\n" + body + b"\r\n")


@pytest.mark.parametrize("stream", [
    b"PUB foo 2\r\nhello\r\n",      # payload longer than declared
    b"PUB foo 5\r\nhelloXY\r\n",     # no CRLF after the payload
    b"PUB foo 0\r\nPING\r\n",        # zero payload but no empty line
    b"MSG foo 1 5\r\nhello\r\n",     # server-only verb from a client
    b"\r\n",                         # empty line
    b"   PING\r\n",                  # leading spaces
])
def test_framing_errors_close_with_unknown_op(server, stream):
    c = server.raw()
    c.send(QUIET + stream)
    assert expect_closed(c) == b"-ERR 'Unknown Protocol Operation'\r\n"


@pytest.mark.parametrize("stream", [
    b"PUB foo -1\r\n",           # negative size
    b"PUB foo x\r\n",            # non-numeric size
    b"PUB foo\r\n",              # missing size
    b"PUB foo bar baz 1\r\n",    # too many args
    b"SUB foo\r\n",              # missing sid
    b"SUB a b c d\r\n",          # too many args
    b"UNSUB 1 2 3\r\n",          # too many args
    b"-ERR 'from a client'\r\n", # server-only verb
])
def test_argument_errors_close_silently(server, stream):
    # Surprising but specified: nats-server closes these without any -ERR.
    c = server.raw()
    c.send(QUIET + stream)
    assert expect_closed(c) == b""


@pytest.mark.parametrize("stream", [
    b"UNSUB x\r\n",          # unknown (non-numeric) sid: ignored
    b"+OK\r\n",              # client may send +OK; ignored
    b"PONG\r\n",             # unsolicited PONG is fine
    b"INFO {}\r\n",          # client INFO is ignored
])
def test_tolerated_client_lines(server, stream):
    c = server.raw()
    c.send(QUIET + stream)
    assert c.ping_pong() == b"PONG\r\n"
