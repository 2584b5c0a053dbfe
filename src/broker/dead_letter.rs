//! Dead letters: what the broker accepted but drops for one subscriber, counted per reason and,
//! with `[dead_letter] enabled`, republished on `$DLQ/{reason}/{client_id}/{original topic}`.
//! L2: uses L0 and tokio's bounded channel; `Broker` calls `note` where it drops and runs the
//! publisher task. Invariants: `note` never blocks and never allocates beyond the bounded
//! queue (a `try_send`); a dead letter that cannot be queued, or is itself dropped for a
//! subscriber, is only counted (never dead-lettered again: no recursion, no cascade).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::mpsc;
use tracing::warn;

use super::queue::QueueFull;
use crate::config::DeadLetterConfig;
use crate::message::{min_qos, qos_from_u8, Message, QoS, SharedMessage};
use crate::topic::TopicName;

/// Topics of dead letters start with this; clients may not publish there.
pub(crate) const DLQ_PREFIX: &str = "$DLQ/";

/// Why a message was dropped for a subscriber: the `{reason}` level of its dead letter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reason {
    /// The subscriber's queue is at `limits.max_queued_messages`.
    QueueFullMessages,
    /// The subscriber's queue is at `limits.max_queued_bytes`.
    QueueFullBytes,
    /// The global budget `limits.max_queued_bytes_total` (used up, or the subscriber is over
    /// its fair share of what is left).
    Budget,
    /// The subscriber's persistent session expired (`session.expiry_s`) with messages queued.
    Expired,
    /// A share group had no member that could take it.
    NoMember,
}

const REASONS: usize = 5;

impl Reason {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Reason::QueueFullMessages => "queue_full_messages",
            Reason::QueueFullBytes => "queue_full_bytes",
            Reason::Budget => "budget",
            Reason::Expired => "expired",
            Reason::NoMember => "no_member",
        }
    }
}

impl From<QueueFull> for Reason {
    fn from(full: QueueFull) -> Reason {
        match full {
            QueueFull::Messages => Reason::QueueFullMessages,
            QueueFull::Bytes => Reason::QueueFullBytes,
            QueueFull::FairShare | QueueFull::TotalBytes => Reason::Budget,
        }
    }
}

/// One dead letter waiting to be published.
#[derive(Debug)]
pub(crate) struct DeadLetter {
    reason: Reason,
    /// The subscriber's client id (the group name for `no_member`).
    client: Arc<str>,
    msg: SharedMessage,
    qos: QoS,
}

/// The dead-letter path: counters, and the bounded queue to the publisher task.
#[derive(Debug)]
pub(crate) struct DeadLetters {
    enabled: bool,
    max_qos: QoS,
    max_bytes: usize,
    tx: mpsc::Sender<DeadLetter>,
    /// Taken once by the publisher task.
    rx: Mutex<Option<mpsc::Receiver<DeadLetter>>>,
    /// Payload bytes queued in `tx`.
    queued_bytes: AtomicUsize,
    /// Drops seen, per reason (counted whether enabled or not).
    by_reason: [AtomicU64; REASONS],
    /// Dead letters published.
    pub(crate) published: AtomicU64,
    /// Dead letters lost: the dead-letter queue was full, the topic would be invalid, or the
    /// message dropped was a dead letter itself.
    pub(crate) lost: AtomicU64,
    start: Instant,
    last_warn_s: AtomicU64,
}

impl DeadLetters {
    pub(crate) fn new(config: &DeadLetterConfig) -> DeadLetters {
        let (tx, rx) = mpsc::channel(config.max_queued_messages.max(1));
        DeadLetters {
            enabled: config.enabled,
            max_qos: qos_from_u8(config.max_qos).unwrap_or(QoS::AtLeastOnce),
            max_bytes: config.max_queued_bytes,
            tx,
            rx: Mutex::new(Some(rx)),
            queued_bytes: AtomicUsize::new(0),
            by_reason: Default::default(),
            published: AtomicU64::new(0),
            lost: AtomicU64::new(0),
            start: Instant::now(),
            last_warn_s: AtomicU64::new(0),
        }
    }

    pub(crate) fn enabled(&self) -> bool {
        self.enabled
    }

    /// Drops counted for `reason`.
    pub(crate) fn count(&self, reason: Reason) -> u64 {
        self.by_reason[reason as usize].load(Ordering::Relaxed)
    }

    /// Records that `msg` (at `qos` for that subscriber) was dropped for `client`, and queues
    /// its dead letter when enabled. Never blocks.
    pub(crate) fn note(&self, reason: Reason, client: &Arc<str>, msg: &SharedMessage, qos: QoS) {
        self.by_reason[reason as usize].fetch_add(1, Ordering::Relaxed);
        if !self.enabled {
            return;
        }
        if msg.topic.as_str().starts_with(DLQ_PREFIX) {
            // A dead letter dropped for its own subscriber: counted, never dead-lettered again.
            self.lose("a dead letter was dropped for a $DLQ subscriber");
            return;
        }
        let len = msg.payload.len();
        if self.max_bytes != 0 && self.queued_bytes.load(Ordering::Relaxed) + len > self.max_bytes {
            self.lose("dead_letter.max_queued_bytes reached");
            return;
        }
        let letter = DeadLetter {
            reason,
            client: client.clone(),
            msg: msg.clone(),
            qos: min_qos(qos, self.max_qos),
        };
        self.queued_bytes.fetch_add(len, Ordering::Relaxed);
        if self.tx.try_send(letter).is_err() {
            self.queued_bytes.fetch_sub(len, Ordering::Relaxed);
            self.lose("dead_letter.max_queued_messages reached");
        }
    }

    /// Counts a lost dead letter; warns at most once a second.
    fn lose(&self, why: &'static str) {
        let lost = self.lost.fetch_add(1, Ordering::Relaxed) + 1;
        let now_s = self.start.elapsed().as_secs() + 1;
        let last = self.last_warn_s.load(Ordering::Relaxed);
        if now_s > last
            && self
                .last_warn_s
                .compare_exchange(last, now_s, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            warn!(
                why,
                dead_letters_lost = lost,
                "dead letter dropped (warning at most once a second)"
            );
        }
    }

    /// The receiving end, for the publisher task (once).
    pub(crate) fn take_receiver(&self) -> Option<mpsc::Receiver<DeadLetter>> {
        self.rx.lock().unwrap_or_else(|p| p.into_inner()).take()
    }

    /// The message to publish for `letter`: `$DLQ/{reason}/{client_id}/{topic}`, the original
    /// payload (shared, not copied), RETAIN=0. `None` (counted) when that topic is not a valid
    /// name (a client id with '+' or '#', or too long).
    pub(crate) fn letter_message(&self, letter: DeadLetter) -> Option<SharedMessage> {
        self.queued_bytes
            .fetch_sub(letter.msg.payload.len(), Ordering::Relaxed);
        let topic = format!(
            "{DLQ_PREFIX}{}/{}/{}",
            letter.reason.name(),
            letter.client,
            letter.msg.topic.as_str()
        );
        let Ok(topic) = TopicName::parse(&topic) else {
            self.lose("the dead-letter topic would not be a valid topic name");
            return None;
        };
        self.published.fetch_add(1, Ordering::Relaxed);
        Some(Arc::new(Message {
            topic,
            payload: letter.msg.payload.clone(),
            qos: letter.qos,
            retain: false,
            from: None,
            origin: 0,
        }))
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    fn msg(topic: &str, payload: &[u8]) -> SharedMessage {
        Arc::new(Message {
            topic: TopicName::parse(topic).expect("topic"),
            payload: Bytes::copy_from_slice(payload),
            qos: QoS::ExactlyOnce,
            retain: true,
            from: None,
            origin: 0,
        })
    }

    fn config(max: usize) -> DeadLetterConfig {
        DeadLetterConfig {
            enabled: true,
            max_qos: 1,
            max_queued_messages: max,
            max_queued_bytes: 0,
        }
    }

    /// issue #12 item 4: a dead letter is `$DLQ/{reason}/{client}/{topic}` with the payload,
    /// RETAIN=0 and the QoS capped by `max_qos`.
    #[test]
    fn dead_letter_topic_payload_and_qos() {
        let dl = DeadLetters::new(&config(4));
        let mut rx = dl.take_receiver().expect("receiver");
        dl.note(
            Reason::QueueFullMessages,
            &Arc::from("c1"),
            &msg("a/b", b"p"),
            QoS::ExactlyOnce,
        );
        let m = dl
            .letter_message(rx.try_recv().expect("queued"))
            .expect("valid");
        assert_eq!(m.topic.as_str(), "$DLQ/queue_full_messages/c1/a/b");
        assert_eq!(&m.payload[..], b"p");
        assert_eq!((m.qos, m.retain), (QoS::AtLeastOnce, false));
        assert_eq!(dl.count(Reason::QueueFullMessages), 1);
    }

    /// issue #12 item 4: the dead-letter queue is bounded (beyond it, counted as lost), and a
    /// dropped dead letter is never dead-lettered again.
    #[test]
    fn dead_letter_queue_is_bounded_and_never_recursive() {
        let dl = DeadLetters::new(&config(2));
        let _rx = dl.take_receiver();
        for _ in 0..5 {
            dl.note(
                Reason::Budget,
                &Arc::from("c"),
                &msg("t", b"x"),
                QoS::AtLeastOnce,
            );
        }
        assert_eq!(dl.lost.load(Ordering::Relaxed), 3);
        dl.note(
            Reason::QueueFullBytes,
            &Arc::from("c"),
            &msg("$DLQ/budget/c/t", b"x"),
            QoS::AtLeastOnce,
        );
        assert_eq!(dl.lost.load(Ordering::Relaxed), 4);
        assert_eq!(dl.count(Reason::Budget), 5);
    }
}
