//! Topic filter matching through the real broker binary: a fresh subscriber per filter, a
//! publish, then a marker message as a barrier so that "not delivered" is meaningful.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::*;
use rumqttc::QoS;

const MARKER: &str = "zz-marker";

/// Whether a message published on `topic` reaches a subscriber of `filter`.
async fn delivered(b: &BrokerProc, filter: &str, topic: &str) -> bool {
    static N: AtomicUsize = AtomicUsize::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let mut sub = connect(b.addr, &format!("tm-sub-{n}")).await;
    sub.subscribe(MARKER, QoS::AtLeastOnce).await;
    sub.subscribe(filter, QoS::AtLeastOnce).await;
    let mut publisher = connect(b.addr, &format!("tm-pub-{n}")).await;
    publisher
        .publish(topic, QoS::AtLeastOnce, false, topic)
        .await;
    publisher
        .publish(MARKER, QoS::AtLeastOnce, false, "marker")
        .await;
    let first = sub.next_publish().await;
    let got = if first.topic == topic {
        assert_eq!(first.payload[..], *topic.as_bytes());
        sub.expect_publish_on(MARKER).await;
        true
    } else {
        assert_eq!(first.topic, MARKER, "unexpected PUBLISH {first:?}");
        false
    };
    sub.expect_no_publish(Duration::from_millis(100)).await;
    sub.disconnect().await;
    publisher.disconnect().await;
    got
}

/// Asserts each (filter, topic, expected) case.
async fn check(b: &BrokerProc, cases: &[(&str, &str, bool)]) {
    for &(filter, topic, want) in cases {
        assert_eq!(
            delivered(b, filter, topic).await,
            want,
            "filter {filter:?} topic {topic:?}"
        );
    }
}

/// [MQTT-4.7.1-2] "#" matches the parent level too, and any number of levels below.
#[tokio::test(flavor = "multi_thread")]
async fn multi_level_wildcard_matches_parent_and_descendants() {
    let b = BrokerProc::start("");
    check(
        &b,
        &[
            ("sport/#", "sport", true),
            ("sport/#", "sport/tennis/player1", true),
            ("sport/#", "sport/", true),
            ("sport/#", "sports", false),
            ("sport/tennis/#", "sport", false),
            ("#", "anything/at/all", true),
        ],
    )
    .await;
}

/// [MQTT-4.7.1-3] "+" matches exactly one level, which may be empty.
#[tokio::test(flavor = "multi_thread")]
async fn single_level_wildcard_matches_one_possibly_empty_level() {
    let b = BrokerProc::start("");
    check(
        &b,
        &[
            ("+/+", "/finance", true),
            ("/+", "/finance", true),
            ("+", "/finance", false),
            ("sport/+", "sport", false),
            ("sport/+", "sport/", true),
            ("sport/+/player1", "sport/tennis/player1", true),
            ("sport/+", "sport/tennis/player1", false),
        ],
    )
    .await;
}

/// [MQTT-4.7.2-1] filters starting with a wildcard do not match topics starting with "$";
/// a filter starting with the same "$" level does.
#[tokio::test(flavor = "multi_thread")]
async fn wildcards_do_not_match_dollar_topics() {
    let b = BrokerProc::start("");
    check(
        &b,
        &[
            ("#", "$foo/x", false),
            ("+/x", "$foo/x", false),
            ("+/#", "$foo/x", false),
            ("$foo/#", "$foo/x", true),
            ("$foo/+", "$foo/x", true),
            ("$foo/x", "$foo/x", true),
            // Only the first level counts: "$" further down is an ordinary character.
            ("a/+", "a/$x", true),
            ("a/#", "a/$x/y", true),
        ],
    )
    .await;
}

/// [MQTT-4.7.3-1] topic names and filters are case-sensitive.
#[tokio::test(flavor = "multi_thread")]
async fn matching_is_case_sensitive() {
    let b = BrokerProc::start("");
    check(
        &b,
        &[
            ("ACCOUNTS", "Accounts", false),
            ("Sport/#", "sport/x", false),
            ("sport/X", "sport/x", false),
            ("sport/X", "sport/X", true),
        ],
    )
    .await;
}

/// [MQTT-4.7.3-1] topic names and filters may contain spaces.
#[tokio::test(flavor = "multi_thread")]
async fn topics_with_spaces_match() {
    let b = BrokerProc::start("");
    check(
        &b,
        &[
            ("Accounts payable", "Accounts payable", true),
            ("a b/+", "a b/c d", true),
            ("+/c d", "a b/c d", true),
            ("a b/c", "a b/c ", false),
            (" ", " ", true),
        ],
    )
    .await;
}

/// [MQTT-1.5.3] topics whose first character is multi-byte UTF-8 match like any other (a
/// byte-slicing matcher would panic on them; the broker must keep serving).
#[tokio::test(flavor = "multi_thread")]
async fn multibyte_first_character_topics_match() {
    let b = BrokerProc::start("");
    check(
        &b,
        &[
            ("é/+", "é/x", true),
            ("+/x", "é/x", true),
            ("é/#", "é/x", true),
            ("e/+", "é/x", false),
            ("+/é", "x/é", true),
            ("日本/+/🦀", "日本/語/🦀", true),
            ("#", "é", true),
        ],
    )
    .await;
    Raw::connected(b.addr, "still-alive").ping();
}

/// [MQTT-4.7.1-3] empty levels are levels: "a//b" is matched by "a/+/b" and "a/#", not "a/b".
#[tokio::test(flavor = "multi_thread")]
async fn empty_levels_match_single_level_wildcard() {
    let b = BrokerProc::start("");
    check(
        &b,
        &[
            ("a/+/b", "a//b", true),
            ("a/#", "a//b", true),
            ("a//b", "a//b", true),
            ("a/b", "a//b", false),
            ("a/+", "a//b", false),
            ("+/+/+", "//", true),
        ],
    )
    .await;
}
