//! The routing core: sessions by client id, the subscription trie and the retained store.
//! L2: never imports `session/`, `protocol/` or `tokio::net`; it sees a subscriber only as a
//! `Session` with a bounded queue. Invariant: `publish` is a sync fn that never waits on another
//! client and takes no global lock: per-node trie locks, then one short lock per subscriber.

pub(crate) mod budget;
pub(crate) mod dead_letter;
pub(crate) mod figures;
pub(crate) mod queue;
pub(crate) mod registry;
pub(crate) mod retained;
pub(crate) mod shared;
pub(crate) mod trie;

use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dashmap::mapref::entry::Entry;
use dashmap::DashMap;
use tracing::{info, warn};

use crate::config::Config;
use crate::message::{min_qos, qos_from_u8, Message, QoS, SharedMessage};
use crate::store::{Op, Snapshot, Store, StoredMessage, StoredState};
use crate::topic::{ClientId, TopicFilter, TopicName};
use budget::QueueBudget;
use dead_letter::{DeadLetters, Reason};
use queue::{Bound, Delivery, InflightState, QueueFull, QueueLimits};
use registry::{ConnCtl, ConnSlot, Kick, Offer, Session};
use retained::RetainedTree;
use shared::{Outcome, SharedSubs};
use trie::SubscriptionTrie;

/// Broker-wide counters (relaxed atomics; read for logs and tests).
#[derive(Debug, Default)]
pub(crate) struct Stats {
    /// PUBLISH packets routed (including wills).
    pub(crate) published: AtomicU64,
    /// Deliveries refused because a subscriber's queue was full.
    pub(crate) dropped: AtomicU64,
    /// The same, per bound that refused them (`QueueFull` order).
    dropped_by: [AtomicU64; 4],
    /// Seconds since `start` of the last "queued bytes budget" warning, to rate-limit it.
    last_budget_warn_s: AtomicU64,
    /// Publishes dropped because the client may not publish there (e.g. `$SYS/...`).
    pub(crate) denied: AtomicU64,
    /// Seconds since `start` of the last "dropping" warning, to rate-limit it.
    last_drop_warn_s: AtomicU64,
}

/// What a connection gets when it attaches to its session.
#[derive(Debug)]
pub(crate) struct Attached {
    pub(crate) session: Arc<Session>,
    pub(crate) conn_id: u64,
    /// [MQTT-3.2.2-2, -3] a stored session was resumed.
    pub(crate) session_present: bool,
    /// Attaching changed persisted state (a persistent session discarded or created): the
    /// CONNACK reveals it.
    pub(crate) stored: bool,
    /// How the broker wakes and signals this connection.
    pub(crate) ctl: Arc<ConnCtl>,
}

/// The shared broker. Cheap to clone; all state lives in `Inner`.
#[derive(Clone)]
pub(crate) struct Broker {
    inner: Arc<Inner>,
}

struct Inner {
    /// Per-session bounds, and the global budget of queued bytes (`QueueLimits::budget`).
    limits: QueueLimits,
    queue_qos0_offline: bool,
    /// Per-node locks inside; see trie.rs.
    subs: SubscriptionTrie<Arc<Session>>,
    retained: RetainedTree<SharedMessage>,
    /// ClientId -> session. DashMap shards the lock so connects of different clients rarely
    /// contend; the publish path never touches it (the trie holds the sessions).
    sessions: DashMap<ClientId, Arc<Session>>,
    next_conn_id: AtomicU64,
    start: Instant,
    stats: Stats,
    /// Durable state; a no-op handle when persistence is off.
    store: Store,
    /// `$share/...` subscriptions, in their own trie (see shared.rs).
    shared: SharedSubs,
    /// Drops per reason, and the bounded dead-letter path.
    dead: DeadLetters,
}

thread_local! {
    /// Reused per worker thread so routing a publish does not allocate.
    static MATCHES: RefCell<Vec<(Arc<Session>, QoS)>> = const { RefCell::new(Vec::new()) };
}

impl Broker {
    pub(crate) fn new(config: &Config, store: Store) -> Broker {
        queue::start_journal_clock();
        Broker {
            inner: Arc::new(Inner {
                limits: QueueLimits {
                    max_inflight: Bound::new(usize::from(config.limits.max_inflight)),
                    max_queued_messages: Bound::new(config.limits.max_queued_messages),
                    max_queued_bytes: Bound::new(config.limits.max_queued_bytes),
                    max_queued_bytes_total: config.limits.max_queued_bytes_total,
                    budget: (config.limits.max_queued_bytes_total > 0)
                        .then(|| Arc::new(QueueBudget::new(config.limits.max_queued_bytes_total))),
                },
                queue_qos0_offline: config.session.queue_qos0_messages,
                subs: SubscriptionTrie::new(),
                retained: RetainedTree::new(),
                sessions: DashMap::new(),
                next_conn_id: AtomicU64::new(1),
                start: Instant::now(),
                stats: Stats::default(),
                store,
                shared: SharedSubs::new(&config.shared_subscriptions),
                dead: DeadLetters::new(&config.dead_letter),
            }),
        }
    }

    pub(crate) fn limits(&self) -> &QueueLimits {
        &self.inner.limits
    }

    /// A reload: every session's queue bounds (a bridge journal keeps its own) from the next
    /// message on. Lowered, nothing already queued or in flight is dropped or reordered: the
    /// queue takes no more until it is below the new bound, the window sends no more until
    /// acknowledgements bring it below.
    pub(crate) fn set_queue_bounds(
        &self,
        max_inflight: u16,
        max_queued_messages: usize,
        max_queued_bytes: usize,
    ) {
        let l = &self.inner.limits;
        l.max_inflight.set(usize::from(max_inflight));
        l.max_queued_messages.set(max_queued_messages);
        l.max_queued_bytes.set(max_queued_bytes);
    }

    /// One summary line of counters, for the log at shutdown.
    pub(crate) fn log_summary(&self) {
        let inner = &*self.inner;
        info!(
            sessions = inner.sessions.len(),
            subscriptions = inner.subs.len(),
            retained = inner.retained.len(),
            published = inner.stats.published.load(Ordering::Relaxed),
            dropped = inner.stats.dropped.load(Ordering::Relaxed),
            dropped_max_queued_messages = inner.stats.dropped_by[0].load(Ordering::Relaxed),
            dropped_max_queued_bytes = inner.stats.dropped_by[1].load(Ordering::Relaxed),
            dropped_over_fair_share = inner.stats.dropped_by[2].load(Ordering::Relaxed),
            dropped_max_queued_bytes_total = inner.stats.dropped_by[3].load(Ordering::Relaxed),
            denied = inner.stats.denied.load(Ordering::Relaxed),
            share_groups = inner.shared.len(),
            shared_handed_over = inner.shared.handed_over.load(Ordering::Relaxed),
            shared_no_member = inner.shared.no_member.load(Ordering::Relaxed),
            dropped_expired = inner.dead.count(Reason::Expired),
            dead_letters_published = inner.dead.published_total(),
            dead_letters_lost = inner.dead.lost_total(),
            "broker stopped"
        );
    }

    pub(crate) fn store(&self) -> &Store {
        &self.inner.store
    }

    /// Whether `session`'s state goes to disk.
    fn persisted(&self, session: &Session) -> bool {
        !session.clean && self.inner.store.enabled()
    }

    /// Attaches a new connection to the session of `client_id`, creating, resuming or replacing
    /// it. An existing connection with this id is kicked ([MQTT-3.1.4-2]). With CleanSession=1
    /// on either side the old session is discarded ([MQTT-3.1.2-6]); with both persistent it is
    /// resumed ([MQTT-3.1.2-4]).
    /// `keep_alive` is the connection's keep-alive, enforced at 1.5 times by `sweep_keep_alive`.
    pub(crate) fn attach(
        &self,
        client_id: &ClientId,
        clean: bool,
        keep_alive: Option<Duration>,
    ) -> Attached {
        let conn_id = self.inner.next_conn_id.fetch_add(1, Ordering::Relaxed);
        let mut stored = false;
        let expire_after_ms = keep_alive.map_or(0, |ka| (ka * 3 / 2).as_millis() as u64);
        let ctl = Arc::new(ConnCtl::new(self.clock_ms(), expire_after_ms));
        let slot = ConnSlot {
            id: conn_id,
            ctl: ctl.clone(),
        };
        let mut discarded_subs = Vec::new();
        let mut shared_backlog = Vec::new();
        let mut old_session = None;
        let (session, session_present) = match self.inner.sessions.entry(client_id.clone()) {
            Entry::Occupied(mut e) => {
                let old = e.get().clone();
                let mut st = old.lock();
                if let Some(prev) = st.conn.take() {
                    prev.ctl.kick(Kick::TakenOver { new_clean: clean });
                }
                if clean || old.clean {
                    st.discarded = true;
                    shared_backlog = self.take_shared_backlog(&old, &mut st);
                    st.out.discard_queue(&self.inner.limits);
                    discarded_subs.extend(st.subscriptions.drain().map(|(f, _)| f));
                    drop(st);
                    if self.persisted(&old) {
                        stored = true;
                        self.inner.store.submit(Op::SessionDel {
                            client: client_id.clone(),
                        });
                    }
                    let fresh = self.new_session(client_id, clean);
                    fresh.lock().conn = Some(slot);
                    e.insert(fresh.clone());
                    old_session = Some(old.clone());
                    (fresh, false)
                } else {
                    st.conn = Some(slot);
                    st.disconnected_at = None;
                    drop(st);
                    (old, true)
                }
            }
            Entry::Vacant(e) => {
                let fresh = self.new_session(client_id, clean);
                fresh.lock().conn = Some(slot);
                e.insert(fresh.clone());
                (fresh, false)
            }
        };
        if let Some(old) = &old_session {
            self.unsubscribe_all(old, &discarded_subs);
            self.redispatch(old, shared_backlog);
        }
        Attached {
            stored: stored || (!session_present && self.persisted(&session)),
            session,
            conn_id,
            session_present,
            ctl,
        }
    }

    fn new_session(&self, client_id: &ClientId, clean: bool) -> Arc<Session> {
        let s = Arc::new(Session::new(client_id.clone(), clean));
        if self.persisted(&s) {
            self.inner.store.submit(Op::SessionPut {
                client: client_id.clone(),
            });
        }
        s
    }

    /// Milliseconds since the broker started (the clock of keep-alive).
    pub(crate) fn clock_ms(&self) -> u64 {
        self.inner.start.elapsed().as_millis() as u64
    }

    /// [MQTT-3.1.2-24] kicks every connection that received nothing for 1.5 x its keep-alive.
    /// One periodic sweep for all connections instead of a timer per connection.
    pub(crate) fn sweep_keep_alive(&self) {
        let now = self.clock_ms();
        for s in self.inner.sessions.iter() {
            if let Some(c) = &s.lock().conn {
                c.ctl.check_keep_alive(now);
            }
        }
    }

    /// Wakes every attached connection (at shutdown, so each sees the cancelled token).
    pub(crate) fn wake_all(&self) {
        for s in self.inner.sessions.iter() {
            if let Some(c) = &s.lock().conn {
                c.ctl.wake.notify_one();
            }
        }
    }

    /// Detaches connection `conn_id` from its session when the connection ends. A clean session
    /// ends with it; a persistent one stays to queue messages. A connection that was taken over
    /// no longer owns the session and changes nothing.
    pub(crate) fn detach(&self, session: &Arc<Session>, conn_id: u64) {
        // Issue #12 item 3: first hand this member's backlog in each share group to the
        // others (group lock, then session lock: never a group lock under a session lock).
        let shared: Vec<TopicFilter> = {
            let st = session.lock();
            st.subscriptions
                .keys()
                .filter(|f| f.share().is_some())
                .cloned()
                .collect()
        };
        for f in &shared {
            let lost = self
                .inner
                .shared
                .hand_over(f, session, conn_id, session.clean, &self.ctx());
            for (group, msg, qos, out) in lost {
                self.note_lost(&group, &msg, qos, out);
            }
        }
        let mut st = session.lock();
        if st.conn.as_ref().map(|c| c.id) != Some(conn_id) {
            return;
        }
        st.conn = None;
        if session.clean {
            st.discarded = true;
            st.out.discard_queue(&self.inner.limits);
            let subs: Vec<TopicFilter> = st.subscriptions.drain().map(|(f, _)| f).collect();
            drop(st);
            self.unsubscribe_all(session, &subs);
            self.inner
                .sessions
                .remove_if(&session.client_id, |_, s| Arc::ptr_eq(s, session));
        } else {
            st.disconnected_at = Some(Instant::now());
            if !self.inner.queue_qos0_offline {
                st.out.drop_queued_qos0(&self.inner.limits);
            }
        }
    }

    /// Adds or replaces a subscription of `session` ([MQTT-3.8.4-3]). Returns false if the
    /// session was discarded meanwhile (a takeover raced this SUBSCRIBE).
    pub(crate) fn subscribe(&self, session: &Arc<Session>, filter: &TopicFilter, qos: QoS) -> bool {
        let mut st = session.lock();
        if st.discarded {
            return false;
        }
        st.subscriptions.insert(filter.clone(), qos);
        let shared = filter.share().is_some();
        if !shared {
            // Under the session lock, so a concurrent discard cannot miss this subscription.
            self.inner
                .subs
                .subscribe(filter, &session.client_id, session.clone(), qos);
        }
        if self.persisted(session) {
            self.inner.store.submit(Op::SubPut {
                client: session.client_id.clone(),
                filter: filter.as_arc().clone(),
                qos: qos as u8,
            });
        }
        drop(st);
        if shared {
            // Outside the session lock (group, then session). A discard that raced this either
            // saw the subscription above and leaves the group after us, or we see it here.
            self.inner.shared.join(filter, session, qos);
            if session.lock().discarded {
                self.inner.shared.leave(filter, session);
            }
        }
        true
    }

    /// Removes `filters` of a discarded session from the trie and the share groups.
    fn unsubscribe_all(&self, session: &Arc<Session>, filters: &[TopicFilter]) {
        for f in filters {
            if f.share().is_some() {
                self.inner.shared.leave(f, session);
            } else {
                self.inner.subs.unsubscribe(f, &session.client_id);
            }
        }
    }

    /// What share groups need to queue a delivery.
    fn ctx(&self) -> shared::Ctx<'_> {
        shared::Ctx {
            limits: &self.inner.limits,
            queue_qos0_offline: self.inner.queue_qos0_offline,
            store: &self.inner.store,
        }
    }

    /// Takes the messages a discarded session holds for share groups (in flight, not yet
    /// acknowledged at all, and queued), to offer them to the groups' other members.
    fn take_shared_backlog(
        &self,
        _session: &Session,
        st: &mut registry::SessionState,
    ) -> Vec<queue::Delivery> {
        st.out.take_shared(None, &self.inner.limits)
    }

    /// Offers a discarded session's shared backlog to the other members of each group.
    fn redispatch(&self, from: &Arc<Session>, backlog: Vec<queue::Delivery>) {
        let ctx = self.ctx();
        for d in backlog {
            if let (Some(group), Some(out)) = (
                d.share.clone(),
                self.inner.shared.redispatch(&d, from, &ctx),
            ) {
                self.note_lost(&group.name, &d.msg, d.qos, out);
            }
        }
    }

    /// Counts (and dead-letters) a message a share group could not place.
    fn note_lost(&self, group: &Arc<str>, msg: &SharedMessage, qos: QoS, out: Outcome) {
        match out {
            Outcome::Queued => {}
            Outcome::Full(full, session) => self.note_drop(&session, msg, qos, full),
            Outcome::NoMember => {
                self.inner.shared.no_member.fetch_add(1, Ordering::Relaxed);
                self.inner.dead.note(Reason::NoMember, group, msg, qos);
            }
        }
    }

    /// The task that publishes dead letters (with `[dead_letter] enabled`); it ends when
    /// `stop` resolves. `None` when dead letters are off.
    pub(crate) fn dead_letter_task(
        &self,
        stop: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> Option<impl std::future::Future<Output = ()> + Send + 'static> {
        if !self.inner.dead.enabled() {
            return None;
        }
        let mut rx = self.inner.dead.take_receiver()?;
        let weak = Arc::downgrade(&self.inner);
        Some(async move {
            tokio::pin!(stop);
            loop {
                let letter = tokio::select! {
                    _ = &mut stop => return,
                    l = rx.recv() => l,
                };
                let (Some(letter), Some(inner)) = (letter, weak.upgrade()) else {
                    return;
                };
                let broker = Broker { inner };
                if let Some(msg) = broker.inner.dead.letter_message(letter) {
                    broker.publish(msg);
                }
            }
        })
    }

    /// Removes a subscription; in-flight and queued messages still complete ([MQTT-3.10.4-3]).
    pub(crate) fn unsubscribe(&self, session: &Arc<Session>, filter: &TopicFilter) {
        let mut st = session.lock();
        if st.subscriptions.remove(filter).is_none() {
            return;
        }
        let shared = filter.share().is_some();
        if !shared {
            self.inner.subs.unsubscribe(filter, &session.client_id);
        }
        if self.persisted(session) {
            self.inner.store.submit(Op::SubDel {
                client: session.client_id.clone(),
                filter: filter.as_arc().clone(),
            });
        }
        drop(st);
        if shared {
            self.inner.shared.leave(filter, session);
        }
    }

    /// Queues the retained messages matching `filter` for `session`, with RETAIN=1
    /// ([MQTT-3.3.1-8]) at min(retained QoS, granted QoS). They bypass the queue bound: they
    /// are already held by the retained store, and dropping them would lose state silently.
    pub(crate) fn send_retained(&self, session: &Arc<Session>, filter: &TopicFilter, granted: QoS) {
        if filter.share().is_some() {
            return; // retained messages are not sent on a shared subscription
        }
        let mut found = Vec::new();
        self.inner.retained.matching(filter, &mut found);
        for msg in found {
            let qos = min_qos(msg.qos, granted);
            let d = Delivery {
                msg,
                qos,
                retain: true,
                seq: 0,
                journaled_at: 0,
                share: None,
            };
            let limits = session.limits(&self.inner.limits);
            session.offer(d, limits, true, true, &self.inner.store);
        }
    }

    /// Routes one message: updates the retained store if RETAIN is set, then queues one
    /// delivery per matching session at the highest granted QoS ([MQTT-3.3.5-1]), with
    /// RETAIN=0 ([MQTT-3.3.1-9]). Never waits: a full queue drops for that subscriber only.
    pub(crate) fn publish(&self, msg: SharedMessage) {
        let inner = &*self.inner;
        inner.stats.published.fetch_add(1, Ordering::Relaxed);
        if msg.retain {
            if msg.payload.is_empty() {
                // [MQTT-3.3.1-10] a zero-length retained message clears the topic...
                if inner.retained.remove(&msg.topic) {
                    inner.store.submit(Op::RetainDel {
                        topic: msg.topic.as_arc().clone(),
                    });
                }
            } else {
                // [MQTT-3.3.1-5] ...any other replaces it.
                inner.retained.set(&msg.topic, msg.clone());
                // $SYS values are rebuilt every interval: kept in memory only.
                if !msg.topic.as_str().starts_with("$SYS/") {
                    inner.store.submit(Op::RetainPut {
                        msg: StoredMessage {
                            topic: msg.topic.as_arc().clone(),
                            payload: msg.payload.clone(),
                            qos: msg.qos as u8,
                            retain: true,
                        },
                    });
                }
            }
        }
        MATCHES.with(|cell| {
            let Ok(mut matches) = cell.try_borrow_mut() else {
                // Re-entrant publish on this thread: use a fresh buffer.
                let mut fresh = Vec::new();
                self.route(&msg, &mut fresh);
                return;
            };
            self.route(&msg, &mut matches);
            if matches.capacity() > 4096 {
                matches.shrink_to(4096);
            }
        });
    }

    fn route(&self, msg: &SharedMessage, matches: &mut Vec<(Arc<Session>, QoS)>) {
        let inner = &*self.inner;
        inner.subs.matches(&msg.topic, matches);
        for (session, granted) in matches.drain(..) {
            // Issue #11 item 3: never back to the bridge it came from (loop prevention).
            if msg.origin == session.uid {
                continue;
            }
            let d = Delivery {
                msg: msg.clone(),
                qos: min_qos(msg.qos, granted),
                // [MQTT-3.3.1-9] RETAIN=0, except to a bridge: as published (as Mosquitto).
                retain: msg.retain && session.bridge.load(Ordering::Relaxed),
                seq: 0,
                journaled_at: 0,
                share: None,
            };
            let qos = d.qos;
            let offer = session.offer(
                d,
                session.limits(&inner.limits),
                inner.queue_qos0_offline,
                false,
                &inner.store,
            );
            if let Offer::Full(full) = offer {
                self.note_drop(&session, msg, qos, full);
            }
        }
        if inner.shared.len() != 0 {
            inner.shared.route(msg, &self.ctx(), |group, out| {
                self.note_lost(&group.name, msg, msg.qos, out)
            });
        }
    }

    /// Counts a drop; a QoS 1/2 drop also warns, naming the bound that refused it, at most once
    /// a second (QoS 0 drops are only counted, as Mosquitto does: QoS 0 promises nothing).
    fn note_drop(&self, session: &Session, msg: &SharedMessage, qos: QoS, full: QueueFull) {
        let inner = &*self.inner;
        if session.is_journal() {
            // Issue #11 item 2: a bridge journal refusing a message (its own bound or the
            // budget) is `journal_full`, named by the bridge: `$DLQ/journal_full/NAME/...`.
            let skip = session
                .client_id
                .strip_prefix(registry::JOURNAL_PREFIX)
                .map_or(0, |_| registry::JOURNAL_PREFIX.len());
            inner
                .dead
                .note_as(Reason::JournalFull, &session.client_id, skip, msg, qos);
        } else {
            inner
                .dead
                .note(Reason::from(full), &session.client_id, msg, qos);
        }
        let total = inner.stats.dropped.fetch_add(1, Ordering::Relaxed) + 1;
        inner.stats.dropped_by[full as usize].fetch_add(1, Ordering::Relaxed);
        if matches!(full, QueueFull::FairShare | QueueFull::TotalBytes) {
            self.note_budget_drop(session, full, total);
            return;
        }
        if qos == QoS::AtMostOnce {
            return;
        }
        let now_s = inner.start.elapsed().as_secs() + 1;
        let last = inner.stats.last_drop_warn_s.load(Ordering::Relaxed);
        if now_s > last
            && inner
                .stats
                .last_drop_warn_s
                .compare_exchange(last, now_s, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            warn!(
                client_id = %session.client_id,
                session_dropped = session.dropped.load(Ordering::Relaxed),
                total_dropped = total,
                limit = %full.key_for(session),
                limit_value = full.value(session.limits(&inner.limits)),
                "subscriber queue full: dropping messages (warning at most once a second)"
            );
        }
    }

    /// A drop because the global budget of queued bytes is (nearly) used up: a broker-wide
    /// condition, so it warns at any QoS, at most once a second, with the budget's state.
    fn note_budget_drop(&self, session: &Session, full: QueueFull, total: u64) {
        let inner = &*self.inner;
        let now_s = inner.start.elapsed().as_secs() + 1;
        let last = inner.stats.last_budget_warn_s.load(Ordering::Relaxed);
        if now_s <= last
            || inner
                .stats
                .last_budget_warn_s
                .compare_exchange(last, now_s, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        let Some(budget) = &inner.limits.budget else {
            return;
        };
        let (queued_bytes_total, clients_queueing, limit_value) = budget.usage();
        let why = match full {
            QueueFull::FairShare => "over its fair share of the nearly used budget",
            _ => "budget used up",
        };
        warn!(
            client_id = %session.client_id,
            why,
            fair_share_bytes = budget.fair_share(false),
            queued_bytes_total,
            clients_queueing,
            dropped_over_fair_share = inner.stats.dropped_by[QueueFull::FairShare as usize].load(Ordering::Relaxed),
            dropped_budget_full = inner.stats.dropped_by[QueueFull::TotalBytes as usize].load(Ordering::Relaxed),
            total_dropped = total,
            limit = %full.key(),
            limit_value,
            "queued bytes budget reached: dropping messages (warning at most once a second)"
        );
    }

    /// Counts a publish the client was not allowed to make.
    pub(crate) fn note_denied(&self) {
        self.inner.stats.denied.fetch_add(1, Ordering::Relaxed);
    }

    /// Removes persistent sessions disconnected for longer than `max_age`; returns how many.
    pub(crate) fn expire_sessions(&self, max_age: Duration) -> usize {
        let mut expired = Vec::new();
        self.inner.sessions.retain(|_, s| {
            let mut st = s.lock();
            let old =
                st.conn.is_none() && st.disconnected_at.is_some_and(|t| t.elapsed() >= max_age);
            if old {
                st.discarded = true;
                // Shared messages go to the group's other members; the rest are dead letters.
                let shared = st.out.take_shared(None, &self.inner.limits);
                let rest: Vec<(SharedMessage, QoS)> = st
                    .out
                    .deliveries()
                    .map(|d| (d.msg.clone(), d.qos))
                    .collect();
                st.out.discard_queue(&self.inner.limits);
                let subs: Vec<TopicFilter> = st.subscriptions.drain().map(|(f, _)| f).collect();
                expired.push((s.clone(), subs, shared, rest));
                if !s.clean {
                    self.inner.store.submit(Op::SessionDel {
                        client: s.client_id.clone(),
                    });
                }
            }
            !old
        });
        let count = expired.len();
        for (s, subs, shared, rest) in expired {
            self.unsubscribe_all(&s, &subs);
            self.redispatch(&s, shared);
            let queued = rest.len();
            for (msg, qos) in rest {
                self.inner
                    .dead
                    .note(Reason::Expired, &s.client_id, &msg, qos);
            }
            info!(client_id = %s.client_id, dropped = queued, "persistent session expired");
        }
        count
    }

    /// Rebuilds persistent sessions and retained messages loaded from disk (before the
    /// listener accepts). Records that no longer validate are logged and skipped.
    pub(crate) fn restore(&self, snapshot: Snapshot) {
        let now = Instant::now();
        let mut skipped = 0usize;
        for r in snapshot.retained {
            match TopicName::parse(&r.topic) {
                Ok(topic) => {
                    let msg = Arc::new(Message {
                        topic: topic.clone(),
                        payload: r.payload,
                        qos: qos_from_u8(r.qos).unwrap_or(QoS::AtMostOnce),
                        retain: true,
                        from: None,
                        origin: 0,
                    });
                    self.inner.retained.set(&topic, msg);
                }
                Err(_) => skipped += 1,
            }
        }
        for (id, stored) in snapshot.sessions {
            let client_id: ClientId = id.into();
            let session = Arc::new(Session::new(client_id.clone(), false));
            let mut shared = Vec::new();
            {
                let mut st = session.lock();
                st.disconnected_at = Some(now);
                for (f, q) in stored.subscriptions {
                    match (TopicFilter::parse(&f), qos_from_u8(q)) {
                        (Ok(f), Some(q)) if f.share().is_some() => {
                            shared.push((f.clone(), q));
                            st.subscriptions.insert(f, q);
                        }
                        (Ok(f), Some(q)) => {
                            self.inner
                                .subs
                                .subscribe(&f, &client_id, session.clone(), q);
                            st.subscriptions.insert(f, q);
                        }
                        _ => skipped += 1,
                    }
                }
                for e in stored.messages {
                    st.last_seq = st.last_seq.max(e.seq);
                    let (Ok(topic), Some(qos)) =
                        (TopicName::parse(&e.msg.topic), qos_from_u8(e.msg.qos))
                    else {
                        skipped += 1;
                        continue;
                    };
                    let d = Delivery {
                        msg: Arc::new(Message {
                            topic,
                            payload: e.msg.payload,
                            qos,
                            retain: e.msg.retain,
                            from: None,
                            origin: 0,
                        }),
                        qos,
                        retain: e.msg.retain,
                        seq: e.seq,
                        journaled_at: 0,
                        share: None,
                    };
                    match e.state {
                        StoredState::Queued => {
                            let _ = st.out.push(d, &self.inner.limits, true);
                        }
                        StoredState::Sent(p) => st.out.restore_inflight(p, d, InflightState::Sent),
                        StoredState::Released(p) => {
                            st.out.restore_inflight(p, d, InflightState::Released)
                        }
                    }
                }
                st.inbound_qos2.extend(stored.inbound_qos2);
            }
            for (f, q) in &shared {
                self.inner.shared.join(f, &session, *q);
            }
            self.inner.sessions.insert(client_id, session);
        }
        if skipped > 0 {
            warn!(
                records = skipped,
                "skipped stored records that no longer validate"
            );
        }
    }
}
