"""SIGHUP and credentials: a renewed TLS certificate applies to new
connections without a restart, and live connections whose credentials (nkey,
password) no longer pass are told so and closed, while others stay.
Checked against nats-server too (SERVER_UNDER_TEST=nats-server)."""

from __future__ import annotations

import shutil

import authkit
import harness
from authkit import NKey
from test_reload import reload
from test_tls import tls_raw
from test_tls_options import attempt as tls_ping

AV = b"-ERR 'Authorization Violation'\r\n"


def test_reload_applies_renewed_certificate(server_factory, tmp_path):
    old = authkit.make_tls(tmp_path / "old")
    new = authkit.make_tls(tmp_path / "new")
    live_files = tmp_path / "live"
    live_files.mkdir()
    cert, key = live_files / "cert.pem", live_files / "key.pem"
    shutil.copy(old.server.cert_file, cert)
    shutil.copy(old.server.key_file, key)
    conf = f'tls {{\n  cert_file: "{cert}"\n  key_file: "{key}"\n}}\n'
    srv = server_factory(config=conf)
    old_ctx, new_ctx = authkit.client_context(old.ca), authkit.client_context(new.ca)
    assert tls_ping(srv, old_ctx) == b"PONG\r\n"
    assert tls_ping(srv, new_ctx) == b""
    live = tls_raw(srv, old_ctx)
    live.connect()
    assert live.ping_pong() == b"PONG\r\n"
    # Same paths, new contents: the renewed certificate.
    shutil.copy(new.server.cert_file, cert)
    shutil.copy(new.server.key_file, key)
    reload(srv)
    assert tls_ping(srv, new_ctx) == b"PONG\r\n"
    assert tls_ping(srv, old_ctx) == b""
    # The connection made with the old certificate carries on.
    assert live.ping_pong() == b"PONG\r\n"
    live.close()


def nkey_conn(srv: harness.Server, key: NKey) -> harness.RawConn:
    c = srv.raw()
    c.connect(nkey=key.public, sig=key.sign_nonce(c.info["nonce"]))
    return c


def test_reload_closes_removed_nkey_and_password_users(server_factory):
    """A user whose password changed is told `Authorization Violation`; one
    removed from the config altogether is closed without a word, as
    nats-server closes a client that "moved accounts"."""
    kept, dropped = NKey("user"), NKey("user")

    def conf(*keys: NKey, pw: str) -> str:
        users = ", ".join(f"{{ nkey: {k.public} }}" for k in keys)
        return f"authorization {{ users = [ {users}, {{ user: a, password: {pw} }} ] }}\n"

    srv = server_factory(config=conf(kept, dropped, pw="one"))
    k, d = nkey_conn(srv, kept), nkey_conn(srv, dropped)
    p = srv.raw()
    p.connect(user="a", **{"pass": "one"})
    for c in (k, d, p):
        assert c.ping_pong() == b"PONG\r\n"
    reload(srv, conf(kept, pw="two"))
    assert d.read_until_close(timeout=10) == b""
    assert p.read_until_close(timeout=10) == AV
    assert k.ping_pong() == b"PONG\r\n"
    with nkey_conn(srv, dropped) as again:
        assert again.read_until_close(timeout=10) == AV
    k.close()
