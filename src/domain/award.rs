//! Awards: gameplay accrual from rating slips, manual staff rewards (comps), promotions.

use super::command::{AwardRequest, Command};
use super::event::{AwardSource, CompRefused, Event, ManualSource, PointsAwarded, PromotionSource, RatingSlipSource};
use super::fingerprint::natural_key;
use super::limits::*;
use super::rejection::Rejection;
use super::rules::{
    account, check_natural, in_range, tier_change, validate_id, validate_text, Balances, Ctx, Decision, Emitted,
};

pub(super) fn award(ctx: &Ctx<'_>, account_id: &str, source: &AwardRequest) -> Result<Decision, Rejection> {
    validate_id("account_id", account_id, MAX_ID_BYTES)?;
    let (points, source_event) = validate_source(ctx, source)?;
    let natural = natural_key(&ctx.meta.tenant, account_id, source, ctx.now_us);
    let command = || Command::Award {
        account: account_id.to_string(),
        source: source.clone(),
    };
    if let Some(replay) = check_natural(ctx, &natural, ctx.identity.and_then(|i| i.natural), command)? {
        return Ok(replay);
    }
    let current = account(ctx, account_id)?;
    if let AwardRequest::Manual { staff_id, .. } = source {
        check_comp_rate(ctx, staff_id)?;
    }
    let overflow = || Rejection::BalanceOverflow {
        account: account_id.to_string(),
    };
    let before = Balances::of(ctx.state, current);
    let after = Balances {
        posted: before.posted.checked_add(points).ok_or_else(overflow)?,
        lifetime: before.lifetime.checked_add(points).ok_or_else(overflow)?,
        ..before.clone()
    };
    let mut events = vec![emit(
        ctx,
        account_id,
        Event::PointsAwarded(PointsAwarded {
            points,
            source: source_event,
            effect: before.effect_to(&after),
        }),
    )];
    if let Some(change) = tier_change(ctx.policy, &after) {
        events.push(emit(ctx, account_id, change));
    }
    Ok(Decision::Append(events))
}

fn emit(ctx: &Ctx<'_>, account: &str, event: Event) -> Emitted {
    Emitted {
        tenant: ctx.meta.tenant.clone(),
        account: account.to_string(),
        event,
    }
}

/// Checks the source's fields and works out the points and the recorded source.
fn validate_source(ctx: &Ctx<'_>, source: &AwardRequest) -> Result<(u64, AwardSource), Rejection> {
    match source {
        AwardRequest::RatingSlip {
            slip_id,
            game,
            average_bet_cents,
            decisions_per_hour,
            minutes_played,
            house_edge_bps,
        } => {
            validate_id("rating_slip.slip_id", slip_id, MAX_ID_BYTES)?;
            validate_text("rating_slip.game", game, MAX_ID_BYTES)?;
            slip_ranges(
                [
                    "rating_slip.average_bet_cents",
                    "rating_slip.decisions_per_hour",
                    "rating_slip.minutes_played",
                    "rating_slip.house_edge_bps",
                ],
                *average_bet_cents,
                *decisions_per_hour,
                *minutes_played,
                *house_edge_bps,
            )?;
            let rates = &ctx.policy.rate_table;
            let (theo_cents, points) = accrual(
                *average_bet_cents,
                *decisions_per_hour,
                *minutes_played,
                *house_edge_bps,
                rates.points_per_theo_dollar_milli,
            );
            Ok((
                points,
                AwardSource::RatingSlip(RatingSlipSource {
                    slip_id: slip_id.clone(),
                    game: game.clone(),
                    average_bet_cents: *average_bet_cents,
                    decisions_per_hour: *decisions_per_hour,
                    minutes_played: *minutes_played,
                    house_edge_bps: *house_edge_bps,
                    theo_cents,
                    rate_table_version: rates.version.clone(),
                    points_per_theo_dollar_milli: rates.points_per_theo_dollar_milli,
                }),
            ))
        }
        AwardRequest::Manual {
            staff_id,
            points,
            reason,
            external_reward_id,
        } => {
            validate_staff(ctx, staff_id)?;
            validate_text("manual.reason", reason, REASON_MAX_CHARS)?;
            if reason.trim().chars().count() < MANUAL_REWARD_REASON_MIN_CHARS {
                return Err(Rejection::invalid(
                    "manual.reason",
                    format!("must be at least {MANUAL_REWARD_REASON_MIN_CHARS} characters"),
                ));
            }
            if !external_reward_id.is_empty() {
                validate_id("manual.external_reward_id", external_reward_id, MAX_ID_BYTES)?;
            }
            if *points == 0 {
                return Err(Rejection::invalid("manual.points", "must be at least 1"));
            }
            if *points > MANUAL_REWARD_MAX_POINTS {
                return Err(Rejection::ManualRewardTooLarge {
                    points: *points,
                    limit: MANUAL_REWARD_MAX_POINTS,
                });
            }
            Ok((
                *points,
                AwardSource::Manual(ManualSource {
                    staff_id: staff_id.clone(),
                    reason: reason.clone(),
                    external_reward_id: external_reward_id.clone(),
                }),
            ))
        }
        AwardRequest::Promotion {
            points,
            promotion_id,
            external_reward_id,
        } => {
            validate_id("promotion.promotion_id", promotion_id, MAX_ID_BYTES)?;
            validate_id("promotion.external_reward_id", external_reward_id, MAX_ID_BYTES)?;
            in_range("promotion.points", *points, 1, MAX_AWARD_POINTS)?;
            Ok((
                *points,
                AwardSource::Promotion(PromotionSource {
                    promotion_id: promotion_id.clone(),
                    external_reward_id: external_reward_id.clone(),
                }),
            ))
        }
    }
}

/// A refused comp that a comp review must see (over the maximum, over the rate, not the
/// caller's to give) is recorded; any other refusal is only answered.
pub(super) fn refusal(
    ctx: &Ctx<'_>,
    account_id: &str,
    source: &AwardRequest,
    rejection: Rejection,
) -> Result<Decision, Rejection> {
    let AwardRequest::Manual {
        staff_id,
        points,
        reason,
        external_reward_id,
    } = source
    else {
        return Err(rejection);
    };
    let matters = matches!(
        rejection,
        Rejection::ManualRewardTooLarge { .. }
            | Rejection::ManualRewardRateLimited { .. }
            | Rejection::PermissionDenied(_)
    );
    // The record names the account, the staff member and the reward as given: each must be
    // an id the log can hold (a refusal is no reason to write a megabyte into the log), or
    // the refusal is only answered.
    let holdable = |field, id: &str| id.is_empty() || validate_id(field, id, MAX_ID_BYTES).is_ok();
    if !matters
        || validate_id("account_id", account_id, MAX_ID_BYTES).is_err()
        || !holdable("manual.staff_id", staff_id)
        || !holdable("manual.external_reward_id", external_reward_id)
    {
        return Err(rejection);
    }
    let event = Event::CompRefused(CompRefused {
        staff_id: staff_id.clone(),
        points: *points,
        reason: reason.chars().take(REASON_MAX_CHARS).collect(),
        external_reward_id: external_reward_id.clone(),
        refusal: rejection.name().to_string(),
        message: rejection.to_string(),
    });
    Ok(Decision::Refuse {
        events: vec![emit(ctx, account_id, event)],
        rejection,
    })
}

/// The staff id of a comp is the authenticated caller, never another name, and the caller
/// may give comps (`loyalty:award`, when the command came with the caller's grants).
fn validate_staff(ctx: &Ctx<'_>, staff_id: &str) -> Result<(), Rejection> {
    use super::access::Permission::LoyaltyAward;
    if ctx.meta.grants.is_some_and(|grants| !grants.has(LoyaltyAward)) {
        return Err(Rejection::PermissionDenied(format!(
            "{} may not give comps: needs permission {}",
            ctx.meta.actor,
            LoyaltyAward.name()
        )));
    }
    if staff_id.is_empty() || ctx.meta.actor.is_empty() || ctx.meta.actor == ANONYMOUS_ACTOR {
        return Err(Rejection::Unauthenticated(
            "a manual reward needs an identified staff caller".to_string(),
        ));
    }
    if staff_id != ctx.meta.actor {
        return Err(Rejection::PermissionDenied(format!(
            "manual reward names staff {} but the caller is {:?}",
            super::quote(staff_id),
            ctx.meta.actor
        )));
    }
    validate_id("manual.staff_id", staff_id, MAX_ID_BYTES)
}

/// The actor of a caller that did not identify itself.
pub const ANONYMOUS_ACTOR: &str = "anonymous";

/// The ranges of a rating slip's inputs, each error naming its field as given.
pub(super) fn slip_ranges(
    fields: [&'static str; 4],
    average_bet_cents: u64,
    decisions_per_hour: u32,
    minutes_played: u32,
    house_edge_bps: u32,
) -> Result<(), Rejection> {
    in_range(fields[0], average_bet_cents, 1, MAX_AVERAGE_BET_CENTS)?;
    in_range(fields[1], decisions_per_hour.into(), 1, MAX_DECISIONS_PER_HOUR.into())?;
    in_range(fields[2], minutes_played.into(), 1, MAX_MINUTES_PLAYED.into())?;
    in_range(fields[3], house_edge_bps.into(), 1, MAX_HOUSE_EDGE_BPS.into())
}

fn check_comp_rate(ctx: &Ctx<'_>, staff_id: &str) -> Result<(), Rejection> {
    let key = (ctx.meta.tenant.clone(), staff_id.to_string());
    let window_start = ctx.now_us.saturating_sub(MANUAL_REWARD_WINDOW_US);
    let recent = ctx
        .state
        .comps
        .get(&key)
        .map_or(0, |times| times.iter().filter(|&&t| t > window_start).count());
    if recent >= MANUAL_REWARDS_PER_STAFF_PER_MINUTE {
        return Err(Rejection::ManualRewardRateLimited {
            staff_id: staff_id.to_string(),
            limit: MANUAL_REWARDS_PER_STAFF_PER_MINUTE,
        });
    }
    Ok(())
}

/// Theo in cents and the points it earns, both rounded down:
/// theo = bet × decisions/hour × (minutes / 60) × (edge bps / 10,000);
/// points = theo dollars × (rate milli / 1000).
pub fn accrual(
    average_bet_cents: u64,
    decisions_per_hour: u32,
    minutes_played: u32,
    house_edge_bps: u32,
    points_per_theo_dollar_milli: u64,
) -> (u64, u64) {
    let theo = u128::from(average_bet_cents)
        * u128::from(decisions_per_hour)
        * u128::from(minutes_played)
        * u128::from(house_edge_bps)
        / (60 * 10_000);
    let points = theo * u128::from(points_per_theo_dollar_milli) / (100 * 1000);
    // The input bounds keep theo below 2^64: 1e8 × 1e4 × 1440 × 1e4 / 6e5 = 2.4e13.
    let theo = u64::try_from(theo).expect("bounded inputs keep theo within u64");
    (theo, u64::try_from(points).unwrap_or(u64::MAX))
}
