//! Reads of the ingest pipeline's state, answered by the sequencer from its `State` like
//! balance reads: the dead-letter queue by filter, one receipt, the counters, and the plan
//! of a re-drive (which letters, in which order).

use crate::domain::event::ExternalKind;
use crate::domain::state::{AccountKey, IngestCounters, Receipt, ReceiptStatus, Resolution, State};

/// Which letters a listing or a re-drive selects; every part is optional.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LetterFilter {
    pub kind: Option<ExternalKind>,
    pub member: Option<String>,
    /// Receipt time window, µs; 0 leaves that end open.
    pub received_from_us: u64,
    pub received_to_us: u64,
    pub cause_contains: String,
    /// Include events waiting for a retry (only for listings: they are not letters yet).
    pub include_retrying: bool,
}

impl LetterFilter {
    fn matches(&self, receipt: &Receipt) -> bool {
        self.kind.is_none_or(|k| receipt.body.kind() == k)
            && self.member.as_deref().is_none_or(|m| receipt.body.member_id() == m)
            && receipt.received_at_us >= self.received_from_us
            && (self.received_to_us == 0 || receipt.received_at_us <= self.received_to_us)
            && receipt.cause.contains(&self.cause_contains)
            && (self.include_retrying || matches!(receipt.status, ReceiptStatus::DeadLettered { .. }))
    }
}

/// An open receipt (retrying or in the queue) and its place in its member's sequence.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LetterView {
    pub receipt_seq: u64,
    pub receipt: Receipt,
    /// 0 is the head; also 0 for a receipt that is retrying (not in the queue).
    pub position: u32,
}

/// A page of letters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LetterPage {
    pub letters: Vec<LetterView>,
    /// Letters matching the filter, beyond the page too.
    pub matching: u64,
    /// Letters in the tenant's queue.
    pub depth: u64,
}

/// Where one receipt stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReceiptState {
    Open(Box<LetterView>),
    Processed { seq: u64 },
    Discarded { seq: u64 },
}

/// The pipeline's counters for a tenant, and its queue now.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PipelineStats {
    pub counters: IngestCounters,
    pub dead_letter_depth: u64,
    pub retrying: u64,
}

fn position(state: &State, receipt_seq: u64, receipt: &Receipt) -> u32 {
    let member = AccountKey::new(&receipt.tenant, receipt.body.member_id());
    state
        .ingest
        .sequences
        .get(&member)
        .and_then(|letters| letters.iter().position(|&seq| seq == receipt_seq))
        .map_or(0, |at| at as u32)
}

fn view(state: &State, receipt_seq: u64, receipt: &Receipt) -> LetterView {
    LetterView {
        receipt_seq,
        receipt: receipt.clone(),
        position: position(state, receipt_seq, receipt),
    }
}

/// The tenant's letters matching `filter`, oldest receipt first, at most `limit`.
pub(crate) fn dead_letters(state: &State, tenant: &str, filter: &LetterFilter, limit: usize) -> LetterPage {
    let mut matching: Vec<(u64, &Receipt)> = state
        .ingest
        .open
        .iter()
        .filter(|(_, r)| r.tenant == tenant && filter.matches(r))
        .map(|(&seq, r)| (seq, r))
        .collect();
    matching.sort_unstable_by_key(|(seq, _)| *seq);
    LetterPage {
        matching: matching.len() as u64,
        letters: matching
            .iter()
            .take(limit)
            .map(|&(seq, r)| view(state, seq, r))
            .collect(),
        depth: depth(state, tenant),
    }
}

fn depth(state: &State, tenant: &str) -> u64 {
    state.ingest.counters.get(tenant).map_or(0, |c| c.depth)
}

/// Where receipt `receipt_seq` of `tenant` stands, if it is one.
pub(crate) fn receipt(state: &State, tenant: &str, receipt_seq: u64) -> Option<ReceiptState> {
    let ingest = &state.ingest;
    if let Some(receipt) = ingest.open.get(&receipt_seq) {
        return (receipt.tenant == tenant).then(|| ReceiptState::Open(Box::new(view(state, receipt_seq, receipt))));
    }
    let resolved = ingest.resolved.get(&receipt_seq).filter(|r| &*r.tenant == tenant)?;
    Some(match resolved.how {
        Resolution::Processed { seq } => ReceiptState::Processed { seq },
        Resolution::Discarded { seq } => ReceiptState::Discarded { seq },
    })
}

pub(crate) fn stats(state: &State, tenant: &str) -> PipelineStats {
    let ingest = &state.ingest;
    PipelineStats {
        counters: ingest.counters.get(tenant).cloned().unwrap_or_default(),
        dead_letter_depth: depth(state, tenant),
        retrying: ingest
            .open
            .values()
            .filter(|r| r.tenant == tenant && matches!(r.status, ReceiptStatus::Retrying { .. }))
            .count() as u64,
    }
}

/// What a re-drive applies, in order: the sequence of `through` from its head through it,
/// or every sequence holding a letter that matches `filter`, each from its head through its
/// last matching letter, oldest head first; at most `max` letters in all. A receipt that is
/// not an open letter of the tenant is planned alone, so the re-drive says what it is.
pub(crate) fn redrive_plan(state: &State, tenant: &str, selection: &RedriveSelection, max: usize) -> Vec<u64> {
    let ingest = &state.ingest;
    let member_of = |seq: u64| {
        ingest
            .open
            .get(&seq)
            .filter(|r| r.tenant == tenant && matches!(r.status, ReceiptStatus::DeadLettered { .. }))
            .map(|r| AccountKey::new(&r.tenant, r.body.member_id()))
    };
    let mut plan = Vec::new();
    match selection {
        RedriveSelection::Through(receipt_seq) => match member_of(*receipt_seq) {
            Some(member) => {
                for &seq in &ingest.sequences[&member] {
                    plan.push(seq);
                    if seq == *receipt_seq {
                        break;
                    }
                }
            }
            None => plan.push(*receipt_seq),
        },
        RedriveSelection::Matching(filter) => {
            let filter = LetterFilter {
                include_retrying: false,
                ..filter.clone()
            };
            let mut sequences: Vec<_> = ingest
                .sequences
                .iter()
                .filter(|(member, _)| member.tenant() == tenant)
                .filter_map(|(_, letters)| {
                    let last = letters.iter().rposition(|seq| filter.matches(&ingest.open[seq]))?;
                    Some(letters.iter().take(last + 1).copied().collect::<Vec<_>>())
                })
                .collect();
            sequences.sort_unstable_by_key(|letters| letters[0]);
            plan.extend(sequences.into_iter().flatten());
        }
    }
    plan.truncate(max);
    plan
}

/// What a re-drive is asked to apply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RedriveSelection {
    /// One letter: its sequence from the head through it.
    Through(u64),
    /// Every sequence with a matching letter.
    Matching(LetterFilter),
}
