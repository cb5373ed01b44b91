//! What goes through the engine's inbox to the sequencer: jobs of commands and the
//! outcome of each, reads of the committed state and their answers, and the stop.

use super::pipeline::{LetterFilter, LetterPage, PipelineStats, ReceiptState, RedriveSelection};
use crate::domain::{Command, CommandMeta, Identity, Record, Rejection, State};
use tokio::sync::oneshot;

pub(crate) enum Outcome {
    Appended(Vec<Record>),
    Replayed { first_seq: u64, last_seq: u64 },
    Nothing,
    Rejected(Rejection),
}

pub(crate) struct Job {
    pub(super) commands: Vec<(CommandMeta, Command)>,
    /// Each command's [`Identity`], worked out by the submitting task so that the sequencer
    /// does not hash the commands' texts itself.
    pub(super) identities: Vec<Identity>,
    pub(super) reply: oneshot::Sender<Vec<Outcome>>,
}

/// A read of the current state, answered by the sequencer after the group commit it arrived
/// with: it sees every command acknowledged before it, and nothing uncommitted.
pub(crate) struct Read {
    pub(super) query: Query,
    pub(super) reply: oneshot::Sender<Answer>,
}

pub(crate) enum Query {
    Account {
        tenant: String,
        account: String,
    },
    Hold(u64),
    DeadLetters {
        tenant: String,
        filter: LetterFilter,
        limit: usize,
    },
    Receipt {
        tenant: String,
        receipt_seq: u64,
    },
    PipelineStats {
        tenant: String,
    },
    RedrivePlan {
        tenant: String,
        selection: RedriveSelection,
        max: usize,
    },
    Link {
        tenant: String,
        link_id: u64,
    },
    LinksOf {
        tenant: String,
        account: String,
    },
    /// Runs a read of the committed state; the closure sends its own answer.
    Inspect(Box<dyn FnOnce(&State) + Send>),
}

pub(crate) enum Answer {
    Account(Option<crate::projection::AccountView>),
    Hold(Option<crate::projection::HoldView>),
    DeadLetters(LetterPage),
    Receipt(Option<ReceiptState>),
    PipelineStats(PipelineStats),
    RedrivePlan(Vec<u64>),
    Link(Option<crate::domain::state::Link>),
    Links(Vec<(u64, crate::domain::state::Link)>),
    /// The closure of an `Inspect` answered through its own channel.
    Inspected,
}

pub(crate) enum Msg {
    Job(Job),
    Read(Read),
    Stop,
}
