//! Which records a replay, subscription or audit wants, and over which window.

use crate::domain::{EventKind, Record};

/// A predicate over records. Empty lists match everything; a record must match every
/// non-empty list (any value in it).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EventFilter {
    /// Only this tenant's events (the caller's, over gRPC).
    pub tenant: Option<String>,
    pub kinds: Vec<EventKind>,
    pub accounts: Vec<String>,
    pub correlation_ids: Vec<String>,
    pub actors: Vec<String>,
    /// `(key, scope)`.
    pub idempotency: Option<(String, String)>,
}

impl EventFilter {
    pub fn matches(&self, record: &Record) -> bool {
        let e = &record.envelope;
        let any = |values: &[String], value: &str| values.is_empty() || values.iter().any(|v| v == value);
        self.tenant.as_deref().is_none_or(|t| t == e.tenant)
            && (self.kinds.is_empty() || self.kinds.contains(&record.event.kind()))
            && any(&self.accounts, &e.stream)
            && any(&self.correlation_ids, &e.correlation_id)
            && any(&self.actors, &e.actor)
            && self
                .idempotency
                .as_ref()
                .is_none_or(|(key, scope)| key == &e.idempotency_key && scope == &e.idempotency_scope)
    }

    /// Kinds by their dotted names; an unknown name is an error naming it.
    pub fn parse_kinds(names: &[String]) -> Result<Vec<EventKind>, String> {
        names
            .iter()
            .map(|n| {
                EventKind::from_name(n).ok_or_else(|| {
                    format!(
                        "unknown event kind {}; known: {}",
                        crate::domain::quote(n),
                        known_kinds()
                    )
                })
            })
            .collect()
    }
}

fn known_kinds() -> String {
    EventKind::ALL.iter().map(|k| k.name()).collect::<Vec<_>>().join(", ")
}

/// A half-open window of the log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Window {
    /// `from <= seq < to`; `to: None` is the head as of the start.
    Sequence { from: u64, to: Option<u64> },
    /// `from_us <= ts < to_us`; `to_us: None` is the head as of the start.
    Time { from_us: u64, to_us: Option<u64> },
}
