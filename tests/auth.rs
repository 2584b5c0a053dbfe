//! Users, passwords, ACLs and the anonymous rule (issue #9 items 1, 2 and 4), against the real
//! broker binary with real files: password files written by Debian's `mosquitto_passwd`, the
//! libargon2 `argon2` tool and `brokerd passwd`, and Mosquitto-syntax ACL files.

mod common;

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use common::*;

const CONNACK_OK: [u8; 4] = [0x20, 0x02, 0x00, 0x00];
const CONNACK_UNAVAILABLE: [u8; 4] = [0x20, 0x02, 0x00, 0x03];
const CONNACK_NOT_AUTHORIZED: [u8; 4] = [0x20, 0x02, 0x00, 0x05];

/// Writes `text` to `dir/name` with mode 0600 and returns the path.
fn private_file(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write file");
    chmod(&path, 0o600);
    path
}

fn chmod(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

fn mode_of(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).expect("stat").permissions().mode() & 0o7777
}

/// Runs `program args` in `dir` with `stdin`, bounded by `WAIT`: (status, stdout, stderr).
fn run(program: &str, args: &[&str], stdin: &[u8], dir: &Path) -> (ExitStatus, String, String) {
    let mut child = Command::new(program)
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    let mut input = child.stdin.take().expect("stdin");
    let _ = input.write_all(stdin);
    drop(input);
    let deadline = Instant::now() + WAIT;
    while child.try_wait().expect("wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{program} {args:?} did not exit within {WAIT:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let out = child.wait_with_output().expect("output");
    (
        out.status,
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn brokerd(args: &[&str], stdin: &[u8], dir: &Path) -> (ExitStatus, String, String) {
    run(env!("CARGO_BIN_EXE_brokerd"), args, stdin, dir)
}

/// Starts the broker on `toml` (written to `dir/broker.toml`, bound to 127.0.0.1:0) and
/// asserts it refuses to start: exits non-zero without listening. Returns its stderr.
fn start_refused(dir: &Path, toml: &str) -> String {
    let config = dir.join("refused.toml");
    std::fs::write(
        &config,
        format!("[listener]\nbind = \"127.0.0.1:0\"\n{toml}"),
    )
    .unwrap();
    let (status, out, err) = brokerd(&["--config", config.to_str().unwrap()], b"", dir);
    assert!(!status.success(), "started; stdout {out}; stderr {err}");
    assert!(!out.contains("listening on"), "stdout {out}");
    err
}

/// The first packet the broker answers `c` with (None: closed without one).
fn reply(addr: std::net::SocketAddr, c: &RawConnect) -> Option<Vec<u8>> {
    let mut raw = Raw::connect(addr);
    raw.send(&c.encode());
    raw.read_packet()
}

fn login(addr: std::net::SocketAddr, id: &str, user: &str, password: &[u8]) -> Option<Vec<u8>> {
    reply(addr, &RawConnect::new(id).username(user).password(password))
}

/// A broker with `[auth]` `auth` (paths are written into it by the caller) in `dir`.
fn broker_in(dir: tempfile::TempDir, auth: &str) -> BrokerProc {
    BrokerProc::start_in(dir, &format!("[auth]\n{auth}\n"))
}

/// `mosquitto_passwd ARGS` (Debian's, from the mosquitto package).
fn mosquitto_passwd(dir: &Path, args: &[&str]) {
    let (status, out, err) = run("mosquitto_passwd", args, b"", dir);
    assert!(status.success(), "mosquitto_passwd {args:?}: {out} {err}");
}

// ---- item 1: users --------------------------------------------------------------------------

/// issue #9 item 1: a file written by Debian's `mosquitto_passwd` (its default `$7$` entry and
/// a `-H sha512` `$6$` one) logs in with the real passwords; a wrong password, and the hash
/// string itself sent as the password (what 0.1 accepted), get 0x05.
#[test]
fn mosquitto_passwd_files_log_in_with_the_real_password() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("passwd");
    let f = file.to_str().unwrap();
    mosquitto_passwd(dir.path(), &["-c", "-b", f, "alice", "alice-pw"]);
    mosquitto_passwd(dir.path(), &["-H", "sha512", "-b", f, "bob", "bob-pw"]);
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(
        text.contains("alice:$7$") && text.contains("bob:$6$"),
        "{text}"
    );
    chmod(&file, 0o600);
    let b = broker_in(
        dir,
        &format!("allow_anonymous = false\npassword_file = \"{f}\""),
    );
    assert_eq!(
        login(b.addr, "a1", "alice", b"alice-pw").as_deref(),
        Some(&CONNACK_OK[..])
    );
    assert_eq!(
        login(b.addr, "b1", "bob", b"bob-pw").as_deref(),
        Some(&CONNACK_OK[..])
    );
    let alice_hash = text
        .lines()
        .find_map(|l| l.strip_prefix("alice:"))
        .unwrap()
        .to_owned();
    for (user, pw) in [
        ("alice", b"bob-pw".as_slice()),
        ("alice", alice_hash.as_bytes()),
    ] {
        assert_eq!(
            login(b.addr, "x", user, pw).as_deref(),
            Some(&CONNACK_NOT_AUTHORIZED[..]),
            "{user}"
        );
    }
}

/// issue #9 item 1: a `$argon2id$` entry as Mosquitto 2.1 stores it (the encoded string of
/// libargon2, here from Debian's `argon2` tool with Mosquitto 2.1's parameters: t=1, m=47104
/// KiB, p=1, 64-byte salt and hash) logs in with its password only.
#[test]
fn argon2id_entry_from_libargon2_logs_in() {
    let dir = tempfile::tempdir().unwrap();
    let salt = "0123456789abcdef".repeat(4);
    let (status, out, err) = run(
        "argon2",
        &[
            &salt, "-id", "-t", "1", "-k", "47104", "-p", "1", "-l", "64", "-e",
        ],
        b"argon-pw",
        dir.path(),
    );
    assert!(status.success(), "argon2: {err}");
    let entry = out.trim();
    assert!(
        entry.starts_with("$argon2id$v=19$m=47104,t=1,p=1$"),
        "{entry}"
    );
    let file = private_file(dir.path(), "passwd", &format!("carol:{entry}\n"));
    let f = file.to_str().unwrap().to_owned();
    let b = broker_in(
        dir,
        &format!("allow_anonymous = false\npassword_file = \"{f}\""),
    );
    assert_eq!(
        login(b.addr, "c1", "carol", b"argon-pw").as_deref(),
        Some(&CONNACK_OK[..])
    );
    assert_eq!(
        login(b.addr, "c2", "carol", b"argon-pw ").as_deref(),
        Some(&CONNACK_NOT_AUTHORIZED[..])
    );
}

/// issue #9 item 1: `brokerd passwd FILE USER --password-stdin` creates the file with mode
/// 0600 and a `$7$` entry (210,000 iterations, 64-byte salt); the broker logs the user in with
/// that password; running it again replaces the password (the old one is then refused) and
/// keeps the other users.
#[test]
fn brokerd_passwd_writes_entries_the_broker_accepts() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("passwd");
    let f = file.to_str().unwrap().to_owned();
    let (status, out, err) = brokerd(
        &["passwd", &f, "dave", "--password-stdin"],
        b"first pw\n",
        dir.path(),
    );
    assert!(status.success(), "{out} {err}");
    assert!(out.contains("added user dave"), "{out}");
    assert_eq!(mode_of(&file), 0o600);
    let (status, _, err) = brokerd(
        &[
            "passwd",
            &f,
            "erin",
            "--password-stdin",
            "--iterations",
            "1000",
        ],
        b"erin-pw\r\n",
        dir.path(),
    );
    assert!(status.success(), "{err}");
    let text = std::fs::read_to_string(&file).unwrap();
    let dave = text
        .lines()
        .find_map(|l| l.strip_prefix("dave:"))
        .expect("dave's line");
    let fields: Vec<&str> = dave.split('$').collect();
    assert_eq!(&fields[..3], ["", "7", "210000"], "{dave}");
    use base64::Engine as _;
    let salt = base64::engine::general_purpose::STANDARD
        .decode(fields[3])
        .unwrap();
    assert_eq!(salt.len(), 64);
    assert!(!text.contains("first pw"));

    let config = format!("[auth]\nallow_anonymous = false\npassword_file = \"{f}\"\n");
    let b = BrokerProc::start(&config);
    assert_eq!(
        login(b.addr, "d1", "dave", b"first pw").as_deref(),
        Some(&CONNACK_OK[..])
    );
    assert_eq!(
        login(b.addr, "e1", "erin", b"erin-pw").as_deref(),
        Some(&CONNACK_OK[..])
    );
    drop(b);

    let (status, out, err) = brokerd(
        &["passwd", &f, "dave", "--password-stdin"],
        b"second pw\n",
        dir.path(),
    );
    assert!(status.success(), "{out} {err}");
    assert!(out.contains("updated user dave"), "{out}");
    let b = BrokerProc::start(&config);
    assert_eq!(
        login(b.addr, "d2", "dave", b"second pw").as_deref(),
        Some(&CONNACK_OK[..])
    );
    assert_eq!(
        login(b.addr, "d3", "dave", b"first pw").as_deref(),
        Some(&CONNACK_NOT_AUTHORIZED[..])
    );
    assert_eq!(
        login(b.addr, "e2", "erin", b"erin-pw").as_deref(),
        Some(&CONNACK_OK[..])
    );

    // Bad input: no password, a username Mosquitto could not read back, too few iterations.
    for (args, stdin) in [
        (vec!["passwd", &f, "x", "--password-stdin"], &b""[..]),
        (vec!["passwd", &f, "x", "--password-stdin"], b"\n"),
        (vec!["passwd", &f, "a:b", "--password-stdin"], b"pw\n"),
        (
            vec!["passwd", &f, "x", "--password-stdin", "--iterations", "999"],
            b"pw\n",
        ),
        (vec!["passwd", &f, "x"], b"pw\n"),
    ] {
        let (status, _, err) = brokerd(&args, stdin, dir.path());
        assert!(!status.success(), "{args:?} accepted");
        assert!(err.starts_with("brokerd: error: "), "{err}");
    }
    assert_eq!(std::fs::read_to_string(&file).unwrap().lines().count(), 2);
}

/// issue #9 item 1: a plain `user:password` line or an unknown scheme stops the start-up with
/// the file and the line (and never shows the password); `password_format = "plaintext"`
/// accepts the plain line, logs a warning, and logs in with that password.
#[test]
fn plain_or_unknown_entries_are_refused_unless_plaintext_is_chosen() {
    let dir = tempfile::tempdir().unwrap();
    let lines = "# users\nalice:$7$101$mCaslsJP8VKS6dfw$8Yz8aeAaC8X5jgJG3Xa7qwyHPXAgGRUxiVTVNQigjw2W8G7zNPTIpgMCMqr23wb30De826ZEyu7EcuyqOu2qyw==\nbob:plain-secret\n";
    let file = private_file(dir.path(), "passwd", lines);
    let f = file.to_str().unwrap().to_owned();
    let err = start_refused(dir.path(), &format!("[auth]\npassword_file = \"{f}\"\n"));
    assert!(err.contains(&format!("password file {f} line 3")), "{err}");
    assert!(err.contains("password_format = \"plaintext\""), "{err}");
    assert!(!err.contains("plain-secret"), "{err}");

    let unknown = private_file(dir.path(), "passwd5", "carol:$5$rounds=5000$abc$def\n");
    let err = start_refused(
        dir.path(),
        &format!("[auth]\npassword_file = \"{}\"\n", unknown.display()),
    );
    assert!(
        err.contains("line 1") && err.contains("unknown hash scheme $5$"),
        "{err}"
    );

    // --check-config loads it the same way.
    let config = private_file(
        dir.path(),
        "check.toml",
        &format!("[auth]\npassword_file = \"{f}\"\n"),
    );
    let (status, _, err) = brokerd(
        &["--check-config", config.to_str().unwrap()],
        b"",
        dir.path(),
    );
    assert!(!status.success() && err.contains("line 3"), "{err}");

    let b = broker_in(
        dir,
        &format!("password_file = \"{f}\"\npassword_format = \"plaintext\""),
    );
    b.wait_log("plain-text passwords");
    assert_eq!(
        login(b.addr, "b1", "bob", b"plain-secret").as_deref(),
        Some(&CONNACK_OK[..])
    );
    assert_eq!(
        login(b.addr, "a1", "alice", b"secret").as_deref(),
        Some(&CONNACK_OK[..])
    );
    assert!(!b.log().contains("plain-secret"));
}

/// issue #9 item 4: a password file readable by group or others stops the start-up (and
/// --check-config) with the file and the `chmod 600` that fixes it.
#[test]
fn password_file_open_to_others_is_refused_with_the_chmod() {
    let dir = tempfile::tempdir().unwrap();
    let file = private_file(dir.path(), "passwd", "");
    chmod(&file, 0o644);
    let f = file.to_str().unwrap().to_owned();
    let fix = format!("chmod 600 {f}");
    let err = start_refused(dir.path(), &format!("[auth]\npassword_file = \"{f}\"\n"));
    assert!(err.contains(&fix), "{err}");
    let config = private_file(
        dir.path(),
        "check.toml",
        &format!("[auth]\npassword_file = \"{f}\"\n"),
    );
    let (status, _, err) = brokerd(
        &["--check-config", config.to_str().unwrap()],
        b"",
        dir.path(),
    );
    assert!(!status.success() && err.contains(&fix), "{err}");
    chmod(&file, 0o600);
    let (status, out, err) = brokerd(
        &["--check-config", config.to_str().unwrap()],
        b"",
        dir.path(),
    );
    assert!(status.success(), "{out} {err}");
}

/// issue #9 item 1: each refused login from one address is answered later than the one
/// before (100 ms, 200 ms, 400 ms, ...), capped at 2 s (the 6th would be 3.2 s); a good login
/// is not delayed by them.
#[test]
fn refused_logins_are_answered_after_a_growing_capped_delay() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("passwd");
    let f = file.to_str().unwrap().to_owned();
    let (status, _, err) = brokerd(
        &[
            "passwd",
            &f,
            "u",
            "--password-stdin",
            "--iterations",
            "1000",
        ],
        b"pw\n",
        dir.path(),
    );
    assert!(status.success(), "{err}");
    let b = broker_in(
        dir,
        &format!("allow_anonymous = false\npassword_file = \"{f}\""),
    );
    let mut took = Vec::new();
    for i in 0..6 {
        let start = Instant::now();
        let r = login(b.addr, &format!("bad{i}"), "u", b"wrong");
        took.push(start.elapsed());
        assert_eq!(r.as_deref(), Some(&CONNACK_NOT_AUTHORIZED[..]));
    }
    let ms: Vec<u128> = took.iter().map(|d| d.as_millis()).collect();
    for (i, want) in [100u128, 200, 400, 800, 1600, 2000].iter().enumerate() {
        assert!(ms[i] >= *want, "refusal {i} after {} ms: {ms:?}", ms[i]);
        assert!(
            ms[i] < want + 1500,
            "refusal {i} after {} ms: {ms:?}",
            ms[i]
        );
    }
    let start = Instant::now();
    assert_eq!(
        login(b.addr, "good", "u", b"pw").as_deref(),
        Some(&CONNACK_OK[..])
    );
    assert!(
        start.elapsed() < Duration::from_millis(1000),
        "{:?}",
        start.elapsed()
    );
    b.wait_log("failures=6");
}

/// issue #9 item 1: password checks run off the async workers and a bounded number at a time:
/// while slow verifications (3,000,000 iterations each: seconds of CPU) occupy every slot, a
/// connected client's PINGREQ is answered at once, and logins that find no slot within
/// connect_timeout_ms get 0x03 (server unavailable) instead of waiting without bound.
#[test]
fn slow_password_checks_never_stall_the_broker() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("passwd");
    let f = file.to_str().unwrap().to_owned();
    let (status, _, err) = brokerd(
        &[
            "passwd",
            &f,
            "slow",
            "--password-stdin",
            "--iterations",
            "3000000",
        ],
        b"pw\n",
        dir.path(),
    );
    assert!(status.success(), "{err}");
    let b = BrokerProc::start_in(
        dir,
        &format!("[limits]\nconnect_timeout_ms = 400\n[auth]\npassword_file = \"{f}\""),
    );
    let mut watcher = Raw::connected(b.addr, "watcher");
    // More logins than any machine has slots (at most 4).
    let logins: Vec<_> = (0..6)
        .map(|i| {
            let addr = b.addr;
            std::thread::spawn(move || login(addr, &format!("slow{i}"), "slow", b"pw"))
        })
        .collect();
    std::thread::sleep(Duration::from_millis(100));
    for _ in 0..5 {
        let start = Instant::now();
        watcher.ping();
        assert!(
            start.elapsed() < Duration::from_millis(250),
            "PINGRESP after {:?}",
            start.elapsed()
        );
    }
    let answers: Vec<Option<Vec<u8>>> = logins.into_iter().map(|t| t.join().unwrap()).collect();
    let ok = answers
        .iter()
        .filter(|a| a.as_deref() == Some(&CONNACK_OK[..]))
        .count();
    let busy = answers
        .iter()
        .filter(|a| a.as_deref() == Some(&CONNACK_UNAVAILABLE[..]))
        .count();
    assert!(ok >= 1 && busy >= 2 && ok + busy == 6, "{answers:02x?}");
}

// ---- item 2: ACLs ---------------------------------------------------------------------------

/// A broker with the ACL file `acl` (anonymous clients allowed, no password file: usernames
/// are taken as sent, as Mosquitto does without a password file).
fn broker_with_acl(acl: &str) -> BrokerProc {
    let dir = tempfile::tempdir().unwrap();
    let file = private_file(dir.path(), "acl", acl);
    let f = file.to_str().unwrap().to_owned();
    broker_in(dir, &format!("acl_file = \"{f}\""))
}

fn as_user(id: &str, user: &str) -> RawConnect {
    RawConnect::new(id).username(user)
}

/// issue #9 item 2: a PUBLISH the ACL denies is acknowledged (PUBACK; PUBREC then PUBCOMP) and
/// dropped: a subscriber that may read everything never gets it (nor a retained copy), and
/// the log says so at info with the client id and the topic.
#[test]
fn denied_publish_is_acknowledged_dropped_and_logged() {
    let b = broker_with_acl("user pub\ntopic write allowed/#\nuser sub\ntopic read #\n");
    let mut sub = Raw::connected_by(b.addr, &as_user("reader", "sub"));
    sub.subscribe(1, "#", 1);
    let mut publisher = Raw::connected_by(b.addr, &as_user("writer-1", "pub"));
    publisher.send(&publish_packet("forbidden/x", 1, true, false, 7, b"no"));
    assert_eq!(publisher.expect_packet("PUBACK"), ack_packet(0x40, 7));
    publisher.send(&publish_packet("forbidden/y", 2, false, false, 8, b"no"));
    assert_eq!(publisher.expect_packet("PUBREC"), ack_packet(0x50, 8));
    publisher.send(&ack_packet(0x62, 8));
    assert_eq!(publisher.expect_packet("PUBCOMP"), ack_packet(0x70, 8));
    publisher.send(&publish_packet("allowed/z", 1, false, false, 9, b"yes"));
    assert_eq!(publisher.expect_packet("PUBACK"), ack_packet(0x40, 9));
    let (_, _, _, topic, _, payload) = parse_publish(&sub.expect_packet("PUBLISH"));
    assert_eq!(
        (topic.as_str(), payload.as_slice()),
        ("allowed/z", &b"yes"[..])
    );
    // No retained copy either.
    let mut late = Raw::connected_by(b.addr, &as_user("reader-2", "sub"));
    late.subscribe(1, "forbidden/#", 1);
    late.ping();
    let log = b.wait_log("PUBLISH denied by the ACL");
    let line = log.lines().find(|l| l.contains("PUBLISH denied")).unwrap();
    assert!(
        line.contains("INFO") && line.contains("writer-1") && line.contains("forbidden/x"),
        "{line}"
    );
}

/// issue #9 item 2: in one SUBSCRIBE, a filter the ACL can never deliver gets 0x80 and the
/// others their QoS; a wildcard wider than the rules is granted.
#[test]
fn subscribe_denied_filter_gets_0x80_others_granted() {
    let b = broker_with_acl(
        "user u\ntopic read sensors/#\ntopic deny sensors/secret/#\ntopic write cmd/#\n",
    );
    let mut c = Raw::connected_by(b.addr, &as_user("s1", "u"));
    c.subscribe_many(
        3,
        &[
            ("sensors/+/temp", 1),
            ("cmd/#", 1),
            ("sensors/secret/#", 2),
            ("#", 0),
            ("$SYS/#", 0),
        ],
        &[1, 0x80, 0x80, 0, 0x80],
    );
    b.wait_log("SUBSCRIBE denied by the ACL");
}

/// issue #9 item 2: read access is checked on every delivery, retained messages included: a
/// subscriber to `#` with read access to `public/#` except `public/secret` gets only the
/// retained and live messages it may read (the retained ones first, then the live ones).
#[test]
fn read_access_is_checked_on_every_delivery_and_retained_message() {
    let b = broker_with_acl(
        "user admin\ntopic #\nuser reader\ntopic read public/#\ntopic deny public/secret\n",
    );
    let mut admin = Raw::connected_by(b.addr, &as_user("admin-1", "admin"));
    for (i, t) in ["public/a", "public/secret", "private/x"]
        .iter()
        .enumerate()
    {
        admin.send(&publish_packet(
            t,
            1,
            true,
            false,
            i as u16 + 1,
            t.as_bytes(),
        ));
        admin.expect_packet("PUBACK");
    }
    let mut r = Raw::connected_by(b.addr, &as_user("reader-1", "reader"));
    r.subscribe(1, "#", 1);
    let (_, _, retain, topic, pkid, _) = parse_publish(&r.expect_packet("retained PUBLISH"));
    assert_eq!((topic.as_str(), retain), ("public/a", true));
    r.send(&ack_packet(0x40, pkid));
    for (i, t) in ["private/y", "public/secret", "public/b"]
        .iter()
        .enumerate()
    {
        admin.send(&publish_packet(t, 1, false, false, i as u16 + 10, b"live"));
        admin.expect_packet("PUBACK");
    }
    let (_, _, _, topic, _, _) = parse_publish(&r.expect_packet("live PUBLISH"));
    assert_eq!(topic, "public/b");
    r.ping();
    r.expect_silence(Duration::from_millis(200));
}

/// issue #9 item 2: `pattern` rules substitute `%c` and `%u` as whole levels for every client;
/// a client id with `+` gets nothing from patterns.
#[test]
fn patterns_substitute_client_id_and_username() {
    let b = broker_with_acl("pattern readwrite devices/%c/#\npattern read users/%u/inbox\n");
    let mut d = Raw::connected_by(b.addr, &as_user("dev1", "ann"));
    d.subscribe_many(
        1,
        &[
            ("devices/dev1/#", 1),
            ("devices/dev2/#", 1),
            ("users/ann/inbox", 1),
            ("users/bob/inbox", 1),
        ],
        &[1, 0x80, 1, 0x80],
    );
    d.send(&publish_packet(
        "devices/dev1/t",
        1,
        false,
        false,
        5,
        b"mine",
    ));
    d.send(&publish_packet(
        "devices/dev2/t",
        1,
        false,
        false,
        6,
        b"theirs",
    ));
    let mut got = Vec::new();
    for _ in 0..3 {
        got.push(d.expect_packet("PUBACK or PUBLISH"));
    }
    let publishes: Vec<String> = got
        .iter()
        .filter(|p| p[0] >> 4 == 3)
        .map(|p| parse_publish(p).3)
        .collect();
    assert_eq!(publishes, ["devices/dev1/t"], "{got:02x?}");
    // A wildcard in the client id: patterns give it nothing.
    let mut w = Raw::connected_by(b.addr, &as_user("dev+", "ann"));
    w.subscribe_many(1, &[("users/ann/inbox", 1)], &[0x80]);
}

/// issue #9 item 2 (Mosquitto's connection_check_acl): a persistent session resumed under
/// another username loses the queued messages that username may not read, and receives no
/// new ones through its old subscription; what it may read is delivered.
#[test]
fn resumed_session_under_another_username_is_filtered() {
    let b = broker_with_acl(
        "user a\ntopic read x/#\ntopic read y/#\nuser b\ntopic read y/#\nuser admin\ntopic #\n",
    );
    let mut s = Raw::connect(b.addr);
    let mut c = as_user("shared", "a");
    c.clean = false;
    s.send(&c.encode());
    assert_eq!(s.expect_packet("CONNACK"), CONNACK_OK);
    s.subscribe_many(1, &[("x/#", 1), ("y/#", 1)], &[1, 1]);
    s.send(&disconnect_packet());
    let _ = s.read_until_closed();
    b.wait_disconnected("shared", 1);
    let mut admin = Raw::connected_by(b.addr, &as_user("admin-2", "admin"));
    for (i, t) in ["x/1", "y/1"].iter().enumerate() {
        admin.send(&publish_packet(t, 1, false, false, i as u16 + 1, b"queued"));
        admin.expect_packet("PUBACK");
    }
    let mut s = Raw::connect(b.addr);
    let mut c = as_user("shared", "b");
    c.clean = false;
    s.send(&c.encode());
    assert_eq!(s.expect_packet("CONNACK"), vec![0x20, 0x02, 0x01, 0x00]);
    let (_, _, _, topic, pkid, _) = parse_publish(&s.expect_packet("queued PUBLISH"));
    assert_eq!(topic, "y/1");
    s.send(&ack_packet(0x40, pkid));
    admin.send(&publish_packet("x/2", 1, false, false, 3, b"live"));
    admin.expect_packet("PUBACK");
    admin.send(&publish_packet("y/2", 1, false, false, 4, b"live"));
    admin.expect_packet("PUBACK");
    let (_, _, _, topic, _, _) = parse_publish(&s.expect_packet("live PUBLISH"));
    assert_eq!(topic, "y/2");
    b.wait_log("queued messages this client may not read were dropped");
}

/// issue #9 item 2: a will whose topic the client may not write is discarded (Mosquitto checks
/// write access before publishing a will); a permitted will is published.
#[test]
fn will_needs_write_access() {
    let b = broker_with_acl("user w\ntopic write wills/ok\nuser sub\ntopic read wills/#\n");
    let mut sub = Raw::connected_by(b.addr, &as_user("watch", "sub"));
    sub.subscribe(1, "wills/#", 1);
    for (id, topic) in [("w-denied", "wills/denied"), ("w-ok", "wills/ok")] {
        let mut w = Raw::connected_by(b.addr, &as_user(id, "w").will(topic, b"gone", 1, false));
        w.ping();
        drop(w);
    }
    let (_, _, _, topic, _, _) = parse_publish(&sub.expect_packet("will"));
    assert_eq!(topic, "wills/ok");
    b.wait_log("will topic denied by the ACL");
}

/// issue #9 item 2: an ACL file Mosquitto would refuse stops the start-up (and --check-config)
/// with the file and the line; an empty ACL file denies everything (Mosquitto's
/// 09-acl-empty-file test).
#[test]
fn bad_acl_file_is_refused_and_empty_one_denies_all() {
    let dir = tempfile::tempdir().unwrap();
    let acl = private_file(
        dir.path(),
        "acl",
        "user u\ntopic read ok/#\ntopic readonly x\n",
    );
    let a = acl.to_str().unwrap().to_owned();
    let err = start_refused(dir.path(), &format!("[auth]\nacl_file = \"{a}\"\n"));
    assert!(
        err.contains(&format!("acl file {a} line 3")) && err.contains("readonly"),
        "{err}"
    );
    let config = private_file(
        dir.path(),
        "check.toml",
        &format!("[auth]\nacl_file = \"{a}\"\n"),
    );
    let (status, _, err) = brokerd(
        &["--check-config", config.to_str().unwrap()],
        b"",
        dir.path(),
    );
    assert!(!status.success() && err.contains("line 3"), "{err}");

    let b = broker_with_acl("# comment\n\n");
    let mut c = Raw::connected(b.addr, "acl-check");
    c.subscribe_many(1, &[("test/topic", 0)], &[0x80]);
    c.send(&publish_packet(
        "test/topic",
        1,
        false,
        false,
        2,
        b"message",
    ));
    assert_eq!(c.expect_packet("PUBACK"), ack_packet(0x40, 2));
}

// ---- item 4: the anonymous rule -------------------------------------------------------------

/// issue #9 item 4: without `allow_anonymous` in the file, a configuration whose listener is
/// not on loopback refuses anonymous clients: --check-config (which binds nothing) says so,
/// naming the listener; `allow_anonymous = true` written explicitly accepts them; loopback
/// accepts them.
#[test]
fn check_config_states_the_anonymous_rule() {
    let dir = tempfile::tempdir().unwrap();
    for (toml, want) in [
        (
            "[listener]\nbind = \"0.0.0.0:1883\"\n",
            "anonymous clients refused: listener 0.0.0.0:1883 is not on loopback",
        ),
        (
            "[listener]\nbind = \"[::]:1883\"\n",
            "anonymous clients refused: listener [::]:1883",
        ),
        (
            "[listener]\nbind = \"0.0.0.0:1883\"\n[auth]\nallow_anonymous = true\n",
            "anonymous clients allowed ([auth] allow_anonymous = true)",
        ),
        (
            "[listener]\nbind = \"127.0.0.1:1883\"\n",
            "anonymous clients allowed (every listener is on loopback",
        ),
        (
            "[auth]\nallow_anonymous = false\n",
            "anonymous clients refused ([auth] allow_anonymous = false)",
        ),
    ] {
        let config = private_file(dir.path(), "c.toml", toml);
        let (status, out, err) = brokerd(
            &["--check-config", config.to_str().unwrap()],
            b"",
            dir.path(),
        );
        assert!(status.success(), "{toml}: {err}");
        assert!(out.contains(want), "{toml}: {out}");
    }
}

/// issue #9 item 4: the start-up log states the anonymous rule once; on loopback without the
/// key anonymous clients connect, with `allow_anonymous = false` they get 0x05.
#[test]
fn startup_log_states_the_anonymous_rule_once() {
    let open = BrokerProc::start("");
    let log = open.wait_log("listening");
    assert_eq!(
        log.matches("anonymous clients allowed (every listener is on loopback")
            .count(),
        1,
        "{log}"
    );
    assert_eq!(
        reply(open.addr, &RawConnect::new("anon")).as_deref(),
        Some(&CONNACK_OK[..])
    );

    let closed = BrokerProc::start("[auth]\nallow_anonymous = false");
    let log = closed.wait_log("listening");
    assert_eq!(log.matches("anonymous clients refused").count(), 1, "{log}");
    assert_eq!(
        reply(closed.addr, &RawConnect::new("anon")).as_deref(),
        Some(&CONNACK_NOT_AUTHORIZED[..])
    );
}
