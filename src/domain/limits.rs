//! Every limit of the ledger, each with the reason for its number.

/// Largest single award. Points are `u64`, so overflow is far away; an award this large is
/// a bug upstream (a rating slip with a misplaced decimal), not a real comp.
pub const MAX_AWARD_POINTS: u64 = 1_000_000_000;

/// Largest manual staff reward. Comps are regulated (25 CFR 543.13 requires authorization
/// limits); larger goodwill goes through a promotion with its own approval.
pub const MANUAL_REWARD_MAX_POINTS: u64 = 10_000;

/// A comp's reason must say something a reviewer can read ("goodwill" alone is 8).
pub const MANUAL_REWARD_REASON_MIN_CHARS: usize = 10;

/// Reasons are notes, not documents; this keeps a record small.
pub const REASON_MAX_CHARS: usize = 500;

/// Comps per staff member per rolling minute of log time: a fast floor supervisor comps a
/// few tables a minute; more than ten is a script or a stolen session.
pub const MANUAL_REWARDS_PER_STAFF_PER_MINUTE: usize = 10;

/// The rolling window of the comp rate limit, in µs.
pub const MANUAL_REWARD_WINDOW_US: u64 = 60_000_000;

/// Hold TTL when the request gives none: long enough for a checkout, short enough that
/// abandoned carts do not lock points for long.
pub const HOLD_TTL_DEFAULT_SECONDS: u32 = 300;

/// Shortest hold: anything shorter expires before a commit can travel back.
pub const HOLD_TTL_MIN_SECONDS: u32 = 1;

/// Longest hold: an hour covers any interactive redemption; longer holds are pending
/// transactions and belong to another flow.
pub const HOLD_TTL_MAX_SECONDS: u32 = 3600;

/// Active holds per account: a member redeems at a few terminals at once, never a thousand;
/// the bound keeps a runaway client from filling memory through one account.
pub const MAX_ACTIVE_HOLDS_PER_ACCOUNT: u32 = 1000;

/// Length of account ids, idempotency keys and scopes, slip and reward ids, in bytes:
/// room for a UUID with a prefix, small enough to keep index entries short.
pub const MAX_ID_BYTES: usize = 128;

/// Length of a tenant id, in bytes.
pub const MAX_TENANT_BYTES: usize = 64;

/// Length of correlation and causation ids, in bytes (W3C trace ids are 55 characters).
pub const MAX_TRACE_ID_BYTES: usize = 128;

/// Average bet on a rating slip, in cents: $1,000,000 is beyond any table limit.
pub const MAX_AVERAGE_BET_CENTS: u64 = 100_000_000;

/// Decisions per hour: the fastest electronic games stay well under this.
pub const MAX_DECISIONS_PER_HOUR: u32 = 10_000;

/// Minutes on one slip: a slip covers one session, and sessions are closed daily.
pub const MAX_MINUTES_PLAYED: u32 = 1_440;

/// House edge in basis points: 100% is the mathematical ceiling.
pub const MAX_HOUSE_EDGE_BPS: u32 = 10_000;

/// Holds expired by one sweeper pulse: bounds the size of the batch the pulse adds to the
/// log, so a backlog of expiries never stalls other commands for long.
pub const EXPIRE_PULSE_MAX_HOLDS: u32 = 1024;

/// Longest source name of an external event. With [`MAX_EXTERNAL_ID_BYTES`], the source's
/// length and two `:` it makes the external reward id of an ingested award
/// (`len:source:external_id`) fit [`MAX_ID_BYTES`].
pub const MAX_SOURCE_BYTES: usize = 60;

/// Longest external event id: a UUID or a partner's ticket number fits with room to spare.
pub const MAX_EXTERNAL_ID_BYTES: usize = 64;

/// Letters one re-drive applies at most: each is a command, and they all go into one group
/// commit (`MAX_GROUP_COMMIT_COMMANDS`), decided in order.
pub const MAX_REDRIVE_LETTERS: usize = 8191;

/// Wrong tokens before a link locks: a 256-bit token cannot be guessed, so a handful of
/// failures is a typo or an attack, and an attacker gets no more tries.
pub const MAX_LINK_VERIFY_FAILURES: u32 = 5;

/// Time to verify a link when the request names none: a deep link sent by e-mail or SMS is
/// usually opened within the day.
pub const LINK_TTL_DEFAULT_SECONDS: u32 = 86_400;

/// Longest time to verify a link: a week, after which a forgotten deep link stops working.
pub const LINK_TTL_MAX_SECONDS: u32 = 7 * 86_400;

/// Links expired per expiry pulse, as many as holds.
pub const EXPIRE_PULSE_MAX_LINKS: u32 = EXPIRE_PULSE_MAX_HOLDS;

/// Shortest reason for discarding a dead letter: the discard is audited, and "x" explains
/// nothing to the auditor who reads it.
pub const DISCARD_REASON_MIN_CHARS: usize = 10;

/// An SSO session's life when the request names none: a working shift, after which the
/// tenant's service asserts the user again (or refreshes the session).
pub const SESSION_TTL_DEFAULT_SECONDS: u32 = 3_600;

/// Longest life of a session or one refresh of it: a day. A stolen token is worth at most
/// that, even if nobody logs it out.
pub const SESSION_TTL_MAX_SECONDS: u32 = 86_400;

/// Longest API key name in bytes: a label for people reading `tally keys list`.
pub const API_KEY_NAME_MAX_CHARS: usize = 100;

/// Longest endpoint URL: what common servers and proxies accept in a request line.
pub const MAX_URL_BYTES: usize = 2048;

/// Most attempts an endpoint may ask for per round: with backoff capped at the maximum, 20
/// attempts span hours, after which an operator should look.
pub const DELIVERY_MAX_ATTEMPTS_MAX: u32 = 20;

/// Longest backoff between two attempts an endpoint may ask for: an hour.
pub const DELIVERY_BACKOFF_MAX_MS_MAX: u64 = 3_600_000;

/// Longest time a receiver may take to ack: a day.
pub const DELIVERY_ACK_TIMEOUT_MAX_SECONDS: u32 = 86_400;

/// Longest request timeout: a minute; a receiver slower than that should answer 202 and
/// ack later.
pub const DELIVERY_REQUEST_TIMEOUT_MAX_MS: u32 = 60_000;

/// Latencies kept per endpoint for its statistics (average and p99 over these).
pub const DELIVERY_LATENCY_SAMPLES: usize = 1024;

/// Attempts kept per delivery in memory (the log has all of them).
pub const DELIVERY_ATTEMPTS_KEPT: usize = 32;

/// Finished (delivered or acked) deliveries kept per endpoint in memory, for listing; older
/// ones are in the log only. Bounds the state: about 100 bytes each.
pub const DELIVERIES_KEPT_PER_ENDPOINT: usize = 10_000;

/// Deliveries one re-drive retries at most; ask again for more.
pub const DELIVERY_REDRIVE_MAX: usize = 1_000;

/// Endpoints one program may have: every record of the program is matched against each on
/// the sequencer's thread, so their number bounds that work.
pub const MAX_ENDPOINTS_PER_TENANT: usize = 100;

/// Characters of a caller's input an error quotes at most. Enough to recognize a value (any
/// id is at most 128 bytes, and its first 64 characters tell which it was); an error that
/// echoed input whole would answer a 1 MiB field with a 1 MiB message, which clients refuse
/// as oversized metadata instead of seeing the INVALID_ARGUMENT it is.
pub const QUOTED_INPUT_MAX_CHARS: usize = 64;
