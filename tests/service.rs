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
/// sends READY=1 with a STATUS line once it listens, and the MQTT port accepts a client at that
/// moment; SIGTERM sends STOPPING=1 before the clean exit.
#[test]
fn notify_socket_gets_ready_then_stopping() {
    let name = format!("brokerd-notify-test-{}", std::process::id());
    let addr = {
        use std::os::linux::net::SocketAddrExt;
        std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).expect("address")
    };
    let sock = UnixDatagram::bind_addr(&addr).expect("bind the notify socket");
    let dir = tempfile::tempdir().expect("tempdir");
    let b = BrokerProc::start_with(dir, "", |cmd| {
        cmd.env("NOTIFY_SOCKET", format!("@{name}"));
    });
    let ready = recv(&sock);
    let lines: Vec<&str> = ready.lines().collect();
    assert_eq!(lines.first(), Some(&"READY=1"), "{ready:?}");
    assert!(
        lines
            .iter()
            .any(|l| *l == format!("STATUS=listening on {}", b.addr)),
        "{ready:?}"
    );
    // Ready means ready: a client gets its CONNACK right away.
    let mut c = Raw::connected(b.addr, "after-ready");
    c.ping();
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
    assert!(
        connect.to_string().contains("json-client"),
        "the connect line does not name the client: {connect}"
    );
    assert!(
        messages
            .iter()
            .any(|v| v["fields"]["message"] == "disconnected"),
        "no disconnect line; log:\n{log}"
    );
    assert!(messages.len() >= 4, "{log}");
}
