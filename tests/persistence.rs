//! Durability: persistent sessions, in-flight state, inbound QoS 2 state and retained messages
//! survive a graceful restart and a kill -9 of the real broker process on the same data
//! directory; cleaned and expired sessions leave nothing on disk; only a data directory whose
//! content is corrupt is ever moved aside, and one broker at a time uses it.
//!
//! issue: durable sessions, issue #8 items 3 and 6. Every test runs `brokerd` with
//! `[persistence] enabled = true` on a temp dir and restarts it there (`BrokerProc::start_in`).
//! The kill -9 loops are in crash_loop.rs, the full-disk tests in disk_full.rs.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::persist::*;
use common::*;
use rumqttc::{Event, Packet, QoS};

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
    b.wait_disconnected("dur-sub", 1);

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
// 2. In-flight state resumes across a crash.

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
// 3. Inbound QoS 2 exactly once across a crash.

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
// 4. Retained messages and subscriptions.

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
// 5. A cleaned session leaves nothing on disk.

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
    b.wait_disconnected("cs", 2);
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
// 6. The data directory: corrupt, refused, locked.

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

/// Runs brokerd on `config` (in `dir`) and expects it to refuse to start: non-zero exit
/// before listening. Returns its stderr.
fn expect_refusal(dir: &Path, config: &str) -> String {
    let path = dir.join("broker.toml");
    std::fs::write(
        &path,
        format!("[listener]\nbind = \"127.0.0.1:0\"\n[http]\nbind = \"127.0.0.1:0\"\n{config}"),
    )
    .unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_brokerd"));
    cmd.arg("--config").arg(&path).current_dir(dir);
    expect_refusal_of(cmd)
}

/// Runs `cmd` (brokerd) and expects it to refuse to start: non-zero exit before listening,
/// within `WAIT` (a broker that starts is killed). Returns its stderr.
fn expect_refusal_of(mut cmd: Command) -> String {
    let mut child = cmd
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
            panic!("brokerd kept running; it should have refused to start");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let out = child.wait_with_output().unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert!(!status.success(), "exit {status}; stderr:\n{stderr}");
    assert!(
        !stdout.contains("listening on"),
        "it listened: {stdout}\n{stderr}"
    );
    stderr
}

/// issue: durable sessions. on_corrupt = "move_aside" (default): a data directory whose sled
/// `conf` is garbage (content that fails validation) is moved aside, both paths are logged,
/// and the broker starts empty and works.
#[test]
fn data_dir_with_garbage_conf_is_moved_aside() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::write(data.join("conf"), [0xffu8; 64]).unwrap();
    std::fs::write(data.join("db"), [0xa5u8; 4096]).unwrap();
    let b = BrokerProc::start_in(dir, PERSIST);
    let log = b.wait_log("data directory corrupt");
    let line = log
        .lines()
        .find(|l| l.contains("data directory corrupt"))
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
    assert_eq!(
        std::fs::read(asides[0].join("conf")).unwrap(),
        [0xffu8; 64],
        "the corrupt content is kept as it was"
    );
    assert!(b.data_dir().join("data").is_dir(), "fresh data directory");
    let b = persistent_round_trip(b, PERSIST);
    assert_eq!(corrupt_asides(b.data_dir()).len(), 1);
}

/// issue: durable sessions. on_corrupt = "refuse": a corrupt data directory makes the process
/// exit non-zero before it listens, with an error naming the path; nothing is moved.
#[test]
fn corrupt_data_dir_is_refused_with_on_corrupt_refuse() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::write(data.join("conf"), [0xffu8; 64]).unwrap();
    let stderr = expect_refusal(dir.path(), &persist_with("on_corrupt = \"refuse\""));
    assert!(
        stderr
            .lines()
            .any(|l| l.contains("ERROR") && l.contains("path=data")),
        "no error naming the path:\n{stderr}"
    );
    assert_eq!(std::fs::read(data.join("conf")).unwrap(), [0xffu8; 64]);
    assert!(corrupt_asides(dir.path()).is_empty());
}

/// issue #8 item 6. A regular file where the data directory should be is not a corrupt data
/// directory (it may be anything of the user's): the broker refuses to start, naming the
/// path, and leaves the file alone (also with the default on_corrupt = "move_aside").
#[test]
fn data_path_that_is_a_file_is_refused_and_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("data"), b"not a directory").unwrap();
    let stderr = expect_refusal(dir.path(), PERSIST);
    assert!(
        stderr.contains("data is not a directory"),
        "the error does not say what is wrong:\n{stderr}"
    );
    assert_eq!(
        std::fs::read(dir.path().join("data")).unwrap(),
        b"not a directory"
    );
    assert!(corrupt_asides(dir.path()).is_empty());
}

/// issue #8 item 6. A data path whose parent directory is missing (an unmounted volume) is
/// refused with the OS error; nothing is created in its place.
#[test]
fn data_path_with_a_missing_parent_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let stderr = expect_refusal(
        dir.path(),
        "[persistence]\nenabled = true\npath = \"mnt/usb/data\"\n",
    );
    assert!(
        stderr.contains("mnt/usb/data") && stderr.contains("No such file or directory"),
        "the error does not name the path and the OS error:\n{stderr}"
    );
    assert!(!dir.path().join("mnt").exists(), "a parent was created");
}

/// issue #8 item 6. A second broker started on the same data directory (the same config
/// file, a common mistake) refuses to start, naming the path and the first broker's pid; the
/// first broker's directory is untouched and it keeps its retained messages across its next
/// restart.
#[test]
fn second_instance_on_the_same_data_dir_is_refused() {
    let b = BrokerProc::start(PERSIST);
    publish_acked(b.addr, "keep/me", 1, true, b"retained");
    let second = tempfile::tempdir().unwrap();
    let config = format!(
        "[persistence]\nenabled = true\npath = \"{}\"\n",
        b.data_dir().join("data").display()
    );
    let stderr = expect_refusal(second.path(), &config);
    assert!(
        stderr.contains("in use by another process")
            && stderr.contains(&format!("pid {}", b.pid())),
        "the error does not name the lock holder's pid {}:\n{stderr}",
        b.pid()
    );
    assert!(
        corrupt_asides(b.data_dir()).is_empty(),
        "the first broker's directory was moved"
    );
    let b = Restart::Kill9.restart(b, PERSIST);
    assert_eq!(loaded_count(&b, "retained"), 1);
    let mut c = Raw::connected(b.addr, "check");
    c.subscribe(1, "keep/#", 1);
    let (_, _, retain, topic, _, payload) = expect_publish(&mut c, "the retained message");
    assert!(retain);
    assert_eq!(
        (topic.as_str(), &payload[..]),
        ("keep/me", &b"retained"[..])
    );
}

/// issue #8 item 6. A healthy data directory the broker's user cannot write is refused with
/// the OS error (permission denied), never moved aside as corrupt. As root (CI) the broker
/// runs as uid 65534, since root ignores file modes.
#[test]
fn unwritable_data_dir_is_refused_not_moved() {
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    // A healthy directory with a stored retained message.
    let b = BrokerProc::start(PERSIST);
    publish_acked(b.addr, "keep/me", 1, true, b"retained");
    let dir = b.stop();
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
    let data = dir.path().join("data");
    let mode = |p: &Path, m: u32| std::fs::set_permissions(p, std::fs::Permissions::from_mode(m));
    // The parent is writable by the broker's user (so moving the directory aside would
    // succeed); the data directory is read-only for everyone but root, who owns it.
    mode(dir.path(), 0o777).unwrap();
    for e in walk(&data) {
        mode(&e, if e.is_dir() { 0o555 } else { 0o444 }).unwrap();
    }
    let config = dir.path().join("broker.toml");
    std::fs::write(
        &config,
        format!("[listener]\nbind = \"127.0.0.1:0\"\n[http]\nbind = \"127.0.0.1:0\"\n{PERSIST}"),
    )
    .unwrap();
    mode(&config, 0o644).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_brokerd"));
    cmd.arg("--config").arg(&config).current_dir(dir.path());
    if root {
        cmd.uid(65534).gid(65534);
    }
    let stderr = expect_refusal_of(cmd);
    for e in walk(&data) {
        mode(&e, if e.is_dir() { 0o755 } else { 0o644 }).unwrap();
    }
    assert!(
        stderr.contains("Permission denied") || stderr.contains("Read-only"),
        "the error does not carry the OS error:\n{stderr}"
    );
    assert!(
        corrupt_asides(dir.path()).is_empty(),
        "moved aside:\n{stderr}"
    );
    // Still intact for a broker that may write it.
    let b = BrokerProc::start_in(dir, PERSIST);
    assert_eq!(loaded_count(&b, "retained"), 1);
}

/// `path` and everything under it.
fn walk(path: &Path) -> Vec<PathBuf> {
    let mut out = vec![path.to_owned()];
    if path.is_dir() {
        for e in std::fs::read_dir(path).unwrap() {
            out.extend(walk(&e.unwrap().path()));
        }
    }
    out
}

/// issue #8 item 6. A data directory stamped with a newer format than this brokerd reads is
/// refused with both versions named, and left exactly as it was (never misread, never moved).
#[test]
fn newer_data_format_is_refused_and_left_alone() {
    let b = BrokerProc::start(PERSIST);
    publish_acked(b.addr, "keep/me", 1, true, b"retained");
    let dir = b.stop();
    let data = dir.path().join("data");
    {
        let db = sled::Config::new().path(&data).open().unwrap();
        let tree = db.open_tree("brokerd").unwrap();
        tree.insert(b"\0format", &99u32.to_be_bytes()).unwrap();
        db.flush().unwrap();
    }
    let stderr = expect_refusal(dir.path(), PERSIST);
    assert!(
        stderr.contains("format 99") && stderr.contains("reads format 2"),
        "the error does not name both formats:\n{stderr}"
    );
    assert!(corrupt_asides(dir.path()).is_empty());
    let db = sled::Config::new().path(&data).open().unwrap();
    let tree = db.open_tree("brokerd").unwrap();
    assert_eq!(
        tree.get(b"\0format").unwrap().as_deref(),
        Some(&99u32.to_be_bytes()[..])
    );
    assert_eq!(tree.len(), 2, "records were added or removed");
}

// ---------------------------------------------------------------------------------------------
// 7. Session expiry.

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
