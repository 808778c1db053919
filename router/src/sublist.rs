//! The subscription trie ("sublist") that routes every published message.
//!
//! Subscriptions are stored in a trie keyed by subject token. Each node keeps
//! its literal children in a hash map and its `*` / `>` children in dedicated
//! fields, so matching a literal subject costs one hash lookup per token plus
//! whatever wildcard branches exist. Subscriptions ending at a node are kept in
//! maps keyed by subscription id so that adding or removing one is O(1) even
//! when 100,000 clients subscribe to the same subject.
//!
//! In front of the trie sits a bounded cache from published subject to a
//! shared [`MatchResult`], because real traffic publishes to a small working
//! set of subjects over and over. A cache hit is a read lock plus one hash
//! lookup. Inserts and removes drop exactly the cached subjects the changed
//! subscription could match (a single lookup for a literal subscription).
//!
//! Locking: the trie and the cache each have their own [`RwLock`]. Writers
//! take the trie lock and then the cache lock. A cache miss computes its
//! result under the trie read lock and stores it while still holding that
//! lock, so a result can never be cached after a concurrent change to the trie
//! that would have made it stale. Cache hits touch only the cache lock.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::RwLock;
use serde::Serialize;

use crate::subject::{self, FWC, PWC, TSEP};

/// Most match results kept in the cache (same bound as nats-server).
const CACHE_MAX: usize = 1024;
/// Size the cache is pruned down to once it overflows, so pruning cost is
/// amortised over many misses rather than paid on each one.
const CACHE_SWEEP: usize = 256;

/// Something stored in the trie; `id()` must be unique among live items (the
/// server uses a global u64 subscription id).
pub trait SubItem: Clone + Send + Sync + 'static {
    /// The unique id used to find the item again on removal.
    fn id(&self) -> u64;
}

/// Why an insert was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SublistError {
    /// The subject is not a valid subscription subject, or the queue group
    /// name is not valid.
    InvalidSubject,
}

impl std::fmt::Display for SublistError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SublistError::InvalidSubject => f.write_str("sublist: invalid subject"),
        }
    }
}

impl std::error::Error for SublistError {}

/// Result of matching a literal subject.
///
/// Shared through an `Arc` because the same result is handed to every
/// publisher of that subject until a subscription change invalidates it.
pub struct MatchResult<T> {
    /// Non-queue subscriptions: each gets a copy of the message.
    pub plain: Vec<T>,
    /// One entry per queue group name with all members of that group matching
    /// the subject (across the whole trie); one member of each gets the
    /// message.
    pub queues: Vec<(Bytes, Vec<T>)>,
}

impl<T> MatchResult<T> {
    /// Whether nothing matched.
    pub fn is_empty(&self) -> bool {
        self.plain.is_empty() && self.queues.is_empty()
    }
}

impl<T> Default for MatchResult<T> {
    fn default() -> Self {
        MatchResult {
            plain: Vec::new(),
            queues: Vec::new(),
        }
    }
}

impl<T: Clone> Clone for MatchResult<T> {
    fn clone(&self) -> Self {
        MatchResult {
            plain: self.plain.clone(),
            queues: self.queues.clone(),
        }
    }
}

impl<T: std::fmt::Debug> std::fmt::Debug for MatchResult<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MatchResult")
            .field("plain", &self.plain)
            .field("queues", &self.queues)
            .finish()
    }
}

/// Statistics reported by the monitoring `/subsz` endpoint; field names and
/// meanings follow nats-server.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SublistStats {
    /// Subscriptions currently stored.
    pub num_subscriptions: u32,
    /// Match results currently cached.
    pub num_cache: u32,
    /// Successful inserts since creation.
    pub num_inserts: u64,
    /// Successful removes since creation.
    pub num_removes: u64,
    /// Calls to `matches` since creation.
    pub num_matches: u64,
    /// Fraction of `matches` calls answered from the cache.
    pub cache_hit_rate: f64,
    /// Largest fan-out (plain subscriptions + queue groups) among cached results.
    pub max_fanout: u32,
    /// Average fan-out among cached results.
    pub avg_fanout: f64,
}

/// Cheap hasher for subscription ids. Ids are assigned by the server, not by
/// clients, so there is no hash-flooding concern and SipHash would be wasted
/// work on the insert/remove path.
#[derive(Default, Clone, Copy)]
struct IdHasher(u64);

impl Hasher for IdHasher {
    #[inline]
    fn finish(&self) -> u64 {
        self.0
    }
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }
    #[inline]
    fn write_u64(&mut self, n: u64) {
        // Fibonacci hashing spreads sequential ids across the high bits that
        // hashbrown uses for its control bytes.
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

type IdMap<T> = HashMap<u64, T, BuildHasherDefault<IdHasher>>;

/// One trie node: the subscriptions whose subject ends here, and the next
/// level of tokens.
struct Node<T> {
    plain: IdMap<T>,
    queues: HashMap<Bytes, IdMap<T>>,
    literal: HashMap<Box<[u8]>, Node<T>>,
    pwc: Option<Box<Node<T>>>,
    fwc: Option<Box<Node<T>>>,
}

impl<T> Default for Node<T> {
    fn default() -> Self {
        Node {
            plain: IdMap::default(),
            queues: HashMap::new(),
            literal: HashMap::new(),
            pwc: None,
            fwc: None,
        }
    }
}

/// Frees a branch without recursion: the derived drop would recurse once per
/// token, and a client-supplied subject can have a million of them (nats-server
/// accepts such a SUB with `max_control_line: 8MB`), which overflows a runtime
/// thread's stack and aborts the process.
impl<T> Drop for Node<T> {
    fn drop(&mut self) {
        if self.num_children() == 0 {
            return;
        }
        let mut stack: Vec<Node<T>> = Vec::new();
        self.take_children(&mut stack);
        while let Some(mut node) = stack.pop() {
            node.take_children(&mut stack);
            // `node` now has no children, so its own drop ends here.
        }
    }
}

impl<T> Node<T> {
    /// Moves every child of this node onto `stack`.
    fn take_children(&mut self, stack: &mut Vec<Node<T>>) {
        stack.extend(self.literal.drain().map(|(_, n)| n));
        stack.extend(self.pwc.take().map(|b| *b));
        stack.extend(self.fwc.take().map(|b| *b));
    }

    fn has_subs(&self) -> bool {
        !self.plain.is_empty() || !self.queues.is_empty()
    }

    fn num_children(&self) -> usize {
        self.literal.len() + usize::from(self.pwc.is_some()) + usize::from(self.fwc.is_some())
    }

    fn child(&self, tok: &[u8]) -> Option<&Node<T>> {
        match tok {
            [PWC] => self.pwc.as_deref(),
            [FWC] => self.fwc.as_deref(),
            _ => self.literal.get(tok),
        }
    }

    fn child_mut(&mut self, tok: &[u8]) -> Option<&mut Node<T>> {
        match tok {
            [PWC] => self.pwc.as_deref_mut(),
            [FWC] => self.fwc.as_deref_mut(),
            _ => self.literal.get_mut(tok),
        }
    }

    fn child_or_insert(&mut self, tok: &[u8]) -> &mut Node<T> {
        match tok {
            [PWC] => self.pwc.get_or_insert_with(Default::default),
            [FWC] => self.fwc.get_or_insert_with(Default::default),
            _ => {
                // Look up first so an existing token costs no allocation.
                if !self.literal.contains_key(tok) {
                    self.literal.insert(tok.into(), Node::default());
                }
                self.literal.get_mut(tok).expect("just inserted")
            }
        }
    }

    fn remove_child(&mut self, tok: &[u8]) {
        match tok {
            [PWC] => self.pwc = None,
            [FWC] => self.fwc = None,
            _ => {
                self.literal.remove(tok);
            }
        }
    }
}

/// The trie plus the counters that change with it.
struct Trie<T> {
    root: Node<T>,
    count: usize,
    inserts: u64,
    removes: u64,
}

/// A borrowed view of one node's subscriptions, gathered during a walk and
/// turned into owned results afterwards.
struct Collector<'a, T> {
    plain: Vec<T>,
    queues: Vec<(&'a Bytes, &'a IdMap<T>)>,
}

impl<'a, T: Clone> Collector<'a, T> {
    #[inline]
    fn add(&mut self, node: &'a Node<T>) {
        self.plain.extend(node.plain.values().cloned());
        for (name, members) in &node.queues {
            self.queues.push((name, members));
        }
    }

    fn finish(self) -> MatchResult<T> {
        let mut refs = self.queues;
        let mut queues: Vec<(Bytes, Vec<T>)> = Vec::new();
        if refs.len() > 1 {
            // The same group may appear under several nodes (`foo.*` and
            // `foo.bar`); sorting brings those together for merging.
            refs.sort_unstable_by(|a, b| a.0.cmp(b.0));
        }
        for (name, members) in refs {
            match queues.last_mut() {
                Some((last, list)) if last == name => list.extend(members.values().cloned()),
                _ => queues.push((name.clone(), members.values().cloned().collect())),
            }
        }
        MatchResult {
            plain: self.plain,
            queues,
        }
    }
}

/// Gives memory back once a map that grew large (say 100,000 subscribers of
/// one subject) has mostly emptied. The quarter threshold keeps the O(n)
/// rehash amortised over the removals that led to it.
#[inline]
fn maybe_shrink<T>(map: &mut IdMap<T>) {
    let cap = map.capacity();
    if cap > 64 && map.len() < cap / 4 {
        map.shrink_to_fit();
    }
}

/// Splits the token starting at `start`: returns the token and the start of
/// the next one, if any.
#[inline]
fn next_token(subject: &[u8], start: usize) -> (&[u8], Option<usize>) {
    let rest = &subject[start..];
    match memchr::memchr(TSEP, rest) {
        Some(i) => (&rest[..i], Some(start + i + 1)),
        None => (rest, None),
    }
}

impl<T: SubItem> Trie<T> {
    /// Walks every branch that can match the literal `subject`.
    fn collect(&self, subject: &[u8]) -> MatchResult<T> {
        let mut out = Collector {
            plain: Vec::new(),
            queues: Vec::new(),
        };
        // Explicit stack instead of recursion: subjects are client-supplied
        // and may be very deep.
        let mut stack: Vec<(&Node<T>, usize)> = Vec::with_capacity(8);
        stack.push((&self.root, 0));
        while let Some((node, start)) = stack.pop() {
            let (tok, next) = next_token(subject, start);
            if let Some(f) = node.fwc.as_deref() {
                out.add(f);
            }
            if let Some(p) = node.pwc.as_deref() {
                match next {
                    None => out.add(p),
                    Some(n) => stack.push((p, n)),
                }
            }
            if let Some(c) = node.literal.get(tok) {
                match next {
                    None => out.add(c),
                    Some(n) => stack.push((c, n)),
                }
            }
        }
        out.finish()
    }

    /// Removes one subscription and prunes nodes left empty.
    fn remove(&mut self, subject: &[u8], queue: Option<&[u8]>, id: u64) -> bool {
        let mut node = &mut self.root;
        for tok in subject::tokens(subject) {
            match node.child_mut(tok) {
                Some(n) => node = n,
                None => return false,
            }
        }
        let removed = match queue {
            None => {
                let r = node.plain.remove(&id).is_some();
                maybe_shrink(&mut node.plain);
                r
            }
            Some(q) => match node.queues.get_mut(q) {
                Some(members) => {
                    let r = members.remove(&id).is_some();
                    if members.is_empty() {
                        node.queues.remove(q);
                    } else {
                        maybe_shrink(members);
                    }
                    r
                }
                None => false,
            },
        };
        if !removed {
            return false;
        }
        if !node.has_subs() && node.num_children() == 0 {
            self.prune(subject);
        }
        true
    }

    /// Removes the chain of now-useless nodes at the end of `subject`'s path.
    fn prune(&mut self, subject: &[u8]) {
        // Find the deepest node on the path that must be kept: one with
        // subscriptions or with a branch off the path. Everything below it
        // along the path is empty and goes.
        let mut keep_depth = 0; // the root is always kept
        let mut node = &self.root;
        let ntok = subject::tokens(subject).count();
        for (depth, tok) in subject::tokens(subject).enumerate() {
            let Some(n) = node.child(tok) else { return };
            node = n;
            let d = depth + 1;
            let is_last = d == ntok;
            let needed = node.has_subs() || node.num_children() > usize::from(!is_last);
            if needed && !is_last {
                keep_depth = d;
            } else if needed {
                return; // target still in use
            }
        }
        let mut node = &mut self.root;
        let mut toks = subject::tokens(subject);
        for _ in 0..keep_depth {
            let tok = toks.next().expect("depth within subject");
            node = node.child_mut(tok).expect("path exists");
        }
        if let Some(tok) = toks.next() {
            node.remove_child(tok);
        }
    }
}

/// Published subject -> shared match result.
type ResultCache<T> = HashMap<Box<[u8]>, Arc<MatchResult<T>>>;

/// The subscription store: a token trie plus a bounded match-result cache.
pub struct Sublist<T: SubItem> {
    trie: RwLock<Trie<T>>,
    cache: RwLock<ResultCache<T>>,
    cache_hits: AtomicU64,
    cache_misses: AtomicU64,
    empty: Arc<MatchResult<T>>,
}

impl<T: SubItem> Default for Sublist<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T: SubItem> Sublist<T> {
    /// Creates an empty sublist.
    pub fn new() -> Self {
        Sublist {
            trie: RwLock::new(Trie {
                root: Node::default(),
                count: 0,
                inserts: 0,
                removes: 0,
            }),
            cache: RwLock::new(HashMap::with_capacity(CACHE_MAX + 1)),
            cache_hits: AtomicU64::new(0),
            cache_misses: AtomicU64::new(0),
            empty: Arc::new(MatchResult::default()),
        }
    }

    /// Adds `item` under the subscription `subject`, optionally in queue
    /// group `queue`. Inserting an id that is already present at the same
    /// subject and queue replaces the stored item.
    pub fn insert(
        &self,
        subject: &[u8],
        queue: Option<&[u8]>,
        item: T,
    ) -> Result<(), SublistError> {
        if !subject::valid_subscribe_subject(subject) {
            return Err(SublistError::InvalidSubject);
        }
        if let Some(q) = queue {
            if !subject::valid_queue_name(q) {
                return Err(SublistError::InvalidSubject);
            }
        }
        let mut trie = self.trie.write();
        let mut node = &mut trie.root;
        for tok in subject::tokens(subject) {
            node = node.child_or_insert(tok);
        }
        let id = item.id();
        let fresh = match queue {
            None => node.plain.insert(id, item).is_none(),
            Some(q) => {
                if let Some(members) = node.queues.get_mut(q) {
                    members.insert(id, item).is_none()
                } else {
                    let mut members = IdMap::default();
                    members.insert(id, item);
                    node.queues.insert(Bytes::copy_from_slice(q), members);
                    true
                }
            }
        };
        if fresh {
            trie.count += 1;
        }
        trie.inserts += 1;
        self.invalidate(subject);
        drop(trie);
        Ok(())
    }

    /// Removes the item with `id` stored under `subject` / `queue` (the same
    /// values it was inserted with). Returns whether it was present.
    pub fn remove(&self, subject: &[u8], queue: Option<&[u8]>, id: u64) -> bool {
        let mut trie = self.trie.write();
        if !trie.remove(subject, queue, id) {
            return false;
        }
        trie.count -= 1;
        trie.removes += 1;
        self.invalidate(subject);
        drop(trie);
        true
    }

    /// Everything subscribed to the literal `subject`. The result is shared
    /// and cached until a subscription change affects it.
    ///
    /// `subject` should be a valid publish subject; tokens are always taken
    /// literally, and a subject with an empty token matches nothing.
    pub fn matches(&self, subject: &[u8]) -> Arc<MatchResult<T>> {
        if let Some(r) = self.cache.read().get(subject) {
            self.cache_hits.fetch_add(1, Ordering::Relaxed);
            return Arc::clone(r);
        }
        self.cache_misses.fetch_add(1, Ordering::Relaxed);
        if has_empty_token(subject) {
            return Arc::clone(&self.empty);
        }
        // Hold the trie read lock until the result is cached so that no
        // insert/remove can slip in between and leave a stale entry.
        let trie = self.trie.read();
        let result = Arc::new(trie.collect(subject));
        let mut cache = self.cache.write();
        if cache.len() >= CACHE_MAX {
            // Arbitrary (hash-order) eviction down to the sweep size, like
            // nats-server's random sweep.
            let mut keep = CACHE_SWEEP;
            cache.retain(|_, _| {
                if keep > 0 {
                    keep -= 1;
                    true
                } else {
                    false
                }
            });
        }
        cache.insert(subject.into(), Arc::clone(&result));
        drop(cache);
        drop(trie);
        result
    }

    /// Number of subscriptions stored.
    pub fn count(&self) -> usize {
        self.trie.read().count
    }

    /// A snapshot of counters for monitoring (`/subsz`).
    pub fn stats(&self) -> SublistStats {
        let (count, inserts, removes) = {
            let t = self.trie.read();
            (t.count, t.inserts, t.removes)
        };
        let hits = self.cache_hits.load(Ordering::Relaxed);
        let matches = hits + self.cache_misses.load(Ordering::Relaxed);
        let mut st = SublistStats {
            num_subscriptions: u32::try_from(count).unwrap_or(u32::MAX),
            num_inserts: inserts,
            num_removes: removes,
            num_matches: matches,
            ..Default::default()
        };
        if matches > 0 {
            st.cache_hit_rate = hits as f64 / matches as f64;
        }
        let cache = self.cache.read();
        st.num_cache = u32::try_from(cache.len()).unwrap_or(u32::MAX);
        let (mut total, mut max) = (0usize, 0usize);
        for r in cache.values() {
            let fanout = r.plain.len() + r.queues.len();
            total += fanout;
            max = max.max(fanout);
        }
        st.max_fanout = u32::try_from(max).unwrap_or(u32::MAX);
        if total > 0 {
            st.avg_fanout = total as f64 / cache.len() as f64;
        }
        st
    }

    /// Drops cached results that a subscription on `pattern` could affect.
    /// Called with the trie write lock held.
    fn invalidate(&self, pattern: &[u8]) {
        let mut cache = self.cache.write();
        if cache.is_empty() {
            return;
        }
        if subject::subject_is_literal(pattern) {
            cache.remove(pattern);
        } else {
            cache.retain(|subj, _| !subject::subject_matches(pattern, subj));
        }
    }
}

/// Whether `s` is empty or has an empty token (leading, trailing or doubled
/// separator); such a subject can never match a valid subscription.
#[inline]
fn has_empty_token(s: &[u8]) -> bool {
    s.is_empty()
        || s[0] == TSEP
        || s[s.len() - 1] == TSEP
        || memchr::memmem::find(s, b"..").is_some()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{BTreeMap, BTreeSet};

    #[derive(Clone, Debug, PartialEq)]
    struct Sub(u64);
    impl SubItem for Sub {
        fn id(&self) -> u64 {
            self.0
        }
    }

    fn ids(r: &MatchResult<Sub>) -> Vec<u64> {
        let mut v: Vec<u64> = r.plain.iter().map(|s| s.0).collect();
        v.sort_unstable();
        v
    }

    fn qmap(r: &MatchResult<Sub>) -> BTreeMap<Vec<u8>, BTreeSet<u64>> {
        let mut m = BTreeMap::new();
        for (name, members) in &r.queues {
            let prev = m.insert(name.to_vec(), members.iter().map(|s| s.0).collect());
            assert!(prev.is_none(), "queue group {name:?} reported twice");
        }
        m
    }

    fn qset(pairs: &[(&str, &[u64])]) -> BTreeMap<Vec<u8>, BTreeSet<u64>> {
        pairs
            .iter()
            .map(|(n, ids)| (n.as_bytes().to_vec(), ids.iter().copied().collect()))
            .collect()
    }

    #[test]
    fn literal_match() {
        let sl = Sublist::new();
        sl.insert(b"foo", None, Sub(1)).unwrap();
        sl.insert(b"foo.bar", None, Sub(2)).unwrap();
        assert_eq!(ids(&sl.matches(b"foo")), [1]);
        assert_eq!(ids(&sl.matches(b"foo.bar")), [2]);
        assert!(sl.matches(b"bar").is_empty());
        assert!(sl.matches(b"foo.bar.baz").is_empty());
        assert_eq!(sl.count(), 2);
    }

    #[test]
    fn wildcards() {
        let sl = Sublist::new();
        sl.insert(b"foo.*", None, Sub(1)).unwrap();
        sl.insert(b"foo.>", None, Sub(2)).unwrap();
        sl.insert(b"*.bar", None, Sub(3)).unwrap();
        sl.insert(b">", None, Sub(4)).unwrap();
        sl.insert(b"*", None, Sub(5)).unwrap();
        sl.insert(b"foo.*.baz", None, Sub(6)).unwrap();
        sl.insert(b"*.*.>", None, Sub(7)).unwrap();
        assert_eq!(ids(&sl.matches(b"foo")), [4, 5]);
        assert_eq!(ids(&sl.matches(b"foo.bar")), [1, 2, 3, 4]);
        assert_eq!(ids(&sl.matches(b"foo.bar.baz")), [2, 4, 6, 7]);
        assert_eq!(ids(&sl.matches(b"foo.x.y.z")), [2, 4, 7]);
        assert_eq!(ids(&sl.matches(b"x.bar")), [3, 4]);
        assert_eq!(ids(&sl.matches(b"x.y.z")), [4, 7]);
        // `foo*` is a literal token, not a wildcard.
        sl.insert(b"foo*", None, Sub(8)).unwrap();
        assert_eq!(ids(&sl.matches(b"foo")), [4, 5]);
        assert_eq!(ids(&sl.matches(b"foo*")), [4, 5, 8]);
        assert_eq!(ids(&sl.matches(b"foox")), [4, 5]);
    }

    #[test]
    fn invalid_inserts_rejected() {
        let sl = Sublist::new();
        for bad in [
            &b""[..],
            b"foo.",
            b".foo",
            b"foo..bar",
            b"foo.>.bar",
            b"foo bar",
        ] {
            assert_eq!(
                sl.insert(bad, None, Sub(1)),
                Err(SublistError::InvalidSubject)
            );
        }
        assert_eq!(
            sl.insert(b"foo", Some(b""), Sub(1)),
            Err(SublistError::InvalidSubject)
        );
        assert_eq!(
            sl.insert(b"foo", Some(b"a b"), Sub(1)),
            Err(SublistError::InvalidSubject)
        );
        assert_eq!(sl.count(), 0);
        assert_eq!(sl.stats().num_inserts, 0);
    }

    #[test]
    fn odd_publish_subjects_match_nothing() {
        let sl = Sublist::new();
        sl.insert(b">", None, Sub(1)).unwrap();
        sl.insert(b"foo.*.bar", None, Sub(2)).unwrap();
        for s in [&b""[..], b".", b"foo..bar", b".foo", b"foo."] {
            assert!(sl.matches(s).is_empty(), "{s:?}");
        }
    }

    #[test]
    fn queue_groups_merged_across_nodes() {
        let sl = Sublist::new();
        sl.insert(b"foo.bar", Some(b"q1"), Sub(1)).unwrap();
        sl.insert(b"foo.*", Some(b"q1"), Sub(2)).unwrap();
        sl.insert(b"foo.>", Some(b"q1"), Sub(3)).unwrap();
        sl.insert(b"foo.bar", Some(b"q2"), Sub(4)).unwrap();
        sl.insert(b"foo.bar", Some(b"q2"), Sub(5)).unwrap();
        sl.insert(b"foo.bar", None, Sub(6)).unwrap();
        sl.insert(b"foo.baz", Some(b"q2"), Sub(7)).unwrap();
        let r = sl.matches(b"foo.bar");
        assert_eq!(ids(&r), [6]);
        assert_eq!(qmap(&r), qset(&[("q1", &[1, 2, 3]), ("q2", &[4, 5])]));
        let r = sl.matches(b"foo.baz");
        assert!(r.plain.is_empty());
        assert_eq!(qmap(&r), qset(&[("q1", &[2, 3]), ("q2", &[7])]));
        let r = sl.matches(b"foo.x.y");
        assert_eq!(qmap(&r), qset(&[("q1", &[3])]));
    }

    #[test]
    fn remove_and_prune() {
        let sl = Sublist::new();
        sl.insert(b"a.b.c", None, Sub(1)).unwrap();
        sl.insert(b"a.b", None, Sub(2)).unwrap();
        sl.insert(b"a.*.c", Some(b"q"), Sub(3)).unwrap();
        sl.insert(b"a.>", None, Sub(4)).unwrap();
        sl.insert(b"x.y.z.w", None, Sub(5)).unwrap();
        assert_eq!(sl.count(), 5);

        // Wrong subject, queue or id: nothing removed.
        assert!(!sl.remove(b"a.b.c", None, 2));
        assert!(!sl.remove(b"a.b.c", Some(b"q"), 1));
        assert!(!sl.remove(b"a.*.c", None, 3));
        assert!(!sl.remove(b"a.*.c", Some(b"other"), 3));
        assert!(!sl.remove(b"nope.nope", None, 1));
        assert!(!sl.remove(b"a", None, 1));

        assert!(sl.remove(b"a.b.c", None, 1));
        assert!(!sl.remove(b"a.b.c", None, 1));
        assert_eq!(ids(&sl.matches(b"a.b.c")), [4]);
        // `a.b` still has a subscription, so the node survives.
        assert_eq!(ids(&sl.matches(b"a.b")), [2, 4]);
        assert!(sl.remove(b"a.*.c", Some(b"q"), 3));
        assert!(sl.matches(b"a.b.c").queues.is_empty());
        assert!(sl.remove(b"a.b", None, 2));
        assert!(sl.remove(b"a.>", None, 4));
        {
            let t = sl.trie.read();
            assert_eq!(t.root.literal.len(), 1, "only x.y.z.w left");
        }
        assert!(sl.remove(b"x.y.z.w", None, 5));
        assert_eq!(sl.count(), 0);
        let t = sl.trie.read();
        assert_eq!(t.root.num_children(), 0);
        assert!(!t.root.has_subs());
        let st = sl.stats();
        assert_eq!((st.num_inserts, st.num_removes), (5, 5));
    }

    #[test]
    fn prune_keeps_sibling_branches() {
        let sl = Sublist::new();
        sl.insert(b"a.b.c.d", None, Sub(1)).unwrap();
        sl.insert(b"a.b.x", None, Sub(2)).unwrap();
        sl.insert(b"a.b.*.d", None, Sub(3)).unwrap();
        assert!(sl.remove(b"a.b.c.d", None, 1));
        assert_eq!(ids(&sl.matches(b"a.b.x")), [2]);
        assert_eq!(ids(&sl.matches(b"a.b.c.d")), [3]);
        {
            let t = sl.trie.read();
            let b = t.root.child(b"a").unwrap().child(b"b").unwrap();
            assert!(b.child(b"c").is_none(), "a.b.c pruned");
            assert!(b.child(b"x").is_some());
            assert!(b.child(b"*").is_some());
        }
        assert!(sl.remove(b"a.b.*.d", None, 3));
        assert!(sl.remove(b"a.b.x", None, 2));
        assert_eq!(sl.trie.read().root.num_children(), 0);
    }

    #[test]
    fn cache_sees_inserts_and_removes() {
        let sl = Sublist::new();
        sl.insert(b"foo.bar", None, Sub(1)).unwrap();
        assert_eq!(ids(&sl.matches(b"foo.bar")), [1]);
        assert_eq!(ids(&sl.matches(b"foo.bar")), [1]);
        assert!(sl.matches(b"foo.baz").is_empty());
        assert_eq!(sl.stats().num_cache, 2);

        // Literal insert invalidates just its own subject.
        sl.insert(b"foo.bar", None, Sub(2)).unwrap();
        assert_eq!(sl.stats().num_cache, 1);
        assert_eq!(ids(&sl.matches(b"foo.bar")), [1, 2]);

        // Wildcard insert invalidates every cached subject it matches.
        sl.insert(b"foo.*", None, Sub(3)).unwrap();
        assert_eq!(ids(&sl.matches(b"foo.bar")), [1, 2, 3]);
        assert_eq!(ids(&sl.matches(b"foo.baz")), [3]);
        sl.insert(b"foo.*", Some(b"g"), Sub(4)).unwrap();
        assert_eq!(qmap(&sl.matches(b"foo.baz")), qset(&[("g", &[4])]));

        // Unrelated subscription keeps the cached entries.
        sl.matches(b"foo.bar");
        let before = sl.stats().num_cache;
        sl.insert(b"other.>", None, Sub(5)).unwrap();
        assert_eq!(sl.stats().num_cache, before);

        assert!(sl.remove(b"foo.*", None, 3));
        assert_eq!(ids(&sl.matches(b"foo.bar")), [1, 2]);
        assert!(sl.matches(b"foo.baz").plain.is_empty());
        assert!(sl.remove(b"foo.*", Some(b"g"), 4));
        assert!(sl.matches(b"foo.baz").is_empty());
        assert!(sl.remove(b"foo.bar", None, 1));
        assert_eq!(ids(&sl.matches(b"foo.bar")), [2]);
    }

    #[test]
    fn cached_result_is_shared() {
        let sl = Sublist::new();
        sl.insert(b"foo", None, Sub(1)).unwrap();
        let a = sl.matches(b"foo");
        let b = sl.matches(b"foo");
        assert!(Arc::ptr_eq(&a, &b));
        let st = sl.stats();
        assert_eq!(st.num_matches, 2);
        assert!((st.cache_hit_rate - 0.5).abs() < 1e-9);
    }

    #[test]
    fn cache_is_bounded() {
        let sl = Sublist::new();
        sl.insert(b"x.*", None, Sub(1)).unwrap();
        for i in 0..5000 {
            let s = format!("x.{i}");
            assert_eq!(ids(&sl.matches(s.as_bytes())), [1]);
            assert!(sl.stats().num_cache as usize <= CACHE_MAX);
        }
        assert!(sl.stats().num_cache > 0);
    }

    #[test]
    fn stats_fanout() {
        let sl = Sublist::new();
        sl.insert(b"a", None, Sub(1)).unwrap();
        sl.insert(b"a", None, Sub(2)).unwrap();
        sl.insert(b"a", Some(b"q"), Sub(3)).unwrap();
        sl.insert(b"a", Some(b"q"), Sub(4)).unwrap();
        sl.insert(b"b", None, Sub(5)).unwrap();
        sl.matches(b"a");
        sl.matches(b"b");
        sl.matches(b"c");
        let st = sl.stats();
        assert_eq!(st.num_subscriptions, 5);
        assert_eq!(st.num_cache, 3);
        assert_eq!(st.max_fanout, 3); // two plain + one queue group
        assert!((st.avg_fanout - 4.0 / 3.0).abs() < 1e-9);
        assert_eq!(st.cache_hit_rate, 0.0);
        let json = serde_json::to_value(&st).unwrap();
        for key in [
            "num_subscriptions",
            "num_cache",
            "num_inserts",
            "num_removes",
            "num_matches",
            "cache_hit_rate",
            "max_fanout",
            "avg_fanout",
        ] {
            assert!(json.get(key).is_some(), "{key}");
        }
    }

    #[test]
    fn duplicate_id_replaces() {
        let sl = Sublist::new();
        sl.insert(b"a", None, Sub(1)).unwrap();
        sl.insert(b"a", None, Sub(1)).unwrap();
        assert_eq!(sl.count(), 1);
        assert_eq!(ids(&sl.matches(b"a")), [1]);
        assert!(sl.remove(b"a", None, 1));
        assert_eq!(sl.count(), 0);
    }

    #[test]
    fn many_subs_same_subject() {
        const N: u64 = 100_000;
        let sl = Sublist::new();
        let start = std::time::Instant::now();
        for i in 0..N {
            sl.insert(b"hot.subject", None, Sub(i)).unwrap();
            sl.insert(b"hot.*", Some(b"workers"), Sub(N + i)).unwrap();
        }
        let r = sl.matches(b"hot.subject");
        assert_eq!(r.plain.len(), N as usize);
        assert_eq!(r.queues.len(), 1);
        assert_eq!(r.queues[0].1.len(), N as usize);
        for i in 0..N {
            assert!(sl.remove(b"hot.subject", None, i));
            assert!(sl.remove(b"hot.*", Some(b"workers"), N + i));
        }
        assert_eq!(sl.count(), 0);
        assert_eq!(sl.trie.read().root.num_children(), 0);
        // Linear per-node scans would take minutes here; allow generous slack
        // for unoptimised builds on a busy machine.
        assert!(start.elapsed() < std::time::Duration::from_secs(30));
    }

    /// A million-token branch is inserted, matched, pruned and dropped on a
    /// thread with a small stack: nothing may recurse per token.
    #[test]
    fn million_token_subjects_use_no_stack_per_token() {
        let deep = vec!["a"; 1_000_000].join(".");
        let run = move || {
            let sl = Sublist::<Sub>::new();
            sl.insert(deep.as_bytes(), None, Sub(1)).unwrap();
            let wild = format!("{deep}.>");
            sl.insert(wild.as_bytes(), Some(b"q"), Sub(2)).unwrap();
            assert_eq!(ids(&sl.matches(deep.as_bytes())), vec![1]);
            // Pruning the literal leaves the `>` branch; dropping the list
            // frees that one.
            assert!(sl.remove(deep.as_bytes(), None, 1));
            assert_eq!(sl.count(), 1);
            let other = format!("{}.b", vec!["a"; 500_000].join("."));
            sl.insert(other.as_bytes(), None, Sub(3)).unwrap();
            drop(sl);
        };
        std::thread::Builder::new()
            .stack_size(256 * 1024)
            .spawn(run)
            .unwrap()
            .join()
            .expect("deep subjects must not overflow the stack");
    }

    #[test]
    fn emptied_member_maps_shrink() {
        let sl = Sublist::new();
        for i in 0..10_000 {
            sl.insert(b"big", None, Sub(i)).unwrap();
            sl.insert(b"big", Some(b"q"), Sub(100_000 + i)).unwrap();
        }
        for i in 10..10_000 {
            assert!(sl.remove(b"big", None, i));
            assert!(sl.remove(b"big", Some(b"q"), 100_000 + i));
        }
        let t = sl.trie.read();
        let node = t.root.child(b"big").unwrap();
        assert_eq!(node.plain.len(), 10);
        assert!(node.plain.capacity() < 1000, "{}", node.plain.capacity());
        assert!(node.queues[&b"q"[..]].capacity() < 1000);
    }

    #[test]
    fn concurrent_use() {
        let sl = Arc::new(Sublist::new());
        sl.insert(b"shared.>", None, Sub(0)).unwrap();
        let handles: Vec<_> = (0..4u64)
            .map(|t| {
                let sl = Arc::clone(&sl);
                std::thread::spawn(move || {
                    for i in 0..2000u64 {
                        let id = 1 + t * 10_000 + i;
                        let subj = format!("shared.{t}.{}", i % 7);
                        sl.insert(subj.as_bytes(), None, Sub(id)).unwrap();
                        let r = sl.matches(subj.as_bytes());
                        assert!(r.plain.iter().any(|s| s.0 == id));
                        assert!(r.plain.iter().any(|s| s.0 == 0));
                        assert!(sl.remove(subj.as_bytes(), None, id));
                        let r = sl.matches(subj.as_bytes());
                        assert!(!r.plain.iter().any(|s| s.0 == id));
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        assert_eq!(sl.count(), 1);
    }

    mod property {
        use super::*;
        use proptest::prelude::*;

        #[derive(Debug, Clone)]
        enum Op {
            Insert(String, Option<&'static str>),
            Remove(usize),
            Match(String),
        }

        const TOKENS: &[&str] = &["a", "b", "c"];

        fn literal_subject() -> impl Strategy<Value = String> {
            prop::collection::vec(prop::sample::select(TOKENS), 1..=4).prop_map(|t| t.join("."))
        }

        fn pattern() -> impl Strategy<Value = String> {
            let tok = prop_oneof![
                3 => prop::sample::select(TOKENS),
                1 => Just("*"),
            ];
            (
                prop::collection::vec(tok, 1..=4),
                any::<bool>(),
                any::<bool>(),
            )
                .prop_map(|(mut t, fwc, replace)| {
                    if fwc {
                        if replace {
                            *t.last_mut().unwrap() = ">";
                        } else {
                            t.push(">");
                        }
                    }
                    t.join(".")
                })
        }

        fn op() -> impl Strategy<Value = Op> {
            let queue = prop_oneof![
                2 => Just(None),
                1 => Just(Some("q1")),
                1 => Just(Some("q2")),
            ];
            prop_oneof![
                4 => (pattern(), queue).prop_map(|(p, q)| Op::Insert(p, q)),
                2 => any::<usize>().prop_map(Op::Remove),
                4 => literal_subject().prop_map(Op::Match),
            ]
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(256))]
            #[test]
            fn matches_reference(ops in prop::collection::vec(op(), 1..120)) {
                let sl = Sublist::new();
                let mut live: Vec<(String, Option<&'static str>, u64)> = Vec::new();
                let mut next_id = 0u64;
                for op in ops {
                    match op {
                        Op::Insert(p, q) => {
                            next_id += 1;
                            sl.insert(p.as_bytes(), q.map(str::as_bytes), Sub(next_id)).unwrap();
                            live.push((p, q, next_id));
                        }
                        Op::Remove(i) => {
                            if live.is_empty() {
                                prop_assert!(!sl.remove(b"a", None, 1));
                                continue;
                            }
                            let (p, q, id) = live.swap_remove(i % live.len());
                            prop_assert!(sl.remove(p.as_bytes(), q.map(str::as_bytes), id));
                            prop_assert!(!sl.remove(p.as_bytes(), q.map(str::as_bytes), id));
                        }
                        Op::Match(s) => {
                            let r = sl.matches(s.as_bytes());
                            let mut want_plain = Vec::new();
                            let mut want_q: BTreeMap<Vec<u8>, BTreeSet<u64>> = BTreeMap::new();
                            for (p, q, id) in &live {
                                if subject::subject_matches(p.as_bytes(), s.as_bytes()) {
                                    match q {
                                        None => want_plain.push(*id),
                                        Some(q) => {
                                            want_q.entry(q.as_bytes().to_vec()).or_default().insert(*id);
                                        }
                                    }
                                }
                            }
                            want_plain.sort_unstable();
                            prop_assert_eq!(ids(&r), want_plain, "subject {}", s);
                            prop_assert_eq!(qmap(&r), want_q, "subject {}", s);
                            for (_, members) in &r.queues {
                                let set: BTreeSet<u64> = members.iter().map(|m| m.0).collect();
                                prop_assert_eq!(set.len(), members.len(), "duplicate queue member");
                            }
                        }
                    }
                    prop_assert_eq!(sl.count(), live.len());
                }
                // Removing everything returns the trie to empty.
                for (p, q, id) in live.drain(..) {
                    prop_assert!(sl.remove(p.as_bytes(), q.map(str::as_bytes), id));
                }
                let t = sl.trie.read();
                prop_assert_eq!(t.root.num_children(), 0);
                prop_assert_eq!(t.count, 0);
            }
        }
    }
}
