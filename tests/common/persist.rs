//! Helpers of the persistence tests (persistence.rs, crash_loop.rs, disk_full.rs): broker
//! configs with a data directory, restarts on it, raw publishes that wait for their full
//! acknowledgement, and small tmpfs file systems for the disk-full tests.

use std::collections::HashMap;
use std::time::Duration;

use super::*;

pub const PERSIST: &str = "[persistence]\nenabled = true\npath = \"data\"\n";
pub const SHORT: Duration = Duration::from_millis(300);

/// The broker's persistence config plus `extra` keys of `[persistence]`.
pub fn persist_with(extra: &str) -> String {
    format!("{PERSIST}{extra}\n")
}

/// A restart of the broker on the same directory: graceful (SIGTERM) or kill -9.
#[derive(Clone, Copy, Debug)]
pub enum Restart {
    Graceful,
    Kill9,
}

impl Restart {
    pub fn restart(self, b: BrokerProc, config: &str) -> BrokerProc {
        let dir = match self {
            Restart::Graceful => b.stop(),
            Restart::Kill9 => b.kill9(),
        };
        BrokerProc::start_in(dir, config)
    }
}

/// The key=value fields of the (only) "persistent state loaded" log line of this broker run.
pub fn loaded_stats(b: &BrokerProc) -> HashMap<String, String> {
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

pub fn loaded_count(b: &BrokerProc, key: &str) -> usize {
    let stats = loaded_stats(b);
    stats
        .get(key)
        .unwrap_or_else(|| panic!("no {key}= in the load line: {stats:?}"))
        .parse()
        .expect("number")
}

/// Drops a raw client's socket and waits until the broker has logged its disconnect (the
/// `n`-th for this client id in this broker run), so the session is offline afterwards.
pub fn go_offline(b: &BrokerProc, raw: Raw, client_id: &str, n: usize) {
    drop(raw);
    b.wait_disconnected(client_id, n);
}

/// Publishes from a fresh raw clean-session client and waits for the full acknowledgement.
/// With sync = "always" everything the publish stored is on disk when this returns.
pub fn publish_acked(
    addr: std::net::SocketAddr,
    topic: &str,
    qos: u8,
    retain: bool,
    payload: &[u8],
) {
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
pub fn durability_barrier(addr: std::net::SocketAddr, n: u32) {
    publish_acked(addr, &format!("barrier/{n}"), 1, true, b"b");
}

/// Reads the next packet and parses it as a PUBLISH.
pub fn expect_publish(raw: &mut Raw, what: &str) -> (bool, u8, bool, String, u16, Vec<u8>) {
    let p = raw.expect_packet(what);
    assert_eq!(p[0] >> 4, 3, "expected PUBLISH ({what}), got {p:02x?}");
    parse_publish(&p)
}

/// Completes the receiver side of a delivery: PUBACK, or PUBREC/PUBREL/PUBCOMP.
pub fn ack_delivery(raw: &mut Raw, qos: u8, pkid: u16) {
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

pub fn persistent_options(addr: std::net::SocketAddr, id: &str) -> rumqttc::MqttOptions {
    let mut o = options(addr, id);
    o.set_clean_session(false);
    o
}
