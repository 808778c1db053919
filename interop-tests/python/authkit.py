"""Test-time credentials for the TLS and credentials interop tests.

Everything is generated into a test's tmp_path when the test runs: no
private key, certificate or seed is kept in the repository.

- X.509 (the `cryptography` package): a CA, a server certificate for
  127.0.0.1/localhost, client certificates with a chosen subject, e-mail,
  DNS and URI SANs, and a second, unrelated CA for "wrong issuer" cases.
- NATS nkeys (the `nkeys` package) and NATS JWTs (operator, account, user)
  signed the way nats-server reads them: header
  {"typ":"JWT","alg":"ed25519-nkey"}, base64url segments without padding,
  an ed25519 signature over "header.payload", and a `jti` that is the
  unpadded base32 of SHA-512/256 over the claims (with an empty jti), as the
  Go jwt library computes it.  `.creds` files use the nsc layout that both
  nats-server tooling and nats-py parse.
"""

from __future__ import annotations

import base64
import datetime as _dt
import hashlib
import ipaddress
import json
import os
import ssl
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import nkeys
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

# -- X.509 -------------------------------------------------------------------

_NAME_OIDS = {
    "C": NameOID.COUNTRY_NAME,
    "ST": NameOID.STATE_OR_PROVINCE_NAME,
    "L": NameOID.LOCALITY_NAME,
    "O": NameOID.ORGANIZATION_NAME,
    "OU": NameOID.ORGANIZATIONAL_UNIT_NAME,
    "CN": NameOID.COMMON_NAME,
    "DC": NameOID.DOMAIN_COMPONENT,
    "emailAddress": NameOID.EMAIL_ADDRESS,
}


def x509_name(rdns: Iterable[tuple[str, str]]) -> x509.Name:
    """Subject from (attribute, value) pairs in DER order (most general
    first, e.g. C, O, OU, CN); Go prints them reversed ("CN=..,OU=..")."""
    return x509.Name([x509.NameAttribute(_NAME_OIDS[k], v) for k, v in rdns])


@dataclass
class KeyCert:
    """A certificate and its private key, both written as PEM files."""
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey
    cert_file: Path
    key_file: Path


def _write(kc_cert: x509.Certificate, key, directory: Path, name: str) -> tuple[Path, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    cert_file = directory / f"{name}-cert.pem"
    key_file = directory / f"{name}-key.pem"
    cert_file.write_bytes(kc_cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    os.chmod(key_file, 0o600)
    return cert_file, key_file


def _validity(builder: x509.CertificateBuilder) -> x509.CertificateBuilder:
    now = _dt.datetime.now(_dt.timezone.utc)
    return builder.not_valid_before(now - _dt.timedelta(hours=1)) \
                  .not_valid_after(now + _dt.timedelta(days=2))


class CA:
    """A self-signed certificate authority that issues server and client
    certificates into `directory`."""

    def __init__(self, directory: Path, name: str = "ca", cn: str = "Tern Test CA"):
        self.directory = Path(directory)
        self.name = name
        self.key = ec.generate_private_key(ec.SECP256R1())
        subject = x509_name([("O", "Tern Tests"), ("CN", cn)])
        ski = x509.SubjectKeyIdentifier.from_public_key(self.key.public_key())
        b = _validity(x509.CertificateBuilder()
                      .subject_name(subject).issuer_name(subject)
                      .public_key(self.key.public_key())
                      .serial_number(x509.random_serial_number()))
        b = b.add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        b = b.add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False,
                                          key_encipherment=False, data_encipherment=False,
                                          key_agreement=False, key_cert_sign=True,
                                          crl_sign=True, encipher_only=False,
                                          decipher_only=False), critical=True)
        b = b.add_extension(ski, critical=False)
        self.cert = b.sign(self.key, hashes.SHA256())
        self.cert_file, self.key_file = _write(self.cert, self.key, self.directory, name)

    @property
    def ca_file(self) -> Path:
        return self.cert_file

    def issue(self, name: str, subject: Iterable[tuple[str, str]], *,
              dns: Iterable[str] = (), ips: Iterable[str] = (),
              emails: Iterable[str] = (), uris: Iterable[str] = (),
              server: bool = False, client: bool = True) -> KeyCert:
        """A leaf certificate signed by this CA."""
        key = ec.generate_private_key(ec.SECP256R1())
        b = _validity(x509.CertificateBuilder()
                      .subject_name(x509_name(subject))
                      .issuer_name(self.cert.subject)
                      .public_key(key.public_key())
                      .serial_number(x509.random_serial_number()))
        b = b.add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        b = b.add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False,
                                          key_encipherment=True, data_encipherment=False,
                                          key_agreement=False, key_cert_sign=False,
                                          crl_sign=False, encipher_only=False,
                                          decipher_only=False), critical=True)
        eku = []
        if server:
            eku.append(ExtendedKeyUsageOID.SERVER_AUTH)
        if client:
            eku.append(ExtendedKeyUsageOID.CLIENT_AUTH)
        b = b.add_extension(x509.ExtendedKeyUsage(eku), critical=False)
        sans: list[x509.GeneralName] = []
        sans += [x509.DNSName(d) for d in dns]
        sans += [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
        sans += [x509.RFC822Name(e) for e in emails]
        sans += [x509.UniformResourceIdentifier(u) for u in uris]
        if sans:
            b = b.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        b = b.add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
            self.key.public_key()), critical=False)
        cert = b.sign(self.key, hashes.SHA256())
        cert_file, key_file = _write(cert, key, self.directory, name)
        return KeyCert(cert, key, cert_file, key_file)

    def server_cert(self, name: str = "server") -> KeyCert:
        """For 127.0.0.1 and localhost (what the tests connect to)."""
        return self.issue(name, [("O", "Tern Tests"), ("CN", "localhost")],
                          dns=["localhost"], ips=["127.0.0.1"], server=True, client=True)

    def client_cert(self, name: str, cn: str, *, o: str | None = "Tern Tests",
                    ou: str | None = None, extra: Iterable[tuple[str, str]] = (),
                    emails: Iterable[str] = (), dns: Iterable[str] = (),
                    uris: Iterable[str] = ()) -> KeyCert:
        """Subject (DER order) C?/O/OU/CN plus `extra` first; SANs as given."""
        subject = list(extra)
        if o:
            subject.append(("O", o))
        if ou:
            subject.append(("OU", ou))
        subject.append(("CN", cn))
        return self.issue(name, subject, emails=emails, dns=dns, uris=uris,
                          server=False, client=True)


def client_context(ca: CA | None, cert: KeyCert | None = None,
                   check_hostname: bool = True) -> ssl.SSLContext:
    """Client-side context trusting `ca` (None: trusts nothing, so the
    server certificate fails verification), presenting `cert` if given."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = check_hostname
    ctx.verify_mode = ssl.CERT_REQUIRED
    if ca is not None:
        ctx.load_verify_locations(cafile=str(ca.ca_file))
    if cert is not None:
        ctx.load_cert_chain(str(cert.cert_file), str(cert.key_file))
    return ctx


@dataclass
class TLSFiles:
    """A CA with one server certificate: what a `tls {}` block names."""
    ca: CA
    server: KeyCert

    def block(self, **extra) -> str:
        """A nats-server `tls { ... }` block; `extra` values are written as
        given (True/False become true/false, str is quoted unless bare=)."""
        lines = [f'  cert_file: "{self.server.cert_file}"',
                 f'  key_file: "{self.server.key_file}"',
                 f'  ca_file: "{self.ca.ca_file}"']
        for k, v in extra.items():
            if isinstance(v, bool):
                v = "true" if v else "false"
            elif isinstance(v, str):
                v = f'"{v}"'
            lines.append(f"  {k}: {v}")
        return "tls {\n" + "\n".join(lines) + "\n}\n"


def make_tls(directory: Path) -> TLSFiles:
    ca = CA(Path(directory), "ca")
    return TLSFiles(ca, ca.server_cert())


# -- nkeys -------------------------------------------------------------------

PREFIXES = {
    "operator": nkeys.PREFIX_BYTE_OPERATOR,
    "account": nkeys.PREFIX_BYTE_ACCOUNT,
    "user": nkeys.PREFIX_BYTE_USER,
    "server": nkeys.PREFIX_BYTE_SERVER,
}


class NKey:
    """An nkey pair; `.seed` ("S..") and `.public` ("O..", "A..", "U..")
    are str."""

    def __init__(self, kind: str):
        self.kind = kind
        self.seed = nkeys.encode_seed(os.urandom(32), PREFIXES[kind]).decode()
        self._kp = nkeys.from_seed(bytearray(self.seed.encode()))
        self.public = self._kp.public_key.decode()

    def sign(self, data: bytes) -> bytes:
        return self._kp.sign(data)

    def sign_nonce(self, nonce: str) -> str:
        """The CONNECT `sig` for a server nonce (base64url, no padding)."""
        return b64url(self.sign(nonce.encode()))

    def __repr__(self) -> str:
        return f"NKey({self.kind}, {self.public})"


# -- JWT ---------------------------------------------------------------------

def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _claims_hash(claims: dict) -> str:
    """jti as the Go jwt library makes it: SHA-512/256 over the JSON of the
    standard claims (aud, exp, jti="", iat, iss, name, nbf, sub; empty ones
    left out), unpadded base32.  nats-server does not check it, but using
    the real rule keeps the tokens indistinguishable from nsc's."""
    std = {}
    for k in ("aud", "exp", "jti", "iat", "iss", "name", "nbf", "sub"):
        v = claims.get(k)
        if v:
            std[k] = v
    std.pop("jti", None)
    j = json.dumps(std, separators=(",", ":")).encode()
    return base64.b32encode(hashlib.new("sha512_256", j).digest()).rstrip(b"=").decode()


def encode_jwt(claims: dict, signer: NKey) -> str:
    """Sign `claims` (sub, name, nats, optional exp/iat) with `signer`,
    filling in iss, iat and jti."""
    c = dict(claims)
    c["iss"] = signer.public
    c.setdefault("iat", int(time.time()))
    c["jti"] = _claims_hash(c)
    header = b64url(json.dumps({"typ": "JWT", "alg": "ed25519-nkey"},
                               separators=(",", ":")).encode())
    payload = b64url(json.dumps(c, separators=(",", ":")).encode())
    to_sign = f"{header}.{payload}"
    return f"{to_sign}.{b64url(signer.sign(to_sign.encode()))}"


def decode_jwt_claims(token: str) -> dict:
    """The claims of a JWT, unverified (for assertions in tests)."""
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


def operator_jwt(op: NKey, *, name: str = "OP", signing_keys: Iterable[NKey] = (),
                 system_account: NKey | None = None) -> str:
    nats: dict = {"type": "operator", "version": 2}
    sks = [k.public for k in signing_keys]
    if sks:
        nats["signing_keys"] = sks
    if system_account is not None:
        nats["system_account"] = system_account.public
    return encode_jwt({"name": name, "sub": op.public, "nats": nats}, op)


UNLIMITED_ACCOUNT = {"subs": -1, "data": -1, "payload": -1, "imports": -1,
                     "exports": -1, "wildcards": True, "conn": -1, "leaf": -1}


def account_jwt(acc: NKey, signer: NKey, *, name: str = "ACC",
                signing_keys: Iterable[NKey] = (),
                revocations: dict[str, int] | None = None,
                limits: dict | None = None, exp: int | None = None,
                extra: dict | None = None) -> str:
    """Account claims, issued by the operator (or one of its signing keys).
    `revocations` maps user public keys (or "*") to a unix time: user JWTs
    issued at or before it are revoked."""
    lim = dict(UNLIMITED_ACCOUNT)
    lim.update(limits or {})
    nats: dict = {"limits": lim, "default_permissions": {"pub": {}, "sub": {}},
                  "type": "account", "version": 2}
    sks = [k.public for k in signing_keys]
    if sks:
        nats["signing_keys"] = sks
    if revocations:
        nats["revocations"] = dict(revocations)
    nats.update(extra or {})
    claims: dict = {"name": name, "sub": acc.public, "nats": nats}
    if exp is not None:
        claims["exp"] = exp
    return encode_jwt(claims, signer)


def user_jwt(user: NKey, signer: NKey, *, account: NKey | None = None,
             name: str = "user", pub_allow: Iterable[str] = (),
             pub_deny: Iterable[str] = (), sub_allow: Iterable[str] = (),
             sub_deny: Iterable[str] = (), subs: int = -1, payload: int = -1,
             data: int = -1, exp: int | None = None, iat: int | None = None,
             bearer: bool = False, resp: dict | None = None) -> str:
    """User claims signed by `signer` (the account, or a signing key of
    `account`, which then becomes issuer_account).  Limits default to
    unlimited (-1): an absent `subs` would mean 0 subscriptions. `resp` is
    the response permission (`{"max": n, "ttl": nanoseconds}`)."""
    def perm(allow, deny) -> dict:
        p = {}
        if list(allow):
            p["allow"] = list(allow)
        if list(deny):
            p["deny"] = list(deny)
        return p

    nats: dict = {"pub": perm(pub_allow, pub_deny), "sub": perm(sub_allow, sub_deny),
                  "subs": subs, "data": data, "payload": payload,
                  "type": "user", "version": 2}
    if bearer:
        nats["bearer_token"] = True
    if resp is not None:
        nats["resp"] = resp
    if account is not None and account.public != signer.public:
        nats["issuer_account"] = account.public
    claims: dict = {"name": name, "sub": user.public, "nats": nats}
    if exp is not None:
        claims["exp"] = exp
    if iat is not None:
        claims["iat"] = iat
    return encode_jwt(claims, signer)


def creds_text(jwt: str, seed: str) -> str:
    """The .creds layout nsc writes (and nats-py parses)."""
    return ("-----BEGIN NATS USER JWT-----\n"
            f"{jwt}\n"
            "------END NATS USER JWT------\n\n"
            "************************* IMPORTANT *************************\n"
            "NKEY Seed printed below can be used to sign and prove identity.\n"
            "NKEYs are sensitive and should be treated as secrets.\n\n"
            "-----BEGIN USER NKEY SEED-----\n"
            f"{seed}\n"
            "------END USER NKEY SEED------\n\n"
            "*************************************************************\n")


def write_creds(path: Path, jwt: str, user: NKey) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(creds_text(jwt, user.seed))
    os.chmod(path, 0o600)
    return path


@dataclass
class Operator:
    """An operator with a system account and one ordinary account, as a
    MEMORY-resolver config needs them."""
    op: NKey
    jwt: str
    sys: NKey
    sys_jwt: str
    jwt_file: Path


def make_operator(directory: Path, name: str = "OP",
                  signing_keys: Iterable[NKey] = ()) -> Operator:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    op = NKey("operator")
    sys = NKey("account")
    ojwt = operator_jwt(op, name=name, signing_keys=signing_keys, system_account=sys)
    jwt_file = directory / f"{name}.jwt"
    jwt_file.write_text(ojwt + "\n")
    sys_jwt = account_jwt(sys, op, name="SYS")
    return Operator(op, ojwt, sys, sys_jwt, jwt_file)


def memory_resolver_config(op: Operator, accounts: dict[str, str]) -> str:
    """Operator-mode config with `resolver: MEMORY`; `accounts` maps an
    account public key to its JWT (the system account is added)."""
    pre = {op.sys.public: op.sys_jwt, **accounts}
    lines = [f'operator: "{op.jwt_file}"',
             f"system_account: {op.sys.public}",
             "resolver: MEMORY",
             "resolver_preload: {"]
    lines += [f"  {k}: \"{v}\"" for k, v in pre.items()]
    lines.append("}")
    return "\n".join(lines) + "\n"
