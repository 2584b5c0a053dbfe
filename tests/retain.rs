//! Retained messages through the real broker binary: storing, replacing, clearing, the RETAIN
//! flag on delivery, QoS, ordering and `$` topics.

mod common;

use std::time::Duration;

use common::*;
use rumqttc::QoS;

/// [MQTT-3.3.1-5] [MQTT-3.3.1-6] [MQTT-3.3.1-8] a retained message is stored and sent to a new
/// subscriber with RETAIN=1.
#[tokio::test(flavor = "multi_thread")]
async fn retained_message_is_sent_to_new_subscriber_with_retain_1() {
    let b = BrokerProc::start("");
    let mut publisher = connect(b.addr, "ret-pub").await;
    publisher
        .publish_routed("ret/t", QoS::AtLeastOnce, true, "kept")
        .await;
    let mut sub = connect(b.addr, "ret-sub").await;
    sub.subscribe("ret/t", QoS::AtLeastOnce).await;
    let p = sub.expect_publish_on("ret/t").await;
    assert_eq!(
        (p.retain, p.qos, &p.payload[..]),
        (true, QoS::AtLeastOnce, &b"kept"[..])
    );
}

/// [MQTT-3.3.1-9] a retained PUBLISH is forwarded to existing subscribers with RETAIN=0 (and
/// still stored for later ones, who get RETAIN=1).
#[tokio::test(flavor = "multi_thread")]
async fn retained_publish_is_forwarded_live_with_retain_0() {
    let b = BrokerProc::start("");
    let mut live = connect(b.addr, "live-sub").await;
    live.subscribe("live/t", QoS::AtLeastOnce).await;
    let mut publisher = connect(b.addr, "live-pub").await;
    publisher
        .publish_routed("live/t", QoS::AtLeastOnce, true, "v")
        .await;
    let p = live.expect_publish_on("live/t").await;
    assert!(!p.retain, "live delivery must have RETAIN=0");

    let mut later = connect(b.addr, "later-sub").await;
    later.subscribe("live/t", QoS::AtLeastOnce).await;
    assert!(later.expect_publish_on("live/t").await.retain);
}

/// [MQTT-3.3.1-5] a new retained message replaces the previous one for that topic.
#[tokio::test(flavor = "multi_thread")]
async fn retained_message_is_replaced() {
    let b = BrokerProc::start("");
    let mut publisher = connect(b.addr, "rep-pub").await;
    publisher
        .publish("rep/t", QoS::AtLeastOnce, true, "v1")
        .await;
    publisher
        .publish_routed("rep/t", QoS::AtMostOnce, true, "v2")
        .await;
    let mut sub = connect(b.addr, "rep-sub").await;
    sub.subscribe("rep/t", QoS::ExactlyOnce).await;
    let p = sub.expect_publish_on("rep/t").await;
    assert_eq!(
        (p.retain, p.qos, &p.payload[..]),
        (true, QoS::AtMostOnce, &b"v2"[..])
    );
    // Barrier on the same path: a live message comes next, nothing older before it.
    publisher
        .publish("rep/t", QoS::AtLeastOnce, false, "live")
        .await;
    let p = sub.expect_publish_on("rep/t").await;
    assert_eq!((p.retain, &p.payload[..]), (false, &b"live"[..]));
    sub.expect_no_publish(Duration::from_millis(300)).await;
}

/// [MQTT-3.3.1-10] [MQTT-3.3.1-11] a zero-length retained message clears the topic and is itself
/// delivered to current subscribers as a normal message.
#[tokio::test(flavor = "multi_thread")]
async fn zero_length_retained_message_clears_and_is_delivered() {
    let b = BrokerProc::start("");
    let mut current = connect(b.addr, "clr-cur").await;
    current.subscribe("clr/t", QoS::AtLeastOnce).await;
    let mut publisher = connect(b.addr, "clr-pub").await;
    publisher
        .publish("clr/t", QoS::AtLeastOnce, true, "x")
        .await;
    publisher
        .publish_routed("clr/t", QoS::AtLeastOnce, true, Vec::new())
        .await;
    assert_eq!(&current.expect_publish_on("clr/t").await.payload[..], b"x");
    let p = current.expect_publish_on("clr/t").await;
    assert_eq!((p.retain, p.payload.len()), (false, 0));

    let mut later = connect(b.addr, "clr-later").await;
    later.subscribe("clr/t", QoS::AtLeastOnce).await;
    publisher
        .publish("clr/t", QoS::AtLeastOnce, false, "marker")
        .await;
    let p = later.expect_publish_on("clr/t").await;
    assert_eq!((p.retain, &p.payload[..]), (false, &b"marker"[..]));
    later.expect_no_publish(Duration::from_millis(300)).await;
}

/// [MQTT-3.3.1-6] [MQTT-3.8.4-6] retained messages are sent at min(retained QoS, granted QoS).
#[tokio::test(flavor = "multi_thread")]
async fn retained_qos_is_min_of_stored_and_granted() {
    let b = BrokerProc::start("");
    let mut publisher = connect(b.addr, "rq-pub").await;
    for q in 0..=2u8 {
        publisher
            .publish(&format!("rq/{q}"), qos(q), true, vec![q])
            .await;
    }
    publisher.barrier().await;
    for g in 0..=2u8 {
        let mut sub = connect(b.addr, &format!("rq-sub-{g}")).await;
        sub.subscribe("rq/+", qos(g)).await;
        let mut got = Vec::new();
        for _ in 0..3 {
            let p = sub.next_publish().await;
            assert!(p.retain);
            got.push((p.topic.clone(), p.qos));
        }
        got.sort_by(|a, b| a.0.cmp(&b.0));
        let want: Vec<(String, QoS)> = (0..=2u8)
            .map(|q| (format!("rq/{q}"), qos(q.min(g))))
            .collect();
        assert_eq!(got, want, "granted QoS {g}");
    }
}

/// [MQTT-3.8.4-3] (our choice) every SUBSCRIBE sends the matching retained messages again, also
/// for a filter the session already has.
#[tokio::test(flavor = "multi_thread")]
async fn every_subscribe_resends_retained_messages() {
    let b = BrokerProc::start("");
    let mut publisher = connect(b.addr, "again-pub").await;
    publisher
        .publish_routed("again/t", QoS::AtLeastOnce, true, "r")
        .await;
    let mut sub = connect(b.addr, "again-sub").await;
    for round in 0..3 {
        sub.subscribe("again/t", QoS::AtLeastOnce).await;
        let p = sub.expect_publish_on("again/t").await;
        assert_eq!(
            (p.retain, &p.payload[..]),
            (true, &b"r"[..]),
            "round {round}"
        );
    }
    // Another filter matching the same topic sends it once more.
    sub.subscribe("again/#", QoS::AtLeastOnce).await;
    assert!(sub.expect_publish_on("again/t").await.retain);
    sub.expect_no_publish(Duration::from_millis(300)).await;
}

/// (our choice) a wildcard subscription receives retained messages parent before children.
#[tokio::test(flavor = "multi_thread")]
async fn wildcard_subscription_gets_retained_parents_before_children() {
    let b = BrokerProc::start("");
    let mut publisher = connect(b.addr, "tree-pub").await;
    let topics = [
        "tree/b/c/d",
        "tree/z",
        "tree/b/c",
        "tree",
        "tree/b",
        "tree/a/b",
    ];
    for t in topics {
        publisher.publish(t, QoS::AtLeastOnce, true, t).await;
    }
    publisher.barrier().await;
    let mut sub = connect(b.addr, "tree-sub").await;
    sub.subscribe("tree/#", QoS::AtLeastOnce).await;
    let mut order = Vec::new();
    for _ in topics {
        let p = sub.next_publish().await;
        assert!(p.retain);
        assert_eq!(p.payload[..], *p.topic.as_bytes());
        order.push(p.topic);
    }
    let pos = |t: &str| order.iter().position(|x| x == t).expect("delivered");
    assert_eq!(pos("tree"), 0, "{order:?}");
    assert!(pos("tree/b") < pos("tree/b/c"), "{order:?}");
    assert!(pos("tree/b/c") < pos("tree/b/c/d"), "{order:?}");
}

/// [MQTT-4.7.2-1] a retained message on a "$" topic is not sent to a "#" subscriber, but is
/// sent to "$x/#".
#[tokio::test(flavor = "multi_thread")]
async fn dollar_retained_only_matches_dollar_filters() {
    let b = BrokerProc::start("");
    let mut publisher = connect(b.addr, "dr-pub").await;
    publisher.publish("$x/y", QoS::AtLeastOnce, true, "d").await;
    publisher
        .publish_routed("plain/t", QoS::AtLeastOnce, true, "p")
        .await;

    let mut all = connect(b.addr, "dr-all").await;
    all.subscribe("#", QoS::AtLeastOnce).await;
    assert!(all.expect_publish_on("plain/t").await.retain);
    publisher
        .publish("plain/marker", QoS::AtLeastOnce, false, "m")
        .await;
    all.expect_publish_on("plain/marker").await;
    all.expect_no_publish(Duration::from_millis(300)).await;

    let mut plus = connect(b.addr, "dr-plus").await;
    // Marker first: `subscribe` skips whatever arrives before its SUBACK.
    plus.subscribe("plain/marker", QoS::AtLeastOnce).await;
    plus.subscribe("+/y", QoS::AtLeastOnce).await;
    publisher
        .publish("plain/marker", QoS::AtLeastOnce, false, "m")
        .await;
    plus.expect_publish_on("plain/marker").await;
    plus.expect_no_publish(Duration::from_millis(300)).await;

    let mut dollar = connect(b.addr, "dr-dollar").await;
    dollar.subscribe("$x/#", QoS::AtLeastOnce).await;
    let p = dollar.expect_publish_on("$x/y").await;
    assert_eq!((p.retain, &p.payload[..]), (true, &b"d"[..]));
}

/// [MQTT-3.3.1-6] retained messages are sent after the SUBACK.
#[tokio::test(flavor = "multi_thread")]
async fn retained_messages_follow_the_suback() {
    let b = BrokerProc::start("");
    let mut publisher = connect(b.addr, "after-pub").await;
    publisher
        .publish_routed("after/t", QoS::AtLeastOnce, true, "r")
        .await;
    let mut raw = Raw::connected(b.addr, "after-raw");
    raw.send(&subscribe_packet(4, &[("after/#", 1)]));
    assert_eq!(
        raw.read_packet().expect("SUBACK"),
        vec![0x90, 0x03, 0x00, 0x04, 0x01]
    );
    let (dup, q, retain, topic, pkid, payload) =
        parse_publish(&raw.read_packet().expect("PUBLISH"));
    assert_eq!(
        (dup, q, retain, topic.as_str(), payload.as_slice()),
        (false, 1, true, "after/t", &b"r"[..])
    );
    assert_ne!(pkid, 0);
}
