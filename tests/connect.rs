//! CONNECT / CONNACK, authentication, keep-alive, PINGREQ and the connection limit, against
//! the real broker binary.

mod common;

use std::time::{Duration, Instant};

use common::*;
use rumqttc::{ConnectReturnCode, QoS};

const CONNACK_OK: [u8; 4] = [0x20, 0x02, 0x00, 0x00];
const CONNACK_BAD_LEVEL: [u8; 4] = [0x20, 0x02, 0x00, 0x01];
const CONNACK_ID_REJECTED: [u8; 4] = [0x20, 0x02, 0x00, 0x02];
const CONNACK_NOT_AUTHORIZED: [u8; 4] = [0x20, 0x02, 0x00, 0x05];

/// Sends `c` on a fresh connection and returns the first packet (None if closed without one).
fn first_reply(b: &BrokerProc, c: &RawConnect) -> (Raw, Option<Vec<u8>>) {
    let mut raw = Raw::connect(b.addr);
    raw.send(&c.encode());
    let reply = raw.read_packet();
    (raw, reply)
}

/// Sends `c` on a fresh connection and asserts the broker closes it without sending anything
/// (a connection kept open fails the test instead of passing as "no reply").
fn closed_without_connack(b: &BrokerProc, c: &RawConnect) {
    let mut raw = Raw::connect(b.addr);
    raw.send(&c.encode());
    assert_eq!(raw.read_within(WAIT), RawRead::Closed, "{c:?}");
}

/// Starts a broker with a password file holding `lines` (mode 0600, as the broker requires
/// since issue #9), plus `auth_extra` in `[auth]`.
fn broker_with_passwords(lines: &str, auth_extra: &str) -> BrokerProc {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("passwd");
    std::fs::write(&path, lines).expect("write password file");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    }
    let path = path.to_str().expect("utf-8 path").replace('\\', "\\\\");
    BrokerProc::start_in(
        dir,
        &format!("[auth]\npassword_file = \"{path}\"\n{auth_extra}"),
    )
}

/// [MQTT-3.2.2-1] [MQTT-3.1.2-2] a 3.1.1 CONNECT gets CONNACK 0 with session present 0.
#[tokio::test(flavor = "multi_thread")]
async fn mqtt_311_connect_is_accepted_with_connack_0() {
    let b = BrokerProc::start("");
    let mut raw = Raw::connect(b.addr);
    raw.send(&connect_packet("c311", true, 60));
    assert_eq!(raw.read_packet().expect("CONNACK"), CONNACK_OK);
    raw.ping();

    let (_c, connack) = connect_with(options(b.addr, "c311-rumqttc")).await;
    assert_eq!(connack.code, ConnectReturnCode::Success);
    assert!(!connack.session_present);
}

/// [MQTT-3.1.2-2] (our choice) MQTT 3.1, protocol name "MQIsdp" level 3, is accepted.
#[test]
fn mqtt_31_mqisdp_level_3_is_accepted() {
    let b = BrokerProc::start("");
    let mut c = RawConnect::new("c31");
    c.protocol_name = b"MQIsdp".to_vec();
    c.level = 3;
    let (mut raw, reply) = first_reply(&b, &c);
    assert_eq!(reply.expect("CONNACK"), CONNACK_OK);
    raw.ping();
}

/// [MQTT-3.1.2-2] an unsupported protocol level gets CONNACK 0x01, then the connection closes.
#[test]
fn unsupported_protocol_level_gets_connack_1_then_close() {
    let b = BrokerProc::start("");
    for (name, level) in [
        (&b"MQTT"[..], 5u8),
        (b"MQTT", 3),
        (b"MQTT", 0),
        (b"MQIsdp", 4),
    ] {
        let mut c = RawConnect::new("badlevel");
        c.protocol_name = name.to_vec();
        c.level = level;
        let (mut raw, reply) = first_reply(&b, &c);
        assert_eq!(
            reply.as_deref(),
            Some(&CONNACK_BAD_LEVEL[..]),
            "name {name:?} level {level}"
        );
        raw.expect_closed();
    }
}

/// [MQTT-3.1.2-1] another protocol name closes the connection without a CONNACK.
#[test]
fn unknown_protocol_name_closes_without_connack() {
    let b = BrokerProc::start("");
    for name in [&b"MQTX"[..], b"mqtt", b"", b"MQIsdpX"] {
        let mut c = RawConnect::new("badname");
        c.protocol_name = name.to_vec();
        closed_without_connack(&b, &c);
    }
}

/// [MQTT-3.1.0-1] a first packet that is not CONNECT closes the connection.
#[test]
fn first_packet_not_connect_closes() {
    let b = BrokerProc::start("");
    let firsts = [
        pingreq_packet(),
        publish_packet("t", 0, false, false, 0, b"x"),
        subscribe_packet(1, &[("t", 0)]),
        disconnect_packet(),
    ];
    for first in firsts {
        let mut raw = Raw::connect(b.addr);
        raw.send(&first);
        raw.expect_closed();
    }
}

/// [MQTT-3.1.0-2] a second CONNECT on a connection closes it.
#[test]
fn second_connect_closes() {
    let b = BrokerProc::start("");
    let mut raw = Raw::connected(b.addr, "twice");
    raw.send(&connect_packet("twice", true, 60));
    raw.expect_closed();
}

/// (our choice) no CONNECT within limits.connect_timeout_ms closes the connection.
#[test]
fn no_connect_within_connect_timeout_closes() {
    let b = BrokerProc::start("[limits]\nconnect_timeout_ms = 300");
    let start = Instant::now();
    let mut raw = Raw::connect(b.addr);
    raw.expect_closed();
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_secs(2),
        "closed after {took:?}"
    );
    // A client that does send CONNECT in time is served.
    Raw::connected(b.addr, "in-time").ping();
}

/// [MQTT-3.1.3-6] an empty client id with CleanSession=1 is accepted and given a unique id:
/// two such clients are distinct sessions (neither takes the other over).
#[test]
fn empty_client_id_with_clean_session_gets_distinct_ids() {
    let b = BrokerProc::start("");
    let mut one = Raw::connected(b.addr, "");
    let mut two = Raw::connected(b.addr, "");
    one.subscribe(1, "empty/one", 0);
    two.subscribe(1, "empty/two", 0);
    let mut publisher = Raw::connected(b.addr, "empty-pub");
    publisher.send(&publish_packet("empty/one", 0, false, false, 0, b"1"));
    publisher.send(&publish_packet("empty/two", 0, false, false, 0, b"2"));
    let p1 = parse_publish(&one.read_packet().expect("PUBLISH to one"));
    assert_eq!((p1.3.as_str(), p1.5.as_slice()), ("empty/one", &b"1"[..]));
    let p2 = parse_publish(&two.read_packet().expect("PUBLISH to two"));
    assert_eq!((p2.3.as_str(), p2.5.as_slice()), ("empty/two", &b"2"[..]));
    one.ping();
    two.ping();
}

/// [MQTT-3.1.3-8] an empty client id with CleanSession=0 gets CONNACK 0x02, then close.
#[test]
fn empty_client_id_without_clean_session_is_rejected_with_0x02() {
    let b = BrokerProc::start("");
    let mut raw = Raw::connect(b.addr);
    raw.send(&connect_packet("", false, 60));
    assert_eq!(raw.read_packet().expect("CONNACK"), CONNACK_ID_REJECTED);
    raw.expect_closed();
}

/// issue #8 item 2: MQTT 3.1 ("MQIsdp", level 3) has no server-assigned client ids: an empty
/// id gets CONNACK 0x02 (identifier rejected) and the connection closes, with CleanSession 1
/// and 0, as Mosquitto answers (checklist, [MQTT-3.1.3-8]'s 3.1 counterpart). 3.1.1 with an
/// empty id and CleanSession=1 is still accepted ([MQTT-3.1.3-6]).
#[test]
fn mqtt_31_empty_client_id_is_rejected_with_0x02() {
    let b = BrokerProc::start("");
    for clean in [true, false] {
        let mut c = RawConnect::new("");
        c.protocol_name = b"MQIsdp".to_vec();
        c.level = 3;
        c.clean = clean;
        let (mut raw, reply) = first_reply(&b, &c);
        assert_eq!(
            reply.as_deref(),
            Some(&CONNACK_ID_REJECTED[..]),
            "MQTT 3.1, CleanSession={clean}"
        );
        raw.expect_closed();
    }
    let (mut raw, reply) = first_reply(&b, &RawConnect::new(""));
    assert_eq!(
        reply.expect("CONNACK"),
        CONNACK_OK,
        "MQTT 3.1.1, CleanSession=1"
    );
    raw.ping();
}

/// [MQTT-3.1.3-5] (our choice) client ids longer than 23 chars and any UTF-8 are accepted.
#[test]
fn long_and_utf8_client_ids_are_accepted() {
    let b = BrokerProc::start("");
    let long = "x".repeat(100);
    for id in [long.as_str(), "clïent-日本-🦀", "with space", "a-b_c.d/e"] {
        let mut raw = Raw::connected(b.addr, id);
        raw.ping();
    }
}

/// [MQTT-3.2.2-4, -5] allow_anonymous = false: a client without a username gets 0x05, then close.
#[test]
fn anonymous_client_is_refused_with_0x05_when_anonymous_disallowed() {
    let b = BrokerProc::start("[auth]\nallow_anonymous = false");
    let mut raw = Raw::connect(b.addr);
    raw.send(&connect_packet("anon", true, 60));
    assert_eq!(raw.read_packet().expect("CONNACK"), CONNACK_NOT_AUTHORIZED);
    raw.expect_closed();
}

/// [MQTT-3.2.2-4, -5] with a password file (plain text, so `password_format = "plaintext"` since
/// issue #9): the right password is accepted; a wrong password, a missing password or an
/// unknown user gets 0x05 and the connection closes.
#[test]
fn password_file_accepts_right_password_and_refuses_others_with_0x05() {
    let b = broker_with_passwords(
        "# users\nalice:s3cret\nbob:other\n",
        "allow_anonymous = false\npassword_format = \"plaintext\"",
    );
    let (mut raw, reply) = first_reply(
        &b,
        &RawConnect::new("alice-1")
            .username("alice")
            .password(b"s3cret"),
    );
    assert_eq!(reply.expect("CONNACK"), CONNACK_OK);
    raw.ping();

    let refused = [
        RawConnect::new("a2").username("alice").password(b"wrong"),
        RawConnect::new("a3").username("alice").password(b"s3cret "),
        RawConnect::new("a4").username("alice").password(b"other"),
        RawConnect::new("a5").username("alice"),
        RawConnect::new("a6")
            .username("mallory")
            .password(b"s3cret"),
        RawConnect::new("a7"),
    ];
    for c in refused {
        let (mut raw, reply) = first_reply(&b, &c);
        assert_eq!(reply.as_deref(), Some(&CONNACK_NOT_AUTHORIZED[..]), "{c:?}");
        raw.expect_closed();
    }
}

/// issue #8 item 6: a refused login is logged with the username as sent (`username=alice`),
/// not as a Rust Option (`Some("alice")`); without a username the field is absent.
#[test]
fn refused_login_logs_the_plain_username() {
    let b = broker_with_passwords(
        "alice:s3cret\n",
        "allow_anonymous = false\npassword_format = \"plaintext\"",
    );
    let (mut raw, reply) = first_reply(
        &b,
        &RawConnect::new("log-user")
            .username("alice")
            .password(b"wrong"),
    );
    assert_eq!(reply.as_deref(), Some(&CONNACK_NOT_AUTHORIZED[..]));
    raw.expect_closed();
    let (mut raw, reply) = first_reply(&b, &RawConnect::new("log-anon"));
    assert_eq!(reply.as_deref(), Some(&CONNACK_NOT_AUTHORIZED[..]));
    raw.expect_closed();
    let log = b.wait_log_lines(&["not authorized"], 2);
    let refused: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("not authorized"))
        .collect();
    assert!(
        refused
            .iter()
            .any(|l| l.contains("log-user") && l.contains("username=alice")),
        "log:\n{log}"
    );
    assert!(
        refused
            .iter()
            .any(|l| l.contains("log-anon") && !l.contains("username")),
        "log:\n{log}"
    );
    assert!(!log.contains("Some("), "log:\n{log}");
}

/// [MQTT-3.2.2-4, -5] a client refused with 0x05 never has its will published.
#[tokio::test(flavor = "multi_thread")]
async fn refused_clients_will_is_never_published() {
    let b = broker_with_passwords(
        "alice:s3cret\n",
        "allow_anonymous = false\npassword_format = \"plaintext\"",
    );
    let mut opts = options(b.addr, "watcher");
    opts.set_credentials("alice", "s3cret");
    let (mut watcher, _) = connect_with(opts).await;
    watcher.subscribe("refused/will", QoS::AtLeastOnce).await;

    let c = RawConnect::new("refused")
        .username("alice")
        .password(b"wrong")
        .will("refused/will", b"must not appear", 1, false);
    let (mut raw, reply) = first_reply(&b, &c);
    assert_eq!(reply.as_deref(), Some(&CONNACK_NOT_AUTHORIZED[..]));
    raw.expect_closed();
    drop(raw);

    // Barrier: a marker on the same topic arrives first and alone.
    watcher
        .publish("refused/will", QoS::AtLeastOnce, false, "marker")
        .await;
    let p = watcher.expect_publish_on("refused/will").await;
    assert_eq!(&p.payload[..], b"marker");
    watcher.expect_no_publish(Duration::from_millis(300)).await;
}

/// The password is binary data compared byte for byte: a text password from the file, one
/// holding a 0x00 byte, and (no password file, anonymous allowed) a password with 0xFF.
#[test]
fn passwords_are_compared_as_bytes() {
    let b = broker_with_passwords(
        "text:p@ss w0rd:x\nnul:a\0b\n",
        "allow_anonymous = false\npassword_format = \"plaintext\"",
    );
    let (mut raw, reply) = first_reply(
        &b,
        &RawConnect::new("t1")
            .username("text")
            .password(b"p@ss w0rd:x"),
    );
    assert_eq!(reply.expect("CONNACK"), CONNACK_OK);
    raw.ping();
    let (mut raw, reply) =
        first_reply(&b, &RawConnect::new("t2").username("nul").password(b"a\0b"));
    assert_eq!(reply.expect("CONNACK"), CONNACK_OK);
    raw.ping();
    let (_raw, reply) = first_reply(&b, &RawConnect::new("t3").username("nul").password(b"a"));
    assert_eq!(reply.as_deref(), Some(&CONNACK_NOT_AUTHORIZED[..]));

    let open = BrokerProc::start("");
    let c = RawConnect::new("bin")
        .username("anyone")
        .password(&[0x00, 0xff, 0xfe, 0x80, 0x00]);
    let (mut raw, reply) = first_reply(&open, &c);
    assert_eq!(reply.expect("CONNACK"), CONNACK_OK);
    raw.ping();
}

/// [MQTT-3.1.2-3] the reserved connect flag bit 0 set closes without CONNACK.
#[test]
fn connect_reserved_flag_closes() {
    let b = BrokerProc::start("");
    let mut c = RawConnect::new("reserved");
    c.extra_flags = 0x01;
    closed_without_connack(&b, &c);
}

/// [MQTT-3.1.2-22] the password flag without the username flag closes without CONNACK.
#[test]
fn password_without_username_closes() {
    let b = BrokerProc::start("");
    closed_without_connack(&b, &RawConnect::new("pwonly").password(b"secret"));
}

/// [MQTT-3.1.2-11, -13, -14, -15] will QoS or will retain set with will flag 0, or will QoS 3,
/// closes without CONNACK.
#[test]
fn will_fields_without_will_flag_close() {
    let b = BrokerProc::start("");
    for flags in [0x08, 0x10, 0x18, 0x20] {
        let mut c = RawConnect::new("nowill");
        c.extra_flags = flags;
        closed_without_connack(&b, &c);
    }
    let c = RawConnect::new("willqos3").will("w/t", b"x", 3, false);
    closed_without_connack(&b, &c);
}

/// [MQTT-3.1.2-24] a client with keep-alive 1 s that sends nothing is closed after about
/// 1.5 s, and its will is published.
#[tokio::test(flavor = "multi_thread")]
async fn keep_alive_expiry_closes_and_publishes_will() {
    let b = BrokerProc::start("");
    let mut watcher = connect(b.addr, "ka-watcher").await;
    watcher.subscribe("ka/will", QoS::AtLeastOnce).await;

    let mut c = RawConnect::new("ka-silent").will("ka/will", b"gone", 1, false);
    c.keep_alive = 1;
    let mut raw = Raw::connected_by(b.addr, &c);
    let start = Instant::now();
    let reads = tokio::task::spawn_blocking(move || {
        let r = raw.read_within(Duration::from_secs(4));
        (r, start.elapsed())
    });
    let (r, took) = reads.await.expect("reader");
    assert_eq!(r, RawRead::Closed);
    assert!(
        took >= Duration::from_millis(1400) && took <= Duration::from_millis(3000),
        "closed after {took:?}"
    );
    let p = watcher.expect_publish_on("ka/will").await;
    assert_eq!(&p.payload[..], b"gone");
}

/// [MQTT-3.1.2-24] keep-alive 0 turns the timeout off: the connection stays open while idle.
#[test]
fn keep_alive_zero_is_never_closed() {
    let b = BrokerProc::start("");
    let mut c = RawConnect::new("ka-zero");
    c.keep_alive = 0;
    let mut raw = Raw::connected_by(b.addr, &c);
    raw.ping();
    assert_eq!(
        raw.read_within(Duration::from_millis(2500)),
        RawRead::Timeout
    );
    raw.ping();
}

/// [MQTT-3.12.4-1] PINGREQ gets PINGRESP, and it counts as activity for keep-alive.
#[test]
fn pingreq_gets_pingresp_and_keeps_the_connection_alive() {
    let b = BrokerProc::start("");
    let mut c = RawConnect::new("pinger");
    c.keep_alive = 1;
    let mut raw = Raw::connected_by(b.addr, &c);
    // Four pings 0.6 s apart span 2.4 s, past 1.5 x keep-alive from the CONNECT.
    for _ in 0..4 {
        raw.ping();
        assert_eq!(
            raw.read_within(Duration::from_millis(600)),
            RawRead::Timeout
        );
    }
    raw.ping();
}

/// (our choice) limits.max_connections = 2: a third connection is closed at once while the
/// first two keep working.
#[test]
fn connections_beyond_max_connections_are_closed() {
    let b = BrokerProc::start("[limits]\nmax_connections = 2");
    let mut sub = Raw::connected(b.addr, "first");
    let mut publisher = Raw::connected(b.addr, "second");
    let mut third = Raw::connect(b.addr);
    third.send(&connect_packet("third", true, 60));
    third.expect_closed();

    sub.subscribe(1, "limit/t", 1);
    publisher.send(&publish_packet(
        "limit/t",
        1,
        false,
        false,
        7,
        b"still here",
    ));
    assert_eq!(
        publisher.read_packet().expect("PUBACK"),
        ack_packet(0x40, 7)
    );
    let (_, qos, _, topic, _, payload) = parse_publish(&sub.read_packet().expect("PUBLISH"));
    assert_eq!(
        (qos, topic.as_str(), payload.as_slice()),
        (1, "limit/t", &b"still here"[..])
    );
    publisher.ping();
}
