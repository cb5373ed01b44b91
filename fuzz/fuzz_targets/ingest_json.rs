//! An ingest's JSON payload: parsed for each event type, a key named twice refused, decided.
//! The checks are in `tally_fuzz::ingest_json`, which `tests/fuzz_regressions.rs` replays.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tally_fuzz::ingest_json(data));
