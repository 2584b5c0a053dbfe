//! Resource limits: a slow consumer cannot grow the broker without bound or stall others;
//! max_queued_bytes bounds an offline queue; max_connections; the cost of idle connections.

mod common;

use std::io::{BufReader, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;

/// Slow consumer: a subscriber (at `slow_qos`) that never reads while a QoS 1 publisher floods
/// 100k x 1 KiB. The broker's RSS stays bounded, a normal subscriber on the same topic keeps
/// receiving (gets the final marker), every PUBACK arrives in order. Returns the RSS growth.
fn slow_consumer(slow_qos: u8) -> (BrokerProc, Raw) {
    const N: u32 = 100_000;
    let b = BrokerProc::start("[limits]\nmax_queued_messages = 1000\n");
    let mut slow = Raw::connected(b.addr, "slow");
    slow.subscribe(1, "flood", slow_qos);

    // The normal subscriber reads everything on its own thread until it sees the marker.
    let mut normal = Raw::connected(b.addr, "normal");
    normal.subscribe(1, "flood", 0);
    let received = Arc::new(AtomicU64::new(0));
    let saw_marker = Arc::new(AtomicBool::new(false));
    let normal_thread = {
        let (received, saw_marker) = (received.clone(), saw_marker.clone());
        let stream = normal.stream.try_clone().expect("clone");
        stream
            .set_read_timeout(Some(Duration::from_secs(60)))
            .expect("timeout");
        std::thread::spawn(move || {
            let mut r = BufReader::with_capacity(256 * 1024, stream);
            while let Some(p) = read_packet_from(&mut r) {
                let (_, _, _, _, _, payload) = parse_publish(&p);
                if payload == b"END" {
                    saw_marker.store(true, Ordering::SeqCst);
                    return;
                }
                received.fetch_add(1, Ordering::Relaxed);
            }
        })
    };

    let rss_before = b.rss_kib();
    let peak = Arc::new(AtomicU64::new(rss_before));
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (peak, stop, pid) = (peak.clone(), stop.clone(), b.pid());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                peak.fetch_max(rss_kib_of(pid), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };

    let publ = Raw::connected(b.addr, "flooder");
    let mut writer = publ.stream.try_clone().expect("clone");
    let flood = std::thread::spawn(move || {
        let mut payload = vec![0xA5u8; 1024];
        let mut batch = Vec::with_capacity(128 * 1100);
        for i in 0..N {
            let id = (i % 65_535 + 1) as u16;
            payload[..4].copy_from_slice(&i.to_be_bytes());
            batch.extend(publish_packet("flood", 1, false, false, id, &payload));
            if batch.len() >= 128 * 1024 {
                writer.write_all(&batch).expect("publisher write");
                batch.clear();
            }
        }
        writer.write_all(&batch).expect("publisher write");
    });
    let started = Instant::now();
    let mut acks = BufReader::new(publ.stream.try_clone().expect("clone"));
    publ.stream.set_read_timeout(Some(WAIT)).expect("timeout");
    for i in 0..N {
        let id = (i % 65_535 + 1) as u16;
        let p = read_packet_from(&mut acks)
            .unwrap_or_else(|| panic!("PUBACK {i} of {N} did not arrive; log:\n{}", b.log()));
        assert_eq!(p, ack_packet(0x40, id), "PUBACK {i} out of order");
    }
    flood.join().expect("flood thread");
    let flood_time = started.elapsed();

    // The marker goes out until the normal subscriber has it: its own queue may still be full
    // of flood messages it has not read yet, but it must keep draining.
    let mut marker = Raw::connected(b.addr, "marker");
    let deadline = Instant::now() + WAIT;
    let mut pkid = 1;
    while !saw_marker.load(Ordering::SeqCst) {
        assert!(
            Instant::now() < deadline,
            "normal subscriber stalled after {} messages",
            received.load(Ordering::Relaxed)
        );
        marker.send(&publish_packet("flood", 1, false, false, pkid, b"END"));
        assert_eq!(marker.expect_packet("PUBACK"), ack_packet(0x40, pkid));
        pkid += 1;
        std::thread::sleep(Duration::from_millis(50));
    }
    normal_thread.join().expect("normal subscriber thread");
    stop.store(true, Ordering::Relaxed);
    sampler.join().expect("sampler");
    let rss_after = b.rss_kib();
    let growth = peak.load(Ordering::Relaxed).saturating_sub(rss_before);
    eprintln!(
        "slow consumer (QoS {slow_qos}): {N} x 1 KiB in {flood_time:?}; normal subscriber got {} + marker; \
         broker RSS {rss_before} KiB -> peak {} KiB (growth {growth} KiB), {rss_after} KiB after",
        received.load(Ordering::Relaxed),
        peak.load(Ordering::Relaxed),
    );
    assert!(
        growth < 64 * 1024,
        "RSS grew by {growth} KiB with a slow consumer"
    );
    (b, slow)
}

/// Checklist "Queue bounded by max_queued_messages": a QoS 1 subscriber that never reads costs
/// a bounded amount of memory, does not slow the publisher or other subscribers, and its
/// drops are logged as a warning. What it kept is intact: when it finally reads, it gets the
/// in-flight window (20) plus the queue (1000), the oldest messages, in order, then nothing.
#[test]
fn slow_qos1_consumer_is_bounded_and_does_not_stall_others() {
    let (b, slow) = slow_consumer(1);
    b.wait_log("subscriber queue full");
    let mut slow = slow;
    let mut next = 0u32;
    while let Some(p) = slow.read_packet_within(Duration::from_secs(1)) {
        let (dup, qos, _, _, id, payload) = parse_publish(&p);
        assert_eq!((dup, qos), (false, 1));
        let i = u32::from_be_bytes(payload[..4].try_into().unwrap());
        assert_eq!(
            i, next,
            "slow subscriber: backlog out of order or with a gap"
        );
        next += 1;
        slow.send(&ack_packet(0x40, id));
    }
    eprintln!("slow QoS 1 subscriber's backlog: {next} messages");
    assert_eq!(
        next,
        20 + 1000,
        "backlog = max_inflight + max_queued_messages"
    );
}

/// Checklist "Queue bounded by max_queued_messages": the same with a QoS 0 subscriber.
#[test]
fn slow_qos0_consumer_is_bounded_and_does_not_stall_others() {
    slow_consumer(0);
}

/// Checklist "Queue bounded by max_queued_messages (and bytes)": an offline persistent session
/// with max_queued_bytes = 64 KiB keeps at most 6 of 20 10-KiB messages, the oldest ones.
#[test]
fn max_queued_bytes_bounds_offline_queue() {
    let b = BrokerProc::start("[limits]\nmax_queued_bytes = 65536\n");
    let (mut s, _) = Raw::connected_with(b.addr, "ps", false);
    s.subscribe(1, "big", 1);
    drop(s);
    b.wait_disconnected("ps", 1);

    let mut p = Raw::connected(b.addr, "pub");
    for i in 0..20u16 {
        let mut payload = vec![i as u8; 10 * 1024];
        payload[0] = i as u8;
        p.send(&publish_packet("big", 1, false, false, i + 1, &payload));
        assert_eq!(p.expect_packet("PUBACK"), ack_packet(0x40, i + 1));
    }
    b.wait_log_lines(
        &[
            "subscriber queue full",
            "limit=max_queued_bytes limit_value=65536",
        ],
        1,
    );

    let (mut s, present) = Raw::connected_with(b.addr, "ps", false);
    assert!(present);
    p.send(&publish_packet("big", 1, false, false, 100, b"END"));
    assert_eq!(p.expect_packet("PUBACK"), ack_packet(0x40, 100));
    let mut got = Vec::new();
    loop {
        let (_, _, _, _, id, payload) = parse_publish(&s.expect_packet("queued or marker"));
        s.send(&ack_packet(0x40, id));
        if payload == b"END" {
            break;
        }
        got.push(payload[0]);
    }
    eprintln!(
        "max_queued_bytes = 64 KiB kept {} of 20 x 10 KiB",
        got.len()
    );
    assert!(
        (5..=7).contains(&got.len()),
        "kept {} x 10 KiB under a 64 KiB bound",
        got.len()
    );
    let expected: Vec<u8> = (0..got.len() as u8).collect();
    assert_eq!(got, expected, "the oldest messages are kept, in order");
}

/// Checklist "Queue bounded by max_queued_messages": an offline persistent session with
/// max_queued_messages = 5 keeps the oldest 5 of 12, in order, and the drop is logged.
#[test]
fn max_queued_messages_bounds_offline_queue() {
    let b = BrokerProc::start("[limits]\nmax_queued_messages = 5\n");
    let (mut s, _) = Raw::connected_with(b.addr, "ps", false);
    s.subscribe(1, "count", 1);
    drop(s);
    b.wait_disconnected("ps", 1);
    let mut p = Raw::connected(b.addr, "pub");
    for i in 0..12u16 {
        p.send(&publish_packet("count", 1, false, false, i + 1, &[i as u8]));
        assert_eq!(p.expect_packet("PUBACK"), ack_packet(0x40, i + 1));
    }
    b.wait_log_lines(
        &[
            "subscriber queue full",
            "limit=max_queued_messages limit_value=5",
        ],
        1,
    );
    let (mut s, present) = Raw::connected_with(b.addr, "ps", false);
    assert!(present);
    for i in 0..5u8 {
        let (_, _, _, _, id, payload) = parse_publish(&s.expect_packet("queued"));
        assert_eq!(payload, vec![i]);
        s.send(&ack_packet(0x40, id));
    }
    s.ping();
    s.expect_silence(Duration::from_millis(300));
}

/// A QoS 1 subscriber that never reads nor acknowledges (window of 1) while 10 x 1 KiB QoS 1
/// messages are published to it under `limits`; returns the queue-full warning line.
fn queue_full_warning(limits: &str) -> String {
    let b = BrokerProc::start(&format!("[limits]\nmax_inflight = 1\n{limits}"));
    let mut stuck = Raw::connected(b.addr, "stuck");
    stuck.subscribe(1, "full", 1);
    let mut p = Raw::connected(b.addr, "pub");
    for i in 1..=10u16 {
        p.send(&publish_packet("full", 1, false, false, i, &[0xA5; 1024]));
        assert_eq!(p.expect_packet("PUBACK"), ack_packet(0x40, i));
    }
    let log = b.wait_log_lines(&["WARN", "subscriber queue full"], 1);
    log.lines()
        .find(|l| l.contains("WARN") && l.contains("subscriber queue full"))
        .expect("warning line")
        .to_owned()
}

/// issue #8 item 3: when max_queued_bytes is the bound that refuses a message, the warning
/// names it and its value, not max_queued_messages (checklist "Queue bounded by
/// max_queued_messages (and bytes)").
#[test]
fn queue_full_warning_names_max_queued_bytes_when_it_fired() {
    let line = queue_full_warning("max_queued_messages = 1000000\nmax_queued_bytes = 4096\n");
    assert!(
        line.contains("limit=max_queued_bytes") && line.contains("limit_value=4096"),
        "{line}"
    );
    assert!(!line.contains("1000000"), "{line}");
}

/// issue #8 item 3: the converse: max_queued_messages fired, under a huge byte bound.
#[test]
fn queue_full_warning_names_max_queued_messages_when_it_fired() {
    let line = queue_full_warning("max_queued_messages = 3\nmax_queued_bytes = 1073741824\n");
    assert!(
        line.contains("limit=max_queued_messages") && line.contains("limit_value=3"),
        "{line}"
    );
    assert!(!line.contains("1073741824"), "{line}");
}

/// Tries to complete a CONNECT within one second; true on CONNACK.
fn try_connect(b: &BrokerProc, id: &str) -> Option<Raw> {
    let mut raw = Raw::connect(b.addr);
    raw.send(&connect_packet(id, true, 60));
    match raw.read_packet_within(Duration::from_secs(1)) {
        Some(p) if p == [0x20, 0x02, 0x00, 0x00] => Some(raw),
        _ => None,
    }
}

/// (our choice) `max_connections`: a connection beyond the limit is closed at once without a
/// CONNACK; the existing ones keep working, and a freed slot can be used again.
#[test]
fn max_connections_closes_extra_connection() {
    let b = BrokerProc::start("[limits]\nmax_connections = 3\n");
    let mut conns: Vec<Raw> = (0..3)
        .map(|i| Raw::connected(b.addr, &format!("c{i}")))
        .collect();
    let mut extra = Raw::connect(b.addr);
    extra.send(&connect_packet("extra", true, 60));
    extra.expect_closed();
    for c in &mut conns {
        c.ping();
    }
    b.wait_log("max_connections reached");

    drop(conns.pop());
    let deadline = Instant::now() + WAIT;
    let mut again = loop {
        if let Some(raw) = try_connect(&b, "again") {
            break raw;
        }
        assert!(
            Instant::now() < deadline,
            "a freed connection slot was never reused"
        );
    };
    again.ping();
}

/// Idle connections are cheap: 500 connected raw clients cost the broker little memory each.
#[test]
fn idle_connections_cost_little_memory() {
    const N: usize = 500;
    let b = BrokerProc::start("");
    // Warm up (runtime threads, allocator arenas) before the baseline.
    let warm: Vec<Raw> = (0..20)
        .map(|i| Raw::connected(b.addr, &format!("w{i}")))
        .collect();
    let before = b.rss_kib();
    let mut conns: Vec<Raw> = (0..N)
        .map(|i| Raw::connected(b.addr, &format!("idle{i}")))
        .collect();
    // Every connection is live: the last one answers, and so does the first.
    conns.last_mut().unwrap().ping();
    conns[0].ping();
    let after = b.rss_kib();
    let per_conn = after.saturating_sub(before) as f64 / N as f64;
    eprintln!(
        "idle connections: RSS {before} KiB -> {after} KiB for {N} connections = {per_conn:.2} KiB each"
    );
    assert!(per_conn < 16.0, "{per_conn:.2} KiB per idle connection");
    drop(warm);
}

/// Checklist "a slow or vanished subscriber slows only itself", the other way round: clients
/// that flood the broker without pause must not starve a subscriber that reads. Two raw
/// publishers each write 200,000 QoS 0 messages as fast as the socket takes them; the
/// subscriber, reading all along, must get far more than one queue's worth
/// (max_queued_messages + max_inflight) before the end-of-flood marker. (A session task that never yielded its worker thread let the
/// subscriber receive only its first queue-full, then nothing until the flood ended.)
#[test]
fn flooding_publishers_do_not_starve_a_reading_subscriber() {
    let b = BrokerProc::start("");
    let mut sub = Raw::connected(b.addr, "reader");
    sub.subscribe(1, "flood/#", 0);
    let addr = b.addr;
    let reader = std::thread::spawn(move || {
        let mut received = 0usize;
        loop {
            let Some(p) = sub.read_packet() else {
                return Err(received);
            };
            let (_, _, _, topic, _, _) = parse_publish(&p);
            if topic == "flood/end" {
                return Ok(received);
            }
            received += 1;
        }
    });
    let publishers: Vec<_> = (0..2)
        .map(|p| {
            std::thread::spawn(move || {
                let mut raw = Raw::connected(addr, &format!("flooder-{p}"));
                let one = publish_packet(&format!("flood/{p}"), 0, false, false, 0, &[7u8; 64]);
                let chunk: Vec<u8> = one.iter().copied().cycle().take(one.len() * 1000).collect();
                for _ in 0..200 {
                    raw.send(&chunk);
                }
                raw
            })
        })
        .collect();
    let flooders: Vec<Raw> = publishers
        .into_iter()
        .map(|h| h.join().expect("publisher thread"))
        .collect();
    // The marker is QoS 0 like the flood, so a full queue may drop it too: repeat it until the
    // reader has seen it (bounded by WAIT).
    let mut marker = Raw::connected(b.addr, "marker");
    let deadline = std::time::Instant::now() + WAIT;
    while !reader.is_finished() && std::time::Instant::now() < deadline {
        marker.send(&publish_packet("flood/end", 0, false, false, 0, b"end"));
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let received = reader
        .join()
        .expect("reader thread")
        .unwrap_or_else(|n| panic!("subscriber lost after {n} messages; log:\n{}", b.log()));
    drop(flooders);
    assert!(
        received > 5_000,
        "the reading subscriber got only {received} of 400,000 flooded messages"
    );
}
