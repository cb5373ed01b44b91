//! A hash map split into [`SHARDS`] maps by the key's hash, so that it grows a shard at a
//! time. One map of a million entries doubles by moving all of them at once, on the writer's
//! thread, while every caller of the group commit waits: an idempotency index of 800,000
//! entries took 180–320 ms to grow, the whole p99.9 of a batch load (BENCHMARKS.md). Split,
//! a growth moves 1/[`SHARDS`] of the entries.
//!
//! It serializes as one map (the snapshot's bytes are a plain map's), compares by content,
//! and answers the few calls the state needs. [`Chunked`] does the same for a queue.

use serde::de::{MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::collections::HashMap;
use std::hash::{BuildHasher, Hash};
use std::marker::PhantomData;

/// Shards per map: a growth moves at most 1/256 of the entries (about 1 ms at a million
/// entries of the index), and 256 empty maps cost 12 KiB.
pub const SHARDS: usize = 256;

/// How a key picks its shard.
pub trait Shard {
    /// A number whose low byte picks the shard; `pick` is the map's seeded hasher, for keys
    /// that are not uniform already.
    fn shard(&self, pick: &foldhash::fast::RandomState) -> usize;
}

/// Fingerprints are blake3 output: their first byte is uniform already.
impl Shard for [u8; 16] {
    fn shard(&self, _: &foldhash::fast::RandomState) -> usize {
        usize::from(self[0])
    }
}

/// Sequence numbers and hold ids are consecutive: their low byte spreads them evenly.
impl Shard for u64 {
    fn shard(&self, _: &foldhash::fast::RandomState) -> usize {
        *self as usize
    }
}

/// A hash map of [`SHARDS`] shards, the shard picked by [`Shard`] (no second hash for
/// fingerprints and sequence numbers), each shard a map hashing with `S` (SipHash for keys
/// callers choose).
#[derive(Clone)]
pub struct Sharded<K, V, S = foldhash::fast::RandomState> {
    /// For keys that hash to pick their shard: foldhash whatever `S` is (a second SipHash of
    /// every account key cost the writer 10% of its rate). A caller who steers keys into
    /// one shard gains little: the shard still hashes with `S`, and this seed is not theirs
    /// to see.
    pick: foldhash::fast::RandomState,
    shards: Vec<HashMap<K, V, S>>,
    len: usize,
}

impl<K, V, S: Default> Default for Sharded<K, V, S> {
    fn default() -> Self {
        Self {
            pick: foldhash::fast::RandomState::default(),
            shards: (0..SHARDS).map(|_| HashMap::with_hasher(S::default())).collect(),
            len: 0,
        }
    }
}

impl<K: Hash + Eq + Shard, V, S: BuildHasher + Default> Sharded<K, V, S> {
    fn shard_of(&self, key: &K) -> usize {
        key.shard(&self.pick) % SHARDS
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn get(&self, key: &K) -> Option<&V> {
        self.shards[self.shard_of(key)].get(key)
    }

    pub fn get_mut(&mut self, key: &K) -> Option<&mut V> {
        let shard = self.shard_of(key);
        self.shards[shard].get_mut(key)
    }

    pub fn insert(&mut self, key: K, value: V) -> Option<V> {
        let shard = self.shard_of(&key);
        let previous = self.shards[shard].insert(key, value);
        if previous.is_none() {
            self.len += 1;
        }
        previous
    }

    pub fn remove(&mut self, key: &K) -> Option<V> {
        let shard = self.shard_of(key);
        let removed = self.shards[shard].remove(key);
        if removed.is_some() {
            self.len -= 1;
        }
        removed
    }

    /// Every entry, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        self.shards.iter().flat_map(|shard| shard.iter())
    }

    pub fn clear(&mut self) {
        self.shards.iter_mut().for_each(HashMap::clear);
        self.len = 0;
    }
}

impl<K: Hash + Eq + Shard, V, S: BuildHasher + Default> std::ops::Index<&K> for Sharded<K, V, S> {
    type Output = V;

    /// The value under `key`; panics if there is none, as a map's index does.
    fn index(&self, key: &K) -> &V {
        self.get(key).expect("the key is in the map")
    }
}

impl<K: Hash + Eq + Shard, V: PartialEq, S: BuildHasher + Default> PartialEq for Sharded<K, V, S> {
    fn eq(&self, other: &Self) -> bool {
        self.len == other.len && self.iter().all(|(k, v)| other.get(k) == Some(v))
    }
}

impl<K: Hash + Eq + Shard, V: Eq, S: BuildHasher + Default> Eq for Sharded<K, V, S> {}

impl<K: std::fmt::Debug, V: std::fmt::Debug, S> std::fmt::Debug for Sharded<K, V, S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map()
            .entries(self.shards.iter().flat_map(|shard| shard.iter()))
            .finish()
    }
}

impl<K: Serialize, V: Serialize, S> Serialize for Sharded<K, V, S> {
    fn serialize<Ser: Serializer>(&self, serializer: Ser) -> Result<Ser::Ok, Ser::Error> {
        let mut map = serializer.serialize_map(Some(self.len))?;
        for (k, v) in self.shards.iter().flat_map(|shard| shard.iter()) {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

impl<'de, K, V, S> Deserialize<'de> for Sharded<K, V, S>
where
    K: Deserialize<'de> + Hash + Eq + Shard,
    V: Deserialize<'de>,
    S: BuildHasher + Default,
{
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Entries<K, V, S>(PhantomData<(K, V, S)>);
        impl<'de, K, V, S> Visitor<'de> for Entries<K, V, S>
        where
            K: Deserialize<'de> + Hash + Eq + Shard,
            V: Deserialize<'de>,
            S: BuildHasher + Default,
        {
            type Value = Sharded<K, V, S>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a map")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Self::Value, A::Error> {
                let mut map = Sharded::default();
                while let Some((k, v)) = access.next_entry()? {
                    if map.insert(k, v).is_some() {
                        return Err(serde::de::Error::custom("a key appears twice in a map"));
                    }
                }
                Ok(map)
            }
        }
        deserializer.deserialize_map(Entries(PhantomData))
    }
}

/// Items per chunk of a [`Chunked`] queue.
pub const CHUNK: usize = 4096;

/// A first-in first-out queue in chunks of [`CHUNK`] items: it grows by a chunk, never by
/// copying what it holds (a `VecDeque` of 500,000 window entries took 86 ms to double on
/// the writer's thread). Serializes as one sequence, as a `VecDeque` does.
#[derive(Clone)]
pub struct Chunked<T> {
    chunks: std::collections::VecDeque<Vec<T>>,
    /// Items already taken from the front chunk.
    taken: usize,
    len: usize,
}

impl<T> Chunked<T> {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn push_back(&mut self, item: T) {
        match self.chunks.back_mut() {
            Some(chunk) if chunk.len() < CHUNK => chunk.push(item),
            _ => {
                let mut chunk = Vec::with_capacity(CHUNK);
                chunk.push(item);
                self.chunks.push_back(chunk);
            }
        }
        self.len += 1;
    }

    /// The `at`-th item from the front.
    pub fn get(&self, at: usize) -> Option<&T> {
        if at >= self.len {
            return None;
        }
        let at = at + self.taken;
        self.chunks.get(at / CHUNK).and_then(|chunk| chunk.get(at % CHUNK))
    }

    /// Takes the first `n` items (all of them if there are fewer), oldest first. Whole
    /// chunks are moved out; from a chunk taken in part the items are copied, and the chunk
    /// goes when its last item does (so every chunk but the last stays full and `get`
    /// indexes by division).
    pub fn take_front(&mut self, n: usize) -> Vec<T>
    where
        T: Clone,
    {
        let n = n.min(self.len);
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            let want = n - out.len();
            let front = self.chunks.front().expect("a queue of len > 0 has a chunk");
            if want >= front.len() - self.taken {
                let chunk = self.chunks.pop_front().expect("the front chunk");
                out.extend(chunk.into_iter().skip(self.taken));
                self.taken = 0;
            } else {
                out.extend_from_slice(&front[self.taken..self.taken + want]);
                self.taken += want;
            }
        }
        self.len -= n;
        out
    }

    pub fn iter(&self) -> impl Iterator<Item = &T> {
        self.chunks.iter().flatten().skip(self.taken)
    }
}

impl<T> Default for Chunked<T> {
    fn default() -> Self {
        Self {
            chunks: std::collections::VecDeque::new(),
            taken: 0,
            len: 0,
        }
    }
}

/// By content: a queue read back from a snapshot is laid out afresh.
impl<T: PartialEq> PartialEq for Chunked<T> {
    fn eq(&self, other: &Self) -> bool {
        self.len == other.len && self.iter().eq(other.iter())
    }
}

impl<T: Eq> Eq for Chunked<T> {}

impl<T> std::ops::Index<usize> for Chunked<T> {
    type Output = T;

    fn index(&self, at: usize) -> &T {
        self.get(at).expect("the index is within the queue")
    }
}

impl<T: std::fmt::Debug> std::fmt::Debug for Chunked<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

impl<T: Serialize> Serialize for Chunked<T> {
    fn serialize<Ser: Serializer>(&self, serializer: Ser) -> Result<Ser::Ok, Ser::Error> {
        use serde::ser::SerializeSeq;
        let mut seq = serializer.serialize_seq(Some(self.len))?;
        for item in self.iter() {
            seq.serialize_element(item)?;
        }
        seq.end()
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Chunked<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Items<T>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for Items<T> {
            type Value = Chunked<T>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a sequence")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut access: A) -> Result<Self::Value, A::Error> {
                let mut queue = Chunked::default();
                while let Some(item) = access.next_element()? {
                    queue.push_back(item);
                }
                Ok(queue)
            }
        }
        deserializer.deserialize_seq(Items(PhantomData))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn behaves_as_one_map_and_serializes_as_one() {
        let mut sharded: Sharded<u64, u64> = Sharded::default();
        let mut plain: HashMap<u64, u64> = HashMap::new();
        for n in 0..10_000u64 {
            let key = n.wrapping_mul(0x9E37_79B9_7F4A_7C15) % 3_000;
            assert_eq!(sharded.insert(key, n), plain.insert(key, n));
            if n % 7 == 0 {
                assert_eq!(sharded.remove(&(n % 3_000)), plain.remove(&(n % 3_000)));
            }
            assert_eq!(sharded.len(), plain.len());
        }
        for (k, v) in &plain {
            assert_eq!(sharded.get(k), Some(v));
        }
        let bytes = rmp_serde::to_vec(&sharded).unwrap();
        let as_plain: HashMap<u64, u64> = rmp_serde::from_slice(&bytes).unwrap();
        assert_eq!(as_plain, plain);
        let back: Sharded<u64, u64> = rmp_serde::from_slice(&rmp_serde::to_vec(&plain).unwrap()).unwrap();
        assert_eq!(back, sharded);
        let first = *plain.keys().next().unwrap();
        sharded.remove(&first);
        assert_ne!(back, sharded, "maps of different contents differ");
    }

    #[test]
    fn a_chunked_queue_is_a_queue() {
        let mut chunked: Chunked<u64> = Chunked::default();
        let mut plain: std::collections::VecDeque<u64> = std::collections::VecDeque::new();
        let mut next = 0u64;
        // Pushes and takes of sizes around the chunk's, so that takes cut chunks anywhere.
        for round in 0..200u64 {
            for _ in 0..(round * 97) % 9_000 {
                chunked.push_back(next);
                plain.push_back(next);
                next += 1;
            }
            let take = ((round * 7_919) % 6_000) as usize;
            let taken = chunked.take_front(take);
            let expected: Vec<u64> = plain.drain(..take.min(plain.len())).collect();
            assert_eq!(taken, expected);
            assert_eq!(chunked.len(), plain.len());
            for at in [0, plain.len() / 2, plain.len().saturating_sub(1)] {
                assert_eq!(chunked.get(at), plain.get(at), "item {at} in round {round}");
            }
        }
        assert!(chunked.iter().eq(plain.iter()));
        let back: Chunked<u64> = rmp_serde::from_slice(&rmp_serde::to_vec(&plain).unwrap()).unwrap();
        assert_eq!(back, chunked);
        let as_plain: std::collections::VecDeque<u64> =
            rmp_serde::from_slice(&rmp_serde::to_vec(&chunked).unwrap()).unwrap();
        assert_eq!(as_plain, plain);
    }
}
