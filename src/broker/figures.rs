//! Read-only figures of the routing core for the admin port and `$SYS`: totals over every
//! session, and the clients with the deepest queues. L2, like the rest of `broker`.
//! Invariant: called on a scrape, never on the message path; each session lock is held only to
//! read three numbers, and the result is bounded (`top_n` clients).

use std::sync::atomic::Ordering::Relaxed;

use super::dead_letter::{Lost, Reason, ALL_REASONS};
use super::Broker;
use crate::topic::ClientId;

/// One client's queue, for the status page.
#[derive(Debug, Clone)]
pub(crate) struct ClientFigures {
    pub(crate) client_id: ClientId,
    pub(crate) connected: bool,
    pub(crate) queued: usize,
    pub(crate) queued_bytes: usize,
    pub(crate) inflight: usize,
}

/// Totals over the broker at one moment (each session read at a slightly different instant).
#[derive(Debug, Clone, Default)]
pub(crate) struct Figures {
    pub(crate) sessions: usize,
    pub(crate) connected_sessions: usize,
    pub(crate) subscriptions: usize,
    pub(crate) retained: usize,
    pub(crate) queued: usize,
    pub(crate) queued_bytes: usize,
    pub(crate) inflight: usize,
    /// Messages routed (client publishes, wills, `$SYS`).
    pub(crate) routed: u64,
    /// Deliveries dropped, by reason label (the queue bounds), then publishes denied,
    /// messages no member of a share group could take, and queues of expired sessions.
    pub(crate) dropped: Vec<(&'static str, u64)>,
    /// Dead letters published, by reason (`$DLQ/{reason}/...`).
    pub(crate) dead_letters: Vec<(&'static str, u64)>,
    /// Dead letters lost, by cause.
    pub(crate) dead_letters_dropped: Vec<(&'static str, u64)>,
    /// Share groups, and their members over all groups.
    pub(crate) share_groups: usize,
    pub(crate) share_members: usize,
    /// Shared messages handed from a leaving member to the rest of its group.
    pub(crate) shared_handed_over: u64,
    /// At most `top_n` clients, deepest queue first.
    pub(crate) top_clients: Vec<ClientFigures>,
}

/// Labels of `Stats::dropped_by`, in `QueueFull` order.
const DROP_LABELS: [&str; 4] = [
    "max_queued_messages",
    "max_queued_bytes",
    "fair_share",
    "max_queued_bytes_total",
];

impl Broker {
    /// Reads the figures; keeps the `top_n` clients with the most queued messages.
    pub(crate) fn figures(&self, top_n: usize) -> Figures {
        let inner = &*self.inner;
        let mut f = Figures {
            sessions: inner.sessions.len(),
            subscriptions: inner.subs.len(),
            retained: inner.retained.len(),
            routed: inner.stats.published.load(Relaxed),
            ..Figures::default()
        };
        f.dropped = DROP_LABELS
            .iter()
            .zip(&inner.stats.dropped_by)
            .map(|(l, c)| (*l, c.load(Relaxed)))
            .collect();
        f.dropped
            .push(("publish_denied", inner.stats.denied.load(Relaxed)));
        // Counters the drop paths already keep (nothing new on the message path).
        f.dropped.push((
            "share_group_no_member",
            inner.shared.no_member.load(Relaxed),
        ));
        f.dropped
            .push(("session_expired", inner.dead.count(Reason::Expired)));
        f.dead_letters = ALL_REASONS
            .iter()
            .map(|r| (r.name(), inner.dead.published(*r)))
            .collect();
        f.dead_letters_dropped = Lost::LABELS
            .iter()
            .zip(Lost::ALL)
            .map(|(l, c)| (*l, inner.dead.lost(c)))
            .collect();
        f.share_groups = inner.shared.len();
        f.share_members = inner.shared.members();
        f.shared_handed_over = inner.shared.handed_over.load(Relaxed);
        // Collected first: no shard lock of `sessions` is held while a session lock is taken
        // (connects take them in the other order).
        let all: Vec<_> = inner.sessions.iter().map(|e| e.value().clone()).collect();
        for session in all {
            let st = session.lock();
            let c = ClientFigures {
                client_id: session.client_id.clone(),
                connected: st.conn.is_some(),
                queued: st.out.queued_len(),
                queued_bytes: st.out.queued_bytes(),
                inflight: st.out.inflight_len(),
            };
            drop(st);
            f.connected_sessions += usize::from(c.connected);
            f.queued += c.queued;
            f.queued_bytes += c.queued_bytes;
            f.inflight += c.inflight;
            if top_n == 0 {
                continue;
            }
            // A bounded, sorted list: deepest queue first, then in-flight, then client id.
            let key =
                |c: &ClientFigures| (std::cmp::Reverse(c.queued), std::cmp::Reverse(c.inflight));
            if f.top_clients.len() == top_n {
                match f.top_clients.last() {
                    Some(last) if key(&c) < key(last) => {
                        f.top_clients.pop();
                    }
                    _ => continue,
                }
            }
            let at = f.top_clients.partition_point(|x| key(x) <= key(&c));
            f.top_clients.insert(at, c);
        }
        f
    }
}
