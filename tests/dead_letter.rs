//! Dead letters through real clients: what the broker drops for a subscriber is republished on
//! `$DLQ/{reason}/{client_id}/{original topic}` with its payload, exactly once per drop.
//!
//! issue #12 item 4.

mod common;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::persist::*;
use common::*;
use rumqttc::{QoS, SubscribeReasonCode};

const DLQ_ON: &str = "[dead_letter]\nenabled = true\nmax_qos = 1\n";

async fn watcher(addr: std::net::SocketAddr) -> Client {
    let mut w = connect(addr, "dlq-watch").await;
    assert_eq!(
        w.subscribe("$DLQ/#", QoS::AtLeastOnce).await,
        vec![SubscribeReasonCode::Success(QoS::AtLeastOnce)]
    );
    w
}

/// issue #12 item 4 (queue_full_messages): at a small max_queued_messages, the dead-letter
/// topic receives exactly the messages the slow subscriber did not get: together they are
/// every message once, each dead letter with its reason, client id, topic and payload.
/// (N = 10: the watcher has the same small limits, and a burst of dead letters meets its queue
/// of 5 before its window takes any; the slow subscriber keeps at least 5 of the 10.)
#[tokio::test(flavor = "multi_thread")]
async fn dropped_messages_become_dead_letters_exactly() {
    const N: usize = 10;
    let b = BrokerProc::start(&format!(
        "[limits]\nmax_queued_messages = 5\nmax_inflight = 2\n{DLQ_ON}"
    ));
    let mut w = watcher(b.addr).await;
    // A subscriber that acknowledges nothing until every message has been routed.
    let mut slow = Raw::connected(b.addr, "slow");
    slow.subscribe(1, "d/#", 1);
    let mut publ = connect(b.addr, "dlq-pub").await;
    for i in 0..N {
        publ.publish(&format!("d/{i}"), QoS::AtLeastOnce, false, format!("m{i}"))
            .await;
    }
    publ.barrier().await;
    // Now let the slow one take what it holds (in flight and queued), acknowledging each.
    let done = Arc::new(AtomicBool::new(false));
    let slow_got = Arc::new(Mutex::new(Vec::new()));
    let reader = {
        let (done, got) = (done.clone(), slow_got.clone());
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                if let Some(p) = slow.read_packet_within(Duration::from_millis(50)) {
                    let (_, qos, _, topic, pkid, payload) = parse_publish(&p);
                    assert_eq!(qos, 1);
                    slow.send(&ack_packet(0x40, pkid));
                    got.lock()
                        .expect("lock")
                        .push((topic, String::from_utf8(payload).expect("utf8")));
                }
            }
        })
    };
    let mut letters = Vec::new();
    let total = tokio::time::timeout(WAIT, async {
        loop {
            let n = letters.len() + slow_got.lock().expect("lock").len();
            if n >= N {
                return n;
            }
            if let Some(p) = w.next_publish_within(Duration::from_millis(50)).await {
                letters.push(p);
            }
        }
    })
    .await
    .unwrap_or_else(|_| {
        panic!(
            "every message either delivered or dead-lettered: {} letters, {:?} delivered; log:\n{}",
            letters.len(),
            slow_got.lock().expect("lock"),
            b.log()
        )
    });
    assert_eq!(total, N);
    // Nothing more: no duplicate delivery and no second dead letter.
    w.expect_no_publish(Duration::from_millis(300)).await;
    done.store(true, Ordering::Relaxed);
    reader.join().expect("reader");
    let delivered: BTreeSet<String> = slow_got
        .lock()
        .expect("lock")
        .iter()
        .map(|(t, _)| t.clone())
        .collect();
    assert!(
        (5..=7).contains(&delivered.len()),
        "the queue (5) and the window (2) hold at most 7: {delivered:?}"
    );
    let mut dead = BTreeSet::new();
    for l in &letters {
        let original = l
            .topic
            .strip_prefix("$DLQ/queue_full_messages/slow/")
            .unwrap_or_else(|| panic!("unexpected dead-letter topic {}", l.topic));
        let i: usize = original
            .strip_prefix("d/")
            .and_then(|n| n.parse().ok())
            .expect("d/N");
        assert_eq!(l.payload, format!("m{i}"));
        assert_eq!((l.qos, l.retain), (QoS::AtLeastOnce, false));
        assert!(
            dead.insert(original.to_owned()),
            "{original} dead-lettered twice"
        );
    }
    assert!(delivered.is_disjoint(&dead), "delivered and dead-lettered");
    assert_eq!(delivered.len() + dead.len(), N);
}

/// issue #12 items 3 and 4 (no_member): when the last member of a group goes away with
/// messages in flight and queued, they become `no_member` dead letters named by the group,
/// in order, instead of being lost.
#[tokio::test(flavor = "multi_thread")]
async fn a_group_left_without_members_dead_letters_its_backlog() {
    let b = BrokerProc::start(&format!("[limits]\nmax_inflight = 2\n{DLQ_ON}"));
    let mut w = watcher(b.addr).await;
    let mut last = Raw::connected(b.addr, "only-member");
    last.subscribe(1, "$share/workers/n/#", 1);
    let mut publ = connect(b.addr, "nm-pub").await;
    for i in 0..6 {
        publ.publish(&format!("n/{i}"), QoS::AtLeastOnce, false, format!("m{i}"))
            .await;
    }
    publ.barrier().await;
    // The member got its window (2) and never acknowledges; the rest waits in its queue.
    for _ in 0..2 {
        assert_eq!(last.expect_packet("PUBLISH")[0] >> 4, 3);
    }
    drop(last); // socket closed without DISCONNECT
    for i in 0..6 {
        let p = w.next_publish().await;
        assert_eq!(p.topic, format!("$DLQ/no_member/workers/n/{i}"));
        assert_eq!(p.payload, format!("m{i}"));
    }
    w.expect_no_publish(Duration::from_millis(200)).await;
}

/// issue #12 item 4 (expired): a persistent session that expires with messages queued
/// dead-letters them with reason `expired`; and clients may not publish into `$DLQ`.
#[tokio::test(flavor = "multi_thread")]
async fn an_expired_session_dead_letters_its_queue() {
    let b = BrokerProc::start(&format!("[session]\nexpiry_s = 1\n{DLQ_ON}"));
    let mut w = watcher(b.addr).await;
    let (mut p, _) = connect_with(persistent_options(b.addr, "gone")).await;
    p.subscribe("e/#", QoS::AtLeastOnce).await;
    p.disconnect().await;
    drop(p);
    b.wait_disconnected("gone", 1);
    let mut publ = connect(b.addr, "exp-pub").await;
    // A forged dead letter is dropped like a publish to $SYS.
    publ.publish_routed("$DLQ/expired/gone/e/x", QoS::AtLeastOnce, false, "forged")
        .await;
    for i in 0..3 {
        publ.publish(&format!("e/{i}"), QoS::AtLeastOnce, false, format!("m{i}"))
            .await;
    }
    publ.barrier().await;
    for i in 0..3 {
        let p = w.next_publish().await;
        assert_eq!(p.topic, format!("$DLQ/expired/gone/e/{i}"));
        assert_eq!(p.payload, format!("m{i}"));
    }
    w.expect_no_publish(Duration::from_millis(200)).await;
}

/// issue #12 item 4: with `[dead_letter]` off (the default) a drop is only counted: nothing
/// is published on `$DLQ`.
#[tokio::test(flavor = "multi_thread")]
async fn dead_letters_are_off_by_default() {
    let b = BrokerProc::start("[limits]\nmax_queued_messages = 1\nmax_inflight = 1\n");
    let mut w = watcher(b.addr).await;
    let mut slow = Raw::connected(b.addr, "slow-off");
    slow.subscribe(1, "o/#", 1);
    let mut publ = connect(b.addr, "off-pub").await;
    for i in 0..5 {
        publ.publish(&format!("o/{i}"), QoS::AtLeastOnce, false, "x")
            .await;
    }
    publ.barrier().await;
    // Messages were dropped (and counted and logged)...
    b.wait_log("subscriber queue full");
    // ...and none of them is published as a dead letter.
    w.expect_no_publish(Duration::from_millis(300)).await;
    drop(slow);
}
