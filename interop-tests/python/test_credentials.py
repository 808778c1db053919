"""Credentials as nats-server v2.15.1 checks them: nkey users, no_auth_user,
the authorization timeout, and operator mode (JWTs: operator, accounts,
users, `.creds` files) with the MEMORY and `full` (directory) resolvers.

Keys, JWTs and .creds files are generated per test by authkit (nothing is
committed).  What was read off nats-server:

- With nkey users (or in operator mode) INFO carries a `nonce`: 15 characters
  of unpadded base64url (11 random bytes), new for every connection.  Without
  nkey/JWT users there is no nonce.  CONNECT must carry `sig`, the ed25519
  signature of the nonce's bytes, base64url (unpadded; padded standard base64
  is accepted too, nats-py sends that).  Any failure, including a missing
  sig, an unknown key, a signature over another connection's nonce, an
  expired or revoked user JWT, or an unknown account: the connection gets
  `-ERR 'Authorization Violation'` and is closed.
- `no_auth_user`: INFO then has no `auth_required` at all; a CONNECT without
  credentials is that user; wrong credentials are still refused.
- `authorization { timeout }` (default 2 s): a client that does not send
  CONNECT gets `-ERR 'Authentication Timeout'` and is closed.
- Operator mode: an account JWT not in the resolver, or signed by an operator
  the server does not trust, refuses its users.  A user signed by a key in
  the account's `signing_keys` carries `issuer_account`.  Revocations refuse
  user JWTs issued at or before the revocation time (a newer JWT for the same
  key works).  JWT permissions give `-ERR 'Permissions Violation for Publish
  to "X"'` / `... for Subscription to "X"'` without closing; the JWT `subs`
  limit gives `-ERR 'maximum subscriptions exceeded'`, connection kept.
- `resolver: MEMORY`: a changed `resolver_preload` is applied on SIGHUP; a
  user revoked that way is cut off with `-ERR 'User Authentication Revoked'`.
- `resolver: { type: full, dir: D }` reads `D/<ACCOUNT_PUBKEY>.jwt`.  An
  account file added while the server runs is found at the next lookup of
  that account, no SIGHUP needed (a lookup that found nothing takes about 2 s,
  the fetch timeout, before refusing).

Observed differently from what one might expect (kept as nats-server does
it): with the `full` resolver, a changed file of an account the server has
already loaded is not applied on SIGHUP (the reload builds a fresh resolver
that sees no change; updates are meant to arrive as $SYS claim updates), so
a revocation written into the file does not refuse the user.
"""

from __future__ import annotations

import asyncio
import base64
import os
import re
import signal
import time
from pathlib import Path

import nats
import pytest

import authkit
import harness
from authkit import NKey

TIMEOUT = 5
AV = b"-ERR 'Authorization Violation'\r\n"
NONCE_RE = re.compile(r"^[A-Za-z0-9_-]{15}$")


def refused(c: harness.RawConn) -> bytes:
    """Everything until the server closes (bounded)."""
    return c.read_until_close(timeout=TIMEOUT)


def try_connect(srv: harness.Server, **opts) -> bytes:
    """Raw CONNECT + PING: PONG bytes, or what came before the close."""
    with srv.raw() as c:
        c.connect(**opts)
        c.send(b"PING\r\n")
        try:
            return c.read_until(b"PONG\r\n")
        except EOFError:
            return c.buf


async def nats_py_error(srv: harness.Server, **opts) -> str:
    """Connect with nats-py, which must fail; the error text."""
    try:
        nc = await nats.connect(srv.url, connect_timeout=TIMEOUT, allow_reconnect=False,
                                max_reconnect_attempts=0, error_cb=_quiet, **opts)
    except Exception as e:  # noqa: BLE001 - the text is what we check
        return str(e)
    await nc.close()
    pytest.fail("nats-py connected, but the server should have refused it")


async def _quiet(e):
    pass


async def roundtrip(nc, subject: str = "cred.rt") -> None:
    sub = await nc.subscribe(subject)
    await nc.publish(subject, b"hello")
    assert (await sub.next_msg(timeout=TIMEOUT)).data == b"hello"
    await sub.unsubscribe()


# -- nkey users --------------------------------------------------------------------

def nkey_config(*keys: NKey, extra_users: str = "", extra: str = "") -> str:
    users = ", ".join(f"{{ nkey: {k.public} }}" for k in keys)
    if extra_users:
        users += ", " + extra_users
    return f"authorization {{\n  users = [ {users} ]\n{extra}}}\n"


def test_nkey_info_nonce(server_factory):
    u = NKey("user")
    srv = server_factory(config=nkey_config(u))
    nonces = set()
    for _ in range(3):
        with srv.raw() as c:
            assert c.info["auth_required"] is True
            nonce = c.info["nonce"]
            assert isinstance(nonce, str) and NONCE_RE.match(nonce), nonce
            nonces.add(nonce)
    assert len(nonces) == 3, nonces


@pytest.mark.parametrize("config", [
    None,
    "authorization { users = [ { user: a, password: b } ] }\n",
    "authorization { token: s3cret }\n",
], ids=["no-auth", "passwords", "token"])
def test_no_nonce_without_nkey_users(server_factory, config):
    srv = server_factory(config=config)
    with srv.raw() as c:
        assert "nonce" not in c.info, c.info


def test_nkey_raw_signatures(server_factory):
    u, stranger = NKey("user"), NKey("user")
    srv = server_factory(config=nkey_config(u))
    # Right key, base64url signature of this connection's nonce.
    with srv.raw() as c:
        c.connect(nkey=u.public, sig=u.sign_nonce(c.info["nonce"]))
        assert c.ping_pong() == b"PONG\r\n"
    # Standard padded base64 (what nats-py sends) is accepted too.
    with srv.raw() as c:
        sig = base64.b64encode(u.sign(c.info["nonce"].encode())).decode()
        assert sig.endswith("=")
        c.connect(nkey=u.public, sig=sig)
        assert c.ping_pong() == b"PONG\r\n"
    # No sig at all.
    with srv.raw() as c:
        c.connect(nkey=u.public)
        assert refused(c) == AV
    # A signature over another connection's nonce.
    with srv.raw() as other:
        stale_sig = u.sign_nonce(other.info["nonce"])
    with srv.raw() as c:
        c.connect(nkey=u.public, sig=stale_sig)
        assert refused(c) == AV
    # Signed by another key.
    with srv.raw() as c:
        c.connect(nkey=u.public, sig=stranger.sign_nonce(c.info["nonce"]))
        assert refused(c) == AV
    # A key that is not configured, correctly signed.
    with srv.raw() as c:
        c.connect(nkey=stranger.public, sig=stranger.sign_nonce(c.info["nonce"]))
        assert refused(c) == AV
    # Garbage signature.
    with srv.raw() as c:
        c.connect(nkey=u.public, sig="!!not base64!!")
        assert refused(c) == AV


async def test_nkey_nats_py(server_factory, nats_connect, tmp_path):
    u = NKey("user")
    srv = server_factory(config=nkey_config(u))
    seed_file = tmp_path / "user.nk"
    seed_file.write_text(u.seed + "\n")
    os.chmod(seed_file, 0o600)
    nc = await nats_connect(srv, nkeys_seed=str(seed_file))
    await roundtrip(nc)
    nc2 = await nats_connect(srv, nkeys_seed_str=u.seed)
    await roundtrip(nc2, "cred.rt2")
    err = await nats_py_error(srv, nkeys_seed_str=NKey("user").seed)
    assert "Authorization Violation" in err, err


async def test_nkey_and_password_users_together(server_factory, nats_connect):
    u = NKey("user")
    srv = server_factory(config=nkey_config(u, extra_users="{ user: alice, password: pw }"))
    with srv.raw() as c:
        assert NONCE_RE.match(c.info["nonce"])
    nc = await nats_connect(srv, nkeys_seed_str=u.seed)
    await roundtrip(nc)
    nc2 = await nats_connect(srv, user="alice", password="pw")
    await roundtrip(nc2)
    assert try_connect(srv, user="alice", **{"pass": "nope"}) == AV


# -- no_auth_user ------------------------------------------------------------------

NO_AUTH = """authorization {
  users = [
    { user: alice, password: apw }
    { user: bob, password: bpw }
  ]
}
no_auth_user: bob
"""


async def test_no_auth_user(server_factory, nats_connect):
    srv = server_factory(config=NO_AUTH)
    with srv.raw() as c:
        assert "auth_required" not in c.info, c.info
        assert "nonce" not in c.info
    # No credentials: connected as bob.
    anon = await nats_connect(srv, name="anon")
    await roundtrip(anon)
    named = await nats_connect(srv, name="alice-conn", user="alice", password="apw")
    await roundtrip(named)
    _, connz = srv.http_get("/connz?auth=true")
    # (Raw connections closed above may still be listed, without a name.)
    users = {c["name"]: c.get("authorized_user") for c in connz["connections"]
             if c.get("name")}
    assert users == {"anon": "bob", "alice-conn": "alice"}, connz
    # Wrong credentials are not downgraded to the no-auth user.
    assert try_connect(srv, user="alice", **{"pass": "wrong"}) == AV
    assert try_connect(srv, user="bob", **{"pass": "wrong"}) == AV
    assert try_connect(srv, user="mallory", **{"pass": "x"}) == AV
    assert try_connect(srv) == b"PONG\r\n"


# -- authorization timeout ---------------------------------------------------------

def test_auth_timeout_with_nkey_users(server_factory):
    u = NKey("user")
    srv = server_factory(config=nkey_config(u, extra="  timeout: 1\n"))
    c = srv.raw()
    t0 = time.monotonic()
    assert c.read_until_close(timeout=10) == b"-ERR 'Authentication Timeout'\r\n"
    took = time.monotonic() - t0
    assert took >= 0.5, f"closed after {took:.2f}s, timeout is 1s"


# -- operator mode (MEMORY resolver) -------------------------------------------------

class OpEnv:
    """An operator with a system account and account ACC (with one signing
    key), all preloaded into a MEMORY resolver."""

    def __init__(self, workdir: Path):
        self.dir = workdir
        self.op = authkit.make_operator(workdir / "op")
        self.acc = NKey("account")
        self.acc_sk = NKey("account")
        self.revocations: dict[str, int] = {}
        self.extra_accounts: dict[str, str] = {}

    def account_jwt(self) -> str:
        return authkit.account_jwt(self.acc, self.op.op, name="ACC",
                                   signing_keys=[self.acc_sk], revocations=self.revocations)

    def config(self) -> str:
        return authkit.memory_resolver_config(
            self.op, {self.acc.public: self.account_jwt(), **self.extra_accounts})

    def creds(self, name: str, user: NKey | None = None, **kw) -> Path:
        """A .creds file for a (new) user of ACC; kw go to authkit.user_jwt."""
        user = user or NKey("user")
        kw.setdefault("signer", self.acc)
        return authkit.write_creds(self.dir / f"{name}.creds",
                                   authkit.user_jwt(user, account=self.acc, **kw), user)


@pytest.fixture
def op_env(tmp_path) -> OpEnv:
    return OpEnv(tmp_path)


def jwt_raw(srv: harness.Server, jwt: str, key: NKey, **opts) -> harness.RawConn:
    c = srv.raw()
    c.connect(jwt=jwt, sig=key.sign_nonce(c.info["nonce"]), **opts)
    return c


def test_operator_mode_raw(server_factory, op_env):
    srv = server_factory(config=op_env.config())
    u = NKey("user")
    ujwt = authkit.user_jwt(u, op_env.acc)
    with srv.raw() as c:
        assert c.info["auth_required"] is True
        assert NONCE_RE.match(c.info["nonce"]), c.info
    with jwt_raw(srv, ujwt, u) as c:
        assert c.ping_pong() == b"PONG\r\n"
    with srv.raw() as c:  # no JWT
        c.connect()
        assert refused(c) == AV
    with srv.raw() as c:  # JWT, no signature
        c.connect(jwt=ujwt)
        assert refused(c) == AV
    with jwt_raw(srv, ujwt, NKey("user")) as c:  # signed by someone else
        assert refused(c) == AV
    with srv.raw() as c:  # a password does not help
        c.connect(user="a", **{"pass": "b"})
        assert refused(c) == AV


def test_operator_mode_auth_timeout_default(server_factory, op_env):
    srv = server_factory(config=op_env.config())
    c = srv.raw()
    t0 = time.monotonic()
    assert c.read_until_close(timeout=12) == b"-ERR 'Authentication Timeout'\r\n"
    took = time.monotonic() - t0
    assert took >= 1.5, f"closed after {took:.2f}s, default timeout is 2s"


async def test_operator_creds_roundtrip_and_account_isolation(server_factory, nats_connect,
                                                              op_env):
    other = NKey("account")
    op_env.extra_accounts[other.public] = authkit.account_jwt(other, op_env.op.op, name="OTHER")
    srv = server_factory(config=op_env.config())
    a1 = await nats_connect(srv, user_credentials=str(op_env.creds("a1")))
    a2 = await nats_connect(srv, user_credentials=str(op_env.creds("a2")))
    o_user = NKey("user")
    o_creds = authkit.write_creds(op_env.dir / "o.creds", authkit.user_jwt(o_user, other), o_user)
    o1 = await nats_connect(srv, user_credentials=str(o_creds))
    await roundtrip(a1)
    sub_a2 = await a2.subscribe("shared.subject")
    sub_o1 = await o1.subscribe("shared.subject")
    await harness.sync_point(a2)
    await harness.sync_point(o1)
    await a1.publish("shared.subject", b"for-acc")
    assert (await sub_a2.next_msg(timeout=TIMEOUT)).data == b"for-acc"
    await o1.publish("shared.subject", b"for-other")
    assert (await sub_o1.next_msg(timeout=TIMEOUT)).data == b"for-other"
    # Accounts are separate subject spaces: each saw only its own message.
    await harness.sync_point(a1)
    await harness.sync_point(o1)
    with pytest.raises(nats.errors.TimeoutError):
        await sub_a2.next_msg(timeout=0.2)
    with pytest.raises(nats.errors.TimeoutError):
        await sub_o1.next_msg(timeout=0.2)


async def test_operator_signing_key_user(server_factory, nats_connect, op_env):
    srv = server_factory(config=op_env.config())
    creds = op_env.creds("sk", signer=op_env.acc_sk)
    assert authkit.decode_jwt_claims(creds.read_text().split("\n")[1])["nats"][
        "issuer_account"] == op_env.acc.public
    nc = await nats_connect(srv, user_credentials=str(creds))
    await roundtrip(nc)
    # A key that is not one of the account's signing keys.
    rogue = op_env.creds("rogue", signer=NKey("account"))
    err = await nats_py_error(srv, user_credentials=str(rogue))
    assert "Authorization Violation" in err, err


async def test_operator_expired_user(server_factory, nats_connect, op_env):
    srv = server_factory(config=op_env.config())
    u = NKey("user")
    expired = op_env.creds("expired", user=u, exp=int(time.time()) - 5)
    err = await nats_py_error(srv, user_credentials=str(expired))
    assert "Authorization Violation" in err, err
    # The same key with a JWT that expires later is fine.
    valid = op_env.creds("valid", user=u, exp=int(time.time()) + 3600)
    nc = await nats_connect(srv, user_credentials=str(valid))
    await roundtrip(nc)


async def test_operator_revoked_user(server_factory, nats_connect, op_env):
    now = int(time.time())
    revoked = NKey("user")
    op_env.revocations[revoked.public] = now - 100
    srv = server_factory(config=op_env.config())
    old = op_env.creds("old", user=revoked, iat=now - 200)
    err = await nats_py_error(srv, user_credentials=str(old))
    assert "Authorization Violation" in err, err
    # Issued exactly at the revocation time: still revoked.
    at = op_env.creds("at", user=revoked, iat=now - 100)
    err = await nats_py_error(srv, user_credentials=str(at))
    assert "Authorization Violation" in err, err
    # A JWT for the same key issued after the revocation is accepted.
    newer = op_env.creds("newer", user=revoked, iat=now - 50)
    nc = await nats_connect(srv, user_credentials=str(newer))
    await roundtrip(nc)
    # Other users of the account are not affected.
    nc2 = await nats_connect(srv, user_credentials=str(op_env.creds("other", iat=now - 200)))
    await roundtrip(nc2)


async def test_operator_revoke_all_users(server_factory, nats_connect, op_env):
    now = int(time.time())
    op_env.revocations["*"] = now - 100
    srv = server_factory(config=op_env.config())
    err = await nats_py_error(srv, user_credentials=str(op_env.creds("old", iat=now - 200)))
    assert "Authorization Violation" in err, err
    nc = await nats_connect(srv, user_credentials=str(op_env.creds("new", iat=now - 10)))
    await roundtrip(nc)


async def test_operator_unknown_account(server_factory, op_env):
    srv = server_factory(config=op_env.config())
    stray = NKey("account")
    u = NKey("user")
    creds = authkit.write_creds(op_env.dir / "stray.creds", authkit.user_jwt(u, stray), u)
    err = await nats_py_error(srv, user_credentials=str(creds))
    assert "Authorization Violation" in err, err


async def test_operator_account_of_unknown_operator(server_factory, op_env):
    foreign_op = NKey("operator")
    acc = NKey("account")
    op_env.extra_accounts[acc.public] = authkit.account_jwt(acc, foreign_op, name="FOREIGN")
    srv = server_factory(config=op_env.config())
    u = NKey("user")
    creds = authkit.write_creds(op_env.dir / "f.creds", authkit.user_jwt(u, acc), u)
    err = await nats_py_error(srv, user_credentials=str(creds))
    assert "Authorization Violation" in err, err


async def test_operator_user_pub_permissions(server_factory, nats_connect, op_env):
    srv = server_factory(config=op_env.config())
    errors: list[str] = []
    got_error = asyncio.Event()

    async def on_error(e):
        errors.append(str(e))
        got_error.set()

    limited = await nats_connect(srv, error_cb=on_error, user_credentials=str(
        op_env.creds("pub", pub_allow=["allowed.>", "_INBOX.>"])))
    watcher = await nats_connect(srv, user_credentials=str(op_env.creds("watch")))
    allowed = await watcher.subscribe("allowed.>")
    denied = await watcher.subscribe("denied.>")
    await harness.sync_point(watcher)
    await limited.publish("denied.x", b"no")
    await limited.publish("allowed.x", b"yes")
    await harness.sync_point(limited)
    await asyncio.wait_for(got_error.wait(), TIMEOUT)
    # nats-py lower-cases the server's text (exact bytes: the raw test below).
    assert errors == ['nats: permissions violation for publish to "denied.x"'], errors
    msg = await allowed.next_msg(timeout=TIMEOUT)
    assert (msg.subject, msg.data) == ("allowed.x", b"yes")
    # The connection stays up and keeps working.
    assert limited.is_connected
    await limited.publish("allowed.y", b"again")
    msg = await allowed.next_msg(timeout=TIMEOUT)
    assert (msg.subject, msg.data) == ("allowed.y", b"again")
    # allowed.y was routed after denied.x would have been: nothing came.
    with pytest.raises(nats.errors.TimeoutError):
        await denied.next_msg(timeout=0.2)


def test_operator_user_permissions_raw(server_factory, op_env):
    srv = server_factory(config=op_env.config())
    u = NKey("user")
    ujwt = authkit.user_jwt(u, op_env.acc, pub_deny=["no.>"], sub_deny=["secret.>"])
    with jwt_raw(srv, ujwt, u) as c:
        c.send(b"PUB no.x 1\r\nx\r\nSUB secret.x 1\r\nSUB ok.x 2\r\nPUB ok.x 1\r\ny\r\n")
        assert c.ping_pong() == (
            b"-ERR 'Permissions Violation for Publish to \"no.x\"'\r\n"
            b"-ERR 'Permissions Violation for Subscription to \"secret.x\"'\r\n"
            b"MSG ok.x 2 1\r\ny\r\nPONG\r\n")


async def test_operator_user_sub_deny(server_factory, nats_connect, op_env):
    srv = server_factory(config=op_env.config())
    errors: list[str] = []
    got_error = asyncio.Event()

    async def on_error(e):
        errors.append(str(e))
        got_error.set()

    limited = await nats_connect(srv, error_cb=on_error, user_credentials=str(
        op_env.creds("sub", sub_deny=["secret.>"])))
    publisher = await nats_connect(srv, user_credentials=str(op_env.creds("pub")))
    denied = await limited.subscribe("secret.x")
    allowed = await limited.subscribe("public.x")
    await harness.sync_point(limited)
    await asyncio.wait_for(got_error.wait(), TIMEOUT)
    assert errors == ['nats: permissions violation for subscription to "secret.x"'], errors
    await publisher.publish("secret.x", b"hidden")
    await publisher.publish("public.x", b"visible")
    await harness.sync_point(publisher)
    assert (await allowed.next_msg(timeout=TIMEOUT)).data == b"visible"
    await harness.sync_point(limited)
    with pytest.raises(nats.errors.TimeoutError):
        await denied.next_msg(timeout=0.2)


def test_operator_user_subs_limit(server_factory, op_env):
    srv = server_factory(config=op_env.config())
    u = NKey("user")
    ujwt = authkit.user_jwt(u, op_env.acc, subs=2)
    with jwt_raw(srv, ujwt, u, verbose=True) as c:
        assert c.readline() == b"+OK\r\n"
        c.send(b"SUB a 1\r\nSUB b 2\r\nSUB c 3\r\n")
        assert c.ping_pong() == (b"+OK\r\n+OK\r\n"
                                 b"-ERR 'maximum subscriptions exceeded'\r\nPONG\r\n")
        c.send(b"PUB a 1\r\nx\r\nPUB c 1\r\ny\r\n")
        assert c.ping_pong() == b"+OK\r\nMSG a 1 1\r\nx\r\n+OK\r\nPONG\r\n"


def test_operator_memory_resolver_reload_applies_revocation(server_factory, op_env):
    """With resolver MEMORY, a changed resolver_preload takes effect on
    SIGHUP: a newly revoked user's open connection gets
    `-ERR 'User Authentication Revoked'` and is closed, and it cannot connect
    again; other users stay."""
    srv = server_factory(config=op_env.config())
    now = int(time.time())
    victim, bystander = NKey("user"), NKey("user")
    vjwt = authkit.user_jwt(victim, op_env.acc, iat=now - 100)
    bjwt = authkit.user_jwt(bystander, op_env.acc, iat=now - 100)
    v, b = jwt_raw(srv, vjwt, victim), jwt_raw(srv, bjwt, bystander)
    assert v.ping_pong() == b"PONG\r\n" and b.ping_pong() == b"PONG\r\n"
    op_env.revocations[victim.public] = now
    srv.config_path.write_text(op_env.config())
    _sighup_and_wait(srv)
    assert v.read_until_close(timeout=TIMEOUT) == b"-ERR 'User Authentication Revoked'\r\n"
    assert b.ping_pong() == b"PONG\r\n"
    with jwt_raw(srv, vjwt, victim) as again:
        assert refused(again) == AV
    v.close()
    b.close()


# -- full (directory) resolver -------------------------------------------------------

class DirEnv:
    """Operator mode with `resolver { type: full, dir }`: the system account
    and ACC are files `<pubkey>.jwt` in the directory at start."""

    def __init__(self, workdir: Path):
        self.dir = workdir
        self.op = authkit.make_operator(workdir / "op")
        self.jwt_dir = workdir / "jwt"
        self.jwt_dir.mkdir()
        self.write_account(self.op.sys, self.op.sys_jwt)
        self.acc = NKey("account")
        self.write_account(self.acc, authkit.account_jwt(self.acc, self.op.op, name="ACC"))

    def write_account(self, acc: NKey, jwt: str) -> None:
        tmp = self.jwt_dir / f".{acc.public}.tmp"
        tmp.write_text(jwt)
        os.replace(tmp, self.jwt_dir / f"{acc.public}.jwt")

    def config(self) -> str:
        return (f'operator: "{self.op.jwt_file}"\n'
                f"system_account: {self.op.sys.public}\n"
                f'resolver: {{ type: full, dir: "{self.jwt_dir}" }}\n')

    def creds(self, name: str, acc: NKey, user: NKey | None = None, **kw) -> Path:
        user = user or NKey("user")
        return authkit.write_creds(self.dir / f"{name}.creds",
                                   authkit.user_jwt(user, acc, **kw), user)


@pytest.fixture
def dir_env(tmp_path) -> DirEnv:
    return DirEnv(tmp_path)


async def test_full_resolver_reads_directory(server_factory, nats_connect, dir_env):
    srv = server_factory(config=dir_env.config())
    nc = await nats_connect(srv, user_credentials=str(dir_env.creds("u", dir_env.acc)))
    await roundtrip(nc)
    missing = NKey("account")
    err = await nats_py_error(srv, user_credentials=str(dir_env.creds("m", missing)))
    assert "Authorization Violation" in err, err


async def test_full_resolver_new_account_file_found_without_sighup(server_factory,
                                                                   nats_connect, dir_env):
    srv = server_factory(config=dir_env.config())
    late = NKey("account")
    creds = dir_env.creds("late", late)
    err = await nats_py_error(srv, user_credentials=str(creds))
    assert "Authorization Violation" in err, err
    dir_env.write_account(late, authkit.account_jwt(late, dir_env.op.op, name="LATE"))
    # No signal: the next lookup of the account reads the new file.
    nc = await nats_connect(srv, user_credentials=str(creds))
    await roundtrip(nc)


def _sighup_and_wait(srv: harness.Server) -> None:
    before = srv.log_path.read_text(errors="replace").count("Reloaded server configuration")
    os.kill(srv.pid, signal.SIGHUP)
    deadline = time.monotonic() + 10
    while srv.log_path.read_text(errors="replace").count(
            "Reloaded server configuration") <= before:
        assert srv.alive(), srv.log_tail()
        if time.monotonic() > deadline:
            pytest.fail(f"no reload within 10s; log:\n{srv.log_tail()}")
        time.sleep(0.02)


async def test_full_resolver_changed_account_file_on_sighup(
        server_factory, nats_connect, dir_env):
    """A revocation written into the file of an already loaded account.

    nats-server (observed) caches an account once loaded: the change takes no
    effect, even after SIGHUP (updates are meant to arrive as system-account
    claim pushes). Tern reads the file at each connect and re-checks live
    connections on SIGHUP, so the revoked user is refused and its open
    connection closed with `User Authentication Revoked` (docs/DIFFERENCES.md).
    """
    srv = server_factory(config=dir_env.config())
    assert try_connect(srv) == AV  # operator mode is on
    now = int(time.time())
    u = NKey("user")
    jwt = authkit.user_jwt(u, dir_env.acc, iat=now - 100)
    live = jwt_raw(srv, jwt, u)
    assert live.ping_pong() == b"PONG\r\n"
    dir_env.write_account(dir_env.acc, authkit.account_jwt(
        dir_env.acc, dir_env.op.op, name="ACC", revocations={u.public: now}))
    _sighup_and_wait(srv)
    if harness.server_kind() == "nats-server":
        assert live.ping_pong() == b"PONG\r\n"
        with jwt_raw(srv, jwt, u) as again:
            assert again.ping_pong() == b"PONG\r\n"
    else:
        assert live.read_until_close(timeout=TIMEOUT) == \
            b"-ERR 'User Authentication Revoked'\r\n"
        with jwt_raw(srv, jwt, u) as again:
            assert refused(again) == AV
    live.close()
