//! The write-side state: everything `decide` needs, and nothing more. It is a fold of the
//! log (`evolve`); the engine keeps it in memory and snapshots it (msgpack) as a cache that
//! can always be rebuilt from the log.

use super::command::{IdempotencyKey, RequestPrint};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeSet, HashMap, VecDeque};

pub use super::event::HoldStatus;

/// An account's identity: account ids are unique per tenant. One allocation,
/// `tenant NUL account` (ids never hold control characters), in 16 bytes: the write-side
/// state keeps one per account, so its size is the state's size (`benches/state.rs`).
/// Ordered as `(tenant, account)`, since NUL sorts first.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct AccountKey(Box<str>);

impl AccountKey {
    pub fn new(tenant: &str, account: &str) -> Self {
        debug_assert!(!tenant.contains('\0'), "tenant ids hold no control characters");
        let mut key = String::with_capacity(tenant.len() + 1 + account.len());
        key.push_str(tenant);
        key.push('\0');
        key.push_str(account);
        Self(key.into_boxed_str())
    }

    pub fn tenant(&self) -> &str {
        self.0.split_once('\0').expect("a key holds its separator").0
    }

    pub fn account(&self) -> &str {
        self.0.split_once('\0').expect("a key holds its separator").1
    }
}

/// A tier, as an index into [`State::tier_names`]: a byte in each account instead of a
/// string.
pub type TierIndex = u8;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Account {
    pub posted: u64,
    /// Sum of the amounts of the account's active holds.
    pub held: u64,
    pub lifetime: u64,
    pub tier: TierIndex,
    pub active_holds: u32,
    pub opened_seq: u64,
    pub opened_at_us: u64,
    pub last_seq: u64,
}

impl Account {
    /// Points that can be reserved: posted minus held, never negative.
    pub fn available(&self) -> u64 {
        self.posted
            .checked_sub(self.held)
            .expect("invariant: held never exceeds posted")
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hold {
    pub tenant: String,
    pub account: String,
    pub amount: u64,
    pub status: HoldStatus,
    pub created_at_us: u64,
    pub expires_at_us: u64,
    pub committed: u64,
    pub released: u64,
    pub resolved_at_us: u64,
    pub resolved_seq: u64,
}

/// A natural identity of an operation, independent of the caller's idempotency key: a
/// rating slip accrues once, an external reward is granted once, a comp without an external
/// id is given once per day.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct NaturalKey {
    pub tenant: String,
    pub kind: NaturalKind,
    pub id: String,
}

impl NaturalKey {
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

/// 128 bits of a blake3 hash: how the idempotency index stores an identity, in 16 bytes
/// however long its texts (ids of up to 128 bytes each), with collisions at 2^-64 even
/// after 2^32 identities.
pub type Fingerprint = [u8; 16];

/// The fingerprint of a sequence of byte strings, each length-prefixed so that no two
/// different sequences are fed as the same bytes.
pub fn fingerprint(parts: &[&[u8]]) -> Fingerprint {
    let mut hasher = blake3::Hasher::new();
    for part in parts {
        hasher.update(&(part.len() as u64).to_le_bytes());
        hasher.update(part);
    }
    hasher.finalize().as_bytes()[..16].try_into().expect("16 bytes")
}

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

/// An accepted command, kept to answer retries: its print (to tell a retry from a
/// conflict) and its last event (to answer with the original result).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Applied {
    pub request: RequestPrint,
    pub last_seq: u64,
}

/// Durable idempotency: every accepted command's identity, rebuilt from the log. It grows
/// by one entry per accepted command for ever (keys are durable), so it keeps fingerprints
/// and prints, not the texts: about 230 bytes a command (`benches/state.rs`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Idempotency {
    /// [`key_fingerprint`] of `(tenant, scope, key)` → sequence number of the command's
    /// first event.
    pub by_key: HashMap<Fingerprint, u64>,
    /// [`NaturalKey::fingerprint`] → sequence number of the command's first event.
    pub by_natural: HashMap<Fingerprint, u64>,
    /// First sequence number → the command's print and its last event.
    pub applied: HashMap<u64, Applied>,
}

impl Idempotency {
    pub fn first_seq_of_key(&self, tenant: &str, key: &IdempotencyKey) -> Option<u64> {
        self.by_key.get(&key_fingerprint(tenant, &key.scope, &key.key)).copied()
    }

    pub fn first_seq_of_natural(&self, natural: &NaturalKey) -> Option<u64> {
        self.by_natural.get(&natural.fingerprint()).copied()
    }

    pub fn applied(&self, first_seq: u64) -> &Applied {
        self.applied
            .get(&first_seq)
            .expect("invariant: every indexed identity has its applied command")
    }
}

/// The whole write-side state.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    /// Sequence number of the last folded record (0 for an empty log).
    pub head_seq: u64,
    pub head_ts_us: u64,
    pub accounts: HashMap<AccountKey, Account>,
    /// Every hold ever placed, by id (the sequence number of its reservation).
    pub holds: HashMap<u64, Hold>,
    /// Active holds by `(expires_at_us, hold_id)`, for the expiry pulse.
    pub expiry: BTreeSet<(u64, u64)>,
    pub idempotency: Idempotency,
    /// `(tenant, staff id)` → timestamps of the staff member's latest comps.
    pub comps: HashMap<(String, String), VecDeque<u64>>,
    /// Every tier name the log has named, in order of first appearance.
    pub tier_names: Vec<String>,
}

/// Distinct tier names a log may name: tiers are a handful per program.
pub const MAX_TIER_NAMES: usize = 256;

impl State {
    /// The name of a tier index.
    pub fn tier_name(&self, tier: TierIndex) -> &str {
        &self.tier_names[tier as usize]
    }

    /// The index of a tier name, added on first sight.
    pub fn tier_index(&mut self, name: &str) -> TierIndex {
        if let Some(at) = self.tier_names.iter().position(|n| n == name) {
            return at as TierIndex;
        }
        assert!(
            self.tier_names.len() < MAX_TIER_NAMES,
            "at most {MAX_TIER_NAMES} tier names"
        );
        self.tier_names.push(name.to_string());
        (self.tier_names.len() - 1) as TierIndex
    }
}
