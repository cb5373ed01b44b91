//! The indexes that point into the log: for random records folded in random slices and
//! written at random points, every index answers exactly what a filtered scan of the
//! records does, however its runs were flushed and merged; and a flush cut short (rows of
//! some buckets written, the checkpoint not) is folded again to the same answers and the
//! same digest as a store folded once from scratch. Queries read the indexes only through
//! `ReadIndexes`: the same queries over a plain scan of the records behind that trait give
//! the same answers as over the sled store. Seeds are printed on failure;
//! `TALLY_INDEX_SEEDS` sets how many run (default 8).

mod support;

use support::{MemoryLog, Rng};
use tally::domain::{Envelope, Record};
use tally::projection::{keys, ProjectionName, Projections, ReadIndexes, StoreError};
use tally::query::indexed::Indexed;

/// Records over a few tenants, accounts, actors, correlation ids and idempotency keys, so
/// that keys repeat across flushes and buckets fill with several runs.
fn records(rng: &mut Rng, count: u64) -> Vec<Record> {
    (1..=count)
        .map(|seq| {
            let (_, event) = support::sample_record(seq, 0);
            let envelope = Envelope {
                event_id: uuid::Uuid::from_u128(u128::from(seq)),
                tenant: format!("t{}", rng.below(2)),
                stream: format!("p{}", rng.below(40)),
                actor: format!("staff-{}", rng.below(5)),
                correlation_id: if rng.below(3) == 0 {
                    String::new()
                } else {
                    format!("c{}", rng.below(60))
                },
                idempotency_key: if rng.below(4) == 0 {
                    String::new()
                } else {
                    format!("k{}", rng.below(300))
                },
                idempotency_scope: format!("s{}", rng.below(2)),
                ..Envelope::default()
            };
            Record {
                seq,
                ts_us: seq * 10,
                envelope,
                event,
                hash: [0; 32],
            }
        })
        .collect()
}

/// Every key each index files some record under.
fn every_key(records: &[Record]) -> Vec<(ProjectionName, Vec<u8>)> {
    let mut found: Vec<_> = records
        .iter()
        .flat_map(|r| {
            ProjectionName::ALL
                .into_iter()
                .filter_map(move |name| name.entry(r).map(|(k, _)| (name, k)))
        })
        .collect();
    found.sort();
    found.dedup();
    found
}

/// What a scan of the records says an index holds under `key` in `after + 1 ..= up_to`.
fn scanned(records: &[Record], name: ProjectionName, key: &[u8], after: u64, up_to: u64) -> Vec<u64> {
    records
        .iter()
        .filter(|r| r.seq > after && r.seq <= up_to && name.entry(r).is_some_and(|(k, _)| k == key))
        .map(|r| r.seq)
        .collect()
}

fn check_against_scan(seed: u64, projections: &Projections, records: &[Record], rng: &mut Rng) {
    let head = records.last().map_or(0, |r| r.seq);
    for (name, key) in every_key(records) {
        let whole = projections.seqs(name, &key, 0, u64::MAX).unwrap();
        assert_eq!(
            whole,
            scanned(records, name, &key, 0, head),
            "seed {seed}: {} key {:?}",
            name.name(),
            key.escape_ascii().to_string()
        );
        let after = rng.below(head + 1);
        let up_to = after + rng.below(head + 1);
        assert_eq!(
            projections.seqs(name, &key, after, up_to).unwrap(),
            scanned(records, name, &key, after, up_to),
            "seed {seed}: {} key {:?} in {after}..={up_to}",
            name.name(),
            key.escape_ascii().to_string()
        );
    }
    // The history index flags the records that move a balance.
    let ledger = |r: &Record| r.event.kind().is_ledger();
    for r in records.iter().take(50) {
        let e = &r.envelope;
        let flagged = projections
            .account_seqs(&e.tenant, &e.stream, 0, u64::MAX, true)
            .unwrap();
        let expected: Vec<u64> = records
            .iter()
            .filter(|x| x.envelope.tenant == e.tenant && x.envelope.stream == e.stream && ledger(x))
            .map(|x| x.seq)
            .collect();
        assert_eq!(
            flagged, expected,
            "seed {seed}: ledger records of {}/{}",
            e.tenant, e.stream
        );
    }
    assert!(projections
        .seqs(ProjectionName::Actor, &keys::actor("t0", "nobody"), 0, u64::MAX)
        .unwrap()
        .is_empty());
}

fn seeds() -> u64 {
    std::env::var("TALLY_INDEX_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(8)
}

#[test]
fn every_index_query_equals_a_filtered_scan_of_the_records() {
    for seed in 1..=seeds() {
        let mut rng = Rng(seed);
        let count = 600 + rng.below(1400);
        let records = records(&mut rng, count);
        let dir = tempfile::tempdir().unwrap();
        let projections = Projections::open(dir.path()).unwrap();
        let mut at = 0;
        while at < records.len() {
            let end = (at + 1 + rng.below(300) as usize).min(records.len());
            projections.apply(&records[at..end]).unwrap();
            // Written at random points: some slices stay in memory, others become runs
            // that merge with the ones before.
            if rng.below(3) == 0 {
                projections.write_pending().unwrap();
            }
            // Queries mid-way see what was folded so far, memory and runs together.
            if rng.below(8) == 0 {
                check_against_scan(seed, &projections, &records[..end], &mut rng);
            }
            at = end;
        }
        check_against_scan(seed, &projections, &records, &mut rng);
        projections.write_pending().unwrap();
        check_against_scan(seed, &projections, &records, &mut rng);
        drop(projections);
        let reopened = Projections::open(dir.path()).unwrap();
        check_against_scan(seed, &reopened, &records, &mut rng);
    }
}

/// Puts a projection's checkpoint back to `seq`, as if the flush after it wrote its rows
/// but not its last batch.
fn cut_checkpoint(dir: &std::path::Path, name: ProjectionName, seq: u64) {
    let db = support::open_sled_store(dir);
    let tree = db.open_tree(format!("{}.0", name.name())).unwrap();
    tree.insert([0xFF; 9], &seq.to_be_bytes()).unwrap();
    db.flush().unwrap();
}

#[test]
fn a_flush_cut_short_is_folded_again_to_the_same_answers_and_digest() {
    for seed in 1..=seeds() {
        let mut rng = Rng(1000 + seed);
        let records = records(&mut rng, 1500);
        let first = 200 + rng.below(400) as usize;
        let cut = first + 300 + rng.below(600) as usize;
        let dir = tempfile::tempdir().unwrap();
        {
            let projections = Projections::open(dir.path()).unwrap();
            projections.apply(&records[..first]).unwrap();
            projections.write_pending().unwrap();
            projections.apply(&records[first..cut]).unwrap();
            projections.write_pending().unwrap();
            projections.flush().unwrap();
        }
        for name in ProjectionName::ALL {
            cut_checkpoint(dir.path(), name, first as u64);
        }
        let projections = Projections::open(dir.path()).unwrap();
        assert_eq!(projections.applied().unwrap(), first as u64, "seed {seed}");
        // Folded again in slices that end before and after where the cut flush reached.
        let mut at = first;
        while at < records.len() {
            let end = (at + 1 + rng.below(250) as usize).min(records.len());
            projections.apply(&records[at..end]).unwrap();
            projections.write_pending().unwrap();
            check_against_scan(seed, &projections, &records[..end], &mut rng);
            at = end;
        }
        let scratch = tempfile::tempdir().unwrap();
        let fresh = Projections::open(scratch.path()).unwrap();
        fresh.apply(&records).unwrap();
        for name in ProjectionName::ALL {
            let comparison = projections.compare(&fresh, name).unwrap();
            assert!(comparison.equal(), "seed {seed}: {comparison}");
        }
    }
}

/// An index that is a scan of the records: a second implementation of `ReadIndexes`.
struct Scanned(Vec<Record>);

impl ReadIndexes for Scanned {
    fn filed(
        &self,
        index: ProjectionName,
        key: &[u8],
        after_seq: u64,
        up_to_seq: u64,
        flagged_only: bool,
    ) -> Result<Vec<u64>, StoreError> {
        Ok(self
            .0
            .iter()
            .filter(|r| r.seq > after_seq && r.seq <= up_to_seq)
            .filter(|r| {
                index
                    .entry(r)
                    .is_some_and(|(k, flag)| k == key && (flag || !flagged_only))
            })
            .map(|r| r.seq)
            .collect())
    }

    fn checkpoint(&self, _index: ProjectionName) -> Result<u64, StoreError> {
        Ok(self.0.last().map_or(0, |r| r.seq))
    }
}

#[test]
fn queries_answer_the_same_through_any_implementation_of_read_indexes() {
    for seed in 1..=seeds() {
        let mut rng = Rng(2000 + seed);
        let count = 800 + rng.below(800);
        let records = records(&mut rng, count);
        let head = records.len() as u64;
        let dir = tempfile::tempdir().unwrap();
        let projections = Projections::open(dir.path()).unwrap();
        projections.apply(&records).unwrap();
        projections.write_pending().unwrap();
        let scanned = Scanned(records.clone());
        let log = MemoryLog(records.clone());
        let sled = Indexed {
            indexes: &projections,
            reader: &log,
        };
        let scan = Indexed {
            indexes: &scanned,
            reader: &log,
        };
        for name in ProjectionName::ALL {
            assert_eq!(
                ReadIndexes::checkpoint(&projections, name).unwrap(),
                scanned.checkpoint(name).unwrap(),
                "seed {seed}: {}",
                name.name()
            );
        }
        for case in 0..40 {
            let context = format!("seed {seed} case {case}");
            let tenant = format!("t{}", rng.below(2));
            let account = format!("p{}", rng.below(42));
            let after = rng.below(head);
            let limit = 1 + rng.below(30) as usize;
            assert_eq!(
                sled.history(&tenant, &account, after, limit).unwrap(),
                scan.history(&tenant, &account, after, limit).unwrap(),
                "{context}: history of {tenant}/{account}"
            );
            let correlation = format!("c{}", rng.below(62));
            assert_eq!(
                sled.by_correlation(&tenant, &correlation, after, limit).unwrap(),
                scan.by_correlation(&tenant, &correlation, after, limit).unwrap(),
                "{context}: correlation {correlation}"
            );
            let actor = format!("staff-{}", rng.below(6));
            let (from_us, to_us) = (rng.below(head * 10), rng.below(head * 12));
            assert_eq!(
                sled.by_actor(&tenant, &actor, from_us, to_us, after, limit).unwrap(),
                scan.by_actor(&tenant, &actor, from_us, to_us, after, limit).unwrap(),
                "{context}: actor {actor} in {from_us}..{to_us}"
            );
            let (scope, key) = (format!("s{}", rng.below(2)), format!("k{}", rng.below(310)));
            assert_eq!(
                sled.by_idempotency_key(&tenant, &scope, &key).unwrap(),
                scan.by_idempotency_key(&tenant, &scope, &key).unwrap(),
                "{context}: idempotency {scope}/{key}"
            );
        }
    }
}
