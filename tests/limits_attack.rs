//! Limits under attack (issue #9 item 5), against the real binary: the budget of queued bytes
//! drops the heaviest clients first and bounds memory. Each test prints what it measured
//! (`--nocapture`).

mod common;

use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;

fn rss_kib_of(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

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
