//! The bounded write side of idempotency: a *window* of recent identities kept whole in
//! RAM, and the *older* identities kept as 8 bytes each, which the log answers for.
//!
//! Every accepted command's identities (its idempotency key, an award's natural identity)
//! are honoured for ever. The window ([`WindowPolicy`]: an age in log time and a number of
//! entries, whichever is reached first) holds each identity's fingerprint, the request's
//! print and the command's range, about [`WINDOW_ENTRY_BYTES`] each. An identity leaves
//! the window, oldest first and [`WindowPolicy::chunk`] at a time, for [`OlderIdentities`]:
//! sorted runs of `(first 4 bytes of the fingerprint, sequence number)` in 8 bytes. A lookup that
//! finds an older identity there reads the record at that sequence number from the log
//! ([`OlderRecords`]) and works out what the window held (the request's print, the
//! command's last record, its fingerprints) from the record itself, so a false match of the
//! 4 bytes is told apart and a retry of a month-old command gets its original answer.
//!
//! Eviction is a function of the records folded and the policy alone, so a fold of the log
//! leaves the same window and the same older identities as the writer's state. The writer
//! never waits for the log to check a new identity: the submitting task looks the command's
//! identities up in the older ones the writer last published, before the command reaches
//! the writer ([`super::state::Identity::check_older`]), and the writer trusts that answer
//! while no identity has left the window since.

use super::command::RequestPrint;
use super::event::Record;
use super::state::{key_fingerprint, Fingerprint};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// Default age of the window in log time: 48 hours, the time a retry is expected within.
pub const DEFAULT_WINDOW_SECONDS: u64 = 48 * 3600;
/// Default memory budget of the window.
pub const DEFAULT_WINDOW_BYTES: u64 = 256 << 20;
/// What one identity in the window costs in RAM: its maps' entries (key and natural
/// fingerprints, the print and range) and its place in the eviction queue, measured by
/// `benches/state.rs`. The budget in bytes is turned into a number of entries with it.
pub const WINDOW_ENTRY_BYTES: u64 = 336;
/// Identities leave the window this many at a time: one sorted run of older identities each.
pub const DEFAULT_EVICTION_CHUNK: usize = 4096;
/// No identity leaves the window before it is this old in log time, whatever the policy:
/// the records of the group commit being decided are not in the log yet, and a lookup reads
/// an older identity's record from the log. A group commit's commands are decided in far
/// less time than this.
pub const MIN_AGE_US: u64 = 1_000_000;
/// A run of older identities is not merged into once it holds this many (32 MiB): merging
/// costs a copy of both, on the writer's thread.
const MAX_MERGED_RUN: usize = 4 << 20;

/// How many identities the window keeps whole. Both limits bind, but no identity leaves
/// before it is [`MIN_AGE_US`] old (so a command being folded stays whole).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WindowPolicy {
    /// Identities recorded more than this long (log time) before the newest record leave.
    pub max_age_us: u64,
    /// Identities beyond the newest `max_entries` leave.
    pub max_entries: u64,
    /// How many leave at once.
    pub chunk: usize,
}

impl Default for WindowPolicy {
    fn default() -> Self {
        Self::new(DEFAULT_WINDOW_SECONDS, DEFAULT_WINDOW_BYTES)
    }
}

impl WindowPolicy {
    pub fn new(max_age_seconds: u64, budget_bytes: u64) -> Self {
        Self {
            max_age_us: max_age_seconds.saturating_mul(1_000_000),
            max_entries: (budget_bytes / WINDOW_ENTRY_BYTES).max(1),
            chunk: DEFAULT_EVICTION_CHUNK,
        }
    }
}

/// One identity in the window, in the order they were recorded: what eviction removes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WindowEntry {
    /// The sequence number the identity maps to (and its `applied` entry is keyed by).
    pub first_seq: u64,
    pub ts_us: u64,
    pub key: Option<Fingerprint>,
    pub natural: Option<Fingerprint>,
}

impl WindowEntry {
    /// Whether this entry leaves the window when `newer` entries follow it and the newest
    /// record was stamped `now_us`. True for a prefix of the queue (timestamps never
    /// decrease).
    pub fn evictable(&self, policy: &WindowPolicy, newer: u64, now_us: u64) -> bool {
        let age = now_us.saturating_sub(self.ts_us);
        age > MIN_AGE_US && (age > policy.max_age_us || newer >= policy.max_entries)
    }
}

/// The first 4 bytes of a fingerprint (high half) and the sequence number's offset from its
/// run's base (low half): ordered by fingerprint.
type OlderEntry = u64;

fn short(fingerprint: &Fingerprint) -> u32 {
    u32::from_le_bytes(fingerprint[..4].try_into().expect("4 bytes"))
}

/// One sorted run: the identities whose sequence numbers lie in `base ..= base + u32::MAX`.
#[derive(Clone)]
struct Run {
    base: u64,
    /// The highest sequence number in the run.
    last: u64,
    entries: Arc<[OlderEntry]>,
}

impl Run {
    fn seqs_of(&self, wanted: u32) -> impl Iterator<Item = u64> + '_ {
        let from = self.entries.partition_point(|&e| ((e >> 32) as u32) < wanted);
        self.entries[from..]
            .iter()
            .take_while(move |&&e| (e >> 32) as u32 == wanted)
            .map(move |&e| self.base + (e & u64::from(u32::MAX)))
    }

    /// `(sequence number, fingerprint prefix)` of every entry.
    fn pairs(&self) -> impl Iterator<Item = (u64, u32)> + '_ {
        self.entries
            .iter()
            .map(move |&e| (self.base + (e & u64::from(u32::MAX)), (e >> 32) as u32))
    }
}

/// The identities that left the window: 8 bytes each (4 of the fingerprint, 4 of the
/// sequence number as an offset), in sorted runs that are merged while the newest is at
/// least half the size of the one before it (so a few runs of geometrically growing size).
/// Four bytes of fingerprint find an identity's candidates; among ten million identities a
/// lookup meets a false one once in 400, which the read of its record tells apart. Runs are
/// shared, never changed: cloning is cheap, which is how the writer publishes them to the
/// submitting tasks.
#[derive(Clone, Default)]
pub struct OlderIdentities {
    runs: Vec<Run>,
    /// The first sequence number of the last identity that left the window (0: none has).
    /// It grows with every eviction, so it names a version of this set.
    cutoff: u64,
    len: u64,
}

impl OlderIdentities {
    pub fn cutoff(&self) -> u64 {
        self.cutoff
    }

    /// How many identities left the window.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes the runs take.
    pub fn bytes(&self) -> u64 {
        self.len * std::mem::size_of::<OlderEntry>() as u64
    }

    /// The sequence numbers filed under fingerprints that share `fingerprint`'s first 4
    /// bytes: those of the identity, if it left the window, and rarely others.
    pub fn candidates(&self, fingerprint: &Fingerprint) -> Vec<u64> {
        let wanted = short(fingerprint);
        self.runs.iter().flat_map(|run| run.seqs_of(wanted)).collect()
    }

    /// Files the identities of `evicted` (which left the window together, oldest first).
    pub(super) fn add(&mut self, evicted: &[WindowEntry]) {
        let Some(last) = evicted.last() else {
            return;
        };
        assert!(
            evicted.first().is_some_and(|e| e.first_seq > self.cutoff),
            "identities leave the window in order"
        );
        self.cutoff = last.first_seq;
        // One run per 2^32 sequence numbers (a chunk spans more only when identities are
        // that sparse in the log).
        let mut at = 0;
        while at < evicted.len() {
            let base = evicted[at].first_seq;
            let end = evicted[at..]
                .iter()
                .position(|e| e.first_seq - base > u64::from(u32::MAX))
                .map_or(evicted.len(), |n| at + n);
            let mut entries: Vec<OlderEntry> = evicted[at..end]
                .iter()
                .flat_map(|e| {
                    [e.key, e.natural]
                        .into_iter()
                        .flatten()
                        .map(move |f| (u64::from(short(&f)) << 32) | (e.first_seq - base))
                })
                .collect();
            entries.sort_unstable();
            self.len += entries.len() as u64;
            self.runs.push(Run {
                base,
                last: evicted[end - 1].first_seq,
                entries: entries.into(),
            });
            at = end;
        }
        while let [.., older, newer] = self.runs.as_slice() {
            if newer.entries.len() * 2 < older.entries.len()
                || older.entries.len() >= MAX_MERGED_RUN
                || newer.last - older.base > u64::from(u32::MAX)
            {
                break;
            }
            let merged = merge(older, newer);
            self.runs.truncate(self.runs.len() - 2);
            self.runs.push(merged);
        }
    }

    /// `(sequence number, fingerprint prefix)` of every identity, sorted: what equality and
    /// snapshots see (the runs' layout is not state).
    fn pairs(&self) -> Vec<(u64, u32)> {
        let mut all: Vec<(u64, u32)> = self.runs.iter().flat_map(Run::pairs).collect();
        all.sort_unstable();
        all
    }
}

/// Merges two runs, `older` below `newer`, into one based at `older`'s base.
fn merge(older: &Run, newer: &Run) -> Run {
    let shift = newer.base - older.base;
    let (a, b) = (&older.entries, &newer.entries);
    let mut out = Vec::with_capacity(a.len() + b.len());
    let (mut i, mut j) = (0, 0);
    while i < a.len() && j < b.len() {
        if a[i] <= b[j] + shift {
            out.push(a[i]);
            i += 1;
        } else {
            out.push(b[j] + shift);
            j += 1;
        }
    }
    out.extend_from_slice(&a[i..]);
    out.extend(b[j..].iter().map(|e| e + shift));
    Run {
        base: older.base,
        last: newer.last,
        entries: out.into(),
    }
}

impl PartialEq for OlderIdentities {
    fn eq(&self, other: &Self) -> bool {
        self.cutoff == other.cutoff && self.len == other.len && self.pairs() == other.pairs()
    }
}

impl Eq for OlderIdentities {}

impl std::fmt::Debug for OlderIdentities {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OlderIdentities")
            .field("cutoff", &self.cutoff)
            .field("len", &self.len)
            .field("runs", &self.runs.iter().map(|r| r.entries.len()).collect::<Vec<_>>())
            .finish()
    }
}

/// Entries of a run per byte string in a snapshot (512 KiB): a run is written and read a
/// chunk at a time, so a snapshot costs no copy of the older identities, only one chunk.
const SNAPSHOT_CHUNK_ENTRIES: usize = 64 << 10;

/// In a snapshot: the cutoff, then each run in sequence order as its base, its last sequence
/// number and its entries (as in RAM: the fingerprint's first 4 bytes, then the offset from
/// the base) in byte strings of 8 little-endian bytes each. The runs are written as they
/// are and read back as they were, so the writer's runs survive a restart unchanged.
impl Serialize for OlderIdentities {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        (self.cutoff, RunsOut(&self.runs)).serialize(serializer)
    }
}

struct RunsOut<'a>(&'a [Run]);

impl Serialize for RunsOut<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.0.iter().map(|run| (run.base, run.last, ChunksOut(&run.entries))))
    }
}

struct ChunksOut<'a>(&'a [OlderEntry]);

impl Serialize for ChunksOut<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeSeq;
        let mut seq = serializer.serialize_seq(Some(self.0.len().div_ceil(SNAPSHOT_CHUNK_ENTRIES)))?;
        let mut bytes = Vec::with_capacity(SNAPSHOT_CHUNK_ENTRIES.min(self.0.len()) * 8);
        for chunk in self.0.chunks(SNAPSHOT_CHUNK_ENTRIES) {
            bytes.clear();
            bytes.extend(chunk.iter().flat_map(|e| e.to_le_bytes()));
            seq.serialize_element(&BytesOut(&bytes))?;
        }
        seq.end()
    }
}

struct BytesOut<'a>(&'a [u8]);

impl Serialize for BytesOut<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(self.0)
    }
}

impl<'de> Deserialize<'de> for OlderIdentities {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let (cutoff, runs) = <(u64, Vec<RunIn>)>::deserialize(deserializer)?;
        let runs: Vec<Run> = runs.into_iter().map(|RunIn(run)| run).collect();
        let mut previous_last: Option<u64> = None;
        for run in &runs {
            if previous_last.is_some_and(|last| run.base <= last)
                || run.last < run.base
                || run.last - run.base > u64::from(u32::MAX)
                || run.last > cutoff
            {
                return Err(D::Error::custom(
                    "older identities: runs overlap, are out of order or end beyond the cutoff",
                ));
            }
            let span = run.last - run.base;
            if !run.entries.is_sorted() || run.entries.iter().any(|e| e & u64::from(u32::MAX) > span) {
                return Err(D::Error::custom(
                    "older identities: a run is not sorted or holds an entry beyond its end",
                ));
            }
            previous_last = Some(run.last);
        }
        let len = runs.iter().map(|run| run.entries.len() as u64).sum();
        Ok(Self { runs, cutoff, len })
    }
}

/// One run read back, its chunks appended as they are decoded.
struct RunIn(Run);

impl<'de> Deserialize<'de> for RunIn {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let (base, last, ChunksIn(entries)) = <(u64, u64, ChunksIn)>::deserialize(deserializer)?;
        Ok(RunIn(Run {
            base,
            last,
            entries: entries.into(),
        }))
    }
}

struct ChunksIn(Vec<OlderEntry>);

impl<'de> Deserialize<'de> for ChunksIn {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = ChunksIn;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("byte strings of 8-byte entries")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<ChunksIn, A::Error> {
                use serde::de::Error;
                let mut entries = Vec::new();
                while let Some(Bytes(bytes)) = seq.next_element()? {
                    if bytes.len() % 8 != 0 {
                        return Err(A::Error::custom("older identities are 8 bytes each"));
                    }
                    entries.extend(
                        bytes
                            .chunks_exact(8)
                            .map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes"))),
                    );
                }
                Ok(ChunksIn(entries))
            }
        }
        deserializer.deserialize_seq(Visitor)
    }
}

/// A byte string read back (MessagePack `bin`).
struct Bytes(Vec<u8>);

impl<'de> Deserialize<'de> for Bytes {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Bytes;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a byte string")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Bytes, E> {
                Ok(Bytes(v.to_vec()))
            }
            fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Bytes, E> {
                Ok(Bytes(v))
            }
        }
        deserializer.deserialize_byte_buf(Visitor)
    }
}

/// Reads committed records: how a lookup of an identity older than the window reaches the
/// log. The log is immutable history, so the answer is the same on every replay: `decide`
/// stays a function of the state, the command and the log before it.
pub trait OlderRecords {
    /// The records `from..=to` that exist (fewer at the head), in order.
    fn read(&self, from: u64, to: u64) -> Result<Vec<Record>, String>;
}

/// Where there is no log to read (a state folded in memory that never evicted anything).
pub struct NoOlderRecords;

impl OlderRecords for NoOlderRecords {
    fn read(&self, from: u64, _to: u64) -> Result<Vec<Record>, String> {
        Err(format!(
            "record {from} is older than the identity window and there is no log to read it from"
        ))
    }
}

/// Records a candidate is read with: the one before (is it the first of its command?) and
/// some after (where does the command end?). Commands are a few records; a longer one is
/// read on.
const READ_AHEAD: u64 = 15;

/// What the window held for an identity that left it, worked out again from the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Recalled {
    /// The sequence number the identity was filed under.
    pub seq: u64,
    /// The fingerprint of the idempotency key of the command that `seq` is the first
    /// record of, if it is one.
    pub key: Option<Fingerprint>,
    /// The fingerprint of the natural identity of the award at `seq`, if it is one.
    pub natural: Option<Fingerprint>,
    /// The print of the request the record at `seq` answers.
    pub print: RequestPrint,
    /// The command's last record (`seq` for an award inside another command).
    pub last_seq: u64,
}

impl Recalled {
    pub fn matches(&self, fingerprint: &Fingerprint) -> bool {
        self.key.as_ref() == Some(fingerprint) || self.natural.as_ref() == Some(fingerprint)
    }

    /// Reads the record at `seq` (and its neighbours) and works out what the window held
    /// for it; `None` if the record answers no request (a false match of 4 bytes).
    pub fn read(older: &dyn OlderRecords, seq: u64) -> Result<Option<Self>, String> {
        let from = seq.saturating_sub(1).max(1);
        let mut records = older.read(from, seq + READ_AHEAD)?;
        let Some(at) = records.iter().position(|r| r.seq == seq) else {
            return Err(format!("record {seq} is not in the log"));
        };
        let key_of = |r: &Record| {
            let e = &r.envelope;
            (!e.idempotency_key.is_empty())
                .then(|| key_fingerprint(&e.tenant, &e.idempotency_scope, &e.idempotency_key))
        };
        let record = &records[at];
        let Some(request) = super::requests::request_of(record) else {
            return Ok(None);
        };
        let natural = super::requests::natural_of(record, &request).map(|n| n.fingerprint());
        let print = request.print();
        let previous = at.checked_sub(1).map(|i| &records[i]);
        let key = key_of(record).filter(|k| previous.is_none_or(|p| key_of(p).as_ref() != Some(k)));
        let mut last_seq = seq;
        if let Some(key) = key {
            // The command's records are contiguous and carry its key.
            let mut ahead = records.split_off(at + 1);
            loop {
                let whole = ahead.len();
                let same = ahead
                    .iter()
                    .take_while(|r| {
                        r.seq == last_seq + 1 && key_of(r) == Some(key) && {
                            last_seq += 1;
                            true
                        }
                    })
                    .count();
                if same < whole || whole == 0 {
                    break;
                }
                ahead = older.read(last_seq + 1, last_seq + 1 + READ_AHEAD)?;
            }
        }
        Ok(Some(Self {
            seq,
            key,
            natural,
            print,
            last_seq,
        }))
    }
}

/// What a lookup of an identity found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Prior {
    pub first_seq: u64,
    pub print: RequestPrint,
    pub last_seq: u64,
}

impl From<&Recalled> for Prior {
    fn from(r: &Recalled) -> Self {
        Self {
            first_seq: r.seq,
            print: r.print,
            last_seq: r.last_seq,
        }
    }
}

/// Looks `fingerprint` up among `older`, reading candidates from the log; the identity's
/// resolution if it left the window.
pub fn find_older(
    older: &OlderIdentities,
    fingerprint: &Fingerprint,
    known: &[Recalled],
    records: &dyn OlderRecords,
) -> Result<Option<Recalled>, String> {
    for seq in older.candidates(fingerprint) {
        if let Some(done) = known.iter().find(|r| r.seq == seq) {
            if done.matches(fingerprint) {
                return Ok(Some(done.clone()));
            }
            continue;
        }
        if let Some(resolved) = Recalled::read(records, seq)? {
            if resolved.matches(fingerprint) {
                return Ok(Some(resolved));
            }
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::{OlderIdentities, WindowEntry};

    fn fingerprint(n: u64) -> [u8; 16] {
        blake3::hash(&n.to_le_bytes()).as_bytes()[..16].try_into().unwrap()
    }

    /// Chunks of random sizes, at sequence numbers with gaps up to beyond 2^32 (so runs
    /// split and refuse to merge), some with two identities: every identity is found under
    /// its fingerprint after every merge and after a round trip through a snapshot, and the
    /// round trip is equal.
    #[test]
    fn every_identity_is_found_however_runs_merged_and_after_a_snapshot() {
        let mut rng = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = move |below: u64| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng % below
        };
        let mut older = OlderIdentities::default();
        let mut added: Vec<(u64, [u8; 16])> = Vec::new();
        let mut seq = 0u64;
        for _ in 0..300 {
            let chunk: Vec<WindowEntry> = (0..1 + next(40))
                .map(|_| {
                    seq += 1 + if next(50) == 0 { 1 << 32 } else { next(5) };
                    let key = fingerprint(seq);
                    let natural = (next(3) == 0).then(|| fingerprint(seq ^ 0xFFFF));
                    added.push((seq, key));
                    if let Some(natural) = natural {
                        added.push((seq, natural));
                    }
                    WindowEntry {
                        first_seq: seq,
                        ts_us: 0,
                        key: Some(key),
                        natural,
                    }
                })
                .collect();
            older.add(&chunk);
            assert_eq!(older.cutoff(), seq);
            assert_eq!(older.len(), added.len() as u64);
        }
        assert!(older.runs.len() > 2, "runs split at 2^32");
        let bytes = rmp_serde::to_vec(&older).unwrap();
        let back: OlderIdentities = rmp_serde::from_slice(&bytes).unwrap();
        assert_eq!(back, older);
        assert_eq!(layout(&back), layout(&older), "the runs come back as they were");
        for set in [&older, &back] {
            for (seq, f) in &added {
                assert!(set.candidates(f).contains(seq), "identity at {seq} is found");
            }
        }
        assert!(older.candidates(&fingerprint(u64::MAX)).is_empty());
    }

    fn layout(older: &OlderIdentities) -> Vec<(u64, u64, Vec<u64>)> {
        older
            .runs
            .iter()
            .map(|r| (r.base, r.last, r.entries.to_vec()))
            .collect()
    }

    /// A run longer than a snapshot chunk is written in several byte strings and read back
    /// whole; runs that are out of order, overlap, end beyond the cutoff, are not sorted or
    /// hold an entry beyond their end are refused.
    #[test]
    fn a_snapshot_of_older_identities_is_written_in_chunks_and_checked_when_read() {
        let mut older = OlderIdentities::default();
        let chunk: Vec<WindowEntry> = (1..=150_000u64)
            .map(|seq| WindowEntry {
                first_seq: seq,
                ts_us: 0,
                key: Some(fingerprint(seq)),
                natural: None,
            })
            .collect();
        older.add(&chunk);
        let bytes = rmp_serde::to_vec(&older).unwrap();
        let back: OlderIdentities = rmp_serde::from_slice(&bytes).unwrap();
        assert_eq!(layout(&back), layout(&older));
        assert_eq!(back.len(), 150_000);
        assert_eq!(back, older);

        type Encoded = (u64, Vec<(u64, u64, Vec<serde_bytes_like::Buf>)>);
        let encode = |entries: &[u64]| serde_bytes_like::Buf(entries.iter().flat_map(|e| e.to_le_bytes()).collect());
        let read = |value: &Encoded| rmp_serde::from_slice::<OlderIdentities>(&rmp_serde::to_vec(value).unwrap());
        let sound: Encoded = (
            20,
            vec![
                (1, 5, vec![encode(&[1 << 32, (2 << 32) | 4])]),
                (10, 20, vec![encode(&[3])]),
            ],
        );
        assert_eq!(read(&sound).unwrap().len(), 3);
        let damaged: [(&str, Encoded); 5] = [
            ("unsorted", (20, vec![(1, 5, vec![encode(&[(2 << 32) | 4, 1 << 32])])])),
            ("beyond its end", (20, vec![(1, 5, vec![encode(&[5])])])),
            (
                "overlapping",
                (20, vec![(1, 5, vec![encode(&[0])]), (5, 9, vec![encode(&[0])])]),
            ),
            ("beyond the cutoff", (4, vec![(1, 5, vec![encode(&[0])])])),
            (
                "out of order",
                (20, vec![(10, 12, vec![encode(&[0])]), (1, 5, vec![encode(&[0])])]),
            ),
        ];
        for (what, value) in damaged {
            assert!(read(&value).is_err(), "{what} runs are refused");
        }
    }

    /// A byte string, as the snapshot writes one.
    mod serde_bytes_like {
        pub struct Buf(pub Vec<u8>);
        impl serde::Serialize for Buf {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_bytes(&self.0)
            }
        }
    }
}
