//! Ledger request messages: decoded, converted to commands, decided, folded and answered.
//! The checks are in `tally_fuzz::proto_command`, which `tests/fuzz_regressions.rs` replays.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tally_fuzz::proto_command(data));
