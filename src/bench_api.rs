//! A thin facade over internal hot paths for the criterion benchmarks in benches/.
//! Not part of the supported API (hidden from docs); it exists so benchmarks measure the real
//! code rather than copies of it.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};

use crate::broker::registry::Session;
use crate::broker::trie::SubscriptionTrie;
use crate::broker::Broker;
use crate::config::Config;
use crate::message::{qos_from_u8, Message, QoS};
use crate::protocol::codec;
use crate::store::Store;
use crate::topic::{TopicFilter, TopicName};

/// A validated topic name, parsed once outside the measured loop.
pub struct Topic(TopicName);

impl Topic {
    /// Panics on an invalid topic (benchmark setup only).
    pub fn new(s: &str) -> Topic {
        Topic(TopicName::parse(s).expect("valid topic"))
    }
}

/// The subscription trie with `u32` values.
#[derive(Default)]
pub struct Trie(SubscriptionTrie<u32>);

impl Trie {
    pub fn new() -> Trie {
        Trie(SubscriptionTrie::new())
    }

    /// Panics on an invalid filter (benchmark setup only).
    pub fn subscribe(&self, filter: &str, client: &str, value: u32) {
        let f = TopicFilter::parse(filter).expect("valid filter");
        self.0
            .subscribe(&f, &client.into(), value, QoS::AtLeastOnce);
    }

    /// Matches `topic` into a reused buffer; returns the number of matching clients.
    pub fn count_matches(&self, topic: &Topic, scratch: &mut Vec<(u32, QoS)>) -> usize {
        scratch.clear();
        self.0.matches(&topic.0, scratch);
        scratch.len()
    }
}

/// One client's view of an ACL file (the check a delivery makes when `acl_file` is set).
pub struct Acl(crate::auth::ClientAcl);

impl Acl {
    /// Panics on an invalid ACL file (benchmark setup only).
    pub fn new(text: &str, client_id: &str, username: Option<&str>) -> Acl {
        let (acl, _) = crate::auth::acl::Acl::parse(text).expect("valid ACL");
        Acl(Arc::new(acl).for_client(&client_id.into(), username))
    }

    pub fn may_read(&self, topic: &Topic) -> bool {
        self.0.may_read(&topic.0)
    }
}

/// Decodes every packet in `buf`; returns how many, or panics on a malformed one.
pub fn decode_all(buf: &mut BytesMut, max_packet_size: usize) -> usize {
    let mut n = 0;
    while let Some(p) = codec::decode(buf, max_packet_size).expect("valid packets") {
        std::hint::black_box(&p);
        n += 1;
    }
    n
}

/// Encodes one outgoing PUBLISH.
pub fn encode_publish(out: &mut BytesMut, topic: &str, payload: &[u8], qos: u8, pkid: u16) {
    let qos = qos_from_u8(qos).expect("qos 0..=2");
    codec::encode_publish(out, topic, payload, qos, false, false, pkid).expect("encodable");
}

/// A broker with `n` subscribed sessions (clean, online) on one filter, for routing benches.
pub struct Router {
    broker: Broker,
    sessions: Vec<Arc<Session>>,
    conn_ids: Vec<u64>,
}

impl Router {
    /// `n` sessions subscribed to `filter` at QoS 0 with queues large enough for `per_round`
    /// messages each.
    pub fn new(n: usize, filter: &str, per_round: usize) -> Router {
        Router::with_budget(
            n,
            filter,
            per_round,
            Config::default().limits.max_queued_bytes_total,
        )
    }

    /// Like `new`, with `limits.max_queued_bytes_total` set (0 = no global budget).
    pub fn with_budget(n: usize, filter: &str, per_round: usize, budget: usize) -> Router {
        let mut config = Config::default();
        config.limits.max_queued_messages = per_round.max(1);
        config.limits.max_queued_bytes_total = budget;
        let broker = Broker::new(&config, Store::disabled());
        let f = TopicFilter::parse(filter).expect("valid filter");
        let mut sessions = Vec::with_capacity(n);
        let mut conn_ids = Vec::with_capacity(n);
        for i in 0..n {
            let attached = broker.attach(&format!("bench-{i}").into(), true, None);
            broker.subscribe(&attached.session, &f, QoS::AtMostOnce);
            conn_ids.push(attached.conn_id);
            sessions.push(attached.session);
        }
        Router {
            broker,
            sessions,
            conn_ids,
        }
    }

    /// Routes one QoS 0 message (one shared payload for every subscriber).
    pub fn publish(&self, topic: &Topic, payload: &Bytes) {
        self.broker.publish(Arc::new(Message {
            topic: topic.0.clone(),
            payload: payload.clone(),
            qos: QoS::AtMostOnce,
            retain: false,
            from: None,
            origin: 0,
        }));
    }

    /// Empties every session queue (outside the measured work, between rounds).
    pub fn drain(&self) -> usize {
        let limits = self.broker.limits();
        let mut n = 0;
        for s in &self.sessions {
            let mut st = s.lock();
            while st.out.next(limits).is_some() {
                n += 1;
            }
        }
        n
    }
}

impl Drop for Router {
    fn drop(&mut self) {
        for (s, id) in self.sessions.iter().zip(&self.conn_ids) {
            self.broker.detach(s, *id);
        }
    }
}

/// The counters a received PUBLISH bumps (`admin::metrics`): striped counters plus the sampled
/// top-topics sketch.
#[derive(Default)]
pub struct Counters(crate::admin::metrics::Metrics);

impl Counters {
    pub fn new() -> Counters {
        Counters(crate::admin::metrics::Metrics::new())
    }

    /// What a session does per PUBLISH received.
    pub fn publish_received(&self, topic: &Arc<str>, payload: usize) {
        self.0.publish_received(1, topic, payload);
    }

    /// What a session does per PUBLISH sent.
    pub fn publish_sent(&self, payload: usize) {
        self.0.publish_sent(1, payload);
    }
}
