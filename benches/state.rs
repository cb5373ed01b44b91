//! Memory of the write-side state (`domain::State`, what the sequencer keeps in RAM, its
//! one copy), measured with a counting allocator: heap bytes held after
//! folding N accounts, divided by N. Two shapes:
//!
//! - accounts only: each opened by a record without an idempotency key (what an account
//!   costs by itself);
//! - as the API opens them: each `OpenAccount` with its idempotency key, so the durable
//!   idempotency index holds one entry per account too;
//!
//! and the cost of one award with its idempotency key and external reward id: whole in the
//! identity window, and once it left the window (N awards with a window of N/10
//! identities; the bytes each award of the second half adds). Keys are durable for ever;
//! the window bounds what they cost whole.
//!
//!     cargo bench --bench state
//!
//! `TALLY_BENCH_ACCOUNTS` sets N (default 1,000,000).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};
use tally::domain::event::{AccountOpened, AwardSource, PointsAwarded, PromotionSource};
use tally::domain::state::{NoOlderRecords, OlderRecords, WindowPolicy};
use tally::domain::{
    decide_identified, evolve, AwardRequest, Command, CommandMeta, Decision, Effect, Envelope, Event, IdempotencyKey,
    Identity, Policy, Record, State,
};

/// The system allocator, counting the bytes it holds for the program.
struct Counting;

static HELD: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        HELD.fetch_add(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        HELD.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        HELD.fetch_add(new_size as isize - layout.size() as isize, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const T0: u64 = 1_767_225_600_000_000;
/// Log time between two records: 1 ms (a thousand records a second).
const RECORD_US: u64 = 1_000;

fn held() -> isize {
    HELD.load(Ordering::Relaxed)
}

fn meta(key: Option<String>) -> CommandMeta {
    CommandMeta {
        tenant: "casino-1".into(),
        actor: "svc".into(),
        idempotency: key.map(|key| IdempotencyKey {
            key,
            scope: String::new(),
        }),
        ..CommandMeta::default()
    }
}

/// The award of [`per_award`] at `seq`, as far as an identity lookup reads it (the log of
/// this benchmark is not kept: it would be counted): its envelope and source.
struct Regenerated {
    accounts: u64,
}

impl OlderRecords for Regenerated {
    fn read(&self, from: u64, to: u64) -> Result<Vec<Record>, String> {
        Ok((from.max(self.accounts + 1)..=to)
            .map(|seq| {
                let i = seq - self.accounts - 1;
                let command = award(self.accounts, i);
                let Command::Award {
                    account,
                    source:
                        AwardRequest::Promotion {
                            points,
                            promotion_id,
                            external_reward_id,
                        },
                } = command
                else {
                    unreachable!("the benchmark awards promotions")
                };
                Record {
                    seq,
                    ts_us: T0 + (seq - 1) * RECORD_US,
                    envelope: Envelope {
                        tenant: "casino-1".into(),
                        stream: account,
                        actor: "svc".into(),
                        idempotency_key: award_key(i),
                        ..Envelope::default()
                    },
                    event: Event::PointsAwarded(PointsAwarded {
                        points,
                        source: AwardSource::Promotion(PromotionSource {
                            promotion_id,
                            external_reward_id,
                        }),
                        // Not read by a lookup.
                        effect: Effect {
                            posted_before: 0,
                            posted_after: 0,
                            held_before: 0,
                            held_after: 0,
                            lifetime_before: 0,
                            lifetime_after: 0,
                            tier_before: String::new(),
                            tier_after: String::new(),
                        },
                    }),
                    hash: [0; 32],
                }
            })
            .collect())
    }
}

/// Decides and folds one command the way the sequencer does.
fn run(policy: &Policy, state: &mut State, meta: &CommandMeta, command: &Command, log: &dyn OlderRecords) {
    let identity = Identity::of(meta, command);
    let now_us = T0 + state.head_seq * RECORD_US;
    let Ok(Decision::Append(emitted)) = decide_identified(policy, state, meta, command, &identity, now_us, log) else {
        panic!("{command:?} is accepted");
    };
    for e in emitted {
        let record = Record {
            seq: state.head_seq + 1,
            ts_us: T0 + state.head_seq * RECORD_US,
            envelope: Envelope {
                tenant: e.tenant,
                stream: e.account,
                actor: meta.actor.clone(),
                idempotency_key: meta.idempotency.as_ref().map(|k| k.key.clone()).unwrap_or_default(),
                ..Envelope::default()
            },
            event: e.event,
            hash: [0; 32],
        };
        evolve(state, &record);
    }
}

/// Folds an account opening without an idempotency key (as an import or a test would).
fn open_bare(state: &mut State, account: String) {
    let record = Record {
        seq: state.head_seq + 1,
        ts_us: T0 + state.head_seq * RECORD_US,
        envelope: Envelope {
            tenant: "casino-1".into(),
            stream: account,
            ..Envelope::default()
        },
        event: Event::AccountOpened(AccountOpened { tier: "Member".into() }),
        hash: [0; 32],
    };
    evolve(state, &record);
}

/// Heap bytes per account after opening `n` accounts, with or without idempotency keys.
fn per_account(n: u64, with_keys: bool) -> f64 {
    let policy = Policy::default();
    let before = held();
    let mut state = State::default();
    // Every identity in the window: what an account costs whole.
    state.idempotency.policy = WindowPolicy::new(u64::MAX / 1_000_000, u64::MAX);
    for a in 0..n {
        let account = format!("player-{a:08}");
        if with_keys {
            let command = Command::OpenAccount { account };
            run(
                &policy,
                &mut state,
                &meta(Some(format!("open-{a}"))),
                &command,
                &NoOlderRecords,
            );
        } else {
            open_bare(&mut state, account);
        }
    }
    let bytes = held() - before;
    assert_eq!(state.accounts.len() as u64, n);
    drop(state);
    bytes as f64 / n as f64
}

/// Heap bytes per accepted award (idempotency key and external reward id), over `n` awards,
/// and over the second half of them only (what each more award costs), with the identity
/// window `window`.
fn per_award(accounts: u64, n: u64, window: WindowPolicy) -> (f64, f64) {
    let policy = Policy::default();
    let mut state = State::default();
    state.idempotency.policy = window;
    let mut half = 0;
    for a in 0..accounts {
        open_bare(&mut state, format!("player-{a:08}"));
    }
    let before = held();
    for i in 0..n {
        if i == n / 2 {
            half = held();
        }
        let log = Regenerated { accounts };
        run(
            &policy,
            &mut state,
            &meta(Some(award_key(i))),
            &award(accounts, i),
            &log,
        );
    }
    let whole = held();
    (
        (whole - before) as f64 / n as f64,
        (whole - half) as f64 / (n - n / 2) as f64,
    )
}

fn award(accounts: u64, i: u64) -> Command {
    Command::Award {
        account: format!("player-{:08}", i % accounts),
        source: AwardRequest::Promotion {
            points: 10,
            promotion_id: "spring".into(),
            external_reward_id: format!("reward-{i:010}"),
        },
    }
}

fn award_key(i: u64) -> String {
    format!("award-{i:010}")
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let n: u64 = std::env::var("TALLY_BENCH_ACCOUNTS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000_000);
    println!("write-side state, {n} accounts in one tenant, account ids of 15 bytes");
    println!("accounts only: {:.0} bytes/account", per_account(n, false));
    println!(
        "accounts opened with idempotency keys: {:.0} bytes/account",
        per_account(n, true)
    );
    let (all, _) = per_award(10_000, n, WindowPolicy::new(u64::MAX / 1_000_000, u64::MAX));
    println!("awards with an idempotency key and an external reward id, every identity in the window: {all:.0} bytes/award (over {n} awards)");
    let window = n / 10;
    let (all, beyond) = per_award(
        10_000,
        n,
        WindowPolicy::new(
            u64::MAX / 1_000_000,
            window * tally::domain::identities::WINDOW_ENTRY_BYTES,
        ),
    );
    println!(
        "the same with a window of {window} identities: {all:.1} bytes/award over {n} awards, {beyond:.1} bytes for each award past the first half"
    );
}
