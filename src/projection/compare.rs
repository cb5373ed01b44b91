//! Two folds of one projection side by side: their digests and, where they part ways, the
//! first row that differs (`tally rebuild --compare`, the simulation's checks).

use super::postings::{self, Posting, BUCKETS};
use super::store::{Index, ProjectionName, Projections, StoreError};

/// Two folds of one projection side by side; see [`Projections::compare`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Comparison {
    pub projection: ProjectionName,
    /// The checkpoint (last applied sequence number) of each side: the head its rows speak of.
    pub left_seq: u64,
    pub right_seq: u64,
    pub left_digest: [u8; 32],
    pub right_digest: [u8; 32],
    /// The first row, in key order, that one side lacks or holds with other bytes.
    pub first_difference: Option<RowDifference>,
}

impl Comparison {
    /// Whether both sides hold the same rows.
    pub fn equal(&self) -> bool {
        self.left_digest == self.right_digest
    }
}

impl std::fmt::Display for Comparison {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "projection {}: left at sequence {} digest {}, right at sequence {} digest {}",
            self.projection.name(),
            self.left_seq,
            crate::hex::hex(&self.left_digest),
            self.right_seq,
            crate::hex::hex(&self.right_digest),
        )?;
        match &self.first_difference {
            Some(difference) => write!(f, "; {difference}"),
            None => Ok(()),
        }
    }
}

/// The first row where two folds of a projection part ways.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RowDifference {
    pub key: Vec<u8>,
    /// The row's value on each side; `None` where that side has no such row.
    pub left: Option<Vec<u8>>,
    pub right: Option<Vec<u8>>,
}

/// Bytes of a differing value shown in a message; rows are small, but a message stays short.
const DIFFERENCE_SHOWN_BYTES: usize = 64;

impl std::fmt::Display for RowDifference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let show = |value: &Option<Vec<u8>>| match value {
            None => "absent".to_string(),
            Some(bytes) => {
                let shown = &bytes[..bytes.len().min(DIFFERENCE_SHOWN_BYTES)];
                let more = if bytes.len() > shown.len() { "…" } else { "" };
                format!("{} bytes {}{more}", bytes.len(), crate::hex::hex(shown))
            }
        };
        write!(
            f,
            "first differing row \"{}\": left {}, right {}",
            self.key.escape_ascii(),
            show(&self.left),
            show(&self.right)
        )
    }
}

impl Projections {
    /// Compares a projection here (`left`) with the same projection in `other` (`right`):
    /// both heads, both digests and, when they differ, the first key that does. A digest
    /// alone says that two folds disagree; this says where to look.
    pub fn compare(&self, other: &Projections, name: ProjectionName) -> Result<Comparison, StoreError> {
        compare_indexes(name, &self.index(name), &other.index(name))
    }
}

/// A side that cannot be read compares as this digest, with the damaged row named.
const UNREADABLE_DIGEST: [u8; 32] = [0; 32];

pub(crate) fn compare_indexes(
    projection: ProjectionName,
    left: &Index,
    right: &Index,
) -> Result<Comparison, StoreError> {
    let (left_digest, right_digest) = (readable_digest(left)?, readable_digest(right)?);
    let first_difference = if left_digest == right_digest {
        None
    } else {
        first_difference(left, right)?
    };
    Ok(Comparison {
        projection,
        left_seq: left.applied(),
        right_seq: right.applied(),
        left_digest,
        right_digest,
        first_difference,
    })
}

/// An index's digest, or [`UNREADABLE_DIGEST`] when a row of it does not decode.
fn readable_digest(index: &Index) -> Result<[u8; 32], StoreError> {
    match index.digest() {
        Err(StoreError::Decode { .. }) => Ok(UNREADABLE_DIGEST),
        other => other,
    }
}

/// The first key, in bucket and key order, whose postings differ; a row of a side that
/// does not decode is the difference, with its bytes.
fn first_difference(left: &Index, right: &Index) -> Result<Option<RowDifference>, StoreError> {
    let encode = |list: &Vec<Posting>| {
        let mut bytes = Vec::with_capacity(list.len() * 8);
        for p in list {
            bytes.extend_from_slice(&p.to_be_bytes());
        }
        bytes
    };
    let left_mem = left.mem.read().expect("index lock");
    let right_mem = right.mem.read().expect("index lock");
    for bucket in 0..BUCKETS {
        let sides = [left.bucket(&left_mem, bucket), right.bucket(&right_mem, bucket)];
        let [l, r] = match sides {
            [Ok(l), Ok(r)] => [l, r],
            [Err(StoreError::Decode { .. }), _] => return Ok(Some(damaged_row(left, bucket, true)?)),
            [_, Err(StoreError::Decode { .. })] => return Ok(Some(damaged_row(right, bucket, false)?)),
            [Err(e), _] | [_, Err(e)] => return Err(e),
        };
        if l == r {
            continue;
        }
        let keys: std::collections::BTreeSet<&Vec<u8>> = l.keys().chain(r.keys()).collect();
        for key in keys {
            let (lv, rv) = (l.get(key), r.get(key));
            if lv != rv {
                return Ok(Some(RowDifference {
                    key: key.clone(),
                    left: lv.map(encode),
                    right: rv.map(encode),
                }));
            }
        }
    }
    Ok(None)
}

/// The first row of a bucket that does not decode, as a difference.
fn damaged_row(index: &Index, bucket: u16, left: bool) -> Result<RowDifference, StoreError> {
    for row in index.tree.scan_prefix(bucket.to_be_bytes()) {
        let (key, value) = row?;
        if postings::parse_run_key(&key).is_some() && postings::decode_run(&value).is_err() {
            let value = Some(value.to_vec());
            let (l, r) = if left { (value, None) } else { (None, value) };
            return Ok(RowDifference {
                key: key.to_vec(),
                left: l,
                right: r,
            });
        }
    }
    Err(index.decode_error(format!("bucket {bucket} does not decode")))
}
