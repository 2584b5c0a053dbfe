//! PUBLISH, SUBSCRIBE and UNSUBSCRIBE through the real broker binary: QoS, ordering, SUBACK
//! codes, `$SYS` handling and payload integrity.

mod common;

use std::time::Duration;

use common::*;
use rumqttc::{Packet, QoS, SubscribeReasonCode};

/// [MQTT-4.3.1-1] [MQTT-4.3.2-2] [MQTT-4.3.3-2] QoS 0, 1 and 2 messages each arrive once, at
/// their QoS, with their payload.
#[tokio::test(flavor = "multi_thread")]
async fn qos_0_1_2_messages_round_trip() {
    let b = BrokerProc::start("");
    let mut sub = connect(b.addr, "rt-sub").await;
    sub.subscribe("rt/t", QoS::ExactlyOnce).await;
    let mut publisher = connect(b.addr, "rt-pub").await;
    for q in 0..=2 {
        let payload = format!("qos{q}");
        publisher
            .publish("rt/t", qos(q), false, payload.clone())
            .await;
        let p = sub.expect_publish_on("rt/t").await;
        assert_eq!(
            (p.qos, &p.payload[..], p.retain),
            (qos(q), payload.as_bytes(), false)
        );
    }
    publisher.barrier().await;
    sub.expect_no_publish(Duration::from_millis(300)).await;
}

/// [MQTT-4.3.2-2] a QoS 1 PUBLISH is acknowledged with PUBACK carrying its packet id.
#[test]
fn qos1_publish_is_acked_with_puback() {
    let b = BrokerProc::start("");
    let mut raw = Raw::connected(b.addr, "puback");
    raw.send(&publish_packet("ack/t", 1, false, false, 0x1234, b"x"));
    assert_eq!(raw.read_packet().expect("PUBACK"), ack_packet(0x40, 0x1234));
}

/// [MQTT-4.3.3-2] [MQTT-3.6.4-1] a QoS 2 PUBLISH gets PUBREC, and the PUBREL gets PUBCOMP.
#[test]
fn qos2_publish_gets_pubrec_then_pubcomp() {
    let b = BrokerProc::start("");
    let mut raw = Raw::connected(b.addr, "pubrec");
    raw.send(&publish_packet("ack/t", 2, false, false, 9, b"x"));
    assert_eq!(raw.read_packet().expect("PUBREC"), ack_packet(0x50, 9));
    raw.send(&ack_packet(0x62, 9));
    assert_eq!(raw.read_packet().expect("PUBCOMP"), ack_packet(0x70, 9));
}

/// [MQTT-3.8.4-6] the delivered QoS is min(publish QoS, granted QoS), for all nine pairs.
#[tokio::test(flavor = "multi_thread")]
async fn delivered_qos_is_min_of_publish_and_granted() {
    let b = BrokerProc::start("");
    let mut subs = Vec::new();
    for g in 0..=2u8 {
        let mut s = connect(b.addr, &format!("min-sub-{g}")).await;
        let codes = s.subscribe("min/t", qos(g)).await;
        assert_eq!(codes, vec![SubscribeReasonCode::Success(qos(g))]);
        subs.push(s);
    }
    let publisher = connect(b.addr, "min-pub").await;
    for p in 0..=2u8 {
        publisher.publish("min/t", qos(p), false, vec![p]).await;
    }
    for (g, s) in subs.iter_mut().enumerate() {
        let mut got = Vec::new();
        for _ in 0..3 {
            let m = s.expect_publish_on("min/t").await;
            got.push((m.payload[0], m.qos));
        }
        // Order is only guaranteed per QoS, so compare as a set.
        got.sort_by_key(|(p, _)| *p);
        let want: Vec<(u8, QoS)> = (0..=2u8).map(|p| (p, qos(p.min(g as u8)))).collect();
        assert_eq!(got, want, "granted QoS {g}");
    }
}

/// [MQTT-3.3.5-1] overlapping subscriptions of one client deliver the message once, at the
/// highest QoS granted among them.
#[tokio::test(flavor = "multi_thread")]
async fn overlapping_subscriptions_deliver_once_at_highest_qos() {
    let b = BrokerProc::start("");
    let mut sub = connect(b.addr, "ov-sub").await;
    sub.subscribe("ov/#", QoS::AtLeastOnce).await;
    sub.subscribe("ov/+", QoS::ExactlyOnce).await;
    sub.subscribe("ov/b", QoS::AtMostOnce).await;
    sub.subscribe("ov-marker", QoS::ExactlyOnce).await;
    let publisher = connect(b.addr, "ov-pub").await;
    publisher
        .publish("ov/b", QoS::ExactlyOnce, false, "one")
        .await;
    publisher
        .publish("ov-marker", QoS::ExactlyOnce, false, "m")
        .await;
    let p = sub.expect_publish_on("ov/b").await;
    assert_eq!((p.qos, &p.payload[..]), (QoS::ExactlyOnce, &b"one"[..]));
    sub.expect_publish_on("ov-marker").await;
    sub.expect_no_publish(Duration::from_millis(300)).await;

    // "ov/b/c" matches only "ov/#" (QoS 1).
    publisher
        .publish("ov/b/c", QoS::ExactlyOnce, false, "two")
        .await;
    publisher
        .publish("ov-marker", QoS::ExactlyOnce, false, "m")
        .await;
    let p = sub.expect_publish_on("ov/b/c").await;
    assert_eq!(p.qos, QoS::AtLeastOnce);
    sub.expect_publish_on("ov-marker").await;
}

async fn order_is_kept(q: QoS, n: usize) {
    let b = BrokerProc::start("");
    let mut sub = connect(b.addr, "order-sub").await;
    sub.subscribe("order/t", q).await;
    let publisher = connect(b.addr, "order-pub").await;
    for i in 0..n {
        publisher.publish("order/t", q, false, i.to_string()).await;
    }
    for i in 0..n {
        let Some(p) = sub.next_publish_within(WAIT).await else {
            panic!("only {i} of {n} messages arrived; broker log:\n{}", b.log());
        };
        assert_eq!(
            std::str::from_utf8(&p.payload).expect("utf8"),
            i.to_string(),
            "message {i} out of order"
        );
        assert_eq!((p.topic.as_str(), p.qos), ("order/t", q));
    }
}

/// [MQTT-4.6.0-5] 500 QoS 1 messages on one topic arrive in the order they were published.
#[tokio::test(flavor = "multi_thread")]
async fn qos1_messages_keep_their_order() {
    order_is_kept(QoS::AtLeastOnce, 500).await;
}

/// [MQTT-4.6.0-5] 500 QoS 0 messages on one topic arrive in the order they were published.
#[tokio::test(flavor = "multi_thread")]
async fn qos0_messages_keep_their_order() {
    order_is_kept(QoS::AtMostOnce, 500).await;
}

/// [MQTT-3.10.4-2] after UNSUBSCRIBE (and its UNSUBACK) nothing more is delivered for the filter.
#[tokio::test(flavor = "multi_thread")]
async fn unsubscribe_stops_delivery() {
    let b = BrokerProc::start("");
    let mut sub = connect(b.addr, "un-sub").await;
    sub.subscribe("un/t", QoS::AtLeastOnce).await;
    sub.subscribe("un/marker", QoS::AtLeastOnce).await;
    let publisher = connect(b.addr, "un-pub").await;
    publisher
        .publish("un/t", QoS::AtLeastOnce, false, "before")
        .await;
    sub.expect_publish_on("un/t").await;

    sub.client.unsubscribe("un/t").await.expect("unsubscribe");
    sub.wait_for("UNSUBACK", |p| matches!(p, Packet::UnsubAck(_)))
        .await;
    publisher
        .publish("un/t", QoS::AtLeastOnce, false, "after")
        .await;
    publisher
        .publish("un/marker", QoS::AtLeastOnce, false, "m")
        .await;
    sub.expect_publish_on("un/marker").await;
    sub.expect_no_publish(Duration::from_millis(300)).await;
}

/// [MQTT-3.10.4-4, -5] UNSUBACK carries the packet id, even when no subscription matched.
#[test]
fn unsuback_is_sent_when_nothing_matched() {
    let b = BrokerProc::start("");
    let mut raw = Raw::connected(b.addr, "unsuback");
    raw.send(&unsubscribe_packet(0x0102, &["never/subscribed", "a/+/#"]));
    assert_eq!(
        raw.read_packet().expect("UNSUBACK"),
        ack_packet(0xb0, 0x0102)
    );
    raw.ping();
}

/// [MQTT-3.8.4-5, -6] SUBACK has one code per filter, in order, and every filter of the
/// packet is granted and works. (Invalid filters no longer get 0x80: they close the
/// connection, issue #8 item 2, see the tests below.)
#[test]
fn suback_codes_follow_filters_in_order() {
    let b = BrokerProc::start("");
    let mut raw = Raw::connected(b.addr, "suback");
    raw.subscribe_many(
        0x0a0b,
        &[
            ("ok/1", 1),
            ("ok/+/x", 0),
            ("ok/2", 2),
            ("sport/#", 1),
            ("+/ok/#", 0),
            ("a/b/c", 2),
        ],
        &[1, 0, 2, 1, 0, 2],
    );
    raw.send(&publish_packet("ok/2", 1, false, false, 3, b"hello"));
    // PUBACK for our publish, and the message delivered back to us at QoS 1 (in either order).
    let (mut acks, delivered): (Vec<_>, Vec<_>) = (0..2)
        .map(|_| raw.read_packet().expect("packet"))
        .partition(|p| p[0] == 0x40);
    assert_eq!(acks.pop(), Some(ack_packet(0x40, 3)));
    let (_, q, retain, topic, _, payload) = parse_publish(&delivered[0]);
    assert_eq!(
        (q, retain, topic.as_str(), payload.as_slice()),
        (1, false, "ok/2", &b"hello"[..]),
        "min(1, granted 2)"
    );
}

/// Invalid filters, each with the rule it breaks.
const INVALID_FILTERS: [(&str, &str); 6] = [
    ("", "[MQTT-4.7.3-1]"),
    ("a/#/b", "[MQTT-4.7.1-2]"),
    ("a#", "[MQTT-4.7.1-2]"),
    ("a+", "[MQTT-4.7.1-3]"),
    ("##", "[MQTT-4.7.1-2]"),
    ("+a", "[MQTT-4.7.1-3]"),
];

/// Asserts the broker closes `raw` without answering, and logs that end once, at warn, naming
/// `rule` and the filter.
fn assert_closed_for(b: &BrokerProc, raw: &mut Raw, client_id: &str, filter: &str, rule: &str) {
    let got = raw.read_until_closed();
    assert!(
        got.is_empty(),
        "{filter:?}: expected no answer, got {got:02x?}"
    );
    let id = format!("client_id=\"{client_id}\"");
    let quoted = format!("{filter:?}");
    let parts = [
        "WARN",
        "disconnected: protocol violation",
        rule,
        &quoted,
        &id,
    ];
    let log = b.wait_log_lines(&parts, 1);
    let ends = log
        .lines()
        .filter(|l| l.contains("disconnected") && l.contains(&id))
        .count();
    assert_eq!(ends, 1, "one line for the end of {client_id}; log:\n{log}");
}

/// issue #8 item 2 [MQTT-4.7.1-1..-3] [MQTT-4.7.3-1] [MQTT-4.8.0-1]: a SUBSCRIBE with an
/// invalid filter ("", "a/#/b", "a#", "a+", "##", "+a") closes the connection without SUBACK;
/// the one warn line for the disconnect names the rule broken and the filter.
#[test]
fn invalid_filter_in_subscribe_closes_without_suback() {
    let b = BrokerProc::start("");
    for (i, (filter, rule)) in INVALID_FILTERS.into_iter().enumerate() {
        let id = format!("bad-sub-{i}");
        let mut raw = Raw::connected(b.addr, &id);
        raw.send(&subscribe_packet(1, &[(filter, 0)]));
        assert_closed_for(&b, &mut raw, &id, filter, rule);
    }
}

/// issue #8 item 2 [MQTT-4.7.1-1..-3] [MQTT-4.7.3-1] [MQTT-4.8.0-1]: an UNSUBSCRIBE with an
/// invalid filter closes the connection without UNSUBACK; the warn line names the rule.
#[test]
fn invalid_filter_in_unsubscribe_closes_without_unsuback() {
    let b = BrokerProc::start("");
    for (i, (filter, rule)) in INVALID_FILTERS.into_iter().enumerate() {
        let id = format!("bad-unsub-{i}");
        let mut raw = Raw::connected(b.addr, &id);
        raw.send(&unsubscribe_packet(1, &[filter]));
        assert_closed_for(&b, &mut raw, &id, filter, rule);
    }
}

/// Publishes QoS 1 to each topic in order from a fresh client, each acknowledged (so routed).
fn publish_acked(b: &BrokerProc, topics: &[&str]) {
    let mut publisher = Raw::connected(b.addr, "filters-pub");
    for (i, topic) in topics.iter().enumerate() {
        let id = u16::try_from(i + 1).expect("id");
        publisher.send(&publish_packet(
            topic,
            1,
            false,
            false,
            id,
            topic.as_bytes(),
        ));
        assert_eq!(publisher.expect_packet("PUBACK"), ack_packet(0x40, id));
    }
}

/// The topics of the next `n` PUBLISHes `raw` receives (each acknowledged).
fn next_topics(raw: &mut Raw, n: usize) -> Vec<String> {
    (0..n)
        .map(|_| {
            let (_, qos, _, topic, pkid, _) = parse_publish(&raw.expect_packet("PUBLISH"));
            if qos == 1 {
                raw.send(&ack_packet(0x40, pkid));
            }
            topic
        })
        .collect()
}

/// issue #8 item 2 [MQTT-4.7.1-2] [MQTT-4.8.0-1]: one invalid filter among valid ones closes
/// the connection and none of the packet's filters is subscribed: the same persistent client,
/// resumed, gets only what it subscribes afterwards.
#[test]
fn invalid_filter_among_valid_ones_subscribes_none() {
    let b = BrokerProc::start("");
    let (mut raw, _) = Raw::connected_with(b.addr, "mixed-sub", false);
    raw.send(&subscribe_packet(
        1,
        &[("mix/1", 1), ("mix/#/x", 1), ("mix/2", 1)],
    ));
    assert_closed_for(&b, &mut raw, "mixed-sub", "mix/#/x", "[MQTT-4.7.1-2]");
    let (mut raw, present) = Raw::connected_with(b.addr, "mixed-sub", false);
    assert!(present, "the persistent session was kept");
    raw.subscribe(2, "mix/marker", 1);
    publish_acked(&b, &["mix/1", "mix/2", "mix/marker"]);
    // The session queue keeps routing order: a subscription to mix/1 or mix/2 would show first.
    assert_eq!(next_topics(&mut raw, 1), ["mix/marker"]);
    raw.expect_silence(Duration::from_millis(300));
}

/// issue #8 item 2 [MQTT-4.7.1-2] [MQTT-4.8.0-1]: one invalid filter among valid ones in
/// UNSUBSCRIBE closes the connection and none of the packet's filters is unsubscribed: the
/// resumed persistent session still receives on both.
#[test]
fn invalid_filter_among_valid_ones_unsubscribes_none() {
    let b = BrokerProc::start("");
    let (mut raw, _) = Raw::connected_with(b.addr, "mixed-unsub", false);
    raw.subscribe(1, "unmix/1", 1);
    raw.subscribe(2, "unmix/2", 1);
    raw.send(&unsubscribe_packet(3, &["unmix/1", "unmix/#/x", "unmix/2"]));
    assert_closed_for(&b, &mut raw, "mixed-unsub", "unmix/#/x", "[MQTT-4.7.1-2]");
    let (mut raw, present) = Raw::connected_with(b.addr, "mixed-unsub", false);
    assert!(present, "the persistent session was kept");
    publish_acked(&b, &["unmix/1", "unmix/2"]);
    assert_eq!(next_topics(&mut raw, 2), ["unmix/1", "unmix/2"]);
}

/// [MQTT-3.8.4-3] subscribing again to the same filter replaces its QoS (one subscription).
#[tokio::test(flavor = "multi_thread")]
async fn resubscribing_replaces_the_granted_qos() {
    let b = BrokerProc::start("");
    let mut sub = connect(b.addr, "re-sub").await;
    sub.subscribe("re/t", QoS::ExactlyOnce).await;
    let codes = sub.subscribe("re/t", QoS::AtMostOnce).await;
    assert_eq!(codes, vec![SubscribeReasonCode::Success(QoS::AtMostOnce)]);
    sub.subscribe("re/marker", QoS::AtMostOnce).await;
    let publisher = connect(b.addr, "re-pub").await;
    publisher
        .publish("re/t", QoS::ExactlyOnce, false, "x")
        .await;
    publisher
        .publish("re/marker", QoS::AtMostOnce, false, "m")
        .await;
    let p = sub.expect_publish_on("re/t").await;
    assert_eq!(p.qos, QoS::AtMostOnce);
    sub.expect_publish_on("re/marker").await;
    sub.expect_no_publish(Duration::from_millis(300)).await;
}

/// (our choice) filters starting with "$" ("$SYS/#", "$share/g/f") are accepted and granted.
#[tokio::test(flavor = "multi_thread")]
async fn dollar_filters_are_granted() {
    let b = BrokerProc::start("");
    let mut sub = connect(b.addr, "dollar-sub").await;
    for (f, q) in [
        ("$SYS/#", QoS::AtLeastOnce),
        ("$SYS/broker/+", QoS::ExactlyOnce),
        ("$share/g/f", QoS::AtMostOnce),
    ] {
        assert_eq!(
            sub.subscribe(f, q).await,
            vec![SubscribeReasonCode::Success(q)],
            "{f}"
        );
    }
}

/// (our choice) a client's PUBLISH to "$SYS/..." is dropped silently but its QoS handshake
/// completes: PUBACK / PUBREC+PUBCOMP arrive and a "$SYS/#" subscriber gets nothing.
#[tokio::test(flavor = "multi_thread")]
async fn publishes_to_sys_are_acked_and_dropped() {
    // The broker's own $SYS tree (issue #10, tested in admin.rs) is off, so that anything a
    // "$SYS/#" subscriber receives here could only be a client's forged publish.
    let b = BrokerProc::start("[sys]\ninterval_s = 0\n");
    let mut sub = connect(b.addr, "sys-sub").await;
    sub.subscribe("$SYS/#", QoS::ExactlyOnce).await;
    sub.subscribe("sys-marker", QoS::AtLeastOnce).await;

    let mut raw = Raw::connected(b.addr, "sys-pub");
    raw.send(&publish_packet("$SYS/x", 0, false, false, 0, b"q0"));
    raw.send(&publish_packet("$SYS/x", 1, false, false, 5, b"q1"));
    assert_eq!(raw.read_packet().expect("PUBACK"), ack_packet(0x40, 5));
    raw.send(&publish_packet(
        "$SYS/broker/uptime",
        2,
        true,
        false,
        6,
        b"q2",
    ));
    assert_eq!(raw.read_packet().expect("PUBREC"), ack_packet(0x50, 6));
    raw.send(&ack_packet(0x62, 6));
    assert_eq!(raw.read_packet().expect("PUBCOMP"), ack_packet(0x70, 6));
    raw.send(&publish_packet("sys-marker", 1, false, false, 7, b"m"));
    assert_eq!(raw.read_packet().expect("PUBACK"), ack_packet(0x40, 7));

    sub.expect_publish_on("sys-marker").await;
    sub.expect_no_publish(Duration::from_millis(300)).await;
    // Nothing was retained either.
    let mut late = connect(b.addr, "sys-late").await;
    // Marker first: `subscribe` skips whatever arrives before its SUBACK.
    late.subscribe("sys-marker", QoS::AtLeastOnce).await;
    late.subscribe("$SYS/#", QoS::AtLeastOnce).await;
    raw.send(&publish_packet("sys-marker", 0, false, false, 0, b"m2"));
    late.expect_publish_on("sys-marker").await;
}

/// [MQTT-4.3.2-2] [MQTT-4.3.3-2] a publish to a topic nobody subscribes to is still acknowledged.
#[test]
fn publish_without_subscribers_is_acked() {
    let b = BrokerProc::start("");
    let mut raw = Raw::connected(b.addr, "lonely");
    raw.send(&publish_packet("nobody/here", 1, false, false, 1, b"x"));
    assert_eq!(raw.read_packet().expect("PUBACK"), ack_packet(0x40, 1));
    raw.send(&publish_packet("nobody/here", 2, false, false, 2, b"x"));
    assert_eq!(raw.read_packet().expect("PUBREC"), ack_packet(0x50, 2));
    raw.send(&ack_packet(0x62, 2));
    assert_eq!(raw.read_packet().expect("PUBCOMP"), ack_packet(0x70, 2));
}

/// [MQTT-3.3.3] payloads are opaque bytes: all 256 byte values and an empty payload arrive intact.
#[tokio::test(flavor = "multi_thread")]
async fn binary_and_empty_payloads_arrive_intact() {
    let b = BrokerProc::start("");
    let mut sub = connect(b.addr, "bin-sub").await;
    sub.subscribe("bin/+", QoS::AtLeastOnce).await;
    let publisher = connect(b.addr, "bin-pub").await;
    let all: Vec<u8> = (0..=255u8).chain((0..=255u8).rev()).collect();
    publisher
        .publish("bin/all", QoS::AtLeastOnce, false, all.clone())
        .await;
    publisher
        .publish("bin/empty", QoS::AtLeastOnce, false, Vec::new())
        .await;
    assert_eq!(
        &sub.expect_publish_on("bin/all").await.payload[..],
        &all[..]
    );
    assert!(sub.expect_publish_on("bin/empty").await.payload.is_empty());
}

/// A 256 KiB payload arrives intact.
#[tokio::test(flavor = "multi_thread")]
async fn large_payload_arrives_intact() {
    let b = BrokerProc::start("");
    let big_opts = |id: &str| {
        let mut o = options(b.addr, id);
        o.set_max_packet_size(1 << 20, 1 << 20);
        o
    };
    let (mut sub, _) = connect_with(big_opts("big-sub")).await;
    sub.subscribe("big/t", QoS::AtLeastOnce).await;
    let (publisher, _) = connect_with(big_opts("big-pub")).await;
    let payload: Vec<u8> = (0..256 * 1024u32)
        .map(|i| (i * 7 + i / 256) as u8)
        .collect();
    publisher
        .publish("big/t", QoS::AtLeastOnce, false, payload.clone())
        .await;
    let p = sub.expect_publish_on("big/t").await;
    assert_eq!(p.payload.len(), payload.len());
    assert!(p.payload[..] == payload[..], "payload corrupted");
}
