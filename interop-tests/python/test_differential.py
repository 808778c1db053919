"""Differential test: the same scripted raw sessions against nats-server and
the server under test; the bytes they answer with must match.

Each session is a list of chunks written to a fresh connection with a small
pause between them, followed by a sentinel `PING\\r\\n`.  We then collect
everything until the server closes the connection, or until it has answered
every PING we sent (plus a short grace period), or until a deadline.  INFO
lines are checked to be JSON and then replaced by a placeholder, since ids
and ports differ from run to run.  What is compared: the remaining bytes, and
whether the connection was closed.

Needs both binaries, so it is skipped when SERVER_UNDER_TEST=nats-server
(unless DIFF_SELF_CHECK=1, which diffs nats-server against a second
nats-server: a check that the sessions themselves are deterministic).
"""

from __future__ import annotations

import json
import os
import re
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

import harness

# Intended differences: session name -> one-line reason.
# Every entry also needs its reason written up in docs/DIFFERENCES.md (the
# test below checks that the session name appears there).
INTENDED_DIFFERENCES: dict[str, str] = {
    "pub_size_leading_zeros": "Tern writes the size it parsed (5), not the digits the publisher sent (005)",
}

CHUNK_PAUSE = 0.02    # between chunks of one session
# Overall wait for the answer after the last chunk.  Every session ends
# before it (all its PONGs arrived, or the server closed), so it only bounds
# a slow server on a loaded machine and costs nothing otherwise.
DEADLINE = 10.0
GRACE = 0.05          # after the last expected PONG, for stragglers

Q = b'CONNECT {"verbose":false,"pedantic":false}\r\n'
V = b'CONNECT {"verbose":true,"pedantic":false}\r\n'
P = b'CONNECT {"verbose":false,"pedantic":true}\r\n'
H = b'CONNECT {"verbose":false,"pedantic":false,"headers":true}\r\n'
HDR = b"NATS/1.0\r\nA: B\r\n\r\n"  # 18 bytes


def split_bytes(data: bytes) -> list[bytes]:
    return [data[i:i + 1] for i in range(len(data))]


# name -> (server group, chunks)
SESSIONS: dict[str, tuple[str, list[bytes]]] = {
    # --- well-formed ------------------------------------------------------
    "connect_verbose": ("default", [V]),
    "connect_empty_object_defaults": ("default", [b"CONNECT {}\r\n", b"PUB foo..bar 0\r\n\r\n"]),
    "connect_unknown_fields": ("default", [b'CONNECT {"verbose":true,"zzz":1,"nested":{"a":[1,2]}}\r\n']),
    "connect_twice": ("default", [V, Q]),
    "ping_before_connect": ("default", [b"PING\r\n"]),
    "pub_before_connect": ("default", [b"PUB foo 0\r\n\r\n"]),
    "sub_before_connect": ("default", [b"SUB foo 1\r\nPUB foo 1\r\nx\r\n"]),
    "pubsub_self": ("default", [Q, b"SUB foo 1\r\n", b"PUB foo 5\r\nhello\r\n"]),
    "pubsub_reply": ("default", [Q, b"SUB foo 1\r\nPUB foo bar 5\r\nhello\r\n"]),
    "pubsub_verbose": ("default", [V, b"SUB foo 1\r\nPUB foo 2\r\nhi\r\nUNSUB 1\r\nPUB foo 0\r\n\r\n"]),
    "payload_with_crlf_inside": ("default", [Q, b"SUB foo 1\r\nPUB foo 6\r\na\r\nb\r\n\r\n"]),
    "payload_split_across_writes": ("default", [Q, b"SUB foo 1\r\nPUB foo 5\r\nhel", b"lo", b"\r", b"\n"]),
    "byte_by_byte": ("default", split_bytes(H + b"SUB foo 1\r\nPUB foo r 2\r\nhi\r\nHPUB foo 12 14\r\nNATS/1.0\r\n\r\nyo\r\n")),
    "hpub_hmsg": ("default", [H, b"SUB foo 1\r\nHPUB foo 18 23\r\n" + HDR + b"hello\r\n"]),
    "hpub_hmsg_reply": ("default", [H, b"SUB foo 1\r\nHPUB foo rep 18 23\r\n" + HDR + b"hello\r\n"]),
    "hpub_zero_header_len": ("default", [H, b"SUB foo 1\r\nHPUB foo 0 0\r\n\r\n"]),
    "unsub_max": ("default", [Q, b"SUB foo 1\r\nUNSUB 1 2\r\n" + b"PUB foo 1\r\nx\r\n" * 4]),
    "unsub_max_zero": ("default", [Q, b"SUB foo 1\r\nUNSUB 1 0\r\nPUB foo 1\r\nx\r\n"]),
    "unsub_unknown_sid": ("default", [V, b"UNSUB 99\r\n"]),
    "unsub_non_numeric_sid": ("default", [Q, b"UNSUB x\r\n"]),
    "sub_same_sid_twice": ("default", [Q, b"SUB foo 1\r\nSUB foo 1\r\nPUB foo 1\r\nx\r\n"]),
    "queue_sub": ("default", [Q, b"SUB foo q 1\r\nPUB foo 1\r\nx\r\n"]),
    "wildcard_star": ("default", [Q, b"SUB a.* 1\r\nPUB a.b 1\r\nx\r\nPUB a.b.c 1\r\ny\r\nPUB a 1\r\nz\r\n"]),
    "wildcard_gt": ("default", [Q, b"SUB a.> 1\r\nPUB a.b 1\r\nx\r\nPUB a.b.c 1\r\ny\r\nPUB a 1\r\nz\r\n"]),
    "wildcard_chars_inside_tokens": ("default", [Q, b"SUB a.b* 1\r\nPUB a.b* 0\r\n\r\nPUB a.bc 0\r\n\r\n"]),
    "echo_false": ("default", [b'CONNECT {"verbose":false,"echo":false}\r\n', b"SUB foo 1\r\nPUB foo 1\r\nx\r\n"]),
    "no_responders": ("default", [b'CONNECT {"verbose":false,"headers":true,"no_responders":true}\r\n',
                                  b"SUB in 1\r\nPUB svc in 0\r\n\r\n"]),
    "no_responders_needs_headers": ("default", [b'CONNECT {"verbose":false,"no_responders":true}\r\n']),
    "protocol_1_info_after_first_pong": ("default", [b'CONNECT {"verbose":false,"protocol":1}\r\n', b"PING\r\n"]),
    "protocol_2_invalid": ("default", [b'CONNECT {"verbose":false,"protocol":2}\r\n']),
    "lowercase_verbs": ("default", [b'connect {"verbose":false}\r\nsub foo 1\r\npub foo 1\r\nx\r\nunsub 1\r\nping\r\n']),
    "mixed_case_verbs": ("default", [b'CoNnEcT {"verbose":false}\r\nSuB foo 1\r\npUb foo 1\r\nx\r\nPiNg\r\n']),
    "tabs_and_spaces": ("default", [Q, b"SUB\t\tfoo  \t1\r\nPUB foo\t \tbar  1\r\nx\r\nSUB  baz  2 \r\nPUB baz 0 \r\n\r\n"]),
    "bare_lf": ("default", [Q, b"SUB foo 1\nPUB foo 1\nx\r\nPING\n"]),
    "pedantic_bad_pub_subject": ("default", [P, b"PUB foo..bar 0\r\n\r\nPUB foo.* 0\r\n\r\nPUB foo.> 0\r\n\r\n"]),
    "pedantic_verbose_bad_pub_subject": ("default", [b'CONNECT {"verbose":true,"pedantic":true}\r\n', b"PUB foo..bar 0\r\n\r\n"]),
    "non_pedantic_bad_pub_subject": ("default", [Q, b"SUB foo.* 1\r\nPUB foo..bar 0\r\n\r\nPUB foo.* 0\r\n\r\n"]),
    "sub_bad_subjects": ("default", [Q, b"SUB foo..bar 1\r\nSUB foo. 2\r\nSUB .foo 3\r\nSUB >.a 4\r\nSUB a.>.b 5\r\n"]),
    "sub_bad_subject_verbose": ("default", [V, b"SUB foo..bar 1\r\n"]),
    "tolerated_client_lines": ("default", [Q, b"PONG\r\n+OK\r\nINFO {}\r\n"]),
    "ping_with_trailing_junk": ("default", [Q, b"PINGPONG\r\n"]),
    "ping_with_arg": ("default", [Q, b"PING x\r\n"]),
    "pub_size_leading_zeros": ("default", [Q, b"SUB foo 1\r\nPUB foo 005\r\nhello\r\n"]),
    "pub_after_bad_sub_continues": ("default", [Q, b"SUB foo..bar 1\r\nSUB foo 2\r\nPUB foo 0\r\n\r\n"]),
    "utf8_subject": ("default", [Q, "SUB f\u00f6\u00f6 1\r\nPUB f\u00f6\u00f6 1\r\nx\r\n".encode()]),
    "long_sid": ("default", [Q, b"SUB foo " + b"s" * 200 + b"\r\nPUB foo 0\r\n\r\n"]),
    "many_subs_one_pub": ("default", [Q, b"".join(b"SUB x.%d %d\r\n" % (i, i) for i in range(50)) + b"PUB x.42 0\r\n\r\n"]),
    # --- malformed --------------------------------------------------------
    "bad_verb": ("default", [Q, b"FOO bar\r\n"]),
    "bad_verb_before_connect": ("default", [b"HELLO\r\n"]),
    "verb_prefix_subx": ("default", [Q, b"SUBX foo 1\r\n"]),
    "verb_prefix_pubx": ("default", [Q, b"PUBX foo 1\r\n"]),
    "verb_subscribe": ("default", [Q, b"SUBSCRIBE foo 1\r\n"]),
    "empty_line": ("default", [Q, b"\r\n"]),
    "leading_space": ("default", [Q, b"  PING\r\n"]),
    "binary_garbage": ("default", [Q, b"\x00\x01\x02\xfe\xff\r\n"]),
    "http_request": ("default", [b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"]),
    "pub_no_args": ("default", [Q, b"PUB\r\n"]),
    "pub_only_subject": ("default", [Q, b"PUB foo\r\n"]),
    "pub_too_many_args": ("default", [Q, b"PUB foo bar baz 1\r\nx\r\n"]),
    "pub_negative_size": ("default", [Q, b"PUB foo -1\r\n"]),
    "pub_non_numeric_size": ("default", [Q, b"PUB foo x\r\n"]),
    "pub_huge_size": ("default", [Q, b"PUB foo 99999999999999999999\r\n"]),
    "pub_payload_longer_than_size": ("default", [Q, b"PUB foo 2\r\nhello\r\n"]),
    "pub_payload_shorter_then_stall": ("default", [Q, b"PUB foo 10\r\nhello\r\n"]),
    "pub_missing_crlf_after_payload": ("default", [Q, b"PUB foo 5\r\nhelloXY\r\n"]),
    "pub_zero_without_empty_line": ("default", [Q, b"PUB foo 0\r\nPING\r\n"]),
    "pub_payload_then_lf_only": ("default", [Q, b"PUB foo 3\r\nabc\nPING\r\n"]),
    "pub_max_payload_plus_one": ("default", [Q, b"PUB foo 1048577\r\n"]),
    "sub_no_args": ("default", [Q, b"SUB\r\n"]),
    "sub_missing_sid": ("default", [Q, b"SUB foo\r\n"]),
    "sub_too_many_args": ("default", [Q, b"SUB a b c d\r\n"]),
    "unsub_no_args": ("default", [Q, b"UNSUB\r\n"]),
    "unsub_too_many_args": ("default", [Q, b"SUB foo 1\r\nUNSUB 1 2 3\r\n"]),
    "unsub_non_numeric_max": ("default", [Q, b"SUB foo 1\r\nUNSUB 1 x\r\nPUB foo 0\r\n\r\n"]),
    "hpub_without_headers_connect": ("default", [Q, b"SUB foo 1\r\nHPUB foo 12 12\r\nNATS/1.0\r\n\r\n\r\n"]),
    "hpub_header_larger_than_total": ("default", [H, b"HPUB foo 30 10\r\n"]),
    "hpub_missing_total": ("default", [H, b"HPUB foo 12\r\n"]),
    "hpub_negative_sizes": ("default", [H, b"HPUB foo -1 -1\r\n"]),
    "connect_bad_json": ("default", [b"CONNECT {bad\r\n"]),
    "connect_no_arg": ("default", [b"CONNECT\r\n"]),
    "connect_wrong_type": ("default", [b'CONNECT {"verbose":"yes"}\r\n']),
    "connect_json_array": ("default", [b"CONNECT []\r\n"]),
    "msg_from_client": ("default", [Q, b"MSG foo 1 5\r\nhello\r\n"]),
    "err_from_client": ("default", [Q, b"-ERR 'x'\r\n"]),
    "control_line_too_long": ("default", [Q, b"PUB foo " + b"x" * 5000 + b" 5\r\n"]),
    "control_line_too_long_no_crlf": ("default", [Q, b"SUB foo " + b"x" * 10000]),
    # --- CONNECT, INFO, HPUB and terminators as nats-server reads them ----
    "connect_second_drops_subs": ("default", [Q + b"SUB foo 1\r\nPUB foo 1\r\nx\r\n", Q, b"PUB foo 1\r\ny\r\n"]),
    "connect_second_keeps_omitted": ("default", [V, b"CONNECT {}\r\n"]),
    "connect_keys_any_case": ("default", [b'CONNECT {"Verbose":true,"PEDANTIC":false}\r\n']),
    "connect_duplicate_keys_last_wins": ("default", [b'CONNECT {"verbose":true,"VERBOSE":false}\r\n']),
    "connect_no_separator": ("default", [b'CONNECT{"verbose":true}\r\n']),
    "connect_null": ("default", [b"CONNECT null\r\n"]),
    "connect_verb_prefix_bad_json": ("default", [b"CONNECTX {}\r\n"]),
    "connect_trailing_garbage": ("default", [b"CONNECT {} x\r\n"]),
    "connect_account": ("default", [b'CONNECT {"account":"x"}\r\n']),
    "connect_unused_field_wrong_type": ("default", [b'CONNECT {"jwt":5}\r\n']),
    "info_no_separator": ("default", [Q, b"INFO{}\r\n"]),
    "info_null": ("default", [Q, b"INFO null\r\n"]),
    "info_json_array": ("default", [Q, b"INFO [1,2]\r\n"]),
    "info_wrong_field_type": ("default", [Q, b'INFO {"PORT":"x"}\r\n']),
    "info_verb_prefix": ("default", [Q, b"INFOX {}\r\n"]),
    "hpub_without_headers_too_big": ("default", [Q, b"HPUB foo 12 2000000\r\n"]),
    "hpub_without_headers_bad_sizes": ("default", [Q, b"HPUB foo x y\r\n"]),
    "hpub_before_connect": ("default", [b"HPUB foo 12 12\r\n"]),
    "pub_terminator_lf_first": ("default", [Q, b"SUB a 1\r\nPUB a 3\r\nab\r\n"]),
    "pub_terminator_bad_second_byte": ("default", [Q, b"SUB a 1\r\nPUB a 2\r\nab\rX"]),
    "pub_terminator_split_bad": ("default", [Q, b"SUB a 1\r\nPUB a 2\r\nab", b"\r", b"X"]),
    "pub_terminator_split_good": ("default", [Q, b"SUB a 1\r\nPUB a 2\r\nab", b"\r", b"\n"]),
    # --- authorization (--user a --pass b) ---------------------------------
    "auth_ping_before_connect": ("auth", [b"PING\r\n"]),
    "auth_no_credentials": ("auth", [Q]),
    "auth_wrong_password": ("auth", [b'CONNECT {"verbose":false,"user":"a","pass":"x"}\r\n']),
    "auth_good": ("auth", [b'CONNECT {"verbose":true,"user":"a","pass":"b"}\r\nSUB foo 1\r\nPUB foo 0\r\n\r\n']),
    "auth_bad_verb_before_connect": ("auth", [b"FOO\r\n"]),
    "auth_second_connect_wrong": ("auth", [b'CONNECT {"verbose":false,"user":"a","pass":"b"}\r\n',
                                           b'CONNECT {"verbose":false,"user":"a","pass":"x"}\r\n']),
    "auth_second_connect_right": ("auth", [b'CONNECT {"verbose":false,"user":"a","pass":"b"}\r\n',
                                           b'CONNECT {"verbose":true,"user":"a","pass":"b"}\r\n']),
    "auth_second_connect_no_credentials": ("auth", [b'CONNECT {"verbose":false,"user":"a","pass":"b"}\r\n',
                                                    b'CONNECT {"verbose":true}\r\n']),
    "auth_keys_any_case": ("auth", [b'CONNECT {"USER":"a","PASS":"b"}\r\n']),
    "auth_hpub_before_connect": ("auth", [b"HPUB foo 12 2000000\r\n"]),
    "auth_info_before_connect": ("auth", [b"INFO {}\r\n"]),
}

GROUP_ARGS = {"default": [], "auth": ["--user", "a", "--pass", "b"]}
LANES = {"default": 6, "auth": 1}  # servers per side per group

INFO_RE = re.compile(rb"INFO ([^\r\n]*)\r\n")


def normalize(data: bytes) -> bytes:
    def sub(m):
        json.loads(m.group(1))  # must be valid JSON (trailing space allowed)
        return b"INFO <json>\r\n"
    return INFO_RE.sub(sub, data)


def run_session(host: str, port: int, chunks: list[bytes]) -> tuple[bytes, bool]:
    sock = socket.create_connection((host, port), timeout=5)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    buf = b""
    closed = False

    def pump(until: float, stop=lambda b: False) -> None:
        nonlocal buf, closed
        while not closed and not stop(buf):
            remaining = until - time.monotonic()
            if remaining <= 0:
                return
            sock.settimeout(remaining)
            try:
                chunk = sock.recv(65536)
            except socket.timeout:
                return
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                closed = True
            buf += chunk

    try:
        pump(time.monotonic() + 5, lambda b: b"\r\n" in b)  # the INFO line
        sent = b""
        for ch in chunks + [b"PING\r\n"]:
            if closed:
                break
            try:
                sock.sendall(ch)
                sent += ch
            except (BrokenPipeError, ConnectionResetError):
                break
            pump(time.monotonic() + CHUNK_PAUSE)
        # Every PING-looking thing we sent may earn a PONG; wait for that
        # many (fewer is fine: we then stop at the deadline).
        want = sent.lower().count(b"ping")
        pump(time.monotonic() + DEADLINE, lambda b: b.count(b"PONG\r\n") >= want)
        pump(time.monotonic() + GRACE)
    finally:
        sock.close()
    return buf, closed


def self_check() -> bool:
    return os.environ.get("DIFF_SELF_CHECK") == "1"


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    kind = harness.server_kind()
    if kind == "nats-server" and not self_check():
        pytest.skip("differential test compares tern with nats-server; "
                    "SERVER_UNDER_TEST=nats-server leaves nothing to compare "
                    "(set DIFF_SELF_CHECK=1 to diff nats-server with itself)")
    # Sessions that share a server would see each other's messages, so each
    # server ("lane") runs its sessions one after another; lanes run in
    # parallel to keep the test short.
    servers: list[harness.Server] = []
    lanes: dict[tuple[str, str], list[harness.Server]] = {}
    try:
        for side, k in (("ref", "nats-server"), ("sut", kind)):
            for group, args in GROUP_ARGS.items():
                for i in range(LANES[group]):
                    d = tmp_path_factory.mktemp(f"diff-{side}-{group}-{i}")
                    srv = harness.Server(harness.binary_for(k), Path(d), extra_args=args,
                                         monitor=False, name=k).start()
                    servers.append(srv)
                    lanes.setdefault((side, group), []).append(srv)
        work: dict[int, list[tuple[str, harness.Server]]] = {}
        counters = {g: 0 for g in GROUP_ARGS}
        for name, (group, _) in SESSIONS.items():
            i = counters[group] % LANES[group]
            counters[group] += 1
            for side in ("ref", "sut"):
                srv = lanes[(side, group)][i]
                work.setdefault(id(srv), []).append((name, side, srv))

        def run_lane(items):
            return {(name, side): run_session(srv.host, srv.port, SESSIONS[name][1])
                    for name, side, srv in items}

        out = {}
        with ThreadPoolExecutor(max_workers=len(work)) as pool:
            futs = [pool.submit(run_lane, items) for items in work.values()]
            for fut in futs:
                out.update(fut.result(timeout=240))
        dump = os.environ.get("DIFF_DUMP")
        if dump:  # e.g. DIFF_DUMP=/tmp/diff.txt: every answer, for debugging
            with open(dump, "w") as f:
                for name in SESSIONS:
                    for side in ("ref", "sut"):
                        data, closed = out[(name, side)]
                        f.write(f"{name} {side} closed={closed} {normalize(data)!r}\n")
        alive = {f"{srv.name}:{srv.port}": srv.alive() for srv in servers}
        yield out, alive
    finally:
        for srv in servers:
            srv.stop()


@pytest.mark.parametrize("name", list(SESSIONS))
def test_session_matches_nats_server(results, name):
    out, _ = results
    ref_raw, ref_closed = out[(name, "ref")]
    sut_raw, sut_closed = out[(name, "sut")]
    ref, sut = normalize(ref_raw), normalize(sut_raw)
    if name in INTENDED_DIFFERENCES:
        pytest.skip(f"intended difference: {INTENDED_DIFFERENCES[name]}")
    assert (sut, sut_closed) == (ref, ref_closed), (
        f"session {name!r} sent {SESSIONS[name][1]!r}\n"
        f"nats-server: closed={ref_closed} {ref!r}\n"
        f"under test:  closed={sut_closed} {sut!r}")


def test_servers_survived_all_sessions(results):
    _, alive = results
    assert all(alive.values()), alive


def test_intended_differences_are_documented():
    names = set(SESSIONS)
    doc = Path(harness.REPO_ROOT, "docs", "DIFFERENCES.md")
    text = doc.read_text() if doc.exists() else ""
    for name, reason in INTENDED_DIFFERENCES.items():
        assert name in names, f"{name} is not a session"
        assert reason.strip(), f"{name} needs a reason"
        assert name in text, f"{name} must be explained in docs/DIFFERENCES.md"
