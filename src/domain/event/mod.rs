//! Events and records: the persisted facts of the ledger. These are the only persisted
//! types of the domain; `log::codec` writes them byte by byte as `docs/FORMAT.md` says.
//! Changing one changes the log format: bump the format version and add a golden file under
//! `snapshots/`.

use uuid::Uuid;

mod ledger;
mod pipeline;
mod services;

pub use ledger::*;
pub use pipeline::*;
pub use services::*;

/// One entry of the log: an event with its place in the sequence and its envelope.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// Gapless, from 1.
    pub seq: u64,
    /// µs since the Unix epoch, stamped by the sequencer, never decreasing.
    pub ts_us: u64,
    pub envelope: Envelope,
    pub event: Event,
    /// `blake3(previous hash ‖ encoded header, envelope and payload)`.
    pub hash: [u8; 32],
}

/// Who, where and why of an event.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Envelope {
    /// UUID v7.
    pub event_id: Uuid,
    pub tenant: String,
    /// The stream the event belongs to: the account id.
    pub stream: String,
    pub correlation_id: String,
    pub causation_id: String,
    /// The authenticated subject that caused the event (`system:sweeper` for expiries).
    pub actor: String,
    pub idempotency_key: String,
    pub idempotency_scope: String,
}

/// The one table of event kinds: the variant and its payload type, the code written in
/// every record header (stable, never reused), the dotted name APIs and documents use, and
/// the family. `Event`, `EventKind` and everything that treats every kind alike (the codec,
/// JSON lines) follow from it, through [`for_each_payload!`] and [`event_from_kind!`]; what
/// gives each kind its own meaning (history text, the proto conversion, the fold) is an
/// exhaustive match without a wildcard, so a new kind, one line here, does not compile
/// until each of those places says what it means there.
macro_rules! event_table {
    ([$($callback:tt)*] $args:tt) => {
        $($callback)*! { $args
            AccountOpened(AccountOpened)                 =  1, "account.opened",               Ledger;
            PointsAwarded(PointsAwarded)                 =  2, "points.awarded",               Ledger;
            HoldReserved(HoldReserved)                   =  3, "hold.reserved",                Ledger;
            HoldCommitted(HoldCommitted)                 =  4, "hold.committed",               Ledger;
            HoldReleased(HoldReleased)                   =  5, "hold.released",                Ledger;
            HoldExpired(HoldExpired)                     =  6, "hold.expired",                 Ledger;
            TierChanged(TierChanged)                     =  7, "tier.changed",                 Ledger;
            PointsReversed(PointsReversed)               =  8, "points.reversed",              Ledger;
            ExternalReceived(ExternalReceived)           =  9, "external.received",            Pipeline;
            ExternalProcessed(ExternalProcessed)         = 10, "external.processed",           Pipeline;
            ExternalAttemptFailed(ExternalAttemptFailed) = 11, "external.attempt_failed",      Pipeline;
            ExternalDeadLettered(ExternalDeadLettered)   = 12, "external.dead_lettered",       Pipeline;
            DeadLetterDiscarded(DeadLetterDiscarded)     = 13, "dead_letter.discarded",        Pipeline;
            RedriveRequested(RedriveRequested)           = 14, "redrive.requested",            Pipeline;
            LinkCreated(LinkCreated)                     = 15, "link.created",                 Link;
            LinkVerified(LinkVerified)                   = 16, "link.verified",                Link;
            LinkVerifyFailed(LinkVerifyFailed)           = 17, "link.verify_failed",           Link;
            LinkRevoked(LinkRevoked)                     = 18, "link.revoked",                 Link;
            LinkExpired(LinkExpired)                     = 19, "link.expired",                 Link;
            CompRefused(CompRefused)                     = 20, "comp.refused",                 Refusal;
            SessionStarted(SessionStarted)               = 21, "session.started",              Credential;
            SessionRefreshed(SessionRefreshed)           = 22, "session.refreshed",            Credential;
            SessionEnded(SessionEnded)                   = 23, "session.ended",                Credential;
            ApiKeyCreated(ApiKeyCreated)                 = 24, "api_key.created",              Credential;
            ApiKeyRevoked(ApiKeyRevoked)                 = 25, "api_key.revoked",              Credential;
            EndpointRegistered(EndpointRegistered)       = 26, "endpoint.registered",          Delivery;
            EndpointUpdated(EndpointUpdated)             = 27, "endpoint.updated",             Delivery;
            DeliveryDispatched(DeliveryDispatched)       = 28, "delivery.dispatched",          Delivery;
            DeliveryDelivered(DeliveryDelivered)         = 29, "delivery.delivered",           Delivery;
            DeliveryFailed(DeliveryFailed)               = 30, "delivery.failed",              Delivery;
            DeliveryFailedPermanently(DeliveryFailed)    = 31, "delivery.failed_permanently",  Delivery;
            DeliveryAcked(DeliveryAcked)                 = 32, "delivery.acked",               Delivery;
            DeliveryRetried(DeliveryRetried)             = 33, "delivery.retried",             Delivery;
        }
    };
}

/// The enums and their name, code and family tables, from [`event_table!`].
macro_rules! define_events {
    (() $($variant:ident($payload:ident) = $code:literal, $name:literal, $family:ident;)*) => {
        /// What happened. The account is the record's stream.
        #[derive(Clone, Debug, PartialEq, Eq)]
        pub enum Event {
            $($variant($payload),)*
        }

        /// The stable numeric code of an event kind, written in each record header so that
        /// readers can filter without decoding payloads. Codes are never reused.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[repr(u16)]
        pub enum EventKind {
            $($variant = $code,)*
        }

        impl EventKind {
            /// Every kind, in code order.
            pub const ALL: [EventKind; 0 $(+ { let _ = $code; 1 })*] = [$(EventKind::$variant,)*];

            /// Dotted name used in APIs and documents.
            pub fn name(self) -> &'static str {
                match self {
                    $(EventKind::$variant => $name,)*
                }
            }

            /// What a kind is, decided once per kind in `event_table!`, so that no kind
            /// can drop out of history, as-of reads or deliveries by falling outside a range
            /// of codes.
            pub fn family(self) -> KindFamily {
                match self {
                    $(EventKind::$variant => KindFamily::$family,)*
                }
            }
        }

        impl Event {
            pub fn kind(&self) -> EventKind {
                match self {
                    $(Event::$variant(_) => EventKind::$variant,)*
                }
            }
        }
    };
}

event_table!([define_events]());

#[doc(hidden)]
macro_rules! payload_match {
    (($event:expr, $body:ident => $e:expr) $($variant:ident($payload:ident) = $code:literal, $name:literal, $family:ident;)*) => {
        match $event {
            $($crate::domain::event::Event::$variant($body) => $e,)*
        }
    };
}

/// `for_each_payload!(event, body => expr)`: `expr`, with `body` bound to the payload of
/// whichever kind `event` is; one arm per kind of [`event_table!`], each typed by its payload.
macro_rules! for_each_payload {
    ($event:expr, $body:ident => $e:expr) => {
        $crate::domain::event::event_table!([$crate::domain::event::payload_match] ($event, $body => $e))
    };
}

#[doc(hidden)]
macro_rules! kind_match {
    (($kind:expr, $e:expr) $($variant:ident($payload:ident) = $code:literal, $name:literal, $family:ident;)*) => {
        match $kind {
            $($crate::domain::event::EventKind::$variant => $crate::domain::event::Event::$variant($e),)*
        }
    };
}

/// `event_from_kind!(kind, expr)`: the event of kind `kind` whose payload is `expr`; `expr`
/// is typed, in each arm, by that kind's payload (a decoder's generic call, say).
macro_rules! event_from_kind {
    ($kind:expr, $e:expr) => {
        $crate::domain::event::event_table!([$crate::domain::event::kind_match]($kind, $e))
    };
}

pub(crate) use {event_from_kind, event_table, for_each_payload, kind_match, payload_match};

/// The families event kinds fall in (see [`EventKind::family`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KindFamily {
    /// Balances and holds: an account's history.
    Ledger,
    /// The ingest pipeline's bookkeeping.
    Pipeline,
    Link,
    /// A refusal recorded for the audit (a comp refused).
    Refusal,
    /// Sessions and API keys.
    Credential,
    /// Endpoints and deliveries.
    Delivery,
}

impl EventKind {
    pub fn code(self) -> u16 {
        self as u16
    }

    pub fn from_code(code: u16) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.code() == code)
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.name() == name)
    }
    /// pipeline's bookkeeping and the rest, which change no balance.
    pub fn is_ledger(self) -> bool {
        self.family() == KindFamily::Ledger
    }

    /// A change to sessions or API keys.
    pub fn is_credential(self) -> bool {
        self.family() == KindFamily::Credential
    }
}

impl Event {
    /// The balances around the event: every ledger event but an opening has one; the
    /// ingest pipeline's events (received, processed, failed, dead-lettered, discarded)
    /// change no balance and have none.
    pub fn effect(&self) -> Option<&Effect> {
        match self {
            Event::AccountOpened(_)
            | Event::ExternalReceived(_)
            | Event::ExternalProcessed(_)
            | Event::ExternalAttemptFailed(_)
            | Event::ExternalDeadLettered(_)
            | Event::DeadLetterDiscarded(_)
            | Event::RedriveRequested(_)
            | Event::LinkCreated(_)
            | Event::LinkVerified(_)
            | Event::LinkVerifyFailed(_)
            | Event::LinkRevoked(_)
            | Event::LinkExpired(_)
            | Event::CompRefused(_)
            | Event::SessionStarted(_)
            | Event::SessionRefreshed(_)
            | Event::SessionEnded(_)
            | Event::ApiKeyCreated(_)
            | Event::ApiKeyRevoked(_)
            | Event::EndpointRegistered(_)
            | Event::EndpointUpdated(_)
            | Event::DeliveryDispatched(_)
            | Event::DeliveryDelivered(_)
            | Event::DeliveryFailed(_)
            | Event::DeliveryFailedPermanently(_)
            | Event::DeliveryAcked(_)
            | Event::DeliveryRetried(_) => None,
            Event::PointsAwarded(e) => Some(&e.effect),
            Event::HoldReserved(e) => Some(&e.effect),
            Event::HoldCommitted(e) => Some(&e.effect),
            Event::HoldReleased(e) => Some(&e.effect),
            Event::HoldExpired(e) => Some(&e.effect),
            Event::TierChanged(e) => Some(&e.effect),
            Event::PointsReversed(e) => Some(&e.effect),
        }
    }

    /// The hold an event concerns.
    pub fn hold_id(&self) -> Option<u64> {
        match self {
            Event::HoldReserved(e) => Some(e.hold_id),
            Event::HoldCommitted(e) => Some(e.hold_id),
            Event::HoldReleased(e) => Some(e.hold_id),
            Event::HoldExpired(e) => Some(e.hold_id),
            _ => None,
        }
    }
}
