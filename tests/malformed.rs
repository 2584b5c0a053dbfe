//! Malformed input: raw byte vectors (in the style of mosquitto's test/broker/data/*.json), each
//! on a fresh connection, each expecting the connection closed without a reply ([MQTT-4.8.0-1])
//! and the broker still serving others; plus a seeded random-bytes run.

mod common;

use std::net::Shutdown;

use common::*;

/// A valid SUBSCRIBE body tail: filter "a/b", QoS 0.
fn sub_filter() -> Vec<u8> {
    let mut v = field(b"a/b");
    v.push(0);
    v
}

/// Packet id 1 followed by `rest`.
fn id1(rest: &[u8]) -> Vec<u8> {
    let mut v = vec![0x00, 0x01];
    v.extend_from_slice(rest);
    v
}

/// A PUBLISH (QoS 0 unless `first` says otherwise) with a raw topic field.
fn publish_raw_topic(first: u8, topic: &[u8], with_id: bool) -> Vec<u8> {
    let mut body = field(topic);
    if with_id {
        body.extend([0x00, 0x01]);
    }
    body.extend_from_slice(b"payload");
    packet(first, &body)
}

/// A CONNECT with raw connect flags and raw payload fields.
fn connect_raw(flags: u8, payload: &[&[u8]]) -> Vec<u8> {
    let mut body = field(b"MQTT");
    body.extend([4, flags, 0, 60]);
    for f in payload {
        body.extend(field(f));
    }
    packet(0x10, &body)
}

/// Fails the test, naming `name`, unless the broker closes `raw` without sending anything.
fn assert_closed(raw: &mut Raw, name: &str) {
    use std::io::Read;
    let mut buf = [0u8; 64];
    match raw.stream.read(&mut buf) {
        Ok(0) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        Ok(n) => panic!("{name}: expected close, got {n} bytes: {:02x?}", &buf[..n]),
        Err(e) => panic!("{name}: expected close, got {e} (the broker kept the connection)"),
    }
}

/// Sends each vector on a fresh connection after a valid CONNECT and expects a close.
fn closes_after_connect(b: &mut BrokerProc, vectors: &[(&str, Vec<u8>)]) {
    for (name, bytes) in vectors {
        let mut raw = Raw::connected(b.addr, "malformed");
        raw.send(bytes);
        assert_closed(&mut raw, name);
    }
    assert_serving(b);
}

/// Sends each vector as the first packet of a fresh connection and expects a close.
fn closes_as_first_packet(b: &mut BrokerProc, vectors: &[(&str, Vec<u8>)]) {
    for (name, bytes) in vectors {
        let mut raw = Raw::connect(b.addr);
        raw.send(bytes);
        assert_closed(&mut raw, name);
    }
    assert_serving(b);
}

/// The broker process is alive and a normal client can still subscribe and get a QoS 1
/// message through.
fn assert_serving(b: &mut BrokerProc) {
    assert!(b.is_alive(), "brokerd died; log:\n{}", b.log());
    let mut c = Raw::connected(b.addr, "healthy");
    c.subscribe(1, "health", 1);
    c.send(&publish_packet("health", 1, false, false, 9, b"ok"));
    let mut got_ack = false;
    let mut got_msg = false;
    while !(got_ack && got_msg) {
        let p = c.expect_packet("PUBACK or PUBLISH");
        if p == ack_packet(0x40, 9) {
            got_ack = true;
        } else {
            let (_, _, _, topic, id, payload) = parse_publish(&p);
            assert_eq!((topic.as_str(), &payload[..]), ("health", &b"ok"[..]));
            c.send(&ack_packet(0x40, id));
            got_msg = true;
        }
    }
    c.send(&[0xE0, 0x00]);
}

/// `[MQTT-2.2.2-1]` `[MQTT-2.2.2-2]` wrong fixed-header flags close, for every packet type.
#[test]
fn wrong_reserved_flags_close_for_every_type() {
    let mut b = BrokerProc::start("");
    let mut sub = vec![0x00, 0x01];
    sub.extend(sub_filter());
    let mut unsub = vec![0x00, 0x01];
    unsub.extend(field(b"a/b"));
    closes_after_connect(
        &mut b,
        &[
            ("PUBACK 0x41", packet(0x41, &[0, 1])),
            ("PUBREC 0x51", packet(0x51, &[0, 1])),
            ("PUBREL 0x60", packet(0x60, &[0, 1])),
            ("PUBREL 0x63", packet(0x63, &[0, 1])),
            ("PUBCOMP 0x71", packet(0x71, &[0, 1])),
            ("SUBSCRIBE 0x80", packet(0x80, &sub)),
            ("SUBSCRIBE 0x83", packet(0x83, &sub)),
            ("UNSUBSCRIBE 0xA0", packet(0xA0, &unsub)),
            ("PINGREQ 0xC1", vec![0xC1, 0x00]),
            ("DISCONNECT 0xE1", vec![0xE1, 0x00]),
        ],
    );
    let mut connect = connect_packet("flags", true, 60);
    connect[0] = 0x11;
    closes_as_first_packet(&mut b, &[("CONNECT 0x11", connect)]);
}

/// `[MQTT-3.3.1-2]` DUP=1 on a QoS 0 PUBLISH closes.
#[test]
fn publish_dup_with_qos0_closes() {
    let mut b = BrokerProc::start("");
    closes_after_connect(
        &mut b,
        &[("PUBLISH 0x38", publish_raw_topic(0x38, b"a/b", false))],
    );
}

/// `[MQTT-3.3.1-4]` a PUBLISH with QoS 3 closes.
#[test]
fn publish_qos3_closes() {
    let mut b = BrokerProc::start("");
    closes_after_connect(
        &mut b,
        &[
            ("PUBLISH 0x36", publish_raw_topic(0x36, b"a/b", true)),
            ("PUBLISH 0x3E", publish_raw_topic(0x3E, b"a/b", true)),
        ],
    );
}

/// `[MQTT-3.3.2-2]` wildcards in a topic name close; (our choice) so does an empty topic name.
#[test]
fn publish_topic_with_wildcard_or_empty_closes() {
    let mut b = BrokerProc::start("");
    closes_after_connect(
        &mut b,
        &[
            ("topic a/+", publish_raw_topic(0x30, b"a/+", false)),
            ("topic +", publish_raw_topic(0x30, b"+", false)),
            ("topic a/#", publish_raw_topic(0x32, b"a/#", true)),
            ("topic #", publish_raw_topic(0x30, b"#", false)),
            ("empty topic", publish_raw_topic(0x30, b"", false)),
            ("empty topic QoS 1", publish_raw_topic(0x32, b"", true)),
        ],
    );
}

/// `[MQTT-3.1.2-3]` the reserved CONNECT flag set closes (no CONNACK).
#[test]
fn connect_reserved_flag_closes() {
    let mut b = BrokerProc::start("");
    closes_as_first_packet(
        &mut b,
        &[
            ("flags 0x03", connect_raw(0x03, &[b"c"])),
            ("flags 0x01", connect_raw(0x01, &[b"c"])),
        ],
    );
}

/// `[MQTT-3.1.2-22]` the password flag without the user name flag closes.
#[test]
fn connect_password_without_username_closes() {
    let mut b = BrokerProc::start("");
    closes_as_first_packet(
        &mut b,
        &[("password flag only", connect_raw(0x42, &[b"c", b"secret"]))],
    );
}

/// `[MQTT-3.1.0-1]` a first packet other than CONNECT closes.
#[test]
fn first_packet_not_connect_closes() {
    let mut b = BrokerProc::start("");
    closes_as_first_packet(
        &mut b,
        &[
            ("PINGREQ first", vec![0xC0, 0x00]),
            (
                "PUBLISH first",
                publish_packet("a", 0, false, false, 0, b"x"),
            ),
            ("SUBSCRIBE first", subscribe_packet(1, &[("a", 0)])),
        ],
    );
}

/// `[MQTT-1.5.3-2]` U+0000 in the client id, a topic name or a topic filter closes.
#[test]
fn null_char_in_strings_closes() {
    let mut b = BrokerProc::start("");
    closes_as_first_packet(
        &mut b,
        &[("NUL in client id", connect_raw(0x02, &[b"a\0b"]))],
    );
    let mut sub = vec![0x00, 0x01];
    sub.extend(field(b"a/\0"));
    sub.push(0);
    let mut unsub = vec![0x00, 0x01];
    unsub.extend(field(b"a\0b"));
    closes_after_connect(
        &mut b,
        &[
            ("NUL in topic", publish_raw_topic(0x30, b"a\0b", false)),
            ("NUL in filter", packet(0x82, &sub)),
            ("NUL in unsubscribe filter", packet(0xA2, &unsub)),
        ],
    );
}

/// `[MQTT-1.5.3-1]` ill-formed UTF-8 (0xFF, an encoded surrogate) in a topic closes.
#[test]
fn invalid_utf8_in_topic_closes() {
    let mut b = BrokerProc::start("");
    let mut sub = vec![0x00, 0x01];
    sub.extend(field(&[b'a', 0xFF]));
    sub.push(0);
    closes_after_connect(
        &mut b,
        &[
            (
                "0xFF in topic",
                publish_raw_topic(0x30, &[b'a', 0xFF], false),
            ),
            (
                "surrogate in topic",
                publish_raw_topic(0x30, &[b'a', 0xED, 0xA0, 0x80], false),
            ),
            (
                "overlong NUL in topic",
                publish_raw_topic(0x30, &[b'a', 0xC0, 0x80], false),
            ),
            ("0xFF in filter", packet(0x82, &sub)),
        ],
    );
    closes_as_first_packet(
        &mut b,
        &[("0xFF in client id", connect_raw(0x02, &[&[b'c', 0xFF]]))],
    );
}

/// `[MQTT-1.5.3]` (our choice, as mosquitto) a control character U+0001 in a topic closes.
#[test]
fn control_char_in_topic_closes() {
    let mut b = BrokerProc::start("");
    closes_after_connect(
        &mut b,
        &[
            ("U+0001 in topic", publish_raw_topic(0x30, b"a\x01b", false)),
            ("U+007F in topic", publish_raw_topic(0x30, b"a\x7fb", false)),
        ],
    );
}

/// `[MQTT-3.8.3-3]` `[MQTT-3.10.3-2]` SUBSCRIBE and UNSUBSCRIBE without filters close.
#[test]
fn subscribe_and_unsubscribe_without_filters_close() {
    let mut b = BrokerProc::start("");
    closes_after_connect(
        &mut b,
        &[
            ("SUBSCRIBE without filters", packet(0x82, &[0x00, 0x01])),
            ("UNSUBSCRIBE without filters", packet(0xA2, &[0x00, 0x01])),
        ],
    );
}

/// `[MQTT-2.3.1-1]` a packet identifier 0 closes (SUBSCRIBE, UNSUBSCRIBE, PUBLISH QoS 1/2, acks).
#[test]
fn zero_packet_ids_close() {
    let mut b = BrokerProc::start("");
    let mut sub = vec![0x00, 0x00];
    sub.extend(sub_filter());
    let mut unsub = vec![0x00, 0x00];
    unsub.extend(field(b"a/b"));
    let mut pub1 = field(b"a/b");
    pub1.extend([0x00, 0x00]);
    closes_after_connect(
        &mut b,
        &[
            ("SUBSCRIBE id 0", packet(0x82, &sub)),
            ("UNSUBSCRIBE id 0", packet(0xA2, &unsub)),
            ("PUBLISH QoS 1 id 0", packet(0x32, &pub1)),
            ("PUBLISH QoS 2 id 0", packet(0x34, &pub1)),
            ("PUBACK id 0", packet(0x40, &[0, 0])),
            ("PUBREC id 0", packet(0x50, &[0, 0])),
            ("PUBREL id 0", packet(0x62, &[0, 0])),
            ("PUBCOMP id 0", packet(0x70, &[0, 0])),
        ],
    );
}

/// `[MQTT-3.8.3-4]` a SUBSCRIBE option byte with reserved bits set or QoS 3 closes.
#[test]
fn subscribe_bad_options_close() {
    let mut b = BrokerProc::start("");
    let with_opt = |opt: u8| {
        let mut body = id1(&field(b"a/b"));
        body.push(opt);
        packet(0x82, &body)
    };
    closes_after_connect(
        &mut b,
        &[
            ("option 0x04", with_opt(0x04)),
            ("option 0x80", with_opt(0x80)),
            ("option 0x03 (QoS 3)", with_opt(0x03)),
        ],
    );
}

/// `[MQTT-3.1.0-1]` packets only a server sends (CONNACK, SUBACK, UNSUBACK, PINGRESP) close.
#[test]
fn server_only_packets_close() {
    let mut b = BrokerProc::start("");
    closes_after_connect(
        &mut b,
        &[
            ("CONNACK", vec![0x20, 0x02, 0x00, 0x00]),
            ("SUBACK", vec![0x90, 0x03, 0x00, 0x01, 0x00]),
            ("UNSUBACK", vec![0xB0, 0x02, 0x00, 0x01]),
            ("PINGRESP", vec![0xD0, 0x00]),
        ],
    );
}

/// `[MQTT-2.2.1]` reserved packet types 0 and 15 close.
#[test]
fn reserved_packet_types_close() {
    let mut b = BrokerProc::start("");
    closes_after_connect(
        &mut b,
        &[("type 0", vec![0x00, 0x00]), ("type 15", vec![0xF0, 0x00])],
    );
    closes_as_first_packet(
        &mut b,
        &[
            ("type 0 first", vec![0x00, 0x00]),
            ("type 15 first", vec![0xF0, 0x00]),
        ],
    );
}

/// `[MQTT-2.2.3]` fixed-size packets with another remaining length close: PUBACK of 3,
/// PINGREQ or DISCONNECT with a payload.
#[test]
fn fixed_size_packets_with_wrong_length_close() {
    let mut b = BrokerProc::start("");
    closes_after_connect(
        &mut b,
        &[
            ("PUBACK length 3", vec![0x40, 0x03, 0x00, 0x01, 0x00]),
            ("PUBACK length 1", vec![0x40, 0x01, 0x01]),
            ("PUBREL length 3", vec![0x62, 0x03, 0x00, 0x01, 0x00]),
            ("PINGREQ with payload", vec![0xC0, 0x01, 0x00]),
            ("DISCONNECT with payload", vec![0xE0, 0x01, 0x00]),
        ],
    );
}

/// `[MQTT-2.2.3]` a remaining length with a 5th continuation byte closes.
#[test]
fn five_byte_remaining_length_closes() {
    let mut b = BrokerProc::start("");
    closes_after_connect(
        &mut b,
        &[
            ("5-byte length", vec![0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01]),
            (
                "5-byte length, PINGREQ",
                vec![0xC0, 0x80, 0x80, 0x80, 0x80, 0x00],
            ),
        ],
    );
}

/// (our choice) a packet over `max_packet_size` closes from its fixed header alone: the body
/// is never sent, so the broker cannot be buffering it. A packet of exactly the limit passes.
#[test]
fn oversized_packet_closes_from_the_header_alone() {
    let mut b = BrokerProc::start("[limits]\nmax_packet_size = 1024\n");
    let mut header_10mb = vec![0x30];
    header_10mb.extend(remaining_length(10 * 1024 * 1024));
    let mut header_1025 = vec![0x30];
    header_1025.extend(remaining_length(1025));
    closes_after_connect(
        &mut b,
        &[
            ("10 MB PUBLISH header", header_10mb),
            ("1025-byte PUBLISH header", header_1025),
        ],
    );
    let mut header_connect = vec![0x10];
    header_connect.extend(remaining_length(10 * 1024 * 1024));
    closes_as_first_packet(&mut b, &[("10 MB CONNECT header", header_connect)]);

    // Exactly 1024 bytes of remaining length is accepted: topic field 5 + id 2 + payload 1017.
    let mut c = Raw::connected(b.addr, "limit");
    let p = publish_packet("a/b", 1, false, false, 3, &[7u8; 1017]);
    assert_eq!(&p[1..3], &remaining_length(1024)[..]);
    c.send(&p);
    assert_eq!(c.expect_packet("PUBACK"), ack_packet(0x40, 3));
}

/// `[MQTT-1.5.3]` a string length prefix running beyond the packet closes.
#[test]
fn string_length_beyond_packet_closes() {
    let mut b = BrokerProc::start("");
    closes_after_connect(
        &mut b,
        &[
            (
                "topic length 0xFFFF in 4 bytes",
                vec![0x30, 0x04, 0xFF, 0xFF, b'a', b'b'],
            ),
            (
                "filter length beyond packet",
                vec![0x82, 0x05, 0x00, 0x01, 0x00, 0x09, b'a'],
            ),
            (
                "unsubscribe filter beyond packet",
                vec![0xA2, 0x05, 0x00, 0x01, 0x00, 0x09, b'a'],
            ),
        ],
    );
    let mut connect = connect_raw(0x02, &[b"c"]);
    let n = connect.len();
    connect[n - 3] = 0x40; // client id length 0x4001 in a 1-byte field
    closes_as_first_packet(&mut b, &[("client id length beyond packet", connect)]);
}

/// `[MQTT-4.8.0-1]` a truncated packet followed by EOF closes (and the broker keeps serving).
#[test]
fn truncated_packet_then_eof_closes() {
    let mut b = BrokerProc::start("");
    for cut in [1, 2, 5, 9] {
        let mut raw = Raw::connected(b.addr, "trunc");
        let p = publish_packet("a/b", 1, false, false, 1, b"payload");
        raw.send(&p[..cut]);
        raw.stream.shutdown(Shutdown::Write).expect("shutdown");
        assert_closed(&mut raw, &format!("PUBLISH cut at {cut}"));
    }
    let mut raw = Raw::connect(b.addr);
    raw.send(&connect_packet("trunc", true, 60)[..6]);
    raw.stream.shutdown(Shutdown::Write).expect("shutdown");
    assert_closed(&mut raw, "CONNECT cut at 6");
    assert_serving(&mut b);
}

/// One random byte string: half fully random, half shaped like a client packet (a real type,
/// mostly the right flags, a correct remaining length) with a random body.
fn random_packet(rng: &mut XorShift) -> Vec<u8> {
    if rng.below(2) == 0 {
        let len = 1 + rng.below(40) as usize;
        return (0..len).map(|_| rng.next_u64() as u8).collect();
    }
    let kind = 1 + rng.below(14) as u8;
    let flags = if rng.below(10) < 7 {
        match kind {
            3 => rng.below(6) as u8,
            6 | 8 | 10 => 2,
            _ => 0,
        }
    } else {
        rng.below(16) as u8
    };
    let mut body = Vec::new();
    if rng.below(2) == 0 {
        // Something string-like at the front, as most packets have.
        let s: Vec<u8> = (0..rng.below(8))
            .map(|_| b"ab/+#\0$\xff"[rng.below(8) as usize])
            .collect();
        body.extend(field(&s));
    }
    for _ in 0..rng.below(24) {
        body.push(rng.next_u64() as u8);
    }
    packet(kind << 4 | flags, &body)
}

/// `[MQTT-4.8.0-1]` 2,000 seeded random byte strings after a valid CONNECT never kill the
/// broker or grow it without bound: every connection ends when the client closes, and a
/// normal client still publishes and subscribes at the end.
#[test]
fn random_bytes_never_kill_the_broker() {
    let mut b = BrokerProc::start("");
    let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
    let rss_before = b.rss_kib();
    let mut sent = 0;
    while sent < 2000 {
        // One string per connection, so the broker parses every one of them from a clean state.
        let mut raw = Raw::connected(b.addr, &format!("fuzz{}", sent % 7));
        raw.send(&random_packet(&mut rng));
        sent += 1;
        // The broker closes on its own for most strings; EOF ends the rest.
        let _ = raw.stream.shutdown(Shutdown::Write);
        raw.drain_until_closed(WAIT);
        if sent % 100 == 0 {
            assert!(
                b.is_alive(),
                "brokerd died after {sent} strings; log:\n{}",
                b.log()
            );
        }
    }
    assert_serving(&mut b);
    let rss_after = b.rss_kib();
    eprintln!("fuzz: RSS {rss_before} KiB -> {rss_after} KiB after {sent} random strings");
    assert!(rss_after < 100 * 1024, "RSS {rss_after} KiB after fuzzing");
}
