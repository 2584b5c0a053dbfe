//! The last will through the real broker binary: when it is published (and when not), with
//! which QoS and retain flag, and which will topics a CONNECT may carry.

mod common;

use std::time::Duration;

use common::*;
use rumqttc::QoS;

/// A watcher subscribed to `filter` at QoS 2.
async fn watcher(b: &BrokerProc, id: &str, filter: &str) -> Client {
    let mut w = connect(b.addr, id).await;
    w.subscribe(filter, QoS::ExactlyOnce).await;
    w
}

/// Asserts the will did not arrive: a marker published afterwards on the same topic comes first
/// and nothing follows it.
async fn assert_no_will(b: &BrokerProc, w: &mut Client, topic: &str) {
    let marker = connect(b.addr, "marker-pub").await;
    marker
        .publish(topic, QoS::AtLeastOnce, false, "marker")
        .await;
    let p = w.expect_publish_on(topic).await;
    assert_eq!(&p.payload[..], b"marker", "the will was published");
    w.expect_no_publish(Duration::from_millis(300)).await;
}

/// [MQTT-3.1.2-8] the will is published when the client's socket closes without DISCONNECT.
#[tokio::test(flavor = "multi_thread")]
async fn will_is_published_on_abrupt_close() {
    let b = BrokerProc::start("");
    let mut w = watcher(&b, "w-abrupt", "will/abrupt").await;
    let raw = Raw::connected_by(
        b.addr,
        &RawConnect::new("abrupt").will("will/abrupt", b"bye", 1, false),
    );
    drop(raw);
    let p = w.expect_publish_on("will/abrupt").await;
    assert_eq!(
        (&p.payload[..], p.qos, p.retain),
        (&b"bye"[..], QoS::AtLeastOnce, false)
    );
}

/// [MQTT-3.1.2-8] [MQTT-3.1.2-24] the will is published when keep-alive expires.
#[tokio::test(flavor = "multi_thread")]
async fn will_is_published_on_keep_alive_expiry() {
    let b = BrokerProc::start("");
    let mut w = watcher(&b, "w-ka", "will/ka").await;
    let mut c = RawConnect::new("ka").will("will/ka", b"timed out", 0, false);
    c.keep_alive = 1;
    let _raw = Raw::connected_by(b.addr, &c);
    // The socket stays open: only the keep-alive can end this connection.
    let p = w.expect_publish_on("will/ka").await;
    assert_eq!(&p.payload[..], b"timed out");
}

/// [MQTT-3.1.2-8] the will is published when the broker closes the connection for a protocol
/// violation (issue #8 item 2: an invalid topic filter is one).
#[tokio::test(flavor = "multi_thread")]
async fn will_is_published_on_protocol_violation() {
    let b = BrokerProc::start("");
    let mut w = watcher(&b, "w-viol", "will/violation").await;
    let violations: [(&str, Vec<u8>); 5] = [
        ("PUBLISH QoS 3", vec![0x36, 0x03, 0x00, 0x01, b't']),
        ("second CONNECT", connect_packet("viol", true, 60)),
        (
            "wildcard topic",
            publish_packet("a/#", 0, false, false, 0, b"x"),
        ),
        // issue #8 item 2: an invalid filter is a protocol violation, not a SUBACK 0x80.
        (
            "invalid SUBSCRIBE filter",
            subscribe_packet(1, &[("ok", 0), ("a#", 0)]),
        ),
        (
            "invalid UNSUBSCRIBE filter",
            unsubscribe_packet(1, &["a/+b"]),
        ),
    ];
    for (what, bytes) in violations {
        let c = RawConnect::new("viol").will("will/violation", what.as_bytes(), 1, false);
        let mut raw = Raw::connected_by(b.addr, &c);
        raw.send(&bytes);
        raw.expect_closed();
        let p = w.expect_publish_on("will/violation").await;
        assert_eq!(&p.payload[..], what.as_bytes());
    }
}

const PERSIST: &str = "[persistence]\nenabled = true\n";

/// [MQTT-3.1.2-8] (decided explicitly) a connection closed by server shutdown publishes its
/// will. Live subscribers are being disconnected at the same moment, so the proof is what
/// outlives the broker: a retained will is in the retained store after a restart.
#[test]
fn will_is_published_on_server_shutdown() {
    let b = BrokerProc::start(PERSIST);
    let _with_will = Raw::connected_by(
        b.addr,
        &RawConnect::new("shut").will("will/shutdown", b"server gone", 1, true),
    );
    let dir = b.stop();
    let b = BrokerProc::start_in(dir, PERSIST);
    let mut sub = Raw::connected(b.addr, "after-restart");
    sub.subscribe(1, "will/shutdown", 1);
    let (_, qos, retain, topic, _, payload) = parse_publish(&sub.expect_packet("retained will"));
    assert_eq!(
        (qos, retain, topic.as_str(), payload.as_slice()),
        (1, true, "will/shutdown", &b"server gone"[..])
    );
}

/// [MQTT-3.1.2-8] (decided explicitly) at shutdown the broker publishes every will before it
/// closes any connection, so a subscriber that is still connected receives it.
#[test]
fn will_published_on_shutdown_reaches_live_subscriber() {
    let b = BrokerProc::start("");
    let mut sub = Raw::connected(b.addr, "live-sub");
    sub.subscribe(1, "will/shutdown", 1);
    let _with_will = Raw::connected_by(
        b.addr,
        &RawConnect::new("shut").will("will/shutdown", b"server gone", 1, false),
    );
    b.signal("TERM");
    let (_, qos, _, topic, _, payload) =
        parse_publish(&sub.expect_packet("will before the connection closes"));
    assert_eq!(
        (qos, topic.as_str(), payload.as_slice()),
        (1, "will/shutdown", &b"server gone"[..])
    );
    let mut b = b;
    let status = b.wait_exit(WAIT).expect("broker exits after SIGTERM");
    assert!(status.success(), "exit status {status}");
}

/// [MQTT-3.1.2-8] [MQTT-3.1.2-4] the will published at server shutdown is queued for a
/// persistent subscriber, which receives it when it resumes its session after the restart.
#[test]
fn will_published_on_shutdown_reaches_persistent_subscriber() {
    let b = BrokerProc::start(PERSIST);
    let (mut sub, _) = Raw::connected_with(b.addr, "persistent-sub", false);
    sub.subscribe(1, "will/shutdown", 1);
    let _with_will = Raw::connected_by(
        b.addr,
        &RawConnect::new("shut").will("will/shutdown", b"server gone", 1, false),
    );
    let dir = b.stop();
    drop(sub);
    let b = BrokerProc::start_in(dir, PERSIST);
    let (mut sub, present) = Raw::connected_with(b.addr, "persistent-sub", false);
    assert!(present, "session present after restart");
    let (_, qos, retain, topic, _, payload) = parse_publish(&sub.expect_packet("queued will"));
    assert_eq!(
        (qos, retain, topic.as_str(), payload.as_slice()),
        (1, false, "will/shutdown", &b"server gone"[..])
    );
}

/// [MQTT-3.1.2-16] [MQTT-3.1.2-17] the will goes out with its QoS (capped by the granted QoS)
/// and its retain flag: a retained will reaches live subscribers with RETAIN=0 and later
/// subscribers with RETAIN=1.
#[tokio::test(flavor = "multi_thread")]
async fn will_keeps_its_qos_and_retain_flag() {
    let b = BrokerProc::start("");
    let mut w2 = watcher(&b, "w-q2", "will/qr").await;
    let mut w0 = connect(b.addr, "w-q0").await;
    w0.subscribe("will/qr", QoS::AtMostOnce).await;
    let raw = Raw::connected_by(
        b.addr,
        &RawConnect::new("qr").will("will/qr", b"retained will", 2, true),
    );
    drop(raw);
    let p = w2.expect_publish_on("will/qr").await;
    assert_eq!(
        (p.qos, p.retain, &p.payload[..]),
        (QoS::ExactlyOnce, false, &b"retained will"[..])
    );
    let p = w0.expect_publish_on("will/qr").await;
    assert_eq!((p.qos, p.retain), (QoS::AtMostOnce, false));

    let mut later = connect(b.addr, "w-later").await;
    later.subscribe("will/qr", QoS::ExactlyOnce).await;
    let p = later.expect_publish_on("will/qr").await;
    assert_eq!(
        (p.qos, p.retain, &p.payload[..]),
        (QoS::ExactlyOnce, true, &b"retained will"[..])
    );

    // A will with retain 0 reaches live subscribers but is not stored.
    let mut live = watcher(&b, "w-nr-live", "will/nr").await;
    let raw = Raw::connected_by(
        b.addr,
        &RawConnect::new("nr").will("will/nr", b"not kept", 1, false),
    );
    drop(raw);
    let p = live.expect_publish_on("will/nr").await;
    assert_eq!((p.retain, &p.payload[..]), (false, &b"not kept"[..]));
    let mut late = watcher(&b, "w-nr-late", "will/nr").await;
    assert_no_will(&b, &mut late, "will/nr").await;
}

/// [MQTT-3.1.2-10] [MQTT-3.14.4-3] a client that sends DISCONNECT has its will discarded.
#[tokio::test(flavor = "multi_thread")]
async fn will_is_not_published_after_disconnect() {
    let b = BrokerProc::start("");
    let mut w = watcher(&b, "w-clean", "will/clean").await;
    let mut raw = Raw::connected_by(
        b.addr,
        &RawConnect::new("polite").will("will/clean", b"must not appear", 1, true),
    );
    raw.send(&disconnect_packet());
    raw.expect_closed();
    drop(raw);
    assert_no_will(&b, &mut w, "will/clean").await;
}

/// [MQTT-3.1.4-2] [MQTT-3.1.2-8] (our choice, Mosquitto's) a takeover publishes the old
/// connection's will when the old or the new connection uses CleanSession=1.
#[tokio::test(flavor = "multi_thread")]
async fn takeover_publishes_old_will_unless_both_sessions_are_persistent() {
    let b = BrokerProc::start("");
    let mut w = watcher(&b, "w-take", "will/take").await;
    for (old_clean, new_clean) in [(true, true), (false, true), (true, false)] {
        let id = format!("take-{old_clean}-{new_clean}");
        let mut old = RawConnect::new(&id).will("will/take", id.as_bytes(), 1, false);
        old.clean = old_clean;
        let mut old = Raw::connected_by(b.addr, &old);
        let mut new = RawConnect::new(&id);
        new.clean = new_clean;
        let mut new_conn = Raw::connect(b.addr);
        new_conn.send(&new.encode());
        // Session present 0: one side is clean, so no session is resumed.
        assert_eq!(
            new_conn.read_packet().expect("CONNACK"),
            vec![0x20, 0x02, 0x00, 0x00]
        );
        old.expect_closed();
        let p = w.expect_publish_on("will/take").await;
        assert_eq!(
            &p.payload[..],
            id.as_bytes(),
            "old clean {old_clean}, new clean {new_clean}"
        );
        new_conn.ping();
    }
}

/// (our choice, Mosquitto's) a takeover between two persistent connections (CleanSession=0 on
/// both) does not publish the old connection's will.
#[tokio::test(flavor = "multi_thread")]
async fn takeover_between_persistent_sessions_keeps_will_unpublished() {
    let b = BrokerProc::start("");
    let mut w = watcher(&b, "w-persist", "will/persist").await;
    let mut old = RawConnect::new("persist").will("will/persist", b"must not appear", 1, false);
    old.clean = false;
    let mut old = Raw::connected_by(b.addr, &old);
    let mut new_conn = Raw::connect(b.addr);
    new_conn.send(&connect_packet("persist", false, 60));
    assert_eq!(
        new_conn.read_packet().expect("CONNACK"),
        vec![0x20, 0x02, 0x01, 0x00]
    );
    old.expect_closed();
    new_conn.ping();
    assert_no_will(&b, &mut w, "will/persist").await;
}

/// [MQTT-3.1.2-9] [MQTT-4.7.3-1] [MQTT-3.3.2-2] a CONNECT whose will topic is empty or holds a
/// wildcard closes the connection without CONNACK.
#[test]
fn invalid_will_topic_closes_without_connack() {
    let b = BrokerProc::start("");
    for topic in ["", "a/#", "#", "a/+/b", "+"] {
        let mut raw = Raw::connect(b.addr);
        raw.send(
            &RawConnect::new("badwill")
                .will(topic, b"x", 0, false)
                .encode(),
        );
        assert_eq!(
            raw.read_within(WAIT),
            RawRead::Closed,
            "will topic {topic:?}"
        );
    }
}
