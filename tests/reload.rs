//! Live reload (issue #10 item 6): SIGHUP re-reads the configuration file of the real broker
//! binary. What can change while running changes (log level, publish rates, password and ACL
//! files) without dropping anyone; what needs a restart is reported and kept; a bad file
//! changes nothing.

mod common;

use std::io::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

const CONNACK_OK: [u8; 4] = [0x20, 0x02, 0x00, 0x00];
const CONNACK_NOT_AUTHORIZED: [u8; 4] = [0x20, 0x02, 0x00, 0x05];

/// Replaces the broker's configuration file with `toml` (with the listener and admin port
/// lines the harness wrote, so those are no change unless `toml` has its own sections).
fn rewrite(b: &BrokerProc, toml: &str) {
    let listener = if toml.contains("[listener]") {
        ""
    } else {
        "[listener]\nbind = \"127.0.0.1:0\"\n"
    };
    let http = if toml.contains("[http]") {
        ""
    } else {
        "\n[http]\nbind = \"127.0.0.1:0\"\n"
    };
    std::fs::write(&b.config_path, format!("{listener}{toml}\n{http}")).expect("rewrite config");
}

/// Sends SIGHUP and waits for the `n`-th line saying how that reload ended (`outcome`:
/// "config reloaded" or "config reload rejected"); returns the log.
fn hup(b: &BrokerProc, outcome: &str, n: usize) -> String {
    b.signal("HUP");
    b.wait_log_lines(&[outcome], n)
}

/// The last log line containing `needle`.
fn last_line<'a>(log: &'a str, needle: &str) -> &'a str {
    log.lines()
        .rev()
        .find(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("no line with {needle:?}; log:\n{log}"))
}

/// Publishes `n` QoS 1 messages one after the other on `c` (each PUBACK awaited); returns how
/// long it took.
fn publish_n(c: &mut Raw, n: u16) -> Duration {
    let start = Instant::now();
    for id in 1..=n {
        c.send(&publish_packet("rate/t", 1, false, false, id, b"x"));
        assert_eq!(c.expect_packet("PUBACK"), ack_packet(0x40, id));
    }
    start.elapsed()
}

/// `brokerd passwd FILE USER --password-stdin` with few iterations (fast logins in tests).
fn add_user(file: &Path, user: &str, password: &str) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_brokerd"))
        .args(["passwd", "--password-stdin", "--iterations", "1000"])
        .arg(file)
        .arg(user)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("brokerd passwd");
    let mut stdin = child.stdin.take().expect("stdin");
    writeln!(stdin, "{password}").expect("password");
    drop(stdin);
    assert!(
        child.wait().expect("wait").success(),
        "brokerd passwd failed"
    );
}

fn login(b: &BrokerProc, id: &str, user: &str, password: &str) -> (Raw, Vec<u8>) {
    let mut raw = Raw::connect(b.addr);
    raw.send(
        &RawConnect::new(id)
            .username(user)
            .password(password.as_bytes())
            .encode(),
    );
    let ack = raw.read_packet().unwrap_or_default();
    (raw, ack)
}

/// issue #10 item 6: a new `[log] level` applies on SIGHUP: debug lines appear on a connection
/// that was open before, and the info line names the changed key.
#[test]
fn log_level_changes_on_sighup() {
    let dir = tempfile::tempdir().expect("tempdir");
    let b = BrokerProc::start_with(dir, "[log]\nlevel = \"info\"\n", |cmd| {
        cmd.env_remove("RUST_LOG");
    });
    let mut c = Raw::connected(b.addr, "level-client");
    // An acknowledgement for a packet id never sent is logged at debug only.
    c.send(&ack_packet(0x40, 4242));
    c.ping();
    assert!(
        !b.log().contains("unknown packet id"),
        "debug line at info:\n{}",
        b.log()
    );
    rewrite(&b, "[log]\nlevel = \"debug\"\n");
    let log = hup(&b, "config reloaded", 1);
    assert!(
        last_line(&log, "config reloaded").contains("changed=log.level"),
        "{log}"
    );
    c.send(&ack_packet(0x40, 4243));
    b.wait_log_lines(&["DEBUG", "unknown packet id", "pkid=4243"], 1);
    c.ping();
    b.stop();
}

/// issue #10 item 6: a lowered `limits.max_publish_rate` applies to connections made after the
/// reload (documented: connected clients keep the rate they started with); a broken file is
/// then rejected whole: an error line, a connected client keeps working, and the reloaded rate
/// still applies to the next connection.
#[test]
fn publish_rate_applies_to_new_connections_and_a_broken_file_changes_nothing() {
    let b = BrokerProc::start("[limits]\nmax_publish_rate = 0\n");
    let mut before = Raw::connected(b.addr, "before-reload");
    rewrite(&b, "[limits]\nmax_publish_rate = 20\n");
    let log = hup(&b, "config reloaded", 1);
    assert!(
        last_line(&log, "config reloaded").contains("changed=limits.max_publish_rate"),
        "{log}"
    );
    // 40 messages at 20/s (a burst of 2, then the rate) need at least 1.5 s; unlimited, the
    // connection from before the reload needs a fraction of that.
    let mut after = Raw::connected(b.addr, "after-reload");
    let limited = publish_n(&mut after, 40);
    assert!(limited >= Duration::from_millis(1500), "{limited:?}");
    let unlimited = publish_n(&mut before, 40);
    assert!(unlimited < limited / 2, "{unlimited:?} vs {limited:?}");

    // Broken: a value of the wrong type. Nothing changes; the error names the key.
    rewrite(
        &b,
        "[limits]\nmax_publish_rate = \"fast\"\n[log]\nlevel = \"trace\"\n",
    );
    let log = hup(&b, "config reload rejected", 1);
    let line = last_line(&log, "config reload rejected");
    assert!(
        line.contains("ERROR") && line.contains("max_publish_rate"),
        "{line}"
    );
    before.ping();
    after.ping();
    let mut next = Raw::connected(b.addr, "after-rejected");
    let still = publish_n(&mut next, 40);
    assert!(still >= Duration::from_millis(1500), "{still:?}");
    assert!(!b.log().contains("TRACE"), "the rejected level was applied");
    b.stop();
}

/// issue #10 item 6: a user added to the password file and an ACL rule added for them take
/// effect on SIGHUP, while a client connected before keeps its connection and receives what
/// the new user publishes; an unreadable password file is rejected whole (old users still log
/// in, the error names the file).
#[test]
fn new_user_and_acl_rule_apply_without_dropping_clients() {
    let dir = tempfile::tempdir().expect("tempdir");
    let passwd = dir.path().join("passwd");
    let acl = dir.path().join("acl");
    add_user(&passwd, "alice", "alice-pw");
    std::fs::write(&acl, "user alice\ntopic readwrite a/#\n").expect("acl");
    let auth = format!(
        "[auth]\nallow_anonymous = false\npassword_file = \"{}\"\nacl_file = \"{}\"\n",
        passwd.display(),
        acl.display()
    );
    let b = BrokerProc::start_in(dir, &auth);
    let (mut alice, ack) = login(&b, "alice", "alice", "alice-pw");
    assert_eq!(ack, CONNACK_OK);
    alice.subscribe(1, "a/#", 0);
    let (_, ack) = login(&b, "bob-early", "bob", "bob-pw");
    assert_eq!(ack, CONNACK_NOT_AUTHORIZED, "bob before he exists");

    add_user(&b.data_dir().join("passwd"), "bob", "bob-pw");
    std::fs::write(
        b.data_dir().join("acl"),
        "user alice\ntopic readwrite a/#\nuser bob\ntopic write a/bob\n",
    )
    .expect("acl");
    let log = hup(&b, "config reloaded", 1);
    assert!(
        last_line(&log, "config reloaded").contains("changed=none"),
        "{log}"
    );
    let (mut bob, ack) = login(&b, "bob", "bob", "bob-pw");
    assert_eq!(ack, CONNACK_OK, "bob after the reload; log:\n{}", b.log());
    bob.send(&publish_packet("a/bob", 0, false, false, 0, b"hi from bob"));
    let (_, _, _, topic, _, payload) = parse_publish(&alice.expect_packet("PUBLISH"));
    assert_eq!(
        (topic.as_str(), &payload[..]),
        ("a/bob", &b"hi from bob"[..])
    );

    // An unreadable password file: rejected, the running users are kept.
    let missing = b.data_dir().join("no-such-passwd");
    rewrite(
        &b,
        &auth.replace(
            &*passwd.display().to_string(),
            &missing.display().to_string(),
        ),
    );
    let log = hup(&b, "config reload rejected", 1);
    assert!(
        last_line(&log, "config reload rejected").contains("no-such-passwd"),
        "{log}"
    );
    let (_, ack) = login(&b, "bob-again", "bob", "bob-pw");
    assert_eq!(ack, CONNACK_OK);
    alice.ping();
    b.stop();
}

/// issue #10 item 6: keys that need a restart (a listener address, a queue limit, persistence)
/// are named in one warn line and not applied: the broker keeps listening where it was.
#[test]
fn restart_only_keys_are_reported_and_kept() {
    let b = BrokerProc::start("");
    let mut c = Raw::connected(b.addr, "kept");
    let data = b.data_dir().join("elsewhere");
    rewrite(
        &b,
        &format!(
            "[listener]\nbind = \"127.0.0.1:1\"\n[limits]\nmax_inflight = 5\nmax_publish_rate = 100\n\
             [persistence]\nenabled = true\npath = \"{}\"\n",
            data.display()
        ),
    );
    let log = hup(&b, "config reloaded", 1);
    let warn = last_line(&log, "need a restart");
    assert!(warn.contains("WARN"), "{warn}");
    for key in [
        "listener.bind",
        "limits.max_inflight",
        "persistence.enabled",
        "persistence.path",
    ] {
        assert!(warn.contains(key), "{key} missing: {warn}");
    }
    assert!(!warn.contains("max_publish_rate"), "{warn}");
    assert!(
        !warn.contains("http."),
        "an unchanged section reported: {warn}"
    );
    assert!(
        last_line(&log, "config reloaded").contains("changed=limits.max_publish_rate"),
        "{log}"
    );
    assert!(!data.exists(), "persistence was switched on");
    c.ping();
    let mut d = Raw::connected(b.addr, "same-port");
    d.ping();
    b.stop();
}

/// Whether a new client gets a CONNACK (false: closed at once, as at `max_connections`).
fn admitted(b: &BrokerProc, id: &str) -> Option<Raw> {
    let mut raw = Raw::connect(b.addr);
    raw.send(&connect_packet(id, true, 60));
    match raw.read_packet() {
        Some(ack) => {
            assert_eq!(ack, CONNACK_OK, "{id}");
            Some(raw)
        }
        None => None,
    }
}

/// issue #10 item 6: `limits.max_connections` lowered below the connections open refuses new
/// clients and keeps the connected ones (documented: nobody is closed for it); raised again,
/// new clients are admitted at once.
#[test]
fn max_connections_lowered_and_raised_on_sighup() {
    let b = BrokerProc::start("[limits]\nmax_connections = 4\n");
    let mut one = admitted(&b, "one").expect("first client");
    let mut two = admitted(&b, "two").expect("second client");
    rewrite(&b, "[limits]\nmax_connections = 1\n");
    let log = hup(&b, "config reloaded", 1);
    assert!(
        last_line(&log, "config reloaded").contains("changed=limits.max_connections"),
        "{log}"
    );
    assert!(
        admitted(&b, "refused").is_none(),
        "admitted over the lowered limit"
    );
    b.wait_log_lines(
        &[
            "WARN",
            "limits.max_connections reached",
            "max_connections=1",
        ],
        1,
    );
    one.ping();
    two.ping();
    // Both leave: the slots the lowered limit took back are absorbed as they close, and then
    // exactly one new client fits.
    drop(two);
    drop(one);
    let deadline = Instant::now() + WAIT;
    let mut three = loop {
        if let Some(c) = admitted(&b, "three") {
            break c;
        }
        assert!(Instant::now() < deadline, "no slot after both clients left");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(
        admitted(&b, "four").is_none(),
        "two clients under max_connections = 1"
    );
    rewrite(&b, "[limits]\nmax_connections = 3\n");
    hup(&b, "config reloaded", 2);
    let mut four = admitted(&b, "four-again").expect("admitted after raising the limit");
    let mut five = admitted(&b, "five").expect("admitted after raising the limit");
    assert!(
        admitted(&b, "six").is_none(),
        "four clients under max_connections = 3"
    );
    three.ping();
    four.ping();
    five.ping();
    b.stop();
}

/// issue #10 item 6: a broken certificate rejects the whole reload: a log level changed in the
/// same file is not applied (no debug line afterwards), the error names the TLS problem, and a
/// plain client connected before keeps working.
#[test]
fn broken_certificate_rejects_the_whole_reload() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = certs::Ca::new("reload test CA");
    let (cert, key) = ca.server("127.0.0.1", 1).write(dir.path(), "server");
    let tls = format!(
        "[tls]\nenabled = true\nbind = \"127.0.0.1:0\"\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
        cert.display(),
        key.display()
    );
    let b = BrokerProc::start_with(dir, &format!("{tls}[log]\nlevel = \"info\"\n"), |cmd| {
        cmd.env_remove("RUST_LOG");
    });
    let mut c = Raw::connected(b.addr, "plain-before");
    std::fs::write(&cert, "-----BEGIN CERTIFICATE-----\nnot base64 at all\n").expect("break");
    rewrite(&b, &format!("{tls}[log]\nlevel = \"debug\"\n"));
    let log = hup(&b, "config reload rejected", 1);
    let line = last_line(&log, "config reload rejected");
    assert!(line.contains("ERROR") && line.contains("tls"), "{line}");
    c.send(&ack_packet(0x40, 4244));
    c.ping();
    assert!(
        !b.log().contains("unknown packet id"),
        "the rejected log level was applied:\n{}",
        b.log()
    );
    assert!(!b.log().contains("config reloaded"), "{}", b.log());
    b.stop();
}

/// issue #10 item 6: `allow_anonymous = false` written into the file applies on SIGHUP: the
/// reload says the new rule, a new anonymous client gets CONNACK 0x05, and an anonymous client
/// connected before stays connected.
#[test]
fn anonymous_rule_changes_on_sighup() {
    let b = BrokerProc::start("");
    let mut before = admitted(&b, "anon-before").expect("anonymous allowed on loopback");
    rewrite(&b, "[auth]\nallow_anonymous = false\n");
    let log = hup(&b, "config reloaded", 1);
    assert!(
        last_line(&log, "config reloaded").contains("changed=auth.allow_anonymous"),
        "{log}"
    );
    assert!(
        log.contains("config reload: anonymous clients refused ([auth] allow_anonymous = false)"),
        "{log}"
    );
    let mut raw = Raw::connect(b.addr);
    raw.send(&connect_packet("anon-after", true, 60));
    assert_eq!(raw.read_packet(), Some(CONNACK_NOT_AUTHORIZED.to_vec()));
    before.ping();
    b.stop();
}
