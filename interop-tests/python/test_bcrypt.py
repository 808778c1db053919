"""bcrypt-hashed passwords and tokens, as nats-server reads them.

A configured password or token that looks like a bcrypt hash
(`$2a$`/`$2b$`/`$2x$`/`$2y$` and a two-digit cost) is compared with
bcrypt against what the client sends; anything else is compared as plain
text.  The hash below is of "s3cret" (cost 10), made with Python's crypt
module; it is test data, not a secret.
"""

from __future__ import annotations

import pytest

HASH = "$2b$10$t/S0SWsNietw5m6H/yNwXemOc9iRKOtuCNbA0BkKM7vTLt0pr/9NG"


def _try(srv, **creds) -> bytes:
    with srv.raw() as c:
        c.connect(**creds)
        try:
            return c.ping_pong(timeout=5)
        except (EOFError, TimeoutError) as e:
            return c.buf + str(e).encode()


@pytest.mark.parametrize("how", ["users", "single"])
def test_bcrypt_password(server_factory, how):
    if how == "users":
        conf = 'authorization { users = [ { user: alice, password: "%s" } ] }\n' % HASH
    else:
        conf = 'authorization { user: alice, password: "%s" }\n' % HASH
    srv = server_factory(config=conf)
    assert _try(srv, user="alice", **{"pass": "s3cret"}).endswith(b"PONG\r\n")
    bad = _try(srv, user="alice", **{"pass": "wrong"})
    assert b"-ERR 'Authorization Violation'" in bad, bad
    # The hash itself is not a password.
    bad = _try(srv, user="alice", **{"pass": HASH})
    assert b"-ERR 'Authorization Violation'" in bad, bad


def test_bcrypt_token(server_factory):
    srv = server_factory(config='authorization { token: "%s" }\n' % HASH)
    assert _try(srv, auth_token="s3cret").endswith(b"PONG\r\n")
    bad = _try(srv, auth_token=HASH)
    assert b"-ERR 'Authorization Violation'" in bad, bad


def test_bcrypt_pass_flag(server_factory):
    srv = server_factory(args=["--user", "alice", "--pass", HASH])
    assert _try(srv, user="alice", **{"pass": "s3cret"}).endswith(b"PONG\r\n")
    bad = _try(srv, user="alice", **{"pass": "nope"})
    assert b"-ERR 'Authorization Violation'" in bad, bad


def test_dollar_password_that_is_not_bcrypt_is_plain(server_factory):
    conf = 'authorization { user: alice, password: "$notbcrypt" }\n'
    srv = server_factory(config=conf)
    assert _try(srv, user="alice", **{"pass": "$notbcrypt"}).endswith(b"PONG\r\n")
