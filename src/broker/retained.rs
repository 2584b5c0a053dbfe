//! Retained messages [MQTT-3.3.1-5]: one per topic name, kept in a tree of topic levels and
//! collected by walking that tree with a subscription's filter, never by scanning every topic.
//! L2: uses only L0 (`topic`). Locks are per node, taken top-down (a parent's children, then the
//! node's children, then its value). Invariant, as in the trie: a node is detached only after being
//! marked `dead` while empty and exclusively locked, and every insertion checks `dead` under the
//! lock it inserts under, so a retained message never lands in a detached node.

use std::collections::BTreeMap;
use std::str::Split;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, PoisonError, RwLock};

use super::trie::{read, write};
use crate::topic::{TopicFilter, TopicName};

/// The retained message of every topic that has one.
///
/// `V` is the stored message (the broker stores `Arc<Message>`); it is cloned under a node's read
/// lock, so it must be cheap to clone.
pub(crate) struct RetainedTree<V> {
    /// Never pruned, so it needs no `Arc`.
    root: Node<V>,
    /// Number of retained messages; changed under the node's value lock.
    len: AtomicUsize,
}

struct Node<V> {
    children: RwLock<SortedMap<Arc<Node<V>>>>,
    value: RwLock<Option<V>>,
    /// Set once, by `prune`, while it holds the parent's children lock and both of this node's
    /// locks exclusively and the node has no children and no value. Inserters check it under the
    /// lock they insert under and retry from the root if it is set: their insertion then either
    /// happened before the pruner looked (so the node was not empty and is kept) or sees the mark.
    dead: AtomicBool,
}

/// Children by level, sorted so that walks visit siblings in order without sorting: a sorted
/// vector while small (most nodes have one child: 24 bytes, where a `BTreeMap` leaf is 280), a
/// `BTreeMap` once large (no O(n) inserts into a level with 100k siblings).
enum SortedMap<T> {
    Few(Vec<(Box<str>, T)>),
    Many(BTreeMap<Box<str>, T>),
}

/// Above this many entries a `SortedMap` is a `BTreeMap`; at a quarter of it, a vector again.
const SMALL_MAX: usize = 16;

/// A node still to visit, with the filter levels left to match below it.
type Frame<'f, V> = (Arc<Node<V>>, Split<'f, char>);

impl<V: Clone> RetainedTree<V> {
    /// An empty tree.
    pub(crate) fn new() -> Self {
        RetainedTree {
            root: Node::default(),
            len: AtomicUsize::new(0),
        }
    }

    /// Stores `value` as the retained message of `topic`, replacing any earlier one
    /// [MQTT-3.3.1-5].
    pub(crate) fn set(&self, topic: &TopicName, value: V) {
        loop {
            let Some(node) = self.node_or_create(topic) else {
                continue; // met a pruned node on the way down
            };
            let mut slot = write(&node.value);
            // Checked under the lock we insert under (see `Node::dead`).
            if node.dead.load(Ordering::Relaxed) {
                continue;
            }
            let old = slot.replace(value);
            if old.is_none() {
                self.len.fetch_add(1, Ordering::Relaxed);
            }
            drop(slot);
            // The replaced message is freed here, after the lock.
            return;
        }
    }

    /// Removes the retained message of `topic` (a zero-length retained PUBLISH)
    /// [MQTT-3.3.1-10]; returns whether one existed. Prunes the nodes it leaves empty.
    pub(crate) fn remove(&self, topic: &TopicName) -> bool {
        'retry: loop {
            // The path from the root's child down to the topic's node, with each node's level.
            let mut path: Vec<(Arc<Node<V>>, &str)> = Vec::new();
            for level in topic.levels() {
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
            let (node, _) = path.last().expect("a topic has at least one level");
            let mut slot = write(&node.value);
            if node.dead.load(Ordering::Relaxed) {
                continue;
            }
            let Some(old) = slot.take() else {
                return false;
            };
            self.len.fetch_sub(1, Ordering::Relaxed);
            drop(slot);
            drop(old);
            self.prune(&path);
            return true;
        }
    }

    /// Appends every retained message whose topic matches `filter`, in topic-tree order: a parent
    /// before its children ("a", "a/b", "a/b/c"), siblings sorted by level (byte order).
    pub(crate) fn matching(&self, filter: &TopicFilter, out: &mut Vec<V>) {
        // Explicit stacks, not recursion: topics may be 32k levels deep.
        let mut frames: Vec<Frame<'_, V>> = Vec::new();
        let mut subtree: Vec<Arc<Node<V>>> = Vec::new();
        let mut levels = filter.levels();
        let first = levels.next().expect("split yields at least one level");
        self.root
            .step(first, levels, true, out, &mut frames, &mut subtree);
        while let Some((node, mut rest)) = frames.pop() {
            match rest.next() {
                Some(level) => node.step(level, rest, false, out, &mut frames, &mut subtree),
                None => node.push_value(out),
            }
        }
    }

    /// Number of retained messages.
    pub(crate) fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }

    /// Follows `topic` down from the root, creating missing nodes. `None` if it met a pruned node.
    fn node_or_create(&self, topic: &TopicName) -> Option<Arc<Node<V>>> {
        let mut levels = topic.levels();
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
            // Another remove may have pruned it (and a set replaced it) meanwhile.
            if !siblings.get(level).is_some_and(|n| Arc::ptr_eq(n, node)) {
                return;
            }
            {
                let children = write(&node.children);
                let value = write(&node.value);
                if !children.is_empty() || value.is_some() {
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
        stack.extend(
            read(&self.root.children)
                .iter_rev()
                .map(|(_, n)| Arc::clone(n)),
        );
        while let Some(node) = stack.pop() {
            count += 1;
            stack.extend(read(&node.children).iter_rev().map(|(_, n)| Arc::clone(n)));
        }
        count
    }
}

impl<V: Clone> Default for RetainedTree<V> {
    fn default() -> Self {
        Self::new()
    }
}

impl<V> Default for Node<V> {
    fn default() -> Self {
        Node {
            children: RwLock::new(SortedMap::default()),
            value: RwLock::new(None),
            dead: AtomicBool::new(false),
        }
    }
}

impl<V: Clone> Node<V> {
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
        // Another thread may have created it since we looked.
        if let Some(child) = children.get(level) {
            return Some(Arc::clone(child));
        }
        let child: Arc<Node<V>> = Arc::default();
        children.insert(level.into(), Arc::clone(&child));
        Some(child)
    }

    fn push_value(&self, out: &mut Vec<V>) {
        if let Some(v) = &*read(&self.value) {
            out.push(v.clone());
        }
    }

    /// Matches filter level `level` against this node's children. Pushes the children to visit
    /// onto `frames` in reverse order, so they pop in sorted order. `at_root` applies the '$' rule.
    fn step<'f>(
        &self,
        level: &str,
        rest: Split<'f, char>,
        at_root: bool,
        out: &mut Vec<V>,
        frames: &mut Vec<Frame<'f, V>>,
        subtree: &mut Vec<Arc<Node<V>>>,
    ) {
        // [MQTT-4.7.2-1] '+' and '#' as the first level never match a topic starting with '$'.
        let visible = |name: &str| !(at_root && name.starts_with('$'));
        match level {
            "#" => {
                // [MQTT-4.7.1-2] '#' matches the parent level too, then everything below it.
                self.push_value(out);
                subtree.extend(
                    read(&self.children)
                        .iter_rev()
                        .filter(|(name, _)| visible(name))
                        .map(|(_, child)| Arc::clone(child)),
                );
                collect_subtrees(subtree, out);
            }
            "+" => frames.extend(
                read(&self.children)
                    .iter_rev()
                    .filter(|(name, _)| visible(name))
                    .map(|(_, child)| (Arc::clone(child), rest.clone())),
            ),
            _ => {
                if let Some(child) = read(&self.children).get(level) {
                    frames.push((Arc::clone(child), rest));
                }
            }
        }
    }
}

/// Appends the values of the subtrees on `stack` (the next one on top) in pre-order, siblings
/// sorted, leaving `stack` empty. Holds one node lock at a time, so a large collection does not
/// block retained publishes elsewhere in the tree.
fn collect_subtrees<V: Clone>(stack: &mut Vec<Arc<Node<V>>>, out: &mut Vec<V>) {
    while let Some(node) = stack.pop() {
        node.push_value(out);
        stack.extend(read(&node.children).iter_rev().map(|(_, n)| Arc::clone(n)));
    }
}

impl<V> Drop for Node<V> {
    /// Drops the subtree iteratively: a recursive drop of a 32k-level chain overflows the stack.
    fn drop(&mut self) {
        let children = self.children.get_mut();
        let mut stack: Vec<Arc<Node<V>>> =
            std::mem::take(children.unwrap_or_else(PoisonError::into_inner))
                .into_values()
                .collect();
        while let Some(node) = stack.pop() {
            if let Some(mut node) = Arc::into_inner(node) {
                let children = node.children.get_mut();
                let children = std::mem::take(children.unwrap_or_else(PoisonError::into_inner));
                stack.extend(children.into_values());
            }
        }
    }
}

impl<T> Default for SortedMap<T> {
    fn default() -> Self {
        SortedMap::Few(Vec::new())
    }
}

impl<T> SortedMap<T> {
    fn get(&self, key: &str) -> Option<&T> {
        match self {
            SortedMap::Few(entries) => {
                let i = entries.binary_search_by(|(k, _)| (**k).cmp(key)).ok()?;
                Some(&entries[i].1)
            }
            SortedMap::Many(map) => map.get(key),
        }
    }

    /// Inserts or replaces.
    fn insert(&mut self, key: Box<str>, value: T) {
        match self {
            SortedMap::Few(entries) => match entries.binary_search_by(|(k, _)| k.cmp(&key)) {
                Ok(i) => entries[i].1 = value,
                Err(i) if entries.len() < SMALL_MAX => {
                    // Room for exactly one: most nodes never get a second child.
                    entries.reserve_exact(1);
                    entries.insert(i, (key, value));
                }
                Err(_) => {
                    let mut map: BTreeMap<Box<str>, T> =
                        std::mem::take(entries).into_iter().collect();
                    map.insert(key, value);
                    *self = SortedMap::Many(map);
                }
            },
            SortedMap::Many(map) => {
                map.insert(key, value);
            }
        }
    }

    fn remove(&mut self, key: &str) -> Option<T> {
        match self {
            SortedMap::Few(entries) => {
                let i = entries.binary_search_by(|(k, _)| (**k).cmp(key)).ok()?;
                let (_, old) = entries.remove(i);
                if entries.is_empty() {
                    *entries = Vec::new(); // free it: the node is probably about to be pruned
                }
                Some(old)
            }
            SortedMap::Many(map) => {
                let old = map.remove(key)?;
                if map.len() <= SMALL_MAX / 4 {
                    // A BTreeMap iterates in order, so the vector comes out sorted.
                    let entries = std::mem::take(map).into_iter().collect();
                    *self = SortedMap::Few(entries);
                }
                Some(old)
            }
        }
    }

    fn is_empty(&self) -> bool {
        match self {
            SortedMap::Few(entries) => entries.is_empty(),
            SortedMap::Many(map) => map.is_empty(),
        }
    }

    /// The entries in reverse level order (for a stack that pops them in order).
    fn iter_rev(&self) -> impl Iterator<Item = (&str, &T)> {
        let (few, many) = match self {
            SortedMap::Few(entries) => (Some(entries.iter().rev().map(|(k, t)| (&**k, t))), None),
            SortedMap::Many(map) => (None, Some(map.iter().rev().map(|(k, t)| (&**k, t)))),
        };
        few.into_iter().flatten().chain(many.into_iter().flatten())
    }

    fn into_values(self) -> impl Iterator<Item = T> {
        let (few, many) = match self {
            SortedMap::Few(entries) => (Some(entries.into_iter().map(|(_, t)| t)), None),
            SortedMap::Many(map) => (None, Some(map.into_values())),
        };
        few.into_iter().flatten().chain(many.into_iter().flatten())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::thread;

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

    fn filter(s: &str) -> TopicFilter {
        TopicFilter::parse(s).unwrap()
    }

    fn topic(s: &str) -> TopicName {
        TopicName::parse(s).unwrap()
    }

    /// A tree where each topic's value is its own name.
    fn tree(topics: &[&str]) -> RetainedTree<String> {
        let t = RetainedTree::new();
        for s in topics {
            t.set(&topic(s), s.to_string());
        }
        t
    }

    fn matching(t: &RetainedTree<String>, f: &str) -> Vec<String> {
        let mut out = Vec::new();
        t.matching(&filter(f), &mut out);
        out
    }

    /// [MQTT-3.3.1-5] a retained PUBLISH replaces the topic's earlier one; [MQTT-3.3.1-10] a
    /// zero-length one removes it, and the emptied nodes are pruned.
    #[test]
    fn set_replace_remove() {
        let t = RetainedTree::new();
        t.set(&topic("a/b"), 1);
        t.set(&topic("a/b"), 2);
        t.set(&topic("a"), 3);
        assert_eq!(t.len(), 2);
        let mut out = Vec::new();
        t.matching(&filter("a/b"), &mut out);
        assert_eq!(out, [2]);
        assert!(!t.remove(&topic("a/b/c")));
        assert!(!t.remove(&topic("x")));
        assert!(t.remove(&topic("a/b")));
        assert!(!t.remove(&topic("a/b")));
        assert_eq!((t.len(), t.node_count()), (1, 2));
        assert!(t.remove(&topic("a")));
        assert_eq!((t.len(), t.node_count()), (0, 1));
    }

    /// A parent is delivered before its children, siblings in sorted order, whatever the order
    /// the messages were retained in.
    #[test]
    fn parents_come_before_children_and_siblings_are_sorted() {
        let t = tree(&["a/b/c", "b", "a/c", "a", "a/b", "ab", "a/b/a", "/x", "a//"]);
        assert_eq!(
            matching(&t, "#"),
            ["/x", "a", "a//", "a/b", "a/b/a", "a/b/c", "a/c", "ab", "b"]
        );
        assert_eq!(
            matching(&t, "a/#"),
            ["a", "a//", "a/b", "a/b/a", "a/b/c", "a/c"]
        );
        assert_eq!(
            matching(&t, "a/+/#"),
            ["a//", "a/b", "a/b/a", "a/b/c", "a/c"]
        );
        assert_eq!(matching(&t, "+/+"), ["/x", "a/b", "a/c"]);
    }

    /// [MQTT-4.7.1-2] "sport/#" matches "sport"; "sport/+" does not.
    #[test]
    fn multi_level_wildcard_matches_the_parent() {
        let t = tree(&["sport", "sport/tennis"]);
        assert_eq!(matching(&t, "sport/#"), ["sport", "sport/tennis"]);
        assert_eq!(matching(&t, "sport/+"), ["sport/tennis"]);
        assert_eq!(matching(&t, "sport/tennis/#"), ["sport/tennis"]);
    }

    /// [MQTT-4.7.2-1] '$' topics are not matched by a leading wildcard, only explicitly.
    #[test]
    fn dollar_topics_need_an_explicit_first_level() {
        let t = tree(&["$SYS/x", "$SYS", "a/$b"]);
        assert_eq!(matching(&t, "#"), ["a/$b"]);
        assert_eq!(matching(&t, "+/x"), Vec::<String>::new());
        assert_eq!(matching(&t, "+"), Vec::<String>::new());
        assert_eq!(matching(&t, "$SYS/#"), ["$SYS", "$SYS/x"]);
        assert_eq!(matching(&t, "$SYS/+"), ["$SYS/x"]);
        assert_eq!(matching(&t, "a/+"), ["a/$b"]);
    }

    /// '+' matches exactly one level, which may be empty.
    #[test]
    fn single_level_wildcard_matches_empty_levels() {
        let t = tree(&["/finance", "a//c", "a/b/c", "a/c", "/"]);
        assert_eq!(matching(&t, "+/+"), ["/", "/finance", "a/c"]);
        assert_eq!(matching(&t, "/+"), ["/", "/finance"]);
        assert_eq!(matching(&t, "a/+/c"), ["a//c", "a/b/c"]);
        assert_eq!(matching(&t, "+"), Vec::<String>::new());
    }

    /// Random topics x random filters agree with `TopicFilter::matches`, in topic-tree order.
    #[test]
    fn agrees_with_reference_matcher() {
        let levels = ["", "$SYS", "a", "b", "é", "+", "#"];
        let mut rng = XorShift(0x1234_5678_9abc_def1);
        for _round in 0..50 {
            let t = RetainedTree::new();
            let mut topics: Vec<String> = Vec::new();
            for _ in 0..40 {
                let Ok(name) = TopicName::parse(&rng.path(&levels[..5], 4)) else {
                    continue;
                };
                if rng.below(4) == 0 && !topics.is_empty() {
                    let gone = topics.swap_remove(rng.below(topics.len()));
                    assert!(t.remove(&topic(&gone)));
                }
                t.set(&name, name.as_str().to_owned());
                if !topics.contains(&name.as_str().to_owned()) {
                    topics.push(name.as_str().to_owned());
                }
            }
            assert_eq!(t.len(), topics.len());
            // Topic-tree order is the order of the level lists.
            topics.sort_by(|x, y| x.split('/').cmp(y.split('/')));
            for _ in 0..60 {
                let Ok(f) = TopicFilter::parse(&rng.path(&levels, 4)) else {
                    continue;
                };
                let expected: Vec<&String> =
                    topics.iter().filter(|s| f.matches(&topic(s))).collect();
                let mut got = Vec::new();
                t.matching(&f, &mut got);
                assert_eq!(got.iter().collect::<Vec<_>>(), expected, "filter {f}");
            }
            for s in &topics {
                assert!(t.remove(&topic(s)));
            }
            assert_eq!((t.len(), t.node_count()), (0, 1));
        }
    }

    /// A level with many children switches to a `BTreeMap` and back, staying sorted.
    #[test]
    fn wide_levels_stay_sorted() {
        let t = RetainedTree::new();
        let mut rng = XorShift(7);
        let mut names: Vec<String> = (0..100).map(|i| format!("w/{i:02}")).collect();
        for i in (1..names.len()).rev() {
            names.swap(i, rng.below(i + 1));
        }
        for s in &names {
            t.set(&topic(s), s.clone());
        }
        for (i, s) in names.iter().enumerate().take(97) {
            if i % 10 == 0 {
                let mut expected = names[i..].to_vec();
                expected.sort();
                assert_eq!(matching(&t, "w/+"), expected);
            }
            assert!(t.remove(&topic(s)));
        }
        let mut left = names[97..].to_vec();
        left.sort();
        assert_eq!(matching(&t, "w/+"), left);
        assert_eq!(matching(&t, "#"), left);
        assert_eq!(matching(&t, &left[1]), [left[1].clone()]);
        for s in &left {
            assert!(t.remove(&topic(s)));
        }
        assert_eq!((t.len(), t.node_count()), (0, 1));
    }

    /// A new "#" subscriber collects 10k retained messages, in order.
    #[test]
    fn hash_collects_ten_thousand_topics() {
        let t = RetainedTree::new();
        let mut names: Vec<String> = (0..10_000)
            .map(|i| format!("site/{}/dev{}/temp", i % 7, i))
            .collect();
        for s in &names {
            t.set(&topic(s), s.clone());
        }
        assert_eq!(t.len(), 10_000);
        names.sort_by(|x, y| x.split('/').cmp(y.split('/')));
        let mut out = Vec::new();
        t.matching(&filter("#"), &mut out);
        assert_eq!(out, names);
        out.clear();
        t.matching(&filter("site/3/+/temp"), &mut out);
        assert_eq!(
            out.len(),
            names.iter().filter(|s| s.starts_with("site/3/")).count()
        );
    }

    /// Very deep topics neither overflow the stack when collected nor when dropped.
    #[test]
    fn deep_topics_do_not_overflow_the_stack() {
        let deep = vec!["x"; 30_000].join("/");
        let t = tree(&[deep.as_str()]);
        assert_eq!(matching(&t, "#"), std::slice::from_ref(&deep));
        assert_eq!(matching(&t, &vec!["+"; 30_000].join("/")), [deep]);
        drop(t);
    }

    /// Sets and removes racing on the same nested topics (so nodes are pruned and recreated all
    /// the time) while other threads collect: afterwards `len` equals what "#" finds, which fails
    /// if a message ever landed in a detached node (counted, but unreachable).
    #[test]
    fn concurrent_set_remove_and_matching() {
        // Every topic of 1 to 3 levels over "0" and "1": each is a parent or child of others.
        let names: Vec<String> = (0..14)
            .map(|i: usize| {
                let depth = 1 + usize::from(i >= 2) + usize::from(i >= 6);
                let bits = i - [0, 2, 6][depth - 1];
                let levels: Vec<String> =
                    (0..depth).map(|d| ((bits >> d) & 1).to_string()).collect();
                levels.join("/")
            })
            .collect();
        let names = Arc::new(names);
        let t: Arc<RetainedTree<usize>> = Arc::new(RetainedTree::new());
        let stop = Arc::new(AtomicBool::new(false));
        let readers: Vec<_> = (0..2)
            .map(|_| {
                let (t, stop) = (Arc::clone(&t), Arc::clone(&stop));
                thread::spawn(move || {
                    let mut out = Vec::new();
                    while !stop.load(Ordering::Relaxed) {
                        for f in ["#", "0/+/1", "1/#", "+/+"] {
                            out.clear();
                            t.matching(&filter(f), &mut out);
                        }
                    }
                })
            })
            .collect();
        let writers: Vec<_> = (0..4)
            .map(|w| {
                let (t, names) = (Arc::clone(&t), Arc::clone(&names));
                thread::spawn(move || {
                    let mut rng = XorShift(0x2545_f491_4f6c_dd1d + w as u64);
                    for _ in 0..50_000 {
                        let name = topic(&names[rng.below(names.len())]);
                        if rng.below(2) == 0 {
                            t.set(&name, w);
                        } else {
                            t.remove(&name);
                        }
                    }
                })
            })
            .collect();
        for h in writers {
            h.join().unwrap();
        }
        stop.store(true, Ordering::Relaxed);
        for r in readers {
            r.join().unwrap();
        }
        let mut out = Vec::new();
        t.matching(&filter("#"), &mut out);
        assert_eq!(
            out.len(),
            t.len(),
            "a retained message landed in a detached node"
        );
        let removed = names.iter().filter(|s| t.remove(&topic(s))).count();
        assert_eq!(removed, out.len());
        assert_eq!((t.len(), t.node_count()), (0, 1));
    }
}
