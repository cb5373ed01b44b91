//! Posting lists: the indexes point into the log. Each maps a key (an account, a
//! correlation id, an actor, an idempotency key; always prefixed by the tenant) to the
//! sequence numbers of the records filed under it, never to copies of the records: a query
//! reads its records from the log by sequence number.
//!
//! A posting is `seq << 1 | flag`, the flag a bit an index may keep per record (the history
//! index marks the records that move a balance, so that a page of history skips the ingest
//! pipeline's records without reading them).
//!
//! Keys are spread over [`BUCKETS`] buckets by a fixed hash. One sled row, a *run*, holds
//! the postings a flush gathered for one bucket, grouped by key in key order and
//! delta-encoded: a flush of tens of thousands of records writes at most one row per
//! bucket, however many keys it touches (sled costs ~5 µs a row, whatever its size; a row
//! per record could not keep up with the writer). A bucket's newest runs are merged while
//! the newest is at least half the size of the one before it, so a bucket keeps a few runs
//! of geometrically growing size and every posting is rewritten O(log n) times. Runs of a
//! bucket cover disjoint, ascending ranges of sequence numbers; a run's row key is its
//! bucket and the last sequence number of the flush that made it (docs/FORMAT.md).

use std::collections::HashMap;

/// Buckets per index: a flush writes at most this many rows per index. Fixed for a format:
/// the bucket of a key must not change under a store. 4096 keeps a flush of 65,536
/// records to ≤ 4,096 rows (under 0.07 rows a record), and a bucket of a store of ten
/// million records to a few tens of kilobytes that one query decodes in tens of µs.
pub const BUCKETS: u16 = 4096;

/// A run is not merged into once it is this large: rewriting it would cost more than
/// reading one more row per query.
pub const MAX_MERGED_RUN_BYTES: usize = 512 << 10;

/// Version byte at the start of a run.
const RUN_VERSION: u8 = 1;
/// Bytes of blake3 that close a run: sled's pages have their own checks, and this one
/// says which row is damaged.
const RUN_CHECK_LEN: usize = 8;

/// `seq << 1 | flag`.
pub type Posting = u64;

pub fn posting(seq: u64, flag: bool) -> Posting {
    (seq << 1) | u64::from(flag)
}

pub fn seq_of(posting: Posting) -> u64 {
    posting >> 1
}

pub fn flag_of(posting: Posting) -> bool {
    posting & 1 == 1
}

/// The bucket of a key: FNV-1a (64 bits), which is fixed forever, unlike `std`'s hasher.
pub fn bucket_of(key: &[u8]) -> u16 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &byte in key {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    (hash % u64::from(BUCKETS)) as u16
}

/// The row key of a run: bucket (u16 big-endian), then the last sequence number its flush
/// covered (u64 big-endian), so that a bucket's runs sort by age.
pub fn run_key(bucket: u16, last_seq: u64) -> [u8; 10] {
    let mut key = [0u8; 10];
    key[..2].copy_from_slice(&bucket.to_be_bytes());
    key[2..].copy_from_slice(&last_seq.to_be_bytes());
    key
}

/// A run key's bucket and last sequence number; `None` for other rows (the checkpoint).
pub fn parse_run_key(key: &[u8]) -> Option<(u16, u64)> {
    let key: &[u8; 10] = key.try_into().ok()?;
    let bucket = u16::from_be_bytes([key[0], key[1]]);
    (bucket < BUCKETS).then(|| (bucket, u64::from_be_bytes(key[2..].try_into().expect("8 bytes"))))
}

/// The postings of one key.
pub type Group = (Vec<u8>, Vec<Posting>);

/// The postings of one key, borrowed.
pub type GroupRef<'a> = (&'a [u8], &'a [Posting]);

/// Encodes groups (keys ascending, each key's postings ascending) as a run:
///
/// ```text
/// u8 version (1) | varint group count | groups | [8] blake3 of everything before
/// group: varint key length | key | varint list length in bytes | list
/// list:  varint first posting | varint (posting − previous posting) for the others
/// ```
pub fn encode_run<'a>(groups: impl IntoIterator<Item = (&'a [u8], &'a [Posting])>) -> Vec<u8> {
    let groups: Vec<_> = groups.into_iter().collect();
    let mut out = Vec::with_capacity(16 + groups.iter().map(|(k, p)| k.len() + 3 + p.len() * 3).sum::<usize>());
    out.push(RUN_VERSION);
    put_varint(&mut out, groups.len() as u64);
    let mut list = Vec::new();
    for (key, postings) in groups {
        put_varint(&mut out, key.len() as u64);
        out.extend_from_slice(key);
        list.clear();
        let mut previous = 0;
        for &p in postings {
            debug_assert!(p > previous || previous == 0, "postings ascend");
            put_varint(&mut list, p - previous);
            previous = p;
        }
        put_varint(&mut out, list.len() as u64);
        out.extend_from_slice(&list);
    }
    let check = blake3::hash(&out);
    out.extend_from_slice(&check.as_bytes()[..RUN_CHECK_LEN]);
    out
}

/// A run's groups; an error names what does not decode.
pub fn decode_run(bytes: &[u8]) -> Result<Vec<Group>, String> {
    let mut groups = Vec::new();
    walk_run(bytes, |key, list| {
        groups.push((key.to_vec(), decode_list(list)?));
        Ok(true)
    })?;
    Ok(groups)
}

/// The postings of `key` in a run, without decoding the other keys' lists.
pub fn find_in_run(bytes: &[u8], key: &[u8]) -> Result<Option<Vec<Posting>>, String> {
    let mut found = None;
    walk_run(bytes, |group_key, list| {
        if group_key == key {
            found = Some(decode_list(list)?);
            return Ok(false);
        }
        Ok(group_key < key)
    })?;
    Ok(found)
}

/// Checks a run and calls `each(key, list bytes)` for its groups in order until it returns
/// `false`.
fn walk_run(bytes: &[u8], mut each: impl FnMut(&[u8], &[u8]) -> Result<bool, String>) -> Result<(), String> {
    let Some(body_len) = bytes.len().checked_sub(RUN_CHECK_LEN) else {
        return Err("run cut short".into());
    };
    let (body, check) = bytes.split_at(body_len);
    if &blake3::hash(body).as_bytes()[..RUN_CHECK_LEN] != check {
        return Err("run fails its checksum".into());
    }
    let mut at = 0;
    if body.first() != Some(&RUN_VERSION) {
        return Err("unknown run version".into());
    }
    at += 1;
    let count = get_varint(body, &mut at)?;
    for _ in 0..count {
        let key_len = get_varint(body, &mut at)? as usize;
        let key = body.get(at..at + key_len).ok_or("key cut short")?;
        at += key_len;
        let list_len = get_varint(body, &mut at)? as usize;
        let list = body.get(at..at + list_len).ok_or("list cut short")?;
        at += list_len;
        if !each(key, list)? {
            return Ok(());
        }
    }
    if at != body.len() {
        return Err("bytes after the last group".into());
    }
    Ok(())
}

fn decode_list(list: &[u8]) -> Result<Vec<Posting>, String> {
    let mut postings = Vec::with_capacity(list.len() / 2);
    let (mut at, mut previous) = (0, 0u64);
    while at < list.len() {
        let delta = get_varint(list, &mut at)?;
        if delta == 0 && !postings.is_empty() {
            return Err("postings do not ascend".into());
        }
        previous = previous.checked_add(delta).ok_or("posting overflows")?;
        postings.push(previous);
    }
    Ok(postings)
}

/// Merges two runs of one bucket, `older` covering sequence numbers below `newer`'s: a
/// key in both keeps the older postings first.
pub fn merge(older: Vec<Group>, newer: Vec<Group>) -> Vec<Group> {
    let mut merged = Vec::with_capacity(older.len() + newer.len());
    let mut newer = newer.into_iter().peekable();
    for (key, mut postings) in older {
        while let Some((next_key, _)) = newer.peek() {
            if *next_key < key {
                merged.push(newer.next().expect("peeked"));
            } else {
                break;
            }
        }
        if newer.peek().is_some_and(|(next_key, _)| *next_key == key) {
            postings.extend(newer.next().expect("peeked").1);
        }
        merged.push((key, postings));
    }
    merged.extend(newer);
    merged
}

fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn get_varint(bytes: &[u8], at: &mut usize) -> Result<u64, String> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *bytes.get(*at).ok_or("varint cut short")?;
        *at += 1;
        value |= u64::from(byte & 0x7F) << shift;
        if byte & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err("varint too long".into())
}

/// Postings folded in memory and not yet written: keys with their postings, ascending.
#[derive(Default)]
pub struct Pending {
    pub entries: HashMap<Vec<u8>, Vec<Posting>>,
    /// Postings held.
    pub len: usize,
}

impl Pending {
    pub fn push(&mut self, key: Vec<u8>, posting: Posting) {
        self.entries.entry(key).or_default().push(posting);
        self.len += 1;
    }

    /// The postings of `key` with sequence numbers in `after + 1 ..= up_to`.
    pub fn get(&self, key: &[u8], after: u64, up_to: u64) -> impl Iterator<Item = Posting> + '_ {
        self.entries
            .get(key)
            .into_iter()
            .flatten()
            .copied()
            .filter(move |&p| seq_of(p) > after && seq_of(p) <= up_to)
    }

    /// The groups of each bucket, keys ascending.
    pub fn by_bucket(&self) -> std::collections::BTreeMap<u16, Vec<GroupRef<'_>>> {
        let mut buckets: std::collections::BTreeMap<u16, Vec<GroupRef<'_>>> = Default::default();
        for (key, postings) in &self.entries {
            buckets
                .entry(bucket_of(key))
                .or_default()
                .push((key.as_slice(), postings.as_slice()));
        }
        for groups in buckets.values_mut() {
            groups.sort_unstable_by(|a, b| a.0.cmp(b.0));
        }
        buckets
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_round_trip_and_find_each_key() {
        let groups: Vec<Group> = vec![
            (
                b"t\0a".to_vec(),
                vec![posting(3, true), posting(9, false), posting(1 << 40, true)],
            ),
            (b"t\0b".to_vec(), vec![posting(4, false)]),
        ];
        let run = encode_run(groups.iter().map(|(k, p)| (k.as_slice(), p.as_slice())));
        assert_eq!(decode_run(&run).unwrap(), groups);
        assert_eq!(find_in_run(&run, b"t\0b").unwrap(), Some(vec![posting(4, false)]));
        assert_eq!(find_in_run(&run, b"t\0aa").unwrap(), None);
        for at in 0..run.len() {
            for bit in 0..8 {
                let mut damaged = run.clone();
                damaged[at] ^= 1 << bit;
                assert!(decode_run(&damaged).is_err(), "flip at {at} bit {bit}");
            }
        }
        assert!(decode_run(&run[..run.len() - 1]).is_err());
    }

    #[test]
    fn merging_keeps_keys_ordered_and_older_postings_first() {
        let older = vec![(b"a".to_vec(), vec![2]), (b"c".to_vec(), vec![4])];
        let newer = vec![
            (b"b".to_vec(), vec![10]),
            (b"c".to_vec(), vec![12]),
            (b"d".to_vec(), vec![14]),
        ];
        assert_eq!(
            merge(older, newer),
            vec![
                (b"a".to_vec(), vec![2]),
                (b"b".to_vec(), vec![10]),
                (b"c".to_vec(), vec![4, 12]),
                (b"d".to_vec(), vec![14]),
            ]
        );
    }

    #[test]
    fn buckets_are_fixed() {
        // A key's bucket is part of the format: these must never change.
        assert_eq!(bucket_of(b""), (0xcbf2_9ce4_8422_2325u64 % 4096) as u16);
        assert_eq!(bucket_of(b"casino-1\0player-42"), bucket_of(b"casino-1\0player-42"));
        assert!(parse_run_key(&run_key(BUCKETS - 1, 7)).is_some());
        assert!(parse_run_key(&[0xFF; 9]).is_none());
        assert!(parse_run_key(&[0xFF; 10]).is_none());
    }
}
