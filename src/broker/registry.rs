//! Sessions: the state MQTT keeps per client id, shared by the router and the connection.
//! L2: depends on L0 and `broker::queue`; knows nothing of sockets. Invariants: all mutable
//! session state sits behind one short-held `std::sync::Mutex` that is never held across an
//! `.await`; only the attached connection (matching `ConnSlot::id`) may take from the queue.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use tokio::sync::{oneshot, Notify};

use super::queue::{Delivery, Outbound, QueueLimits};
use crate::message::QoS;
use crate::store::{Op, Store, StoredMessage};
use crate::topic::{ClientId, TopicFilter};

/// Why a connection is told to close by the broker rather than by its client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kick {
    /// [MQTT-3.1.4-2] another connection presented the same client id.
    TakenOver { new_clean: bool },
    /// The session expired or was removed while the connection was being set up.
    Removed,
}

/// The connection currently attached to a session.
#[derive(Debug)]
pub(crate) struct ConnSlot {
    pub(crate) id: u64,
    pub(crate) kick: oneshot::Sender<Kick>,
    /// Wakes this connection when the queue goes from empty to non-empty. Per connection, so
    /// a connection being taken over cannot swallow a wake-up meant for its successor.
    pub(crate) wake: Arc<Notify>,
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
}

/// The result of offering a delivery to a session.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Offer {
    Queued,
    /// Refused: the queue is at its bound.
    Full,
    /// Not queued by policy (QoS 0 for an offline session, or a discarded session).
    Skipped,
}

impl Session {
    pub(crate) fn new(client_id: ClientId, clean: bool) -> Session {
        Session {
            client_id,
            clean,
            state: Mutex::new(SessionState::default()),
            dropped: AtomicU64::new(0),
        }
    }

    /// Locks the state. A poisoned lock (a panic elsewhere while holding it) is recovered:
    /// the state is plain data that every critical section leaves consistent.
    pub(crate) fn lock(&self) -> MutexGuard<'_, SessionState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues a delivery for this session (the publish path; never blocks on the network or
    /// the disk). A persistent session's QoS 1/2 deliveries, and QoS 0 ones queued while it is
    /// offline, are submitted to the store under the session lock, so the store sees one
    /// session's operations in queue order.
    pub(crate) fn offer(
        &self,
        mut d: Delivery,
        limits: &QueueLimits,
        queue_qos0_offline: bool,
        force: bool,
        store: &Store,
    ) -> Offer {
        let mut st = self.lock();
        if st.discarded {
            return Offer::Skipped;
        }
        let online = st.conn.is_some();
        if !online && d.qos == QoS::AtMostOnce && !queue_qos0_offline {
            return Offer::Skipped;
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
                        c.wake.notify_one();
                    }
                }
                Offer::Queued
            }
            Err(()) => {
                drop(st);
                self.dropped.fetch_add(1, Ordering::Relaxed);
                Offer::Full
            }
        }
    }
}
