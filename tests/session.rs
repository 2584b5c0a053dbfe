//! Sessions: persistent sessions queueing while offline and resuming, clean sessions discarding,
//! re-sending in-flight messages with DUP, QoS 2 state across reconnects, takeover and expiry.

mod common;

use std::time::{Duration, Instant};

use common::*;

const SHORT: Duration = Duration::from_millis(300);

/// Drops a raw client's socket and waits until the broker has logged its disconnect (the
/// `n`-th for this client id), so the session is offline before the test goes on.
fn go_offline(b: &BrokerProc, raw: Raw, client_id: &str, n: usize) {
    drop(raw);
    b.wait_disconnected(client_id, n);
}

/// Publishes from a fresh raw clean-session client and waits for its acknowledgement, so the
/// message has been routed when this returns.
fn publish_acked(b: &BrokerProc, topic: &str, qos: u8, payload: &[u8]) {
    let mut p = Raw::connected(b.addr, "publisher");
    p.send(&publish_packet(topic, qos, false, false, 1, payload));
    match qos {
        0 => p.ping(),
        1 => assert_eq!(p.expect_packet("PUBACK"), ack_packet(0x40, 1)),
        _ => {
            assert_eq!(p.expect_packet("PUBREC"), ack_packet(0x50, 1));
            p.send(&ack_packet(0x62, 1));
            assert_eq!(p.expect_packet("PUBCOMP"), ack_packet(0x70, 1));
        }
    }
    p.send(&[0xE0, 0x00]);
}

/// `[MQTT-3.1.2-4]` `[MQTT-3.2.2-2]` QoS 1 and 2 messages published while a persistent session
/// is offline are delivered on reconnect (session present = 1), in order, and the
/// subscription is still there.
#[test]
fn persistent_session_queues_qos1_and_qos2_while_offline() {
    let b = BrokerProc::start("");
    let (mut s, present) = Raw::connected_with(b.addr, "ps", false);
    assert!(
        !present,
        "first connect has no stored session [MQTT-3.2.2-3]"
    );
    s.subscribe(1, "off/+", 2);
    go_offline(&b, s, "ps", 1);

    publish_acked(&b, "off/a", 1, b"one");
    publish_acked(&b, "off/b", 2, b"two");

    let (mut s, present) = Raw::connected_with(b.addr, "ps", false);
    assert!(present, "session present = 1 on resume [MQTT-3.2.2-2]");
    let (dup, qos, _, topic, id1, payload) = parse_publish(&s.expect_packet("queued QoS 1"));
    assert_eq!(
        (dup, qos, topic.as_str(), &payload[..]),
        (false, 1, "off/a", &b"one"[..])
    );
    let (dup, qos, _, topic, id2, payload) = parse_publish(&s.expect_packet("queued QoS 2"));
    assert_eq!(
        (dup, qos, topic.as_str(), &payload[..]),
        (false, 2, "off/b", &b"two"[..])
    );
    assert_ne!(id1, id2);
    s.send(&ack_packet(0x40, id1));
    s.send(&ack_packet(0x50, id2));
    assert_eq!(s.expect_packet("PUBREL"), ack_packet(0x62, id2));
    s.send(&ack_packet(0x70, id2));

    // The subscription survived: a new message arrives without subscribing again.
    publish_acked(&b, "off/c", 1, b"three");
    let (_, _, _, topic, _, payload) = parse_publish(&s.expect_packet("live message"));
    assert_eq!((topic.as_str(), &payload[..]), ("off/c", &b"three"[..]));
}

/// `[MQTT-3.1.2-4]` (our choice, as mosquitto) QoS 0 is not queued for an offline session
/// by default.
#[test]
fn qos0_is_not_queued_offline_by_default() {
    let b = BrokerProc::start("");
    let (mut s, _) = Raw::connected_with(b.addr, "ps", false);
    s.subscribe(1, "q0", 1);
    go_offline(&b, s, "ps", 1);
    publish_acked(&b, "q0", 0, b"lost");
    publish_acked(&b, "q0", 1, b"kept");

    let (mut s, present) = Raw::connected_with(b.addr, "ps", false);
    assert!(present);
    let (_, qos, _, _, _, payload) = parse_publish(&s.expect_packet("queued message"));
    assert_eq!(
        (qos, &payload[..]),
        (1, &b"kept"[..]),
        "QoS 0 was queued offline"
    );
}

/// `[MQTT-3.1.2-4]` with `queue_qos0_messages = true`, QoS 0 is queued offline too, in order.
#[test]
fn qos0_is_queued_offline_when_configured() {
    let b = BrokerProc::start("[session]\nqueue_qos0_messages = true\n");
    let (mut s, _) = Raw::connected_with(b.addr, "ps", false);
    s.subscribe(1, "q0", 1);
    go_offline(&b, s, "ps", 1);
    publish_acked(&b, "q0", 0, b"zero");
    publish_acked(&b, "q0", 1, b"one");

    let (mut s, present) = Raw::connected_with(b.addr, "ps", false);
    assert!(present);
    let (_, qos, _, _, _, payload) = parse_publish(&s.expect_packet("queued QoS 0"));
    assert_eq!((qos, &payload[..]), (0, &b"zero"[..]));
    let (_, qos, _, _, _, payload) = parse_publish(&s.expect_packet("queued QoS 1"));
    assert_eq!((qos, &payload[..]), (1, &b"one"[..]));
}

/// `[MQTT-3.1.2-6]` `[MQTT-3.2.2-1]` reconnecting with CleanSession=1 discards the stored
/// session: session present 0, nothing queued is delivered, the subscription is gone.
#[test]
fn clean_session_reconnect_discards_the_stored_session() {
    let b = BrokerProc::start("");
    let (mut s, _) = Raw::connected_with(b.addr, "ps", false);
    s.subscribe(1, "gone", 1);
    go_offline(&b, s, "ps", 1);
    publish_acked(&b, "gone", 1, b"queued");

    let (mut s, present) = Raw::connected_with(b.addr, "ps", true);
    assert!(!present, "CleanSession=1 must answer session present 0");
    // Barrier: our own subscription to another topic works, and nothing else came before it.
    s.subscribe(2, "other", 1);
    publish_acked(&b, "gone", 1, b"after");
    publish_acked(&b, "other", 1, b"marker");
    let (_, _, _, topic, _, payload) = parse_publish(&s.expect_packet("marker"));
    assert_eq!((topic.as_str(), &payload[..]), ("other", &b"marker"[..]));
    s.ping();
    s.expect_silence(SHORT);
    drop(s);

    // And the persistent session is not resurrected afterwards.
    b.wait_disconnected("ps", 2);
    let (_, present) = Raw::connected_with(b.addr, "ps", false);
    assert!(!present, "the discarded session came back");
}

/// `[MQTT-4.4.0-1]` on resume, unacknowledged QoS 1 PUBLISHes are re-sent with DUP=1 and the
/// same packet ids, in the original order, before messages queued behind them.
#[test]
fn resume_resends_unacked_publishes_with_dup_and_same_ids_first() {
    let b = BrokerProc::start("[limits]\nmax_inflight = 2\n");
    let (mut s, _) = Raw::connected_with(b.addr, "ps", false);
    s.subscribe(1, "re", 1);
    for i in 0..4u8 {
        publish_acked(&b, "re", 1, &[i]);
    }
    // The window of 2 is in flight; 2 more are queued behind it.
    let (dup, _, _, _, id_a, pa) = parse_publish(&s.expect_packet("PUBLISH 1"));
    let (_, _, _, _, id_b, pb) = parse_publish(&s.expect_packet("PUBLISH 2"));
    assert_eq!((dup, pa, pb), (false, vec![0], vec![1]));
    go_offline(&b, s, "ps", 1);

    let (mut s, present) = Raw::connected_with(b.addr, "ps", false);
    assert!(present);
    let (dup, qos, _, _, id, payload) = parse_publish(&s.expect_packet("re-sent 1"));
    assert_eq!(
        (dup, qos, id, payload),
        (true, 1, id_a, vec![0]),
        "first re-send"
    );
    let (dup, _, _, _, id, payload) = parse_publish(&s.expect_packet("re-sent 2"));
    assert_eq!((dup, id, payload), (true, id_b, vec![1]), "second re-send");
    s.ping();
    s.expect_silence(SHORT);
    s.send(&ack_packet(0x40, id_a));
    let (dup, _, _, _, id_c, payload) = parse_publish(&s.expect_packet("queued 3"));
    assert_eq!((dup, payload), (false, vec![2]));
    assert_ne!(id_c, id_b, "id of a message still in flight reused");
    s.send(&ack_packet(0x40, id_b));
    let (dup, _, _, _, _, payload) = parse_publish(&s.expect_packet("queued 4"));
    assert_eq!((dup, payload), (false, vec![3]));
}

/// `[MQTT-4.4.0-1]` a QoS 2 delivery that was PUBREC'd before the disconnect is resumed with
/// PUBREL (not the PUBLISH), one that was not is re-sent as PUBLISH with DUP=1, in the
/// original order; PUBCOMP completes them and a further resume re-sends nothing.
#[test]
fn resume_resends_pubrel_for_pubrecd_qos2_delivery() {
    let b = BrokerProc::start("");
    let (mut s, _) = Raw::connected_with(b.addr, "ps", false);
    s.subscribe(1, "q2", 2);
    publish_acked(&b, "q2", 2, b"first");
    publish_acked(&b, "q2", 2, b"second");
    let (_, qos, _, _, id1, _) = parse_publish(&s.expect_packet("PUBLISH 1"));
    let (_, _, _, _, id2, _) = parse_publish(&s.expect_packet("PUBLISH 2"));
    assert_eq!(qos, 2);
    s.send(&ack_packet(0x50, id1));
    assert_eq!(s.expect_packet("PUBREL"), ack_packet(0x62, id1));
    go_offline(&b, s, "ps", 1);

    let (mut s, present) = Raw::connected_with(b.addr, "ps", false);
    assert!(present);
    assert_eq!(s.expect_packet("PUBREL on resume"), ack_packet(0x62, id1));
    let (dup, qos, _, _, id, payload) = parse_publish(&s.expect_packet("re-sent PUBLISH 2"));
    assert_eq!((dup, qos, id, &payload[..]), (true, 2, id2, &b"second"[..]));
    s.send(&ack_packet(0x70, id1));
    s.send(&ack_packet(0x50, id2));
    assert_eq!(s.expect_packet("PUBREL 2"), ack_packet(0x62, id2));
    s.send(&ack_packet(0x70, id2));
    s.ping();
    s.expect_silence(SHORT);
    // Completed: a further resume re-sends nothing.
    go_offline(&b, s, "ps", 2);
    let (mut s, present) = Raw::connected_with(b.addr, "ps", false);
    assert!(present);
    s.ping();
    s.expect_silence(SHORT);
}

/// `[MQTT-3.1.4-2]` `[MQTT-3.1.2-6]` a CleanSession=1 connection taking over a connected
/// persistent session discards it: session present 0, subscription gone, and it is not
/// resumed afterwards.
#[test]
fn clean_takeover_of_persistent_session_discards_it() {
    let b = BrokerProc::start("");
    let (mut old, _) = Raw::connected_with(b.addr, "ps", false);
    old.subscribe(1, "ct", 1);
    let (mut new, present) = Raw::connected_with(b.addr, "ps", true);
    assert!(!present);
    old.expect_closed();
    new.subscribe(2, "barrier", 0);
    publish_acked(&b, "ct", 1, b"old subscription");
    publish_acked(&b, "barrier", 0, b"marker");
    let (_, _, _, topic, _, _) = parse_publish(&new.expect_packet("marker"));
    assert_eq!(topic, "barrier", "the discarded subscription still routed");
    new.send(&[0xE0, 0x00]);
    new.expect_closed();
    b.wait_disconnected("ps", 2);
    let (_, present) = Raw::connected_with(b.addr, "ps", false);
    assert!(!present, "the discarded persistent session came back");
}

/// `[MQTT-4.3.3-2]` `[MQTT-3.1.2-4]` the inbound QoS 2 packet id awaiting PUBREL is part of the
/// session: re-sent after a reconnect (DUP=1) it is PUBREC'd but not delivered again.
#[test]
fn inbound_qos2_id_survives_reconnect() {
    let b = BrokerProc::start("");
    let mut sub = Raw::connected(b.addr, "sub");
    sub.subscribe(1, "in2", 0);
    let (mut p, _) = Raw::connected_with(b.addr, "pp", false);
    p.send(&publish_packet("in2", 2, false, false, 7, b"once"));
    assert_eq!(p.expect_packet("PUBREC"), ack_packet(0x50, 7));
    let (_, _, _, _, _, payload) = parse_publish(&sub.expect_packet("delivery"));
    assert_eq!(payload, b"once");
    go_offline(&b, p, "pp", 1);

    let (mut p, present) = Raw::connected_with(b.addr, "pp", false);
    assert!(present);
    p.send(&publish_packet("in2", 2, false, true, 7, b"once"));
    assert_eq!(p.expect_packet("PUBREC again"), ack_packet(0x50, 7));
    p.send(&publish_packet("in2", 0, false, false, 0, b"marker"));
    let (_, _, _, _, _, payload) = parse_publish(&sub.expect_packet("marker"));
    assert_eq!(
        payload, b"marker",
        "the re-sent QoS 2 PUBLISH was delivered twice"
    );
    p.send(&ack_packet(0x62, 7));
    assert_eq!(p.expect_packet("PUBCOMP"), ack_packet(0x70, 7));
}

/// `[MQTT-3.1.4-2]` a second connection with the same client id closes the first; the new
/// one works.
#[test]
fn takeover_closes_the_old_connection() {
    let b = BrokerProc::start("");
    let mut old = Raw::connected(b.addr, "dup");
    old.subscribe(1, "t", 0);
    let mut new = Raw::connected(b.addr, "dup");
    old.expect_closed();
    new.subscribe(1, "t", 1);
    publish_acked(&b, "t", 1, b"hi");
    let (_, qos, _, _, _, payload) = parse_publish(&new.expect_packet("PUBLISH"));
    assert_eq!((qos, &payload[..]), (1, &b"hi"[..]));
    new.ping();
}

/// `[MQTT-3.1.4-2]` `[MQTT-3.1.2-4]` `[MQTT-4.4.0-1]` takeover between persistent sessions keeps
/// the session: session present 1, in-flight messages re-sent with DUP and queued ones
/// delivered to the new connection, and the subscription still routes.
#[test]
fn persistent_takeover_keeps_the_session() {
    let b = BrokerProc::start("[limits]\nmax_inflight = 2\n");
    let (mut old, _) = Raw::connected_with(b.addr, "ps", false);
    old.subscribe(1, "tk", 1);
    for i in 0..4u8 {
        publish_acked(&b, "tk", 1, &[i]);
    }
    let (_, _, _, _, id0, _) = parse_publish(&old.expect_packet("PUBLISH 1"));
    let (_, _, _, _, id1, _) = parse_publish(&old.expect_packet("PUBLISH 2"));

    let (mut new, present) = Raw::connected_with(b.addr, "ps", false);
    assert!(present, "persistent takeover must resume the session");
    old.expect_closed();
    let (dup, _, _, _, id, payload) = parse_publish(&new.expect_packet("re-sent 1"));
    assert_eq!((dup, id, payload), (true, id0, vec![0]));
    let (dup, _, _, _, id, payload) = parse_publish(&new.expect_packet("re-sent 2"));
    assert_eq!((dup, id, payload), (true, id1, vec![1]));
    new.send(&ack_packet(0x40, id0));
    new.send(&ack_packet(0x40, id1));
    for i in 2..4u8 {
        let (dup, _, _, _, id, payload) = parse_publish(&new.expect_packet("queued"));
        assert_eq!((dup, payload), (false, vec![i]));
        new.send(&ack_packet(0x40, id));
    }
    publish_acked(&b, "tk", 1, b"live");
    let (_, _, _, _, _, payload) = parse_publish(&new.expect_packet("live"));
    assert_eq!(payload, b"live");
}

/// (our choice) `[session] expiry_s = 1`: an offline persistent session is discarded after
/// about a second (reconnect gets session present 0 and nothing queued); before that it is kept.
#[test]
fn offline_persistent_session_expires() {
    let b = BrokerProc::start("[session]\nexpiry_s = 1\n");
    // A connected persistent session is never expired, however long it stays.
    let (mut live, _) = Raw::connected_with(b.addr, "live", false);
    live.subscribe(1, "live", 1);
    let (mut s, _) = Raw::connected_with(b.addr, "ps", false);
    s.subscribe(1, "exp", 1);
    go_offline(&b, s, "ps", 1);
    // A quick reconnect still finds it.
    let (s, present) = Raw::connected_with(b.addr, "ps", false);
    assert!(present, "session expired too early");
    go_offline(&b, s, "ps", 2);
    let offline_at = Instant::now();
    publish_acked(&b, "exp", 1, b"queued");

    b.wait_log("persistent session expired");
    let waited = offline_at.elapsed();
    assert!(
        waited >= Duration::from_millis(800) && waited <= Duration::from_secs(4),
        "expired after {waited:?} (expiry_s = 1)"
    );
    let (mut s, present) = Raw::connected_with(b.addr, "ps", false);
    assert!(!present, "expired session was resumed");
    s.ping();
    s.expect_silence(SHORT);
    publish_acked(&b, "exp", 1, b"after");
    s.ping();
    s.expect_silence(SHORT);

    let log = b.log();
    assert!(
        !log.lines()
            .any(|l| l.contains("session expired") && l.contains("live")),
        "a connected session was expired:\n{log}"
    );
    publish_acked(&b, "live", 1, b"still here");
    let (_, _, _, _, _, payload) = parse_publish(&live.expect_packet("live delivery"));
    assert_eq!(payload, b"still here");
    drop(live);
    b.wait_disconnected("live", 1);
    let (_, present) = Raw::connected_with(b.addr, "live", false);
    assert!(
        present,
        "the session connected during the sweeps was expired"
    );
}
