//! Authentication and authorization at the door: every call but health and reflection
//! carries a credential, and is refused before any handler runs unless the credential is
//! valid, names the tenant and caller the request names, and grants a permission the
//! method needs ([`METHODS`], the one table; a `tally.v1` method missing from it is refused
//! for everyone). The handler gets the [`Principal`] in the request's extensions and checks
//! what depends on the request (own account, manual rewards, each command of a batch).
//!
//! Credentials (`docs/AUTH.md`):
//! - `authorization: Bearer <JWT>`, HS256 with a key id (`kid`), issuer and audience checked,
//!   clock skew bounded. Either an SSO session's token (claim `sid`: the session must be
//!   in the log, not logged out, not expired by log time) or an operator token made offline
//!   by `tally token issue` (no `sid`: valid until its `exp`).
//! - A signed service call: `x-tally-key-id`, `x-tally-timestamp` (unix seconds) and
//!   `x-tally-signature`, the hex HMAC-SHA256 with the API key's secret over
//!   `method "\n" timestamp "\n" hex(sha256(request message bytes))`. Timestamps more than
//!   [`SIGNATURE_WINDOW_SECONDS`] off are refused; a signature seen within the window is
//!   refused as a replay.
//!
//! Keys come from a file or the environment, never from the log: the server's key ring
//! signs tokens, and an API key's secret is derived from a ring key and the key id, so the
//! log holds only the secret's fingerprint.

pub use crate::secrets::{api_key_fingerprint, default_keys_file, hmac, KeyRing, SigningKey, KEYS_FILE_NAME};

mod common;
mod door;
mod methods;
mod signed;
mod tokens;

pub use common::*;
pub use door::*;
pub use methods::*;
pub use signed::*;
pub use tokens::*;
