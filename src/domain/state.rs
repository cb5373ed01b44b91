//! The write-side state: everything `decide` needs, and nothing more. It is a fold of the
//! log (`evolve`); the engine keeps it in memory and snapshots it (msgpack) as a cache that
//! can always be rebuilt from the log.

use super::command::{Command, CommandMeta, IdempotencyKey, RequestPrint};
use super::event::{ExternalBody, LinkStatus};
pub use super::identities::{
    NoOlderRecords, OlderIdentities, OlderRecords, Prior, Recalled, WindowEntry, WindowPolicy,
};
use super::sharded::{Chunked, Sharded};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeSet, HashMap, VecDeque};

pub use super::event::HoldStatus;
pub use super::fingerprint::{
    fingerprint, key_fingerprint, timeless_natural_key, FastMap, Fingerprint, NaturalKey, NaturalKind,
};

/// An account's identity: account ids are unique per tenant. One allocation,
/// `tenant NUL account` (ids never hold control characters), in 16 bytes: the write-side
/// state keeps one per account, so its size is the state's size (`benches/state.rs`).
/// Ordered as `(tenant, account)`, since NUL sorts first.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct AccountKey(Box<str>);

/// Account ids are callers' texts: their shard comes from the map's seeded hash.
impl super::sharded::Shard for AccountKey {
    fn shard(&self, pick: &foldhash::fast::RandomState) -> usize {
        use std::hash::BuildHasher;
        (pick.hash_one(self) >> 56) as usize
    }
}

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

#[cfg(test)]
mod tests {
    #[test]
    fn an_identity_is_used_for_its_command_first_record_in_the_caller_tenant_only() {
        use super::super::command::{Command, CommandMeta};
        let meta = CommandMeta {
            tenant: "t1".into(),
            ..CommandMeta::default()
        };
        let command = Command::OpenAccount { account: "p1".into() };
        let identity = super::Identity::of(&meta, &command);
        assert_eq!(identity.for_record(&meta, 0, "t1"), Some(&identity));
        assert_eq!(identity.for_record(&meta, 1, "t1"), None, "a later record");
        assert_eq!(identity.for_record(&meta, 0, "t2"), None, "another tenant's record");
    }
}

/// An accepted command, kept to answer retries: its print (to tell a retry from a
/// conflict) and its last event (to answer with the original result).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Applied {
    pub request: RequestPrint,
    pub last_seq: u64,
}

/// Durable idempotency: every accepted command's identity, rebuilt from the log. The recent
/// ones (the window, [`super::identities`]) are kept whole: fingerprints, prints and
/// ranges, about 336 bytes each; older ones as 8 bytes each, answered from the log.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Idempotency {
    /// [`key_fingerprint`] of `(tenant, scope, key)` → sequence number of the command's
    /// first event, for identities in the window.
    pub by_key: Sharded<Fingerprint, u64>,
    /// [`NaturalKey::fingerprint`] → sequence number of the command's first event, for
    /// identities in the window.
    pub by_natural: Sharded<Fingerprint, u64>,
    /// First sequence number → the command's print and its last event.
    pub applied: Sharded<u64, Applied>,
    /// The identities in the window, oldest first: the order they leave it in.
    pub window: Chunked<WindowEntry>,
    /// The identities that left the window.
    pub older: OlderIdentities,
    /// How many identities the window keeps: a setting, not state (equal folds of one log
    /// under one policy hold equal windows).
    #[serde(skip)]
    pub policy: WindowPolicy,
}

/// What the idempotency index files a command under, worked out from the command alone:
/// its key's fingerprint, its natural identity's fingerprint, its request's print. The
/// engine works these out on the callers' tasks, in parallel, and hands them to the writer
/// with the command (`decide_identified`, `evolve_identified`): otherwise the one writer
/// hashes the same texts twice per command, once to decide and once to fold, and those
/// hashes were most of its blake3 time (BENCHMARKS.md). `decide` and `evolve` alone work
/// them out themselves, from the command and from the record; debug builds check that the
/// two agree.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    /// [`key_fingerprint`] of the command's idempotency key, if it has one.
    pub key: Option<Fingerprint>,
    /// [`NaturalKey::fingerprint`] of an award's natural identity, unless it depends on
    /// the day the award is recorded (a comp without an external id): the writer works
    /// that one out.
    pub natural: Option<Fingerprint>,
    /// The request's print, as the index keeps it.
    pub print: RequestPrint,
    /// The version ([`OlderIdentities::cutoff`]) of the older identities `key` and
    /// `natural` were looked up in before the command reached the writer, if they were.
    pub checked_older: Option<u64>,
    /// What was found for them there, and anything else read from the log for the command.
    pub resolved: Vec<Recalled>,
}

impl Identity {
    pub fn of(meta: &CommandMeta, command: &Command) -> Self {
        let key = meta
            .idempotency
            .as_ref()
            .map(|key| key_fingerprint(&meta.tenant, &key.scope, &key.key));
        let natural = match command {
            Command::Award { source, .. } => {
                timeless_natural_key(&meta.tenant, source).map(|natural| natural.fingerprint())
            }
            _ => None,
        };
        Self {
            key,
            natural,
            print: command.print(),
            checked_older: None,
            resolved: Vec::new(),
        }
    }

    /// Looks the command's identities up among the identities that left the window
    /// (`older`, as the writer last published them), reading any candidate from the log:
    /// done on the submitting task, so that the writer need not. An error leaves the
    /// identity unchecked, for the writer to look up.
    pub fn check_older(&mut self, older: &OlderIdentities, records: &dyn OlderRecords) {
        let mut resolved = Vec::new();
        for fingerprint in [self.key, self.natural].into_iter().flatten() {
            match super::identities::find_older(older, &fingerprint, &resolved, records) {
                Ok(Some(found)) => resolved.push(found),
                Ok(None) => {}
                Err(_) => return,
            }
        }
        self.resolved = resolved;
        self.checked_older = Some(older.cutoff());
    }

    /// Whether two identities are of the same command (what was looked up aside).
    pub fn same_command(&self, other: &Self) -> bool {
        (self.key, self.natural, self.print) == (other.key, other.natural, other.print)
    }

    /// This identity, if the `at`-th record emitted for the command of `meta` is the one
    /// it identifies: the first, and in the caller's tenant. The identity was worked out
    /// with the caller's tenant, and `evolve` works it out with the record's; handlers emit
    /// into the caller's tenant only (other tenants' holds, links and receipts are not
    /// found), and where that ever failed to hold, a fold with the identity would differ
    /// from a refold of the log. A string comparison keeps that so in release builds too.
    pub fn for_record(&self, meta: &CommandMeta, at: usize, tenant: &str) -> Option<&Self> {
        (at == 0 && tenant == meta.tenant).then_some(self)
    }
}

impl Idempotency {
    /// An empty index keeping the window `policy` says.
    pub fn with_policy(policy: WindowPolicy) -> Self {
        Self {
            policy,
            ..Self::default()
        }
    }

    /// The first sequence number of the command that used `key`, if it is in the window.
    pub fn first_seq_of_key(&self, tenant: &str, key: &IdempotencyKey) -> Option<u64> {
        self.by_key.get(&key_fingerprint(tenant, &key.scope, &key.key)).copied()
    }

    /// What the command that took the identity `fingerprint` (a key's if `natural` is
    /// false) was, wherever it is: in the window, or older (read from the log, unless the
    /// submitting task already did against the same older identities).
    pub fn find(
        &self,
        fingerprint: &Fingerprint,
        natural: bool,
        identity: Option<&Identity>,
        records: &dyn OlderRecords,
    ) -> Result<Option<Prior>, String> {
        let map = if natural { &self.by_natural } else { &self.by_key };
        if let Some(&first_seq) = map.get(fingerprint) {
            let applied = self.applied(first_seq);
            return Ok(Some(Prior {
                first_seq,
                print: applied.request,
                last_seq: applied.last_seq,
            }));
        }
        if self.older.is_empty() {
            return Ok(None);
        }
        let known = identity.map_or(&[][..], |i| &i.resolved[..]);
        if let Some(identity) = identity {
            let checked = identity.checked_older == Some(self.older.cutoff());
            if checked && [identity.key, identity.natural].contains(&Some(*fingerprint)) {
                return Ok(known.iter().find(|r| r.matches(fingerprint)).map(Prior::from));
            }
        }
        Ok(super::identities::find_older(&self.older, fingerprint, known, records)?.map(|r| Prior::from(&r)))
    }

    /// Moves identities recorded before `now_us` out of the window, a chunk at a time, while
    /// the policy says they leave.
    pub(super) fn evict(&mut self, now_us: u64) {
        let chunk = self.policy.chunk.max(1);
        while self.window.len() >= chunk {
            let newer = (self.window.len() - chunk) as u64;
            if !self.window[chunk - 1].evictable(&self.policy, newer, now_us) {
                return;
            }
            let evicted: Vec<WindowEntry> = self.window.take_front(chunk);
            for entry in &evicted {
                if let Some(key) = &entry.key {
                    let removed = self.by_key.remove(key);
                    assert_eq!(
                        removed,
                        Some(entry.first_seq),
                        "a key in the window maps to its command"
                    );
                }
                if let Some(natural) = &entry.natural {
                    let removed = self.by_natural.remove(natural);
                    assert_eq!(
                        removed,
                        Some(entry.first_seq),
                        "a natural identity in the window maps to its award"
                    );
                }
                assert!(
                    self.applied.remove(&entry.first_seq).is_some(),
                    "a window entry has its command"
                );
            }
            self.older.add(&evicted);
        }
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
    pub accounts: Sharded<AccountKey, Account, std::collections::hash_map::RandomState>,
    /// Every hold ever placed, by id (the sequence number of its reservation).
    pub holds: Sharded<u64, Hold>,
    /// Active holds by `(expires_at_us, hold_id)`, for the expiry pulse.
    pub expiry: BTreeSet<(u64, u64)>,
    pub idempotency: Idempotency,
    /// `(tenant, staff id)` → timestamps of the staff member's latest comps.
    pub comps: HashMap<(String, String), VecDeque<u64>>,
    /// Every tier name the log has named, in order of first appearance.
    pub tier_names: Vec<String>,
    /// The ingest pipeline: open receipts, retries, the dead-letter queue.
    pub ingest: IngestState,
    /// Links to accounts in other systems.
    pub links: LinkState,
    /// Sessions and API keys.
    pub credentials: super::credentials::Credentials,
    /// Endpoints and their deliveries.
    pub deliveries: super::endpoints::DeliveryState,
}

/// Every link, the active one of each external account, and the pending ones by deadline.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkState {
    pub links: FastMap<u64, Link>,
    /// [`external_account_fingerprint`] → the link that is active for it.
    pub active: FastMap<Fingerprint, u64>,
    /// Pending links by `(expires_at_us, link_id)`, for the expiry pulse.
    pub expiry: BTreeSet<(u64, u64)>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Link {
    pub tenant: String,
    pub account: String,
    pub external_system: String,
    pub external_account_id: String,
    pub token_hash: [u8; 32],
    pub created_at_us: u64,
    pub expires_at_us: u64,
    pub status: LinkStatus,
    pub failures: u32,
    /// When it was verified, revoked, locked or expired (0 while pending).
    pub resolved_at_us: u64,
}

/// The identity of an account in another system, in a tenant: one active link each.
pub fn external_account_fingerprint(tenant: &str, system: &str, account: &str) -> Fingerprint {
    fingerprint(&[
        b"external-account",
        tenant.as_bytes(),
        system.as_bytes(),
        account.as_bytes(),
    ])
}

/// The ingest pipeline's state (`docs/INGEST.md`), folded from its events like the rest.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IngestState {
    /// Every received external event not yet processed or discarded, by the sequence number
    /// of its `external.received` record (its receipt number).
    pub open: FastMap<u64, Receipt>,
    /// Receipts waiting for a retry, by `(retry_at_us, receipt)`.
    pub retry_due: BTreeSet<(u64, u64)>,
    /// Each member's dead letters in order of receipt: the first is the head, the others
    /// are parked behind it so that none is applied before it.
    pub sequences: HashMap<AccountKey, VecDeque<u64>>,
    /// [`content_fingerprint`] → the latest receipt with that content and when it came.
    pub contents: FastMap<Fingerprint, (u64, u64)>,
    /// [`external_fingerprint`] of a processed award or accrual → what a reversal can
    /// still take back.
    pub reversible: FastMap<Fingerprint, Reversible>,
    /// Receipts that are done: processed or discarded.
    pub resolved: FastMap<u64, Resolved>,
    /// Per tenant, since the log began.
    pub counters: HashMap<String, IngestCounters>,
}

/// A received external event that is not done yet.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Receipt {
    pub tenant: String,
    pub source: String,
    pub external_id: String,
    pub body: ExternalBody,
    pub received_at_us: u64,
    pub status: ReceiptStatus,
    /// Processing attempts so far (a parked letter has none).
    pub attempts: u32,
    /// The latest failure's cause.
    pub cause: String,
    pub first_failure_us: u64,
    pub last_failure_us: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReceiptStatus {
    /// Received; its first attempt's outcome is the next record.
    Received,
    Retrying {
        retry_at_us: u64,
    },
    /// In the dead-letter queue; `parked_behind` is the letter it waited for (0 if it failed
    /// on its own).
    DeadLettered {
        parked_behind: u64,
    },
}

/// An applied external award: a `points.reverse` of it takes back at most
/// `points - reversed`, from the same member.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reversible {
    pub account: AccountKey,
    pub points: u64,
    pub reversed: u64,
}

/// A receipt that is done, and in which tenant.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resolved {
    pub tenant: Box<str>,
    pub how: Resolution,
}

/// How a receipt was done with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Resolution {
    /// `seq` is the `external.processed` record.
    Processed { seq: u64 },
    /// `seq` is the `dead_letter.discarded` record.
    Discarded { seq: u64 },
}

/// What the pipeline has done, per tenant.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IngestCounters {
    pub received: u64,
    pub processed: u64,
    /// Failed attempts that were scheduled for another.
    pub retried: u64,
    /// Receipts that entered the dead-letter queue (parked ones included).
    pub dead_lettered: u64,
    /// Re-drive attempts by operators.
    pub redriven: u64,
    pub discarded: u64,
    /// Letters in the tenant's dead-letter queue now.
    pub depth: u64,
}

/// The identity of content dedup: the same checksum from the same source in a tenant.
pub fn content_fingerprint(tenant: &str, source: &str, checksum: &[u8; 32]) -> Fingerprint {
    fingerprint(&[b"content", tenant.as_bytes(), source.as_bytes(), checksum])
}

/// The identity of an external event: its source and external id in a tenant.
pub fn external_fingerprint(tenant: &str, source: &str, external_id: &str) -> Fingerprint {
    fingerprint(&[
        b"external",
        tenant.as_bytes(),
        source.as_bytes(),
        external_id.as_bytes(),
    ])
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
