//! Protects the ledger as a whole under random, seeded command streams driven through the
//! real engine (sequencer, log, projector, snapshotter) with a manual clock, on a simulated
//! disk (`tally::log::SimDisk`, durability `sync`, small segments so that group commits
//! roll) that fails: fsyncs and writes that fail, power cuts between two syncs of a commit
//! and at rest, reads that fail at start, and bit flips in the write-state snapshot.
//!
//! Ledger commands come from two tenants over the same account names: opens, promotion and
//! rating-slip awards, holds (reserve, commit in full or in part, release, expiry by the
//! sweeper), duplicates, retries with the same key, conflicting keys, clock jumps forward
//! and back, batches that interleave tenants and accounts, graceful restarts. After every
//! batch the engine's answers and its projections are checked against a small reference
//! model and its invariants (conservation, held = Σ active holds, available ≥ 0, tenants
//! see only their own holds). A batch whose commit failed has an unknown outcome, as it
//! would for a client: after the restart the model takes the log head as the truth (all of
//! the batch or none of it, since a group commit is atomic) and the client retries the same
//! batch with the same keys, which must then apply once. At the end: each hold resolved at
//! most once, each key applied once, the log verifies, and projections folded from scratch
//! equal the live ones; then, in three runs of ten, a bit of synced log data flips and both
//! `verify` and the next start must refuse the log with a sequence number.
//!
//! A third tenant sends the other families through the same commits and faults (partner
//! events with retries and dead letters, discards and re-drives, sessions, API keys): not
//! modeled, but held to the same promises (see `check_side_answers`, `reconcile_side`).
//!
//! `TALLY_SIM_SEEDS=N` runs N seeds (default 200); `TALLY_SIM_SEED=S` replays one seed.
//! The long run is in the README's testing section.
//!
//! The followers (projector, snapshotter) run on their own OS threads and fold when they
//! wake, so every check of a projection first waits for the projector to reach the head it
//! checks (`wait_for_projections`). A seed fixes the commands, the clock, the faults and the
//! answers; what it cannot fix is how far a follower got at any instant, so no check may
//! read a projection without that wait.

mod support;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use support::{meta_as, Rng, TestEngine};
use tally::domain::{AwardRequest, Command, Event, HoldStatus, Rejection};
use tally::engine::{EngineConfig, EngineError, LogPlace, Receipt};
use tally::log::{Durability, LogError, SimDisk, Storage, MIN_SEGMENT_BYTES};
use tally::projection::{ProjectionName, Projections};

const TENANTS: [&str; 2] = ["t1", "t2"];
const ACCOUNTS: [&str; 5] = ["a0", "a1", "a2", "a3", "a4"];
const TIERS: [(u64, &str); 4] = [
    (0, "Member"),
    (10_000, "Silver"),
    (50_000, "Gold"),
    (200_000, "Platinum"),
];

#[derive(Clone, Debug, PartialEq)]
struct MAccount {
    posted: u64,
    held: u64,
    lifetime: u64,
    active_holds: u32,
}

#[derive(Clone, Debug, PartialEq)]
struct MHold {
    tenant: String,
    account: String,
    amount: u64,
    expires_at: u64,
    status: HoldStatus,
    committed: u64,
    released: u64,
}

/// What the model expects of one command.
#[derive(Clone, Debug, PartialEq)]
enum Expect {
    Append { first: u64, events: u64 },
    Replay { first: u64, last: u64 },
    Reject(&'static str),
}

/// (tenant, name): accounts, keys and natural ids are each tenant's own.
type Scoped = (String, String);

#[derive(Clone, Default)]
struct Model {
    seq: u64,
    /// Timestamp of the last record: the engine's time never goes back, whatever the clock.
    head_ts: u64,
    accounts: BTreeMap<Scoped, MAccount>,
    opened_at: HashMap<Scoped, u64>,
    holds: BTreeMap<u64, MHold>,
    /// key → (request, first seq, last seq)
    keys: HashMap<Scoped, (Command, u64, u64)>,
    /// natural id (external reward or slip) → (request, first, last)
    naturals: HashMap<Scoped, (Command, u64, u64)>,
    awarded: u64,
    committed: u64,
    /// The other families' acknowledged commands: (scope, key) → their records.
    side: HashMap<Scoped, Vec<u64>>,
    /// Ids (sequence numbers) of the side tenant's endpoints and links, as the log has them.
    endpoints: Vec<u64>,
    links: Vec<u64>,
    /// The side tenant's session and API key ids, as the log has them.
    sessions: Vec<String>,
    api_keys: Vec<String>,
}

fn scoped(tenant: &str, name: &str) -> Scoped {
    (tenant.to_string(), name.to_string())
}

fn tier(lifetime: u64) -> &'static str {
    TIERS.iter().rev().find(|(min, _)| *min <= lifetime).unwrap().1
}

impl Model {
    /// The time the engine decides at: the clock, never before the last record.
    fn now(&self, clock: u64) -> u64 {
        clock.max(self.head_ts)
    }

    fn apply(&mut self, tenant: &str, key: &str, command: &Command, clock: u64) -> Expect {
        let now = self.now(clock);
        let key = scoped(tenant, key);
        if let Some((request, first, last)) = self.keys.get(&key) {
            return if request == command {
                Expect::Replay {
                    first: *first,
                    last: *last,
                }
            } else {
                Expect::Reject("conflict")
            };
        }
        let expect = self.decide(tenant, command, now);
        if let Expect::Append { first, events } = expect {
            self.head_ts = now;
            self.keys.insert(key, (command.clone(), first, first + events - 1));
        }
        expect
    }

    fn append(&mut self, events: u64) -> Expect {
        let first = self.seq + 1;
        self.seq += events;
        Expect::Append { first, events }
    }

    fn decide(&mut self, tenant: &str, command: &Command, now: u64) -> Expect {
        match command {
            Command::OpenAccount { account } => {
                let account = scoped(tenant, account);
                if let Some(&seq) = self.opened_at.get(&account) {
                    return Expect::Replay { first: seq, last: seq };
                }
                let expect = self.append(1);
                self.opened_at.insert(account.clone(), self.seq);
                self.accounts.insert(
                    account,
                    MAccount {
                        posted: 0,
                        held: 0,
                        lifetime: 0,
                        active_holds: 0,
                    },
                );
                expect
            }
            Command::Award { account, source } => {
                let (natural, points) = match source {
                    AwardRequest::Promotion {
                        points,
                        external_reward_id,
                        ..
                    } => (format!("promo:{external_reward_id}"), *points),
                    AwardRequest::RatingSlip {
                        slip_id,
                        average_bet_cents,
                        decisions_per_hour,
                        minutes_played,
                        house_edge_bps,
                        ..
                    } => {
                        let theo = average_bet_cents
                            * *decisions_per_hour as u64
                            * *minutes_played as u64
                            * *house_edge_bps as u64
                            / 600_000;
                        (format!("slip:{slip_id}"), theo * 1000 / 100_000)
                    }
                    AwardRequest::Manual { .. } => unreachable!("the simulation sends no comps"),
                };
                let natural = scoped(tenant, &natural);
                if let Some((request, first, last)) = self.naturals.get(&natural) {
                    return if request == command {
                        Expect::Replay {
                            first: *first,
                            last: *last,
                        }
                    } else {
                        Expect::Reject("conflict")
                    };
                }
                let Some(acc) = self.accounts.get_mut(&scoped(tenant, account)) else {
                    return Expect::Reject("account_not_found");
                };
                let before = tier(acc.lifetime);
                acc.posted += points;
                acc.lifetime += points;
                self.awarded += points;
                let events = if tier(acc.lifetime) != before { 2 } else { 1 };
                let expect = self.append(events);
                let Expect::Append { first, .. } = expect else {
                    unreachable!()
                };
                self.naturals
                    .insert(natural, (command.clone(), first, first + events - 1));
                expect
            }
            Command::Reserve {
                account,
                amount,
                ttl_seconds,
            } => {
                let Some(acc) = self.accounts.get_mut(&scoped(tenant, account)) else {
                    return Expect::Reject("account_not_found");
                };
                if *amount > acc.posted - acc.held {
                    return Expect::Reject("insufficient");
                }
                acc.held += amount;
                acc.active_holds += 1;
                let expect = self.append(1);
                self.holds.insert(
                    self.seq,
                    MHold {
                        tenant: tenant.to_string(),
                        account: account.clone(),
                        amount: *amount,
                        expires_at: now + *ttl_seconds as u64 * 1_000_000,
                        status: HoldStatus::Active,
                        committed: 0,
                        released: 0,
                    },
                );
                expect
            }
            Command::Commit { .. } | Command::Release { .. } => {
                let (hold_id, amount, is_commit) = match command {
                    Command::Commit { hold_id, amount } => (hold_id, *amount, true),
                    Command::Release { hold_id } => (hold_id, None, false),
                    _ => unreachable!(),
                };
                // Another tenant's hold is not there for this one.
                let Some(hold) = self.holds.get(hold_id).filter(|h| h.tenant == tenant) else {
                    return Expect::Reject("hold_not_found");
                };
                if hold.status != HoldStatus::Active {
                    return Expect::Reject("already_resolved");
                }
                if now >= hold.expires_at {
                    return Expect::Reject("expired");
                }
                let take = if is_commit { amount.unwrap_or(hold.amount) } else { 0 };
                if take > hold.amount {
                    return Expect::Reject("exceeds");
                }
                let hold = self.holds.get_mut(hold_id).unwrap();
                hold.status = if is_commit {
                    HoldStatus::Committed
                } else {
                    HoldStatus::Released
                };
                hold.committed = take;
                hold.released = hold.amount - take;
                let acc = self.accounts.get_mut(&scoped(&hold.tenant, &hold.account)).unwrap();
                acc.posted -= take;
                acc.held -= hold.amount;
                acc.active_holds -= 1;
                self.committed += take;
                self.append(1)
            }
            other => unreachable!("{other:?}"),
        }
    }

    /// The expiry pulse: every active hold at or past its deadline, by (deadline, id).
    fn sweep(&mut self, clock: u64) -> u64 {
        let now = self.now(clock);
        let mut due: Vec<(u64, u64)> = self
            .holds
            .iter()
            .filter(|(_, h)| h.status == HoldStatus::Active && h.expires_at <= now)
            .map(|(id, h)| (h.expires_at, *id))
            .collect();
        due.sort();
        for (_, id) in &due {
            let hold = self.holds.get_mut(id).unwrap();
            hold.status = HoldStatus::Expired;
            hold.released = hold.amount;
            let acc = self.accounts.get_mut(&scoped(&hold.tenant, &hold.account)).unwrap();
            acc.held -= hold.amount;
            acc.active_holds -= 1;
            self.seq += 1;
        }
        if !due.is_empty() {
            self.head_ts = now;
        }
        due.len() as u64
    }

    fn check_invariants(&self) {
        let posted: u64 = self.accounts.values().map(|a| a.posted).sum();
        assert_eq!(
            posted,
            self.awarded - self.committed,
            "conservation: Σ posted = Σ awarded − Σ committed"
        );
        for (name, acc) in &self.accounts {
            let active: u64 = self
                .holds
                .values()
                .filter(|h| (&h.tenant, &h.account) == (&name.0, &name.1) && h.status == HoldStatus::Active)
                .map(|h| h.amount)
                .sum();
            assert_eq!(acc.held, active, "{name:?}: held = Σ active holds");
            assert!(acc.held <= acc.posted, "{name:?}: available ≥ 0");
        }
    }
}

fn rejection_name(rejection: &Rejection) -> &'static str {
    match rejection {
        Rejection::IdempotencyConflict { .. } => "conflict",
        Rejection::AccountNotFound { .. } => "account_not_found",
        Rejection::HoldNotFound { .. } => "hold_not_found",
        Rejection::InsufficientPoints { .. } => "insufficient",
        Rejection::HoldExpired { .. } => "expired",
        Rejection::HoldAlreadyResolved { .. } => "already_resolved",
        Rejection::CommitExceedsHold { .. } => "exceeds",
        other => panic!("unexpected rejection {other:?}"),
    }
}

/// A command sent: tenant, idempotency key, request.
type Sent = (String, String, Command);

/// A random command, or a retry of an earlier one (same key; same or altered request).
fn random_command(rng: &mut Rng, model: &Model, sent: &[Sent], counter: &mut u64) -> Sent {
    if !sent.is_empty() && rng.chance(12) {
        let (tenant, key, command) = sent[rng.below(sent.len() as u64) as usize].clone();
        if rng.chance(70) {
            return (tenant, key, command);
        }
        let altered = match command {
            Command::Reserve {
                account,
                amount,
                ttl_seconds,
            } => Command::Reserve {
                account,
                amount: amount + 1,
                ttl_seconds,
            },
            _ => Command::OpenAccount {
                account: "a-other".into(),
            },
        };
        return (tenant, key, altered);
    }
    *counter += 1;
    let key = format!("k{counter}");
    // The same key in the other tenant is another key.
    let tenant = TENANTS[rng.below(TENANTS.len() as u64) as usize].to_string();
    let account = ACCOUNTS[rng.below(ACCOUNTS.len() as u64) as usize].to_string();
    let hold_ids: Vec<u64> = model.holds.keys().copied().collect();
    let some_hold = |rng: &mut Rng| {
        if hold_ids.is_empty() || rng.chance(5) {
            999_999
        } else {
            hold_ids[rng.below(hold_ids.len() as u64) as usize]
        }
    };
    let command = match rng.below(100) {
        0..=9 => Command::OpenAccount { account },
        10..=34 => Command::Award {
            account,
            source: AwardRequest::Promotion {
                points: 1 + rng.below(900),
                promotion_id: "sim".into(),
                // A reward id seen before: the same reward again (replay) or a conflict.
                external_reward_id: format!("r{}", rng.below(*counter + 1)),
            },
        },
        35..=44 => Command::Award {
            account,
            source: AwardRequest::RatingSlip {
                slip_id: format!("s{}", rng.below(*counter + 1)),
                game: "bj".into(),
                average_bet_cents: 100 + rng.below(5000),
                decisions_per_hour: 60,
                minutes_played: 1 + rng.below(240) as u32,
                house_edge_bps: 200,
            },
        },
        45..=69 => Command::Reserve {
            account,
            amount: 1 + rng.below(600),
            ttl_seconds: 1 + rng.below(120) as u32,
        },
        70..=87 => {
            let hold_id = some_hold(rng);
            let amount = if rng.chance(50) {
                None
            } else {
                Some(1 + rng.below(model.holds.get(&hold_id).map_or(50, |h| h.amount + 3)))
            };
            Command::Commit { hold_id, amount }
        }
        _ => Command::Release {
            hold_id: some_hold(rng),
        },
    };
    (tenant, key, command)
}

async fn check_projections(engine: &TestEngine, model: &Model) {
    let handle = engine.handle();
    handle.wait_for_projections().await.unwrap();
    let head = handle.reader().head().seq;
    // An account as its history, read through the index from the log, folds.
    let account = |tenant: &str, name: &str| {
        handle
            .indexed()
            .account_at(tenant, name, head)
            .unwrap()
            .map(|as_of| as_of.account)
    };
    for ((tenant, name), acc) in &model.accounts {
        let view = account(tenant, name).expect("opened accounts have a history");
        assert_eq!(
            (view.posted, view.held, view.lifetime, view.active_holds),
            (acc.posted, acc.held, acc.lifetime, acc.active_holds),
            "account {tenant}/{name}"
        );
        assert_eq!(view.tier, tier(acc.lifetime), "account {tenant}/{name} tier");
    }
    for tenant in TENANTS {
        for name in ACCOUNTS {
            if !model.accounts.contains_key(&scoped(tenant, name)) {
                let view = account(tenant, name);
                assert!(view.is_none(), "{tenant}/{name} was never opened: {view:?}");
            }
        }
    }
    for (id, hold) in &model.holds {
        let view = handle.hold(*id).await.unwrap().expect("holds are known");
        assert_eq!(
            (
                view.tenant.as_str(),
                view.status,
                view.committed,
                view.released,
                view.amount
            ),
            (
                hold.tenant.as_str(),
                hold.status,
                hold.committed,
                hold.released,
                hold.amount
            ),
            "hold {id}"
        );
    }
}

fn check_receipt(expect: &Expect, result: &Result<Receipt, Rejection>, context: &str) {
    match (expect, result) {
        (Expect::Append { first, events }, Ok(receipt)) => {
            assert!(!receipt.replayed, "{context}: fresh command marked as replay");
            let seqs: Vec<u64> = receipt.records.iter().map(|r| r.seq).collect();
            assert_eq!(seqs, (*first..first + events).collect::<Vec<_>>(), "{context}");
        }
        (Expect::Replay { first, last }, Ok(receipt)) => {
            assert!(receipt.replayed, "{context}: replay not marked");
            let seqs: Vec<u64> = receipt.records.iter().map(|r| r.seq).collect();
            assert_eq!(seqs, (*first..=*last).collect::<Vec<_>>(), "{context}");
        }
        (Expect::Reject(name), Err(rejection)) => {
            assert_eq!(*name, rejection_name(rejection), "{context}: {rejection}")
        }
        (expect, result) => panic!("{context}: expected {expect:?}, got {result:?}"),
    }
}

// --- The other command families -----------------------------------------------------------

/// The tenant of the other families' traffic: partner events (enrolments, awards, rating
/// slips, some invalid, some repeated) with their retries and dead letters, operators'
/// discards and re-drives, sessions, API keys. Its outcomes are not modeled (the ingest
/// tests do that), but it shares the log, the group commits and the disk's faults with the
/// ledger traffic, and keeps the same promises: what was acknowledged survives every crash,
/// a retry with the same key is answered with the same records, nothing applies twice.
const SIDE_TENANT: &str = "t3";

fn side_meta(actor: &str, key: &str, scope: &str) -> tally::domain::CommandMeta {
    let mut meta = meta_as(SIDE_TENANT, actor, key, scope);
    if key.is_empty() {
        meta.idempotency = None;
    }
    meta
}

fn side_command(rng: &mut Rng, counter: &mut u64, model: &Model) -> (tally::domain::CommandMeta, Command) {
    use tally::domain::delivery::{AckMode, AttemptResult, EndpointConfig, Semantics};
    use tally::domain::event::ExternalBody;
    let head = model.seq;
    let pick_name = |rng: &mut Rng, names: &[String], prefix: &str| {
        if names.is_empty() || rng.chance(10) {
            format!("{prefix}-none")
        } else {
            names[rng.below(names.len() as u64) as usize].clone()
        }
    };
    let pick = |rng: &mut Rng, ids: &[u64]| {
        if ids.is_empty() || rng.chance(10) {
            1 + rng.below(head + 1)
        } else {
            ids[rng.below(ids.len() as u64) as usize]
        }
    };
    *counter += 1;
    let n = *counter;
    let member = format!("m{}", rng.below(4));
    // An id seen before now and then: a duplicate (same body) or a conflict.
    let external_id = format!("x{}", rng.below(n + 1));
    let ingest = |body: ExternalBody| {
        (
            side_meta("svc-partner", &external_id, "ingest:pos"),
            Command::Ingest {
                source: "pos".into(),
                external_id: external_id.clone(),
                body,
            },
        )
    };
    match rng.below(100) {
        0..=14 => ingest(ExternalBody::MemberEnrolled { member_id: member }),
        15..=39 => ingest(ExternalBody::PointsAward {
            member_id: member,
            // 0 points is invalid: a dead letter.
            points: rng.below(500),
            promotion_id: "sim".into(),
        }),
        40..=49 => ingest(ExternalBody::RatingSlipCompleted {
            member_id: member,
            slip_id: format!("slip-{external_id}"),
            game: "blackjack".into(),
            average_bet_cents: 500 + rng.below(5000),
            decisions_per_hour: 60,
            minutes_played: 1 + rng.below(200) as u32,
            house_edge_bps: 200,
        }),
        50..=59 => (side_meta("system:ingest", "", ""), Command::RetryDue),
        60..=64 => (
            side_meta("ops-ana", &format!("d{n}"), ""),
            Command::Discard {
                receipt_seq: 1 + rng.below(head + 1),
                reason: "simulated operator".into(),
            },
        ),
        65..=69 => (
            side_meta("ops-ana", &format!("r{n}"), ""),
            Command::Redrive {
                receipt_seq: 1 + rng.below(head + 1),
            },
        ),
        70..=79 => (
            side_meta("sso", &format!("s{n}"), ""),
            Command::StartSession {
                session_id: format!("sess-{}", rng.below(n + 1)),
                subject: member,
                role: ["member", "staff", "auditor"][rng.below(3) as usize].into(),
                ttl_seconds: 1 + rng.below(600) as u32,
            },
        ),
        80..=84 => (
            side_meta("sso", &format!("e{n}"), ""),
            Command::EndSession {
                session_id: pick_name(rng, &model.sessions, "sess"),
                reason: "logout".into(),
            },
        ),
        85..=89 => (
            side_meta("admin", &format!("k{n}"), ""),
            Command::CreateApiKey {
                key_id: format!("key-{}", rng.below(n + 1)),
                name: "partner".into(),
                role: "service".into(),
                signing_kid: "sim-k1".into(),
                fingerprint: [n as u8; 32],
            },
        ),
        90..=91 => (
            side_meta("admin", &format!("v{n}"), ""),
            Command::RevokeApiKey {
                key_id: pick_name(rng, &model.api_keys, "key"),
                reason: "rotated".into(),
            },
        ),
        92 => (
            side_meta("admin", &format!("ep{n}"), ""),
            Command::RegisterEndpoint {
                config: EndpointConfig {
                    url: format!("http://receiver-{}.example/hook", rng.below(3)),
                    kinds: Vec::new(),
                    semantics: if rng.chance(50) {
                        Semantics::AtLeastOnce
                    } else {
                        Semantics::AtMostOnce
                    },
                    max_attempts: 1 + rng.below(5) as u32,
                    backoff_initial_ms: 1000,
                    backoff_max_ms: 60_000,
                    ack_mode: AckMode::Status2xx,
                    ack_timeout_seconds: 30,
                    ordered: rng.chance(50),
                    request_timeout_ms: 5000,
                },
                secret_kid: "sim-k1".into(),
                secret_nonce: format!("nonce-{n}"),
            },
        ),
        93..=95 => {
            // A delivery worker's report on a recent event.
            let endpoint_id = pick(rng, &model.endpoints);
            let event_seq = head.saturating_sub(rng.below(20)).max(1);
            let status_code = [200, 200, 503, 0][rng.below(4) as usize];
            let command = if rng.chance(30) {
                Command::DispatchDelivery {
                    endpoint_id,
                    event_seq,
                    attempt: 1,
                }
            } else {
                Command::RecordDelivery {
                    endpoint_id,
                    event_seq,
                    attempt: 1 + rng.below(2) as u32,
                    result: AttemptResult {
                        status_code,
                        latency_us: 1000,
                        error: if status_code == 200 {
                            String::new()
                        } else {
                            "unavailable".into()
                        },
                    },
                }
            };
            (side_meta("system:deliverer", "", ""), command)
        }
        96..=97 => (
            side_meta("svc-crm", &format!("l{n}"), ""),
            Command::CreateLink {
                account: member,
                external_system: "crm".into(),
                external_account_id: format!("c{}", rng.below(6)),
                token_hash: [(n % 7) as u8; 32],
                ttl_seconds: 1 + rng.below(300) as u32,
            },
        ),
        98 => (
            side_meta("svc-crm", &format!("lv{n}"), ""),
            Command::VerifyLink {
                link_id: pick(rng, &model.links),
                token_hash: [rng.below(7) as u8; 32],
            },
        ),
        _ => (
            side_meta("svc-crm", &format!("lr{n}"), ""),
            Command::RevokeLink {
                link_id: pick(rng, &model.links),
                reason: "member asked".into(),
            },
        ),
    }
}

fn side_key(meta: &tally::domain::CommandMeta) -> Option<Scoped> {
    meta.idempotency.as_ref().map(|k| (k.scope.clone(), k.key.clone()))
}

/// Checks a side batch's answers: a replay answers the records first acknowledged for its
/// key; new records extend the log exactly. Returns how many records the batch appended.
fn check_side_answers(
    model: &mut Model,
    batch: &[(tally::domain::CommandMeta, Command)],
    results: &[Result<Receipt, Rejection>],
    context: &str,
) -> u64 {
    let mut appended = 0;
    for ((meta, command), result) in batch.iter().zip(results) {
        let Ok(receipt) = result else { continue };
        let seqs: Vec<u64> = receipt.records.iter().map(|r| r.seq).collect();
        let key = side_key(meta);
        if receipt.replayed {
            if let Some(first) = key.as_ref().and_then(|k| model.side.get(k)) {
                // Ingest answers a duplicate with its receipt (and what followed it), so
                // the first records must be the ones first acknowledged.
                assert!(
                    seqs.starts_with(&first[..1]),
                    "{context}: {command:?} replayed {seqs:?}, first acknowledged as {first:?}"
                );
            }
            continue;
        }
        for seq in &seqs {
            assert_eq!(
                *seq,
                model.seq + appended + 1,
                "{context}: {command:?} records in order"
            );
            appended += 1;
        }
        for record in &receipt.records {
            note_side_ids(model, record);
        }
        if let Some(key) = key {
            if !seqs.is_empty() {
                model.side.entry(key).or_insert(seqs);
            }
        }
    }
    appended
}

/// A bit of synced log data flips while the engine is stopped: `verify` and the next start
/// both refuse the log, naming a sequence number of it; neither cuts it off nor starts.
fn bit_rot(world: &mut World, rng: &mut Rng, head: u64, context: &str) {
    world.engine.engine.take().expect("running").shutdown();
    let files = world.disk.files();
    let (name, _) = &files[rng.below(files.len() as u64) as usize];
    let written = world.disk.written_len(name);
    if written <= 64 {
        return; // a segment with nothing in it yet past its header
    }
    let offset = 64 + rng.below(written - 64);
    assert!(world.disk.flip_bit(name, offset, rng.below(8) as u8));
    world.tally.bit_rots += 1;
    let named = |what: &str, error: LogError| match error {
        LogError::Corrupt { seq, .. } => assert!(
            (1..=head).contains(&seq),
            "{context}: {what} names sequence {seq} of {head}"
        ),
        other => panic!("{context}: {what} of a log with bit {offset} of {name} flipped: {other}"),
    };
    match tally::log::verify_storage(&world.disk) {
        Ok(verified) => panic!("{context}: verify passed a flipped bit: {:?}", verified.head),
        Err(e) => named("verify", e),
    }
    match tally::engine::Engine::start(world.engine.config.clone(), world.engine.clock.clone()) {
        Ok(_) => panic!("{context}: the engine started on a flipped bit at {offset} of {name}"),
        Err(EngineError::Log(e)) => named("start", e),
        Err(other) => panic!("{context}: start: {other}"),
    }
}

/// The disk's faults for the next commit.
fn arm_faults(rng: &mut Rng, disk: &SimDisk) {
    match rng.below(100) {
        0..=4 => disk.fail_syncs(1),
        5..=7 => disk.fail_writes(1),
        8..=11 => disk.cut_power_after_syncs(1 + rng.below(2) as u32),
        12..=13 => disk.power_cut(),
        _ => {}
    }
}

/// After a side batch with an unknown outcome: the log says whether it was kept (whole: a
/// group commit is atomic); its records must all be the side tenant's, and their keys are
/// now taken.
fn reconcile_side(world: &World, model: &mut Model, context: &str) {
    let handle = world.engine.handle();
    let reader = handle.reader();
    let head = reader.head().seq;
    assert!(head >= model.seq, "{context}: the log lost acknowledged records");
    for record in reader.iter_range(model.seq + 1, head) {
        let record = record.unwrap();
        assert_eq!(record.envelope.tenant, SIDE_TENANT, "{context}: {record:?}");
        if !record.envelope.idempotency_key.is_empty() {
            let key = (
                record.envelope.idempotency_scope.clone(),
                record.envelope.idempotency_key.clone(),
            );
            model.side.entry(key).or_default().push(record.seq);
        }
        model.head_ts = record.ts_us;
        note_side_ids(model, &record);
    }
    model.seq = head;
}

fn note_side_ids(model: &mut Model, record: &tally::domain::Record) {
    match record.event {
        Event::EndpointRegistered(ref registered) => model.endpoints.push(registered.endpoint_id),
        Event::LinkCreated(_) => model.links.push(record.seq),
        Event::SessionStarted(ref started) => model.sessions.push(started.session_id.clone()),
        Event::ApiKeyCreated(ref created) => model.api_keys.push(created.key_id.clone()),
        _ => {}
    }
}

/// The disk and engine of one run.
struct World {
    disk: SimDisk,
    engine: TestEngine,
    tally: Tally,
}

/// What a run went through, summed over seeds and printed at the end.
#[derive(Default)]
struct Tally {
    commands: u64,
    /// The other families' commands: appended, answered as replays, refused.
    side_appended: u64,
    side_replayed: u64,
    side_refused: u64,
    /// The side tenant's records in the final logs, by event kind.
    side_kinds: BTreeMap<String, u64>,
    unknown_outcomes: u64,
    kept_whole: u64,
    lost_whole: u64,
    crashes: u64,
    restarts: u64,
    snapshot_flips: u64,
    /// Bits flipped in synced log data at the end of a run.
    bit_rots: u64,
    refused_starts: u64,
    failed_syncs: u64,
    failed_writes: u64,
    power_cuts: u64,
}

impl std::fmt::Display for Tally {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "{} commands; other families: {} appended, {} replayed, {} refused",
            self.commands, self.side_appended, self.side_replayed, self.side_refused
        )?;
        writeln!(
            f,
            "{} unknown outcomes ({} kept whole, {} lost whole); {} crashes, {} restarts, {} snapshot flips, \
             {} log bit flips refused, {} refused starts; disk: {} failed fsyncs, {} failed writes, {} power cuts",
            self.unknown_outcomes,
            self.kept_whole,
            self.lost_whole,
            self.crashes,
            self.restarts,
            self.snapshot_flips,
            self.bit_rots,
            self.refused_starts,
            self.failed_syncs,
            self.failed_writes,
            self.power_cuts
        )?;
        write!(f, "other families' records by kind: {:?}", self.side_kinds)
    }
}

impl Tally {
    fn add(&mut self, other: &Tally) {
        self.commands += other.commands;
        self.side_appended += other.side_appended;
        self.side_replayed += other.side_replayed;
        self.side_refused += other.side_refused;
        for (kind, n) in &other.side_kinds {
            *self.side_kinds.entry(kind.clone()).or_default() += n;
        }
        self.unknown_outcomes += other.unknown_outcomes;
        self.kept_whole += other.kept_whole;
        self.lost_whole += other.lost_whole;
        self.crashes += other.crashes;
        self.restarts += other.restarts;
        self.snapshot_flips += other.snapshot_flips;
        self.bit_rots += other.bit_rots;
        self.refused_starts += other.refused_starts;
        self.failed_syncs += other.failed_syncs;
        self.failed_writes += other.failed_writes;
        self.power_cuts += other.power_cuts;
    }
}

impl World {
    fn start(seed: u64) -> World {
        let disk = SimDisk::new(seed, "/sim/log");
        let dir = tempfile::tempdir().unwrap();
        let config = EngineConfig {
            durability: Durability::Sync,
            segment_bytes: MIN_SEGMENT_BYTES,
            log_place: LogPlace::Storage(Arc::new(disk.clone()) as Arc<dyn Storage>),
            ..EngineConfig::new(dir.path())
        };
        World {
            engine: TestEngine::start_with(dir, config),
            disk,
            tally: Tally::default(),
        }
    }

    /// Stops the engine, as a crash or a restart would, then starts it again on what the
    /// disk kept, with the faults a start can meet: the power back after a cut, a read that
    /// fails (that start is refused; the next one reads), a bit flipped in the write-state
    /// snapshot (it must be set aside and the log folded instead).
    fn restart(&mut self, rng: &mut Rng, crash: bool, context: &str) {
        let engine = self.engine.engine.take().expect("running");
        engine.shutdown();
        if crash {
            self.disk.power_cut();
            self.tally.crashes += 1;
        } else {
            self.tally.restarts += 1;
        }
        self.disk.keep_power();
        self.disk.power_on();
        let snapshot = tally::engine::snapshot::path(self.engine.dir.path());
        let mut flipped = false;
        if rng.chance(30) {
            if let Ok(mut bytes) = std::fs::read(&snapshot) {
                let at = rng.below(bytes.len() as u64) as usize;
                bytes[at] ^= 1 << rng.below(8);
                std::fs::write(&snapshot, bytes).unwrap();
                flipped = true;
                self.tally.snapshot_flips += 1;
            }
        }
        let clock = self.engine.clock.clone();
        if rng.chance(20) {
            self.disk.fail_reads(1);
            match tally::engine::Engine::start(self.engine.config.clone(), clock.clone()) {
                Err(EngineError::Log(LogError::Io { .. })) => self.tally.refused_starts += 1,
                Err(e) => panic!("{context}: a failed read refused the start with {e}"),
                Ok(engine) => {
                    // The failed read fell on something a start can do without.
                    engine.shutdown();
                }
            }
        }
        let engine = tally::engine::Engine::start(self.engine.config.clone(), clock)
            .unwrap_or_else(|e| panic!("{context}: the engine does not start again: {e}"));
        if flipped {
            assert_eq!(
                engine.report().snapshot_seq,
                None,
                "{context}: a snapshot with a flipped bit was trusted"
            );
        }
        self.engine.engine = Some(engine);
    }
}

async fn run_seed(seed: u64) -> Tally {
    let mut rng = Rng(seed);
    let mut world = World::start(seed);
    let mut model = Model::default();
    let mut sent: Vec<Sent> = Vec::new();
    let mut counter = 0;
    // A batch whose outcome was unknown, sent again with the same keys.
    let mut retry: Option<Vec<Sent>> = None;
    let mut side_counter = 0;
    let mut retry_side: Option<Vec<(tally::domain::CommandMeta, Command)>> = None;
    for step in 0..60 {
        let context = format!("seed {seed} step {step}");
        let clock = world.engine.clock.now_us_for_test();
        let side = retry_side.take().or_else(|| {
            (retry.is_none() && rng.chance(25)).then(|| {
                (0..1 + rng.below(6))
                    .map(|_| side_command(&mut rng, &mut side_counter, &model))
                    .collect()
            })
        });
        if let Some(batch) = side {
            world.tally.commands += batch.len() as u64;
            arm_faults(&mut rng, &world.disk);
            match world.engine.handle().submit_batch(batch.clone()).await {
                Ok(results) => {
                    for result in &results {
                        match result {
                            Ok(receipt) if receipt.replayed => world.tally.side_replayed += 1,
                            Ok(_) => world.tally.side_appended += 1,
                            Err(_) => world.tally.side_refused += 1,
                        }
                    }
                    let appended = check_side_answers(&mut model, &batch, &results, &context);
                    if appended > 0 {
                        model.seq += appended;
                        model.head_ts = model.now(clock);
                    }
                }
                Err(EngineError::Unavailable(_) | EngineError::Log(LogError::Io { .. })) => {
                    world.tally.unknown_outcomes += 1;
                    world.restart(&mut rng, true, &context);
                    let before = model.seq;
                    reconcile_side(&world, &mut model, &context);
                    if model.seq > before {
                        world.tally.kept_whole += 1;
                    } else {
                        world.tally.lost_whole += 1;
                    }
                    model.check_invariants();
                    check_projections(&world.engine, &model).await;
                    retry_side = Some(batch);
                    continue;
                }
                Err(e) => panic!("{context}: {e}"),
            }
        } else {
            let commands: Vec<Sent> = retry.take().unwrap_or_else(|| {
                (0..1 + rng.below(8))
                    .map(|_| random_command(&mut rng, &model, &sent, &mut counter))
                    .collect()
            });
            world.tally.commands += commands.len() as u64;
            let before = model.clone();
            let mut expects = Vec::new();
            let mut batch = Vec::new();
            for (tenant, key, command) in &commands {
                expects.push(model.apply(tenant, key, command, clock));
                if !sent.iter().any(|(t, k, _)| (t, k) == (tenant, key)) {
                    sent.push((tenant.clone(), key.clone(), command.clone()));
                }
                batch.push((meta_as(tenant, "staff-1", key, ""), command.clone()));
            }
            arm_faults(&mut rng, &world.disk);
            match world.engine.handle().submit_batch(batch).await {
                Ok(results) => {
                    for ((expect, result), (tenant, _, command)) in expects.iter().zip(&results).zip(&commands) {
                        check_receipt(expect, result, &format!("{context} {tenant} {command:?}"));
                    }
                }
                Err(EngineError::Unavailable(_) | EngineError::Log(LogError::Io { .. })) => {
                    // Not acknowledged (a failed commit; or a committed batch whose replayed
                    // records could not be read back for the answer): the batch is in the log
                    // whole or not at all, and only the log can say which. The client retries
                    // it with the same keys.
                    let after = model.clone();
                    world.tally.unknown_outcomes += 1;
                    world.restart(&mut rng, true, &context);
                    let head = world.engine.handle().reader().head().seq;
                    model = if head == after.seq {
                        world.tally.kept_whole += u64::from(after.seq > before.seq);
                        after
                    } else if head == before.seq {
                        world.tally.lost_whole += 1;
                        before
                    } else {
                        panic!(
                            "{context}: after a failed commit the log ends at {head}, \
                             neither before ({}) nor after ({}) the batch",
                            before.seq, after.seq
                        )
                    };
                    model.check_invariants();
                    check_projections(&world.engine, &model).await;
                    retry = Some(commands);
                    continue;
                }
                Err(e) => panic!("{context}: {e}"),
            }
        }
        // A fault the batch did not meet (it appended nothing) is not left for the sweep.
        world.disk.keep_power();
        world.disk.fail_syncs(0);
        world.disk.fail_writes(0);
        model.check_invariants();
        if !world.disk.powered() {
            // The power went right after the commit was acknowledged: nothing may be lost.
            world.restart(&mut rng, true, &context);
            assert_eq!(world.engine.handle().reader().head().seq, model.seq, "{context}");
        }
        check_projections(&world.engine, &model).await;
        // Time moves: mostly a little, sometimes past every hold's deadline, now and then
        // back (the engine's log time does not go back with it).
        let clock = world.engine.clock.now_us_for_test();
        if rng.chance(5) {
            world.engine.clock.set(clock - rng.below(30_000_000));
        } else {
            world.engine.clock.advance(if rng.chance(10) {
                60_000_000 + rng.below(120_000_000)
            } else {
                rng.below(5_000_000)
            });
        }
        if rng.chance(25) {
            // The pulse also expires the side tenant's links: count the holds it expired.
            let pulse = tally::domain::CommandMeta {
                tenant: "system".into(),
                actor: "system:sweeper".into(),
                ..tally::domain::CommandMeta::default()
            };
            let expire = Command::ExpireDue {
                limit: tally::domain::limits::EXPIRE_PULSE_MAX_HOLDS,
            };
            let receipt = world.engine.handle().submit(pulse, expire).await.unwrap();
            let expired = receipt
                .records
                .iter()
                .filter(|r| matches!(r.event, Event::HoldExpired(_)))
                .count() as u64;
            assert_eq!(
                expired,
                model.sweep(world.engine.clock.now_us_for_test()),
                "{context}: sweep"
            );
            model.seq += receipt.records.len() as u64 - expired;
            if let Some(last) = receipt.records.last() {
                assert_eq!(last.seq, model.seq, "{context}: the pulse's records end the log");
                model.head_ts = last.ts_us;
            }
            model.check_invariants();
        }
        if rng.chance(4) {
            world.restart(&mut rng, false, &context);
            check_projections(&world.engine, &model).await;
        }
    }
    check_log(&world, &model).await;
    for record in world.engine.handle().reader().iter_from(1) {
        let record = record.unwrap();
        if record.envelope.tenant == SIDE_TENANT {
            *world
                .tally
                .side_kinds
                .entry(format!("{:?}", record.event.kind()))
                .or_default() += 1;
        }
    }
    if rng.chance(30) {
        bit_rot(&mut world, &mut rng, model.seq, &format!("seed {seed} end"));
    }
    let disk = world.disk.stats();
    Tally {
        failed_syncs: disk.failed_syncs,
        failed_writes: disk.failed_writes,
        power_cuts: disk.power_cuts,
        ..world.tally
    }
}

/// End-of-run checks over the whole log.
async fn check_log(world: &World, model: &Model) {
    let handle = world.engine.handle();
    // The projector lingers before it folds (it lets commits gather), so the last commands
    // (often a sweep's expiries) may not be in the live projections yet: reach the head first.
    handle.wait_for_projections().await.unwrap();
    let records: Vec<_> = handle.reader().iter_from(1).collect::<Result<_, _>>().unwrap();
    assert_eq!(
        records.len() as u64,
        model.seq,
        "every expected event is in the log, no more"
    );
    let mut resolutions: HashMap<u64, u32> = HashMap::new();
    let mut key_ranges: HashMap<String, Vec<u64>> = HashMap::new();
    for record in &records {
        if matches!(
            record.event,
            Event::HoldCommitted(_) | Event::HoldReleased(_) | Event::HoldExpired(_)
        ) {
            *resolutions.entry(record.event.hold_id().unwrap()).or_default() += 1;
        }
        if !record.envelope.idempotency_key.is_empty() {
            key_ranges
                .entry(format!(
                    "{}/{}",
                    record.envelope.tenant, record.envelope.idempotency_key
                ))
                .or_default()
                .push(record.seq);
        }
    }
    assert!(resolutions.values().all(|&n| n == 1), "each hold resolves at most once");
    for (key, seqs) in key_ranges {
        assert!(
            seqs.windows(2).all(|w| w[1] == w[0] + 1),
            "key {key} was applied once (its events are one contiguous command)"
        );
    }
    tally::log::verify_storage(&world.disk).expect("the log verifies");
    // Projections folded from scratch equal the live ones.
    let scratch = tempfile::tempdir().unwrap();
    let fresh = Projections::open(scratch.path()).unwrap();
    for chunk in records.chunks(500) {
        fresh.apply(chunk).unwrap();
    }
    for name in ProjectionName::ALL {
        let comparison = handle.projections().compare(&fresh, name).unwrap();
        assert_eq!(
            (comparison.left_seq, comparison.right_seq),
            (model.seq, model.seq),
            "both folds reached the head: {comparison}"
        );
        assert!(
            comparison.equal(),
            "live (left) against folded from scratch (right): {comparison}"
        );
    }
}

trait NowForTest {
    fn now_us_for_test(&self) -> u64;
}

impl NowForTest for tally::engine::ManualClock {
    fn now_us_for_test(&self) -> u64 {
        tally::engine::Clock::now_us(self)
    }
}

#[test]
fn random_command_streams_match_the_reference_model() {
    let seeds: Vec<u64> = match std::env::var("TALLY_SIM_SEED") {
        Ok(seed) => vec![seed.parse().expect("TALLY_SIM_SEED is a number")],
        Err(_) => {
            let count = std::env::var("TALLY_SIM_SEEDS")
                .ok()
                .and_then(|n| n.parse().ok())
                .unwrap_or(200);
            (1..=count)
                .map(|n: u64| n.wrapping_mul(0x2545_F491_4F6C_DD1D))
                .collect()
        }
    };
    let mut total = Tally::default();
    let count = seeds.len();
    // A long run says which seed it is on, so that a crash that is not a panic (an abort)
    // still names its seed.
    let progress = std::env::var("TALLY_SIM_PROGRESS").is_ok();
    for (n, seed) in seeds.into_iter().enumerate() {
        if progress {
            eprintln!("simulation: seed {} of {count}: TALLY_SIM_SEED={seed}", n + 1);
        }
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| runtime.block_on(run_seed(seed))));
        match outcome {
            Ok(tally) => total.add(&tally),
            Err(panic) => {
                eprintln!("simulation failed for seed {seed}; replay it with TALLY_SIM_SEED={seed}");
                std::panic::resume_unwind(panic);
            }
        }
    }
    eprintln!("simulation: {count} seeds, {total}");
}
