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
    /// A bridge's journal (`$bridge/NAME`) refused it: at `max_journal_messages`,
    /// `max_journal_bytes`, or the global budget. Its `{client_id}` level is the bridge's name.
    JournalFull,
}

const REASONS: usize = 6;

/// Every reason, in `Reason as usize` order.
pub(crate) const ALL_REASONS: [Reason; REASONS] = [
    Reason::QueueFullMessages,
    Reason::QueueFullBytes,
    Reason::Budget,
    Reason::Expired,
    Reason::NoMember,
    Reason::JournalFull,
];

/// Why a dead letter itself was lost (label `reason` of `brokerd_dead_letters_dropped_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Lost {
    /// The dead-letter queue was at `[dead_letter] max_queued_messages`.
    QueueMessages = 0,
    /// The dead-letter queue was at `[dead_letter] max_queued_bytes`.
    QueueBytes,
    /// The message dropped was a dead letter itself (dropped for a `$DLQ` subscriber).
    DeadLetter,
    /// `$DLQ/{reason}/{client_id}/{topic}` would not be a valid topic name.
    InvalidTopic,
}

const LOSTS: usize = 4;

impl Lost {
    pub(crate) const ALL: [Lost; LOSTS] = [
        Lost::QueueMessages,
        Lost::QueueBytes,
        Lost::DeadLetter,
        Lost::InvalidTopic,
    ];

    pub(crate) const LABELS: [&'static str; LOSTS] = [
        "max_queued_messages",
        "max_queued_bytes",
        "dead_letter_dropped",
        "invalid_topic",
    ];

    fn why(self) -> &'static str {
        match self {
            Lost::QueueMessages => "dead_letter.max_queued_messages reached",
            Lost::QueueBytes => "dead_letter.max_queued_bytes reached",
            Lost::DeadLetter => "a dead letter was dropped for a $DLQ subscriber",
            Lost::InvalidTopic => "the dead-letter topic would not be a valid topic name",
        }
    }
}

impl Reason {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Reason::QueueFullMessages => "queue_full_messages",
            Reason::QueueFullBytes => "queue_full_bytes",
            Reason::Budget => "budget",
            Reason::Expired => "expired",
            Reason::NoMember => "no_member",
            Reason::JournalFull => "journal_full",
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
    /// The subscriber's client id (the group name for `no_member`); the `{client_id}` level
    /// is `client[skip..]` (a bridge journal's name without `$bridge/`: one level, no copy).
    client: Arc<str>,
    skip: usize,
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
    /// Dead letters published, per reason (bumped by the one publisher task).
    published: [AtomicU64; REASONS],
    /// Dead letters lost, per `Lost`: the dead-letter queue was full, the topic would be
    /// invalid, or the message dropped was a dead letter itself.
    lost: [AtomicU64; LOSTS],
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
            published: Default::default(),
            lost: Default::default(),
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

    /// Dead letters published for `reason`.
    pub(crate) fn published(&self, reason: Reason) -> u64 {
        self.published[reason as usize].load(Ordering::Relaxed)
    }

    /// Dead letters published, all reasons.
    pub(crate) fn published_total(&self) -> u64 {
        ALL_REASONS.iter().map(|r| self.published(*r)).sum()
    }

    /// Dead letters lost for `why`.
    pub(crate) fn lost(&self, why: Lost) -> u64 {
        self.lost[why as usize].load(Ordering::Relaxed)
    }

    /// Dead letters lost, all causes.
    pub(crate) fn lost_total(&self) -> u64 {
        self.lost.iter().map(|l| l.load(Ordering::Relaxed)).sum()
    }

    /// Records that `msg` (at `qos` for that subscriber) was dropped for `client`, and queues
    /// its dead letter when enabled. Never blocks.
    pub(crate) fn note(&self, reason: Reason, client: &Arc<str>, msg: &SharedMessage, qos: QoS) {
        self.note_as(reason, client, 0, msg, qos);
    }

    /// `note`, with the `{client_id}` level `client[skip..]`.
    pub(crate) fn note_as(
        &self,
        reason: Reason,
        client: &Arc<str>,
        skip: usize,
        msg: &SharedMessage,
        qos: QoS,
    ) {
        self.by_reason[reason as usize].fetch_add(1, Ordering::Relaxed);
        if !self.enabled {
            return;
        }
        let topic = msg.topic.as_str();
        if topic.starts_with(DLQ_PREFIX) {
            // A dead letter dropped for its own subscriber (or a bridge journal): counted,
            // never dead-lettered again.
            self.lose(Lost::DeadLetter);
            return;
        }
        if topic.starts_with("$SYS/") {
            // `$SYS` values are republished every interval (the next one replaces this one):
            // the drop is counted, a dead letter would only be noise.
            return;
        }
        let len = msg.payload.len();
        if self.max_bytes != 0 && self.queued_bytes.load(Ordering::Relaxed) + len > self.max_bytes {
            self.lose(Lost::QueueBytes);
            return;
        }
        let letter = DeadLetter {
            reason,
            client: client.clone(),
            skip: skip.min(client.len()),
            msg: msg.clone(),
            qos: min_qos(qos, self.max_qos),
        };
        self.queued_bytes.fetch_add(len, Ordering::Relaxed);
        if self.tx.try_send(letter).is_err() {
            self.queued_bytes.fetch_sub(len, Ordering::Relaxed);
            self.lose(Lost::QueueMessages);
        }
    }

    /// Counts a lost dead letter; warns at most once a second.
    fn lose(&self, cause: Lost) {
        let why = cause.why();
        self.lost[cause as usize].fetch_add(1, Ordering::Relaxed);
        let lost = self.lost_total();
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
            letter.client.get(letter.skip..).unwrap_or(""),
            letter.msg.topic.as_str()
        );
        let Ok(topic) = TopicName::parse(&topic) else {
            self.lose(Lost::InvalidTopic);
            return None;
        };
        self.published[letter.reason as usize].fetch_add(1, Ordering::Relaxed);
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
        assert_eq!(dl.lost(Lost::QueueMessages), 3);
        dl.note(
            Reason::QueueFullBytes,
            &Arc::from("c"),
            &msg("$DLQ/budget/c/t", b"x"),
            QoS::AtLeastOnce,
        );
        assert_eq!(dl.lost(Lost::DeadLetter), 1);
        assert_eq!(dl.lost_total(), 4);
        assert_eq!(dl.count(Reason::Budget), 5);
    }

    /// issue #11 item 2: a bridge journal's refusal is `$DLQ/journal_full/{bridge}/{topic}`
    /// (one client-id level, counted per reason); a `$SYS` drop is counted, never queued.
    #[test]
    fn journal_letters_name_the_bridge_and_sys_drops_are_not_letters() {
        let dl = DeadLetters::new(&config(4));
        let mut rx = dl.take_receiver().expect("receiver");
        let journal: Arc<str> = Arc::from("$bridge/up");
        dl.note_as(
            Reason::JournalFull,
            &journal,
            "$bridge/".len(),
            &msg("a/b", b"p"),
            QoS::AtLeastOnce,
        );
        let m = dl
            .letter_message(rx.try_recv().expect("queued"))
            .expect("valid");
        assert_eq!(m.topic.as_str(), "$DLQ/journal_full/up/a/b");
        assert_eq!(dl.published(Reason::JournalFull), 1);
        dl.note(
            Reason::QueueFullMessages,
            &Arc::from("c"),
            &msg("$SYS/broker/uptime", b"1"),
            QoS::AtMostOnce,
        );
        assert!(rx.try_recv().is_err());
        assert_eq!(
            (dl.count(Reason::QueueFullMessages), dl.lost_total()),
            (1, 0)
        );
    }
}
