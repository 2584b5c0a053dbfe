//! Dead letters through real clients: what the broker drops for a subscriber is republished on
//! `$DLQ/{reason}/{client_id}/{original topic}` with its payload, exactly once per drop.
//!
//! issue #12 item 4.

mod common;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::admin::{scrape, value};
use common::mosquitto::*;
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
/// every message once, each dead letter with its reason, client id, topic and payload; and
/// `/metrics` counts exactly those (dropped and dead-lettered, reason `queue_full_messages`).
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
    // /metrics counts each of them once, under the same reason.
    let m = scrape(&b);
    assert_eq!(
        value(&m, &dead_letters("queue_full_messages")),
        dead.len() as f64
    );
    assert_eq!(
        value(&m, &dropped("max_queued_messages")),
        dead.len() as f64
    );
}

/// issue #12 items 3 and 4 (no_member): when the last member of a group goes away with
/// messages in flight and queued, they become `no_member` dead letters named by the group,
/// in order, instead of being lost (and /metrics counts them under `no_member`).
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
    let m = scrape(&b);
    assert_eq!(value(&m, &dead_letters("no_member")), 6.0);
    assert_eq!(value(&m, &dropped("share_group_no_member")), 6.0);
}

/// issue #12 item 4 (expired): a persistent session that expires with messages queued
/// dead-letters them with reason `expired` (counted as such in /metrics); and clients may
/// not publish into `$DLQ`.
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
    let m = scrape(&b);
    assert_eq!(value(&m, &dead_letters("expired")), 3.0);
    assert_eq!(value(&m, &dropped("session_expired")), 3.0);
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

/// `brokerd_dead_letters_total{reason="REASON"}`.
fn dead_letters(reason: &str) -> String {
    format!("brokerd_dead_letters_total{{reason=\"{reason}\"}}")
}

/// `brokerd_messages_dropped_total{reason="REASON"}`.
fn dropped(reason: &str) -> String {
    format!("brokerd_messages_dropped_total{{reason=\"{reason}\"}}")
}

/// Scrapes /metrics until `series` reaches `want` (the dead-letter task publishes after the
/// drop), then returns that scrape.
async fn scrape_until(
    b: &BrokerProc,
    series: &str,
    want: f64,
) -> std::collections::HashMap<String, f64> {
    let mut last = None;
    let ok = tokio::time::timeout(WAIT, async {
        loop {
            let m = scrape(b);
            if value(&m, series) == want {
                return m;
            }
            last = Some(value(&m, series));
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    ok.unwrap_or_else(|_| panic!("{series} stayed at {last:?}, not {want}"))
}

/// issue #11 item 2 and issue #12 item 4 (journal_full): with the remote (a real Mosquitto)
/// stopped and the journal at `max_journal_messages`, each refused message is dead-lettered
/// exactly once on `$DLQ/journal_full/{bridge name}/{topic}` (in order, with its payload)
/// while the publisher is still acknowledged; what was journaled still reaches the remote
/// once it is back. A bridge that also forwards `$DLQ/#` refuses those dead letters at its
/// full journal too, and they are only counted (`dead_letter_dropped`), never dead-lettered
/// again: no loop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_bridge_journal_dead_letters_what_it_refuses() {
    const JOURNAL: usize = 100;
    const N: usize = 150;
    let port = free_port();
    let mdir = tempfile::tempdir().expect("tempdir");
    let persistence = mosquitto_persistence(mdir.path());
    let m = Mosquitto::start_in(mdir, port, &persistence);
    let b = BrokerProc::start(&format!(
        "{DLQ_ON}{}",
        bridge_toml(
            "small",
            &[m.addr],
            &["j/# out 1", "$DLQ/# out 1"],
            &format!("max_journal_messages = {JOURNAL}\n"),
        )
    ));
    let mut collector = persistent_subscriber(m.addr, "collector", "j/#").await;
    let probe = connect(b.addr, "probe").await;
    until_forwarded(&probe, &mut collector, "j/probe").await;
    collector.disconnect().await;
    drop(collector);
    let mdir = m.stop();
    b.wait_log("bridge disconnected");
    let mut w = watcher(b.addr).await;
    let before = scrape(&b);
    let mut publisher = connect(b.addr, "publisher").await;
    publish_numbered(&mut publisher, "j/seq", N).await;
    for i in JOURNAL..N {
        let p = w.next_publish().await;
        assert_eq!(p.topic, "$DLQ/journal_full/small/j/seq");
        assert_eq!(p.payload, i.to_string());
        assert_eq!((p.qos, p.retain), (QoS::AtLeastOnce, false));
    }
    w.expect_no_publish(Duration::from_millis(300)).await;
    let after = scrape_until(&b, &dead_letters("journal_full"), (N - JOURNAL) as f64).await;
    let delta = |s: &str| value(&after, s) - value(&before, s);
    let refused = (N - JOURNAL) as f64;
    assert_eq!(delta(&dead_letters("journal_full")), refused);
    // The journal refused its own bound's N - JOURNAL, then as many dead letters.
    assert_eq!(delta(&dropped("max_queued_messages")), 2.0 * refused);
    assert_eq!(
        delta("brokerd_dead_letters_dropped_total{reason=\"dead_letter_dropped\"}"),
        refused
    );
    assert_eq!(
        delta("brokerd_bridge_journal_refused_total{bridge=\"small\"}"),
        2.0 * refused
    );
    let m = Mosquitto::start_in(mdir, port, &persistence);
    let mut collector = resume(m.addr, "collector").await;
    expect_numbered(&mut collector, JOURNAL, 20).await;
    drop(b);
}

/// Publishes `n` QoS 1 messages of `len` bytes on `{prefix}/{i}`, one at a time (each
/// routed before the next: the watcher, under the same limits, keeps up), to a subscriber that
/// acknowledges nothing, and returns the dead letters for it as (reason level, original
/// topic), read until none comes for 500 ms. Asserts no dead letter was lost on the way.
async fn dead_letters_for_stuck(
    b: &BrokerProc,
    prefix: &str,
    n: usize,
    len: usize,
) -> Vec<(String, String)> {
    let mut w = watcher(b.addr).await;
    let mut stuck = Raw::connected(b.addr, "stuck");
    stuck.subscribe(1, &format!("{prefix}/#"), 1);
    let mut publ = connect(b.addr, "stuck-pub").await;
    let mut got = Vec::new();
    let mut take = |p: rumqttc::Publish| {
        let rest = p.topic.strip_prefix("$DLQ/").expect("$DLQ topic");
        let (reason, rest) = rest.split_once('/').expect("reason level");
        let topic = rest.strip_prefix("stuck/").expect("client id level");
        assert_eq!(p.payload.len(), len);
        got.push((reason.to_owned(), topic.to_owned()));
    };
    for i in 0..n {
        publ.publish(
            &format!("{prefix}/{i}"),
            QoS::AtLeastOnce,
            false,
            vec![b'x'; len],
        )
        .await;
        publ.barrier().await;
        if let Some(p) = w.next_publish_within(Duration::from_millis(20)).await {
            take(p);
        }
    }
    while let Some(p) = w.next_publish_within(Duration::from_millis(500)).await {
        take(p);
    }
    let m = scrape(b);
    for why in [
        "max_queued_messages",
        "max_queued_bytes",
        "dead_letter_dropped",
    ] {
        let series = format!("brokerd_dead_letters_dropped_total{{reason=\"{why}\"}}");
        assert_eq!(value(&m, &series), 0.0, "{series}; got {got:?}");
    }
    drop(stuck);
    got
}

/// issue #12 item 4 (queue_full_bytes): at `max_queued_bytes` each refused message is
/// dead-lettered once with reason `queue_full_bytes`, as many as /metrics counts dropped.
#[tokio::test(flavor = "multi_thread")]
async fn a_queue_full_by_bytes_dead_letters_with_its_reason() {
    // One message in flight, 3 x 10 bytes queued (30 <= 35); of 10, at least 6 are refused.
    let b = BrokerProc::start(&format!(
        "[limits]\nmax_inflight = 1\nmax_queued_bytes = 35\n{DLQ_ON}"
    ));
    let got = dead_letters_for_stuck(&b, "qb", 10, 10).await;
    assert!((6..=7).contains(&got.len()), "{got:?}");
    assert!(got.iter().all(|(r, _)| r == "queue_full_bytes"), "{got:?}");
    let m = scrape_until(&b, &dead_letters("queue_full_bytes"), got.len() as f64).await;
    assert_eq!(value(&m, &dropped("max_queued_bytes")), got.len() as f64);
}

/// issue #12 item 4 (budget): a delivery the global budget (`max_queued_bytes_total`)
/// refuses is dead-lettered once with reason `budget`, as many as /metrics counts under the
/// budget's two drop reasons.
#[tokio::test(flavor = "multi_thread")]
async fn a_budget_refusal_dead_letters_with_its_reason() {
    // 4096 bytes in all, of which the stuck subscriber may fill its fair share (three
    // quarters: 6 x 500 bytes); the rest is room for the watcher's dead letters.
    let b = BrokerProc::start(&format!(
        "[limits]\nmax_inflight = 1\nmax_queued_bytes_total = 4096\n{DLQ_ON}"
    ));
    let got = dead_letters_for_stuck(&b, "bg", 12, 500).await;
    assert!((4..=5).contains(&got.len()), "{got:?}");
    assert!(got.iter().all(|(r, _)| r == "budget"), "{got:?}");
    let m = scrape_until(&b, &dead_letters("budget"), got.len() as f64).await;
    assert_eq!(
        value(&m, &dropped("fair_share")) + value(&m, &dropped("max_queued_bytes_total")),
        got.len() as f64
    );
}

/// issue #12 item 4: `$SYS` updates dropped for a full subscriber are counted but never
/// dead-lettered (the next interval replaces them), so the `$SYS` publisher cannot feed the
/// dead-letter path.
#[tokio::test(flavor = "multi_thread")]
async fn sys_drops_are_counted_not_dead_lettered() {
    let b = BrokerProc::start(&format!(
        "[sys]\ninterval_s = 1\n[limits]\nmax_inflight = 1\nmax_queued_messages = 1\n{DLQ_ON}"
    ));
    let mut w = watcher(b.addr).await;
    let mut stuck = Raw::connected(b.addr, "sys-stuck");
    stuck.subscribe(1, "$SYS/#", 1);
    scrape_until_above(&b, &dropped("max_queued_messages"), 0.0).await;
    w.expect_no_publish(Duration::from_millis(1500)).await;
    let m = scrape(&b);
    for reason in ["queue_full_messages", "queue_full_bytes", "budget"] {
        assert_eq!(value(&m, &dead_letters(reason)), 0.0);
    }
    drop(stuck);
}

/// Scrapes /metrics until `series` is above `floor`.
async fn scrape_until_above(b: &BrokerProc, series: &str, floor: f64) {
    tokio::time::timeout(WAIT, async {
        while value(&scrape(b), series) <= floor {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{series} never above {floor}"));
}
