//! The TLS listener (issue #9 item 3), against the real broker binary: server and mutual TLS
//! with the Mosquitto clients and a rustls client, protocol versions, the certificate CN as
//! username (and as the user the ACL file sees), certificate reload (file change, SIGHUP, a
//! broken file), the handshake timeout, and the limits both listeners share (connections,
//! connections per address, folded log lines).
//! Certificates are generated in each test (rcgen) into a temporary directory.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::certs::{Ca, Leaf};
use common::*;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};

const CONNACK_OK: [u8; 4] = [0x20, 0x02, 0x00, 0x00];
const CONNACK_BAD_USERNAME_OR_PASSWORD: [u8; 4] = [0x20, 0x02, 0x00, 0x04];
const CONNACK_NOT_AUTHORIZED: [u8; 4] = [0x20, 0x02, 0x00, 0x05];

/// A CA, a server certificate signed by it, and where they are written.
struct Pki {
    dir: tempfile::TempDir,
    ca: Ca,
    ca_file: PathBuf,
    server: Leaf,
    cert_file: PathBuf,
    key_file: PathBuf,
}

impl Pki {
    fn new() -> Pki {
        let ca = Ca::new("brokerd test CA");
        let server = ca.server("server-v1", 1);
        Pki::with(ca, server)
    }

    fn with(ca: Ca, server: Leaf) -> Pki {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca_file = ca.write(dir.path(), "ca");
        let (cert_file, key_file) = server.write(dir.path(), "server");
        Pki {
            dir,
            ca,
            ca_file,
            server,
            cert_file,
            key_file,
        }
    }

    /// A `[tls]` section using these files, on a free port, plus `extra` keys.
    fn toml(&self, extra: &str) -> String {
        format!(
            "[tls]\nenabled = true\nbind = \"127.0.0.1:0\"\ncert_file = {:?}\nkey_file = {:?}\n{extra}",
            self.cert_file, self.key_file
        )
    }

    /// `toml` with mutual TLS: client certificates signed by this CA are required.
    fn mtls_toml(&self, extra: &str) -> String {
        self.toml(&format!(
            "ca_file = {:?}\nrequire_certificate = true\n{extra}",
            self.ca_file
        ))
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn s(p: &Path) -> &str {
        p.to_str().expect("utf-8 path")
    }
}

/// The TLS address of a broker started with a `[tls]` section.
fn tls_addr(b: &BrokerProc) -> SocketAddr {
    b.tls_addr.expect("broker has a TLS listener")
}

/// A rustls client configuration trusting `ca`, with a client certificate if given.
fn client_config(ca: &[u8], client: Option<&Leaf>) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    roots
        .add(CertificateDer::from(ca.to_vec()))
        .expect("CA certificate");
    #[allow(deprecated)] // the ring provider, as the broker uses (see transport/tls/certs.rs)
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_root_certificates(roots);
    let config = match client {
        None => builder.with_no_client_auth(),
        Some(leaf) => {
            let chain = CertificateDer::pem_slice_iter(leaf.cert_pem.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .expect("client certificate PEM");
            let key =
                PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).expect("client key PEM");
            builder
                .with_client_auth_cert(chain, key)
                .expect("client certificate")
        }
    };
    Arc::new(config)
}

/// A byte-level MQTT client over TLS (rustls), like `Raw` over TCP.
struct TlsRaw {
    stream: StreamOwned<ClientConnection, TcpStream>,
}

impl TlsRaw {
    /// Connects and completes the TLS handshake (the server's verdict on a client certificate
    /// may only arrive with the first read, in TLS 1.3).
    fn connect(addr: SocketAddr, config: Arc<ClientConfig>) -> std::io::Result<TlsRaw> {
        let sock = TcpStream::connect(addr)?;
        sock.set_read_timeout(Some(WAIT))?;
        sock.set_nodelay(true)?;
        let name = ServerName::try_from("127.0.0.1").expect("server name");
        let conn = ClientConnection::new(config, name).map_err(std::io::Error::other)?;
        let mut stream = StreamOwned::new(conn, sock);
        while stream.conn.is_handshaking() {
            stream.conn.complete_io(&mut stream.sock)?;
        }
        Ok(TlsRaw { stream })
    }

    /// Connects and completes CONNECT / CONNACK 0.
    fn connected(addr: SocketAddr, config: Arc<ClientConfig>, client_id: &str) -> TlsRaw {
        let mut c = TlsRaw::connect(addr, config).expect("TLS handshake");
        c.send(&connect_packet(client_id, true, 60));
        assert_eq!(c.read_packet().expect("CONNACK"), CONNACK_OK);
        c
    }

    /// The certificate the server presented.
    fn server_certificate(&self) -> Vec<u8> {
        self.stream
            .conn
            .peer_certificates()
            .expect("server certificate")[0]
            .to_vec()
    }

    fn send(&mut self, bytes: &[u8]) {
        let _ = self
            .stream
            .write_all(bytes)
            .and_then(|_| self.stream.flush());
    }

    /// One whole packet; None on EOF, error or timeout.
    fn read_packet(&mut self) -> Option<Vec<u8>> {
        let mut first = [0u8; 1];
        self.stream.read_exact(&mut first).ok()?;
        let mut packet = vec![first[0]];
        let (mut len, mut shift) = (0usize, 0);
        loop {
            let mut b = [0u8; 1];
            self.stream.read_exact(&mut b).ok()?;
            packet.push(b[0]);
            len |= usize::from(b[0] & 0x7f) << shift;
            if b[0] & 0x80 == 0 {
                break;
            }
            shift += 7;
        }
        let start = packet.len();
        packet.resize(start + len, 0);
        self.stream.read_exact(&mut packet[start..]).ok()?;
        Some(packet)
    }

    fn subscribe(&mut self, pkid: u16, filter: &str, qos: u8) {
        self.send(&subscribe_packet(pkid, &[(filter, qos)]));
        let [hi, lo] = pkid.to_be_bytes();
        assert_eq!(self.read_packet(), Some(vec![0x90, 0x03, hi, lo, qos]));
    }

    fn ping(&mut self) {
        self.send(&pingreq_packet());
        assert_eq!(self.read_packet(), Some(vec![0xd0, 0x00]), "PINGRESP");
    }
}

/// The certificate a new TLS connection is served, trusting `ca`.
fn served_certificate(addr: SocketAddr, ca: &[u8]) -> Option<Vec<u8>> {
    TlsRaw::connect(addr, client_config(ca, None))
        .ok()
        .map(|c| c.server_certificate())
}

/// Waits until new connections are served `want`.
fn wait_served(addr: SocketAddr, ca: &[u8], want: &[u8], b: &BrokerProc) {
    let deadline = Instant::now() + WAIT;
    while served_certificate(addr, ca).as_deref() != Some(want) {
        assert!(
            Instant::now() < deadline,
            "new connections never got the new certificate; log:\n{}",
            b.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Runs `program args` to completion, killing it after `WAIT`.
fn run(program: &str, args: &[&str]) -> Output {
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    let deadline = Instant::now() + WAIT;
    while child.try_wait().expect("wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    child.wait_with_output().expect("output")
}

fn text(o: &Output) -> String {
    format!(
        "status {:?}\nstdout: {}\nstderr: {}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// `mosquitto_pub` of a retained QoS 1 message to the TLS listener with `tls_args`.
fn mosquitto_pub(addr: SocketAddr, tls_args: &[&str], topic: &str, payload: &str) -> Output {
    let port = addr.port().to_string();
    let mut args = vec!["-h", "127.0.0.1", "-p", &port, "-q", "1", "-r"];
    args.extend_from_slice(tls_args);
    args.extend_from_slice(&["-t", topic, "-m", payload]);
    run("mosquitto_pub", &args)
}

/// The retained message of `topic` as `mosquitto_sub` over TLS reads it (`-C 1`).
fn mosquitto_sub_retained(addr: SocketAddr, tls_args: &[&str], topic: &str) -> Output {
    let port = addr.port().to_string();
    let mut args = vec![
        "-h",
        "127.0.0.1",
        "-p",
        &port,
        "-q",
        "1",
        "-C",
        "1",
        "-W",
        "10",
    ];
    args.extend_from_slice(tls_args);
    args.extend_from_slice(&["-t", topic]);
    run("mosquitto_sub", &args)
}

/// issue #9 item 3: the TLS listener runs beside the plain one (its address on a second stdout
/// line, port 0 resolved), serves MQTT over TLS, and both reach the same broker.
#[test]
fn tls_and_plain_listeners_serve_the_same_broker() {
    let pki = Pki::new();
    let b = BrokerProc::start(&pki.toml(""));
    let tls = tls_addr(&b);
    assert_ne!(tls.port(), 0);
    assert_ne!(tls, b.addr);
    assert_eq!(tls.ip().to_string(), "127.0.0.1");

    let config = client_config(&pki.ca.der, None);
    let mut tls_sub = TlsRaw::connected(tls, config.clone(), "tls-sub");
    assert_eq!(tls_sub.server_certificate(), pki.server.der);
    tls_sub.subscribe(1, "cross/#", 1);
    let mut plain_sub = Raw::connected(b.addr, "plain-sub");
    plain_sub.subscribe(1, "cross/#", 1);

    // plain -> both, TLS -> both
    let mut plain_pub = Raw::connected(b.addr, "plain-pub");
    plain_pub.send(&publish_packet(
        "cross/from-plain",
        1,
        false,
        false,
        1,
        b"p",
    ));
    assert_eq!(plain_pub.expect_packet("PUBACK"), ack_packet(0x40, 1));
    let mut tls_pub = TlsRaw::connected(tls, config, "tls-pub");
    tls_pub.send(&publish_packet("cross/from-tls", 1, false, false, 2, b"t"));
    assert_eq!(tls_pub.read_packet(), Some(ack_packet(0x40, 2)));

    for (topic, payload) in [("cross/from-plain", b"p"), ("cross/from-tls", b"t")] {
        let p = tls_sub.read_packet().expect("PUBLISH over TLS");
        let (_, qos, _, t, id, body) = parse_publish(&p);
        assert_eq!((qos, t.as_str(), &body[..]), (1, topic, &payload[..]));
        tls_sub.send(&ack_packet(0x40, id));
        let (_, qos, _, t, id, body) = parse_publish(&plain_sub.expect_packet("PUBLISH"));
        assert_eq!((qos, t.as_str(), &body[..]), (1, topic, &payload[..]));
        plain_sub.send(&ack_packet(0x40, id));
    }
    tls_sub.ping();
    b.wait_log("listening (tls)");
}

/// issue #9 item 3: mosquitto_pub / mosquitto_sub with --cafile (server authentication) work
/// against the TLS listener; with another CA they refuse the broker's certificate.
#[test]
fn mosquitto_clients_with_cafile() {
    let pki = Pki::new();
    let b = BrokerProc::start(&pki.toml(""));
    let tls = tls_addr(&b);
    let ca = Pki::s(&pki.ca_file);
    let out = mosquitto_pub(tls, &["--cafile", ca], "tls/mosq", "over-tls");
    assert!(out.status.success(), "{}", text(&out));
    let out = mosquitto_sub_retained(tls, &["--cafile", ca], "tls/mosq");
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "over-tls");

    // The broker really presents the configured certificate: a client trusting another CA
    // refuses it.
    let other = Ca::new("another CA").write(pki.dir.path(), "other-ca");
    let out = mosquitto_pub(tls, &["--cafile", Pki::s(&other)], "tls/mosq", "x");
    assert!(!out.status.success(), "{}", text(&out));
}

/// issue #9 item 3: with require_certificate, mosquitto clients with --cert/--key signed by
/// ca_file connect; a client without a certificate, and one whose certificate another CA
/// signed, are refused in the handshake (one log line each) and publish nothing.
#[test]
fn mutual_tls_requires_a_certificate_signed_by_ca_file() {
    let pki = Pki::new();
    let b = BrokerProc::start(&pki.mtls_toml(""));
    let tls = tls_addr(&b);
    let (cert, key) = pki
        .ca
        .client(Some("device-1"))
        .write(pki.dir.path(), "client");
    let ca = Pki::s(&pki.ca_file);
    let good = [
        "--cafile",
        ca,
        "--cert",
        Pki::s(&cert),
        "--key",
        Pki::s(&key),
    ];
    let out = mosquitto_pub(tls, &good, "tls/mtls", "first");
    assert!(out.status.success(), "{}", text(&out));

    let out = mosquitto_pub(tls, &["--cafile", ca], "tls/mtls", "no-cert");
    assert!(!out.status.success(), "{}", text(&out));
    let (other_cert, other_key) = Ca::new("another CA")
        .client(Some("device-1"))
        .write(pki.dir.path(), "stranger");
    let stranger = [
        "--cafile",
        ca,
        "--cert",
        Pki::s(&other_cert),
        "--key",
        Pki::s(&other_key),
    ];
    let out = mosquitto_pub(tls, &stranger, "tls/mtls", "wrong-ca");
    assert!(!out.status.success(), "{}", text(&out));
    let log = b.wait_log_lines(&["TLS handshake failed"], 2);
    assert_eq!(
        log.lines()
            .filter(|l| l.contains("TLS handshake failed"))
            .count(),
        2,
        "one line per failed handshake; log:\n{log}"
    );

    // Neither refused client replaced the retained message.
    let out = mosquitto_sub_retained(tls, &good, "tls/mtls");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "first",
        "{}",
        text(&out)
    );
    // The same through rustls: no certificate -> no CONNACK.
    let mut anonymous = TlsRaw::connect(tls, client_config(&pki.ca.der, None)).ok();
    if let Some(c) = anonymous.as_mut() {
        c.send(&connect_packet("anon", true, 60));
        assert_eq!(
            c.read_packet(),
            None,
            "a client without certificate got an answer"
        );
    }
    let mut c = TlsRaw::connected(
        tls,
        client_config(&pki.ca.der, Some(&pki.ca.client(Some("d")))),
        "d",
    );
    c.ping();
}

/// Runs python3's ssl module against `addr` with the TLS version forced to `version`
/// ("TLSv1", "TLSv1_1", "TLSv1_2", "TLSv1_3"); returns its one-line verdict.
fn python_tls(addr: SocketAddr, version: &str) -> String {
    // SECLEVEL=0 so OpenSSL really offers the old versions (else it refuses locally, and the
    // test would prove nothing about the broker).
    let script = r#"
import socket, ssl, sys
port, name = int(sys.argv[1]), sys.argv[2]
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
ctx.set_ciphers("ALL:@SECLEVEL=0")
v = getattr(ssl.TLSVersion, name)
ctx.minimum_version = v
ctx.maximum_version = v
try:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        with ctx.wrap_socket(s) as t:
            print("OK", t.version())
except Exception as e:
    print("ERR", type(e).__name__, e)
"#;
    let out = run(
        "python3",
        &["-c", script, &addr.port().to_string(), version],
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// issue #9 item 3: TLS 1.2 and 1.3 only: a client limited to TLS 1.1 or 1.0 is refused by
/// the broker (its ClientHello reaches the broker, which logs the failed handshake).
#[test]
fn tls_1_1_and_older_are_refused() {
    let pki = Pki::new();
    let b = BrokerProc::start(&pki.toml(""));
    let tls = tls_addr(&b);
    assert_eq!(python_tls(tls, "TLSv1_3"), "OK TLSv1.3");
    assert_eq!(python_tls(tls, "TLSv1_2"), "OK TLSv1.2");
    for (i, old) in ["TLSv1_1", "TLSv1"].into_iter().enumerate() {
        let verdict = python_tls(tls, old);
        assert!(verdict.starts_with("ERR"), "{old}: {verdict}");
        b.wait_log_lines(&["TLS handshake failed"], i + 1);
    }
    let log = b.log();
    assert!(
        log.lines()
            .filter(|l| l.contains("TLS handshake failed"))
            .all(|l| l.contains("WARN") && l.contains("ncompatible")),
        "log:\n{log}"
    );
}

/// issue #9 item 3: use_identity_as_username: the client certificate's CN is the username
/// (shown in the connect line) and the CONNECT's username/password are ignored, even with a
/// password file that refuses them; a certificate without CN gets CONNACK 0x04. The plain
/// listener still checks passwords.
#[test]
fn use_identity_as_username_takes_the_certificate_cn() {
    let pki = Pki::new();
    let passwd = pki.path("passwd");
    std::fs::write(&passwd, "alice:secret\n").expect("password file");
    // A password file must be private (0600) and, with a plain-text entry, say so.
    std::fs::set_permissions(&passwd, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let b = BrokerProc::start(&format!(
        "{}[auth]\nallow_anonymous = false\npassword_file = {:?}\npassword_format = \"plaintext\"\n",
        pki.mtls_toml("use_identity_as_username = true\n"),
        passwd
    ));
    let tls = tls_addr(&b);

    let device = pki.ca.client(Some("device-42"));
    let mut c = TlsRaw::connect(tls, client_config(&pki.ca.der, Some(&device))).expect("TLS");
    c.send(
        &RawConnect::new("cn-client")
            .username("mallory")
            .password(b"wrong")
            .encode(),
    );
    assert_eq!(c.read_packet(), Some(CONNACK_OK.to_vec()));
    c.ping();
    let log = b.wait_log_lines(&["client connected", "\"cn-client\""], 1);
    let line = log
        .lines()
        .find(|l| l.contains("client connected") && l.contains("\"cn-client\""))
        .expect("connect line");
    assert!(line.contains("username=device-42"), "{line}");
    assert!(!line.contains("mallory"), "{line}");

    // Anonymous CONNECT (no username) is fine too: the certificate is the credential.
    let mut anon = TlsRaw::connected(tls, client_config(&pki.ca.der, Some(&device)), "cn-anon");
    anon.ping();

    // mosquitto_pub with a certificate and a wrong password, the same way.
    let (cert, key) = device.write(pki.dir.path(), "device");
    let ca = Pki::s(&pki.ca_file);
    let args = [
        "--cafile",
        ca,
        "--cert",
        Pki::s(&cert),
        "--key",
        Pki::s(&key),
        "-u",
        "mallory",
        "-P",
        "wrong",
    ];
    let out = mosquitto_pub(tls, &args, "tls/identity", "via-cn");
    assert!(out.status.success(), "{}", text(&out));

    // No CN: refused as Mosquitto refuses it.
    let nameless = pki.ca.client(None);
    let mut c = TlsRaw::connect(tls, client_config(&pki.ca.der, Some(&nameless))).expect("TLS");
    c.send(&connect_packet("no-cn", true, 60));
    assert_eq!(
        c.read_packet(),
        Some(CONNACK_BAD_USERNAME_OR_PASSWORD.to_vec())
    );
    assert_eq!(c.read_packet(), None, "closed after the refusal");

    // The plain listener is not affected: the password file decides there.
    let mut plain = Raw::connect(b.addr);
    plain.send(
        &RawConnect::new("p1")
            .username("mallory")
            .password(b"wrong")
            .encode(),
    );
    assert_eq!(plain.read_packet(), Some(CONNACK_NOT_AUTHORIZED.to_vec()));
    Raw::connected_by(
        b.addr,
        &RawConnect::new("p2").username("alice").password(b"secret"),
    );
}

/// Replaces `path`'s content in place (same inode), then sets its modification time back to
/// `mtime`: a change only a reload request can reveal when the size is unchanged too.
fn rewrite_keeping_stamp(path: &Path, content: &str, mtime: std::time::SystemTime) {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(path)
        .expect("open for rewrite");
    f.write_all(content.as_bytes()).expect("rewrite");
    f.set_modified(mtime).expect("set mtime");
}

/// Writes `content` to `path` through a temporary file and a rename, as deployment tools do.
fn replace_file(path: &Path, content: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, content).expect("write");
    std::fs::rename(&tmp, path).expect("rename");
}

/// issue #9 item 3: when the certificate and key files change, new connections get the new
/// certificate while a connection opened before keeps working, and the log says so.
#[test]
fn certificate_is_reloaded_when_the_files_change() {
    let pki = Pki::new();
    let b = BrokerProc::start(&pki.toml(""));
    let tls = tls_addr(&b);
    let config = client_config(&pki.ca.der, None);
    let mut before = TlsRaw::connected(tls, config.clone(), "before");
    assert_eq!(before.server_certificate(), pki.server.der);
    before.subscribe(1, "reload/t", 0);

    let v2 = pki.ca.server("server-v2", 2);
    replace_file(&pki.key_file, &v2.key_pem);
    replace_file(&pki.cert_file, &v2.cert_pem);
    wait_served(tls, &pki.ca.der, &v2.der, &b);
    let log = b.wait_log("certificate reloaded");
    assert!(log.contains("trigger=\"file change\""), "log:\n{log}");

    let mut after = TlsRaw::connected(tls, config, "after");
    assert_eq!(after.server_certificate(), v2.der);
    after.send(&publish_packet(
        "reload/t",
        0,
        false,
        false,
        0,
        b"still-here",
    ));
    let (_, _, _, topic, _, payload) = parse_publish(&before.read_packet().expect("PUBLISH"));
    assert_eq!(
        (topic.as_str(), &payload[..]),
        ("reload/t", &b"still-here"[..])
    );
    assert_eq!(before.server_certificate(), pki.server.der);
    before.ping();
}

/// issue #9 item 3: SIGHUP reloads the certificate: files rewritten with the same size, inode
/// and modification time (invisible to the file watch) are served after SIGHUP, and a
/// connection opened before keeps working.
#[test]
fn certificate_is_reloaded_on_sighup() {
    // Ed25519 signatures have a fixed size, so both certificates have the same length.
    let ca = Ca::with_algorithm("brokerd test CA", &rcgen::PKCS_ED25519);
    let v1 = ca.server_with("server-v1", 1, &rcgen::PKCS_ED25519);
    let v2 = ca.server_with("server-v2", 2, &rcgen::PKCS_ED25519);
    assert_eq!(v1.cert_pem.len(), v2.cert_pem.len());
    assert_eq!(v1.key_pem.len(), v2.key_pem.len());
    assert_ne!(v1.der, v2.der);
    let pki = Pki::with(ca, v1);
    let mut b = BrokerProc::start(&pki.toml(""));
    let tls = tls_addr(&b);
    let config = client_config(&pki.ca.der, None);
    let mut before = TlsRaw::connected(tls, config.clone(), "before-hup");

    let cert_mtime = std::fs::metadata(&pki.cert_file)
        .and_then(|m| m.modified())
        .expect("mtime");
    let key_mtime = std::fs::metadata(&pki.key_file)
        .and_then(|m| m.modified())
        .expect("mtime");
    rewrite_keeping_stamp(&pki.key_file, &v2.key_pem, key_mtime);
    rewrite_keeping_stamp(&pki.cert_file, &v2.cert_pem, cert_mtime);
    // Two poll periods of the file watch pass with the old certificate still served (a
    // positive check each time, not a bare sleep): the watch cannot see this change.
    let until = Instant::now() + Duration::from_millis(2500);
    while Instant::now() < until {
        assert_eq!(
            served_certificate(tls, &pki.ca.der),
            Some(pki.server.der.clone())
        );
        std::thread::sleep(Duration::from_millis(250));
    }

    b.signal("HUP");
    wait_served(tls, &pki.ca.der, &v2.der, &b);
    let log = b.wait_log("certificate reloaded");
    assert!(
        log.contains("SIGHUP received: reloading the TLS certificate"),
        "log:\n{log}"
    );
    assert!(log.contains("trigger=\"reload request\""), "log:\n{log}");
    assert!(!log.contains("trigger=\"file change\""), "log:\n{log}");
    before.ping();
    let mut after = TlsRaw::connected(tls, config, "after-hup");
    after.ping();
    assert!(b.is_alive());
}

/// issue #9 item 3: a broken new certificate file, or a key that does not belong to the
/// certificate, keeps the old certificate in use and logs an error naming the file; a good
/// pair written afterwards is loaded.
#[test]
fn broken_new_files_keep_the_old_certificate() {
    let pki = Pki::new();
    let b = BrokerProc::start(&pki.toml(""));
    let tls = tls_addr(&b);
    let config = client_config(&pki.ca.der, None);
    let mut before = TlsRaw::connected(tls, config.clone(), "before-broken");

    replace_file(
        &pki.cert_file,
        "-----BEGIN CERTIFICATE-----\nnot base64 at all\n",
    );
    let cert_name = pki.cert_file.display().to_string();
    let log = b.wait_log_lines(&["ERROR", "tls: reload failed", &cert_name], 1);
    assert!(log.contains("tls.cert_file"), "log:\n{log}");
    assert_eq!(
        served_certificate(tls, &pki.ca.der),
        Some(pki.server.der.clone())
    );
    before.ping();

    // A valid certificate with somebody else's key.
    let v2 = pki.ca.server("server-v2", 2);
    let v3 = pki.ca.server("server-v3", 3);
    replace_file(&pki.key_file, &v3.key_pem);
    replace_file(&pki.cert_file, &v2.cert_pem);
    let key_name = pki.key_file.display().to_string();
    b.wait_log_lines(&["ERROR", "is not the key of", &key_name], 1);
    assert_eq!(
        served_certificate(tls, &pki.ca.der),
        Some(pki.server.der.clone())
    );

    replace_file(&pki.key_file, &v2.key_pem);
    wait_served(tls, &pki.ca.der, &v2.der, &b);
    before.ping();
    TlsRaw::connected(tls, config, "after-fix").ping();
}

/// issue #9 item 3: limits.connect_timeout_ms bounds the TLS handshake and CONNECT together:
/// a client that never starts the handshake, and one that completes it but sends no CONNECT,
/// are closed; plain MQTT sent to the TLS port fails the handshake with one log line.
#[test]
fn connect_timeout_covers_the_tls_handshake() {
    let pki = Pki::new();
    let b = BrokerProc::start(&format!(
        "{}[limits]\nconnect_timeout_ms = 300\n",
        pki.toml("")
    ));
    let tls = tls_addr(&b);

    let started = Instant::now();
    let mut silent = Raw::connect(tls);
    silent.expect_closed();
    assert!(
        started.elapsed() >= Duration::from_millis(250),
        "{:?}",
        started.elapsed()
    );
    b.wait_log("TLS handshake not done within limits.connect_timeout_ms");

    let mut quiet = TlsRaw::connect(tls, client_config(&pki.ca.der, None)).expect("TLS");
    assert_eq!(quiet.read_packet(), None, "closed without a CONNACK");
    b.wait_log("no CONNECT within limits.connect_timeout_ms");

    let mut plain = Raw::connect(tls);
    plain.send(&connect_packet("plain-on-tls", true, 60));
    let _ = plain.drain_until_closed(WAIT);
    let log = b.wait_log_lines(&["TLS handshake failed"], 1);
    assert_eq!(
        log.lines()
            .filter(|l| l.contains("TLS handshake failed"))
            .count(),
        1,
        "log:\n{log}"
    );
    TlsRaw::connected(tls, client_config(&pki.ca.der, None), "still-fine").ping();
}

/// issue #9 item 3: many and large messages cross TLS intact and in order, through full socket
/// buffers. In each round the subscriber (QoS 0, so it sends nothing that would wake the
/// broker) reads only after the publisher has its last PUBACK: the broker's writes stop on a
/// full socket, and the end of the round (TLS records buffered in rustls, none in the session's
/// buffer) must still go out once the socket drains.
#[test]
fn many_and_large_messages_cross_tls_through_full_buffers() {
    let pki = Pki::new();
    // No byte bound on the subscriber's queue, so nothing is dropped while it does not read.
    let b = BrokerProc::start(&format!("{}[limits]\nmax_queued_bytes = 0\n", pki.toml("")));
    let tls = tls_addr(&b);
    let config = client_config(&pki.ca.der, None);
    let mut sub = TlsRaw::connected(tls, config.clone(), "bulk-sub");
    sub.subscribe(1, "bulk/#", 0);
    let mut publisher = TlsRaw::connected(tls, config, "bulk-pub");

    // Per round 600 x 64 KiB + 300 KiB: more than loopback socket buffers hold (4 MiB sent plus
    // 32 MiB received here), within the 1000 messages the subscriber's queue holds.
    const N: u16 = 600;
    let body = |round: u16, i: u16| format!("{round}{i:04}").repeat(64 * 1024 / 5).into_bytes();
    let big = vec![0xa5u8; 300 * 1024];
    for round in 1..=3 {
        let mut burst = Vec::new();
        for i in 1..=N {
            burst.extend(publish_packet(
                "bulk/small",
                1,
                false,
                false,
                i,
                &body(round, i),
            ));
        }
        burst.extend(publish_packet("bulk/big", 1, false, false, N + 1, &big));
        let writer = std::thread::spawn(move || {
            publisher.send(&burst);
            for i in 1..=N + 1 {
                assert_eq!(
                    publisher.read_packet(),
                    Some(ack_packet(0x40, i)),
                    "PUBACK {i}"
                );
            }
            publisher
        });
        publisher = writer.join().expect("publisher");
        for i in 1..=N + 1 {
            let p = sub.read_packet().unwrap_or_else(|| {
                panic!("round {round}: delivery {i} missing; log:\n{}", b.log())
            });
            let (_, qos, _, topic, _, payload) = parse_publish(&p);
            assert_eq!(qos, 0);
            if i <= N {
                assert_eq!(topic, "bulk/small");
                assert!(
                    payload == body(round, i),
                    "round {round}: message {i} corrupt or out of order"
                );
            } else {
                assert_eq!((topic.as_str(), payload.len()), ("bulk/big", big.len()));
                assert!(payload == big);
            }
        }
    }
    sub.ping();
    publisher.ping();
}

/// issue #9 item 3: the broker refuses to start (before printing `listening on`) when a TLS
/// file cannot be used, naming the file; `--check-config` reports the same.
#[test]
fn unusable_tls_files_stop_the_start() {
    let pki = Pki::new();
    let other = pki.ca.server("other", 9);
    let (_, other_key) = other.write(pki.dir.path(), "other");
    let cases = [
        (pki.path("missing.crt"), pki.key_file.clone(), "missing.crt"),
        (
            pki.cert_file.clone(),
            other_key.clone(),
            "is not the key of",
        ),
        (
            pki.ca_file.clone(),
            pki.key_file.clone(),
            "is not the key of",
        ),
    ];
    for (cert, key, needle) in cases {
        let config = pki.path("bad.toml");
        std::fs::write(
            &config,
            format!(
                "[listener]\nbind = \"127.0.0.1:0\"\n[tls]\nenabled = true\nbind = \"127.0.0.1:0\"\ncert_file = {cert:?}\nkey_file = {key:?}\n"
            ),
        )
        .expect("config");
        for args in [["--config"], ["--check-config"]] {
            let out = run(env!("CARGO_BIN_EXE_brokerd"), &[args[0], Pki::s(&config)]);
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(!out.status.success(), "{}", text(&out));
            assert!(stderr.contains(needle), "{args:?} {needle}: {}", text(&out));
            assert!(
                !String::from_utf8_lossy(&out.stdout).contains("listening"),
                "{}",
                text(&out)
            );
        }
    }
}

/// issue #9 item 3: limits.max_connections counts the connections of both listeners together.
#[test]
fn max_connections_covers_both_listeners() {
    let pki = Pki::new();
    let b = BrokerProc::start(&format!("{}[limits]\nmax_connections = 2\n", pki.toml("")));
    let tls = tls_addr(&b);
    let config = client_config(&pki.ca.der, None);
    let mut plain = Raw::connected(b.addr, "held-plain");
    let mut secure = TlsRaw::connected(tls, config.clone(), "held-tls");
    // Both listeners are full now.
    assert!(
        TlsRaw::connect(tls, config.clone())
            .map(|mut c| {
                c.send(&connect_packet("third-tls", true, 60));
                c.read_packet()
            })
            .ok()
            .flatten()
            .is_none(),
        "a third connection (TLS) was served"
    );
    let mut third = Raw::connect(b.addr);
    third.send(&connect_packet("third-plain", true, 60));
    assert_eq!(third.read_within(WAIT), RawRead::Closed);
    b.wait_log_lines(&["limits.max_connections reached"], 2);
    // Freeing one makes room on either listener (the permit goes just after the log line).
    secure.send(&disconnect_packet());
    b.wait_disconnected("held-tls", 1);
    let deadline = Instant::now() + WAIT;
    loop {
        if let Ok(mut c) = TlsRaw::connect(tls, config.clone()) {
            c.send(&connect_packet("later-tls", true, 60));
            if c.read_packet() == Some(CONNACK_OK.to_vec()) {
                c.ping();
                break;
            }
        }
        assert!(Instant::now() < deadline, "no room after a disconnect");
        std::thread::sleep(Duration::from_millis(20));
    }
    plain.ping();
}

/// A connection to the TLS listener refused before or in the handshake, or closed without a
/// CONNACK: true; a CONNACK: false.
fn tls_refused(addr: SocketAddr, config: Arc<ClientConfig>, client_id: &str) -> bool {
    match TlsRaw::connect(addr, config) {
        Err(_) => true,
        Ok(mut c) => {
            c.send(&connect_packet(client_id, true, 60));
            c.read_packet().is_none()
        }
    }
}

/// issue #9 items 2 and 3: with use_identity_as_username the certificate CN is the username
/// the ACL file sees, not the CONNECT's: CN `device-42` (CONNECT username `admin`, whose
/// section may do anything) may write only `devices/device-42/#` and `status/%u`, so its
/// PUBLISHes elsewhere are acknowledged and dropped, and its SUBSCRIBE to a filter the ACL
/// denies gets 0x80 while `commands/device-42/#` is granted.
#[test]
fn certificate_cn_is_the_username_its_acl_section_applies_to() {
    let pki = Pki::new();
    let acl = pki.path("acl");
    std::fs::write(
        &acl,
        "user device-42\n\
         topic write devices/device-42/#\n\
         topic read commands/device-42/#\n\
         user admin\n\
         topic readwrite #\n\
         user watcher\n\
         topic read devices/#\n\
         topic read status/#\n\
         pattern write status/%u\n",
    )
    .expect("acl file");
    let b = BrokerProc::start(&format!(
        "{}[auth]\nacl_file = {:?}\n",
        pki.mtls_toml("use_identity_as_username = true\n"),
        acl
    ));
    let tls = tls_addr(&b);

    // A plain-listener client that may read everything the device could write.
    let mut watcher = Raw::connected_by(b.addr, &RawConnect::new("watcher-1").username("watcher"));
    watcher.subscribe_many(1, &[("devices/#", 1), ("status/#", 1)], &[1, 1]);

    let device = pki.ca.client(Some("device-42"));
    let mut d = TlsRaw::connect(tls, client_config(&pki.ca.der, Some(&device))).expect("TLS");
    d.send(
        &RawConnect::new("dev-42")
            .username("admin")
            .password(b"anything")
            .encode(),
    );
    assert_eq!(d.read_packet(), Some(CONNACK_OK.to_vec()));

    // SUBACK: 0x80 where the device's section allows no read, its QoS where it does.
    d.send(&subscribe_packet(
        1,
        &[("devices/device-99/#", 1), ("commands/device-42/#", 1)],
    ));
    assert_eq!(
        d.read_packet(),
        Some(vec![0x90, 0x04, 0x00, 0x01, 0x80, 0x01]),
        "SUBACK"
    );

    // Denied (another device's topic; %u is the CN, not `admin`), then allowed, in order:
    // every one acknowledged, only the allowed ones delivered.
    let publishes = [
        ("devices/device-99/temp", 2, false),
        ("status/admin", 3, false),
        ("devices/device-42/temp", 4, true),
        ("status/device-42", 5, true),
    ];
    for (topic, pkid, _) in publishes {
        d.send(&publish_packet(
            topic,
            1,
            false,
            false,
            pkid,
            topic.as_bytes(),
        ));
        assert_eq!(
            d.read_packet(),
            Some(ack_packet(0x40, pkid)),
            "PUBACK {topic}"
        );
    }
    for (topic, _, allowed) in publishes {
        if allowed {
            let (_, _, _, got, pkid, _) = parse_publish(&watcher.expect_packet("PUBLISH"));
            assert_eq!(got, topic, "a denied PUBLISH was delivered");
            watcher.send(&ack_packet(0x40, pkid));
        }
    }
    watcher.ping();
    d.ping();
    let log = b.wait_log_lines(&["PUBLISH denied by the ACL", "devices/device-99/temp"], 1);
    let line = log
        .lines()
        .find(|l| l.contains("PUBLISH denied by the ACL"))
        .expect("denial line");
    assert!(line.contains("dev-42"), "{line}");
    b.wait_log_lines(&["client connected", "username=device-42"], 1);
}

/// issue #9 items 3 and 5: max_connections_per_ip counts both listeners together: with a
/// limit of 1, a plain connection from 127.0.0.1 makes a TLS one from there refused at accept
/// (before any handshake), and a TLS connection makes a plain one refused.
#[test]
fn connections_per_ip_count_plain_and_tls_together() {
    let pki = Pki::new();
    let limits = "[limits]\nmax_connections_per_ip = 1\n";
    let config = client_config(&pki.ca.der, None);

    let b = BrokerProc::start(&format!("{}{limits}", pki.toml("")));
    let mut plain = Raw::connected(b.addr, "held-plain");
    assert!(
        tls_refused(tls_addr(&b), config.clone(), "second-tls"),
        "a TLS connection beside a plain one from the same address was served"
    );
    b.wait_log_lines(
        &[
            "connection refused at accept",
            "limit=max_connections_per_ip",
        ],
        1,
    );
    assert!(
        !b.log().contains("TLS handshake"),
        "the refused connection reached the handshake; log:\n{}",
        b.log()
    );
    plain.ping();
    drop(b);

    let b = BrokerProc::start(&format!("{}{limits}", pki.toml("")));
    let mut secure = TlsRaw::connected(tls_addr(&b), config, "held-tls");
    let mut second = Raw::connect(b.addr);
    second.send(&connect_packet("second-plain", true, 60));
    assert_eq!(second.read_within(WAIT), RawRead::Closed);
    b.wait_log_lines(
        &[
            "connection refused at accept",
            "limit=max_connections_per_ip",
        ],
        1,
    );
    secure.ping();
}

/// issue #9 items 3 and 5: failed TLS handshakes are connection log lines: above
/// max_conn_log_lines_per_s they are folded into the summary (as protocol errors), and every
/// one is either written or counted.
#[test]
fn failed_tls_handshakes_are_folded_above_the_log_threshold() {
    const THRESHOLD: usize = 5;
    const ATTEMPTS: u64 = 60;
    let pki = Pki::new();
    let b = BrokerProc::start(&format!(
        "{}[limits]\nmax_conn_log_lines_per_s = {THRESHOLD}\n",
        pki.toml("")
    ));
    let tls = tls_addr(&b);
    for i in 0..ATTEMPTS {
        // Plain MQTT on the TLS port: a TLS error, one failed handshake each.
        let mut raw = Raw::connect(tls);
        raw.send(&connect_packet(&format!("not-tls-{i}"), true, 60));
        // The broker logs (or counts) before it closes: wait for the close.
        let _ = raw.drain_until_closed(WAIT);
    }
    let log = std::fs::read_to_string(b.stop().path().join("stderr.log")).expect("broker log");
    let written: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("TLS handshake failed"))
        .collect();
    let folded: u64 = log
        .lines()
        .filter(|l| l.contains("connection log lines folded"))
        .map(|l| {
            let at = l.find(" protocol_errors=").expect("protocol_errors field") + 17;
            let digits: String = l[at..].chars().take_while(char::is_ascii_digit).collect();
            digits.parse::<u64>().expect("a count")
        })
        .sum();
    assert!(folded > 0, "nothing was folded; log:\n{log}");
    assert_eq!(written.len() as u64 + folded, ATTEMPTS, "log:\n{log}");
    let mut per_second = std::collections::BTreeMap::<&str, usize>::new();
    for l in &written {
        *per_second.entry(l.get(..19).unwrap_or("")).or_default() += 1;
    }
    // A line allowed at the very end of a second may carry the next second's timestamp.
    let busiest = per_second.values().copied().max().unwrap_or(0);
    assert!(busiest <= THRESHOLD + 1, "{per_second:?}; log:\n{log}");
}
