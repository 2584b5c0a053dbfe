//! Limits under attack (issue #9 item 5), against the real binary: a connection flood from one
//! address is refused over its limits and counted while another address is served; a publisher
//! over its publish rate is slowed, never dropped; the budget of queued bytes drops the heaviest
//! clients first and bounds memory; connection log lines stay under their threshold in a flood;
//! `max_keepalive_s` still caps keep-alive. Each test prints what it measured (`--nocapture`).

mod common;

use std::io::{BufReader, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;

/// Stops the broker (SIGTERM, clean exit asserted) and returns its whole log, including the
/// summary lines written at shutdown.
fn stop_and_log(b: BrokerProc) -> String {
    let dir = b.stop();
    std::fs::read_to_string(dir.path().join("stderr.log")).expect("broker log")
}

/// The number after `key=` in `line`, if any.
fn field_u64(line: &str, key: &str) -> Option<u64> {
    let at = line.find(&format!(" {key}="))? + key.len() + 2;
    let digits: String = line[at..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

/// How a connection attempt ended.
enum Attempt {
    /// CONNACK 0 received.
    Accepted(Raw),
    /// Closed without a CONNACK.
    Refused,
}

/// Connects (from `src`, or the default source), sends CONNECT and waits for the answer.
fn attempt(b: &BrokerProc, src: Option<&str>, id: &str) -> Attempt {
    let mut raw = match src {
        Some(src) => Raw::connect_from(b.addr, src),
        None => Raw::connect(b.addr),
    };
    raw.send(&connect_packet(id, true, 60));
    match raw.read_within(WAIT) {
        RawRead::Packet(p) if p == [0x20, 0x02, 0x00, 0x00] => Attempt::Accepted(raw),
        RawRead::Closed => Attempt::Refused,
        other => panic!("unexpected answer to CONNECT: {other:?}"),
    }
}

/// issue #9 item 5: a flood of connections from one address (127.0.0.1), far over
/// max_accept_rate_per_ip, gets at most the burst plus the rate; the rest are closed at once
/// without a CONNACK, each one logged and counted in the shutdown summary. A client from
/// another address (127.0.0.2) is served in the middle of the flood.
#[test]
fn connection_flood_from_one_address_is_refused_and_counted_while_another_is_served() {
    const RATE: u64 = 50;
    const ATTEMPTS_PER_THREAD: usize = 300;
    // Log folding off, so that every refusal line is written (folding has its own test).
    let b = Arc::new(BrokerProc::start(&format!(
        "[limits]\nmax_accept_rate_per_ip = {RATE}\naccept_burst_per_ip = {RATE}\nmax_conn_log_lines_per_s = 0\n"
    )));
    let done = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let flooders: Vec<_> = (0..4)
        .map(|t| {
            let (b, done) = (b.clone(), done.clone());
            std::thread::spawn(move || {
                let mut accepted = 0u64;
                for i in 0..ATTEMPTS_PER_THREAD {
                    if let Attempt::Accepted(mut raw) = attempt(&b, None, &format!("f{t}-{i}")) {
                        accepted += 1;
                        raw.send(&disconnect_packet());
                    }
                    done.fetch_add(1, Ordering::Relaxed);
                }
                accepted
            })
        })
        .collect();
    // In the middle of the flood, another address is served as if nothing happened.
    while done.load(Ordering::Relaxed) < 200 {
        std::thread::sleep(Duration::from_millis(5));
    }
    match attempt(&b, Some("127.0.0.2"), "other-host") {
        Attempt::Accepted(mut raw) => raw.ping(),
        Attempt::Refused => panic!("a client from 127.0.0.2 was refused during the flood"),
    }
    let flood_done_at = done.load(Ordering::Relaxed);
    let accepted: u64 = flooders
        .into_iter()
        .map(|t| t.join().expect("flooder"))
        .sum();
    let elapsed = started.elapsed();
    let attempts = (4 * ATTEMPTS_PER_THREAD) as u64;
    let refused = attempts - accepted;
    let allowed = RATE + (RATE as f64 * elapsed.as_secs_f64()).ceil() as u64;
    eprintln!(
        "accept flood from 127.0.0.1: {attempts} attempts in {elapsed:?} ({:.0}/s): {accepted} accepted \
         ({:.0}/s; burst {RATE} + {RATE}/s allows {allowed}), {refused} refused; 127.0.0.2 served after {flood_done_at} attempts",
        attempts as f64 / elapsed.as_secs_f64(),
        accepted as f64 / elapsed.as_secs_f64(),
    );
    assert!(
        accepted <= allowed,
        "{accepted} accepted, limit allows {allowed}"
    );
    assert!(
        refused >= attempts / 2,
        "only {refused} of {attempts} refused"
    );
    let b = Arc::into_inner(b).expect("no other owner");
    let log = stop_and_log(b);
    let refusal_lines = log
        .lines()
        .filter(|l| {
            l.contains("connection refused at accept: limit reached")
                && l.contains("limit=max_accept_rate_per_ip")
                && l.contains("peer=127.0.0.1:")
        })
        .count() as u64;
    assert_eq!(
        refusal_lines, refused,
        "one warning per refusal; log:\n{log}"
    );
    let summary = log
        .lines()
        .find(|l| l.contains("connections refused at accept, per limit"))
        .unwrap_or_else(|| panic!("no refusal summary; log:\n{log}"));
    assert_eq!(
        field_u64(summary, "max_accept_rate_per_ip"),
        Some(refused),
        "every refusal is counted: {summary}"
    );
}

/// issue #9 item 5: max_connections_per_ip: with 3 connections open from 127.0.0.1 a fourth
/// from there is closed at once, while 127.0.0.2 is still served; closing one frees its slot.
#[test]
fn connections_per_ip_refuses_the_extra_connection_from_that_address_only() {
    let b = BrokerProc::start("[limits]\nmax_connections_per_ip = 3\n");
    let mut held: Vec<Raw> = (0..3)
        .map(|i| Raw::connected(b.addr, &format!("held{i}")))
        .collect();
    assert!(matches!(attempt(&b, None, "fourth"), Attempt::Refused));
    let mut other = match attempt(&b, Some("127.0.0.2"), "other") {
        Attempt::Accepted(raw) => raw,
        Attempt::Refused => panic!("127.0.0.2 refused"),
    };
    other.ping();
    for c in &mut held {
        c.ping();
    }
    b.wait_log_lines(
        &[
            "connection refused at accept",
            "limit=max_connections_per_ip",
        ],
        1,
    );
    drop(held.pop());
    let deadline = Instant::now() + WAIT;
    loop {
        if let Attempt::Accepted(mut raw) = attempt(&b, None, "again") {
            raw.ping();
            break;
        }
        assert!(Instant::now() < deadline, "the freed slot was never reused");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// What a rate-limited QoS 1 flood measured.
struct Flood {
    /// PUBACK arrival times, from the first write.
    acks: Vec<Duration>,
    /// Messages the subscriber received (in order, none missing).
    delivered: usize,
    /// Slowest PINGREQ -> PINGRESP of a bystander client during the flood.
    bystander_worst: Duration,
}

/// One raw publisher writes `n` QoS 1 PUBLISHes of `payload` bytes as fast as the socket
/// takes them under `limits`; a subscriber reads (and acknowledges) everything; a bystander
/// pings all along.
fn rate_limited_flood(limits: &str, n: usize, payload: usize) -> Flood {
    let b = BrokerProc::start(limits);
    let mut sub = Raw::connected(b.addr, "sub");
    sub.subscribe(1, "rate", 1);
    let subscriber = {
        let mut stream = sub.stream.try_clone().expect("clone");
        std::thread::spawn(move || {
            stream
                .set_read_timeout(Some(Duration::from_secs(30)))
                .expect("timeout");
            let mut r = BufReader::new(stream.try_clone().expect("clone"));
            let mut next = 0u32;
            while (next as usize) < n {
                let Some(p) = read_packet_from(&mut r) else {
                    break;
                };
                let (_, qos, _, _, id, body) = parse_publish(&p);
                assert_eq!(qos, 1);
                let seq = u32::from_be_bytes(body[..4].try_into().expect("seq"));
                assert_eq!(seq, next, "subscriber: a message missing or out of order");
                next += 1;
                stream.write_all(&ack_packet(0x40, id)).expect("PUBACK");
            }
            next as usize
        })
    };
    let stop = Arc::new(AtomicBool::new(false));
    let worst = Arc::new(AtomicU64::new(0));
    let bystander = {
        let (stop, worst) = (stop.clone(), worst.clone());
        let mut by = Raw::connected(b.addr, "bystander");
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                by.ping();
                worst.fetch_max(t.elapsed().as_micros() as u64, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };
    let publ = Raw::connected(b.addr, "flooder");
    let mut writer = publ.stream.try_clone().expect("clone");
    let started = Instant::now();
    let flood = std::thread::spawn(move || {
        let mut body = vec![0x5Au8; payload.max(4)];
        let mut batch = Vec::new();
        for i in 0..n {
            body[..4].copy_from_slice(&(i as u32).to_be_bytes());
            let id = (i % 65_535 + 1) as u16;
            batch.extend(publish_packet("rate", 1, false, false, id, &body));
            if batch.len() >= 64 * 1024 {
                writer.write_all(&batch).expect("publisher write");
                batch.clear();
            }
        }
        writer.write_all(&batch).expect("publisher write");
    });
    publ.stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let mut acks_in = BufReader::new(publ.stream.try_clone().expect("clone"));
    let mut acks = Vec::with_capacity(n);
    for i in 0..n {
        let p = read_packet_from(&mut acks_in)
            .unwrap_or_else(|| panic!("PUBACK {i} of {n} missing; log:\n{}", b.log()));
        assert_eq!(p, ack_packet(0x40, (i % 65_535 + 1) as u16), "PUBACK {i}");
        acks.push(started.elapsed());
    }
    flood.join().expect("flood thread");
    let delivered = subscriber.join().expect("subscriber thread");
    stop.store(true, Ordering::Relaxed);
    bystander.join().expect("bystander thread");
    Flood {
        acks,
        delivered,
        bystander_worst: Duration::from_micros(worst.load(Ordering::Relaxed)),
    }
}

/// issue #9 item 5: a publisher flooding over max_publish_rate (500 msg/s) is slowed by
/// backpressure: over its first 2 s it gets at most 1.5 x the limit (and at least half of it),
/// every message is acknowledged and delivered in order (nothing dropped), and another client
/// is served meanwhile.
#[test]
fn publisher_over_max_publish_rate_is_slowed_not_dropped() {
    const RATE: usize = 500;
    const N: usize = 2_000;
    let f = rate_limited_flood(&format!("[limits]\nmax_publish_rate = {RATE}\n"), N, 16);
    let in_2s = f
        .acks
        .iter()
        .filter(|t| **t < Duration::from_secs(2))
        .count();
    let total = f.acks.last().copied().unwrap_or_default();
    eprintln!(
        "max_publish_rate = {RATE}: {in_2s} acknowledged in the first 2 s ({} msg/s), all {N} in {total:?} \
         ({:.0} msg/s), {} delivered; bystander's slowest ping {:?}",
        in_2s / 2,
        N as f64 / total.as_secs_f64(),
        f.delivered,
        f.bystander_worst
    );
    assert!(in_2s <= 3 * RATE, "{in_2s} messages in 2 s at {RATE}/s");
    assert!(in_2s >= RATE, "{in_2s} messages in 2 s: starved");
    assert_eq!(f.delivered, N, "messages were dropped");
    assert!(f.bystander_worst < Duration::from_secs(1));
}

/// issue #9 item 5: the same with max_publish_bytes_rate (200,000 B/s, 1,000-byte payloads:
/// 200 msg/s): at most 1.5 x the byte rate over 2 s, nothing dropped.
#[test]
fn publisher_over_max_publish_bytes_rate_is_slowed_not_dropped() {
    const BYTES_PER_S: usize = 200_000;
    const PAYLOAD: usize = 1_000;
    const N: usize = 800;
    let f = rate_limited_flood(
        &format!("[limits]\nmax_publish_bytes_rate = {BYTES_PER_S}\n"),
        N,
        PAYLOAD,
    );
    let bytes_in_2s = PAYLOAD
        * f.acks
            .iter()
            .filter(|t| **t < Duration::from_secs(2))
            .count();
    let total = f.acks.last().copied().unwrap_or_default();
    eprintln!(
        "max_publish_bytes_rate = {BYTES_PER_S}: {bytes_in_2s} payload bytes acknowledged in the first 2 s \
         ({} B/s), all {N} x {PAYLOAD} B in {total:?}, {} delivered; bystander's slowest ping {:?}",
        bytes_in_2s / 2,
        f.delivered,
        f.bystander_worst
    );
    assert!(bytes_in_2s <= 3 * BYTES_PER_S, "{bytes_in_2s} B in 2 s");
    assert!(
        bytes_in_2s >= BYTES_PER_S,
        "{bytes_in_2s} B in 2 s: starved"
    );
    assert_eq!(f.delivered, N, "messages were dropped");
    assert!(f.bystander_worst < Duration::from_secs(1));
}

/// issue #9 item 5 [MQTT-3.1.2-24]: a client paused for its byte rate is not closed by
/// keep-alive during the pause (its packets wait in the socket; keep-alive counts from the end
/// of the pause), and its packets are handled once the pause ends.
#[test]
fn keep_alive_does_not_count_a_rate_pause() {
    let b = BrokerProc::start("[limits]\nmax_publish_bytes_rate = 10000\n");
    let mut c = Raw::connect(b.addr);
    c.send(&connect_packet("paused", true, 1));
    assert_eq!(c.expect_packet("CONNACK"), vec![0x20, 0x02, 0x00, 0x00]);
    let started = Instant::now();
    // 30,000 bytes at 10,000 B/s: about 3 s of pause after this message.
    c.send(&publish_packet("big", 1, false, false, 1, &[7; 30_000]));
    assert_eq!(c.expect_packet("PUBACK"), ack_packet(0x40, 1));
    // Pings every 0.4 s, as a 1 s keep-alive client does; they wait in the socket.
    let mut writer = c.stream.try_clone().expect("clone");
    let pinger = std::thread::spawn(move || {
        for _ in 0..10 {
            writer.write_all(&pingreq_packet()).expect("PINGREQ");
            std::thread::sleep(Duration::from_millis(400));
        }
    });
    let first = c.expect_packet("PINGRESP after the pause");
    let paused_for = started.elapsed();
    assert_eq!(first, vec![0xD0, 0x00]);
    for _ in 1..10 {
        assert_eq!(c.expect_packet("PINGRESP"), vec![0xD0, 0x00]);
    }
    pinger.join().expect("pinger");
    eprintln!("a 30,000-byte message at 10,000 B/s paused reads for {paused_for:?}");
    assert!(
        paused_for >= Duration::from_millis(2_500),
        "reads resumed after {paused_for:?}"
    );
}

/// issue #9 item 5 ("max_keepalive still holds") [MQTT-3.1.2-24]: with max_keepalive_s = 1, a
/// client asking for keep-alive 60, or 0 (off), that then sends nothing is closed after about
/// 1.5 s.
#[test]
fn max_keepalive_caps_a_longer_or_disabled_keep_alive() {
    let b = BrokerProc::start("[limits]\nmax_keepalive_s = 1\n");
    for keep_alive in [60, 0] {
        let mut c = Raw::connect(b.addr);
        c.send(&connect_packet(
            &format!("ka{keep_alive}"),
            true,
            keep_alive,
        ));
        assert_eq!(c.expect_packet("CONNACK"), vec![0x20, 0x02, 0x00, 0x00]);
        let started = Instant::now();
        c.drain_until_closed(Duration::from_secs(5));
        let closed_after = started.elapsed();
        assert!(
            closed_after >= Duration::from_millis(1_400),
            "keep-alive {keep_alive}: closed after {closed_after:?}"
        );
    }
}

/// issue #9 item 5: the global budget of queued bytes. Four subscribers that never read sit on
/// a topic flooded with 20,000 x 4 KiB (80 MiB; no per-client bound): their queues stop at
/// three quarters of the 8 MiB budget, what they miss is dropped and counted per reason (and
/// warned), the broker's RSS stays bounded, and a subscriber within its fair share still gets
/// every message sent to it after the flood.
#[test]
fn queued_bytes_budget_drops_the_heaviest_first_and_bounds_memory() {
    const N: u32 = 20_000;
    const BUDGET: usize = 8 << 20;
    let b = BrokerProc::start(&format!(
        "[limits]\nmax_queued_bytes_total = {BUDGET}\nmax_queued_bytes = 0\nmax_queued_messages = 1000000\n"
    ));
    let mut heavy: Vec<Raw> = (0..4)
        .map(|i| Raw::connected(b.addr, &format!("heavy{i}")))
        .collect();
    for h in &mut heavy {
        h.subscribe(1, "heavy", 0);
    }
    let mut light = Raw::connected(b.addr, "light");
    light.subscribe(1, "light", 1);

    let rss_before = b.rss_kib();
    let peak = Arc::new(AtomicU64::new(rss_before));
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (peak, stop, pid) = (peak.clone(), stop.clone(), b.pid());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                peak.fetch_max(rss_kib_of(pid), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(10));
            }
        })
    };
    let mut publ = Raw::connected(b.addr, "flooder");
    let started = Instant::now();
    let mut payload = vec![0xA5u8; 4096];
    let mut batch = Vec::new();
    for i in 0..N {
        payload[..4].copy_from_slice(&i.to_be_bytes());
        batch.extend(publish_packet("heavy", 0, false, false, 0, &payload));
        if batch.len() >= 256 * 1024 {
            publ.stream.write_all(&batch).expect("publisher write");
            batch.clear();
        }
    }
    publ.stream.write_all(&batch).expect("publisher write");
    // A barrier: once the publisher's PINGRESP is back, the whole flood was routed.
    publ.ping();
    let flood_time = started.elapsed();
    b.wait_log("queued bytes budget reached");
    for i in 1..=20u16 {
        publ.send(&publish_packet(
            "light",
            1,
            false,
            false,
            i,
            &[i as u8; 1024],
        ));
        assert_eq!(publ.expect_packet("PUBACK"), ack_packet(0x40, i));
    }
    for i in 1..=20u8 {
        let (_, _, _, topic, id, body) = parse_publish(&light.expect_packet("light message"));
        assert_eq!(
            (topic.as_str(), body[0]),
            ("light", i),
            "light subscriber lost a message"
        );
        light.send(&ack_packet(0x40, id));
    }
    stop.store(true, Ordering::Relaxed);
    sampler.join().expect("sampler");
    let growth = peak.load(Ordering::Relaxed).saturating_sub(rss_before);
    drop(heavy);
    let log = stop_and_log(b);
    let stopped = log
        .lines()
        .find(|l| l.contains("broker stopped"))
        .unwrap_or_else(|| panic!("no summary; log:\n{log}"));
    let over_share = field_u64(stopped, "dropped_over_fair_share").unwrap_or(0);
    let budget_full = field_u64(stopped, "dropped_max_queued_bytes_total").unwrap_or(0);
    eprintln!(
        "budget {BUDGET} B: {N} x 4 KiB to 4 stuck subscribers in {flood_time:?}; dropped {over_share} over \
         their fair share, {budget_full} at the full budget; broker RSS {rss_before} KiB -> peak +{growth} KiB"
    );
    assert!(
        over_share > 0,
        "no drop counted over the fair share: {stopped}"
    );
    assert!(
        growth < 40 * 1024,
        "RSS grew by {growth} KiB under an 8 MiB budget"
    );
}

/// issue #9 item 5: under a connection flood (connects with clean disconnects, and protocol
/// errors before CONNECT, from four threads, far above the threshold), the log gets at most
/// max_conn_log_lines_per_s connection lines a second plus the summary; every event is still
/// accounted for, written or counted in a summary.
#[test]
fn connection_log_lines_stay_under_the_threshold_in_a_flood() {
    const THRESHOLD: usize = 50;
    let b = Arc::new(BrokerProc::start(&format!(
        "[limits]\nmax_conn_log_lines_per_s = {THRESHOLD}\nmax_accept_rate_per_ip = 0\n"
    )));
    let started = Instant::now();
    let churners: Vec<_> = (0..4)
        .map(|t| {
            let b = b.clone();
            std::thread::spawn(move || {
                let (mut connects, mut garbage) = (0u64, 0u64);
                let mut i = 0u64;
                while started.elapsed() < Duration::from_secs(3) {
                    i += 1;
                    let mut raw = Raw::connect(b.addr);
                    if i.is_multiple_of(4) {
                        // Reserved packet type 0: a protocol violation before CONNECT.
                        raw.send(&[0x00, 0x00]);
                        garbage += 1;
                    } else {
                        raw.send(&connect_packet(&format!("churn{t}-{i}"), true, 60));
                        assert_eq!(raw.expect_packet("CONNACK"), vec![0x20, 0x02, 0x00, 0x00]);
                        raw.send(&disconnect_packet());
                        connects += 1;
                    }
                    // The broker logs before it closes: wait for the close.
                    raw.drain_until_closed(WAIT);
                }
                (connects, garbage)
            })
        })
        .collect();
    let (mut connects, mut garbage) = (0u64, 0u64);
    for t in churners {
        let (c, g) = t.join().expect("churner");
        connects += c;
        garbage += g;
    }
    let elapsed = started.elapsed();
    let b = Arc::into_inner(b).expect("no other owner");
    let log = stop_and_log(b);
    let conn_line = |l: &str| {
        [
            "client connected",
            "disconnected",
            "protocol violation",
            "refused",
            "connection log lines folded",
        ]
        .iter()
        .any(|k| l.contains(k))
            && !l.contains(" DEBUG ")
    };
    let mut per_second = std::collections::BTreeMap::<&str, usize>::new();
    for l in log.lines().filter(|l| conn_line(l)) {
        *per_second.entry(l.get(..19).unwrap_or("")).or_default() += 1;
    }
    let busiest = per_second.values().copied().max().unwrap_or(0);
    let events = 2 * connects + garbage;
    eprintln!(
        "connection flood: {connects} connects + {garbage} protocol errors in {elapsed:?} ({:.0} events/s); \
         connection log lines per second: {:?} (threshold {THRESHOLD})",
        events as f64 / elapsed.as_secs_f64(),
        per_second.values().collect::<Vec<_>>()
    );
    assert!(
        events as f64 / elapsed.as_secs_f64() > 5.0 * THRESHOLD as f64,
        "the flood did not exceed the threshold by much: the test proves nothing"
    );
    assert!(
        busiest <= THRESHOLD + 5,
        "{busiest} connection lines in one second; log:\n{log}"
    );
    // Nothing lost: written lines plus the summaries' counts equal the events.
    let summaries: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("connection log lines folded"))
        .collect();
    let folded = |key: &str| -> u64 {
        summaries
            .iter()
            .map(|l| field_u64(l, key).unwrap_or(0))
            .sum()
    };
    let written = |needle: &str| log.lines().filter(|l| l.contains(needle)).count() as u64;
    assert_eq!(written("client connected") + folded("connected"), connects);
    assert_eq!(
        written("reason=ClientDisconnect") + folded("disconnected"),
        connects
    );
    assert_eq!(
        written("protocol violation before CONNECT") + folded("protocol_errors"),
        garbage
    );
}
