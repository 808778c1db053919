//! TLS and credentials driven with the real async-nats client: what a Rust
//! application configures against nats-server must work the same against
//! Tern, and what nats-server refuses must be refused.
//!
//! Certificates (rcgen), nkeys and JWTs (the `peer` crate) are generated per
//! test into a scratch directory; nothing private is kept in the repository.
//! The configs and expectations follow interop-tests/python/test_tls.py and
//! test_credentials.py, which were read off nats-server.
//!
//! Run against Tern (build it first: `cargo build --release -p router`):
//!     cargo test -p interop-tests --release --test async_nats_security -- --test-threads=2
//! and against the specification, the real nats-server:
//!     SERVER_UNDER_TEST=nats-server cargo test -p interop-tests --release \
//!         --test async_nats_security -- --test-threads=2
//!
//! Every test is bounded by a timeout; none asserts on timing.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_nats::connection::State;
use async_nats::{
    Client, ConnectError, ConnectErrorKind, ConnectOptions, Event, Message, ServerError, Subscriber,
};
use common::Server;
use futures::{FutureExt, StreamExt};
use peer::jwt::{self, AccountClaims, OperatorClaims, UserClaims};
use peer::KeyPair as NKey;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyUsagePurpose,
};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

// -- test plumbing ---------------------------------------------------------------

/// Runs a test body with a deadline, so a hang fails instead of blocking.
async fn bounded<F: Future<Output = ()>>(secs: u64, body: F) {
    tokio::time::timeout(Duration::from_secs(secs), body)
        .await
        .unwrap_or_else(|_| panic!("test did not finish within {secs}s"));
}

async fn connect(opts: ConnectOptions, server: &Server) -> Client {
    opts.connect(server.url())
        .await
        .unwrap_or_else(|e| panic!("connect to {}: {e} ({:?})", server.url(), e.kind()))
}

/// [`connect`] under a deadline, for tests whose body cannot be wrapped in
/// one `bounded` (they restart the server in between).
async fn bounded_connect(opts: ConnectOptions, server: &Server) -> Client {
    tokio::time::timeout(Duration::from_secs(20), connect(opts, server))
        .await
        .expect("connect did not finish within 20s")
}

/// Connects with `opts`, which the server must refuse; the client's error.
async fn refused(opts: ConnectOptions, server: &Server) -> ConnectError {
    match opts
        .connection_timeout(Duration::from_secs(5))
        .connect(server.url())
        .await
    {
        Ok(_) => panic!(
            "connected to {}, but the server should refuse",
            server.url()
        ),
        Err(e) => {
            eprintln!("refused as expected: {e} ({:?})", e.kind());
            e
        }
    }
}

/// [`refused`], failing for the reason `needle` names (a rustls alert or
/// verification error, as the client words it).
async fn refused_with(opts: ConnectOptions, server: &Server, needle: &str) {
    let e = refused(opts, server).await;
    let text = e.to_string();
    assert!(text.contains(needle), "expected {needle:?} in {text:?}");
}

/// [`refused`], and the refusal must be the server's
/// `-ERR 'Authorization Violation'` (not a transport failure).
async fn auth_refused(opts: ConnectOptions, server: &Server) {
    let e = refused(opts, server).await;
    assert_eq!(e.kind(), ConnectErrorKind::AuthorizationViolation, "{e}");
}

async fn next(sub: &mut Subscriber) -> Message {
    sub.next().await.expect("subscription ended unexpectedly")
}

/// Subscribes, publishes and receives on one connection (the server handles
/// a connection's operations in order, so no sync is needed).
async fn round_trip(client: &Client, subject: &str) {
    let mut sub = client.subscribe(subject.to_string()).await.unwrap();
    client
        .publish(subject.to_string(), "round trip".into())
        .await
        .unwrap();
    client.flush().await.unwrap();
    let m = next(&mut sub).await;
    assert_eq!(m.subject.as_str(), subject);
    assert_eq!(m.payload, "round trip");
    sub.unsubscribe().await.unwrap();
}

/// Waits until the server has processed everything `client` sent so far: a
/// message to a fresh inbox this connection subscribes to comes back only
/// after the server has handled the connection's earlier operations.
async fn sync(client: &Client) {
    let probe_subject = client.new_inbox();
    let mut probe = client.subscribe(probe_subject.clone()).await.unwrap();
    client.publish(probe_subject, "sync".into()).await.unwrap();
    client.flush().await.unwrap();
    next(&mut probe).await;
}

/// Messages already delivered to `sub`, without waiting for more.
fn drain_ready(sub: &mut Subscriber) -> Vec<Message> {
    let mut out = Vec::new();
    while let Some(Some(m)) = tokio::task::unconstrained(sub.next()).now_or_never() {
        out.push(m);
    }
    out
}

/// Adds an event callback that forwards every client event to a channel.
fn with_events(opts: ConnectOptions) -> (ConnectOptions, UnboundedReceiver<Event>) {
    let (tx, rx) = unbounded_channel();
    let opts = opts.event_callback(move |e| {
        let tx = tx.clone();
        async move {
            let _ = tx.send(e);
        }
    });
    (opts, rx)
}

/// The text of the next `-ERR` the server sent (async-nats strips the
/// quotes), skipping other events.
async fn next_server_error(events: &mut UnboundedReceiver<Event>) -> String {
    loop {
        match events.recv().await.expect("event channel open") {
            Event::ServerError(ServerError::Other(text)) => return text,
            Event::ServerError(other) => return other.to_string(),
            e => eprintln!("event: {e}"),
        }
    }
}

static NEXT_SCRATCH: AtomicUsize = AtomicUsize::new(0);

/// A directory for a test's certificates, keys, JWTs and creds files;
/// removed on drop unless the test failed.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Scratch {
        let dir = std::env::temp_dir().join(format!(
            "tern-security-{}-{}",
            std::process::id(),
            NEXT_SCRATCH.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("create scratch dir");
        Scratch(dir)
    }

    /// Writes `contents` to `name` (owner-only, as keys should be).
    fn write(&self, name: &str, contents: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let path = self.0.join(name);
        fs::write(&path, contents).expect("write scratch file");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        path
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("scratch dir kept: {}", self.0.display());
        } else {
            let _ = fs::remove_dir_all(&self.0);
        }
    }
}

// -- certificates ----------------------------------------------------------------

fn pem(label: &str, der: &[u8]) -> String {
    let b64 = data_encoding::BASE64.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

fn subject(cn: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "Tern Tests");
    dn.push(DnType::CommonName, cn);
    dn
}

/// A certificate and its key as PEM files.
struct Leaf {
    cert: PathBuf,
    key: PathBuf,
}

/// A self-signed certificate authority issuing into a scratch directory.
struct Ca {
    issuer: Issuer<'static, rcgen::KeyPair>,
    cert: PathBuf,
}

impl Ca {
    fn new(dir: &Scratch, name: &str, cn: &str) -> Ca {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name = subject(cn);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params.self_signed(&key).unwrap();
        let cert = dir.write(&format!("{name}-cert.pem"), &pem("CERTIFICATE", cert.der()));
        Ca {
            issuer: Issuer::new(params, key),
            cert,
        }
    }

    fn issue(&self, dir: &Scratch, name: &str, cn: &str, sans: &[&str], server: bool) -> Leaf {
        let key = rcgen::KeyPair::generate().unwrap();
        let sans: Vec<String> = sans.iter().map(|s| s.to_string()).collect();
        let mut params = CertificateParams::new(sans).unwrap();
        params.distinguished_name = subject(cn);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = if server {
            vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ]
        } else {
            vec![ExtendedKeyUsagePurpose::ClientAuth]
        };
        params.use_authority_key_identifier_extension = true;
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Leaf {
            cert: dir.write(&format!("{name}-cert.pem"), &pem("CERTIFICATE", cert.der())),
            key: dir.write(
                &format!("{name}-key.pem"),
                &pem("PRIVATE KEY", key.serialized_der()),
            ),
        }
    }

    /// A client certificate (client-auth usage only).
    fn client_cert(&self, dir: &Scratch, name: &str) -> Leaf {
        self.issue(dir, name, name, &[], false)
    }
}

/// A CA with a server certificate for 127.0.0.1 and localhost (what the
/// clients dial), and an unrelated second CA for "wrong issuer" cases.
struct Pki {
    dir: Scratch,
    ca: Ca,
    server: Leaf,
    other_ca: Ca,
}

impl Pki {
    fn new() -> Pki {
        let dir = Scratch::new();
        let ca = Ca::new(&dir, "ca", "Tern Test CA");
        let server = ca.issue(
            &dir,
            "server",
            "localhost",
            &["localhost", "127.0.0.1"],
            true,
        );
        let other_ca = Ca::new(&dir, "other-ca", "Unrelated CA");
        Pki {
            dir,
            ca,
            server,
            other_ca,
        }
    }

    /// A `tls { }` block naming the server certificate and the CA, plus
    /// `extra` lines (`verify: true`, `handshake_first: true`, ...).
    fn block(&self, extra: &[&str]) -> String {
        let mut s = format!(
            "tls {{\n  cert_file: \"{}\"\n  key_file: \"{}\"\n  ca_file: \"{}\"\n",
            self.server.cert.display(),
            self.server.key.display(),
            self.ca.cert.display()
        );
        for line in extra {
            s.push_str(&format!("  {line}\n"));
        }
        s.push_str("}\n");
        s
    }

    /// Client options that require TLS and trust the test CA.
    fn client(&self) -> ConnectOptions {
        ConnectOptions::new()
            .require_tls(true)
            .add_root_certificates(self.ca.cert.clone())
    }

    /// [`Pki::client`] presenting `cert`.
    fn client_with(&self, cert: &Leaf) -> ConnectOptions {
        self.client()
            .add_client_certificate(cert.cert.clone(), cert.key.clone())
    }
}

// -- TLS ---------------------------------------------------------------------------

#[tokio::test]
async fn tls_server_verified_round_trip() {
    let pki = Pki::new();
    let server = Server::start_with_config(&pki.block(&[]));
    bounded(30, async {
        let a = connect(pki.client(), &server).await;
        round_trip(&a, "tls.rt").await;
        // A second TLS connection sees the first one's messages.
        let mut sub = a.subscribe("tls.fanout").await.unwrap();
        sync(&a).await;
        let b = connect(pki.client(), &server).await;
        let big = vec![b'x'; 100_000];
        b.publish("tls.fanout", big.clone().into()).await.unwrap();
        b.flush().await.unwrap();
        assert_eq!(next(&mut sub).await.payload, big);
    })
    .await;
}

#[tokio::test]
async fn tls_client_without_the_ca_is_refused() {
    let pki = Pki::new();
    let server = Server::start_with_config(&pki.block(&[]));
    bounded(40, async {
        // No roots given: async-nats falls back to the system store, which
        // does not know the test CA; it upgrades on INFO's tls_required even
        // when not asked to. (Where the system store cannot be read it fails
        // earlier, with a TLS setup error: no connection either way.)
        for opts in [
            ConnectOptions::new().require_tls(true),
            ConnectOptions::new(),
        ] {
            let e = refused(opts, &server).await;
            assert!(
                e.kind() == ConnectErrorKind::Tls
                    || e.to_string().contains("invalid peer certificate"),
                "{e}"
            );
        }
        // Trusting another CA: the server's certificate does not verify.
        let wrong_ca = ConnectOptions::new()
            .require_tls(true)
            .add_root_certificates(pki.other_ca.cert.clone());
        refused_with(wrong_ca, &server, "invalid peer certificate: UnknownIssuer").await;
        // The server is fine afterwards.
        let ok = connect(pki.client(), &server).await;
        round_trip(&ok, "tls.after").await;
    })
    .await;
}

#[tokio::test]
async fn mutual_tls() {
    let pki = Pki::new();
    let server = Server::start_with_config(&pki.block(&["verify: true"]));
    let alice = pki.ca.client_cert(&pki.dir, "alice");
    let mallory = pki.other_ca.client_cert(&pki.dir, "mallory");
    bounded(40, async {
        let a = connect(pki.client_with(&alice), &server).await;
        round_trip(&a, "mtls.rt").await;
        // No client certificate: the handshake fails (with TLS 1.3 the
        // client learns it from the server's alert on its first read).
        refused_with(pki.client(), &server, "CertificateRequired").await;
        // A certificate from another CA: the handshake fails.
        refused_with(pki.client_with(&mallory), &server, "UnknownCA").await;
        // The good client is still served.
        round_trip(&a, "mtls.after").await;
    })
    .await;
}

#[tokio::test]
async fn mutual_tls_from_command_line_flags() {
    let pki = Pki::new();
    let (cert, key, ca) = (
        pki.server.cert.display().to_string(),
        pki.server.key.display().to_string(),
        pki.ca.cert.display().to_string(),
    );
    let server = Server::start_with(
        &[
            "--tlsverify",
            "--tlscert",
            &cert,
            "--tlskey",
            &key,
            "--tlscacert",
            &ca,
        ],
        None,
    );
    let client_cert = pki.ca.client_cert(&pki.dir, "cli");
    bounded(30, async {
        let c = connect(pki.client_with(&client_cert), &server).await;
        round_trip(&c, "cli.rt").await;
        refused_with(pki.client(), &server, "CertificateRequired").await;
    })
    .await;
}

#[tokio::test]
async fn tls_handshake_first() {
    let pki = Pki::new();
    let server = Server::start_with_config(&pki.block(&["handshake_first: true", "timeout: 1"]));
    bounded(30, async {
        let c = connect(pki.client().tls_first(), &server).await;
        round_trip(&c, "tlsfirst.rt").await;
        let d = connect(pki.client().tls_first(), &server).await;
        let mut sub = d.subscribe("tlsfirst.x").await.unwrap();
        sync(&d).await;
        c.publish("tlsfirst.x", "across".into()).await.unwrap();
        c.flush().await.unwrap();
        assert_eq!(next(&mut sub).await.payload, "across");
        // A client waiting for a plaintext INFO gets none: the server says
        // nothing before the handshake and closes it at the TLS timeout.
        refused_with(pki.client(), &server, "expected INFO").await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_reconnect_after_server_restart() {
    let pki = Pki::new();
    let mut server = Server::start_with_config(&pki.block(&[]));
    let (opts, mut events) = with_events(
        pki.client()
            .reconnect_delay_callback(|_| Duration::from_millis(50)),
    );
    let client = bounded_connect(opts, &server).await;
    let mut sub = client.subscribe("tls.restart").await.unwrap();
    client
        .publish("tls.restart", "before".into())
        .await
        .unwrap();
    client.flush().await.unwrap();
    bounded(10, async {
        assert_eq!(next(&mut sub).await.payload, "before");
    })
    .await;

    let old_port = server.port;
    tokio::task::block_in_place(|| server.restart());
    assert_eq!(server.port, old_port);

    bounded(40, async {
        // The subscription is restored over a new TLS session.
        common::await_reconnect_and_delivery(&mut events, &client, &mut sub, "tls.restart").await;
        // A fresh TLS client on the restarted server reaches the old one.
        let other = connect(pki.client(), &server).await;
        other.publish("tls.restart", "fresh".into()).await.unwrap();
        other.flush().await.unwrap();
        while next(&mut sub).await.payload != "fresh" {}
    })
    .await;
}

// -- nkeys -------------------------------------------------------------------------

fn seed(key: &NKey) -> String {
    key.seed().expect("generated key has a seed")
}

#[tokio::test]
async fn nkey_user() {
    let user = NKey::new_user();
    let stranger = NKey::new_user();
    let server = Server::start_with_config(&format!(
        "authorization {{\n  users = [ {{ nkey: {} }} ]\n}}\n",
        user.public_key()
    ));
    bounded(30, async {
        let c = connect(ConnectOptions::with_nkey(seed(&user)), &server).await;
        round_trip(&c, "nkey.rt").await;
        // A seed the server does not know, correctly signing its nonce.
        auth_refused(ConnectOptions::with_nkey(seed(&stranger)), &server).await;
        // No credentials at all.
        auth_refused(ConnectOptions::new(), &server).await;
        round_trip(&c, "nkey.after").await;
    })
    .await;
}

// -- operator mode -------------------------------------------------------------------

/// An operator with a system account and an account ACC (with one signing
/// key), all preloaded into a MEMORY resolver, as nsc would set them up.
struct OpEnv {
    dir: Scratch,
    op: NKey,
    op_jwt_file: PathBuf,
    sys: NKey,
    sys_jwt: String,
    acc: NKey,
    acc_sk: NKey,
    /// User public key -> Unix time, written into ACC's JWT.
    revocations: BTreeMap<String, i64>,
}

impl OpEnv {
    fn new() -> OpEnv {
        let dir = Scratch::new();
        let op = NKey::new_operator();
        let sys = NKey::new_account();
        let mut oc = OperatorClaims::new(&op.public_key());
        oc.common.name = "OP".into();
        oc.nats.system_account = sys.public_key();
        let op_jwt_file = dir.write("op.jwt", &format!("{}\n", jwt::encode(&oc, &op)));
        let mut sc = AccountClaims::new(&sys.public_key());
        sc.common.name = "SYS".into();
        let sys_jwt = jwt::encode(&sc, &op);
        OpEnv {
            dir,
            op,
            op_jwt_file,
            sys,
            sys_jwt,
            acc: NKey::new_account(),
            acc_sk: NKey::new_account(),
            revocations: BTreeMap::new(),
        }
    }

    fn account_jwt(&self) -> String {
        let mut ac = AccountClaims::new(&self.acc.public_key());
        ac.common.name = "ACC".into();
        ac.nats.signing_keys.add(&self.acc_sk.public_key());
        ac.nats.revocations = self.revocations.clone();
        jwt::encode(&ac, &self.op)
    }

    /// `operator`, `system_account`, `resolver: MEMORY` and the preload.
    fn config(&self) -> String {
        format!(
            "operator: \"{}\"\nsystem_account: {}\nresolver: MEMORY\n\
             resolver_preload: {{\n  {}: \"{}\"\n  {}: \"{}\"\n}}\n",
            self.op_jwt_file.display(),
            self.sys.public_key(),
            self.sys.public_key(),
            self.sys_jwt,
            self.acc.public_key(),
            self.account_jwt(),
        )
    }

    /// A user JWT for `user` signed by `signer` (ACC, or a signing key that
    /// then names ACC as `issuer_account`); `edit` adjusts the claims.
    fn user_jwt(&self, user: &NKey, signer: &NKey, edit: impl FnOnce(&mut UserClaims)) -> String {
        let mut uc = UserClaims::new(&user.public_key());
        uc.common.name = "user".into();
        if signer.public_key() != self.acc.public_key() {
            uc.nats.issuer_account = self.acc.public_key();
        }
        edit(&mut uc);
        jwt::encode(&uc, signer)
    }

    /// The `.creds` text for a new user of ACC signed by the account key.
    fn creds(&self, edit: impl FnOnce(&mut UserClaims)) -> String {
        let user = NKey::new_user();
        peer::creds::format(&self.user_jwt(&user, &self.acc, edit), &seed(&user))
    }

    fn creds_opts(creds: &str) -> ConnectOptions {
        ConnectOptions::with_credentials(creds).expect("creds parse")
    }
}

fn unchanged(_: &mut UserClaims) {}

#[tokio::test]
async fn creds_file_round_trip() {
    let env = OpEnv::new();
    let server = Server::start_with_config(&env.config());
    let file_a = env.dir.write("a.creds", &env.creds(unchanged));
    let text_b = env.creds(unchanged);
    bounded(30, async {
        let a = connect(
            ConnectOptions::with_credentials_file(&file_a)
                .await
                .unwrap(),
            &server,
        )
        .await;
        round_trip(&a, "creds.rt").await;
        // Another user of the same account, from creds text: same subject space.
        let b = connect(OpEnv::creds_opts(&text_b), &server).await;
        let mut sub = b.subscribe("creds.shared").await.unwrap();
        sync(&b).await;
        a.publish("creds.shared", "same account".into())
            .await
            .unwrap();
        a.flush().await.unwrap();
        assert_eq!(next(&mut sub).await.payload, "same account");
        // Operator mode needs a JWT: no credentials is refused.
        auth_refused(ConnectOptions::new(), &server).await;
    })
    .await;
}

#[tokio::test]
async fn user_signed_by_account_signing_key() {
    let env = OpEnv::new();
    let server = Server::start_with_config(&env.config());
    let user = NKey::new_user();
    let by_sk = env.user_jwt(&user, &env.acc_sk, unchanged);
    let claims = jwt::decode_user(&by_sk).unwrap();
    assert_eq!(claims.nats.issuer_account, env.acc.public_key());
    assert_eq!(claims.common.iss, env.acc_sk.public_key());
    // A key the account does not list as a signing key.
    let rogue_key = NKey::new_account();
    let rogue = env.user_jwt(&user, &rogue_key, unchanged);
    bounded(30, async {
        let creds = peer::creds::format(&by_sk, &seed(&user));
        let c = connect(OpEnv::creds_opts(&creds), &server).await;
        round_trip(&c, "sk.rt").await;
        let creds = peer::creds::format(&rogue, &seed(&user));
        auth_refused(OpEnv::creds_opts(&creds), &server).await;
    })
    .await;
}

#[tokio::test]
async fn expired_user_jwt_is_refused() {
    let env = OpEnv::new();
    let server = Server::start_with_config(&env.config());
    let user = NKey::new_user();
    let now = jwt::unix_now();
    let expired = env.user_jwt(&user, &env.acc, |u| u.common.exp = now - 5);
    let valid = env.user_jwt(&user, &env.acc, |u| u.common.exp = now + 3600);
    bounded(30, async {
        let creds = peer::creds::format(&expired, &seed(&user));
        auth_refused(OpEnv::creds_opts(&creds), &server).await;
        // The same key with a JWT that expires later is fine.
        let creds = peer::creds::format(&valid, &seed(&user));
        let c = connect(OpEnv::creds_opts(&creds), &server).await;
        round_trip(&c, "exp.rt").await;
    })
    .await;
}

#[tokio::test]
async fn revoked_user_is_refused() {
    let mut env = OpEnv::new();
    let now = jwt::unix_now();
    let user = NKey::new_user();
    env.revocations.insert(user.public_key(), now - 100);
    let server = Server::start_with_config(&env.config());
    let issued_before = env.user_jwt(&user, &env.acc, |u| u.common.iat = now - 200);
    let issued_at = env.user_jwt(&user, &env.acc, |u| u.common.iat = now - 100);
    let issued_after = env.user_jwt(&user, &env.acc, |u| u.common.iat = now - 50);
    let bystander = env.creds(|u| u.common.iat = now - 200);
    bounded(30, async {
        for token in [&issued_before, &issued_at] {
            let creds = peer::creds::format(token, &seed(&user));
            auth_refused(OpEnv::creds_opts(&creds), &server).await;
        }
        // A JWT for the same key issued after the revocation is accepted.
        let creds = peer::creds::format(&issued_after, &seed(&user));
        let c = connect(OpEnv::creds_opts(&creds), &server).await;
        round_trip(&c, "rev.rt").await;
        // Other users of the account are not affected.
        let b = connect(OpEnv::creds_opts(&bystander), &server).await;
        round_trip(&b, "rev.other").await;
    })
    .await;
}

#[tokio::test]
async fn jwt_permissions_violations_are_server_error_events() {
    let env = OpEnv::new();
    let server = Server::start_with_config(&env.config());
    let limited_creds = env.creds(|u| {
        let p = &mut u.nats.permission_limits.permissions;
        p.publish.allow = vec!["allowed.>".into(), "_INBOX.>".into()];
        p.subscribe.deny = vec!["secret.>".into()];
    });
    let watcher_creds = env.creds(unchanged);
    bounded(30, async {
        let (opts, mut events) = with_events(OpEnv::creds_opts(&limited_creds));
        let limited = connect(opts, &server).await;
        let watcher = connect(OpEnv::creds_opts(&watcher_creds), &server).await;
        let mut allowed = watcher.subscribe("allowed.>").await.unwrap();
        let mut denied = watcher.subscribe("denied.>").await.unwrap();
        sync(&watcher).await;

        limited.publish("denied.x", "no".into()).await.unwrap();
        limited.publish("allowed.x", "yes".into()).await.unwrap();
        limited.flush().await.unwrap();
        assert_eq!(
            next_server_error(&mut events).await,
            r#"Permissions Violation for Publish to "denied.x""#
        );
        let m = next(&mut allowed).await;
        assert_eq!(
            (m.subject.as_str(), &m.payload[..]),
            ("allowed.x", &b"yes"[..])
        );
        // denied.x would have reached the watcher before allowed.x.
        assert!(drain_ready(&mut denied).is_empty());

        // The connection stays up and keeps working.
        assert_eq!(limited.connection_state(), State::Connected);
        limited.publish("allowed.y", "again".into()).await.unwrap();
        limited.flush().await.unwrap();
        assert_eq!(next(&mut allowed).await.subject.as_str(), "allowed.y");

        // A denied subscription is an error event too; allowed ones work.
        let mut secret = limited.subscribe("secret.x").await.unwrap();
        let mut public = limited.subscribe("allowed.public").await.unwrap();
        sync(&limited).await;
        assert_eq!(
            next_server_error(&mut events).await,
            r#"Permissions Violation for Subscription to "secret.x""#
        );
        watcher.publish("secret.x", "hidden".into()).await.unwrap();
        watcher
            .publish("allowed.public", "visible".into())
            .await
            .unwrap();
        watcher.flush().await.unwrap();
        assert_eq!(next(&mut public).await.payload, "visible");
        assert!(drain_ready(&mut secret).is_empty());
    })
    .await;
}

#[tokio::test]
async fn jwt_subscription_limit() {
    let env = OpEnv::new();
    let server = Server::start_with_config(&env.config());
    let creds = env.creds(|u| u.nats.permission_limits.limits.nats.subs = 2);
    bounded(30, async {
        let (opts, mut events) = with_events(OpEnv::creds_opts(&creds));
        let c = connect(opts, &server).await;
        let mut a = c.subscribe("lim.a").await.unwrap();
        let _b = c.subscribe("lim.b").await.unwrap();
        let mut third = c.subscribe("lim.c").await.unwrap();
        c.flush().await.unwrap();
        assert_eq!(
            next_server_error(&mut events).await,
            "maximum subscriptions exceeded"
        );
        // The connection stays; the first two subscriptions work, the
        // third does not exist on the server.
        c.publish("lim.c", "dropped".into()).await.unwrap();
        c.publish("lim.a", "kept".into()).await.unwrap();
        c.flush().await.unwrap();
        assert_eq!(next(&mut a).await.payload, "kept");
        assert!(drain_ready(&mut third).is_empty());
        assert_eq!(c.connection_state(), State::Connected);
    })
    .await;
}

#[tokio::test]
async fn creds_over_tls() {
    let pki = Pki::new();
    let env = OpEnv::new();
    let server = Server::start_with_config(&format!("{}{}", pki.block(&[]), env.config()));
    let file = env.dir.write("tls.creds", &env.creds(unchanged));
    bounded(30, async {
        let c = connect(pki.client().credentials_file(&file).await.unwrap(), &server).await;
        round_trip(&c, "tlscreds.rt").await;
        auth_refused(pki.client(), &server).await;
    })
    .await;
}
