//! Sessions: the state MQTT keeps per client id, shared by the router and the connection.
//! L2: depends on L0 and `broker::queue`; knows nothing of sockets. Invariants: all mutable
//! session state sits behind one short-held `std::sync::Mutex` that is never held across an
//! `.await`; only the attached connection (matching `ConnSlot::id`) may take from the queue.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use tokio::sync::Notify;

use super::queue::{Delivery, Outbound, QueueFull, QueueLimits};
use crate::message::QoS;
use crate::store::{Op, Store, StoredMessage};
use crate::topic::{ClientId, TopicFilter, TopicName};

/// What a session may receive, when an ACL is in force. The session layer hands one to the
/// session at attach; the broker asks it for every delivery (retained messages included) and
/// knows nothing of ACLs. Sessions without one (no `acl_file`) receive everything.
pub(crate) trait ReadGate: Send + Sync + std::fmt::Debug {
    fn may_read(&self, topic: &TopicName) -> bool;
}

/// Why a connection is told to close by the broker rather than by its client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kick {
    /// [MQTT-3.1.4-2] another connection presented the same client id.
    TakenOver { new_clean: bool },
    /// [MQTT-3.1.2-24] nothing received for 1.5 x keep-alive.
    KeepAlive,
}

const SIG_TAKEN_OVER: u8 = 1;
const SIG_NEW_CLEAN: u8 = 2;
const SIG_KEEP_ALIVE: u8 = 4;

/// How the broker signals one connection: a `Notify` the connection always waits on, plus
/// flags saying why it was woken. One waiter per connection (instead of a channel, a timer and
/// cancellation futures each) keeps an idle connection small.
#[derive(Debug)]
pub(crate) struct ConnCtl {
    /// Woken when the queue goes from empty to non-empty, or when a flag is raised.
    pub(crate) wake: Notify,
    flags: AtomicU8,
    /// Milliseconds (broker clock) when the last packet arrived.
    last_seen_ms: AtomicU64,
    /// 1.5 x keep-alive in milliseconds; 0 = keep-alive off.
    expire_after_ms: u64,
}

impl ConnCtl {
    pub(crate) fn new(now_ms: u64, expire_after_ms: u64) -> ConnCtl {
        ConnCtl {
            wake: Notify::new(),
            flags: AtomicU8::new(0),
            last_seen_ms: AtomicU64::new(now_ms),
            expire_after_ms,
        }
    }

    /// Tells the connection to close.
    pub(crate) fn kick(&self, why: Kick) {
        let bits = match why {
            Kick::TakenOver { new_clean: true } => SIG_TAKEN_OVER | SIG_NEW_CLEAN,
            Kick::TakenOver { new_clean: false } => SIG_TAKEN_OVER,
            Kick::KeepAlive => SIG_KEEP_ALIVE,
        };
        self.flags.fetch_or(bits, Ordering::AcqRel);
        self.wake.notify_one();
    }

    /// The kick raised for this connection, if any.
    pub(crate) fn kicked(&self) -> Option<Kick> {
        let f = self.flags.load(Ordering::Acquire);
        if f & SIG_TAKEN_OVER != 0 {
            Some(Kick::TakenOver {
                new_clean: f & SIG_NEW_CLEAN != 0,
            })
        } else if f & SIG_KEEP_ALIVE != 0 {
            Some(Kick::KeepAlive)
        } else {
            None
        }
    }

    /// Records that a packet arrived.
    pub(crate) fn touch(&self, now_ms: u64) {
        self.last_seen_ms.store(now_ms, Ordering::Relaxed);
    }

    /// [MQTT-3.1.2-24] kicks the connection if nothing arrived for 1.5 x keep-alive.
    pub(crate) fn check_keep_alive(&self, now_ms: u64) {
        let last = self.last_seen_ms.load(Ordering::Relaxed);
        if self.expire_after_ms != 0 && now_ms.saturating_sub(last) >= self.expire_after_ms {
            self.kick(Kick::KeepAlive);
        }
    }
}

/// The connection currently attached to a session.
#[derive(Debug)]
pub(crate) struct ConnSlot {
    pub(crate) id: u64,
    pub(crate) ctl: Arc<ConnCtl>,
}

/// Mutable session state (guarded by `Session::state`).
#[derive(Debug, Default)]
pub(crate) struct SessionState {
    pub(crate) out: Outbound,
    /// [MQTT-4.3.3-2] QoS 2 packet ids received and PUBREC'd, awaiting PUBREL.
    pub(crate) inbound_qos2: HashSet<u16>,
    /// The session's subscriptions with their granted QoS.
    pub(crate) subscriptions: HashMap<TopicFilter, QoS>,
    pub(crate) conn: Option<ConnSlot>,
    /// Set once the session is replaced or removed; deliveries to it are then ignored.
    pub(crate) discarded: bool,
    /// When the last connection left (persistent sessions), for `session.expiry_s`.
    pub(crate) disconnected_at: Option<Instant>,
    /// The last sequence number given to a persisted delivery.
    pub(crate) last_seq: u64,
    /// Set by the connection that attached last (see `Session::set_read_gate`).
    read_gate: Option<Arc<dyn ReadGate>>,
}

/// One MQTT session. Clean sessions live as long as their connection; persistent ones
/// (CleanSession=0) outlive it and keep queueing ([MQTT-3.1.2-4]).
#[derive(Debug)]
pub(crate) struct Session {
    pub(crate) client_id: ClientId,
    /// CleanSession=1: discarded when the connection ends ([MQTT-3.1.2-6]).
    pub(crate) clean: bool,
    state: Mutex<SessionState>,
    /// Messages dropped because this session's queue was full.
    pub(crate) dropped: AtomicU64,
    /// Unique in this process, never 0: the `Message::origin` of what a bridge publishes.
    pub(crate) uid: u64,
    /// The attached client is a bridge (Mosquitto's `try_private`, or one of our own bridge
    /// links): it does not receive back what it published, and RETAIN is kept as published
    /// (issue #11 item 3). Set at each attach.
    pub(crate) bridge: AtomicBool,
    /// Queue bounds of this session when they are not the broker's `[limits]` (a bridge's
    /// journal: `max_inflight`, `max_journal_bytes`). Set once, by the bridge link; only a
    /// journal has them (`is_journal`).
    pub(crate) limits: std::sync::OnceLock<Box<QueueLimits>>,
}

/// Client ids of bridge journals start with this (`$bridge/NAME`); clients may not use it.
pub(crate) const JOURNAL_PREFIX: &str = "$bridge/";

/// The result of offering a delivery to a session.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Offer {
    Queued,
    /// Refused: the queue is at this bound.
    Full(QueueFull),
    /// Not queued by policy (QoS 0 for an offline session, a discarded session, or a topic
    /// the session may not read).
    Skipped,
    /// Not queued: the session is offline and the caller asked for online sessions only
    /// (a share group looking for an online member).
    Offline,
}

/// The next `Session::uid`.
static NEXT_UID: AtomicU64 = AtomicU64::new(1);

impl Session {
    pub(crate) fn new(client_id: ClientId, clean: bool) -> Session {
        Session {
            client_id,
            clean,
            state: Mutex::new(SessionState::default()),
            dropped: AtomicU64::new(0),
            uid: NEXT_UID.fetch_add(1, Ordering::Relaxed),
            bridge: AtomicBool::new(false),
            limits: std::sync::OnceLock::new(),
        }
    }

    /// This session's queue bounds: its own (a bridge journal's) or the broker's.
    pub(crate) fn limits<'a>(&'a self, broker: &'a QueueLimits) -> &'a QueueLimits {
        self.limits.get().map_or(broker, |l| l)
    }

    /// This session is a bridge's journal (`$bridge/NAME`): it has its own queue bounds.
    pub(crate) fn is_journal(&self) -> bool {
        self.limits.get().is_some()
    }

    /// Locks the state. A poisoned lock (a panic elsewhere while holding it) is recovered:
    /// the state is plain data that every critical section leaves consistent.
    pub(crate) fn lock(&self) -> MutexGuard<'_, SessionState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Installs what the newly attached client may read, and drops the queued (not the in-flight)
    /// messages it may not (Mosquitto's `connection_check_acl` on connect: the username may
    /// have changed since they were queued). Returns how many were dropped.
    pub(crate) fn set_read_gate(
        &self,
        gate: Arc<dyn ReadGate>,
        limits: &QueueLimits,
        store: &Store,
    ) -> usize {
        let mut st = self.lock();
        let mut removed = Vec::new();
        let dropped =
            st.out
                .retain_deliveries(|d| gate.may_read(&d.msg.topic), &mut removed, limits);
        for seq in removed {
            store.submit(Op::MsgDel {
                client: self.client_id.clone(),
                seq,
            });
        }
        st.read_gate = Some(gate);
        dropped
    }

    /// Queues a delivery for this session (the publish path; never blocks on the network or
    /// the disk). A persistent session's QoS 1/2 deliveries, and QoS 0 ones queued while it is
    /// offline, are submitted to the store under the session lock, so the store sees one
    /// session's operations in queue order.
    pub(crate) fn offer(
        &self,
        d: Delivery,
        limits: &QueueLimits,
        queue_qos0_offline: bool,
        force: bool,
        store: &Store,
    ) -> Offer {
        self.offer_to(d, limits, queue_qos0_offline, force, store, false)
    }

    /// `offer`, refusing with `Offer::Offline` when `online_only` and no connection is attached.
    pub(crate) fn offer_to(
        &self,
        mut d: Delivery,
        limits: &QueueLimits,
        queue_qos0_offline: bool,
        force: bool,
        store: &Store,
        online_only: bool,
    ) -> Offer {
        let mut st = self.lock();
        if st.discarded {
            return Offer::Skipped;
        }
        // Mosquitto checks read access when it routes (subs.c) and when it sends retained
        // messages (retain.c): a denied message never enters the queue.
        if let Some(gate) = &st.read_gate {
            if !gate.may_read(&d.msg.topic) {
                return Offer::Skipped;
            }
        }
        let online = st.conn.is_some();
        if online_only && !online {
            return Offer::Offline;
        }
        if !online && d.qos == QoS::AtMostOnce && !queue_qos0_offline {
            return Offer::Skipped;
        }
        // Issue #11 item 4: the journal's oldest-message age. Other sessions never read the clock.
        if self.is_journal() {
            d.journaled_at = super::queue::journal_stamp();
        }
        let persist = !self.clean && store.enabled() && (d.qos != QoS::AtMostOnce || !online);
        let op = if persist {
            st.last_seq += 1;
            d.seq = st.last_seq;
            Some(Op::MsgPut {
                client: self.client_id.clone(),
                seq: d.seq,
                msg: StoredMessage {
                    topic: d.msg.topic.as_arc().clone(),
                    payload: d.msg.payload.clone(),
                    qos: d.qos as u8,
                    retain: d.retain,
                },
            })
        } else {
            None
        };
        match st.out.push(d, limits, force) {
            Ok(was_empty) => {
                if let Some(op) = op {
                    store.submit(op);
                }
                if was_empty {
                    if let Some(c) = &st.conn {
                        c.ctl.wake.notify_one();
                    }
                }
                Offer::Queued
            }
            Err(full) => {
                drop(st);
                self.dropped.fetch_add(1, Ordering::Relaxed);
                Offer::Full(full)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::queue::Bound;
    use bytes::Bytes;

    use super::*;
    use crate::message::Message;

    fn limits() -> QueueLimits {
        QueueLimits {
            max_inflight: Bound::new(10),
            max_queued_messages: Bound::new(10),
            max_queued_bytes: Bound::new(0),
            max_queued_bytes_total: 0,
            budget: None,
        }
    }

    fn delivery() -> Delivery {
        Delivery {
            msg: Arc::new(Message {
                topic: TopicName::parse("t").expect("topic"),
                payload: Bytes::from_static(b"x"),
                qos: QoS::AtLeastOnce,
                retain: false,
                origin: 0,
                from: None,
            }),
            qos: QoS::AtLeastOnce,
            retain: false,
            seq: 0,
            journaled_at: 0,
            share: None,
        }
    }

    /// issue #11 item 4: only a bridge journal's deliveries are stamped with the time they
    /// entered it; any other session's path never reads the clock.
    #[test]
    fn only_journal_deliveries_are_stamped() {
        let store = Store::disabled();
        let plain = Session::new("plain".into(), false);
        let journal = Session::new("$bridge/j".into(), false);
        let _ = journal.limits.set(Box::new(limits()));
        assert!(journal.is_journal() && !plain.is_journal());
        for s in [&plain, &journal] {
            let offered = s.offer(delivery(), s.limits(&limits()), true, false, &store);
            assert_eq!(offered, Offer::Queued);
        }
        let stamp = |s: &Session| s.lock().out.oldest().map(|d| d.journaled_at);
        assert_eq!(stamp(&plain), Some(0));
        assert!(stamp(&journal).is_some_and(|t| t >= 1));
    }
}
