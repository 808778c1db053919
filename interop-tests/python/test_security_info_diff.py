"""Differential: the first INFO line of Tern and of nats-server, byte for byte
where it can be, for every TLS and credential setup.

Both servers start with the same config; the raw INFO line each sends first
is compared after dropping what identifies the server or the build
(`server_id`, `server_name`, `version`, `go`, `git_commit`, `host`, `port`,
`client_id`, `client_ip`, `api_lvl`, `xkey`). What is left must match in
field order and value, except `nonce`, whose value is random: present on both
or neither, 15 characters of unpadded base64url on both. Runs against
nats-server on both sides when SERVER_UNDER_TEST=nats-server.
"""

from __future__ import annotations

import json
import re
import socket

import pytest

import authkit
from authkit import NKey

IDENTIFYING = {"server_id", "server_name", "version", "go", "git_commit", "host",
               "port", "client_id", "client_ip", "api_lvl", "xkey"}
NONCE_RE = re.compile(r"^[A-Za-z0-9_-]{15}$")


def first_info(port: int) -> list[tuple[str, object]]:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        data = b""
        while b"\r\n" not in data:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
    line = data.split(b"\r\n", 1)[0]
    assert line.startswith(b"INFO ") and line.endswith(b"} "), line
    # Keep the order the server wrote the fields in.
    pairs = json.loads(line[5:], object_pairs_hook=list)
    return [(k, v) for k, v in pairs if k not in IDENTIFYING]


def configs(tmp_path) -> dict[str, str]:
    pki = authkit.make_tls(tmp_path / "pki")
    u = NKey("user")
    op = authkit.make_operator(tmp_path / "op")
    acc = NKey("account")
    return {
        "tls": pki.block(),
        "tls_verify": pki.block(verify=True),
        "tls_timeout": pki.block(timeout=3),
        "allow_non_tls": "allow_non_tls: true\n" + pki.block(),
        "tls_and_users": pki.block() + "authorization { users = [ {user: a, password: b} ] }\n",
        "nkey_users": f"authorization {{ users = [ {{ nkey: {u.public} }} ] }}\n",
        "nkey_and_password_users":
            f"authorization {{ users = [ {{ nkey: {u.public} }}, {{user: a, password: b}} ] }}\n",
        "no_auth_user": "authorization { users = [ {user: a, password: b} ] }\nno_auth_user: a\n",
        "token": "authorization { token: s3cret }\n",
        "operator": authkit.memory_resolver_config(
            op, {acc.public: authkit.account_jwt(acc, op.op, name="ACC")}),
    }


CASES = ["tls", "tls_verify", "tls_timeout", "allow_non_tls", "tls_and_users", "nkey_users",
         "nkey_and_password_users", "no_auth_user", "token", "operator"]


@pytest.mark.parametrize("case", CASES)
def test_first_info_matches_nats_server(server_factory, server_kind, tmp_path, case):
    conf = configs(tmp_path)[case]
    ref = server_factory(config=conf, kind="nats-server", monitor=False)
    sut = server_factory(config=conf, kind=server_kind, monitor=False)
    want, got = first_info(ref.port), first_info(sut.port)
    nonce_want = dict(want).get("nonce")
    nonce_got = dict(got).get("nonce")
    assert (nonce_want is None) == (nonce_got is None), (want, got)
    if nonce_got is not None:
        assert NONCE_RE.match(nonce_got) and NONCE_RE.match(nonce_want), (nonce_want, nonce_got)
        want = [(k, "<nonce>" if k == "nonce" else v) for k, v in want]
        got = [(k, "<nonce>" if k == "nonce" else v) for k, v in got]
    assert got == want
