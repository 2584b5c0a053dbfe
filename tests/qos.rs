//! QoS 1 and QoS 2 handshakes, both directions, seen byte for byte through raw clients; the
//! outbound in-flight window; and no loss of acknowledged publishes under a burst.

mod common;

use std::time::Duration;

use common::*;

const SHORT: Duration = Duration::from_millis(300);

/// `[MQTT-4.3.2-2]` a QoS 1 PUBLISH is answered with PUBACK carrying its packet id, and delivered.
#[test]
fn qos1_publish_is_acked_with_puback_of_same_id() {
    let b = BrokerProc::start("");
    let mut sub = Raw::connected(b.addr, "sub");
    sub.subscribe(1, "q1/t", 1);
    let mut publ = Raw::connected(b.addr, "pub");
    publ.send(&publish_packet("q1/t", 1, false, false, 0x1234, b"hello"));
    assert_eq!(publ.expect_packet("PUBACK"), vec![0x40, 0x02, 0x12, 0x34]);
    let p = sub.expect_packet("PUBLISH");
    let (dup, qos, retain, topic, _, payload) = parse_publish(&p);
    assert_eq!(
        (dup, qos, retain, topic.as_str(), &payload[..]),
        (false, 1, false, "q1/t", &b"hello"[..])
    );
}

/// `[MQTT-4.3.3-2]` QoS 2 inbound: PUBREC; a re-sent PUBLISH (DUP=1, same id) before PUBREL is
/// PUBREC'd again but not delivered again; PUBREL gets PUBCOMP and the id is then forgotten.
#[test]
fn qos2_resent_publish_before_pubrel_is_not_delivered_twice() {
    let b = BrokerProc::start("");
    let mut sub = Raw::connected(b.addr, "sub");
    sub.subscribe(1, "q2/t", 0);
    let mut publ = Raw::connected(b.addr, "pub");

    publ.send(&publish_packet("q2/t", 2, false, false, 10, b"once"));
    assert_eq!(publ.expect_packet("PUBREC"), vec![0x50, 0x02, 0x00, 0x0A]);
    let (_, _, _, _, _, payload) = parse_publish(&sub.expect_packet("first delivery"));
    assert_eq!(payload, b"once");

    publ.send(&publish_packet("q2/t", 2, false, true, 10, b"once"));
    assert_eq!(
        publ.expect_packet("PUBREC again"),
        vec![0x50, 0x02, 0x00, 0x0A]
    );
    // Barrier: a later message on the same path arrives next, so the duplicate was not routed.
    publ.send(&publish_packet("q2/t", 0, false, false, 0, b"marker"));
    let (_, _, _, _, _, payload) = parse_publish(&sub.expect_packet("marker"));
    assert_eq!(
        payload, b"marker",
        "the re-sent QoS 2 PUBLISH was delivered again"
    );

    publ.send(&ack_packet(0x62, 10));
    assert_eq!(publ.expect_packet("PUBCOMP"), vec![0x70, 0x02, 0x00, 0x0A]);

    // After PUBCOMP the id is free: a new PUBLISH with id 10 is a new message.
    publ.send(&publish_packet("q2/t", 2, false, false, 10, b"again"));
    assert_eq!(publ.expect_packet("PUBREC"), vec![0x50, 0x02, 0x00, 0x0A]);
    let (_, _, _, _, _, payload) = parse_publish(&sub.expect_packet("second message"));
    assert_eq!(payload, b"again");
}

/// `[MQTT-4.3.3-2]` a PUBREL for an id the server does not know still gets PUBCOMP.
#[test]
fn pubrel_for_unknown_id_gets_pubcomp() {
    let b = BrokerProc::start("");
    let mut c = Raw::connected(b.addr, "c");
    c.send(&ack_packet(0x62, 0x4242));
    assert_eq!(c.expect_packet("PUBCOMP"), vec![0x70, 0x02, 0x42, 0x42]);
    c.ping();
}

/// `[MQTT-4.3.3-1]` outbound QoS 2: PUBLISH, PUBREC -> PUBREL (0x62), a repeated PUBREC gets
/// PUBREL again, PUBCOMP completes and nothing more is sent.
#[test]
fn outbound_qos2_handshake_with_repeated_pubrec() {
    let b = BrokerProc::start("");
    let mut sub = Raw::connected(b.addr, "sub");
    sub.subscribe(1, "out/2", 2);
    let mut publ = Raw::connected(b.addr, "pub");
    publ.send(&publish_packet("out/2", 2, false, false, 5, b"x"));
    assert_eq!(publ.expect_packet("PUBREC"), vec![0x50, 0x02, 0x00, 0x05]);

    let p = sub.expect_packet("PUBLISH");
    let (dup, qos, _, topic, pkid, payload) = parse_publish(&p);
    assert_eq!(
        (dup, qos, topic.as_str(), &payload[..]),
        (false, 2, "out/2", &b"x"[..])
    );
    assert_eq!(pkid, 1, "packet ids count up from 1");

    sub.send(&ack_packet(0x50, pkid));
    assert_eq!(sub.expect_packet("PUBREL"), vec![0x62, 0x02, 0x00, 0x01]);
    sub.send(&ack_packet(0x50, pkid));
    assert_eq!(
        sub.expect_packet("PUBREL again"),
        vec![0x62, 0x02, 0x00, 0x01]
    );
    sub.send(&ack_packet(0x70, pkid));
    sub.ping();
    sub.expect_silence(SHORT);
}

/// `[MQTT-4.3.3-1]` (our choice) PUBACK for a QoS 2 delivery is the wrong acknowledgement: close.
#[test]
fn puback_for_qos2_delivery_closes() {
    let b = BrokerProc::start("");
    let mut sub = Raw::connected(b.addr, "sub");
    sub.subscribe(1, "w/2", 2);
    let mut publ = Raw::connected(b.addr, "pub");
    publ.send(&publish_packet("w/2", 2, false, false, 1, b"x"));
    let (_, qos, _, _, pkid, _) = parse_publish(&sub.expect_packet("PUBLISH"));
    assert_eq!(qos, 2);
    sub.send(&ack_packet(0x40, pkid));
    sub.expect_closed();
}

/// `[MQTT-4.3.3-1]` (our choice) PUBCOMP for a QoS 2 delivery before PUBREC: close.
#[test]
fn pubcomp_before_pubrec_for_qos2_delivery_closes() {
    let b = BrokerProc::start("");
    let mut sub = Raw::connected(b.addr, "sub");
    sub.subscribe(1, "w/2", 2);
    let mut publ = Raw::connected(b.addr, "pub");
    publ.send(&publish_packet("w/2", 2, false, false, 1, b"x"));
    let (_, _, _, _, pkid, _) = parse_publish(&sub.expect_packet("PUBLISH"));
    sub.send(&ack_packet(0x70, pkid));
    sub.expect_closed();
}

/// `[MQTT-4.3.2-1]` (our choice) PUBREC for a QoS 1 delivery is the wrong acknowledgement: close.
#[test]
fn pubrec_for_qos1_delivery_closes() {
    let b = BrokerProc::start("");
    let mut sub = Raw::connected(b.addr, "sub");
    sub.subscribe(1, "w/1", 1);
    let mut publ = Raw::connected(b.addr, "pub");
    publ.send(&publish_packet("w/1", 1, false, false, 1, b"x"));
    let (_, qos, _, _, pkid, _) = parse_publish(&sub.expect_packet("PUBLISH"));
    assert_eq!(qos, 1);
    sub.send(&ack_packet(0x50, pkid));
    sub.expect_closed();
}

/// `[MQTT-4.3.2-1]` `[MQTT-4.3.3-1]` (our choice) acks for unknown ids: PUBACK and PUBCOMP are
/// ignored (the connection stays), PUBREC gets PUBREL.
#[test]
fn acks_for_unknown_ids_are_ignored_or_answered() {
    let b = BrokerProc::start("");
    let mut c = Raw::connected(b.addr, "c");
    c.send(&ack_packet(0x40, 99));
    c.send(&ack_packet(0x70, 98));
    c.ping();
    c.send(&ack_packet(0x50, 97));
    assert_eq!(c.expect_packet("PUBREL"), vec![0x62, 0x02, 0x00, 97]);
    c.ping();
}

/// In-flight window (max_inflight = 3): a subscriber that does not ack gets exactly 3 QoS 1
/// PUBLISHes (ids 1, 2, 3) of 10; each PUBACK releases exactly one more, in order
/// `[MQTT-4.6.0-5]` `[MQTT-2.3.1-2]`.
#[test]
fn inflight_window_holds_back_until_puback() {
    let b = BrokerProc::start("[limits]\nmax_inflight = 3\n");
    let mut sub = Raw::connected(b.addr, "sub");
    sub.subscribe(1, "win", 1);
    let mut publ = Raw::connected(b.addr, "pub");
    for i in 0..10u16 {
        publ.send(&publish_packet(
            "win",
            1,
            false,
            false,
            i + 1,
            &[b'0' + i as u8],
        ));
    }
    for i in 0..10u16 {
        assert_eq!(publ.expect_packet("PUBACK"), ack_packet(0x40, i + 1));
    }
    // All 10 are routed (PUBACK goes out after routing); only the window may have left.
    for i in 0..3u16 {
        let (dup, qos, _, _, pkid, payload) = parse_publish(&sub.expect_packet("PUBLISH"));
        assert_eq!(
            (dup, qos, pkid, payload),
            (false, 1, i + 1, vec![b'0' + i as u8])
        );
    }
    sub.ping();
    sub.expect_silence(SHORT);

    sub.send(&ack_packet(0x40, 1));
    let (_, _, _, _, pkid, payload) = parse_publish(&sub.expect_packet("PUBLISH 4"));
    assert_eq!((pkid, payload), (4, vec![b'3']));
    sub.ping();
    sub.expect_silence(SHORT);

    // Acking the rest releases the remaining 6, in order, with ids 5..=10.
    let mut pending: std::collections::VecDeque<u16> = [2, 3, 4].into();
    for i in 4..10u16 {
        sub.send(&ack_packet(0x40, pending.pop_front().unwrap()));
        let (_, _, _, _, pkid, payload) = parse_publish(&sub.expect_packet("PUBLISH"));
        assert_eq!((pkid, payload), (i + 1, vec![b'0' + i as u8]));
        pending.push_back(pkid);
    }
    sub.ping();
    sub.expect_silence(SHORT);
}

/// `[MQTT-2.3.1-2]` (our choice) packet ids of a session count up from 1.
#[test]
fn outbound_packet_ids_count_up_from_one() {
    let b = BrokerProc::start("");
    let mut sub = Raw::connected(b.addr, "sub");
    sub.subscribe(1, "ids", 2);
    let mut publ = Raw::connected(b.addr, "pub");
    for i in 1..=5u16 {
        publ.send(&publish_packet(
            "ids",
            if i % 2 == 0 { 2 } else { 1 },
            false,
            false,
            i,
            b"x",
        ));
    }
    // Ids are assigned 1..=5 in order; PUBRELs for QoS 2 ones may interleave with later
    // PUBLISHes (the window is 20), so answer whatever comes.
    let mut next = 1u16;
    let mut completed = 0;
    while completed < 5 {
        let p = sub.expect_packet("PUBLISH or PUBREL");
        if p[0] == 0x62 {
            let pkid = u16::from_be_bytes([p[2], p[3]]);
            sub.send(&ack_packet(0x70, pkid));
            completed += 1;
            continue;
        }
        let (_, qos, _, _, pkid, _) = parse_publish(&p);
        assert_eq!(pkid, next, "packet ids count up from 1");
        next += 1;
        if qos == 1 {
            sub.send(&ack_packet(0x40, pkid));
            completed += 1;
        } else {
            sub.send(&ack_packet(0x50, pkid));
        }
    }
    assert_eq!(next, 6);
    sub.ping();
}

/// Reads `n` QoS `qos` PUBLISHes on `sub` (acknowledging each), checking payload order.
/// 512 bytes starting with the message index, so a burst of 2000 (~1 MB) outruns the socket
/// buffers and exercises the broker's backpressure.
fn burst_payload(i: u32) -> Vec<u8> {
    let mut p = i.to_be_bytes().to_vec();
    p.resize(512, 0x5A);
    p
}

fn receive_in_order(mut sub: Raw, n: u32, qos: u8) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let (mut i, mut completed) = (0u32, 0u32);
        while completed < n {
            let p = sub
                .read_packet()
                .unwrap_or_else(|| panic!("subscriber: message {i} of {n} missing"));
            if p[0] == 0x62 {
                // PUBREL for a QoS 2 delivery; later PUBLISHes may come before it.
                assert_eq!(qos, 2, "unexpected PUBREL {p:02x?}");
                sub.send(&ack_packet(0x70, u16::from_be_bytes([p[2], p[3]])));
                completed += 1;
                continue;
            }
            let (dup, q, _, _, pkid, payload) = parse_publish(&p);
            assert_eq!((dup, q), (false, qos));
            assert!(i < n, "subscriber: more than {n} messages");
            assert_eq!(
                payload,
                burst_payload(i),
                "subscriber: message {i} out of order"
            );
            i += 1;
            if qos == 1 {
                sub.send(&ack_packet(0x40, pkid));
                completed += 1;
            } else {
                sub.send(&ack_packet(0x50, pkid));
            }
        }
        sub.ping();
    })
}

/// Connects a raw publisher and sends `n` publishes (ids 1..=n) in one write, without reading.
fn send_burst(topic: &str, qos: u8, n: u32, b: &BrokerProc) -> Raw {
    let mut publ = Raw::connected(b.addr, "pub");
    let mut all = Vec::new();
    for i in 0..n {
        all.extend(publish_packet(
            topic,
            qos,
            false,
            false,
            (i + 1) as u16,
            &burst_payload(i),
        ));
    }
    publ.send(&all);
    publ
}

/// Checklist "3.1.1 puts no limit": 2000 QoS 1 publishes sent without reading are all PUBACKed
/// in order and all delivered in order; none is dropped `[MQTT-4.3.2-2]` `[MQTT-4.6.0-5]`.
#[test]
fn qos1_burst_without_reading_acks_and_delivers_all_in_order() {
    const N: u32 = 2000;
    let b = BrokerProc::start("[limits]\nmax_queued_messages = 5000\n");
    let mut sub = Raw::connected(b.addr, "sub");
    sub.subscribe(1, "burst/1", 1);
    let reader = receive_in_order(sub, N, 1);
    let mut publ = send_burst("burst/1", 1, N, &b);
    for i in 0..N {
        let p = publ
            .read_packet()
            .unwrap_or_else(|| panic!("PUBACK {} missing", i + 1));
        assert_eq!(p, ack_packet(0x40, (i + 1) as u16), "PUBACKs out of order");
    }
    reader
        .join()
        .expect("subscriber got every message in order");
}

/// Checklist "3.1.1 puts no limit": 2000 QoS 2 publishes sent without reading are all PUBRECed
/// in order, completed, and delivered exactly once in order `[MQTT-4.3.3-2]` `[MQTT-4.6.0-5]`.
#[test]
fn qos2_burst_without_reading_acks_and_delivers_all_in_order() {
    const N: u32 = 2000;
    let b = BrokerProc::start("[limits]\nmax_queued_messages = 5000\n");
    let mut sub = Raw::connected(b.addr, "sub");
    sub.subscribe(1, "burst/2", 2);
    let reader = receive_in_order(sub, N, 2);
    let mut publ = send_burst("burst/2", 2, N, &b);
    for i in 0..N {
        let p = publ
            .read_packet()
            .unwrap_or_else(|| panic!("PUBREC {} missing", i + 1));
        assert_eq!(p, ack_packet(0x50, (i + 1) as u16), "PUBRECs out of order");
    }
    let mut rels = Vec::new();
    for i in 0..N {
        rels.extend(ack_packet(0x62, (i + 1) as u16));
    }
    publ.send(&rels);
    for i in 0..N {
        let p = publ
            .read_packet()
            .unwrap_or_else(|| panic!("PUBCOMP {} missing", i + 1));
        assert_eq!(p, ack_packet(0x70, (i + 1) as u16), "PUBCOMPs out of order");
    }
    reader
        .join()
        .expect("subscriber got every message once, in order");
}
