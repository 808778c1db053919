"""Permissions that decide what an authenticated user may publish and
subscribe to, from the config (`permissions {}`, `default_permissions`,
`allow_responses`) and from user JWTs (`pub`, `sub`, `resp`), checked with
raw connections so the exact -ERR bytes show. Passes against nats-server too
(SERVER_UNDER_TEST=nats-server)."""

from __future__ import annotations

import time

import authkit
import harness
from authkit import NKey

TIMEOUT = 5.0


def pub_violation(subject: str) -> bytes:
    return f"-ERR 'Permissions Violation for Publish to \"{subject}\"'\r\n".encode()


def login(srv: harness.Server, **creds) -> harness.RawConn:
    c = srv.raw()
    c.connect(**creds)
    assert c.ping_pong() == b"PONG\r\n"
    return c


def request_and_answer(requester: harness.RawConn, service: harness.RawConn,
                       subject: str, inbox: str, answers: int) -> list[bytes]:
    """`requester` asks on `subject` with reply `inbox`; `service` (already
    subscribed with sid 1) answers `answers` times; returns what `service`
    heard back for each answer (b"" when accepted, else the error line)."""
    requester.send(f"SUB {inbox} 9\r\nPUB {subject} {inbox} 1\r\nq\r\n".encode())
    assert requester.ping_pong() == b"PONG\r\n"
    msg = service.read_until(b"q\r\n", timeout=TIMEOUT)
    assert msg.startswith(f"MSG {subject} 1 {inbox} 1\r\n".encode()), msg
    out = []
    for i in range(answers):
        service.send(f"PUB {inbox} 1\r\n{i}\r\n".encode())
        got = service.ping_pong()
        out.append(b"" if got == b"PONG\r\n" else got[: -len(b"PONG\r\n")])
    return out


SERVICE_CONF = """authorization {{
  users = [
    {{ user: svc, password: s, permissions: {{ subscribe: "req.>", allow_responses: {resp} }} }}
    {{ user: cli, password: c }}
  ]
}}
"""


def test_allow_responses_true_permits_one_reply(server_factory):
    srv = server_factory(config=SERVICE_CONF.format(resp="true"))
    svc = login(srv, user="svc", **{"pass": "s"})
    cli = login(srv, user="cli", **{"pass": "c"})
    svc.send(b"SUB req.> 1\r\n")
    assert svc.ping_pong() == b"PONG\r\n"
    got = request_and_answer(cli, svc, "req.a", "_INBOX.one", 2)
    assert got == [b"", pub_violation("_INBOX.one")]
    # The reply arrived; the second one did not.
    assert cli.read_until(b"0\r\n", timeout=TIMEOUT).startswith(b"MSG _INBOX.one 9 1\r\n")
    # Only replies: any other subject is refused, the connection stays.
    svc.send(b"PUB elsewhere 1\r\nx\r\n")
    assert svc.ping_pong() == pub_violation("elsewhere") + b"PONG\r\n"
    svc.close()
    cli.close()


def test_allow_responses_max(server_factory):
    srv = server_factory(config=SERVICE_CONF.format(resp='{ max: 2, expires: "1m" }'))
    svc = login(srv, user="svc", **{"pass": "s"})
    cli = login(srv, user="cli", **{"pass": "c"})
    svc.send(b"SUB req.> 1\r\n")
    assert svc.ping_pong() == b"PONG\r\n"
    got = request_and_answer(cli, svc, "req.b", "_INBOX.two", 3)
    assert got == [b"", b"", pub_violation("_INBOX.two")]
    svc.close()
    cli.close()


def test_allow_responses_expire(server_factory):
    srv = server_factory(config=SERVICE_CONF.format(resp='{ max: 5, expires: "300ms" }'))
    svc = login(srv, user="svc", **{"pass": "s"})
    cli = login(srv, user="cli", **{"pass": "c"})
    svc.send(b"SUB req.> 1\r\n")
    assert svc.ping_pong() == b"PONG\r\n"
    cli.send(b"SUB _INBOX.late 9\r\nPUB req.c _INBOX.late 1\r\nq\r\n")
    assert cli.ping_pong() == b"PONG\r\n"
    svc.read_until(b"q\r\n", timeout=TIMEOUT)
    time.sleep(0.6)
    svc.send(b"PUB _INBOX.late 1\r\nx\r\n")
    assert svc.ping_pong() == pub_violation("_INBOX.late") + b"PONG\r\n"
    svc.close()
    cli.close()


def test_default_permissions_apply_to_users_without_their_own(server_factory):
    conf = """authorization {
  default_permissions { publish: "public.>", subscribe: { deny: "secret.>" } }
  users = [
    { user: a, password: a }
    { user: admin, password: x, permissions: { publish: ">", subscribe: ">" } }
  ]
}
"""
    srv = server_factory(config=conf)
    a = login(srv, user="a", **{"pass": "a"})
    a.send(b"PUB public.x 0\r\n\r\nPUB private.x 0\r\n\r\n")
    assert a.ping_pong() == pub_violation("private.x") + b"PONG\r\n"
    a.send(b"SUB secret.x 1\r\n")
    assert a.ping_pong() == \
        b"-ERR 'Permissions Violation for Subscription to \"secret.x\"'\r\nPONG\r\n"
    admin = login(srv, user="admin", **{"pass": "x"})
    admin.send(b"PUB private.x 0\r\n\r\nSUB secret.x 1\r\n")
    assert admin.ping_pong() == b"PONG\r\n"
    a.close()
    admin.close()


def test_queue_group_permissions(server_factory):
    conf = """authorization {
  users = [ { user: w, password: w, permissions: { subscribe: { allow: ["jobs.* workers"] } } } ]
}
"""
    srv = server_factory(config=conf)
    w = login(srv, user="w", **{"pass": "w"})
    w.send(b"SUB jobs.a workers 1\r\n")
    assert w.ping_pong() == b"PONG\r\n"
    w.send(b"SUB jobs.a 2\r\n")
    assert w.ping_pong() == \
        b"-ERR 'Permissions Violation for Subscription to \"jobs.a\"'\r\nPONG\r\n"
    w.send(b"SUB jobs.a others 3\r\n")
    assert w.ping_pong() == (b"-ERR 'Permissions Violation for Subscription to \"jobs.a\" "
                             b"using queue \"others\"'\r\nPONG\r\n")
    w.close()


def test_jwt_resp_permission(server_factory, tmp_path):
    op = authkit.make_operator(tmp_path / "op")
    acc = NKey("account")
    conf = authkit.memory_resolver_config(op, {acc.public: authkit.account_jwt(acc, op.op)})
    srv = server_factory(config=conf)
    svc_key, cli_key = NKey("user"), NKey("user")
    svc_jwt = authkit.user_jwt(svc_key, acc, sub_allow=["req.>"],
                               resp={"max": 1, "ttl": 60_000_000_000})
    cli_jwt = authkit.user_jwt(cli_key, acc)

    def jwt_login(jwt: str, key: NKey) -> harness.RawConn:
        c = srv.raw()
        c.connect(jwt=jwt, sig=key.sign_nonce(c.info["nonce"]))
        assert c.ping_pong() == b"PONG\r\n"
        return c

    svc, cli = jwt_login(svc_jwt, svc_key), jwt_login(cli_jwt, cli_key)
    svc.send(b"SUB req.> 1\r\n")
    assert svc.ping_pong() == b"PONG\r\n"
    got = request_and_answer(cli, svc, "req.j", "_INBOX.jwt", 2)
    assert got == [b"", pub_violation("_INBOX.jwt")]
    svc.send(b"PUB other 0\r\n\r\n")
    assert svc.ping_pong() == pub_violation("other") + b"PONG\r\n"
    svc.close()
    cli.close()


def test_wildcard_subscription_never_delivers_denied_subjects(server_factory):
    conf = """authorization {
  users = [
    { user: r, password: r, permissions: { subscribe: { allow: ">", deny: "orders.secret" } } }
    { user: p, password: p }
  ]
}
"""
    srv = server_factory(config=conf)
    r = login(srv, user="r", **{"pass": "r"})
    p = login(srv, user="p", **{"pass": "p"})
    r.send(b"SUB orders.* 1\r\n")
    assert r.ping_pong() == b"PONG\r\n"
    p.send(b"PUB orders.secret 1\r\nS\r\nPUB orders.open 1\r\nO\r\n")
    assert p.ping_pong() == b"PONG\r\n"
    # The allowed subject arrives; the denied one, published first, never does.
    got = r.read_until(b"O\r\n", timeout=TIMEOUT)
    assert got == b"MSG orders.open 1 1\r\nO\r\n", got
    assert r.ping_pong() == b"PONG\r\n"
    r.close()
    p.close()


def test_jwt_payload_limit(server_factory, tmp_path):
    """A user JWT's `payload` limit: the INFO confirming CONNECT (protocol 1)
    shows it, and a larger message is a Maximum Payload Violation."""
    op = authkit.make_operator(tmp_path / "op")
    acc = NKey("account")
    conf = authkit.memory_resolver_config(op, {acc.public: authkit.account_jwt(acc, op.op)})
    srv = server_factory(config=conf)
    key = NKey("user")
    jwt = authkit.user_jwt(key, acc, payload=1000)
    c = srv.raw()
    c.connect(jwt=jwt, sig=key.sign_nonce(c.info["nonce"]), protocol=1)
    c.send(b"PING\r\n")
    assert c.readline(timeout=TIMEOUT) == b"PONG\r\n"
    import json
    line = c.readline(timeout=TIMEOUT)
    assert line.startswith(b"INFO "), line
    assert json.loads(line[5:])["max_payload"] == 1000
    c.send(b"PUB ok 1000\r\n" + b"x" * 1000 + b"\r\n")
    assert c.ping_pong() == b"PONG\r\n"
    c.send(b"PUB big 1001\r\n" + b"x" * 1001 + b"\r\n")
    assert c.read_until_close(timeout=TIMEOUT) == b"-ERR 'Maximum Payload Violation'\r\n"
