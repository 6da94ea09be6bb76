//! Maps that a new snapshot can change without copying: a shared, immutable base and a small
//! delta of changes made since the base was built.
//!
//! Every admin change puts a new [`super::Snapshot`] in force. Copying 100,000 tokens for each
//! change would make a write cost grow with the number of objects; instead a snapshot shares
//! its predecessor's base (an `Arc`) and copies only the delta. When the delta grows past about
//! twice the square root of the base (at least 64 entries), it is folded into a new base. A
//! change therefore copies O(√n) entries, and a fold, O(n), happens once every O(√n) changes:
//! both stay small at 100,000 objects (measured in `benches/admin_store.rs`).

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Arc;

/// The delta size past which a change folds the delta into a new base.
pub fn fold_limit(base_len: usize) -> usize {
    let root = (base_len as f64).sqrt() as usize;
    (2 * root).max(64)
}

/// A map made of a shared base and a delta (`None` = removed from the base).
#[derive(Debug)]
pub struct Layered<K, V> {
    base: Arc<HashMap<K, V>>,
    delta: HashMap<K, Option<V>>,
    len: usize,
}

impl<K: Clone, V: Clone> Clone for Layered<K, V> {
    fn clone(&self) -> Self {
        Layered {
            base: self.base.clone(),
            delta: self.delta.clone(),
            len: self.len,
        }
    }
}

impl<K, V> Default for Layered<K, V> {
    fn default() -> Self {
        Layered {
            base: Arc::new(HashMap::new()),
            delta: HashMap::new(),
            len: 0,
        }
    }
}

impl<K: Hash + Eq + Clone, V: Clone> From<HashMap<K, V>> for Layered<K, V> {
    fn from(m: HashMap<K, V>) -> Self {
        let len = m.len();
        Layered {
            base: Arc::new(m),
            delta: HashMap::new(),
            len,
        }
    }
}

impl<K: Hash + Eq + Clone, V: Clone> Layered<K, V> {
    pub fn get<Q>(&self, k: &Q) -> Option<&V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        match self.delta.get(k) {
            Some(v) => v.as_ref(),
            None => self.base.get(k),
        }
    }

    pub fn contains_key<Q>(&self, k: &Q) -> bool
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.get(k).is_some()
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Every entry, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&K, &V)> + Clone {
        let delta = &self.delta;
        delta
            .iter()
            .filter_map(|(k, v)| v.as_ref().map(|v| (k, v)))
            .chain(
                self.base
                    .iter()
                    .filter(move |(k, _)| !delta.contains_key(*k)),
            )
    }

    pub fn values(&self) -> impl Iterator<Item = &V> + Clone {
        self.iter().map(|(_, v)| v)
    }

    pub fn keys(&self) -> impl Iterator<Item = &K> + Clone {
        self.iter().map(|(k, _)| k)
    }

    /// This map with `changes` made (`None` removes), sharing the base when it can.
    pub fn with_changes(&self, changes: impl IntoIterator<Item = (K, Option<V>)>) -> Self {
        let mut next = self.clone();
        for (k, v) in changes {
            let had = next.contains_key(&k);
            match (&v, had) {
                (Some(_), false) => next.len += 1,
                (None, true) => next.len -= 1,
                _ => {}
            }
            if v.is_none() && !next.base.contains_key(&k) {
                // nothing in the base to hide
                next.delta.remove(&k);
            } else {
                next.delta.insert(k, v);
            }
        }
        if next.delta.len() > fold_limit(next.base.len()) {
            next.fold();
        }
        next
    }

    /// Folds the delta into a new base (O(n)).
    fn fold(&mut self) {
        let mut base: HashMap<K, V> = (*self.base).clone();
        for (k, v) in self.delta.drain() {
            match v {
                Some(v) => {
                    base.insert(k, v);
                }
                None => {
                    base.remove(&k);
                }
            }
        }
        self.len = base.len();
        self.base = Arc::new(base);
    }

    /// The entries of the delta (for tests).
    #[cfg(test)]
    pub fn delta_len(&self) -> usize {
        self.delta.len()
    }
}

impl<'a, K: Hash + Eq + Clone, V: Clone> IntoIterator for &'a Layered<K, V> {
    type Item = (&'a K, &'a V);
    type IntoIter = Box<dyn Iterator<Item = (&'a K, &'a V)> + 'a>;
    fn into_iter(self) -> Self::IntoIter {
        Box::new(self.iter())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    /// A model check: random changes against a plain map.
    #[test]
    fn behaves_like_a_map_across_folds() {
        let mut model: BTreeMap<u32, u32> = BTreeMap::new();
        let mut l: Layered<u32, u32> = HashMap::new().into();
        let mut x: u64 = 0x9e3779b97f4a7c15;
        let mut folds = 0;
        for i in 0..20_000u32 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let k = (x % 3000) as u32;
            let v = if x.is_multiple_of(5) { None } else { Some(i) };
            match v {
                Some(v) => {
                    model.insert(k, v);
                }
                None => {
                    model.remove(&k);
                }
            }
            let before = l.delta_len();
            l = l.with_changes([(k, v)]);
            if l.delta_len() < before {
                folds += 1;
            }
            assert_eq!(l.len(), model.len());
            if i % 997 == 0 {
                let mut got: Vec<_> = l.iter().map(|(k, v)| (*k, *v)).collect();
                got.sort();
                let want: Vec<_> = model.iter().map(|(k, v)| (*k, *v)).collect();
                assert_eq!(got, want);
            }
        }
        for k in 0..3000 {
            assert_eq!(l.get(&k), model.get(&k));
        }
        assert!(folds > 10, "the delta was folded {folds} times");
        assert!(l.delta_len() <= fold_limit(3000));
    }

    #[test]
    fn an_old_snapshot_is_not_changed_by_a_new_one() {
        let a: Layered<String, u32> = HashMap::from([("x".to_string(), 1)]).into();
        let b = a.with_changes([("x".to_string(), None), ("y".to_string(), Some(2))]);
        assert_eq!(a.get("x"), Some(&1));
        assert_eq!(a.get("y"), None);
        assert_eq!(b.get("x"), None);
        assert_eq!(b.get("y"), Some(&2));
        assert_eq!((a.len(), b.len()), (1, 1));
    }
}
