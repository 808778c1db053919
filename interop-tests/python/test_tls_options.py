"""The finer `tls {}` options: `pinned_certs`, `cipher_suites` and
`curve_preferences`, checked against nats-server too
(SERVER_UNDER_TEST=nats-server)."""

from __future__ import annotations

import hashlib
import ssl
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

import authkit
import harness
from test_tls import tls_raw


def spki_sha256(cert_file: Path) -> str:
    """pinned_certs' form: hex SHA-256 of the DER SubjectPublicKeyInfo."""
    from cryptography import x509
    cert = x509.load_pem_x509_certificate(cert_file.read_bytes())
    der = cert.public_key().public_bytes(serialization.Encoding.DER,
                                         serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).hexdigest()


def attempt(srv: harness.Server, ctx: ssl.SSLContext) -> bytes:
    """PONG over TLS, or b"" when the handshake (or first read) fails."""
    try:
        c = tls_raw(srv, ctx)
    except (ssl.SSLError, OSError):
        return b""
    try:
        c.connect()
        return c.ping_pong()
    except (ssl.SSLError, OSError, EOFError):
        return b""
    finally:
        c.close()


def test_pinned_certs(server_factory, tmp_path):
    pki = authkit.make_tls(tmp_path / "pki")
    pinned = pki.ca.client_cert("pinned", "pinned")
    other = pki.ca.client_cert("other", "other")
    conf = pki.block(verify=True).replace(
        "}\n", f'  pinned_certs: ["{spki_sha256(pinned.cert_file)}"]\n}}\n')
    srv = server_factory(config=conf)
    assert attempt(srv, authkit.client_context(pki.ca, pinned)) == b"PONG\r\n"
    # Same CA, not pinned: refused in the handshake.
    assert attempt(srv, authkit.client_context(pki.ca, other)) == b""


def test_bad_pinned_cert_is_a_config_error(tmp_path):
    pki = authkit.make_tls(tmp_path / "pki")
    conf = tmp_path / "bad.conf"
    conf.write_text(pki.block(verify=True).replace("}\n", '  pinned_certs: ["ABCD"]\n}\n'))
    import subprocess
    r = subprocess.run([harness.binary_for(harness.server_kind()), "-c", str(conf), "-t"],
                       capture_output=True, text=True, timeout=20)
    assert r.returncode != 0
    assert "pinned_certs" in (r.stdout + r.stderr)


def tls12_context(ca: authkit.CA, cipher: str) -> ssl.SSLContext:
    ctx = authkit.client_context(ca)
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(cipher)
    return ctx


@pytest.mark.parametrize("suite,openssl_name", [
    ("TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384", "ECDHE-ECDSA-AES256-GCM-SHA384"),
    ("TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256", "ECDHE-ECDSA-CHACHA20-POLY1305"),
])
def test_cipher_suites_limit_tls12(server_factory, tmp_path, suite, openssl_name):
    pki = authkit.make_tls(tmp_path / "pki")
    conf = pki.block().replace("}\n", f'  cipher_suites: ["{suite}"]\n}}\n')
    srv = server_factory(config=conf)
    assert attempt(srv, tls12_context(pki.ca, openssl_name)) == b"PONG\r\n"
    # A TLS 1.2 client that offers only another suite cannot connect.
    other = "ECDHE-ECDSA-AES128-GCM-SHA256"
    assert attempt(srv, tls12_context(pki.ca, other)) == b""
    # TLS 1.3 suites are not affected by the list, as in Go.
    assert attempt(srv, authkit.client_context(pki.ca)) == b"PONG\r\n"


def test_curve_preferences(server_factory, tmp_path):
    pki = authkit.make_tls(tmp_path / "pki")
    conf = pki.block().replace("}\n", '  curve_preferences: ["CurveP384"]\n}\n')
    srv = server_factory(config=conf)
    # TLS 1.3 (key exchange groups only; in TLS 1.2 the offered curves also
    # constrain the server's P-256 ECDSA certificate).
    def tls13(curve: str) -> ssl.SSLContext:
        ctx = authkit.client_context(pki.ca)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        ctx.set_ecdh_curve(curve)
        return ctx
    assert attempt(srv, tls13("secp384r1")) == b"PONG\r\n"
    assert attempt(srv, tls13("prime256v1")) == b""


def test_handshake_first_with_fallback_delay(server_factory, tmp_path):
    """`handshake_first: "300ms"`: TLS-first clients handshake at once; a
    client that says nothing for 300 ms gets INFO in clear and must then
    upgrade as usual. Plaintext is still refused."""
    import time
    pki = authkit.make_tls(tmp_path / "pki")
    srv = server_factory(config=pki.block(handshake_first="300ms"))
    ctx = authkit.client_context(pki.ca)
    first = tls_raw(srv, ctx, first=True)
    first.connect()
    assert first.ping_pong() == b"PONG\r\n"
    first.close()
    # Classic TLS client: waits for INFO (after the delay), then upgrades.
    t0 = time.monotonic()
    classic = tls_raw(srv, ctx)
    assert time.monotonic() - t0 >= 0.2
    assert classic.info["tls_required"] is True
    classic.connect()
    assert classic.ping_pong() == b"PONG\r\n"
    classic.close()
    # Plaintext after the fallback INFO: closed, nothing more said.
    with harness.RawConn(srv.host, srv.port, timeout=5) as c:
        assert c.info["tls_required"] is True
        c.send(b'CONNECT {"verbose":false}\r\nPING\r\n')
        assert c.read_until_close(timeout=5) == b""
