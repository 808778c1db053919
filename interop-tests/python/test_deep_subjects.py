"""Deep subjects: a subscription with a million tokens must not take the
server down.

nats-server survives `SUB` on a 1,000,000-token subject with
`max_control_line: 8MB`, followed by `UNSUB` or a disconnect.  Tern once
dropped deep trie branches recursively and overflowed the stack of a runtime
thread, aborting the whole process, so these run the same sessions and check
that the server still serves everyone else afterwards.
"""

from __future__ import annotations

import pytest

TOKENS = 1_000_000
CONFIG = "max_control_line: 8MB\n"


def deep_subject(n: int = TOKENS) -> bytes:
    return b".".join([b"a"] * n)


def check_alive(srv) -> None:
    """A fresh connection still gets PONG and local delivery works."""
    with srv.raw() as c:
        c.connect()
        c.send(b"SUB x.y 1\r\nPUB x.y 2\r\nok\r\n")
        got = c.ping_pong(timeout=10)
        assert b"MSG x.y 1 2\r\nok\r\n" in got, got


@pytest.mark.parametrize("ending", ["unsub", "disconnect"])
def test_million_token_subscription_then_gone(server_factory, ending):
    srv = server_factory(config=CONFIG)
    subject = deep_subject()
    with srv.raw(timeout=30) as c:
        c.connect()
        c.send(b"SUB " + subject + b" 1\r\n")
        # Matching the deep subject itself walks the whole branch.
        c.send(b"PUB " + subject + b" 2\r\nhi\r\n")
        got = c.ping_pong(timeout=60)
        assert got.endswith(b"PONG\r\n"), got[:200]
        if ending == "unsub":
            c.send(b"UNSUB 1\r\n")
            c.ping_pong(timeout=60)
    assert srv.alive(), srv.log_tail()
    check_alive(srv)
    assert srv.alive(), srv.log_tail()


def test_deep_wildcard_subscriptions(server_factory):
    """Several deep branches sharing a prefix, with wildcards at the end,
    removed in different orders."""
    srv = server_factory(config=CONFIG)
    base = deep_subject(200_000)
    with srv.raw(timeout=30) as c:
        c.connect()
        c.send(b"SUB " + base + b".* 1\r\n")
        c.send(b"SUB " + base + b".> 2\r\n")
        c.send(b"SUB " + base + b".b 3\r\n")
        c.send(b"PUB " + base + b".b 1\r\nz\r\n")
        got = c.ping_pong(timeout=60)
        assert got.count(b"MSG ") == 3, got.count(b"MSG ")
        c.send(b"UNSUB 3\r\nUNSUB 1\r\n")
        c.ping_pong(timeout=60)
    assert srv.alive(), srv.log_tail()
    check_alive(srv)
