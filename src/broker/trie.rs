//! The subscription trie: which client subscribed to which topic filter, matched against the
//! topic of every PUBLISH. L2: uses only L0 (`topic`, `message`).
//! Locks are per node (no global lock) and always taken top-down: a parent's children, then the
//! node's children, then the node's subscribers. Invariant: a node is detached from its parent only
//! after being marked `dead` while empty and exclusively locked, and every insertion checks `dead`
//! under the lock it inserts under, so a subscription never lands in a detached node.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::Hash;
use std::str::Split;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use crate::message::QoS;
use crate::topic::{ClientId, TopicFilter, TopicName};

/// Read-locks `lock`, ignoring poison. Every update under our locks is a single map operation,
/// which a panic cannot leave half done, so a poisoned map is still consistent; recovering keeps
/// one panicking thread from taking routing down for everyone. Shared with `retained`.
pub(super) fn read<T>(lock: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(PoisonError::into_inner)
}

/// Write-locks `lock`, ignoring poison (see [`read`]).
pub(super) fn write<T>(lock: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(PoisonError::into_inner)
}

/// The subscriptions of all clients, keyed by topic filter level by level.
///
/// `V` is what a match hands back (the broker stores `Arc<Session>`); it is cloned under a node's
/// read lock, so it must be cheap to clone and its `Clone` must not call back into the trie.
pub(crate) struct SubscriptionTrie<V> {
    /// Never pruned, so it needs no `Arc` and walks borrow it instead of bumping a shared count.
    root: Node<V>,
    /// Number of (client, filter) pairs; changed under the leaf's subscriber lock.
    len: AtomicUsize,
}

struct Node<V> {
    children: RwLock<Children<V>>,
    subscribers: RwLock<SmallMap<ClientId, (V, QoS)>>,
    /// Set once, by `prune`, while it holds the parent's children lock and both of this node's
    /// locks exclusively and both are empty. Inserters check it under the lock they insert under
    /// and retry from the root if it is set: their insertion then either happened before the
    /// pruner looked (so the node was not empty and is kept) or sees the mark.
    dead: AtomicBool,
}

/// The children of a node. The wildcard levels have their own slots, so the publish walk reaches
/// them without a lookup.
struct Children<V> {
    exact: SmallMap<Box<str>, Arc<Node<V>>>,
    plus: Option<Arc<Node<V>>>,
    hash: Option<Arc<Node<V>>>,
}

/// A map kept as a short vector until it outgrows `SMALL_MAX` entries, then a boxed `HashMap`.
/// Most nodes have one child or one subscriber: a vector of one is a single 24-32 byte allocation
/// and scanning a few keys beats hashing them, while a `HashMap` costs 48 bytes inline plus an
/// allocation of four buckets at least.
enum SmallMap<K, T> {
    Few(Vec<(K, T)>),
    // Boxed so the common `Few` case stays 24 bytes inline instead of 48; the extra indirection
    // is paid only by nodes with more than `SMALL_MAX` entries.
    #[allow(
        clippy::box_collection,
        reason = "keeps every small node 24 bytes leaner"
    )]
    Many(Box<HashMap<K, T>>),
}

/// Above this many entries a `SmallMap` hashes; at a quarter of it, it goes back to a vector.
const SMALL_MAX: usize = 8;

/// A node still to visit in the publish walk, with the topic levels left below it.
type Cursor<'t, V> = (Arc<Node<V>>, Split<'t, char>);

/// The nodes whose subscribers match a topic. Holding the first one inline keeps the common case
/// (exactly one matching node) free of allocation.
struct Hits<V> {
    first: Option<Arc<Node<V>>>,
    more: Vec<Arc<Node<V>>>,
}

impl<V: Clone> SubscriptionTrie<V> {
    /// An empty trie.
    pub(crate) fn new() -> Self {
        SubscriptionTrie {
            root: Node::default(),
            len: AtomicUsize::new(0),
        }
    }

    /// Adds `client`'s subscription on exactly `filter` with `qos`, or replaces it (new QoS and
    /// value; [MQTT-3.8.4-3] a repeated SUBSCRIBE replaces the existing subscription). Returns
    /// true if it replaced one.
    pub(crate) fn subscribe(
        &self,
        filter: &TopicFilter,
        client: &ClientId,
        value: V,
        qos: QoS,
    ) -> bool {
        loop {
            let Some(leaf) = self.leaf_or_create(filter) else {
                continue; // met a pruned node on the way down
            };
            let mut subscribers = write(&leaf.subscribers);
            // Checked under the lock we insert under (see `Node::dead`).
            if leaf.dead.load(Ordering::Relaxed) {
                continue;
            }
            let old = subscribers.insert(Arc::clone(client), (value, qos));
            if old.is_none() {
                self.len.fetch_add(1, Ordering::Relaxed);
            }
            drop(subscribers);
            // `old` (a session handle in the broker) is dropped here, after the lock.
            return old.is_some();
        }
    }

    /// Removes `client`'s subscription on exactly `filter`; returns whether it existed. Prunes the
    /// nodes it leaves empty.
    pub(crate) fn unsubscribe(&self, filter: &TopicFilter, client: &ClientId) -> bool {
        'retry: loop {
            // The path from the root's child down to the leaf, with each node's level.
            let mut path: Vec<(Arc<Node<V>>, &str)> = Vec::new();
            for level in filter.levels() {
                let parent = path.last().map_or(&self.root, |(node, _)| &**node);
                let children = read(&parent.children);
                let child = match children.get(level) {
                    Some(child) => Arc::clone(child),
                    // A pruned parent has lost its children: look again from the root.
                    None if parent.dead.load(Ordering::Relaxed) => continue 'retry,
                    None => return false,
                };
                drop(children);
                path.push((child, level));
            }
            let (leaf, _) = path.last().expect("a filter has at least one level");
            let mut subscribers = write(&leaf.subscribers);
            if leaf.dead.load(Ordering::Relaxed) {
                continue;
            }
            let Some(old) = subscribers.remove(client) else {
                return false;
            };
            self.len.fetch_sub(1, Ordering::Relaxed);
            let now_empty = subscribers.is_empty();
            drop(subscribers);
            drop(old);
            if now_empty {
                self.prune(&path);
            }
            return true;
        }
    }

    /// Appends every matching subscriber to `out`, once per client, at the highest QoS among that
    /// client's matching filters [MQTT-3.3.5-1].
    pub(crate) fn matches(&self, topic: &TopicName, out: &mut Vec<(V, QoS)>) {
        let mut hits = Hits {
            first: None,
            more: Vec::new(),
        };
        // Branches not taken yet; only allocates when both a level and '+' match.
        let mut pending: Vec<Cursor<'_, V>> = Vec::new();
        let mut levels = topic.levels();
        let first = levels.next().expect("split yields at least one level");
        // [MQTT-4.7.2-1] '+' and '#' as the first level never match a topic starting with '$'.
        let mut next = read(&self.root.children).descend(
            first,
            levels,
            !topic.is_dollar(),
            &mut hits,
            &mut pending,
        );
        // Iterative, not recursive: filters may be 32k levels deep, which would blow the stack.
        while let Some((node, mut rest)) = next.or_else(|| pending.pop()) {
            let children = read(&node.children);
            next = match rest.next() {
                Some(level) => children.descend(level, rest, true, &mut hits, &mut pending),
                None => {
                    // [MQTT-4.7.1-2] "sport/#" also matches "sport".
                    if let Some(hash) = &children.hash {
                        hits.push(hash);
                    }
                    drop(children);
                    hits.push(&node);
                    None
                }
            };
        }
        hits.collect(out);
    }

    /// Number of (client, filter) subscriptions.
    pub(crate) fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }

    /// Follows `filter` down from the root, creating missing nodes. `None` if it met a pruned node.
    fn leaf_or_create(&self, filter: &TopicFilter) -> Option<Arc<Node<V>>> {
        let mut levels = filter.levels();
        let first = levels.next().expect("split yields at least one level");
        let mut node = self.root.child_or_create(first)?;
        for level in levels {
            node = node.child_or_create(level)?;
        }
        Some(node)
    }

    /// Detaches the empty nodes at the bottom of `path` (root's child first), bottom-up, stopping
    /// at the first node that is in use.
    fn prune(&self, path: &[(Arc<Node<V>>, &str)]) {
        for i in (0..path.len()).rev() {
            let parent = if i == 0 { &self.root } else { &*path[i - 1].0 };
            let (node, level) = &path[i];
            let mut siblings = write(&parent.children);
            // Another unsubscribe may have pruned it (and a subscribe replaced it) meanwhile.
            if !siblings.get(level).is_some_and(|n| Arc::ptr_eq(n, node)) {
                return;
            }
            {
                let children = write(&node.children);
                let subscribers = write(&node.subscribers);
                if !children.is_empty() || !subscribers.is_empty() {
                    return;
                }
                // The only place `dead` is set: parent's children and both own locks held.
                node.dead.store(true, Ordering::Relaxed);
            }
            let detached = siblings.remove(level);
            drop(siblings);
            drop(detached);
        }
    }

    /// Number of nodes including the root, for tests of pruning.
    #[cfg(test)]
    fn node_count(&self) -> usize {
        let mut count = 1;
        let mut stack: Vec<Arc<Node<V>>> = Vec::new();
        read(&self.root.children).append_to(&mut stack);
        while let Some(node) = stack.pop() {
            count += 1;
            read(&node.children).append_to(&mut stack);
        }
        count
    }
}

impl<V: Clone> Default for SubscriptionTrie<V> {
    fn default() -> Self {
        Self::new()
    }
}

impl<V> Default for Node<V> {
    fn default() -> Self {
        Node {
            children: RwLock::new(Children {
                exact: SmallMap::new(),
                plus: None,
                hash: None,
            }),
            subscribers: RwLock::new(SmallMap::new()),
            dead: AtomicBool::new(false),
        }
    }
}

impl<V> Node<V> {
    /// The child at `level`, created if missing. `None` if this node has been pruned.
    fn child_or_create(&self, level: &str) -> Option<Arc<Node<V>>> {
        if let Some(child) = read(&self.children).get(level) {
            return Some(Arc::clone(child));
        }
        let mut children = write(&self.children);
        // Checked under the lock we insert under (see `Node::dead`).
        if self.dead.load(Ordering::Relaxed) {
            return None;
        }
        Some(children.get_or_insert(level))
    }
}

impl<V> Drop for Node<V> {
    /// Drops the subtree iteratively: a recursive drop of a 32k-level chain overflows the stack.
    fn drop(&mut self) {
        let mut stack = Vec::new();
        let children = self.children.get_mut();
        children
            .unwrap_or_else(PoisonError::into_inner)
            .drain_into(&mut stack);
        while let Some(node) = stack.pop() {
            if let Some(mut node) = Arc::into_inner(node) {
                let children = node.children.get_mut();
                children
                    .unwrap_or_else(PoisonError::into_inner)
                    .drain_into(&mut stack);
            }
        }
    }
}

impl<V> Children<V> {
    fn get(&self, level: &str) -> Option<&Arc<Node<V>>> {
        match level {
            "+" => self.plus.as_ref(),
            "#" => self.hash.as_ref(),
            _ => self.exact.get(level),
        }
    }

    fn get_or_insert(&mut self, level: &str) -> Arc<Node<V>> {
        let slot = match level {
            "+" => &mut self.plus,
            "#" => &mut self.hash,
            _ => {
                if let Some(child) = self.exact.get(level) {
                    return Arc::clone(child);
                }
                let child = Arc::new(Node::default());
                self.exact.insert(level.into(), Arc::clone(&child));
                return child;
            }
        };
        Arc::clone(slot.get_or_insert_with(Default::default))
    }

    fn remove(&mut self, level: &str) -> Option<Arc<Node<V>>> {
        match level {
            "+" => self.plus.take(),
            "#" => self.hash.take(),
            _ => self.exact.remove(level),
        }
    }

    fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.plus.is_none() && self.hash.is_none()
    }

    /// One publish-walk step from this node's children at topic level `level`: records a '#'
    /// child as a hit and returns the child to continue with, queueing a second branch (the '+'
    /// child when the exact level also exists). `wild` is false where wildcards must not match.
    fn descend<'t>(
        &self,
        level: &str,
        rest: Split<'t, char>,
        wild: bool,
        hits: &mut Hits<V>,
        pending: &mut Vec<Cursor<'t, V>>,
    ) -> Option<Cursor<'t, V>> {
        let plus = if wild {
            // [MQTT-4.7.1-2] '#' matches this level and everything below it.
            if let Some(hash) = &self.hash {
                hits.push(hash);
            }
            self.plus.as_ref()
        } else {
            None
        };
        match (self.exact.get(level), plus) {
            (Some(exact), Some(plus)) => {
                pending.push((Arc::clone(plus), rest.clone()));
                Some((Arc::clone(exact), rest))
            }
            (Some(node), None) | (None, Some(node)) => Some((Arc::clone(node), rest)),
            (None, None) => None,
        }
    }

    /// Clones every child into `out`.
    #[cfg(test)]
    fn append_to(&self, out: &mut Vec<Arc<Node<V>>>) {
        let exact = self.exact.iter().map(|(_, node)| node);
        out.extend(exact.chain(&self.plus).chain(&self.hash).cloned());
    }

    /// Moves every child into `out`.
    fn drain_into(&mut self, out: &mut Vec<Arc<Node<V>>>) {
        out.extend(std::mem::replace(&mut self.exact, SmallMap::new()).into_values());
        out.extend(self.plus.take());
        out.extend(self.hash.take());
    }
}

impl<V> Hits<V> {
    fn push(&mut self, node: &Arc<Node<V>>) {
        if self.first.is_none() {
            self.first = Some(Arc::clone(node));
        } else {
            self.more.push(Arc::clone(node));
        }
    }
}

impl<V: Clone> Hits<V> {
    /// Copies the subscribers of the matched nodes into `out`, one entry per client.
    fn collect(self, out: &mut Vec<(V, QoS)>) {
        let Some(first) = self.first else { return };
        let mut nodes = self.more;
        if nodes.is_empty() {
            // One node: its map holds each client once already, so nothing to deduplicate.
            let subscribers = read(&first.subscribers);
            out.extend(subscribers.iter().map(|(_, (v, qos))| (v.clone(), *qos)));
            return;
        }
        // [MQTT-3.3.5-1] overlapping filters: one delivery per client, at the maximum QoS. Only
        // the clients of the smaller nodes are indexed; the largest node (say 1,000 subscribers
        // next to one "#" subscriber) is merged last with a lookup per client and no insert.
        nodes.push(first);
        let largest = (0..nodes.len())
            .max_by_key(|&i| read(&nodes[i].subscribers).len())
            .expect("two or more nodes");
        let largest = nodes.swap_remove(largest);
        let mut seen: SmallMap<ClientId, usize> = SmallMap::new();
        let mut merge = |client: &ClientId, v: &V, qos: QoS, index: bool| match seen.get(client) {
            Some(&i) => {
                if qos > out[i].1 {
                    out[i].1 = qos;
                }
            }
            None => {
                if index {
                    seen.insert(Arc::clone(client), out.len());
                }
                out.push((v.clone(), qos));
            }
        };
        for node in &nodes {
            let subscribers = read(&node.subscribers);
            for (client, (v, qos)) in subscribers.iter() {
                merge(client, v, *qos, true);
            }
        }
        let subscribers = read(&largest.subscribers);
        for (client, (v, qos)) in subscribers.iter() {
            merge(client, v, *qos, false);
        }
    }
}

impl<K: Borrow<str> + Eq + Hash, T> SmallMap<K, T> {
    fn new() -> Self {
        SmallMap::Few(Vec::new())
    }

    fn get(&self, key: &str) -> Option<&T> {
        match self {
            SmallMap::Few(entries) => entries
                .iter()
                .find(|(k, _)| k.borrow() == key)
                .map(|(_, t)| t),
            SmallMap::Many(map) => map.get(key),
        }
    }

    /// Inserts or replaces; returns the replaced value.
    fn insert(&mut self, key: K, value: T) -> Option<T> {
        match self {
            SmallMap::Few(entries) => {
                let found = entries.iter_mut().find(|(k, _)| k.borrow() == key.borrow());
                if let Some((_, old)) = found {
                    return Some(std::mem::replace(old, value));
                }
                if entries.len() < SMALL_MAX {
                    // Room for exactly one: most nodes never get a second entry.
                    entries.reserve_exact(1);
                    entries.push((key, value));
                } else {
                    let mut map: HashMap<K, T> = HashMap::with_capacity(2 * SMALL_MAX);
                    map.extend(entries.drain(..));
                    map.insert(key, value);
                    *self = SmallMap::Many(Box::new(map));
                }
                None
            }
            SmallMap::Many(map) => map.insert(key, value),
        }
    }

    fn remove(&mut self, key: &str) -> Option<T> {
        match self {
            SmallMap::Few(entries) => {
                let i = entries.iter().position(|(k, _)| k.borrow() == key)?;
                let (_, old) = entries.swap_remove(i);
                if entries.is_empty() {
                    *entries = Vec::new(); // free it: the node is probably about to be pruned
                }
                Some(old)
            }
            SmallMap::Many(map) => {
                let old = map.remove(key)?;
                if map.len() <= SMALL_MAX / 4 {
                    let entries = map.drain().collect();
                    *self = SmallMap::Few(entries);
                }
                Some(old)
            }
        }
    }

    fn len(&self) -> usize {
        match self {
            SmallMap::Few(entries) => entries.len(),
            SmallMap::Many(map) => map.len(),
        }
    }

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn iter(&self) -> impl Iterator<Item = (&K, &T)> {
        let (few, many) = match self {
            SmallMap::Few(entries) => (Some(entries.iter().map(|(k, t)| (k, t))), None),
            SmallMap::Many(map) => (None, Some(map.iter())),
        };
        few.into_iter().flatten().chain(many.into_iter().flatten())
    }

    fn into_values(self) -> impl Iterator<Item = T> {
        let (few, many) = match self {
            SmallMap::Few(entries) => (Some(entries.into_iter().map(|(_, t)| t)), None),
            SmallMap::Many(map) => (None, Some(map.into_values())),
        };
        few.into_iter().flatten().chain(many.into_iter().flatten())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{BTreeMap, HashSet};
    use std::thread;

    fn filter(s: &str) -> TopicFilter {
        TopicFilter::parse(s).unwrap()
    }

    fn topic(s: &str) -> TopicName {
        TopicName::parse(s).unwrap()
    }

    fn client(s: &str) -> ClientId {
        Arc::from(s)
    }

    /// Clients (the values here are the client ids) matching `t`, sorted.
    fn matched(trie: &SubscriptionTrie<ClientId>, t: &str) -> Vec<(String, u8)> {
        let mut out = Vec::new();
        trie.matches(&topic(t), &mut out);
        let mut got: Vec<_> = out
            .into_iter()
            .map(|(c, q)| (c.to_string(), q as u8))
            .collect();
        got.sort();
        got
    }

    fn sub(trie: &SubscriptionTrie<ClientId>, f: &str, c: &str, qos: QoS) -> bool {
        trie.subscribe(&filter(f), &client(c), client(c), qos)
    }

    /// Tiny xorshift64 PRNG, so the random tests are reproducible without a crate.
    struct XorShift(u64);

    impl XorShift {
        fn below(&mut self, n: usize) -> usize {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            (self.0 % n as u64) as usize
        }

        /// `1..=max_levels` levels drawn from `alphabet`, joined by '/'.
        fn path(&mut self, alphabet: &[&str], max_levels: usize) -> String {
            let n = 1 + self.below(max_levels);
            let levels: Vec<&str> = (0..n)
                .map(|_| alphabet[self.below(alphabet.len())])
                .collect();
            levels.join("/")
        }
    }

    /// Matching rules of 4.7 as in mosquitto's tables, including the '$' rule [MQTT-4.7.2-1] and
    /// '#' matching its parent [MQTT-4.7.1-2].
    #[test]
    fn matching_table() {
        let yes = [
            ("sport/#", "sport"),
            ("sport/#", "sport/tennis/player1"),
            ("sport/tennis/#", "sport/tennis"),
            ("sport/tennis/+", "sport/tennis/player1"),
            ("#", "a/b/c"),
            ("#", "/"),
            ("+", "a"),
            ("+/+", "/finance"),
            ("/+", "/finance"),
            ("a/+/c", "a//c"),
            ("a//b", "a//b"),
            ("$SYS/#", "$SYS/x"),
            ("$SYS/#", "$SYS"),
            ("$SYS/+", "$SYS/x"),
            ("+/#", "a"),
            ("a/b", "a/b"),
            ("é/+", "é/😀"),
            ("a b/+", "a b/c"),
        ];
        let no = [
            ("#", "$SYS/x"),
            ("+/x", "$SYS/x"),
            ("+", "$SYS"),
            ("+/#", "$SYS/x"),
            ("sport/+", "sport"),
            ("sport/tennis/#", "sport/tennisx"),
            ("+", "/finance"),
            ("a/b", "a/B"),
            ("a", "a/b"),
            ("a/b", "a"),
            ("a/b", "a/b/"),
            ("+/+", "a"),
            ("😀", "é"),
        ];
        for (f, t) in yes.iter().chain(&no) {
            let trie = SubscriptionTrie::new();
            sub(&trie, f, "c", QoS::AtMostOnce);
            let expected = yes.contains(&(*f, *t));
            assert_eq!(filter(f).matches(&topic(t)), expected, "oracle: {f} vs {t}");
            assert_eq!(!matched(&trie, t).is_empty(), expected, "{f} vs {t}");
        }
    }

    /// Random filters x random topics agree with `TopicFilter::matches`, including one delivery
    /// per client at its highest matching QoS [MQTT-3.3.5-1].
    #[test]
    fn agrees_with_reference_matcher() {
        let levels = ["", "$SYS", "a", "b", "é", "+", "#"];
        let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
        for _round in 0..50 {
            let trie = SubscriptionTrie::new();
            let mut subs: BTreeMap<(String, String), u8> = BTreeMap::new();
            for _ in 0..30 {
                let Ok(f) = TopicFilter::parse(&rng.path(&levels, 4)) else {
                    continue;
                };
                let c = format!("c{}", rng.below(4));
                let q = rng.below(3) as u8;
                let qos = crate::message::qos_from_u8(q).unwrap();
                let replaced = trie.subscribe(&f, &client(&c), client(&c), qos);
                let key = (f.as_str().to_owned(), c);
                assert_eq!(replaced, subs.insert(key, q).is_some());
            }
            assert_eq!(trie.len(), subs.len());
            for _ in 0..60 {
                let Ok(t) = TopicName::parse(&rng.path(&levels[..5], 4)) else {
                    continue;
                };
                let mut expected: BTreeMap<String, u8> = BTreeMap::new();
                for ((f, c), q) in &subs {
                    if filter(f).matches(&t) {
                        let e = expected.entry(c.clone()).or_insert(*q);
                        *e = (*e).max(*q);
                    }
                }
                let expected: Vec<(String, u8)> = expected.into_iter().collect();
                assert_eq!(matched(&trie, t.as_str()), expected, "topic {t}");
            }
            for (f, c) in subs.keys() {
                assert!(trie.unsubscribe(&filter(f), &client(c)));
            }
            assert_eq!((trie.len(), trie.node_count()), (0, 1));
        }
    }

    /// [MQTT-3.3.5-1] one client with overlapping filters gets one copy at the highest QoS.
    #[test]
    fn overlapping_filters_deliver_once_at_max_qos() {
        let trie = SubscriptionTrie::new();
        sub(&trie, "a/+", "c1", QoS::AtMostOnce);
        sub(&trie, "a/#", "c1", QoS::ExactlyOnce);
        sub(&trie, "a/b", "c1", QoS::AtLeastOnce);
        sub(&trie, "#", "c2", QoS::AtLeastOnce);
        sub(&trie, "a/b", "c2", QoS::AtMostOnce);
        sub(&trie, "a/b", "c3", QoS::AtMostOnce);
        let got = matched(&trie, "a/b");
        assert_eq!(got, [("c1".into(), 2), ("c2".into(), 1), ("c3".into(), 0)]);
        assert_eq!(trie.len(), 6);
    }

    /// Nodes with many children or subscribers switch to hashing and back without losing any;
    /// deduplication also works when the first nodes have many clients [MQTT-3.3.5-1].
    #[test]
    fn wide_nodes_switch_representation() {
        let trie = SubscriptionTrie::new();
        for i in 0..100 {
            sub(&trie, "w/x", &format!("c{i:02}"), QoS::AtMostOnce);
            sub(
                &trie,
                &format!("w/{i:02}"),
                &format!("d{i:02}"),
                QoS::AtMostOnce,
            );
        }
        for i in 0..20 {
            sub(&trie, "w/+", &format!("c{i:02}"), QoS::AtLeastOnce);
        }
        sub(&trie, "w/#", "c05", QoS::ExactlyOnce);
        let got = matched(&trie, "w/x");
        let mut expected: Vec<(String, u8)> = (0..100)
            .map(|i| (format!("c{i:02}"), u8::from(i < 20)))
            .collect();
        expected[5].1 = 2;
        assert_eq!(got, expected);
        expected.truncate(20);
        expected.push(("d42".into(), 0));
        assert_eq!(matched(&trie, "w/42"), expected);
        for i in 0..98 {
            assert!(trie.unsubscribe(&filter("w/x"), &client(&format!("c{i:02}"))));
            assert!(trie.unsubscribe(&filter(&format!("w/{i:02}")), &client(&format!("d{i:02}"))));
        }
        trie.unsubscribe(&filter("w/#"), &client("c05"));
        for i in 0..20 {
            trie.unsubscribe(&filter("w/+"), &client(&format!("c{i:02}")));
        }
        assert_eq!(
            matched(&trie, "w/x"),
            [("c98".into(), 0), ("c99".into(), 0)]
        );
        assert_eq!(matched(&trie, "w/99"), [("d99".into(), 0)]);
        assert_eq!(trie.len(), 4);
    }

    /// [MQTT-3.8.4-3] subscribing again to the same filter replaces the subscription.
    #[test]
    fn resubscribe_replaces_and_updates_qos() {
        let trie = SubscriptionTrie::new();
        assert!(!sub(&trie, "a/b", "c", QoS::AtMostOnce));
        assert!(sub(&trie, "a/b", "c", QoS::ExactlyOnce));
        assert_eq!(trie.len(), 1);
        assert_eq!(matched(&trie, "a/b"), [("c".into(), 2)]);
    }

    /// Unsubscribing removes only that subscription and prunes the nodes left empty.
    #[test]
    fn unsubscribe_prunes_empty_nodes() {
        let trie = SubscriptionTrie::new();
        sub(&trie, "a/b/c", "c1", QoS::AtMostOnce);
        sub(&trie, "a/+/#", "c1", QoS::AtMostOnce);
        sub(&trie, "a", "c2", QoS::AtMostOnce);
        assert_eq!(trie.node_count(), 6);
        assert!(!trie.unsubscribe(&filter("a/b"), &client("c1")));
        assert!(!trie.unsubscribe(&filter("a/b/c"), &client("c2")));
        assert!(!trie.unsubscribe(&filter("x/y"), &client("c1")));
        assert!(trie.unsubscribe(&filter("a/b/c"), &client("c1")));
        assert!(!trie.unsubscribe(&filter("a/b/c"), &client("c1")));
        assert_eq!(trie.node_count(), 4);
        assert!(trie.unsubscribe(&filter("a"), &client("c2")));
        assert_eq!(trie.node_count(), 4, "'a' still leads to a/+/#");
        assert!(trie.unsubscribe(&filter("a/+/#"), &client("c1")));
        assert_eq!((trie.len(), trie.node_count()), (0, 1));
        assert!(matched(&trie, "a/b/c").is_empty());
    }

    /// Dropping a trie with a very deep filter neither recurses nor overflows the stack, and a
    /// publish walk down it is iterative too.
    #[test]
    fn deep_filters_do_not_overflow_the_stack() {
        let deep = vec!["+"; 30_000].join("/");
        let topic_str = vec!["x"; 30_000].join("/");
        let trie = SubscriptionTrie::new();
        sub(&trie, &deep, "c", QoS::AtLeastOnce);
        assert_eq!(matched(&trie, &topic_str), [("c".into(), 1)]);
        drop(trie);
    }

    /// Subscribes and unsubscribes racing on the same filters (so nodes are pruned and recreated
    /// all the time) while other threads match: afterwards every remaining subscription is still
    /// found, which fails if one ever landed in a detached node.
    #[test]
    fn concurrent_subscribe_unsubscribe_and_match() {
        const FILTERS: [&str; 7] = ["a", "a/b", "a/b/c", "a/b/c/d", "a/+/c", "a/#", "+/b"];
        const WRITERS: usize = 4;
        let trie: Arc<SubscriptionTrie<ClientId>> = Arc::new(SubscriptionTrie::new());
        let stop = Arc::new(AtomicBool::new(false));
        let readers: Vec<_> = (0..2)
            .map(|_| {
                let (trie, stop) = (Arc::clone(&trie), Arc::clone(&stop));
                thread::spawn(move || {
                    let mut out = Vec::new();
                    while !stop.load(Ordering::Relaxed) {
                        for t in ["a/b/c", "a/b/c/d", "a", "x/b"] {
                            out.clear();
                            trie.matches(&topic(t), &mut out);
                            let ids: HashSet<&ClientId> = out.iter().map(|(c, _)| c).collect();
                            assert_eq!(ids.len(), out.len(), "duplicate delivery on {t}");
                        }
                    }
                })
            })
            .collect();
        let writers: Vec<_> = (0..WRITERS)
            .map(|w| {
                let trie = Arc::clone(&trie);
                thread::spawn(move || {
                    let mut rng = XorShift(0x2545_f491_4f6c_dd1d + w as u64);
                    let me = client(&format!("w{w}"));
                    let mut mine = HashSet::new();
                    for _ in 0..20_000 {
                        let f = FILTERS[rng.below(FILTERS.len())];
                        if mine.remove(f) {
                            assert!(trie.unsubscribe(&filter(f), &me), "lost {f} of {me}");
                        } else {
                            let replaced =
                                trie.subscribe(&filter(f), &me, me.clone(), QoS::AtLeastOnce);
                            assert!(!replaced, "{f} of {me} was already there");
                            // Mostly leave at once, so leaves empty and get pruned often.
                            if rng.below(4) == 0 {
                                mine.insert(f);
                            } else {
                                assert!(trie.unsubscribe(&filter(f), &me), "lost {f} of {me}");
                            }
                        }
                    }
                    (me, mine)
                })
            })
            .collect();
        let finals: Vec<(ClientId, HashSet<&str>)> =
            writers.into_iter().map(|h| h.join().unwrap()).collect();
        stop.store(true, Ordering::Relaxed);
        for r in readers {
            r.join().unwrap();
        }
        let total: usize = finals.iter().map(|(_, fs)| fs.len()).sum();
        assert_eq!(trie.len(), total);
        for (me, fs) in &finals {
            for f in fs {
                let t = f.replace(['+', '#'], "x");
                let found = matched(&trie, &t).iter().any(|(c, _)| **c == **me);
                assert!(found, "{me}'s subscription to {f} is lost (detached node)");
            }
        }
        for (me, fs) in &finals {
            for f in fs {
                assert!(trie.unsubscribe(&filter(f), me));
            }
        }
        assert_eq!((trie.len(), trie.node_count()), (0, 1));
    }
}
