//! Shared subscriptions (`$share/{group}/{filter}`): share groups, their members and the
//! strategies that pick the one member that receives each message.
//! L2: uses L0 and the broker's `registry`, `queue` and `trie`; `Broker` only calls in here.
//! Invariants: a group is keyed by its whole `$share/{group}/{filter}` string (Mosquitto's
//! identity: the same group name on two filters is two groups) and sits in its own trie, so the
//! plain-subscription path is untouched; dispatch takes the group's read lock and then one
//! session lock at a time, membership changes and hand-overs take the write lock: lock order is
//! always group, then session, and nothing holds a session lock while taking a group lock. A
//! hand-over runs under the write lock, so a leaving member's backlog reaches the new owner of
//! its keys before any message published after it.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

use dashmap::DashMap;

use super::queue::{Delivery, QueueFull, QueueLimits};
use super::registry::{Offer, Session};
use super::trie::{read, write, SubscriptionTrie};
use crate::config::{ShareStrategy, SharedConfig};
use crate::message::{min_qos, QoS, SharedMessage};
use crate::store::{Op, Store};
use crate::topic::TopicFilter;

/// One member of a group: a session and the QoS it was granted.
struct Member {
    session: Arc<Session>,
    qos: QoS,
    /// Hash of the client id: the member's side of every rendezvous score.
    hash: u64,
}

/// A share group: `$share/{name}/{filter}`.
pub(crate) struct Group {
    /// The name, the `client_id` level of a `no_member` dead letter.
    pub(crate) name: Arc<str>,
    strategy: ShareStrategy,
    members: RwLock<Members>,
    /// Round robin's cursor: one atomic per group, no lock per message.
    cursor: AtomicUsize,
}

#[derive(Default)]
struct Members {
    list: Vec<Member>,
    /// Set when the group is removed (empty) under this lock; a join that sees it retries.
    dead: bool,
}

impl std::fmt::Debug for Group {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Group").field("name", &self.name).finish()
    }
}

/// What the broker needs to queue a delivery.
pub(crate) struct Ctx<'a> {
    pub(crate) limits: &'a QueueLimits,
    pub(crate) queue_qos0_offline: bool,
    pub(crate) store: &'a Store,
}

/// What became of one message offered to a group.
#[derive(Debug)]
pub(crate) enum Outcome {
    Queued,
    /// Every member that could take it is full: the bound of the last one tried (for the hash
    /// strategies, of the member that owns the key: it never moves to another member).
    Full(QueueFull, Arc<Session>),
    /// No member could take it (none left, or none that may or can queue it).
    NoMember,
}

/// The share groups of the broker.
pub(crate) struct SharedSubs {
    /// `{filter}` -> groups, keyed by the whole `$share/...` string.
    trie: SubscriptionTrie<Arc<Group>>,
    groups: DashMap<Arc<str>, Arc<Group>>,
    /// Number of groups: the publish path skips the shared trie while it is 0.
    active: AtomicUsize,
    default: ShareStrategy,
    overrides: HashMap<String, ShareStrategy>,
    /// Messages handed from a leaving member to another one.
    pub(crate) handed_over: AtomicU64,
    /// Messages no member could take.
    pub(crate) no_member: AtomicU64,
}

thread_local! {
    /// Reused per worker thread so routing to groups does not allocate.
    static GROUPS: RefCell<Vec<(Arc<Group>, QoS)>> = const { RefCell::new(Vec::new()) };
    /// `random`'s generator (xorshift), seeded per thread.
    static RNG: Cell<u64> = Cell::new(seed());
}

fn seed() -> u64 {
    std::collections::hash_map::RandomState::new().hash_one(0u64) | 1
}

fn random() -> u64 {
    RNG.with(|r| {
        let mut x = r.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        r.set(x);
        x
    })
}

/// FNV-1a: a stable hash of a key (the same on every run, so keys stay put across restarts).
fn hash_bytes(b: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &x in b {
        h ^= u64::from(x);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// SplitMix64's finalizer: spreads a combined key and member hash into a score.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The rendezvous (highest random weight) score of `member` for a key: each key goes to the
/// member with the highest score, so a member joining or leaving moves only its own keys.
fn score(key: u64, member: u64) -> u64 {
    mix(key ^ member.rotate_left(17))
}

impl SharedSubs {
    pub(crate) fn new(config: &SharedConfig) -> SharedSubs {
        SharedSubs {
            trie: SubscriptionTrie::new(),
            groups: DashMap::new(),
            active: AtomicUsize::new(0),
            default: config.strategy,
            overrides: config.groups.iter().map(|(k, v)| (k.clone(), *v)).collect(),
            handed_over: AtomicU64::new(0),
            no_member: AtomicU64::new(0),
        }
    }

    /// Number of groups.
    pub(crate) fn len(&self) -> usize {
        self.active.load(Ordering::Relaxed)
    }

    /// Members over all groups (a scrape: one read lock per group, never on the message path).
    pub(crate) fn members(&self) -> usize {
        let groups: Vec<Arc<Group>> = self.groups.iter().map(|g| g.value().clone()).collect();
        groups.iter().map(|g| read(&g.members).list.len()).sum()
    }

    /// Adds `session` to the group of `filter` (a `$share/...` filter) with `qos`, or changes
    /// its QoS. Never called under a session lock (lock order: group, then session).
    pub(crate) fn join(&self, filter: &TopicFilter, session: &Arc<Session>, qos: QoS) {
        let Some((name, inner)) = filter.share() else {
            return;
        };
        loop {
            let group = self
                .groups
                .entry(filter.as_arc().clone())
                .or_insert_with(|| {
                    let group = Arc::new(Group {
                        name: name.into(),
                        strategy: self.overrides.get(name).copied().unwrap_or(self.default),
                        members: RwLock::new(Members::default()),
                        cursor: AtomicUsize::new(0),
                    });
                    let inner = TopicFilter::parse(inner)
                        .expect("the filter part of a valid $share filter is a valid filter");
                    // Under the map's shard lock, so a removal of the same key cannot interleave.
                    self.trie
                        .subscribe(&inner, filter.as_arc(), group.clone(), QoS::ExactlyOnce);
                    self.active.fetch_add(1, Ordering::Relaxed);
                    group
                })
                .clone();
            let mut members = write(&group.members);
            if members.dead {
                continue; // removed meanwhile: join the new one
            }
            let hash = mix(hash_bytes(session.client_id.as_bytes()));
            match members
                .list
                .iter_mut()
                .find(|m| Arc::ptr_eq(&m.session, session))
            {
                Some(m) => m.qos = qos,
                None => members.list.push(Member {
                    session: session.clone(),
                    qos,
                    hash,
                }),
            }
            return;
        }
    }

    /// Removes `session` from the group of `filter`; its queued and in-flight messages stay with
    /// it ([MQTT-3.10.4-3]: an unsubscribe lets them complete). Removes the group once empty.
    pub(crate) fn leave(&self, filter: &TopicFilter, session: &Arc<Session>) {
        let Some(group) = self.groups.get(filter.as_arc()).map(|g| g.clone()) else {
            return;
        };
        let empty = {
            let mut members = write(&group.members);
            members.list.retain(|m| !Arc::ptr_eq(&m.session, session));
            members.list.is_empty()
        };
        if empty {
            self.remove_if_empty(filter);
        }
    }

    fn remove_if_empty(&self, filter: &TopicFilter) {
        let removed = self.groups.remove_if(filter.as_arc(), |_, g| {
            let mut members = write(&g.members);
            if members.list.is_empty() {
                members.dead = true;
                if let Some((_, inner)) = filter.share() {
                    if let Ok(inner) = TopicFilter::parse(inner) {
                        self.trie.unsubscribe(&inner, filter.as_arc());
                    }
                }
                true
            } else {
                false
            }
        });
        if removed.is_some() {
            self.active.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// The connection `conn_id` of `session` is ending: its unacknowledged and queued messages
    /// of the group of `filter` go to the remaining online members, under the group's write
    /// lock (so in order per key, before anything published later). A member that `leaves`
    /// (a clean session) is removed first; a persistent one stays a member (offline) and keeps
    /// its backlog when no other member is online. Returns the messages no member could take.
    pub(crate) fn hand_over(
        &self,
        filter: &TopicFilter,
        session: &Arc<Session>,
        conn_id: u64,
        leaves: bool,
        ctx: &Ctx<'_>,
    ) -> Vec<(Arc<str>, SharedMessage, QoS, Outcome)> {
        let mut lost = Vec::new();
        let Some(group) = self.groups.get(filter.as_arc()).map(|g| g.clone()) else {
            return lost;
        };
        let empty = {
            let mut members = write(&group.members);
            let others_online = members
                .list
                .iter()
                .any(|m| !Arc::ptr_eq(&m.session, session) && m.session.lock().conn.is_some());
            let backlog = {
                let mut st = session.lock();
                if st.conn.as_ref().map(|c| c.id) != Some(conn_id) {
                    return lost; // taken over: the new connection owns the session
                }
                if !others_online && !leaves {
                    return lost; // with no member online, the backlog stays where it is
                }
                let taken = st.out.take_shared(Some(&group), session.limits(ctx.limits));
                for d in &taken {
                    if d.seq != 0 {
                        ctx.store.submit(Op::MsgDel {
                            client: session.client_id.clone(),
                            seq: d.seq,
                        });
                    }
                }
                taken
            };
            if leaves {
                members.list.retain(|m| !Arc::ptr_eq(&m.session, session));
            }
            for d in backlog {
                let qos = d.qos;
                self.handed_over.fetch_add(1, Ordering::Relaxed);
                let out = group.dispatch(&members.list, &d.msg, Some(session), ctx);
                if !matches!(out, Outcome::Queued) {
                    lost.push((group.name.clone(), d.msg, qos, out));
                }
            }
            members.list.is_empty()
        };
        if empty {
            self.remove_if_empty(filter);
        }
        lost
    }

    /// Offers `d` (taken from a member that is gone) to the other members of its group, in no
    /// particular order with later messages: for sessions discarded or expired, where no
    /// connection hands over.
    pub(crate) fn redispatch(
        &self,
        d: &Delivery,
        from: &Arc<Session>,
        ctx: &Ctx<'_>,
    ) -> Option<Outcome> {
        let group = d.share.as_ref()?;
        self.handed_over.fetch_add(1, Ordering::Relaxed);
        let members = read(&group.members);
        Some(group.dispatch(&members.list, &d.msg, Some(from), ctx))
    }

    /// Offers `msg` to each group whose filter matches it, calling `lost` for what a group could
    /// not place.
    pub(crate) fn route(
        &self,
        msg: &SharedMessage,
        ctx: &Ctx<'_>,
        mut lost: impl FnMut(&Group, Outcome),
    ) {
        GROUPS.with(|cell| {
            let mut fresh = Vec::new();
            let mut borrowed = cell.try_borrow_mut();
            let groups = match &mut borrowed {
                Ok(b) => &mut **b,
                Err(_) => &mut fresh, // re-entrant on this thread
            };
            self.trie.matches(&msg.topic, groups);
            for (group, _) in groups.drain(..) {
                let members = read(&group.members);
                match group.dispatch(&members.list, msg, None, ctx) {
                    Outcome::Queued => {}
                    out => {
                        drop(members);
                        lost(&group, out);
                    }
                }
            }
        });
    }
}

impl Group {
    /// Queues `msg` on one member of `members` (the group's, read- or write-locked by the
    /// caller), skipping `exclude`: the strategy's member if it is online, else the next
    /// online one in the strategy's order; with no member online, the first by the strategy
    /// that queues offline (a persistent session).
    fn dispatch(
        self: &Arc<Self>,
        members: &[Member],
        msg: &SharedMessage,
        exclude: Option<&Arc<Session>>,
        ctx: &Ctx<'_>,
    ) -> Outcome {
        let n = members.len();
        if n == 0 {
            return Outcome::NoMember;
        }
        let hashed = matches!(
            self.strategy,
            ShareStrategy::HashTopic | ShareStrategy::HashClient
        );
        // Issue #11 item 3: never back to the bridge a message came from.
        let excluded = |m: &Member| {
            exclude.is_some_and(|s| Arc::ptr_eq(&m.session, s)) || m.session.uid == msg.origin
        };
        let offer = |m: &Member, online_only: bool| {
            let d = Delivery {
                msg: msg.clone(),
                qos: min_qos(msg.qos, m.qos),
                retain: false,
                seq: 0,
                journaled_at: 0,
                share: Some(self.clone()),
            };
            m.session.offer_to(
                d,
                m.session.limits(ctx.limits),
                ctx.queue_qos0_offline,
                false,
                ctx.store,
                online_only,
            )
        };
        let mut full = None;
        if self.strategy == ShareStrategy::LeastInflight {
            // The online member with the least in flight and queued whose queue has room.
            let best = members
                .iter()
                .filter(|m| !excluded(m))
                .filter_map(|m| {
                    let st = m.session.lock();
                    let usable = st.conn.is_some() && !st.out.is_full(m.session.limits(ctx.limits));
                    usable.then(|| (st.out.load(), m))
                })
                .min_by_key(|(load, _)| *load);
            if let Some((_, m)) = best {
                match offer(m, true) {
                    Offer::Queued => return Outcome::Queued,
                    Offer::Full(f) => full = Some((f, m.session.clone())),
                    Offer::Skipped | Offer::Offline => {}
                }
            }
        }
        let order = Order::new(self, members, msg);
        // Pass 1: online members, in the strategy's order.
        for i in order.iter() {
            let m = &members[i];
            if excluded(m) {
                continue;
            }
            match offer(m, true) {
                Offer::Queued => return Outcome::Queued,
                Offer::Full(f) => {
                    // The owner of a key is full: the key does not move (order over delivery).
                    if hashed {
                        return Outcome::Full(f, m.session.clone());
                    }
                    full = Some((f, m.session.clone()));
                }
                Offer::Skipped | Offer::Offline => {}
            }
        }
        if let Some((f, id)) = full {
            return Outcome::Full(f, id);
        }
        // Pass 2: no member online: the first by the strategy that queues while offline.
        for i in order.iter() {
            let m = &members[i];
            if excluded(m) {
                continue;
            }
            match offer(m, false) {
                Offer::Queued => return Outcome::Queued,
                Offer::Full(f) => return Outcome::Full(f, m.session.clone()),
                Offer::Skipped | Offer::Offline => {}
            }
        }
        Outcome::NoMember
    }
}

/// The order in which a strategy tries the members (indices into the member list).
enum Order<'a> {
    /// Every member once, starting at `start` (round robin, random, least in-flight's fallback).
    Ring { start: usize, n: usize },
    /// By descending rendezvous score for `key` (the hash strategies).
    Rendezvous { key: u64, members: &'a [Member] },
}

impl<'a> Order<'a> {
    fn new(group: &Group, members: &'a [Member], msg: &SharedMessage) -> Order<'a> {
        let n = members.len();
        match group.strategy {
            ShareStrategy::RoundRobin | ShareStrategy::LeastInflight => Order::Ring {
                start: group.cursor.fetch_add(1, Ordering::Relaxed) % n,
                n,
            },
            ShareStrategy::Random => Order::Ring {
                start: (random() % n as u64) as usize,
                n,
            },
            ShareStrategy::HashTopic => Order::Rendezvous {
                key: hash_bytes(msg.topic.as_str().as_bytes()),
                members,
            },
            ShareStrategy::HashClient => Order::Rendezvous {
                key: hash_bytes(msg.from.as_deref().unwrap_or("").as_bytes()),
                members,
            },
        }
    }

    /// The indices in order. Rendezvous order is found by repeated selection (no allocation;
    /// the first pick, the usual case, costs one score per member).
    fn iter(&self) -> impl Iterator<Item = usize> + '_ {
        let mut step = 0usize;
        let mut prev: Option<(u64, usize)> = None;
        std::iter::from_fn(move || match self {
            Order::Ring { start, n } => {
                if step >= *n {
                    return None;
                }
                step += 1;
                Some((start + step - 1) % n)
            }
            Order::Rendezvous { key, members } => {
                let next = members
                    .iter()
                    .enumerate()
                    .map(|(i, m)| (score(*key, m.hash), i))
                    .filter(|c| prev.is_none_or(|p| *c < p))
                    .max()?;
                prev = Some(next);
                Some(next.1)
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member_hashes(ids: &[&str]) -> Vec<u64> {
        ids.iter()
            .map(|id| mix(hash_bytes(id.as_bytes())))
            .collect()
    }

    fn owner(key: &str, hashes: &[(usize, u64)]) -> usize {
        let k = hash_bytes(key.as_bytes());
        hashes
            .iter()
            .max_by_key(|(_, h)| score(k, *h))
            .map(|(i, _)| *i)
            .expect("members")
    }

    /// issue #12 item 2: rendezvous hashing: when a member leaves, only its own keys move; when
    /// one joins, keys move only to it; keys spread over the members.
    #[test]
    fn rendezvous_moves_only_the_leaving_or_joining_members_keys() {
        let ids = ["m0", "m1", "m2", "m3"];
        let all: Vec<(usize, u64)> = member_hashes(&ids).into_iter().enumerate().collect();
        let without_2: Vec<(usize, u64)> = all.iter().copied().filter(|(i, _)| *i != 2).collect();
        let mut per_member = [0usize; 4];
        for k in 0..4000 {
            let key = format!("device/{k}");
            let before = owner(&key, &all);
            per_member[before] += 1;
            let after = owner(&key, &without_2);
            if before != 2 {
                assert_eq!(before, after, "{key} moved though its member stayed");
            }
            // Joining is leaving backwards.
            assert!(after != 2);
        }
        for (i, n) in per_member.iter().enumerate() {
            assert!((700..1300).contains(n), "member {i} owns {n} of 4000 keys");
        }
    }

    /// issue #12 item 2: the rendezvous order visits every member once, best score first.
    #[test]
    fn rendezvous_order_visits_each_member_once() {
        let members: Vec<Member> = ["a", "b", "c", "d", "e"]
            .iter()
            .map(|id| Member {
                session: Arc::new(Session::new((*id).into(), true)),
                qos: QoS::AtLeastOnce,
                hash: mix(hash_bytes(id.as_bytes())),
            })
            .collect();
        let key = hash_bytes(b"t/1");
        let order = Order::Rendezvous {
            key,
            members: &members,
        };
        let seen: Vec<usize> = order.iter().collect();
        let mut sorted = seen.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, vec![0, 1, 2, 3, 4]);
        let scores: Vec<u64> = seen.iter().map(|&i| score(key, members[i].hash)).collect();
        assert!(scores.windows(2).all(|w| w[0] > w[1]), "{scores:?}");
        let ring = Order::Ring { start: 3, n: 5 };
        assert_eq!(ring.iter().collect::<Vec<_>>(), vec![3, 4, 0, 1, 2]);
    }
}
