//! Running under a service manager: systemd's readiness protocol (`$NOTIFY_SOCKET`) and the
//! JSON log format, through the real binary (issue #10 item 5).

mod common;

use common::*;
use std::os::unix::net::UnixDatagram;

/// Receives one datagram as text, within `WAIT`.
fn recv(sock: &UnixDatagram) -> String {
    sock.set_read_timeout(Some(WAIT)).expect("timeout");
    let mut buf = [0u8; 512];
    let n = sock.recv(&mut buf).expect("no sd_notify datagram in time");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

/// issue #10 item 5: with `$NOTIFY_SOCKET` (abstract namespace, as systemd sets it), the broker
/// sends READY=1 with a STATUS line naming its address once it listens, and a client that
/// connects to that address the moment READY=1 arrives (before the test reads stdout) gets its
/// CONNACK; SIGTERM sends STOPPING=1 before the clean exit.
#[test]
fn notify_socket_gets_ready_then_stopping() {
    let name = format!("brokerd-notify-test-{}", std::process::id());
    let addr = {
        use std::os::linux::net::SocketAddrExt;
        std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).expect("address")
    };
    let sock = UnixDatagram::bind_addr(&addr).expect("bind the notify socket");
    // Acts on READY=1 alone, like a unit ordered after brokerd.service.
    let at_ready = std::thread::spawn(move || {
        let ready = recv(&sock);
        let lines: Vec<&str> = ready.lines().collect();
        assert_eq!(lines.first(), Some(&"READY=1"), "{ready:?}");
        let addr: std::net::SocketAddr = lines
            .iter()
            .find_map(|l| l.strip_prefix("STATUS=listening on "))
            .unwrap_or_else(|| panic!("no STATUS with the address in {ready:?}"))
            .parse()
            .expect("address in STATUS");
        let mut c = Raw::connected(addr, "at-ready");
        c.ping();
        (addr, sock)
    });
    let dir = tempfile::tempdir().expect("tempdir");
    let b = BrokerProc::start_with(dir, "", |cmd| {
        cmd.env("NOTIFY_SOCKET", format!("@{name}"));
    });
    let (ready_addr, sock) = at_ready.join().expect("READY=1 without a usable listener");
    assert_eq!(ready_addr, b.addr);
    b.signal("TERM");
    let stopping = recv(&sock);
    assert!(stopping.lines().any(|l| l == "STOPPING=1"), "{stopping:?}");
    b.stop();
}

/// issue #10 item 5: without `$NOTIFY_SOCKET` nothing is sent and nothing is logged about it
/// (a plain start is unchanged); with a socket nobody listens on, the broker still runs and
/// says so once at warn.
#[test]
fn unreachable_notify_socket_is_a_warning_not_a_failure() {
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("no-such-socket");
    let b = BrokerProc::start_with(tempfile::tempdir().expect("tempdir"), "", |cmd| {
        cmd.env("NOTIFY_SOCKET", &missing);
    });
    let log = b.wait_log("sd_notify");
    assert!(
        log.lines()
            .any(|l| l.contains("WARN") && l.contains("cannot reach $NOTIFY_SOCKET")),
        "{log}"
    );
    let mut c = Raw::connected(b.addr, "still-serving");
    c.ping();
    b.stop();
}

/// issue #10 item 5: `[log] format = "json"` writes every stderr line as one JSON object with
/// timestamp, level, target and fields (the message among them), the client connect and
/// disconnect lines included, with the connection's span fields.
#[test]
fn json_log_lines_are_objects_with_level_target_and_fields() {
    let b = BrokerProc::start("[log]\nformat = \"json\"\n");
    let mut c = Raw::connected(b.addr, "json-client");
    c.ping();
    c.send(&[0xe0, 0x00]); // DISCONNECT
    b.wait_log("\"disconnected\"");
    let dir = b.stop();
    let log = std::fs::read_to_string(dir.path().join("stderr.log")).expect("stderr log");
    let mut messages = Vec::new();
    for line in log.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {line}\nlog:\n{log}"));
        for key in ["timestamp", "level", "target"] {
            assert!(v[key].is_string(), "no {key} in {line}");
        }
        assert!(v["fields"].is_object(), "no fields in {line}");
        messages.push(v);
    }
    let connect = messages
        .iter()
        .find(|v| v["fields"]["message"] == "client connected")
        .unwrap_or_else(|| panic!("no connect line; log:\n{log}"));
    assert_eq!(connect["level"], "INFO", "{connect}");
    assert_eq!(
        connect["span"]["client_id"], "json-client",
        "the connect line does not name the client: {connect}"
    );
    assert_eq!(connect["target"], "brokerd::session::connect", "{connect}");
    assert!(
        messages
            .iter()
            .any(|v| v["fields"]["message"] == "disconnected"),
        "no disconnect line; log:\n{log}"
    );
    assert!(messages.len() >= 4, "{log}");
}

/// Runs brokerd on `toml` (bound to 127.0.0.1:0) as a user that is not root: uid 65534 when
/// the test runs as root (root ignores file modes), else the test's own user. Asserts it
/// refuses to start within `WAIT`; returns (the uid it ran as, its stderr).
fn refused_as_non_root(dir: &std::path::Path, toml: &str) -> (u32, String) {
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    let config = dir.join("broker.toml");
    std::fs::write(
        &config,
        format!("[listener]\nbind = \"127.0.0.1:0\"\n{toml}"),
    )
    .unwrap();
    let open = std::fs::Permissions::from_mode(0o755);
    std::fs::set_permissions(dir, open).unwrap();
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o644)).unwrap();
    let me = own_uid();
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_brokerd"));
    cmd.arg("--config")
        .arg(&config)
        .current_dir(dir)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let uid = if me == 0 {
        cmd.uid(65534).gid(65534);
        65534
    } else {
        me
    };
    let mut child = cmd.spawn().expect("spawn brokerd");
    let deadline = std::time::Instant::now() + WAIT;
    while child.try_wait().expect("wait").is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("brokerd started although it cannot use its files");
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let out = child.wait_with_output().expect("output");
    assert!(!out.status.success());
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("listening on"),
        "it listened"
    );
    (uid, String::from_utf8_lossy(&out.stderr).into_owned())
}

/// The test's effective uid (from /proc, so the test needs no extra crate).
fn own_uid() -> u32 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|v| v.split_whitespace().nth(1)?.parse().ok())
        })
        .expect("uid from /proc/self/status")
}

/// issue #10 item 4: a password file the broker's user cannot read (as in a container, a
/// root-owned file mounted for a non-root user) stops the start-up with an error that says
/// which uid needs access to which file.
#[test]
fn unreadable_password_file_names_the_uid_that_needs_it() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let passwd = dir.path().join("passwd");
    std::fs::write(&passwd, "").unwrap();
    // Root: owned by root, 0600 (unreadable to uid 65534). Others: mode 000.
    let mode = if own_uid() == 0 { 0o600 } else { 0o000 };
    std::fs::set_permissions(&passwd, std::fs::Permissions::from_mode(mode)).unwrap();
    let (uid, err) = refused_as_non_root(
        dir.path(),
        &format!("[auth]\npassword_file = \"{}\"\n", passwd.display()),
    );
    let hint = format!(
        "brokerd runs as uid {uid}; make {} readable by uid {uid}",
        passwd.display()
    );
    assert!(err.contains(&hint), "no {hint:?} in:\n{err}");
    assert!(err.contains("Permission denied"), "{err}");
}

/// issue #10 item 4: a data directory the broker's user cannot write (a root-owned volume)
/// stops the start-up with an error naming the directory and the uid that needs access.
#[test]
fn unwritable_data_dir_names_the_uid_that_needs_it() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o555)).unwrap();
    let (uid, err) = refused_as_non_root(
        dir.path(),
        &format!(
            "[persistence]\nenabled = true\npath = \"{}\"\n",
            data.display()
        ),
    );
    let hint = format!(
        "brokerd runs as uid {uid}; make {} readable and writable by uid {uid}",
        data.display()
    );
    assert!(err.contains(&hint), "no {hint:?} in:\n{err}");
}
