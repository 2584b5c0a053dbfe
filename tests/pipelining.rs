//! Pipelined input (issue #8 item 1): packets that arrive together, in the same write as
//! CONNECT or in one burst, are all answered at once, without the client sending anything else.

mod common;

use std::time::{Duration, Instant};

use common::*;

/// How soon everything must be answered: far below any keep-alive or retry period.
const PROMPT: Duration = Duration::from_secs(1);

/// Reads `n` packets, all of which must have arrived within `limit` of the call.
fn read_n_within(raw: &mut Raw, n: usize, limit: Duration) -> Vec<Vec<u8>> {
    let deadline = Instant::now() + limit;
    let mut got = Vec::with_capacity(n);
    while got.len() < n {
        let left = deadline.saturating_duration_since(Instant::now());
        match raw.read_within(left) {
            RawRead::Packet(p) => got.push(p),
            other => panic!(
                "{other:?} after {} of {n} packets within {limit:?}; last: {:02x?}",
                got.len(),
                got.last()
            ),
        }
    }
    got
}

/// `count` QoS 1 PUBLISHes to `topic`, packet ids 1..=count, each with `payload_len` bytes.
fn qos1_burst(topic: &str, count: u16, payload_len: usize) -> Vec<u8> {
    let payload = vec![b'p'; payload_len];
    (1..=count)
        .flat_map(|id| publish_packet(topic, 1, false, false, id, &payload))
        .collect()
}

/// Asserts `acks` are the PUBACKs of packet ids 1..=count, in order ([MQTT-4.6.0-2]).
fn assert_pubacks_in_order(acks: &[Vec<u8>], count: u16) {
    for (i, ack) in acks.iter().enumerate() {
        let id = u16::try_from(i + 1).expect("id");
        assert_eq!(ack, &ack_packet(0x40, id), "PUBACK #{} of {count}", i + 1);
    }
}

/// issue #8 item 1 [MQTT-3.8.4-1] [MQTT-3.3.4-1]: CONNECT + SUBSCRIBE + PUBLISH (QoS 1, to the
/// subscribed topic) in one write get CONNACK, SUBACK, PUBACK and the delivery within 1 s,
/// without the client sending anything else.
#[test]
fn packets_in_the_connect_write_are_answered_at_once() {
    let b = BrokerProc::start("");
    let mut raw = Raw::connect(b.addr);
    let mut bytes = connect_packet("pipe-one", true, 60);
    bytes.extend(subscribe_packet(1, &[("pipe/t", 1)]));
    bytes.extend(publish_packet("pipe/t", 1, false, false, 2, b"hello"));
    raw.send(&bytes);
    let got = read_n_within(&mut raw, 4, PROMPT);
    assert_eq!(got[0], vec![0x20, 0x02, 0x00, 0x00], "CONNACK first");
    assert_eq!(got[1], vec![0x90, 0x03, 0x00, 0x01, 0x01], "SUBACK second");
    // The PUBACK and the delivery of the same message may come in either order.
    let (acks, delivered): (Vec<_>, Vec<_>) = got[2..].iter().partition(|p| p[0] == 0x40);
    assert_eq!(acks, vec![&ack_packet(0x40, 2)], "one PUBACK for id 2");
    let (dup, qos, retain, topic, _, payload) = parse_publish(delivered[0]);
    assert_eq!(
        (dup, qos, retain, topic.as_str(), payload.as_slice()),
        (false, 1, false, "pipe/t", &b"hello"[..])
    );
}

/// issue #8 item 1 [MQTT-4.6.0-2]: 200 QoS 1 PUBLISHes in one write right after CONNACK get
/// their 200 PUBACKs, in order, within 1 s.
#[test]
fn burst_after_connack_is_acknowledged_in_order() {
    let b = BrokerProc::start("");
    let mut raw = Raw::connected(b.addr, "pipe-burst");
    raw.send(&qos1_burst("pipe/b", 200, 4));
    let acks = read_n_within(&mut raw, 200, PROMPT);
    assert_pubacks_in_order(&acks, 200);
    raw.ping();
}

/// issue #8 item 1 [MQTT-4.6.0-2]: the same burst in the same write as CONNECT: CONNACK, then
/// the 200 PUBACKs in order, within 1 s.
#[test]
fn burst_in_the_connect_write_is_acknowledged_in_order() {
    let b = BrokerProc::start("");
    let mut raw = Raw::connect(b.addr);
    let mut bytes = connect_packet("pipe-burst-connect", true, 60);
    let burst = qos1_burst("pipe/b", 200, 4);
    // Small enough to be read whole with the CONNECT: nothing is left in the socket.
    assert!(bytes.len() + burst.len() < 4096, "{} bytes", burst.len());
    bytes.extend(burst);
    raw.send(&bytes);
    let got = read_n_within(&mut raw, 201, PROMPT);
    assert_eq!(got[0], vec![0x20, 0x02, 0x00, 0x00], "CONNACK first");
    assert_pubacks_in_order(&got[1..], 200);
    raw.ping();
}

/// issue #8 item 1 [MQTT-4.6.0-2]: CONNECT and a burst bigger than the 64 KiB read budget in one
/// write (several read turns): every PUBACK comes, in order, within 1 s.
#[test]
fn burst_bigger_than_the_read_budget_is_acknowledged_in_order() {
    let b = BrokerProc::start("");
    let mut raw = Raw::connect(b.addr);
    let mut bytes = connect_packet("pipe-big", true, 60);
    let burst = qos1_burst("pipe/big", 600, 200);
    assert!(burst.len() > 64 * 1024, "{} bytes", burst.len());
    bytes.extend(burst);
    raw.send(&bytes);
    let got = read_n_within(&mut raw, 601, PROMPT);
    assert_eq!(got[0], vec![0x20, 0x02, 0x00, 0x00], "CONNACK first");
    assert_pubacks_in_order(&got[1..], 600);
    raw.ping();
}

/// issue #8 item 1 [MQTT-4.6.0-2]: with sync = "always", more retained QoS 1 PUBLISHes in one
/// write than acknowledgements may wait for the disk (4096): input stops at that limit with
/// packets still buffered and nothing left in the socket, then resumes from the buffer once the
/// disk catches up; every PUBACK comes, in order.
#[test]
fn burst_beyond_the_pending_ack_limit_resumes_from_the_buffer() {
    let b = BrokerProc::start("[persistence]\nenabled = true\nsync = \"always\"\n");
    let mut raw = Raw::connect(b.addr);
    let mut bytes = connect_packet("pipe-disk", true, 60);
    let count = 7000;
    let burst: Vec<u8> = (1..=count)
        .flat_map(|id| publish_packet("d", 1, true, false, id, b"r"))
        .collect();
    // Within one read turn's budget, so no readiness event follows the stop.
    assert!(burst.len() < 60 * 1024, "{} bytes", burst.len());
    bytes.extend(burst);
    raw.send(&bytes);
    let got = read_n_within(&mut raw, usize::from(count) + 1, WAIT);
    assert_eq!(got[0], vec![0x20, 0x02, 0x00, 0x00], "CONNACK first");
    assert_pubacks_in_order(&got[1..], count);
    raw.ping();
}
