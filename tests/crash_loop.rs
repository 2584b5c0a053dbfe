//! kill -9 in the middle of QoS 1 and QoS 2 streams, round after round, with persistent
//! publishers that reuse packet ids and a persistent subscriber online or offline.
//!
//! issue #8 items 3 and 4 (and durable sessions). The publishers and the subscriber are raw
//! clients that keep their MQTT state across the broker's restarts, as real clients do: a
//! publisher re-sends what was not acknowledged (PUBLISH DUP=1, or PUBREL) after reconnecting
//! and takes packet ids from a small range, so ids are reused all the time; the subscriber
//! answers QoS 2 with method B (it holds an id from PUBLISH to PUBREL and delivers on the
//! first PUBLISH of an id it does not hold). What is checked:
//! - sync = "always", QoS 2: every message is delivered exactly once, in each publisher's
//!   order, and the broker never sends a new message (DUP=0) with an id the subscriber holds;
//! - sync = "always", QoS 1: nothing acknowledged is lost (duplicates are allowed and counted),
//!   first deliveries in each publisher's order;
//! - sync = "periodic": what a crash loses was acknowledged less than `flush_interval_ms`
//!   before the kill.
//!
//! Each test prints its figures (rounds, sent, acknowledged, lost, duplicated). `CRASH_SEED`
//! repeats a run; `CRASH_ROUNDS` changes the number of rounds (default 20).

mod common;

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::persist::*;
use common::*;

const SUB: &str = "crash-sub";
const MARKER_TOPIC: &str = "crash-marker";
/// Packet ids a publisher takes its ids from: small, so every id is reused many times.
const ID_RANGE: u16 = 48;
/// Publishers per test.
const PUBLISHERS: usize = 3;

fn rounds() -> usize {
    std::env::var("CRASH_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20)
}

fn seed() -> u64 {
    std::env::var("CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        })
}

fn topic_of(publisher: usize) -> String {
    format!("crash/p{publisher}")
}

/// A message's payload: publisher number and sequence number.
fn encode(publisher: usize, seq: u64) -> Vec<u8> {
    let mut v = (publisher as u64).to_be_bytes().to_vec();
    v.extend_from_slice(&seq.to_be_bytes());
    v
}

fn decode(payload: &[u8]) -> (usize, u64) {
    assert_eq!(payload.len(), 16, "unexpected payload {payload:02x?}");
    let p = u64::from_be_bytes(payload[..8].try_into().unwrap()) as usize;
    (p, u64::from_be_bytes(payload[8..].try_into().unwrap()))
}

/// Where one of a publisher's messages is in its handshake.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Out {
    /// PUBLISH sent; PUBACK (QoS 1) or PUBREC (QoS 2) not received.
    Published,
    /// QoS 2: PUBREC received and PUBREL sent; PUBCOMP not received.
    Released,
}

/// A persistent publisher's MQTT state, kept across the broker's restarts.
struct Publisher {
    n: usize,
    client_id: String,
    qos: u8,
    window: usize,
    next_seq: u64,
    last_pkid: u16,
    /// pkid -> (seq, state), and the send order of those ids.
    outstanding: BTreeMap<u16, (u64, Out)>,
    order: VecDeque<u16>,
    /// Sequence numbers whose ownership passed to the broker (PUBACK / PUBREC), with when
    /// and in which round.
    acked: Vec<(u64, Instant, usize)>,
    round: usize,
}

impl Publisher {
    fn new(n: usize, qos: u8, window: usize) -> Publisher {
        Publisher {
            n,
            client_id: format!("crash-pub-{n}"),
            qos,
            window,
            next_seq: 1,
            last_pkid: 0,
            outstanding: BTreeMap::new(),
            order: VecDeque::new(),
            acked: Vec::new(),
            round: 0,
        }
    }

    /// The next id not outstanding, counting up through `1..=ID_RANGE`.
    fn free_pkid(&mut self) -> u16 {
        loop {
            self.last_pkid = self.last_pkid % ID_RANGE + 1;
            if !self.outstanding.contains_key(&self.last_pkid) {
                return self.last_pkid;
            }
        }
    }

    fn publish(&self, raw: &mut Raw, pkid: u16, seq: u64, dup: bool) {
        raw.send(&publish_packet(
            &topic_of(self.n),
            self.qos,
            false,
            dup,
            pkid,
            &encode(self.n, seq),
        ));
    }

    /// Connects its persistent session and re-sends what is unacknowledged, in order
    /// ([MQTT-4.4.0-1]). None if the broker went away during the handshake.
    fn connect(&mut self, addr: std::net::SocketAddr) -> Option<Raw> {
        let mut raw = Raw::connect(addr);
        raw.send(&connect_packet(&self.client_id, false, 60));
        let ack = raw.read_packet()?;
        assert!(
            ack.len() == 4 && ack[0] == 0x20 && ack[3] == 0,
            "{}: CONNACK {ack:02x?}",
            self.client_id
        );
        assert_eq!(
            ack[2], 1,
            "{}: the broker lost the publisher's session",
            self.client_id
        );
        for pkid in self.order.clone() {
            match self.outstanding[&pkid] {
                (seq, Out::Published) => self.publish(&mut raw, pkid, seq, true),
                (_, Out::Released) => raw.send(&ack_packet(0x62, pkid)),
            }
        }
        Some(raw)
    }

    fn done(&mut self, pkid: u16) {
        self.outstanding.remove(&pkid);
        self.order.retain(|&p| p != pkid);
    }

    /// Handles one packet from the broker; returns whether it was an acknowledgement that
    /// passed ownership (PUBACK or PUBREC).
    fn on_packet(&mut self, raw: &mut Raw, p: &[u8]) -> bool {
        let pkid = u16::from_be_bytes([p[2], p[3]]);
        let entry = self.outstanding.get(&pkid).copied();
        match (p[0], entry) {
            (0x40, Some((seq, Out::Published))) if self.qos == 1 => {
                self.acked.push((seq, Instant::now(), self.round));
                self.done(pkid);
                true
            }
            (0x50, Some((seq, state))) if self.qos == 2 => {
                if state == Out::Published {
                    self.acked.push((seq, Instant::now(), self.round));
                }
                self.outstanding.insert(pkid, (seq, Out::Released));
                raw.send(&ack_packet(0x62, pkid));
                state == Out::Published
            }
            (0x70, Some((_, Out::Released))) => {
                self.done(pkid);
                false
            }
            _ => panic!(
                "{}: unexpected {p:02x?} for id {pkid} in state {entry:?}",
                self.client_id
            ),
        }
    }

    /// Streams until the broker goes away (or `stop_at` messages have been sent and all are
    /// complete), counting ownership transfers in `acks`.
    fn stream(&mut self, addr: std::net::SocketAddr, acks: &AtomicUsize, stop_at: Option<u64>) {
        let Some(mut raw) = self.connect(addr) else {
            assert!(stop_at.is_none(), "{}: no CONNACK", self.client_id);
            return;
        };
        loop {
            while self.outstanding.len() < self.window && stop_at.is_none_or(|s| self.next_seq <= s)
            {
                let (pkid, seq) = (self.free_pkid(), self.next_seq);
                self.next_seq += 1;
                self.outstanding.insert(pkid, (seq, Out::Published));
                self.order.push_back(pkid);
                self.publish(&mut raw, pkid, seq, false);
            }
            if stop_at.is_some() && self.outstanding.is_empty() {
                raw.send(&disconnect_packet());
                return;
            }
            match raw.read_packet() {
                Some(p) => {
                    if self.on_packet(&mut raw, &p) {
                        acks.fetch_add(1, Ordering::Relaxed);
                    }
                }
                None => {
                    assert!(stop_at.is_none(), "{}: connection lost", self.client_id);
                    return;
                }
            }
        }
    }
}

/// The persistent subscriber's MQTT state (method B for QoS 2), kept across restarts.
#[derive(Default)]
struct Subscriber {
    /// QoS 2 ids received and PUBREC'd, awaiting PUBREL.
    held: HashSet<u16>,
    /// Every delivery to the application, in order: (publisher, seq).
    delivered: Vec<(usize, u64)>,
    /// New messages (DUP=0) that arrived with an id still held: the broker reused it.
    reused_ids: Vec<u16>,
    markers: usize,
}

impl Subscriber {
    /// Handles one packet; returns false when it is the awaited marker.
    fn on_packet(&mut self, raw: &mut Raw, p: &[u8], marker: Option<&[u8]>) -> bool {
        match p[0] >> 4 {
            3 => {
                let (dup, qos, _, topic, pkid, payload) = parse_publish(p);
                let new = match qos {
                    2 if self.held.contains(&pkid) => {
                        if !dup {
                            self.reused_ids.push(pkid);
                        }
                        false
                    }
                    2 => {
                        self.held.insert(pkid);
                        true
                    }
                    _ => true,
                };
                match qos {
                    1 => raw.send(&ack_packet(0x40, pkid)),
                    2 => raw.send(&ack_packet(0x50, pkid)),
                    _ => {}
                }
                if new {
                    if topic == MARKER_TOPIC {
                        self.markers += 1;
                        return marker != Some(&payload[..]);
                    }
                    self.delivered.push(decode(&payload));
                }
                true
            }
            6 => {
                let pkid = u16::from_be_bytes([p[2], p[3]]);
                self.held.remove(&pkid);
                raw.send(&ack_packet(0x70, pkid));
                true
            }
            _ => panic!("subscriber: unexpected {p:02x?}"),
        }
    }

    fn connect(&self, addr: std::net::SocketAddr, qos: u8, first: bool) -> Raw {
        let (mut raw, present) = Raw::connected_with(addr, SUB, false);
        if first {
            raw.subscribe(1, "crash/#", qos);
            raw.subscribe(2, MARKER_TOPIC, 1);
        } else {
            assert!(present, "the broker lost the subscriber's session");
        }
        raw
    }

    /// Reads (and answers) until the connection closes.
    fn read_until_closed(&mut self, mut raw: Raw) {
        while let Some(p) = raw.read_packet() {
            self.on_packet(&mut raw, &p, None);
        }
    }

    /// Publishes a marker behind everything the broker holds for the subscriber and reads
    /// until it arrives.
    fn drain(&mut self, addr: std::net::SocketAddr, qos: u8, round: usize) {
        let mut raw = self.connect(addr, qos, false);
        let marker = format!("M{round}");
        publish_acked(addr, MARKER_TOPIC, 1, false, marker.as_bytes());
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            assert!(Instant::now() < deadline, "round {round}: drain too slow");
            let p = raw.expect_packet("drain");
            if !self.on_packet(&mut raw, &p, Some(marker.as_bytes())) {
                break;
            }
        }
        // Complete every QoS 2 handshake still open (PUBRELs may wait for the disk), then
        // leave.
        while !self.held.is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            match raw.read_within(left) {
                RawRead::Packet(p) => {
                    self.on_packet(&mut raw, &p, None);
                }
                other => panic!(
                    "round {round}: the broker never released QoS 2 ids the subscriber holds \
                     ({other:?}): {:?} (it lost their state)",
                    self.held
                ),
            }
        }
        raw.send(&disconnect_packet());
    }
}

/// When a round's kill -9 comes.
#[derive(Clone, Copy)]
enum KillAfter {
    /// After a random number (1..=n) of acknowledgements.
    Acks(u64),
    /// After a random time (1..=n ms) of streaming.
    Millis(u64),
}

/// What a crash loop measured.
struct Figures {
    rounds: usize,
    sent: u64,
    acked: usize,
    lost: usize,
    deliveries: usize,
    duplicates: usize,
}

/// Runs `rounds` rounds: publishers stream (subscriber online in some rounds), the broker is
/// killed after a random number of acknowledgements, restarted, and the subscriber drained.
/// Ends by completing every publisher's outstanding messages and draining once more.
/// Returns the publishers (with their acknowledgement times), the subscriber, the kill times.
fn crash_loop(
    config: &str,
    qos: u8,
    kill: KillAfter,
    seed: u64,
) -> (Vec<Publisher>, Subscriber, Vec<Instant>, Figures) {
    let mut rng = XorShift(seed);
    // The sessions exist on disk before the first crash (also with sync = "periodic").
    let b = BrokerProc::start(config);
    let mut sub = Subscriber::default();
    drop(sub.connect(b.addr, qos, true));
    let mut pubs: Vec<Publisher> = (0..PUBLISHERS)
        .map(|n| Publisher::new(n, qos, 1 + rng.below(24) as usize))
        .collect();
    for p in &pubs {
        Raw::connected_with(b.addr, &p.client_id, false)
            .0
            .send(&disconnect_packet());
    }
    b.wait_disconnected(SUB, 1);
    let mut b = Restart::Graceful.restart(b, config);
    let mut kills = Vec::new();
    let rounds = rounds();
    for round in 0..rounds {
        let online = rng.below(2) == 1;
        let acks = Arc::new(AtomicUsize::new(0));
        let reader = online.then(|| {
            let raw = sub.connect(b.addr, qos, false);
            let mut s = std::mem::take(&mut sub);
            std::thread::spawn(move || {
                s.read_until_closed(raw);
                s
            })
        });
        let addr = b.addr;
        let handles: Vec<_> = pubs
            .drain(..)
            .map(|mut p| {
                p.round = round;
                let acks = acks.clone();
                std::thread::spawn(move || {
                    p.stream(addr, &acks, None);
                    p
                })
            })
            .collect();
        let started = Instant::now();
        let deadline = started + WAIT;
        let (kill_acks, kill_at) = match kill {
            KillAfter::Acks(n) => (1 + rng.below(n) as usize, started),
            KillAfter::Millis(n) => (1, started + Duration::from_millis(1 + rng.below(n))),
        };
        // Polled: the kill should land at any point of the handshakes, not at a packet
        // boundary the test could wait for.
        while acks.load(Ordering::Relaxed) < kill_acks || Instant::now() < kill_at {
            assert!(
                Instant::now() < deadline,
                "round {round}: only {} of {kill_acks} acknowledgements; log:\n{}",
                acks.load(Ordering::Relaxed),
                b.log()
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        kills.push(Instant::now());
        let dir = b.kill9();
        pubs = handles
            .into_iter()
            .map(|h| h.join().expect("publisher"))
            .collect();
        if let Some(r) = reader {
            sub = r.join().expect("subscriber");
        }
        b = BrokerProc::start_in(dir, config);
        sub.drain(b.addr, qos, round);
    }
    // Complete everything outstanding, then drain the rest.
    let acks = AtomicUsize::new(0);
    for p in &mut pubs {
        let last = p.next_seq - 1;
        p.stream(b.addr, &acks, Some(last));
    }
    sub.drain(b.addr, qos, rounds);
    let sent: u64 = pubs.iter().map(|p| p.next_seq - 1).sum();
    let acked: usize = pubs.iter().map(|p| p.acked.len()).sum();
    let distinct: HashSet<(usize, u64)> = sub.delivered.iter().copied().collect();
    let lost = pubs
        .iter()
        .flat_map(|p| p.acked.iter().map(move |(s, _, _)| (p.n, *s)))
        .filter(|k| !distinct.contains(k))
        .count();
    let figures = Figures {
        rounds,
        sent,
        acked,
        lost,
        deliveries: sub.delivered.len(),
        duplicates: sub.delivered.len() - distinct.len(),
    };
    (pubs, sub, kills, figures)
}

fn report(name: &str, seed: u64, f: &Figures) {
    println!(
        "crash loop {name}: seed {seed}, {} rounds: {} sent, {} acknowledged, {} lost, {} \
         deliveries, {} duplicates",
        f.rounds, f.sent, f.acked, f.lost, f.deliveries, f.duplicates
    );
}

/// The first delivery of each message, per publisher, is in sequence order.
fn assert_first_deliveries_in_order(sub: &Subscriber, seed: u64) {
    let mut seen = HashSet::new();
    let mut last: BTreeMap<usize, u64> = BTreeMap::new();
    for &(p, seq) in &sub.delivered {
        if seen.insert((p, seq)) {
            let prev = last.insert(p, seq).unwrap_or(0);
            assert!(
                seq > prev,
                "seed {seed}: publisher {p}'s message {seq} delivered after {prev}"
            );
        }
    }
}

/// issue #8 item 3. [MQTT-4.3.3-1] [MQTT-4.3.3-2] [MQTT-2.3.1-2] [MQTT-4.6.0-6] sync =
/// "always": 20 rounds of kill -9 during QoS 2 streams from three persistent publishers that
/// reuse packet ids, to a persistent QoS 2 subscriber online or offline: every message is
/// delivered exactly once, in each publisher's order, and no new message ever arrives with a
/// packet id the subscriber still holds.
#[test]
fn kill9_qos2_exactly_once_in_order() {
    let seed = seed();
    let config = format!("{PERSIST}[limits]\nmax_queued_messages = 100000\n");
    let (pubs, sub, _, f) = crash_loop(&config, 2, KillAfter::Acks(400), seed);
    report("QoS 2, sync = always", seed, &f);
    assert!(
        sub.reused_ids.is_empty(),
        "seed {seed}: new messages arrived with ids the subscriber held: {:?}",
        sub.reused_ids
    );
    let mut count: BTreeMap<(usize, u64), usize> = BTreeMap::new();
    for &k in &sub.delivered {
        *count.entry(k).or_default() += 1;
    }
    for p in &pubs {
        for seq in 1..p.next_seq {
            let n = count.get(&(p.n, seq)).copied().unwrap_or(0);
            assert_eq!(
                n,
                1,
                "seed {seed}: publisher {}'s message {seq} delivered {n} times ({f:?})",
                p.n,
                f = (f.sent, f.acked, f.lost, f.duplicates)
            );
        }
    }
    assert_eq!(
        count.len() as u64,
        f.sent,
        "seed {seed}: unknown deliveries"
    );
    assert_first_deliveries_in_order(&sub, seed);
    assert!(f.acked as u64 >= f.sent, "every message ends acknowledged");
}

/// issue #8 item 3 (and durable sessions). sync = "always": the same loop at QoS 1: no
/// acknowledged message is lost, every message sent is delivered at least once (the
/// publishers complete them all), first deliveries in each publisher's order; duplicates are
/// what QoS 1 allows, counted.
#[test]
fn kill9_qos1_loses_nothing_acknowledged() {
    let seed = seed();
    let config = format!("{PERSIST}[limits]\nmax_queued_messages = 100000\n");
    let (pubs, sub, _, f) = crash_loop(&config, 1, KillAfter::Acks(400), seed);
    report("QoS 1, sync = always", seed, &f);
    assert_eq!(f.lost, 0, "seed {seed}: acknowledged messages lost");
    let distinct: HashSet<(usize, u64)> = sub.delivered.iter().copied().collect();
    for p in &pubs {
        for seq in 1..p.next_seq {
            assert!(
                distinct.contains(&(p.n, seq)),
                "seed {seed}: publisher {}'s message {seq} never delivered",
                p.n
            );
        }
    }
    assert_first_deliveries_in_order(&sub, seed);
}

/// issue #8 item 4. sync = "periodic" with flush_interval_ms = 1000 (the default), rounds of up to 2 s of
/// streaming: a crash loses only messages acknowledged less than 1 s before the kill.
#[test]
fn kill9_periodic_loses_only_the_last_interval() {
    const INTERVAL_MS: u64 = 1000;
    let seed = seed();
    let config = format!(
        "{}[limits]\nmax_queued_messages = 100000\n",
        persist_with(&format!(
            "sync = \"periodic\"\nflush_interval_ms = {INTERVAL_MS}"
        ))
    );
    // Rounds long enough for several flushes, and kills at any point between them.
    let (pubs, sub, kills, f) = crash_loop(&config, 1, KillAfter::Millis(2 * INTERVAL_MS), seed);
    report("QoS 1, sync = periodic 1000 ms", seed, &f);
    let distinct: HashSet<(usize, u64)> = sub.delivered.iter().copied().collect();
    let mut oldest_lost = Duration::ZERO;
    for p in &pubs {
        for (seq, at, round) in &p.acked {
            if distinct.contains(&(p.n, *seq)) {
                continue;
            }
            // Lost in the crash of the round it was acknowledged in (an acknowledgement read
            // between the kill's timestamp and the process's death counts as 0 ms old).
            oldest_lost = oldest_lost.max(kills[*round].saturating_duration_since(*at));
        }
    }
    println!("periodic: oldest acknowledgement lost: {oldest_lost:?}");
    assert!(
        oldest_lost < Duration::from_millis(INTERVAL_MS),
        "seed {seed}: an acknowledgement {oldest_lost:?} old was lost (flush_interval_ms = \
         {INTERVAL_MS})"
    );
}
