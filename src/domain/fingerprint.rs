//! Fingerprints and natural identities: how the idempotency index names what it files. A
//! fingerprint is 128 bits of blake3 over length-prefixed parts; a natural identity is what
//! makes an operation the same whatever key the caller sent (a rating slip accrues once, an
//! external reward is granted once, a comp without one is given once a day).

use super::command::AwardRequest;
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::collections::HashMap;

/// µs in a UTC day: manual comps without an external id are deduplicated per day.
const DAY_US: u64 = 86_400_000_000;

/// A natural identity of an operation, independent of the caller's idempotency key: a
/// rating slip accrues once, an external reward is granted once, a comp without an external
/// id is given once per day.
/// Borrowed from the command or record it is computed for: only its fingerprint is kept,
/// so making one allocates nothing (but a comp's derived id).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct NaturalKey<'a> {
    pub tenant: &'a str,
    pub kind: NaturalKind,
    pub id: Cow<'a, str>,
}

impl NaturalKey<'_> {
    /// The key the idempotency index files it under.
    pub fn fingerprint(&self) -> Fingerprint {
        let kind: &[u8] = match self.kind {
            NaturalKind::RatingSlip => b"rating_slip",
            NaturalKind::PromotionReward => b"promotion_reward",
            NaturalKind::ManualReward => b"manual_reward",
            NaturalKind::ManualComp => b"manual_comp",
        };
        fingerprint(&[b"natural", self.tenant.as_bytes(), kind, self.id.as_bytes()])
    }
}

/// A map keyed by numbers the ledger assigns (sequence numbers) or by [`Fingerprint`]s
/// (blake3 outputs): foldhash, seeded per process, instead of SipHash. Such keys cannot be
/// steered by a caller into colliding buckets (a caller would have to grind blake3 against
/// a seed it never sees), and the idempotency index takes three inserts per accepted
/// command in the sequencer (and again whenever a state is restored): SipHash over keys that
/// are already uniform hashes was a few percent of the folding threads' time (BENCHMARKS.md). Maps keyed by callers' texts (account ids) keep SipHash.
pub type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// 128 bits of a blake3 hash: how the idempotency index stores an identity, in 16 bytes
/// however long its texts (ids of up to 128 bytes each), with collisions at 2^-64 even
/// after 2^32 identities.
pub type Fingerprint = [u8; 16];

/// The fingerprint of a sequence of byte strings, each length-prefixed so that no two
/// different sequences are fed as the same bytes.
pub fn fingerprint(parts: &[&[u8]]) -> Fingerprint {
    let total: usize = parts.iter().map(|part| 8 + part.len()).sum();
    let hash = if total <= FINGERPRINT_STACK_BYTES {
        let mut bytes = [0u8; FINGERPRINT_STACK_BYTES];
        let mut at = 0;
        for part in parts {
            bytes[at..at + 8].copy_from_slice(&(part.len() as u64).to_le_bytes());
            bytes[at + 8..at + 8 + part.len()].copy_from_slice(part);
            at += 8 + part.len();
        }
        blake3::hash(&bytes[..at])
    } else {
        let mut hasher = blake3::Hasher::new();
        for part in parts {
            hasher.update(&(part.len() as u64).to_le_bytes());
            hasher.update(part);
        }
        hasher.finalize()
    };
    hash.as_bytes()[..16].try_into().expect("16 bytes")
}

/// Identities up to this size (all of them today: four ids of at most 128 bytes and their
/// length prefixes) are laid out on the stack and hashed in one call, which is faster for
/// such short inputs than feeding a hasher piece by piece (the writer computes several per
/// command; BENCHMARKS.md). Both ways hash the same bytes.
const FINGERPRINT_STACK_BYTES: usize = 640;

/// The fingerprint of an idempotency identity `(tenant, scope, key)`.
pub fn key_fingerprint(tenant: &str, scope: &str, key: &str) -> Fingerprint {
    fingerprint(&[b"key", tenant.as_bytes(), scope.as_bytes(), key.as_bytes()])
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum NaturalKind {
    RatingSlip,
    PromotionReward,
    ManualReward,
    /// Derived from (account, staff, points, reason, UTC day).
    ManualComp,
}

/// The award's natural identity: the slip, the external reward, or the day's comp.
pub fn natural_key<'a>(tenant: &'a str, account: &str, source: &'a AwardRequest, ts_us: u64) -> NaturalKey<'a> {
    if let Some(natural) = timeless_natural_key(tenant, source) {
        return natural;
    }
    let AwardRequest::Manual {
        staff_id,
        points,
        reason,
        ..
    } = source
    else {
        unreachable!("only a comp without an external id has a natural identity that depends on the day")
    };
    NaturalKey {
        tenant,
        kind: NaturalKind::ManualComp,
        id: Cow::Owned(comp_id(account, staff_id, *points, reason, ts_us / DAY_US)),
    }
}

/// An award's natural identity when it does not depend on the day it is recorded: every
/// source's but a comp's without an external id (`None`).
pub fn timeless_natural_key<'a>(tenant: &'a str, source: &'a AwardRequest) -> Option<NaturalKey<'a>> {
    let (kind, id) = match source {
        AwardRequest::RatingSlip { slip_id, .. } => (NaturalKind::RatingSlip, slip_id),
        AwardRequest::Promotion { external_reward_id, .. } => (NaturalKind::PromotionReward, external_reward_id),
        AwardRequest::Manual { external_reward_id, .. } if !external_reward_id.is_empty() => {
            (NaturalKind::ManualReward, external_reward_id)
        }
        AwardRequest::Manual { .. } => return None,
    };
    Some(NaturalKey {
        tenant,
        kind,
        id: Cow::Borrowed(id.as_str()),
    })
}

/// A comp's identity within its UTC day: blake3 over the length-prefixed fields, 128 bits.
fn comp_id(account: &str, staff_id: &str, points: u64, reason: &str, day: u64) -> String {
    let mut hasher = blake3::Hasher::new();
    for part in [account.as_bytes(), staff_id.as_bytes(), reason.as_bytes()] {
        hasher.update(&(part.len() as u64).to_le_bytes());
        hasher.update(part);
    }
    hasher.update(&points.to_le_bytes());
    hasher.update(&day.to_le_bytes());
    hasher.finalize().to_hex()[..32].to_string()
}

#[cfg(test)]
mod tests {
    use super::fingerprint;

    #[test]
    fn a_fingerprint_is_the_hash_of_the_length_prefixed_parts_however_long() {
        for len in [0usize, 1, 100, 600, 1000, 5000] {
            let long = vec![b'x'; len];
            let parts: [&[u8]; 3] = [b"key", &long, b"tenant"];
            let mut concatenated = Vec::new();
            for part in parts {
                concatenated.extend_from_slice(&(part.len() as u64).to_le_bytes());
                concatenated.extend_from_slice(part);
            }
            let expected: [u8; 16] = blake3::hash(&concatenated).as_bytes()[..16].try_into().unwrap();
            assert_eq!(fingerprint(&parts), expected, "parts of {len} bytes");
        }
    }
}
