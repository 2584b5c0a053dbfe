//! A session's outgoing state: the in-flight window and the bounded queue behind it.
//! L2: pure data (no I/O, no locks); the owning `Session` guards it with its mutex.
//! Invariants: at most `max_inflight` QoS>0 messages are unacknowledged; packet ids in flight are
//! unique ([MQTT-2.3.1-2]); the queue never exceeds its bounds (what overflows is refused);
//! messages leave in the order they were queued ([MQTT-4.6.0-5]). A bound lowered by a reload
//! (`Bound`) may leave a queue or window above it: nothing is dropped, it only takes no more.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use super::budget::QueueBudget;
use crate::message::{QoS, SharedMessage};

/// One message on its way to one subscriber.
#[derive(Debug, Clone)]
pub(crate) struct Delivery {
    pub(crate) msg: SharedMessage,
    /// min(published QoS, granted QoS).
    pub(crate) qos: QoS,
    /// RETAIN flag on the wire: 1 only when sent because of a new subscription ([MQTT-3.3.1-8,-9]).
    pub(crate) retain: bool,
    /// The per-session sequence number under which it is persisted; 0 = not persisted.
    pub(crate) seq: u64,
    /// When it entered a bridge journal (`journal_stamp`), for the oldest message's age; 0
    /// for other sessions (never stamped: no clock read on their path) and for messages
    /// restored from disk (their age counts from the broker's start). Fits in the padding
    /// after `qos` and `retain`: a delivery is 32 bytes with or without it.
    pub(crate) journaled_at: u32,
    /// The share group it was dispatched for (`$share/...`), so that it can be handed to
    /// another member if this one leaves; `None` for a plain subscription.
    pub(crate) share: Option<Arc<super::shared::Group>>,
}

/// The clock of `Delivery::journaled_at`, started with the broker (`start_journal_clock`).
static JOURNAL_EPOCH: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();

/// Starts the journal clock (the first call wins): from the broker's start, so that messages
/// restored from disk, stamped 0, count their age from the restart.
pub(crate) fn start_journal_clock() {
    JOURNAL_EPOCH.get_or_init(std::time::Instant::now);
}

/// Now on the journal clock, in tenths of a second plus one (0 is "before the clock"):
/// a u32 lasts 13 years of uptime, and saturates rather than wraps after that.
pub(crate) fn journal_stamp() -> u32 {
    let epoch = JOURNAL_EPOCH.get_or_init(std::time::Instant::now);
    let ds = epoch.elapsed().as_millis() / 100;
    u32::try_from(ds).unwrap_or(u32::MAX - 1).saturating_add(1)
}

/// How long ago `stamp` (a `journal_stamp`, or 0) was, to a tenth of a second.
pub(crate) fn journal_age(stamp: u32) -> std::time::Duration {
    std::time::Duration::from_millis(u64::from(journal_stamp().saturating_sub(stamp)) * 100)
}

/// Where an outgoing QoS>0 message is in its handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum InflightState {
    /// PUBLISH sent, waiting for PUBACK (QoS 1) or PUBREC (QoS 2).
    Sent,
    /// PUBREC received and PUBREL sent, waiting for PUBCOMP (QoS 2).
    Released,
}

/// An unacknowledged outgoing message with its packet id.
#[derive(Debug, Clone)]
pub(crate) struct InflightEntry {
    pub(crate) pkid: u16,
    pub(crate) delivery: Delivery,
    pub(crate) state: InflightState,
}

/// One bound of a queue that a reload may change (`Broker::set_queue_bounds`): a relaxed atomic
/// read where the plain value was, so the per-message path takes no lock. A changed bound
/// applies to the next message offered or sent; what is already queued or in flight stays.
#[derive(Debug, Default)]
pub(crate) struct Bound(AtomicUsize);

impl Bound {
    pub(crate) const fn new(v: usize) -> Bound {
        Bound(AtomicUsize::new(v))
    }

    #[inline]
    pub(crate) fn get(&self) -> usize {
        self.0.load(Ordering::Relaxed)
    }

    pub(crate) fn set(&self, v: usize) {
        self.0.store(v, Ordering::Relaxed);
    }
}

impl Clone for Bound {
    fn clone(&self) -> Bound {
        Bound::new(self.get())
    }
}

/// Bounds of one session's queue.
#[derive(Debug, Clone)]
pub(crate) struct QueueLimits {
    pub(crate) max_inflight: Bound,
    pub(crate) max_queued_messages: Bound,
    /// 0 = no byte bound.
    pub(crate) max_queued_bytes: Bound,
    /// `limits.max_queued_bytes_total` (0 = none), for drop warnings.
    pub(crate) max_queued_bytes_total: usize,
    /// The global budget every queue counts against, when `max_queued_bytes_total` is set.
    /// Here rather than in each queue: an idle session stays as small as it was.
    pub(crate) budget: Option<Arc<QueueBudget>>,
}

/// Which bound refused a delivery: the drop warning names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum QueueFull {
    /// `limits.max_queued_messages`.
    Messages,
    /// `limits.max_queued_bytes`.
    Bytes,
    /// `limits.max_queued_bytes_total` is nearly used up and this session holds more than its
    /// fair share of it.
    FairShare,
    /// `limits.max_queued_bytes_total` is used up.
    TotalBytes,
}

impl QueueFull {
    /// The name of the bound, as in `[limits]`.
    pub(crate) fn key(self) -> &'static str {
        match self {
            QueueFull::Messages => "max_queued_messages",
            QueueFull::Bytes => "max_queued_bytes",
            QueueFull::FairShare | QueueFull::TotalBytes => "max_queued_bytes_total",
        }
    }

    /// The name of the bound for this session: a bridge journal's own keys (`[[bridge]]`
    /// `max_journal_messages`, `max_journal_bytes`) when it has its own bounds.
    pub(crate) fn key_for(self, session: &super::registry::Session) -> &'static str {
        match (self, session.limits.get().is_some()) {
            (QueueFull::Messages, true) => "bridge.max_journal_messages",
            (QueueFull::Bytes, true) => "bridge.max_journal_bytes",
            _ => self.key(),
        }
    }

    /// The bound's value in `limits`.
    pub(crate) fn value(self, limits: &QueueLimits) -> usize {
        match self {
            QueueFull::Messages => limits.max_queued_messages.get(),
            QueueFull::Bytes => limits.max_queued_bytes.get(),
            QueueFull::FairShare | QueueFull::TotalBytes => limits.max_queued_bytes_total,
        }
    }
}

/// What a client's acknowledgement means for the window.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum AckOutcome {
    /// The message (persisted under `seq`, 0 if not) is done; credit was freed.
    Completed { seq: u64 },
    /// Send PUBREL for this id (PUBREC received, or PUBREC for an unknown id, then `seq` = 0).
    SendPubrel { seq: u64 },
    /// An acknowledgement for an id we do not know: ignored, as the checklist chooses.
    Unknown,
    /// The wrong acknowledgement for the message's QoS or state: close the connection.
    WrongAck,
}

/// The outgoing half of a session.
#[derive(Debug, Default)]
pub(crate) struct Outbound {
    queue: VecDeque<Delivery>,
    queued_bytes: usize,
    inflight: VecDeque<InflightEntry>,
    /// The last packet id handed out; ids count up from 1 and wrap past 65535.
    last_pkid: u16,
}

/// What `next` hands the connection to write.
#[derive(Debug)]
pub(crate) struct Outgoing {
    pub(crate) delivery: Delivery,
    /// 0 for QoS 0.
    pub(crate) pkid: u16,
}

impl Outgoing {
    /// What the store of `client` learns when this goes out: a persisted QoS 0 message is
    /// done (deleted), a QoS 1/2 one is sent under its packet id. None when not persisted.
    /// One place for sessions and bridge links, which send from the same queues.
    pub(crate) fn sent_op(&self, client: &crate::topic::ClientId) -> Option<crate::store::Op> {
        use crate::store::{Op, StoredState};
        let (client, seq) = (client.clone(), self.delivery.seq);
        (seq != 0).then(|| {
            if self.pkid == 0 {
                Op::MsgDel { client, seq }
            } else {
                Op::MsgState {
                    client,
                    seq,
                    state: StoredState::Sent(self.pkid),
                }
            }
        })
    }
}

impl Outbound {
    /// Queues a delivery. `force` skips the bounds (retained messages sent on SUBSCRIBE, which
    /// are already held by the retained store). Returns whether the queue was empty before, or
    /// which bound refused the delivery because the queue is full.
    pub(crate) fn push(
        &mut self,
        d: Delivery,
        limits: &QueueLimits,
        force: bool,
    ) -> Result<bool, QueueFull> {
        let len = d.msg.payload.len();
        if !force {
            if self.queue.len() >= limits.max_queued_messages.get() {
                return Err(QueueFull::Messages);
            }
            let max_bytes = limits.max_queued_bytes.get();
            if max_bytes != 0 && self.queued_bytes + len > max_bytes && !self.queue.is_empty() {
                return Err(QueueFull::Bytes);
            }
            if let Some(b) = &limits.budget {
                b.admit(self.queued_bytes, len)?;
            }
        }
        let was_empty = self.queue.is_empty();
        if let Some(b) = &limits.budget {
            b.add(self.queued_bytes, len);
        }
        self.queued_bytes += len;
        self.queue.push_back(d);
        Ok(was_empty)
    }

    /// Takes the next message to write, if the window allows: QoS 0 always goes; QoS>0 needs
    /// credit and gets a fresh packet id. Stops at the first message without credit, so order
    /// is kept ([MQTT-4.6.0-5]).
    pub(crate) fn next(&mut self, limits: &QueueLimits) -> Option<Outgoing> {
        let front = self.queue.front()?;
        let pkid = if front.qos == QoS::AtMostOnce {
            0
        } else {
            if self.inflight.len() >= limits.max_inflight.get() {
                return None;
            }
            self.alloc_pkid()?
        };
        let delivery = self.queue.pop_front()?;
        let len = delivery.msg.payload.len();
        if let Some(b) = &limits.budget {
            b.sub(self.queued_bytes, len);
        }
        self.queued_bytes -= len;
        if pkid != 0 {
            self.inflight.push_back(InflightEntry {
                pkid,
                delivery: delivery.clone(),
                state: InflightState::Sent,
            });
        }
        Some(Outgoing { delivery, pkid })
    }

    /// [MQTT-2.3.1-2] the next id not in use, counting up from 1 and wrapping past 65535.
    fn alloc_pkid(&mut self) -> Option<u16> {
        for _ in 0..=u16::MAX {
            self.last_pkid = self.last_pkid.wrapping_add(1);
            if self.last_pkid == 0 {
                self.last_pkid = 1;
            }
            let candidate = self.last_pkid;
            if !self.inflight.iter().any(|e| e.pkid == candidate) {
                return Some(candidate);
            }
        }
        None
    }

    fn position(&self, pkid: u16) -> Option<usize> {
        self.inflight.iter().position(|e| e.pkid == pkid)
    }

    /// PUBACK from the client.
    pub(crate) fn on_puback(&mut self, pkid: u16) -> AckOutcome {
        match self.position(pkid) {
            None => AckOutcome::Unknown,
            Some(i) if self.inflight[i].delivery.qos == QoS::AtLeastOnce => {
                let seq = self.inflight[i].delivery.seq;
                self.inflight.remove(i);
                AckOutcome::Completed { seq }
            }
            Some(_) => AckOutcome::WrongAck,
        }
    }

    /// PUBREC from the client: the message moves to Released and PUBREL goes out (again, if
    /// the PUBREC is repeated). An unknown id still gets PUBREL.
    pub(crate) fn on_pubrec(&mut self, pkid: u16) -> AckOutcome {
        match self.position(pkid) {
            None => AckOutcome::SendPubrel { seq: 0 },
            Some(i) if self.inflight[i].delivery.qos == QoS::ExactlyOnce => {
                self.inflight[i].state = InflightState::Released;
                AckOutcome::SendPubrel {
                    seq: self.inflight[i].delivery.seq,
                }
            }
            Some(_) => AckOutcome::WrongAck,
        }
    }

    /// PUBCOMP from the client: valid only after PUBREL went out.
    pub(crate) fn on_pubcomp(&mut self, pkid: u16) -> AckOutcome {
        match self.position(pkid) {
            None => AckOutcome::Unknown,
            Some(i) if self.inflight[i].state == InflightState::Released => {
                let seq = self.inflight[i].delivery.seq;
                self.inflight.remove(i);
                AckOutcome::Completed { seq }
            }
            Some(_) => AckOutcome::WrongAck,
        }
    }

    /// Puts back an in-flight message loaded from disk (in sequence order, before any queued).
    /// New ids continue after the last one restored, as if the broker had not stopped.
    pub(crate) fn restore_inflight(&mut self, pkid: u16, delivery: Delivery, state: InflightState) {
        self.last_pkid = pkid;
        self.inflight.push_back(InflightEntry {
            pkid,
            delivery,
            state,
        });
    }

    /// The unacknowledged messages in send order, for the re-send on session resume.
    pub(crate) fn inflight(&self) -> impl Iterator<Item = &InflightEntry> {
        self.inflight.iter()
    }

    /// Whether `next` could hand out something now.
    pub(crate) fn ready(&self, limits: &QueueLimits) -> bool {
        match self.queue.front() {
            None => false,
            Some(d) => d.qos == QoS::AtMostOnce || self.inflight.len() < limits.max_inflight.get(),
        }
    }

    pub(crate) fn queued_len(&self) -> usize {
        self.queue.len()
    }

    /// Payload bytes queued (what `limits.max_queued_bytes` bounds).
    pub(crate) fn queued_bytes(&self) -> usize {
        self.queued_bytes
    }

    pub(crate) fn inflight_len(&self) -> usize {
        self.inflight.len()
    }

    /// The oldest message not yet acknowledged: the first in flight (sent in queue order,
    /// whatever order the acks come in), else the head of the queue.
    pub(crate) fn oldest(&self) -> Option<&Delivery> {
        self.inflight
            .front()
            .map(|e| &e.delivery)
            .or_else(|| self.queue.front())
    }

    /// Keeps only the queued messages for which `keep` holds; returns how many were dropped
    /// and adds the sequence numbers of the persisted ones to `removed_seqs`. In-flight
    /// messages are left alone: the client already has them, and a QoS 2 one's packet id is
    /// held by the client until its PUBREL ([MQTT-4.3.3]), which dropping it would never send.
    pub(crate) fn retain_deliveries(
        &mut self,
        mut keep: impl FnMut(&Delivery) -> bool,
        removed_seqs: &mut Vec<u64>,
        limits: &QueueLimits,
    ) -> usize {
        let before = self.queue.len();
        let before_bytes = self.queued_bytes;
        let mut bytes = 0;
        self.queue.retain(|d| {
            let k = keep(d);
            if k {
                bytes += d.msg.payload.len();
            } else if d.seq != 0 {
                removed_seqs.push(d.seq);
            }
            k
        });
        self.queued_bytes = bytes;
        if let Some(b) = &limits.budget {
            b.sub(before_bytes, before_bytes - bytes);
        }
        before - self.queue.len()
    }

    /// Messages in flight and queued (what `least_inflight` compares).
    pub(crate) fn load(&self) -> usize {
        self.inflight.len() + self.queue.len()
    }

    /// Whether the queue is full by messages (`least_inflight` skips such a member; one whose
    /// window is full has a load of at least `max_inflight`, so it comes after every member
    /// with free credit).
    pub(crate) fn is_full(&self, limits: &QueueLimits) -> bool {
        self.queue.len() >= limits.max_queued_messages.get()
    }

    /// The messages in flight (unacknowledged) and queued, in order.
    pub(crate) fn deliveries(&self) -> impl Iterator<Item = &Delivery> {
        self.inflight
            .iter()
            .map(|e| &e.delivery)
            .chain(self.queue.iter())
    }

    /// Takes out the messages dispatched for share group `group` (any group: `None`): those in flight that the
    /// client has not acknowledged at all (a QoS 2 message past PUBREC stays: the client has
    /// it), then the queued ones, in order. Their packet ids are freed.
    pub(crate) fn take_shared(
        &mut self,
        group: Option<&Arc<super::shared::Group>>,
        limits: &QueueLimits,
    ) -> Vec<Delivery> {
        let ours = |d: &Delivery| {
            d.share
                .as_ref()
                .is_some_and(|g| group.is_none_or(|group| Arc::ptr_eq(g, group)))
        };
        let mut taken = Vec::new();
        self.inflight.retain(|e| {
            let take = e.state == InflightState::Sent && ours(&e.delivery);
            if take {
                taken.push(e.delivery.clone());
            }
            !take
        });
        let before = self.queued_bytes;
        let mut bytes = 0;
        let mut kept = VecDeque::with_capacity(self.queue.len());
        for d in self.queue.drain(..) {
            if ours(&d) {
                taken.push(d);
            } else {
                bytes += d.msg.payload.len();
                kept.push_back(d);
            }
        }
        self.queue = kept;
        self.queued_bytes = bytes;
        if let Some(b) = &limits.budget {
            b.sub(before, before - bytes);
        }
        taken
    }

    /// Drops queued QoS 0 messages (a persistent session going offline keeps only what
    /// `queue_qos0_messages` allows).
    pub(crate) fn drop_queued_qos0(&mut self, limits: &QueueLimits) {
        let before = self.queued_bytes;
        let mut bytes = 0;
        self.queue.retain(|d| {
            let keep = d.qos != QoS::AtMostOnce;
            if keep {
                bytes += d.msg.payload.len();
            }
            keep
        });
        self.queued_bytes = bytes;
        if let Some(b) = &limits.budget {
            b.sub(before, before - bytes);
        }
    }

    /// Empties the queue of a session that is discarded (nothing will take from it any more)
    /// and gives its bytes back to the budget. In-flight messages are left as they are.
    pub(crate) fn discard_queue(&mut self, limits: &QueueLimits) {
        if let Some(b) = &limits.budget {
            b.sub(self.queued_bytes, self.queued_bytes);
        }
        self.queue = VecDeque::new();
        self.queued_bytes = 0;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use bytes::Bytes;

    use super::*;
    use crate::message::Message;
    use crate::topic::TopicName;

    static LIMITS: QueueLimits = base();

    const fn base() -> QueueLimits {
        QueueLimits {
            max_inflight: Bound::new(2),
            max_queued_messages: Bound::new(3),
            max_queued_bytes: Bound::new(0),
            max_queued_bytes_total: 0,
            budget: None,
        }
    }

    fn d(qos: QoS, n: u8) -> Delivery {
        Delivery {
            msg: Arc::new(Message {
                topic: TopicName::parse("t").unwrap(),
                payload: Bytes::from(vec![n]),
                qos,
                retain: false,
                from: None,
                origin: 0,
            }),
            qos,
            retain: false,
            seq: 0,
            journaled_at: 0,
            share: None,
        }
    }

    /// issue #9 item 2: on connect, queued messages the client may no longer read are dropped
    /// (Mosquitto's `connection_check_acl`): bytes, order and persisted sequence numbers stay
    /// consistent; in-flight ones stay, since the client already holds them (and a QoS 2 id
    /// until its PUBREL).
    #[test]
    fn retain_deliveries_drops_from_the_queue_only() {
        let limits = QueueLimits {
            max_inflight: Bound::new(2),
            max_queued_messages: Bound::new(10),
            max_queued_bytes: Bound::new(0),
            max_queued_bytes_total: 0,
            budget: None,
        };
        let mut o = Outbound::default();
        for n in 1..=5u8 {
            let mut x = d(QoS::AtLeastOnce, n);
            x.seq = u64::from(n) * 10;
            o.push(x, &limits, false).unwrap();
        }
        let a = o.next(&limits).unwrap();
        let b = o.next(&limits).unwrap();
        assert_eq!(
            (a.pkid, b.pkid, o.inflight_len(), o.queued_len()),
            (1, 2, 2, 3)
        );
        // Keep the even payloads: drops queued 3 and 5; in-flight 1 stays (the client has it).
        let mut removed = Vec::new();
        let dropped = o.retain_deliveries(|d| d.msg.payload[0] % 2 == 0, &mut removed, &limits);
        assert_eq!((dropped, removed), (2, vec![30, 50]));
        assert_eq!(
            (o.inflight_len(), o.queued_len(), o.queued_bytes),
            (2, 1, 1)
        );
        assert_eq!(o.on_puback(1), AckOutcome::Completed { seq: 10 });
        let next = o.next(&limits).unwrap();
        assert_eq!((next.delivery.msg.payload[0], next.pkid), (4, 3));
        assert_eq!(o.on_puback(2), AckOutcome::Completed { seq: 20 });
    }

    /// issue #10 item 6: bounds lowered by a reload keep what is queued and in flight, in
    /// order; the queue takes no more until it is below the new bound, and the window sends no
    /// more until acknowledgements bring it below.
    #[test]
    fn lowered_bounds_keep_what_is_held() {
        let limits = QueueLimits {
            max_inflight: Bound::new(3),
            max_queued_messages: Bound::new(10),
            ..base()
        };
        let mut o = Outbound::default();
        for n in 1..=6 {
            o.push(d(QoS::AtLeastOnce, n), &limits, false).unwrap();
        }
        for _ in 0..3 {
            o.next(&limits).unwrap();
        }
        limits.max_inflight.set(1);
        limits.max_queued_messages.set(2);
        assert_eq!((o.inflight_len(), o.queued_len()), (3, 3));
        assert_eq!(
            o.push(d(QoS::AtLeastOnce, 7), &limits, false),
            Err(QueueFull::Messages)
        );
        assert!(!o.ready(&limits) && o.next(&limits).is_none());
        assert!(matches!(o.on_puback(1), AckOutcome::Completed { .. }));
        assert!(matches!(o.on_puback(2), AckOutcome::Completed { .. }));
        assert!(o.next(&limits).is_none(), "2 in flight over a window of 1");
        assert!(matches!(o.on_puback(3), AckOutcome::Completed { .. }));
        let mut sent = Vec::new();
        while let Some(next) = o.next(&limits) {
            sent.push(next.delivery.msg.payload[0]);
            assert_eq!(o.on_puback(next.pkid), AckOutcome::Completed { seq: 0 });
        }
        assert_eq!(sent, [4, 5, 6], "every message kept, in order");
        assert!(o.push(d(QoS::AtLeastOnce, 8), &limits, false).is_ok());
    }

    /// The queue refuses what exceeds max_queued_messages; `force` bypasses it.
    #[test]
    fn queue_is_bounded() {
        let mut o = Outbound::default();
        assert_eq!(o.push(d(QoS::AtLeastOnce, 1), &LIMITS, false), Ok(true));
        assert_eq!(o.push(d(QoS::AtLeastOnce, 2), &LIMITS, false), Ok(false));
        assert_eq!(o.push(d(QoS::AtLeastOnce, 3), &LIMITS, false), Ok(false));
        assert_eq!(
            o.push(d(QoS::AtLeastOnce, 4), &LIMITS, false),
            Err(QueueFull::Messages)
        );
        assert!(o.push(d(QoS::AtLeastOnce, 5), &LIMITS, true).is_ok());
        assert_eq!(o.queued_len(), 4);
    }

    /// The byte bound refuses a message that would exceed it (but never an empty queue's first).
    #[test]
    fn byte_bound() {
        let limits = QueueLimits {
            max_queued_bytes: Bound::new(2),
            ..base()
        };
        let mut o = Outbound::default();
        assert!(o.push(d(QoS::AtMostOnce, 1), &limits, false).is_ok());
        assert!(o.push(d(QoS::AtMostOnce, 2), &limits, false).is_ok());
        assert_eq!(
            o.push(d(QoS::AtMostOnce, 3), &limits, false),
            Err(QueueFull::Bytes)
        );
    }

    /// The window holds at most max_inflight QoS>0 messages; ids count up from 1; order holds.
    #[test]
    fn window_gates_qos1_and_keeps_order() {
        let mut o = Outbound::default();
        for n in 0..3 {
            o.push(d(QoS::AtLeastOnce, n), &LIMITS, false).unwrap();
        }
        assert_eq!(o.next(&LIMITS).unwrap().pkid, 1);
        assert_eq!(o.next(&LIMITS).unwrap().pkid, 2);
        assert!(o.next(&LIMITS).is_none(), "window of 2 is full");
        assert!(!o.ready(&LIMITS));
        assert_eq!(o.on_puback(1), AckOutcome::Completed { seq: 0 });
        let third = o.next(&LIMITS).unwrap();
        assert_eq!((third.pkid, third.delivery.msg.payload[0]), (3, 2));
    }

    /// [MQTT-2.3.1-2] ids wrap past 65535 to 1 and skip ids still in flight.
    #[test]
    fn pkid_wraps_and_skips_in_use() {
        let mut o = Outbound {
            last_pkid: 65_534,
            ..Outbound::default()
        };
        let limits = QueueLimits {
            max_inflight: Bound::new(10),
            ..base()
        };
        o.push(d(QoS::AtLeastOnce, 0), &limits, false).unwrap();
        o.push(d(QoS::AtLeastOnce, 0), &limits, false).unwrap();
        assert_eq!(o.next(&limits).unwrap().pkid, 65_535);
        assert_eq!(o.next(&limits).unwrap().pkid, 1);
        o.last_pkid = 0;
        o.push(d(QoS::AtLeastOnce, 0), &limits, false).unwrap();
        assert_eq!(o.next(&limits).unwrap().pkid, 2, "1 is still in flight");
    }

    /// QoS 2: PUBREC releases (repeatable), PUBCOMP completes; wrong acks are flagged.
    #[test]
    fn qos2_handshake_and_wrong_acks() {
        let mut o = Outbound::default();
        o.push(d(QoS::ExactlyOnce, 0), &LIMITS, false).unwrap();
        o.push(d(QoS::AtLeastOnce, 0), &LIMITS, false).unwrap();
        let q2 = o.next(&LIMITS).unwrap().pkid;
        let q1 = o.next(&LIMITS).unwrap().pkid;
        assert_eq!(o.on_puback(q2), AckOutcome::WrongAck);
        assert_eq!(
            o.on_pubcomp(q2),
            AckOutcome::WrongAck,
            "PUBCOMP before PUBREC"
        );
        assert_eq!(o.on_pubrec(q1), AckOutcome::WrongAck);
        assert_eq!(o.on_pubrec(q2), AckOutcome::SendPubrel { seq: 0 });
        assert_eq!(
            o.on_pubrec(q2),
            AckOutcome::SendPubrel { seq: 0 },
            "repeated PUBREC"
        );
        assert_eq!(o.on_pubcomp(q2), AckOutcome::Completed { seq: 0 });
        assert_eq!(o.on_pubcomp(q2), AckOutcome::Unknown);
        assert_eq!(o.on_pubrec(999), AckOutcome::SendPubrel { seq: 0 });
        assert_eq!(o.on_puback(999), AckOutcome::Unknown);
        assert_eq!(o.on_puback(q1), AckOutcome::Completed { seq: 0 });
        assert_eq!(o.inflight_len(), 0);
    }

    /// QoS 0 is never gated by the window.
    #[test]
    fn qos0_passes_full_window() {
        let limits = QueueLimits {
            max_inflight: Bound::new(1),
            ..base()
        };
        let mut o = Outbound::default();
        o.push(d(QoS::AtLeastOnce, 0), &limits, false).unwrap();
        o.next(&limits).unwrap();
        o.push(d(QoS::AtMostOnce, 0), &limits, false).unwrap();
        assert_eq!(o.next(&limits).unwrap().pkid, 0);
    }

    /// issue #9 item 5: with a global budget, every queued byte is counted once and given back
    /// when it leaves the queue (sent, dropped as offline QoS 0 or by the ACL read gate, or the
    /// session discarded), and the count of queueing sessions follows; a full budget refuses,
    /// forced pushes pass.
    #[test]
    fn budget_counts_queued_bytes_and_gets_them_back() {
        let budget = Arc::new(QueueBudget::new(8));
        let limits = QueueLimits {
            max_queued_messages: Bound::new(100),
            budget: Some(budget.clone()),
            ..base()
        };
        let mut a = Outbound::default();
        let mut b = Outbound::default();
        for n in 0..4 {
            a.push(d(QoS::AtMostOnce, n), &limits, false).unwrap();
        }
        a.push(d(QoS::AtLeastOnce, 4), &limits, false).unwrap();
        b.push(d(QoS::AtMostOnce, 5), &limits, false).unwrap();
        assert_eq!(budget.usage(), (6, 2, 8));
        assert_eq!(
            a.push(d(QoS::AtMostOnce, 6), &limits, false),
            Err(QueueFull::FairShare),
            "6 of 8 used: a holds 5, over its share of 6 / 2"
        );
        b.push(d(QoS::AtMostOnce, 7), &limits, false).unwrap();
        b.push(d(QoS::AtMostOnce, 8), &limits, false).unwrap();
        assert_eq!(
            b.push(d(QoS::AtMostOnce, 9), &limits, false),
            Err(QueueFull::TotalBytes)
        );
        b.push(d(QoS::AtMostOnce, 10), &limits, true).unwrap();
        assert_eq!(budget.usage(), (9, 2, 8));
        assert_eq!(a.next(&limits).unwrap().pkid, 0);
        assert_eq!(budget.usage(), (8, 2, 8));
        a.drop_queued_qos0(&limits);
        assert_eq!(budget.usage(), (5, 2, 8), "the QoS 1 message stays");
        // The ACL read gate on connect drops queued messages: their bytes come back too.
        let dropped = b.retain_deliveries(|d| d.msg.payload[0] != 5, &mut Vec::new(), &limits);
        assert_eq!((dropped, budget.usage()), (1, (4, 2, 8)));
        a.next(&limits).unwrap();
        assert_eq!(budget.usage(), (3, 1, 8));
        b.discard_queue(&limits);
        assert_eq!(budget.usage(), (0, 0, 8));
    }

    /// issue #11 item 4: the oldest unacknowledged message is the first in flight, whatever
    /// order the acks come in, else the head of the queue; none when all are acknowledged.
    #[test]
    fn oldest_is_the_first_unacknowledged() {
        let mut o = Outbound::default();
        assert!(o.oldest().is_none());
        for n in 1..=3u8 {
            o.push(d(QoS::AtLeastOnce, n), &LIMITS, false).unwrap();
        }
        let oldest = |o: &Outbound| o.oldest().map(|d| d.msg.payload[0]);
        assert_eq!(oldest(&o), Some(1), "queued only: the head");
        let (a, b) = (o.next(&LIMITS).unwrap(), o.next(&LIMITS).unwrap());
        assert_eq!(oldest(&o), Some(1), "in flight before queued");
        assert_eq!(o.on_puback(b.pkid), AckOutcome::Completed { seq: 0 });
        assert_eq!(oldest(&o), Some(1), "a later ack does not move it");
        assert_eq!(o.on_puback(a.pkid), AckOutcome::Completed { seq: 0 });
        assert_eq!(oldest(&o), Some(3));
        let c = o.next(&LIMITS).unwrap();
        o.on_puback(c.pkid);
        assert!(o.oldest().is_none());
    }

    /// issue #11 item 4: the stamp costs no memory per delivery (it fits in the padding), is
    /// never 0 once taken (0 = restored: aged from the broker's start), and ages.
    #[test]
    fn journal_stamps_fit_and_age() {
        // The message, the sequence number and the share group (8 bytes each), and the stamp
        // sharing a word with `qos` and `retain`: without the stamp it is the same size.
        assert_eq!(std::mem::size_of::<Delivery>(), 32);
        start_journal_clock();
        let stamp = journal_stamp();
        assert!(stamp >= 1);
        assert!(journal_age(stamp) < std::time::Duration::from_secs(1));
        assert!(journal_age(0) >= journal_age(stamp));
    }
}
