//! The bodies of the fuzz targets, one function per target. `fuzz_targets/*.rs` call them on
//! libFuzzer's inputs; `tests/fuzz_regressions.rs` includes this file and calls them on the
//! committed corpora and on every input that once made one fail, so that `cargo test` on a
//! stable toolchain replays them. Each panics only on a bug in Tally: bytes from outside
//! (a log on disk, a request, a partner's payload) get an error, never a panic.
//!
//! - [`frame_decode`]: any bytes as a frame and its records, and as one record
//!   (`log::codec`), decoded down to the event.
//! - [`log_scan`]: any bytes as the segment files of a log on a simulated disk: verified,
//!   opened for reading and read back, opened for writing (refusing, then repairing a torn
//!   tail), appended to and verified again.
//! - [`proto_command`]: any bytes as one of the Ledger's request messages (and an ingest and
//!   a replay request), converted to a command, decided against a small ledger, folded,
//!   and answered as the service would.
//! - [`ingest_json`]: any bytes as an ingest's JSON payload, for each event type, through
//!   the parser and the schema, then decided as an ingest.

use std::sync::{Arc, OnceLock};
use tally::api::caller::Caller;
use tally::api::proto;
use tally::api::status::classify_rejection;
use tally::api::{auth, convert, external, ingest, records};
use tally::domain::access::{Permissions, Role};
use tally::domain::event::{AccountOpened, ExternalKind};
use tally::domain::{
    decide_identified, evolve_identified, request_of, validate_body, AwardRequest, Command, CommandMeta, Decision,
    Envelope, Event, Identity, Policy, Record, Rejection, State,
};
use tally::engine::Receipt;
use tally::fuzzing::Message;
use tally::log::codec::{self, FRAME_HEADER_LEN, GENESIS_HASH, HASH_LEN, RECORD_HEADER_LEN};
use tally::log::{
    read_one, verify_storage, Durability, FileLog, Head, LogError, LogOptions, LogReader, LogWriter, Recovery, SimDisk,
    Storage, MIN_SEGMENT_BYTES,
};

// ---------------------------------------------------------------------------------------
// frame_decode

/// Decodes `data` as a frame (header, then its records as a reader walks them) and as one
/// record on its own. Hashes are not required to verify (the fuzzer cannot forge blake3),
/// so every decoding step after the hash is reached; each record that decodes must encode
/// back to a record that decodes to the same thing.
pub fn frame_decode(data: &[u8]) {
    // A frame whose first record is the one its header names.
    let first_seq = if data.len() >= 24 { codec::u64_at(data, 16) } else { 1 };
    if let Ok(Some(header)) = codec::decode_frame_header(data, first_seq) {
        assert_eq!(
            header.first_seq, first_seq,
            "a header is accepted only at its own place"
        );
        assert!(header.record_count >= 1, "a frame holds at least one record");
        assert!(header.frame_len >= FRAME_HEADER_LEN, "a frame is at least its header");
        let frame = &data[..header.frame_len.min(data.len())];
        let (mut at, mut prev, mut seq) = (FRAME_HEADER_LEN, header.prev_hash, first_seq);
        for _ in 0..header.record_count {
            let Ok(raw) = codec::decode_raw(&frame[at..], &prev, seq, false) else {
                break;
            };
            check_record(&raw, &prev, seq);
            (at, prev) = (at + raw.len, raw.hash);
            let Some(next) = seq.checked_add(1) else { break };
            seq = next;
        }
    }
    // The whole input as one record, first in the log, unverified and then verified.
    let seq = if data.len() >= 16 { codec::u64_at(data, 8) } else { 1 };
    if let Ok(raw) = codec::decode_raw(data, &GENESIS_HASH, seq, false) {
        check_record(&raw, &GENESIS_HASH, seq);
    }
    if let Ok(raw) = codec::decode_raw(data, &GENESIS_HASH, seq, true) {
        assert_eq!(codec::chain_hash(&GENESIS_HASH, &data[..raw.len - HASH_LEN]), raw.hash);
    }
}

/// The checks on one record located by `decode_raw`: its fields agree with its length,
/// and if it decodes, its event re-encodes to a record that decodes to the same event.
fn check_record(raw: &codec::RawRecord<'_>, prev: &[u8; 32], seq: u64) {
    assert_eq!(raw.seq, seq, "a record is accepted only at its own sequence number");
    assert_eq!(
        raw.len,
        RECORD_HEADER_LEN + raw.envelope.len() + raw.payload.len() + HASH_LEN,
        "a record is its header, envelope, payload and hash"
    );
    let Ok(record) = raw.decode() else { return };
    assert_eq!(
        record.event.kind().code(),
        raw.kind,
        "the event is of the kind the record names"
    );
    let mut again = Vec::new();
    let hash = codec::encode_record(
        &mut again,
        prev,
        record.seq,
        record.ts_us,
        &record.envelope,
        &record.event,
    );
    let reread = codec::decode_raw(&again, prev, seq, true)
        .expect("a record just encoded verifies")
        .decode()
        .expect("a record just encoded decodes");
    assert_eq!(reread.hash, hash);
    assert_eq!((&reread.envelope, &reread.event), (&record.envelope, &record.event));
    // What the audit API and a fold make of any record that decodes.
    let _ = records::ledger_event(&record);
    let _ = request_of(&record);
}

// ---------------------------------------------------------------------------------------
// log_scan

/// `log_scan`'s first byte: how the rest becomes segment files.
mod scan_flags {
    /// Rewrite each segment header's checksum, and the hash chain through the frames a walk
    /// by their length fields finds, so that the chain verifies: what only a writer (or
    /// someone with blake3) makes, and the fuzzer could never guess.
    pub const FIX_HASHES: u8 = 1;
    /// Pad each segment file with zeros to a whole 4 KiB, as preallocation leaves it.
    pub const PAD: u8 = 2;
    /// Name the segments `<first seq>.seg` instead of the 20-digit name the log gives them.
    pub const SHORT_NAMES: u8 = 4;
}

/// Where [`log_scan`] pretends the log is; only messages show it.
const SIM_DIR: &str = "/fuzz/log";

/// The segment header magic: the rest of a `log_scan` input is cut into files before each.
const SEGMENT_MAGIC: &[u8] = b"TALLYSEG";
const SEGMENT_HEADER_LEN: usize = 64;

/// Writes `data[1..]`, cut before each segment magic, as the segment files of a log on a
/// simulated disk, then checks that reading and opening it never panic and agree: `verify`
/// and a reader see the same head; a reader reads back every record up to it, each
/// verifying (a record whose hash verifies but whose body does not decode may end the read,
/// with an error); opening refuses a torn tail when told to and otherwise cuts it off; the
/// repaired log verifies, takes an append and verifies with it.
pub fn log_scan(data: &[u8]) {
    let Some(&flags) = data.first() else { return };
    let disk = SimDisk::new(u64::from(flags), SIM_DIR);
    for (name, bytes) in segment_files(data) {
        let Ok(created) = disk.create(&name, bytes.len() as u64) else {
            continue; // two segments of one name: the first is the file
        };
        created.write_all_at(&bytes, 0).expect("the simulated disk writes");
        created.sync_data().expect("the simulated disk syncs");
    }
    check_log(&disk);
}

/// The segment files a `log_scan` input stands for, named, as the target writes them.
pub fn segment_files(data: &[u8]) -> Vec<(String, Vec<u8>)> {
    let Some((&flags, rest)) = data.split_first() else {
        return Vec::new();
    };
    let mut chain = GENESIS_HASH;
    let mut files = Vec::new();
    for file in cut_segments(rest) {
        let mut bytes = file.to_vec();
        if flags & scan_flags::FIX_HASHES != 0 {
            chain = fix_hashes(&mut bytes, chain);
        }
        if flags & scan_flags::PAD != 0 {
            bytes.resize(bytes.len().next_multiple_of(4096), 0);
        }
        let first_seq = if bytes.len() >= 24 {
            codec::u64_at(&bytes, 16)
        } else {
            1
        };
        let name = match flags & scan_flags::SHORT_NAMES {
            0 => format!("{first_seq:020}.seg"),
            _ => format!("{first_seq}.seg"),
        };
        files.push((name, bytes));
    }
    files
}

/// The segment files of a `log_scan` input: a new one starts at each segment magic.
fn cut_segments(rest: &[u8]) -> Vec<&[u8]> {
    let mut starts: Vec<usize> = (1..rest.len().saturating_sub(SEGMENT_MAGIC.len() - 1))
        .filter(|&at| rest[at..].starts_with(SEGMENT_MAGIC))
        .collect();
    starts.insert(0, 0);
    starts.push(rest.len());
    starts
        .windows(2)
        .map(|w| &rest[w[0]..w[1]])
        .filter(|f| !f.is_empty())
        .collect()
}

/// Makes a segment's header checksum and the hashes of the frames a walk by their length
/// fields finds verify, chaining from `chain`; returns the chain hash after the last record.
fn fix_hashes(bytes: &mut [u8], mut chain: [u8; 32]) -> [u8; 32] {
    if bytes.len() < SEGMENT_HEADER_LEN {
        return chain;
    }
    // blake3 of the header's first 32 bytes, which is what a chain hash of them with no
    // body is.
    let first_half: [u8; 32] = bytes[..32].try_into().expect("32 bytes");
    bytes[32..64].copy_from_slice(&codec::chain_hash(&first_half, &[]));
    let mut at = SEGMENT_HEADER_LEN;
    while at + FRAME_HEADER_LEN <= bytes.len() && codec::u32_at(bytes, at) == codec::FRAME_MAGIC {
        let frame_len = codec::u32_at(bytes, at + 4) as usize;
        if frame_len < FRAME_HEADER_LEN {
            break;
        }
        bytes[at + 24..at + 56].copy_from_slice(&chain);
        let end = (at + frame_len).min(bytes.len());
        let mut record = at + FRAME_HEADER_LEN;
        while record + RECORD_HEADER_LEN + HASH_LEN <= end {
            let len = codec::u32_at(bytes, record) as usize;
            if len < RECORD_HEADER_LEN + HASH_LEN || record + len > end {
                break;
            }
            chain = codec::chain_hash(&chain, &bytes[record..record + len - HASH_LEN]);
            bytes[record + len - HASH_LEN..record + len].copy_from_slice(&chain);
            record += len;
        }
        at += frame_len;
    }
    chain
}

/// The checks of [`log_scan`] on a disk holding a log (or what claims to be one).
fn check_log(disk: &SimDisk) {
    let verified = verify_storage(disk);
    let reader = LogReader::open_on(Arc::new(disk.clone()));
    let (verified, reader) = match (verified, reader) {
        (Ok(verified), Ok(reader)) => (verified, reader),
        (Err(_), Err(_)) => {
            // Refused: opening for writing refuses it too, whatever the recovery policy.
            for recovery in [Recovery::Refuse, Recovery::TruncateTornTail] {
                assert!(
                    open(disk, recovery).is_err(),
                    "opened ({recovery:?}) a log that does not verify"
                );
            }
            return;
        }
        (verified, reader) => panic!(
            "verify and a reader disagree: {:?} / {:?}",
            verified.map(|v| v.head),
            reader.map(|r| r.head())
        ),
    };
    assert_eq!(verified.head, reader.head(), "verify and a reader see one head");
    read_back(&reader);
    match open(disk, Recovery::Refuse) {
        Ok(opened) => {
            assert!(verified.torn_tail.is_none(), "opened a torn tail with Recovery::Refuse");
            assert_eq!((opened.log.head(), opened.head), (verified.head, verified.head));
        }
        Err(LogError::TornTail { seq, .. }) => {
            let (torn_seq, _) = verified.torn_tail.expect("refused a torn tail that verify did not see");
            assert_eq!(seq, torn_seq);
        }
        Err(error) => panic!("a log that verifies was refused: {error}"),
    }
    let Opened {
        mut log,
        head,
        truncated,
    } = open(disk, Recovery::TruncateTornTail).expect("a log that verifies opens");
    assert_eq!(head, verified.head);
    assert_eq!(
        truncated, verified.torn_tail,
        "opening cuts off the torn tail verify saw"
    );
    let repaired = verify_storage(disk).expect("a repaired log verifies");
    assert_eq!((repaired.head, repaired.torn_tail), (verified.head, None));
    // The repaired log takes the next record where the old one ended.
    let head = log.head();
    let seq = head.seq + 1;
    let event = Event::AccountOpened(AccountOpened { tier: "base".into() });
    let envelope = Envelope {
        tenant: "t1".into(),
        stream: "a1".into(),
        ..Envelope::default()
    };
    log.stage(seq, head.ts_us, &envelope, &event);
    log.commit().expect("the simulated disk takes an append");
    let appended = verify_storage(disk).expect("the log verifies after an append");
    assert_eq!((appended.head.seq, appended.torn_tail), (seq, None));
    let record = read_one(&log.reader(), seq)
        .expect("the appended record reads back")
        .expect("the appended record is there");
    assert_eq!((record.envelope, record.event), (envelope, event));
}

/// A log opened for writing, and what its opening reported.
struct Opened {
    log: FileLog,
    head: Head,
    /// The torn tail cut off: first lost sequence number and bytes cleared.
    truncated: Option<(u64, u64)>,
}

/// Opens the log for writing, as the server does (with small segments).
fn open(disk: &SimDisk, recovery: Recovery) -> Result<Opened, LogError> {
    let options = LogOptions {
        segment_bytes: MIN_SEGMENT_BYTES,
        durability: Durability::Sync,
        recovery,
    };
    let (log, report) = FileLog::open_on(Arc::new(disk.clone()), options)?;
    Ok(Opened {
        log,
        head: report.head,
        truncated: report.truncated,
    })
}

/// Reads every record up to the reader's head: in order, gapless, each verifying, the last
/// one's hash the head's. Only a record whose body does not decode may stop the read (its
/// hash verified: only a writer with a bug, or with blake3, makes one).
fn read_back(reader: &LogReader) {
    let head = reader.head();
    let mut expected = 1;
    let mut last_hash = GENESIS_HASH;
    for item in reader.iter_from(1) {
        match item {
            Ok(record) => {
                assert_eq!(record.seq, expected, "records come in order, without a gap");
                (expected, last_hash) = (expected + 1, record.hash);
            }
            Err(LogError::Corrupt { seq, reason, .. }) if is_body_error(&reason) => {
                assert_eq!(seq, expected, "the record that does not decode is the next one");
                return;
            }
            Err(error) => panic!("a record up to the head does not read back: {error}"),
        }
    }
    assert_eq!(expected - 1, head.seq, "a reader reads up to its head");
    assert_eq!(last_hash, head.hash, "the last record read is the head");
}

/// Whether a reader's `reason` is that a record's envelope or payload does not decode.
fn is_body_error(reason: &str) -> bool {
    reason == "malformed envelope" || reason.contains(" payload: ")
}

// ---------------------------------------------------------------------------------------
// proto_command and ingest_json: a small ledger to decide against

/// The time the base ledger's commands are stamped with (2026-01-01T00:00:00Z), in µs.
const T0_US: u64 = 1_767_225_600_000_000;
const TENANT: &str = "t1";
/// The base ledger's funded account, and the account of its active hold.
const ACCOUNT: &str = "a1";
const BASE_ACTOR: &str = "svc-1";

/// A ledger to decide fuzzed commands against: accounts, points, an active hold, an
/// ingested event; its records, for replays.
struct Base {
    policy: Policy,
    state: State,
    records: Vec<Record>,
}

fn base() -> &'static Base {
    static BASE: OnceLock<Base> = OnceLock::new();
    BASE.get_or_init(|| {
        let mut base = Base {
            policy: Policy::default(),
            state: State::default(),
            records: Vec::new(),
        };
        let roles = [Role::Service, Role::Staff, Role::Admin];
        let caller = caller_with(&roles, BASE_ACTOR);
        let meta = |key: &str| convert::caller_meta(&caller, key, "");
        let commands = [
            (
                meta("open-a1"),
                Command::OpenAccount {
                    account: ACCOUNT.into(),
                },
            ),
            (meta("open-m1"), Command::OpenAccount { account: "m1".into() }),
            (
                meta("fund-a1"),
                Command::Award {
                    account: ACCOUNT.into(),
                    source: AwardRequest::Promotion {
                        points: 5_000,
                        promotion_id: "spring".into(),
                        external_reward_id: "fund-1".into(),
                    },
                },
            ),
            (
                meta("hold-a1"),
                Command::Reserve {
                    account: ACCOUNT.into(),
                    amount: 100,
                    ttl_seconds: 300,
                },
            ),
        ];
        for (meta, command) in commands {
            let outcome = execute(&base.policy, &mut base.state, &mut base.records, &meta, &command, T0_US);
            assert!(
                matches!(outcome, Outcome::Appended(_)),
                "the base ledger's commands are accepted"
            );
        }
        let request = proto::IngestRequest {
            source: "partner".into(),
            external_id: "e-1".into(),
            r#type: "points.award".into(),
            payload_json: r#"{"member_id":"a1","points":10,"promotion_id":"p-1"}"#.into(),
            ..Default::default()
        };
        let (meta, command) = ingest::ingest_command(&caller, &request).expect("the base ingest converts");
        let outcome = execute(&base.policy, &mut base.state, &mut base.records, &meta, &command, T0_US);
        assert!(matches!(outcome, Outcome::Appended(_)), "the base ingest is accepted");
        base
    })
}

/// A caller of tenant `t1` with `roles`.
fn caller_with(roles: &[Role], actor: &str) -> Caller {
    Caller {
        tenant: TENANT.into(),
        actor: actor.into(),
        principal: auth::Principal {
            subject: actor.into(),
            tenant: TENANT.into(),
            roles: roles.to_vec(),
            permissions: Permissions::of_roles(roles),
            credential: auth::Credential::Operator,
        },
    }
}

/// A caller picked by the bits of `selector`: any set of the tenant's roles, and either a
/// staff member or the member who owns the funded account.
fn caller_of(selector: u8) -> Caller {
    let roles: Vec<Role> = [Role::Member, Role::Staff, Role::Service, Role::Auditor, Role::Admin]
        .into_iter()
        .enumerate()
        .filter(|(bit, _)| selector & (1 << bit) != 0)
        .map(|(_, role)| role)
        .collect();
    let actor = if selector & 0x20 != 0 { ACCOUNT } else { "staff-1" };
    caller_with(&roles, actor)
}

enum Outcome {
    Appended(Vec<Record>),
    Replayed(Vec<Record>),
    Nothing,
    Rejected(Rejection),
}

/// Decides and applies one command as the sequencer does: a command's records are stamped,
/// folded with its identity and kept; a recorded refusal's records go in without its key.
fn execute(
    policy: &Policy,
    state: &mut State,
    records: &mut Vec<Record>,
    meta: &CommandMeta,
    command: &Command,
    now_us: u64,
) -> Outcome {
    let identity = Identity::of(meta, command);
    let emitted = match decide_identified(
        policy,
        state,
        meta,
        command,
        &identity,
        now_us,
        &tally::domain::state::NoOlderRecords,
    ) {
        Ok(Decision::Append(emitted)) => emitted,
        Ok(Decision::Replay { first_seq, last_seq }) => {
            assert!((1..=last_seq).contains(&first_seq) && last_seq <= state.head_seq);
            let replayed = records[(first_seq - 1) as usize..last_seq as usize].to_vec();
            return Outcome::Replayed(replayed);
        }
        Ok(Decision::Nothing) => return Outcome::Nothing,
        Ok(Decision::Refuse { events, rejection }) => {
            let unkeyed = CommandMeta {
                idempotency: None,
                ..meta.clone()
            };
            stage(state, records, &unkeyed, events, None, now_us);
            return Outcome::Rejected(rejection);
        }
        Err(rejection) => return Outcome::Rejected(rejection),
    };
    Outcome::Appended(stage(state, records, meta, emitted, Some(&identity), now_us))
}

fn stage(
    state: &mut State,
    records: &mut Vec<Record>,
    meta: &CommandMeta,
    emitted: Vec<tally::domain::Emitted>,
    first_of: Option<&Identity>,
    now_us: u64,
) -> Vec<Record> {
    let mut staged = Vec::with_capacity(emitted.len());
    for (at, e) in emitted.into_iter().enumerate() {
        let record = Record {
            seq: state.head_seq + 1,
            ts_us: now_us,
            envelope: Envelope {
                tenant: e.tenant,
                stream: e.account,
                correlation_id: meta.correlation_id.clone(),
                causation_id: meta.causation_id.clone(),
                actor: meta.actor.clone(),
                idempotency_key: meta.idempotency.as_ref().map(|k| k.key.clone()).unwrap_or_default(),
                idempotency_scope: meta.idempotency.as_ref().map(|k| k.scope.clone()).unwrap_or_default(),
                ..Envelope::default()
            },
            event: e.event,
            hash: [0; 32],
        };
        let identity = first_of.and_then(|identity| identity.for_record(meta, at, &record.envelope.tenant));
        evolve_identified(state, &record, identity);
        records.push(record.clone());
        staged.push(record);
    }
    staged
}

/// A fuzzed command's run against a copy of the base ledger.
struct Run {
    state: State,
    records: Vec<Record>,
    now_us: u64,
}

impl Run {
    fn new(clock: u8) -> Self {
        let base = base();
        Self {
            state: base.state.clone(),
            records: base.records.clone(),
            // Up to 42 minutes after the base: the base's hold expires after 5.
            now_us: T0_US + u64::from(clock) * 10_000_000,
        }
    }

    /// Decides and applies `command`; the receipt the service would answer with, if any.
    fn submit(&mut self, meta: &CommandMeta, command: &Command) -> Option<Receipt> {
        let policy = &base().policy;
        match execute(policy, &mut self.state, &mut self.records, meta, command, self.now_us) {
            Outcome::Appended(records) => Some(Receipt {
                replayed: false,
                records,
            }),
            Outcome::Replayed(records) => Some(Receipt {
                replayed: true,
                records,
            }),
            Outcome::Nothing => None,
            Outcome::Rejected(rejection) => {
                let _ = classify_rejection(&rejection).into_status();
                let _ = classify_rejection(&rejection).into_batch_error();
                None
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// proto_command

/// Decodes `data[2..]` as the request message `data[0]` picks, by a caller `data[1]` picks,
/// then converts it to a command, decides and folds it against the base ledger and builds
/// the answer, as the service does (the door's checks aside).
pub fn proto_command(data: &[u8]) {
    let [pick, who, clock, wire @ ..] = data else { return };
    let caller = caller_of(*who);
    let mut run = Run::new(*clock);
    match pick % 12 {
        0 => {
            let Ok(request) = proto::OpenAccountRequest::decode(wire) else {
                return;
            };
            ledger_command(&mut run, Some(convert::open_account(&caller, &request)));
        }
        1 => {
            let Ok(request) = proto::AwardRequest::decode(wire) else {
                return;
            };
            ledger_command(&mut run, convert::award(&caller, &request).ok());
        }
        2 => {
            let Ok(request) = proto::ReserveRequest::decode(wire) else {
                return;
            };
            ledger_command(&mut run, Some(convert::reserve(&caller, &request)));
        }
        3 => {
            let Ok(request) = proto::CommitRequest::decode(wire) else {
                return;
            };
            ledger_command(&mut run, Some(convert::commit(&caller, &request)));
        }
        4 => {
            let Ok(request) = proto::ReleaseRequest::decode(wire) else {
                return;
            };
            ledger_command(&mut run, Some(convert::release(&caller, &request)));
        }
        5 => {
            let Ok(request) = proto::SubmitBatchRequest::decode(wire) else {
                return;
            };
            // The service refuses an empty batch or one over the bound before converting.
            if request.commands.is_empty() || request.commands.len() > tally::api::ledger::MAX_BATCH_COMMANDS {
                return;
            }
            for command in &request.commands {
                ledger_command(&mut run, convert::batch_command(&caller, command).ok());
            }
        }
        6 => {
            let Ok(request) = proto::IngestRequest::decode(wire) else {
                return;
            };
            ingest_command(&mut run, ingest::ingest_command(&caller, &request).ok());
        }
        7 => {
            let Ok(request) = proto::ReplayRequest::decode(wire) else {
                return;
            };
            if let Ok((_, filter, _)) = convert::replay_spec(&caller, &request) {
                let base = base();
                let _ = base.records.iter().filter(|r| filter.matches(r)).count();
            }
        }
        // The reads convert nothing the decoder has not checked; their ids go to lookups.
        8 => {
            let _ = proto::GetAccountRequest::decode(wire);
        }
        9 => {
            let _ = proto::GetHoldRequest::decode(wire);
        }
        10 => {
            let Ok(request) = proto::ListHistoryRequest::decode(wire) else {
                return;
            };
            let _ = request.page_token.parse::<u64>();
        }
        _ => {
            let Ok(request) = proto::IngestBatchRequest::decode(wire) else {
                return;
            };
            for event in request.events.iter().take(ingest::MAX_BATCH_EVENTS) {
                ingest_command(&mut run, ingest::ingest_command(&caller, event).ok());
            }
        }
    }
}

/// A Ledger command as converted from its request: decided, and answered as its RPC does.
fn ledger_command(run: &mut Run, converted: Option<(CommandMeta, Command)>) {
    let Some((meta, command)) = converted else { return };
    if let Some(receipt) = run.submit(&meta, &command) {
        let _ = convert::batch_result(&command, &receipt);
    }
}

/// An ingest as converted from its request: decided, and answered as `Ingest` does.
fn ingest_command(run: &mut Run, converted: Option<(CommandMeta, Command)>) {
    let Some((meta, command)) = converted else { return };
    if let Some(receipt) = run.submit(&meta, &command) {
        let _ = ingest::ingest_response(&receipt);
    }
}

// ---------------------------------------------------------------------------------------
// ingest_json

/// Parses `data` (if it is UTF-8, as a protobuf string must be) as the JSON payload of each
/// external event type. An accepted payload names no key twice (checked here by a reader
/// of its own), passes the domain's checks, renders back to JSON that parses to the same
/// body, and is decided as an ingest against the base ledger and answered.
pub fn ingest_json(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(value) = external::parse_json(text) {
        assert!(!names_a_key_twice(text), "parse_json took a key twice: {value}");
    }
    let caller = caller_of(0b0000_0100); // a tenant's service, as partners' events come in
    for kind in ExternalKind::ALL {
        let body = match external::parse(kind.name(), text) {
            Ok(body) => body,
            Err(rejection) => {
                let _ = classify_rejection(&rejection).into_status();
                continue;
            }
        };
        assert!(
            !names_a_key_twice(text),
            "a payload that names a key twice was accepted"
        );
        assert_eq!(body.kind(), kind, "the body is of the type asked for");
        validate_body(&body).expect("an accepted body passes the domain's checks");
        let rendered = external::to_json(&body).to_string();
        assert_eq!(
            external::parse(kind.name(), &rendered).as_ref(),
            Ok(&body),
            "renders back to itself"
        );
        let request = proto::IngestRequest {
            source: "partner".into(),
            external_id: "e-2".into(),
            r#type: kind.name().into(),
            payload_json: text.into(),
            ..Default::default()
        };
        let mut run = Run::new(1);
        ingest_command(&mut run, ingest::ingest_command(&caller, &request).ok());
    }
}

/// Whether valid JSON `text` has an object naming a key twice, keys compared once their
/// escapes are read (`"a"` and `"\u0061"` are one key). Only for text a JSON parser took.
fn names_a_key_twice(text: &str) -> bool {
    let mut reader = JsonKeys { text, at: 0 };
    reader.value()
}

/// A reader of valid JSON that looks only at object keys.
struct JsonKeys<'a> {
    text: &'a str,
    at: usize,
}

impl JsonKeys<'_> {
    fn peek(&self) -> u8 {
        self.text.as_bytes().get(self.at).copied().unwrap_or(0)
    }

    fn skip_space(&mut self) {
        while matches!(self.peek(), b' ' | b'\t' | b'\n' | b'\r') {
            self.at += 1;
        }
    }

    /// Reads one value; whether an object in it names a key twice.
    fn value(&mut self) -> bool {
        self.skip_space();
        match self.peek() {
            b'{' => self.object(),
            b'[' => self.array(),
            b'"' => {
                self.string();
                false
            }
            _ => {
                while !matches!(self.peek(), 0 | b',' | b']' | b'}' | b' ' | b'\t' | b'\n' | b'\r') {
                    self.at += 1;
                }
                false
            }
        }
    }

    fn object(&mut self) -> bool {
        self.at += 1; // {
        let mut keys = Vec::new();
        let mut twice = false;
        loop {
            self.skip_space();
            match self.peek() {
                b'}' | 0 => {
                    self.at += 1;
                    return twice;
                }
                b',' => self.at += 1,
                _ => {
                    let key = self.string();
                    twice |= keys.contains(&key);
                    keys.push(key);
                    self.skip_space();
                    self.at += 1; // :
                    twice |= self.value();
                }
            }
        }
    }

    fn array(&mut self) -> bool {
        self.at += 1; // [
        let mut twice = false;
        loop {
            self.skip_space();
            match self.peek() {
                b']' | 0 => {
                    self.at += 1;
                    return twice;
                }
                b',' => self.at += 1,
                _ => twice |= self.value(),
            }
        }
    }

    /// Reads a string at `"`, escapes resolved.
    fn string(&mut self) -> String {
        self.at += 1; // "
        let mut out = String::new();
        loop {
            let Some(c) = self.text[self.at..].chars().next() else {
                return out;
            };
            self.at += c.len_utf8();
            match c {
                '"' => return out,
                '\\' => {
                    let escaped = self.text.as_bytes()[self.at];
                    self.at += 1;
                    match escaped {
                        b'u' => out.push(self.escaped_char()),
                        b'n' => out.push('\n'),
                        b't' => out.push('\t'),
                        b'r' => out.push('\r'),
                        b'b' => out.push('\u{8}'),
                        b'f' => out.push('\u{c}'),
                        other => out.push(other as char), // \" \\ \/
                    }
                }
                c => out.push(c),
            }
        }
    }

    /// The character of a `\u` escape (the `u` read), and of the low surrogate that
    /// follows a high one.
    fn escaped_char(&mut self) -> char {
        let unit = self.hex4();
        let pairs = |low: u32| (0xD800..0xDC00).contains(&unit) && (0xDC00..0xE000).contains(&low);
        let next = self.text[self.at..].strip_prefix("\\u").and_then(|rest| rest.get(..4));
        let code = match next.and_then(|digits| u32::from_str_radix(digits, 16).ok()) {
            Some(low) if pairs(low) => {
                self.at += 6;
                0x10000 + ((unit - 0xD800) << 10) + (low - 0xDC00)
            }
            _ => unit,
        };
        char::from_u32(code).unwrap_or(char::REPLACEMENT_CHARACTER)
    }

    fn hex4(&mut self) -> u32 {
        let digits = &self.text[self.at..self.at + 4];
        self.at += 4;
        u32::from_str_radix(digits, 16).expect("valid JSON has four hex digits after \\u")
    }
}
