//! Durability: persistent sessions, in-flight state, inbound QoS 2 state and retained messages
//! survive a graceful restart and a kill -9 of the real broker process on the same data
//! directory; cleaned and expired sessions leave nothing on disk; a corrupt data directory is
//! moved aside or refused; a full disk withholds acknowledgements instead of losing messages.
//!
//! issue: durable sessions. Every test runs `brokerd` with `[persistence] enabled = true` on a
//! temp dir and restarts it there (`BrokerProc::start_in`).

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use rumqttc::{Event, Packet, QoS};

const PERSIST: &str = "[persistence]\nenabled = true\npath = \"data\"\n";
const SHORT: Duration = Duration::from_millis(300);

/// The broker's persistence config plus `extra` keys of `[persistence]`.
fn persist_with(extra: &str) -> String {
    format!("{PERSIST}{extra}\n")
}

/// A restart of the broker on the same directory: graceful (SIGTERM) or kill -9.
#[derive(Clone, Copy, Debug)]
enum Restart {
    Graceful,
    Kill9,
}

impl Restart {
    fn restart(self, b: BrokerProc, config: &str) -> BrokerProc {
        let dir = match self {
            Restart::Graceful => b.stop(),
            Restart::Kill9 => b.kill9(),
        };
        BrokerProc::start_in(dir, config)
    }
}

/// The key=value fields of the (only) "persistent state loaded" log line of this broker run.
fn loaded_stats(b: &BrokerProc) -> HashMap<String, String> {
    let log = b.wait_log("persistent state loaded");
    let line = log
        .lines()
        .find(|l| l.contains("persistent state loaded"))
        .expect("line");
    line.split_whitespace()
        .filter_map(|t| t.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

fn loaded_count(b: &BrokerProc, key: &str) -> usize {
    let stats = loaded_stats(b);
    stats
        .get(key)
        .unwrap_or_else(|| panic!("no {key}= in the load line: {stats:?}"))
        .parse()
        .expect("number")
}

/// Waits until this broker run has logged `n` disconnects of `client_id` (the id appears as a
/// `client_id=ID` field or in the connection span as `client_id="ID"`).
fn wait_disconnects(b: &BrokerProc, client_id: &str, n: usize) {
    let (plain, quoted) = (
        format!("client_id={client_id} "),
        format!("client_id=\"{client_id}\""),
    );
    let deadline = Instant::now() + WAIT;
    loop {
        let log = b.log();
        let count = log
            .lines()
            .filter(|l| l.contains("disconnected") && (l.contains(&plain) || l.contains(&quoted)))
            .count();
        if count >= n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "log never had {n} disconnects of {client_id} (had {count}); log:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Drops a raw client's socket and waits until the broker has logged its disconnect (the
/// `n`-th for this client id in this broker run), so the session is offline afterwards.
fn go_offline(b: &BrokerProc, raw: Raw, client_id: &str, n: usize) {
    drop(raw);
    wait_disconnects(b, client_id, n);
}

/// Publishes from a fresh raw clean-session client and waits for the full acknowledgement.
/// With sync = "always" everything the publish stored is on disk when this returns.
fn publish_acked(addr: std::net::SocketAddr, topic: &str, qos: u8, retain: bool, payload: &[u8]) {
    let mut p = Raw::connected(addr, "publisher");
    p.send(&publish_packet(topic, qos, retain, false, 1, payload));
    match qos {
        0 => p.ping(),
        1 => assert_eq!(p.expect_packet("PUBACK"), ack_packet(0x40, 1)),
        _ => {
            assert_eq!(p.expect_packet("PUBREC"), ack_packet(0x50, 1));
            p.send(&ack_packet(0x62, 1));
            assert_eq!(p.expect_packet("PUBCOMP"), ack_packet(0x70, 1));
        }
    }
    p.send(&disconnect_packet());
}

/// Durability barrier (sync = "always"): a retained QoS 1 publish is acknowledged only after a
/// flush that covers every operation submitted before it (group commit, in order).
fn durability_barrier(addr: std::net::SocketAddr, n: u32) {
    publish_acked(addr, &format!("barrier/{n}"), 1, true, b"b");
}

/// Reads the next packet and parses it as a PUBLISH.
fn expect_publish(raw: &mut Raw, what: &str) -> (bool, u8, bool, String, u16, Vec<u8>) {
    let p = raw.expect_packet(what);
    assert_eq!(p[0] >> 4, 3, "expected PUBLISH ({what}), got {p:02x?}");
    parse_publish(&p)
}

/// Completes the receiver side of a delivery: PUBACK, or PUBREC/PUBREL/PUBCOMP.
fn ack_delivery(raw: &mut Raw, qos: u8, pkid: u16) {
    match qos {
        0 => {}
        1 => raw.send(&ack_packet(0x40, pkid)),
        _ => {
            raw.send(&ack_packet(0x50, pkid));
            assert_eq!(raw.expect_packet("PUBREL"), ack_packet(0x62, pkid));
            raw.send(&ack_packet(0x70, pkid));
        }
    }
}

fn persistent_options(addr: std::net::SocketAddr, id: &str) -> rumqttc::MqttOptions {
    let mut o = options(addr, id);
    o.set_clean_session(false);
    o
}

// ---------------------------------------------------------------------------------------------
// 1. Acknowledged messages survive a restart.

/// Runs the restart round trip: a persistent subscriber (QoS 1 on `dur/q1`, QoS 2 on
/// `dur/q2`) is offline while a rumqttc publisher sends interleaved QoS 1 and QoS 2 messages
/// and waits for every PUBACK/PUBCOMP; after the restart the subscriber resumes (session
/// present 1) and receives every one, in order, QoS 2 exactly once and nothing else.
async fn acked_messages_survive(config: &str, restart: Restart) {
    const N: usize = 40;
    let b = BrokerProc::start(config);
    let (mut sub, ack) = connect_with(persistent_options(b.addr, "dur-sub")).await;
    assert!(!ack.session_present);
    assert_eq!(
        sub.subscribe("dur/q1", QoS::AtLeastOnce).await,
        vec![rumqttc::SubscribeReasonCode::Success(QoS::AtLeastOnce)]
    );
    assert_eq!(
        sub.subscribe("dur/q2", QoS::ExactlyOnce).await,
        vec![rumqttc::SubscribeReasonCode::Success(QoS::ExactlyOnce)]
    );
    sub.disconnect().await;
    drop(sub);
    wait_disconnects(&b, "dur-sub", 1);

    let (mut publ, _) = connect_with(options(b.addr, "dur-pub")).await;
    let mut expected = Vec::new();
    for i in 0..N {
        let (topic, qos) = if i % 2 == 0 {
            ("dur/q1", QoS::AtLeastOnce)
        } else {
            ("dur/q2", QoS::ExactlyOnce)
        };
        let payload = format!("m{i:03}");
        publ.publish(topic, qos, false, payload.clone()).await;
        expected.push((topic.to_owned(), payload));
    }
    let (mut pubacks, mut pubcomps) = (0, 0);
    tokio::time::timeout(WAIT, async {
        while pubacks < N / 2 || pubcomps < N / 2 {
            match publ.events.recv().await {
                Some(Ok(Event::Incoming(Packet::PubAck(_)))) => pubacks += 1,
                Some(Ok(Event::Incoming(Packet::PubComp(_)))) => pubcomps += 1,
                Some(Ok(_)) => {}
                Some(Err(e)) => panic!("publisher connection failed: {e}"),
                None => panic!("publisher event loop ended"),
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("acks: {pubacks} PUBACK, {pubcomps} PUBCOMP of {N}"));
    drop(publ);

    let b = restart.restart(b, config);
    assert_eq!(loaded_count(&b, "sessions"), 1, "{restart:?}");
    assert_eq!(loaded_count(&b, "messages"), N, "{restart:?}");

    let (mut sub, ack) = connect_with(persistent_options(b.addr, "dur-sub")).await;
    assert!(
        ack.session_present,
        "session present after {restart:?} [MQTT-3.2.2-2]"
    );
    let mut got = Vec::new();
    while got.len() < N {
        let p = sub.next_publish().await;
        got.push((
            p.topic.clone(),
            String::from_utf8(p.payload.to_vec()).unwrap(),
        ));
        let want_qos = if p.topic == "dur/q1" {
            QoS::AtLeastOnce
        } else {
            QoS::ExactlyOnce
        };
        assert_eq!(p.qos, want_qos, "{p:?}");
    }
    // Exact, duplicates included: none of these was ever sent before the restart, so even a
    // QoS 1 duplicate would mean the broker mixed up stored state.
    assert_eq!(
        got, expected,
        "after {restart:?}: every acknowledged message, in order"
    );
    // Nothing more: a marker published now is the very next delivery (QoS 2: exactly once).
    let (mut publ, _) = connect_with(options(b.addr, "dur-pub2")).await;
    publ.publish_routed("dur/q1", QoS::AtLeastOnce, false, "marker")
        .await;
    let p = sub.next_publish().await;
    assert_eq!(&p.payload[..], b"marker", "unexpected extra delivery {p:?}");
}

/// issue: durable sessions. [MQTT-3.1.2-4] [MQTT-4.3.3-2] after SIGTERM and restart, a
/// persistent subscriber gets every acknowledged QoS 1/2 message, in order, QoS 2 once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acked_messages_survive_graceful_restart() {
    acked_messages_survive(PERSIST, Restart::Graceful).await;
}

/// issue: durable sessions. [MQTT-3.1.2-4] [MQTT-4.3.3-2] with sync = "always", a message
/// whose PUBACK/PUBCOMP went out survives kill -9.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acked_messages_survive_kill9() {
    acked_messages_survive(PERSIST, Restart::Kill9).await;
}

/// issue: durable sessions. sync = "periodic": a graceful stop flushes, so the round trip
/// loses nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_periodic_graceful_restart_keeps_everything() {
    let config = persist_with("sync = \"periodic\"\nflush_interval_ms = 200");
    acked_messages_survive(&config, Restart::Graceful).await;
}

/// issue: durable sessions. sync = "off": a graceful stop flushes, so the round trip loses
/// nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_off_graceful_restart_keeps_everything() {
    let config = persist_with("sync = \"off\"");
    acked_messages_survive(&config, Restart::Graceful).await;
}

// ---------------------------------------------------------------------------------------------
// 2. kill -9 in the middle of a stream, repeated.

const CRASH_TOPIC: &str = "crash/seq";
const CRASH_SUB: &str = "crash-sub";

/// Reads a raw persistent subscriber until EOF, acknowledging every PUBLISH; returns the
/// sequence numbers seen (markers excluded).
fn online_reader(mut s: Raw) -> std::thread::JoinHandle<Vec<u64>> {
    std::thread::spawn(move || {
        let mut seen = Vec::new();
        while let Some(p) = s.read_packet() {
            if p[0] >> 4 != 3 {
                continue;
            }
            let (_, qos, _, topic, pkid, payload) = parse_publish(&p);
            if topic == CRASH_TOPIC {
                seen.push(u64::from_be_bytes(payload.try_into().expect("8-byte seq")));
            }
            puback_qos1(&mut s, qos, pkid);
        }
        seen
    })
}

/// PUBACK for QoS 1 (the crash loop only uses QoS 1).
fn puback_qos1(raw: &mut Raw, qos: u8, pkid: u16) {
    assert_eq!(qos, 1, "crash loop deliveries are QoS 1");
    raw.send(&ack_packet(0x40, pkid));
}

/// Streams QoS 1 publishes (sequence numbers from `next_seq`, up to `window` unacknowledged)
/// and kills the broker with SIGKILL once `kill_after` PUBACKs have arrived; keeps reading the
/// PUBACKs that made it out before the kill. Returns the directory, the acknowledged sequence
/// numbers and the next sequence number.
fn stream_and_kill(
    b: BrokerProc,
    mut next_seq: u64,
    kill_after: usize,
    window: usize,
) -> (tempfile::TempDir, Vec<u64>, u64) {
    let mut p = Raw::connected(b.addr, "crash-pub");
    let mut outstanding: HashMap<u16, u64> = HashMap::new();
    let mut acked = Vec::new();
    let pkid_of = |seq: u64| (seq % 65_535) as u16 + 1;
    let on_packet = |pkt: Vec<u8>, outstanding: &mut HashMap<u16, u64>, acked: &mut Vec<u64>| {
        assert_eq!(pkt[0], 0x40, "expected PUBACK, got {pkt:02x?}");
        let id = u16::from_be_bytes([pkt[2], pkt[3]]);
        let seq = outstanding
            .remove(&id)
            .unwrap_or_else(|| panic!("PUBACK for unknown id {id}"));
        acked.push(seq);
    };
    while acked.len() < kill_after {
        while outstanding.len() < window {
            let seq = next_seq;
            next_seq += 1;
            outstanding.insert(pkid_of(seq), seq);
            p.send(&publish_packet(
                CRASH_TOPIC,
                1,
                false,
                false,
                pkid_of(seq),
                &seq.to_be_bytes(),
            ));
        }
        let pkt = p.expect_packet("PUBACK");
        on_packet(pkt, &mut outstanding, &mut acked);
    }
    let dir = b.kill9();
    // PUBACKs already on their way were real acknowledgements: count them.
    loop {
        match p.read_within(Duration::from_secs(2)) {
            RawRead::Packet(pkt) => on_packet(pkt, &mut outstanding, &mut acked),
            RawRead::Closed => break,
            RawRead::Timeout => panic!("publisher socket still open after the broker died"),
        }
    }
    (dir, acked, next_seq)
}

/// Resumes the crash-loop subscriber, publishes a marker behind everything stored, and reads
/// (acknowledging) until the marker: everything the broker still holds for it.
fn drain_crash_sub(b: &BrokerProc, round: usize) -> Vec<u64> {
    let (mut s, present) = Raw::connected_with(b.addr, CRASH_SUB, false);
    assert!(present, "round {round}: persistent session lost");
    let marker = format!("M{round}");
    publish_acked(b.addr, "crash/marker", 1, false, marker.as_bytes());
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        assert!(Instant::now() < deadline, "round {round}: drain too slow");
        let (_, qos, _, topic, pkid, payload) = expect_publish(&mut s, "drain");
        puback_qos1(&mut s, qos, pkid);
        if topic == CRASH_TOPIC {
            seen.push(u64::from_be_bytes(payload.try_into().expect("8-byte seq")));
        } else if payload == marker.as_bytes() {
            break;
        }
    }
    s.send(&disconnect_packet());
    drop(s);
    wait_disconnects(b, CRASH_SUB, 1);
    seen
}

/// issue: durable sessions (sync = "always"). 20 rounds of kill -9 in the middle of a stream
/// of QoS 1 publishes, after a varying number of PUBACKs, with the persistent subscriber
/// offline (even rounds) or online and acknowledging (odd rounds): every acknowledged
/// sequence number is delivered after the restart [MQTT-4.3.2-2]; duplicates are allowed
/// (QoS 1) and counted.
#[test]
fn kill9_mid_stream_loses_no_acknowledged_qos1_message() {
    const ROUNDS: usize = 20;
    let seed = std::env::var("CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    let mut rng = XorShift(seed);
    let started = Instant::now();
    // No queue bound in the way: a drop for a full queue is not what this test is about.
    let config = format!("{PERSIST}[limits]\nmax_queued_messages = 100000\n");
    let mut b = BrokerProc::start(&config);
    let (mut s, _) = Raw::connected_with(b.addr, CRASH_SUB, false);
    s.subscribe(1, "crash/#", 1);
    go_offline(&b, s, CRASH_SUB, 1);

    let mut next_seq = 1u64;
    let mut all_acked: Vec<u64> = Vec::new();
    let mut received: BTreeMap<u64, usize> = BTreeMap::new();
    let mut deliveries = 0usize;
    for round in 0..ROUNDS {
        let online = round % 2 == 1;
        let reader = online.then(|| {
            let (s, present) = Raw::connected_with(b.addr, CRASH_SUB, false);
            assert!(present, "round {round}: session present");
            online_reader(s)
        });
        let kill_after = 1 + rng.below(600) as usize;
        let window = 1 + rng.below(64) as usize;
        let (dir, acked, next) = stream_and_kill(b, next_seq, kill_after, window);
        next_seq = next;
        b = BrokerProc::start_in(dir, &config);
        let mut seen = reader.map_or_else(Vec::new, |r| r.join().expect("reader"));
        seen.extend(drain_crash_sub(&b, round));
        deliveries += seen.len();
        for s in seen {
            *received.entry(s).or_default() += 1;
        }
        all_acked.extend(&acked);
        let lost: Vec<u64> = all_acked
            .iter()
            .copied()
            .filter(|s| !received.contains_key(s))
            .collect();
        assert!(
            lost.is_empty(),
            "round {round} (seed {seed}, online {online}, kill after {kill_after}, window \
             {window}): {} acknowledged messages lost: {:?}",
            lost.len(),
            &lost[..lost.len().min(20)]
        );
    }
    let acked_set: HashSet<u64> = all_acked.iter().copied().collect();
    let duplicates = deliveries - received.len();
    let unacked_delivered = received.keys().filter(|s| !acked_set.contains(s)).count();
    println!(
        "crash loop: seed {seed}, {ROUNDS} rounds in {:?}: {} sent, {} acknowledged, {} \
         deliveries of {} distinct messages ({} not acknowledged to the publisher), {} \
         duplicates, 0 lost",
        started.elapsed(),
        next_seq - 1,
        all_acked.len(),
        deliveries,
        received.len(),
        unacked_delivered,
        duplicates
    );
}

// ---------------------------------------------------------------------------------------------
// 3. In-flight state resumes across a crash.

/// [MQTT-4.4.0-1] unacknowledged QoS 1 PUBLISHes (and the PUBREL of a PUBREC'd QoS 2
/// delivery) are re-sent after kill -9 and restart with their original packet ids, DUP=1, in
/// the original order, before any newer message.
#[test]
fn inflight_resumes_after_kill9_with_original_ids_and_dup() {
    let b = BrokerProc::start(PERSIST);
    let (mut s, _) = Raw::connected_with(b.addr, "inf-sub", false);
    s.subscribe(1, "inf/1", 1);
    s.subscribe(2, "inf/2", 2);
    publish_acked(b.addr, "inf/1", 1, false, b"a1");
    publish_acked(b.addr, "inf/1", 1, false, b"a2");
    publish_acked(b.addr, "inf/2", 2, false, b"b");
    publish_acked(b.addr, "inf/1", 1, false, b"a3");
    let mut sent = Vec::new();
    for what in ["a1", "a2", "b", "a3"] {
        let (dup, qos, _, _, pkid, payload) = expect_publish(&mut s, what);
        assert_eq!((dup, &payload[..]), (false, what.as_bytes()));
        sent.push((qos, pkid));
    }
    // PUBREC the QoS 2 one, acknowledge nothing else.
    let (qos_b, id_b) = sent[2];
    assert_eq!(qos_b, 2);
    s.send(&ack_packet(0x50, id_b));
    assert_eq!(s.expect_packet("PUBREL"), ack_packet(0x62, id_b));
    durability_barrier(b.addr, 1);
    let dir = b.kill9();
    assert!(s.read_packet().is_none(), "connection survived the broker");

    let b = BrokerProc::start_in(dir, PERSIST);
    publish_acked(b.addr, "inf/1", 1, false, b"newer");
    let (mut s, present) = Raw::connected_with(b.addr, "inf-sub", false);
    assert!(present);
    for (i, what) in ["a1", "a2"].iter().enumerate() {
        let (dup, qos, _, topic, pkid, payload) = expect_publish(&mut s, what);
        assert_eq!(
            (dup, qos, topic.as_str(), pkid, &payload[..]),
            (true, 1, "inf/1", sent[i].1, what.as_bytes()),
            "re-sent {what}"
        );
    }
    assert_eq!(
        s.expect_packet("PUBREL re-sent"),
        ack_packet(0x62, id_b),
        "PUBREL for the PUBREC'd QoS 2 delivery"
    );
    let (dup, qos, _, _, pkid, payload) = expect_publish(&mut s, "a3");
    assert_eq!(
        (dup, qos, pkid, &payload[..]),
        (true, 1, sent[3].1, &b"a3"[..])
    );
    let (dup, _, _, _, id_new, payload) = expect_publish(&mut s, "newer");
    assert_eq!((dup, &payload[..]), (false, &b"newer"[..]));
    assert!(
        !sent.iter().any(|(_, id)| *id == id_new),
        "[MQTT-2.3.1-2] id {id_new} of a message still in flight reused"
    );
    // Complete everything; a further restart re-sends nothing.
    for i in [0, 1, 3] {
        s.send(&ack_packet(0x40, sent[i].1));
    }
    s.send(&ack_packet(0x70, id_b));
    s.send(&ack_packet(0x40, id_new));
    s.ping();
    s.expect_silence(SHORT);
    durability_barrier(b.addr, 2);
    let b = Restart::Kill9.restart(b, PERSIST);
    let (mut s, present) = Raw::connected_with(b.addr, "inf-sub", false);
    assert!(present);
    s.ping();
    s.expect_silence(SHORT);
}

// ---------------------------------------------------------------------------------------------
// 4. Inbound QoS 2 exactly once across a crash.

/// [MQTT-4.3.3-2] a QoS 2 PUBLISH that was PUBREC'd before kill -9 and is re-sent with DUP=1
/// after the restart is acknowledged again (PUBREC) but not delivered again; PUBREL then
/// completes it (PUBCOMP).
#[test]
fn inbound_qos2_is_delivered_once_across_kill9() {
    let b = BrokerProc::start(PERSIST);
    let (mut s, _) = Raw::connected_with(b.addr, "eo-sub", false);
    s.subscribe(1, "eo/#", 2);
    go_offline(&b, s, "eo-sub", 1);

    let (mut p, present) = Raw::connected_with(b.addr, "eo-pub", false);
    assert!(!present);
    p.send(&publish_packet("eo/m", 2, false, false, 7, b"once"));
    assert_eq!(p.expect_packet("PUBREC 7"), ack_packet(0x50, 7));
    let dir = b.kill9();
    assert!(p.read_packet().is_none());

    let b = BrokerProc::start_in(dir, PERSIST);
    // A clean subscriber that is online when the duplicate arrives.
    let mut live = Raw::connected(b.addr, "eo-live");
    live.subscribe(1, "eo/#", 2);
    let (mut p, present) = Raw::connected_with(b.addr, "eo-pub", false);
    assert!(present, "publisher session (with its QoS 2 state) lost");
    p.send(&publish_packet("eo/m", 2, false, true, 7, b"once"));
    assert_eq!(p.expect_packet("PUBREC 7 again"), ack_packet(0x50, 7));
    p.send(&publish_packet("eo/marker", 1, false, false, 8, b"marker"));
    assert_eq!(p.expect_packet("PUBACK 8"), ack_packet(0x40, 8));
    p.send(&ack_packet(0x62, 7));
    assert_eq!(p.expect_packet("PUBCOMP 7"), ack_packet(0x70, 7));

    let (_, _, _, topic, pkid, payload) = expect_publish(&mut live, "marker (live)");
    assert_eq!(
        (topic.as_str(), &payload[..]),
        ("eo/marker", &b"marker"[..]),
        "the re-sent QoS 2 PUBLISH was delivered again"
    );
    live.send(&ack_packet(0x40, pkid));

    let (mut s, present) = Raw::connected_with(b.addr, "eo-sub", false);
    assert!(present);
    let (_, qos, _, topic, id_once, payload) = expect_publish(&mut s, "the QoS 2 message");
    assert_eq!(
        (qos, topic.as_str(), &payload[..]),
        (2, "eo/m", &b"once"[..])
    );
    let (_, _, _, topic, id_marker, payload) = expect_publish(&mut s, "marker");
    assert_eq!(
        (topic.as_str(), &payload[..]),
        ("eo/marker", &b"marker"[..]),
        "the QoS 2 message was delivered twice"
    );
    s.send(&ack_packet(0x40, id_marker));
    ack_delivery(&mut s, 2, id_once);
    s.ping();
    s.expect_silence(SHORT);
}

// ---------------------------------------------------------------------------------------------
// 5. Retained messages and subscriptions.

fn retained_and_subscriptions_survive(restart: Restart) {
    let b = BrokerProc::start(PERSIST);
    let (mut s, _) = Raw::connected_with(b.addr, "rs-sub", false);
    s.subscribe(1, "live/#", 1);
    go_offline(&b, s, "rs-sub", 1);
    publish_acked(b.addr, "ret/a", 1, true, b"A");
    publish_acked(b.addr, "ret/b", 1, true, b"B");
    publish_acked(b.addr, "ret/c", 2, true, b"C");
    // [MQTT-3.3.1-10] cleared before the restart: it stays cleared.
    publish_acked(b.addr, "ret/b", 1, true, b"");

    let b = restart.restart(b, PERSIST);
    assert_eq!(loaded_count(&b, "retained"), 2, "{restart:?}");
    let check_retained = |b: &BrokerProc| {
        let mut c = Raw::connected(b.addr, "rs-check");
        c.subscribe(1, "ret/#", 2);
        let mut got = BTreeMap::new();
        let mut acks = Vec::new();
        for _ in 0..2 {
            let (_, qos, retain, topic, pkid, payload) = expect_publish(&mut c, "retained");
            assert!(retain, "[MQTT-3.3.1-8] RETAIN=1 on {topic}");
            acks.push((qos, pkid));
            got.insert(topic, (qos, payload));
        }
        for (qos, pkid) in acks {
            ack_delivery(&mut c, qos, pkid);
        }
        c.ping();
        c.expect_silence(SHORT);
        let want: BTreeMap<String, (u8, Vec<u8>)> = [
            ("ret/a".to_owned(), (1, b"A".to_vec())),
            ("ret/c".to_owned(), (2, b"C".to_vec())),
        ]
        .into();
        assert_eq!(got, want, "after {restart:?}");
        c.send(&disconnect_packet());
    };
    check_retained(&b);

    // The subscription survived: no SUBSCRIBE after the restart.
    let (mut s, present) = Raw::connected_with(b.addr, "rs-sub", false);
    assert!(present);
    publish_acked(b.addr, "live/x", 1, false, b"routed");
    let (_, _, _, topic, pkid, payload) = expect_publish(&mut s, "via the stored subscription");
    assert_eq!((topic.as_str(), &payload[..]), ("live/x", &b"routed"[..]));
    s.send(&ack_packet(0x40, pkid));
    s.ping();
    drop(s);

    // And a second restart changes nothing.
    let b = restart.restart(b, PERSIST);
    check_retained(&b);
}

/// issue: durable sessions. [MQTT-3.3.1-5] [MQTT-3.3.1-10] retained messages (and a cleared
/// one staying cleared) and stored subscriptions survive SIGTERM and restart.
#[test]
fn retained_and_subscriptions_survive_graceful_restart() {
    retained_and_subscriptions_survive(Restart::Graceful);
}

/// issue: durable sessions. [MQTT-3.3.1-5] [MQTT-3.3.1-10] retained messages (and a cleared
/// one staying cleared) and stored subscriptions survive kill -9.
#[test]
fn retained_and_subscriptions_survive_kill9() {
    retained_and_subscriptions_survive(Restart::Kill9);
}

// ---------------------------------------------------------------------------------------------
// 6. A cleaned session leaves nothing on disk.

fn cleaned_session_leaves_nothing(restart: Restart) {
    let b = BrokerProc::start(PERSIST);
    let (mut s, _) = Raw::connected_with(b.addr, "cs", false);
    s.subscribe(1, "cs/a", 1);
    s.subscribe(2, "cs/b", 2);
    go_offline(&b, s, "cs", 1);
    for i in 0..5u8 {
        publish_acked(b.addr, "cs/a", 1, false, &[i]);
    }
    publish_acked(b.addr, "cs/b", 2, false, b"q2");
    let (mut s, present) = Raw::connected_with(b.addr, "cs", true);
    assert!(!present, "[MQTT-3.2.2-1]");
    s.ping();
    s.send(&disconnect_packet());
    wait_disconnects(&b, "cs", 2);
    if let Restart::Kill9 = restart {
        // Nothing acknowledges the removal itself; make sure it was flushed before the crash.
        durability_barrier(b.addr, 1);
    }
    let b = restart.restart(b, PERSIST);
    let stats = loaded_stats(&b);
    assert_eq!(
        (stats["sessions"].as_str(), stats["messages"].as_str()),
        ("0", "0"),
        "after {restart:?}: {stats:?}"
    );
    let (_, present) = Raw::connected_with(b.addr, "cs", false);
    assert!(!present, "the cleaned session came back from disk");
}

/// [MQTT-3.1.2-6] a persistent session with subscriptions and queued messages, discarded by a
/// CleanSession=1 connect, is gone from disk: after SIGTERM and restart the broker loads
/// sessions=0 messages=0 and a CleanSession=0 connect gets session present 0.
#[test]
fn clean_session_connect_removes_stored_session_graceful_restart() {
    cleaned_session_leaves_nothing(Restart::Graceful);
}

/// [MQTT-3.1.2-6] the same across kill -9 (once the removal has been flushed).
#[test]
fn clean_session_connect_removes_stored_session_kill9() {
    cleaned_session_leaves_nothing(Restart::Kill9);
}

// ---------------------------------------------------------------------------------------------
// 7. Corrupt or unreadable data directory.

/// A persistent-session round trip across a graceful restart: proves the store works.
fn persistent_round_trip(b: BrokerProc, config: &str) -> BrokerProc {
    let (mut s, present) = Raw::connected_with(b.addr, "rt-sub", false);
    assert!(!present);
    s.subscribe(1, "rt", 1);
    go_offline(&b, s, "rt-sub", 1);
    publish_acked(b.addr, "rt", 1, false, b"kept");
    let b = Restart::Graceful.restart(b, config);
    let (mut s, present) = Raw::connected_with(b.addr, "rt-sub", false);
    assert!(present, "session lost across restart");
    let (_, _, _, topic, pkid, payload) = expect_publish(&mut s, "stored message");
    assert_eq!((topic.as_str(), &payload[..]), ("rt", &b"kept"[..]));
    s.send(&ack_packet(0x40, pkid));
    s.ping();
    b
}

/// The `data.corrupt-*` entries next to `data` in `dir`.
fn corrupt_asides(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("data.corrupt-"))
        })
        .collect()
}

/// Starts on a prepared unusable `data` and checks the move-aside contract.
fn moved_aside_and_works(prepare: impl FnOnce(&Path), original_is_file: bool) {
    let dir = tempfile::tempdir().unwrap();
    prepare(&dir.path().join("data"));
    let b = BrokerProc::start_in(dir, PERSIST);
    let log = b.wait_log("data directory unusable");
    let line = log
        .lines()
        .find(|l| l.contains("data directory unusable"))
        .unwrap();
    assert!(line.contains("ERROR"), "{line}");
    let asides = corrupt_asides(b.data_dir());
    assert_eq!(asides.len(), 1, "{asides:?}");
    let aside_name = asides[0].file_name().unwrap().to_str().unwrap().to_owned();
    assert!(
        line.contains("path=data ") && line.contains("moved_to=data.corrupt-"),
        "the error names both paths: {line}"
    );
    assert!(line.contains(&aside_name), "{line} names {aside_name}");
    assert_eq!(asides[0].is_file(), original_is_file);
    assert!(b.data_dir().join("data").is_dir(), "fresh data directory");
    let b = persistent_round_trip(b, PERSIST);
    assert_eq!(corrupt_asides(b.data_dir()).len(), 1);
}

/// issue: durable sessions. on_corrupt = "move_aside" (default): a regular file where the
/// data directory should be is renamed to data.corrupt-<ts>, both paths are logged, and the
/// broker starts empty and works.
#[test]
fn data_path_that_is_a_file_is_moved_aside() {
    moved_aside_and_works(
        |data| std::fs::write(data, b"not a directory").unwrap(),
        true,
    );
}

/// issue: durable sessions. on_corrupt = "move_aside": a data directory whose sled `conf` is
/// garbage is moved aside and the broker starts empty and works.
#[test]
fn data_dir_with_garbage_conf_is_moved_aside() {
    moved_aside_and_works(
        |data| {
            std::fs::create_dir(data).unwrap();
            std::fs::write(data.join("conf"), [0xffu8; 64]).unwrap();
            std::fs::write(data.join("db"), [0xa5u8; 4096]).unwrap();
        },
        false,
    );
}

/// issue: durable sessions. on_corrupt = "refuse": an unusable data directory makes the
/// process exit non-zero before it listens, with an error naming the path; nothing is moved.
#[test]
fn data_path_that_is_a_file_is_refused_with_on_corrupt_refuse() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("data"), b"not a directory").unwrap();
    let config = dir.path().join("broker.toml");
    std::fs::write(
        &config,
        format!(
            "[listener]\nbind = \"127.0.0.1:0\"\n{}",
            persist_with("on_corrupt = \"refuse\"")
        ),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_brokerd"))
        .arg("--config")
        .arg(&config)
        .current_dir(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn brokerd");
    let deadline = Instant::now() + WAIT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("brokerd kept running with an unusable data directory and on_corrupt = refuse");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let out = child.wait_with_output().unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(!status.success(), "exit {status}; stderr:\n{stderr}");
    assert!(
        !stdout.contains("listening on"),
        "it listened: {stdout}\n{stderr}"
    );
    assert!(
        stderr
            .lines()
            .any(|l| l.contains("ERROR") && l.contains("path=data")),
        "no error naming the path:\n{stderr}"
    );
    assert!(
        dir.path().join("data").is_file(),
        "the data path was touched"
    );
    assert!(corrupt_asides(dir.path()).is_empty());
}

// ---------------------------------------------------------------------------------------------
// 8. Disk full.

/// A tmpfs mounted on a temp dir, unmounted on drop (also when the test fails).
struct Tmpfs {
    path: PathBuf,
}

impl Tmpfs {
    fn mount(path: &Path, size: &str) -> Tmpfs {
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(path)
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "mount tmpfs failed (this test needs root): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs {
            path: path.to_owned(),
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let ok = Command::new("umount")
            .arg(&self.path)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            let _ = Command::new("umount").arg("-l").arg(&self.path).status();
        }
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// A 2 MiB tmpfs holding the data directory, and a filler file that can fill it. Drop the
/// broker first (declare it after this): the mount goes, then the temp dir.
struct SmallDisk {
    _tmpfs: Tmpfs,
    mnt: tempfile::TempDir,
    config: String,
}

impl SmallDisk {
    /// None (test skipped, with a message) when not root: mounting needs it.
    fn new() -> Option<SmallDisk> {
        if !is_root() {
            eprintln!("SKIPPED: mounting a tmpfs needs root");
            return None;
        }
        let mnt = tempfile::tempdir().unwrap();
        let tmpfs = Tmpfs::mount(mnt.path(), "2m");
        let config = format!(
            "[persistence]\nenabled = true\npath = \"{}\"\n",
            mnt.path().join("data").display()
        );
        Some(SmallDisk {
            _tmpfs: tmpfs,
            mnt,
            config,
        })
    }

    fn filler(&self) -> PathBuf {
        self.mnt.path().join("filler")
    }

    /// Writes the filler until the file system is full (ENOSPC).
    fn fill(&self) {
        let mut f = std::fs::File::create(self.filler()).expect("filler");
        let mut written = 0usize;
        for chunk in [65_536usize, 4096, 512, 1] {
            let buf = vec![0x5au8; chunk];
            while f.write_all(&buf).is_ok() {
                written += chunk;
            }
        }
        let _ = f.sync_all();
        assert!(written > 0, "nothing written to the filler");
    }

    fn free(&self) {
        std::fs::remove_file(self.filler()).unwrap();
    }

    /// Starts the broker with a persistent subscriber `df-sub` on `df/#` (QoS 1), offline,
    /// and one acknowledged message "before" queued for it.
    fn start(&self) -> BrokerProc {
        let b = BrokerProc::start(&self.config);
        let (mut s, _) = Raw::connected_with(b.addr, "df-sub", false);
        s.subscribe(1, "df/#", 1);
        go_offline(&b, s, "df-sub", 1);
        publish_acked(b.addr, "df/before", 1, false, b"before");
        b
    }
}

/// The next packet within `limit` must be PUBACK `pkid`; the broker's log on failure.
fn expect_puback_within(b: &BrokerProc, p: &mut Raw, pkid: u16, limit: Duration, what: &str) {
    match p.read_within(limit) {
        RawRead::Packet(ack) => assert_eq!(ack, ack_packet(0x40, pkid), "{what}"),
        other => panic!(
            "{what}: no PUBACK {pkid} within {limit:?} ({other:?}); log:\n{}",
            b.log()
        ),
    }
}

/// issue: durable sessions. A full disk: the broker keeps serving clean-session QoS 0
/// traffic, withholds the PUBACK of QoS 1 messages it cannot store (no crash, the persistence
/// error logged), and once space is freed sends the withheld PUBACKs and delivers the
/// messages, which also survive a later kill -9.
#[test]
fn disk_full_withholds_acks_and_recovers_when_space_is_freed() {
    let Some(disk) = SmallDisk::new() else { return };
    let mut b = disk.start();
    let mut q0 = Raw::connected(b.addr, "df-q0");
    q0.subscribe(1, "q0/#", 0);
    disk.fill();

    // 1 KiB messages until one is not acknowledged: the disk is full.
    let mut p = Raw::connected(b.addr, "df-pub");
    let payload = |i: u16| {
        let mut v = format!("{i:05}").into_bytes();
        v.resize(1024, b'.');
        v
    };
    let mut sent = 0u16;
    loop {
        sent += 1;
        assert!(
            sent < 1000,
            "1000 messages acknowledged on a full 2 MiB disk"
        );
        p.send(&publish_packet(
            "df/a",
            1,
            false,
            false,
            sent,
            &payload(sent),
        ));
        match p.read_within(Duration::from_secs(2)) {
            RawRead::Packet(ack) => assert_eq!(ack, ack_packet(0x40, sent)),
            RawRead::Timeout => break,
            RawRead::Closed => panic!("connection closed on a full disk; log:\n{}", b.log()),
        }
    }
    // Two more behind it are withheld too (acknowledgements keep their order).
    for id in [sent + 1, sent + 2] {
        p.send(&publish_packet("df/a", 1, false, false, id, &payload(id)));
    }
    assert_eq!(
        p.read_within(Duration::from_secs(1)),
        RawRead::Timeout,
        "PUBACK for a message the broker could not store"
    );
    let log = b.log();
    assert!(
        log.lines().any(|l| l.contains("ERROR")
            && (l.contains("persistence write failed") || l.contains("persistence flush failed"))),
        "no persistence error logged:\n{log}"
    );
    assert!(b.is_alive(), "broker died on a full disk");

    // Clean-session QoS 0 traffic is unaffected.
    let mut q0p = Raw::connected(b.addr, "df-q0-pub");
    q0p.send(&publish_packet("q0/x", 0, false, false, 0, b"still here"));
    q0p.ping();
    let (_, _, _, topic, _, got) = expect_publish(&mut q0, "QoS 0 while the disk is full");
    assert_eq!((topic.as_str(), &got[..]), ("q0/x", &b"still here"[..]));

    disk.free();
    for id in sent..=sent + 2 {
        expect_puback_within(
            &b,
            &mut p,
            id,
            WAIT,
            "the withheld PUBACK after space was freed",
        );
    }
    b.wait_log("persistence recovered");
    let last = sent + 2;

    // Everything is delivered, in order, and survives a crash afterwards.
    let dir = b.kill9();
    b = BrokerProc::start_in(dir, &disk.config);
    let (mut s, present) = Raw::connected_with(b.addr, "df-sub", false);
    assert!(present);
    let (_, _, _, topic, pkid, got) = expect_publish(&mut s, "before");
    assert_eq!((topic.as_str(), &got[..]), ("df/before", &b"before"[..]));
    s.send(&ack_packet(0x40, pkid));
    for i in 1..=last {
        let (_, _, _, topic, pkid, got) = expect_publish(&mut s, "stored message");
        assert_eq!(topic, "df/a");
        assert!(
            got == payload(i),
            "message {i}: got {:?}",
            String::from_utf8_lossy(&got[..5])
        );
        s.send(&ack_packet(0x40, pkid));
    }
    s.ping();
    s.expect_silence(SHORT);
    drop(b);
}

/// issue: durable sessions. KNOWN FAILING (sled 0.34): a message big enough to be stored as
/// a sled blob (over ~128 KiB, or a tree node over that size) hitting a full disk wedges
/// the engine: the failed blob write leaves the log buffer's writer count raised, so every
/// later flush (and dropping the database to reopen it) blocks forever. The PUBACK withheld
/// while the disk is full must still arrive once space is freed. Ignored in the default run
/// until sled is patched or replaced; run it with `cargo test --test persistence -- --ignored`.
#[test]
#[ignore = "sled 0.34 wedges after a failed blob write on a full disk; see README, Persistence"]
fn disk_full_with_a_large_message_recovers_when_space_is_freed() {
    let Some(disk) = SmallDisk::new() else { return };
    let b = disk.start();
    disk.fill();
    let mut p = Raw::connected(b.addr, "df-pub");
    let big = vec![0xabu8; 256 * 1024];
    p.send(&publish_packet("df/big", 1, false, false, 1, &big));
    assert_eq!(
        p.read_within(Duration::from_secs(2)),
        RawRead::Timeout,
        "PUBACK for a message the broker could not store"
    );
    b.wait_log("persistence write failed");
    disk.free();
    expect_puback_within(
        &b,
        &mut p,
        1,
        WAIT,
        "the withheld PUBACK after space was freed",
    );
    let (mut s, present) = Raw::connected_with(b.addr, "df-sub", false);
    assert!(present);
    let (_, _, _, topic, _, _) = expect_publish(&mut s, "before");
    assert_eq!(topic, "df/before");
    let (_, _, _, topic, _, got) = expect_publish(&mut s, "the large message");
    assert_eq!(topic, "df/big");
    assert!(got == big);
    drop(b);
}

/// issue: durable sessions. Even with the storage engine wedged by a failed write, SIGTERM
/// still ends the process (the store's close is bounded), and what was acknowledged before
/// the failure is intact after the restart.
#[test]
fn wedged_store_does_not_block_shutdown_or_lose_acknowledged_state() {
    let Some(disk) = SmallDisk::new() else { return };
    let mut b = disk.start();
    disk.fill();
    let mut p = Raw::connected(b.addr, "df-pub");
    p.send(&publish_packet(
        "df/big",
        1,
        false,
        false,
        1,
        &vec![0xabu8; 256 * 1024],
    ));
    assert_eq!(
        p.read_within(Duration::from_secs(2)),
        RawRead::Timeout,
        "PUBACK for a message the broker could not store"
    );
    b.wait_log("persistence write failed");
    disk.free();
    drop(p);
    b.signal("TERM");
    let status = b.wait_exit(Duration::from_secs(20));
    assert!(
        status.is_some(),
        "SIGTERM did not end the broker; log:\n{}",
        b.log()
    );
    let dir = b.into_dir();
    let b = BrokerProc::start_in(dir, &disk.config);
    let (mut s, present) = Raw::connected_with(b.addr, "df-sub", false);
    assert!(present, "session lost; log:\n{}", b.log());
    let (_, _, _, topic, pkid, got) = expect_publish(&mut s, "before");
    assert_eq!((topic.as_str(), &got[..]), ("df/before", &b"before"[..]));
    s.send(&ack_packet(0x40, pkid));
    drop(b);
}

// ---------------------------------------------------------------------------------------------
// 10. Session expiry.

/// issue: durable sessions (session.expiry_s). An offline persistent session that expires is
/// removed from disk with its queued messages: the restart loads sessions=0 messages=0.
#[test]
fn expired_session_is_removed_from_disk() {
    let config = format!("{PERSIST}[session]\nexpiry_s = 1\n");
    let b = BrokerProc::start(&config);
    let (mut s, _) = Raw::connected_with(b.addr, "exp", false);
    s.subscribe(1, "exp/#", 1);
    go_offline(&b, s, "exp", 1);
    for i in 0..3u8 {
        publish_acked(b.addr, "exp/a", 1, false, &[i]);
    }
    b.wait_log("persistent session expired");
    let b = Restart::Graceful.restart(b, &config);
    let stats = loaded_stats(&b);
    assert_eq!(
        (stats["sessions"].as_str(), stats["messages"].as_str()),
        ("0", "0"),
        "{stats:?}"
    );
    let (_, present) = Raw::connected_with(b.addr, "exp", false);
    assert!(!present, "the expired session came back from disk");
}
