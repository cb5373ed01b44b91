//! Protects the ledger's rules: `decide` and `evolve` for every command, every rejection,
//! idempotency (keys, scopes, natural identities), expiry by record time, tiers, accrual
//! math, the comp refusals a review must see (recorded, key left free), and that folding
//! the records again gives the same state.

mod support;

use support::{meta, meta_as, Harness, T0};
use tally::domain::event::AwardSource;
use tally::domain::limits::*;
use tally::domain::{accrual, AwardRequest, Command, Decision, Event, HoldStatus, Rejection};

fn open(h: &mut Harness, account: &str) {
    h.ok(
        &meta(&format!("open-{account}")),
        Command::OpenAccount {
            account: account.into(),
        },
    );
}

fn promo(points: u64, reward: &str) -> Command {
    Command::Award {
        account: "p1".into(),
        source: AwardRequest::Promotion {
            points,
            promotion_id: "spring".into(),
            external_reward_id: reward.into(),
        },
    }
}

fn slip(slip_id: &str, minutes: u32) -> Command {
    Command::Award {
        account: "p1".into(),
        source: AwardRequest::RatingSlip {
            slip_id: slip_id.into(),
            game: "blackjack".into(),
            average_bet_cents: 500,
            decisions_per_hour: 100,
            minutes_played: minutes,
            house_edge_bps: 400,
        },
    }
}

fn comp(staff: &str, points: u64, reason: &str) -> Command {
    Command::Award {
        account: "p1".into(),
        source: AwardRequest::Manual {
            staff_id: staff.into(),
            points,
            reason: reason.into(),
            external_reward_id: String::new(),
        },
    }
}

fn reserve(amount: u64, ttl_seconds: u32) -> Command {
    Command::Reserve {
        account: "p1".into(),
        amount,
        ttl_seconds,
    }
}

/// A harness with account p1 holding `points` posted points.
fn funded(points: u64) -> Harness {
    let mut h = Harness::default();
    open(&mut h, "p1");
    if points > 0 {
        h.ok(&meta("fund"), promo(points, "fund"));
    }
    h
}

fn account(h: &Harness) -> (u64, u64, u64, String) {
    let a = &h.state.accounts[&tally::domain::state::AccountKey::new("t1", "p1")];
    (a.posted, a.held, a.lifetime, h.state.tier_name(a.tier).to_string())
}

fn hold_id(records: &[tally::domain::Record]) -> u64 {
    records[0].event.hold_id().expect("a hold event")
}

#[test]
fn accrual_follows_the_theo_formula() {
    // $5 average bet, 100 decisions an hour, one hour, 4% edge: $20 theo.
    assert_eq!(accrual(500, 100, 60, 400, 1000), (2000, 20));
    // Rounded down, never up: 7 minutes of the same play is 233.33 cents of theo.
    assert_eq!(accrual(500, 100, 7, 400, 1000), (233, 2));
    // The rate table scales points: 250 milli-points per theo dollar.
    assert_eq!(accrual(500, 100, 60, 400, 250), (2000, 5));
}

#[test]
fn rating_slip_accrual_records_its_inputs_and_rates() {
    let mut h = funded(0);
    let records = h.ok(&meta("slip-a"), slip("S-1", 60));
    let Event::PointsAwarded(award) = &records[0].event else {
        panic!("an award")
    };
    assert_eq!(award.points, 20);
    let AwardSource::RatingSlip(source) = &award.source else {
        panic!("a slip")
    };
    assert_eq!(
        (
            source.theo_cents,
            source.minutes_played,
            source.rate_table_version.as_str()
        ),
        (2000, 60, "default-1")
    );
    assert_eq!((award.effect.posted_before, award.effect.posted_after), (0, 20));
}

#[test]
fn the_same_slip_accrues_once_under_any_key() {
    let mut h = funded(0);
    let first = h.ok(&meta("slip-a"), slip("S-1", 60));
    // The caller lost the answer and retries with a fresh key: the original is returned.
    let retry = h.run(&meta("slip-b"), slip("S-1", 60)).unwrap();
    assert_eq!(
        retry,
        Decision::Replay {
            first_seq: first[0].seq,
            last_seq: first[0].seq
        }
    );
    // The same slip with other inputs is a conflict naming the field.
    let conflict = h.refused(&meta("slip-c"), slip("S-1", 90));
    assert_eq!(
        conflict,
        Rejection::IdempotencyConflict {
            field: "rating_slip.minutes_played",
            original_sequence: first[0].seq
        }
    );
    assert_eq!(account(&h).0, 20);
}

#[test]
fn idempotency_replays_same_request_and_names_the_first_differing_field() {
    let mut h = funded(100);
    let first = h.ok(&meta("r1"), reserve(30, 60));
    assert_eq!(
        h.run(&meta("r1"), reserve(30, 60)).unwrap(),
        Decision::Replay {
            first_seq: first[0].seq,
            last_seq: first[0].seq
        }
    );
    assert_eq!(
        h.refused(&meta("r1"), reserve(31, 60)),
        Rejection::IdempotencyConflict {
            field: "amount",
            original_sequence: first[0].seq
        }
    );
    assert_eq!(
        h.refused(&meta("r1"), reserve(30, 61)),
        Rejection::IdempotencyConflict {
            field: "ttl_seconds",
            original_sequence: first[0].seq
        }
    );
    assert_eq!(
        h.refused(&meta("r1"), promo(5, "x")),
        Rejection::IdempotencyConflict {
            field: "command",
            original_sequence: first[0].seq
        }
    );
    // The same key in another scope is another operation.
    h.ok(&meta_as("t1", "staff-1", "r1", "checkout"), reserve(30, 60));
    // The same key in another tenant is another operation (and there the account is unknown).
    assert!(matches!(
        h.refused(&meta_as("t2", "staff-1", "r1", ""), reserve(30, 60)),
        Rejection::AccountNotFound { .. }
    ));
    assert_eq!(account(&h).1, 60);
}

#[test]
fn the_existence_check_runs_before_validation() {
    let mut h = funded(100);
    let hold = hold_id(&h.ok(&meta("r1"), reserve(40, 60)));
    let commit = h.ok(
        &meta("c1"),
        Command::Commit {
            hold_id: hold,
            amount: None,
        },
    );
    // Past the deadline and already committed, the retry still gets the original result.
    h.now_us += 3_600_000_000;
    assert_eq!(
        h.run(
            &meta("c1"),
            Command::Commit {
                hold_id: hold,
                amount: None
            }
        )
        .unwrap(),
        Decision::Replay {
            first_seq: commit[0].seq,
            last_seq: commit[0].seq
        }
    );
}

#[test]
fn every_mutating_command_needs_an_idempotency_key() {
    let mut h = funded(0);
    let mut no_key = meta("x");
    no_key.idempotency = None;
    let rejection = h.refused(&no_key, Command::OpenAccount { account: "p2".into() });
    assert!(
        matches!(
            rejection,
            Rejection::InvalidArgument {
                field: "idempotency_key",
                ..
            }
        ),
        "{rejection:?}"
    );
    let rejection = h.refused(&meta(""), Command::OpenAccount { account: "p2".into() });
    assert!(
        matches!(
            rejection,
            Rejection::InvalidArgument {
                field: "idempotency_key",
                ..
            }
        ),
        "{rejection:?}"
    );
}

#[test]
fn opening_is_idempotent_per_tenant() {
    let mut h = Harness::default();
    let first = h.ok(&meta("o1"), Command::OpenAccount { account: "p1".into() });
    assert_eq!(
        h.run(&meta("o2"), Command::OpenAccount { account: "p1".into() })
            .unwrap(),
        Decision::Replay {
            first_seq: first[0].seq,
            last_seq: first[0].seq
        }
    );
    h.ok(
        &meta_as("t2", "staff-1", "o1", ""),
        Command::OpenAccount { account: "p1".into() },
    );
    assert_eq!(h.state.accounts.len(), 2);
}

/// Each bad input and the field its rejection names.
#[test]
fn bad_input_is_refused_naming_the_field() {
    let cases: Vec<(Command, &str)> = vec![
        (Command::OpenAccount { account: "".into() }, "account_id"),
        (
            Command::OpenAccount {
                account: "has space".into(),
            },
            "account_id",
        ),
        (
            Command::OpenAccount {
                account: "x".repeat(MAX_ID_BYTES + 1),
            },
            "account_id",
        ),
        (reserve(0, 60), "amount"),
        (reserve(1, 0), "ttl_seconds"),
        (reserve(1, HOLD_TTL_MAX_SECONDS + 1), "ttl_seconds"),
        (
            Command::Commit {
                hold_id: 3,
                amount: Some(0),
            },
            "amount",
        ),
        (promo(0, "r"), "promotion.points"),
        (promo(MAX_AWARD_POINTS + 1, "r"), "promotion.points"),
        (promo(1, ""), "promotion.external_reward_id"),
        (slip("", 60), "rating_slip.slip_id"),
        (slip("S-9", 0), "rating_slip.minutes_played"),
        (slip("S-9", MAX_MINUTES_PLAYED + 1), "rating_slip.minutes_played"),
        (comp("staff-1", 0, "a good long reason"), "manual.points"),
        (comp("staff-1", 5, "too short"), "manual.reason"),
        (Command::ExpireDue { limit: 0 }, "limit"),
    ];
    for (command, field) in cases {
        let mut h = funded(100);
        if let Command::Commit { .. } = command {
            h.ok(&meta("r"), reserve(10, 60));
        }
        // A pulse takes no key (below); the others need one.
        let mut sent = meta("bad");
        if let Command::ExpireDue { .. } = command {
            sent.idempotency = None;
        }
        let rejection = h.refused(&sent, command.clone());
        assert!(
            matches!(rejection, Rejection::InvalidArgument { field: f, .. } if f == field),
            "{command:?}: expected a rejection of {field}, got {rejection:?}"
        );
        assert!(h.records.len() <= 3, "a refused command appends nothing");
    }
    // The pulses' records carry no request to answer a retry with: a key is refused, not
    // recorded where no fold could read it back.
    for pulse in [Command::ExpireDue { limit: 10 }, Command::RetryDue] {
        let mut h = funded(100);
        let rejection = h.refused(&meta("pulse"), pulse.clone());
        assert!(
            matches!(
                rejection,
                Rejection::InvalidArgument {
                    field: "idempotency_key",
                    ..
                }
            ),
            "{pulse:?} with a key: got {rejection:?}"
        );
    }
}

#[test]
fn the_envelope_fields_are_validated_too() {
    let mut h = funded(0);
    let mut long_actor = meta("a");
    long_actor.actor = "x".repeat(MAX_ID_BYTES + 1);
    assert!(matches!(
        h.refused(&long_actor, promo(1, "r")),
        Rejection::InvalidArgument { field: "actor", .. }
    ));
    let mut bad_tenant = meta("b");
    bad_tenant.tenant = "t 1".into();
    assert!(matches!(
        h.refused(&bad_tenant, promo(1, "r")),
        Rejection::InvalidArgument { field: "tenant", .. }
    ));
    let mut control = meta("c");
    control.correlation_id = "line\nbreak".into();
    assert!(matches!(
        h.refused(&control, promo(1, "r")),
        Rejection::InvalidArgument {
            field: "correlation_id",
            ..
        }
    ));
}

#[test]
fn points_go_only_to_opened_accounts() {
    let mut h = Harness::default();
    assert_eq!(
        h.refused(&meta("a"), promo(5, "r")),
        Rejection::AccountNotFound { account: "p1".into() }
    );
    assert_eq!(
        h.refused(&meta("b"), reserve(5, 60)),
        Rejection::AccountNotFound { account: "p1".into() }
    );
    assert!(h.records.is_empty());
}

#[test]
fn reserve_needs_available_points_and_counts_holds() {
    let mut h = funded(100);
    h.ok(&meta("r1"), reserve(70, 60));
    assert_eq!(
        h.refused(&meta("r2"), reserve(31, 60)),
        Rejection::InsufficientPoints {
            available: 30,
            requested: 31
        }
    );
    let records = h.ok(&meta("r3"), reserve(30, 60));
    assert_eq!(account(&h), (100, 100, 100, "Member".into()));
    let Event::HoldReserved(hold) = &records[0].event else {
        panic!()
    };
    assert_eq!((hold.hold_id, hold.expires_at_us), (records[0].seq, T0 + 60_000_000));
}

#[test]
fn commit_full_or_partial_releases_the_rest() {
    let mut h = funded(100);
    let hold = hold_id(&h.ok(&meta("r1"), reserve(40, 60)));
    let records = h.ok(
        &meta("c1"),
        Command::Commit {
            hold_id: hold,
            amount: Some(25),
        },
    );
    let Event::HoldCommitted(c) = &records[0].event else {
        panic!()
    };
    assert_eq!((c.committed, c.released), (25, 15));
    assert_eq!(account(&h), (75, 0, 100, "Member".into()));
    let hold = hold_id(&h.ok(&meta("r2"), reserve(75, 60)));
    h.ok(
        &meta("c2"),
        Command::Commit {
            hold_id: hold,
            amount: None,
        },
    );
    assert_eq!(account(&h), (0, 0, 100, "Member".into()));
}

#[test]
fn commit_never_takes_more_than_the_hold() {
    let mut h = funded(100);
    let hold = hold_id(&h.ok(&meta("r1"), reserve(40, 60)));
    assert_eq!(
        h.refused(
            &meta("c1"),
            Command::Commit {
                hold_id: hold,
                amount: Some(41)
            }
        ),
        Rejection::CommitExceedsHold {
            hold_id: hold,
            held: 40,
            requested: 41
        }
    );
}

#[test]
fn a_hold_resolves_exactly_once() {
    let mut h = funded(100);
    let hold = hold_id(&h.ok(&meta("r1"), reserve(40, 60)));
    h.ok(&meta("rel"), Command::Release { hold_id: hold });
    assert_eq!(account(&h).1, 0);
    for (key, command) in [
        (
            "c",
            Command::Commit {
                hold_id: hold,
                amount: None,
            },
        ),
        ("r", Command::Release { hold_id: hold }),
    ] {
        assert_eq!(
            h.refused(&meta(key), command),
            Rejection::HoldAlreadyResolved {
                hold_id: hold,
                status: HoldStatus::Released
            }
        );
    }
}

#[test]
fn expiry_is_decided_by_record_time_before_the_sweeper_runs() {
    let mut h = funded(100);
    let hold = hold_id(&h.ok(&meta("r1"), reserve(40, 10)));
    h.now_us = T0 + 9_999_999;
    h.ok(
        &meta("c0"),
        Command::Commit {
            hold_id: hold,
            amount: Some(1),
        },
    );
    let hold = hold_id(&h.ok(&meta("r2"), reserve(40, 10)));
    h.now_us += 10_000_000; // exactly expires_at: too late
    let expires_at_us = h.now_us;
    assert_eq!(
        h.refused(
            &meta("c1"),
            Command::Commit {
                hold_id: hold,
                amount: None
            }
        ),
        Rejection::HoldExpired {
            hold_id: hold,
            expires_at_us
        }
    );
    assert_eq!(
        h.refused(&meta("l1"), Command::Release { hold_id: hold }),
        Rejection::HoldExpired {
            hold_id: hold,
            expires_at_us
        }
    );
    assert_eq!(account(&h).1, 40, "the hold still counts until the pulse expires it");
}

#[test]
fn the_expiry_pulse_expires_due_holds_in_deadline_order() {
    let mut h = funded(100);
    let late = hold_id(&h.ok(&meta("r1"), reserve(10, 100)));
    let early = hold_id(&h.ok(&meta("r2"), reserve(20, 50)));
    let other = hold_id(&h.ok(&meta("r3"), reserve(30, 50)));
    let mut system = meta("");
    system.idempotency = None;
    assert_eq!(
        h.run(&system, Command::ExpireDue { limit: 10 }).unwrap(),
        Decision::Nothing
    );
    h.now_us = T0 + 60_000_000;
    let records = h.ok(&system, Command::ExpireDue { limit: 10 });
    let expired: Vec<u64> = records.iter().map(|r| r.event.hold_id().unwrap()).collect();
    assert_eq!(expired, vec![early, other]);
    // Two holds of one account in one pulse: the second starts where the first ended.
    let effects: Vec<(u64, u64)> = records
        .iter()
        .map(|r| {
            (
                r.event.effect().unwrap().held_before,
                r.event.effect().unwrap().held_after,
            )
        })
        .collect();
    assert_eq!(effects, vec![(60, 40), (40, 10)]);
    assert_eq!(h.state.holds[&late].status, HoldStatus::Active);
    h.now_us = T0 + 100_000_000;
    h.ok(&system, Command::ExpireDue { limit: 10 });
    assert_eq!(account(&h), (100, 0, 100, "Member".into()));
}

#[test]
fn accounts_have_a_bounded_number_of_active_holds() {
    let mut h = funded(2000);
    for n in 0..MAX_ACTIVE_HOLDS_PER_ACCOUNT {
        h.ok(&meta(&format!("r{n}")), reserve(1, 60));
    }
    assert_eq!(
        h.refused(&meta("one-more"), reserve(1, 60)),
        Rejection::TooManyHolds {
            account: "p1".into(),
            limit: MAX_ACTIVE_HOLDS_PER_ACCOUNT
        }
    );
}

#[test]
fn balances_never_overflow() {
    let mut h = funded(10);
    let key = tally::domain::state::AccountKey::new("t1", "p1");
    h.state.accounts.get_mut(&key).unwrap().posted = u64::MAX - 5;
    assert_eq!(
        h.refused(&meta("big"), promo(10, "big")),
        Rejection::BalanceOverflow { account: "p1".into() }
    );
}

#[test]
fn tiers_follow_lifetime_points_and_change_in_their_own_event() {
    let mut h = funded(9_999);
    let records = h.ok(&meta("a"), promo(1, "a"));
    assert_eq!(records.len(), 2);
    let Event::TierChanged(change) = &records[1].event else {
        panic!("{:?}", records[1].event)
    };
    assert_eq!((change.from.as_str(), change.to.as_str()), ("Member", "Silver"));
    let award = records[0].event.effect().unwrap();
    assert_eq!(
        (award.tier_before.as_str(), award.tier_after.as_str()),
        ("Member", "Member")
    );
    // Spending does not lower the tier: it follows lifetime points.
    let hold = hold_id(&h.ok(&meta("r"), reserve(10_000, 60)));
    h.ok(
        &meta("c"),
        Command::Commit {
            hold_id: hold,
            amount: None,
        },
    );
    assert_eq!(account(&h), (0, 0, 10_000, "Silver".into()));
}

#[test]
fn comps_follow_the_manual_reward_rules() {
    let mut h = funded(0);
    let reason = "table game goodwill";
    assert_eq!(
        h.refused(&meta("c"), comp("staff-1", MANUAL_REWARD_MAX_POINTS + 1, reason)),
        Rejection::ManualRewardTooLarge {
            points: MANUAL_REWARD_MAX_POINTS + 1,
            limit: MANUAL_REWARD_MAX_POINTS
        }
    );
    assert!(matches!(
        h.refused(&meta("c"), comp("staff-2", 10, reason)),
        Rejection::PermissionDenied(_)
    ));
    assert!(matches!(
        h.refused(&meta_as("t1", "anonymous", "c", ""), comp("anonymous", 10, reason)),
        Rejection::Unauthenticated(_)
    ));
    // The same comp twice in a day is one comp, whatever the key.
    let first = h.ok(&meta("c1"), comp("staff-1", 10, reason));
    assert_eq!(
        h.run(&meta("c2"), comp("staff-1", 10, reason)).unwrap(),
        Decision::Replay {
            first_seq: first[0].seq,
            last_seq: first[0].seq
        }
    );
    // The next UTC day it is a new comp.
    h.now_us += 86_400_000_000;
    h.ok(&meta("c3"), comp("staff-1", 10, reason));
    assert_eq!(account(&h).0, 20);
}

#[test]
fn comps_are_rate_limited_per_staff_member_in_log_time() {
    let mut h = funded(0);
    for n in 0..MANUAL_REWARDS_PER_STAFF_PER_MINUTE {
        h.ok(
            &meta(&format!("c{n}")),
            comp("staff-1", 1 + n as u64, "regular comp reason"),
        );
        h.now_us += 1_000_000;
    }
    assert_eq!(
        h.refused(&meta("c-over"), comp("staff-1", 99, "regular comp reason")),
        Rejection::ManualRewardRateLimited {
            staff_id: "staff-1".into(),
            limit: MANUAL_REWARDS_PER_STAFF_PER_MINUTE
        }
    );
    // Another staff member is not limited by staff-1's comps.
    h.ok(
        &meta_as("t1", "staff-2", "s2", ""),
        comp("staff-2", 5, "regular comp reason"),
    );
    // A minute after the first comp, staff-1 may comp again.
    h.now_us = T0 + MANUAL_REWARD_WINDOW_US + 1;
    h.ok(&meta("c-later"), comp("staff-1", 99, "regular comp reason"));
}

/// Refusals a comp review must see (over the maximum, over the rate, another staff
/// member's name) are recorded, with the actor and the reason, without binding the
/// caller's key; malformed comps and unidentified callers are refused without a record.
#[test]
fn refused_comps_that_matter_are_recorded_and_leave_the_key_free() {
    let mut h = funded(0);
    let recorded = |h: &Harness, from: usize| -> Vec<(String, String, String)> {
        h.records[from..]
            .iter()
            .filter_map(|r| match &r.event {
                Event::CompRefused(c) => {
                    assert!(r.envelope.idempotency_key.is_empty(), "a refusal binds no key");
                    Some((r.envelope.actor.clone(), c.refusal.clone(), c.staff_id.clone()))
                }
                _ => None,
            })
            .collect()
    };
    let start = h.records.len();
    h.refused(
        &meta("big"),
        comp("staff-1", MANUAL_REWARD_MAX_POINTS + 1, "table game goodwill"),
    );
    h.refused(&meta("spoof"), comp("staff-2", 10, "table game goodwill"));
    h.refused(&meta("short"), comp("staff-1", 10, "nice"));
    h.refused(
        &meta_as("t1", "anonymous", "anon", ""),
        comp("anonymous", 10, "table game goodwill"),
    );
    assert_eq!(
        recorded(&h, start),
        [
            (
                "staff-1".to_string(),
                "manual_reward_too_large".to_string(),
                "staff-1".to_string()
            ),
            (
                "staff-1".to_string(),
                "permission_denied".to_string(),
                "staff-2".to_string()
            ),
        ]
    );
    // The 11th comp in a minute is refused and recorded; the same key works a minute later.
    for n in 0..MANUAL_REWARDS_PER_STAFF_PER_MINUTE {
        h.ok(
            &meta(&format!("c{n}")),
            comp("staff-1", 1 + n as u64, "regular comp reason"),
        );
    }
    let start = h.records.len();
    h.refused(&meta("c-over"), comp("staff-1", 99, "regular comp reason"));
    assert_eq!(recorded(&h, start).len(), 1);
    assert_eq!(h.records[start].event.kind().name(), "comp.refused");
    h.now_us += MANUAL_REWARD_WINDOW_US + 1;
    let later = h.ok(&meta("c-over"), comp("staff-1", 99, "regular comp reason"));
    assert!(matches!(later[0].event, Event::PointsAwarded(_)), "the key stayed free");
    // A caller whose grants lack loyalty:award (a member, a service) is refused, and that
    // is recorded too; the same caller with the permission is not.
    use tally::domain::access::{Permissions, Role};
    let member = tally::domain::CommandMeta {
        grants: Some(Permissions::of_roles(&[Role::Member])),
        ..meta_as("t1", "staff-9", "c-member", "")
    };
    let start = h.records.len();
    assert!(matches!(
        h.refused(&member, comp("staff-9", 5, "regular comp reason")),
        Rejection::PermissionDenied(_)
    ));
    assert_eq!(h.records[start].event.kind().name(), "comp.refused");
    let staff = tally::domain::CommandMeta {
        grants: Some(Permissions::of_roles(&[Role::Staff])),
        ..member
    };
    h.ok(&staff, comp("staff-9", 5, "regular comp reason"));
    // Refusals change no balance and fold like everything else.
    assert_eq!(h.refold(), h.state);
}

#[test]
fn holds_of_another_tenant_are_not_found() {
    let mut h = funded(100);
    let hold = hold_id(&h.ok(&meta("r"), reserve(10, 60)));
    let other = meta_as("t2", "staff-1", "c", "");
    assert_eq!(
        h.refused(
            &other,
            Command::Commit {
                hold_id: hold,
                amount: None
            }
        ),
        Rejection::HoldNotFound { hold_id: hold }
    );
    assert_eq!(
        h.refused(&meta("x"), Command::Release { hold_id: 999 }),
        Rejection::HoldNotFound { hold_id: 999 }
    );
}

/// The harness decides and folds as the sequencer does, with each command's identity worked
/// out beforehand; `refold` folds the records alone: the two states must be one, for every
/// kind of identity (keys, every award source's natural identity, a comp's daily one, a
/// command of two events, a retry).
#[test]
fn folding_the_records_again_gives_the_same_state() {
    let mut h = funded(500);
    assert_eq!(
        h.ok(&meta("p1"), promo(10_000, "R-9")).len(),
        2,
        "an award and its tier change"
    );
    let manual = Command::Award {
        account: "p1".into(),
        source: AwardRequest::Manual {
            staff_id: "staff-1".into(),
            points: 20,
            reason: "service recovery after a long wait".into(),
            external_reward_id: "M-1".into(),
        },
    };
    h.ok(&meta("m0"), manual.clone());
    assert!(matches!(h.run(&meta("m0"), manual), Ok(Decision::Replay { .. })));
    let hold = hold_id(&h.ok(&meta("r1"), reserve(40, 60)));
    h.ok(
        &meta("c1"),
        Command::Commit {
            hold_id: hold,
            amount: Some(10),
        },
    );
    h.ok(&meta("s1"), slip("S-1", 45));
    h.ok(&meta("m1"), comp("staff-1", 15, "birthday goodwill comp"));
    h.ok(&meta("r2"), reserve(5, 1));
    h.now_us += 2_000_000;
    let mut system = meta("");
    system.idempotency = None;
    h.ok(&system, Command::ExpireDue { limit: 5 });
    assert_eq!(h.refold(), h.state);
}

#[test]
#[should_panic(expected = "recorded balances before differ from the state")]
fn evolve_refuses_an_event_whose_before_does_not_match() {
    let mut h = funded(100);
    let mut records = h.ok(&meta("r"), reserve(10, 60));
    let mut state = h.refold();
    state.head_seq -= 1;
    if let Event::HoldReserved(r) = &mut records[0].event {
        r.effect.held_before = 5;
        r.effect.held_after = 15;
    }
    // Undo the reservation in the copy, then fold the tampered record.
    let key = tally::domain::state::AccountKey::new("t1", "p1");
    state.accounts.get_mut(&key).unwrap().held = 0;
    state.holds.clear();
    state.expiry.clear();
    tally::domain::evolve(&mut state, &records[0]);
}

/// The idempotency index keeps a print of each request, not the request: a retry must
/// still be told from a conflict, and a conflict must still name its first differing field,
/// for every shape of request.
#[test]
fn request_prints_name_the_first_differing_field() {
    let slip = |minutes: u32, game: &str| Command::Award {
        account: "p1".into(),
        source: AwardRequest::RatingSlip {
            slip_id: "s1".into(),
            game: game.into(),
            average_bet_cents: 2500,
            decisions_per_hour: 70,
            minutes_played: minutes,
            house_edge_bps: 200,
        },
    };
    let promotion = |account: &str, points: u64, external: &str| Command::Award {
        account: account.into(),
        source: AwardRequest::Promotion {
            points,
            promotion_id: "spring".into(),
            external_reward_id: external.into(),
        },
    };
    let commit = |amount: Option<u64>| Command::Commit { hold_id: 7, amount };
    let reserve = |amount: u64, ttl_seconds: u32| Command::Reserve {
        account: "p1".into(),
        amount,
        ttl_seconds,
    };
    let cases: Vec<(Command, Command, Option<&str>)> = vec![
        (slip(185, "bj"), slip(185, "bj"), None),
        (slip(185, "bj"), slip(186, "bj"), Some("rating_slip.minutes_played")),
        (slip(185, "bj"), slip(185, "baccarat"), Some("rating_slip.game")),
        (promotion("p1", 5, "r1"), promotion("p1", 5, "r1"), None),
        (promotion("p1", 5, "r1"), promotion("p2", 5, "r1"), Some("account_id")),
        (
            promotion("p1", 5, "r1"),
            promotion("p1", 6, "r1"),
            Some("promotion.points"),
        ),
        (
            promotion("p1", 5, "r1"),
            promotion("p1", 5, "r2"),
            Some("promotion.external_reward_id"),
        ),
        (promotion("p1", 5, "r1"), slip(185, "bj"), Some("source")),
        (promotion("p2", 5, "r1"), slip(185, "bj"), Some("account_id")),
        (commit(None), commit(None), None),
        (commit(None), commit(Some(u64::MAX)), Some("amount")),
        (commit(Some(3)), commit(Some(4)), Some("amount")),
        (reserve(10, 300), reserve(10, 301), Some("ttl_seconds")),
        (reserve(10, 300), commit(None), Some("command")),
        (
            Command::OpenAccount { account: "p1".into() },
            Command::OpenAccount { account: "p1".into() },
            None,
        ),
    ];
    for (original, retry, expected) in cases {
        assert_eq!(
            original.print().first_difference(&retry.print()),
            expected,
            "{original:?} then {retry:?}"
        );
    }
}

/// The request prints the idempotency index keeps are stable across builds: they hash the
/// settings' persisted encoding, never a `Debug` text that a new field or a rename changes.
/// A retry after an upgrade must still be a retry. These values are pinned: a change here is
/// a change of the write-state snapshot format and of every retry's answer.
#[test]
fn request_prints_of_settings_are_pinned_across_builds() {
    use tally::domain::delivery::{AckMode, EndpointConfig, RetrySelection, Semantics};
    let register = Command::RegisterEndpoint {
        config: EndpointConfig {
            url: "https://crm.example.com/tally".into(),
            kinds: vec!["points.awarded".into()],
            semantics: Semantics::AtLeastOnce,
            max_attempts: 8,
            backoff_initial_ms: 1000,
            backoff_max_ms: 60_000,
            ack_mode: AckMode::Status2xx,
            ack_timeout_seconds: 30,
            ordered: true,
            request_timeout_ms: 5000,
        },
        secret_kid: "k1".into(),
        secret_nonce: "nonce".into(),
    };
    let retry = Command::RetryDeliveries {
        selection: RetrySelection::One {
            endpoint_id: 3,
            event_seq: 41,
        },
        reason: "receiver back".into(),
    };
    assert_eq!(
        (register.print().fields[1], retry.print().fields[0]),
        (3_973_586_524_644_173_952, 3_276_939_839_787_373_716),
        "pinned digests of the encoded settings"
    );
}

/// Each kind's family is named by kind, not by a range of codes; for the kinds that exist the
/// answers are the ones the ranges gave (ledger: codes 1–8, credentials 21–25, deliverable
/// 1–20), so history, as-of reads and deliveries see what they saw.
#[test]
fn event_kind_families_keep_every_existing_kind_where_it_was() {
    use tally::domain::delivery::deliverable;
    use tally::domain::EventKind;
    for kind in EventKind::ALL {
        let code = kind.code();
        assert_eq!(kind.is_ledger(), code <= 8, "{kind:?}");
        assert_eq!(kind.is_credential(), (21..=25).contains(&code), "{kind:?}");
        assert_eq!(deliverable(kind), code <= 20, "{kind:?}");
    }
}
