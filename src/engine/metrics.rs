//! What the engine counts, through the `metrics` facade: commands by kind and outcome,
//! group-commit sizes and latencies, refusals at a full inbox, sweeper activity. Without an
//! installed recorder (tests, offline tools) every handle is a no-op.
//!
//! The sequencer counts a batch's commands locally and adds them to pre-registered handles
//! once per group commit, so the hot loop never hashes a label set.

use crate::domain::{Command, Event, Record, Rejection};
use metrics::{Counter, Gauge, Histogram};

/// Commands decided, by `kind` and `outcome` (appended, replayed, unchanged, rejected).
pub const COMMANDS_TOTAL: &str = "tally_commands_total";
/// Rejected commands by `kind` and `reason`.
pub const REJECTIONS_TOTAL: &str = "tally_commands_rejected_total";
/// Requests refused because the inbox was full (RESOURCE_EXHAUSTED).
pub const INBOX_FULL_TOTAL: &str = "tally_inbox_full_total";
/// Commands per group commit.
pub const BATCH_COMMANDS: &str = "tally_group_commit_commands";
/// Records appended per group commit.
pub const BATCH_RECORDS: &str = "tally_group_commit_records";
/// Seconds one group commit spends writing and syncing the log.
pub const COMMIT_SECONDS: &str = "tally_group_commit_seconds";
/// Seconds from the start of a batch's decisions until its answers go out.
pub const BATCH_SECONDS: &str = "tally_group_commit_batch_seconds";
/// Expiry pulses the sweeper submitted.
pub const SWEEPER_PULSES_TOTAL: &str = "tally_sweeper_pulses_total";
/// Holds the sweeper expired.
pub const SWEEPER_EXPIRED_TOTAL: &str = "tally_sweeper_holds_expired_total";

/// What the ingest pipeline did, by `event` (received, processed, retried, dead_lettered,
/// redriven, discarded).
pub const INGEST_EVENTS_TOTAL: &str = "tally_ingest_events_total";
/// What happened to deliveries, by `event` (delivered, failed, failed_permanently, acked,
/// retried).
pub const DELIVERIES_TOTAL: &str = "tally_deliveries_total";
/// Letters in the dead-letter queue now.
pub const DEAD_LETTER_DEPTH: &str = "tally_dead_letter_depth";
/// External events waiting for a retry now.
pub const INGEST_RETRYING: &str = "tally_ingest_retrying";

/// Command kinds, in the order of `kind_index`.
pub const KINDS: [&str; 25] = [
    "open_account",
    "award",
    "reserve",
    "commit",
    "release",
    "expire_due",
    "ingest",
    "retry_due",
    "redrive",
    "discard",
    "request_redrive",
    "create_link",
    "verify_link",
    "revoke_link",
    "start_session",
    "refresh_session",
    "end_session",
    "create_api_key",
    "revoke_api_key",
    "register_endpoint",
    "update_endpoint",
    "dispatch_delivery",
    "record_delivery",
    "ack_delivery",
    "retry_deliveries",
];
/// Pipeline events, in the order of `pipeline_index`.
pub const PIPELINE_EVENTS: [&str; 6] = [
    "received",
    "processed",
    "retried",
    "dead_lettered",
    "redriven",
    "discarded",
];
/// Outcomes, in the order of `Outcome`.
pub const OUTCOMES: [&str; 4] = ["appended", "replayed", "unchanged", "rejected"];

/// How a decided command ended, for counting.
#[derive(Clone, Copy)]
pub(crate) enum Outcome {
    Appended = 0,
    Replayed = 1,
    Unchanged = 2,
    Rejected = 3,
}

/// Registers the descriptions of the engine's metrics with the installed recorder.
pub fn describe() {
    super::followers::describe();
    use metrics::{describe_counter, describe_histogram, Unit};
    describe_counter!(COMMANDS_TOTAL, "Commands decided by the sequencer, by kind and outcome");
    describe_counter!(REJECTIONS_TOTAL, "Commands the ledger refused, by kind and reason");
    describe_counter!(
        INBOX_FULL_TOTAL,
        "Requests refused with RESOURCE_EXHAUSTED: the inbox was full"
    );
    describe_histogram!(BATCH_COMMANDS, Unit::Count, "Commands decided per group commit");
    describe_histogram!(BATCH_RECORDS, Unit::Count, "Records appended per group commit");
    describe_histogram!(
        COMMIT_SECONDS,
        Unit::Seconds,
        "Log write and fdatasync time per group commit"
    );
    describe_histogram!(
        BATCH_SECONDS,
        Unit::Seconds,
        "Decide, write and sync time per group commit, until the answers go out"
    );
    describe_counter!(
        SWEEPER_PULSES_TOTAL,
        "Pulses submitted by the sweeper: hold expiry and ingest retries"
    );
    describe_counter!(SWEEPER_EXPIRED_TOTAL, "Holds expired by the sweeper's pulses");
    describe_counter!(
        INGEST_EVENTS_TOTAL,
        "External events received, processed, retried, dead-lettered, re-driven and discarded"
    );
    describe_counter!(
        DELIVERIES_TOTAL,
        "Webhook deliveries delivered, failed (to be retried), failed for good, acked and retried by hand"
    );
    metrics::describe_gauge!(DEAD_LETTER_DEPTH, "Letters in the dead-letter queue");
    metrics::describe_gauge!(INGEST_RETRYING, "External events waiting for a retry");
}

/// The index of a command's kind in [`KINDS`].
pub(crate) fn kind_index(command: &Command) -> usize {
    match command {
        Command::OpenAccount { .. } => 0,
        Command::Award { .. } => 1,
        Command::Reserve { .. } => 2,
        Command::Commit { .. } => 3,
        Command::Release { .. } => 4,
        Command::ExpireDue { .. } => 5,
        Command::Ingest { .. } => 6,
        Command::RetryDue => 7,
        Command::Redrive { .. } => 8,
        Command::Discard { .. } => 9,
        Command::RequestRedrive { .. } => 10,
        Command::CreateLink { .. } => 11,
        Command::VerifyLink { .. } => 12,
        Command::RevokeLink { .. } => 13,
        Command::StartSession { .. } => 14,
        Command::RefreshSession { .. } => 15,
        Command::EndSession { .. } => 16,
        Command::CreateApiKey { .. } => 17,
        Command::RevokeApiKey { .. } => 18,
        Command::RegisterEndpoint { .. } => 19,
        Command::UpdateEndpoint { .. } => 20,
        Command::DispatchDelivery { .. } => 21,
        Command::RecordDelivery { .. } => 22,
        Command::AckDelivery { .. } => 23,
        Command::RetryDeliveries { .. } => 24,
    }
}

/// Delivery events, in the order of `delivery_index`.
pub const DELIVERY_EVENTS: [&str; 5] = ["delivered", "failed", "failed_permanently", "acked", "retried"];

fn delivery_index(record: &Record) -> Option<usize> {
    match &record.event {
        Event::DeliveryDelivered(_) => Some(0),
        Event::DeliveryFailed(_) => Some(1),
        Event::DeliveryFailedPermanently(_) => Some(2),
        Event::DeliveryAcked(_) => Some(3),
        Event::DeliveryRetried(_) => Some(4),
        _ => None,
    }
}

/// What a record did in the ingest pipeline, as indexes into [`PIPELINE_EVENTS`] (a
/// re-drive both re-drives and processes or dead-letters).
fn pipeline_indexes(record: &Record) -> &'static [usize] {
    match &record.event {
        Event::ExternalReceived(_) => &[0],
        Event::ExternalProcessed(p) if p.redriven => &[1, 4],
        Event::ExternalProcessed(_) => &[1],
        Event::ExternalAttemptFailed(_) => &[2],
        Event::ExternalDeadLettered(d) if d.redriven => &[4],
        Event::ExternalDeadLettered(_) => &[3],
        Event::DeadLetterDiscarded(_) => &[5],
        _ => &[],
    }
}

/// The sequencer's handles and its per-batch tallies.
pub(crate) struct SequencerMetrics {
    commands: Vec<Counter>,
    tallies: [[u64; OUTCOMES.len()]; KINDS.len()],
    batch_commands: Histogram,
    batch_records: Histogram,
    commit_seconds: Histogram,
    batch_seconds: Histogram,
    pipeline: Vec<Counter>,
    pipeline_tallies: [u64; PIPELINE_EVENTS.len()],
    deliveries: Vec<Counter>,
    delivery_tallies: [u64; DELIVERY_EVENTS.len()],
    dead_letter_depth: Gauge,
    retrying: Gauge,
}

impl SequencerMetrics {
    pub fn register() -> Self {
        let commands = KINDS
            .iter()
            .flat_map(|kind| {
                OUTCOMES
                    .iter()
                    .map(move |outcome| metrics::counter!(COMMANDS_TOTAL, "kind" => *kind, "outcome" => *outcome))
            })
            .collect();
        Self {
            commands,
            tallies: [[0; OUTCOMES.len()]; KINDS.len()],
            batch_commands: metrics::histogram!(BATCH_COMMANDS),
            batch_records: metrics::histogram!(BATCH_RECORDS),
            commit_seconds: metrics::histogram!(COMMIT_SECONDS),
            batch_seconds: metrics::histogram!(BATCH_SECONDS),
            pipeline: PIPELINE_EVENTS
                .iter()
                .map(|event| metrics::counter!(INGEST_EVENTS_TOTAL, "event" => *event))
                .collect(),
            pipeline_tallies: [0; PIPELINE_EVENTS.len()],
            deliveries: DELIVERY_EVENTS
                .iter()
                .map(|event| metrics::counter!(DELIVERIES_TOTAL, "event" => *event))
                .collect(),
            delivery_tallies: [0; DELIVERY_EVENTS.len()],
            dead_letter_depth: metrics::gauge!(DEAD_LETTER_DEPTH),
            retrying: metrics::gauge!(INGEST_RETRYING),
        }
    }

    /// Counts one decided command (added to the counters at [`SequencerMetrics::flush`]).
    pub fn count(&mut self, command: &Command, outcome: Outcome) {
        self.tallies[kind_index(command)][outcome as usize] += 1;
    }

    /// Counts a rejection by reason. Rejections are the rare path: a labelled lookup is fine.
    pub fn rejected(&mut self, command: &Command, rejection: &Rejection) {
        self.count(command, Outcome::Rejected);
        metrics::counter!(REJECTIONS_TOTAL, "kind" => command.name(), "reason" => rejection.name()).increment(1);
    }

    /// Counts what appended records did in the ingest pipeline and to deliveries.
    pub fn records(&mut self, records: &[Record]) {
        for record in records {
            for &at in pipeline_indexes(record) {
                self.pipeline_tallies[at] += 1;
            }
            if let Some(at) = delivery_index(record) {
                self.delivery_tallies[at] += 1;
            }
        }
    }

    /// Sets the pipeline's gauges: letters in the queue, events waiting for a retry.
    pub fn pipeline_depth(&mut self, dead_letters: u64, retrying: usize) {
        self.dead_letter_depth.set(dead_letters as f64);
        self.retrying.set(retrying as f64);
    }

    /// Adds a group commit's tallies and timings.
    pub fn flush(&mut self, commands: usize, records: u64, commit_seconds: f64, batch_seconds: f64) {
        for (at, tally) in self.pipeline_tallies.iter_mut().enumerate() {
            if *tally > 0 {
                self.pipeline[at].increment(*tally);
                *tally = 0;
            }
        }
        for (at, tally) in self.delivery_tallies.iter_mut().enumerate() {
            if *tally > 0 {
                self.deliveries[at].increment(*tally);
                *tally = 0;
            }
        }
        for (kind, row) in self.tallies.iter_mut().enumerate() {
            for (outcome, tally) in row.iter_mut().enumerate() {
                if *tally > 0 {
                    self.commands[kind * OUTCOMES.len() + outcome].increment(*tally);
                    *tally = 0;
                }
            }
        }
        if commands > 0 {
            self.batch_commands.record(commands as f64);
            self.batch_records.record(records as f64);
            self.commit_seconds.record(commit_seconds);
            self.batch_seconds.record(batch_seconds);
        }
    }
}
